"""FP16 with FP32 islands: which nodes may run in half precision, the FP16 model, and its float32 emulation.

The same boundary analysis writes two models: the real FP16 one (weights and
activations in float16, one Cast per tensor where precision changes, graph
inputs and outputs in float32), and an emulation that keeps every tensor in
float32 but rounds to float16 exactly where the real model stores float16.
The emulation runs on any CPU, so the islands can be chosen, and the result
checked, without a GPU; GPU kernels compute in float32 inside (tensor-core
accumulation, Softmax, normalizations) and store float16, which is what the
rounding reproduces.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxslim.ir.graph import topological_sort
from onnxslim.ir.shapes import element_types
from onnxslim.ir.tensors import all_value_names, from_array, outer_references, producer_map, subgraphs, to_array, unique_name

FP16_MAX = 65504.0
FP16_SMALLEST = float(np.finfo(np.float16).smallest_subnormal)  # 2**-24
HEADROOM = 2.0  # a tensor seen above FP16_MAX / HEADROOM on calibration data may overflow on other data

# Ops run in float16 and the input positions that take the float type T (None: every input).
# Inputs at other positions (Resize's scales, shape tensors) keep their type.
FLOAT16_OPS: dict[str, tuple[int, ...] | None] = {
    **dict.fromkeys(
        ("Conv", "ConvTranspose", "MatMul", "Gemm", "Add", "Sub", "Mul", "Div", "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Sigmoid",
         "HardSigmoid", "HardSwish", "Tanh", "Softplus", "Mish", "Gelu", "Erf", "Exp", "Log", "Pow", "Sqrt", "Reciprocal", "Neg", "Abs",
         "Softmax", "LogSoftmax", "BatchNormalization", "InstanceNormalization", "LayerNormalization", "GlobalAveragePool",
         "GlobalMaxPool", "AveragePool", "Concat", "Transpose", "Identity", "Sum", "Mean", "Einsum", "DepthToSpace",
         "SpaceToDepth", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Sin", "Cos", "Floor", "Ceil", "Round", "Sign"),
        None,
    ),
    # data first; the rest are shapes, axes, indices or pads (Clip's bounds and Pad's value are T as well)
    **dict.fromkeys(("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Split", "Expand", "Tile", "Gather", "GatherElements",
                     "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceMax", "ReduceMin", "ReduceLogSumExp", "Resize", "MaxPool"), (0,)),
    "Clip": (0, 1, 2),
    "Pad": (0, 2),
    "Where": (1, 2),
    "Dropout": (0,),
}

SHAPE_READERS = frozenset({"Shape", "Size"})  # read a tensor's shape only: either precision will do

# Ops whose float16 results lose most (wide dynamic range, reductions, exponentials): the budget search tries these first.
FRAGILE_OPS = frozenset({"ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp", "LayerNormalization", "Softmax",
                         "LogSoftmax", "InstanceNormalization", "Exp", "Log", "Pow", "Sqrt", "Reciprocal", "Div", "Erf", "Concat"})


def float_positions(node: onnx.NodeProto) -> tuple[int, ...]:
    """The input positions of ``node`` that carry its float type when it runs in float16."""
    positions = FLOAT16_OPS.get(node.op_type, ())
    return tuple(range(len(node.input))) if positions is None else tuple(p for p in positions if p < len(node.input))


@dataclass(frozen=True)
class Eligibility:
    """Which nodes may run in float16, and why the others may not."""

    eligible: list[str]
    refused: dict[str, str] = field(default_factory=dict)  # node -> why it stays float32
    types: dict[str, int] = field(default_factory=dict)


def eligible_nodes(model: onnx.ModelProto, types: Mapping[str, int] | None = None) -> Eligibility:
    """Nodes that do float32 work with an op that has float16 kernels; the others with the reason they stay float32."""
    types = dict(element_types(model) if types is None else types)
    graph = model.graph
    from_bodies: set[str] = set()
    for node in graph.node:
        for body in subgraphs(node):
            from_bodies |= outer_references(body)
    eligible, refused = [], {}
    for node in graph.node:
        floats = [node.input[p] for p in float_positions(node) if node.input[p]] + list(node.output)
        if not any(types.get(name) == TensorProto.FLOAT for name in floats) or node.op_type == "Cast":
            continue  # no float work (shapes, indices); a Cast to float32 read only by float16 nodes casts to float16 instead
        if list(subgraphs(node)):
            refused[node.name] = "control flow: its bodies stay float32"
        elif node.domain not in ("", "ai.onnx") or node.op_type not in FLOAT16_OPS:
            refused[node.name] = f"{node.op_type}: no float16 path planned for this op"
        elif any(types.get(o) not in (TensorProto.FLOAT, TensorProto.BOOL) for o in node.output if o):
            refused[node.name] = "an output of unknown or non-float type"
        elif any(name in from_bodies for name in node.output):
            refused[node.name] = "read inside a control-flow body, which stays float32"
        else:
            eligible.append(node.name)
    return Eligibility(eligible, refused, types)


def overflowing(model: onnx.ModelProto, absmax: Mapping[str, float]) -> dict[str, str]:
    """Nodes that must stay float32 because a tensor they write or read leaves float16's range, with the reason.

    ``absmax``: the largest magnitude seen per tensor on calibration data.
    Both sides of such a tensor stay float32, since a float16 reader would
    receive it cast down. Weights beyond the range keep their readers float32.
    """
    limit = FP16_MAX / HEADROOM
    kept: dict[str, str] = {}
    big = {name: value for name, value in absmax.items() if value >= limit}
    for tensor in model.graph.initializer:
        if tensor.data_type == TensorProto.FLOAT:
            values = to_array(tensor)
            peak = float(np.max(np.abs(values))) if values.size else 0.0
            if peak >= FP16_MAX:
                big[tensor.name] = peak
    for node in model.graph.node:
        for name in list(node.input) + list(node.output):
            if name in big and node.name not in kept:
                kept[node.name] = f"'{name}' reaches {big[name]:.4g}, beyond float16's safe range ({limit:.0f})"
    return kept


@dataclass
class _Boundaries:
    """Where precision changes once ``half_nodes`` run in float16."""

    half_outputs: set[str]  # float tensors written by float16 nodes
    half_reads: dict[str, list[tuple[onnx.NodeProto, int]]]  # float32 tensor -> float16 readers (node, position)
    float_reads: dict[str, list[tuple[onnx.NodeProto, int]]]  # float16 tensor -> float32 readers
    graph_outputs: set[str]


def _boundaries(model: onnx.ModelProto, half_nodes: set[str], types: Mapping[str, int]) -> _Boundaries:
    graph = model.graph
    half_outputs = {o for n in graph.node if n.name in half_nodes for o in n.output if types.get(o) == TensorProto.FLOAT}
    half_reads: dict[str, list] = defaultdict(list)
    float_reads: dict[str, list] = defaultdict(list)
    for node in graph.node:
        positions = set(float_positions(node)) if node.name in half_nodes else set()
        for index, name in enumerate(node.input):
            if not name:
                continue
            if index in positions and name not in half_outputs and types.get(name) == TensorProto.FLOAT:
                half_reads[name].append((node, index))
            elif name in half_outputs and index not in positions and node.op_type not in SHAPE_READERS:
                float_reads[name].append((node, index))
    return _Boundaries(half_outputs, dict(half_reads), dict(float_reads), {o.name for o in graph.output})


def _to_half(values: np.ndarray) -> tuple[np.ndarray, int, int]:
    """``values`` in float16, how many were saturated and how many were kept from rounding to zero.

    Values beyond float16's range saturate at +-65504. A nonzero value too
    small for float16 becomes the smallest float16 of its sign rather than
    zero: an epsilon such as LayerNorm's 1e-12 that turned into 0 would divide
    by zero on a constant row, and onnxruntime declines to fuse a LayerNorm
    whose epsilon is 0 (one kernel becomes nine).
    """
    clipped = int(np.count_nonzero(np.abs(values) > FP16_MAX))
    half = np.clip(values, -FP16_MAX, FP16_MAX).astype(np.float16)
    vanished = (half == 0) & (values != 0)
    lifted = int(np.count_nonzero(vanished))
    if lifted:
        half[vanished] = np.copysign(FP16_SMALLEST, values[vanished]).astype(np.float16)
    return half, clipped, lifted


@dataclass
class Float16Result:
    """The float16 (or emulated) model and what the conversion did."""

    model: onnx.ModelProto
    half_nodes: int = 0
    casts: int = 0  # Cast nodes inserted where precision changes
    weights_converted: int = 0
    saturated_weights: int = 0  # weight values beyond float16's range, stored as +-65504
    lifted_weights: int = 0  # nonzero weight values below float16's smallest, stored as +-2**-24 instead of 0


def to_float16(model: onnx.ModelProto, half_nodes: Iterable[str], types: Mapping[str, int] | None = None, *, emulate: bool = False) -> Float16Result:
    """A copy of ``model`` with ``half_nodes`` in float16 (``emulate``: float32 rounded to float16 where the real model stores float16).

    Graph inputs and outputs keep their float32 type. Every tensor that
    changes precision gets one Cast, shared by all its readers, so no pair of
    Casts cancels; a Cast to float32 whose readers all run in float16 casts to
    float16 instead.
    """
    result_model = onnx.ModelProto()
    result_model.CopyFrom(model)
    half = set(half_nodes)
    types = dict(element_types(model) if types is None else types)
    graph = result_model.graph
    bounds = _boundaries(result_model, half, types)
    taken = all_value_names(graph)
    node_names = {n.name for n in graph.node}
    result = Float16Result(result_model, half_nodes=sum(1 for n in graph.node if n.name in half))
    initializers = {t.name: t for t in graph.initializer}
    producers = producer_map(graph)
    readers: dict[str, int] = defaultdict(int)
    for node in graph.node:
        for name in node.input:
            readers[name] += 1
    new_nodes: list[onnx.NodeProto] = []
    retyped: set[str] = set()

    def rounding(source: str, target: str, stem: str) -> list[onnx.NodeProto]:
        """Nodes that make ``target`` the float16 version of float32 ``source`` (two Casts when emulating)."""
        if not emulate:
            return [helper.make_node("Cast", [source], [target], name=unique_name(f"{stem}_to_fp16", node_names), to=TensorProto.FLOAT16)]
        middle = unique_name(f"{target}_half", taken)
        return [helper.make_node("Cast", [source], [middle], name=unique_name(f"{stem}_to_fp16", node_names), to=TensorProto.FLOAT16),
                helper.make_node("Cast", [middle], [target], name=unique_name(f"{stem}_to_fp32", node_names), to=TensorProto.FLOAT)]

    # float32 tensors read by float16 nodes: weights converted, Casts to float32 retargeted, the rest cast once
    for name, reads in bounds.half_reads.items():
        producer = producers.get(name)
        sole_reader = readers[name] == len(reads) and name not in bounds.graph_outputs
        if name in initializers:
            values, saturated, lifted = _to_half(to_array(initializers[name]))
            result.saturated_weights += saturated
            result.lifted_weights += lifted
            result.weights_converted += 1
            stored = values.astype(np.float32) if emulate else values
            if sole_reader:
                initializers[name].CopyFrom(from_array(stored, name))
                continue
            target = unique_name(f"{name}_fp16", taken)
            graph.initializer.append(from_array(stored, target))
        elif producer is not None and producer.op_type == "Cast" and sole_reader and not emulate:
            for attribute in producer.attribute:
                if attribute.name == "to":
                    attribute.i = TensorProto.FLOAT16
            retyped.add(name)
            continue
        else:
            target = unique_name(f"{name}_fp16", taken)
            new_nodes.extend(rounding(name, target, name))
            result.casts += 1
        for node, index in reads:
            node.input[index] = target

    # float16 results read by float32 nodes or leaving the graph
    for node in list(graph.node):
        if node.name not in half:
            continue
        for position, name in enumerate(node.output):
            if name not in bounds.half_outputs:
                continue
            if emulate:  # every stored float16 value is rounded, whoever reads it
                stored = unique_name(f"{name}_unrounded", taken)
                node.output[position] = stored
                new_nodes.extend(rounding(stored, name, name)[0:2])
                result.casts += 1
                continue
            float_readers = bounds.float_reads.get(name, [])
            if name in bounds.graph_outputs:
                inner = unique_name(f"{name}_fp16", taken)
                node.output[position] = inner
                wide_reads = {(id(reader), index) for reader, index in float_readers}
                for other in graph.node:
                    for index, read in enumerate(other.input):
                        if read == name and (id(other), index) not in wide_reads:
                            other.input[index] = inner
                new_nodes.append(helper.make_node("Cast", [inner], [name], name=unique_name(f"{name}_to_fp32", node_names), to=TensorProto.FLOAT))
                result.casts += 1
            elif float_readers:
                wide = unique_name(f"{name}_fp32", taken)
                new_nodes.append(helper.make_node("Cast", [name], [wide], name=unique_name(f"{name}_to_fp32", node_names), to=TensorProto.FLOAT))
                result.casts += 1
                for reader, index in float_readers:
                    reader.input[index] = wide

    graph.node.extend(new_nodes)
    if not emulate:
        renamed = bounds.half_outputs | retyped | {n.output[0] for n in new_nodes if n.op_type == "Cast"}
        kept = [v for v in graph.value_info if v.name not in renamed]
        del graph.value_info[:]
        graph.value_info.extend(kept)  # the changed types are inferred again by whoever reads the model
    topological_sort(graph)
    return result
