"""Interleaved latency measurement of several runners on the same input.

Runs alternate between the models (in a rotating order) so that a burst of
noise on a shared machine hits them all alike; the ratio of medians is what
onnxslim reports.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from onnxslim.progress import track
from onnxslim.runtime import Runner


def interleaved_latency(
    runners: Sequence[Runner], feed: Mapping[str, np.ndarray], *, warmup: int = 5, runs: int = 50, show_progress: bool = False, description: str = "timing"
) -> list[list[float]]:
    """Seconds per run for each runner, measured alternately."""
    for runner in runners:
        for _ in range(warmup):
            runner.time_once(feed)
    samples: list[list[float]] = [[] for _ in runners]
    order = list(range(len(runners)))
    for _ in track(range(runs), description, total=runs, enabled=show_progress):
        for index in order:
            samples[index].append(runners[index].time_once(feed))
        order.reverse()
    return samples
