"""Quantizing the layers inside If branches and Loop / Scan bodies."""

from collections import Counter

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from models.builders import CONTROL_FLOW_BUILDERS, branching_convs, looped_mlp, rate_branches, sample_inputs, scanned_cell, stopping_decoder
from models.scripted_export import scripted_branches
from onnxslim import QuantConfig, quantize
from onnxslim.cli import main
from onnxslim.ir import load_model
from onnxslim.ir.graph import with_outputs
from onnxslim.ir.scopes import all_nodes, body_graph, expose, find_bodies, scoped
from onnxslim.ir.tensors import all_value_names, outer_references
from onnxslim.quant.decisions import QuantReason
from onnxslim.quant.prepare import prepare
from tests.conftest import run_model

NO_BUDGET = QuantConfig(latency_runs=0, accuracy_budget=None)


def both_ways(model, count, seed=1):
    """Inputs whose mean is positive for even batches and negative for odd ones: both branches of branching_convs run."""
    batches = sample_inputs(model, count, seed=seed)
    for index, batch in enumerate(batches):
        batch["input"] = batch["input"] + (0.5 if index % 2 == 0 else -0.5)
    return batches


def cosine(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return a @ b / np.linalg.norm(a) / np.linalg.norm(b)


def weighted_body_nodes(model):
    """Conv / MatMul nodes with a constant weight, inside subgraphs only."""
    inner = [n for n in all_nodes(model.graph) if n not in list(model.graph.node)]
    return [n for n in inner if n.op_type in ("Conv", "MatMul", "Gemm")]


def prepared(model):
    """The model as quantize plans it (loaded as quantize loads it: duplicate names in one graph renamed)."""
    copy = load_model(model)
    prepare(copy)
    return copy


# ------------------------------------------------------------------ exposing tensors inside bodies
def test_expose_returns_the_value_of_a_tensor_inside_each_kind_of_body():
    model = prepared(branching_convs())
    bodies = {b.path: b for b in find_bodies(model.graph)}
    then_path, else_path = "choose_block.then_branch", "choose_block.else_branch"
    then_out = body_graph(model, bodies[then_path]).output[0].name
    else_out = body_graph(model, bodies[else_path]).output[0].name
    chosen_name = next(n for n in model.graph.node if n.op_type == "If").output[0]
    probe = expose(model, [chosen_name, scoped(then_path, then_out), scoped(else_path, else_out)])
    onnx.checker.check_model(expose(model, []))
    for batch in both_ways(model, 2):
        chosen, from_then, from_else = run_model(probe, batch)[1:]
        took_then = batch["input"].mean() > 0
        assert np.array_equal(from_then if took_then else from_else, chosen)
        assert (from_else if took_then else from_then).size == 0  # the branch that did not run gives nothing

    loop = prepared(looped_mlp(steps=3))
    path = find_bodies(loop.graph)[0].path
    body = body_graph(loop, find_bodies(loop.graph)[0])
    stepped = body.output[1].name
    looped = next(n for n in loop.graph.node if n.op_type == "Loop").output[0]
    values = run_model(expose(loop, [scoped(path, stepped), looped]), sample_inputs(loop, 1)[0])
    every, final = values[1], values[2]
    assert every.shape == (3 * 32,) and np.array_equal(every[-32:], final.ravel())  # three iterations, one after another

    scan = prepared(scanned_cell(steps=5))
    path = find_bodies(scan.graph)[0].path
    state = body_graph(scan, find_bodies(scan.graph)[0]).output[0].name
    every_step = next(n for n in scan.graph.node if n.op_type == "Scan").output[1]
    values = run_model(expose(scan, [scoped(path, state), every_step]), sample_inputs(scan, 1)[0])
    assert np.array_equal(values[1], values[2].ravel())


def test_node_names_are_unique_across_bodies_after_preparation():
    model = looped_mlp(with_branch=True)
    for node in all_nodes(model.graph):
        node.name = "same" if node.op_type == "MatMul" else ""
    names = [n.name for n in all_nodes(prepared(model).graph)]
    assert all(names) and len(names) == len(set(names))


# ------------------------------------------------------------------ quantizing inside bodies
@pytest.mark.parametrize("name", sorted(CONTROL_FLOW_BUILDERS))
def test_layers_inside_bodies_become_integer_kernels(name):
    model = CONTROL_FLOW_BUILDERS[name]()
    before = model.SerializeToString()
    data = both_ways(model, 30)
    quantized, report = quantize(model, data, config=NO_BUDGET)
    assert model.SerializeToString() == before  # the input model is never modified
    onnx.checker.check_model(quantized, full_check=True)
    inside = weighted_body_nodes(prepared(model))
    decided = {d.node: d for d in report.decisions}
    assert inside and all(decided[n.name].quantized for n in inside)
    kernels = Counter(report.onnxruntime_kernels)
    assert kernels["QLinearConv"] + kernels["QGemm"] >= len(inside)  # fused by onnxruntime inside the bodies too
    assert kernels["FusedGemm"] == 0  # no float Gemm dequantizing its weights on every run
    # weights read only inside bodies are stored once, in INT8, and nothing in a body shadows an outer name
    float_weights = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and t.name in {i for n in inside for i in n.input}}
    assert not float_weights & all_value_names(quantized.graph)
    for sub in (body_graph(quantized, b) for b in find_bodies(quantized.graph)):
        own = {o for n in sub.node for o in n.output} | {t.name for t in sub.initializer}
        assert not own & ({o for n in quantized.graph.node for o in n.output} | {t.name for t in quantized.graph.initializer})
        assert outer_references(sub) <= all_value_names(quantized.graph)
    for batch in both_ways(model, 6, seed=9):
        assert cosine(run_model(model, batch)[0], run_model(quantized, batch)[0]) > 0.99


