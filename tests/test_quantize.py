import dataclasses
import json
import math
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import onnxslim.quant.fallback as timing_step
from models.builders import (
    ALL_BUILDERS,
    GraphBuilder,
    _rename_output,
    constant_node_weights,
    conv_bn_relu,
    generated_weights,
    mixed_range_concat,
    mlp,
    outlier_inputs,
    outlier_mlp,
    residual,
    sample_inputs,
    transformer_block,
    widening_residual,
)
from onnxslim import QuantConfig, quantize
from onnxslim.cli import main
from onnxslim.errors import DataError, NothingToDoError
from onnxslim.ir import load_model
from onnxslim.measure import LatencyComparison
from onnxslim.quant.decisions import QuantReason
from onnxslim.runtime.session import optimized_graph
from tests.conftest import noisy_comparison, reported_cosine_is_the_written_models, run_model

GOLDEN = Path(__file__).parent / "golden"
FAST = QuantConfig(latency_runs=0)
# outlier_mlp's first layer needs float only while its outlier channel stays in its input; --smooth outliers (the default) removes it
UNSMOOTHED = QuantConfig(latency_runs=0, smooth=None)
EVERY_LAYER = QuantConfig(latency_runs=0, output_layers="int8")


def calibrate_on(model, count=20, seed=1):
    return sample_inputs(model, count, seed=seed)


def ops(model):
    return Counter(n.op_type for n in model.graph.node)


def initializers(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def stored_dq(model, inits, dtype):
    """DequantizeLinear nodes reading a stored tensor of ``dtype`` (weights: int8, biases: int32)."""
    return [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].dtype == dtype]


def int32_dequantized_at_run_time(model) -> list[str]:
    """The DequantizeLinear nodes of onnxruntime's optimized graph that read a stored INT32 tensor (a bias it did not fuse)."""
    stored = {t.name for t in model.graph.initializer if t.data_type == TensorProto.INT32}
    return [n.name for n in optimized_graph(model).graph.node if n.op_type == "DequantizeLinear" and n.input[0] in stored]


def cosine(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return a @ b / np.linalg.norm(a) / np.linalg.norm(b)


def assert_close_to_float(original, quantized, minimum=0.995):
    for feed in sample_inputs(original, 3, seed=99):
        for a, b in zip(run_model(original, feed), run_model(quantized, feed)):
            assert cosine(a, b) > minimum


def test_conv_bn_relu_layout_and_numbers():
    model = conv_bn_relu()
    quantized, report = quantize(model, calibrate_on(model), config=FAST)
    counts = ops(quantized)
    assert "BatchNormalization" not in counts and "Relu" not in counts  # BN folded, Relu folded into UINT8 quantizers
    inits = initializers(quantized)
    weights = stored_dq(quantized, inits, np.int8)
    assert len(weights) == 2  # the two convs; the classifier Gemm is an output layer and stays float
    for node in weights:
        axis = next(a.i for a in node.attribute if a.name == "axis")
        scale = inits[node.input[1]]
        assert scale.ndim == 1 and scale.size == inits[node.input[0]].shape[axis]
        assert not inits[node.input[2]].any()
    biases = stored_dq(quantized, inits, np.int32)
    assert len(biases) == 2
    activations = [n for n in quantized.graph.node if n.op_type == "QuantizeLinear"]
    assert all(inits[n.input[2]].dtype == np.uint8 for n in activations)
    assert report.integer_kernels == {"QLinearConv": 2, "QLinearGlobalAveragePool": 1}
    # the 3-channel stem reads a fourth channel of zeros: onnxruntime's fast integer kernel, the same numbers
    padded = [p for p in report.prepare if p.name == "pad-conv-input-channels" and p.modified]
    assert len(padded) == 1 and len(padded[0].changes) == 1 and ops(quantized)["Pad"] == 1
    assert sorted(inits[n.input[0]].shape[1] for n in weights) == [4, 16]
    assert_close_to_float(model, quantized, 0.999)
    assert [i.name for i in quantized.graph.input] == [i.name for i in model.graph.input]
    assert [o.name for o in quantized.graph.output] == [o.name for o in model.graph.output]


def test_residual_add_and_maxpool_share_scales():
    model = residual()
    quantized, report = quantize(model, calibrate_on(model), config=EVERY_LAYER)
    assert report.integer_kernels.get("QLinearAdd") == 2
    assert report.integer_kernels.get("QLinearConv") == 6
    inits = initializers(quantized)
    producers = {o: n for n in quantized.graph.node for o in n.output}
    pool = next(n for n in quantized.graph.node if n.op_type == "MaxPool")
    before = producers[pool.input[0]]
    after = next(n for n in quantized.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == pool.output[0])
    assert before.op_type == "DequantizeLinear"
    assert inits[before.input[1]] == inits[after.input[1]] and inits[before.input[2]] == inits[after.input[2]]
    assert_close_to_float(model, quantized, 0.999)


def test_depthwise_grouped_and_concat_models_quantize_every_conv():
    for name in ("depthwise_separable", "grouped_conv", "concat_split"):
        model = ALL_BUILDERS[name]()
        quantized, report = quantize(model, calibrate_on(model), config=EVERY_LAYER)
        convs = sum(1 for n in model.graph.node if n.op_type == "Conv")
        assert report.integer_kernels.get("QLinearConv") == convs, name
        assert_close_to_float(model, quantized, 0.998)


def test_gemm_weights_on_output_axis():
    model = mlp()
    quantized, report = quantize(model, calibrate_on(model), config=QuantConfig(latency_runs=0, output_layers="int8"))
    inits = initializers(quantized)
    for node in stored_dq(quantized, inits, np.int8):
        assert next(a.i for a in node.attribute if a.name == "axis") == 0  # transB=1: (N, K)
    assert report.integer_kernels == {"QGemm": 3}
    _, default_report = quantize(model, calibrate_on(model), config=FAST)
    last = [d for d in default_report.decisions if d.node == model.graph.node[-1].name][0]
    assert not last.quantized and last.code == QuantReason.OUTPUT_LAYER and "output layer" in last.reason.text
    # the Gemm before the float output layer is followed by a Relu: without an output quantizer onnxruntime would fuse
    # the two into a float FusedGemm that dequantizes its weights on every run
    assert default_report.integer_kernels == {"QGemm": 2} and "FusedGemm" not in default_report.onnxruntime_kernels


def test_transformer_block_keeps_sensitive_paths_in_float():
    model = transformer_block()
    quantized, report = quantize(model, calibrate_on(model, 24), config=FAST)
    for decision in report.decisions:
        if decision.op_type in ("LayerNormalization", "Softmax", "Erf"):
            assert not decision.quantized
    attention = [d for d in report.decisions if d.op_type == "MatMul" and d.code == QuantReason.ATTENTION]
    assert len(attention) == 2
    inits = initializers(quantized)
    for node in stored_dq(quantized, inits, np.int8):
        assert next(a.i for a in node.attribute if a.name == "axis") == 1  # MatMul weight (K, N)
    # query, key and value read one input: merged into one MatMul and a Split, after the plan weighed each on its own, then
    # with the attention after them into one QAttention; the output projection and the feed-forward layers run as QGemm
    assert "Split" not in ops(quantized) and report.onnxruntime_kernels.get("QAttention") == 1 and report.integer_kernels.get("QGemm", 0) >= 3
    merged = [p for p in report.prepare if p.name == "merge-parallel-matmuls"]
    assert len(merged) == 1 and len(merged[0].changes) == 1  # the report says what was merged
    fused = [p for p in report.prepare if p.name == "fuse-quantized-attention"]
    assert len(fused) == 1 and "QAttention" in fused[0].changes[0]
    in_attention = [d for d in report.decisions if d.reason.text.startswith("QAttention")]
    assert len(in_attention) == 3 and all(d.op_type == "MatMul" for d in in_attention)
    assert "DequantizeLinear" not in report.onnxruntime_kernels  # the INT32 biases were merged too, into the QGemm
    assert sum(1 for d in report.decisions if d.op_type == "MatMul" and d.code == QuantReason.INTEGER_KERNEL) >= 5
    assert_close_to_float(model, quantized, 0.995)


def _with_dynamic_sequence(model):
    """``model`` with its sequence dim (dim 1 of inputs and outputs) left to the caller, as exporters write it."""
    for value in list(model.graph.input) + list(model.graph.output):
        value.type.tensor_type.shape.dim[1].dim_param = "sequence"
    return model


def test_dynamic_sequence_matmul_keeps_its_bias_float():
    # onnxruntime fuses MatMul + bias into QGemm only for a 2-D or fully static input; for a sequence of any length it
    # runs MatMulIntegerToFloat, then the Add, so an INT32 bias would be dequantized on every run
    model = _with_dynamic_sequence(transformer_block())
    rng = np.random.default_rng(4)
    data = [{"input": rng.standard_normal((1, length, 32)).astype(np.float32)} for length in (8, 5, 11) * 8]
    quantized, report = quantize(model, data, config=FAST)
    inits = initializers(quantized)
    assert not stored_dq(quantized, inits, np.int32)
    # query, key and value run inside the QAttention kernel; the other three layers as MatMulIntegerToFloat
    assert report.integer_kernels.get("MatMulIntegerToFloat", 0) >= 3 and "QGemm" not in report.integer_kernels
    assert report.onnxruntime_kernels.get("QAttention") == 1
    assert not int32_dequantized_at_run_time(quantized)
    assert any(p.name == "bias-into-integer-matmuls" and p.modified for p in report.prepare)
    integer_layers = sum(n.op_type == "MatMulInteger" for n in quantized.graph.node)
    assert integer_layers >= 3 and report.onnxruntime_kernels["DequantizeLinear"] == 1  # the shared 1.0 the fused kernels read their scales from
    linear = [d for d in report.decisions if d.op_type == "MatMul" and d.code == QuantReason.INTEGER_KERNEL]
    assert len(linear) >= 5 and all(d.reason.text.split(":")[0] in ("MatMulIntegerToFloat", "QAttention") for d in linear)
    # each bias Add reads a float initializer of the layer's own (query, key and value's are the QAttention's)
    float_consts = {name for name, values in inits.items() if values.dtype == np.float32 and values.ndim == 1 and values.size in (32, 64, 96)}
    adds = [n for n in quantized.graph.node if n.op_type == "Add" and any(i in float_consts for i in n.input)]
    assert len(adds) >= 3
    # written as MatMulInteger -> Cast -> Mul -> Add, which onnxruntime fuses: every bias is added inside the kernel
    assert not [n for n in optimized_graph(quantized).graph.node if n.op_type == "Add" and any(i in float_consts for i in n.input)]
    for length in (3, 16):
        feed = {"input": rng.standard_normal((1, length, 32)).astype(np.float32)}
        assert cosine(run_model(model, feed)[0], run_model(quantized, feed)[0]) > 0.99


def test_concat_of_differently_ranged_outputs_stays_float():
    model = mixed_range_concat()
    quantized, report = quantize(model, calibrate_on(model), config=FAST)
    concat = next(d for d in report.decisions if d.op_type == "Concat")
    assert not concat.quantized and concat.code == QuantReason.MIXED_RANGES and "ranges" in concat.reason.text
    for feed in sample_inputs(model, 3, seed=7):
        reference, candidate = run_model(model, feed)[0], run_model(quantized, feed)[0]
        scores_ref, scores_q = reference[:, 4:], candidate[:, 4:]
        assert np.abs(scores_ref - scores_q).max() < 0.05  # class scores survive next to pixel coordinates


def test_constant_node_weights_at_opset_11_are_quantized_as_weights(tmp_path):
    model = constant_node_weights(channels=48, opset=11)
    source = tmp_path / "paddle_style.onnx"
    onnx.save(model, str(source))
    out = tmp_path / "int8.onnx"
    quantized, report = quantize(source, calibrate_on(model), config=FAST, output=out)
    assert quantized.opset_import[0].version >= 13
    assert any(r.name == "constants-to-initializers" and r.modified for r in report.prepare)
    weights = [n for n in stored_dq(quantized, initializers(quantized), np.int8) if initializers(quantized)[n.input[0]].ndim == 4]
    convs = sum(1 for n in model.graph.node if n.op_type == "Conv")
    assert len(weights) == convs - 1  # all but the output layer
    assert any(d.code == QuantReason.OUTPUT_LAYER for d in report.decisions if d.op_type == "Conv")
    assert out.stat().st_size < source.stat().st_size * 0.5
    assert_close_to_float(model, onnx.load(str(out)), 0.999)


def test_cuda_target_is_symmetric_int8_on_weighted_inputs():
    model = residual()
    quantized, report = quantize(model, calibrate_on(model), config=QuantConfig(target="cuda", latency_runs=0))
    inits = initializers(quantized)
    for node in quantized.graph.node:
        if node.op_type == "QuantizeLinear":
            zero = inits[node.input[2]]
            assert zero.dtype == np.int8 and int(zero) == 0
    consumers = Counter(c.op_type for n in quantized.graph.node if n.op_type == "DequantizeLinear" for c in quantized.graph.node if n.output[0] in c.input)
    assert set(consumers) == {"Conv"}
    assert ops(quantized)["Relu"] == ops(model)["Relu"]
    assert_close_to_float(model, quantized, 0.998)


@pytest.mark.parametrize("name", ["conv_bn_relu", "residual", "transformer_block"])
def test_golden_scales(name):
    """Scales and zero points must not drift; regenerate with ONNXSLIM_REGENERATE_GOLDENS=1."""
    model = ALL_BUILDERS[name]()
    quantized, _ = quantize(model, calibrate_on(model, 16, seed=3), config=QuantConfig(latency_runs=0, eval_fraction=0.0))
    inits = initializers(quantized)
    found = {}
    for node in quantized.graph.node:
        if node.op_type == "QuantizeLinear":
            found[node.output[0]] = {"scale": float(inits[node.input[1]]), "zero_point": int(inits[node.input[2]])}
    golden = GOLDEN / f"{name}_scales.json"
    if os.environ.get("ONNXSLIM_REGENERATE_GOLDENS") == "1":
        golden.write_text(json.dumps(found, indent=1, sort_keys=True) + "\n")
    expected = json.loads(golden.read_text())
    assert found.keys() == expected.keys()
    for name, values in expected.items():
        assert found[name]["zero_point"] == values["zero_point"], name
        assert found[name]["scale"] == pytest.approx(values["scale"], rel=1e-5), name


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: {"other": b["input"]}, "no array for model input 'input'"),
        (lambda b: {"input": b["input"][:, :2]}, "has shape"),
        (lambda b: {"input": b["input"].astype(np.float64)}, "float64"),
        (lambda b: {"input": np.full_like(b["input"], np.nan)}, "NaN"),
        (lambda b: {"input": np.full_like(b["input"], np.inf)}, "Inf"),
    ],
)
def test_bad_calibration_data_is_named(npz_folder, mutate, message):
    model = conv_bn_relu()
    batches = [mutate(b) for b in calibrate_on(model, 4)]
    folder = npz_folder(batches)
    with pytest.raises(DataError) as info:
        quantize(model, folder, config=FAST)
    assert message in str(info.value) and "batch_000.npz" in str(info.value)


def test_weights_computed_at_run_time_are_named_as_the_reason_nothing_was_quantized():
    # onnx's "light" model graphs make every weight with ConstantOfShape: the layers are what the message must talk about
    model = generated_weights()
    with pytest.raises(NothingToDoError) as info:  # folding the weight would grow the file from bytes to 147 KB: it is not folded
        quantize(model, [{"x": np.ones((1, 64, 8, 8), np.float32)}] * 3, config=FAST)
    message = str(info.value)
    assert "nothing to quantize (Conv 2: weight is computed at run time by ConstantOfShape" in message


