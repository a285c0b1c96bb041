"""A MatMul/Gemm that writes a graph output is quantized where that is measured as faithful and faster (--output-layers auto)."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnxslim.quant.fallback as timing_step
import onnxslim.quant.output_layers as output_step
import onnxslim.quant.pipeline as pipeline
from models.builders import GraphBuilder, _rename_output, depthwise_separable, mlp, sample_inputs
from onnxslim import QuantConfig, quantize
from onnxslim.quant.calibrate import calibrate
from onnxslim.quant.decisions import QuantReason
from onnxslim.runtime.session import optimized_ops
from tests.conftest import noisy_comparison, reported_cosine_is_the_written_models, timed_as, weight_is_dequantized

TIMED = QuantConfig(latency_runs=3, accuracy_budget=None)


def _timed(monkeypatch, integer_form: tuple) -> list:
    """The output-layer step's timing gives ``integer_form`` (at the deploy threads, at 1 thread); the final FP32 check gives INT8 faster."""
    calls = []
    monkeypatch.setattr(output_step, "latency_ratios", lambda *a, **k: calls.append(k["labels"]) or integer_form)
    monkeypatch.setattr(timing_step, "latency_ratios", lambda *a, **k: (timed_as(0.6), None))
    return calls


def _output_gemm(model: onnx.ModelProto) -> onnx.NodeProto:
    (gemm,) = [n for n in model.graph.node if n.op_type == "Gemm" and "logits" in n.output]
    return gemm


def _decision(report, node: onnx.NodeProto):
    return next(d for d in report.decisions if d.node == node.name)


def _gemm_tanh_gemm() -> onnx.ModelProto:
    """Gemm -> Tanh -> Gemm: the output layer reads a float activation nothing else quantizes."""
    b = GraphBuilder(3)
    hidden = b.node("Tanh", [b.node("Gemm", ["input", b.const(b.weight(64, 32)), b.const(np.zeros(64, np.float32))], transB=1)])
    y = b.node("Gemm", [hidden, b.const(b.weight(10, 64)), b.const(np.zeros(10, np.float32))], transB=1)
    _rename_output(b, y, "logits")
    return b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 32])], [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], "gemm_tanh_gemm")


def test_the_integer_output_layer_is_calibrated_in_the_one_calibration_pass(monkeypatch):
    model = _gemm_tanh_gemm()
    _timed(monkeypatch, (timed_as(0.8), timed_as(0.9, 1)))
    passes = []
    monkeypatch.setattr(pipeline, "calibrate", lambda *a, **k: passes.append(set(a[1])) or calibrate(*a, **k))
    written, report = quantize(model, sample_inputs(model, 10), config=TIMED)
    assert report.output_layers["written"] == "int8" and weight_is_dequantized(written, _output_gemm(written))
    assert len(passes) == 1, passes


def test_an_output_gemm_measured_as_faithful_and_faster_is_quantized(monkeypatch):
    model = mlp()
    data = sample_inputs(model, 10)
    calls = _timed(monkeypatch, (timed_as(0.8), timed_as(0.9, 1)))
    written, report = quantize(model, data, config=TIMED)
    assert calls == [("float form", "integer form")]
    entry = report.output_layers
    assert entry["written"] == "int8" and entry["nodes"] == 1 and entry["latency_vs_float_form"] == 0.8 and entry["latency_vs_float_form_1_thread"] == 0.9
    assert "0.80x the float form's latency" in entry["why"] and entry["worst_score_integer_form"] <= 1.0
    gemm = _output_gemm(written)
    assert weight_is_dequantized(written, gemm)
    decision = _decision(report, gemm)
    assert decision.quantized and "output layer quantized: measured as faithful and faster" in decision.reason.text
    # the result itself is not rounded: onnxruntime runs every Gemm as QGemm with a float output, and no quantizer follows the last
    assert "Gemm" not in optimized_ops(written) and optimized_ops(written)["QGemm"] == 3
    assert not any(n.op_type == "QuantizeLinear" and "logits" in n.input for n in written.graph.node)
    # the comparisons reported are the written model's
    assert reported_cosine_is_the_written_models(model, written, data, report)


@pytest.mark.parametrize("integer_form, why", [
    ((timed_as(1.2), None), "the integer form is not faster (1.20x the float form's latency"),
    ((timed_as(1.0), timed_as(1.0, 1)), "the integer form is not faster (1.00x the float form's latency at onnxruntime's default threads (2 cores), 1.00x at 1 thread)"),
    ((timed_as(0.9), timed_as(1.1, 1)), "the integer form is slower at 1 thread (1.10x the float form's latency)"),
])
def test_an_output_gemm_that_does_not_pay_in_time_stays_float(monkeypatch, integer_form, why):
    model = mlp()
    _timed(monkeypatch, integer_form)
    written, report = quantize(model, sample_inputs(model, 10), config=TIMED)
    assert report.output_layers["written"] == "float" and why in report.output_layers["why"], report.output_layers
    gemm = _output_gemm(written)
    assert not weight_is_dequantized(written, gemm)
    decision = _decision(report, gemm)
    assert decision.code == QuantReason.OUTPUT_LAYER and "(--report: output_layers)" in decision.reason.text