def test_a_branch_calibration_never_took_stays_float_with_a_warning():
    model = branching_convs()
    only_then = sample_inputs(model, 24, seed=2)
    for batch in only_then:
        batch["input"] = batch["input"] + 0.5  # positive mean: the else branch never runs
    quantized, report = quantize(model, only_then, config=NO_BUDGET)
    decided = {d.node: d for d in report.decisions}
    prepared_model = prepared(model)
    bodies = {b.path: body_graph(prepared_model, b) for b in find_bodies(prepared_model.graph)}
    else_convs = [n.name for n in bodies["choose_block.else_branch"].node if n.op_type == "Conv"]
    then_convs = [n.name for n in bodies["choose_block.then_branch"].node if n.op_type == "Conv"]
    assert all(decided[n].code == QuantReason.NOT_CALIBRATED for n in else_convs)
    assert all(decided[n].quantized for n in then_convs)
    assert any("choose_block.else_branch never ran" in w for w in report.warnings)
    for batch in sample_inputs(model, 4, seed=7):
        negative = {"input": batch["input"] - 0.5}
        assert cosine(run_model(model, negative)[0], run_model(quantized, negative)[0]) > 0.99  # the float branch works as before


def test_body_layers_take_part_in_exclusions_and_the_accuracy_budget(tmp_path):
    model = looped_mlp(with_branch=True)
    data = both_ways(model, 30)
    inside = [n.name for n in weighted_body_nodes(prepared(model))]
    _, report = quantize(model, data, config=QuantConfig(latency_runs=0, accuracy_budget=None, exclude_nodes=(inside[0],)))
    decided = {d.node: d for d in report.decisions}
    assert decided[inside[0]].code == QuantReason.EXCLUDED_BY_USER and decided[inside[1]].quantized
    # the fast ranking measures the noise each layer inside the bodies adds, like any other
    _, plain = quantize(model, data, config=NO_BUDGET)
    worst = min(c.cosine for c in plain.fidelity)
    _, report = quantize(model, data, config=QuantConfig(latency_runs=0, accuracy_budget=worst + (1 - worst) * 0.5))
    ranked = {entry["node"] for entry in report.sensitivity}
    assert set(inside) <= ranked
    assert min(c.cosine for c in report.fidelity) >= worst + (1 - worst) * 0.5

    path = tmp_path / "loop.onnx"
    onnx.save(model, path)
    folder = tmp_path / "data"
    folder.mkdir()
    for index, batch in enumerate(data):
        np.savez(folder / f"b{index:02d}.npz", **batch)
    result = CliRunner().invoke(main, ["quantize", str(path), "-o", str(tmp_path / "q.onnx"), "--data", str(folder), "--exclude-nodes", inside[0], "-q"])
    assert result.exit_code == 0, result.output
    assert "no node named" not in result.output  # a body node's name is a name --exclude-nodes knows


