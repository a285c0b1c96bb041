"""Temporary folders named after their process, so that those of killed runs can be found and removed.

A run stages its output beside the destination (for an atomic rename) and keeps
big weights in a work folder under TMPDIR; both are removed when it ends, even
on Ctrl-C or SIGTERM. A SIGKILL leaves them behind: the next run that writes to
the same folder removes those whose process no longer exists, and says so.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

STAGING_PREFIX = ".onnxslim-"  # beside the destination: .onnxslim-<pid>-<random>
WORK_PREFIX = ".onnxslim-work-"  # under TMPDIR: .onnxslim-work-<pid>-<random>


def remove_stale(folder: Path, prefix: str) -> list[Path]:
    """Remove the folders ``prefix<pid>-...`` in ``folder`` whose process is gone; returns them."""
    removed = []
    try:
        candidates = [c for c in Path(folder).iterdir() if c.name.startswith(prefix) and c.is_dir()]
    except OSError:
        return removed
    for candidate in candidates:
        pid = candidate.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
    if removed:
        print(f"onnxslim: removed {len(removed)} folder(s) left in {folder} by interrupted runs", file=sys.stderr)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True
