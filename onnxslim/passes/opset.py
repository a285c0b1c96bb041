"""The default-domain opset: reading it, writing nodes whose form depends on it, upgrading it when a step needs a newer one."""

from __future__ import annotations

from collections.abc import Callable

import onnx
from onnx import helper, version_converter

from onnxslim.errors import first_line
from onnxslim.passes.base import DeclineCode, PassResult


def default_opset(model: onnx.ModelProto) -> int:
    """The model's opset version for the default ONNX domain (0 when it declares none)."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 0


AXES_AS_INPUT_OPSET = 13  # Squeeze and Unsqueeze take their axes as an input from here on


def with_axes(op_type: str, tensor: str, output: str, axis: int, opset: int, name: str, axes_tensor: Callable[[int], str]) -> onnx.NodeProto:
    """A Squeeze or Unsqueeze of ``tensor`` along ``axis``: its axes an input from opset 13 on (``axes_tensor(axis)`` names
    the initializer holding them, adding it where needed), an attribute before."""
    if opset >= AXES_AS_INPUT_OPSET:
        return helper.make_node(op_type, [tensor, axes_tensor(axis)], [output], name=name)
    return helper.make_node(op_type, [tensor], [output], name=name, axes=[axis])


def upgrade_opset(model: onnx.ModelProto, target: int = 13) -> PassResult:
    """Convert the model to opset ``target`` if it is older; never downgrades."""
    result = PassResult("upgrade-opset")
    current = default_opset(model)
    if current >= target:
        return result
    try:
        converted = version_converter.convert_version(model, target)
        onnx.checker.check_model(converted)
    except Exception as exc:  # the converter raises plain RuntimeErrors
        result.decline("model", DeclineCode.TOOL_FAILED, f"opset {current} -> {target} conversion failed: {first_line(exc, 200)}")
        return result
    model.CopyFrom(converted)
    result.change(f"upgraded opset {current} -> {target}")
    return result