def test_a_tie_where_deployed_and_faster_at_one_thread_quantizes(monkeypatch):
    model = mlp()
    _timed(monkeypatch, (timed_as(1.0), timed_as(0.8, 1)))
    written, report = quantize(model, sample_inputs(model, 10), config=TIMED)
    assert report.output_layers["written"] == "int8" and weight_is_dequantized(written, _output_gemm(written))


def test_a_less_faithful_integer_output_layer_is_not_timed_nor_written(monkeypatch):
    model = mlp()
    calls = _timed(monkeypatch, (timed_as(0.5), timed_as(0.5, 1)))
    monkeypatch.setattr(output_step, "fidelity", lambda reference, model, batches: [noisy_comparison([0.5] * 4)])
    written, report = quantize(model, sample_inputs(model, 10), config=TIMED)
    assert calls == [] and report.output_layers["written"] == "float" and "less faithful" in report.output_layers["why"]
    assert not weight_is_dequantized(written, _output_gemm(written))


def test_an_integer_output_layer_that_misses_the_budget_stays_float(monkeypatch):
    model = mlp()
    _timed(monkeypatch, (timed_as(0.5), timed_as(0.5, 1)))
    monkeypatch.setattr(output_step, "fidelity", lambda reference, model, batches: [noisy_comparison([0.5] * 4)])
    _, report = quantize(model, sample_inputs(model, 10), config=QuantConfig(latency_runs=3, accuracy_budget=0.95))
    assert report.output_layers["written"] == "float" and "misses the accuracy budget" in report.output_layers["why"]


def test_without_timing_output_layers_stay_float_and_the_report_says_they_were_not_measured(monkeypatch):
    model = mlp()
    monkeypatch.setattr(output_step, "latency_ratios", lambda *a, **k: (_ for _ in ()).throw(AssertionError("timed")))
    written, report = quantize(model, sample_inputs(model, 10), config=QuantConfig(latency_runs=0, accuracy_budget=None))
    assert report.output_layers == {"nodes": 1, "written": "float", "why": "not measured (timing is off): kept in float; --output-layers int8 quantizes them"}
    assert not weight_is_dequantized(written, _output_gemm(written))


def test_output_layers_int8_or_float_write_that_form_without_measuring(monkeypatch):
    model = mlp()
    data = sample_inputs(model, 10)
    monkeypatch.setattr(output_step, "latency_ratios", lambda *a, **k: (_ for _ in ()).throw(AssertionError("timed")))
    monkeypatch.setattr(timing_step, "latency_ratios", lambda *a, **k: (timed_as(0.6), None))
    written, report = quantize(model, data, config=QuantConfig(latency_runs=3, accuracy_budget=None, output_layers="int8"))
    assert report.output_layers == {} and weight_is_dequantized(written, _output_gemm(written)) and _decision(report, _output_gemm(written)).quantized
    written, report = quantize(model, data, config=QuantConfig(latency_runs=3, accuracy_budget=None, output_layers="float"))
    assert report.output_layers == {} and not weight_is_dequantized(written, _output_gemm(written))
    assert "(--output-layers int8 quantizes it)" in _decision(report, _output_gemm(written)).reason.text


def test_a_convolution_writing_an_output_is_not_tried(monkeypatch):
    """QLinearConv writes codes: quantized, the output itself would be rounded to 8 bits."""
    model = depthwise_separable()
    monkeypatch.setattr(output_step, "latency_ratios", lambda *a, **k: (_ for _ in ()).throw(AssertionError("timed")))
    monkeypatch.setattr(timing_step, "latency_ratios", lambda *a, **k: (timed_as(0.6), None))
    _, report = quantize(model, sample_inputs(model, 10), config=QuantConfig(latency_runs=3, accuracy_budget=None, depthwise="int8"))
    assert report.output_layers == {}
    assert any(d.code == QuantReason.OUTPUT_LAYER and d.op_type == "Conv" for d in report.decisions)


def test_cli_output_layers_option_reaches_quantize(tmp_path, save, npz_folder):
    import json

    from click.testing import CliRunner

    from onnxslim.cli import main

    model = mlp()
    path = save(model, "mlp.onnx")
    data = npz_folder(sample_inputs(model, 10))
    report_path = tmp_path / "r.json"
    result = CliRunner().invoke(main, ["quantize", str(path), "-o", str(tmp_path / "q.onnx"), "--data", str(data), "--latency-runs", "0",
                                       "--accuracy-budget", "none", "--output-layers", "int8", "--report", str(report_path), "-q"])
    assert result.exit_code == 0, result.output
    decisions = json.loads(report_path.read_text())["quantized_nodes"]
    assert any(d["node"] == _output_gemm(onnx.load(tmp_path / "q.onnx")).name for d in decisions)
    bad = CliRunner().invoke(main, ["quantize", str(path), "-o", str(tmp_path / "q2.onnx"), "--data", str(data), "--output-layers", "some"])
    assert bad.exit_code != 0 and "--output-layers" in bad.output
