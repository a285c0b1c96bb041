"""Activation statistics for pruning, gathered in one pass over the data with only sums kept."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import onnx

from onnxslim.progress import track
from onnxslim.runtime.probe import probe_runner


def _channels_last(x: np.ndarray, node: onnx.NodeProto) -> np.ndarray:
    """Rows = samples, columns = the layer's input channels."""
    if node.op_type in ("Conv", "ConvTranspose"):
        return np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])
    return x.reshape(-1, x.shape[-1])


def channel_rows(x: np.ndarray, node: onnx.NodeProto, batch: Mapping[str, np.ndarray], token_mask: str | None) -> np.ndarray:
    """Channels-last rows of ``x``; with a token mask, only the rows of real (unmasked) tokens.

    Padding positions do not reach a pooled sentence embedding; fitting or
    ranking on them spends the least-squares budget on values nobody reads.
    """
    rows = _channels_last(x, node)
    if token_mask and token_mask in batch:
        keep = np.asarray(batch[token_mask]).reshape(-1) != 0
        if keep.size == rows.shape[0] and keep.any():
            rows = rows[keep]
    return rows


def channel_energy(model: onnx.ModelProto, source: Iterable, *, token_mask: str | None = None, show_progress: bool = False) -> dict[str, np.ndarray]:
    """Consumer node -> variance of each input channel over the data.

    Variance rather than mean square: the mean of a removed channel is restored
    by bias compensation, so only its variation is lost.
    """
    consumers = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")]
    inputs = {v.name for v in model.graph.input}
    names = sorted({n.input[0] for n in consumers} - inputs)
    runner = probe_runner(model, names)
    sums: dict[str, np.ndarray] = {}
    firsts: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for _, batch in track(source, "activation statistics", enabled=show_progress):
        values = dict(zip(names, runner.run(batch, names)))
        values.update({k: v for k, v in batch.items()})
        for node in consumers:
            x = values.get(node.input[0])
            if x is None or x.dtype.kind != "f" or x.ndim < 2:
                continue
            rows = channel_rows(x, node, batch, token_mask).astype(np.float64)
            sums[node.name] = sums.get(node.name, 0) + (rows**2).sum(axis=0)
            firsts[node.name] = firsts.get(node.name, 0) + rows.sum(axis=0)
            counts[node.name] = counts.get(node.name, 0) + rows.shape[0]
    return {name: np.maximum(sums[name] / counts[name] - (firsts[name] / counts[name]) ** 2, 0.0) for name in sums}
