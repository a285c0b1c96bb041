"""quantize --precision fp16: the FP16 model, its float32 emulation, FP32 islands, and the command."""

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxslim.cli import main
from onnxslim.quant import QuantConfig, quantize
from onnxslim.quant.float16 import eligible_nodes, overflowing, to_float16
from tests.conftest import requires_cuda, run_model

RNG = np.random.default_rng(0)


def _init(name, array):
    return numpy_helper.from_array(np.asarray(array, np.float32), name)


def mlp(scale=1.0):
    """x -> MatMul -> Add -> Relu -> Mul(scale) -> Pow 2 -> ReduceMean -> Sqrt, and a second output from the Relu."""
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="bias"),
        helper.make_node("Relu", ["hb"], ["r"], name="relu"),
        helper.make_node("Mul", ["r", "s"], ["rs"], name="scale"),
        helper.make_node("Pow", ["rs", "two"], ["sq"], name="pow"),
        helper.make_node("ReduceMean", ["sq"], ["ms"], name="mean", axes=[-1], keepdims=1),
        helper.make_node("Sqrt", ["ms"], ["y"], name="sqrt"),
        helper.make_node("Shape", ["r"], ["r_shape"], name="shape"),
    ]
    inits = [_init("w1", RNG.normal(size=(16, 32)) * 0.3), _init("b1", RNG.normal(size=32) * 0.1), _init("s", [scale]), _init("two", [2.0])]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1]), helper.make_tensor_value_info("r", TensorProto.FLOAT, ["n", 32]),
         helper.make_tensor_value_info("r_shape", TensorProto.INT64, [2])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _feed(n=8, scale=1.0):
    return {"x": (RNG.normal(size=(n, 16)) * scale).astype(np.float32)}


def test_every_float_node_in_fp16_keeps_float32_interface_and_casts_once():
    model = mlp()
    eligibility = eligible_nodes(model)
    assert set(eligibility.eligible) == {"mm", "bias", "relu", "scale", "pow", "mean", "sqrt"}  # Shape does no float work
    result = to_float16(model, eligibility.eligible)
    converted = result.model
    onnx.checker.check_model(converted)
    assert {i.name: i.type.tensor_type.elem_type for i in converted.graph.input} == {"x": TensorProto.FLOAT}
    outputs = {o.name: o.type.tensor_type.elem_type for o in converted.graph.output}
    assert outputs == {"y": TensorProto.FLOAT, "r": TensorProto.FLOAT, "r_shape": TensorProto.INT64}
    assert all(t.data_type == TensorProto.FLOAT16 for t in converted.graph.initializer)
    producers = {o: n for n in converted.graph.node for o in n.output}
    casts = [n for n in converted.graph.node if n.op_type == "Cast"]
    assert len(casts) == result.casts == 3  # x in; y and r out: the Shape reads r in float16
    assert not [c for c in casts if producers.get(c.input[0]) is not None and producers[c.input[0]].op_type == "Cast"]
    feed = _feed()
    reference = run_model(model, feed)
    real = run_model(converted, feed)
    emulated = run_model(to_float16(model, eligibility.eligible, emulate=True).model, feed)
    for ref, got, emu in zip(reference[:2], real[:2], emulated[:2]):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, ref, rtol=5e-3, atol=5e-3)
        np.testing.assert_allclose(emu, got, rtol=2e-3, atol=2e-3)
    np.testing.assert_array_equal(real[2], reference[2])


def test_emulation_rounds_exactly_where_the_fp16_model_stores_float16():
    model = mlp()
    feed = _feed()
    emulated = run_model(to_float16(model, ["mm", "bias"], emulate=True).model, feed)
    half = lambda a: np.asarray(a, np.float32).astype(np.float16).astype(np.float32)  # noqa: E731
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    h = half(half(feed["x"]) @ half(weights["w1"]))
    hb = half(h + half(weights["b1"]))
    r = np.maximum(hb, 0)
    np.testing.assert_allclose(emulated[1], r, rtol=1e-6, atol=1e-6)
    y = np.sqrt(np.mean((r * weights["s"]) ** 2, axis=-1, keepdims=True))
    np.testing.assert_allclose(emulated[0], y, rtol=1e-5)


