import dataclasses
import json

import numpy as np
import onnx
import onnx.compose
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from models.builders import (
    ALL_BUILDERS,
    GraphBuilder,
    _image_input,
    _output,
    _rename_output,
    conv_bn_relu,
    generated_weights,
    mlp,
    residual,
    sample_inputs,
    widening_residual,
)
from onnxslim import PruneConfig, prune
from onnxslim.cli import main
from onnxslim.errors import NothingToDoError, UsageError
from onnxslim.ir import load_model
from onnxslim.ir.graph import node_attr
from onnxslim.ir.shapes import infer_shapes
from onnxslim.ir.tensors import all_value_names
from onnxslim.prune.edits import EditRole, GroupedInput, SliceInput, WorkingWeights, positions
from onnxslim.prune.groups import apply_removal, build_groups
from onnxslim.prune.select import select
from onnxslim.prune.structured import PREPARE, channel_scores
from onnxslim.prune.trace import trace
from tests.conftest import run_model

FAST = PruneConfig(ratio=0.5, latency_runs=0)


def assert_pruned_as_masked(model, masked, pruned, count: int, seed: int = 100, atol: float = 1e-5) -> None:
    """The first output of ``pruned`` equals ``masked``'s (see :func:`masked_and_pruned`) on ``count`` random inputs."""
    for feed in sample_inputs(model, count, seed=seed):
        np.testing.assert_allclose(run_model(masked, feed)[0], run_model(pruned, feed)[0], rtol=1e-4, atol=atol)


def masked_and_pruned(model, ratio=0.5, config=FAST):
    """The pruned model, and the original with the removed channels' consumer weights zeroed.

    Removing a channel must equal cutting its every use: the two models compute the same function.
    """
    work = load_model(model)
    PREPARE(work)
    groups = build_groups(trace(work, infer_shapes(work)))
    removed, reports = select(groups, channel_scores(work, groups, config.importance), ratio, config.selection)
    pruned = apply_removal(work, groups, removed)
    atoms = groups.atoms_of(removed)
    masked = load_model(work)
    view = WorkingWeights(masked, all_value_names(masked.graph))
    for edit in groups.tracing.edits:
        if isinstance(edit, SliceInput) and edit.kind == EditRole.CONSUMER:
            array = view.get(edit.node, edit.index).copy()
            index = [slice(None)] * array.ndim
            index[edit.axis] = positions(edit.layout, atoms)
            array[tuple(index)] = 0
            view.set(edit.node, edit.index, array)
        elif isinstance(edit, GroupedInput):
            array = view.get(edit.node, 1).copy()
            rows = array.shape[0] // edit.groups
            for group, cut in enumerate(edit.removed_per_group(atoms)):
                array[group * rows : (group + 1) * rows, cut] = 0
            view.set(edit.node, 1, array)
    view.commit()
    return pruned, masked, reports, atoms


@pytest.mark.parametrize("name", sorted(ALL_BUILDERS))
def test_pruned_model_equals_original_with_removed_channels_cut(name):
    model = ALL_BUILDERS[name]()
    pruned, masked, groups, atoms = masked_and_pruned(model)
    assert atoms, f"{name}: nothing was pruned"
    onnx.checker.check_model(pruned)
    for feed in sample_inputs(model, 2, seed=11):
        for a, b in zip(run_model(masked, feed), run_model(pruned, feed)):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_a_shortcut_widened_by_a_pad_prunes_with_the_channels_it_meets():
    """TFLite's widened shortcut: the narrow channels leave together with the wide ones the Pad lines them up with, the
    Pad keeps its zero channels (the wide channels opposite them stay), and nothing else changes."""
    model = widening_residual(24, 28)
    pruned, masked, groups, _ = masked_and_pruned(model)
    shapes = {t.name: tuple(t.dims) for t in pruned.graph.initializer}
    stem, _, pointwise, *_ = [shapes[n.input[1]] for n in pruned.graph.node if n.op_type == "Conv"]
    kept = stem[0]
    assert kept < 24 and pointwise[0] == kept + 4  # the 4 channels opposite the Pad's zeros stay
    pad = next(n for n in pruned.graph.node if n.op_type == "Pad")
    assert numpy_helper.to_array(next(t for t in pruned.graph.initializer if t.name == pad.input[1])).tolist() == [0, 0, 0, 0, 0, 4, 0, 0]
    assert_pruned_as_masked(model, masked, pruned, 2)


def test_weights_really_shrink_and_residual_groups_are_tied():
    model = residual(channels=16, blocks=2)
    pruned, _, groups, _ = masked_and_pruned(model)
    tied = [g for g in groups if len(g.producers) == 3]  # stem conv and both blocks' second convs feed the residual stream
    assert len(tied) == 1 and tied[0].channels_after == 8
    shapes = {t.name: tuple(t.dims) for t in pruned.graph.initializer}
    conv_weights = [shapes[n.input[1]] for n in pruned.graph.node if n.op_type == "Conv"]
    assert conv_weights[0] == (8, 3, 3, 3)
    assert all(shape[1] in (8, 3) for shape in conv_weights)


def test_se_gate_and_depthwise_prune_together():
    pruned, _, groups, _ = masked_and_pruned(ALL_BUILDERS["depthwise_separable"]())
    depthwise = next(n for n in pruned.graph.node if n.op_type == "Conv" and next((a.i for a in n.attribute if a.name == "group"), 1) > 1)
    assert next(a.i for a in depthwise.attribute if a.name == "group") == 8
    squeeze = [g for g in groups if g.channels_before == 4]
    assert squeeze and squeeze[0].channels_after == 2


@pytest.mark.parametrize("flatten", ["Flatten", "Reshape"])
def test_flatten_into_gemm_cuts_feature_blocks(flatten):
    b = GraphBuilder(9)
    x = b.node("Relu", [b.conv("input", 3, 8)])
    x = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    if flatten == "Flatten":
        x = b.node("Flatten", [x], axis=1)
    else:  # as Caffe2 exports wrote it: a constant (1, C*H*W) target
        x = b.node("Reshape", [x, b.const(np.array([1, 8 * 4 * 4], np.int64), "shape")])
    y = b.node("Gemm", [x, b.const(b.weight(5, 8 * 4 * 4)), b.const(np.zeros(5, np.float32))], transB=1)
    model = b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])], [helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, 5])], "flat")
    pruned, masked, _, atoms = masked_and_pruned(model)
    gemm = next(n for n in pruned.graph.node if n.op_type == "Gemm")
    weight = next(t for t in pruned.graph.initializer if t.name == gemm.input[1])
    assert tuple(weight.dims) == (5, 4 * 16)
    feed = sample_inputs(model, 1)[0]
    np.testing.assert_allclose(run_model(masked, feed)[0], run_model(pruned, feed)[0], rtol=1e-4, atol=1e-4)


def test_unknown_op_blocks_its_group_instead_of_breaking_the_graph():
    b = GraphBuilder(10)
    a = b.node("Relu", [b.conv("input", 3, 8)])
    odd = b.node("LpNormalization", [a], axis=1)  # mixes all channels: no rule
    y = b.conv(odd, 8, 4)
    c = b.node("Relu", [b.conv("input", 3, 6)])
    z = b.node("Add", [y, b.conv(c, 6, 4)])
    model = b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])], [helper.make_tensor_value_info(z, TensorProto.FLOAT, [1, 4, 8, 8])], "odd")
    pruned, report = prune(model, config=FAST)
    blocked = [g for g in report.groups if g.channels_before == 8]
    assert blocked[0].channels_after == 8 and "LpNormalization" in blocked[0].skipped
    assert any(g.channels_before == 6 and g.channels_after == 3 for g in report.groups)
    feed = sample_inputs(model, 1)[0]
    assert run_model(pruned, feed)[0].shape == (1, 4, 8, 8)


def test_importance_removes_the_weakest_channels():
    b = GraphBuilder(11)
    weight = np.ones((6, 3, 1, 1), np.float32)
    weight[[1, 4]] *= 0.01  # two nearly dead filters
    x = b.node("Relu", [b.node("Conv", ["input", b.const(weight)], kernel_shape=[1, 1])])
    y = b.conv(x, 6, 2, k=1)
    model = b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])], [helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, 2, 4, 4])], "weak")
    work = load_model(model)
    PREPARE(work)
    groups = build_groups(trace(work, infer_shapes(work)))
    for method in ("l1", "l2"):
        config = PruneConfig(ratio=0.34, importance=method, latency_runs=0)
        removed, _ = select(groups, channel_scores(work, groups, method), 0.34, config.selection)
        assert [channel for _, channel in groups.channels_of(removed)] == [1, 4], method


def test_ratio_zero_is_bit_identical():
    model = conv_bn_relu()
    pruned, report = prune(model, config=PruneConfig(ratio=0.0, latency_runs=0))
    for feed in sample_inputs(model, 2):
        for a, b in zip(run_model(model, feed), run_model(pruned, feed)):
            np.testing.assert_array_equal(a, b)
    assert report.parameters[0] == report.parameters[1]


def test_round_to_and_budgets():
    model = mlp(hidden=64)
    _, report = prune(model, config=PruneConfig(ratio=0.3, round_to=8, latency_runs=0))
    assert all(g.channels_after % 8 == 0 for g in report.groups if g.channels_after < g.channels_before)
    _, budget = prune(model, config=PruneConfig(target_params=0.6, latency_runs=0))
    assert budget.parameters[1] <= 0.6 * budget.parameters[0]
    _, macs = prune(residual(), config=PruneConfig(target_macs=0.5, latency_runs=0))
    assert macs.macs[1] <= 0.5 * macs.macs[0]


def test_every_channel_multiple_timed_under_a_budget_meets_the_budget(monkeypatch):
    """Rounding keeps more channels at larger multiples; each multiple is selected at its own ratio, so whichever is fastest fits."""
    import sys

    monkeypatch.setattr(sys.modules["onnxslim.prune.structured"], "choose_multiple", lambda ratios: max(ratios))  # the largest multiple that removes channels
    model = residual(channels=40)
    _, report = prune(model, config=PruneConfig(target_macs=0.5, latency_runs=3))
    assert report.widths.multiple >= 8 and len(report.widths.measured) >= 2, report.widths
    assert report.macs[1] <= 0.5 * report.macs[0], (report.widths, report.macs)


def test_recovery_brings_outputs_back():
    model = mlp(d_in=16, hidden=64)
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((4, 16)).astype(np.float32)
    # correlated, low-rank inputs; 1 batch in 5 is held out, and the fidelity is measured on those
    data = [{"input": (rng.standard_normal((32, 4)).astype(np.float32) @ basis)} for _ in range(24)]
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    scores = {}
    for recovery in ("none", "bias", "refit"):
        _, report = prune(model, config=PruneConfig(ratio=0.5, importance="activation", recovery=recovery, latency_runs=0), data=data)
        scores[recovery] = report.fidelity[0].cosine
        assert report.evaluation.startswith("4 held-out batch(es)")
    assert scores["refit"] > scores["none"] and scores["bias"] >= scores["none"] - 1e-6
    assert scores["refit"] > 0.99


def crnn_tail(seed: int = 41) -> onnx.ModelProto:
    """A text recognizer's tail: Conv over a 1-pixel-high map, Squeeze of the height, Transpose to (steps, batch,
    channels), an LSTM reading the channels as features, Squeeze of its direction, MatMul to the classes."""
    b = GraphBuilder(seed)
    x = b.node("Relu", [b.node("Conv", ["input", b.const(b.weight(24, 8, 1, 3)), b.const(np.full(24, 0.1, np.float32))], pads=[0, 1, 0, 1])])
    x = b.node("Squeeze", [x, b.const(np.array([2], np.int64))])
    x = b.node("Transpose", [x], perm=[2, 0, 1])
    rng = np.random.default_rng(seed)
    w, r = (b.const((rng.standard_normal((1, 32, n)) * 0.3).astype(np.float32)) for n in (24, 8))
    states = b.node("LSTM", [x, w, r, b.const((rng.standard_normal((1, 64)) * 0.1).astype(np.float32))], hidden_size=8)
    y = b.node("MatMul", [b.node("Squeeze", [states, b.const(np.array([1], np.int64))]), b.const(b.weight(8, 6))])
    _rename_output(b, y, "scores")
    return b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 8, 1, 20])],
                   [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [20, 1, 6])], "crnn_tail")


def test_channels_read_by_a_recurrent_layer_are_pruned_through_squeeze_and_refit():
    model = crnn_tail()
    rng = np.random.default_rng(4)
    data = [{"input": (rng.standard_normal((1, 8, 1, 20)) + 0.5).astype(np.float32)} for _ in range(40)]
    scores = {}
    for recovery in ("none", "bias", "refit"):
        pruned, report = prune(model, config=PruneConfig(ratio=0.5, importance="activation", recovery=recovery, latency_runs=0, round_to=1), data=data)
        scores[recovery] = report.fidelity[0].cosine
        assert run_model(pruned, data[0])[0].shape == (20, 1, 6)
    # the convolution's channels, and the LSTM's own hidden units (8 -> 4: every gate's rows, R's columns, hidden_size)
    assert [g.channels_after for g in report.groups if g.channels_after < g.channels_before] == [12, 4], report.groups
    lstm = next(n for n in pruned.graph.node if n.op_type == "LSTM")
    weights = {t.name: t for t in pruned.graph.initializer}
    assert tuple(weights[lstm.input[1]].dims) == (1, 16, 12) and tuple(weights[lstm.input[3]].dims) == (1, 32)
    assert tuple(weights[lstm.input[2]].dims) == (1, 16, 4) and next(a.i for a in lstm.attribute if a.name == "hidden_size") == 4
    assert [step.reason.code.value for step in report.recovery if step.layer == lstm.name] == ["refit"]
    assert scores["refit"] > scores["bias"] > scores["none"], scores


