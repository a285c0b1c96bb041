"""An LSTM, GRU or simple RNN a converter unrolled into a Loop over the time steps (tf2onnx's form of nearly every Keras
recurrent layer) becomes one LSTM, GRU or RNN node, with the same outputs; Loops that only look like one are left, with
a reason. Models built here, and Keras 3 layers as tf2onnx 1.17 writes them (tests/exported/keras_recurrent)."""

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxslim import PruneConfig, prune
from onnxslim.passes import CLEANUP, recurrent_loops_as_layers
from onnxslim.quant import QuantConfig, quantize
from tests.conftest import run_model

FEATURES, HIDDEN = 6, 5


def _const(name: str, value, dtype=np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype), name)


def _sigmoid(x: str, out: str, form: str) -> list[onnx.NodeProto]:
    """The gates' sigmoid: ``Sigmoid``, ``HardSigmoid`` (Keras's hard_sigmoid, alpha 0.2, beta 0.5), or that written as
    ``Clip`` of x * 0.2 + 0.5 to [0, 1], as tf2onnx writes Keras's."""
    if form == "Sigmoid":
        return [helper.make_node("Sigmoid", [x], [out])]
    if form == "HardSigmoid":
        return [helper.make_node("HardSigmoid", [x], [out], alpha=0.2, beta=0.5)]
    return [helper.make_node("Mul", [x, "a_fifth"], [f"{out}_scaled"]), helper.make_node("Add", [f"{out}_scaled", "a_half"], [f"{out}_shifted"]),
            helper.make_node("Clip", [f"{out}_shifted", "clip_low", "clip_high"], [out])]


