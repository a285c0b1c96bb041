"""Codebooks for weights: 1-D k-means over a tensor's values, and 4-bit index packing.

Numpy only. A tensor becomes a codebook of ``clusters`` float values and one
index per element (8 bits for 256 clusters, two per byte for 16); the values
are restored by a lookup that onnxruntime folds into a plain weight when it
creates a session, so the file shrinks and inference does not change.
"""

from __future__ import annotations

import hashlib

import numpy as np

from onnxslim.measure.gram import inverse_cholesky_upper

FIT_SAMPLE = 1 << 20  # values a codebook is fitted on; every value is then assigned to its nearest code
SPARSE_SHARE = 0.01  # with more exact zeros than this, zero gets a code of its own (pruned weights stay pruned)


def kmeans_1d(
    values: np.ndarray, clusters: int, *, weights: np.ndarray | None = None, iterations: int = 30, seed: int = 0, zero_code: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """A codebook of ``clusters`` values (sorted) and each value's index in it, by weighted Lloyd iterations.

    ``weights`` (same shape, non-negative) make some values count more in the
    fit (how much their error costs); initialization is at weighted quantiles, so
    dense regions get more codes. A tensor with fewer distinct values than
    clusters is represented exactly. Exact zeros get a code of their own when
    they are more than ``SPARSE_SHARE`` of the values, or whenever ``zero_code``.
    """
    flat = np.asarray(values, np.float64).ravel()
    w = np.ones_like(flat) if weights is None else np.broadcast_to(np.asarray(weights, np.float64), np.shape(values)).ravel()
    zeros = flat == 0
    if clusters > 2 and (zeros.mean() > SPARSE_SHARE or (zero_code and zeros.any())) and not zeros.all():
        # a pruned (sparse) tensor keeps its zeros exact: one code is 0, the others fit the rest
        codes, _ = kmeans_1d(flat[~zeros], clusters - 1, weights=w[~zeros], iterations=iterations, seed=seed)
        codebook = np.sort(np.append(codes, np.float32(0.0)))
        return codebook, _nearest(codebook, flat, exact_zero=True)
    distinct = np.unique(flat)
    if distinct.size <= clusters:
        codebook = np.pad(distinct, (0, clusters - distinct.size), mode="edge")
        return codebook.astype(np.float32), np.searchsorted(distinct, flat).astype(np.uint8 if clusters <= 256 else np.int32)
    rng = np.random.default_rng(seed)
    sample = rng.choice(flat.size, FIT_SAMPLE, replace=False) if flat.size > FIT_SAMPLE else np.arange(flat.size)
    x, xw = flat[sample], w[sample] + 1e-12
    order = np.argsort(x)
    x, xw = x[order], xw[order]
    codebook = _companded_start(x, xw, clusters)
    for _ in range(iterations):
        edges = (codebook[1:] + codebook[:-1]) / 2
        assign = np.searchsorted(edges, x)
        totals = np.bincount(assign, weights=xw * x, minlength=clusters)
        mass = np.bincount(assign, weights=xw, minlength=clusters)
        updated = np.where(mass > 0, totals / np.maximum(mass, 1e-300), codebook)
        updated = np.sort(updated)
        if np.allclose(updated, codebook, rtol=0, atol=1e-12 * (np.abs(codebook).max() + 1e-30)):
            codebook = updated
            break
        codebook = updated
    edges = (codebook[1:] + codebook[:-1]) / 2
    indices = np.searchsorted(edges, flat)
    return codebook.astype(np.float32), indices.astype(np.uint8 if clusters <= 256 else np.int32)


def _nearest(codebook: np.ndarray, flat: np.ndarray, *, exact_zero: bool = False) -> np.ndarray:
    """Each value's nearest code (an exact zero to the zero code)."""
    edges = (codebook[1:].astype(np.float64) + codebook[:-1]) / 2
    indices = np.searchsorted(edges, flat)
    if exact_zero:
        indices[flat == 0] = int(np.flatnonzero(codebook == 0)[0])
    return indices.astype(np.uint8 if codebook.size <= 256 else np.int32)


def _companded_start(x: np.ndarray, weights: np.ndarray, clusters: int) -> np.ndarray:
    """Starting codes spaced by the cube root of the (weighted) density of sorted ``x``.

    The codes of a quantizer with the least squared error are spread by the cube
    root of the density (Panter and Dite): denser than a uniform grid where the
    values crowd, sparser than quantiles in the tails. Lloyd iterations from
    there converge in a few steps; from quantiles they crawl.
    """
    counts, edges = np.histogram(x, bins=min(4096, max(64, x.size // 8)), weights=weights)
    density = np.cbrt(np.maximum(counts, 0))
    cumulative = np.concatenate([[0.0], np.cumsum(density)])
    cumulative /= cumulative[-1] or 1.0
    return np.interp((np.arange(clusters) + 0.5) / clusters, cumulative, edges)


def pack_nibbles(indices: np.ndarray) -> np.ndarray:
    """Indices below 16, two per byte: the first in the high half (an odd count is padded with a zero)."""
    flat = np.asarray(indices, np.uint8).ravel()
    if np.any(flat > 15):
        raise ValueError("4-bit packing needs indices below 16")
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    return ((flat[0::2] << 4) | flat[1::2]).astype(np.uint8)


def unpack_nibbles(packed: np.ndarray, count: int) -> np.ndarray:
    """The inverse of :func:`pack_nibbles`: ``count`` indices."""
    packed = np.asarray(packed, np.uint8)
    high, low = packed >> 4, packed & 15
    return np.stack([high, low], axis=1).ravel()[:count]


def identical_groups(tensors: dict[str, np.ndarray], tolerance: float = 0.0) -> list[list[str]]:
    """Names of tensors that hold the same values (same dtype and shape; within ``tolerance`` of the first, relative to its largest magnitude)."""
    if tolerance == 0:
        # bitwise equality: one digest per tensor, no pairwise comparison
        by_content: dict[tuple, list[str]] = {}
        for name, array in tensors.items():
            key = (array.dtype.str, array.shape, hashlib.sha256(np.ascontiguousarray(array).tobytes()).digest())
            by_content.setdefault(key, []).append(name)
        return [names for names in by_content.values() if len(names) > 1]
    by_shape: dict[tuple, list[str]] = {}
    for name, array in tensors.items():
        by_shape.setdefault((array.dtype.str, array.shape), []).append(name)
    groups = []
    for names in by_shape.values():
        remaining = list(names)
        while remaining:
            first = remaining.pop(0)
            reference = tensors[first]
            scale = float(np.abs(reference).max()) if reference.size and reference.dtype.kind == "f" else 0.0
            same = [n for n in remaining if _same(reference, tensors[n], tolerance * scale)]
            if same:
                groups.append([first, *same])
                remaining = [n for n in remaining if n not in same]
    return groups


def _same(a: np.ndarray, b: np.ndarray, atol: float) -> bool:
    if atol == 0 or a.dtype.kind != "f":
        return a.tobytes() == b.tobytes()
    return bool(np.allclose(a, b, rtol=0, atol=atol))


def compensated_indices(
    matrix: np.ndarray, scales: np.ndarray, codebook: np.ndarray, gram: np.ndarray, *, keep_zeros: bool = False, chunk: int = 128,
) -> np.ndarray:
    """Indices into ``codebook`` for ``matrix`` (K rows: the layer's inputs; N columns, each divided by its ``scales``), chosen row
    by row with each row's error pushed onto the rows not yet chosen through the inverse of ``gram`` (X^T X of the layer's inputs).

    The layer's outputs, not its weights, stay close: the same error compensation as GPTQ, with codebook values
    in place of a uniform grid. Rows whose inputs are always zero take the code nearest zero. With ``keep_zeros``
    (the codebook holds an exact 0) the weight's exact zeros keep that code, so a pruned weight stays pruned;
    their neighbours still absorb the error of the others.
    """
    k, n = matrix.shape
    work = np.array(matrix, np.float64)
    hessian = np.array(gram, np.float64)
    dead = np.diag(hessian) <= 0
    hessian[dead, dead] = 1.0
    work[dead] = 0.0
    upper = inverse_cholesky_upper(hessian)
    book = np.asarray(codebook, np.float64)
    edges = (book[1:] + book[:-1]) / 2
    column_scales = np.asarray(scales, np.float64).reshape(1, n)
    live = column_scales[0] > 0  # a column of zeros has scale 0 and stays zeros whatever its code
    zeros = np.asarray(matrix) == 0 if keep_zeros else None
    zero_code = int(np.flatnonzero(book == 0)[0]) if keep_zeros else -1
    indices = np.empty((k, n), np.int64)
    for start in range(0, k, chunk):
        stop = min(start + chunk, k)
        local = work[start:stop].copy()
        errors = np.zeros_like(local)
        for i in range(stop - start):
            chosen = np.searchsorted(edges, np.divide(local[i], column_scales[0], out=np.zeros(n), where=live))
            if zeros is not None:
                chosen[zeros[start + i]] = zero_code
            indices[start + i] = chosen
            error = (local[i] - book[chosen] * column_scales[0]) / upper[start + i, start + i]
            local[i + 1 :] -= np.outer(upper[start + i, start + i + 1 : stop], error)
            errors[i] = error
        work[stop:] -= upper[start:stop, stop:].T @ errors
    return indices


def refit_codebook(matrix: np.ndarray, scales: np.ndarray, indices: np.ndarray, gram: np.ndarray, codebook: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The codebook that, with ``indices`` fixed, minimizes the layer's output error tr((W - Q)^T G (W - Q)), Q = scales * codebook[indices].

    Least squares in the codebook's few values; a code no value uses keeps its old value, and an exact 0 code stays 0
    (the zeros of a pruned weight). Returns the codebook
    sorted and, per old index, its new one (``new_codebook[order[i]]`` is the value refit for old code ``i``).
    """
    clusters = codebook.size
    g = np.asarray(gram, np.float64)
    column_scales = np.asarray(scales, np.float64).reshape(1, -1)
    target = g @ np.asarray(matrix, np.float64)
    members = [column_scales * (indices == a) for a in range(clusters)]
    projected = [g @ m for m in members]
    normal = np.array([[float(np.sum(projected[a] * members[b])) for b in range(clusters)] for a in range(clusters)])
    right = np.array([float(np.sum(target * members[a])) for a in range(clusters)])
    ridge = 1e-6 * (np.trace(normal) / clusters or 1.0)
    old = np.asarray(codebook, np.float64)
    free = old != 0
    solved = old.copy()
    solved[free] = np.linalg.solve(normal[np.ix_(free, free)] + ridge * np.eye(int(free.sum())), right[free] + ridge * old[free])
    ranks = np.argsort(solved, kind="stable")
    order = np.empty(clusters, np.int64)
    order[ranks] = np.arange(clusters)
    return solved[ranks].astype(np.float32), order
