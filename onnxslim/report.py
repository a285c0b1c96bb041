"""JSON reports, written atomically."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from onnxslim.errors import ModelWriteError
from onnxslim.ir.destinations import check_writable_path


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return str(value)
    return value


def to_json(data: dict) -> str:
    return json.dumps(_plain(data), indent=2)


def write_report(data: dict, path: str | os.PathLike) -> Path:
    """Write ``data`` as JSON to ``path`` through a temporary file in the same folder."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    check_writable_path(target, "report", ModelWriteError)
    try:
        handle, temp = tempfile.mkstemp(prefix=".onnxslim-report-", dir=folder)
        with os.fdopen(handle, "w") as stream:
            stream.write(to_json(data) + "\n")
        os.replace(temp, target)
    except OSError as exc:
        raise ModelWriteError(f"cannot write report {target}: {exc.strerror or exc}") from None
    return target