def test_unsqueeze_and_squeeze_of_other_axes_move_the_channel_axis():
    b = GraphBuilder(42)
    x = b.node("Relu", [b.conv("input", 3, 16)])
    x = b.node("Unsqueeze", [x, b.const(np.array([0, 3], np.int64))])  # (1, 1, 16, 1, 8, 8): channels now on axis 2
    x = b.node("Squeeze", [x, b.const(np.array([0, -3], np.int64))])  # back to (1, 16, 8, 8)
    y = b.conv(x, 16, 4)
    _rename_output(b, y, "map")
    model = b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])], [helper.make_tensor_value_info("map", TensorProto.FLOAT, [1, 4, 8, 8])], "moved")
    pruned, report = prune(model, config=PruneConfig(ratio=0.5, latency_runs=0, round_to=1))
    assert [g.channels_after for g in report.groups if g.channels_after < g.channels_before] == [8], report.groups
    data = sample_inputs(model, 1)[0]
    assert run_model(pruned, data)[0].shape == (1, 4, 8, 8)


def test_bias_recovery_of_one_dimensional_convolutions():
    """A speech front end's Conv1d layers (weights (out, in, k)): the removed inputs' mean contribution goes into the bias."""
    b = GraphBuilder(31)
    x = b.node("Relu", [b.node("Conv", ["input", b.const(b.weight(16, 4, 3)), b.const(np.zeros(16, np.float32))], pads=[1, 1])])
    x = b.node("Relu", [b.node("Conv", [x, b.const(b.weight(16, 16, 3)), b.const(np.zeros(16, np.float32))], pads=[1, 1])])
    y = b.node("Conv", [x, b.const(b.weight(4, 16, 1)), b.const(np.zeros(4, np.float32))])
    model = b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, 32])], [helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, 4, 32])], "conv1d")
    rng = np.random.default_rng(3)
    data = [{"input": (rng.standard_normal((1, 4, 32)) + 1.0).astype(np.float32)} for _ in range(10)]
    scores = {}
    for recovery in ("none", "bias"):
        pruned, report = prune(model, config=PruneConfig(ratio=0.5, importance="activation", recovery=recovery, latency_runs=0), data=data)
        scores[recovery] = report.fidelity[0].cosine
        assert run_model(pruned, data[0])[0].shape == (1, 4, 32)
    assert any(step.reason.code.value == "bias" for step in report.recovery)
    assert scores["bias"] > scores["none"]


def test_unstructured_sparsity_keeps_shapes():
    model = residual()
    pruned, report = prune(model, config=PruneConfig(ratio=0.5, unstructured=True, latency_runs=0))
    assert report.mode == "unstructured" and report.warnings
    zeros = [float(np.mean(onnx.numpy_helper.to_array(t) == 0)) for t in pruned.graph.initializer if len(t.dims) == 4]
    assert zeros and all(z >= 0.5 for z in zeros)
    assert report.parameters[0] == report.parameters[1]


def test_bad_options_and_nothing_to_prune():
    with pytest.raises(UsageError):
        PruneConfig(ratio=1.2)
    with pytest.raises(UsageError, match="need calibration data"):
        prune(mlp(), config=PruneConfig(importance="activation"))
    b = GraphBuilder(12)
    y = b.node("Relu", ["input"])
    model = b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])], [helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, 4])], "flat")
    with pytest.raises(NothingToDoError):
        prune(model, config=FAST)


def test_weights_computed_at_run_time_are_named_when_nothing_is_prunable():
    model = generated_weights()
    with pytest.raises(NothingToDoError, match="the weights of 2 layer.s. are computed at run time by ConstantOfShape"):
        prune(model, config=FAST)


def test_cli_prune_writes_model_and_report(save, npz_folder, tmp_path):
    model = residual()
    path = save(model)
    data = npz_folder(sample_inputs(model, 4))
    out, report = tmp_path / "pruned.onnx", tmp_path / "report.json"
    result = CliRunner().invoke(main, ["prune", str(path), "-o", str(out), "--ratio", "0.5", "--data", str(data), "--latency-runs", "3", "--report", str(report), "-q"])
    assert result.exit_code == 0, result.output
    content = json.loads(report.read_text())
    assert content["parameters"]["after"] < content["parameters"]["before"]
    assert content["macs"]["after"] < content["macs"]["before"]
    assert content["latency"]["ratio"] > 0 and content["recovery"]
    assert any(g["skipped"] for g in content["groups"])
    pruned = onnx.load(str(out))
    feed = sample_inputs(model, 1)[0]
    assert run_model(pruned, feed)[0].shape == run_model(model, feed)[0].shape


def test_cli_prune_prints_the_decision_level_agreement_of_class_scores(save, npz_folder, tmp_path):
    """A cosine near 1 can hide moved decisions (CREPE's pitch bins: 0.997 with a tenth of the frames' peaks moved)."""
    import re

    model = conv_bn_relu(channels=32, size=16)
    path, data = save(model), npz_folder(sample_inputs(model, 10))
    out, report = tmp_path / "pruned.onnx", tmp_path / "report.json"
    result = CliRunner().invoke(main, ["prune", str(path), "-o", str(out), "--ratio", "0.5", "--round-to", "1", "--data", str(data), "--latency-runs", "0", "--report", str(report), "-q"])
    assert result.exit_code == 0, result.output
    printed = re.search(r"cosine [0-9.]+,\s+top-1\s+([0-9.]+)\s+vs the original", result.output)
    assert printed, result.output
    assert float(printed.group(1)) == pytest.approx(json.loads(report.read_text())["fidelity"][0]["top1_agreement"], abs=1e-4)


def test_attention_heads_are_pruned_whole():
    from models.builders import transformer_block

    model = transformer_block(dim=32, heads=4, ffn=64)
    pruned, report = prune(model, config=PruneConfig(ratio=0.5, only="heads", latency_runs=0))
    heads = [g for g in report.groups if g.channels_before == 4]
    assert len(heads) == 1 and heads[0].channels_after == 2 and len(heads[0].producers) == 3  # Q, K, V tied per head
    assert all(g.channels_after == g.channels_before for g in report.groups if g.channels_before != 4)
    targets = [onnx.numpy_helper.to_array(t) for t in pruned.graph.initializer if t.name.startswith("shape") and "pruned" in t.name]
    assert any(list(t) == [0, 0, 2, 8] for t in targets) and any(list(t) == [0, 0, 16] for t in targets)
    feed = sample_inputs(model, 1)[0]
    assert run_model(pruned, feed)[0].shape == (1, 8, 32)
    _, channels = prune(model, config=PruneConfig(ratio=0.5, only="channels", latency_runs=0))
    assert [g.channels_after for g in channels.groups if g.channels_before == 64] == [32]
    assert all(g.channels_after == 4 for g in channels.groups if g.channels_before == 4)


def test_a_channel_multiple_counts_a_heads_channels_not_heads():
    from models.builders import transformer_block

    model = transformer_block(dim=32, heads=4, ffn=64)  # heads of 8 channels
    _, report = prune(model, config=PruneConfig(ratio=0.5, only="heads", round_to=16, latency_runs=0))
    assert [g.channels_after for g in report.groups if g.channels_before == 4] == [2]  # 2 heads: 16 channels
    with pytest.raises(NothingToDoError, match="at --round-to 32"):  # 2 heads are not a multiple of 32 channels
        prune(model, config=PruneConfig(ratio=0.5, only="heads", round_to=32, latency_runs=0))


def _channels_first_attention(dim: int = 32, heads: int = 4, seq: int = 6) -> onnx.ModelProto:
    """Attention over (1, C, S) with 1x1 Conv1d projections, as SqueezeBERT writes it: heads split off the channel axis,
    and merged back into it for the output Conv."""
    b = GraphBuilder(12)
    head_dim = dim // heads
    split = b.const(np.array([1, heads, head_dim, seq], np.int64), "shape")

    def projection(x: str) -> str:
        return b.node("Conv", [x, b.const(b.weight(dim, dim, 1)), b.const(b.weight(dim))], kernel_shape=[1])

    def heads_of(x: str, transposed: bool) -> str:
        split_off = b.node("Reshape", [projection(x), split])
        return b.node("Transpose", [split_off], perm=[0, 1, 3, 2]) if transposed else split_off

    q, k, v = heads_of("input", True), heads_of("input", False), heads_of("input", True)
    attn = b.node("MatMul", [b.node("Softmax", [b.node("MatMul", [q, k])], axis=-1), v])
    merged = b.node("Reshape", [b.node("Transpose", [attn], perm=[0, 1, 3, 2]), b.const(np.array([1, dim, seq], np.int64), "shape")])
    _rename_output(b, projection(merged), "out")
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, dim, seq])]
    return b.model(inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, dim, seq])], "channels_first_attention")


def test_heads_merged_back_into_channels_are_cut_from_the_conv_that_reads_them():
    model = _channels_first_attention()
    pruned, masked, groups, atoms = masked_and_pruned(model)
    assert [(g.channels_before, g.channels_after) for g in groups if g.channels_before == 4] == [(4, 2)]
    conv_weights = [tuple(t.dims) for t in pruned.graph.initializer if len(t.dims) == 3]
    assert (32, 16, 1) in conv_weights  # the output projection reads the 2 heads kept, 8 channels each
    assert_pruned_as_masked(model, masked, pruned, 2, seed=5)


def _gated_by_one_channel() -> onnx.ModelProto:
    """One Conv makes 8 channels and a gate (FocalNet's modulation): Split [8, 1], the gate's one channel times all 8."""
    b = GraphBuilder(14)
    both = b.conv("input", 3, 9)
    context, gate = b.node("Split", [both, b.const(np.array([8, 1], np.int64), "split")], n_out=2, axis=1)
    y = b.conv(b.node("Mul", [b.node("Relu", [context]), gate]), 8, 4)
    _rename_output(b, y, "out")
    return b.model([_image_input(3, 8)], [_output("out", [1, 4, 8, 8])], "gated_by_one_channel")


def test_one_channel_spread_over_the_others_stays_and_they_are_pruned():
    model = _gated_by_one_channel()
    pruned, masked, groups, _ = masked_and_pruned(model)
    assert [(g.channels_before, g.channels_after) for g in groups if g.channels_before == 9] == [(9, 5)]  # 4 of the 8, the gate kept
    assert any("spreads its one channel" in (g.skipped or "") for g in groups)
    assert_pruned_as_masked(model, masked, pruned, 2, seed=6)


def test_grouped_convolution_loses_channels_equally_in_every_group():
    model = ALL_BUILDERS["grouped_conv"](channels=16, groups=4)
    pruned, _, groups, _ = masked_and_pruned(model)
    grouped = next(n for n in pruned.graph.node if n.op_type == "Conv" and next((a.i for a in n.attribute if a.name == "group"), 1) == 4)
    weight = next(t for t in pruned.graph.initializer if t.name == grouped.input[1])
    assert tuple(weight.dims)[:2] == (8, 2)  # 16 -> 8 outputs, 4 -> 2 inputs per group
    assert sorted(g.channels_after for g in groups if g.channels_before == 16) == [8, 8]


def test_channel_shuffle_is_followed_as_a_permutation():
    model = ALL_BUILDERS["channel_shuffle"](channels=8, units=2)
    pruned, report = prune(model, config=FAST)
    assert not [g for g in report.groups if g.skipped and "logits" not in g.skipped]
    stem = pruned.graph.node[0]
    dims = {t.name: list(t.dims) for t in pruned.graph.initializer}
    assert stem.op_type == "Conv" and dims[stem.input[1]][0] == 4  # its channels pass both shuffles, and are pruned
    targets = [onnx.numpy_helper.to_array(t).tolist() for t in pruned.graph.initializer if t.name.startswith("shape")]
    assert [1, 2, 2, 8, 8] in targets and [1, 4, 8, 8] in targets
    # the chunk's Shape-computed slice bounds became constants and moved with the kept channels
    assert not any(n.op_type == "Shape" for n in pruned.graph.node)


def test_layernorm_over_channels_is_pruned_and_said_to_renormalize():
    from models.builders import convnext_block

    model = convnext_block(channels=16)
    pruned, report = prune(model, config=FAST)
    norm = next(n for n in pruned.graph.node if n.op_type == "LayerNormalization")
    dims = {t.name: list(t.dims) for t in pruned.graph.initializer}
    assert dims[norm.input[1]] == dims[norm.input[2]] == [8]
    assert any("LayerNormalization over pruned channels" in w for w in report.warnings)
    out = run_model(pruned, sample_inputs(model, 1)[0])[0]
    assert out.shape == (1, 10) and np.isfinite(out).all()


