"""The interleaved timing loop: its early stop once a faster/slower verdict is beyond doubt."""

from __future__ import annotations

import itertools

import numpy as np

from onnxslim.measure.latency import SETTLED_MIN_ROUNDS, LatencyComparison, disagreement, interleaved_latency, settled_pair, time_pair, verdict_settled


class FakeRunner:
    """A runner whose runs take the next of ``times`` (seconds), cycling."""

    threads = 1

    def __init__(self, times):
        self.times = itertools.cycle(times)
        self.calls = 0

    def time_once(self, feed):
        self.calls += 1
        return next(self.times)


def test_a_clear_verdict_settles_after_the_minimum_rounds():
    assert not verdict_settled([1.0] * (SETTLED_MIN_ROUNDS - 1), [2.0] * (SETTLED_MIN_ROUNDS - 1))
    assert verdict_settled([1.0] * SETTLED_MIN_ROUNDS, [2.0] * SETTLED_MIN_ROUNDS)  # twice as fast
    assert verdict_settled([2.0] * SETTLED_MIN_ROUNDS, [1.0] * SETTLED_MIN_ROUNDS)  # twice as slow


def test_the_interval_bounds_the_median_with_the_stated_confidence():
    from math import comb

    from onnxslim.measure.latency import SETTLED_CONFIDENCE, _interval_rank

    def outside(rounds: int, k: int) -> float:  # P(the median lies outside the k-th smallest and k-th largest of ``rounds`` values)
        return 2 * sum(comb(rounds, i) for i in range(k)) / 2**rounds

    for rounds in range(1, 41):
        rank = _interval_rank(rounds)
        if rank:
            assert outside(rounds, rank) <= 1 - SETTLED_CONFIDENCE < outside(rounds, rank + 1)
        else:
            assert outside(rounds, 1) > 1 - SETTLED_CONFIDENCE
    assert (_interval_rank(7), _interval_rank(8), _interval_rank(12), _interval_rank(30)) == (0, 1, 2, 8)


