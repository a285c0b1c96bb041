"""Quantized convolutions are moved to onnxruntime's integer matrix product where that is measured faster, computing the same values."""

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import onnxslim.quant.conv_kernels as conv_step
import onnxslim.quant.fallback as timing_step
import onnxslim.quant.forms as forms_step
from models.builders import conv_bn_relu, depthwise_separable, residual, sample_inputs
from onnxslim import QuantConfig, quantize
from onnxslim.cli import main
from onnxslim.ir.tensors import initializer_map, to_array
from onnxslim.quant.conv_kernels import OFFSET, offset_candidates, offset_weights, single_layer
from tests.conftest import reported_cosine_is_the_written_models, run_model, timed_as

TIMED = QuantConfig(latency_runs=3, accuracy_budget=None, depthwise="int8")


def _int8(model: onnx.ModelProto, **settings) -> onnx.ModelProto:
    written, _ = quantize(model, sample_inputs(model, 10), config=QuantConfig(latency_runs=0, accuracy_budget=None, conv_kernel="symmetric", **settings))
    return written


def _weight_zero_points(model: onnx.ModelProto) -> dict[str, set[int]]:
    """Each quantized Conv's name -> the zero points its INT8 weight is stored with."""
    inits = initializer_map(model.graph)
    producers = {o: n for n in model.graph.node for o in n.output}
    found = {}
    for node in model.graph.node:
        weight = producers.get(node.input[1]) if node.op_type == "Conv" else None
        if weight is not None and weight.op_type == "DequantizeLinear" and inits[weight.input[0]].data_type == onnx.TensorProto.INT8:
            found[node.name] = set(to_array(inits[weight.input[2]]).ravel().tolist())
    return found


def _timed(monkeypatch, layer: tuple, model: tuple = (timed_as(0.8), timed_as(0.8, 1)), int8_vs_fp32: float = 0.6) -> list:
    """The step's timings: ``layer`` for every layer alone, ``model`` for the whole model; the final FP32 check gives INT8 faster."""
    calls = []

    def timing(*args, **kwargs):
        calls.append(kwargs["labels"])
        return layer if kwargs["labels"] == ("symmetric kernel", "matrix product") else model

    monkeypatch.setattr(conv_step, "latency_ratios", timing)  # each layer alone
    monkeypatch.setattr(forms_step, "latency_ratios", timing)  # the whole model
    monkeypatch.setattr(timing_step, "latency_ratios", lambda *a, **k: (timed_as(int8_vs_fp32), None))
    return calls


def test_candidates_are_single_group_convolutions_with_symmetric_weights():
    int8 = _int8(depthwise_separable())
    sites = offset_candidates(int8)
    convs = {n.name: n for n in int8.graph.node if n.op_type == "Conv"}
    assert sites and {s.conv.name for s in sites} < set(convs)  # the depthwise layer is not a candidate
    assert all(not any(a.name == "group" and a.i > 1 for a in s.conv.attribute) for s in sites)
    reduced = _int8(depthwise_separable(), weight_range="reduced")
    assert offset_candidates(reduced)  # codes within [-64, 64] are candidates too; the step itself declines the reduced range
    # weights already stored with another zero point are not candidates
    assert offset_candidates(offset_weights(int8, sites)) == []


def test_weights_whose_zero_points_another_layer_reads_are_not_candidates():
    int8 = _int8(residual(channels=16, size=12))
    sites = offset_candidates(int8)
    first, second = [s for s in sites if initializer_map(int8.graph)[s.zero_point].dims == [16]][:2]
    next(n for n in second.nodes if n.op_type == "DequantizeLinear" and n.input[0] == second.weight).input[2] = first.zero_point
    names = {s.conv.name for s in offset_candidates(int8)}
    assert first.conv.name not in names and second.conv.name not in names and len(names) == len(sites) - 2


def test_offset_weights_store_the_same_values_and_onnxruntime_computes_the_same_outputs():
    model = residual(channels=16, size=12)
    int8 = _int8(model)
    sites = offset_candidates(int8)
    offset = offset_weights(int8, sites)
    before, after = initializer_map(int8.graph), initializer_map(offset.graph)
    for site in sites:
        assert set(to_array(after[site.zero_point]).ravel()) == {OFFSET}
        assert np.array_equal(to_array(after[site.weight]).astype(int) - OFFSET, to_array(before[site.weight]).astype(int))
    for batch in sample_inputs(model, 3, seed=7):
        for a, b in zip(run_model(int8, batch), run_model(offset, batch)):
            assert np.array_equal(a, b)


def test_a_single_layer_probe_runs_the_layer_as_the_model_has_it():
    int8 = _int8(conv_bn_relu(channels=16, size=10))
    site = offset_candidates(int8)[0]
    channels = initializer_map(int8.graph)[site.weight].dims[1]  # the RGB stem reads a fourth channel of zeros
    alone = single_layer(int8, site, (1, channels, 10, 10))
    onnx.checker.check_model(alone)
    codes = np.random.default_rng(0).integers(0, 256, size=(1, channels, 10, 10), dtype=np.uint8)
    out = run_model(alone, {site.codes: codes})[0]
    assert out.dtype == np.uint8 and out.shape == (1, 16, 10, 10)
    assert np.array_equal(out, run_model(offset_weights(alone, [site]), {site.codes: codes})[0])


