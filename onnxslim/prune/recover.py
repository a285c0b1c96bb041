"""Retraining-free recovery after pruning: bias compensation and ridge refits of the layers that lost inputs.

The original model is the teacher. For every layer whose inputs lost channels
(a consumer), either:

- bias compensation: the removed channels contributed, on average,
  sum_c mean(x_c) * W[:, c] to the consumer's output; that constant is added
  to its bias, so the output keeps its mean; or
- refit: for linear consumers (Gemm, MatMul, 1x1 Conv) the weights over the
  kept channels are re-solved by ridge least squares so that, on the
  calibration data, the pruned model's input to the layer reproduces the
  original model's output of the layer. Layers are refit in graph order, each
  on inputs from the already refit pruned model. The ridge term is
  ``ridge * mean(diag(X^T X))``.

Only sums (X^T X, X^T Y, channel means) are kept, so memory does not grow
with the amount of data.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

import numpy as np
import onnx

from onnxslim.ir.graph import node_attr
from onnxslim.ir.layers import weight_axes
from onnxslim.ir.tensors import all_value_names, from_array, initializer_map, to_array, unique_name
from onnxslim.progress import track
from onnxslim.prune.statistics import channel_rows
from onnxslim.reasons import Reason
from onnxslim.records import Record
from onnxslim.runtime.probe import probe_runner

LINEAR = ("Gemm", "MatMul", "Conv")


class RecoveryKind(Enum):
    """How a layer that lost input channels was compensated."""

    REFIT = "refit"  # weights re-solved by ridge least squares
    BIAS = "bias"  # the removed channels' mean contribution added to the bias
    NONE = "none"  # nothing to compensate into; left as pruned


@dataclass(frozen=True)
class RecoveryStep(Record):
    """What recovery did to one layer."""

    layer: str
    reason: Reason

    @property
    def kind(self) -> RecoveryKind:
        return self.reason.code  # type: ignore[return-value]

    def __str__(self) -> str:
        return f"{self.layer}: {self.reason.text}"
MIN_ROWS_PER_INPUT = 1  # a refit needs at least as many observations as unknowns per output; the ridge term does the rest


def _changed_consumers(original: onnx.ModelProto, pruned: onnx.ModelProto, kept: dict) -> list[tuple[onnx.NodeProto, onnx.NodeProto]]:
    """(original node, pruned node) pairs of linear layers whose input channels shrank, in graph order."""
    by_name = {n.name: n for n in original.graph.node}
    before = initializer_map(original.graph)
    pairs = []
    for node in pruned.graph.node:
        old = by_name.get(node.name)
        if old is None or node.op_type not in LINEAR or node.name not in kept or "in" not in kept[node.name]:
            continue
        if node.op_type == "Conv" and int(node_attr(node, "group", 1)) != 1:
            continue
        total = list(before[old.input[1]].dims)[weight_axes(old)[0]] if old.input[1] in before else None
        if total is not None and len(kept[node.name]["in"]) < total:
            pairs.append((old, node))
    return pairs


def _as_matrix(weight: np.ndarray, node: onnx.NodeProto) -> np.ndarray | None:
    """Weights as (inputs, outputs) for a linear layer, None for a spatial conv."""
    if node.op_type == "Conv":
        return weight[:, :, 0, 0].T if weight.ndim == 4 and weight.shape[2:] == (1, 1) and all(p == 0 for p in node_attr(node, "pads", [0])) else None
    if node.op_type == "Gemm" and int(node_attr(node, "transB", 0)):
        return weight.T
    return weight


def _from_matrix(matrix: np.ndarray, node: onnx.NodeProto, like: np.ndarray) -> np.ndarray:
    if node.op_type == "Conv":
        return matrix.T.reshape(like.shape[0], matrix.shape[0], 1, 1)
    if node.op_type == "Gemm" and int(node_attr(node, "transB", 0)):
        return matrix.T
    return matrix


def _bias_slot(model: onnx.ModelProto, node: onnx.NodeProto) -> tuple[onnx.NodeProto, int] | None:
    """(node, input index) holding the layer's per-output bias: its own, or the Add right after a MatMul."""
    if node.op_type in ("Conv", "Gemm"):
        return node, 2
    readers = [n for n in model.graph.node if node.output[0] in n.input]
    inits = initializer_map(model.graph)
    if len(readers) == 1 and readers[0].op_type == "Add":
        other = [i for i, name in enumerate(readers[0].input) if name != node.output[0]]
        if other and readers[0].input[other[0]] in inits and to_array(inits[readers[0].input[other[0]]]).ndim == 1:
            return readers[0], other[0]
    return None


def _set_input(model: onnx.ModelProto, node: onnx.NodeProto, index: int, array: np.ndarray, taken: set[str], dtype: np.dtype) -> None:
    """Feed ``node``'s input ``index`` from a new initializer holding ``array`` in the layer's own float type."""
    base = node.input[index] if index < len(node.input) and node.input[index] else f"{node.name}_bias"
    name = unique_name(f"{base}_recovered", taken)
    model.graph.initializer.append(from_array(array.astype(dtype), name))
    while len(node.input) <= index:
        node.input.append("")
    node.input[index] = name