def fused_block(dim: int = 32, hidden: int = 64, seq: int = 8, *, seed: int = 40) -> onnx.ModelProto:
    """MatMul -> onnxruntime's BiasGelu -> MatMul -> Relu -> MatMul, as onnxruntime's transformer optimizer writes an FFN:
    onnx's shape inference types nothing after the fused op."""
    b = GraphBuilder(seed)
    h = b.node("MatMul", ["input", b.const(b.weight(dim, hidden, fan_in=dim))])
    g = b.node("BiasGelu", [h, b.const((0.1 * b.rng.standard_normal(hidden)).astype(np.float32), "b")], domain="com.microsoft")
    r = b.node("Relu", [b.node("MatMul", [g, b.const(b.weight(hidden, hidden, fan_in=hidden))])])
    y = b.node("MatMul", [r, b.const(b.weight(hidden, dim, fan_in=hidden))])
    _rename_output(b, y, "output")
    graph = helper.make_graph(b.nodes, "fused", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, seq, dim])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, seq, dim])], b.initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def test_layers_after_an_operator_onnx_cannot_type_are_quantized():
    from onnxslim.quant.prepare import float_tensors_and_shapes
    from onnxslim.runtime.shapes import onnxruntime_types

    model = fused_block()
    gelu = model.graph.node[1].output[0]
    assert gelu not in onnx.shape_inference.infer_shapes(model).graph.value_info  # what onnx's inference leaves
    assert onnxruntime_types(model, [gelu]) == {gelu: (TensorProto.FLOAT, (1, 8, 64))}
    names, shapes = float_tensors_and_shapes(model)
    assert gelu in names and shapes[gelu] == (1, 8, 64)
    quantized, report = quantize(model, sample_inputs(model, 20), config=dataclasses.replace(FAST, accuracy_budget=None))
    decisions = {d.node: d for d in report.decisions}
    assert [n for n, d in decisions.items() if d.op_type == "MatMul" and d.quantized] == [n.name for n in model.graph.node if n.op_type == "MatMul"][:2]
    assert "output layer" in decisions[model.graph.node[-1].name].reason.text
    assert report.fidelity[0].cosine > 0.99


def test_onnxruntime_types_nothing_it_cannot_open():
    from onnxslim.runtime.shapes import onnxruntime_types

    model = fused_block()
    model.graph.node[1].op_type = "NoSuchFusedOp"
    assert onnxruntime_types(model, [model.graph.node[1].output[0]]) == {}


def test_nothing_to_quantize_exits_nonzero(save, npz_folder):
    b = GraphBuilder(0)
    y = b.node("Sigmoid", ["input"])
    model = b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])], [helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, 4])], "plain")
    with pytest.raises(NothingToDoError, match="nothing to quantize"):
        quantize(model, [{"input": np.ones((1, 4), np.float32)}] * 3, config=FAST)
    path = save(model)
    data = npz_folder([{"input": np.ones((1, 4), np.float32)}] * 3)
    result = CliRunner().invoke(main, ["quantize", str(path), "-o", str(path.parent / "q.onnx"), "--data", str(data), "-q"])
    assert result.exit_code == 1 and "nothing to quantize" in result.output
    assert not (path.parent / "q.onnx").exists()


def test_weights_an_exporter_listed_as_inputs_are_quantized_as_weights(tmp_path):
    """torch's keep_initializers_as_inputs lists every weight as a graph input; nothing was quantized ("weight is not a
    constant initializer") and onnxruntime would not fold a BatchNormalization."""
    model = conv_bn_relu()
    model.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in model.graph.initializer)
    data = [{"input": np.random.default_rng(i).normal(size=(1, 3, 32, 32)).astype(np.float32)} for i in range(10)]
    out = tmp_path / "q.onnx"
    _, report = quantize(model, data, config=FAST, output=out)
    written = onnx.load(str(out))
    assert report.written == "int8" and [v.name for v in written.graph.input] == ["input"]
    assert Counter(n.op_type for n in written.graph.node)["DequantizeLinear"] >= 3


def test_slower_int8_writes_fp32_when_asked(monkeypatch, tmp_path):
    model = conv_bn_relu()
    slower = LatencyComparison(1, {"median_ms": 1.0, "runs": 3}, {"median_ms": 1.4, "runs": 3})
    monkeypatch.setattr(timing_step, "latency_ratios", lambda *a, **k: (slower, None))
    written, report = quantize(model, calibrate_on(model), config=QuantConfig(latency_runs=3), output=tmp_path / "a.onnx")
    assert report.written == "fp32" and not any(n.op_type == "QuantizeLinear" for n in written.graph.node)
    assert any("not faster" in w for w in report.warnings)
    written, report = quantize(model, calibrate_on(model), config=QuantConfig(latency_runs=3, if_slower="keep-int8"))
    assert report.written == "int8"
    with pytest.raises(NothingToDoError, match="not faster"):
        quantize(model, calibrate_on(model), config=QuantConfig(latency_runs=3, if_slower="fail"))


def test_the_deploy_thread_count_decides_and_a_disagreement_at_1_thread_is_reported(monkeypatch):
    model = conv_bn_relu()
    faster = LatencyComparison(0, {"median_ms": 1.0, "runs": 3}, {"median_ms": 0.7, "runs": 3})
    slower_alone = LatencyComparison(1, {"median_ms": 2.0, "runs": 3}, {"median_ms": 2.2, "runs": 3})
    monkeypatch.setattr(timing_step, "latency_ratios", lambda *a, **k: (faster, slower_alone))
    _, report = quantize(model, calibrate_on(model), config=QuantConfig(latency_runs=3))
    assert report.written == "int8" and report.latency_1_thread.ratio == pytest.approx(1.1)
    assert any("INT8: 1.10x the original's latency at 1 thread but 0.70x at onnxruntime's default threads" in w for w in report.warnings)
    assert report.to_dict()["latency_1_thread"]["ratio"] == pytest.approx(1.1)
    monkeypatch.setattr(timing_step, "latency_ratios", lambda *a, **k: (slower_alone, faster))  # slower where it is deployed: FP32
    _, report = quantize(model, calibrate_on(model), config=QuantConfig(latency_runs=3))
    assert report.written == "fp32"


def test_int8_must_beat_the_cleaned_fp32_model_it_would_otherwise_write(monkeypatch):
    model = conv_bn_relu()
    # faster than the original, slower than the cleaned FP32 model (BatchNorm folded) timed in the same loop
    beaten = LatencyComparison(0, {"median_ms": 1.0, "runs": 3}, {"median_ms": 0.9, "runs": 3}, fallback={"median_ms": 0.8, "runs": 3})
    calls = []
    monkeypatch.setattr(timing_step, "latency_ratios", lambda *a, **k: calls.append(k["fallback"]) or (beaten, None))
    written, report = quantize(model, calibrate_on(model), config=QuantConfig(latency_runs=3))
    assert calls and calls[0] is not None and not any(n.op_type == "BatchNormalization" for n in calls[0].graph.node)
    assert report.written == "fp32" and not any(n.op_type == "QuantizeLinear" for n in written.graph.node)
    assert any("not faster than the cleaned FP32 model here (0.90x the original's latency, the cleaned FP32 model 0.80x" in w for w in report.warnings)
    assert report.to_dict()["latency"]["fallback_ratio"] == pytest.approx(0.8)
    ahead = LatencyComparison(0, {"median_ms": 1.0, "runs": 3}, {"median_ms": 0.7, "runs": 3}, fallback={"median_ms": 0.8, "runs": 3})
    monkeypatch.setattr(timing_step, "latency_ratios", lambda *a, **k: (ahead, None))
    _, report = quantize(model, calibrate_on(model), config=QuantConfig(latency_runs=3))
    assert report.written == "int8" and report.latency.ratio_to_fallback == pytest.approx(0.875)


def test_where_the_cleaned_fp32_model_is_no_faster_than_the_original_the_original_is_written(monkeypatch, tmp_path):
    model = conv_bn_relu()
    neither = LatencyComparison(0, {"median_ms": 1.0, "runs": 3}, {"median_ms": 1.3, "runs": 3}, fallback={"median_ms": 1.1, "runs": 3})
    monkeypatch.setattr(timing_step, "latency_ratios", lambda *a, **k: (neither, None))
    written, report = quantize(model, calibrate_on(model), config=QuantConfig(latency_runs=3), output=tmp_path / "o.onnx")
    assert report.written == "original" and ops(written) == ops(model) and ops(onnx.load(tmp_path / "o.onnx")) == ops(model)
    assert any("wrote the original model unchanged, the cleaned FP32 model being no faster than it" in w for w in report.warnings)
    # faster than a cleaned model that is itself slower than the original is not enough: the original is what it must beat
    between = LatencyComparison(0, {"median_ms": 1.0, "runs": 3}, {"median_ms": 1.05, "runs": 3}, fallback={"median_ms": 1.2, "runs": 3})
    monkeypatch.setattr(timing_step, "latency_ratios", lambda *a, **k: (between, None))
    written, report = quantize(model, calibrate_on(model), config=QuantConfig(latency_runs=3))
    assert report.written == "original" and ops(written) == ops(model)
    assert any("not faster than FP32 here (1.05x FP32 latency; the cleaned FP32 model 1.20x" in w for w in report.warnings)


def test_quantize_times_the_cleaned_fp32_model_in_the_same_loop():
    model = conv_bn_relu()
    _, report = quantize(model, calibrate_on(model), config=QuantConfig(latency_runs=3, threads=1, if_slower="write"))
    timed = report.latency
    assert timed.fallback["runs"] == timed.reference["runs"] == timed.candidate["runs"] == 3
    assert timed.ratio_to_fallback == pytest.approx(timed.candidate["median_ms"] / timed.fallback["median_ms"])


@pytest.mark.parametrize("sensitivity", ["fast", "measured"])
def test_accuracy_budget_keeps_sensitive_layers_in_float(sensitivity):
    model = transformer_block()
    data = calibrate_on(model, 24)
    _, plain = quantize(model, data, config=QuantConfig(latency_runs=0, accuracy_budget=None))
    budget = min(c.cosine for c in plain.fidelity) + (1 - min(c.cosine for c in plain.fidelity)) * 0.5
    _, strict = quantize(model, data, config=QuantConfig(latency_runs=0, accuracy_budget=budget, sensitivity=sensitivity))
    assert strict.kept_float_for_budget
    assert min(c.cosine for c in strict.fidelity) >= budget - 1e-6
    kept = {k["node"] for k in strict.kept_float_for_budget}
    # kept for the budget, and said so: not blamed on --exclude-nodes, which was not given
    assert all(d.code == QuantReason.KEPT_FOR_ACCURACY for d in strict.decisions if d.node in kept)
    assert not any(d.code == QuantReason.EXCLUDED_BY_USER for d in strict.decisions)


def test_the_default_budget_is_099_on_every_output_and_none_switches_it_off(save, npz_folder, tmp_path):
    model, data = outlier_mlp(), outlier_inputs(30)
    _, unchecked = quantize(model, data, config=QuantConfig(latency_runs=0, smooth=None, accuracy_budget=None))
    assert min(c.cosine for c in unchecked.fidelity) < 0.5 and unchecked.budget is None and not unchecked.kept_float_for_budget
    _, default = quantize(model, data, config=UNSMOOTHED)
    assert default.budget == 0.99 and min(c.cosine for c in default.fidelity) >= 0.99
    # the layer whose input scale the outlier sets is found from one side-by-side pass, and it alone is kept in float
    first = model.graph.node[0].name
    assert [k["node"] for k in default.kept_float_for_budget] == [first]
    assert default.sensitivity[0] == {"node": first, "added_noise": pytest.approx(1.0, abs=0.05), "work_share": pytest.approx(0.25)}
    assert all(0 <= entry["added_noise"] < 0.01 for entry in default.sensitivity[1:])
    path, folder = save(model), npz_folder(data)
    for given, expected in (("none", None), ("0.95", 0.95)):
        result = CliRunner().invoke(main, ["quantize", str(path), "-o", str(tmp_path / "q.onnx"), "--data", str(folder), "--latency-runs", "0",
                                           "--accuracy-budget", given, "--report", str(tmp_path / "r.json"), "-q"])
        assert result.exit_code == 0, result.output
        assert json.loads((tmp_path / "r.json").read_text())["accuracy_budget"] == expected
    result = CliRunner().invoke(main, ["quantize", str(path), "-o", str(tmp_path / "q.onnx"), "--data", str(folder), "--accuracy-budget", "nope"])
    assert result.exit_code == 2 and "nope" in result.output


