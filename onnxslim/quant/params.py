"""Scale and zero-point arithmetic, kept apart from graphs and runtimes.

UINT8 activations are asymmetric: scale = (hi - lo) / 255, zero point places 0
exactly on a code. INT8 activations (cuda/tensorrt targets) are symmetric with
zero point 0. Weights are INT8 symmetric per output channel in [-127, 127], so
the sum of products never needs the -128 code; or, with the *reduced* range, in
[-64, 64]: x86 CPUs without VNNI multiply UINT8 by INT8 with an instruction that
adds each pair of products into 16 bits, and 255 * 127 * 2 overflows there while
255 * 64 * 2 does not. Biases are INT32 with scale = input scale * weight scale
and zero point 0.
"""

from __future__ import annotations

import numpy as np

TINY = np.float32(1e-12)
FULL_LEVELS = 127  # weight codes in [-127, 127]
REDUCED_LEVELS = 64  # [-64, 64]: a pair of UINT8 x INT8 products stays within 16 bits (255 * 64 * 2 = 32640)
# the largest INT32 bias code a weight's scale is chosen for: with a layer's sum of products (up to 255 * 127 per
# product, thousands of them) it stays inside INT32
BIAS_CODES = 2**24


def activation_params(lo: float, hi: float, *, signed: bool) -> tuple[np.float32, np.integer]:
    """Scale and zero point of an activation tensor with range [lo, hi] (zero inside)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if signed:
        bound = max(abs(lo), abs(hi))
        scale = np.float32(bound / 127.0) if bound > 0 else np.float32(1.0)
        return max(scale, TINY), np.int8(0)
    span = hi - lo
    if span <= 0:
        return np.float32(1.0), np.uint8(0)
    scale = max(np.float32(span / 255.0), TINY)  # a span of a few subnormals rounds to 0 in float32
    zero_point = int(round(-lo / float(scale)))
    return scale, np.uint8(min(max(zero_point, 0), 255))


def weight_params(weight: np.ndarray, axis: int | None, levels: int = FULL_LEVELS) -> np.ndarray:
    """Symmetric INT8 scales of ``weight`` with codes in [-levels, levels]: one per slice along ``axis``, or one for all."""
    if axis is None:
        bound = float(np.max(np.abs(weight))) if weight.size else 0.0
        return np.array(bound / levels if bound > 0 else 1.0, dtype=np.float32)
    moved = np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)
    bound = np.max(np.abs(moved), axis=1) if moved.size else np.zeros(weight.shape[axis])
    scales = np.where(bound > 0, bound / levels, 1.0).astype(np.float32)
    return scales


def quantize_weight(weight: np.ndarray, scales: np.ndarray, axis: int | None, levels: int = FULL_LEVELS) -> np.ndarray:
    if axis is None:
        return np.clip(np.round(weight / scales), -levels, levels).astype(np.int8)
    shape = [1] * weight.ndim
    shape[axis] = -1
    return np.clip(np.round(weight / scales.reshape(shape)), -levels, levels).astype(np.int8)


def quantize_bias(bias: np.ndarray, input_scale: np.float32, weight_scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """INT32 bias and its per-channel scale (input scale times weight scale)."""
    scale = (np.float32(input_scale) * weight_scales.astype(np.float32)).astype(np.float32)
    scale = np.where(scale > 0, scale, TINY).astype(np.float32)
    limit = np.iinfo(np.int32).max
    quantized = np.clip(np.round(bias.astype(np.float64) / scale.astype(np.float64)), -limit, limit).astype(np.int32)
    return quantized, scale