@pytest.mark.parametrize("spelling, closing", [("reshape", "shape"), ("reshape", "constant"), ("op", "shape")])
def test_group_norm_loses_whole_groups_and_its_group_count_follows(spelling, closing):
    from models.builders import group_norm

    model = group_norm(channels=16, groups=4, spelling=spelling, closing=closing)
    pruned, report = prune(model, config=FAST)
    convs = [g for g in report.groups if g.channels_per_class == 4]
    assert len(convs) == 2 and all((g.channels_before, g.channels_after) == (4, 2) for g in convs)  # 4 groups of 4 -> 2
    assert not any("over pruned channels" in w for w in report.warnings)  # the kept groups' statistics are unchanged
    dims = {t.name: list(t.dims) for t in pruned.graph.initializer}
    values = {t.name: onnx.numpy_helper.to_array(t).tolist() for t in pruned.graph.initializer}
    if spelling == "op":
        norms = [n for n in pruned.graph.node if n.op_type == "GroupNormalization"]
        assert [next(a.i for a in n.attribute if a.name == "num_groups") for n in norms] == [2, 2]
        assert all(dims[n.input[1]] == dims[n.input[2]] == [8] for n in norms)
    else:
        norms = [n for n in pruned.graph.node if n.op_type == "InstanceNormalization"]
        assert all(dims[n.input[1]] == dims[n.input[2]] == [2] for n in norms)
        opening = [n for n in pruned.graph.node if n.op_type == "Reshape" and values.get(n.input[1]) == [0, 2, -1]]
        assert len(opening) == 2
        if closing == "constant":
            assert sum(1 for n in pruned.graph.node if n.op_type == "Reshape" and values.get(n.input[1]) == [1, 8, 8, 8]) == 2
    assert run_model(pruned, sample_inputs(model, 1)[0])[0].shape == (1, 4, 8, 8)


@pytest.mark.parametrize("opset", [17, 18])  # ReduceMean's axes: an attribute, then an input
def test_mean_pooling_over_tokens_moves_the_channel_axis_forward(opset):
    """(1, T, D) -> MatMul -> Relu -> ReduceMean over T without keepdims -> Gemm: the pooled features keep their channels."""
    b = GraphBuilder(23)
    hidden = b.node("Relu", [b.node("MatMul", ["input", b.const(b.weight(32, 16).T.copy())])])
    axes = {"axes": [1]} if opset < 18 else {}
    inputs = [hidden] if opset < 18 else [hidden, b.const(np.array([1], np.int64), "axes")]
    pooled = b.node("ReduceMean", inputs, keepdims=0, **axes)
    logits = b.node("Gemm", [pooled, b.const(b.weight(4, 32)), b.const(np.zeros(4, np.float32), "b")], transB=1)
    _rename_output(b, logits, "logits")
    model = b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 6, 16])], [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])], "pooled", opset=opset)
    pruned, masked, reports, atoms = masked_and_pruned(model)
    assert [(g.channels_before, g.channels_after) for g in reports if g.channels_before == 32] == [(32, 16)]
    gemm = next(n for n in pruned.graph.node if n.op_type == "Gemm")
    assert [list(t.dims) for t in pruned.graph.initializer if t.name == gemm.input[1]] == [[4, 16]]
    for feed in sample_inputs(model, 2, seed=3):
        np.testing.assert_allclose(run_model(pruned, feed)[0], run_model(masked, feed)[0], rtol=1e-4, atol=1e-5)


def einsum_attention(dim: int = 32, heads: int = 4, seq: int = 6, *, summed_heads: bool = False, head_table: bool = False) -> onnx.ModelProto:
    """Attention written with Einsum, as some exports keep it: Q, K, V projections split into heads, scores
    'bnhd,bmhd->bhnm', softmax, 'bhnm,bmhd->bnhd', heads merged, output projection. ``summed_heads``: the heads are
    added up ('bnhd->bnd') instead of merged, and projected from one head's width. ``head_table``: the scores also get
    each query's product with a stored vector of its head ('bnhd,hd->bhn', as Funnel adds its segment terms)."""
    b = GraphBuilder(29)
    size = dim // heads
    split = b.const(np.array([1, seq, heads, size], np.int64), "shape")
    q, k, v = (b.node("Reshape", [b.node("MatMul", ["input", b.const(b.weight(dim, dim).T.copy())]), split]) for _ in range(3))
    scores = b.node("Einsum", [q, k], equation="bnhd,bmhd->bhnm")
    if head_table:
        per_head = b.node("Einsum", [q, b.const(b.weight(heads, size), "table")], equation="bnhd,hd->bhn")
        scores = b.node("Add", [scores, b.node("Unsqueeze", [per_head, b.const(np.array([3], np.int64), "axes")])])
    mixed = b.node("Einsum", [b.node("Softmax", [scores], axis=-1), v], equation="bhnm,bmhd->bnhd")
    if summed_heads:
        out = b.node("MatMul", [b.node("Einsum", [mixed], equation="bnhd->bnd"), b.const(b.weight(dim, size).T.copy())])
    else:
        merged = b.node("Reshape", [mixed, b.const(np.array([1, seq, dim], np.int64), "shape")])
        out = b.node("MatMul", [merged, b.const(b.weight(dim, dim).T.copy())])
    _rename_output(b, out, "states")
    io = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, seq, dim]) for name in ("input", "states")]
    return b.model(io[:1], io[1:], "einsum_attention")


def test_einsum_attention_loses_whole_heads():
    model = einsum_attention()
    pruned, masked, reports, atoms = masked_and_pruned(model)
    heads = [g for g in reports if g.channels_per_class == 8]
    assert [(g.channels_before, g.channels_after) for g in heads] == [(4, 2)] and len(heads[0].producers) == 3  # Q, K, V tied
    assert [onnx.numpy_helper.to_array(t).tolist() for t in pruned.graph.initializer if t.name.startswith("shape") and "pruned" in t.name] == [
        [1, 6, 2, 8], [1, 6, 16]]
    for feed in sample_inputs(model, 2, seed=4):
        np.testing.assert_allclose(run_model(pruned, feed)[0], run_model(masked, feed)[0], rtol=1e-4, atol=1e-5)


def test_a_stored_operand_of_an_einsum_loses_the_removed_heads():
    model = einsum_attention(head_table=True)
    pruned, masked, reports, atoms = masked_and_pruned(model)
    assert [(g.channels_before, g.channels_after) for g in reports if g.channels_before == 4] == [(4, 2)]
    einsum = next(n for n in pruned.graph.node if n.op_type == "Einsum" and ",hd->" in node_attr(n, "equation").decode())
    assert next(list(t.dims) for t in pruned.graph.initializer if t.name == einsum.input[1]) == [2, 8]
    assert_pruned_as_masked(model, masked, pruned, 2, seed=7)


def test_an_einsum_summing_over_the_channels_blocks_them():
    with pytest.raises(NothingToDoError, match=r"Einsum \w+ sums over or repeats the channels' subscript 'h'"):
        prune(einsum_attention(summed_heads=True), config=PruneConfig(ratio=0.5, only="heads", latency_runs=0))


@pytest.mark.parametrize("spelling, closing", [("reshape", "shape"), ("reshape", "constant"), ("op", "shape")])
def test_a_group_norm_of_one_group_normalizes_the_kept_channels_and_says_so(spelling, closing):
    from models.builders import group_norm

    model = group_norm(channels=8, groups=1, spelling=spelling, closing=closing)
    pruned, report = prune(model, config=FAST)
    assert [(g.channels_before, g.channels_after) for g in report.groups][:2] == [(8, 4), (8, 4)]  # then the head, an output
    assert any("over pruned channels" in w for w in report.warnings), report.warnings
    # the first block's output: its kept channels normalized together over channels and positions, then its affine
    first_relu = next(n for n in pruned.graph.node if n.op_type == "Relu")
    exposed = onnx.ModelProto()
    exposed.CopyFrom(pruned)
    exposed.graph.output.append(helper.make_tensor_value_info(first_relu.output[0], TensorProto.FLOAT, None))
    feed = sample_inputs(model, 1, seed=4)[0]
    got = run_model(exposed, feed)[-1]
    inits = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    conv = next(n for n in pruned.graph.node if n.op_type == "Conv")
    weight, bias = inits[conv.input[1]], inits[conv.input[2]]
    x = np.pad(feed["input"], ((0, 0), (0, 0), (1, 1), (1, 1)))
    y = np.stack([sum((weight[o, i] * x[0, i, r : r + 3, c : c + 3]).sum() for i in range(3))
                  for o in range(4) for r in range(8) for c in range(8)]).reshape(1, 4, 8, 8) + bias.reshape(1, 4, 1, 1)
    normalized = (y - y.mean()) / np.sqrt(y.var() + 1e-5)
    if spelling == "op":
        norm = next(n for n in pruned.graph.node if n.op_type == "GroupNormalization")
        scale, shift = (inits[norm.input[i]].reshape(1, 4, 1, 1) for i in (1, 2))
    else:
        norm = next(n for n in pruned.graph.node if n.op_type == "InstanceNormalization")
        muls = [n for n in pruned.graph.node if n.op_type in ("Mul", "Add")][:2]
        scale = inits[norm.input[1]] * inits[next(i for i in muls[0].input if i in inits)]
        shift = inits[norm.input[2]] * inits[next(i for i in muls[0].input if i in inits)] + inits[next(i for i in muls[1].input if i in inits)]
        scale, shift = scale.reshape(1, 4, 1, 1), shift.reshape(1, 4, 1, 1)
    np.testing.assert_allclose(got, np.maximum(normalized * scale + shift, 0), rtol=1e-4, atol=1e-4)


