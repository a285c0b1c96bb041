"""Write a QDQ MatMul with a float bias as MatMulInteger -> Cast -> Mul -> Add, which onnxruntime runs as one kernel.

onnxruntime's CPU provider turns DequantizeLinear -> MatMul into MatMulIntegerToFloat,
but where it cannot build a QGemm (an input of dynamic shape: a sequence of any
length) the bias Add stays a node of its own, one more pass over the output.
Its MatMulInteger fusion does take the bias: MatMulInteger -> Cast -> Mul(scale)
-> Add(constant bias) becomes one MatMulIntegerToFloat with the bias applied as
the integer products are scaled. Every value stays as it was: the same INT8
products, the same float32 scale (input scale times weight scale, as onnxruntime
computes it), the same float bias.

That fusion wants the scale from a Mul of two tensors that are not both
constants (onnxruntime folds constant expressions first, and would fold a Mul of
two initializers away): the scale is written as ``Mul(one, scales)``, where
``one`` is 1.0 from a DequantizeLinear, a node onnxruntime keeps unfolded in
QDQ models so that its quantization fusions can see it. One such node serves
every rewritten MatMul, through a Reshape: onnxruntime gives each reader of a
DequantizeLinear a copy of its own, one more node per layer at run time.

Rewritten: a MatMul (standard domain) whose first input is a DequantizeLinear of
UINT8 with a scalar scale and zero point (the quantized activation), whose
second is a DequantizeLinear of a 2-D INT8 or UINT8 constant with a scale per
column or per tensor (the weight), and whose result only an Add of a float
constant of shape (N,) reads. Nodes named in ``skip`` stay as they are.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxslim.ir.graph import drop_unread_initializers, node_attr
from onnxslim.ir.tensors import all_value_names, consumers_map, from_array, unique_name
from onnxslim.passes.base import DeclineCode, PassResult
from onnxslim.passes.matching import GraphIndex
from onnxslim.passes.opset import default_opset

MATMUL_INTEGER_OPSET = 10


@dataclass
class _Match:
    matmul: onnx.NodeProto
    add: onnx.NodeProto
    dequantizers: tuple[onnx.NodeProto, onnx.NodeProto]  # of the input and the weight: removed when nothing else reads them
    bias: str
    quantized_input: str
    input_zero_point: str
    stored_weight: str
    weight_zero_point: str | None  # None: all zero, left out (onnxruntime's per-column zero point path is slower)
    scales: np.ndarray  # input scale times weight scale, float32


def _dequantized(index: GraphIndex, name: str) -> tuple[onnx.NodeProto, np.ndarray | None, np.ndarray | None, np.ndarray | None] | None:
    """The DequantizeLinear producing ``name`` with its stored values (when constant), scale and zero point."""
    node = index.producers.get(name)
    if node is None or node.op_type != "DequantizeLinear" or len(node.input) < 3 or node.domain not in ("", "ai.onnx"):
        return None
    return node, index.array(node.input[0]), index.array(node.input[1]), index.array(node.input[2])


def _match(index: GraphIndex, node: onnx.NodeProto) -> _Match | tuple[DeclineCode, str] | None:
    activation, weight = _dequantized(index, node.input[0]), _dequantized(index, node.input[1])
    if activation is None or weight is None:
        return None
    _, _, input_scale, input_zero = activation
    if input_scale is None or input_zero is None or input_scale.size != 1 or input_zero.size != 1:
        return DeclineCode.UNSUPPORTED_FORM, "the input is not quantized with one constant scale and zero point"
    if input_zero.dtype != np.uint8:
        return DeclineCode.UNSUPPORTED_TYPE, f"the input is quantized to {input_zero.dtype} (onnxruntime's integer MatMul with a bias takes UINT8)"
    dq, stored, weight_scale, weight_zero = weight
    if stored is None or weight_scale is None or weight_zero is None or stored.ndim != 2 or stored.dtype not in (np.int8, np.uint8):
        return None
    columns = stored.shape[1]
    per_column = weight_scale.shape == (columns,) and weight_zero.shape == (columns,) and node_attr(dq, "axis", 1) in (1, -1)
    if not per_column and not (weight_scale.size == 1 and weight_zero.size == 1):
        return DeclineCode.UNSUPPORTED_FORM, f"weight {node.input[1]} is not quantized per column or per tensor"
    if not index.private(node.output[0]):
        return None
    add = index.readers(node.output[0])[0]
    if add.op_type != "Add" or add.domain not in ("", "ai.onnx") or len(add.input) != 2:
        return None
    bias = add.input[1] if add.input[0] == node.output[0] else add.input[0]
    values = index.array(bias)
    if values is None or values.dtype != np.float32 or values.shape != (columns,):
        return None
    scales = (input_scale.astype(np.float32).reshape(()) * weight_scale.astype(np.float32).reshape(-1)).astype(np.float32)
    return _Match(node, add, (activation[0], dq), bias, activation[0].input[0], activation[0].input[2], dq.input[0], dq.input[2] if weight_zero.any() else None, scales)


def bias_into_integer_matmuls(model: onnx.ModelProto, skip: Iterable[str] = ()) -> PassResult:
    """Rewrite each matching QDQ MatMul and its bias Add (see the module docstring) as MatMulInteger -> Cast -> Mul -> Add."""
    result = PassResult("bias-into-integer-matmuls")
    graph = model.graph
    index = GraphIndex(graph)
    skipped = set(skip)
    matches = []
    for node in graph.node:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or len(node.input) != 2 or node.name in skipped:
            continue
        found = _match(index, node)
        if isinstance(found, tuple):
            result.decline(node.name, *found)
        elif found is not None:
            matches.append(found)
    if not matches:
        return result
    if default_opset(model) < MATMUL_INTEGER_OPSET:
        result.decline("model", DeclineCode.OPSET, f"MatMulInteger needs opset {MATMUL_INTEGER_OPSET}; the model has {default_opset(model)}")
        return result
    taken = all_value_names(graph) | {n.name for n in graph.node}
    stored_one, scale_one, shape, dequantized, one = (
        unique_name(f"integer_matmul_{what}", taken) for what in ("stored_one", "scale_one", "one_shape", "one_dequantized", "one"))
    graph.initializer.extend([
        from_array(np.ones(1, np.int8), stored_one), from_array(np.array(1.0, np.float32), scale_one), from_array(np.ones(1, np.int64), shape)])
    replacements: dict[int, list[onnx.NodeProto]] = {}
    for match in matches:
        base = match.matmul.name or match.matmul.output[0]
        integer, product, scales, scale = (unique_name(f"{base}_{what}", taken) for what in ("integer", "integer_float", "scales", "scale"))
        graph.initializer.append(from_array(match.scales, scales))
        inputs = [match.quantized_input, match.stored_weight, match.input_zero_point] + ([match.weight_zero_point] if match.weight_zero_point else [])
        nodes = [
            helper.make_node("MatMulInteger", inputs, [integer], name=match.matmul.name),
            helper.make_node("Cast", [integer], [product], name=unique_name(f"{base}_to_float", taken), to=TensorProto.FLOAT),
            helper.make_node("Mul", [one, scales], [scale], name=unique_name(f"{base}_scales", taken)),
            helper.make_node("Mul", [product, scale], [match.matmul.output[0]], name=unique_name(f"{base}_scaled", taken)),
        ]
        replacements[id(match.matmul)] = nodes
        del match.add.input[:]
        match.add.input.extend([match.matmul.output[0], match.bias])  # onnxruntime takes the bias from the Add's second input
        result.change(f"{match.matmul.name}: MatMulInteger with its bias {match.bias}, fused by onnxruntime into one kernel")
    nodes = [helper.make_node("DequantizeLinear", [stored_one, scale_one], [dequantized], name=unique_name("integer_matmul_one", taken)),
             helper.make_node("Reshape", [dequantized, shape], [one], name=unique_name("integer_matmul_one_shared", taken))]
    for node in graph.node:
        nodes.extend(replacements.get(id(node), [node]))
    del graph.node[:]
    graph.node.extend(nodes)
    readers = consumers_map(graph)  # reads from inside If/Loop/Scan bodies count
    unread = {dq.output[0]: dq for match in matches for dq in match.dequantizers if dq.output[0] not in readers and dq.output[0] not in index.outputs}
    kept = [node for node in graph.node if not (node.op_type == "DequantizeLinear" and node.output[0] in unread)]
    del graph.node[:]
    graph.node.extend(kept)
    drop_unread_initializers(graph, {name for dq in unread.values() for name in dq.input})
    return result
