"""Per-channel statistics of the inputs of weighted layers, gathered in one pass over the data with only sums kept.

Pruning ranks channels by their variance; weight sharing weighs each weight by
its input channel's mean square. Both read the same moments from here.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from onnxslim.ir.layers import RECURRENT_LAYERS, WEIGHTED_LAYERS
from onnxslim.progress import track
from onnxslim.runtime.probe import observer


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


@dataclass(frozen=True)
class ChannelMoments:
    """Mean and mean square of each input channel of one layer over the data; ``cross``: E[x x^T], where asked for."""

    mean: np.ndarray
    mean_square: np.ndarray
    cross: np.ndarray | None = None

    @property
    def variance(self) -> np.ndarray:
        return np.maximum(self.mean_square - self.mean**2, 0.0)

    @property
    def covariance(self) -> np.ndarray | None:
        return None if self.cross is None else self.cross - np.outer(self.mean, self.mean)


STATE = "/state"  # a recurrent layer's name and this: the key of its hidden state's statistics (what its R reads back)


def _input_rows(model: onnx.ModelProto, nodes: list[onnx.NodeProto], source: Iterable, token_mask: str | None, show_progress: bool, description: str,
                states: list[onnx.NodeProto] = ()):
    """Per batch of ``source``, (key, float64 channels-last rows) for each node's first input (key: the node's name), and
    for each of ``states`` (recurrent layers) its hidden state, every step's (key: its name and STATE), computed by one
    observing session."""
    inputs = {v.name for v in model.graph.input}
    names = sorted(({n.input[0] for n in nodes} | {n.output[0] for n in states}) - inputs)
    runner = observer(model, names) if names else None
    batches = track(source, description, enabled=show_progress)
    for _, batch, outputs in runner.run_many(batches) if runner else ((label, batch, []) for label, batch in batches):
        values = dict(zip(runner.output_names, outputs)) if runner else {}
        values.update(batch)
        rows = []
        for node in nodes:
            x = values.get(node.input[0])
            if x is not None and x.dtype.kind == "f" and x.ndim >= 2:
                rows.append((node.name, channel_rows(x, node, batch, token_mask).astype(np.float64)))
        for node in states:
            y = values.get(node.output[0])
            if y is not None and y.dtype.kind == "f" and y.ndim >= 2:  # (steps, directions, batch, hidden): hidden last
                rows.append((node.name + STATE, y.reshape(-1, y.shape[-1]).astype(np.float64)))
        yield rows


def input_moments(
    model: onnx.ModelProto, source: Iterable, *, token_mask: str | None = None, show_progress: bool = False, description: str = "activation statistics",
    cross_for: Collection[str] = (),
) -> dict[str, ChannelMoments]:
    """Layer (Conv, ConvTranspose, Gemm, MatMul, LSTM, GRU, RNN) -> the moments of each of its input channels over ``source``;
    a recurrent layer's name and STATE -> the moments of its hidden units, which it reads back at every step.

    The layers named in ``cross_for`` also get E[x x^T] over their channels.
    """
    layers = [n for n in model.graph.node if n.op_type in WEIGHTED_LAYERS + RECURRENT_LAYERS and n.input]
    states = [n for n in layers if n.op_type in RECURRENT_LAYERS and n.output and n.output[0]]
    sums: dict[str, np.ndarray] = {}
    squares: dict[str, np.ndarray] = {}
    crosses = {name: _GramSum() for name in cross_for}
    counts: dict[str, int] = {}
    for batch_rows in _input_rows(model, layers, source, token_mask, show_progress, description, states):
        for name, rows in batch_rows:
            squares[name] = squares.get(name, 0) + (rows**2).sum(axis=0)
            sums[name] = sums.get(name, 0) + rows.sum(axis=0)
            counts[name] = counts.get(name, 0) + rows.shape[0]
            if name in crosses:
                crosses[name].add(rows)
    totals = {name: gram.total() for name, gram in crosses.items()}
    return {
        name: ChannelMoments(sums[name] / counts[name], squares[name] / counts[name], totals[name] / counts[name] if totals.get(name) is not None else None)
        for name in sums
    }


GRAM_BLOCK_ROWS = 2048  # rows a running X^T X gathers before it multiplies them in


class _GramSum:
    """X^T X over rows that arrive a batch at a time, multiplied in blocks of at least ``GRAM_BLOCK_ROWS`` rows:
    a product per small batch (a sentence's tokens) is a rank-k update that rewrites the whole matrix each time."""

    def __init__(self):
        self._pending: list[np.ndarray] = []
        self._rows = 0
        self._sum: np.ndarray | None = None

    def add(self, rows: np.ndarray) -> None:
        self._pending.append(rows)
        self._rows += rows.shape[0]
        if self._rows >= GRAM_BLOCK_ROWS:
            self._flush()

    def total(self) -> np.ndarray | None:
        self._flush()
        return self._sum

    def _flush(self) -> None:
        if not self._pending:
            return
        block = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        product = block.T @ block
        self._sum = product if self._sum is None else self._sum + product
        self._pending, self._rows = [], 0


def input_grams(
    model: onnx.ModelProto, layers: Mapping[str, str], source: Iterable, *, token_mask: str | None = None, show_progress: bool = False,
    description: str = "input statistics",
) -> tuple[dict[str, np.ndarray], int]:
    """Tensor -> X^T X of its rows (last axis = columns), for ``layers`` (tensor -> a node that reads it); and the batches read.

    The Gram matrix of a MatMul's input is what error-compensating rounding
    needs; summed over batches in float64, so memory is one (K, K) per tensor.
    """
    by_name = {n.name: n for n in model.graph.node}
    grams: dict[str, np.ndarray] = {}
    batches = 0
    for batch_rows in _input_rows(model, [by_name[name] for name in layers.values()], source, token_mask, show_progress, description):
        for name, rows in batch_rows:
            tensor = by_name[name].input[0]
            grams[tensor] = grams.get(tensor, 0) + rows.T @ rows
        batches += 1
    return grams, batches
