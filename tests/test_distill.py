"""distill: the trainable module, write-back of weights, the losses, and training a pruned student toward its teacher."""

import importlib
import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

pytest.importorskip("onnx2pytorch", reason="distill needs the distill extra (torch, torchvision, onnx2pytorch)")

from models.builders import GraphBuilder, _rename_output, conv_bn_relu, sample_inputs  # noqa: E402
from onnxslim.cli import main  # noqa: E402
from onnxslim.distill import DistillConfig, distill  # noqa: E402
from onnxslim.distill.losses import LOGITS, PROBABILITIES, VALUES, Term, output_kind, term_loss  # noqa: E402
from onnxslim.distill.module import forward, ready_to_train, to_module, written_back  # noqa: E402
from onnxslim.errors import DataError, UsageError  # noqa: E402
from onnxslim.prune import PruneConfig, prune  # noqa: E402
from onnxslim.quant.prepare import prepare  # noqa: E402
from tests.conftest import run_model  # noqa: E402


def test_output_kinds_are_read_off_the_teacher():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 10)).astype(np.float32)
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    assert output_kind([probabilities]) == PROBABILITIES
    assert output_kind([logits]) == LOGITS
    assert output_kind([rng.normal(size=(2, 8, 16, 16))]) == VALUES


def test_padding_tokens_are_left_out_of_the_loss_as_the_score_leaves_them_out():
    """A student that differs from its teacher only at padding positions has nothing to learn; at a real token it has."""
    import torch

    from onnxslim.distill.pipeline import _real_tokens

    rng = np.random.default_rng(0)
    teacher = torch.from_numpy(rng.standard_normal((2, 6, 8)).astype(np.float32))
    mask = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]], np.int64)
    real = _real_tokens({"input_ids": mask * 7, "attention_mask": mask}, torch.device("cpu"))
    off_padding = teacher.clone()
    off_padding[0, 4:] += 5.0
    off_padding[1, 3:] -= 5.0
    assert float(term_loss(Term("h", VALUES), off_padding, teacher, 1.0, real)) == pytest.approx(0.0, abs=1e-6)
    assert float(term_loss(Term("h", VALUES), off_padding, teacher, 1.0, None)) > 0.1  # without the mask it would be trained on
    off_real = teacher.clone()
    off_real[1, 2] += 5.0
    assert float(term_loss(Term("h", VALUES), off_real, teacher, 1.0, real)) > 0.01
    pooled = torch.from_numpy(rng.standard_normal((2, 8)).astype(np.float32))  # not per token: compared whole
    assert float(term_loss(Term("p", VALUES), pooled + 1.0, pooled, 1.0, real)) > 0.1
    assert _real_tokens({"pixel_values": np.zeros((1, 3, 4, 4), np.float32)}, torch.device("cpu")) is None


def test_feature_hints_leave_out_tensors_the_student_already_matches_and_pooled_statistics():
    """Only tensors that differ between student and teacher teach anything; a pooled vector is a statistic, not a stage."""
    from onnx import numpy_helper

    from onnxslim.distill.pipeline import _shared_features

    teacher = conv_bn_relu(channels=16, size=32)
    student = onnx.ModelProto()
    student.CopyFrom(teacher)
    convs = [n for n in student.graph.node if n.op_type == "Conv"]
    weight = next(i for i in student.graph.initializer if i.name == convs[1].input[1])
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 0.5, weight.name))  # only the second conv differs
    batch = sample_inputs(teacher, 1, seed=0)[0]
    features = _shared_features(student, teacher, batch)
    nodes = list(student.graph.node)
    second_block = [o for n in nodes[nodes.index(convs[1]):] for o in n.output if n.op_type in ("Conv", "BatchNormalization", "Relu")]
    assert features == second_block  # not the first block's (the same in both), not the pooled vector nor its flattening
    every_block = [o for n in nodes for o in n.output if n.op_type in ("Conv", "BatchNormalization", "Relu")]
    assert _shared_features(student, teacher, batch, differing_only=False) == every_block  # --int8: its rounding makes them differ