@pytest.mark.parametrize("recurrent", ["LSTM", "GRU"])
def test_recurrent_layers_and_convs_inside_if_branches_are_stored_in_int8(recurrent):
    model = rate_branches(recurrent=recurrent)
    rng = np.random.default_rng(3)
    feeds = [{"input": rng.standard_normal((1, 16, 40)).astype(np.float32), "sr": np.array(16000 if i % 2 else 8000, np.int64)} for i in range(30)]
    quantized, report = quantize(model, feeds, config=NO_BUDGET)
    onnx.checker.check_model(quantized)
    kernels = Counter(report.onnxruntime_kernels)
    if recurrent == "LSTM":
        assert kernels["DynamicQuantizeLSTM"] == 2 and kernels["LSTM"] == 0
    else:  # float GRUs on INT8 weights folded back at load: no Cast or Mul runs
        assert kernels["GRU"] == 2 and kernels["Cast"] == 0 and kernels["Mul"] == 0
        assert {d.node: d for d in report.decisions if d.op_type == "GRU"} and all(d.quantized for d in report.decisions if d.op_type == "GRU")
    assert kernels["QLinearConv"] == 2
    assert report.sizes.quantized_bytes < 0.4 * report.sizes.fp32_bytes  # no float copy of a recurrent layer's weights left behind
    for rate in (16000, 8000):
        feed = {"input": rng.standard_normal((1, 16, 25)).astype(np.float32), "sr": np.array(rate, np.int64)}
        assert cosine(run_model(model, feed)[0], run_model(quantized, feed)[0]) > 0.99


def test_torch_script_control_flow_export_is_quantized_inside_its_if_and_loop():
    pytest.importorskip("torch")

    model = scripted_branches(width=16, size=16)
    assert {"If", "Loop"} <= {n.op_type for n in model.graph.node}
    quantized, report = quantize(model, both_ways(model, 30), config=NO_BUDGET)
    assert report.onnxruntime_kernels.get("QLinearConv", 0) >= 6  # the stem, two per branch, the one in the loop
    for batch in both_ways(model, 6, seed=9):
        assert cosine(run_model(model, batch)[0], run_model(quantized, batch)[0]) > 0.99


def test_drop_unread_initializers_keeps_what_a_body_or_a_graph_output_reads():
    from onnxslim.ir.graph import drop_unread_initializers

    branch = helper.make_graph([helper.make_node("Add", ["x", "inner"], ["y"])], "branch", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    graph = helper.make_graph(
        [helper.make_node("If", ["flag"], ["out"], then_branch=branch, else_branch=branch)], "g",
        [helper.make_tensor_value_info("flag", TensorProto.BOOL, []), helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2]), helper.make_tensor_value_info("exported", TensorProto.FLOAT, [2])],
        [numpy_helper.from_array(np.ones(2, np.float32), name) for name in ("inner", "exported", "unused")],
    )
    drop_unread_initializers(graph, {"inner", "exported", "unused"})
    assert sorted(t.name for t in graph.initializer) == ["exported", "inner"]


# ------------------------------------------------------------------ loops that stop on their own
def test_a_loop_that_stops_on_its_own_is_cut_off_for_timing():
    from onnxslim.ir.loops import data_dependent_loops, in_front_of_loops

    model = stopping_decoder()
    lengths = {run_model(model, feed)[0].shape[0] for feed in sample_inputs(model, 8, seed=3)}
    assert len(lengths) > 1  # the data decide how many steps run
    assert [model.graph.node[i].name for i in data_dependent_loops(model.graph)] == ["decode"]
    cut = in_front_of_loops(model)
    loop = next(n for n in model.graph.node if n.op_type == "Loop")
    assert "Loop" not in {n.op_type for n in cut.graph.node}
    assert [o.name for o in cut.graph.output] == [loop.input[2]]  # the encoder's output the loop starts from, nothing else computed
    feed = sample_inputs(model, 1)[0]
    encoded = run_model(with_outputs(model, [loop.input[2]]), feed)[-1]
    np.testing.assert_array_equal(run_model(cut, feed)[0], encoded)
    assert in_front_of_loops(looped_mlp()) is None  # a fixed step count is timed whole


