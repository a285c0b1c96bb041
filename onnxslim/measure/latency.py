"""Interleaved latency measurement of several runners on the same input.

Runs alternate between the models (in a rotating order) so that a burst of
noise on a shared machine hits them all alike; the ratio of medians is what
onnxslim reports.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from onnxslim.errors import NothingToDoError
from onnxslim.progress import track
from onnxslim.records import Record
from onnxslim.runtime.session import ModelSource, Runner

# A timing that only decides stops once the verdict is beyond doubt: after at least SETTLED_MIN_ROUNDS interleaved rounds,
# when the distribution-free SETTLED_CONFIDENCE interval of the median per-round ratio (candidate / baseline, from the
# rounds' order statistics, as a sign test gives it) and the ratio of the medians lie on the same side of every threshold
# the decision reads. Under equal speeds, 8 rounds agree that well (every round on one side) 0.8% of the time.
SETTLED_MIN_ROUNDS = 8
SETTLED_CONFIDENCE = 0.99


def interleaved_latency(
    runners: Sequence[Runner], feed: Mapping[str, np.ndarray], *, warmup: int = 5, runs: int = 50, show_progress: bool = False, description: str = "timing",
    until: Callable[[list[list[float]]], tuple[bool, set[int]]] | None = None,
) -> list[list[float]]:
    """Seconds per run for each runner, measured alternately.

    ``until``: called with the samples after each round (:func:`settled_pair` for a decision between two runners); it
    returns whether the loop may stop before ``runs`` rounds and the indices of runners not worth timing further (their
    samples end there, paired round by round with the others' first ones).
    """
    for runner in runners:
        for _ in range(warmup):
            runner.time_once(feed)
    samples: list[list[float]] = [[] for _ in runners]
    order = list(range(len(runners)))
    for _ in track(range(runs), description, total=runs, enabled=show_progress):
        for index in order:
            samples[index].append(runners[index].time_once(feed))
        order.reverse()
        if until is not None:
            stop, left_out = until(samples)
            order = [index for index in order if index not in left_out]
            if stop:
                break
    return samples


def _interval_rank(rounds: int) -> int:
    """The rank k for which the k-th smallest and k-th largest of ``rounds`` values bound their median with at least
    SETTLED_CONFIDENCE (from the binomial distribution of how many fall below it); 0 when so few rounds give no such bound."""
    tail = (1.0 - SETTLED_CONFIDENCE) / 2.0
    below = 0.0
    for rank in range(rounds + 1):
        below += math.comb(rounds, rank) / 2.0**rounds  # P(at most ``rank`` values below the median)
        if below > tail:
            return rank
    return 0


def median_interval(values: Sequence[float]) -> tuple[float, float] | None:
    """The SETTLED_CONFIDENCE interval of ``values``' median from their order statistics; None for fewer than
    SETTLED_MIN_ROUNDS values."""
    rank = _interval_rank(len(values)) if len(values) >= SETTLED_MIN_ROUNDS else 0
    if rank == 0:
        return None
    ordered = sorted(values)
    return ordered[rank - 1], ordered[len(values) - rank]


def settled_pair(candidate: int, baseline: int, thresholds: Sequence[float] = (1.0,)) -> Callable[[list[list[float]]], tuple[bool, set[int]]]:
    """``until`` for :func:`interleaved_latency`: stop once :func:`verdict_settled` holds for the runners at indices
    ``candidate`` and ``baseline`` at ``thresholds`` (every runner then has the same, smaller count)."""
    return lambda samples: (verdict_settled(samples[candidate], samples[baseline], thresholds), set())


def verdict_settled(candidate: Sequence[float], baseline: Sequence[float], thresholds: Sequence[float] = (1.0,)) -> bool:
    """Whether interleaved rounds so far leave no doubt on which side of each of ``thresholds`` the candidate's latency
    ratio lies (the ratio of the medians, and the confidence interval of the per-round ratios' median, on the same side)."""
    interval = median_interval([c / b for c, b in zip(candidate, baseline)])
    if interval is None:
        return False
    low, high = interval
    ratio = float(np.median(candidate) / np.median(baseline))
    return all((low > threshold and ratio > threshold) or (high < threshold and ratio < threshold) for threshold in thresholds)


def summarize_latency(samples: list[float]) -> dict:
    """Median and p90 in milliseconds of per-run seconds."""
    if not samples:
        return {"runs": 0, "median_ms": None, "p90_ms": None}
    ordered = np.sort(np.asarray(samples)) * 1000.0
    return {
        "runs": len(samples),
        "median_ms": float(np.median(ordered)),
        "p90_ms": float(np.percentile(ordered, 90)),
        "min_ms": float(ordered[0]),
    }


def keep_fallback(ratio: float | None, policy: str, *, keep: str, message: str, kept: str) -> tuple[bool, str | None]:
    """Whether a candidate timed at ``ratio`` of its original's latency gives way to the fallback, and the warning.

    ``policy`` is the command's ``--if-slower``: ``keep`` writes the fallback, 'fail' raises, anything
    else writes the candidate with a warning. A candidate not timed or faster is kept silently.
    """
    if ratio is None or ratio < 1.0:
        return False, None
    if policy == "fail":
        raise NothingToDoError(message + "; nothing written (--if-slower fail)")
    if policy == keep:
        return True, f"{message}; {kept}"
    return False, message


def threads_text(threads: int | None) -> str:
    """'1 thread', '4 threads', or onnxruntime's default (0 or None)."""
    if not threads:
        return f"onnxruntime's default threads ({os.cpu_count() or 1} cores)"
    return f"{threads} thread{'s' if threads != 1 else ''}"


def also_one_thread(threads: int | None, provider: str = "CPUExecutionProvider") -> bool:
    """Whether a CPU measurement at ``threads`` (the count the user deploys with) is worth repeating at 1 thread."""
    return provider == "CPUExecutionProvider" and threads != 1 and (bool(threads) or (os.cpu_count() or 1) > 1)


def disagreement(at_threads: LatencyComparison | None, at_one: LatencyComparison | None, subject: str) -> str | None:
    """A warning when the candidate beats the model written instead of it at one thread count and not at the other (``subject``: "INT8")."""
    if at_threads is None or at_one is None or at_threads.ratio_to_beat is None or at_one.ratio_to_beat is None:
        return None
    if (at_threads.ratio_to_beat < 1.0) == (at_one.ratio_to_beat < 1.0):
        return None
    one, many = _against(at_one), _against(at_threads)
    return (
        f"{subject}: {at_one.ratio_to_beat:.2f}x {one} latency at 1 thread but {at_threads.ratio_to_beat:.2f}x{'' if many == one else ' ' + many} "
        f"at {threads_text(at_threads.threads)}; what was written follows {threads_text(at_threads.threads)} (--threads sets the count you deploy with)"
    )


def _against(comparison: LatencyComparison) -> str:
    return "the cleaned FP32 model's" if comparison.fallback and not comparison.fallback_not_faster else "the original's"


@dataclass(frozen=True)
class LatencyComparison(Record):
    """Interleaved latency of a reference and a candidate model on one batch.

    ``reference`` and ``candidate`` are :func:`summarize_latency` results (runs,
    median, p90, min in milliseconds); ``ratio`` is candidate over reference median.
    ``fallback``: the model written instead of the candidate when it does not pay
    (quantize's cleaned FP32 model), timed in the same loop, or None.
    """

    threads: int | None
    reference: dict
    candidate: dict
    batch: str | None = None
    fallback: dict | None = None

    @property
    def ratio(self) -> float | None:
        return _median_ratio(self.candidate, self.reference)

    @property
    def fallback_ratio(self) -> float | None:
        """The fallback's latency over the reference's (None when it was not timed)."""
        return _median_ratio(self.fallback, self.reference) if self.fallback else None

    @property
    def ratio_to_fallback(self) -> float | None:
        """The candidate's latency over the fallback's, or over the reference's when no fallback was timed."""
        return _median_ratio(self.candidate, self.fallback) if self.fallback else self.ratio

    @property
    def fallback_not_faster(self) -> bool:
        """Whether the fallback was timed and no faster than the reference: then the reference itself is what gets written instead."""
        return self.fallback_ratio is not None and self.fallback_ratio >= 1.0

    @property
    def ratio_to_beat(self) -> float | None:
        """The candidate's latency over that of the model written instead of it: the fallback where it was timed faster than the
        reference, the reference otherwise."""
        return self.ratio_to_fallback if self.fallback and not self.fallback_not_faster else self.ratio

    @property
    def runs(self) -> int:
        return int(self.reference.get("runs", 0))

    def derived(self) -> dict:
        return {"ratio": self.ratio} | ({"fallback_ratio": self.fallback_ratio} if self.fallback else {})


def _median_ratio(numerator: dict, denominator: dict) -> float | None:
    top, bottom = numerator.get("median_ms"), denominator.get("median_ms")
    return top / bottom if bottom and top is not None else None


def time_pair(
    reference: Runner, candidate: Runner, feed: Mapping[str, np.ndarray], *, warmup: int, runs: int, batch: str | None = None,
    show_progress: bool = False, description: str = "timing", fallback: Runner | None = None, settle: Sequence[float] = (),
) -> LatencyComparison:
    """Time two open sessions (and ``fallback``, when given) interleaved on ``feed``.

    ``settle``: the thresholds of a timing that only decides; it stops before ``runs`` once the candidate's
    ratio to the model it would replace (the fallback when given) is clearly on one side of each
    (:func:`verdict_settled`); the summaries record the runs made.
    """
    runners = [reference, candidate] + ([fallback] if fallback is not None else [])
    until = settled_pair(1, 2 if fallback is not None else 0, settle) if settle else None
    times = interleaved_latency(runners, feed, warmup=warmup, runs=runs, show_progress=show_progress, description=description, until=until)
    summaries = [summarize_latency(t) for t in times]
    return LatencyComparison(reference.threads, summaries[0], summaries[1], batch, fallback=summaries[2] if fallback is not None else None)


def _runners(reference, candidate, fallback, provider: str, threads: int, labels: tuple[str, str], like: list[Runner | None] | None = None) -> list[Runner | None]:
    """Sessions of the reference, the candidate and the fallback (None when not given) at ``threads``; ``like``: the same models' runners at another count.

    A model given as an open :class:`Runner` is used as it is (the caller opened it at ``threads``).
    """
    like = like or [None, None, None]
    names = (labels[0], labels[1], f"cleaned {labels[0]}")
    runners: list[Runner | None] = []
    for model, name, other in zip((reference, candidate, fallback), names, like):
        if model is None or (isinstance(model, Runner) and other is None):
            runners.append(model)
        else:
            runners.append(Runner(model, provider, threads=threads, label=name, like=other))
    return runners


def _timed(runners: list[Runner | None], feed, runs: int, show_progress: bool, description: str, settle: Sequence[float]) -> LatencyComparison:
    reference, candidate, fallback = runners
    return time_pair(reference, candidate, feed, warmup=max(3, runs // 10), runs=runs, show_progress=show_progress, description=description, fallback=fallback, settle=settle)


def latency_ratios(
    reference: ModelSource | Runner, candidate: ModelSource, feed: Mapping[str, np.ndarray], *, threads: int, runs: int, show_progress: bool = False,
    description: str = "timing FP32 vs INT8", labels: tuple[str, str] = ("float model", "quantized model"), provider: str = "CPUExecutionProvider",
    fallback: ModelSource | None = None,
    settle: tuple[Sequence[float], Sequence[float] | Callable[[LatencyComparison], Sequence[float]]] | None = ((1.0,), (1.0,)),
    one_thread_when: Callable[[LatencyComparison], bool] | None = None,
) -> tuple[LatencyComparison, LatencyComparison | None]:
    """Interleaved median latency of both models (and ``fallback``, when given) on one batch on ``provider``, at ``threads`` (the count
    the user deploys with) and at 1 thread when that is another count (else None); ``labels`` name them in errors.

    ``reference`` may be the float model's session, already open at ``threads`` on ``provider``: it is
    used (and its session closed after) instead of opening another.
    A decision's timing: ``settle`` holds the thresholds its verdict reads at ``threads`` and at 1 thread (those at 1 thread
    may be a function of the result at ``threads``), and each timing stops early once the ratio is clearly on one side of
    every one of them (see :func:`time_pair`); None makes every run.
    ``one_thread_when``: time at 1 thread only when it holds for the result at ``threads`` (a decision
    that the first timing already settles skips the second).
    """
    runners = _runners(reference, candidate, fallback, provider, threads, labels)
    at_threads = _timed(runners, feed, runs, show_progress, description, settle[0] if settle else ())
    if not also_one_thread(threads, provider) or (one_thread_when is not None and not one_thread_when(at_threads)):
        return at_threads, None
    for runner in runners:
        if runner is not None:
            del runner.session  # one set of sessions at a time (memory); the serialized models stay for the next set
    one_thread = _runners(reference, candidate, fallback, provider, 1, labels, like=runners)  # each model serialized once for both counts
    alone = (settle[1](at_threads) if callable(settle[1]) else settle[1]) if settle else ()
    return at_threads, _timed(one_thread, feed, runs, show_progress, f"{description} (1 thread)", alone)
