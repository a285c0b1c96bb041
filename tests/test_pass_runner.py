"""Passes over data in several sessions side by side: same outputs, same order, one session's errors."""

from __future__ import annotations

import numpy as np
import pytest

from models.builders import conv_bn_relu, sample_inputs
from onnxslim.errors import DataError, UsageError
from onnxslim.measure.fidelity import RememberedReference, fidelity, fidelity_with_head
from onnxslim.runtime import Runner, passes
from onnxslim.runtime.passes import MAX_WORKERS, WEIGHT_COPIES_BYTES, PassRunner, pass_workers


def _batches(model, count, seed=0):
    return [(f"batch {i}", feed) for i, feed in enumerate(sample_inputs(model, count, seed=seed))]


def test_batches_run_side_by_side_come_back_in_order_with_one_sessions_outputs():
    model = conv_bn_relu(channels=8, size=16)
    batches = _batches(model, 9)
    single = Runner(model, threads=1)
    runner = PassRunner(model, workers=3)
    assert runner.workers == 3
    seen = list(runner.run_many(batches))
    assert [label for label, _, _ in seen] == [label for label, _ in batches]
    for (_, batch, outputs), (_, expected_batch) in zip(seen, batches):
        assert batch is expected_batch
        np.testing.assert_array_equal(outputs[0], single.run(batch)[0])


def test_a_session_that_does_not_open_leaves_its_batches_to_the_others(monkeypatch):
    model = conv_bn_relu(channels=8, size=16)
    batches = _batches(model, 6)
    expected = [Runner(model, threads=1).run(batch)[0] for _, batch in batches]
    opened = []
    real = passes.Runner

    def out_of_memory_after_two(*args, **kwargs):
        opened.append(1)
        if len(opened) > 2:
            raise MemoryError("no room for another copy of the weights")
        return real(*args, **kwargs)

    monkeypatch.setattr(passes, "Runner", out_of_memory_after_two)
    runner = PassRunner(model, workers=4)
    seen = list(runner.run_many(batches))
    assert [label for label, _, _ in seen] == [label for label, _ in batches]
    for (_, _, outputs), want in zip(seen, expected):
        np.testing.assert_array_equal(outputs[0], want)


