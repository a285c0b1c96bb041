"""Recurrent layers in INT8: an LSTM as DynamicQuantizeLSTM, a GRU or RNN with INT8 gate rows folded back to float at load."""

from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxslim.ir.counts import count_macs, node_macs
from onnxslim.ir.shapes import infer_shapes
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
    model, report = quantize(str(path), data, config=QuantConfig(latency_runs=0, output_layers="int8"))
    decisions = {d.node: d for d in report.decisions}
    assert decisions["lstm"].reason.code.value == "dynamic" and decisions["lstm"].quantized
    assert any(n.op_type == "DynamicQuantizeLSTM" for n in model.graph.node)
    assert report.sizes.quantized_bytes < 0.4 * report.sizes.fp32_bytes
    assert report.fidelity[0].cosine > 0.99
    kept, kept_report = quantize(str(path), data, config=QuantConfig(latency_runs=0, output_layers="int8", recurrent="float"))
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


@pytest.mark.parametrize("layout", [0, 1])
def test_recurrent_layers_count_their_multiply_adds_per_step(layout):
    """An LSTM multiplies its input by W and its previous hidden state by R at every step, each direction: 30 steps of a
    bidirectional 64-unit LSTM over 48 features are 30 * 2 * 4 * 64 * (48 + 64) multiply-adds, in either layout, and as
    onnxruntime's DynamicQuantizeLSTM (W and R transposed)."""
    model = crnn_head(layout)
    lstm = next(n for n in model.graph.node if n.op_type == "LSTM")
    steps_first = (30, 1, FEATURES) if layout == 0 else (1, 30, FEATURES)
    expected = 30 * 2 * 4 * HIDDEN * (FEATURES + HIDDEN)
    assert node_macs(lstm, {"x": steps_first, "W": (2, 4 * HIDDEN, FEATURES), "R": (2, 4 * HIDDEN, HIDDEN)}) == expected
    assert node_macs(lstm, {"x": ("t", 1, FEATURES), "W": (2, 4 * HIDDEN, FEATURES), "R": (2, 4 * HIDDEN, HIDDEN)}) is None
    if layout == 0:
        store_recurrent_in_int8(model, find_recurrent(model))
        total, by_op, unknown = count_macs(model, infer_shapes(model, {"x": [30, 1, FEATURES]}))
        assert by_op["DynamicQuantizeLSTM"] == expected and "lstm" not in unknown


def test_a_gru_counts_three_gates():
    gru = recurrent_head("GRU")
    total, by_op, _ = count_macs(gru, infer_shapes(gru, {"x": [10, 1, FEATURES]}))
    assert by_op["GRU"] == total == 10 * 2 * 3 * HIDDEN * (FEATURES + HIDDEN)


H0, H1, STEPS = 16, 16, 20


