"""Recurrent layers in INT8: an LSTM as DynamicQuantizeLSTM, a GRU or RNN with INT8 gate rows folded back to float at load."""

from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxslim.quant import QuantConfig, quantize
from onnxslim.quant.recurrent import find_recurrent, row_symmetric, store_recurrent_in_int8
from onnxslim.runtime.session import optimized_ops
from tests.conftest import run_model

RNG = np.random.default_rng(0)
FEATURES, HIDDEN, CLASSES = 48, 64, 20


def crnn_head(layout: int = 0) -> onnx.ModelProto:
    """features (T, N, F) -> bidirectional LSTM -> (T, N, 2H) -> MatMul to classes -> Softmax."""
    w = RNG.normal(size=(2, 4 * HIDDEN, FEATURES)) * 0.1
    r = RNG.normal(size=(2, 4 * HIDDEN, HIDDEN)) * 0.1
    b = RNG.normal(size=(2, 8 * HIDDEN)) * 0.1
    head = RNG.normal(size=(2 * HIDDEN, CLASSES)) * 0.2
    nodes = [
        helper.make_node("LSTM", ["x", "W", "R", "B"], ["y"], name="lstm", hidden_size=HIDDEN, direction="bidirectional", layout=layout),
        helper.make_node("Transpose", ["y"], ["yt"], name="to_time_batch", perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["yt", "shape"], ["seq"], name="join_directions"),
        helper.make_node("MatMul", ["seq", "head"], ["logits"], name="classifier"),
        helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=-1),
    ]
    inits = [numpy_helper.from_array(np.asarray(a, np.float32), n) for a, n in ((w, "W"), (r, "R"), (b, "B"), (head, "head"))]
    inits.append(numpy_helper.from_array(np.array([0, 0, 2 * HIDDEN], np.int64), "shape"))
    graph = helper.make_graph(
        nodes, "crnn_head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["t", 1, FEATURES])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["t", 1, CLASSES])], inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def _feed(steps=30):
    return {"x": RNG.normal(size=(steps, 1, FEATURES)).astype(np.float32)}


def test_row_scales_reconstruct_each_gate_row():
    weight = RNG.normal(size=(2, 8, 5)).astype(np.float32)
    codes, scales = row_symmetric(weight)
    assert codes.dtype == np.int8 and scales.shape == (2, 8)
    np.testing.assert_allclose(codes * scales[..., None], weight, atol=float(scales.max()) / 2 + 1e-7)
    assert (np.abs(codes).max(axis=2) == 127).all()
    reduced, reduced_scales = row_symmetric(weight, 64)  # the reduced range, for CPUs without VNNI
    assert (np.abs(reduced).max(axis=2) == 64).all()
    np.testing.assert_allclose(reduced * reduced_scales[..., None], weight, atol=float(reduced_scales.max()) / 2 + 1e-7)


def test_lstm_becomes_dynamic_quantize_lstm_and_keeps_its_outputs():
    model = crnn_head()
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    assert store_recurrent_in_int8(rewritten, find_recurrent(rewritten)) == ["lstm"]
    onnx.checker.check_model(rewritten)
    node = next(n for n in rewritten.graph.node if n.name == "lstm")
    assert node.op_type == "DynamicQuantizeLSTM" and node.domain == "com.microsoft"
    weights = {t.name: numpy_helper.to_array(t) for t in rewritten.graph.initializer}
    assert weights[node.input[1]].shape == (2, FEATURES, 4 * HIDDEN) and weights[node.input[1]].dtype == np.int8
    assert weights[node.input[8]].shape == (2, 4 * HIDDEN)
    assert "W" not in weights and "R" not in weights
    feed = _feed()
    a, b = run_model(model, feed)[0].ravel(), run_model(rewritten, feed)[0].ravel()
    assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.999


def test_a_batch_first_lstm_stores_its_weights_in_int8():
    [choice] = find_recurrent(crnn_head(layout=1))
    assert choice.quantized and choice.form == "stored"


def recurrent_head(op_type: str) -> onnx.ModelProto:
    """features (T, N, F) -> bidirectional GRU or RNN -> (T, 2, N, H)."""
    gates = {"GRU": 3, "RNN": 1}[op_type]
    w = RNG.normal(size=(2, gates * HIDDEN, FEATURES)) * 0.1
    r = RNG.normal(size=(2, gates * HIDDEN, HIDDEN)) * 0.1
    b = RNG.normal(size=(2, 2 * gates * HIDDEN)) * 0.1
    extra = {"linear_before_reset": 1} if op_type == "GRU" else {}
    node = helper.make_node(op_type, ["x", "W", "R", "B"], ["y"], name="recurrent", hidden_size=HIDDEN, direction="bidirectional", **extra)
    inits = [numpy_helper.from_array(np.asarray(a, np.float32), n) for a, n in ((w, "W"), (r, "R"), (b, "B"))]
    graph = helper.make_graph([node], "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["t", 1, FEATURES])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["t", 2, 1, HIDDEN])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


@pytest.mark.parametrize("op_type", ["GRU", "RNN"])
def test_gru_and_rnn_weights_are_stored_in_int8_and_folded_back_when_loaded(op_type):
    model = recurrent_head(op_type)
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    [choice] = find_recurrent(rewritten)
    assert choice.quantized and choice.form == "stored" and choice.op_type == op_type
    assert store_recurrent_in_int8(rewritten, [choice]) == ["recurrent"]
    onnx.checker.check_model(rewritten, full_check=True)
    stored = {t.name: numpy_helper.to_array(t) for t in rewritten.graph.initializer}
    assert "W" not in stored and "R" not in stored and sum(a.dtype == np.int8 for a in stored.values()) == 2
    assert rewritten.ByteSize() < 0.35 * model.ByteSize()
    assert optimized_ops(rewritten) == Counter({op_type: 1})  # the Casts and Muls are computed once, when the model loads
    feed = _feed()
    a, b = run_model(model, feed)[0].ravel(), run_model(rewritten, feed)[0].ravel()
    assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.9999


def test_two_grus_sharing_their_weights_store_them_once():
    model = recurrent_head("GRU")
    second = onnx.helper.make_node("GRU", ["x", "W", "R", "B"], ["y2"], name="again", hidden_size=HIDDEN, direction="bidirectional", linear_before_reset=1)
    model.graph.node.append(second)
    model.graph.output.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["t", 2, 1, HIDDEN]))
    assert store_recurrent_in_int8(model, find_recurrent(model)) == ["recurrent", "again"]
    assert sum(t.data_type == TensorProto.INT8 for t in model.graph.initializer) == 2
    onnx.checker.check_model(model, full_check=True)


