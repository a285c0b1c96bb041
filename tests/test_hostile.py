"""Broken, hostile and unusual input: one clear line, a non-zero exit, nothing damaged on disk."""

import hashlib

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from models.builders import GraphBuilder, conv_bn_relu, sample_inputs
from onnxslim import PruneConfig, QuantConfig, prune, quantize
from onnxslim.cli import main
from onnxslim.errors import DataError, NothingToDoError
from onnxslim.ir.tensors import outer_references
from tests.conftest import run_model


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, *needles, exit_code=1):
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    for needle in needles:
        assert needle in result.output


@pytest.fixture
def setup(tmp_path, save, npz_folder):
    model = conv_bn_relu()
    path = save(model)
    data = npz_folder(sample_inputs(model, 5))
    return model, path, data, tmp_path


def corrupted_files(tmp_path, path):
    raw = path.read_bytes()
    files = {
        "truncated.onnx": raw[: len(raw) // 3],
        "magic.onnx": b"\x89PNG\r\n\x1a\n" + raw[8:],
        "noise.onnx": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "empty.onnx": b"",
    }
    flipped = bytearray(raw)
    for index in range(16, len(flipped), 97):
        flipped[index] ^= 0xFF
    files["flipped.onnx"] = bytes(flipped)
    written = []
    for name, content in files.items():
        target = tmp_path / name
        target.write_bytes(content)
        written.append(target)
    return written


def test_corrupted_models_fail_cleanly_in_every_command(setup):
    _, path, data, tmp_path = setup
    for bad in corrupted_files(tmp_path, path):
        before = digest(bad)
        out = tmp_path / "out.onnx"
        for args in (
            ("inspect", bad),
            ("optimize", bad, "-o", out),
            ("quantize", bad, "-o", out, "--data", data, "-q"),
            ("prune", bad, "-o", out, "-q"),
            ("validate", path, bad, "--data", data, "-q"),
        ):
            result = invoke(*args)
            if result.exit_code == 0:
                # a few flipped bytes can leave a valid model; then the output must be a valid model too
                assert bad.name == "flipped.onnx"
                continue
            assert_one_line_error(result, bad.name)
            assert not out.exists()
        assert digest(bad) == before


def test_folder_output_equal_to_input_and_missing_folder(setup):
    _, path, data, tmp_path = setup
    before = digest(path)
    assert_one_line_error(invoke("quantize", tmp_path, "-o", tmp_path / "o.onnx", "--data", data, "-q"), "is a folder")
    # destinations are checked before any work: usage errors
    assert_one_line_error(invoke("quantize", path, "-o", path, "--data", data, "--latency-runs", "0", "-q"), "is the input model", exit_code=2)
    assert_one_line_error(invoke("prune", path, "-o", path, "-q"), "is the input model", exit_code=2)
    assert_one_line_error(invoke("optimize", path, "-o", tmp_path / "missing" / "o.onnx"), "does not exist", exit_code=2)
    assert digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model.onnx", "data"])


def test_unwritable_output_folder_leaves_nothing(setup, monkeypatch):
    from onnxslim.ir import io

    _, path, data, tmp_path = setup

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(io.tempfile, "mkdtemp", refuse)
    result = invoke("quantize", path, "-o", tmp_path / "o.onnx", "--data", data, "--latency-runs", "0", "-q")
    assert_one_line_error(result, "Permission denied")
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nonfinite_calibration_data(npz_folder, setup, value):
    model, path, _, tmp_path = setup
    batches = sample_inputs(model, 3)
    batches[1]["input"][0, 0, 0, 0] = value
    folder = npz_folder(batches, name=f"bad{abs(hash(str(value)))}")
    for args in (("quantize", path, "-o", tmp_path / "q.onnx", "--data", folder, "-q"), ("prune", path, "-o", tmp_path / "p.onnx", "--data", folder, "-q")):
        assert_one_line_error(invoke(*args), "batch_001.npz", "input 'input'")


def test_empty_data_folders(setup):
    _, path, _, tmp_path = setup
    empty = tmp_path / "empty"
    empty.mkdir()
    for command in ("quantize", "prune"):
        assert_one_line_error(invoke(command, path, "-o", tmp_path / "o.onnx", "--data", empty, "-q"), "no .npz files")


def test_zero_sized_input_dimension(tmp_path, save):
    b = GraphBuilder(3)
    y = b.node("Relu", [b.conv("input", 3, 4)])
    model = b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, [0, 3, 8, 8])], [helper.make_tensor_value_info(y, TensorProto.FLOAT, [0, 4, 8, 8])], "zero")
    path = save(model)
    result = invoke("quantize", path, "-o", tmp_path / "q.onnx", "--data", "random", "-q")
    assert_one_line_error(result, "input 'input' is empty")
    with pytest.raises(DataError, match="is empty"):
        quantize(model, "random")