def _chain_with_two_bad_layers(width=64, seed=15):
    """Six MatMul -> Relu layers (the last without Relu). Fed outlier_inputs, the first layer's input scale is set by a channel
    its weight ignores; the fourth layer's weight has one huge entry on an input channel that is always zero, which sets its
    per-tensor weight scale. Each rounds what it uses to zero: both add noise of about the signal's power."""
    b = GraphBuilder(seed)
    x = "input"
    for i in range(6):
        w = b.weight(width, width).T.copy()
        if i == 0:
            w[0, :] = 0.0  # reads nothing of channel 0
        if i == 2:
            w[:, 0] = 0.0  # its output channel 0 is always zero
        if i == 3:
            w[0, 7] = 300.0  # multiplies that zero
        x = b.node("MatMul", [x, b.const(w)])
        if i < 5:
            x = b.node("Relu", [x])
    _rename_output(b, x, "features")
    return b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", width])],
                   [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", width])], "two_bad_layers")


def test_a_layer_deep_in_a_noisy_chain_is_charged_its_own_noise(monkeypatch):
    """Compared side by side, the fourth layer's output is no noisier than its input (the first layer's noise already fills
    it) and it looked harmless; measured with exact inputs it adds as much as the first, and the budget keeps just those two."""
    from onnxslim.quant import pipeline

    model, data = _chain_with_two_bad_layers(), outlier_inputs(30)
    config = QuantConfig(latency_runs=0, smooth=None, per_channel=False)
    matmuls = [n.name for n in model.graph.node if n.op_type == "MatMul"]
    first, fourth = matmuls[0], matmuls[3]
    _, report = quantize(model, data, config=config)
    noise = {e["node"]: e["added_noise"] for e in report.sensitivity}
    assert noise[first] > 0.5 and noise[fourth] > 0.5, noise
    assert {k["node"] for k in report.kept_float_for_budget} == {first, fourth}
    assert min(c.cosine for c in report.fidelity) >= 0.99
    monkeypatch.setattr(pipeline, "inputs_made_exact", lambda *a: None)  # the side-by-side charge, as for subgraph bodies
    _, side_by_side = quantize(model, data, config=config)
    assert {e["node"]: e["added_noise"] for e in side_by_side.sensitivity}[fourth] < 0.1
    # ranked by that charge, more layers were kept in float on the way to finding it; what the outputs lose with each
    # stretch of the chain alone quantized puts it back among the first
    check = side_by_side.ranking_check
    assert check["noise_ranking"]["kept"] > 2 and check["taken"] == "checked_ranking", check
    assert {k["node"] for k in side_by_side.kept_float_for_budget} == {first, fourth}


def test_the_check_by_stretches_is_kept_only_where_it_keeps_less_work_in_float(monkeypatch):
    """Where the noise ranking's float layers hold more than RECHECK_SHARE of the work, each stretch of the graph is measured
    alone and the layers searched again; a checked ranking that keeps more work in float is reported and not taken."""
    from onnxslim.quant import pipeline

    model, data = _chain_with_two_bad_layers(), outlier_inputs(30)
    config = QuantConfig(latency_runs=0, smooth=None, per_channel=False)
    matmuls = [n.name for n in model.graph.node if n.op_type == "MatMul"]
    builds = []
    real_build = pipeline.QuantRun.build
    monkeypatch.setattr(pipeline.QuantRun, "build", lambda self, *a, **k: builds.append(1) or real_build(self, *a, **k))
    monkeypatch.setattr(pipeline, "RECHECK_SHARE", 0.5)  # the two noisy layers hold a third of the multiply-adds
    _, unchecked = quantize(model, data, config=config)
    assert unchecked.ranking_check == {} and {k["node"] for k in unchecked.kept_float_for_budget} == {matmuls[0], matmuls[3]}
    assert all("stretch" not in entry for entry in unchecked.sensitivity)
    plain_builds = len(builds)

    # a check that gets the order backwards (the quietest layers first) finds a set holding more of the work: not taken
    monkeypatch.setattr(pipeline, "RECHECK_SHARE", 0.25)
    real_effect = pipeline.effect_at_outputs
    monkeypatch.setattr(pipeline, "effect_at_outputs", lambda stretch, own, loss: {n: 1.0 / (1e-9 + e) for n, e in real_effect(stretch, own, loss).items()})
    builds.clear()
    _, checked = quantize(model, data, config=config)
    check = checked.ranking_check
    assert check["taken"] == "noise_ranking" and check["noise_ranking"]["kept"] == 2, check
    assert check["checked_ranking"]["work_share"] > check["noise_ranking"]["work_share"] or not check["checked_ranking"]["met"]
    assert {k["node"] for k in checked.kept_float_for_budget} == {matmuls[0], matmuls[3]}
    assert check["stretches"] == len(checked.sensitivity)  # fewer layers than STRETCHES: each measured alone
    assert plain_builds < len(builds) <= plain_builds + check["stretches"] + 8  # the stretches and the second search's counts
    assert min(c.cosine for c in checked.fidelity) >= 0.99


def _two_branches_of_unequal_work(seed=3):
    """y = A(small_in) + D(relu(B(wide_in))): A is 64 -> 64, B 64 -> 1024 (16 times A's multiply-adds). Each input's channel 0,
    which its layer's weight ignores, is an outlier that sets that layer's per-tensor input scale (see :func:`outlier_inputs`)."""
    b = GraphBuilder(seed)
    small, wide = b.weight(64, 64).T.copy(), b.weight(1024, 64).T.copy()
    small[0, :] = wide[0, :] = 0.0
    a = b.node("MatMul", ["small_in", b.const(small)])
    d = b.node("MatMul", [b.node("Relu", [b.node("MatMul", ["wide_in", b.const(wide)])]), b.const(b.weight(64, 1024).T.copy())])
    _rename_output(b, b.node("Add", [a, d]), "y")
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 64]) for name in ("small_in", "wide_in")]
    return b.model(inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])], "two_branches")


def _two_outlier_inputs(count, small_scale=20.0, wide_scale=24.0, seed=0):
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(count):
        batch = {name: rng.standard_normal((8, 64)).astype(np.float32) for name in ("small_in", "wide_in")}
        batch["small_in"][:, 0] *= small_scale
        batch["wide_in"][:, 0] *= wide_scale
        batches.append(batch)
    return batches


def test_the_budget_keeps_in_float_the_layer_that_gives_back_most_accuracy_per_share_of_the_work(monkeypatch):
    """Either branch's first layer kept in float meets the budget; the wide one adds a little more noise, the small one holds
    1/16 of its work: the small one is kept, and the wide one stays INT8."""
    from onnxslim.quant import pipeline

    model, data = _two_branches_of_unequal_work(), _two_outlier_inputs(30)
    small, wide, _ = [n.name for n in model.graph.node if n.op_type == "MatMul"]
    _, plain = quantize(model, data, config=dataclasses.replace(UNSMOOTHED, accuracy_budget=None))
    loss = 1 - min(c.cosine for c in plain.fidelity)
    budget = 1 - 0.75 * loss
    _, report = quantize(model, data, config=dataclasses.replace(UNSMOOTHED, accuracy_budget=budget))
    entries = {e["node"]: e for e in report.sensitivity}
    assert entries[wide]["added_noise"] > entries[small]["added_noise"] > 0
    assert entries[small]["work_share"] == pytest.approx(4096 / (4096 + 2 * 65536)) and entries[wide]["work_share"] == pytest.approx(65536 / (4096 + 2 * 65536))
    assert [k["node"] for k in report.kept_float_for_budget] == [small]
    assert min(c.cosine for c in report.fidelity) >= budget
    monkeypatch.setattr(pipeline, "_by_damage_per_work", lambda every, shares: every)  # ranked by the noise alone
    _, noisiest_first = quantize(model, data, config=dataclasses.replace(UNSMOOTHED, accuracy_budget=budget))
    assert [k["node"] for k in noisiest_first.kept_float_for_budget] == [wide] and min(c.cosine for c in noisiest_first.fidelity) >= budget


def test_the_command_line_names_each_kept_layers_noise_and_share_of_the_work(save, npz_folder, tmp_path):
    model, data = _two_branches_of_unequal_work(), _two_outlier_inputs(30)
    small = next(n.name for n in model.graph.node if n.op_type == "MatMul")
    result = CliRunner().invoke(main, ["quantize", str(save(model)), "-o", str(tmp_path / "q.onnx"), "--data", str(npz_folder(data)), "--latency-runs", "0",
                                       "--smooth", "none", "--accuracy-budget", "0.999"])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if f"kept in float for the accuracy budget: {small}" in line)
    assert re.search(r"adds noise [0-9.]+ dB below its output's power; 3\.0% of the multiply-adds\)$", line), line


def test_the_command_line_says_what_checking_the_ranking_by_stretches_found(save, npz_folder, tmp_path, monkeypatch):
    from onnxslim.quant import pipeline

    monkeypatch.setattr(pipeline, "inputs_made_exact", lambda *a: None)  # the side-by-side charge, which misses the fourth layer
    model, data = _chain_with_two_bad_layers(), outlier_inputs(30)
    result = CliRunner().invoke(main, ["quantize", str(save(model)), "-o", str(tmp_path / "q.onnx"), "--data", str(npz_folder(data)), "--latency-runs", "0",
                                       "--smooth", "none", "--per-tensor", "--report", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    check = json.loads((tmp_path / "r.json").read_text())["ranking_check"]
    assert check["taken"] == "checked_ranking" and check["checked_ranking"]["kept"] == 2, check
    assert re.search(rf"ranked by their own noise, the layers kept in float held [0-9.]+% of the multiply-adds \({check['noise_ranking']['kept']} layer\(s\)\); "
                     r"each layer's noise weighted by what the outputs lose with its stretch of the graph alone quantized \([0-9]+ stretches measured\): "
                     r"2 layer\(s\) holding 33\.3% \(kept\)", text), text
    assert re.search(r"kept in float for the accuracy budget: \S+ \((adds noise [0-9.]+ dB below its output's power|adds no measurable noise); "
                     r"its stretch of the graph alone quantized: cosine [0-9]\.[0-9]{5}; 16\.7% of the multiply-adds\)", text), text


def test_nodes_without_work_that_change_nothing_in_float_are_kept_in_float_last():
    """Between integer layers, a pooling or a product kept in float alone still reads its producers' codes and has its
    output quantized for the layers after it: the outputs do not move, so the budget keeps such nodes after the layers
    that take noise back. A node whose float plan changes what another node reads is not among them."""
    from onnxslim.ir.counts import work_shares
    from onnxslim.quant.pipeline import QuantRun, _held_out_shapes, _inert_alone

    model = ALL_BUILDERS["silu_se_block"]()
    run = QuantRun(model, calibrate_on(model), QuantConfig(latency_runs=0), None, None, False)
    plan = run.plan(run.config)
    candidates = [name for name, d in plan.decisions.items() if d.quantized and name not in plan.constant_operands]
    shares = work_shares(run.prepared, candidates, _held_out_shapes(run))
    inert = _inert_alone(run, candidates, shares)
    workless = {name for name in candidates if shares.get(name) == 0.0}
    assert inert and inert < workless
    batch = calibrate_on(model, 1, seed=3)[0]
    everything = run_model(run.build(run.config)[1], batch)[0]
    for node in sorted(inert):
        np.testing.assert_array_equal(run_model(run.build(run.config, frozenset({node}))[1], batch)[0], everything)
    moved = [node for node in sorted(workless - inert) if not np.array_equal(run_model(run.build(run.config, frozenset({node}))[1], batch)[0], everything)]
    assert moved  # some workless node does take noise back in float: those keep their rank


def test_the_exact_input_model_feeds_every_activation_quantizer_from_the_float_copy():
    from models.builders import branching_convs
    from onnxslim.quant.isolation import FLOAT_PREFIX, inputs_made_exact
    from onnxslim.quant.pipeline import QuantRun

    model = conv_bn_relu()
    run = QuantRun(model, calibrate_on(model), QuantConfig(latency_runs=0, accuracy_budget=None), None, None, False)
    _, quantized = run.build(run.config, frozenset())
    merged = inputs_made_exact(run.prepared, quantized)
    computed_by_float = {o for n in run.prepared.graph.node for o in n.output}
    quantizers = [n for n in merged.graph.node if n.op_type == "QuantizeLinear" and not n.name.startswith(FLOAT_PREFIX)]
    # tensors the float model computes (not weights, not the graph input, not what quantize adds such as the stem's channel padding)
    activations = [q for q in quantizers if q.input[0] in computed_by_float or q.input[0].startswith(FLOAT_PREFIX)]
    assert len(activations) >= 2 and all(q.input[0].startswith(FLOAT_PREFIX) for q in activations)
    batch = calibrate_on(model, 1, seed=9)[0]
    # the quantized copy's outputs are the quantized model's own where nothing upstream was rounded differently: same names, same shapes
    assert [o.name for o in merged.graph.output] == [o.name for o in quantized.graph.output]
    assert run_model(merged, batch)[0].shape == run_model(quantized, batch)[0].shape
    assert inputs_made_exact(branching_convs(), branching_convs()) is None  # If bodies: the side-by-side charge instead


def test_the_exact_input_model_measures_each_layer_against_its_own_float_copy_in_one_run():
    """The ranking reads both sides of each layer from the merged model: the same sums as the float model run apart."""
    from onnxslim.measure import paired_tensor_fidelity, tensor_fidelity
    from onnxslim.quant.isolation import float_copy, inputs_made_exact
    from onnxslim.quant.pipeline import QuantRun

    model = conv_bn_relu()
    run = QuantRun(model, calibrate_on(model), QuantConfig(latency_runs=0, accuracy_budget=None), None, None, False)
    _, quantized = run.build(run.config, frozenset())
    merged = inputs_made_exact(run.prepared, quantized)
    computed = {o for n in quantized.graph.node for o in n.output}
    names = [o for n in run.prepared.graph.node for o in n.output if o in computed]
    batches = [(f"batch {i}", batch) for i, batch in enumerate(calibrate_on(model, 3, seed=5))]
    paired = paired_tensor_fidelity(merged, {name: float_copy(name) for name in names}, batches)
    apart = tensor_fidelity(run.prepared, merged, names, batches)
    assert len(names) >= 2 and set(paired) == set(names)
    for name in names:
        assert paired[name].ref_sq == pytest.approx(apart[name].ref_sq, rel=1e-5), name
        assert paired[name].err_sq == pytest.approx(apart[name].err_sq, rel=1e-4, abs=1e-9), name
    assert any(paired[name].err_sq > 0 for name in names)


def test_the_budget_holds_on_every_held_out_batch_not_only_on_those_the_search_samples(monkeypatch):
    """The search measures its counts on the first held-out batches; the model written meets the budget on all of them.

    Here the first two batches (the search's sample, made small) pass with every layer quantized and the other six,
    at twice the calibrated amplitude, do not: the search used to stop there with no count to try (a bare max() error).
    """
    from onnxslim.quant import pipeline

    monkeypatch.setattr(pipeline, "SENSITIVITY_BATCHES", 2)
    model = mlp()
    scaled = lambda feeds, factor: [{name: (value * factor).astype(value.dtype) for name, value in feed.items()} for feed in feeds]  # noqa: E731
    held_out = sample_inputs(model, 2, seed=2) + scaled(sample_inputs(model, 6, seed=3), 2.0)
    config = QuantConfig(latency_runs=0, output_layers="int8")
    _, sampled = quantize(model, calibrate_on(model, 24), eval_data=held_out[:2], config=config)
    assert not sampled.kept_float_for_budget and min(c.cosine for c in sampled.fidelity) >= 0.99
    _, report = quantize(model, calibrate_on(model, 24), eval_data=held_out, config=config)
    assert report.kept_float_for_budget and min(c.cosine for c in report.fidelity) >= 0.99, report.fidelity
    assert not any("accuracy budget" in w and "missed" in w for w in report.warnings), report.warnings


def test_no_model_is_run_over_every_held_out_batch_twice(monkeypatch):
    """The count the search confirms on every held-out batch is the comparison reported, not measured again."""
    from onnxslim.quant import pipeline

    monkeypatch.setattr(pipeline, "SENSITIVITY_BATCHES", 2)
    monkeypatch.setattr(pipeline, "RECHECK_SHARE", math.inf)  # one search (the check by stretches searches again, with its own count)
    model = mlp()
    held_out = sample_inputs(model, 8, seed=2)
    data = calibrate_on(model, 24)
    settings = {"latency_runs": 0, "output_layers": "int8", "kept_float_weights": "float32"}
    _, plain = quantize(model, data, eval_data=held_out, config=QuantConfig(accuracy_budget=None, **settings))
    worst = min(c.cosine for c in plain.fidelity)
    budget = worst + (1 - worst) * 0.5
    passes = []
    real, real_with_head = pipeline.fidelity, pipeline.fidelity_with_head
    monkeypatch.setattr(pipeline, "fidelity", lambda reference, candidate, batches, **k: passes.append((id(candidate), len(batches))) or real(reference, candidate, batches, **k))
    monkeypatch.setattr(pipeline, "fidelity_with_head", lambda reference, candidate, batches, head, **k: passes.append((id(candidate), len(batches)))
                        or real_with_head(reference, candidate, batches, head, **k))
    _, report = quantize(model, data, eval_data=held_out, config=QuantConfig(accuracy_budget=budget, **settings))
    assert report.kept_float_for_budget and min(c.cosine for c in report.fidelity) >= budget
    whole = [candidate for candidate, count in passes if count == len(held_out)]
    assert len(whole) == 2 and len(set(whole)) == 2, passes  # the fully quantized model, then the count found: once each
    assert (whole[0], 2) not in passes  # nor the fully quantized one on the search's sample: read from its pass over all


def test_fast_sensitivity_builds_a_few_models_where_measured_builds_one_per_layer(monkeypatch):
    from onnxslim.quant import pipeline

    model = transformer_block()
    data = calibrate_on(model, 24)
    _, plain = quantize(model, data, config=QuantConfig(latency_runs=0, accuracy_budget=None, output_layers="int8"))
    worst = min(c.cosine for c in plain.fidelity)
    budget = worst + (1 - worst) * 0.5
    builds = []
    real = pipeline.insert_qdq_everywhere
    monkeypatch.setattr(pipeline, "insert_qdq_everywhere", lambda *a, **k: builds.append(1) or real(*a, **k))
    monkeypatch.setattr(pipeline, "RECHECK_SHARE", math.inf)  # the noise ranking alone (its check by stretches is tested on its own)
    counts = {}
    for sensitivity in ("fast", "measured"):
        builds.clear()
        _, report = quantize(model, data, config=QuantConfig(latency_runs=0, output_layers="int8", accuracy_budget=budget, sensitivity=sensitivity))
        assert min(c.cosine for c in report.fidelity) >= budget
        counts[sensitivity] = (len(builds), len(report.sensitivity), len(report.kept_float_for_budget))
    layers = counts["measured"][1]
    assert counts["fast"][1] == layers >= 6
    assert counts["measured"][0] >= layers + 2  # one build per layer, the plain one and the confirmed one
    assert counts["fast"][0] <= 2 + 6 and counts["fast"][0] < counts["measured"][0]  # the plain build, at most 6 counts measured, the confirmed one


def test_an_untimed_build_writes_int8_without_timing_it_against_fp32(monkeypatch):
    from onnxslim.quant.pipeline import quantized_untimed

    model = conv_bn_relu()
    data = calibrate_on(model, 10)
    config = QuantConfig(if_slower="keep-fp32", accuracy_budget=None, output_layers="float")  # no timed form to choose: the same model both ways
    timings = []
    # timed, this INT8 model would lose to FP32 and FP32 would be written
    slower = LatencyComparison(None, {"runs": 8, "median_ms": 1.0}, {"runs": 8, "median_ms": 2.0})
    monkeypatch.setattr(timing_step, "latency_ratios", lambda *a, **k: timings.append(1) or (slower, None))
    timed, timed_report = quantize(model, data, config=config)
    assert timings and timed_report.written == "fp32" and "QuantizeLinear" not in ops(timed)
    timings.clear()
    untimed, report = quantized_untimed(model, data, config=config)
    assert not timings and report.latency is None and report.written == "int8"
    assert ops(untimed)["QuantizeLinear"] > 0 and report.fidelity[0].cosine == pytest.approx(timed_report.fidelity[0].cosine)


def test_a_top1_budget_bounds_decisions_not_cosine():
    from models.builders import conv_bn_relu

    model = conv_bn_relu(channels=32, size=16)  # ends in (batch, classes) scores
    data = calibrate_on(model, 24)
    config = QuantConfig(latency_runs=0, output_layers="int8", accuracy_budget=0.999999, accuracy_metric="top1")
    _, report = quantize(model, data, config=config)
    top1 = [c.top1 for c in report.fidelity]
    assert report.accuracy_metric == "top1" and all(t is not None and t >= 0.999999 for t in top1)
    assert report.to_dict()["accuracy_metric"] == "top1"
    # the same budget on cosine is a different, stricter promise: no INT8 layer keeps the output's cosine at 1
    with pytest.raises(NothingToDoError, match="every layer alone brings an output's cosine score"):
        quantize(model, data, config=QuantConfig(latency_runs=0, output_layers="int8", accuracy_budget=0.999999, sensitivity="measured"))
    # the fast ranking says what it measured: the most layers it kept in float that still missed, and the score there
    with pytest.raises(NothingToDoError, match="miss it until every one is") as refused:
        quantize(model, data, config=QuantConfig(latency_runs=0, output_layers="int8", accuracy_budget=0.999999))
    kept, total, score = re.search(r"\(with (\d+) of (\d+) in float, cosine ([0-9.]+)\)", str(refused.value)).groups()
    assert 0 <= int(kept) < int(total) and float(score) < 0.999999


def test_cli_quantize_writes_model_and_report(save, npz_folder, tmp_path):
    model = residual()
    path = save(model)
    data = npz_folder(calibrate_on(model, 10))
    out, report = tmp_path / "int8.onnx", tmp_path / "report.json"
    result = CliRunner().invoke(
        main, ["quantize", str(path), "-o", str(out), "--data", str(data), "--latency-runs", "0", "--output-layers", "int8", "--report", str(report), "-q"]
    )
    assert result.exit_code == 0, result.output
    content = json.loads(report.read_text())
    assert content["written"] == "int8" and content["integer_kernels"]["QLinearConv"] == 6
    assert {d["op_type"] for d in content["quantized_nodes"]} >= {"Conv", "Add"}
    assert all(d["reason"] for d in content["skipped_nodes"])
    assert content["calibration"]["batches"] == 8 and content["evaluation"]["batches"] == 2
    onnx.checker.check_model(str(out))


def test_python_loader_reader_and_image_folder(tmp_path):
    from onnxslim.data.sources import ImageFolder, LoaderFunction

    model = conv_bn_relu(size=16)
    module = tmp_path / "my_loader.py"
    module.write_text(
        "import numpy as np\ndef batches():\n    rng = np.random.default_rng(0)\n    for _ in range(6):\n"
        "        yield {'input': rng.standard_normal((1, 3, 16, 16)).astype(np.float32)}\n"
    )
    _, report = quantize(model, LoaderFunction(f"{module}:batches"), config=FAST)
    assert report.calibration.batches == 5 and report.evaluation.batches == 1

    class Reader:
        def __init__(self):
            self.items = iter(calibrate_on(model, 5))

        def get_next(self):
            return next(self.items, None)

    _, report = quantize(model, Reader(), config=FAST)
    assert report.calibration.batches == 4

    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for index in range(5):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(images / f"{index}.png")
    source = ImageFolder(images, "input", size=(16, 16), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    label, batch = next(iter(source))
    assert batch["input"].shape == (1, 3, 16, 16) and batch["input"].dtype == np.float32
    _, report = quantize(model, source, config=FAST)
    assert report.calibration.batches == 4


def embedding_model(vocab: int = 1000, dim: int = 128, tied: bool = False) -> onnx.ModelProto:
    """Token ids -> embedding lookup -> linear layer (tied: of dim outputs, then an output projection reading the same table
    through a Transpose, as GPT-2's export does)."""
    rng = np.random.default_rng(0)
    table = (rng.standard_normal((vocab, dim)) * rng.uniform(0.01, 1.0, (vocab, 1))).astype(np.float32)  # rows of very different scales
    width = dim if tied else 64
    weights = [onnx.numpy_helper.from_array(table, "table"), onnx.numpy_helper.from_array(rng.standard_normal((dim, width)).astype(np.float32) * 0.1, "w")]
    nodes = [helper.make_node("Gather", ["table", "ids"], ["emb"], name="lookup"), helper.make_node("MatMul", ["emb", "w"], ["hidden"], name="proj")]
    out = "hidden"
    if tied:
        nodes.append(helper.make_node("Transpose", ["table"], ["table_t_view"], name="tie", perm=[1, 0]))
        nodes.append(helper.make_node("MatMul", ["hidden", "table_t_view"], ["logits"], name="lm_head"))
        out = "logits"
    graph = helper.make_graph(
        nodes, "embed", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 16])], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], weights
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_row_quantization_a_block_of_rows_at_a_time_equals_the_whole_table_formula():
    from onnxslim.quant.tables import ROWS_AT_A_TIME, row_quantize

    table = np.random.default_rng(3).normal(size=(2 * ROWS_AT_A_TIME + 5, 24)).astype(np.float32)
    table[7] = 0.0
    values, scales = row_quantize(table)
    peak = np.abs(table).max(axis=1)
    expected_scales = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    np.testing.assert_array_equal(scales, expected_scales)
    np.testing.assert_array_equal(values, np.clip(np.rint(table / expected_scales[:, None]), -127, 127).astype(np.int8))
    assert scales[7] == 1.0 and not values[7].any()