def test_quantize_stores_the_lstm_in_int8_unless_asked_not_to(save, npz_folder):
    path = save(crnn_head())
    data = str(npz_folder([_feed(int(RNG.integers(20, 40))) for _ in range(20)]))
    model, report = quantize(str(path), data, config=QuantConfig(latency_runs=0, quantize_output_layers=True))
    decisions = {d.node: d for d in report.decisions}
    assert decisions["lstm"].reason.code.value == "dynamic" and decisions["lstm"].quantized
    assert any(n.op_type == "DynamicQuantizeLSTM" for n in model.graph.node)
    assert report.sizes.quantized_bytes < 0.4 * report.sizes.fp32_bytes
    assert report.fidelity[0].cosine > 0.99
    kept, kept_report = quantize(str(path), data, config=QuantConfig(latency_runs=0, quantize_output_layers=True, recurrent="float"))
    assert any(n.op_type == "LSTM" for n in kept.graph.node)
    assert "lstm" not in {d.node for d in kept_report.quantized}


def test_quantize_stores_a_gru_in_int8_and_says_how(save, npz_folder):
    model = recurrent_head("GRU")
    model.graph.node.append(helper.make_node("Relu", ["y"], ["z"], name="relu"))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["t", 2, 1, HIDDEN]))
    path = save(model)
    data = str(npz_folder([_feed(int(RNG.integers(20, 40))) for _ in range(20)]))
    written, report = quantize(str(path), data, config=QuantConfig(latency_runs=0))
    decision = {d.node: d for d in report.decisions}["recurrent"]
    assert decision.quantized and decision.reason.code.value == "weight_only" and "no integer GRU kernel" in decision.reason.text
    assert report.sizes.quantized_bytes < 0.35 * report.sizes.fp32_bytes and report.fidelity[0].cosine > 0.999
    assert optimized_ops(written)["GRU"] == 1
