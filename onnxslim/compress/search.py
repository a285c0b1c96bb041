"""Which candidate ``compress`` writes: a pure function of the measured candidates and the budget.

A candidate's loss is 1 - its worst output's score against the original on
held-out data (cosine similarity, or top-1 agreement for class scores and
per-step probabilities: :func:`onnxslim.measure.output_score`). A candidate
whose outputs disagree on NaN/Inf has an infinite loss and never fits a budget.
Within the budget, the fastest candidate wins; with a latency target, the most
faithful candidate that meets it. The original itself is a candidate (loss 0,
ratio 1), so "nothing helps" is an answer, not a crash.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from onnxslim.records import Record

LATENCY_TIE = 0.03


@dataclass
class Candidate(Record):
    """One model compress built and measured against the original."""

    name: str
    prune_ratio: float
    quantized: bool
    shared: bool = False  # weights stored as codebooks (share): smaller, the original's speed
    loss: float = math.nan  # 1 - the worst output's cosine to the original, on held-out data
    latency_ratio: float | None = None  # median latency over the original's, interleaved with every other candidate
    latency_ratio_1_thread: float | None = None  # the same at 1 thread, when --threads is another count
    file_bytes: int = 0
    parameters: int = 0
    note: str = ""  # what was done, or why the candidate was not built
    failed: bool = False
    within_budget: bool = False
    chosen: bool = False
    details: dict = field(default_factory=dict)

    @property
    def measured(self) -> bool:
        return not self.failed and not math.isnan(self.loss) and self.latency_ratio is not None


@dataclass(frozen=True)
class Budget:
    """What the user can lose, and optionally what they need."""

    max_loss: float
    target_latency: float | None = None
    objective: str = "latency"  # or "size": the smallest file among those within the budget and not slower than the original

    def fits(self, candidate: Candidate) -> bool:
        return candidate.measured and math.isfinite(candidate.loss) and candidate.loss <= self.max_loss + 1e-12


def choose(candidates: list[Candidate], budget: Budget) -> tuple[Candidate | None, str]:
    """The candidate to write (None: none helps) and why, marking ``within_budget`` and ``chosen`` on the candidates.

    A candidate no faster than the original is never chosen: writing it would
    make the user's model slower for nothing; nor is one whose file is larger. Faster means by more than the
    timing noise of a shared machine (``LATENCY_TIE``): a candidate measured at
    0.97x in one loop timed 1.04x in the next on a table recognizer, and a
    gain that small is not worth a model that may be the slower one. With the
    size objective a candidate as fast as the original (within that noise) is
    chosen too: a smaller download at the same speed is a gain.
    """
    for candidate in candidates:
        candidate.within_budget = budget.fits(candidate)
        candidate.chosen = False
    fitting = [c for c in candidates if c.within_budget and (c.prune_ratio > 0 or c.quantized or c.shared)]
    limit = 1.0 + LATENCY_TIE if budget.objective == "size" else 1.0 - LATENCY_TIE  # for a smaller file, the original's speed is enough
    faster = [c for c in fitting if c.latency_ratio is not None and c.latency_ratio < limit]
    original = next((c for c in candidates if c.prune_ratio == 0 and not c.quantized and not c.shared), None)
    larger = [c for c in faster if original is not None and original.file_bytes and c.file_bytes > original.file_bytes]
    faster = [c for c in faster if c not in larger]  # never a bigger file than the user gave
    if not fitting and all(c.failed for c in candidates if c.prune_ratio > 0 or c.quantized or c.shared):
        return None, f"no candidate could be built: {_why_not_built(candidates)}"
    if not fitting:
        return None, f"no candidate keeps every output within the budget (loss <= {budget.max_loss:g})"
    if not faster and larger:
        return None, f"every faster candidate within the budget is a larger file than the original ({', '.join(c.name for c in larger)})"
    if not faster:
        return None, f"every candidate within the budget is as slow as the original or slower (none below {limit:.2f}x its latency)"
    if budget.target_latency is not None:
        meeting = [c for c in faster if c.latency_ratio <= budget.target_latency]
        if not meeting:
            best = min(faster, key=lambda c: c.latency_ratio)
            return None, f"no candidate within the budget reaches --target-latency {budget.target_latency:g} (the fastest is {best.name} at {best.latency_ratio:.2f}x)"
        best = min(meeting, key=lambda c: (c.loss, c.latency_ratio))
        best.chosen = True
        return best, f"the most faithful candidate at or below {budget.target_latency:g}x the original's latency"
    if budget.objective == "size":
        smallest = min(c.file_bytes for c in faster)
        # a file within 1% of the smallest is as small: the more faithful one wins
        best = min((c for c in faster if c.file_bytes <= smallest * 1.01), key=lambda c: (c.loss, c.file_bytes))
        best.chosen = True
        return best, "the smallest candidate within the budget that is not slower than the original"
    fastest = min(c.latency_ratio for c in faster)
    # timings closer than the noise of a shared machine are a tie: the more faithful one wins it
    best = min((c for c in faster if c.latency_ratio <= fastest * (1 + LATENCY_TIE)), key=lambda c: (c.loss, c.latency_ratio))
    best.chosen = True
    return best, "the fastest candidate within the budget" + (" (the more faithful of equally fast ones)" if best.latency_ratio > fastest else "")


def _why_not_built(candidates: list[Candidate]) -> str:
    """Each distinct reason candidates were not built, with the first candidate it stopped ('pruned 10%: ...; quantized: ...')."""
    reasons: dict[str, str] = {}
    for candidate in candidates:
        if candidate.failed:
            reasons.setdefault(candidate.note.removeprefix("not built: "), candidate.name)
    return "; ".join(f"{name}: {reason}" for reason, name in reasons.items()) or "none was tried"