def branch_model():
    """A conv whose output an If branch reads from the outer scope, next to a conv inside a Loop body."""
    b = GraphBuilder(4)
    features = b.node("Relu", [b.conv("input", 3, 8)])
    inner_w = onnx.numpy_helper.from_array(b.weight(8, 8, 1, 1), "inner_w")
    then_graph = helper.make_graph(
        [helper.make_node("Conv", [features, "inner_w"], ["then_out"], kernel_shape=[1, 1])], "then", [], [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, [1, 8, 8, 8])], [inner_w]
    )
    else_graph = helper.make_graph([helper.make_node("Neg", [features], ["else_out"])], "else", [], [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, [1, 8, 8, 8])])
    flag = b.const(np.array(True), "flag")
    branched = b.node("If", [flag], then_branch=then_graph, else_branch=else_graph)
    y = b.conv(b.node("Relu", [branched]), 8, 4)
    return b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])], [helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, 4, 8, 8])], "branch")


def test_subgraph_outer_references_survive_quantize_and_prune():
    model = branch_model()
    data = sample_inputs(model, 6)
    quantized, report = quantize(model, data, config=QuantConfig(latency_runs=0))
    onnx.checker.check_model(quantized)
    if_node = next(n for n in quantized.graph.node if n.op_type == "If")
    produced = {o for n in quantized.graph.node for o in n.output} | {t.name for t in quantized.graph.initializer}
    then_graph = [n for n in if_node.attribute if n.name == "then_branch"][0].g
    assert outer_references(then_graph) and outer_references(then_graph) <= produced  # every outer reference still resolves
    assert "DequantizeLinear" in {n.op_type for n in then_graph.node}  # the branch's conv is quantized in place
    for feed in sample_inputs(model, 2, seed=5):
        a, b = run_model(model, feed)[0], run_model(quantized, feed)[0]
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99
    # the conv feeding the branch is read inside it, the last conv feeds the output: nothing may be cut
    with pytest.raises(NothingToDoError, match="read inside a subgraph of If"):
        prune(model, config=PruneConfig(ratio=0.5, latency_runs=0))


def test_model_local_functions_are_kept(tmp_path):
    b = GraphBuilder(5)
    x = b.conv("input", 3, 8)
    b.nodes.append(helper.make_node("Swish", [x], ["swished"], domain="custom.local", name="swish_call"))
    y = b.conv(b.node("Relu", [b.conv("swished", 8, 8)]), 8, 4)
    function = helper.make_function(
        "custom.local", "Swish", ["X"], ["Y"], [helper.make_node("Sigmoid", ["X"], ["S"]), helper.make_node("Mul", ["X", "S"], ["Y"])], [helper.make_opsetid("", 17)]
    )
    graph = helper.make_graph(
        b.nodes, "fn", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])], [helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, 4, 8, 8])], b.initializers
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom.local", 1)], functions=[function])
    model.ir_version = 8
    data = sample_inputs(model, 6)
    quantized, _ = quantize(model, data, config=QuantConfig(latency_runs=0, output_layers="int8"))
    assert [f.name for f in quantized.functions] == ["Swish"]
    pruned, report = prune(model, config=PruneConfig(ratio=0.5, latency_runs=0))
    assert any("custom op" in (g.skipped or "") for g in report.groups)
    assert any(g.channels_after < g.channels_before for g in report.groups)
    assert [f.name for f in pruned.functions] == ["Swish"]
    feed = data[0]
    assert run_model(quantized, feed)[0].shape == run_model(pruned, feed)[0].shape == (1, 4, 8, 8)


