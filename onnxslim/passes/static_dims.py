"""Sizes read off a tensor's shape that the model fixes anyway become constants.

Exporters compute slice bounds and reshape targets from ``Shape`` at run time
even where the dimension is static (PyTorch's ``chunk`` over channels is
Shape -> Gather -> Add -> Div -> Mul -> Slice). Replacing ``Gather(Shape(x),
i)`` by its value, for a dimension ``i`` that shape inference finds static
without being told any input size, changes no output for any input the model
accepts; constant folding then turns the arithmetic after it into constants.
Dynamic dimensions (batch, sequence, image size) are left to be read at run time.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxslim.ir.tensors import constant_names, initializer_map, to_array
from onnxslim.passes.base import PassResult


def fold_static_dims(model: onnx.ModelProto) -> PassResult:
    from onnxslim.summary import infer_shapes

    result = PassResult("fold-static-dims")
    graph = model.graph
    shapes = infer_shapes(model)
    producers = {o: n for n in graph.node for o in n.output}
    constants = constant_names(graph)
    inits = initializer_map(graph)
    replaced: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type != "Gather" or len(node.input) < 2 or node.input[1] not in constants:
            continue
        shape_node = producers.get(node.input[0])
        if shape_node is None or shape_node.op_type != "Shape" or int(_attr(node, "axis", 0)) != 0:
            continue
        dims = shapes.get(shape_node.input[0])
        if dims is None:
            continue
        start = int(_attr(shape_node, "start", 0))
        end = _attr(shape_node, "end", None)
        read = list(dims)[start:end] if end is not None else list(dims)[start:]
        index = to_array(inits[node.input[1]])
        if index.dtype.kind not in "iu" or index.size == 0 or np.any(index >= len(read)) or np.any(index < -len(read)):
            continue
        values = [read[int(i)] for i in index.reshape(-1)]
        if not all(isinstance(v, int) and v > 0 for v in values):
            continue
        graph.initializer.append(numpy_helper.from_array(np.array(values, np.int64).reshape(index.shape), node.output[0]))
        replaced.append(node)
    for node in replaced:
        graph.node.remove(node)
        result.change(f"{node.name or node.output[0]}: static dimension read from a Shape became a constant")
    return result


def _attr(node: onnx.NodeProto, name: str, default):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)
