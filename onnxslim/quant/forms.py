"""Two built forms of one model, and whether the form that would replace the other pays: the rule that
``--scalar-affine auto``, ``--depthwise auto`` and ``--output-layers auto`` share.

The challenger is written only when it is measured faster at the thread count the user deploys with
and not slower at 1 thread, or ties there (within 3%, where timing at several threads is noisy) and is
faster at 1 thread; and when it stays as faithful (its loss at most LOSS_SLACK times the other form's,
plus ABSOLUTE_SLACK: the two forms round differently) and within the accuracy budget.
"""

from __future__ import annotations

import math

from onnxslim.measure.latency import LatencyComparison, latency_ratios, threads_text

FASTER = 0.97  # the challenger must beat the other form's median latency by this factor at the deploy thread count,
TIE = 1.0 / FASTER  # or, within this much of it there (a tie, as timing noise at several threads often leaves it), at 1 thread
LOSS_SLACK = 1.1  # ... and lose at most this multiple of the other form's accuracy loss (1 - worst score), plus ABSOLUTE_SLACK
ABSOLUTE_SLACK = 0.001

NOT_FASTER = "not faster"  # at the deploy thread count
SLOWER_ALONE = "slower at 1 thread"
TIED = "tied"  # within TIE at the deploy thread count, and not faster at 1 thread
MISSES_BUDGET = "misses the accuracy budget"  # or scores NaN
LESS_FAITHFUL = "less faithful"


def worth_timing_alone(timed: LatencyComparison) -> bool:
    """Whether the timing at the deploy thread count leaves the verdict open, so that 1 thread is timed too."""
    return timed.ratio is not None and timed.ratio < TIE


def one_thread_threshold(at_threads: LatencyComparison) -> tuple[float, ...]:
    """The ratio the 1-thread timing decides on: 1 where the challenger won at the deploy thread count (is it slower alone?),
    FASTER where it tied there (is it faster alone?)."""
    return (1.0,) if at_threads.ratio is not None and at_threads.ratio < FASTER else (FASTER,)


# where a form's timings may stop (see latency_ratios): at the deploy thread count once the ratio is clearly on one side of
# FASTER (the challenger can win there or it cannot; the median then tells a tie from a loss), at 1 thread once it is
# clearly on one side of the threshold the first timing left to decide
SETTLE_AT = ((FASTER,), one_thread_threshold)


def timing_verdict(at_threads: LatencyComparison, at_one: LatencyComparison | None) -> str | None:
    """None when the challenger (the candidate of both comparisons) wins on time; else NOT_FASTER, SLOWER_ALONE or TIED."""
    if at_threads.ratio is None or at_threads.ratio >= TIE:
        return NOT_FASTER
    if at_one is not None and at_one.ratio is not None and at_one.ratio > 1.0:
        return SLOWER_ALONE
    faster_alone = at_one is not None and at_one.ratio is not None and at_one.ratio < FASTER
    if at_threads.ratio >= FASTER and not faster_alone:
        return TIED
    return None


def fidelity_verdict(score: float, challenger: float, budget: float | None) -> str | None:
    """None when the challenger's worst score is as faithful as ``score`` and within ``budget``; else MISSES_BUDGET or LESS_FAITHFUL."""
    if math.isnan(challenger) or (budget is not None and challenger < budget):
        return MISSES_BUDGET
    if not math.isnan(score) and 1.0 - challenger > (1.0 - score) * LOSS_SLACK + ABSOLUTE_SLACK:
        return LESS_FAITHFUL
    return None


def ratio_text(ratio: float | None) -> str:
    return "unmeasured" if ratio is None else f"{ratio:.2f}x"


def record_ratios(entry: dict, key: str, at_threads: LatencyComparison, at_one: LatencyComparison | None) -> None:
    """A form timing's ratios in its report entry: ``key`` at the deploy thread count, ``key``_1_thread where 1 thread was timed too."""
    entry[key] = at_threads.ratio
    if at_one is not None:
        entry[f"{key}_1_thread"] = at_one.ratio


def speed_text(at_threads: LatencyComparison, at_one: LatencyComparison | None, where: str, against: str) -> str:
    """'0.91x <against> latency at <where>, 0.84x at 1 thread' (the second part where 1 thread was timed)."""
    text = f"{ratio_text(at_threads.ratio)} {against} latency at {where}"
    if at_one is not None and at_one.ratio is not None:
        text += f", {ratio_text(at_one.ratio)} at 1 thread"
    return text


def timed_decision(run, config, incumbent, challenger, entry: dict, key: str, *, description: str, labels: tuple[str, str], against: str) -> tuple[str | None, str]:
    """Time ``challenger`` against ``incumbent`` on the first held-out batch as a decision between two forms (at --threads, and
    at 1 thread where that leaves the verdict open), the ratios recorded in ``entry`` under ``key``: the timing verdict
    (None when the challenger wins) and the challenger's speed in words, against ``against`` (e.g. "the integer form's")."""
    at_threads, at_one = latency_ratios(
        incumbent, challenger, run.eval_batches[0][1], threads=config.threads, runs=config.latency_runs, show_progress=run.show_progress,
        description=description, labels=labels, one_thread_when=worth_timing_alone, settle=SETTLE_AT,
    )
    record_ratios(entry, key, at_threads, at_one)
    return timing_verdict(at_threads, at_one), speed_text(at_threads, at_one, threads_text(config.threads), against)
