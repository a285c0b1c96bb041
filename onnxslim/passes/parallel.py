"""Merge MatMuls that read the same input into one wider MatMul followed by a Split.

Attention's query, key and value projections (and any other parallel linear
layers) read one activation, each with a weight of its own. One MatMul over the
weights side by side computes the same columns in one kernel call with one bias
Add instead of three: at short sequences, where onnxruntime's cost per node is a
large share of a run, that is measurably faster, and every output keeps its
value (each column is computed as before).

Merged: two or more MatMuls reading tensor X as their first input whose
weights are all float constants, or all INT8 constants behind a
DequantizeLinear with a scale per column (a QDQ model's weights: the scales
and zero points are put side by side too), of the same height, each read by
no other node; those whose result goes only to an Add of a constant bias of
shape (N,) (float, or INT32 behind a DequantizeLinear) are merged with their
biases, the others (at least two of them) without. Nodes named in
``keep_separate`` stay as they are.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from onnxslim.ir.graph import drop_unread_initializers, node_attr
from onnxslim.ir.tensors import all_value_names, from_array, unique_name
from onnxslim.passes.base import DeclineCode, PassResult
from onnxslim.passes.matching import GraphIndex
from onnxslim.passes.opset import default_opset

SPLIT_INPUT_OPSET = 13  # Split's sizes became an input instead of an attribute
NEGATIVE_AXIS_OPSET = 11


@dataclass
class _Weight:
    """A MatMul's constant weight: its values (float, or stored INT8 with scales and zero points per column)."""

    parts: tuple[np.ndarray, ...]  # (values,) or (stored, scales, zero points)
    kind: tuple  # what must match to merge: float, or the stored, scale and zero point types
    nodes: list[onnx.NodeProto] = field(default_factory=list)  # the DequantizeLinear, removed with the MatMul
    tensors: list[str] = field(default_factory=list)  # initializers only this weight reads

    @property
    def shape(self) -> tuple[int, ...]:
        return self.parts[0].shape


@dataclass
class _Member:
    node: onnx.NodeProto
    weight: _Weight
    bias: tuple[onnx.NodeProto, _Weight] | None  # the bias Add merged with it, and the bias (float, or INT32 behind a DequantizeLinear)

    @property
    def result(self) -> str:
        """The tensor the rest of the graph reads: the bias Add's output, or the MatMul's."""
        return self.bias[0].output[0] if self.bias else self.node.output[0]


def _private_constant(index: GraphIndex, name: str) -> np.ndarray | None:
    return index.array(name) if index.private(name) else None


def _weight(index: GraphIndex, node: onnx.NodeProto) -> _Weight | tuple[DeclineCode, str] | None:
    """The weight of ``node`` in a form that can merge, None when it is not a constant, or why it cannot merge."""
    name = node.input[1]
    values = index.array(name)
    if values is not None:
        if values.dtype != np.float32 or values.ndim != 2:
            return None
        if _private_constant(index, name) is None:
            return DeclineCode.SHARED_VALUE, f"weight {name} is read by other nodes too: merging would copy it"
        return _Weight((values,), ("float",), tensors=[name])
    dq = index.producers.get(name)
    if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 3 or not index.private(name):
        return None
    stored, scales, zeros = (_private_constant(index, i) for i in dq.input[:3])
    if stored is None or scales is None or zeros is None:
        return DeclineCode.SHARED_VALUE, f"weight {name} is dequantized from tensors other nodes read too"
    columns = stored.shape[-1] if stored.ndim == 2 else -1
    if stored.ndim != 2 or node_attr(dq, "axis", 1) != 1 or scales.shape != (columns,) or zeros.shape != (columns,):
        return DeclineCode.UNSUPPORTED_FORM, f"weight {name} is not quantized with a scale per column"
    return _Weight((stored, scales, zeros), (stored.dtype, scales.dtype, zeros.dtype), nodes=[dq], tensors=list(dq.input[:3]))


def _bias(index: GraphIndex, node: onnx.NodeProto, columns: int) -> tuple[onnx.NodeProto, _Weight] | None:
    """The Add of a constant (columns,) bias that alone reads ``node``'s result, with the bias: float values, or
    stored values, scales and zero points per column behind a DequantizeLinear (a QDQ model's INT32 bias)."""
    if not index.private(node.output[0]):
        return None
    add = index.readers(node.output[0])[0]
    if add.op_type != "Add" or len(add.input) != 2:
        return None
    other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
    values = index.array(other)
    if values is not None:
        return (add, _Weight((values,), ("float",), tensors=[other])) if values.dtype == np.float32 and values.shape == (columns,) else None
    dq = index.producers.get(other)
    if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 3 or not index.private(other):
        return None
    parts = tuple(_private_constant(index, name) for name in dq.input[:3])
    if any(part is None or part.shape != (columns,) for part in parts) or node_attr(dq, "axis", 1) not in (0, -1):
        return None
    return add, _Weight(parts, tuple(part.dtype for part in parts), nodes=[dq], tensors=list(dq.input[:3]))


