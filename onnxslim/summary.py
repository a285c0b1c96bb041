"""``inspect``: what a model is made of, without running it.

Opset and IR version, inputs and outputs, an op-type histogram, parameter
count and bytes, and multiply-accumulates of the weighted ops (Conv,
ConvTranspose, Gemm, MatMul) wherever shape inference knows the shapes.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import onnx

from onnxslim.ir.counts import count_macs, count_parameters
from onnxslim.ir.io import load_model, model_weight_bytes
from onnxslim.ir.shapes import infer_shapes
from onnxslim.ir.tensors import TensorSpec, graph_inputs, graph_outputs, subgraphs


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