def test_a_float32_node_between_fp16_nodes_is_an_island_with_one_cast_each_way():
    model = mlp()
    half = ["mm", "bias", "relu", "pow", "mean", "sqrt"]  # 'scale' stays float32
    converted = to_float16(model, half).model
    onnx.checker.check_model(converted)
    scale = next(n for n in converted.graph.node if n.name == "scale")
    producers = {o: n for n in converted.graph.node for o in n.output}
    assert producers[scale.input[0]].op_type == "Cast"  # relu's float16 result widened for it
    assert next(t for t in converted.graph.initializer if t.name == "s").data_type == TensorProto.FLOAT
    pow_node = next(n for n in converted.graph.node if n.name == "pow")
    assert producers[pow_node.input[0]].op_type == "Cast"
    feed = _feed()
    np.testing.assert_allclose(run_model(converted, feed)[0], run_model(model, feed)[0], rtol=5e-3)


def test_tensors_beyond_float16_range_keep_both_sides_in_float32():
    model = mlp(scale=400.0)  # Pow squares values of a few thousand: beyond 65504
    feed = _feed(scale=3.0)
    values = run_model(model, feed)
    assert np.isinf(run_model(to_float16(model, eligible_nodes(model).eligible, emulate=True).model, feed)[0]).any()  # all in float16 overflows
    absmax = {"sq": 1e6, "rs": 3000.0}
    kept = overflowing(model, absmax)
    assert set(kept) == {"pow", "mean"}  # the writer and the reader of 'sq'
    assert "'sq' reaches 1e+06" in kept["pow"]
    half = [n for n in eligible_nodes(model).eligible if n not in kept]
    converted = run_model(to_float16(model, half).model, feed)
    assert np.isfinite(converted[0]).all()
    np.testing.assert_allclose(converted[0], values[0], rtol=5e-3)