def test_a_rule_that_leaves_a_stale_size_is_caught_before_writing(monkeypatch, tmp_path):
    from onnxslim.errors import OnnxSlimError
    from onnxslim.prune.edits import SliceBounds

    monkeypatch.setattr(SliceBounds, "apply", lambda self, weights, removed: None)  # forget to move the slice bounds
    with pytest.raises(OnnxSlimError, match="fails a test run"):
        prune(ALL_BUILDERS["channel_shuffle"](), config=FAST, output=tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_packed_qkv_attention_loses_whole_heads():
    model = ALL_BUILDERS["packed_attention"](dim=16, heads=4)
    pruned, masked, groups, atoms = masked_and_pruned(model)
    heads = [g for g in groups if g.channels_before == 4]  # the heads of Q, K and V, tied
    assert len(heads) == 1 and heads[0].channels_after == 2
    dims = {t.name: list(t.dims) for t in pruned.graph.initializer}
    packed = next(n for n in pruned.graph.node if n.op_type == "MatMul")
    assert dims[packed.input[1]] == [16, 24]  # 3 x 2 heads x 4
    assert_pruned_as_masked(model, masked, pruned, 2, seed=3)


def _packed_per_head_attention(dim: int = 16, heads: int = 4, seq: int = 6) -> onnx.ModelProto:
    """Q, K and V packed per head as BLOOM writes them: one projection to (1, S, H, 3, D), each part picked by a Gather of
    axis 3, scaled dot product, heads merged, output projection."""
    b = GraphBuilder(33)
    size = dim // heads
    packed = b.node("Reshape", [b.linear("input", dim, 3 * dim), b.const(np.array([1, seq, heads, 3, size], np.int64), "shape")])
    q, k, v = (b.node("Transpose", [b.node("Gather", [packed, b.const(np.array(part, np.int64), "part")], axis=3)], perm=perm)
               for part, perm in ((0, [0, 2, 1, 3]), (1, [0, 2, 3, 1]), (2, [0, 2, 1, 3])))
    attn = b.node("MatMul", [b.node("Softmax", [b.node("MatMul", [q, k])], axis=-1), v])
    return _heads_merged_and_projected(b, attn, dim, seq, "packed_per_head_attention")


def _heads_merged_and_projected(b: GraphBuilder, attn: str, dim: int, seq: int, name: str) -> onnx.ModelProto:
    """The model of ``b``: (1, H, S, D) ``attn`` merged back into (1, S, H*D) and projected, input and output (1, S, dim)."""
    merged = b.node("Reshape", [b.node("Transpose", [attn], perm=[0, 2, 1, 3]), b.const(np.array([1, seq, dim], np.int64), "shape")])
    _rename_output(b, b.linear(merged, dim, dim), "out")
    io = [helper.make_tensor_value_info(io_name, TensorProto.FLOAT, [1, seq, dim]) for io_name in ("input", "out")]
    return b.model(io[:1], io[1:], name)


def test_query_key_and_value_packed_per_head_lose_whole_heads():
    model = _packed_per_head_attention()
    pruned, masked, groups, atoms = masked_and_pruned(model)
    assert [(g.channels_before, g.channels_after, g.channels_per_class) for g in groups if g.channels_before == 4] == [(4, 2, 12)]
    dims = {t.name: list(t.dims) for t in pruned.graph.initializer}
    packed = next(n for n in pruned.graph.node if n.op_type == "MatMul")
    assert dims[packed.input[1]] == [16, 24]  # 2 heads x 3 parts x 4
    assert_pruned_as_masked(model, masked, pruned, 2, seed=3)


def _gated_heads_attention(dim: int = 16, heads: int = 4, seq: int = 6) -> onnx.ModelProto:
    """Each head's scores scaled by a gate computed from its own query features by one weight shared by every head
    (WavLM's gated relative positions): Sigmoid(q @ W (D, 1)), q of shape (1, H, S, D)."""
    b = GraphBuilder(35)
    size = dim // heads
    split = b.const(np.array([1, seq, heads, size], np.int64), "shape")
    q, k, v = (b.node("Transpose", [b.node("Reshape", [b.linear("input", dim, dim), split])], perm=perm)
               for perm in ([0, 2, 1, 3], [0, 2, 3, 1], [0, 2, 1, 3]))
    gate = b.node("Sigmoid", [b.node("MatMul", [q, b.const(b.weight(size, 1))])])
    attn = b.node("MatMul", [b.node("Softmax", [b.node("Mul", [b.node("MatMul", [q, k]), gate])], axis=-1), v])
    return _heads_merged_and_projected(b, attn, dim, seq, "gated_heads_attention")


def test_a_weight_applied_to_every_head_alike_lets_the_heads_pass():
    model = _gated_heads_attention()
    pruned, masked, groups, atoms = masked_and_pruned(model)
    assert [(g.channels_before, g.channels_after) for g in groups if g.channels_before == 4] == [(4, 2)]
    gate = next(n for n in pruned.graph.node if n.op_type == "MatMul" and any(t.name == n.input[1] and list(t.dims) == [4, 1] for t in pruned.graph.initializer))
    assert gate is not None  # the shared weight keeps its shape: each kept head still reads all of it
    assert_pruned_as_masked(model, masked, pruned, 2, seed=3)


def _unfolded_patches(channels: int = 8, size: int = 4, patch: int = 2) -> onnx.ModelProto:
    """MobileViT's unfolding: Conv -> (1, C, H, W) as (C*h, p, w, p) -> swap -> (1, C, N, P) -> (1, P, N, C) ->
    (P, N, C), a Linear over the channels, then folded back the same way and a Conv."""
    b = GraphBuilder(37)
    cells = size // patch
    shape = lambda *dims: b.const(np.array(dims, np.int64), "shape")  # noqa: E731
    x = b.conv("input", 3, channels)
    x = b.node("Transpose", [b.node("Reshape", [x, shape(channels * cells, patch, cells, patch)])], perm=[0, 2, 1, 3])
    x = b.node("Transpose", [b.node("Reshape", [x, shape(1, channels, cells * cells, patch * patch)])], perm=[0, 3, 2, 1])
    x = b.linear(b.node("Reshape", [x, shape(patch * patch, cells * cells, channels)]), channels, channels)
    x = b.node("Transpose", [b.node("Reshape", [x, shape(1, patch * patch, cells * cells, channels)])], perm=[0, 3, 2, 1])
    x = b.node("Transpose", [b.node("Reshape", [x, shape(channels * cells, cells, patch, patch)])], perm=[0, 2, 1, 3])
    y = b.conv(b.node("Reshape", [x, shape(1, channels, size, size)]), channels, 4)
    _rename_output(b, y, "out")
    return b.model([_image_input(3, size)], [_output("out", [1, 4, size, size])], "unfolded_patches")


def test_channels_unfolded_into_patches_and_folded_back_are_followed():
    model = _unfolded_patches()
    pruned, masked, groups, atoms = masked_and_pruned(model)
    assert sorted((g.channels_before, g.channels_after) for g in groups)[1:] == [(8, 4), (8, 4)]  # the Conv's and the Linear's; the head's 4 are outputs
    assert_pruned_as_masked(model, masked, pruned, 2, seed=3)


def test_patches_folded_back_by_col2im_keep_their_channels():
    """Conv (4 channels over 2x2-block positions and 16 patches) -> Reshape (1, 4 * 4, 16) -> Col2Im into (1, 4, 8, 8)
    -> Conv, as torch.export writes MobileViTV2's folding."""
    b = GraphBuilder(39)
    x = b.node("Conv", ["input", b.const(b.weight(4, 3, 1, 1))], kernel_shape=[1, 1])
    x = b.node("Reshape", [x, b.const(np.array([1, 16, 16], np.int64), "shape")])
    x = b.node("Col2Im", [x, b.const(np.array([8, 8], np.int64), "image"), b.const(np.array([2, 2], np.int64), "block")], strides=[2, 2])
    _rename_output(b, b.node("Conv", [x, b.const(b.weight(2, 4, 1, 1))], kernel_shape=[1, 1]), "out")
    model = b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 16])], [_output("out", [1, 2, 8, 8])], "col2im", opset=18)
    pruned, masked, groups, atoms = masked_and_pruned(model)
    assert [(g.channels_before, g.channels_after) for g in groups if g.channels_before == 4] == [(4, 2)]
    assert_pruned_as_masked(model, masked, pruned, 2, seed=3)


@pytest.mark.parametrize("kv_heads", [2, 1])
def test_grouped_query_attention_loses_query_heads_one_at_a_time(kv_heads):
    from onnxslim.passes import repeated_heads_as_gathers

    model = ALL_BUILDERS["grouped_query_attention"](dim=32, heads=4, kv_heads=kv_heads)
    rewritten = load_model(model)
    assert len(repeated_heads_as_gathers(rewritten).changes) == 2  # keys and values
    for feed in sample_inputs(model, 2, seed=3):  # the same copies, read by a Gather: bit for bit
        np.testing.assert_array_equal(run_model(model, feed)[0], run_model(rewritten, feed)[0])
    pruned, masked, groups, _ = masked_and_pruned(model)
    queries = [g for g in groups if g.channels_before == 4 and "MatMul_6" in g.producers]  # the query projection's heads
    assert [(g.channels_after, g.channels_per_class) for g in queries] == [(2, 8)]
    dims = {t.name: list(t.dims) for t in pruned.graph.initializer}
    q, k, v, out = (n for n in pruned.graph.node if n.op_type == "MatMul" and n.input[1] in dims)
    # the key/value heads stay, each listed once for every query head kept
    assert dims[q.input[1]] == [32, 16] and dims[k.input[1]] == dims[v.input[1]] == [32, 8 * kv_heads] and dims[out.input[1]] == [16, 32]
    lists = [onnx.numpy_helper.to_array(t).tolist() for t in pruned.graph.initializer
             if t.name in {n.input[1] for n in pruned.graph.node if n.op_type == "Gather"}]
    assert len(lists) == 2 and all(len(entries) == 2 and set(entries) <= set(range(kv_heads)) for entries in lists)
    assert not any(n.op_type == "Expand" for n in pruned.graph.node)
    assert_pruned_as_masked(model, masked, pruned, 2, seed=3)


def test_with_four_key_value_heads_or_more_a_key_value_head_goes_with_its_query_heads():
    model = ALL_BUILDERS["grouped_query_attention"](dim=32, heads=8, kv_heads=4)  # heads of 4 channels, 2 queries per group
    pruned, masked, groups, _ = masked_and_pruned(model)
    whole = [g for g in groups if g.channels_before == 4 and len(g.producers) == 3]  # Q, K and V, tied per group
    assert [g.channels_after for g in whole] == [2]
    dims = {t.name: list(t.dims) for t in pruned.graph.initializer}
    q, k, v, out = (n for n in pruned.graph.node if n.op_type == "MatMul" and n.input[1] in dims)
    assert dims[q.input[1]] == [32, 16] and dims[k.input[1]] == dims[v.input[1]] == [32, 8] and dims[out.input[1]] == [16, 32]
    expand = next(n for n in pruned.graph.node if n.op_type == "Expand")
    assert onnx.numpy_helper.to_array(next(t for t in pruned.graph.initializer if t.name == expand.input[1])).tolist() == [1, 2, 2, 8, 4]
    assert_pruned_as_masked(model, masked, pruned, 2, seed=3)


def test_a_repeat_that_also_broadcasts_another_axis_is_left_as_it_is():
    from onnxslim.passes import repeated_heads_as_gathers

    b = GraphBuilder(3)
    grown = b.node("Unsqueeze", ["input", b.const(np.array([2], np.int64), "axes")])
    grown = b.node("Expand", [grown, b.const(np.array([3, 2, 4, 5], np.int64), "shape")])  # the batch of 1 becomes 3
    y = b.node("Reshape", [grown, b.const(np.array([3, 8, 5], np.int64), "shape")])
    _rename_output(b, y, "out")
    model = b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 2, 5])],
                    [helper.make_tensor_value_info("out", TensorProto.FLOAT, [3, 8, 5])], "broadcast_repeat")
    assert not repeated_heads_as_gathers(load_model(model)).changes


def test_an_equal_split_of_a_packed_projection_keeps_its_parts_equal():
    model = ALL_BUILDERS["split_attention"](dim=16, heads=4)
    pruned, masked, groups, _ = masked_and_pruned(model)
    heads = [g for g in groups if g.channels_before == 4]
    assert len(heads) == 1 and heads[0].channels_after == 2
    dims = {t.name: list(t.dims) for t in pruned.graph.initializer}
    packed = next(n for n in pruned.graph.node if n.op_type == "MatMul" and n.input[1] in dims)
    assert dims[packed.input[1]] == [16, 24]  # 3 parts of 2 heads x 4
    split = next(n for n in pruned.graph.node if n.op_type == "Split")
    assert len(split.input) == 1  # still equal parts: nothing to edit
    assert_pruned_as_masked(model, masked, pruned, 2, seed=3)


def test_token_mask_leaves_padding_out_of_recovery_statistics():
    from onnxslim.measure.channels import channel_rows as _rows

    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    rows = _rows(x, node, {"attention_mask": mask}, "attention_mask")
    np.testing.assert_array_equal(rows, x.reshape(6, 4)[[0, 1, 3]])
    np.testing.assert_array_equal(_rows(x, node, {"attention_mask": mask}, None), x.reshape(6, 4))
    with pytest.raises(UsageError, match="--token-mask names 'mask'"):
        prune(mlp(), config=PruneConfig(token_mask="mask", latency_runs=0))


def test_window_attention_heads_take_their_position_bias_along():
    model = ALL_BUILDERS["window_attention"](dim=16, heads=4)
    pruned, masked, groups, _ = masked_and_pruned(model)
    assert any(g.channels_before == 4 and g.channels_after == 2 for g in groups)
    dims = {t.name: list(t.dims) for t in pruned.graph.initializer}
    bias = next(n for n in pruned.graph.node if n.op_type == "Add" and any(i.startswith("position_bias") for i in n.input))
    assert dims[next(i for i in bias.input if i.startswith("position_bias"))] == [2, 8, 8]
    assert_pruned_as_masked(model, masked, pruned, 2, seed=3)


@pytest.mark.parametrize(("position_bias", "table_rows"), [("gathered", 31), ("interpolated", 15)])
def test_a_position_bias_gathered_at_run_time_loses_the_removed_heads_from_its_table(position_bias, table_rows):
    # Swin V2 / BEiT: folding the gathered bias would grow the model, so it stays a chain over the table; the removed
    # heads are cut from the table, from the Reshape's explicit head count and from the Resize's sizes
    model = ALL_BUILDERS["window_attention"](dim=32, heads=8, tokens=16, position_bias=position_bias)
    pruned, masked, groups, _ = masked_and_pruned(model)
    assert any(g.channels_before == 8 and g.channels_after == 4 for g in groups)
    dims = {t.name: list(t.dims) for t in pruned.graph.initializer}
    gather = next(n for n in pruned.graph.node if n.op_type == "Gather" and n.input[0].startswith("bias_table"))  # still gathered at run time
    assert dims[gather.input[0]] == [table_rows, 4]
    assert_pruned_as_masked(model, masked, pruned, 2, seed=3)


def _single_head_attention(features: int = 8, dim: int = 16, seq: int = 6, *, einsum: bool = False) -> tuple[onnx.ModelProto, str]:
    """One head over (1, S, E) without a head axis, as EfficientViT writes each of its heads: q (S, F) @ k^T (F, S),
    softmax, @ v (S, E), an output projection (``einsum``: the scores as Einsum 'bnf,bmf->bnm', as CvT writes them).
    Returns the model and the name of the query projection."""
    b = GraphBuilder(5)
    q = b.linear("input", dim, features, bias=False)
    k = b.linear("input", dim, features, bias=False)
    v = b.linear("input", dim, dim, bias=False)
    if einsum:
        scores = b.node("Einsum", [q, k], equation="bnf,bmf->bnm")
    else:
        scores = b.node("MatMul", [q, b.node("Transpose", [k], perm=[0, 2, 1])])
    y = b.linear(b.node("MatMul", [b.node("Softmax", [scores], axis=-1), v]), dim, dim)
    _rename_output(b, y, "out")
    query = next(n.name for n in b.nodes if n.output[0] == q)
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, seq, dim])]
    return b.model(inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, seq, dim])], "single_head"), query


@pytest.mark.parametrize("einsum", [False, True])
def test_query_and_key_features_summed_by_the_product_lose_the_same_positions(einsum):
    model, query = _single_head_attention(einsum=einsum)
    pruned, masked, groups, atoms = masked_and_pruned(model)
    assert sorted((g.channels_before, g.channels_after) for g in groups)[:2] == [(8, 4), (16, 8)]  # query/key features, values
    # removing feature j from the query and the key leaves the scores of the original with query feature j zeroed
    view = WorkingWeights(masked, all_value_names(masked.graph))
    producer = next(e for e in trace_of(model).edits if isinstance(e, SliceInput) and e.kind == EditRole.PRODUCER and e.node == query)
    weight = view.get(query, 1).copy()
    weight[:, positions(producer.layout, atoms)] = 0
    view.set(query, 1, weight)
    view.commit()
    assert_pruned_as_masked(model, masked, pruned, 2, seed=3)