def test_layers_timed_faster_on_the_matrix_product_are_offset_when_the_model_is_faster(monkeypatch):
    model = residual(channels=16, size=12)
    data = sample_inputs(model, 10)
    calls = _timed(monkeypatch, (timed_as(0.7), timed_as(0.8, 1)))
    written, report = quantize(model, data, config=TIMED)
    entry = report.conv_kernel
    assert entry["written"] == "gemm" and entry["outputs"] == "equal to the symmetric form's"
    assert calls[-1] == ("symmetric kernels", "offset weights") and calls.count(("symmetric kernel", "matrix product")) == len(entry["layers"]) >= 1
    assert entry["latency_vs_symmetric"] == 0.8 and "0.80x the symmetric form's latency" in entry["why"]
    offset = {name for name, zeros in _weight_zero_points(written).items() if zeros == {OFFSET}}
    assert offset == set(entry["offset_nodes"]) and offset == {n for layer in entry["layers"] for n in layer["nodes"]}
    assert all(layer["offset"] and layer["gemm_vs_symmetric"] == 0.7 for layer in entry["layers"])
    assert reported_cosine_is_the_written_models(model, written, data, report)


@pytest.mark.parametrize("layer, model, why", [
    ((timed_as(1.3), None), None, "no layer timed alone was faster on the matrix product"),
    ((timed_as(0.8), timed_as(1.2, 1)), None, "no layer timed alone was faster on the matrix product"),  # slower at 1 thread
    ((timed_as(0.7), timed_as(0.7, 1)), (timed_as(1.1), None), "but the model with them there is not faster (1.10x"),
])
def test_the_symmetric_kernels_stay_where_the_matrix_product_does_not_pay(monkeypatch, layer, model, why):
    net = residual(channels=16, size=12)
    _timed(monkeypatch, layer, model or (timed_as(0.8), None))
    written, report = quantize(net, sample_inputs(net, 10), config=TIMED)
    assert report.conv_kernel["written"] == "symmetric" and why in report.conv_kernel["why"], report.conv_kernel
    assert report.conv_kernel["offset_nodes"] == [] and all(zeros == {0} for zeros in _weight_zero_points(written).values())


def test_settings_that_leave_every_layer_on_the_symmetric_kernels(monkeypatch):
    net = residual(channels=16, size=12)
    data = sample_inputs(net, 10)
    for step in (conv_step, forms_step):
        monkeypatch.setattr(step, "latency_ratios", lambda *a, **k: (_ for _ in ()).throw(AssertionError("timed")))
    written, report = quantize(net, data, config=QuantConfig(latency_runs=0, accuracy_budget=None))
    assert report.conv_kernel["written"] == "symmetric" and report.conv_kernel["why"] == "not measured (timing is off): the symmetric kernels are kept"
    written, report = quantize(net, data, config=QuantConfig(latency_runs=0, accuracy_budget=None, conv_kernel="symmetric"))
    assert report.conv_kernel == {} and all(zeros == {0} for zeros in _weight_zero_points(written).values())
    written, report = quantize(net, data, config=QuantConfig(latency_runs=0, accuracy_budget=None, conv_kernel="gemm", weight_range="reduced"))
    assert report.conv_kernel["written"] == "symmetric" and "reduced range" in report.conv_kernel["why"]
    assert all(zeros == {0} for zeros in _weight_zero_points(written).values())


def test_gemm_offsets_every_candidate_without_timing_and_computes_the_same_outputs(monkeypatch):
    net = residual(channels=16, size=12)
    data = sample_inputs(net, 10)
    for step in (conv_step, forms_step):
        monkeypatch.setattr(step, "latency_ratios", lambda *a, **k: (_ for _ in ()).throw(AssertionError("timed")))
    symmetric, _ = quantize(net, data, config=QuantConfig(latency_runs=0, accuracy_budget=None, conv_kernel="symmetric"))
    gemm, report = quantize(net, data, config=QuantConfig(latency_runs=0, accuracy_budget=None, conv_kernel="gemm"))
    assert report.conv_kernel["written"] == "gemm" and report.conv_kernel["why"] == "--conv-kernel gemm"
    assert set(report.conv_kernel["offset_nodes"]) == set(_weight_zero_points(gemm)) and all(z == {OFFSET} for z in _weight_zero_points(gemm).values())
    for batch in data[:3]:
        assert all(np.array_equal(a, b) for a, b in zip(run_model(symmetric, batch), run_model(gemm, batch)))


def test_cli_conv_kernel_option_reaches_quantize(tmp_path, save, npz_folder):
    net = residual(channels=16, size=12)
    path, data = save(net, "net.onnx"), npz_folder(sample_inputs(net, 10))
    result = CliRunner().invoke(main, ["quantize", str(path), "-o", str(tmp_path / "out.onnx"), "--data", str(data), "--latency-runs", "0",
                                       "--accuracy-budget", "none", "--conv-kernel", "gemm", "-q"])
    assert result.exit_code == 0, result.output
    assert "on the integer matrix product: --conv-kernel gemm" in " ".join(result.output.split())
    assert all(z == {OFFSET} for z in _weight_zero_points(onnx.load(str(tmp_path / "out.onnx"))).values())
    result = CliRunner().invoke(main, ["quantize", str(path), "-o", str(tmp_path / "o2.onnx"), "--data", str(data), "--conv-kernel", "fast"])
    assert result.exit_code == 2 and "--conv-kernel" in result.output


def test_layer_sizes_that_cannot_be_read_leave_the_symmetric_kernels_and_say_so(monkeypatch):
    net = residual(channels=16, size=12)
    _timed(monkeypatch, (timed_as(0.5), timed_as(0.5, 1)))
    monkeypatch.setattr(conv_step, "observer", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no run")))
    written, report = quantize(net, sample_inputs(net, 10), config=TIMED)
    assert report.conv_kernel["written"] == "symmetric" and "input sizes could not be read" in report.conv_kernel["why"]
    assert all(zeros == {0} for zeros in _weight_zero_points(written).values())
