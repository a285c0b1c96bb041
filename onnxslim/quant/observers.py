"""Streaming range observers for calibration.

An observer folds each batch into a fixed-size state, so memory does not grow
with the number of samples and batches may differ in shape. Folding is
associative: observing [a, b] then c gives the same state as a then [b, c],
up to histogram bin merging, which is exact because bins sit on a grid anchored
at zero and only ever widen by integer factors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class MinMaxObserver:
    """Running min and max, plus an exponential moving average of per-batch min and max."""

    momentum: float = 0.9
    min: float = math.inf
    max: float = -math.inf
    avg_min: float | None = None
    avg_max: float | None = None
    count: int = 0

    def update(self, array: np.ndarray) -> None:
        if array.size == 0:
            return
        lo, hi = float(np.min(array)), float(np.max(array))
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        if self.avg_min is None:
            self.avg_min, self.avg_max = lo, hi
        else:
            self.avg_min = self.momentum * self.avg_min + (1 - self.momentum) * lo
            self.avg_max = self.momentum * self.avg_max + (1 - self.momentum) * hi
        self.count += array.size


class HistogramObserver:
    """A histogram on a zero-anchored grid whose bin width grows as data arrives.

    Bin ``k`` covers ``[k * width, (k + 1) * width)``; the histogram keeps
    ``bins`` consecutive bins starting at ``first``. When a batch falls outside,
    the width is multiplied by the smallest integer that makes everything fit
    and existing counts are merged exactly into the wider bins.
    """

    def __init__(self, bins: int = 2048):
        self.bins = bins
        self.width = 0.0
        self.first = 0
        self.counts = np.zeros(bins, dtype=np.int64)
        self.total = 0

    @property
    def low(self) -> float:
        return self.first * self.width

    @property
    def high(self) -> float:
        return (self.first + self.bins) * self.width

    def _fits(self, lo: float, hi: float) -> bool:
        return self.width > 0 and lo >= self.low and hi < self.high

    def _regrid(self, lo: float, hi: float) -> None:
        if self.width == 0.0:
            span = hi - lo
            self.width = (span if span > 0 else max(abs(lo), 1e-8)) * 1.0001 / (self.bins - 1)
            self.first = int(math.floor(lo / self.width))
            return
        old_first, old_last = self.first, self.first + self.bins - 1
        factor = 1
        while True:
            factor *= 2
            width = self.width * factor
            first_new = min(int(math.floor(lo / width)), old_first // factor)
            last_new = max(int(math.floor(hi / width)), old_last // factor)
            if last_new - first_new < self.bins:
                break
        # old bin k lies inside new bin k // factor: merging is exact
        new_index = np.floor_divide(np.arange(old_first, old_last + 1), factor) - first_new
        counts = np.zeros(self.bins, dtype=np.int64)
        np.add.at(counts, new_index, self.counts)
        self.counts, self.width, self.first = counts, width, first_new

    def update(self, array: np.ndarray) -> None:
        values = np.asarray(array, dtype=np.float32).ravel()
        if values.size == 0:
            return
        lo, hi = float(values.min()), float(values.max())
        if not self._fits(lo, hi):
            self._regrid(lo, hi)
        index = np.floor(values / self.width).astype(np.int64) - self.first
        np.clip(index, 0, self.bins - 1, out=index)
        self.counts += np.bincount(index, minlength=self.bins)
        self.total += values.size

    def edges(self) -> np.ndarray:
        return (self.first + np.arange(self.bins + 1)) * self.width

    def centers(self) -> np.ndarray:
        return (self.first + np.arange(self.bins) + 0.5) * self.width


@dataclass
class TensorStats:
    """What calibration keeps per tensor."""

    minmax: MinMaxObserver
    histogram: HistogramObserver | None

    def update(self, array: np.ndarray) -> None:
        self.minmax.update(array)
        if self.histogram is not None:
            self.histogram.update(array)