def trace_of(model: onnx.ModelProto):
    work = load_model(model)
    PREPARE(work)
    return trace(work, infer_shapes(work))


def _channel_reduction_block(reduce: str) -> onnx.ModelProto:
    """Conv (8 channels, no bias) -> ``reduce`` over the channels -> Sigmoid gate -> gated channels -> Conv (4)."""
    b = GraphBuilder(8)
    x = b.node("Conv", ["input", b.const(b.weight(8, 3, 3, 3))], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    gate = b.node("Sigmoid", [b.node(reduce, [x, b.const(np.array([1], np.int64), "axes")], keepdims=1)])
    y = b.conv(b.node("Mul", [x, gate]), 8, 4)
    _rename_output(b, y, "out")
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])]
    return b.model(inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 8, 8])], reduce, opset=18)


def _with_removed_channels_zero_where_made(model: onnx.ModelProto, masked: onnx.ModelProto, atoms: set[int]) -> None:
    """Zero, in ``masked``, the filters that make the removed channels."""
    view = WorkingWeights(masked, all_value_names(masked.graph))
    for edit in trace_of(model).edits:
        if isinstance(edit, SliceInput) and edit.kind == EditRole.PRODUCER:
            weight = view.get(edit.node, edit.index).copy()
            weight[positions(edit.layout, atoms)] = 0
            view.set(edit.node, edit.index, weight)
    view.commit()


def test_a_sum_over_the_channels_loses_the_removed_channels_terms():
    model = _channel_reduction_block("ReduceSum")
    pruned, masked, groups, atoms = masked_and_pruned(model)
    assert any(g.channels_before == 8 and g.channels_after == 4 for g in groups)
    _with_removed_channels_zero_where_made(model, masked, atoms)  # as if the removed channels were zero where they are made
    assert_pruned_as_masked(model, masked, pruned, 2, seed=3)
    # a statistic of the kept channels from then on (a spelled-out norm sums (x - mean)^2, nonzero for a zeroed channel)
    _, report = prune(model, config=FAST)
    assert any(w.startswith("ReduceSum over pruned channels") for w in report.warnings)


def test_a_mean_over_the_channels_averages_over_the_kept_ones_and_says_so():
    # ConvNeXt V2's global response normalization divides by a mean over the channels
    model = _channel_reduction_block("ReduceMean")
    pruned, masked, groups, atoms = masked_and_pruned(model)
    assert any(g.channels_before == 8 and g.channels_after == 4 for g in groups)
    # the original with the removed channels zero and the mean's divisor the kept count: a sum times 1/4
    _with_removed_channels_zero_where_made(model, masked, atoms)
    mean = next(n for n in masked.graph.node if n.op_type == "ReduceMean")
    mean.op_type = "ReduceSum"
    summed, mean.output[0] = mean.output[0], mean.output[0] + "_sum"
    masked.graph.initializer.append(numpy_helper.from_array(np.array(0.25, np.float32), "quarter"))
    masked.graph.node.insert(list(masked.graph.node).index(mean) + 1, helper.make_node("Mul", [mean.output[0], "quarter"], [summed]))
    assert_pruned_as_masked(model, masked, pruned, 2, seed=3)
    _, report = prune(model, config=FAST)
    assert any(w.startswith("ReduceMean over pruned channels") for w in report.warnings)


@pytest.mark.parametrize(("repeats", "pruned"), [([1, 1, 2, 1], True), ([1, 2, 1, 1], False)])
def test_tile_of_other_axes_keeps_the_channels_and_of_the_channel_axis_blocks_them(repeats, pruned):
    b = GraphBuilder(9)
    tiled = b.node("Tile", [b.node("Relu", [b.conv("input", 3, 8)]), b.const(np.array(repeats, np.int64), "repeats")])
    y = b.conv(tiled, 8 * repeats[1], 4)
    _rename_output(b, y, "out")
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])]
    model = b.model(inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 8 * repeats[2], 8])], "tile")
    if not pruned:
        reasons = set(trace_of(model).atoms.blocked.values())
        assert any("repeats the channel axis" in r for r in reasons)
        return
    pruned_model, masked, groups, _ = masked_and_pruned(model)
    assert any(g.channels_before == 8 and g.channels_after == 4 for g in groups)
    for feed in sample_inputs(model, 2, seed=3):
        np.testing.assert_allclose(run_model(masked, feed)[0], run_model(pruned_model, feed)[0], rtol=1e-4, atol=1e-5)


def _conv_plus_expanded_constant(form: str) -> onnx.ModelProto:
    """Conv (8 channels) + a per-channel map made from stored rows at run time (too large to fold), then Conv."""
    b = GraphBuilder(21)
    x = b.conv("input", 3, 8)

    def expanded(width: int) -> str:
        row = b.const((0.1 * b.rng.standard_normal((1, 8, 1, 1))).astype(np.float32), "row")
        return b.node("Expand", [row, b.const(np.array([1, 8, 16, width], np.int64), "shape")])

    if form == "expand":
        added = expanded(16)
    else:  # two halves along the width, the first sliced out of a wider map
        left = b.node("Slice", [expanded(20), *(b.const(np.array([v], np.int64), "bound") for v in (0, 8, 3))])
        added = b.node("Concat", [left, expanded(8)], axis=3)
    y = b.conv(b.node("Relu", [b.node("Add", [x, added])]), 8, 4)
    _rename_output(b, y, "out")
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])]
    return b.model(inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 16, 16])], form)


@pytest.mark.parametrize("form", ["expand", "slice_concat"])
def test_a_per_channel_map_expanded_at_run_time_loses_the_removed_channels(form):
    model = _conv_plus_expanded_constant(form)
    pruned, masked, groups, _ = masked_and_pruned(model)
    assert any(g.channels_before == 8 and g.channels_after == 4 for g in groups)
    assert "Expand" in {n.op_type for n in pruned.graph.node}  # the map is still made at run time, from cut rows
    assert_pruned_as_masked(model, masked, pruned, 2, seed=5)


def _conv_plus_mask_expanded_to_its_channels() -> onnx.ModelProto:
    """Conv (8 channels) + a mask input (1, 1, h, w) expanded to (1, 8, h, w) by a target computed at run time as torch
    writes ``mask.expand(1, 8, h, w)``: Where(target == -1, 1, target), the target a Concat of a stored count and the
    sizes read with Shape; then Conv (4). Sizes h, w are dynamic, so that nothing folds the target."""
    b = GraphBuilder(23)
    x = b.conv("input", 3, 8)
    sizes = b.node("Slice", [b.node("Shape", ["mask"]), *(b.const(np.array([v], np.int64), "bound") for v in (2, 4))])
    target = b.node("Reshape", [b.node("Concat", [b.const(np.array([1], np.int64), "one"), b.const(np.array([8], np.int64), "count"),
                                                  sizes], axis=0),
                               b.const(np.array([-1], np.int64), "flat")])
    ones = b.node("ConstantOfShape", [b.node("Shape", [target])], value=numpy_helper.from_array(np.array([1], np.int64)))
    keep = b.node("Where", [b.node("Equal", [target, b.node("Mul", [ones, b.const(np.array(-1, np.int64), "minus")])]), ones, target])
    y = b.conv(b.node("Relu", [b.node("Add", [x, b.node("Expand", ["mask", keep])])]), 8, 4)
    _rename_output(b, y, "out")
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "h", "w"]),
              helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, "h", "w"])]
    return b.model(inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, "h", "w"])], "expanded_mask")


def test_a_mask_expanded_to_the_channels_by_a_computed_target_follows_the_channels_kept():
    model = _conv_plus_mask_expanded_to_its_channels()
    pruned, masked, groups, _ = masked_and_pruned(model)
    assert any(g.channels_before == 8 and g.channels_after == 4 for g in groups)
    count = next(n for n in pruned.graph.node if n.op_type == "Concat")
    assert [int(numpy_helper.to_array(t)[0]) for t in pruned.graph.initializer if t.name == count.input[1]] == [4]
    rng = np.random.default_rng(4)
    for size in (5, 7):  # the sizes the target reads at run time
        feed = {"input": rng.standard_normal((1, 3, size, size)).astype(np.float32), "mask": rng.standard_normal((1, 1, size, size)).astype(np.float32)}
        np.testing.assert_allclose(run_model(masked, feed)[0], run_model(pruned, feed)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("read", ["step", "operand", "table"])
def test_a_constant_expression_read_elsewhere_keeps_its_channels(read):
    # a step of the bias, the bias itself or its table read by something else as well: cutting it would change that reader
    # or store a second, cut copy (OPT's token embeddings, read by the residual stream and its first norm; a table tied to
    # the output layer)
    model = ALL_BUILDERS["window_attention"](dim=32, heads=8, tokens=16, position_bias="gathered")
    sigmoid = next(n for n in model.graph.node if n.op_type == "Sigmoid")
    bias = next(n for n in model.graph.node if n.op_type == "Mul" and sigmoid.output[0] in n.input)
    other = {"step": sigmoid.output[0], "operand": bias.output[0], "table": next(n.input[0] for n in model.graph.node if n.op_type == "Gather"
                                                                                   and n.input[0].startswith("bias_table"))}[read]
    # read with the input's mean, so that folding cannot take the reader away
    model.graph.node.append(helper.make_node("ReduceMean", ["input"], ["input_mean"], keepdims=0))
    model.graph.node.append(helper.make_node("Mul", [other, "input_mean"], ["elsewhere"]))
    model.graph.output.append(helper.make_tensor_value_info("elsewhere", TensorProto.FLOAT, None))
    work = load_model(model)
    PREPARE(work)
    scores = next(n.name for n in work.graph.node if n.op_type == "Add" and bias.output[0] in n.input)
    reasons = set(trace(work, infer_shapes(work)).atoms.blocked.values())
    expected = {"table": f"'{bias.output[0]}' is computed from", "step": f"{scores} combines the channels with '{bias.output[0]}'",
                "operand": f"{scores} combines the channels with '{bias.output[0]}', which Mul"}[read]
    assert any(expected in r for r in reasons), reasons


def test_blocks_reading_one_stored_bias_table_lose_the_same_heads_and_keep_one_table():
    # two window-attention blocks whose gathered bias tables the exporter stored once (identical, zero-initialized)
    first = ALL_BUILDERS["window_attention"](dim=32, heads=8, tokens=16, position_bias="gathered")
    model = onnx.compose.merge_models(first, onnx.compose.add_prefix(first, "second/"), io_map=[("hidden", "second/input")])
    table = next(n.input[0] for n in model.graph.node if n.op_type == "Gather" and n.input[0].startswith("bias_table"))
    for node in model.graph.node:
        if node.op_type == "Gather" and node.input[0].startswith("second/bias_table"):
            node.input[0] = table
    pruned, masked, groups, _ = masked_and_pruned(model)
    assert sum(1 for g in groups if g.channels_before == 8 and g.channels_after == 4) == 1  # the two blocks' heads as one group
    tables = {n.input[0] for n in pruned.graph.node if n.op_type == "Gather" and "bias_table" in n.input[0]}
    assert len(tables) == 1 and [list(t.dims) for t in pruned.graph.initializer if t.name in tables] == [[31, 4]]
    assert_pruned_as_masked(model, masked, pruned, 2, seed=3)


def _two_blocks_adding_one_bias(dim: int, tokens: int) -> onnx.ModelProto:
    """Two attention blocks in a row, the second adding the first's computed position bias instead of its own."""
    first = ALL_BUILDERS["window_attention"](dim=dim, heads=8, tokens=tokens, position_bias="gathered")
    other = ALL_BUILDERS["window_attention"](dim=dim, heads=8, tokens=tokens, position_bias="gathered", seed=13)
    model = onnx.compose.merge_models(first, onnx.compose.add_prefix(other, "second/"), io_map=[("hidden", "second/input")])
    sigmoid = next(n for n in first.graph.node if n.op_type == "Sigmoid")
    bias = next(n for n in first.graph.node if n.op_type == "Mul" and sigmoid.output[0] in n.input).output[0]
    second = next(n for n in model.graph.node if n.op_type == "Add" and f"second/{bias}" in n.input)
    second.input[list(second.input).index(f"second/{bias}")] = bias
    return model


@pytest.mark.parametrize(("tokens", "kept"), [(16, ("mul_", [4, 16, 16])), (64, ("bias_table", [127, 4]))])
def test_blocks_adding_one_attention_bias_lose_the_same_heads_and_keep_one_bias(tokens, kept):
    # one relative-position bias added by several attention blocks (a layer applied repeatedly, as a molecule
    # transformer does with its distance bias; MPNet computes one for all its layers): every block meeting it ties its
    # heads and the bias stays one tensor, whether folded into a stored map heavier than its copies may be (16 tokens)
    # or still gathered from its table at run time (64: folding it would grow the model)
    model = _two_blocks_adding_one_bias(dim=32, tokens=tokens)
    pruned, masked, groups, _ = masked_and_pruned(model)
    assert [(g.channels_before, g.channels_after) for g in groups if g.channels_before == 8] == [(8, 4)]  # the two blocks' heads
    prefix, dims = kept
    assert [list(t.dims) for t in pruned.graph.initializer if t.name.startswith(prefix)] == [dims]
    assert_pruned_as_masked(model, masked, pruned, 2, seed=3)


def test_a_light_stored_bias_several_blocks_add_is_cut_for_each_and_leaves_their_heads_free():
    # a folded bias map small beside the weights: a copy per block costs little, and each block keeps its own heads
    model = _two_blocks_adding_one_bias(dim=256, tokens=16)
    pruned, masked, groups, _ = masked_and_pruned(model)
    assert [(g.channels_before, g.channels_after) for g in groups if g.channels_before == 8] == [(8, 4), (8, 4)]
    assert_pruned_as_masked(model, masked, pruned, 2, seed=3)


def test_a_table_an_edit_reads_without_cutting_stays_the_one_tensor_every_reader_shares():
    # rotary tables read by every layer, visited by edits of a group that lost nothing there: storing what was only read
    # would give one reader a copy beside the tensor the others keep
    table = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4), "table")
    nodes = [helper.make_node("Mul", ["x", "table"], ["a"], name="first"), helper.make_node("Mul", ["a", "table"], ["y"], name="second")]
    model = helper.make_model(helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
                                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])], [table]))
    view = WorkingWeights(model, all_value_names(model.graph))
    view.get("first", 1)
    view.commit()
    assert [i.name for i in model.graph.initializer] == ["table"] and [n.input[1] for n in model.graph.node] == ["table", "table"]
    view.set("first", 1, np.delete(view.get("first", 1), [0], axis=1))
    view.commit()
    assert [n.input[1] for n in model.graph.node] == ["table_pruned", "table"]