def test_embedding_tables_are_stored_in_int8_rows_and_looked_up_exactly():
    from onnxslim.quant.tables import row_quantize

    model = embedding_model()
    data = [{"ids": np.random.default_rng(i).integers(0, 1000, (1, 16)).astype(np.int64)} for i in range(12)]
    quantized, report = quantize(model, data, config=FAST)
    decision = next(d for d in report.decisions if d.node == "lookup")
    assert decision.code == QuantReason.WEIGHT_ONLY and decision.quantized
    tables = {t.name: t for t in quantized.graph.initializer}
    # onnxruntime's CPU provider looks the INT8 rows up in one GatherBlockQuantized (as UINT8 around 128)
    assert "table" not in tables and tables["table_uint8"].data_type == TensorProto.UINT8
    assert [n.op_type for n in quantized.graph.node if n.domain == "com.microsoft"] == ["GatherBlockQuantized"]
    assert report.sizes.quantized_bytes < 0.4 * report.sizes.fp32_bytes  # 512 KB of float rows -> 128 KB of INT8 (+ scales)
    # the lookup computes exactly the per-row dequantization of the rows it reads
    table = onnx.numpy_helper.to_array(model.graph.initializer[0])
    values, scales = row_quantize(table)
    probe = load_model(quantized)
    probe.graph.output.append(helper.make_tensor_value_info("emb", TensorProto.FLOAT, None))
    feed = data[0]
    got = run_model(probe, feed)[-1]
    np.testing.assert_array_equal(got, values[feed["ids"]].astype(np.float32) * scales[feed["ids"]][..., None])
    assert np.abs(got - table[feed["ids"]]).max() <= np.abs(table[feed["ids"]]).max(axis=-1, keepdims=True).max() / 254 + 1e-6
    assert min(c.cosine for c in report.fidelity) > 0.999
    # tables kept float: the lookup was this model's only quantizable work
    with pytest.raises(NothingToDoError, match="nothing to quantize"):
        quantize(model, data, config=QuantConfig(latency_runs=0, embeddings="float"))


def test_both_lookup_forms_give_the_same_rows():
    """Standard operators (Gather, Cast, Mul: any runtime) and onnxruntime's GatherBlockQuantized look up the same rows."""
    from onnxslim.quant.tables import find_tables, store_tables_in_int8

    model = embedding_model()
    feed = {"ids": np.random.default_rng(5).integers(0, 1000, (1, 16)).astype(np.int64)}
    outputs = {}
    for lookup in ("onnx", "contrib"):
        work = load_model(model)
        assert store_tables_in_int8(work, find_tables(work), lookup=lookup) == ["lookup"]
        contrib = [n.op_type for n in work.graph.node if n.domain == "com.microsoft"]
        assert contrib == ([] if lookup == "onnx" else ["GatherBlockQuantized"])
        outputs[lookup] = run_model(work, feed)
    for a, b in zip(outputs["onnx"], outputs["contrib"]):
        np.testing.assert_array_equal(a, b)


def test_each_table_is_quantized_once_however_many_builds(monkeypatch):
    import onnxslim.quant.tables as tables
    from onnxslim.quant.pipeline import QuantRun

    calls = []
    original = tables.row_quantize
    monkeypatch.setattr(tables, "row_quantize", lambda table: calls.append(table.shape) or original(table))
    model = embedding_model()
    data = [{"ids": np.random.default_rng(i).integers(0, 1000, (1, 16)).astype(np.int64)} for i in range(12)]
    run = QuantRun(model, data, FAST, None, None, False)
    first, second = run.build(FAST)[1], run.build(FAST)[1]
    assert len(calls) == 1
    stored = [{t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}["table_uint8"] for m in (first, second)]
    np.testing.assert_array_equal(*stored)


def fused_embedding_model(vocab: int = 4096, dim: int = 16, seq: int = 8) -> onnx.ModelProto:
    """onnxruntime's fused EmbedLayerNormalization (word, position and segment tables, then LayerNorm) -> MatMul -> Relu -> MatMul,
    as its transformer optimizer writes a BERT's first node."""
    rng = np.random.default_rng(1)
    arrays = {
        "word": (rng.standard_normal((vocab, dim)) * rng.uniform(0.05, 1.0, (vocab, 1))).astype(np.float32),
        "position": (0.1 * rng.standard_normal((seq, dim))).astype(np.float32), "segment": (0.1 * rng.standard_normal((2, dim))).astype(np.float32),
        "gamma": np.ones(dim, np.float32), "beta": np.zeros(dim, np.float32),
        "w1": (rng.standard_normal((dim, 32)) / 4).astype(np.float32), "w2": (rng.standard_normal((32, dim)) / 6).astype(np.float32),
    }
    nodes = [
        helper.make_node("EmbedLayerNormalization", ["ids", "segments", "word", "position", "segment", "gamma", "beta", "mask"], ["embedded", "mask_index"],
                         name="embed", domain="com.microsoft", epsilon=1e-12),
        helper.make_node("MatMul", ["embedded", "w1"], ["h"], name="up"), helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="down"),
    ]
    inputs = [helper.make_tensor_value_info(name, TensorProto.INT32, [1, seq]) for name in ("ids", "segments", "mask")]
    graph = helper.make_graph(nodes, "fused_embedding", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, seq, dim])],
                              [onnx.numpy_helper.from_array(a, n) for n, a in arrays.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def test_the_tables_of_a_fused_embedding_node_are_stored_in_int8_rows_and_restored_at_load():
    from onnxslim.quant.tables import row_quantize

    model = fused_embedding_model()
    rng = np.random.default_rng(2)
    data = [{"ids": rng.integers(0, 4096, (1, 8)).astype(np.int32), "segments": np.zeros((1, 8), np.int32), "mask": np.ones((1, 8), np.int32)} for _ in range(15)]
    quantized, report = quantize(model, data, config=FAST)
    decision = next(d for d in report.decisions if d.node == "embed")
    assert decision.code == QuantReason.WEIGHT_ONLY and "word (65,536 values)" in decision.reason.text and "position" not in decision.reason.text
    stored = {t.name: t for t in quantized.graph.initializer}
    assert "word" not in stored and stored["word_int8"].data_type == TensorProto.INT8 and "position" in stored  # 128 values: too few
    assert report.sizes.quantized_bytes < 0.4 * report.sizes.fp32_bytes
    # onnxruntime folds the Cast and Mul when it loads the model: the fused node reads a float table, nothing is restored per run
    assert [n.op_type for n in optimized_graph(quantized).graph.node if n.op_type in ("Cast", "Mul")] == []
    values, scales = row_quantize(onnx.numpy_helper.to_array(model.graph.initializer[0]))
    restored = load_model(model)
    restored.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32) * scales[:, None], "word"))
    np.testing.assert_allclose(run_model(quantized, data[0])[0], run_model(restored, data[0])[0], rtol=0.05, atol=0.05)
    assert min(c.cosine for c in report.fidelity) > 0.99


def test_a_table_tied_to_an_output_projection_stays_float():
    from onnxslim.quant.tables import find_tables

    model = embedding_model(tied=True)
    (choice,) = find_tables(model)
    assert not choice.quantized and "also read by other nodes" in choice.reason


