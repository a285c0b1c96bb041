"""Make a float model ready to quantize: weights as initializers, BN folded, opset >= 13, named nodes."""

from __future__ import annotations

import onnx
from onnx import TensorProto, shape_inference

from onnxslim.ir.graph import name_nodes
from onnxslim.ir.shapes import without_large_values
from onnxslim.passes import PassResult, constants_to_initializers, fuse_hardswish, run_passes, upgrade_opset
from onnxslim.passes.opset import default_opset

QDQ_MIN_OPSET = 13  # per-axis DequantizeLinear
PREFERRED_OPSET = 14  # HardSwish as one op


def prepare(model: onnx.ModelProto) -> list[PassResult]:
    """Clean ``model`` in place for quantization and return what each step did."""
    results = run_passes(model)
    upgraded = upgrade_opset(model, PREFERRED_OPSET)
    if not upgraded.modified and default_opset(model) < QDQ_MIN_OPSET:
        upgraded = upgrade_opset(model, QDQ_MIN_OPSET)
    results.append(upgraded)
    if upgraded.modified:
        # the converter writes new shape constants as Constant nodes
        constants_to_initializers(model)
        results.append(fuse_hardswish(model))
    named = name_nodes(model.graph)
    if named:
        result = PassResult("name-nodes")
        result.change(f"named {named} unnamed node(s)")
        results.append(result)
    return results


def float_tensors(model: onnx.ModelProto) -> set[str]:
    """Names of float32 tensors, from the graph's declarations and shape inference."""
    try:
        inferred = shape_inference.infer_shapes(without_large_values(model), strict_mode=False)
    except Exception:  # inference is a help here, not a requirement
        inferred = model
    values = list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output)
    names = {v.name for v in values if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type == TensorProto.FLOAT}
    names |= {t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT}
    return names
