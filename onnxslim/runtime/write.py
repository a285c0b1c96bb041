"""Write a result model: atomically, checked by onnx.checker and by an onnxruntime session."""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from onnxslim.ir.io import save_model
from onnxslim.runtime.session import check_loads


def write_verified(model: onnx.ModelProto, output: str | os.PathLike, *, source: str | os.PathLike | None = None) -> Path:
    """Save ``model`` to ``output`` only if it passes the checker and loads in onnxruntime.

    ``source`` (the input model's path) is never overwritten.
    """
    protect = (source,) if source is not None and not isinstance(source, onnx.ModelProto) else ()
    return save_model(model, output, verify=check_loads, protect=protect)
