"""Shapes onnx's inference leaves unknown, from onnxruntime's symbolic shape inference.

onnx's inference gives up on a tensor whose shape is computed at run time (an Expand to a
shape built from Shape, Where and ConstantOfShape): everything downstream loses even its rank.
onnxruntime's symbolic inference carries such shapes as expressions of the inputs' dims.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import onnx
import onnx.external_data_helper
import onnx.numpy_helper

from onnxslim.ir.shapes import dims_of, infer_shapes, with_input_shapes, without_large_values
from onnxslim.ir.tensors import tensor_elements


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


# onnxruntime's names of tensor types -> onnx's element types
_ELEMENT_TYPES = {
    f"tensor({name})": value
    for name, value in (("float", onnx.TensorProto.FLOAT), ("float16", onnx.TensorProto.FLOAT16), ("double", onnx.TensorProto.DOUBLE),
                        ("bfloat16", onnx.TensorProto.BFLOAT16), ("int8", onnx.TensorProto.INT8), ("uint8", onnx.TensorProto.UINT8),
                        ("int16", onnx.TensorProto.INT16), ("uint16", onnx.TensorProto.UINT16), ("int32", onnx.TensorProto.INT32),
                        ("uint32", onnx.TensorProto.UINT32), ("int64", onnx.TensorProto.INT64), ("uint64", onnx.TensorProto.UINT64),
                        ("bool", onnx.TensorProto.BOOL), ("string", onnx.TensorProto.STRING))
}


def untyped_outputs(model: onnx.ModelProto, typed: set[str]) -> list[str]:
    """Outputs of the main graph's nodes that are not in ``typed`` (what onnx's inference left without a type)."""
    return [o for node in model.graph.node for o in node.output if o and o not in typed]


def onnxruntime_types(model: onnx.ModelProto, names: list[str]) -> dict[str, tuple[int, tuple]]:
    """Tensor name -> (element type, shape with None for a symbolic dim), as onnxruntime types ``names`` of the main graph.

    onnx's inference knows the standard operators only: behind an operator of another domain
    (onnxruntime's fused SkipLayerNormalization, Attention and BiasGelu; ai.onnx.ml's Scaler)
    every tensor is left without a type, and a MatMul reading one cannot be told to read floats.
    onnxruntime's graph resolution types every operator it can run. The weights become inputs
    of the copy it opens, so no weight is loaded and nothing runs. Empty where it cannot open
    the model (an operator it does not know).
    """
    if not names:
        return {}
    import onnxruntime as ort

    graph = model.graph
    small = [t for t in graph.initializer if _small(t)]  # shape constants keep their values, so shapes follow them
    weights = [onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in graph.initializer if not _small(t)]
    copy = onnx.helper.make_model(
        onnx.helper.make_graph(graph.node, graph.name, [*graph.input, *weights], graph.output, small, value_info=graph.value_info),
        opset_imports=model.opset_import, ir_version=model.ir_version,
    )
    copy.functions.extend(model.functions)
    present = {o.name for o in copy.graph.output}
    for name in names:
        if name not in present:
            copy.graph.output.add().name = name  # no type: onnxruntime works it out
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(copy.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception:  # an operator onnxruntime does not know either: the types stay unknown
        return {}
    wanted = set(names)
    return {
        out.name: (_ELEMENT_TYPES[out.type], tuple(d if isinstance(d, int) else None for d in out.shape))
        for out in session.get_outputs() if out.name in wanted and out.type in _ELEMENT_TYPES
    }


SMALL_ELEMENTS = 1024  # shape constants and the like: their values can decide shapes downstream


def _small(tensor: onnx.TensorProto) -> bool:
    """Whether ``tensor`` is a small constant with its values at hand (not a weight, nor one a skeleton copy emptied)."""
    if onnx.external_data_helper.uses_external_data(tensor) or tensor_elements(tensor) > SMALL_ELEMENTS:
        return False
    try:
        return onnx.numpy_helper.to_array(tensor).size == tensor_elements(tensor)
    except Exception:  # emptied of its bytes
        return False


def known_shapes(model: onnx.ModelProto, input_shapes: Mapping[str, tuple] | None = None) -> dict[str, tuple]:
    """Every tensor's shape with the inputs at ``input_shapes``: onnx's inference, and onnxruntime's where that leaves a tensor
    without one (behind another domain's operators: onnxruntime's fused attention and normalizations)."""
    shapes = infer_shapes(model, input_shapes)
    missing = [o for node in model.graph.node for o in node.output if o and shapes.get(o) is None]
    if missing:
        resolved = onnxruntime_types(with_input_shapes(model, input_shapes) if input_shapes else model, missing)
        shapes.update({name: dims for name, (_, dims) in resolved.items() if dims})
    return shapes