def test_a_tied_table_is_stored_once_in_int8_rows_with_its_output_layer():
    from onnxslim.quant.stored import tied_tables_read_by

    model = embedding_model(tied=True)
    assert {name: [n.name for n in readers] for name, readers in tied_tables_read_by(model, {"lm_head"}).items()} == {"table": ["lookup", "tie"]}
    assert not tied_tables_read_by(model, {"proj"})  # the projection that reads the table is not among the layers asked for
    data = [{"ids": np.random.default_rng(i).integers(0, 1000, (1, 16)).astype(np.int64)} for i in range(12)]
    quantized, report = quantize(model, data, config=FAST)
    decisions = {d.node: d for d in report.decisions}
    # the output projection reads the table through a Transpose: a layer with a weight, kept in float as the output layer
    assert decisions["lm_head"].code == QuantReason.OUTPUT_LAYER and "INT8 per output channel" in decisions["lm_head"].reason.text
    assert "tied" in decisions["lookup"].reason.text and report.kept_float_weights["written"] == "int8"
    arrays = {t.name: onnx.numpy_helper.to_array(t) for t in quantized.graph.initializer}
    tables = [a.dtype for a in arrays.values() if a.shape in ((1000, 128), (128, 1000))]
    assert tables == [np.int8]  # one copy, in INT8, restored to float when onnxruntime loads the model
    assert report.sizes.quantized_bytes < 0.4 * report.sizes.fp32_bytes
    assert min(c.cosine for c in report.fidelity) > 0.999


@pytest.mark.parametrize(("activation", "kernel", "pool"), [("silu", "QLinearSigmoid", "global"), ("leaky", "QLinearLeakyRelu", "global"), ("silu", "QLinearSigmoid", "reduce_mean")])
def test_silu_and_squeeze_excitation_run_on_integer_kernels(activation, kernel, pool):
    """x * Sigmoid(x) and the SE gate become QLinearSigmoid and QLinearMul in onnxruntime's optimized graph: no float island
    per block; the dynamo exporter's ReduceMean pooling runs as QLinearGlobalAveragePool."""
    model = ALL_BUILDERS["silu_se_block"](activation=activation, pool=pool)
    quantized, report = quantize(model, calibrate_on(model, 24), config=EVERY_LAYER)
    kernels = report.integer_kernels
    assert kernels.get("QLinearGlobalAveragePool") == 1
    assert kernels.get(kernel) == sum(1 for n in model.graph.node if n.op_type == {"silu": "Sigmoid", "leaky": "LeakyRelu"}[activation] and n.input[0] != "input")
    assert kernels.get("QLinearMul", 0) == sum(1 for n in model.graph.node if n.op_type == "Mul")
    assert kernels.get("QLinearConv") == sum(1 for n in model.graph.node if n.op_type == "Conv")
    assert_close_to_float(model, quantized, 0.99)


def test_a_gelu_between_quantized_convolutions_runs_as_one_float_kernel():
    """onnxruntime does not fuse a spelled-out GELU whose input is a DequantizeLinear (each reader gets its own copy):
    quantize fuses it, so the float island is one Gelu instead of Div, Erf, Add and two Muls."""
    b = GraphBuilder(41)
    x = b.conv("input", 3, 16)
    erf = b.node("Erf", [b.node("Div", [x, b.const(np.array(np.sqrt(2.0), np.float32))])])
    gelu = b.node("Mul", [b.node("Mul", [x, b.node("Add", [erf, b.const(np.array(1.0, np.float32))])]), b.const(np.array(0.5, np.float32))])
    y = b.conv(b.node("Relu", [b.conv(gelu, 16, 16)]), 16, 4, k=1)
    model = b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])], [helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, 4, 16, 16])], "conv_gelu")
    quantized, report = quantize(model, calibrate_on(model, 16), config=EVERY_LAYER)
    assert any(r.name == "fuse-gelu" and r.modified for r in report.prepare)
    kernels = report.onnxruntime_kernels
    assert kernels.get("Gelu") == 1 and "Erf" not in kernels and "Div" not in kernels, kernels
    assert report.integer_kernels.get("QLinearConv") == 3
    assert_close_to_float(model, quantized, 0.99)


def prelu_block(slopes: np.ndarray, tail: bool = True, exposed: bool = False, channels: int | None = None):
    """Conv -> PRelu (per-channel slopes, or one for all ``channels``) -> Conv, as face-recognition ResNets write every
    block; ``tail=False``: the PRelu's output is the graph's; ``exposed``: a graph output besides the Conv's input."""
    b = GraphBuilder(43)
    channels = channels or slopes.size
    x = b.node("PRelu", [b.conv("input", 3, channels), b.const(slopes.reshape(-1, 1, 1).astype(np.float32))])
    y = b.conv(x, channels, 4, k=1) if tail else x
    outputs = [helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, 4 if tail else channels, 16, 16])]
    if exposed:
        outputs.append(helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, channels, 16, 16]))
    return b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])], outputs, "conv_prelu")


def test_a_prelu_between_quantized_layers_runs_as_max_of_codes():
    """PRelu(x) = max(x, slope * x) for slopes in [0, 1]: a QLinearMul on x's grid and a Max of UINT8 codes, no float
    island; the slope rounds to one of 256 codes, so the result is within one step of x's grid of the float PRelu's."""
    slopes = np.linspace(0.0, 1.0, 16)
    model = prelu_block(slopes)
    quantized, report = quantize(model, calibrate_on(model, 24), config=EVERY_LAYER)
    prelu = next(n.name for n in model.graph.node if n.op_type == "PRelu")
    assert next(d for d in report.decisions if d.node == prelu).code == QuantReason.INTEGER_KERNEL
    kernels = report.onnxruntime_kernels
    assert "PRelu" not in kernels and kernels.get("QLinearMul") == 1 and kernels.get("Max") == 1, kernels
    assert kernels["DequantizeLinear"] == 1, kernels  # only the graph output's
    assert_close_to_float(model, quantized, 0.995)
    # the codes after the Max: those of the float PRelu of x's dequantized values, within one step
    codes = next(n.output[0] for n in quantized.graph.node if n.op_type == "Max")
    x_codes = next(n.input[0] for n in quantized.graph.node if n.op_type == "Max")
    probe = onnx.ModelProto()
    probe.CopyFrom(quantized)
    probe.graph.output.extend([helper.make_tensor_value_info(codes, TensorProto.UINT8, None), helper.make_tensor_value_info(x_codes, TensorProto.UINT8, None)])
    scale = next(numpy_helper.to_array(t) for t in quantized.graph.initializer if t.name == next(n for n in quantized.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == x_codes).input[1])
    zero = next(numpy_helper.to_array(t) for t in quantized.graph.initializer if t.name == next(n for n in quantized.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == x_codes).input[2])
    for feed in sample_inputs(model, 3, seed=7):
        got, xq = run_model(probe, feed)[-2:]
        x = (xq.astype(np.float32) - zero) * scale
        wanted = np.clip(np.round(np.where(x > 0, x, x * slopes.reshape(-1, 1, 1)) / scale) + zero, 0, 255)
        assert np.abs(got.astype(np.int32) - wanted).max() <= 1


@pytest.mark.parametrize("slope", [-0.2, 0.25, 1.5])
def test_a_prelu_with_one_slope_runs_as_qlinear_leaky_relu_whatever_the_slope(slope):
    """torch's nn.PReLU() keeps one slope for every channel: that is LeakyRelu, whose integer kernel is a table of every
    code's exact result, so any slope runs in integers (no rounding of the slope, no Max)."""
    model = prelu_block(np.array([slope]), channels=16)
    quantized, report = quantize(model, calibrate_on(model, 24), config=EVERY_LAYER)
    decision = next(d for d in report.decisions if d.op_type == "PRelu")
    assert decision.code == QuantReason.INTEGER_KERNEL and "QLinearLeakyRelu" in decision.reason.text
    kernels = report.onnxruntime_kernels
    assert kernels.get("QLinearLeakyRelu") == 1 and "Max" not in kernels and "PRelu" not in kernels, kernels
    assert_close_to_float(model, quantized, 0.995)


def test_a_prelu_with_negative_slopes_runs_on_its_own_grid():
    """MTCNN's slopes run from -0.73 to 0.75: max(x, slope * x) still holds (every slope at most 1), but slope * x of a
    negative x can pass x's largest value, so x and slope * x both go onto the output's own grid before the Max."""
    slopes = np.linspace(-0.7, 0.75, 16)
    model = prelu_block(slopes)
    quantized, report = quantize(model, calibrate_on(model, 24), config=EVERY_LAYER)
    decision = next(d for d in report.decisions if d.op_type == "PRelu")
    assert decision.code == QuantReason.INTEGER_KERNEL and "output's UINT8 grid" in decision.reason.text
    kernels = report.onnxruntime_kernels
    assert "PRelu" not in kernels and kernels.get("QLinearMul") == 2 and kernels.get("Max") == 1, kernels
    assert kernels["DequantizeLinear"] == 1, kernels
    assert_close_to_float(model, quantized, 0.995)


def test_a_prelu_with_slopes_above_one_takes_the_min_in_those_channels():
    """MediaPipe's TFLite nets mix slopes below 0, in [0, 1] and above 1 in one PRelu: where a slope is above 1,
    PRelu(x) = min(x, slope * x). x and slope * x go onto the output's grid (QLinearMul), a Max and a Min of their codes,
    and a Max and a Min with constant codes per channel pick each one's: no float island, within one step of the output's
    grid of the float PRelu of x's dequantized values (the slope's and the product's roundings)."""
    slopes = np.linspace(-0.6, 1.8, 16)
    model = prelu_block(slopes)
    quantized, report = quantize(model, calibrate_on(model, 24), config=EVERY_LAYER)
    decision = next(d for d in report.decisions if d.op_type == "PRelu")
    assert decision.code == QuantReason.INTEGER_KERNEL and "above 1" in decision.reason.text
    kernels = report.onnxruntime_kernels
    assert "PRelu" not in kernels and kernels.get("QLinearMul") == 2 and kernels.get("Max") == kernels.get("Min") == 2, kernels
    assert kernels["DequantizeLinear"] == 1, kernels  # only the graph output's
    assert_close_to_float(model, quantized, 0.995)
    picked = next(n for n in quantized.graph.node if n.op_type == "Min" and any(m.op_type == "DequantizeLinear" and n.output[0] == m.input[0] for m in quantized.graph.node))
    source = next(n for n in quantized.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == next(
        m for m in quantized.graph.node if m.op_type == "Mul" and m.output[0].endswith("input_on_output_grid")).input[0])
    output = next(n for n in quantized.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == picked.output[0])
    probe = onnx.ModelProto()
    probe.CopyFrom(quantized)
    probe.graph.output.extend([helper.make_tensor_value_info(picked.output[0], TensorProto.UINT8, None),
                               helper.make_tensor_value_info(source.input[0], TensorProto.UINT8, None)])
    constant = {t.name: numpy_helper.to_array(t) for t in quantized.graph.initializer}
    x_scale, x_zero = constant[source.input[1]], constant[source.input[2]].astype(np.float32)
    out_scale, out_zero = constant[output.input[1]], constant[output.input[2]].astype(np.float32)
    for feed in sample_inputs(model, 3, seed=7):
        got, x_codes = run_model(probe, feed)[-2:]
        x = (x_codes.astype(np.float32) - x_zero) * x_scale
        wanted = np.clip(np.round(np.where(x > 0, x, x * slopes.reshape(-1, 1, 1)) / out_scale) + out_zero, 0, 255)
        assert np.abs(got.astype(np.int32) - wanted).max() <= 1


def test_a_prelu_read_in_float_stays_in_float():
    """A PRelu no quantized node reads would only add a rounding, but one that is a graph output and read by a quantized
    layer too keeps the integer form."""
    model = prelu_block(np.linspace(0.0, 0.5, 8), tail=False)
    quantized, report = quantize(model, calibrate_on(model), config=EVERY_LAYER)
    decision = next(d for d in report.decisions if d.op_type == "PRelu")
    assert decision.code == QuantReason.KEPT_FLOAT and "no quantized node reads its output" in decision.reason.text
    assert ops(quantized)["PRelu"] == 1 and "Max" not in ops(quantized)
    # a graph output that a quantized layer also reads: the layer needs its codes, the output reads them dequantized
    model = prelu_block(np.linspace(0.0, 0.5, 8), exposed=True)
    quantized, report = quantize(model, calibrate_on(model), config=EVERY_LAYER)
    assert next(d for d in report.decisions if d.op_type == "PRelu").code == QuantReason.INTEGER_KERNEL
    assert report.integer_kernels.get("QLinearConv") == 2 and "Max" in ops(quantized)
    assert_close_to_float(model, quantized, 0.99)


@pytest.mark.parametrize(("narrow", "wide"), [(32, 48), (24, 28)])
def test_a_shortcut_widened_by_a_pad_stays_in_integers(narrow, wide):
    """BlazeFace's shortcut: a Pad of zero channels runs on its input's UINT8 codes (padding with the zero point), so the
    Add it feeds is a QLinearAdd; where the widths are not multiples of 16, the depthwise layers' padding takes the Pad's
    channels with it (24 -> 32 and 28 -> 32: the Pad adds none and is left out)."""
    model = widening_residual(narrow, wide)
    quantized, report = quantize(model, calibrate_on(model, 24), config=EVERY_LAYER)
    decisions = {d.op_type: d for d in report.decisions}
    assert decisions["Add"].code == QuantReason.INTEGER_KERNEL
    kernels = report.onnxruntime_kernels
    assert "Add" not in kernels and kernels["QLinearAdd"] == 1 and kernels["DequantizeLinear"] == 1, kernels  # only the graph output's
    shortcut = next(n.name for n in model.graph.node if n.op_type == "Pad")
    pads = [n for n in quantized.graph.node if n.name == shortcut]  # (the RGB stem's input gets a Pad of its own)
    if narrow % 16:
        assert not pads
    else:
        assert decisions["Pad"].code == QuantReason.SHARED_SCALE
        (pad,) = pads
        assert next(n for n in quantized.graph.node if pad.input[0] in n.output).op_type == "QuantizeLinear"
        assert numpy_helper.to_array(next(t for t in quantized.graph.initializer if t.name == pad.input[2])).dtype == np.uint8
    assert_close_to_float(model, quantized, 0.995)


def test_hardswish_blocks_run_on_integer_kernels_with_aligned_depthwise_channels():
    """MobileNetV3's HardSwish and HardSigmoid become QLinearAdd (+ QLinearMul) on UINT8, and its 24-channel depthwise
    layer is padded to 32 so onnxruntime's fast integer depthwise kernel runs it; the function is unchanged."""
    model = ALL_BUILDERS["hardswish_block"]()
    quantized, report = quantize(model, calibrate_on(model, 24), config=EVERY_LAYER)
    hard = [n.name for n in model.graph.node if n.op_type in ("HardSwish", "HardSigmoid")]
    decisions = {d.node: d for d in report.decisions}
    assert all(decisions[name].code == QuantReason.INTEGER_KERNEL for name in hard)
    kernels = report.onnxruntime_kernels
    assert not {"HardSwish", "HardSigmoid"} & set(kernels) and kernels["DequantizeLinear"] == 1, kernels  # only the graph output's
    assert kernels["QLinearAdd"] == len(hard) + 1  # and the residual Add
    assert kernels["QLinearMul"] == sum(1 for n in model.graph.node if n.op_type == "HardSwish") + 1  # and the SE scale
    alignment = next(r for r in report.prepare if r.name == "align-depthwise-channels")
    assert "from 24 to 32 channels" in alignment.changes[0]
    depthwise = next(n for n in quantized.graph.node if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute))
    assert next(a.i for a in depthwise.attribute if a.name == "group") == 32
    assert [a.i for n in model.graph.node for a in n.attribute if a.name == "group" and a.i > 1] == [24]  # the input model is left as it was
    assert_close_to_float(model, quantized, 0.99)


