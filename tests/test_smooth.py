"""--smooth: outlier input channels of MatMul layers moved into their weights before quantizing."""

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from models.builders import outlier_inputs, outlier_mlp, transformer_block
from onnxslim import QuantConfig, quantize
from onnxslim.cli import main
from onnxslim.errors import UsageError
from onnxslim.quant.calibrate import channel_maxima
from onnxslim.quant.smooth import OUTLIER_GAIN, OUTLIER_RANK, SCALE_LIMIT, channel_scales, outlier_scales, smooth_inputs, smoothable
from tests.conftest import run_model


def test_channel_scales_follow_alpha_and_spare_dead_channels():
    inputs = np.array([1.0, 4.0, 16.0, 0.0, 2.0])
    weights = np.array([1.0, 1.0, 1.0, 1.0, 0.0])
    scales = channel_scales(inputs, weights, alpha=0.5)
    live = scales[:3]
    np.testing.assert_allclose(live[1] / live[0], 2.0)  # sqrt of the input ratio at alpha 0.5
    np.testing.assert_allclose(live[2] / live[0], 4.0)
    assert scales[3] == 1.0  # a channel that never moved keeps its value
    assert scales[4] > 100 * scales[:3].max() and scales.max() <= SCALE_LIMIT  # a channel no weight reads is divided away
    full = channel_scales(inputs[:3], weights[:3], alpha=1.0)
    np.testing.assert_allclose(inputs[:3] / full, inputs[0] / full[0])  # alpha 1 flattens the input's range
    np.testing.assert_allclose(np.exp(np.mean(np.log(full))), 1.0)


def test_outlier_scales_divide_only_the_channels_that_set_the_range():
    maxima = np.linspace(1.0, 2.0, 384)
    maxima[[5, 77, 300]] = [40.0, 10.0, 9.0]
    scales = outlier_scales(maxima)
    bound = np.sort(maxima)[::-1][OUTLIER_RANK]
    np.testing.assert_allclose(scales[[5, 77, 300]], maxima[[5, 77, 300]] / bound)
    np.testing.assert_allclose(np.sort(maxima / scales)[::-1][: OUTLIER_RANK + 1], bound)  # the range is now the bound
    untouched = np.ones(384, bool)
    untouched[[5, 77, 300]] = False
    untouched &= maxima <= bound
    assert np.all(scales[untouched] == 1.0)
    # a range the largest channels stretch by less than OUTLIER_GAIN, or a tensor too narrow to speak of outliers: nothing
    assert outlier_scales(np.r_[np.ones(100), OUTLIER_GAIN * 0.99]) is None
    assert outlier_scales(np.r_[np.ones(100), OUTLIER_GAIN * 1.01]) is not None
    assert outlier_scales(np.r_[np.ones(14), 100.0]) is None
    narrow = outlier_scales(np.r_[np.ones(31), 100.0])  # 32 channels: only the single largest may move
    assert narrow is not None and np.count_nonzero(narrow != 1.0) == 1
    assert outlier_scales(np.zeros(64)) is None


def test_smoothing_keeps_the_float_model_exact_and_skips_shared_weights():
    model = transformer_block()
    data = [{"input": np.random.default_rng(i).standard_normal((1, 8, 32)).astype(np.float32)} for i in range(6)]
    groups = smoothable(model)
    # query, key and value read one LayerNorm output: one Mul serves the three
    assert max(len(readers) for readers in groups.values()) == 3
    maxima = channel_maxima(model, list(groups), [(str(i), feed) for i, feed in enumerate(data)], provider="CPUExecutionProvider")
    smoothed = onnx.ModelProto()
    smoothed.CopyFrom(model)
    result = smooth_inputs(smoothed, smoothable(smoothed), maxima, alpha=0.8)
    assert result.modified and len(result.changes) == len(groups)
    # a pre-norm block: both LayerNorm outputs feed only the smoothed layers, so their division is folded into the
    # LayerNorms' scale and shift; the attention output and the GELU output get a Mul each
    normalized = [name for name in groups if any(n.op_type == "LayerNormalization" and name in n.output for n in model.graph.node)]
    assert len(normalized) == 2 and sum("folded into" in change for change in result.changes) == 2
    assert sum(1 for n in smoothed.graph.node if n.op_type == "Mul") == sum(1 for n in model.graph.node if n.op_type == "Mul") + len(groups) - 2
    for feed in data[:2]:
        np.testing.assert_allclose(run_model(model, feed)[0], run_model(smoothed, feed)[0], rtol=1e-4, atol=1e-4)
    shared = onnx.ModelProto()
    shared.CopyFrom(model)
    first = next(n for n in shared.graph.node if n.op_type == "MatMul" and n.input[1] in {t.name for t in shared.graph.initializer})
    second = next(n for n in shared.graph.node if n.op_type == "MatMul" and n is not first and n.input[0] != first.input[0]
                  and n.input[1] in {t.name for t in shared.graph.initializer})
    second.input[1] = first.input[1]  # one weight read by two layers of different inputs (same shape in this block)
    assert all(first.name not in {n.name for n in readers} for readers in smoothable(shared).values())


