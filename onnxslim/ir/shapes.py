"""Shapes and element types of a graph's tensors, from onnx's shape inference.

Inference runs on a copy without the bytes of large tensors: shapes need only
their dims, and the copy stays small enough to serialize for models of any size.
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx
from onnx import external_data_helper, shape_inference

from onnxslim.ir.external import tensor_without_data, without_initializers
from onnxslim.ir.tensors import nominal_bytes

LARGE_VALUE_BYTES = 4096  # a tensor holding more bytes than this is left out of the copy shape inference reads


def without_large_values(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy without the bytes of large tensors: enough for shape inference, small enough to serialize.

    The main graph's large initializers are never copied (copying a model's weights costs more than the inference).
    """
    copy = without_initializers(model)
    for tensor in model.graph.initializer:
        kept = copy.graph.initializer.add()
        if _large(tensor):  # its fields but its bytes, which are never read (reading one copies it)
            kept.CopyFrom(tensor_without_data(tensor))
            kept.raw_data = b""
        else:
            kept.CopyFrom(tensor)
    for tensor in external_data_helper._get_all_tensors(copy):  # Constant values and subgraphs' initializers
        if _large(tensor):
            # Shape inference needs only the dims of a big weight; values matter only for small shape tensors.
            tensor.ClearField("raw_data")
            tensor.ClearField("external_data")
            tensor.data_location = onnx.TensorProto.DEFAULT
            tensor.raw_data = b""
    return copy


def _large(tensor: onnx.TensorProto) -> bool:
    return external_data_helper.uses_external_data(tensor) or (tensor.HasField("raw_data") and nominal_bytes(tensor) > LARGE_VALUE_BYTES)


def with_input_shapes(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> onnx.ModelProto:
    """Copy of ``model`` (a skeleton) whose inputs have the given static shapes."""
    copy = without_large_values(model)
    for value in copy.graph.input:
        if value.name in shapes:
            dims = value.type.tensor_type.shape.dim
            del dims[:]
            for size in shapes[value.name]:
                dims.add().dim_value = int(size)
    return copy


def dims_of(value: onnx.ValueInfoProto) -> tuple | None:
    """A value's declared or inferred shape: a tuple of ints (None for a dynamic dim), or None when its rank is unknown."""
    if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim)


def infer_shapes(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, tuple]:
    """Tensor name -> shape tuple (ints or None) for everything shape inference could resolve."""
    return shapes_and_types(model, shapes)[0]


def shapes_and_types(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]] | None = None) -> tuple[dict[str, tuple], dict[str, int]]:
    """:func:`infer_shapes` and each tensor's ONNX element type where declared or inferred, from one inference."""
    stripped = with_input_shapes(model, shapes or {})
    try:
        inferred = shape_inference.infer_shapes(stripped, strict_mode=False, data_prop=True)
    except Exception:  # an unknown op or a bad model: report what is known without inference
        inferred = stripped
    known: dict[str, tuple] = {}
    types: dict[str, int] = {}
    values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    for value in values:
        dims = dims_of(value)
        if dims is not None:
            known[value.name] = dims
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
            types[value.name] = value.type.tensor_type.elem_type
    for tensor in model.graph.initializer:
        known[tensor.name] = tuple(int(d) for d in tensor.dims)
        types[tensor.name] = tensor.data_type
    return known, types


def element_types(model: onnx.ModelProto) -> dict[str, int]:
    """Tensor name -> ONNX element type, for every tensor whose type is declared or inferred."""
    try:
        inferred = shape_inference.infer_shapes(without_large_values(model), strict_mode=False)
    except Exception:  # an unknown op: the declared types only
        inferred = without_large_values(model)
    values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    types = {v.name: v.type.tensor_type.elem_type for v in values if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return types
