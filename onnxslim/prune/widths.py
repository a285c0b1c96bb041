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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from onnxslim.measure.latency import median_interval
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


def settled_multiple(original: Sequence[float], candidates: Sequence[Sequence[float]], largest: Sequence[int], left_out: set[int],
                     tolerance: float = TOLERANCE) -> tuple[bool, set[int]]:
    """Whether interleaved rounds so far leave no doubt which candidate :func:`choose_multiple` takes, and the candidates now
    clearly outside ``tolerance`` of the fastest (not worth timing further).

    ``candidates[i]``: candidate i's run times, paired round by round with ``original``'s (one left out earlier has fewer);
    ``largest[i]``: the largest multiple that gives candidate i; ``left_out``: the candidates no longer timed. From the
    confidence intervals of each candidate's median ratio to the original (:func:`median_interval`): a candidate is out
    when its interval lies above ``1 + tolerance`` times the fastest one's upper bound, and the choice is settled when
    the largest multiple still in has its interval within ``1 + tolerance`` of the fastest one's lower bound (it is
    within the tolerance of the fastest, and every larger multiple is out).
    """
    timed = [i for i in range(len(candidates)) if i not in left_out]  # those left out were clearly slower than these
    intervals = {i: median_interval([c / o for c, o in zip(candidates[i], original)]) for i in timed}
    if not intervals or any(interval is None for interval in intervals.values()):
        return False, set()
    fastest_low = min(low for low, _ in intervals.values())
    fastest_high = min(high for _, high in intervals.values())
    out = {i for i, (low, _) in intervals.items() if low > (1 + tolerance) * fastest_high}  # never the one with the lowest upper bound
    top = max((i for i in timed if i not in out), key=lambda i: largest[i])
    return intervals[top][1] <= (1 + tolerance) * fastest_low, out


def choice_stopper(largest: Sequence[int], tolerance: float = TOLERANCE) -> Callable[[list[list[float]]], tuple[bool, set[int]]]:
    """``until`` for :func:`onnxslim.measure.latency.interleaved_latency` over [the original, candidate 0, candidate 1, ...]:
    the loop stops once :func:`settled_multiple` holds and stops timing the candidates it finds out (``largest``: as there)."""
    left_out: set[int] = set()

    def until(samples: list[list[float]]) -> tuple[bool, set[int]]:
        settled, out = settled_multiple(samples[0], samples[1:], largest, left_out, tolerance)
        left_out.update(out)
        return settled, {index + 1 for index in out}

    return until


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