def test_smooth_rescues_a_layer_whose_input_scale_an_outlier_channel_sets():
    model, data = outlier_mlp(), outlier_inputs(30)
    _, plain = quantize(model, data, config=QuantConfig(latency_runs=0, accuracy_budget=None, smooth=None))
    assert plain.fidelity[0].cosine < 0.5
    for smooth in ("outliers", 0.8):
        _, smoothed = quantize(model, data, config=QuantConfig(latency_runs=0, accuracy_budget=None, smooth=smooth))
        assert smoothed.fidelity[0].cosine > 0.99, smooth
        assert [p.name for p in smoothed.prepare].count("smooth-activations") == 1
    # by default (outliers, and the budget) the layer no longer needs to stay in float
    _, budgeted = quantize(model, data, config=QuantConfig(latency_runs=0))
    assert not budgeted.kept_float_for_budget and budgeted.fidelity[0].cosine >= 0.99


def test_the_budget_leaves_out_smoothing_muls_it_does_not_need(monkeypatch):
    import onnxslim.quant.pipeline as pipeline

    passes = []
    calibrate = pipeline.calibrate


    def counted(*args, **kwargs):  # the passes after the one that finds the outlier channels (which smoothing then makes stale)
        if not kwargs.get("channel_maxima"):
            passes.append(1)
        return calibrate(*args, **kwargs)

    monkeypatch.setattr(pipeline, "calibrate", counted)
    # a mild outlier channel: worth a Mul by itself (the range narrows several times), not needed for 0.99
    model, data = outlier_mlp(), outlier_inputs(30, scale=6.0)
    smoothed, unbudgeted = quantize(model, data, config=QuantConfig(latency_runs=0, accuracy_budget=None))
    step = next(p for p in unbudgeted.prepare if p.name == "smooth-activations")
    assert step.modified and "a Mul before them" in step.changes[0]
    mul_before_first_layer = [n for n in smoothed.graph.node if n.op_type == "Mul" and n.input[0] == "input"]
    assert len(mul_before_first_layer) == 1
    passes.clear()
    written, report = quantize(model, data, config=QuantConfig(latency_runs=0))
    assert len(passes) == 1  # the input the Mul read was observed in the one calibration pass
    assert not [n for n in written.graph.node if n.op_type == "Mul" and n.input[0] == "input"]
    assert report.fidelity[0].cosine >= 0.99 and not report.kept_float_for_budget
    step = next(p for p in report.prepare if p.name == "smooth-activations")
    assert not step.modified and [d.where for d in step.declined] == ["input"]
    assert step.declined[0].reason.code.value == "not_needed" and "accuracy budget holds without the Mul" in step.declined[0].reason.text
    # a budget between the two graphs' scores: the Mul stays, and no layer needs to be kept in float
    without, with_mul, spread = report.fidelity[0].cosine, unbudgeted.fidelity[0].cosine, report.fidelity[0].cosine_range
    assert without < with_mul
    strict, report = quantize(model, data, config=QuantConfig(latency_runs=0, accuracy_budget=(without + with_mul) / 2))
    assert next(p for p in report.prepare if p.name == "smooth-activations").modified and not report.kept_float_for_budget
    assert [n for n in strict.graph.node if n.op_type == "Mul" and n.input[0] == "input"]
    # a budget the graph without the Mul meets only at its edge (resampling the held-out batches puts it below), where the
    # smoothed graph meets it firmly: the Mul stays
    assert spread[0] < without - 1e-6 < unbudgeted.fidelity[0].cosine_range[0]
    edge, report = quantize(model, data, config=QuantConfig(latency_runs=0, accuracy_budget=without - 1e-6))
    assert next(p for p in report.prepare if p.name == "smooth-activations").modified and not report.warnings
    # an ALPHA the user asks for is always applied
    asked, report = quantize(model, data, config=QuantConfig(latency_runs=0, smooth=0.8))
    assert next(p for p in report.prepare if p.name == "smooth-activations").modified


