"""JSON reports, written atomically."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from onnxslim.errors import ModelWriteError
from onnxslim.ir.destinations import check_writable_path
from onnxslim.records import plain


def to_json(data: dict) -> str:
    return json.dumps(plain(data), indent=2)


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
