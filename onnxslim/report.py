"""JSON reports, written atomically."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from onnxslim.errors import ModelWriteError, NothingToDoError
from onnxslim.ir.destinations import check_writable_path
from onnxslim.records import plain


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def nothing_written(report, message: str) -> NothingToDoError:
    """The error of a run that changes nothing, carrying ``report`` (what was measured on the way) for --report, marked as
    having written nothing."""
    report.written, report.output = "nothing", None
    return NothingToDoError(message, report=report)


def to_json(data: dict) -> str:
    return json.dumps(plain(data), indent=2)


def write_report(data: dict, path: str | os.PathLike) -> Path:
    """Write ``data`` as JSON to ``path`` through a temporary file in the same folder."""
    return write_text(to_json(data) + "\n", path, "report")


def write_text(text: str, path: str | os.PathLike, role: str) -> Path:
    """Write ``text`` to ``path`` atomically (a temporary file in the same folder, then a rename); ``role`` names it in errors."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    check_writable_path(target, role, ModelWriteError)
    temp = None
    try:
        handle, temp = tempfile.mkstemp(prefix=".onnxslim-report-", dir=folder)
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.chmod(temp, 0o666 & ~_umask())  # what a plain open() would have given, not mkstemp's private 0600
        os.replace(temp, target)
    except OSError as exc:
        if temp is not None and os.path.exists(temp):
            os.unlink(temp)
        raise ModelWriteError(f"cannot write {role} {target}: {exc.strerror or exc}") from None
    return target


def plotly_figures():
    """plotly's graph objects for the HTML reports (the ``html`` extra), or one line saying how to install it."""
    from onnxslim.errors import UsageError

    try:
        import plotly.graph_objects as go
    except ImportError:
        raise UsageError("--html needs plotly: pip install 'onnxslim[html]'") from None
    return go


def html_number(value: float | None, digits: int = 3, suffix: str = "") -> str:
    """A number for an HTML table cell: "-" when there is none, "nan" when it is not a number."""
    if value is None:
        return "-"
    return f"{value:.{digits}f}{suffix}" if value == value else "nan"


def html_page(command: str, subject: str, body: str) -> str:
    """A self-contained HTML report of ``command`` on ``subject`` (escaped here) around ``body`` (HTML already)."""
    import html

    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>onnxslim {command}: {html.escape(subject)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:4px 8px}}</style></head>
<body><h1>onnxslim {command}</h1>
{body}
</body></html>
"""