def test_close_or_disputed_timings_do_not_settle():
    rounds = 30
    candidate = [0.5] * (rounds - 10) + [1.5] * 10  # faster in the median, slower in a third of the rounds
    assert not verdict_settled(candidate, [1.0] * rounds)
    straddling = [0.98, 1.02] * (rounds // 2)  # each round on either side of 1
    assert not verdict_settled(straddling, [1.0] * rounds)


def test_a_small_steady_difference_settles_on_every_threshold_it_clears():
    rounds = SETTLED_MIN_ROUNDS
    assert verdict_settled([0.95] * rounds, [1.0] * rounds)  # faster in every round: no margin needed
    # a form's decision reads two thresholds: a tie between them is a verdict too, a ratio at one of them is not
    assert verdict_settled([0.99] * rounds, [1.0] * rounds, (0.97, 1.03))
    assert not verdict_settled([0.96, 0.98] * (rounds // 2), [1.0] * rounds, (0.97, 1.03))


def test_the_loop_stops_early_only_when_asked():
    fast, slow = FakeRunner([0.001]), FakeRunner([0.002])
    samples = interleaved_latency([slow, fast], {}, warmup=0, runs=30, until=settled_pair(1, 0))
    assert [len(s) for s in samples] == [SETTLED_MIN_ROUNDS, SETTLED_MIN_ROUNDS]
    samples = interleaved_latency([FakeRunner([0.002]), FakeRunner([0.001])], {}, warmup=0, runs=30)
    assert [len(s) for s in samples] == [30, 30]


def test_noisy_timings_run_to_the_end():
    rng = np.random.default_rng(0)
    noisy = FakeRunner(list(1.0 + rng.random(64)))
    other = FakeRunner(list(1.0 + rng.random(64)))
    samples = interleaved_latency([noisy, other], {}, warmup=0, runs=30, until=settled_pair(1, 0))
    assert len(samples[0]) == 30


def test_time_pair_settles_against_the_fallback_and_reports_the_runs_made():
    reference, candidate, fallback = FakeRunner([0.004]), FakeRunner([0.002]), FakeRunner([0.0019, 0.0021])
    comparison = time_pair(reference, candidate, {}, warmup=0, runs=30, fallback=fallback, settle=(1.0,))
    assert comparison.runs == 30  # twice as fast as the original, but tied with the fallback the verdict is against: no early stop
    reference, candidate, fallback = FakeRunner([0.004]), FakeRunner([0.002]), FakeRunner([0.0035])
    comparison = time_pair(reference, candidate, {}, warmup=0, runs=30, fallback=fallback, settle=(1.0,))
    assert comparison.runs == SETTLED_MIN_ROUNDS
    assert comparison.candidate["runs"] == comparison.fallback["runs"] == SETTLED_MIN_ROUNDS
    assert abs(comparison.ratio - 0.5) < 1e-9


def _mlp_feed():
    from models.builders import mlp

    return mlp(), {"input": np.random.default_rng(0).standard_normal((1, 32)).astype(np.float32)}


def test_an_open_session_of_the_reference_is_timed_as_it_is(monkeypatch):
    from onnxslim.measure import latency
    from onnxslim.runtime.session import Runner

    model, feed = _mlp_feed()
    opened = Runner(model, threads=2, label="float model")
    created = []
    original_init = Runner.__init__

    def counting_init(self, *args, **kwargs):
        created.append(kwargs.get("like") is not None)
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(Runner, "__init__", counting_init)
    at_two, at_one = latency.latency_ratios(opened, model, feed, threads=2, runs=3)
    assert at_two.reference["runs"] == 3 and at_one is not None
    # at 2 threads only the candidate is opened; at 1 thread both, each from the serialized copy it already has
    assert created == [False, True, True]


def test_the_one_thread_timing_runs_only_when_the_first_asks_for_it():
    from onnxslim.measure import latency

    model, feed = _mlp_feed()
    asked = []
    at_two, at_one = latency.latency_ratios(model, model, feed, threads=2, runs=3, one_thread_when=lambda timed: asked.append(timed.ratio) or False)
    assert at_one is None and asked == [at_two.ratio]
    _, at_one = latency.latency_ratios(model, model, feed, threads=2, runs=3, one_thread_when=lambda timed: True)
    assert at_one is not None and at_one.threads == 1


def test_sessions_on_several_threads_do_not_spin_between_runs():
    # a session's idle intra-op threads spinning after its run take the cores from the next session timed in the same loop
    from onnx import TensorProto, helper

    from onnxslim.runtime import Runner

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    for threads in (2, None):  # None: onnxruntime's default, one thread per core
        options = Runner(model, threads=threads).session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_a_candidate_is_weighed_against_the_model_written_instead_of_it():
    def timed(candidate, fallback, threads):
        return LatencyComparison(threads, {"median_ms": 1.0, "runs": 3}, {"median_ms": candidate, "runs": 3}, fallback={"median_ms": fallback, "runs": 3})

    slower_cleaned = timed(0.9, 1.1, 1)  # the cleaned model timed slower than the original: the original is written instead
    assert slower_cleaned.fallback_not_faster and slower_cleaned.ratio_to_beat == 0.9
    faster_cleaned = timed(1.05, 0.95, 2)
    assert not faster_cleaned.fallback_not_faster and abs(faster_cleaned.ratio_to_beat - 1.05 / 0.95) < 1e-12
    text = disagreement(faster_cleaned, slower_cleaned, "INT8")
    assert text.startswith("INT8: 0.90x the original's latency at 1 thread but 1.11x the cleaned FP32 model's at 2 threads;")
    assert disagreement(timed(0.8, 0.9, 2), slower_cleaned, "INT8") is None  # faster than what would be written at both counts


def test_a_forms_timing_stops_once_the_challenger_clearly_can_or_cannot_win():
    from onnxslim.quant.forms import FASTER, NOT_FASTER, SETTLE_AT, TIED, one_thread_threshold, timing_verdict

    rounds, at_threads, alone = SETTLED_MIN_ROUNDS, SETTLE_AT[0], SETTLE_AT[1]
    # 2% slower in every round: clearly unable to win at the deploy count, though inside the tie band (a median decides which)
    assert verdict_settled([1.02] * rounds, [1.0] * rounds, at_threads)
    assert not verdict_settled([0.96, 0.98] * (rounds // 2), [1.0] * rounds, at_threads)  # on either side of FASTER

    def timed(ratio):
        return LatencyComparison(None, {"runs": rounds, "median_ms": 1.0}, {"runs": rounds, "median_ms": ratio})

    assert timing_verdict(timed(1.05), None) == NOT_FASTER
    tie = timed(1.02)
    assert one_thread_threshold(tie) == (FASTER,)  # a tie: is it faster alone?
    assert timing_verdict(tie, timed(0.99)) == TIED and timing_verdict(tie, timed(0.95)) is None
    win = timed(0.9)
    assert alone(win) == (1.0,)  # a win: is it slower alone?
    assert timing_verdict(win, timed(0.99)) is None