def stacked_lstm(initial_state_as_input: bool = False) -> onnx.ModelProto:
    """features (T, 1, 12) -> LSTM (16 units) -> LSTM (16 units) -> its final state -> Gemm to 5 scores, as torch writes a
    two-layer ``nn.LSTM`` without a state: zeros built at run time for the initial states, the final states of both layers
    joined, the last one picked. ``initial_state_as_input``: the first layer's state is the model's input instead."""
    rng = np.random.default_rng(1)

    def lstm_weights(prefix, features, hidden):
        return [numpy_helper.from_array((rng.normal(size=shape) * 0.3).astype(np.float32), f"{prefix}_{name}")
                for name, shape in (("W", (1, 4 * hidden, features)), ("R", (1, 4 * hidden, hidden)), ("B", (1, 8 * hidden)))]

    inits = lstm_weights("l0", 12, H0) + lstm_weights("l1", H0, H1)
    inits += [numpy_helper.from_array((rng.normal(size=(5, H1)) * 0.5).astype(np.float32), "head_w"),
              numpy_helper.from_array(np.zeros(5, np.float32), "head_b"),
              numpy_helper.from_array(np.array([1], np.int64), "axis1"), numpy_helper.from_array(np.array([0], np.int64), "axis0"),
              numpy_helper.from_array(np.array(1, np.int64), "last"), numpy_helper.from_array(np.array([2, 1, H0], np.int64), "state_shape")]
    state = "h0" if initial_state_as_input else "zeros0"
    nodes = [
        helper.make_node("ConstantOfShape", ["state_shape"], ["zeros"], name="zeros", value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0])),
        helper.make_node("Slice", ["zeros", "axis0", "axis1", "axis0"], ["zeros0"], name="state0"),
        helper.make_node("Slice", ["zeros", "axis1", "last2", "axis0"], ["zeros1"], name="state1"),
        helper.make_node("LSTM", ["x", "l0_W", "l0_R", "l0_B", "", state, state], ["y0", "h_0"], name="lstm0", hidden_size=H0),
        helper.make_node("Squeeze", ["y0", "axis1"], ["s0"], name="squeeze0"),
        helper.make_node("LSTM", ["s0", "l1_W", "l1_R", "l1_B", "", "zeros1", "zeros1"], ["y1", "h_1"], name="lstm1", hidden_size=H1),
        helper.make_node("Concat", ["h_0", "h_1"], ["finals"], name="finals", axis=0),
        helper.make_node("Gather", ["finals", "last"], ["final"], name="pick_last", axis=0),
        helper.make_node("Gemm", ["final", "head_w", "head_b"], ["scores"], name="head", transB=1),
    ]
    inits.append(numpy_helper.from_array(np.array([2], np.int64), "last2"))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["t", 1, 12])]
    if initial_state_as_input:
        inputs.append(helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, 1, H0]))
    graph = helper.make_graph(nodes, "stacked_lstm", inputs, [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _lstm_feeds(count, seed=0, with_state=False):
    rng = np.random.default_rng(seed)
    feeds = [{"x": rng.normal(size=(STEPS, 1, 12)).astype(np.float32)} for _ in range(count)]
    for feed in feeds:
        if with_state:
            feed["h0"] = np.zeros((1, 1, H0), np.float32)
    return feeds


def test_zero_initial_states_are_left_out_and_a_picked_final_state_is_read_from_its_layer():
    from onnxslim.passes import picked_concat_inputs_read_directly, remove_dead_nodes, zero_initial_states_left_out

    model = stacked_lstm()
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    assert zero_initial_states_left_out(rewritten).modified and picked_concat_inputs_read_directly(rewritten).modified
    remove_dead_nodes(rewritten)
    ops = [n.op_type for n in rewritten.graph.node]
    assert "ConstantOfShape" not in ops and "Concat" not in ops and "Gather" not in ops, ops
    assert all(len(n.input) == 4 for n in rewritten.graph.node if n.op_type == "LSTM")
    head = next(n for n in rewritten.graph.node if n.op_type == "Gemm")
    squeeze = next(n for n in rewritten.graph.node if n.output[0] == head.input[0])
    assert squeeze.op_type == "Squeeze" and squeeze.input[0] == "h_1"
    onnx.checker.check_model(rewritten, full_check=True)
    for feed in _lstm_feeds(2):
        np.testing.assert_allclose(run_model(rewritten, feed)[0], run_model(model, feed)[0], rtol=1e-5, atol=1e-6)
    # a state the model is given is not zeros: left as it is
    given = stacked_lstm(initial_state_as_input=True)
    assert not any("lstm0" in change for change in zero_initial_states_left_out(given).changes)
    # a layer without zero states keeps its inputs as written, trailing empty ones included
    plain = crnn_head()
    lstm = next(n for n in plain.graph.node if n.op_type == "LSTM")
    lstm.input.append("")
    assert not zero_initial_states_left_out(plain).modified and list(lstm.input) == ["x", "W", "R", "B", ""]


def test_stacked_lstm_hidden_units_are_pruned_with_their_gates_and_feedback():
    from onnxslim import PruneConfig, prune

    model = stacked_lstm()
    pruned, report = prune(model, _lstm_feeds(24), config=PruneConfig(ratio=0.25, latency_runs=0), eval_data=_lstm_feeds(6, seed=1))
    kept = {g.producers[0]: (g.channels_before, g.channels_after) for g in report.groups}
    assert kept["lstm0"] == (H0, 12) and kept["lstm1"] == (H1, 12), kept  # each layer on its own: the picked state is read directly
    weights = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    for name, features in (("lstm0", 12), ("lstm1", 12)):
        node = next(n for n in pruned.graph.node if n.name == name)
        assert next(a.i for a in node.attribute if a.name == "hidden_size") == 12
        assert weights[node.input[1]].shape == (1, 48, features) and weights[node.input[2]].shape == (1, 48, 12)
        assert weights[node.input[3]].shape == (1, 96)
    onnx.checker.check_model(pruned, full_check=True)
    feed = _lstm_feeds(1, seed=3)[0]
    assert run_model(pruned, feed)[0].shape == run_model(model, feed)[0].shape
    assert report.macs.after < 0.7 * report.macs.before
    assert report.fidelity[0].cosine > 0.5


def test_an_lstm_whose_state_is_given_at_run_time_keeps_its_hidden_size():
    from onnxslim import PruneConfig, prune

    model = stacked_lstm(initial_state_as_input=True)
    _, report = prune(model, _lstm_feeds(12, with_state=True), config=PruneConfig(ratio=0.25, latency_runs=0))
    producers = {g.producers[0] for g in report.groups}
    assert "lstm0" not in producers and "lstm1" in producers


def test_hidden_units_read_back_through_r_count_in_their_ranking():
    """A unit nothing downstream reads but the layer's own next step is not free to remove: its R columns times its
    energy count toward it."""
    from onnxslim.prune.atoms import Layout
    from onnxslim.prune.edits import EditRole, SliceInput
    from onnxslim.prune.importance import class_scores

    classes = {0: [0], 1: [1]}
    recurrence = np.ones((1, 8, 2), np.float32)
    downstream = np.array([[0.0, 1.0]], np.float32)  # (outputs, inputs): unit 0 unread downstream
    edits = [SliceInput("lstm", 2, 2, Layout(2, (0, 1)), EditRole.RECURRENT), SliceInput("head", 1, 1, Layout(1, (0, 1)), EditRole.CONSUMER)]
    weights = {("lstm", 2): recurrence, ("head", 1): downstream}
    energy = {"lstm/state": np.array([4.0, 1.0]), "head": np.array([4.0, 1.0])}
    scores = class_scores(classes, edits, weights, method="activation", channel_energy=energy)
    assert scores[0] > scores[1] > 0
    without = class_scores(classes, edits[1:], weights, method="activation", channel_energy=energy)
    assert without[0] == 0.0


def test_a_bidirectional_lstm_whose_directions_a_reshape_joins_loses_the_same_units_in_both():
    """A CRNN's (T, 2, N, H) -> Transpose -> (T, N, 2, H) -> Reshape (0, 0, 2H): the joined features are the hidden units
    twice in a row, so the classifier loses the rows of unit j in both halves and the target entry follows."""
    from onnxslim import PruneConfig, prune

    model = crnn_head()
    pruned, report = prune(model, [_feed() for _ in range(16)], config=PruneConfig(ratio=0.25, latency_runs=0), eval_data=[_feed() for _ in range(4)])
    assert [(g.producers, g.channels_before, g.channels_after) for g in report.groups if g.channels_after < g.channels_before] == [(["lstm"], HIDDEN, 48)]
    weights = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    lstm = next(n for n in pruned.graph.node if n.op_type == "LSTM")
    assert weights[lstm.input[1]].shape == (2, 4 * 48, FEATURES) and weights[lstm.input[2]].shape == (2, 4 * 48, 48)
    head = next(n for n in pruned.graph.node if n.name == "classifier")
    join = next(n for n in pruned.graph.node if n.name == "join_directions")
    assert weights[head.input[1]].shape == (2 * 48, CLASSES) and list(weights[join.input[1]]) == [0, 0, 2 * 48]
    onnx.checker.check_model(pruned, full_check=True)
    feed = _feed(steps=17)
    assert run_model(pruned, feed)[0].shape == run_model(model, feed)[0].shape
    assert report.fidelity[0].cosine > 0.8


@pytest.mark.parametrize("op_type", ["GRU", "RNN"])
def test_gru_and_rnn_hidden_units_are_pruned_with_every_gate(op_type):
    """A GRU's three gates (with linear_before_reset, its recurrence bias inside the reset gate) and an RNN's one lose the
    same units in W, R and B; a MatMul reading the sequence loses their rows."""
    from onnxslim import PruneConfig, prune

    gates = {"GRU": 3, "RNN": 1}[op_type]
    rng = np.random.default_rng(2)
    extra = {"linear_before_reset": 1} if op_type == "GRU" else {}
    inits = [numpy_helper.from_array((rng.normal(size=shape) * 0.3).astype(np.float32), name)
             for name, shape in (("W", (1, gates * 16, 12)), ("R", (1, gates * 16, 16)), ("B", (1, 2 * gates * 16)), ("head", (16, 5)))]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "axis1"))
    nodes = [helper.make_node(op_type, ["x", "W", "R", "B"], ["y"], name="recurrent", hidden_size=16, **extra),
             helper.make_node("Squeeze", ["y", "axis1"], ["seq"], name="squeeze"),
             helper.make_node("MatMul", ["seq", "head"], ["scores"], name="head")]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["t", 1, 12])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["t", 1, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = [{"x": rng.normal(size=(STEPS, 1, 12)).astype(np.float32)} for _ in range(12)]
    pruned, report = prune(model, feeds, config=PruneConfig(ratio=0.25, latency_runs=0))
    assert [(g.producers, g.channels_after) for g in report.groups if g.channels_after < g.channels_before] == [(["recurrent"], 12)]
    weights = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    node = next(n for n in pruned.graph.node if n.op_type == op_type)
    assert weights[node.input[1]].shape == (1, gates * 12, 12) and weights[node.input[2]].shape == (1, gates * 12, 12)
    assert weights[node.input[3]].shape == (1, 2 * gates * 12) and next(a.i for a in node.attribute if a.name == "hidden_size") == 12
    onnx.checker.check_model(pruned, full_check=True)
    assert run_model(pruned, feeds[0])[0].shape == (STEPS, 1, 5)
    assert report.fidelity[0].cosine > 0.6  # random weights, a quarter of every gate's units gone


def test_share_gives_recurrent_weights_codebooks_weighted_by_what_they_multiply():
    """W and R of every LSTM become 256-code codebooks, each element weighted by the energy of what it multiplies (W's by
    the layer's input features, R's by the state the layer reads back), and the outputs stay close."""
    from onnxslim import ShareConfig, share
    from onnxslim.measure.channels import STATE
    from onnxslim.share.encode import _weights_of

    model = stacked_lstm()
    shared, report = share(model, _lstm_feeds(16), config=ShareConfig(min_elements=512, latency_runs=0), eval_data=_lstm_feeds(4, seed=1))
    coded = {t.name for t in report.tensors if t.how.startswith("codebook")}
    assert {"l0_W", "l0_R", "l1_W", "l1_R"} <= coded, report.tensors
    assert report.fidelity[0].cosine > 0.99
    feed = _lstm_feeds(1, seed=5)[0]
    np.testing.assert_allclose(run_model(shared, feed)[0], run_model(model, feed)[0], atol=0.05)
    from onnxslim.share.pipeline import _why_slower

    assert "folded every lookup" in _why_slower(model, shared)  # a slower timing is then not the codebooks'
    lstm = next(n for n in model.graph.node if n.name == "lstm0")
    energy = {"lstm0": np.arange(1.0, 13.0), "lstm0" + STATE: np.arange(1.0, 17.0)}
    w = _weights_of(np.zeros((1, 4 * H0, 12), np.float32), "l0_W", [lstm], energy)
    r = _weights_of(np.zeros((1, 4 * H0, H0), np.float32), "l0_R", [lstm], energy)
    assert np.array_equal(w[0, 5], energy["lstm0"]) and np.array_equal(r[0, 5], energy["lstm0" + STATE])