def test_control_flow_stays_float32_with_the_tensors_its_bodies_read():
    then_graph = helper.make_graph(
        [helper.make_node("Add", ["a", "a"], ["t"], name="then_add")], "then", [], [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])]
    )
    else_graph = helper.make_graph(
        [helper.make_node("Identity", ["a"], ["e"], name="else_id")], "else", [], [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2])]
    )
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu"),
        helper.make_node("ReduceSum", ["x"], ["total"], name="total", keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["cond"], name="cond"),
        helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_graph, else_branch=else_graph),
    ]
    graph = helper.make_graph(
        nodes, "if", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [_init("zero", 0.0)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    eligibility = eligible_nodes(model)
    assert "control flow" in eligibility.refused["branch"]
    assert "read inside a control-flow body" in eligibility.refused["relu"]
    converted = to_float16(model, eligibility.eligible).model
    onnx.checker.check_model(converted)
    for x in ([1.0, 2.0], [-3.0, 1.0]):
        feed = {"x": np.array(x, np.float32)}
        np.testing.assert_allclose(run_model(converted, feed)[0], run_model(model, feed)[0], rtol=1e-3)


def _data(npz_folder, count=20, scale=1.0, name="data"):
    return npz_folder([_feed(scale=scale) for _ in range(count)], name)


def test_quantize_fp16_for_cuda_without_a_gpu_reports_emulated_fidelity(save, npz_folder, tmp_path):
    path = save(mlp())
    out = tmp_path / "out.onnx"
    model, report = quantize(str(path), str(_data(npz_folder)), config=QuantConfig(precision="fp16", target="cuda"), output=str(out))
    if report.float16["fidelity_measured_on"] == "cuda":
        pytest.skip("CUDA is present: covered by test_fp16_runs_every_node_on_cuda")
    assert report.written == "fp16" and report.precision == "fp16"
    assert report.latency is None
    assert any("not available here" in w for w in report.warnings)
    assert report.fidelity[0].cosine > 0.9999
    written = onnx.load(str(out))
    assert any(t.data_type == TensorProto.FLOAT16 for t in written.graph.initializer)
    assert report.sizes.quantized_bytes < 0.75 * report.sizes.fp32_bytes
    assert {d.node for d in report.quantized} == {"mm", "bias", "relu", "scale", "pow", "mean", "sqrt"}


def test_quantize_fp16_on_cpu_is_timed_and_never_written_when_slower(save, npz_folder, tmp_path):
    path = save(mlp())
    model, report = quantize(str(path), str(_data(npz_folder)), config=QuantConfig(precision="fp16", target="cpu", latency_runs=10), output=str(tmp_path / "o.onnx"))
    assert report.float16["fidelity_measured_on"] == "cpu"
    assert report.latency is not None
    # FP16 must beat the cleaned FP32 model it would otherwise write, timed in the same loop (not only the original)
    # it must beat what would be written instead: the cleaned FP32 model, or the original where the cleaned one was timed no faster
    cleaned_not_faster = report.latency.fallback_ratio >= 1.0
    if (report.latency.ratio if cleaned_not_faster else report.latency.ratio_to_fallback) >= 1.0:
        assert report.written == ("original" if cleaned_not_faster else "fp32")
        assert all(t.data_type == TensorProto.FLOAT for t in model.graph.initializer)
    else:
        assert report.written == "fp16"


def cancellation_model():
    """(x + 1000) - 1000: float16 keeps about 0.5 of resolution at 1000, so the rounding swamps x."""
    nodes = [helper.make_node("Add", ["x", "big"], ["shifted"], name="shift"), helper.make_node("Sub", ["shifted", "big"], ["back"], name="unshift"),
             helper.make_node("Mul", ["back", "gain"], ["y"], name="gain")]
    graph = helper.make_graph(
        nodes, "cancel", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16])],
        [_init("big", [1000.0]), _init("gain", [2.0])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_accuracy_budget_moves_the_harmful_nodes_to_float32(save, npz_folder, tmp_path):
    path = save(cancellation_model())
    data = str(_data(npz_folder, scale=0.1))
    _, loose = quantize(str(path), data, config=QuantConfig(precision="fp16", target="cuda", accuracy_budget=None))
    assert loose.fidelity[0].cosine < 0.999  # all in float16: the sum loses x
    _, strict = quantize(str(path), data, config=QuantConfig(precision="fp16", target="cuda", accuracy_budget=0.9999))
    kept = {entry["node"] for entry in strict.kept_float_for_budget}
    assert "shift" in kept
    assert strict.fidelity[0].cosine >= 0.9999
    assert {d.node: d.reason.code.value for d in strict.decisions}["shift"] == "kept_for_accuracy"


def test_cli_precision_fp16_writes_report(save, npz_folder, tmp_path):
    path = save(mlp())
    out, report_path = tmp_path / "o.onnx", tmp_path / "r.json"
    result = CliRunner().invoke(
        main,
        # --if-slower write: where CUDA is present the 7-node model is timed there, and a GPU may well run it no faster
        ["quantize", str(path), "-o", str(out), "--precision", "fp16", "--target", "cuda", "--data", str(_data(npz_folder)), "--if-slower", "write", "--report", str(report_path), "-q"],
    )
    assert result.exit_code == 0, result.output
    assert "FP16 model (7 of 7 float nodes in FP16)" in result.output
    report = json.loads(report_path.read_text())
    assert report["precision"] == "fp16" and report["written"] == "fp16"
    assert report["float16"]["casts_inserted"] == 3
    assert report["sizes"]["quantized_bytes"] > 0


@requires_cuda
def test_fp16_runs_every_node_on_cuda(save, npz_folder, tmp_path):
    from onnxslim.runtime import Runner

    path = save(mlp())
    model, report = quantize(str(path), str(_data(npz_folder)), config=QuantConfig(precision="fp16", target="cuda", latency_runs=5, if_slower="write"))
    assert report.float16["fidelity_measured_on"] == "cuda"
    placement = Runner(model, "CUDAExecutionProvider").placement(_feed())
    assert set(placement.to_dict()["nodes_by_provider"]) <= {"cuda"}


def test_calibration_finds_the_overflowing_tensor(save, npz_folder):
    path = save(mlp(scale=400.0))
    model, report = quantize(str(path), str(_data(npz_folder, scale=3.0)), config=QuantConfig(precision="fp16", target="cuda"))
    reasons = {d.node: d.reason.code.value for d in report.decisions}
    assert reasons["pow"] == reasons["mean"] == "overflow"
    assert reasons["mm"] == "float16"
    assert np.isfinite(report.fidelity[0].cosine) and report.fidelity[0].cosine > 0.9999


def test_a_cast_to_float32_read_only_by_fp16_nodes_casts_to_float16_instead():
    nodes = [helper.make_node("Cast", ["mask"], ["maskf"], name="to_float", to=TensorProto.FLOAT),
             helper.make_node("Mul", ["maskf", "w"], ["y"], name="mul")]
    graph = helper.make_graph(
        nodes, "cast", [helper.make_tensor_value_info("mask", TensorProto.INT64, ["n", 4])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [_init("w", [0.5, 1.5, -2.0, 3.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    eligibility = eligible_nodes(model)
    assert eligibility.eligible == ["mul"] and "to_float" not in eligibility.refused
    result = to_float16(model, eligibility.eligible)
    cast = next(n for n in result.model.graph.node if n.name == "to_float")
    assert helper.get_attribute_value(cast.attribute[0]) == TensorProto.FLOAT16
    assert result.casts == 1  # only y back to float32
    feed = {"mask": np.array([[1, 0, 1, 1]], np.int64)}
    np.testing.assert_allclose(run_model(result.model, feed)[0], run_model(model, feed)[0])


def layer_norm(epsilon: float):
    """LayerNorm spelled out as exporters write it: ReduceMean, Sub, Pow, ReduceMean, Add(epsilon), Sqrt, Div, Mul, Add."""
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["mean"], name="mean", axes=[-1]),
        helper.make_node("Sub", ["x", "mean"], ["centred"], name="centre"),
        helper.make_node("Pow", ["centred", "two"], ["squared"], name="square"),
        helper.make_node("ReduceMean", ["squared"], ["variance"], name="variance", axes=[-1]),
        helper.make_node("Add", ["variance", "epsilon"], ["padded"], name="pad"),
        helper.make_node("Sqrt", ["padded"], ["deviation"], name="sqrt"),
        helper.make_node("Div", ["centred", "deviation"], ["normed"], name="divide"),
        helper.make_node("Mul", ["normed", "gamma"], ["scaled"], name="gamma"),
        helper.make_node("Add", ["scaled", "beta"], ["y"], name="beta"),
    ]
    inits = [_init("two", [2.0]), _init("epsilon", [epsilon]), _init("gamma", RNG.normal(size=8)), _init("beta", RNG.normal(size=8))]
    graph = helper.make_graph(nodes, "ln", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_a_tiny_epsilon_stays_nonzero_in_float16():
    model = layer_norm(1e-12)  # BERT's epsilon: float16 would round it to 0
    result = to_float16(model, eligible_nodes(model).eligible)
    epsilon = next(t for t in result.model.graph.initializer if t.name == "epsilon")
    assert numpy_helper.to_array(epsilon).item() == np.finfo(np.float16).smallest_subnormal
    assert result.lifted_weights == 1
    feed = {"x": np.vstack([np.full(8, 3.0), RNG.normal(size=8)]).astype(np.float32)}  # a constant row has variance 0
    got, reference = run_model(result.model, feed)[0], run_model(model, feed)[0]
    assert np.isfinite(got).all()  # with epsilon 0 the constant row is 0 / 0
    np.testing.assert_allclose(got, reference, atol=2e-2)


def test_a_spelled_out_layernorm_becomes_one_fp16_layernormalization_without_islands(save, npz_folder):
    model = layer_norm(1e-5)
    batches = [{"x": (RNG.normal(size=(4, 8)) * 1000).astype(np.float32)} for _ in range(10)]  # squares near 1e6: beyond float16
    converted, report = quantize(str(save(model)), str(npz_folder(batches)), config=QuantConfig(precision="fp16", target="cuda", if_slower="write"))
    assert [n.op_type for n in converted.graph.node if n.op_type != "Cast"] == ["LayerNormalization"]
    assert not [d for d in report.decisions if d.reason.code.value == "overflow"]
    assert any(r.name == "fuse-layernorm" and r.modified for r in report.prepare)
    assert report.fidelity[0].cosine > 0.9999


def test_a_layernorm_the_user_excluded_stays_spelled_out(save, npz_folder):
    model = layer_norm(1e-5)
    batches = [{"x": RNG.normal(size=(4, 8)).astype(np.float32)} for _ in range(10)]
    config = QuantConfig(precision="fp16", target="cuda", if_slower="write", exclude_nodes=("variance",))
    converted, report = quantize(str(save(model)), str(npz_folder(batches)), config=config)
    assert "LayerNormalization" not in [n.op_type for n in converted.graph.node]
    assert {d.node: d.reason.code.value for d in report.decisions}["variance"] == "excluded_by_user"


def _attention_like(weight_read_by: str) -> onnx.ModelProto:
    """x @ Transpose(x) @ W, with W float16: read by a Cast to float32, or by the MatMul itself."""
    w16 = numpy_helper.from_array(np.ones((4, 4), np.float16), "w16")
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0]), helper.make_node("MatMul", ["x", "xt"], ["scores"])]
    if weight_read_by == "cast":
        nodes += [helper.make_node("Cast", ["w16"], ["w"], to=TensorProto.FLOAT), helper.make_node("MatMul", ["scores", "w"], ["y"])]
        io_type = TensorProto.FLOAT
    else:
        nodes += [helper.make_node("MatMul", ["scores", "w16"], ["y"])]
        io_type = TensorProto.FLOAT16
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", io_type, [4, 4])], [helper.make_tensor_value_info("y", io_type, [4, 4])], [w16])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_float16_weights_cast_back_to_float32_keep_onnxruntimes_layout_pass():
    from onnxslim.runtime.session import FLOAT16_DISABLED_OPTIMIZERS, disabled_optimizers

    assert disabled_optimizers(_attention_like("cast")) == []  # computes in float32: timed as onnxruntime runs it for the user
    assert disabled_optimizers(_attention_like("matmul")) == FLOAT16_DISABLED_OPTIMIZERS


def test_a_float16_model_is_not_converted_to_float16_again():
    """Its weights are float16 already: quantize works on it in float32, and converting that back would only relabel it."""
    from onnxslim.errors import NothingToDoError

    half = mlp()
    for tensor in half.graph.initializer:
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), tensor.name))
    for value in list(half.graph.input) + list(half.graph.output)[:2]:
        value.type.tensor_type.elem_type = TensorProto.FLOAT16
    data = [{"x": _feed()["x"].astype(np.float16)} for _ in range(6)]
    assert run_model(half, data[0])[0].dtype == np.float16
    with pytest.raises(NothingToDoError, match="float16 already"):
        quantize(half, data, config=QuantConfig(precision="fp16", latency_runs=0))
    _, report = quantize(mlp(), [_feed() for _ in range(6)], config=QuantConfig(precision="fp16", latency_runs=0, accuracy_budget=None))
    assert report.precision == "fp16"


