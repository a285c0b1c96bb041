"""Upgrade the default-domain opset when a later step needs a newer one."""

from __future__ import annotations

import onnx
from onnx import version_converter

from onnxslim.errors import first_line
from onnxslim.passes.base import DeclineCode, PassResult


def default_opset(model: onnx.ModelProto) -> int:
    """The model's opset version for the default ONNX domain (0 when it declares none)."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 0


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