def test_the_module_reproduces_the_graph_and_writes_its_weights_back():
    import torch

    model = conv_bn_relu(channels=8, size=16)
    prepare(model)
    net, bindings, _ = to_module(model)
    assert {b.initializer for b in bindings} == {t.name for t in model.graph.initializer if len(t.dims) >= 1 and t.name in {i for n in model.graph.node for i in n.input[1:]}}
    feed = sample_inputs(model, 1)[0]
    with torch.no_grad():
        produced = forward(net, feed, ["input"])[0].numpy()
    np.testing.assert_allclose(produced, run_model(model, feed)[0], rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.mul_(1.5)
    changed = written_back(model, net, bindings)
    with torch.no_grad():
        produced = forward(net, feed, ["input"])[0].numpy()
    np.testing.assert_allclose(run_model(changed, feed)[0], produced, rtol=1e-4, atol=1e-5)  # the graph computes what the module computes
    assert [n.op_type for n in changed.graph.node] == [n.op_type for n in model.graph.node]


def test_a_layer_whose_module_holds_its_weight_in_a_child_is_bound_and_trained():
    """A detector's upsampling ConvTranspose: the converter keeps its weight one module deeper than the node's."""
    import torch

    model = _upsampling_model()
    net, bindings, _ = to_module(model)
    transposed = [n for n in model.graph.node if n.op_type == "ConvTranspose"][0]
    assert set(transposed.input[1:]) <= {binding.initializer for binding in bindings}
    feed = sample_inputs(model, 1)[0]
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.mul_(0.5)
        produced = forward(net, feed, ["input"])[0].numpy()
    np.testing.assert_allclose(run_model(written_back(model, net, bindings), feed)[0], produced, rtol=1e-4, atol=1e-5)


def _upsampling_model(seed: int = 4, *, batchnorm: bool = False) -> onnx.ModelProto:
    b = GraphBuilder(seed)
    x = b.node("Relu", [b.conv("input", 3, 8, stride=2)])
    x = b.node("ConvTranspose", [x, b.const(b.weight(8, 4, 2, 2)), b.const(np.full(4, 0.1, np.float32), "b")], strides=[2, 2])
    if batchnorm:  # after a Relu, where no layer can absorb it; stored statistics far from any batch's, as after training on other data
        x = b.node("Relu", [x])
        stats = [np.full(4, v, np.float32) for v in (1.5, -0.2, 0.7, 0.05)]
        x = b.node("BatchNormalization", [x] + [b.const(v, "bn") for v in stats])
    _rename_output(b, b.node("Sigmoid", [x]), "map")
    return b.model([helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", 3, 16, 16])],
                   [helper.make_tensor_value_info("map", onnx.TensorProto.FLOAT, ["batch", 4, 16, 16])], "upsample")


def test_training_steps_normalize_as_the_graph_does():
    """A BatchNormalization no layer absorbs stays in the graph: the module trains with its stored statistics, not each batch's."""
    import torch

    model = _upsampling_model(batchnorm=True)
    net, _, _ = to_module(model)
    ready_to_train(net)
    feed = {"input": np.concatenate([b["input"] for b in sample_inputs(model, 4)])}
    produced = forward(net, feed, ["input"])[0]
    np.testing.assert_allclose(produced.detach().numpy(), run_model(model, feed)[0], rtol=1e-4, atol=1e-5)
    produced.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_a_normalization_written_with_its_training_mode_is_converted_and_one_in_training_mode_refused():
    """torch writes BatchNormalization's training_mode=0 from opset 14 (EfficientWord-Net's input normalization), which the
    converter could not read: at 0 it changes nothing and is left out of the converter's copy; 1 is named in one line."""
    from onnxslim.errors import UnsupportedModelError

    model = _upsampling_model(batchnorm=True)
    model.opset_import[0].version = 15
    normalization = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    normalization.attribute.append(helper.make_attribute("training_mode", 0))
    net, _, _ = to_module(model)
    ready_to_train(net)
    feed = sample_inputs(model, 1)[0]
    np.testing.assert_allclose(forward(net, feed, ["input"])[0].detach().numpy(), run_model(model, feed)[0], rtol=1e-4, atol=1e-5)
    assert any(a.name == "training_mode" for a in normalization.attribute)  # the student's own graph keeps it
    normalization.attribute[-1].i = 1
    with pytest.raises(UnsupportedModelError, match="training_mode=1"):
        to_module(model)


def test_a_dense_layers_bias_of_broadcast_shape_is_trained_and_written_back_in_its_shape():
    """jax2tf writes a Dense layer's bias as (1, 1, N) after a MatMul of (batch, steps, features): the converter's Linear
    wants it 1-D, which its copy of the graph gets; the student's graph keeps (1, 1, N)."""
    import torch

    b = GraphBuilder(6)
    hidden = b.node("MatMul", ["tokens", b.const(b.weight(16, 8).T.copy())])
    biased = b.node("Add", [hidden, b.const(np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 1, 16), "bias")])
    _rename_output(b, b.node("Tanh", [biased]), "features")
    model = b.model([helper.make_tensor_value_info("tokens", onnx.TensorProto.FLOAT, [2, 5, 8])],
                    [helper.make_tensor_value_info("features", onnx.TensorProto.FLOAT, [2, 5, 16])], "dense")
    net, bindings, _ = to_module(model)
    feed = {"tokens": np.random.default_rng(1).standard_normal((2, 5, 8)).astype(np.float32)}
    with torch.no_grad():
        np.testing.assert_allclose(forward(net, feed, ["tokens"])[0].numpy(), run_model(model, feed)[0], rtol=1e-4, atol=1e-5)
        for parameter in net.parameters():
            parameter.add_(0.25)
        produced = forward(net, feed, ["tokens"])[0].numpy()
    changed = written_back(model, net, bindings)
    bias = next(t for t in changed.graph.initializer if t.name.startswith("bias"))
    assert list(bias.dims) == [1, 1, 16] and any(b.initializer == bias.name for b in bindings)
    np.testing.assert_allclose(run_model(changed, feed)[0], produced, rtol=1e-4, atol=1e-5)
    # a product of lower rank than the bias: the bias adds an axis, and flattening it would drop that axis
    module = importlib.import_module("onnxslim.distill.module")
    model.graph.input[0].type.tensor_type.shape.dim.pop(0)
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 1
    module._flat_linear_biases(model)
    assert [list(t.dims) for t in model.graph.initializer if t.name.startswith("bias")] == [[1, 1, 16]]


def test_a_module_torch_cannot_run_is_refused_in_one_line(teacher_and_student, monkeypatch):
    distill_pipeline = importlib.import_module("onnxslim.distill.pipeline")
    from onnxslim.errors import UnsupportedModelError

    def broken(net, batch, input_names, rounding=None):
        raise RuntimeError("expand(torch.FloatTensor{[1, 1, 64]}, size=[2048, 64]): the number of sizes provided (2) must be greater\nsecond line")

    monkeypatch.setattr(distill_pipeline, "forward", broken)
    folder = teacher_and_student
    with pytest.raises(UnsupportedModelError, match="fails on a held-out batch .RuntimeError: expand") as info:
        distill(str(folder / "student.onnx"), str(folder / "teacher.onnx"), str(folder / "data"), config=DistillConfig(epochs=1))
    assert "\n" not in str(info.value) and "cannot be distilled" in str(info.value)


def test_a_scalar_input_is_fed_as_it_came_and_control_flow_is_refused_in_one_line():
    """Silero VAD takes its sample rate as a 0-d input, which no training batch can be joined along; its layers live in
    the branches of an If, which the trainable module cannot follow (SLANet+'s decoder: a Loop)."""
    from onnxslim.errors import UnsupportedModelError

    stacked = importlib.import_module("onnxslim.distill.pipeline")._stacked
    batches = [(f"{i}.npz", {"audio": np.zeros((1, 512), np.float32), "sr": np.array(16000, np.int64)}) for i in range(3)]
    assert stacked(batches, 1) == batches
    b = GraphBuilder(7)
    branch = helper.make_graph([helper.make_node("Relu", ["input"], ["out"])], "branch", [], [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, None)])
    flag = b.node("ReduceMax", ["input"], keepdims=0)
    chosen = b.node("If", [b.node("Greater", [flag, b.const(np.array(0.0, np.float32), "zero")])], then_branch=branch, else_branch=branch)
    _rename_output(b, chosen, "y")
    model = b.model([helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 4])], [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])], "flow")
    with pytest.raises(UnsupportedModelError, match="control flow .If .*cannot be distilled"):
        to_module(model)


