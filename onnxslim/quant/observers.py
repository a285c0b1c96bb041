"""Streaming range observers for calibration.

An observer folds each batch into a fixed-size state, so memory does not grow
with the number of samples and batches may differ in shape. Observers of
consecutive parts of the data merge (``a.merge(b)``, where ``b`` saw the
batches after ``a``'s), so calibration can be split over processes: the
histogram and the extremes come out the same for any grouping of the same
batches, exactly; the moving averages of per-batch extremes up to rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class MinMaxObserver:
    """Running min and max, plus an exponential moving average of per-batch min and max.

    ``first_min``/``first_max`` (the first batch's extremes) and ``batches``
    are what :meth:`merge` needs to continue the moving average across observers.
    """

    momentum: float = 0.9
    min: float = math.inf
    max: float = -math.inf
    avg_min: float | None = None
    avg_max: float | None = None
    count: int = 0
    batches: int = 0
    first_min: float | None = None
    first_max: float | None = None

    def update(self, array: np.ndarray) -> None:
        if array.size == 0:
            return
        self.update_extremes(float(np.min(array)), float(np.max(array)), array.size)

    def update_extremes(self, lo: float, hi: float, size: int) -> None:
        """Fold in a batch of ``size`` values whose extremes are ``lo`` and ``hi``."""
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        if self.avg_min is None:
            self.avg_min, self.avg_max = lo, hi
            self.first_min, self.first_max = lo, hi
        else:
            self.avg_min = self.momentum * self.avg_min + (1 - self.momentum) * lo
            self.avg_max = self.momentum * self.avg_max + (1 - self.momentum) * hi
        self.count += size
        self.batches += 1

    def merge(self, later: MinMaxObserver) -> None:
        """Fold in ``later``, an observer of the batches that came after this one's."""
        if later.avg_min is None:
            return
        if self.avg_min is None:
            self.__dict__.update(later.__dict__)
            return
        if later.momentum != self.momentum:
            raise ValueError("observers with different momentum cannot be merged")
        # later.avg = m^n * first + (its weighted sum of batches); continuing this average replaces first by this one's avg
        decay = self.momentum**later.batches
        self.avg_min = decay * self.avg_min + (later.avg_min - decay * later.first_min)
        self.avg_max = decay * self.avg_max + (later.avg_max - decay * later.first_max)
        self.min, self.max = min(self.min, later.min), max(self.max, later.max)
        self.count += later.count
        self.batches += later.batches


CHUNK = 1 << 15  # values counted at a time
FLOAT32_EXACT_INTEGERS = 1 << 24


class HistogramObserver:
    """A histogram on a grid fixed by the data's range alone.

    Bin ``k`` covers ``[k * width, (k + 1) * width)``, with ``width`` the
    smallest power of two for which the values seen so far fit in ``bins``
    consecutive bins, the first being the one that holds the minimum (and at
    least ``MIN_WIDTH``, and 2**-40 of the largest magnitude seen, so bin
    indices stay small integers). Non-finite values are left out. A power-of-two width makes x / width exact, and doubling it
    maps old bin k to new bin k // 2, so merging is exact and the state depends
    only on the values seen, never on how they were batched or grouped.
    """

    MIN_WIDTH = 2.0**-40

    def __init__(self, bins: int = 2048):
        self.bins = bins
        self.width = 0.0
        self.first = 0
        self.counts = np.zeros(bins, dtype=np.int64)
        self.total = 0
        self.min = math.inf
        self.max = -math.inf

    @property
    def low(self) -> float:
        return self.first * self.width

    @property
    def high(self) -> float:
        return (self.first + self.bins) * self.width

    def _fitting_width(self, lo: float, hi: float, at_least: float) -> float:
        """The smallest power of two (>= ``at_least`` and the floors above) whose grid holds [lo, hi] in ``bins`` bins."""
        span = hi - lo
        magnitude = max(abs(lo), abs(hi))
        width = max(self.MIN_WIDTH, at_least, math.ldexp(1.0, math.frexp(magnitude)[1] - 40) if magnitude > 0 else 0.0)
        if span > 0:
            # every width under span / bins leaves out some value: start just below it
            width = max(width, math.ldexp(1.0, math.frexp(span / self.bins)[1] - 1))
        while math.floor(hi / width) - math.floor(lo / width) >= self.bins:
            width *= 2.0
        return width

    def _regrid(self, width: float, lo: float) -> None:
        """Move the counts to the grid of ``width`` (a power-of-two multiple of the current one) starting at ``lo``'s bin."""
        first = math.floor(lo / width)
        if self.width == 0.0:
            self.width, self.first = width, first
            return
        factor = int(round(width / self.width))
        index = np.floor_divide(np.arange(self.first, self.first + self.bins), factor) - first
        counts = np.zeros(self.bins, dtype=np.int64)
        keep = self.counts > 0
        np.add.at(counts, index[keep], self.counts[keep])
        self.counts, self.width, self.first = counts, width, first

    def update(self, array: np.ndarray, extremes: tuple[float, float] | None = None) -> None:
        """Count ``array``'s finite values; ``extremes``: its min and max when already known (and finite)."""
        values = np.asarray(array, dtype=np.float32).ravel()
        if extremes is None or not all(map(math.isfinite, extremes)):
            extremes = None
            if not np.isfinite(values).all():
                values = values[np.isfinite(values)]
        if values.size == 0:
            return
        lo, hi = extremes if extremes is not None else (float(values.min()), float(values.max()))
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self._regrid(self._fitting_width(self.min, self.max, self.width), self.min)
        inverse = np.float32(1.0 / self.width)  # a power of two: multiplying is exactly dividing
        # a chunk at a time: whole-tensor float and int64 temporaries cost more in fresh memory than the counting
        scaled = np.empty(min(values.size, CHUNK), np.float32)
        # the bin index as float32 then int32 (a third of the time of a float32 -> int64 cast) where float32 holds every
        # bin number exactly: integers below 2**24, so that subtracting the first is exact
        small = abs(self.first) + self.bins < FLOAT32_EXACT_INTEGERS
        index = np.empty(scaled.size, np.int32 if small else np.int64)
        for start in range(0, values.size, CHUNK):
            chunk = values[start : start + CHUNK]
            f, i = scaled[: chunk.size], index[: chunk.size]
            np.multiply(chunk, inverse, out=f)
            np.floor(f, out=f)
            if small:
                f -= np.float32(self.first)
                np.copyto(i, f, casting="unsafe")
            else:
                np.copyto(i, f, casting="unsafe")
                i -= self.first
            self.counts += np.bincount(i, minlength=self.bins)
        self.total += values.size

    def merge(self, other: HistogramObserver) -> None:
        """Fold in ``other``'s counts; the result is what one observer of both sets of values would hold."""
        if other.bins != self.bins:
            raise ValueError("histograms with different bin counts cannot be merged")
        if other.total == 0:
            return
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)
        width = self._fitting_width(self.min, self.max, max(self.width, other.width))
        self._regrid(width, self.min)
        moved = HistogramObserver(other.bins)
        moved.__dict__.update({k: v for k, v in other.__dict__.items() if k != "counts"}, counts=other.counts.copy())
        moved._regrid(width, self.min)
        self.counts += moved.counts
        self.total += other.total

    def edges(self) -> np.ndarray:
        return (self.first + np.arange(self.bins + 1)) * self.width

    def centers(self) -> np.ndarray:
        return (self.first + np.arange(self.bins) + 0.5) * self.width