def test_the_default_leaves_a_model_without_outlier_channels_as_it_was():
    model = transformer_block()
    data = [{"input": np.random.default_rng(i).standard_normal((1, 8, 32)).astype(np.float32)} for i in range(12)]
    plain, plain_report = quantize(model, data, config=QuantConfig(latency_runs=0, accuracy_budget=None, smooth=None))
    default, report = quantize(model, data, config=QuantConfig(latency_runs=0, accuracy_budget=None))
    assert "smooth-activations" not in [p.name for p in report.prepare]
    assert [n.op_type for n in default.graph.node] == [n.op_type for n in plain.graph.node]
    assert report.fidelity[0].cosine == plain_report.fidelity[0].cosine
    # an outlier channel in the input makes the first LayerNorm's output worth smoothing (folded: no Mul added)
    skewed = [{"input": feed["input"] * np.r_[40.0, np.ones(31)].astype(np.float32)} for feed in data]
    skewed_model = transformer_block()
    first_norm_scale = next(t for t in skewed_model.graph.initializer if t.name.startswith("ln_scale"))
    gamma = onnx.numpy_helper.to_array(first_norm_scale).copy()
    gamma[3] = 60.0  # one channel the LayerNorm stretches, as trained transformers' norms do
    first_norm_scale.CopyFrom(onnx.numpy_helper.from_array(gamma, first_norm_scale.name))
    _, report = quantize(skewed_model, skewed, config=QuantConfig(latency_runs=0, accuracy_budget=None))
    smoothing = next(p for p in report.prepare if p.name == "smooth-activations")
    assert smoothing.modified and any("folded into" in change for change in smoothing.changes)


def test_smooth_from_the_command_line(save, npz_folder, tmp_path):
    path, folder = save(outlier_mlp()), npz_folder(outlier_inputs(30))
    report = tmp_path / "r.json"
    result = CliRunner().invoke(main, ["quantize", str(path), "-o", str(tmp_path / "q.onnx"), "--data", str(folder), "--latency-runs", "0",
                                       "--accuracy-budget", "none", "--smooth", "0.8", "--report", str(report), "-q"])
    assert result.exit_code == 0, result.output
    written = json.loads(report.read_text())
    assert written["fidelity"][0]["cosine"] > 0.99
    assert any(p["pass"] == "smooth-activations" and p["modified"] for p in written["prepare"])
    bad = CliRunner().invoke(main, ["quantize", str(path), "-o", str(tmp_path / "w.onnx"), "--weights-only", "int8", "--smooth", "0.8"])
    assert bad.exit_code == 2 and "--smooth" in bad.output and "Traceback" not in bad.output
    with pytest.raises(UsageError, match="--smooth"):
        QuantConfig(smooth=1.5)
    with pytest.raises(UsageError, match="--smooth must be one of outliers or a number in"):
        QuantConfig(smooth="sideways")
    assert QuantConfig(weights_only="int8").smooth == "outliers"  # the default does not stand in the way of weight-only runs
    word = CliRunner().invoke(main, ["quantize", str(path), "-o", str(tmp_path / "o.onnx"), "--data", str(folder), "--latency-runs", "0",
                                     "--accuracy-budget", "none", "--smooth", "sideways"])
    assert word.exit_code == 2 and "'sideways' is neither outliers nor a number in (0, 1]" in word.output and "Traceback" not in word.output
    for value, smoothed in (("outliers", True), ("none", False)):
        result = CliRunner().invoke(main, ["quantize", str(path), "-o", str(tmp_path / f"{value}.onnx"), "--data", str(folder), "--latency-runs", "0",
                                           "--accuracy-budget", "none", "--smooth", value, "--report", str(report), "-q"])
        assert result.exit_code == 0, result.output
        assert any(p["pass"] == "smooth-activations" for p in json.loads(report.read_text())["prepare"]) is smoothed
    assert "--smooth outliers|ALPHA|none" in CliRunner().invoke(main, ["quantize", "--help"]).output