def test_calibration_names_the_tensor_where_the_float_model_gives_nan(save, npz_folder):
    rng = np.random.default_rng(0)
    weights = [helper.make_tensor(name, TensorProto.FLOAT, shape, rng.normal(size=shape).ravel().tolist()) for name, shape in (("w1", [4, 4]), ("w2", [4, 3]))]
    nodes = [helper.make_node("Sqrt", ["x"], ["root"], name="sqrt"), helper.make_node("MatMul", ["root", "w1"], ["h"], name="hidden"),
             helper.make_node("MatMul", ["h", "w2"], ["y"], name="head")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], weights,
    )
    model = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    rng = np.random.default_rng(1)
    batches = [{"x": np.abs(rng.normal(size=(2, 4))).astype(np.float32)} for _ in range(8)]
    batches[2]["x"][1, 3] = -1.0
    result = invoke("quantize", model, "-o", model.parent / "out.onnx", "--data", npz_folder(batches), "--accuracy-budget", "none")
    assert_one_line_error(result, "produces NaN/Inf in 'root'", "batch_002")
    assert not (model.parent / "out.onnx").exists()


def test_random_data_a_model_refuses_names_the_batch_and_its_integer_inputs(save):
    """Random indices are often out of the model's range: the error says which batch, and that its integer inputs were
    drawn at random, so the user knows to pass real data."""
    rng = np.random.default_rng(0)
    weights = [helper.make_tensor("table", TensorProto.FLOAT, [1, 8], rng.normal(size=8).tolist()),
               helper.make_tensor("w", TensorProto.FLOAT, [8, 4], rng.normal(size=32).tolist())]
    nodes = [helper.make_node("Gather", ["table", "row"], ["picked"], name="pick_row"), helper.make_node("Add", ["picked", "x"], ["h"], name="add"),
             helper.make_node("MatMul", ["h", "w"], ["y"], name="project")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8]), helper.make_tensor_value_info("row", TensorProto.INT64, [6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [6, 4])], weights)
    model = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    result = invoke("quantize", model, "-o", model.parent / "out.onnx", "--data", "random")
    assert_one_line_error(result, "random batch 0 (0 or 1 at random in integer input(s) 'row')", "pick_row")
    assert not (model.parent / "out.onnx").exists()


def test_random_data_for_a_string_input_is_refused_in_one_line_naming_it(save):
    """scikit-learn's encoders take strings: no random batch stands for them, so the error names the input and asks for data."""
    nodes = [helper.make_node("LabelEncoder", ["category"], ["code"], domain="ai.onnx.ml", keys_strings=["a", "b"], values_floats=[0.0, 1.0], default_float=-1.0),
             helper.make_node("Add", ["code", "x"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("category", TensorProto.STRING, [1, 4]), helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 2)]))
    result = invoke("quantize", model, "-o", model.parent / "out.onnx", "--data", "random")
    assert_one_line_error(result, "input 'category' holds strings", "--data", exit_code=2)
    assert not (model.parent / "out.onnx").exists()