class ChannelMaxima:
    """The largest magnitude of each channel (the last axis) seen so far."""

    def __init__(self):
        self.maxima: np.ndarray | None = None

    def update(self, array: np.ndarray) -> bool:
        """Fold in ``array``; False when it holds NaN or Inf."""
        value = np.asarray(array, np.float32)
        if not np.isfinite(value).all():
            return False
        if value.size == 0:
            return True
        flat = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
        self.maxima = flat if self.maxima is None else np.maximum(self.maxima, flat)
        return True


@dataclass
class TensorStats:
    """What calibration keeps per tensor."""

    minmax: MinMaxObserver
    histogram: HistogramObserver | None

    def update(self, array: np.ndarray) -> bool:
        """Fold in ``array``; False when it holds NaN or Inf (the histogram counts only its finite values)."""
        if array.size == 0:
            return True
        lo, hi = float(np.min(array)), float(np.max(array))  # one pass each, shared by both observers; NaN if any is
        self.minmax.update_extremes(lo, hi, array.size)
        finite = math.isfinite(lo) and math.isfinite(hi)
        if self.histogram is not None:
            self.histogram.update(array, (lo, hi) if finite and array.dtype == np.float32 else None)
        return finite

    def merge(self, later: TensorStats) -> None:
        """Fold in the statistics of the batches that came after this one's."""
        self.minmax.merge(later.minmax)
        if self.histogram is not None and later.histogram is not None:
            self.histogram.merge(later.histogram)