def recover(original: onnx.ModelProto, pruned: onnx.ModelProto, source: Iterable, config, kept: dict, *, show_progress: bool = False) -> list[RecoveryStep]:
    """Compensate (in place on ``pruned``) the layers that lost input channels; returns what was done.

    ``kept`` gives, per layer, the surviving input and output channels in the original numbering.
    """
    lines = []
    taken = all_value_names(pruned.graph)
    readers = Counter(name for node in pruned.graph.node for name in node.input[1:] if name)
    for old, new in track(_changed_consumers(original, pruned, kept), "recovering layers", enabled=show_progress):
        if any(readers[name] > 1 for name in new.input[1:] if name):
            # a refit would give each use its own weights: the shared tensor would be written once per use
            lines.append(RecoveryStep(new.name, Reason(RecoveryKind.NONE, "weights shared with other layers: left as pruned, so they stay one tensor")))
            continue
        outputs = kept[new.name].get("out")
        refit = config.recovery == "refit"
        mask = config.token_mask
        done = _refit(original, pruned, old, new, source, config.ridge, taken, outputs, mask) if refit else None
        if done is None:
            done = _compensate_bias(original, pruned, old, new, source, taken, kept[new.name]["in"], outputs, mask)
        lines.append(RecoveryStep(new.name, done))
    return lines


def _layer_stats(original, pruned, old, new, source, outputs, token_mask):
    """Streaming sums over the data: X^T X, X^T Y and column sums, X from the pruned model, Y from the original."""
    teacher = probe_runner(original, [old.output[0]])
    student = probe_runner(pruned, [new.input[0]])
    xtx = xty = xsum = ysum = None
    rows = 0
    for _, batch in source:
        (y,) = teacher.run(batch, [old.output[0]])
        (x,) = student.run(batch, [new.input[0]])
        x = channel_rows(x, new, batch, token_mask).astype(np.float64)
        y = channel_rows(y, new, batch, token_mask).astype(np.float64)
        if outputs is not None:
            y = y[:, outputs]
        if xtx is None:
            xtx, xty, xsum, ysum = x.T @ x, x.T @ y, x.sum(axis=0), y.sum(axis=0)
        else:
            xtx += x.T @ x
            xty += x.T @ y
            xsum += x.sum(axis=0)
            ysum += y.sum(axis=0)
        rows += x.shape[0]
    return xtx, xty, xsum, ysum, rows


def _refit(original, pruned, old, new, source, ridge, taken, outputs, token_mask) -> Reason | None:
    inits = initializer_map(pruned.graph)
    weight = to_array(inits[new.input[1]])
    matrix = _as_matrix(weight, new)
    slot = _bias_slot(pruned, new)
    if matrix is None or slot is None:
        return None
    bias_node, bias_index = slot
    has_bias = bias_index < len(bias_node.input) and bool(bias_node.input[bias_index])
    bias = to_array(inits[bias_node.input[bias_index]]).astype(np.float64) if has_bias else np.zeros(matrix.shape[1])
    xtx, xty, xsum, ysum, rows = _layer_stats(original, pruned, old, new, source, outputs, token_mask)
    count = xtx.shape[0]
    if rows < MIN_ROWS_PER_INPUT * (count + 1):
        return None  # too few samples to determine the weights; bias compensation is safer
    # [X 1]^T [X 1] w = [X 1]^T Y: the last row of the solution is an intercept
    gram = np.zeros((count + 1, count + 1))
    gram[:count, :count] = xtx
    gram[:count, count] = gram[count, :count] = xsum
    gram[count, count] = rows
    cross = np.vstack([xty, ysum[None, :]])
    penalty = ridge * float(np.mean(np.diag(xtx))) if count else 0.0
    try:
        solution = np.linalg.solve(gram + np.diag(np.r_[np.full(count, penalty), 0.0]), cross)
    except np.linalg.LinAlgError:
        return None
    new_matrix, intercept = solution[:count], solution[count]
    # Conv and Gemm outputs include their bias, so the intercept is the new bias; a MatMul's
    # output does not, so the intercept is a correction added to the bias of the Add after it.
    new_bias = intercept if bias_node is new else bias + intercept
    _set_input(pruned, bias_node, bias_index, new_bias.reshape(bias.shape), taken, weight.dtype)
    _set_input(pruned, new, 1, _from_matrix(new_matrix, new, weight), taken, weight.dtype)
    return Reason(RecoveryKind.REFIT, f"refit {count} input channel(s) by ridge least squares on {rows} rows (ridge {penalty:.3g})")


def _compensate_bias(original, pruned, old, new, source, taken, kept_in, kept_out, token_mask) -> Reason:
    before = to_array(initializer_map(original.graph)[old.input[1]])
    axis = weight_axes(new)[0]
    if kept_out is not None:
        before = np.take(before, kept_out, axis=weight_axes(new)[1])
    slot = _bias_slot(pruned, new)
    if slot is None:
        return Reason(RecoveryKind.NONE, "no bias to compensate into; left as pruned")
    teacher = probe_runner(original, [old.input[0]])
    total, rows = None, 0
    for _, batch in source:
        (x,) = teacher.run(batch, [old.input[0]])
        cols = channel_rows(x, old, batch, token_mask).astype(np.float64)
        total = cols.sum(axis=0) if total is None else total + cols.sum(axis=0)
        rows += cols.shape[0]
    mean = total / max(rows, 1)
    removed = np.setdiff1d(np.arange(before.shape[axis]), kept_in)
    contribution = np.take(before, removed, axis=axis).astype(np.float64)
    if new.op_type == "Conv":
        delta = np.einsum("oikl,i->o", contribution, mean[removed])
    elif axis == 1:  # Gemm with transB: (N, K)
        delta = contribution @ mean[removed]
    else:
        delta = mean[removed] @ contribution
    bias_node, index = slot
    inits = initializer_map(pruned.graph)
    current = to_array(inits[bias_node.input[index]]) if index < len(bias_node.input) and bias_node.input[index] else np.zeros(delta.shape)
    _set_input(pruned, bias_node, index, current + delta.reshape(current.shape), taken, before.dtype)
    return Reason(RecoveryKind.BIAS, f"added the mean contribution of {removed.size} removed channel(s) to the bias")