def test_a_spelled_out_scale_and_shift_takes_the_division_unless_something_else_reads_its_output():
    import onnx.parser
    from onnx import numpy_helper

    text = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 5, 8] x) => (float[2, 5, 4] a, float[2, 5, 6] b, float[2, 5, 8] r) {
    scaled = Mul (x, gamma)
    h = Add (scaled, beta)
    a = MatMul (h, wa)
    b = MatMul (h, wb)
    r = Relu (x)
}
"""
    rng = np.random.default_rng(3)
    model = onnx.parser.parse_model(text)
    for name, shape in (("gamma", (8,)), ("beta", (8,)), ("wa", (8, 4)), ("wb", (8, 6))):
        model.graph.initializer.append(numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name))
    feeds = [{"x": (rng.normal(size=(2, 5, 8)) * np.linspace(0.1, 20, 8)).astype(np.float32)} for _ in range(4)]
    for also_read in (False, True):
        work = onnx.ModelProto()
        work.CopyFrom(model)
        if also_read:  # the normalized tensor also feeds a residual path: the division needs its own Mul
            work.graph.node[-1].input[0] = "h"
        groups = smoothable(work)
        maxima = channel_maxima(work, list(groups), [(str(i), f) for i, f in enumerate(feeds)], provider="CPUExecutionProvider")
        result = smooth_inputs(work, groups, maxima, alpha=0.8)
        assert ("folded into" in result.changes[0]) is not also_read
        assert sum(1 for n in work.graph.node if n.op_type == "Mul") == 1 + also_read
        reference = onnx.ModelProto()
        reference.CopyFrom(model)
        if also_read:
            reference.graph.node[-1].input[0] = "h"
        for a, b in zip(run_model(reference, feeds[0]), run_model(work, feeds[0])):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_the_command_line_says_which_smoothing_the_budget_left_out(save, npz_folder, tmp_path):
    path, folder = save(outlier_mlp()), npz_folder(outlier_inputs(30, scale=6.0))
    result = CliRunner().invoke(main, ["quantize", str(path), "-o", str(tmp_path / "q.onnx"), "--data", str(folder), "--latency-runs", "0"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "prepare smooth-activations: 1 not applied, e.g. input: 1 MatMul(s)" in said
    assert "the accuracy budget holds without the Mul that smoothing them needs" in said


def test_the_budget_keeps_only_the_strongest_smoothing_muls_when_that_is_enough():
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(4)
    width = 64
    weights = {name: (rng.standard_normal((width, width)) / 8).astype(np.float32) for name in ("wa", "wb")}
    weights["wa"][0, :] = 0.0  # the outlier channel of input a is read by nothing: its range alone ruins the others' scale
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "wa"], ["ya"], name="layer_a"), helper.make_node("MatMul", ["b", "wb"], ["yb"], name="layer_b")],
        "two_inputs",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", width]) for n in ("a", "b")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", width]) for n in ("ya", "yb")],
        [numpy_helper.from_array(w, name) for name, w in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    data = []
    for _ in range(30):
        a, b = rng.standard_normal((8, width)).astype(np.float32), rng.standard_normal((8, width)).astype(np.float32)
        a[:, 0] *= 3000.0  # strong: without its Mul, layer_a's output is lost
        b[:, 0] *= 2.5  # mild: worth a Mul by itself, not needed for the budget
        data.append({"a": a, "b": b})
    config = QuantConfig(latency_runs=0, output_layers="int8")
    written, report = quantize(model, data, config=config)
    muls = {n.input[0] for n in written.graph.node if n.op_type == "Mul"}
    assert muls == {"a"} and not report.kept_float_for_budget and min(c.cosine for c in report.fidelity) >= 0.99
    step = next(p for p in report.prepare if p.name == "smooth-activations")
    assert [d.where for d in step.declined] == ["b"] and len(step.changes) == 1 and step.changes[0].startswith("a: 1 MatMul(s) (layer_a)")
    # every Mul without a budget
    everything, _ = quantize(model, data, config=QuantConfig(latency_runs=0, output_layers="int8", accuracy_budget=None))
    assert {n.input[0] for n in everything.graph.node if n.op_type == "Mul"} == {"a", "b"}


@pytest.mark.parametrize("count", [10, 20, 45])  # the data ends before, just after and well after the outlier pass's batches
@pytest.mark.parametrize("method", ["percentile", "moving-minmax"])
def test_a_graph_smoothing_leaves_alone_is_calibrated_as_without_smoothing(count, method, monkeypatch):
    import onnxslim.quant.pipeline as pipeline

    passes = []
    calibrate = pipeline.calibrate


    def counted(*args, **kwargs):  # the batches each pass ran
        stats, seen = calibrate(*args, **kwargs)
        passes.append(seen)
        return stats, seen

    monkeypatch.setattr(pipeline, "calibrate", counted)
    model, data = outlier_mlp(), outlier_inputs(count, scale=1.0)  # no outlier channel: nothing to smooth
    config = QuantConfig(latency_runs=0, accuracy_budget=None, method=method, eval_fraction=0.0)
    plain, plain_report = quantize(model, data, config=QuantConfig(**{**config.__dict__, "smooth": None}))
    passes.clear()
    smoothed, report = quantize(model, data, config=config)
    assert not [p for p in report.prepare if p.name == "smooth-activations"]
    # the outlier pass was the first part of the calibration: the same statistics, the same bytes, no batch run twice
    assert smoothed.SerializeToString() == plain.SerializeToString()
    assert report.calibration.batches == plain_report.calibration.batches == count
    assert sum(passes) == count


def test_tensors_the_outlier_pass_did_not_observe_are_calibrated_on_every_batch():
    from onnxslim.quant.pipeline import QuantRun

    model, data = outlier_mlp(), outlier_inputs(40, scale=1.0)
    config = QuantConfig(latency_runs=0, accuracy_budget=None, eval_fraction=0.0)
    plain = QuantRun(model, data, QuantConfig(**{**config.__dict__, "smooth": None}), None, None, False)
    plain_plan = plain.plan(config)
    run = QuantRun(model, data, config, None, None, False)
    head = run._calibration_head[0]
    missed = sorted(head)[0]
    del head[missed]  # as if a later plan asked for a tensor the first pass did not observe
    plan = run.plan(config)
    assert run.calibration_batches == 40 and run._calibration_head is None
    assert set(run.stats) >= plan.observed_tensors() and missed in run.stats
    for tensor in plain_plan.observed_tensors():
        np.testing.assert_array_equal(run.stats[tensor].histogram.counts, plain.stats[tensor].histogram.counts)
        assert run.stats[tensor].minmax == plain.stats[tensor].minmax


@pytest.mark.parametrize("builder", ["outlier_mlp", "transformer_block"])
def test_statistics_after_smoothing_are_those_of_the_smoothed_graph(builder):
    from onnxslim.quant.calibrate import calibrate
    from onnxslim.quant.pipeline import QuantRun

    if builder == "outlier_mlp":
        model, data = outlier_mlp(), outlier_inputs(40)
    else:
        model = transformer_block()
        rng = np.random.default_rng(3)
        name = model.graph.input[0].name
        shape = [d.dim_value or 1 for d in model.graph.input[0].type.tensor_type.shape.dim]
        data = []
        for _ in range(40):
            x = rng.standard_normal(shape).astype(np.float32)
            x[..., 3] *= 40.0  # an outlier channel in the residual stream
            data.append({name: x})
    config = QuantConfig(latency_runs=0, accuracy_budget=None, eval_fraction=0.0)
    run = QuantRun(model, data, config, None, None, False)
    assert any(p.name == "smooth-activations" and p.modified for p in run.prepare_results)
    plan = run.plan(config)
    again, seen = calibrate(run.prepared, plan.observed_tensors(), run.calib_source, histogram=True)
    assert seen == run.calibration_batches == 40
    for tensor in plan.observed_tensors():
        np.testing.assert_array_equal(run.stats[tensor].histogram.counts, again[tensor].histogram.counts, err_msg=tensor)
        assert run.stats[tensor].minmax == again[tensor].minmax, tensor


def test_outliers_that_show_late_leave_the_first_pass_to_smoothing(monkeypatch):
    import onnxslim.quant.pipeline as pipeline

    observed = []
    calibrate = pipeline.calibrate

    def counted(*args, **kwargs):  # how many batches fed the planned tensors' statistics in the outlier pass
        stats, seen = calibrate(*args, **kwargs)
        if kwargs.get("channel_maxima"):
            observed.append(max((s.minmax.batches for s in stats.values()), default=0))
        return stats, seen

    monkeypatch.setattr(pipeline, "calibrate", counted)
    data = outlier_inputs(12, scale=1.0) + outlier_inputs(28, scale=3000.0, seed=1)  # the outlier channel shows at batch 13
    run = pipeline.QuantRun(outlier_mlp(), data, QuantConfig(latency_runs=0, accuracy_budget=None, eval_fraction=0.0), None, None, False)
    assert observed == [12] and run._calibration_head is None  # stopped there, and nothing of it kept
    assert any(p.name == "smooth-activations" and p.modified for p in run.prepare_results)
