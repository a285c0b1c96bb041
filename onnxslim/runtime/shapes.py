"""Shapes onnx's inference leaves unknown, from onnxruntime's symbolic shape inference.

onnx's inference gives up on a tensor whose shape is computed at run time (an Expand to a
shape built from Shape, Where and ConstantOfShape): everything downstream loses even its rank.
onnxruntime's symbolic inference carries such shapes as expressions of the inputs' dims.
"""

from __future__ import annotations

import logging

import onnx

from onnxslim.ir.shapes import dims_of, without_large_values


def symbolic_shapes(model: onnx.ModelProto) -> dict[str, tuple]:
    """Tensor name -> shape (ints, None for a dim known only as an expression) where symbolic inference resolves it;
    empty when it cannot run on ``model`` (an op it does not know, sympy missing)."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    except ImportError:
        return {}
    logger = logging.getLogger("onnxruntime.tools.symbolic_shape_infer")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # it logs every op it cannot follow; what it resolves is what counts here
    try:
        # auto_merge: where an op needs two dims equal (Concat's other axes, elementwise operands), it takes them to be
        inferred = SymbolicShapeInference.infer_shapes(without_large_values(model), auto_merge=True)
    except Exception:
        return {}
    finally:
        logger.setLevel(level)
    values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    return {value.name: dims for value in values if (dims := dims_of(value)) is not None}