def test_the_fp32_fallback_is_written_without_the_aligned_channels(monkeypatch):
    model = ALL_BUILDERS["hardswish_block"]()
    slower = LatencyComparison(1, {"median_ms": 1.0, "runs": 3}, {"median_ms": 1.4, "runs": 3})
    monkeypatch.setattr(timing_step, "latency_ratios", lambda *a, **k: (slower, None))
    written, report = quantize(model, calibrate_on(model), config=QuantConfig(latency_runs=3))
    assert report.written == "fp32"
    groups = [a.i for n in written.graph.node for a in n.attribute if a.name == "group" and a.i > 1]
    assert groups == [24]


def test_the_fp32_fallback_has_its_parallel_matmuls_merged_too(monkeypatch):
    model = _with_dynamic_sequence(transformer_block())
    slower = LatencyComparison(1, {"median_ms": 1.0, "runs": 3}, {"median_ms": 1.4, "runs": 3})
    monkeypatch.setattr(timing_step, "latency_ratios", lambda *a, **k: (slower, None))
    data = [{"input": np.random.default_rng(i).standard_normal((1, 8, 32)).astype(np.float32)} for i in range(12)]
    written, report = quantize(model, data, config=QuantConfig(latency_runs=3))
    assert report.written == "fp32" and not any(n.op_type == "QuantizeLinear" for n in written.graph.node)
    assert ops(written)["Split"] == 1 and ops(written)["MatMul"] == ops(model)["MatMul"] - 2
    feed = {"input": np.random.default_rng(99).standard_normal((1, 5, 32)).astype(np.float32)}
    np.testing.assert_allclose(run_model(model, feed)[0], run_model(written, feed)[0], rtol=1e-4, atol=1e-4)


def test_a_hardswish_no_quantized_node_reads_stays_float():
    """HardSwish -> Mul by a constant (float): an integer HardSwish would only round its gate and output once more."""
    b = GraphBuilder(25)
    x = b.node("HardSwish", [b.conv("input", 3, 16)])
    x = b.node("HardSwish", [b.conv(x, 16, 16)])
    y = b.node("Mul", [x, b.const(np.full((16, 1, 1), 0.5, np.float32), "scale")])
    y = b.conv(y, 16, 8, k=1)
    model = b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])], [helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, 8, 16, 16])], "hardswish_then_affine")
    quantized, report = quantize(model, calibrate_on(model, 24), config=EVERY_LAYER)
    first, second = [d for d in report.decisions if d.op_type == "HardSwish"]
    assert first.code == QuantReason.INTEGER_KERNEL  # read by the second Conv, quantized
    assert second.code == QuantReason.KEPT_FLOAT and "no quantized node reads" in second.reason.text
    assert sum(1 for n in quantized.graph.node if n.op_type == "HardSwish") == 1
    assert_close_to_float(model, quantized, 0.99)


def _learnable_affine_block(after: str = "conv", scale: float = 1.7) -> onnx.ModelProto:
    """Conv -> HardSwish -> Mul(scalar) -> Add(scalar) -> Conv (PP-LCNet's learnable affine block), or the affine's output as the graph output."""
    b = GraphBuilder(26)
    x = b.node("HardSwish", [b.conv("input", 3, 16)])
    x = b.node("Mul", [x, b.const(np.asarray([scale], np.float32), "lab_scale")])
    x = b.node("Add", [x, b.const(np.asarray(-0.3, np.float32), "lab_bias")])
    channels = 16
    if after == "conv":
        x, channels = b.conv(x, 16, 8), 8
    return b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
                   [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, channels, 16, 16])], "learnable_affine")


INTEGER_AFFINE = QuantConfig(latency_runs=0, output_layers="int8", scalar_affine="int8")


def test_a_scalar_affine_between_quantized_layers_is_read_from_the_codes_before_it():
    model = _learnable_affine_block()
    quantized, report = quantize(model, calibrate_on(model, 24), config=INTEGER_AFFINE)
    decisions = {d.op_type: d for d in report.decisions if d.op_type in ("HardSwish", "Mul", "Add")}
    assert decisions["HardSwish"].code == QuantReason.INTEGER_KERNEL
    for op in ("Mul", "Add"):
        assert decisions[op].code == QuantReason.FOLDED and "1.7 * x + -0.3 read from the codes of" in decisions[op].reason.text, decisions[op]
    kernels = report.onnxruntime_kernels
    # the HardSwish's gate and product are all that is left of the block: no integer op for the scale and shift
    assert kernels["QLinearAdd"] == 1 and kernels["QLinearMul"] == 1 and kernels["QLinearConv"] == 2, kernels
    assert not {"HardSwish", "HardSigmoid", "Mul", "Add"} & set(kernels) and kernels["DequantizeLinear"] == 1, kernels  # only the graph output's
    assert not any(i.startswith(("lab_scale", "lab_bias")) for n in quantized.graph.node for i in n.input)
    assert any(p.name == "scalar-affines-into-dequantize" and p.modified for p in report.prepare)
    assert_close_to_float(model, quantized, 0.99)


def test_a_negative_scalar_scale_runs_in_integers_with_its_constants_exact():
    model = _learnable_affine_block(scale=-1.7)  # no dequantization has a negative scale: QLinearMul and QLinearAdd instead
    quantized, report = quantize(model, calibrate_on(model, 24), config=INTEGER_AFFINE)
    decisions = {d.op_type: d for d in report.decisions if d.op_type in ("HardSwish", "Mul", "Add")}
    assert all(d.code == QuantReason.INTEGER_KERNEL for d in decisions.values()), decisions
    kernels = report.onnxruntime_kernels
    assert not {"HardSwish", "HardSigmoid", "Mul", "Add"} & set(kernels) and kernels["DequantizeLinear"] == 1, kernels  # only the graph output's
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in quantized.graph.initializer}
    for constant, expected in (("lab_scale", np.float32(-1.7)), ("lab_bias", np.float32(-0.3))):
        (dq,) = [n for n in quantized.graph.node if n.op_type == "DequantizeLinear" and n.input[0].startswith(constant)]
        codes, scale, zero = (inits[name] for name in dq.input)
        assert codes.dtype == np.uint8 and codes.size == 1
        assert np.float32(scale) * np.float32(int(codes.ravel()[0]) - int(zero)) == expected  # exact, not rounded to a grid
    assert_close_to_float(model, quantized, 0.99)


def test_a_scalar_affine_that_ends_the_graph_stays_float():
    model = _learnable_affine_block(after="output")
    quantized, report = quantize(model, calibrate_on(model, 24), config=INTEGER_AFFINE)
    decisions = {d.op_type: d for d in report.decisions if d.op_type in ("HardSwish", "Mul", "Add")}
    assert all(d.code == QuantReason.KEPT_FLOAT and "no quantized node reads" in d.reason.text for d in decisions.values()), decisions
    assert {n.op_type for n in quantized.graph.node} >= {"HardSwish", "Mul", "Add"}
    assert_close_to_float(model, quantized, 0.99)


def test_a_scalar_affine_that_is_a_graph_output_and_read_by_a_quantized_layer_stays_integer():
    """The layer after it needs its codes, so the integer form stays (it used to be undone for being a graph output, and the
    layer's bias then asked for a scale the plan no longer had: a KeyError)."""
    for op, value in (("Add", -0.3), ("Mul", -0.5)):
        b = GraphBuilder(5)
        x = b.node("MaxPool", [b.node("Relu", [b.conv("input", 3, 8)])], kernel_shape=[2, 2], strides=[2, 2])
        y = b.node(op, [x, b.const(np.array(value, np.float32))])
        z = b.conv(y, 8, 4, k=1)
        model = b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
                        [helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, 8, 8, 8]), helper.make_tensor_value_info(z, TensorProto.FLOAT, [1, 4, 8, 8])], "affine_exposed")
        quantized, report = quantize(model, calibrate_on(model, 24), config=INTEGER_AFFINE)
        assert next(d for d in report.decisions if d.op_type == op).quantized  # QLinear form, or read from the codes before it
        assert report.integer_kernels.get("QLinearConv") == 2
        assert_close_to_float(model, quantized, 0.99)


def _affine_decisions(report) -> dict:
    return {d.op_type: d for d in report.decisions if d.op_type in ("Mul", "Add")}


def test_scalar_affine_auto_keeps_the_float_form_when_it_cannot_time_it(monkeypatch):
    model = _learnable_affine_block()
    data = calibrate_on(model, 24)
    from onnxslim.quant import pipeline

    observed = []
    real = pipeline.calibrate
    monkeypatch.setattr(pipeline, "calibrate", lambda model, needed, *args, **kwargs: observed.append(set(needed)) or real(model, needed, *args, **kwargs))
    quantized, report = quantize(model, data, config=EVERY_LAYER)  # the default is auto; timing is off
    assert report.scalar_affine["written"] == "float" and report.scalar_affine["nodes"] == 2
    # one calibration pass, of what the float form needs: a form that is not measured is not observed either
    (untimed,) = observed
    observed.clear()
    quantize(model, data, config=dataclasses.replace(EVERY_LAYER, latency_runs=3))
    # timed, the same pass, then one for the tensors the integer form adds (those already observed are not again), once the
    # budget has left it its nodes
    first, integer_form = observed
    assert first == untimed and integer_form > first
    observed.clear()
    conv = next(n.name for n in model.graph.node if n.op_type == "Conv")
    _, kept = quantize(model, data, config=dataclasses.replace(EVERY_LAYER, latency_runs=3, exclude_nodes=(conv,)))
    assert len(observed) == 1 and not kept.scalar_affine  # beside a layer in float the integer form has no node: nothing to observe
    assert "not measured" in report.scalar_affine["why"]
    assert all(d.code == QuantReason.KEPT_FLOAT and "not measured" in d.reason.text for d in _affine_decisions(report).values())
    assert {"Mul", "Add"} <= {n.op_type for n in quantized.graph.node if not n.input[0].endswith("dequantized")}
    _, forced = quantize(model, data, config=QuantConfig(latency_runs=0, output_layers="int8", scalar_affine="float"))
    assert forced.scalar_affine == {}  # only auto measures and reports
    _, plain = quantize(conv_bn_relu(), calibrate_on(conv_bn_relu()), config=EVERY_LAYER)
    assert plain.scalar_affine == {}  # nothing to choose


def _fake_timing(ratio_at_threads, ratio_at_one):
    def fake(reference, candidate, feed, *, threads, one_thread_when=None, **kwargs):
        def comparison(ratio, count):
            return LatencyComparison(count, {"median_ms": 1.0, "runs": 3}, {"median_ms": ratio, "runs": 3}) if ratio is not None else None
        first = comparison(ratio_at_threads, threads)
        return first, comparison(ratio_at_one, 1) if one_thread_when is None or one_thread_when(first) else None
    return fake


@pytest.mark.parametrize(("at_threads", "at_one", "written", "why"), [
    (0.8, 0.9, "int8", "0.80x the float form's latency"),
    (0.99, 0.8, "int8", ", 0.80x at 1 thread"),  # a tie where deployed, faster at 1 thread
    (0.99, 0.99, "float", "not faster"),
    (1.05, 0.8, "float", "not faster"),
    (0.8, 1.05, "float", "slower at 1 thread"),
])
def test_scalar_affine_auto_writes_the_integer_form_only_when_measured_faster(monkeypatch, at_threads, at_one, written, why):
    import onnxslim.quant.affine as affine_step

    model = _learnable_affine_block()
    monkeypatch.setattr(affine_step, "latency_ratios", _fake_timing(at_threads, at_one))
    quantized, report = quantize(model, calibrate_on(model, 24), config=QuantConfig(latency_runs=3, output_layers="int8", if_slower="write"))
    assert report.scalar_affine["written"] == written and why in report.scalar_affine["why"], report.scalar_affine
    assert report.scalar_affine["latency_vs_float_form"] == pytest.approx(at_threads)
    # a form slower where it is deployed is not timed again at 1 thread
    assert ("latency_vs_float_form_1_thread" in report.scalar_affine) == (at_threads < 1 / 0.97)
    # the held-out set is run through the integer form only once it is measured faster
    assert ("worst_score_integer_form" in report.scalar_affine) == (written == "int8")
    integer = written == "int8"
    assert all(d.quantized == integer for d in _affine_decisions(report).values())
    # integer: read from the codes before it, no Mul left
    assert any(n.op_type == "Mul" and any(i.startswith("lab_scale") for i in n.input) for n in quantized.graph.node) != integer
    assert report.to_dict()["scalar_affine"]["written"] == written
    assert_close_to_float(model, quantized, 0.99)


def test_scalar_affine_auto_keeps_the_float_form_when_the_integer_form_misses_the_budget(monkeypatch):
    import onnxslim.quant.affine as affine_step

    model = _learnable_affine_block()
    data = calibrate_on(model, 24)
    monkeypatch.setattr(affine_step, "latency_ratios", _fake_timing(0.5, 0.5))
    settings = {"latency_runs": 3, "output_layers": "int8", "if_slower": "write"}
    _, unbounded = quantize(model, data, config=QuantConfig(accuracy_budget=None, **settings))
    scores = unbounded.scalar_affine
    assert scores["written"] == "int8" and scores["worst_score_integer_form"] < scores["worst_score_float_form"]  # the extra rounding costs a little
    between = (scores["worst_score_integer_form"] + scores["worst_score_float_form"]) / 2
    _, report = quantize(model, data, config=QuantConfig(accuracy_budget=between, **settings))
    assert report.scalar_affine["written"] == "float" and "misses the accuracy budget" in report.scalar_affine["why"]
    assert not report.kept_float_for_budget  # the float form met the budget by itself


def test_layers_kept_in_float_for_the_budget_store_their_weights_in_int8():
    model, data = outlier_mlp(), outlier_inputs(30)
    first = model.graph.node[0]
    quantized, report = quantize(model, data, config=UNSMOOTHED)
    assert [k["node"] for k in report.kept_float_for_budget] == [first.name]
    (kept,) = [n for n in quantized.graph.node if n.name == first.name]
    producers = {o: n for n in quantized.graph.node for o in n.output}
    rescale = producers[kept.input[1]]
    cast = producers[rescale.input[0]]
    assert (rescale.op_type, cast.op_type) == ("Mul", "Cast")
    stored = {t.name: numpy_helper.to_array(t) for t in quantized.graph.initializer}
    codes, scales = stored[cast.input[0]], stored[rescale.input[1]]
    original = numpy_helper.to_array({t.name: t for t in model.graph.initializer}[first.input[1]])
    assert codes.dtype == np.int8 and scales.shape == (1, original.shape[1])  # a scale per output column of the MatMul
    np.testing.assert_allclose(codes * scales, original, atol=float(scales.max()) / 2 + 1e-7)
    assert first.input[1] not in stored  # the float32 copy is gone
    assert "weights stored in INT8 per output channel" in next(d for d in report.decisions if d.node == first.name).reason.text
    assert "Cast" not in report.onnxruntime_kernels and "Mul" not in report.onnxruntime_kernels  # folded when onnxruntime loads the model
    assert min(c.cosine for c in report.fidelity) >= 0.99  # the budget was measured with the INT8 weights
    # the output layer, kept in float by the plan, stores its weights so too
    (output_layer,) = [d for d in report.decisions if d.code == QuantReason.OUTPUT_LAYER]
    assert "weights stored in INT8" in output_layer.reason.text
    assert report.kept_float_weights["written"] == "int8" and report.kept_float_weights["layers"] == 2
    assert report.kept_float_weights["bytes_saved"] >= original.size * 3 - 1024
    _, half = quantize(model, data, config=QuantConfig(latency_runs=0, smooth=None, kept_float_weights="float16"))
    assert half.kept_float_weights["written"] == "float16"
    assert half.sizes.quantized_bytes - report.sizes.quantized_bytes >= original.size * 2 - 1024
    _, full = quantize(model, data, config=QuantConfig(latency_runs=0, smooth=None, kept_float_weights="float32"))
    assert full.sizes.quantized_bytes - report.sizes.quantized_bytes >= original.size * 3 - 1024
    assert "stored" not in next(d for d in full.decisions if d.node == first.name).reason.text


