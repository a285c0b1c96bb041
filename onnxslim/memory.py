"""The process's peak resident memory, as reported in onnxslim's reports, and the memory the machine has available."""

from __future__ import annotations

import os
import resource
import sys


def _kib_entry(path: str, key: str) -> int | None:
    """Bytes of a Linux /proc file's ``key`` line ('VmHWM:   1234 kB'), or None where the file or the line is missing."""
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """Peak resident set size of this process.

    Linux's ``VmHWM`` is preferred to ``ru_maxrss``: the latter survives exec,
    so a process started by a big parent reports the parent's peak.
    """
    peak = _kib_entry("/proc/self/status", "VmHWM:")
    if peak is not None:
        return peak
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def available_bytes() -> int | None:
    """Memory the machine can give without swapping: Linux's ``MemAvailable`` (free memory and reclaimable caches), else the
    free pages; None where neither can be read."""
    available = _kib_entry("/proc/meminfo", "MemAvailable:")
    if available is not None:
        return available
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None
