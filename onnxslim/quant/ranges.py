"""Calibration ranges from observed statistics: minmax, percentile, entropy (KL) and MSE.

All methods read the fixed-size state of :mod:`onnxslim.quant.observers`;
none needs the activations themselves.
"""

from __future__ import annotations

import numpy as np

from onnxslim.quant.observers import HistogramObserver, TensorStats

METHODS = ("minmax", "percentile", "entropy", "mse", "moving-minmax")


def _cumulative_quantile(hist: HistogramObserver, q: float) -> float:
    cdf = np.cumsum(hist.counts) / max(hist.total, 1)
    index = int(np.searchsorted(cdf, q, side="left"))
    return float(hist.edges()[min(index + 1, hist.bins)])


def percentile_range(hist: HistogramObserver, percentile: float) -> tuple[float, float]:
    """The range holding all but ``100 - percentile`` percent of the values at each end."""
    tail = (100.0 - percentile) / 100.0
    lo = _cumulative_quantile(hist, tail)
    hi = _cumulative_quantile(hist, 1.0 - tail)
    return lo - hist.width if lo > hist.low else lo, hi


def _folded(hist: HistogramObserver, symmetric: bool) -> tuple[np.ndarray, float]:
    """Counts over |x| (symmetric) or over x >= 0 ... max (one-sided), on bins of the observer's width."""
    centers = hist.centers()
    if symmetric:
        magnitude = np.abs(centers)
    else:
        magnitude = np.maximum(centers, 0.0)
    index = np.floor(magnitude / hist.width).astype(np.int64)
    counts = np.bincount(index, weights=hist.counts, minlength=int(index.max()) + 1)
    return counts, hist.width


def entropy_threshold(hist: HistogramObserver, *, symmetric: bool, levels: int = 128) -> float:
    """TensorRT-style KL-divergence threshold on the magnitude histogram.

    ``levels`` is the number of quantization bins covering [0, threshold]: 128
    for INT8 symmetric, 256 for UINT8 above zero.
    """
    counts, width = _folded(hist, symmetric)
    if len(counts) > 1:
        # zero is exact on every grid (the zero point); after a ReLU or HardSwish half the values can sit there, and that spike,
        # spread over the first quantization level by the merging below, would dominate the divergence and always pick the
        # narrowest threshold (MobileNetV3: output cosine 0.13). Only the spike's excess over its neighbour is left out.
        counts = counts.astype(np.float64)
        counts[0] = min(counts[0], counts[1])
    n = len(counts)
    if n <= levels or counts.sum() == 0:
        return n * width
    best_kl, best_edge = np.inf, n
    step = max(1, (n - levels) // 256)
    for edge in range(levels, n + 1, step):
        reference = counts[:edge].astype(np.float64).copy()
        reference[edge - 1] += counts[edge:].sum()
        candidate = _spread_over_levels(counts[:edge].astype(np.float64), levels)
        p = reference / reference.sum()
        q_total = candidate.sum()
        if q_total == 0:
            continue
        q = candidate / q_total
        mask = p > 0
        kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
        if kl < best_kl:
            best_kl, best_edge = kl, edge
    return (best_edge + 0.5) * width


def _spread_over_levels(counts: np.ndarray, levels: int) -> np.ndarray:
    """``counts`` merged into ``levels`` consecutive groups (``np.array_split``'s sizes) and each group's total spread evenly
    over its nonzero bins: the histogram as it would look after quantization, as the KL search compares it."""
    sizes = np.full(levels, counts.size // levels)
    sizes[: counts.size % levels] += 1
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    nonzero = counts > 0
    totals = np.add.reduceat(counts, starts)
    filled = np.add.reduceat(nonzero.astype(np.float64), starts)
    return np.where(nonzero, np.repeat(totals / np.maximum(filled, 1.0), sizes), 0.0)


def mse_range(hist: HistogramObserver, *, symmetric: bool, levels: int) -> tuple[float, float]:
    """The clipping range minimizing expected squared error (clipping plus rounding) over the histogram."""
    centers = hist.centers()
    counts = hist.counts.astype(np.float64)
    lo_all, hi_all = min(hist.low, 0.0), max(hist.high, 0.0)
    best, best_range = np.inf, (lo_all, hi_all)
    for fraction in np.linspace(0.05, 1.0, 96):
        if symmetric:
            bound = max(abs(lo_all), abs(hi_all)) * fraction
            lo, hi = -bound, bound
        else:
            lo, hi = lo_all * fraction, hi_all * fraction
        step = (hi - lo) / (levels - 1) if hi > lo else 1.0
        clipped = np.clip(centers, lo, hi)
        error = np.sum(counts * (centers - clipped) ** 2) + np.sum(counts[(centers >= lo) & (centers <= hi)]) * step * step / 12.0
        if error < best:
            best, best_range = error, (lo, hi)
    return best_range


def calibrated_range(stats: TensorStats, method: str, *, symmetric: bool, percentile: float = 99.999) -> tuple[float, float]:
    """The (low, high) range to quantize a tensor with, always containing zero."""
    mm = stats.minmax
    if mm.count == 0:
        return 0.0, 0.0
    if method == "moving-minmax":
        lo, hi = mm.avg_min, mm.avg_max
    elif method == "minmax" or stats.histogram is None or stats.histogram.total == 0:
        lo, hi = mm.min, mm.max
    elif method == "percentile":
        lo, hi = percentile_range(stats.histogram, percentile)
        lo, hi = max(lo, mm.min), min(hi, mm.max)
    elif method == "entropy":
        one_sided = mm.min >= 0.0 and not symmetric
        threshold = entropy_threshold(stats.histogram, symmetric=not one_sided, levels=256 if one_sided else 128)
        lo, hi = max(mm.min, -threshold), min(mm.max, threshold)
    elif method == "mse":
        lo, hi = mse_range(stats.histogram, symmetric=symmetric, levels=255 if symmetric else 256)
        lo, hi = max(lo, mm.min), min(hi, mm.max)
    else:
        raise ValueError(f"unknown calibration method {method}")
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if symmetric:
        bound = max(abs(lo), abs(hi))
        return -bound, bound
    return lo, hi
