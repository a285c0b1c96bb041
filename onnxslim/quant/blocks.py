"""Block-wise low-bit weights: round-to-nearest with a clipping search, error-compensating (GPTQ-style) rounding, packing.

A weight ``W`` of shape (K, N) (a MatMul's constant right operand: K inputs, N
outputs) is cut along K into blocks of ``block_size`` values per output column;
each block has its own scale (and zero point when asymmetric). Values are
unsigned codes 0 .. 2**bits - 1; a symmetric block's zero point is fixed at
2**(bits - 1), as onnxruntime's MatMulNBits assumes when none is stored.

With the Gram matrix ``H = X^T X`` of the layer's inputs, rows of ``W`` are
quantized in order and each row's rounding error is spread over the rows not
yet quantized through the inverse of ``H``, so the layer's outputs, not its
weights, stay close (Frantar et al., GPTQ).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxslim.measure.gram import DAMPING, inverse_cholesky_upper

CLIP_FACTORS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)  # fractions of a block's range tried by the clipping search
CHUNK_ROWS = 128  # rows updated together in the error-compensating pass


@dataclass
class BlockQuantized:
    """Codes (N, blocks, block_size), scales and zero points (N, blocks), and the dequantized weight (K, N)."""

    codes: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray
    dequantized: np.ndarray
    bits: int
    block_size: int
    symmetric: bool


def _params(block: np.ndarray, bits: int, symmetric: bool, factor: float | np.ndarray = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point of each column of ``block`` (rows: the block's values), its range shrunk by ``factor``."""
    top = 2**bits - 1
    if symmetric:
        peak = np.abs(block).max(axis=0) * factor
        scale = peak / (2 ** (bits - 1) - 0.5)
        zero = np.full(scale.shape, 2 ** (bits - 1), np.float64)
    else:
        low = np.minimum(block.min(axis=0), 0.0) * factor
        high = np.maximum(block.max(axis=0), 0.0) * factor
        scale = (high - low) / top
        zero = np.clip(np.rint(-low / np.where(scale > 0, scale, 1.0)), 0, top)
    scale = np.where(scale > 0, scale, 1.0)
    return scale, zero


def _round(block: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    codes = np.clip(np.rint(block / scale) + zero, 0, 2**bits - 1)
    return codes, (codes - zero) * scale


def _best_params(block: np.ndarray, bits: int, symmetric: bool, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per column, the clipping factor whose rounding error (weighted per row by ``weights``) is smallest."""
    best_error = np.full(block.shape[1], np.inf)
    best_scale = best_zero = None
    row_weights = np.ones((block.shape[0], 1)) if weights is None else weights[:, None]
    for factor in CLIP_FACTORS:
        scale, zero = _params(block, bits, symmetric, factor)
        _, restored = _round(block, scale, zero, bits)
        error = (row_weights * (block - restored) ** 2).sum(axis=0)
        better = error < best_error
        best_error = np.where(better, error, best_error)
        best_scale = scale if best_scale is None else np.where(better, scale, best_scale)
        best_zero = zero if best_zero is None else np.where(better, zero, best_zero)
    return best_scale, best_zero


def _padded(weight: np.ndarray, block_size: int) -> np.ndarray:
    rows = -(-weight.shape[0] // block_size) * block_size
    if rows == weight.shape[0]:
        return weight
    return np.concatenate([weight, np.zeros((rows - weight.shape[0], weight.shape[1]), weight.dtype)])


def _result(codes: np.ndarray, scales: list, zeros: list, restored: np.ndarray, k: int, bits: int, block_size: int, symmetric: bool) -> BlockQuantized:
    n = codes.shape[1]
    return BlockQuantized(
        codes=codes.T.reshape(n, -1, block_size).astype(np.uint8),
        scales=np.stack(scales, axis=1).astype(np.float32),
        zero_points=np.stack(zeros, axis=1).astype(np.uint8),
        dequantized=restored[:k].astype(np.float32),
        bits=bits, block_size=block_size, symmetric=symmetric,
    )


def round_to_nearest(weight: np.ndarray, bits: int, block_size: int, *, symmetric: bool = False, importance: np.ndarray | None = None) -> BlockQuantized:
    """Each block rounded to nearest, its range clipped by the factor that best preserves it.

    ``importance``: a weight per input row (the inputs' mean squares), so the
    clipping favours the rows whose inputs are large.
    """
    k = weight.shape[0]
    padded = _padded(np.asarray(weight, np.float64), block_size)
    weights = None if importance is None else _padded(np.asarray(importance, np.float64)[:, None], block_size)[:, 0]
    codes, restored = np.zeros_like(padded), np.zeros_like(padded)
    scales, zeros = [], []
    for start in range(0, padded.shape[0], block_size):
        rows = slice(start, start + block_size)
        scale, zero = _best_params(padded[rows], bits, symmetric, None if weights is None else weights[rows])
        codes[rows], restored[rows] = _round(padded[rows], scale, zero, bits)
        scales.append(scale)
        zeros.append(zero)
    return _result(codes, scales, zeros, restored, k, bits, block_size, symmetric)


def error_compensated(weight: np.ndarray, gram: np.ndarray, bits: int, block_size: int, *, symmetric: bool = False) -> BlockQuantized:
    """GPTQ-style rounding: rows in order, each one's error pushed onto the later rows through the inverse of ``gram``.

    ``gram``: X^T X of the layer's inputs (K, K). Block parameters are chosen
    when a block starts, from its rows as the earlier errors left them.
    """
    k = weight.shape[0]
    work = _padded(np.asarray(weight, np.float64), block_size).copy()
    size = work.shape[0]
    hessian = np.zeros((size, size))
    hessian[:k, :k] = gram
    dead = np.diag(hessian) <= 0
    hessian[dead, dead] = 1.0
    work[dead] = 0.0
    upper = inverse_cholesky_upper(hessian, DAMPING)
    codes, restored = np.zeros_like(work), np.zeros_like(work)
    scales, zeros = [], []
    chunk = block_size * max(1, CHUNK_ROWS // block_size)
    for start in range(0, size, chunk):
        stop = min(start + chunk, size)
        local = work[start:stop].copy()
        errors = np.zeros_like(local)
        local_upper = upper[start:stop, start:stop]
        for i in range(stop - start):
            if i % block_size == 0:
                scale, zero = _best_params(local[i : i + block_size], bits, symmetric)
                scales.append(scale)
                zeros.append(zero)
            code, value = _round(local[i], scale, zero, bits)
            codes[start + i], restored[start + i] = code, value
            error = (local[i] - value) / local_upper[i, i]
            local[i + 1 :] -= np.outer(local_upper[i, i + 1 :], error)
            errors[i] = error
        work[stop:] -= upper[start:stop, stop:].T @ errors
    return _result(codes, scales, zeros, restored, k, bits, block_size, symmetric)


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Codes along the last axis packed into bytes: two 4-bit codes per byte (the first in the low nibble), or one 8-bit code."""
    if bits == 8:
        return codes.astype(np.uint8)
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros(codes.shape[:-1] + (1,), codes.dtype)], axis=-1)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


def unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The inverse of :func:`pack`: ``count`` codes along the last axis."""
    if bits == 8:
        return packed[..., :count]
    codes = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(packed.shape[:-1] + (-1,))
    return codes[..., :count]