def test_a_float32_model_with_a_float16_weight_is_labelled_mixed_not_fp16():
    """The label of the model quantize compares with says what it is: a float32 model with one float16 weight (cast up where
    it is read) is 'mixed FP16/FP32'; one whose every weight is float16 is 'FP16'."""
    mixed = mlp()
    # beside the float32 MatMul, a second one computes in float16 between two Casts (an island), and their sum goes on
    mixed.graph.initializer.append(numpy_helper.from_array((RNG.normal(size=(16, 32)) * 0.3).astype(np.float16), "w_half"))
    mixed.graph.node[1].input[0] = "summed"
    mixed.graph.node.insert(1, helper.make_node("Cast", ["x"], ["x_half"], name="down", to=TensorProto.FLOAT16))
    mixed.graph.node.insert(2, helper.make_node("MatMul", ["x_half", "w_half"], ["h_half"], name="mm_half"))
    mixed.graph.node.insert(3, helper.make_node("Cast", ["h_half"], ["h2"], name="up", to=TensorProto.FLOAT))
    mixed.graph.node.insert(4, helper.make_node("Add", ["h", "h2"], ["summed"], name="sum"))
    _, report = quantize(mixed, [_feed() for _ in range(6)], config=QuantConfig(latency_runs=0, accuracy_budget=None, output_layers="int8"))
    assert report.original_precision == "mixed FP16/FP32"
    half = mlp()
    for tensor in half.graph.initializer:
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), tensor.name))
    for value in list(half.graph.input) + list(half.graph.output)[:2]:
        value.type.tensor_type.elem_type = TensorProto.FLOAT16
    _, report = quantize(half, [{"x": _feed()["x"].astype(np.float16)} for _ in range(6)],
                         config=QuantConfig(latency_runs=0, accuracy_budget=None, output_layers="int8"))
    assert report.original_precision == "FP16"