def test_layers_kept_in_float_store_float16_weights_when_asked():
    model, data = outlier_mlp(), outlier_inputs(30)
    first = model.graph.node[0]
    quantized, report = quantize(model, data, config=QuantConfig(latency_runs=0, smooth=None, kept_float_weights="float16"))
    (kept,) = [n for n in quantized.graph.node if n.name == first.name]
    (cast,) = [n for n in quantized.graph.node if n.output[0] == kept.input[1]]
    assert cast.op_type == "Cast"
    half = {t.name: t for t in quantized.graph.initializer}[cast.input[0]]
    assert half.data_type == TensorProto.FLOAT16
    original = numpy_helper.to_array({t.name: t for t in model.graph.initializer}[first.input[1]])
    np.testing.assert_array_equal(numpy_helper.to_array(half), original.astype(np.float16))
    assert "weights stored in float16" in next(d for d in report.decisions if d.node == first.name).reason.text
    assert report.kept_float_weights["written"] == "float16" and "worst_score_int8" not in report.kept_float_weights


def test_int8_weights_that_move_the_outputs_more_than_a_little_give_way_to_float16(monkeypatch):
    import onnxslim.quant.pipeline as pipeline_step

    model, data = outlier_mlp(), outlier_inputs(30)
    _, free = quantize(model, data, config=UNSMOOTHED)
    moved = free.kept_float_weights["worst_score_float32"] - free.kept_float_weights["worst_score_int8"]
    assert free.kept_float_weights["written"] == "int8" and moved <= pipeline_step.INT8_WEIGHTS_SCORE_DROP
    monkeypatch.setattr(pipeline_step, "INT8_WEIGHTS_SCORE_DROP", moved / 2 if moved > 0 else -1.0)  # within the budget, but more than allowed
    _, report = quantize(model, data, config=UNSMOOTHED)
    assert report.kept_float_weights["written"] == "float16" and "with int8 weights an output's cosine falls to" in report.kept_float_weights["why"]


def test_float16_weights_leave_shared_tiny_and_small_weights_as_they_are():
    from onnxslim.quant.half_weights import store_weights_in_half

    rng = np.random.default_rng(3)
    weights = {"shared": rng.standard_normal((64, 128)), "tiny": 1e-7 * rng.standard_normal((128, 128)), "small": rng.standard_normal((128, 16)),
               "back": rng.standard_normal((16, 128)), "own": rng.standard_normal((128, 64))}
    steps = [("kept_a", "input", "shared", "a"), ("quantized_c", "input", "shared", "c"), ("kept_tiny", "ac", "tiny", "t"),
             ("kept_small", "t", "small", "s"), ("quantized_back", "s", "back", "k"), ("kept_own", "k", "own", "out")]
    nodes = [helper.make_node("MatMul", [x, w], [y], name=name) for name, x, w, y in steps]
    nodes.insert(2, helper.make_node("Add", ["a", "c"], ["ac"], name="add"))
    graph = helper.make_graph(nodes, "half", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 64])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 64])],
                              [numpy_helper.from_array((w / 8).astype(np.float32), name) for name, w in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    feed = {"input": rng.standard_normal((2, 64)).astype(np.float32)}
    before = run_model(model, feed)[0]
    changed = store_weights_in_half(model, {"kept_a", "kept_tiny", "kept_small", "kept_own"})
    assert changed == ["kept_own"]  # "shared" is also read by a quantized node; "tiny" falls below float16's range; "small" has 2,048 values
    types = {t.name: t.data_type for t in model.graph.initializer}
    assert types["shared"] == types["tiny"] == types["small"] == TensorProto.FLOAT and "own" not in types
    onnx.checker.check_model(model)
    after = run_model(model, feed)[0]
    assert np.abs(after - before).max() <= 2e-3 * np.abs(before).max()


@pytest.mark.parametrize("storage, element, setting, written", [("int8", TensorProto.INT8, "int8", "float16"),
                                                                  ("float16", TensorProto.FLOAT16, "float16", "float32")])
def test_stored_weights_that_break_the_budget_give_way(monkeypatch, storage, element, setting, written):
    import onnxslim.quant.pipeline as pipeline_step

    store = pipeline_step.STORAGE[storage]

    def stored_and_wrong(model, nodes, **kwargs):  # stored weights that move the outputs far off
        changed = store(model, nodes, **kwargs)
        for tensor in model.graph.initializer:
            if tensor.data_type == element:
                tensor.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(tensor), tensor.name))
        return changed

    monkeypatch.setitem(pipeline_step.STORAGE, storage, stored_and_wrong)
    model, data = outlier_mlp(), outlier_inputs(30)
    quantized, report = quantize(model, data, config=QuantConfig(latency_runs=0, smooth=None, kept_float_weights=setting))
    entry = report.kept_float_weights
    assert entry["written"] == written and entry[f"worst_score_{storage}"] < 0.99 <= entry[f"worst_score_{written}"]
    assert f"with {storage} weights an output's cosine falls to" in entry["why"]
    stored = {t.name: t.data_type for t in quantized.graph.initializer}
    assert not any(n.op_type == "Cast" and stored.get(n.input[0]) == element for n in quantized.graph.node)  # no weight restored at load
    assert min(c.cosine for c in report.fidelity) >= 0.99
    assert not any(f"weights stored in {'INT8' if storage == 'int8' else 'float16'}" in d.reason.text for d in report.decisions)



def test_where_every_kept_layer_cannot_store_smaller_weights_those_holding_most_of_the_bytes_do(monkeypatch):
    """The first layer (kept in float by the budget, 4,096 weights) moves the outputs with any stored form; the output layer
    (65,536 weights, 94% of the bytes) does not: it alone stores INT8 weights."""
    import onnxslim.quant.pipeline as pipeline_step

    b = GraphBuilder(15)
    x = "input"
    for i in range(3):
        w = b.weight(64, 64).T.copy()
        if i == 0:
            w[0, :] = 0.0  # the outlier channel of outlier_inputs sets its input scale: the budget keeps it in float
        x = b.node("Relu", [b.node("MatMul", [x, b.const(w)])])
    head = b.node("MatMul", [x, b.const(b.weight(1024, 64).T.copy())])
    _rename_output(b, head, "scores")
    model = b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
                    [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 1024])], "wide_head")
    first, output_layer = model.graph.node[0].name, model.graph.node[-1].name

    def small_ones_wrong(store):
        def stored(model, nodes, **kwargs):
            before = {t.name for t in model.graph.initializer}
            changed = store(model, nodes, **kwargs)
            for tensor in model.graph.initializer:
                if tensor.name not in before and tensor.data_type in (TensorProto.INT8, TensorProto.FLOAT16) and int(np.prod(tensor.dims)) < 10_000:
                    tensor.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(tensor), tensor.name))
            return changed
        return stored

    for storage in ("int8", "float16"):
        monkeypatch.setitem(pipeline_step.STORAGE, storage, small_ones_wrong(pipeline_step.STORAGE[storage]))
    quantized, report = quantize(model, outlier_inputs(30), config=UNSMOOTHED)
    entry = report.kept_float_weights
    assert [k["node"] for k in report.kept_float_for_budget] == [first]
    assert entry["worst_score_int8"] < 0.99 and entry["worst_score_float16"] < 0.99  # every kept layer: the first breaks the outputs
    assert entry["written"] == "int8" and entry["layers"] == 1 and entry["worst_score_int8_largest"] >= 0.99
    assert "1 of the 2 layer(s) kept in float, those holding most of the bytes, store int8 weights" in entry["why"]
    reasons = {d.node: d.reason.text for d in report.decisions}
    assert "weights stored in INT8" in reasons[output_layer] and "stored" not in reasons[first]
    assert min(c.cosine for c in report.fidelity) >= 0.99
    assert entry["bytes_saved"] > 65536 * 4 * 0.7  # INT8 codes and a scale per output channel for float32 weights

def test_biases_onnxruntime_does_not_fuse_are_seen_and_kept_float():
    # an input of unknown rank: the planner assumes a QGemm, onnxruntime cannot build one and would dequantize the
    # INT32 bias on every run; its optimized graph says so, and the MatMul is planned again with its float bias
    b = GraphBuilder(31)
    x = b.node("Reshape", ["input", "shape"])  # a shape given at run time: neither inference knows the rank
    h = b.node("Relu", [b.node("Add", [b.node("MatMul", [x, b.const(b.weight(16, 16).T.copy())]), b.const(np.ones(16, np.float32))])])
    y = b.node("MatMul", [h, b.const(b.weight(16, 16).T.copy())])
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [6, 16]), helper.make_tensor_value_info("shape", TensorProto.INT64, ["rank"])]
    model = b.model(inputs, [helper.make_tensor_value_info(y, TensorProto.FLOAT, ["a", "b", "c"])], "unknown_rank")
    rng = np.random.default_rng(5)
    data = [{"input": rng.standard_normal((6, 16)).astype(np.float32), "shape": np.array([2, 3, 16], np.int64)} for _ in range(12)]
    quantized, report = quantize(model, data, config=QuantConfig(latency_runs=0, output_layers="int8", accuracy_budget=None))
    assert not int32_dequantized_at_run_time(quantized) and report.integer_kernels.get("MatMulIntegerToFloat") == 2
    assert not stored_dq(quantized, initializers(quantized), np.int32)
    first = next(d for d in report.decisions if d.op_type == "MatMul")
    assert "float bias" in first.reason.text


def test_integer_matmuls_onnxruntime_leaves_apart_stay_qdq(monkeypatch):
    # should an onnxruntime not fuse MatMulInteger with its scale and bias, those layers are built again as QDQ MatMuls
    import onnxslim.quant.pipeline as quant_pipeline

    model = _with_dynamic_sequence(transformer_block())
    rng = np.random.default_rng(4)
    data = [{"input": rng.standard_normal((1, length, 32)).astype(np.float32)} for length in (8, 5, 11) * 4]
    seen = []

    def left_apart(candidate):
        names = sorted(n.name for n in candidate.graph.node if n.op_type == "MatMulInteger")
        seen.append(names)
        return set(names[:1])

    monkeypatch.setattr(quant_pipeline, "integer_matmuls_left_apart", left_apart)
    quantized, report = quantize(model, data, config=FAST)
    assert len(seen) == 1 and len(seen[0]) >= 2  # asked once, on the first build
    written = {n.name for n in quantized.graph.node if n.op_type == "MatMulInteger"}
    assert seen[0][0] not in written and written == set(seen[0][1:])
    assert seen[0][0] in {n.name for n in quantized.graph.node if n.op_type == "MatMul"}
    feed = {"input": rng.standard_normal((1, 7, 32)).astype(np.float32)}
    assert cosine(run_model(model, feed)[0], run_model(quantized, feed)[0]) > 0.99


def test_without_a_budget_output_layers_store_smaller_weights_that_move_no_output(monkeypatch):
    import onnxslim.quant.pipeline as pipeline_step
    from models.builders import mlp

    model = mlp(d_in=64, hidden=128, d_out=256)
    data = sample_inputs(model, 30)
    _, report = quantize(model, data, config=QuantConfig(latency_runs=0, accuracy_budget=None))
    (output_layer,) = [d for d in report.decisions if d.code == QuantReason.OUTPUT_LAYER]
    entry = report.kept_float_weights
    assert entry["worst_score_float32"] > 0.99  # a model that quantizes well: the rule below is not vacuous
    assert entry["written"] == "int8" and entry["worst_score_float32"] - entry["worst_score_int8"] <= pipeline_step.INT8_WEIGHTS_SCORE_DROP
    assert "weights stored in INT8" in output_layer.reason.text
    # a drop larger than allowed keeps every form out, float16 included, since no budget bounds it
    monkeypatch.setattr(pipeline_step, "INT8_WEIGHTS_SCORE_DROP", -1.0)
    _, strict = quantize(model, data, config=QuantConfig(latency_runs=0, accuracy_budget=None))
    assert strict.kept_float_weights["written"] == "float32" and "with float16 weights" in strict.kept_float_weights["why"]
    (output_layer,) = [d for d in strict.decisions if d.code == QuantReason.OUTPUT_LAYER]
    assert "stored" not in output_layer.reason.text


def test_the_report_lists_the_layout_rewrites_of_the_model_written():
    # a transformer block with a float output layer whose weights the budget lets be stored in float16 (a copy of the
    # built model): the merged and integer MatMuls of its build must still be in the report's preparation steps
    model = _with_dynamic_sequence(transformer_block())
    head = numpy_helper.from_array(np.random.default_rng(8).standard_normal((32, 160)).astype(np.float32) / 8, "head_weight")
    model.graph.initializer.append(head)
    last = model.graph.output[0]
    model.graph.node.append(helper.make_node("MatMul", [last.name, "head_weight"], ["scores"], name="head"))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, "sequence", 160]))
    rng = np.random.default_rng(4)
    data = [{"input": rng.standard_normal((1, length, 32)).astype(np.float32)} for length in (8, 5, 11) * 8]
    _, report = quantize(model, data, config=QuantConfig(latency_runs=0))
    assert report.kept_float_weights.get("written") == "int8"
    assert {"merge-parallel-matmuls", "bias-into-integer-matmuls"} <= {p.name for p in report.prepare if p.modified}


@pytest.mark.parametrize("threads", [0, 2])
def test_the_final_timing_reuses_the_float_session_opened_for_fidelity(monkeypatch, threads):
    from onnxslim.runtime.session import Runner

    model = conv_bn_relu()
    given = []
    monkeypatch.setattr(timing_step, "latency_ratios", lambda reference, *a, **k: given.append((reference, k["threads"])) or (None, None))
    quantize(model, calibrate_on(model), config=QuantConfig(latency_runs=3, threads=threads))
    # the held-out comparisons opened the float model at the thread count the result is timed at: that session is timed, not another
    reference, timed_at = given[0]
    assert isinstance(reference, Runner) and (reference.threads or None) == (timed_at or None) == (threads or None)
    assert reference.provider == "CPUExecutionProvider"


def test_a_float_session_on_another_provider_or_thread_count_is_not_handed_over():
    from onnxslim.quant.pipeline import QuantRun

    model = conv_bn_relu()
    run = QuantRun(model, calibrate_on(model), QuantConfig(latency_runs=3, threads=2), None, None, False)
    assert run.reference.runner.threads == 2
    assert run.take_reference("CPUExecutionProvider", 1) is None
    assert run.take_reference("CPUExecutionProvider", 2) is None  # handed over (or dropped) once: the run holds no session after
    run.reference  # noqa: B018 (opens it again)
    assert run.take_reference("CUDAExecutionProvider", 2) is None
    run.reference  # noqa: B018
    assert run.take_reference("CPUExecutionProvider", 2) is not None


