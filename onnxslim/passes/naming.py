"""Give every node a name: plans, groups and reports refer to nodes by name."""

from __future__ import annotations

import onnx

from onnxslim.ir.graph import name_nodes
from onnxslim.passes.base import PassResult


def name_unnamed_nodes(model: onnx.ModelProto) -> PassResult:
    """Name every unnamed node after its op type and position (inside subgraphs too, unique across the model); named nodes keep their names."""
    result = PassResult("name-nodes")
    named = name_nodes(model.graph)
    if named:
        result.change(f"named {named} unnamed node(s)")
    return result