def test_how_many_sessions_a_pass_runs():
    assert pass_workers(10 << 20, "CPUExecutionProvider", cores=2) == 2
    assert pass_workers(10 << 20, "CPUExecutionProvider", cores=64) == MAX_WORKERS
    assert pass_workers(WEIGHT_COPIES_BYTES // 2, "CPUExecutionProvider", cores=8) == 2  # every session copies the weights
    assert pass_workers(WEIGHT_COPIES_BYTES, "CPUExecutionProvider", cores=8) == 1
    assert pass_workers(None, "CPUExecutionProvider", cores=8) == 1  # weights beside the file: size unknown
    assert pass_workers(10 << 20, "CUDAExecutionProvider", cores=8) == 1


def test_a_short_pass_opens_no_session_it_would_not_keep_busy():
    model = conv_bn_relu()
    assert PassRunner(model, cores=8).workers == MAX_WORKERS
    assert PassRunner(model, cores=8, batches=3).workers == 1  # three batches: the first session runs them sooner than a second opens
    assert PassRunner(model, cores=8, batches=9).workers == 2
    assert PassRunner(model, cores=8, batches=100).workers == MAX_WORKERS
    assert PassRunner(model, cores=8, batches=3, workers=3).workers == 3  # asked for


def test_the_environment_can_ask_for_more_sessions_than_the_default(monkeypatch):
    monkeypatch.setenv("ONNXSLIM_PASS_WORKERS", str(MAX_WORKERS + 2))
    assert PassRunner(conv_bn_relu(), cores=16).workers == MAX_WORKERS + 2
    assert PassRunner(conv_bn_relu(), cores=16, batches=100).workers == MAX_WORKERS + 2


def test_the_environment_caps_the_sessions(monkeypatch):
    monkeypatch.setenv("ONNXSLIM_PASS_WORKERS", "1")
    assert pass_workers(10 << 20, "CPUExecutionProvider", cores=8) == 1
    assert PassRunner(conv_bn_relu(channels=8, size=16)).workers == 1
    monkeypatch.setenv("ONNXSLIM_PASS_WORKERS", "two")
    with pytest.raises(UsageError, match="ONNXSLIM_PASS_WORKERS"):
        pass_workers(10 << 20, "CPUExecutionProvider", cores=8)


def test_a_bad_batch_fails_with_its_session_error_and_stops_the_pass():
    model = conv_bn_relu(channels=8, size=16)
    batches = _batches(model, 4)
    name = next(iter(batches[2][1]))
    batches[2] = ("bad", {name: np.zeros((1, 3, 5), np.float32)})
    runner = PassRunner(model, workers=2)
    with pytest.raises(DataError, match="^bad: .*failed to run this input"):  # the batch is named: which file the model refused
        list(runner.run_many(batches))
    with pytest.raises(DataError, match="^bad: .*failed to run this input"):
        list(PassRunner(model, workers=1).run_many(batches))
    # a pass left early (the reader stopped) does not leave work behind that blocks the next one
    first = next(runner.run_many(_batches(model, 6)))
    assert first[0] == "batch 0"
    assert len(list(runner.run_many(_batches(model, 3)))) == 3


def test_the_reference_runs_each_batch_once_and_fidelity_matches_one_session(monkeypatch):
    model = conv_bn_relu(channels=8, size=16)
    batches = _batches(model, 10)
    sizes = []
    real = PassRunner.run_many

    def counted(self, items, outputs=None):
        items = list(items)
        sizes.append(len(items))
        return real(self, items, outputs)

    monkeypatch.setattr(PassRunner, "run_many", counted)
    monkeypatch.setattr(passes, "available_cores", lambda: 2)  # side by side on any machine
    reference = RememberedReference(Runner(model, threads=1))
    first = fidelity(reference, model, batches)
    assert sizes == [10, 10]  # the reference's outputs, then the candidate's
    second = fidelity(reference, model, batches + batches[:2])  # a batch given twice
    assert sizes[2:] == [12]  # every reference output remembered: the candidate's pass alone
    assert first[0].cosine == pytest.approx(1.0) and first[0].err_sq == 0.0 and second[0].batches == 12
    few = fidelity(RememberedReference(Runner(model, threads=1)), model, _batches(model, 3, seed=1))
    assert sizes[3:] == [3] and few[0].batches == 3  # too few batches to open sessions for: the reference's own session runs them


def test_the_reference_reads_a_stream_of_batches_once_and_keeps_its_order():
    model = conv_bn_relu(channels=8, size=16)
    batches = _batches(model, 7)
    reference = RememberedReference(Runner(model, threads=1), limit_bytes=3 * 8 * 16 * 16 * 4)  # room for three batches' outputs
    for _ in range(3):  # nothing remembered, then three of seven, then the same three again
        seen = list(reference.run_many(iter(batches)))
        assert [label for label, _, _ in seen] == [label for label, _ in batches]
        for (_, batch, outputs) in seen:
            np.testing.assert_array_equal(outputs[0], reference.runner.run(batch)[0])


def test_a_reference_a_pass_would_run_in_one_session_runs_in_its_own(monkeypatch):
    monkeypatch.setenv("ONNXSLIM_PASS_WORKERS", "1")
    model = conv_bn_relu(channels=8, size=16)
    reference = RememberedReference(Runner(model, threads=1))
    assert len(list(reference.run_many(_batches(model, 3)))) == 3
    assert reference._passes is None  # no second session of the same model


def test_validate_compares_side_by_side_as_one_session_does():
    from onnxslim.validate.compare import _compared

    model = conv_bn_relu(channels=8, size=16)
    other = conv_bn_relu(channels=8, size=16, seed=3)
    names = [o.name for o in model.graph.output]
    batches = _batches(model, 5)
    side_by_side, first = _compared(PassRunner(model, workers=2), PassRunner(other, workers=2), iter(batches), names)
    one_by_one, _ = _compared(Runner(model, threads=1), Runner(other, threads=1), iter(batches), names)
    assert first[0] == "batch 0"
    assert [(c.batches, c.cosine, c.err_sq) for c in side_by_side] == [(c.batches, c.cosine, c.err_sq) for c in one_by_one]
    assert side_by_side[0].batches == 5 and side_by_side[0].cosine < 1.0


def test_tensor_noise_with_both_probes_running_at_once_is_each_model_run_alone():
    from onnx import numpy_helper

    from onnxslim.ir import load_model
    from onnxslim.measure.fidelity import tensor_fidelity
    from onnxslim.runtime.probe import runtime_values

    model = conv_bn_relu(channels=8, size=16)
    candidate = load_model(model)
    for index, tensor in enumerate(candidate.graph.initializer):
        array = numpy_helper.to_array(tensor)
        if array.ndim >= 2:
            candidate.graph.initializer[index].CopyFrom(numpy_helper.from_array((array * 1.05).astype(array.dtype), tensor.name))
    names = [node.output[0] for node in model.graph.node]
    batches = _batches(model, 5)
    noise = tensor_fidelity(model, candidate, names, batches)
    for name in names:
        expected = [(runtime_values(model, batch, {name})[name], runtime_values(candidate, batch, {name})[name]) for _, batch in batches]
        err = sum(float(((a.astype(np.float64) - b) ** 2).sum()) for a, b in expected)
        ref = sum(float((a.astype(np.float64) ** 2).sum()) for a, _ in expected)
        assert noise[name].err_sq == pytest.approx(err, rel=1e-4) and noise[name].ref_sq == pytest.approx(ref, rel=1e-4), name
        assert err > 0


def test_one_pass_gives_the_comparisons_over_every_batch_and_over_the_first_few():
    model = conv_bn_relu(channels=8, size=16)
    candidate = conv_bn_relu(channels=8, size=16, seed=5)  # other weights: comparisons that are not all 1
    batches = _batches(model, 7)
    reference = RememberedReference(Runner(model, threads=1))
    every, first = fidelity_with_head(reference, candidate, batches, 3)
    alone = fidelity(reference, candidate, batches[:3])
    assert first[0].batches == 3 and every[0].batches == 7
    assert (first[0].dot, first[0].ref_sq, first[0].cand_sq) == (alone[0].dot, alone[0].ref_sq, alone[0].cand_sq)
    assert fidelity_with_head(reference, candidate, batches, 7)[1] is None  # no more batches than the head: no sample of its own