def test_a_weight_several_layers_read_is_one_parameter_trained_once():
    """An LSTM unrolled by its export (captcha-whisperer's: one Gemm weight per gate read at every step) or a constant-Q
    kernel read by many convolutions (Basic Pitch): each node's module gets its own copy of the weight, which could not be
    bound ("matches no weight of its node"). The copies are now one parameter, so a step changes the weight everywhere."""
    import torch

    b = GraphBuilder(8)
    shared = b.const(b.weight(12, 12).T.copy(), "shared")
    x = b.node("Tanh", [b.node("MatMul", ["input", shared])])
    x = b.node("Tanh", [b.node("MatMul", [x, shared])])
    _rename_output(b, b.node("MatMul", [x, shared]), "y")
    model = b.model([helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [3, 12])], [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [3, 12])], "tied")
    net, bindings, _ = to_module(model)
    assert [b.initializer for b in bindings] == [shared] and len(list(net.parameters())) == 1
    feed = {"input": np.random.default_rng(2).standard_normal((3, 12)).astype(np.float32)}
    with torch.no_grad():
        next(net.parameters()).mul_(0.8)
        produced = forward(net, feed, ["input"])[0].numpy()
    np.testing.assert_allclose(run_model(written_back(model, net, bindings), feed)[0], produced, rtol=1e-4, atol=1e-5)