def test_pruning_times_channel_multiples_in_front_of_a_loop_that_stops_on_its_own(monkeypatch):
    """An unrecovered candidate's decoder may run any number of steps: the widths are timed on the encoder alone."""
    from onnxslim import PruneConfig, prune
    from onnxslim.prune import structured

    timed = []

    def interleaved(runners, feed, **kwargs):
        timed.extend(runners)
        return [[1.0]] + [[0.8] for _ in runners[1:]]

    monkeypatch.setattr(structured, "interleaved_latency", interleaved)
    model = stopping_decoder(hidden=48)
    pruned, report = prune(model, sample_inputs(model, 10, seed=3), config=PruneConfig(ratio=0.4, latency_runs=3))
    assert timed and report.widths.measured and "in front of the loop" in str(report.widths)
    opened = [onnx.load_from_string(r.source) if isinstance(r.source, bytes) else onnx.load(r.source) for r in timed]
    assert not any("Loop" in {n.op_type for n in m.graph.node} for m in opened)
    assert any(g.channels_after < g.channels_before for g in report.groups)
    for feed in sample_inputs(model, 3, seed=5):
        assert run_model(pruned, feed)[0].shape[1:] == (1, 16)


def test_a_pruned_decoder_may_stop_at_another_step_where_its_loop_reads_the_same_shapes():
    """The smoke test of a pruned model: an unrecovered decoder may decode for longer, which is not a stale size."""
    from onnxslim.runtime.probe import check_runs

    model = stopping_decoder()
    loop = next(n for n in model.graph.node if n.op_type == "Loop")
    encoder_bias = next(n for n in model.graph.node if loop.input[2] in n.output).input[1]
    changed = onnx.ModelProto()
    changed.CopyFrom(model)
    bias = next(t for t in changed.graph.initializer if t.name == encoder_bias)
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) - 2.0, bias.name))  # the decoder keeps going longer
    feeds = sample_inputs(model, 8, seed=3)
    lengths = [(run_model(model, f)[0].shape[0], run_model(changed, f)[0].shape[0]) for f in feeds]
    feed = next(f for f, (a, b) in zip(feeds, lengths) if a != b)
    assert check_runs(model, changed, feed) is None
    assert check_runs(model, changed, feeds[0]) is None
    # a stale size in front of the loop is still caught while the decoded lengths differ: the hidden layer exposed
    # as an output, doubled in the 'pruned' model
    hidden = next(n for n in model.graph.node if n.op_type == "Relu").output[0]
    exposed, stale = with_outputs(model, [hidden]), with_outputs(changed, [hidden])
    relu = next(n for n in stale.graph.node if n.op_type == "Relu")
    relu.output[0] = "raw_hidden"
    for node in stale.graph.node:
        node.input[:] = ["raw_hidden" if name == hidden else name for name in node.input]
    stale.graph.node.append(helper.make_node("Concat", ["raw_hidden", "raw_hidden"], [hidden], axis=1))
    assert check_runs(exposed, stale, feed) == f"output '{hidden}' has shape [1, 96] instead of [1, 48]"


EVERY_LAYER = QuantConfig(latency_runs=0, accuracy_budget=None, output_layers="int8")


