"""``inspect``: what a model is made of, without running it.

Opset and IR version, inputs and outputs, an op-type histogram, parameter
count and bytes, and multiply-accumulates of the weighted ops (Conv,
ConvTranspose, Gemm, MatMul) wherever shape inference knows the shapes.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import onnx
from onnx import external_data_helper, shape_inference

from onnxslim.ir.io import load_model, model_weight_bytes
from onnxslim.ir.tensors import TensorSpec, graph_inputs, graph_outputs, subgraphs, tensor_elements

MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger")


@dataclass
class ModelSummary:
    path: str
    ir_version: int
    opsets: dict[str, int]
    producer: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    op_histogram: dict[str, int]
    nodes: int
    parameters: int
    weight_bytes: int
    macs: int
    macs_unknown_nodes: list[str] = field(default_factory=list)
    macs_by_op: dict[str, int] = field(default_factory=dict)
    has_subgraphs: bool = False
    functions: int = 0

    def to_dict(self) -> dict:
        return {
            "command": "inspect",
            "model": self.path,
            "ir_version": self.ir_version,
            "opsets": self.opsets,
            "producer": self.producer,
            "inputs": [i.to_dict() for i in self.inputs],
            "outputs": [o.to_dict() for o in self.outputs],
            "nodes": self.nodes,
            "op_histogram": self.op_histogram,
            "parameters": self.parameters,
            "weight_bytes": self.weight_bytes,
            "macs": self.macs,
            "macs_by_op": self.macs_by_op,
            "macs_complete": not self.macs_unknown_nodes,
            "macs_unknown_nodes": self.macs_unknown_nodes,
            "has_subgraphs": self.has_subgraphs,
            "local_functions": self.functions,
        }


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for sub in subgraphs(node):
            yield from _all_nodes(sub)


def count_parameters(model: onnx.ModelProto) -> int:
    """Elements of floating-point weights: initializers and Constant node values."""
    total = 0
    for tensor in external_data_helper._get_all_tensors(model):
        if tensor.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16, onnx.TensorProto.INT8, onnx.TensorProto.UINT8):
            total += tensor_elements(tensor)
    return total


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy without the bytes of large tensors: enough for shape inference, small enough to serialize."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for tensor in external_data_helper._get_all_tensors(copy):
        if external_data_helper.uses_external_data(tensor) or (tensor.HasField("raw_data") and len(tensor.raw_data) > 4096):
            # Shape inference needs only the dims of a big weight; values matter only for small shape tensors.
            tensor.ClearField("raw_data")
            tensor.ClearField("external_data")
            tensor.data_location = onnx.TensorProto.DEFAULT
            tensor.raw_data = b""
    return copy


def with_input_shapes(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> onnx.ModelProto:
    """Copy of ``model`` (a skeleton) whose inputs have the given static shapes."""
    copy = skeleton(model)
    for value in copy.graph.input:
        if value.name in shapes:
            dims = value.type.tensor_type.shape.dim
            del dims[:]
            for size in shapes[value.name]:
                dims.add().dim_value = int(size)
    return copy


def infer_shapes(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, tuple]:
    """Tensor name -> shape tuple (ints or None) for everything shape inference could resolve."""
    skel = with_input_shapes(model, shapes or {})
    try:
        inferred = shape_inference.infer_shapes(skel, strict_mode=False, data_prop=True)
    except Exception:  # an unknown op or a bad model: report what is known without inference
        inferred = skel
    known: dict[str, tuple] = {}
    values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    for value in values:
        if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
            continue
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim)
        known[value.name] = dims
    for tensor in model.graph.initializer:
        known[tensor.name] = tuple(int(d) for d in tensor.dims)
    return known


def element_types(model: onnx.ModelProto) -> dict[str, int]:
    """Tensor name -> ONNX element type, for every tensor whose type is declared or inferred."""
    try:
        inferred = shape_inference.infer_shapes(skeleton(model), strict_mode=False)
    except Exception:  # an unknown op: the declared types only
        inferred = skeleton(model)
    values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    types = {v.name: v.type.tensor_type.elem_type for v in values if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return types


def _static(shape) -> bool:
    return shape is not None and all(isinstance(d, int) and d > 0 for d in shape)


def node_macs(node: onnx.NodeProto, shapes: Mapping[str, tuple]) -> int | None:
    """Multiply-accumulates of one weighted node, or None when its shapes are unknown."""
    op = node.op_type
    get = shapes.get
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        weight_index = 3 if op == "QLinearConv" else 1
        out, weight = get(node.output[0]), get(node.input[weight_index])
        if not (_static(out) and _static(weight)):
            return None
        return int(np.prod(out, dtype=np.int64) * np.prod(weight[1:], dtype=np.int64))
    if op == "ConvTranspose":
        inp, weight = get(node.input[0]), get(node.input[1])
        if not (_static(inp) and _static(weight)):
            return None
        return int(np.prod(inp, dtype=np.int64) * np.prod(weight[1:], dtype=np.int64))
    if op in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul"):
        out, a = get(node.output[0]), get(node.input[0])
        if not (_static(out) and _static(a)) or len(a) == 0:
            return None
        if op == "Gemm":
            trans_a = any(attr.name == "transA" and attr.i for attr in node.attribute)
            k = a[0] if trans_a else a[1]
        else:
            k = a[-1]
        return int(np.prod(out, dtype=np.int64) * k)
    return 0


def count_macs(model: onnx.ModelProto, shapes: Mapping[str, tuple]) -> tuple[int, dict[str, int], list[str]]:
    total = 0
    by_op: Counter = Counter()
    unknown: list[str] = []
    for node in model.graph.node:
        if node.op_type not in MAC_OPS:
            continue
        macs = node_macs(node, shapes)
        if macs is None:
            unknown.append(node.name or node.output[0])
            continue
        total += macs
        by_op[node.op_type] += macs
    return total, dict(by_op), unknown


def inspect(model: str | os.PathLike | onnx.ModelProto, *, input_shapes: Mapping[str, tuple[int, ...]] | None = None) -> ModelSummary:
    """Summarize ``model``; ``input_shapes`` fixes dynamic dimensions for the MAC estimate."""
    proto = load_model(model, load_weights=False)
    shapes = infer_shapes(proto, input_shapes)
    macs, by_op, unknown = count_macs(proto, shapes)
    histogram = Counter(node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}" for node in _all_nodes(proto.graph))
    return ModelSummary(
        path=str(model) if not isinstance(model, onnx.ModelProto) else "<in-memory model>",
        ir_version=int(proto.ir_version),
        opsets={(entry.domain or "ai.onnx"): int(entry.version) for entry in proto.opset_import},
        producer=f"{proto.producer_name} {proto.producer_version}".strip(),
        inputs=graph_inputs(proto),
        outputs=graph_outputs(proto),
        op_histogram=dict(histogram.most_common()),
        nodes=sum(histogram.values()),
        parameters=count_parameters(proto),
        weight_bytes=model_weight_bytes(proto),
        macs=macs,
        macs_unknown_nodes=unknown,
        macs_by_op=by_op,
        has_subgraphs=any(True for node in proto.graph.node for _ in subgraphs(node)),
        functions=len(proto.functions),
    )