def _takes_views_in_fours() -> onnx.ModelProto:
    """A classifier that averages its scores over four views of each sample (mne-icalabel's ICLabel): a batch that is not
    a multiple of four cannot run."""
    b = GraphBuilder(37)
    hidden = b.node("Relu", [b.node("MatMul", ["x", b.const(b.weight(16, 8).T.copy())])])
    scores = b.node("MatMul", [hidden, b.const(b.weight(3, 16).T.copy())])
    views = b.node("Reshape", [scores, b.const(np.array([4, -1, 3], np.int64), "views")])
    out = b.node("ReduceMean", [views], axes=[0], keepdims=0)
    graph = helper.make_graph(b.nodes, "views", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, [None, 3])], b.initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_random_test_batch_the_model_refuses_stops_prune_in_one_line_with_onnxruntimes_reason(save):
    """Without data, prune times and test-runs on a random batch of the given sizes: one the model cannot run is named
    with the sizes and onnxruntime's own sentence about the shapes, its source file and C++ signature left out."""
    model = save(_takes_views_in_fours())
    result = invoke("prune", model, "-o", model.parent / "out.onnx", "--input-shapes", "x:1,8")
    assert_one_line_error(result, "the random test batch (x 1x8) does not run", "cannot be reshaped to the requested shape", "--input-shapes")
    assert "onnxruntime_src" not in result.output and "ReshapeHelper(" not in result.output
    assert not (model.parent / "out.onnx").exists()
    assert invoke("prune", model, "-o", model.parent / "out.onnx", "--input-shapes", "x:4,8").exit_code == 0
    result = invoke("share", model, "-o", model.parent / "shared.onnx", "--input-shapes", "x:1,8", "--min-elements", "16")
    assert_one_line_error(result, "the random test batch (x 1x8) does not run", "the original:")  # not "shared model": the original fails
    assert "codebooks" not in result.output  # said before any work on the weights
    assert not (model.parent / "shared.onnx").exists()


def scikit_classifier(features: int = 8, classes: int = 4) -> onnx.ModelProto:
    """A classifier as scikit-learn's exporter writes it: a label (int64) and the probabilities as a ZipMap, a sequence of
    {label: probability} maps, which onnxruntime hands back as a list of dicts."""
    b = GraphBuilder(31)
    hidden = b.node("Relu", [b.node("MatMul", ["X", b.const(b.weight(16, features).T.copy())])])
    probabilities = b.node("Softmax", [b.node("MatMul", [hidden, b.const(b.weight(classes, 16).T.copy())])], axis=-1)
    b.nodes.append(helper.make_node("ArgMax", [probabilities], ["label"], axis=1, keepdims=0, name="argmax"))
    b.nodes.append(helper.make_node("ZipMap", [probabilities], ["output_probability"], classlabels_int64s=list(range(classes)), domain="ai.onnx.ml", name="zipmap"))
    maps = helper.make_sequence_type_proto(helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, [])))
    graph = helper.make_graph(b.nodes, "scikit", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, features])],
                              [helper.make_tensor_value_info("label", TensorProto.INT64, [None]), helper.make_value_info("output_probability", maps)], b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 1)])
    model.ir_version = 8
    return model


def test_sequence_of_maps_outputs_are_compared_as_class_probabilities(tmp_path):
    model = scikit_classifier()
    rng = np.random.default_rng(2)
    batches = [{"X": (4 * rng.standard_normal((1, 8))).astype(np.float32)} for _ in range(40)]
    _, report = quantize(model, batches, config=QuantConfig(latency_runs=0, output_layers="int8", accuracy_budget=None), output=tmp_path / "q.onnx")
    by_name = {c.name: c for c in report.fidelity}
    assert by_name["output_probability"].task_metric[0] == "top-1" and by_name["output_probability"].cosine > 0.99
    assert by_name["label"].task_metric[0] == "exact"
    assert by_name["label"].task_metric[1] == by_name["output_probability"].task_metric[1]  # the same decisions, counted twice
    _, pruned = prune(model, batches, config=PruneConfig(ratio=0.5, latency_runs=0, if_slower="write"), output=tmp_path / "p.onnx")
    assert {c.name for c in pruned.fidelity} == {"label", "output_probability"}