def shared_ffn_model(blocks: int = 3, dim: int = 16, hidden: int = 32) -> onnx.ModelProto:
    """Residual FFN blocks that all reuse one set of weights (tied layers, as in ALBERT-style encoders)."""
    rng = np.random.default_rng(5)
    inits = [
        onnx.numpy_helper.from_array(rng.normal(0, 0.3, (dim, hidden)).astype(np.float32), "w1"),
        onnx.numpy_helper.from_array(rng.normal(0, 0.1, hidden).astype(np.float32), "b1"),
        onnx.numpy_helper.from_array(rng.normal(0, 0.3, (hidden, dim)).astype(np.float32), "w2"),
    ]
    nodes, current = [], "x"
    for block in range(blocks):
        nodes += [
            helper.make_node("MatMul", [current, "w1"], [f"h{block}"], name=f"up{block}"),
            helper.make_node("Add", [f"h{block}", "b1"], [f"hb{block}"], name=f"bias{block}"),
            helper.make_node("Relu", [f"hb{block}"], [f"r{block}"], name=f"relu{block}"),
            helper.make_node("MatMul", [f"r{block}", "w2"], [f"d{block}"], name=f"down{block}"),
            helper.make_node("Add", [current, f"d{block}"], [f"y{block}"], name=f"res{block}"),
        ]
        current = f"y{block}"
    graph = helper.make_graph(
        nodes, "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, dim])], [helper.make_tensor_value_info(current, TensorProto.FLOAT, [2, dim])], inits
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_pruned_model_larger_than_the_original_is_said_so(monkeypatch):
    """A bias table gathered by constant indices, as LeViT's attention biases are, beside a small MLP. The fold
    declines that; were a preparation step to grow the model all the same, the report says the result is larger."""
    from onnxslim.passes import fold

    b = GraphBuilder(37)
    hidden = b.node("Relu", [b.node("MatMul", ["input", b.const(b.weight(8, 16).T.copy())])])
    out = b.node("MatMul", [hidden, b.const(b.weight(32, 8).T.copy())])
    bias = b.node("Gather", [b.const(np.random.default_rng(0).standard_normal((8, 100)).astype(np.float32), "table"),
                             b.const(np.random.default_rng(1).integers(0, 100, (32, 32)).astype(np.int64), "index")], axis=1)  # (8, 32, 32)
    y = b.node("Add", [out, bias])
    _rename_output(b, y, "y")
    model = b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, [32, 16])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 32, 32])], "gathered")
    _, report = prune(model, config=FAST)
    assert report.parameters.after < report.parameters.before and not any("more parameters" in w for w in report.warnings)
    monkeypatch.setattr(fold, "GROWTH_SLACK_BYTES", 1 << 30)  # a fold allowed to grow the model
    _, grown = prune(model, config=dataclasses.replace(FAST, ratio=0.125))  # one of 8 hidden channels: 48 weights fewer
    assert grown.parameters.after > grown.parameters.before
    assert any(w.startswith(f"the pruned model holds more parameters than the original ({grown.parameters.before:,} -> ") for w in grown.warnings)


@pytest.mark.parametrize("with_data", [False, True])
def test_shared_weights_stay_shared_and_the_model_never_grows(with_data):
    model = shared_ffn_model()
    data = [{"x": np.random.default_rng(i).normal(size=(2, 16)).astype(np.float32)} for i in range(8)] if with_data else None
    pruned, report = prune(model, data, config=PruneConfig(ratio=0.5, latency_runs=0))
    assert report.parameters.after < report.parameters.before
    readers = {}
    for node in pruned.graph.node:
        for name in node.input[1:]:
            readers.setdefault(name, set()).add(node.op_type)
    matmul_weights = {node.input[1] for node in pruned.graph.node if node.op_type == "MatMul"}
    assert len(matmul_weights) == 2  # one pruned w1 and one pruned w2, each read by all three blocks
    assert len(pruned.graph.initializer) == len(model.graph.initializer)
    for feed in sample_inputs(model, 2):
        assert run_model(pruned, feed)[0].shape == run_model(model, feed)[0].shape


@pytest.mark.parametrize("if_slower", ["keep-original", "write", "fail"])
def test_a_pruned_model_that_is_not_faster_is_not_written_by_default(monkeypatch, tmp_path, if_slower):
    from onnxslim.measure import LatencyComparison
    from onnxslim.prune import structured

    slower = LatencyComparison(1, {"median_ms": 1.0, "runs": 3}, {"median_ms": 1.2, "runs": 3})
    monkeypatch.setattr(structured, "latency_ratios", lambda *a, **k: (slower, None))
    model = conv_bn_relu()
    config = PruneConfig(ratio=0.5, latency_runs=3, if_slower=if_slower)
    if if_slower == "fail":
        with pytest.raises(NothingToDoError, match="not faster"):
            prune(model, config=config, output=tmp_path / "p.onnx")
        assert not (tmp_path / "p.onnx").exists()
        return
    written, report = prune(model, config=config, output=tmp_path / "p.onnx")
    assert report.latency.ratio == pytest.approx(1.2)  # timed on random inputs: no data was given
    saved = load_model(tmp_path / "p.onnx")
    if if_slower == "keep-original":
        assert report.written == "original" and len(saved.graph.initializer) == len(load_model(model).graph.initializer)
        assert any("wrote the original model" in w for w in report.warnings)
    else:
        assert report.written == "pruned" and report.parameters.after < report.parameters.before


def test_without_data_a_dynamic_batch_axis_is_one_for_the_test_run_timing_and_macs(monkeypatch):
    from onnxslim.measure import LatencyComparison
    from onnxslim.prune import structured

    faster = LatencyComparison(1, {"median_ms": 1.0, "runs": 3}, {"median_ms": 0.7, "runs": 3})
    timed = []
    monkeypatch.setattr(structured, "latency_ratios", lambda original, pruned, probe, **k: timed.append(probe) or (faster, None))
    _, report = prune(conv_bn_relu(batch="N"), config=PruneConfig(ratio=0.5, latency_runs=3, round_to=1))
    assert [array.shape for array in timed[0].values()] == [(1, 3, 32, 32)]
    assert report.macs.before > report.macs.after > 0 and not report.macs_unknown
    assert any("batch axis of input taken as 1" in w for w in report.warnings)
    assert not any("not test-run" in w or "not timed" in w for w in report.warnings)
    # another dynamic size: nothing is guessed, and the report says what was not checked
    model = conv_bn_relu(batch="N")
    model.graph.input[0].type.tensor_type.shape.dim[3].dim_param = "width"
    _, unsized = prune(model, config=PruneConfig(ratio=0.5, latency_runs=3, round_to=1))
    assert any("not test-run" in w for w in unsized.warnings) and not any("taken as 1" in w for w in unsized.warnings)


def test_a_conv_reading_tracked_channels_off_its_channel_axis_blocks_them():
    """YOLOv8's DFL head: 4 box sides x 16 bins in one conv's channels, bins moved onto the channel axis of a fixed 1x1 conv."""
    b = GraphBuilder(21)
    features = b.node("Relu", [b.conv("input", 8, 8)])
    flat = b.const(np.array([1, 64, -1], np.int64), "shape")
    scales = [b.node("Reshape", [b.conv(features, 8, 64, k=1), flat]) for _ in range(2)]  # two detection scales, 16 anchors each
    sides = b.node("Reshape", [b.node("Concat", scales, axis=-1), b.const(np.array([1, 4, 16, 32], np.int64), "shape")])
    bins = b.node("Softmax", [b.node("Transpose", [sides], perm=[0, 2, 1, 3])], axis=1)
    dfl = b.node("Conv", [bins, b.const(np.arange(16, dtype=np.float32).reshape(1, 16, 1, 1))])
    y = b.node("Reshape", [dfl, b.const(np.array([1, 4, 32], np.int64), "shape")])
    model = b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 8, 4, 4])], [helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, 4, 32])], "dfl")
    pruned, report = prune(model, config=PruneConfig(ratio=0.5, latency_runs=0))
    for feed in sample_inputs(model, 1):
        assert run_model(pruned, feed)[0].shape == (1, 4, 32)
    assert any(g.skipped and "not its channel axis" in g.skipped for g in report.groups)


def test_choose_multiple_takes_the_most_accurate_of_the_fastest():
    from onnxslim.prune.widths import choose_multiple

    # 8 and 16 are equally fast within noise: 16 keeps more channels, so it wins; 1 is slow
    assert choose_multiple({1: 1.22, 4: 0.71, 8: 0.69, 16: 0.695, 32: 0.80}) == 16
    assert choose_multiple({1: 0.60, 4: 0.70, 8: 0.70}) == 1
    with pytest.raises(ValueError):
        choose_multiple({})


def test_timing_the_multiples_stops_once_the_choice_is_beyond_doubt():
    import itertools

    from onnxslim.measure.latency import SETTLED_MIN_ROUNDS, interleaved_latency
    from onnxslim.prune.widths import choice_stopper, settled_multiple

    rounds = SETTLED_MIN_ROUNDS
    original = [1.0] * rounds
    # multiples 4, 16, 32: 16 the fastest; 32 far slower, out; 4 within the tolerance of 16 but a smaller multiple
    steady = [[0.605] * rounds, [0.60] * rounds, [0.85] * rounds]
    assert settled_multiple(original, steady, [4, 16, 32], set()) == (True, {2})
    assert settled_multiple(original[: rounds - 1], [t[: rounds - 1] for t in steady], [4, 16, 32], set()) == (False, set())  # too few rounds
    noisy = [[0.60, 0.66] * (rounds // 2), [0.62] * rounds]  # 8's ratio straddles 16's tolerance band: 16 is not surely in it
    assert settled_multiple(original, noisy, [8, 16], set())[0] is False
    # a candidate left out is not what the others are compared with, whatever its last rounds said
    assert settled_multiple(original, [[0.5] * rounds, [0.9] * rounds], [4, 16], {0}) == (True, set())

    class Fake:
        def __init__(self, times):
            self.times, self.calls = itertools.cycle(times), 0

        def time_once(self, feed):
            self.calls += 1
            return next(self.times)

    runners = [Fake([1.0]), Fake([0.605]), Fake([0.60]), Fake([0.85])]
    samples = interleaved_latency(runners, {}, warmup=0, runs=20, until=choice_stopper([4, 16, 32]))
    assert [len(s) for s in samples] == [rounds] * 4  # the choice (16) is settled at the first round it can be
    runners = [Fake([1.0]), Fake([0.60, 0.66]), Fake([0.62]), Fake([0.85])]
    samples = interleaved_latency(runners, {}, warmup=0, runs=20, until=choice_stopper([8, 16, 32]))
    assert len(samples[0]) == 20 and len(samples[3]) == rounds  # the slow one left out at the first chance, the others timed to the end


def test_default_width_is_measured_and_kept_counts_follow_it(monkeypatch):
    from onnxslim.prune import structured
    from onnxslim.prune.widths import CANDIDATE_MULTIPLES

    model = conv_bn_relu(channels=40)
    calls = []

    def timed(runners, feed, **kwargs):  # the original, then the distinct candidates: some fast, some slow
        calls.append(len(runners))
        return [[1.0]] + [[0.5 if index % 2 else 0.9] for index in range(1, len(runners))]

    monkeypatch.setattr(structured, "interleaved_latency", timed)
    _, report = prune(model, config=PruneConfig(ratio=0.3, latency_runs=3))
    assert calls and report.widths.measured and set(report.widths.measured) == set(CANDIDATE_MULTIPLES)
    fastest = min(report.widths.measured.values())
    assert report.widths.measured[report.widths.multiple] == fastest
    changed = [g for g in report.groups if g.channels_after < g.channels_before]
    assert changed and all(g.channels_after % report.widths.multiple == 0 for g in changed)
    # the same model and selection again: the measurement comes from the cache
    calls.clear()
    _, again = prune(model, config=PruneConfig(ratio=0.3, latency_runs=3))
    assert not calls and again.widths.cached and again.widths.multiple == report.widths.multiple
    # without timing there is nothing to measure: the exact counts, and the report says why
    _, untimed = prune(model, config=PruneConfig(ratio=0.3, latency_runs=0))
    assert untimed.widths.multiple == 1 and "not measured" in untimed.widths.note
    _, given = prune(model, config=PruneConfig(ratio=0.3, round_to=8, latency_runs=0))
    assert given.widths.multiple == 8 and all(g.channels_after % 8 == 0 for g in given.groups if g.channels_after < g.channels_before)


def _three_layer_mlp(seed: int = 0) -> onnx.ModelProto:
    b = GraphBuilder(seed)
    h = "x"
    for index, (d_in, d_out) in enumerate([(8, 32), (32, 32), (32, 4)]):
        h = b.node("Add", [b.node("MatMul", [h, b.const(b.weight(d_in, d_out, fan_in=d_in))]), b.const((0.1 * b.rng.standard_normal(d_out)).astype(np.float32), "b")])
        if index < 2:
            h = b.node("Relu", [h])
    graph = helper.make_graph(
        b.nodes, "mlp3", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])], [helper.make_tensor_value_info(h, TensorProto.FLOAT, ["n", 4])], b.initializers
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _ridge(x, y, ridge, prior):
    """The refit's normal equations with an intercept, the ridge term pulling toward ``prior``, in numpy."""
    xa = np.hstack([x, np.ones((x.shape[0], 1))]).astype(np.float64)
    penalty = ridge * np.mean(np.diag(x.T.astype(np.float64) @ x))
    cross = xa.T @ y
    cross[:-1] += penalty * prior
    solution = np.linalg.solve(xa.T @ xa + np.diag(np.r_[np.full(x.shape[1], penalty), 0.0]), cross)
    return solution[:-1], solution[-1]