def _step_body(sequence: str, gate_of_hidden: str = "linear", fused: bool = False, hidden: int = HIDDEN, sigmoid: str = "Sigmoid") -> onnx.GraphProto:
    """One Keras LSTM step as tf2onnx writes it: gate weights split from the kernels, the hidden state multiplied by a
    mask of ones, gates i, f, c, o; the step's row read from the outer tensor ``sequence``. ``fused``: the four gates as
one product of each kernel, split after the bias (Keras's ``implementation=2``, without the mask). ``gate_of_hidden='square'`` multiplies the hidden state by itself in the forget gate."""
    n = helper.make_node
    nodes = [
        n("Split", ["kernel", "four"], ["k0", "k1", "k2", "k3"], axis=1),
        n("Split", ["bias", "four"], ["b0", "b1", "b2", "b3"], axis=0),
        n("Split", ["recurrent", "four"], ["r0", "r1", "r2", "r3"], axis=1),
        n("Add", ["t", "one"], ["t_next"]),
        n("Gather", [sequence, "t"], ["x"], axis=0),
        n("Shape", ["h"], ["h_shape"]),
        n("ConstantOfShape", ["h_shape"], ["ones"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
        n("Mul", ["h", "ones"], ["h_masked"]),
    ]
    if fused:
        nodes += [n("MatMul", ["x", "kernel"], ["xw"]), n("MatMul", ["h", "recurrent"], ["hr"]), n("Add", ["xw", "hr"], ["z"]),
                  n("Add", ["z", "bias"], ["zb"]), n("Split", ["zb", "four"], ["pre0", "pre1", "pre2", "pre3"], axis=1)]
    for k in range(0 if fused else 4):
        recurrent_input = "h_masked"
        if k == 1 and gate_of_hidden == "square":
            nodes.append(n("Mul", ["h", "h"], ["h_squared"]))
            recurrent_input = "h_squared"
        nodes += [
            n("MatMul", ["x", f"k{k}"], [f"xw{k}"]),
            n("Add", [f"xw{k}", f"b{k}"], [f"xb{k}"]),
            n("MatMul", [recurrent_input, f"r{k}"], [f"hr{k}"]),
            n("Add", [f"xb{k}", f"hr{k}"], [f"pre{k}"]),
        ]
    nodes += [
        *_sigmoid("pre0", "i", sigmoid), *_sigmoid("pre1", "f", sigmoid), n("Tanh", ["pre2"], ["g"]), *_sigmoid("pre3", "o", sigmoid),
        n("Mul", ["f", "c"], ["kept"]), n("Mul", ["i", "g"], ["written"]), n("Add", ["kept", "written"], ["c_next"]),
        n("Tanh", ["c_next"], ["c_squashed"]), n("Mul", ["o", "c_squashed"], ["h_next"]),
        n("Identity", ["h_next"], ["h_out"]), n("Identity", ["h_next"], ["h_scan"]),
        n("Cast", ["t_next"], ["t_float"], to=TensorProto.FLOAT), n("Cast", ["limit"], ["limit_float"], to=TensorProto.FLOAT),
        n("Less", ["t_float", "limit_float"], ["go_on"]),
    ]
    value = helper.make_tensor_value_info
    inputs = [value("iteration", TensorProto.INT64, []), value("condition", TensorProto.BOOL, []), value("t", TensorProto.INT64, []),
              value("h", TensorProto.FLOAT, None), value("c", TensorProto.FLOAT, None), value("limit", TensorProto.INT64, []),
              value("kernel", TensorProto.FLOAT, None), value("recurrent", TensorProto.FLOAT, None), value("bias", TensorProto.FLOAT, None)]
    outputs = [value("go_on", TensorProto.BOOL, []), value("t_next", TensorProto.INT64, []), value("h_out", TensorProto.FLOAT, None),
               value("c_next", TensorProto.FLOAT, None), value("limit", TensorProto.INT64, []), value("kernel", TensorProto.FLOAT, None),
               value("recurrent", TensorProto.FLOAT, None), value("bias", TensorProto.FLOAT, None), value("h_scan", TensorProto.FLOAT, None)]
    initializers = [_const("one", 1, np.int64), _const("four", [hidden] * 4, np.int64), _const("a_fifth", 0.2), _const("a_half", 0.5),
                    _const("clip_low", 0.0), _const("clip_high", 1.0)]
    return helper.make_graph(nodes, "step", inputs, outputs, initializers)


def _gru_step_body(sequence: str, sigmoid: str = "Sigmoid") -> onnx.GraphProto:
    """One Keras GRU step (reset_after=True, TF2's default) as tf2onnx writes it: both products split into the update,
    reset and candidate parts, the reset gate scaling the recurrent part of the candidate, bias included."""
    n = helper.make_node
    nodes = [
        n("Add", ["t", "one"], ["t_next"]),
        n("Gather", [sequence, "t"], ["x"], axis=0),
        n("MatMul", ["x", "kernel"], ["xw"]), n("Add", ["xw", "input_bias"], ["xb"]), n("Split", ["xb", "three"], ["x_z", "x_r", "x_h"], axis=1),
        n("Shape", ["h"], ["h_shape"]),
        n("ConstantOfShape", ["h_shape"], ["ones"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
        n("Mul", ["h", "ones"], ["h_masked"]),
        n("MatMul", ["h_masked", "recurrent"], ["hr"]), n("Add", ["hr", "recurrent_bias"], ["hb"]), n("Split", ["hb", "three"], ["h_z", "h_r", "h_h"], axis=1),
        n("Add", ["x_z", "h_z"], ["pre_z"]), *_sigmoid("pre_z", "z", sigmoid),
        n("Add", ["x_r", "h_r"], ["pre_r"]), *_sigmoid("pre_r", "r", sigmoid),
        n("Mul", ["r", "h_h"], ["reset_h"]), n("Add", ["x_h", "reset_h"], ["pre_n"]), n("Tanh", ["pre_n"], ["candidate"]),
        n("Mul", ["z", "h"], ["kept"]), n("Sub", ["one_float", "z"], ["not_z"]), n("Mul", ["not_z", "candidate"], ["written"]),
        n("Add", ["kept", "written"], ["h_next"]), n("Identity", ["h_next"], ["h_out"]), n("Identity", ["h_next"], ["h_scan"]),
        n("Less", ["t_next", "limit"], ["go_on"]),
    ]
    value = helper.make_tensor_value_info
    names = ["kernel", "recurrent", "input_bias", "recurrent_bias"]
    inputs = [value("iteration", TensorProto.INT64, []), value("condition", TensorProto.BOOL, []), value("t", TensorProto.INT64, []),
              value("h", TensorProto.FLOAT, None), value("limit", TensorProto.INT64, []), *(value(w, TensorProto.FLOAT, None) for w in names)]
    outputs = [value("go_on", TensorProto.BOOL, []), value("t_next", TensorProto.INT64, []), value("h_out", TensorProto.FLOAT, None),
               value("limit", TensorProto.INT64, []), *(value(w, TensorProto.FLOAT, None) for w in names), value("h_scan", TensorProto.FLOAT, None)]
    initializers = [_const("one", 1, np.int64), _const("three", [HIDDEN] * 3, np.int64), _const("one_float", 1.0), _const("a_fifth", 0.2),
                    _const("a_half", 0.5), _const("clip_low", 0.0), _const("clip_high", 1.0)]
    return helper.make_graph(nodes, "gru_step", inputs, outputs, initializers)


def keras_loop(*, limit: str = "length", start: int = 0, gate_of_hidden: str = "linear", backwards: bool = False, fused: bool = False,
                    hidden: int = HIDDEN, head: bool = False, sigmoid: str = "Sigmoid", cell: str = "LSTM", first_condition: str = "go") -> onnx.ModelProto:
    """inputs (N, T, F) -> a Keras-style LSTM (or ``cell='GRU'``) unrolled into a Loop -> the last hidden state (N, H), every
    step's (T, N, H), the final cell state (an LSTM's). ``limit='five'`` runs the loop five steps whatever the length; ``start`` is the counter's first value;
``head``: the last hidden state through a dense layer to 3 scores, the one output; ``first_condition='never'`` starts the
loop with a constant false."""
    rng = np.random.default_rng(3)
    n = helper.make_node
    nodes = [n("Transpose", ["inputs"], ["time_major"], perm=[1, 0, 2])]
    sequence = "time_major"
    if backwards:
        nodes += [n("Shape", ["time_major"], ["tm_shape"]), n("Gather", ["tm_shape", "zero_index"], ["steps_scalar"], axis=0),
                  n("Gather", ["tm_shape", "one_index"], ["batch_scalar"], axis=0), n("Expand", ["steps_scalar", "batch_scalar"], ["lengths"]),
                  n("ReverseSequence", ["time_major", "lengths"], ["reversed"], batch_axis=1, time_axis=0)]
        sequence = "reversed"
    nodes += [
        n("Shape", ["time_major"], ["shape"]),
        n("Slice", ["shape", "zero", "one_end", "zero"], ["first"]),
        n("Squeeze", ["first", "zero"], ["length"]),
        n("Less", ["start", limit], ["go"]),
        n("Shape", ["inputs"], ["input_shape"]),
        n("Slice", ["input_shape", "zero", "one_end", "zero"], ["batch"]),
        n("Concat", ["batch", "hidden_size"], ["state_shape"], axis=0),
        n("Expand", ["zero_float", "state_shape"], ["zeros"]),
    ]
    if cell == "GRU":
        loop_outputs = ["t_end", "h_end", "limit_end", "kernel_end", "recurrent_end", "input_bias_end", "recurrent_bias_end", "every_h"]
        nodes.append(n("Loop", ["", "go", "start", "zeros", limit, "gru_kernel", "gru_recurrent", "gru_input_bias", "gru_recurrent_bias"], loop_outputs,
                       body=_gru_step_body(sequence, sigmoid)))
    else:
        loop_outputs = ["t_end", "h_end", "c_end", "limit_end", "kernel_end", "recurrent_end", "bias_end", "every_h"]
        nodes.append(n("Loop", ["", first_condition, "start", "zeros", "zeros", limit, "kernel", "recurrent", "bias"], loop_outputs,
                       body=_step_body(sequence, gate_of_hidden, fused, hidden, sigmoid)))
    nodes.append(n("Gather", ["every_h", "minus_one"], ["last"], axis=0))
    initializers = [
        _const("kernel", rng.normal(size=(FEATURES, 4 * hidden)) * 0.5), _const("recurrent", rng.normal(size=(hidden, 4 * hidden)) * 0.5),
        _const("bias", rng.normal(size=4 * hidden) * 0.3), _const("start", start, np.int64), _const("zero", [0], np.int64),
        _const("one_end", [1], np.int64), _const("hidden_size", [hidden], np.int64), _const("zero_float", 0.0),
        _const("minus_one", -1, np.int64), _const("five", 5, np.int64), _const("zero_index", 0, np.int64), _const("one_index", [1], np.int64),
        _const("never", False, np.bool_),
        _const("gru_kernel", rng.normal(size=(FEATURES, 3 * HIDDEN)) * 0.5), _const("gru_recurrent", rng.normal(size=(HIDDEN, 3 * HIDDEN)) * 0.5),
        _const("gru_input_bias", rng.normal(size=3 * HIDDEN) * 0.3), _const("gru_recurrent_bias", rng.normal(size=3 * HIDDEN) * 0.3),
    ]
    value = helper.make_tensor_value_info
    outputs = [value("last", TensorProto.FLOAT, ["N", hidden]), value("every_h", TensorProto.FLOAT, ["T", "N", hidden])]
    if cell == "LSTM":
        outputs.append(value("c_end", TensorProto.FLOAT, ["N", hidden]))
    if head:
        nodes.append(n("MatMul", ["last", "dense"], ["scores"]))
        initializers.append(_const("dense", rng.normal(size=(hidden, 3))))
        outputs = [value("scores", TensorProto.FLOAT, ["N", 3])]
    graph = helper.make_graph(nodes, "keras_lstm", [value("inputs", TensorProto.FLOAT, ["N", "T", FEATURES])], outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


@pytest.mark.parametrize(("cell", "backwards", "fused", "sigmoid"), [
    ("LSTM", False, False, "Sigmoid"), ("LSTM", True, False, "Sigmoid"), ("LSTM", False, True, "Sigmoid"), ("LSTM", False, False, "HardSigmoid"),
    ("LSTM", False, True, "Clip"), ("GRU", False, False, "Sigmoid"), ("GRU", True, False, "Sigmoid"), ("GRU", False, False, "Clip"),
])
@pytest.mark.parametrize("steps", [1, 7])
def test_a_loop_that_is_a_recurrent_step_becomes_that_layer_with_the_same_outputs(steps, cell, backwards, fused, sigmoid):
    model = keras_loop(backwards=backwards, fused=fused, sigmoid=sigmoid, cell=cell)
    rewritten = _copy(model)
    result = recurrent_loops_as_layers(rewritten)
    assert result.modified and f"{cell} step" in result.changes[0] and f"hidden size {HIDDEN}" in result.changes[0]
    ops = Counter(node.op_type for node in rewritten.graph.node)
    assert ops[cell] == 1 and ops["Loop"] == 0
    onnx.checker.check_model(rewritten, full_check=True)
    feed = {"inputs": np.random.default_rng(steps).normal(size=(3, steps, FEATURES)).astype(np.float32)}
    for expected, got in zip(run_model(model, feed), run_model(rewritten, feed)):
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=2e-6)


def test_the_cleanup_leaves_the_lstms_zero_states_out_and_nothing_of_the_loop():
    model = keras_loop()
    cleaned = _copy(model)
    CLEANUP(cleaned)
    ops = Counter(node.op_type for node in cleaned.graph.node)
    assert ops["LSTM"] == 1 and not ops["Loop"] and not ops["Expand"]
    lstm = next(node for node in cleaned.graph.node if node.op_type == "LSTM")
    assert len(lstm.input) == 4  # the zero initial states are ONNX's default
    feed = {"inputs": np.random.default_rng(0).normal(size=(2, 9, FEATURES)).astype(np.float32)}
    for expected, got in zip(run_model(model, feed), run_model(cleaned, feed)):
        np.testing.assert_allclose(got, expected, atol=2e-6)


@pytest.mark.parametrize(("settings", "why"), [
    ({"limit": "five"}, "the loop's limit is not read as the sequence's length"),
    ({"start": 1}, "the step counter does not start at 0"),
    ({"first_condition": "never"}, "the loop never runs: its first condition is false"),
    ({"gate_of_hidden": "square"}, "the gates are not affine in the step's input and the hidden state"),
])
def test_a_loop_that_only_looks_like_a_recurrent_step_is_left_with_its_reason(settings, why):
    model = keras_loop(**settings)
    rewritten = _copy(model)
    result = recurrent_loops_as_layers(rewritten)
    assert not result.modified and rewritten == model
    assert [d.reason.text for d in result.declined] == [why]


@pytest.mark.parametrize(("cell", "sigmoid", "quantized_as"), [("LSTM", "Sigmoid", "DynamicQuantizeLSTM"), ("LSTM", "Clip", "DynamicQuantizeLSTM"),
                                                            ("GRU", "Sigmoid", "GRU")])
def test_quantize_stores_the_recovered_layer_in_int8(save, npz_folder, cell, sigmoid, quantized_as):
    """An LSTM runs as DynamicQuantizeLSTM; a GRU, which onnxruntime has no integer kernel for, keeps INT8 gate rows."""
    model = keras_loop(sigmoid=sigmoid, cell=cell)
    rng = np.random.default_rng(5)
    data = npz_folder([{"inputs": rng.normal(size=(4, 12, FEATURES)).astype(np.float32)} for _ in range(10)])
    quantized, report = quantize(save(model), str(data), config=QuantConfig(latency_runs=0, accuracy_budget=None))
    ops = Counter(node.op_type for node in quantized.graph.node)
    assert ops[quantized_as] == 1 and not ops["Loop"]
    assert any(r.name == "recurrent-loops-as-layers" and r.modified for r in report.prepare)
    assert any(d.op_type == cell and d.quantized for d in report.decisions)
    feed = {"inputs": rng.normal(size=(4, 12, FEATURES)).astype(np.float32)}
    expected, got = run_model(model, feed)[0], run_model(quantized, feed)[0]
    assert float(expected.ravel() @ got.ravel() / np.linalg.norm(expected) / np.linalg.norm(got)) > 0.99


def test_prune_removes_hidden_units_of_the_recovered_lstm_and_counts_the_loops_work():
    """The original's Loop body has no multiply-add count; prune counts the prepared graph's, which computes the same."""
    model = keras_loop(hidden=32, head=True)
    pruned, report = prune(model, config=PruneConfig(ratio=0.5, latency_runs=0), input_shapes={"inputs": (2, 9, FEATURES)})
    lstm = next(node for node in pruned.graph.node if node.op_type == "LSTM")
    assert 0 < helper.get_attribute_value(next(a for a in lstm.attribute if a.name == "hidden_size")) < 32
    steps, batch = 9, 2
    # W, R and the dense head, at the input's sizes: what the Loop computed, counted before a unit was cut
    assert report.macs.before == steps * batch * 4 * 32 * (FEATURES + 32) + batch * 32 * 3
    assert 0 < report.macs.after < report.macs.before


EXPORTED = Path(__file__).parent / "exported" / "keras_recurrent"  # written by models/keras_recurrent_export.py


@pytest.mark.parametrize("name", sorted(p.stem for p in EXPORTED.glob("*.onnx")))
def test_keras_layers_as_tf2onnx_writes_them_become_lstm_and_gru_nodes_with_kerass_outputs(name):
    """TensorFlow 2.21's Keras layers through tf2onnx 1.17: every one a Loop (dropout, hard_sigmoid, both GRU forms,
    SimpleRNN, a length fixed at export)."""
    model = onnx.load(str(EXPORTED / f"{name}.onnx"))
    assert any(node.op_type == "Loop" for node in model.graph.node)
    cleaned = _copy(model)
    results = CLEANUP(cleaned)
    rewritten = next(r for r in results if r.name == "recurrent-loops-as-layers")
    layers = 2 if name.startswith("bi") else 1
    assert len(rewritten.changes) == layers and not rewritten.declined
    ops = Counter(node.op_type for node in cleaned.graph.node)
    assert not ops["Loop"] and ops[{"gru": "GRU", "simple": "RNN"}.get(name.split("_")[0], "LSTM")] == layers
    with np.load(EXPORTED / f"{name}.npz") as data:
        x, kerass = data["x"], data["keras"]
    np.testing.assert_allclose(run_model(cleaned, {"x": x})[0], kerass, atol=1e-5)
    if "fixed_length" not in name:  # another length
        np.testing.assert_allclose(run_model(cleaned, {"x": x[:, :5]})[0], run_model(model, {"x": x[:, :5]})[0], atol=1e-5)
