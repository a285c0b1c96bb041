"""``inspect``: what a model is made of, without running it.

Opset and IR version, inputs and outputs, an op-type histogram, parameter
count and bytes (and the numbers classical machine-learning operators hold in
their attributes), and multiply-accumulates of the weighted ops (Conv,
ConvTranspose, Gemm, MatMul) wherever shape inference knows the shapes.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import onnx

from onnxslim.data.sources import check_input_shapes
from onnxslim.ir.counts import MAC_OPS, count_macs, count_parameters, weight_types
from onnxslim.ir.io import load_model, model_label, model_weight_bytes
from onnxslim.ir.scopes import all_nodes
from onnxslim.ir.tensors import TensorSpec, graph_inputs, graph_outputs, subgraphs
from onnxslim.records import Record, json_field
from onnxslim.runtime.shapes import known_shapes


@dataclass
class ModelSummary(Record):
    """What ``inspect`` reports: interface, op histogram, parameters, bytes and multiply-accumulates."""

    command: ClassVar[str] = "inspect"

    path: str = json_field(key="model")
    ir_version: int = 0
    opsets: dict[str, int] = field(default_factory=dict)
    producer: str = ""
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    nodes: int = 0
    op_histogram: dict[str, int] = field(default_factory=dict)
    parameters: int = 0
    # numbers held in the attributes of ai.onnx.ml operators (a tree ensemble's thresholds and leaf values, a linear
    # model's coefficients): their parameters, which no initializer holds
    ml_attribute_values: int = 0
    weight_bytes: int = 0
    weight_types: dict[str, int] = field(default_factory=dict)  # element type -> values of the weights (2+ dimensions) stored so
    # initializers the graph lists as inputs too (IR 3's rule, or torch's keep_initializers_as_inputs): overridable, so no runtime folds them
    initializers_listed_as_inputs: int = 0
    macs: int = 0
    macs_by_op: dict[str, int] = field(default_factory=dict)
    macs_unknown_nodes: list[str] = field(default_factory=list)
    macs_in_bodies: list[str] = field(default_factory=list)  # weighted nodes inside If/Loop/Scan bodies: not counted (a branch may not run)
    has_subgraphs: bool = False
    functions: int = json_field(0, key="local_functions")

    def derived(self) -> dict:
        return {"macs_complete": not self.macs_unknown_nodes and not self.macs_in_bodies}


def _attribute_values(node: onnx.NodeProto) -> int:
    """How many numbers ``node``'s attributes hold (lists and tensors; names and strings aside)."""
    total = 0
    for attribute in node.attribute:
        total += len(attribute.floats) + len(attribute.ints)
        if attribute.HasField("t"):
            total += int(np.prod(attribute.t.dims, dtype=np.int64))
    return total


def _weight_types(graph: onnx.GraphProto) -> dict[str, int]:
    """Values of the main graph's weights (:func:`~onnxslim.ir.counts.weight_types`) per element type's name, the most first."""
    names = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.DOUBLE: "float64"}
    return {names.get(kind, onnx.TensorProto.DataType.Name(kind).lower()): count for kind, count in weight_types(graph).most_common()}


def inspect(model: str | os.PathLike | onnx.ModelProto, *, input_shapes: Mapping[str, tuple[int, ...]] | None = None) -> ModelSummary:
    """Summarize ``model``; ``input_shapes`` fixes dynamic dimensions for the MAC estimate."""
    proto = load_model(model, load_weights=False)
    check_input_shapes(input_shapes, graph_inputs(proto))
    shapes = known_shapes(proto, input_shapes)
    macs, by_op, unknown = count_macs(proto, shapes)
    histogram = Counter(node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}" for node in all_nodes(proto.graph))
    return ModelSummary(
        path=model_label(model),
        ir_version=int(proto.ir_version),
        opsets={(entry.domain or "ai.onnx"): int(entry.version) for entry in proto.opset_import},
        producer=f"{proto.producer_name} {proto.producer_version}".strip(),
        inputs=graph_inputs(proto),
        outputs=graph_outputs(proto),
        op_histogram=dict(histogram.most_common()),
        nodes=sum(histogram.values()),
        parameters=count_parameters(proto),
        ml_attribute_values=sum(_attribute_values(node) for node in all_nodes(proto.graph) if node.domain == "ai.onnx.ml"),
        weight_bytes=model_weight_bytes(proto),
        weight_types=_weight_types(proto.graph),
        initializers_listed_as_inputs=len({t.name for t in proto.graph.initializer} & {v.name for v in proto.graph.input}),
        macs=macs,
        macs_unknown_nodes=unknown,
        macs_by_op=by_op,
        macs_in_bodies=[n.name or n.output[0] for node in proto.graph.node for sub in subgraphs(node) for n in all_nodes(sub) if n.op_type in MAC_OPS],
        has_subgraphs=any(True for node in proto.graph.node for _ in subgraphs(node)),
        functions=len(proto.functions),
    )