def test_refit_is_sequential_each_layer_fitted_on_the_refit_model_before_it():
    from onnxslim.prune.groups import kept_positions
    from onnxslim.prune.recover import recover

    model = _three_layer_mlp()
    work = load_model(model)
    PREPARE(work)
    rng = np.random.default_rng(1)
    data = [("b", {"x": rng.standard_normal((64, 8)).astype(np.float32)}) for _ in range(4)]
    groups = build_groups(trace(work, infer_shapes(work, {"x": (64, 8)})))
    removed, _ = select(groups, channel_scores(work, groups, "l2"), 0.5, PruneConfig().selection)
    pruned = apply_removal(work, groups, removed)
    kept = kept_positions(groups, removed)
    config = PruneConfig(recovery="refit")
    steps = recover(work, pruned, data, config, kept)
    assert [s.kind.value for s in steps] == ["refit", "refit"]

    weights = {t.name: onnx.numpy_helper.to_array(t) for t in work.graph.initializer}
    (m1, a1), (m2, a2), (m3, a3) = [(n, next(r for r in work.graph.node if n.output[0] in r.input)) for n in work.graph.node if n.op_type == "MatMul"]
    w = [weights[m.input[1]] for m in (m1, m2, m3)]
    bias = [weights[a.input[1]] for a in (a1, a2, a3)]
    x = np.concatenate([feed["x"] for _, feed in data]).astype(np.float64)
    k1, k2 = kept[m1.name]["out"], kept[m2.name]["out"]
    h1 = np.maximum(x @ w[0] + bias[0], 0)
    h2 = np.maximum(h1 @ w[1] + bias[1], 0)
    # layer 2 on the pruned model's own input, towards the original's output at the kept channels
    h1_pruned = np.maximum(x @ w[0][:, k1] + bias[0][k1], 0)
    w2, c2 = _ridge(h1_pruned, (h1 @ w[1])[:, k2], config.ridge, w[1][np.ix_(k1, k2)])
    # layer 3 on the output of the REFIT layer 2: sequential, not both from the unrefit model
    h2_refit = np.maximum(h1_pruned @ w2 + bias[1][k2] + c2, 0)
    w3, _ = _ridge(h2_refit, h2 @ w[2], config.ridge, w[2][k2])
    got = {t.name: onnx.numpy_helper.to_array(t) for t in pruned.graph.initializer}
    by_name = {n.name: n for n in pruned.graph.node}
    np.testing.assert_allclose(got[by_name[m2.name].input[1]], w2, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(got[by_name[m3.name].input[1]], w3, rtol=2e-4, atol=2e-5)


def _two_branch_mlp(seed: int = 0) -> onnx.ModelProto:
    """x -> MatMul -> Relu, read by two MatMuls whose outputs are added: both readers lose the same channels and are
    refit in one wave."""
    b = GraphBuilder(seed)
    h = b.node("Relu", [b.node("Add", [b.node("MatMul", ["x", b.const(b.weight(8, 32, fan_in=8))]), b.const(np.full(32, 0.1, np.float32), "b")])])
    branches = [b.node("Add", [b.node("MatMul", [h, b.const(b.weight(32, 4, fan_in=32))]), b.const(np.full(4, 0.05 * k, np.float32), "b")]) for k in (1, 2)]
    y = b.node("Add", branches)
    graph = helper.make_graph(
        b.nodes, "mlp2", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])], [helper.make_tensor_value_info(y, TensorProto.FLOAT, ["n", 4])], b.initializers
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _recovered(model: onnx.ModelProto, rows: int, batches: int = 5):
    from onnxslim.prune.groups import kept_positions
    from onnxslim.prune.recover import recover

    work = load_model(model)
    PREPARE(work)
    rng = np.random.default_rng(1)
    data = [("b", {"x": rng.standard_normal((rows, 8)).astype(np.float32)}) for _ in range(batches)]
    groups = build_groups(trace(work, infer_shapes(work, {"x": (rows, 8)})))
    removed, _ = select(groups, channel_scores(work, groups, "l2"), 0.5, PruneConfig().selection)
    pruned = apply_removal(work, groups, removed)
    steps = recover(work, pruned, data, PruneConfig(recovery="refit"), kept_positions(groups, removed))
    return steps, {t.name: onnx.numpy_helper.to_array(t) for t in pruned.graph.initializer}


def test_a_refit_whose_gram_matrices_exceed_the_memory_budget_is_bias_compensated_and_says_why(monkeypatch):
    """A wide Conv over its patches (CREPE's 1024 channels x 64 taps: 35 GB of Gram matrices) was summed until the
    process ran out of memory; the size is known before any data is read."""
    from onnxslim.prune import recover as recovery

    monkeypatch.setattr(recovery, "REFIT_GRAM_BUDGET_BYTES", 2 * 8 * 16**2)  # less than one layer's 16 kept inputs + intercept
    steps, _ = _recovered(_three_layer_mlp(), rows=64)
    assert [s.kind.value for s in steps] == ["bias", "bias"]
    assert all("not refit: a refit over 17 unknowns per output (16 input channel(s) and an intercept) needs" in str(s.reason) for s in steps)


def test_a_wave_larger_than_the_memory_budget_is_refit_in_parts_with_the_same_result(monkeypatch):
    from onnxslim.prune import recover as recovery

    whole_steps, whole = _recovered(_two_branch_mlp(), rows=64)
    passes = []
    original_wave = recovery._refit_wave
    monkeypatch.setattr(recovery, "_refit_wave", lambda pruned, wave, *args: passes.append(len(wave)) or original_wave(pruned, wave, *args))
    monkeypatch.setattr(recovery, "REFIT_GRAM_BUDGET_BYTES", 2 * 8 * 17**2)  # one reader's Gram matrices at a time
    parts_steps, parts = _recovered(_two_branch_mlp(), rows=64)
    assert passes == [1, 1] and [s.kind.value for s in parts_steps] == [s.kind.value for s in whole_steps] == ["refit", "refit"]
    assert whole.keys() == parts.keys()
    for name in whole:
        np.testing.assert_allclose(parts[name], whole[name], rtol=1e-6, atol=1e-7)


def test_a_refit_with_fewer_rows_than_unknowns_is_bias_compensated_and_says_why():
    steps, _ = _recovered(_three_layer_mlp(), rows=2)  # 10 rows in all for 16 weights and an intercept per output
    assert [s.kind.value for s in steps] == ["bias", "bias"]
    assert all("the calibration data gives 10 rows for 17 unknowns per output (16 input channel(s) and an intercept); a refit needs at least as many" in str(s.reason)
               for s in steps), [str(s.reason) for s in steps]


def test_a_multiple_that_keeps_every_channel_is_never_chosen(monkeypatch):
    from onnxslim.prune import structured

    monkeypatch.setattr(structured, "interleaved_latency", lambda runners, feed, **kwargs: [[1.0] for _ in runners])  # all equally fast
    # 64 hidden neurons at 30%: exact counts keep 45, multiples of 4, 8 and 16 keep 48, of 32 all 64 (no pruning at all)
    _, report = prune(mlp(hidden=64), config=PruneConfig(ratio=0.3, latency_runs=3))
    assert set(report.widths.measured) == {1, 4, 8, 16}
    assert report.widths.multiple == 16  # equally fast: the most channels kept among candidates that prune
    widths = [g.channels_after for g in report.groups if g.channels_before == 64]
    assert widths and set(widths) == {48}