def _stored_weight_codes(model) -> dict[str, np.ndarray]:
    """The INT8 codes behind every weight DequantizeLinear of a QDQ model, by the layer that reads them."""
    inits = initializers(model)
    dequantized = {n.output[0]: n.input[0] for n in stored_dq(model, inits, np.int8)}
    return {n.name: inits[dequantized[n.input[1]]] for n in model.graph.node if n.op_type in ("Conv", "MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in dequantized}


def test_reduced_weight_range_keeps_codes_within_64_except_depthwise_layers():
    from models.builders import depthwise_separable

    model = depthwise_separable()
    config = QuantConfig(latency_runs=0, accuracy_budget=None, output_layers="int8", weight_range="reduced")
    quantized, report = quantize(model, calibrate_on(model), config=config)
    codes = _stored_weight_codes(quantized)
    groups = {n.name: next((a.i for a in n.attribute if a.name == "group"), 1) for n in model.graph.node if n.op_type == "Conv"}
    depthwise = {name for name, group in groups.items() if group > 1}
    assert depthwise and set(codes) - depthwise
    for name, values in codes.items():
        assert np.abs(values.astype(int)).max() == (127 if name in depthwise else 64), name
    assert report.weight_range == {"used": "reduced", "why": "--weight-range reduced"}
    assert report.to_dict()["weight_range"]["used"] == "reduced"
    full, report = quantize(model, calibrate_on(model), config=dataclasses.replace(config, weight_range="full"))
    assert all(np.abs(v.astype(int)).max() == 127 for v in _stored_weight_codes(full).values())


@pytest.mark.parametrize("saturates", [True, False])
def test_weight_range_auto_follows_what_this_machines_kernels_compute(monkeypatch, saturates):
    import onnxslim.quant.pipeline as pipeline_module

    monkeypatch.setattr(pipeline_module, "integer_products_saturate", lambda *a: saturates)
    model = conv_bn_relu()
    quantized, report = quantize(model, calibrate_on(model), config=QuantConfig(latency_runs=0, accuracy_budget=None, output_layers="int8"))
    assert report.weight_range["used"] == ("reduced" if saturates else "full")
    assert ("no VNNI" in report.weight_range["why"]) == saturates
    peak = max(np.abs(v.astype(int)).max() for v in _stored_weight_codes(quantized).values())
    assert peak == (64 if saturates else 127)
    _, report = quantize(model, calibrate_on(model), config=QuantConfig(latency_runs=0, target="cuda", accuracy_budget=None))
    assert report.weight_range["used"] == "full"  # GPUs add INT8 products in 32 bits


def test_reduced_range_weights_are_computed_exactly_by_this_machines_onnxruntime():
    """Whatever the CPU: a UINT8 x INT8 product sum over full-range activations and [-64, 64] weights is what integer math says."""
    from onnxslim.runtime.kernels import integer_products_saturate

    rng = np.random.default_rng(3)
    activations = rng.integers(200, 256, size=(4, 96)).astype(np.uint8)
    weight = rng.choice([-64, 64], size=(96, 16)).astype(np.int8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w"], ["y"])], "exact",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [4, 96])], [helper.make_tensor_value_info("y", TensorProto.INT32, [4, 16])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    (computed,) = run_model(model, {"a": activations})
    np.testing.assert_array_equal(computed, activations.astype(np.int64) @ weight.astype(np.int64))
    assert isinstance(integer_products_saturate(), bool)


def test_the_saturation_probe_reads_a_missing_kernel_as_no_saturation(monkeypatch):
    import onnxslim.runtime.kernels as kernels
    from onnxslim.errors import ProviderError

    def unavailable(*args, **kwargs):
        raise ProviderError("execution provider 'cpu' is not available")

    monkeypatch.setattr(kernels, "Runner", unavailable)
    kernels.integer_products_saturate.cache_clear()
    try:
        assert kernels.integer_products_saturate() is False
    finally:
        kernels.integer_products_saturate.cache_clear()


def test_a_channel_with_next_to_no_weights_keeps_its_bias():
    """A dead channel (weights ~1e-12, as a folded normalization leaves them) with a bias of 2.5: the output is the bias.

    Its weight scale alone (1e-14 per code) would need 1e14 INT32 codes for the bias, which used to be clipped to
    2**31 and read back as about zero (without an accuracy budget to keep the layer float, that was the written
    model); the channel's scale is raised until the bias fits.
    """
    rng = np.random.default_rng(4)
    weights = rng.normal(0.0, 0.3, size=(4, 4, 3, 3)).astype(np.float32)
    weights[2] *= 1e-12
    bias = np.array([0.1, -0.2, 2.5, 0.3], np.float32)
    head = rng.normal(0.0, 0.5, size=(3, 4, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w", "b"], ["features"], name="body", pads=[1, 1, 1, 1]), helper.make_node("Relu", ["features"], ["relu"], name="relu"),
         helper.make_node("Conv", ["relu", "head"], ["output"], name="head")],
        "dead_channel", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 8, 8])],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b"), numpy_helper.from_array(head, "head")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    quantized, _ = quantize(model, calibrate_on(model, 24), config=dataclasses.replace(EVERY_LAYER, accuracy_budget=None))
    inits = initializers(quantized)
    (body_bias,) = [n for n in stored_dq(quantized, inits, np.int32) if n.input[0].startswith("b")]
    codes, scale = inits[body_bias.input[0]], inits[body_bias.input[1]]
    assert np.abs(codes).max() < 2**31 - 1 and codes[2] * scale[2] == pytest.approx(2.5, rel=1e-3)
    assert_close_to_float(model, quantized, 0.99)


def test_a_budget_met_on_held_out_batches_that_spread_around_it_says_so():
    from types import SimpleNamespace

    from onnxslim.quant.budget import budget_uncertain

    run = SimpleNamespace(eval_label="12 held-out batch(es)")
    spread = noisy_comparison([0.02] * 10 + [0.5, 0.5])  # two of twelve batches carry most of the error
    budget = round(spread.cosine - 0.002, 4)
    (warning,) = budget_uncertain([spread], QuantConfig(accuracy_budget=budget), run)
    low, high = spread.cosine_range
    assert f"between {low:.5f} and {high:.5f}" in warning and "12 held-out batch(es)" in warning and "'y'" in warning
    steady = noisy_comparison([0.1] * 12)
    assert budget_uncertain([steady], QuantConfig(accuracy_budget=round(steady.cosine_range[0] - 0.001, 4)), run) == []
    assert budget_uncertain([spread], QuantConfig(accuracy_budget=None), run) == []
    assert budget_uncertain([spread], QuantConfig(accuracy_budget=0.9999), run) == []  # missed outright: budget_shortfall says that


FLOORED_LEAKY_RELUS = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 4, 12, 12] x) => (float[1, 8, 1, 1] y) {
    a = Conv <pads = [1, 1, 1, 1]> (x, w1, b1)
    la = LeakyRelu <alpha = 0.2> (a)
    fa = Max (la, floor)
    c = Conv <pads = [1, 1, 1, 1]> (fa, w2, b2)
    lc = LeakyRelu <alpha = 0.2> (c)
    fc = Max (lc, positive_floor)
    m = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (fc)
    y = GlobalAveragePool (m)
}
"""


def test_a_leaky_relu_floored_by_a_constant_max_runs_on_integer_kernels():
    """openWakeWord's embedding network (a tf2onnx export) writes max(LeakyReLU(x), -0.4) as Max with a constant: written
    as a Clip, its floor is where the LeakyReLU's UINT8 range starts, so it folds and the chain stays integer; a floor
    above 0 cannot fold (the range holds 0) and stays a float Clip."""
    rng = np.random.default_rng(5)
    model = onnx.parser.parse_model(FLOORED_LEAKY_RELUS)
    weights = {"w1": rng.normal(size=(8, 4, 3, 3)) * 0.3, "b1": rng.normal(size=8) * 0.1, "w2": rng.normal(size=(8, 8, 3, 3)) * 0.2,
               "b2": rng.normal(size=8) * 0.1, "floor": np.full((1, 1, 1, 1), -0.4), "positive_floor": np.full((1, 1, 1, 1), 0.3)}
    model.graph.initializer.extend(numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in weights.items())
    quantized, report = quantize(model, calibrate_on(model, 24), config=EVERY_LAYER)
    rewritten = next(p for p in report.prepare if p.name == "max-min-with-a-constant-as-clip")
    assert rewritten.changes == ["wrote 2 Max/Min with a constant as Clip"]
    decisions = {d.node: d for d in report.decisions}
    assert decisions["fa"].code == QuantReason.FOLDED and "floor -0.4" in decisions["fa"].reason.text
    assert decisions["fc"].code == QuantReason.KEPT_FLOAT and "floor is above 0" in decisions["fc"].reason.text
    assert report.integer_kernels.get("QLinearLeakyRelu") == 2 and report.integer_kernels.get("QLinearConv") == 2
    assert "Clip" not in ops(quantized) or [n.name for n in quantized.graph.node if n.op_type == "Clip"] == ["fc"]
    assert_close_to_float(model, quantized, 0.99)


def test_an_upsampling_convtranspose_runs_in_int8_as_a_subpixel_conv_and_the_float_fallback_keeps_it(monkeypatch):
    """onnxruntime's CPU provider has no integer ConvTranspose: the graph quantize builds has it as a Conv and a
    DepthToSpace (QLinearConv), the FP32 model it writes when INT8 is not faster keeps the ConvTranspose, faster in float."""
    from onnxslim import optimize
    from tests.test_pass_contract import _upsampler

    model = _upsampler(4, 2, 1)
    batches = [{"x": np.random.default_rng(i).standard_normal((1, 3, 6, 5)).astype(np.float32)} for i in range(10)]
    quantized, report = quantize(model, batches, config=QuantConfig(latency_runs=0, accuracy_budget=None, output_layers="int8"))
    assert any(r.name == "convtranspose-as-subpixel-conv" and r.modified for r in report.prepare)
    assert report.onnxruntime_kernels.get("QLinearConv") == 3 and "ConvTranspose" not in report.onnxruntime_kernels
    assert min(c.cosine for c in report.fidelity) > 0.99
    cleaned, _ = optimize(model)
    assert [n.op_type for n in cleaned.graph.node].count("ConvTranspose") == 1
    # INT8 judged slower: the fallback written is the cleaned float model, ConvTranspose and all
    slower = LatencyComparison(1, {"median_ms": 1.0, "runs": 3}, {"median_ms": 1.4, "runs": 3})
    monkeypatch.setattr(timing_step, "latency_ratios", lambda *a, **k: (slower, None))
    fallback, report = quantize(model, batches, config=QuantConfig(latency_runs=3, accuracy_budget=None))
    assert report.written == "fp32" and [n.op_type for n in fallback.graph.node].count("ConvTranspose") == 1


def _rankings_timed(monkeypatch, ratio: float) -> list:
    """Every measured form's timing gives the challenger ``ratio`` at both thread counts; INT8 is faster than FP32."""
    import onnxslim.quant.fallback as timing_step
    import onnxslim.quant.forms as forms_step
    from onnxslim.quant import pipeline
    from tests.conftest import timed_as

    labels = []
    monkeypatch.setattr(pipeline, "CONVERSIONS_CHECKED_BELOW", 1.0)  # this block's float layers hold more than a tenth of its work: checked all the same
    monkeypatch.setattr(forms_step, "latency_ratios", lambda *a, **k: labels.append(k["labels"]) or (timed_as(ratio), timed_as(ratio, 1)))
    monkeypatch.setattr(timing_step, "latency_ratios", lambda *a, **k: (timed_as(0.6), None))
    return labels


BUDGET_RANKED = dict(latency_runs=3, accuracy_budget=0.9999, conv_kernel="symmetric", depthwise="int8", scalar_affine="float", output_layers="float")


def test_the_budget_keeps_the_layers_counted_with_their_conversions_where_that_model_is_measured_faster(monkeypatch):
    """Counted by multiply-adds alone, the layers on large maps cost the least to keep in float; counting the values each
    converts to and from float, others do. Where both meet the budget with different layers, both are timed and the faster kept."""
    from models.builders import sample_inputs, silu_se_block

    model = silu_se_block()
    data = sample_inputs(model, 20)
    labels = _rankings_timed(monkeypatch, 0.8)
    written, report = quantize(model, data, config=QuantConfig(**BUDGET_RANKED))
    entry = report.ranking_check["conversions"]
    assert ("ranked by multiply-adds", "counting conversions") in labels
    assert entry["taken"] == "conversions" and entry["met"] and entry["latency_vs_multiply_adds"] == 0.8, entry
    assert entry["kept_counting_conversions"] == len(report.kept_float_for_budget)
    assert all("work_share_with_conversions" in k and k["work_share_with_conversions"] > k["work_share"] for k in report.kept_float_for_budget)
    assert min(c.cosine for c in report.fidelity) >= 0.9999
    assert reported_cosine_is_the_written_models(model, written, data, report)

    labels = _rankings_timed(monkeypatch, 1.1)  # the other set measured slower: the layers ranked by multiply-adds stay
    _, slower = quantize(model, data, config=QuantConfig(**BUDGET_RANKED))
    check = slower.ranking_check["conversions"]
    assert check["taken"] == "multiply-adds" and "not faster" in check["why"] and check["kept"] == len(slower.kept_float_for_budget)
    assert all("work_share_with_conversions" not in k for k in slower.kept_float_for_budget)
    assert {k["node"] for k in slower.kept_float_for_budget} != {k["node"] for k in report.kept_float_for_budget}


def test_without_timing_or_where_the_float_layers_hold_much_work_the_budget_ranks_by_multiply_adds_alone(monkeypatch):
    from models.builders import sample_inputs, silu_se_block
    from onnxslim.quant import pipeline

    model = silu_se_block()
    data = sample_inputs(model, 20)
    monkeypatch.setattr(pipeline, "_fewer_conversions_if_faster", lambda *a, **k: (_ for _ in ()).throw(AssertionError("second ranking")))
    _, report = quantize(model, data, config=QuantConfig(**{**BUDGET_RANKED, "latency_runs": 0}))
    assert report.kept_float_for_budget and "conversions" not in report.ranking_check
    _rankings_timed(monkeypatch, 0.8)
    monkeypatch.setattr(pipeline, "CONVERSIONS_CHECKED_BELOW", 0.0)  # any share of the work is too much: their conversions are not what they cost
    _, report = quantize(model, data, config=QuantConfig(**BUDGET_RANKED))
    assert report.kept_float_for_budget and "conversions" not in report.ranking_check


def test_cli_says_which_ranking_of_the_budgets_layers_was_kept(monkeypatch, tmp_path, save, npz_folder):
    from models.builders import sample_inputs, silu_se_block

    model = silu_se_block()
    _rankings_timed(monkeypatch, 0.8)
    result = CliRunner().invoke(main, ["quantize", str(save(model)), "-o", str(tmp_path / "q.onnx"), "--data", str(npz_folder(sample_inputs(model, 20))),
                                       "--accuracy-budget", "0.9999", "--latency-runs", "3", "--conv-kernel", "symmetric", "--depthwise", "int8",
                                       "--scalar-affine", "float", "--output-layers", "float"])
    assert result.exit_code == 0, result.output
    assert re.search(r"ranked counting the values each layer converts to and from float, besides its multiply-adds: [0-9]+ layer\(s\) in float "
                     r"against [0-9]+: 0\.80x the other set's latency at .*, 0\.80x at 1 thread \(kept\)", " ".join(result.output.split())), result.output