def _weights_handed_to_a_loop(width: int = 64, steps: int = 3, *, in_body: bool = False) -> onnx.ModelProto:
    """A recurrent layer as tf2onnx writes Keras's: the first step's MatMul in the main graph, the others in a Loop. The
    weight goes into the Loop as one of its carried values (tf2onnx) or, with ``in_body``, is read by the body directly."""
    rng = np.random.default_rng(5)
    weight = numpy_helper.from_array((rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), "recurrent")
    carried = [] if in_body else ["w_in"]
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Gemm" if in_body else "MatMul", ["h_in", "recurrent" if in_body else "w_in"], ["product"]),
         helper.make_node("Tanh", ["product"], ["h_out"])] + ([] if in_body else [helper.make_node("Identity", ["w_in"], ["w_out"])]),
        "step",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_in", TensorProto.FLOAT, [1, width])] + [helper.make_tensor_value_info(n, TensorProto.FLOAT, [width, width]) for n in carried],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("h_out", TensorProto.FLOAT, [1, width])]
        + ([] if in_body else [helper.make_tensor_value_info("w_out", TensorProto.FLOAT, [width, width])]),
    )
    nodes = [helper.make_node("MatMul", ["input", "recurrent"], ["first"], name="first_step"),
             helper.make_node("Relu", ["first"], ["h0"], name="relu"),
             helper.make_node("Loop", ["trips", "", "h0"] + ([] if in_body else ["recurrent"]), ["h"] + ([] if in_body else ["w_last"]), name="steps", body=body)]
    trips = numpy_helper.from_array(np.array(steps, np.int64), "trips")
    graph = helper.make_graph(nodes, "handed", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, width])],
                              [helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, width])], [weight, trips])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_weight_handed_to_a_loop_is_stored_once_as_int8_codes_the_loop_reads_restored():
    """The first step's MatMul runs in INT8; the Loop still needs the weight in float. Keeping the float weight beside its codes
    made a Keras BiLSTM's INT8 model larger than its original (21.3 -> 26.2 MB); the Loop now reads it restored from the
    same codes (a Cast and a Mul onnxruntime folds at load), and the file holds one copy."""
    model = _weights_handed_to_a_loop()
    batches = sample_inputs(model, 12, seed=3)
    quantized, report = quantize(model, batches, config=EVERY_LAYER)
    assert [d.node for d in report.decisions if d.quantized and d.op_type == "MatMul"] == ["first_step"]
    floats = [t.name for t in quantized.graph.initializer if t.data_type == TensorProto.FLOAT and t.name == "recurrent"]
    assert floats == [] and report.sizes.quantized_bytes < report.sizes.fp32_bytes / 2
    assert not any("larger than the original" in w for w in report.warnings)
    loop = next(n for n in quantized.graph.node if n.op_type == "Loop")
    restore = next(n for n in quantized.graph.node if loop.input[3] in n.output)
    assert restore.op_type == "Mul"  # codes cast to float, times the scales
    for feed in batches[:3]:
        a, b = run_model(model, feed)[0], run_model(quantized, feed)[0]
        assert np.dot(a.ravel(), b.ravel()) / np.linalg.norm(a) / np.linalg.norm(b) > 0.99


def test_a_weight_a_float_layer_in_a_loop_body_reads_keeps_its_float_copy_and_a_larger_int8_model_says_so():
    """The body's Gemm (excluded, so float) reads the weight from the main graph: it keeps the float weight, the main
    graph's MatMul adds its codes, and the INT8 model is larger than the original: written, with a warning that says so."""
    model = _weights_handed_to_a_loop(in_body=True)
    config = QuantConfig(latency_runs=0, accuracy_budget=None, output_layers="int8", exclude_op_types=("Gemm",))
    quantized, report = quantize(model, sample_inputs(model, 12, seed=3), config=config)
    assert "recurrent" in outer_references(next(n for n in quantized.graph.node if n.op_type == "Loop").attribute[0].g)
    assert report.sizes.quantized_bytes > report.sizes.fp32_bytes
    assert any("INT8 model is larger than the original" in w and "subgraph body" in w for w in report.warnings), report.warnings


def test_optimize_counts_the_nodes_inside_bodies_as_inspect_does():
    """A Keras LSTM unrolled into a Loop (nakdimon) read 'nodes 176 -> 176' in optimize and 'nodes: 332' in inspect."""
    from onnxslim import inspect, optimize

    model = looped_mlp()
    inside = sum(len(sub.node) for node in model.graph.node for sub in (a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH))
    assert inside > 0
    _, report = optimize(model)
    assert report.nodes_before == inspect(model).nodes == len(model.graph.node) + inside
