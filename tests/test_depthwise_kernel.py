"""Convolutions onnxruntime runs on its depthwise integer kernel are written in float where that is measured faster."""

import numpy as np
import onnx
from onnx import TensorProto, helper

import onnxslim.quant.depthwise as depthwise_step
import onnxslim.quant.fallback as timing_step
import onnxslim.quant.forms as forms_step
from models.builders import GraphBuilder, depthwise_separable, sample_inputs
from onnxslim import QuantConfig, quantize
from onnxslim.quant.decisions import QuantReason
from onnxslim.quant.depthwise import depthwise_convolutions
from onnxslim.quant.pipeline import QuantRun
from tests.conftest import noisy_comparison, reported_cosine_is_the_written_models, timed_as, weight_is_dequantized

TIMED = QuantConfig(latency_runs=3, accuracy_budget=None, conv_kernel="symmetric")  # the depthwise form's timing alone


def _timed(monkeypatch, float_form: tuple, int8_vs_fp32: float = 0.6) -> list:
    """The depthwise step's timing gives ``float_form`` (at the deploy threads, at 1 thread); the final FP32 check gives INT8 faster."""
    calls = []
    monkeypatch.setattr(forms_step, "latency_ratios", lambda *a, **k: calls.append(k["labels"]) or float_form)
    monkeypatch.setattr(timing_step, "latency_ratios", lambda *a, **k: (timed_as(int8_vs_fp32), None))
    return calls


def _depthwise_conv(model: onnx.ModelProto) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute))


def test_a_depthwise_convolution_measured_faster_in_float_is_written_in_float(monkeypatch):
    model = depthwise_separable()
    data = sample_inputs(model, 10)
    calls = _timed(monkeypatch, (timed_as(0.7), timed_as(0.8, 1)))
    written, report = quantize(model, data, config=TIMED)
    assert calls == [("integer form", "float form")]
    assert report.written == "int8" and report.depthwise["written"] == "float" and report.depthwise["nodes"] == 1
    assert report.depthwise["latency_vs_integer_form"] == 0.7 and "0.70x the integer form's latency" in report.depthwise["why"]
    conv = _depthwise_conv(written)
    assert not weight_is_dequantized(written, conv)  # a float weight: the layer runs as a float Conv
    decision = next(d for d in report.decisions if d.node == conv.name)
    assert decision.reason.code == QuantReason.KEPT_FLOAT and "depthwise convolution kept in float" in decision.reason.text
    # the comparisons reported are the written model's
    assert reported_cosine_is_the_written_models(model, written, data, report)


def test_the_integer_form_stays_where_float_is_not_faster_or_slower_at_one_thread(monkeypatch):
    model = depthwise_separable()
    data = sample_inputs(model, 10)
    for float_form, why in [((timed_as(1.2), None), "the float form is not faster (1.20x"),
                            ((timed_as(0.9), timed_as(1.1, 1)), "0.90x the integer form's latency at onnxruntime's default threads"),
                            ((timed_as(1.0), timed_as(1.0, 1)), "the float form is not faster")]:
        _timed(monkeypatch, float_form)
        written, report = quantize(model, data, config=TIMED)
        assert report.depthwise["written"] == "int8" and why in report.depthwise["why"], report.depthwise
        assert weight_is_dequantized(written, _depthwise_conv(written))


def test_a_tie_where_deployed_and_faster_at_one_thread_writes_float(monkeypatch):
    model = depthwise_separable()
    _timed(monkeypatch, (timed_as(1.0), timed_as(0.8, 1)))
    written, report = quantize(model, sample_inputs(model, 10), config=TIMED)
    assert report.depthwise["written"] == "float" and not weight_is_dequantized(written, _depthwise_conv(written))


def test_without_timing_the_integer_form_is_kept_and_the_report_says_it_was_not_measured(monkeypatch):
    model = depthwise_separable()
    monkeypatch.setattr(forms_step, "latency_ratios", lambda *a, **k: (_ for _ in ()).throw(AssertionError("timed")))
    written, report = quantize(model, sample_inputs(model, 10), config=QuantConfig(latency_runs=0, accuracy_budget=None))
    assert report.depthwise == {"nodes": 1, "written": "int8", "why": "not measured (timing is off): the integer form is kept"}
    assert weight_is_dequantized(written, _depthwise_conv(written))