def test_cost_scope_cuts_where_channels_are_expensive():
    b = GraphBuilder(3)
    h = b.node("Relu", [b.conv("x", 8, 32)])  # 32x32 maps: each channel costs a lot
    h = b.node("Relu", [b.node("Conv", [h, b.const(b.weight(32, 32, 3, 3))], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[4, 4])])  # 8x8 maps: cheap
    out = b.conv(h, 32, 8, k=1)
    graph = helper.make_graph(
        b.nodes, "costs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 32, 32])], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
        b.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    _, local = prune(model, config=PruneConfig(ratio=0.25, round_to=1, latency_runs=0))
    _, cost = prune(model, config=PruneConfig(ratio=0.25, scope="cost", round_to=1, latency_runs=0))
    first, second = (next(g for g in cost.groups if g.producers == local_group.producers) for local_group in local.groups if local_group.channels_before == 32)
    assert first.channels_after < second.channels_after  # the expensive 32x32 group gives more
    assert first.channels_after >= 32 - int(0.5 * 32)  # but no more than twice the ratio
    assert cost.macs.after < local.macs.after  # same ratio, more of the cost removed
    assert first.macs_removed > second.macs_removed and 0 < first.score_removed < 1


def fused_ffn(dim: int = 16, hidden: int = 32, seq: int = 8, *, seed: int = 31) -> onnx.ModelProto:
    """x -> MatMul -> onnxruntime's BiasGelu -> MatMul -> SkipLayerNormalization(., x) -> y: an FFN as onnxruntime's transformer
    optimizer writes it, the second layer's bias inside the fused normalization."""
    b = GraphBuilder(seed)
    h = b.node("MatMul", ["x", b.const(b.weight(dim, hidden, fan_in=dim))])
    g = b.node("BiasGelu", [h, b.const((0.5 * b.rng.standard_normal(hidden)).astype(np.float32), "b")], domain="com.microsoft")
    d = b.node("MatMul", [g, b.const(b.weight(hidden, dim, fan_in=hidden))])
    gamma, beta = b.const(np.ones(dim, np.float32), "gamma"), b.const(np.zeros(dim, np.float32), "beta")
    bias = b.const((0.1 * b.rng.standard_normal(dim)).astype(np.float32), "b")
    b.nodes.append(helper.make_node("SkipLayerNormalization", [d, "x", gamma, beta, bias], ["y"], name="skip_norm", domain="com.microsoft", epsilon=1e-5))
    graph = helper.make_graph(b.nodes, "fused_ffn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, seq, dim])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, seq, dim])], b.initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def test_ffn_neurons_are_pruned_through_onnxruntimes_fused_activation_and_compensated_in_its_fused_norm():
    model = fused_ffn()
    data = [{"x": np.random.default_rng(i).standard_normal((1, 8, 16)).astype(np.float32)} for i in range(20)]
    pruned, report = prune(model, data, config=FAST)
    shapes = {t.name: tuple(t.dims) for t in pruned.graph.initializer}
    gelu = next(n for n in pruned.graph.node if n.op_type == "BiasGelu")
    up, down = (n for n in pruned.graph.node if n.op_type == "MatMul")
    assert shapes[up.input[1]] == (16, 16) and shapes[gelu.input[1]] == (16,) and shapes[down.input[1]] == (16, 16)
    # the removed neurons' mean contribution goes into the fused normalization's bias, the layer's own
    norm = next(n for n in pruned.graph.node if n.op_type == "SkipLayerNormalization")
    assert norm.input[4] != model.graph.node[-1].input[4] and shapes[norm.input[4]] == (16,)
    assert [step.kind.value for step in report.recovery] in (["bias"], ["refit"])
    # every layer's size is known through the fused operators: the MACs are counted, not left out
    assert report.macs_unknown == [] and report.macs.before == 2 * 8 * 16 * 32 and report.macs.after == 2 * 8 * 16 * 16
    out, ref = run_model(pruned, data[0])[0], run_model(model, data[0])[0]
    assert out.shape == ref.shape and np.dot(out.ravel(), ref.ravel()) / np.linalg.norm(out) / np.linalg.norm(ref) > 0.8


def test_macs_of_onnxruntimes_fused_attention_count_its_projection_and_scores():
    from onnxslim.ir.counts import node_macs

    node = helper.make_node("Attention", ["x", "w", "b"], ["y"], domain="com.microsoft", num_heads=2)
    assert node_macs(node, {"x": (1, 8, 16), "w": (16, 48)}) == 8 * 16 * 48 + 2 * 8 * 8 * 16
    assert node_macs(node, {"x": (1, None, 16), "w": (16, 48)}) is None  # unknown: said so, never counted as 0
    standard = helper.make_node("Attention", ["q", "k", "v"], ["y"])  # onnx's own Attention (opset 23) is another operator
    assert node_macs(standard, {"q": (1, 8, 16), "k": (1, 8, 16)}) == 0


def test_heads_are_pruned_through_onnxruntimes_fused_attention():
    """A head is its columns in the query, key and value parts of the packed weight; num_heads and the projection follow."""
    from tests.test_attention_fusion import DIM, HEADS, fused_attention_batches, fused_attention_model

    model = fused_attention_model()
    pruned, report = prune(model, config=PruneConfig(ratio=0.5, only="heads", round_to=1, latency_runs=0))
    attention = next(n for n in pruned.graph.node if n.op_type == "Attention")
    head = DIM // HEADS
    kept_heads = HEADS // 2
    assert next(a.i for a in attention.attribute if a.name == "num_heads") == kept_heads
    arrays = {t.name: onnx.numpy_helper.to_array(t) for t in pruned.graph.initializer}
    projection = next(n for n in pruned.graph.node if n.op_type == "MatMul")
    weight, bias = arrays[attention.input[1]], arrays[attention.input[2]]
    assert weight.shape == (DIM, 3 * kept_heads * head) and bias.shape == (3 * kept_heads * head,)
    assert arrays[projection.input[1]].shape == (kept_heads * head, DIM)
    pruned_groups = [g for g in report.groups if g.channels_after < g.channels_before]
    assert [(g.producers, g.channels_before, g.channels_after) for g in pruned_groups] == [(["fused_attention"], HEADS, kept_heads)]
    # without data nothing is refit: the pruned model computes the original with the removed heads' share of the projection gone
    original = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    width = DIM
    kept = [h for h in range(HEADS) if any(np.array_equal(original["qkv_weight"][:, h * head:(h + 1) * head], weight[:, k * head:(k + 1) * head])
                                           for k in range(kept_heads))]
    assert len(kept) == kept_heads
    for part in range(3):  # the same heads kept in the key and value parts as in the query part
        expected = np.concatenate([original["qkv_weight"][:, part * width + h * head:part * width + (h + 1) * head] for h in kept], axis=1)
        np.testing.assert_array_equal(weight[:, part * kept_heads * head:(part + 1) * kept_heads * head], expected)
    reference = load_model(model)
    silenced = original["out_weight"].copy()
    for h in set(range(HEADS)) - set(kept):
        silenced[h * head:(h + 1) * head] = 0.0
    reference.graph.initializer[[t.name for t in reference.graph.initializer].index("out_weight")].CopyFrom(onnx.numpy_helper.from_array(silenced, "out_weight"))
    for feed in fused_attention_batches(2, 4):
        np.testing.assert_allclose(run_model(pruned, feed)[0], run_model(reference, feed)[0], rtol=1e-4, atol=1e-5)


def test_a_fused_attention_with_parts_of_other_widths_keeps_its_heads():
    from tests.test_attention_fusion import fused_attention_model

    model = fused_attention_model()
    model.graph.node[0].attribute.append(helper.make_attribute("qkv_hidden_sizes", [16, 16, 16]))
    with pytest.raises(NothingToDoError, match="Attention fused_attention keeps its heads: its parts differ in width"):
        prune(model, config=PruneConfig(ratio=0.5, only="heads", round_to=1, latency_runs=0))


def test_a_model_saved_by_onnxruntime_with_fused_layers_is_pruned_as_the_standard_one():
    from tests.test_passes import onnxruntime_fused_layers

    model = onnxruntime_fused_layers()
    data = sample_inputs(model, 12)
    pruned, report = prune(model, data, config=FAST)
    assert {n.op_type for n in pruned.graph.node} >= {"Conv", "Gemm"} and all(n.domain == "" for n in pruned.graph.node)
    assert report.parameters.after < report.parameters.before
    out, ref = run_model(pruned, data[0])[0], run_model(model, data[0])[0]
    assert out.shape == ref.shape


def test_a_model_with_layernorm_written_below_opset_17_is_pruned_and_written(tmp_path):
    """A session saved at 'extended' writes LayerNormalization at the model's own opset: the pruned file must pass the checker."""
    rng = np.random.default_rng(6)
    weights = [onnx.numpy_helper.from_array(a, n) for n, a in (
        ("w1", (rng.standard_normal((16, 32)) / 4).astype(np.float32)), ("w2", (rng.standard_normal((32, 16)) / 6).astype(np.float32)),
        ("gamma", np.ones(16, np.float32)), ("beta", np.zeros(16, np.float32)))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="up"), helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["d"], name="down"),
             helper.make_node("LayerNormalization", ["d", "gamma", "beta"], ["y"], name="norm", axis=-1, epsilon=1e-5)]
    graph = helper.make_graph(nodes, "saved", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    data = [{"x": rng.standard_normal((1, 8, 16)).astype(np.float32)} for _ in range(12)]
    pruned, report = prune(model, data, config=FAST, output=tmp_path / "pruned.onnx")
    onnx.checker.check_model(onnx.load(str(tmp_path / "pruned.onnx")))
    assert next(p for p in report.prepare if p.name == "layernorm-at-opset-17").modified
    assert {tuple(t.dims) for t in pruned.graph.initializer if t.name.startswith("w")} == {(16, 16)}


def test_pruning_one_model_at_several_amounts_gathers_its_statistics_once(monkeypatch):
    from onnxslim.data.sources import InMemory
    from onnxslim.prune import structured

    model = residual(channels=16, size=8)
    data = InMemory(sample_inputs(model, 10, seed=3))
    passes, timings = [], []
    real = structured.input_moments
    monkeypatch.setattr(structured, "input_moments", lambda *a, **k: passes.append(1) or real(*a, **k))
    real_timing = structured.latency_ratios
    monkeypatch.setattr(structured, "latency_ratios", lambda *a, **k: timings.append(1) or real_timing(*a, **k))
    memo: dict = {}
    for ratio in (0.25, 0.5):
        config = PruneConfig(ratio=ratio, latency_runs=3, round_to=1, eval_fraction=0.0)
        shared, shared_report = structured.pruned_unmeasured(model, data, config=config, memo=memo)
        assert shared_report.latency is None and not shared_report.fidelity  # the caller measures it
        assert shared_report.macs.after < shared_report.macs.before
        alone, alone_report = prune(model, data, config=dataclasses.replace(config, if_slower="write"))
        assert alone_report.latency is not None and alone_report.fidelity
        assert shared.SerializeToString() == alone.SerializeToString()  # the statistics read from the memo are the ones a pass gives
        assert shared_report.config["importance"] == alone_report.config["importance"] == "second-order"
    assert len(passes) == 3  # the first shared pruning's pass, then one per pruning alone
    assert len(timings) == 2  # prune alone's, twice


def test_a_pruned_model_whose_outputs_moved_past_the_default_budget_says_so():
    """prune does what --ratio asks; where that moves an output's cosine under the 0.99 quantize and compress hold, the
    report says which output and how far, and points to compress."""
    faithful, wide = conv_bn_relu(), mlp()
    _, light = prune(faithful, sample_inputs(faithful, 20), config=PruneConfig(ratio=0.1, latency_runs=0))
    _, heavy = prune(wide, sample_inputs(wide, 20), config=PruneConfig(ratio=0.9, latency_runs=0))
    worst = min(c.cosine for c in heavy.fidelity)
    assert worst < 0.99 and any(w.startswith("output ") and "moved" in w and f"{worst:.4f}" in w and "compress" in w for w in heavy.warnings), heavy.warnings
    assert min(c.cosine for c in light.fidelity) >= 0.99 and not any("moved" in w for w in light.warnings), light.warnings


def _tensordot_ffn(dim: int = 8, hidden: int = 16, seq: int = 4) -> onnx.ModelProto:
    """Dense layers on (N, S, D) as tf2onnx writes Keras's Tensordot: flatten to (N*S, D), MatMul, and a Reshape back whose
    target is built in int32 from the input's Shape (its batch and sequence sizes) and the layer's width, then cast."""
    b = GraphBuilder(29)

    def dense(x: str, d_in: int, d_out: int) -> str:
        flat = b.node("Reshape", [x, b.const(np.array([-1, d_in], np.int64), "flat")])
        product = b.node("MatMul", [flat, b.const(b.weight(d_out, d_in).T.copy())])
        sizes = b.node("Gather", [b.node("Cast", [b.node("Shape", [x])], to=TensorProto.INT32), b.const(np.array([0, 1], np.int64), "free")], axis=0)
        target = b.node("Cast", [b.node("Concat", [sizes, b.const(np.array([d_out], np.int32), "width")], axis=0)], to=TensorProto.INT64)
        return b.node("Add", [b.node("Reshape", [product, target]), b.const(np.full(d_out, 0.1, np.float32), "bias")])

    out = dense(b.node("Relu", [dense("input", dim, hidden)]), hidden, dim)
    _rename_output(b, out, "output")
    return b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", seq, dim])], [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", seq, dim])], "tensordot")


def test_dense_layers_spelled_as_tf2onnx_tensordot_lose_their_hidden_neurons():
    """The Reshape back to (N, S, hidden) reads its target through int32 Casts of a Shape: only the width entry counts the
    neurons, and the Shape of the hidden activation is read for its batch and sequence sizes alone."""
    model = _tensordot_ffn()
    pruned, report = prune(model, config=PruneConfig(ratio=0.5, latency_runs=0), input_shapes={"input": (2, 4, 8)})
    assert [(g.channels_before, g.channels_after) for g in report.groups] == [(16, 8), (8, 8)]
    weights = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    first, second = (weights[n.input[1]] for n in pruned.graph.node if n.op_type == "MatMul")
    assert first.shape == (8, 8) and second.shape == (8, 8)
    original = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    first_name, second_name = (n.input[1] for n in model.graph.node if n.op_type == "MatMul")
    kept = [next(j for j in range(16) if np.array_equal(original[first_name][:, j], column)) for column in first.T]
    masked = load_model(model)  # the original with the removed neurons' rows of the second layer zeroed
    cut = original[second_name].copy()
    cut[[j for j in range(16) if j not in kept]] = 0
    next(t for t in masked.graph.initializer if t.name == second_name).CopyFrom(numpy_helper.from_array(cut, second_name))
    for batch in (1, 3):  # the batch stays dynamic: the target's other entries are still read at run time
        feed = {"input": np.random.default_rng(batch).standard_normal((batch, 4, 8)).astype(np.float32)}
        np.testing.assert_allclose(run_model(pruned, feed)[0], run_model(masked, feed)[0], rtol=1e-4, atol=1e-5)


def test_macs_of_an_einsum_are_its_indices_sizes_multiplied_and_counted_before_pruning():
    from onnxslim.ir.counts import node_macs

    node = helper.make_node("Einsum", ["a", "b"], ["c"], equation="abcd,cde->abe")
    assert node_macs(node, {"a": (1, 32, 8, 16), "b": (8, 16, 128)}) == 32 * 128 * 128
    broadcast = helper.make_node("Einsum", ["a", "b"], ["c"], equation="...ij,...jk->...ik")
    assert node_macs(broadcast, {"a": (2, 3, 4, 5), "b": (3, 5, 6)}) == 2 * 3 * 4 * 5 * 6
    assert node_macs(helper.make_node("Einsum", ["a"], ["c"], equation="ij->ji"), {"a": (2, 3)}) == 0
    assert node_macs(node, {"a": (1, None, 8, 16), "b": (8, 16, 128)}) is None
    # preparation rewrites the Einsums as MatMuls: the original's are still counted, so the ratio is the work pruning saved
    b = GraphBuilder(31)
    hidden = b.node("Relu", [b.node("Einsum", ["input", b.const(b.weight(16, 8).T.copy())], equation="bsd,de->bse")])
    out = b.node("Einsum", [hidden, b.const(b.weight(8, 16).T.copy())], equation="bse,ed->bsd")
    _rename_output(b, out, "output")
    model = b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, 8])], [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4, 8])], "einsum_ffn")
    _, report = prune(model, config=PruneConfig(ratio=0.5, latency_runs=0))
    assert report.macs_unknown == [] and (report.macs.before, report.macs.after) == (2 * 4 * 8 * 16, 2 * 4 * 8 * 8)
