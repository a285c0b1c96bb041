"""Which channel multiple to keep: the one the runtime runs fastest, measured rather than assumed.

onnxruntime's CPU kernels run some channel counts much faster than others (its
blocked NCHWc convolutions need multiples of the vector width, and a layer
that falls out of the blocked layout costs reorders on both sides). Pruning to
the counts a ratio asks for can therefore make a model slower. The driver
prunes the model at each candidate multiple, times every candidate against the
original (interleaved, on the target provider and thread count), and this
module picks one; the timings are cached per machine, provider and threads.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from onnxslim.records import Record

CANDIDATE_MULTIPLES = (1, 4, 8, 16, 32)
TOLERANCE = 0.03  # timings closer than this to the fastest are treated as equally fast


@dataclass(frozen=True)
class WidthChoice(Record):
    """The channel multiple used, and the latency ratio to the original measured for each candidate (before recovery)."""

    multiple: int
    measured: dict[int, float] = field(default_factory=dict)  # at ``threads``, the count the user deploys with
    threads: int | None = None
    cached: bool = False
    note: str = ""
    measured_1_thread: dict[int, float] = field(default_factory=dict)  # when ``threads`` is another count; the slower of the two decides

    def __str__(self) -> str:
        if not self.measured:
            return f"channel counts kept at multiples of {self.multiple}{f' ({self.note})' if self.note else ''}"
        timings = ", ".join(f"{m}: {r:.2f}x" for m, r in sorted(self.measured.items()))
        if self.measured_1_thread:
            timings += "; at 1 thread " + ", ".join(f"{m}: {r:.2f}x" for m, r in sorted(self.measured_1_thread.items()))
        where = f", {self.note}" if self.note else ""
        return f"channel counts kept at multiples of {self.multiple}, the fastest measured ({timings} of the original's latency{where}{', cached' if self.cached else ''})"


def choose_multiple(ratios: Mapping[int, float], tolerance: float = TOLERANCE) -> int:
    """The multiple to keep channel counts at, from each candidate's measured latency ratio to the original.

    Among the candidates within ``tolerance`` of the fastest, the largest multiple:
    it keeps the most channels (rounding up), so it is the most accurate of equally fast ones.
    """
    if not ratios:
        raise ValueError("no candidate was measured")
    fastest = min(ratios.values())
    return max(m for m, r in ratios.items() if r <= fastest * (1 + tolerance))


def cache_key(model_bytes_digest: str, settings: str, provider: str, threads: int | None) -> str:
    """What a measurement depends on: the model, the selection settings, the machine, the provider and the threads."""
    machine = f"{platform.machine()}|{platform.processor()}|{os.cpu_count()}"
    return hashlib.sha256("|".join([model_bytes_digest, settings, machine, provider, str(threads)]).encode()).hexdigest()[:32]


def cache_file() -> Path:
    """Where measured widths are kept: $ONNXSLIM_CACHE_DIR, else the user's cache folder."""
    root = os.environ.get("ONNXSLIM_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "onnxslim")
    return Path(root) / "widths.json"


def cached(key: str) -> dict[int, float] | None:
    try:
        entry = json.loads(cache_file().read_text()).get(key)
    except (OSError, ValueError):
        return None
    return {int(k): float(v) for k, v in entry.items()} if isinstance(entry, dict) else None


def remember(key: str, ratios: Mapping[int, float]) -> None:
    """Add one measurement to the cache; a cache that cannot be written is not an error (the next run measures again)."""
    path = cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            entries = json.loads(path.read_text())
        except (OSError, ValueError):
            entries = {}
        entries[key] = {str(k): float(v) for k, v in ratios.items()}
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(entries))
        os.replace(temporary, path)
    except OSError:
        pass
