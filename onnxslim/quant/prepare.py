"""Make a float model ready to quantize: weights as initializers, BN folded, float16 computed in float32, opset >= 13, named nodes."""

from __future__ import annotations

import onnx
from onnx import TensorProto, shape_inference

from onnxslim.ir.shapes import dims_of, without_large_values
from onnxslim.passes import CLEANUP_PASSES, PassResult, Pipeline, constants_to_initializers, fuse_hardswish, upgrade_opset
from onnxslim.passes.naming import name_unnamed_nodes
from onnxslim.passes.opset import default_opset
from onnxslim.passes.widen import float16_to_float32
from onnxslim.runtime.shapes import onnxruntime_types, untyped_outputs

QDQ_MIN_OPSET = 13  # per-axis DequantizeLinear
PREFERRED_OPSET = 14  # HardSwish as one op


def upgrade_opset_for_qdq(model: onnx.ModelProto) -> PassResult:
    """Upgrade to opset 14 (HardSwish as one op), or at least 13 (per-axis DequantizeLinear) where 14 fails."""
    upgraded = upgrade_opset(model, PREFERRED_OPSET)
    if not upgraded.modified and default_opset(model) < QDQ_MIN_OPSET:
        upgraded = upgrade_opset(model, QDQ_MIN_OPSET)
    return upgraded


BEFORE_UPGRADE = Pipeline((*CLEANUP_PASSES, upgrade_opset_for_qdq))
# the converter writes new shape constants as Constant nodes, and opset 14 lets HardSwish fuse
AFTER_UPGRADE = Pipeline((constants_to_initializers, fuse_hardswish))
NAMING = Pipeline((name_unnamed_nodes,))


def prepare(model: onnx.ModelProto) -> list[PassResult]:
    """Clean ``model`` in place for quantization and return what each step did."""
    results = BEFORE_UPGRADE(model)
    if results[-1].modified:
        results.append(AFTER_UPGRADE(model)[-1])
    widened = float16_to_float32(model)
    return results + [r for r in (widened, *NAMING(model)) if r.modified or r.declined]


def float_tensors_and_shapes(model: onnx.ModelProto) -> tuple[set[str], dict[str, tuple]]:
    """Names of float32 tensors, and each tensor's shape (None for a dynamic dim) where known, from one shape inference."""
    try:
        inferred = shape_inference.infer_shapes(without_large_values(model), strict_mode=False)
    except Exception:  # inference is a help here, not a requirement
        inferred = model
    values = list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output)
    typed = {v.name: v.type.tensor_type.elem_type for v in values if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type}
    names = {name for name, kind in typed.items() if kind == TensorProto.FLOAT}
    names |= {t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT}
    shapes = {v.name: dims for v in values if (dims := dims_of(v)) is not None}
    # behind operators of other domains onnx's inference gives up: onnxruntime types what it left
    resolved = onnxruntime_types(model, untyped_outputs(model, set(typed) | {t.name for t in model.graph.initializer}))
    names |= {name for name, (kind, _) in resolved.items() if kind == TensorProto.FLOAT}
    shapes.update({name: dims for name, (_, dims) in resolved.items() if name not in shapes})
    return names, shapes