def _groups(graph: onnx.GraphProto, index: GraphIndex, keep_separate: Iterable[str], result: PassResult) -> list[list[_Member]]:
    keep = set(keep_separate)
    by_input: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        if node.op_type == "MatMul" and node.domain in ("", "ai.onnx") and len(node.input) == 2 and node.name not in keep:
            by_input.setdefault(node.input[0], []).append(node)
    groups = []
    for readers in by_input.values():
        if len(readers) < 2:
            continue
        members = []
        for node in readers:
            weight = _weight(index, node)
            if isinstance(weight, tuple):
                result.decline(node.name, *weight)
            elif weight is not None:
                members.append(_Member(node, weight, _bias(index, node, weight.shape[1])))
        alike: dict[tuple, list[_Member]] = {}
        for member in members:
            bias_kind = member.bias[1].kind if member.bias else None
            alike.setdefault((member.weight.kind, member.weight.shape[0], bias_kind), []).append(member)
        groups.extend(part for part in alike.values() if len(part) >= 2)
    return groups


def _side_by_side(graph: onnx.GraphProto, pieces: list[_Weight], base: str, taken: set[str], axis: int) -> tuple[str, list[onnx.NodeProto]]:
    """``pieces`` (weights or biases) joined along their last axis: the tensor's name, and the DequantizeLinear that
    produces it when they are stored quantized (``axis``: its per-column axis)."""
    parts = [np.concatenate([piece.parts[i] for piece in pieces], axis=-1) for i in range(len(pieces[0].parts))]
    names = [unique_name(f"{base}_{what}", taken) for what in ("values", "scale", "zero_point")[: len(parts)]]
    graph.initializer.extend(from_array(part, name) for part, name in zip(parts, names))
    if len(parts) == 1:
        return names[0], []
    joined = unique_name(f"{base}_dequantized", taken)
    return joined, [helper.make_node("DequantizeLinear", names, [joined], name=unique_name(f"{base}_dequantize", taken), axis=axis)]


def has_parallel_matmuls(model: onnx.ModelProto) -> bool:
    """Whether two MatMuls of the main graph read one input: what :func:`merge_parallel_matmuls` could merge, found
    without reading a weight."""
    inputs = [node.input[0] for node in model.graph.node if node.op_type == "MatMul" and node.domain in ("", "ai.onnx") and node.input]
    return len(inputs) != len(set(inputs))


def merge_parallel_matmuls(model: onnx.ModelProto, keep_separate: Iterable[str] = ()) -> PassResult:
    """Merge each group of MatMuls reading one input (see the module docstring) into MatMul [+ Add] + Split."""
    result = PassResult("merge-parallel-matmuls")
    graph = model.graph
    opset = default_opset(model)
    index = GraphIndex(graph)
    groups = _groups(graph, index, keep_separate, result)
    if not groups:
        return result
    if opset < NEGATIVE_AXIS_OPSET:
        result.decline("model", DeclineCode.OPSET, f"Split on the last axis of any rank needs opset {NEGATIVE_AXIS_OPSET}; the model has {opset}")
        return result
    taken = all_value_names(graph) | {n.name for n in graph.node}
    new_nodes: dict[int, list[onnx.NodeProto]] = {}
    removed: set[int] = set()
    dropped: set[str] = set()
    for members in groups:
        first = members[0].node
        base = first.name or first.output[0]
        name = unique_name("+".join(m.node.name or m.node.output[0] for m in members), taken)
        weight, nodes = _side_by_side(graph, [m.weight for m in members], f"{base}_merged_weight", taken, axis=1)
        product = unique_name(f"{base}_merged_output", taken)
        nodes.append(helper.make_node("MatMul", [first.input[0], weight], [product], name=name))
        if members[0].bias is not None:
            bias, dequantize = _side_by_side(graph, [m.bias[1] for m in members], f"{base}_merged_bias", taken, axis=0)
            nodes[:0] = dequantize
            biased = unique_name(f"{base}_merged_biased", taken)
            nodes.append(helper.make_node("Add", [product, bias], [biased], name=unique_name(f"{name}_bias", taken)))
            product = biased
        widths = [int(m.weight.shape[1]) for m in members]
        outputs = [m.result for m in members]
        split = unique_name(f"{name}_split", taken)
        if opset >= SPLIT_INPUT_OPSET:
            sizes = unique_name(f"{base}_merged_widths", taken)
            graph.initializer.append(from_array(np.array(widths, np.int64), sizes))
            nodes.append(helper.make_node("Split", [product, sizes], outputs, name=split, axis=-1))
        else:
            nodes.append(helper.make_node("Split", [product], outputs, name=split, axis=-1, split=widths))
        new_nodes[id(first)] = nodes
        for m in members:
            removed.update(id(n) for n in [m.node, *m.weight.nodes])
            dropped.update(m.weight.tensors)
            if m.bias is not None:
                removed.update(id(n) for n in [m.bias[0], *m.bias[1].nodes])
                dropped.update(m.bias[1].tensors)
        result.change(f"merged {len(members)} MatMuls reading {first.input[0]} ({', '.join(m.node.name for m in members)}) into one, then a Split")
    kept = []
    for node in graph.node:
        kept.extend(new_nodes.get(id(node), []))
        if id(node) not in removed:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    drop_unread_initializers(graph, dropped)
    return result
