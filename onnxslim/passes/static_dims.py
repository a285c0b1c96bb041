"""Sizes read off a tensor's shape that the model fixes anyway become constants.

Exporters compute slice bounds and reshape targets from ``Shape`` at run time
even where the dimension is static (PyTorch's ``chunk`` over channels is
Shape -> Gather -> Add -> Div -> Mul -> Slice). Replacing ``Gather(Shape(x),
i)`` (or a ``Slice`` of it) by its value, for dimensions that shape inference finds static
without being told any input size, changes no output for any input the model
accepts; constant folding then turns the arithmetic after it into constants.
A ``Shape`` whose every entry is static becomes a constant whatever reads it
(Swin V2 expands a norm to the shape of its query with ``Expand(n, Shape(q))``).
Dynamic dimensions (batch, sequence, image size) are left to be read at run time.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxslim.ir.graph import node_attr
from onnxslim.ir.shapes import infer_shapes
from onnxslim.ir.tensors import constant_names, initializer_map, to_array
from onnxslim.passes.base import DeclineCode, PassResult


def fold_static_dims(model: onnx.ModelProto, run_shapes: dict | None = None) -> PassResult:
    """``run_shapes``: shapes of a model whose inputs all have fixed sizes, measured by running it
    (then every dimension is static, including where shape inference gives up)."""
    result = PassResult("fold-static-dims")
    graph = model.graph
    shapes = infer_shapes(model)
    shapes.update(run_shapes or {})
    producers = {o: n for n in graph.node for o in n.output}
    constants = constant_names(graph)
    inits = initializer_map(graph)
    replaced: list[onnx.NodeProto] = []
    outputs = {v.name for v in graph.output}
    for node in graph.node:
        if node.op_type == "Shape" and node.output[0] not in outputs:
            read = _read_dims(node, shapes.get(node.input[0]))
            if read is not None and np.all(read > 0):
                graph.initializer.append(numpy_helper.from_array(read, node.output[0]))
                replaced.append(node)
    static_shapes = {node.output[0] for node in replaced}
    for node in graph.node:
        if node.input and node.input[0] in static_shapes:
            continue  # reads a Shape that is now a constant: constant folding evaluates it
        if node.op_type not in ("Gather", "Slice") or len(node.input) < 2:
            continue
        shape_node = producers.get(node.input[0])
        if shape_node is None or shape_node.op_type != "Shape":
            continue
        where = node.name or node.output[0]
        if any(n and n not in constants for n in node.input[1:]):
            result.decline(where, DeclineCode.NOT_CONSTANT, f"which entries of the shape of '{shape_node.input[0]}' are read is computed at run time")
            continue
        if int(node_attr(node, "axis", 0)) != 0:
            result.decline(where, DeclineCode.UNSUPPORTED_FORM, "Gather of a shape along an axis other than 0")
            continue
        read = _read_dims(shape_node, shapes.get(shape_node.input[0]))
        if read is None:
            result.decline(where, DeclineCode.DYNAMIC, f"the shape of '{shape_node.input[0]}' is not known before run time")
            continue
        values = _entries(node, read, inits)
        if values is None:
            result.decline(where, DeclineCode.UNSUPPORTED_FORM, f"indices or slice bounds into the shape of '{shape_node.input[0]}' that onnxslim does not evaluate")
            continue
        if np.any(values <= 0):
            result.decline(where, DeclineCode.DYNAMIC, f"reads a dimension of '{shape_node.input[0]}' that is only known at run time")
            continue
        graph.initializer.append(numpy_helper.from_array(np.asarray(values, np.int64), node.output[0]))
        replaced.append(node)
    for node in replaced:
        graph.node.remove(node)
        what = "static shape" if node.op_type == "Shape" else "static dimension read from a Shape"
        result.change(f"{node.name or node.output[0]}: {what} became a constant")
    return result


def _read_dims(shape_node: onnx.NodeProto, dims) -> np.ndarray | None:
    """The entries a Shape node returns for a tensor of shape ``dims`` (-1 where one is not static), or None where the rank is unknown."""
    if dims is None:
        return None
    start = int(node_attr(shape_node, "start", 0))
    end = node_attr(shape_node, "end", None)
    kept = list(dims)[start:end] if end is not None else list(dims)[start:]
    return np.array([-1 if not isinstance(d, int) or d <= 0 else d for d in kept], np.int64)


def _entries(node: onnx.NodeProto, read: np.ndarray, inits) -> np.ndarray | None:
    """The entries of the shape vector ``read`` that a Gather or Slice of it returns, or None where onnxslim does not evaluate it."""
    try:
        if node.op_type == "Gather":
            index = to_array(inits[node.input[1]])
            if index.dtype.kind not in "iu" or np.any(index >= len(read)) or np.any(index < -len(read)):
                return None
            return read[index]
        bounds = [to_array(inits[n]) if n else None for n in list(node.input[1:]) + [""] * (5 - len(node.input))]
        return _slice(read, *bounds)
    except (IndexError, ValueError, TypeError):
        return None


def _slice(read: np.ndarray, starts, ends, axes, steps) -> np.ndarray | None:
    """The entries of a 1-D shape vector a Slice keeps, or None for slices onnxslim does not evaluate."""
    if starts is None or ends is None or starts.size != 1 or ends.size != 1:
        return None
    if (axes is not None and int(axes.reshape(-1)[0]) not in (0, -1)) or (steps is not None and int(steps.reshape(-1)[0]) != 1):
        return None
    return read[int(starts.reshape(-1)[0]) : int(min(ends.reshape(-1)[0], len(read)))]
