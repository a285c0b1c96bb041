"""Fidelity and speed of a quantized model against its float original, on held-out batches."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import onnx

from onnxslim.runtime import Runner
from onnxslim.runtime.session import ModelSource
from onnxslim.validate.latency import interleaved_latency
from onnxslim.validate.metrics import OutputComparison, summarize_latency


def fidelity(
    reference: Runner, candidate: onnx.ModelProto | Runner, batches: Sequence[tuple[str, Mapping[str, np.ndarray]]], *, provider: str = "CPUExecutionProvider"
) -> list[OutputComparison]:
    """Per-output comparison of ``candidate`` with ``reference`` over ``batches``."""
    runner = candidate if isinstance(candidate, Runner) else Runner(candidate, provider, threads=None, label="quantized model")
    comparisons = [OutputComparison(name) for name in reference.output_names]
    for label, batch in batches:
        ref_out = reference.run(batch)
        cand_out = runner.run(batch, reference.output_names)
        for comparison, a, b in zip(comparisons, ref_out, cand_out):
            comparison.add(a, b, label)
    return comparisons


def worst_cosine(comparisons: Sequence[OutputComparison]) -> float:
    return min(c.cosine for c in comparisons) if comparisons else 1.0


def latency_ratio(reference: ModelSource, candidate: ModelSource, feed: Mapping[str, np.ndarray], *, threads: int, runs: int, show_progress: bool = False) -> dict:
    """Interleaved median latency of both models on one batch, and their ratio."""
    runners = [Runner(reference, threads=threads, label="float model"), Runner(candidate, threads=threads, label="quantized model")]
    samples = interleaved_latency(runners, feed, warmup=max(3, runs // 10), runs=runs, show_progress=show_progress, description="timing FP32 vs INT8")
    fp32, int8 = summarize_latency(samples[0]), summarize_latency(samples[1])
    return {"threads": threads, "fp32": fp32, "int8": int8, "ratio": int8["median_ms"] / fp32["median_ms"]}
