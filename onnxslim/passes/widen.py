"""Compute a float16 model in float32, its interface unchanged: what INT8 quantization starts from.

A model exported in float16 for a GPU computes and stores everything in float16; onnxruntime's
CPU integer kernels read float32 scales and write float32 results, and every quantization rule
is written for float32 tensors. Widening is exact (each float16 value is a float32 value), so
the float32 model computes what the float16 one approximates:

- float16 weights (initializers, tensor attributes such as ConstantOfShape's value) become float32;
- a Cast to float16 casts to float32, and an attribute naming float16 as a type names float32;
- a float16 graph input is cast to float32 once where it enters, and a float16 graph output is
  cast back where it leaves, so the model keeps the inputs and outputs its callers feed and read.

Models with If/Loop/Scan bodies are left as they are (their bodies would need the same rewrite
and their outer-scope types checked), and so are models whose float16 weights live in external
data (over 2 GB: widened, they would take twice that in memory).
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, external_data_helper, helper, numpy_helper

from onnxslim.ir.tensors import all_value_names, subgraphs, unique_name
from onnxslim.passes.base import DeclineCode, PassResult

TYPE_ATTRIBUTES = ("to", "dtype")  # Cast's target, and the dtype of EyeLike / RandomNormal / RandomUniform and the like


def _widened(tensor: onnx.TensorProto) -> onnx.TensorProto:
    wide = numpy_helper.from_array(numpy_helper.to_array(tensor).astype("float32"), tensor.name)
    return wide


def _float16_interface(values) -> list[onnx.ValueInfoProto]:
    return [v for v in values if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type == TensorProto.FLOAT16]


def _is_cast(node: onnx.NodeProto, to: int) -> bool:
    return node.op_type == "Cast" and node.domain in ("", "ai.onnx") and any(a.name == "to" and a.i == to for a in node.attribute)


def uses_float16(model: onnx.ModelProto) -> bool:
    """Whether ``model``'s main graph computes anything in float16 (its float16 inputs cast to float32 where they enter and
    its float16 outputs cast from float32 where they leave, as this pass writes them, compute nothing in float16)."""
    graph = model.graph
    inputs = {v.name for v in _float16_interface(graph.input)}
    outputs = {v.name for v in _float16_interface(graph.output)}
    for node in graph.node:
        if any(name in inputs for name in node.input) and not _is_cast(node, TensorProto.FLOAT):
            return True
        if any(name in outputs for name in node.output) and not _is_cast(node, TensorProto.FLOAT16):
            return True
        if any(name in outputs for name in node.output):
            continue  # the cast out of float32 that writes a float16 output
        for attribute in node.attribute:
            if attribute.name in TYPE_ATTRIBUTES and attribute.type == onnx.AttributeProto.INT and attribute.i == TensorProto.FLOAT16:
                return True
            if attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == TensorProto.FLOAT16:
                return True
    return any(t.data_type == TensorProto.FLOAT16 for t in graph.initializer)


def float16_to_float32(model: onnx.ModelProto) -> PassResult:
    """Rewrite ``model`` in place to compute in float32 with its float16 inputs and outputs kept (see the module docstring)."""
    result = PassResult("float16-to-float32")
    graph = model.graph
    if not uses_float16(model):
        return result
    if any(True for node in graph.node for _ in subgraphs(node)):
        result.decline("model", DeclineCode.UNSUPPORTED_FORM, "float16 with If/Loop/Scan bodies: left in float16")
        return result
    if any(t.data_type == TensorProto.FLOAT16 and external_data_helper.uses_external_data(t) for t in graph.initializer):
        result.decline("model", DeclineCode.UNSUPPORTED_FORM, "float16 weights in external data: widened, they would take twice their size in memory")
        return result
    widened = 0
    for index, tensor in enumerate(graph.initializer):
        if tensor.data_type == TensorProto.FLOAT16:
            graph.initializer[index].CopyFrom(_widened(tensor))
            widened += 1
    retyped = 0
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.name in TYPE_ATTRIBUTES and attribute.type == onnx.AttributeProto.INT and attribute.i == TensorProto.FLOAT16:
                attribute.i = TensorProto.FLOAT
                retyped += 1
            elif attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == TensorProto.FLOAT16:
                attribute.t.CopyFrom(_widened(attribute.t))
                retyped += 1
    taken = all_value_names(graph) | {n.name for n in graph.node}
    entering = []
    for value in _float16_interface(graph.input):
        if value.name in {t.name for t in graph.initializer}:
            continue
        wide = unique_name(f"{value.name}_float32", taken)
        for node in graph.node:
            node.input[:] = [wide if name == value.name else name for name in node.input]
        entering.append(helper.make_node("Cast", [value.name], [wide], name=unique_name(f"{value.name}_to_float32", taken), to=TensorProto.FLOAT))
    leaving = []
    for value in _float16_interface(graph.output):
        wide = unique_name(f"{value.name}_float32", taken)
        for node in graph.node:
            node.output[:] = [wide if name == value.name else name for name in node.output]
            node.input[:] = [wide if name == value.name else name for name in node.input]
        leaving.append(helper.make_node("Cast", [wide], [value.name], name=unique_name(f"{value.name}_to_float16", taken), to=TensorProto.FLOAT16))
    nodes = [*entering, *graph.node, *leaving]
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [v for v in graph.value_info if v.type.tensor_type.elem_type != TensorProto.FLOAT16]  # inferred again, as float32
    del graph.value_info[:]
    graph.value_info.extend(kept)
    result.change(f"computed in float32: {widened} float16 weight(s) widened exactly, {retyped} type attribute(s) and constant(s) retyped, "
                  f"{len(entering)} input(s) and {len(leaving)} output(s) cast at the interface")
    return result