def _convs(shapes: list[tuple[int, int, int]]) -> onnx.ModelProto:
    """A chain of Convs over (1, 8, 1, 64): each (output channels, input channels per group, group), kernel 1x5."""
    b = GraphBuilder(5)
    x, channels = "x", 8
    for out, per_group, group in shapes:
        assert per_group * group == channels
        x = b.node("Relu", [b.node("Conv", [x, b.const(b.weight(out, per_group, 1, 5)), b.const(np.zeros(out, np.float32))], pads=[0, 2, 0, 2], group=group)])
        channels = out
    return b.model([helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 1, 64])], [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, channels, 1, 64])], "convs")


def test_only_convolutions_with_one_input_and_one_output_channel_per_group_are_depthwise():
    # depthwise; a channel multiplier of 2 (prepared as a Gather of each channel twice and a depthwise convolution);
    # two channels per group; a plain convolution
    model = _convs([(8, 1, 8), (16, 1, 8), (8, 2, 8), (1, 8, 1)])
    run = QuantRun(model, sample_inputs(model, 6), QuantConfig(), None, None, False)
    names = [n.name for n in run.prepared.graph.node if n.op_type == "Conv"]
    assert depthwise_convolutions(run.prepared, run.plan(QuantConfig())) == names[:2]
    b = GraphBuilder(6)
    y = b.node("Conv", ["x", b.const(b.weight(1, 1, 1, 64)), b.const(np.zeros(1, np.float32))], strides=[1, 2])  # a low-pass before decimation
    y = b.node("Conv", [b.node("Relu", [y]), b.const(b.weight(4, 1, 1, 3))])
    single = b.model([helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 1, 512])], [helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, 4, 1, 223])], "single")
    run = QuantRun(single, sample_inputs(single, 6), QuantConfig(), None, None, False)
    first = next(n.name for n in run.prepared.graph.node if n.op_type == "Conv")
    assert depthwise_convolutions(run.prepared, run.plan(QuantConfig())) == [first]


def test_a_faster_float_form_that_is_less_faithful_is_not_written(monkeypatch):
    model = depthwise_separable()
    data = sample_inputs(model, 10)
    _timed(monkeypatch, (timed_as(0.7), timed_as(0.8, 1)))
    # the float form's comparisons made noisier than the integer form's by more than the slack (cosine about 0.9)
    monkeypatch.setattr(depthwise_step, "fidelity", lambda reference, model, batches: [noisy_comparison([0.5] * 4)])
    written, report = quantize(model, data, config=TIMED)
    assert report.depthwise["written"] == "int8" and "less faithful" in report.depthwise["why"]
    assert weight_is_dequantized(written, _depthwise_conv(written))


def test_depthwise_int8_or_float_writes_that_form_without_timing(monkeypatch):
    """For a model quantized on one machine and deployed on another, where the measurement here says nothing."""
    model = depthwise_separable()
    data = sample_inputs(model, 10)
    monkeypatch.setattr(forms_step, "latency_ratios", lambda *a, **k: (_ for _ in ()).throw(AssertionError("timed")))
    monkeypatch.setattr(timing_step, "latency_ratios", lambda *a, **k: (timed_as(0.6), None))
    written, report = quantize(model, data, config=QuantConfig(latency_runs=3, accuracy_budget=None, depthwise="int8", conv_kernel="symmetric"))
    assert report.depthwise == {"nodes": 1, "written": "int8", "why": "--depthwise int8"} and weight_is_dequantized(written, _depthwise_conv(written))
    written, report = quantize(model, data, config=QuantConfig(latency_runs=3, accuracy_budget=None, depthwise="float", conv_kernel="symmetric"))
    assert report.depthwise == {"nodes": 1, "written": "float", "why": "--depthwise float"} and not weight_is_dequantized(written, _depthwise_conv(written))
    decision = next(d for d in report.decisions if d.node == _depthwise_conv(written).name)
    assert decision.reason.text == "depthwise convolution kept in float: --depthwise float (--report: depthwise)"


def test_cli_depthwise_option_reaches_quantize(tmp_path, save, npz_folder):
    from click.testing import CliRunner

    from onnxslim.cli import main

    model = depthwise_separable()
    path, data = save(model), npz_folder(sample_inputs(model, 10))
    result = CliRunner().invoke(main, ["quantize", str(path), "-o", str(tmp_path / "q.onnx"), "--data", str(data), "--latency-runs", "0",
                                       "--accuracy-budget", "none", "--depthwise", "float", "-q"])
    assert result.exit_code == 0, result.output
    assert "depthwise convolutions (1): float form written: --depthwise float" in " ".join(result.output.split())
    bad = CliRunner().invoke(main, ["quantize", str(path), "-o", str(tmp_path / "r.onnx"), "--data", str(data), "--depthwise", "fp16"])
    assert bad.exit_code == 2 and "--depthwise" in bad.output
