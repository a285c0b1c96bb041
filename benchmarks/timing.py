"""Interleaved latency of several models on one input: the same method for onnxslim and every peer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from onnxslim.measure import interleaved_latency
from onnxslim.runtime import Runner


def median_latencies(
    models: Sequence[Path | str], feed: Mapping[str, np.ndarray], *, threads: int, runs: int = 30, warmup: int = 5, provider: str = "CPUExecutionProvider"
) -> list[float]:
    """Median milliseconds per model on ``provider``, all measured in one interleaved loop."""
    runners = [Runner(str(m), provider, threads=threads, label=str(m)) for m in models]
    samples = interleaved_latency(runners, feed, warmup=warmup, runs=runs)
    return [float(np.median(s) * 1000.0) for s in samples]