def test_a_weight_far_smaller_than_the_learning_rate_is_not_wrecked_by_a_step(tmp_path):
    """A folded normalization can leave a layer's weights at 1e-5 with the next layer scaling back up (PP-OCRv4 det): Adam's
    steps of about lr per element must not move such a tensor by its own size."""
    b = GraphBuilder(6)
    x = b.node("Relu", [b.conv("input", 3, 8)])
    small = b.node("Relu", [b.conv(x, 8, 8)])
    out = b.conv(small, 8, 4)
    _rename_output(b, out, "map")
    model = b.model([helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", 3, 8, 8])],
                    [helper.make_tensor_value_info("map", onnx.TensorProto.FLOAT, ["batch", 4, 8, 8])], "scaled")
    weights = {t.name: t for t in model.graph.initializer}
    middle, last = [n for n in model.graph.node if n.op_type == "Conv"][1:]
    for name, factor in ((middle.input[1], 1e-5), (middle.input[2], 1e-5), (last.input[1], 1e5)):  # the same function
        weights[name].CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weights[name]) * np.float32(factor), name))
    student = onnx.ModelProto()
    student.CopyFrom(model)
    first = {t.name: t for t in student.graph.initializer}[[n for n in student.graph.node if n.op_type == "Conv"][0].input[1]]
    noisy = onnx.numpy_helper.to_array(first) * np.float32(1.3)
    first.CopyFrom(onnx.numpy_helper.from_array(noisy, first.name))
    data = tmp_path / "data"
    data.mkdir()
    for index, batch in enumerate(sample_inputs(model, 30, seed=5)):
        np.savez(data / f"{index:03d}.npz", **batch)
    # the full rate at every step of the first epoch: the size of a step is what is under test
    _, report = distill(student, model, str(data), config=DistillConfig(epochs=2, batch_size=2, patience=2, lr_schedule="constant"))
    assert report.epochs[0].score > report.score_before, (report.score_before, [e.score for e in report.epochs])


