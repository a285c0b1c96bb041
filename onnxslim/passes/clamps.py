"""Write an elementwise Max or Min with a constant scalar as the Clip it is.

tf2onnx writes ``tf.maximum(x, c)`` and ``tf.minimum(x, c)`` as Max and Min with a one-element
constant (openWakeWord's embedding network floors each LeakyReLU at -0.4 so), and so does torch
for ``torch.maximum`` with a constant tensor. The numbers are Clip's, but the quantizer folds a
Clip into the quantized output before it (its UINT8 range saturates where the Clip does) and
has nothing for Max or Min: each stays a float island with a dequantize before it and a
quantize after it.

    Max(x, c)  ->  Clip(x, min=c)        Min(x, c)  ->  Clip(x, max=c)        (c: one element, float)
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxslim.ir.graph import drop_unread_initializers
from onnxslim.ir.shapes import shapes_and_types
from onnxslim.ir.tensors import all_value_names, from_array, tensor_elements, unique_name
from onnxslim.passes.base import DeclineCode, PassResult
from onnxslim.passes.matching import GraphIndex
from onnxslim.passes.opset import default_opset

CLIP_BOUNDS_AS_INPUTS_OPSET = 11
CLIPPABLE = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE}


def _scalar_operand(node: onnx.NodeProto, index: GraphIndex) -> tuple[int, np.ndarray] | None:
    """(position, value) of the one-element float constant among the two inputs of ``node``, or None."""
    for position, name in enumerate(node.input):
        # the sizes first: a Max of two large constants is left to constant folding, not read here
        if name not in index.constants or tensor_elements(index.inits[name]) != 1 or node.input[1 - position] in index.constants:
            continue
        value = index.array(name)
        if value.dtype.kind == "f" and not np.isnan(value).any():
            return position, value
    return None


def max_min_with_a_constant_as_clip(model: onnx.ModelProto) -> PassResult:
    """Rewrite each two-input Max / Min of a float tensor and a one-element float constant as a Clip."""
    result = PassResult("max-min-with-a-constant-as-clip")
    graph = model.graph
    index = GraphIndex(graph)
    candidates = [(node, found) for node in graph.node
                  if node.op_type in ("Max", "Min") and node.domain in ("", "ai.onnx") and len(node.input) == 2
                  and (found := _scalar_operand(node, index)) is not None]
    if not candidates:
        return result
    shapes, types = shapes_and_types(model) if any(found[1].ndim for _, found in candidates) else ({}, {})
    opset = default_opset(model)
    taken = all_value_names(graph)
    replaced: dict[int, onnx.NodeProto] = {}
    bounds: dict[tuple[str, float], str] = {}
    for node, (position, value) in candidates:
        where = node.name or node.output[0]
        data = node.input[1 - position]
        if value.ndim:
            rank = len(shapes[data]) if data in shapes else None
            if rank is None or rank < value.ndim:
                result.decline(where, DeclineCode.UNSUPPORTED_FORM, f"the constant has rank {value.ndim}, the other input's rank "
                               f"{'is unknown' if rank is None else rank}: the result could gain axes")
                continue
        if types.get(data, helper.np_dtype_to_tensor_dtype(value.dtype)) not in CLIPPABLE:
            continue
        bound = float(value.reshape(()))
        side = "min" if node.op_type == "Max" else "max"
        if opset >= CLIP_BOUNDS_AS_INPUTS_OPSET:
            key = (node.input[position], bound)
            if key not in bounds:
                bounds[key] = unique_name(f"{node.input[position]}_bound", taken)
                graph.initializer.append(from_array(value.reshape(()), bounds[key]))
            inputs = [data, bounds[key]] if side == "min" else [data, "", bounds[key]]
            replaced[id(node)] = helper.make_node("Clip", inputs, list(node.output), name=where)
        else:
            replaced[id(node)] = helper.make_node("Clip", [data], list(node.output), name=where, **{side: bound})
    if not replaced:
        return result
    nodes = [replaced.get(id(n), n) for n in graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    drop_unread_initializers(graph, {node.input[found[0]] for node, found in candidates})
    result.change(f"wrote {len(replaced)} Max/Min with a constant as Clip")
    return result
