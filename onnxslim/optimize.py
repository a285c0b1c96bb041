"""``optimize``: the cleanup passes as a command of their own."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar

import onnx

from onnxslim.ir.counts import count_parameters
from onnxslim.ir.io import load_model, model_label
from onnxslim.ir.scopes import all_nodes
from onnxslim.passes import CLEANUP, PassResult, Pipeline
from onnxslim.records import Record
from onnxslim.runtime.write import write_verified


@dataclass
class OptimizeReport(Record):
    """What ``optimize`` did: node and parameter counts before and after, and every pass's result."""

    command: ClassVar[str] = "optimize"

    model: str
    output: str | None
    nodes_before: int
    nodes_after: int
    parameters_before: int
    parameters_after: int
    passes: list[PassResult] = field(default_factory=list)


def optimize(
    model: str | os.PathLike | onnx.ModelProto,
    output: str | os.PathLike | None = None,
    *,
    pipeline: Pipeline = CLEANUP,
) -> tuple[onnx.ModelProto, OptimizeReport]:
    """Run the cleanup passes on a copy of ``model``; write it to ``output`` when given."""
    proto = load_model(model)
    # nodes inside If/Loop/Scan bodies count, as inspect and quantize count them
    nodes_before, params_before = len(all_nodes(proto.graph)), count_parameters(proto)
    results = pipeline(proto)
    label = model_label(model)
    if output is not None:
        write_verified(proto, output, source=None if isinstance(model, onnx.ModelProto) else model)
    report = OptimizeReport(label, str(output) if output else None, nodes_before, len(all_nodes(proto.graph)), params_before, count_parameters(proto), results)
    return proto, report