def lstm_model(seed: int, scale: float = 1.0) -> onnx.ModelProto:
    """(steps, 1, 6) -> MatMul -> LSTM (hidden 8) -> Squeeze -> MatMul -> (steps, 1, 5): a recognizer's tail."""
    rng = np.random.default_rng(seed)
    weight = lambda *shape: onnx.numpy_helper.from_array((rng.standard_normal(shape) * 0.4).astype(np.float32))  # noqa: E731
    inits = [weight(6, 8), weight(1, 32, 8), weight(1, 32, 8), weight(1, 64), weight(8, 5)]
    for tensor, name in zip(inits, ("w_in", "W", "R", "B", "w_out")):
        tensor.name = name
    inits[0].CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(inits[0]) * np.float32(scale), "w_in"))
    nodes = [
        helper.make_node("MatMul", ["x", "w_in"], ["features"], name="project"),
        helper.make_node("LSTM", ["features", "W", "R", "B"], ["states"], name="lstm", hidden_size=8),
        helper.make_node("Squeeze", ["states", "axis"], ["hidden"], name="squeeze"),
        helper.make_node("MatMul", ["hidden", "w_out"], ["scores"], name="classify"),
    ]
    inits.append(onnx.numpy_helper.from_array(np.array([1], np.int64), "axis"))
    graph = helper.make_graph(nodes, "lstm_tail", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [12, 1, 6])],
                              [helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, [12, 1, 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_recurrent_layers_keep_their_weights_while_the_layers_around_them_train(tmp_path):
    """torch's LSTM holds its gates in another order than ONNX's: the LSTM is left as it is, the projections train."""
    teacher, student = lstm_model(7), lstm_model(7, scale=1.4)  # the same network, its input projection off by 40%
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(8)
    for index in range(40):
        np.savez(data / f"{index:03d}.npz", x=rng.standard_normal((12, 1, 6)).astype(np.float32))
    out = tmp_path / "distilled.onnx"
    _, report = distill(student, teacher, str(data), config=DistillConfig(epochs=6, lr=3e-3, patience=6, batch_size=4), output=str(out))
    assert any(w.startswith("lstm: recurrent layer(s) keep their weights") for w in report.warnings), report.warnings
    assert report.written == "distilled" and report.score_after > report.score_before, (report.score_before, report.score_after)
    before, after = ({t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer} for m in (student, onnx.load(str(out))))
    assert all(np.array_equal(before[name], after[name]) for name in ("W", "R", "B"))
    assert not np.array_equal(before["w_in"], after["w_in"]) and not np.array_equal(before["w_out"], after["w_out"])
    assert report.trainable_parameters == 6 * 8 + 8 * 5
    # cuDNN runs an LSTM's backward pass in training mode only: the LSTM is put in training mode and still computes what the graph does
    import torch

    net, _, _ = to_module(teacher)
    ready_to_train(net)
    recurrent = [m for m in net.modules() if isinstance(m, torch.nn.RNNBase)]
    assert recurrent and all(m.training for m in recurrent) and not net.training
    feed = {"x": rng.standard_normal((12, 1, 6)).astype(np.float32)}
    with torch.no_grad():
        np.testing.assert_allclose(forward(net, feed, ["x"])[0].numpy(), run_model(teacher, feed)[0], rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def teacher_and_student(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distill")
    teacher = conv_bn_relu(channels=16, size=16)
    onnx.save(teacher, str(folder / "teacher.onnx"))
    prune(str(folder / "teacher.onnx"), None, config=PruneConfig(ratio=0.5, latency_runs=0, round_to=1), output=str(folder / "student.onnx"))
    data = folder / "data"
    data.mkdir()
    for index, batch in enumerate(sample_inputs(teacher, 60, seed=3)):
        np.savez(data / f"{index:03d}.npz", **batch)
    return folder


def test_patience_stops_a_cosine_schedule_only_once_its_rate_has_settled(teacher_and_student, monkeypatch):
    """Held-out scores that never beat the student as given: a constant rate stops after --patience epochs; the cosine
    schedule goes on until its rate is down to half (end of epoch 3 of 6), where its gains would come."""
    distill_pipeline = importlib.import_module("onnxslim.distill.pipeline")  # onnxslim.distill is also the function's name

    scores = iter([0.9] + [0.5] * 20)  # the student as given, then every epoch worse
    monkeypatch.setattr(distill_pipeline, "worst_score", lambda comparisons, metric: next(scores))
    folder = teacher_and_student
    args = (str(folder / "student.onnx"), str(folder / "teacher.onnx"), str(folder / "data"))
    _, constant = distill(*args, config=DistillConfig(epochs=6, lr=1e-4, patience=1, lr_schedule="constant"))
    assert len(constant.epochs) == 1 and any("stopped after epoch 1" in w for w in constant.warnings)
    scores = iter([0.9] + [0.5] * 20)
    _, cosine = distill(*args, config=DistillConfig(epochs=6, lr=1e-4, patience=1))
    assert len(cosine.epochs) == 3 and any("stopped after epoch 3" in w for w in cosine.warnings), cosine.warnings
    assert cosine.written == constant.written == "student"


def test_distilling_a_pruned_student_brings_it_closer_to_its_teacher(teacher_and_student, tmp_path):
    folder = teacher_and_student
    out = tmp_path / "distilled.onnx"
    config = DistillConfig(epochs=8, lr=3e-3, patience=8, accuracy_metric="cosine")
    model, report = distill(str(folder / "student.onnx"), str(folder / "teacher.onnx"), str(folder / "data"), config=config, output=str(out))
    assert report.written == "distilled"
    assert report.score_after > report.score_before + 0.02, (report.score_before, report.score_after)
    assert report.output_kinds == {"logits": LOGITS}
    written = onnx.load(str(out))
    onnx.checker.check_model(written)
    read = {name for node in written.graph.node for name in node.input}
    assert all(t.name in read for t in written.graph.initializer)
    student = onnx.load(str(folder / "student.onnx"))
    assert [o.name for o in written.graph.output] == [o.name for o in student.graph.output]
    assert [i.name for i in written.graph.input] == [i.name for i in student.graph.input]
    assert [(o.domain, o.version) for o in written.opset_import] == [(o.domain, o.version) for o in student.opset_import]
    # the file scores what the report says on the held-out batches (every 5th)
    held = [b for i, b in enumerate(sample_inputs(onnx.load(str(folder / "teacher.onnx")), 60, seed=3)) if i % 5 == 4]
    ours = np.concatenate([run_model(written, b)[0].ravel() for b in held])
    theirs = np.concatenate([run_model(onnx.load(str(folder / "teacher.onnx")), b)[0].ravel() for b in held])
    assert float(ours @ theirs / np.linalg.norm(ours) / np.linalg.norm(theirs)) > report.score_before


def test_bfloat16_training_steps_train_the_student_too_and_int8_refuses_them(teacher_and_student):
    folder = teacher_and_student
    args = (str(folder / "student.onnx"), str(folder / "teacher.onnx"), str(folder / "data"))
    _, float32 = distill(*args, config=DistillConfig(epochs=3, lr=3e-3, patience=3))
    _, bfloat16 = distill(*args, config=DistillConfig(epochs=3, lr=3e-3, patience=3, train_precision="bfloat16"))
    assert bfloat16.config["train_precision"] == "bfloat16"
    assert bfloat16.score_after > bfloat16.score_before + 0.02
    assert bfloat16.score_after == pytest.approx(float32.score_after, abs=0.01)  # the held-out score is of the float32 model written
    assert [e.loss for e in bfloat16.epochs] != [e.loss for e in float32.epochs]  # the steps did run in another arithmetic
    with pytest.raises(UsageError, match="--int8 rounds to quantize's INT8 grid"):
        DistillConfig(int8=True, train_precision="bfloat16")


def test_training_device_auto_is_the_cpu_without_a_gpu_and_cuda_without_one_is_refused_in_one_line(teacher_and_student, monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    folder = teacher_and_student
    args = (str(folder / "student.onnx"), str(folder / "teacher.onnx"), str(folder / "data"))
    _, report = distill(*args, config=DistillConfig(epochs=1, lr=3e-3))
    assert report.config["train_device"] == "auto" and report.train_device == "cpu"
    with pytest.raises(UsageError, match=r"--train-device cuda: torch \S+ sees no CUDA device"):
        distill(*args, config=DistillConfig(epochs=1, train_device="cuda"))
    result = CliRunner().invoke(main, ["distill", args[0], "--teacher", args[1], "-o", str(tmp_path / "d.onnx"), "--data", args[2], "--train-device", "cuda"])
    assert result.exit_code != 0 and "--train-device cuda: torch" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "d.onnx").exists()
    result = CliRunner().invoke(main, ["compress", args[1], "-o", str(tmp_path / "c.onnx"), "--data", args[2], "--distill", "--distill-train-device", "cuda"])
    assert result.exit_code != 0 and "--distill-train-device cuda: torch" in result.output and "Traceback" not in result.output


def test_the_reproduction_check_runs_in_full_float32_and_training_keeps_torchs_own_setting():
    import torch

    from onnxslim.distill.module import full_float32

    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    with full_float32():
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before
    with pytest.raises(RuntimeError), full_float32():
        raise RuntimeError("a failed check")
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs torch with a CUDA device")
def test_training_steps_on_cuda_train_the_student_as_on_the_cpu(teacher_and_student, tmp_path):
    folder = teacher_and_student
    args = (str(folder / "student.onnx"), str(folder / "teacher.onnx"), str(folder / "data"))
    _, cpu = distill(*args, config=DistillConfig(epochs=4, lr=3e-3, patience=4, train_device="cpu"))
    model, cuda = distill(*args, config=DistillConfig(epochs=4, lr=3e-3, patience=4, train_device="cuda"), output=str(tmp_path / "d.onnx"))
    assert cpu.train_device == "cpu" and cuda.train_device.startswith("cuda (")
    assert cuda.score_after > cuda.score_before + 0.02
    assert cuda.score_after == pytest.approx(cpu.score_after, abs=0.01)  # other kernels, the same training
    assert [e.loss for e in cuda.epochs] == pytest.approx([e.loss for e in cpu.epochs], rel=0.05)
    onnx.checker.check_model(onnx.load(str(tmp_path / "d.onnx")))
    _, qat = distill(str(folder / "teacher.onnx"), *args[1:], config=DistillConfig(epochs=2, lr=1e-3, int8=True, train_device="cuda"))
    assert qat.int8 and qat.score_after >= qat.score_before  # the INT8 rounding's hooks run on the GPU too


def test_a_cosine_schedule_decays_the_rate_to_zero_by_the_last_epoch_or_the_time_budget(teacher_and_student):
    from onnxslim.distill.pipeline import _cosine_factor

    assert _cosine_factor(0.0, 4, 0.0, None) == 1.0
    assert _cosine_factor(2.0, 4, 0.0, None) == pytest.approx(0.5)
    assert _cosine_factor(4.0, 4, 0.0, None) == pytest.approx(0.0)
    assert _cosine_factor(1.0, 4, 30.0, 1.0) == pytest.approx(0.5)  # 30 s of a 1-minute budget: the time is further along than the epochs
    assert _cosine_factor(1.0, 4, 120.0, 1.0) == pytest.approx(0.0)  # past the budget, never negative
    folder = teacher_and_student
    args = (str(folder / "student.onnx"), str(folder / "teacher.onnx"), str(folder / "data"))
    _, constant = distill(*args, config=DistillConfig(epochs=3, lr=3e-3, patience=3, lr_schedule="constant"))
    _, cosine = distill(*args, config=DistillConfig(epochs=3, lr=3e-3, patience=3))
    assert cosine.config["lr_schedule"] == "cosine"  # the default
    assert [e.lr for e in constant.epochs] == [3e-3] * 3
    rates = [e.lr for e in cosine.epochs]
    assert 3e-3 > rates[0] > rates[1] > rates[2] > 0  # each epoch's last step: just before 1/3, 2/3 and all of the way
    assert rates[2] < 3e-3 * 0.1  # the last step of the last epoch: almost at zero
    assert cosine.score_after > cosine.score_before + 0.02
    assert [e.loss for e in cosine.epochs] != [e.loss for e in constant.epochs]


def test_targets_past_the_memory_budget_are_recomputed_and_train_the_same(teacher_and_student):
    folder = teacher_and_student
    args = (str(folder / "student.onnx"), str(folder / "teacher.onnx"), str(folder / "data"))
    _, kept = distill(*args, config=DistillConfig(epochs=2, lr=3e-3))
    assert kept.teacher_batches_kept > 0 and kept.teacher_batches_recomputed == 0
    # room for none: every batch's targets come from the teacher again at each epoch
    _, bounded = distill(*args, config=DistillConfig(epochs=2, lr=3e-3, teacher_memory_mb=0))
    assert bounded.teacher_batches_kept == 0 and bounded.teacher_batches_recomputed == kept.teacher_batches_kept
    assert any("--teacher-memory-mb" in w for w in bounded.warnings)
    assert [e.loss for e in bounded.epochs] == pytest.approx([e.loss for e in kept.epochs], rel=1e-5)
    assert bounded.score_after == pytest.approx(kept.score_after, abs=1e-6)


def test_the_teachers_targets_may_take_half_the_memory_available_by_default(teacher_and_student, monkeypatch):
    import importlib

    pipeline = importlib.import_module("onnxslim.distill.pipeline")  # the package's name is also the distill function's

    folder = teacher_and_student
    args = (str(folder / "student.onnx"), str(folder / "teacher.onnx"), str(folder / "data"))
    monkeypatch.setattr(pipeline, "available_bytes", lambda: 20 * 2**30)
    _, report = distill(*args, config=DistillConfig(epochs=1, lr=3e-3))
    assert report.config["teacher_memory_mb"] is None and report.teacher_memory_mb == 10 * 1024
    monkeypatch.setattr(pipeline, "available_bytes", lambda: 1 * 2**30)  # a small machine: the floor
    assert pipeline._teacher_memory_mb(DistillConfig()) == pipeline.MIN_TEACHER_MEMORY_MB
    monkeypatch.setattr(pipeline, "available_bytes", lambda: None)  # unknown
    assert pipeline._teacher_memory_mb(DistillConfig()) == pipeline.MIN_TEACHER_MEMORY_MB
    assert pipeline._teacher_memory_mb(DistillConfig(teacher_memory_mb=100.0)) == 100.0


def test_a_student_with_other_outputs_is_refused_in_one_line(teacher_and_student, tmp_path):
    folder = teacher_and_student
    other = onnx.load(str(folder / "student.onnx"))
    other.graph.output[0].name = "renamed"
    other.graph.node[-1].output[0] = "renamed"
    onnx.save(other, str(tmp_path / "other.onnx"))
    with pytest.raises(DataError, match="outputs differ from the teacher's"):
        distill(str(tmp_path / "other.onnx"), str(folder / "teacher.onnx"), str(folder / "data"))
    result = CliRunner().invoke(main, ["distill", str(tmp_path / "other.onnx"), "--teacher", str(folder / "teacher.onnx"), "-o", str(tmp_path / "o.onnx"),
                                       "--data", str(folder / "data")])
    assert result.exit_code != 0 and "outputs differ" in result.output and "Traceback" not in result.output


def test_cli_distill_writes_model_and_report(teacher_and_student, tmp_path):
    folder = teacher_and_student
    out, report_path, page = tmp_path / "d.onnx", tmp_path / "r.json", tmp_path / "r.html"
    result = CliRunner().invoke(main, ["distill", str(folder / "student.onnx"), "--teacher", str(folder / "teacher.onnx"), "-o", str(out), "--data",
                                       str(folder / "data"), "--epochs", "2", "--lr", "0.003", "--report", str(report_path), "--html", str(page), "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert len(report["epochs"]) == 2 and report["score_before"] is not None
    assert report["config"]["lr"] == 0.003 and report["config"]["epochs"] == 2
    assert "before" in result.output and out.exists()
    text = page.read_text()
    assert "<script" in text and "held-out cosine" in text and f"{report['score_after']:.5f}" in text


def test_consecutive_batches_of_one_shape_are_stacked_up_to_the_batch_size():
    from onnxslim.distill.pipeline import _stacked

    small = [(f"b{i}", {"x": np.full((1, 3, 4), i, np.float32)}) for i in range(5)]
    wide = ("w", {"x": np.zeros((1, 3, 6), np.float32)})
    stacked = _stacked(small[:3] + [wide] + small[3:], 2)
    assert [b["x"].shape for _, b in stacked] == [(2, 3, 4), (1, 3, 4), (1, 3, 6), (2, 3, 4)]
    np.testing.assert_array_equal(stacked[0][1]["x"][:, 0, 0], [0, 1])
    assert stacked[0][0] == "b0 .. b1"


def test_compress_distill_trains_each_pruned_candidate_before_quantizing_it(monkeypatch, teacher_and_student, tmp_path):
    from onnxslim.compress import CompressConfig, compress
    from tests.test_compress import _timed_by_macs

    _timed_by_macs(monkeypatch)
    teacher = onnx.load(str(teacher_and_student / "teacher.onnx"))
    config = CompressConfig(ratios=(0.5,), max_loss=0.9, accuracy_metric="cosine", latency_runs=3, distill=True, distill_epochs=2, distill_lr=3e-4,
                            distill_lr_schedule="constant", distill_train_device="cpu")
    _, report = compress(teacher, str(teacher_and_student / "data"), config=config)
    names = [c.name for c in report.candidates]
    assert "pruned 50% + distilled" in names and "pruned 50% + distilled + quantized" in names
    distilled = next(c for c in report.candidates if c.name == "pruned 50% + distilled")
    assert len(distilled.details["distill"]["epochs"]) >= 1 and "distilled (best of" in distilled.note
    assert distilled.details["distill"]["config"]["lr"] == 3e-4 and distilled.details["distill"]["config"]["lr_schedule"] == "constant"
    assert distilled.details["distill"]["config"]["train_device"] == "cpu" and distilled.details["distill"]["train_device"] == "cpu"
    pytest.importorskip("plotly", reason="the HTML report needs the html extra")
    from onnxslim.compress.html import write_html

    write_html(report, tmp_path / "c.html")
    assert "distilled: held-out cosine" in (tmp_path / "c.html").read_text()  # the distilled candidate's curve


def test_fake_quantization_simulates_the_int8_model_and_comes_off_cleanly():
    """The module with quantize's rounding attached computes what onnxruntime's INT8 model computes; removed, the float one."""
    import torch

    from models.builders import hardswish_block
    from onnxslim.distill.fakequant import attach, quantized_tensors
    from onnxslim.quant import QuantConfig
    from onnxslim.quant.pipeline import QuantRun

    model = hardswish_block()
    renamed = {o: f"{o}.tmp_0" for n in model.graph.node for o in n.output if o != "features"}  # Paddle-style names: module names with dots
    for node in model.graph.node:
        node.input[:] = [renamed.get(i, i) for i in node.input]
        node.output[:] = [renamed.get(o, o) for o in node.output]
    data = sample_inputs(model, 20, seed=4)
    config = QuantConfig(accuracy_budget=None, latency_runs=0, output_layers="int8")
    run = QuantRun(model, data, config, None, None, False, align=False)
    plan, params = run.params(run.plan(config))
    activations, weights, hard_swish = quantized_tensors(plan, params, run.prepared)
    prepared = onnx.ModelProto()
    prepared.CopyFrom(run.prepared)
    int8 = run.rebuilt_with_weights(run.prepared, config)
    net, bindings, _ = to_module(prepared)
    parameters_before = {id(p) for p in net.parameters()}
    rounding = attach(net, bindings, activations, weights, signed=False, input_names=["input"], hard_swish=hard_swish)
    assert len(hard_swish) == 3
    assert rounding.weights == len(weights) and not rounding.missed and "input" in rounding.inputs
    feed = sample_inputs(model, 1, seed=50)[0]
    with torch.no_grad():
        simulated = forward(net, feed, ["input"], rounding)[0].numpy().ravel()
    exact_float, real_int8 = run_model(prepared, feed)[0].ravel(), run_model(int8, feed)[0].ravel()

    # the rounding accounts for most of the INT8 model's distance from float
    assert np.linalg.norm(simulated - real_int8) < 0.35 * np.linalg.norm(exact_float - real_int8)
    rounding.remove()
    assert {id(p) for p in net.parameters()} == parameters_before  # the optimizer's parameters survive attach / remove
    with torch.no_grad():
        np.testing.assert_allclose(forward(net, feed, ["input"])[0].numpy().ravel(), exact_float, rtol=1e-4, atol=1e-5)


def test_quantization_aware_distillation_writes_an_int8_model_at_least_as_faithful_as_quantize_alone(teacher_and_student, tmp_path):
    folder = teacher_and_student
    out = tmp_path / "qat.onnx"
    config = DistillConfig(epochs=3, lr=1e-3, int8=True)
    model, report = distill(str(folder / "teacher.onnx"), str(folder / "teacher.onnx"), str(folder / "data"), config=config, output=str(out))
    assert report.int8 and report.rounded_weights == 2 and report.rounded_activations >= 3  # the classifier, an output layer, stays float
    assert report.written in ("distilled-int8", "int8-student")
    assert report.score_after >= report.score_before and len(report.epochs) >= 1
    written = onnx.load(str(out))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in written.graph.node}
    teacher = onnx.load(str(folder / "teacher.onnx"))
    assert [o.name for o in written.graph.output] == [o.name for o in teacher.graph.output]
    result = CliRunner().invoke(main, ["distill", str(folder / "teacher.onnx"), "--teacher", str(folder / "teacher.onnx"), "-o", str(tmp_path / "c.onnx"),
                                       "--data", str(folder / "data"), "--epochs", "1", "--int8", "-q"])
    assert result.exit_code == 0, result.output
