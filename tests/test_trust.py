"""No command destroys a file: destinations are checked before any work, with exit 2 and one line."""

import hashlib
import json
import os

import onnx
import pytest
from click.testing import CliRunner

from models.builders import conv_bn_relu
from onnxslim.cli import main


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_refused(result, needle):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], result.output


@pytest.fixture
def models(tmp_path):
    """A model with its weights inline and one with its weights in an external data file."""
    inline = tmp_path / "m.onnx"
    onnx.save(conv_bn_relu(), str(inline))
    external = tmp_path / "e.onnx"
    onnx.save(conv_bn_relu(), str(external), save_as_external_data=True, all_tensors_to_one_file=True, location="e.data", size_threshold=0)
    return inline, external, tmp_path / "e.data"


def test_report_path_equal_to_an_input_or_the_output_is_refused_before_work(models, tmp_path):
    inline, external, data = models
    hashes = {p: digest(p) for p in (inline, external, data)}
    out = tmp_path / "o.onnx"
    assert_refused(invoke("optimize", inline, "-o", out, "--report", inline), "is the input model")
    assert_refused(invoke("validate", inline, external, "--report", external, "--runs", "0", "-q"), "is the input model")
    assert_refused(invoke("optimize", inline, "-o", out, "--report", out), "is the output too")
    assert_refused(invoke("optimize", external, "-o", out, "--report", data), "external data of the input model")
    assert_refused(invoke("inspect", external, "--report", data), "external data of the input model")
    assert not out.exists()
    assert {p: digest(p) for p in hashes} == hashes


def test_output_equal_to_the_inputs_external_data_is_refused(models, tmp_path):
    _, external, data = models
    before = digest(data)
    assert_refused(invoke("optimize", external, "-o", data), "external data of the input model")
    # an output whose own data file would land on the input's weights
    (tmp_path / "w.onnx.data").write_bytes(data.read_bytes())
    model = onnx.load(str(external), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "w.onnx.data"
    onnx.save(model, str(tmp_path / "f.onnx"))
    assert_refused(invoke("optimize", tmp_path / "f.onnx", "-o", tmp_path / "w.onnx"), "would write its weights to")
    assert digest(data) == before


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_special_files_and_symlinks_are_never_replaced(models, tmp_path):
    inline, _, _ = models
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert_refused(invoke("optimize", inline, "-o", fifo), "not a regular file")
    assert_refused(invoke("optimize", inline, "-o", tmp_path / "o.onnx", "--report", fifo), "not a regular file")
    assert fifo.is_fifo()
    target = tmp_path / "target.onnx"
    target.write_bytes(b"keep")
    link = tmp_path / "link.onnx"
    link.symlink_to(target)
    assert_refused(invoke("optimize", inline, "-o", link), "symbolic link")
    assert link.is_symlink() and target.read_bytes() == b"keep"
    assert not (tmp_path / "o.onnx").exists()


def test_destination_folders_that_are_files_are_named_as_such(models, tmp_path):
    inline, _, _ = models
    assert_refused(invoke("optimize", inline, "-o", inline / "x.onnx"), "is a file, not a folder")
    assert_refused(invoke("optimize", inline, "-o", tmp_path / "o.onnx", "--report", inline / "r.json"), "is a file, not a folder")
    assert_refused(invoke("optimize", inline, "-o", tmp_path / "missing" / "o.onnx"), "does not exist")


TERMINATE_DURING_WRITE = """
import os, signal, sys
import onnxslim.runtime.write as write
def check_then_terminate(path):
    os.kill(os.getpid(), signal.SIGTERM)
write.check_loads = check_then_terminate
from onnxslim.cli import main
main(sys.argv[1:])
"""


def test_sigterm_mid_write_cleans_up_like_ctrl_c(models, tmp_path):
    import subprocess
    import sys

    inline, _, _ = models
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = subprocess.run([sys.executable, "-c", TERMINATE_DURING_WRITE, "optimize", str(inline), "-o", str(out_dir / "o.onnx")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 143, result.stderr[-2000:]
    assert "terminated" in result.stderr and "Traceback" not in result.stderr
    assert list(out_dir.iterdir()) == []


def test_staging_left_by_a_killed_run_is_removed_by_the_next_one(models, tmp_path):
    inline, _, _ = models
    dead = tmp_path / ".onnxslim-4194999-abcd"  # above Linux's largest pid: no such process
    dead.mkdir()
    (dead / "o.onnx").write_bytes(b"half written")
    result = invoke("optimize", inline, "-o", tmp_path / "o.onnx")
    assert result.exit_code == 0, result.output
    assert not dead.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".onnxslim-")]


def unary_model(op: str, path) -> None:
    import onnx.parser

    model = onnx.parser.parse_model(
        f"""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[1, 8] x) => (float[1, 8] y) {{
            y = {op} (x)
        }}
        """
    )
    onnx.save(model, str(path))


@pytest.fixture
def nan_pair(tmp_path, npz_folder):
    import numpy as np

    unary_model("Abs", tmp_path / "finite.onnx")
    unary_model("Sqrt", tmp_path / "nan.onnx")  # NaN for negative inputs
    data = npz_folder([{"x": np.linspace(-1, 1, 8, dtype=np.float32).reshape(1, 8)}])
    return tmp_path / "finite.onnx", tmp_path / "nan.onnx", data


@pytest.mark.parametrize("nan_side", ["candidate", "reference"])
def test_nan_on_either_side_fails_every_accuracy_gate(nan_pair, tmp_path, nan_side):
    import json

    finite, nan, data = nan_pair
    reference, candidate = (finite, nan) if nan_side == "candidate" else (nan, finite)
    report = tmp_path / "r.json"
    args = ("validate", reference, candidate, "--data", data, "--runs", "0", "-q", "--report", report)
    result = invoke(*args, "--min-cosine", "0.5", "--min-snr", "-100", "--max-abs-error", "1000")
    assert result.exit_code == 3, result.output
    content = json.loads(report.read_text())
    output = content["providers"][0]["outputs"][0]
    assert output[f"nonfinite_{nan_side}_values"] == 4 and output["cosine"] == "nan"
    assert {g["gate"] for g in content["gates"] if not g["passed"]} == {"min_cosine", "min_snr_db", "max_abs_error"}
    assert sum("NaN/Inf in one model and not the other" in line for line in result.output.splitlines()) == 1


def test_a_gate_that_cannot_be_checked_is_a_usage_error(nan_pair):
    finite, _, data = nan_pair
    assert_refused(invoke("validate", finite, finite, "--data", data, "--runs", "0", "--max-latency-ratio", "0.01", "-q"), "--runs is 0")
    # a (1, 8) output is a class-score vector; a detector-like (1, 4, 2) map of anchors is not
    assert invoke("validate", finite, finite, "--data", data, "--runs", "0", "--min-top1", "0.9", "-q").exit_code == 0


def test_min_top1_on_a_map_that_is_not_class_scores_is_refused(tmp_path, npz_folder):
    import numpy as np
    import onnx.parser

    model = onnx.parser.parse_model(
        """
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[1, 4, 6] x) => (float[1, 4, 6] y) {
            y = Relu (x)
        }
        """
    )
    onnx.save(model, str(tmp_path / "m.onnx"))
    data = npz_folder([{"x": np.random.default_rng(0).normal(size=(1, 4, 6)).astype(np.float32)}])
    assert_refused(invoke("validate", tmp_path / "m.onnx", tmp_path / "m.onnx", "--data", data, "--runs", "0", "--min-top1", "0.9", "-q"), "--min-top1 cannot be checked")


def test_a_budget_that_leaves_nothing_quantized_exits_1_with_the_real_reason(save, npz_folder, tmp_path):
    import numpy as np

    model = conv_bn_relu()
    path = save(model)
    rng = np.random.default_rng(0)
    data = npz_folder([{"input": rng.normal(size=(1, 3, 32, 32)).astype(np.float32)} for _ in range(6)])
    out = tmp_path / "q.onnx"
    report = tmp_path / "report.json"
    result = invoke("quantize", path, "-o", out, "--data", data, "--accuracy-budget", "1", "--latency-runs", "0", "-q", "--report", report)
    assert result.exit_code == 1, result.output
    assert "leaves nothing quantized" in result.output and "--exclude-nodes" not in result.output
    assert not out.exists()
    # what the search measured is kept: every layer it ranked, each kept in float, and nothing claimed as written
    written = json.loads(report.read_text())
    assert written["kept_float_for_budget"] and len(written["kept_float_for_budget"]) == len(written["sensitivity"])
    assert written["written"] == "nothing" and written["output"] is None


def test_quantize_names_a_held_out_batch_that_decides_the_cosine_alone(save, npz_folder, tmp_path):
    """One held-out input far outside the others (a crop no face detector was made for) holds most of an output's energy:
    the fidelity check is that input's, and the warning says which it is."""
    import numpy as np

    path = save(conv_bn_relu())
    rng = np.random.default_rng(2)
    calibration = npz_folder([{"input": rng.normal(size=(1, 3, 32, 32)).astype(np.float32)} for _ in range(8)], name="calib")
    held_out = [{"input": rng.normal(size=(1, 3, 32, 32)).astype(np.float32)} for _ in range(7)] + [{"input": np.full((1, 3, 32, 32), 60.0, np.float32)}]
    report = tmp_path / "report.json"
    result = invoke("quantize", path, "-o", tmp_path / "q.onnx", "--data", calibration, "--eval-data", npz_folder(held_out, name="held_out"),
                    "--accuracy-budget", "none", "--latency-runs", "0", "-q", "--report", report)
    assert result.exit_code == 0, result.output
    assert any("batch_007.npz holds" in w and "mostly that one batch's" in w for w in json.loads(report.read_text())["warnings"]), result.output


def test_constant_calibration_data_is_refused_unless_evaluation_data_is_given(save, npz_folder, tmp_path):
    import numpy as np

    path = save(conv_bn_relu())
    zeros = npz_folder([{"input": np.zeros((1, 3, 32, 32), np.float32)} for _ in range(6)], name="zeros")
    result = invoke("quantize", path, "-o", tmp_path / "q.onnx", "--data", zeros, "--latency-runs", "0", "-q")
    assert result.exit_code == 1 and "barely vary" in result.output, result.output
    rng = np.random.default_rng(1)
    real = npz_folder([{"input": rng.normal(size=(1, 3, 32, 32)).astype(np.float32)} for _ in range(3)], name="real")
    result = invoke("quantize", path, "-o", tmp_path / "q.onnx", "--data", zeros, "--eval-data", real, "--latency-runs", "0", "-q")
    # ranges calibrated on zeros cannot keep real inputs near FP32: the default budget refuses, naming it
    assert result.exit_code == 1 and "accuracy budget 0.99 leaves nothing quantized" in result.output, result.output
    result = invoke("quantize", path, "-o", tmp_path / "q.onnx", "--data", zeros, "--eval-data", real, "--accuracy-budget", "none", "--latency-runs", "0", "-q")
    assert result.exit_code == 0, result.output


def test_inputs_that_barely_vary_are_found_over_every_held_out_batch_together():
    """The spread is taken over all held-out batches at once (a batch at a time, in float64): a constant far from zero
    with float32 rounding noise is constant, batches each constant but different are not, NaN or Inf never are."""
    import numpy as np

    from onnxslim.quant.pipeline import _constant_inputs

    def batches(*arrays, name="x"):
        return [(f"batch_{i}", {name: np.asarray(a, np.float32), "ids": np.arange(3)}) for i, a in enumerate(arrays)]

    rng = np.random.default_rng(0)
    assert _constant_inputs(batches(np.zeros((2, 5)), np.zeros((2, 5)))) == ["x"]
    near = 1000.0 + rng.normal(size=(4, 2, 5)) * 1e-5  # std 1e-5 against a bound of 1e-3 at this mean
    assert _constant_inputs(batches(*near)) == ["x"]
    assert _constant_inputs(batches(np.full((2, 5), 3.0), np.full((2, 5), 3.5))) == []
    assert _constant_inputs(batches(np.zeros(10), np.eye(1, 10)[0] * 1e-2)) == []  # one value moves: std 2e-3 > 1e-6
    assert _constant_inputs(batches(np.array([np.nan, 1.0]), np.array([np.inf, np.inf]))) == []
    assert _constant_inputs(batches(np.zeros(0))) == []  # no values: nothing to call constant


def test_a_fixed_float_setting_beside_varying_token_ids_is_warned_about_not_refused(save, npz_folder, tmp_path):
    """Token ids (int64) that vary carry the samples' differences; a float scalar input (a temperature) fixed over the
    held-out batches is said, not a reason to refuse."""
    import numpy as np
    from onnx import TensorProto, helper

    from models.builders import GraphBuilder, _rename_output

    b = GraphBuilder(41)
    embedded = b.node("Gather", [b.const(b.rng.standard_normal((50, 16)).astype(np.float32), "table"), "ids"])
    hidden = b.node("Relu", [b.node("MatMul", [embedded, b.const(b.weight(32, 16).T.copy())])])
    _rename_output(b, b.node("Mul", [b.node("MatMul", [hidden, b.const(b.weight(8, 32).T.copy())]), "temperature"]), "logits")
    inputs = [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 6]), helper.make_tensor_value_info("temperature", TensorProto.FLOAT, [])]
    path = save(b.model(inputs, [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 6, 8])], "ids_and_setting"))
    rng = np.random.default_rng(2)
    data = npz_folder([{"ids": rng.integers(0, 50, (1, 6)).astype(np.int64), "temperature": np.array(1.5, np.float32)} for _ in range(20)])
    result = invoke("quantize", path, "-o", tmp_path / "q.onnx", "--data", data, "--latency-runs", "0", "--accuracy-budget", "none")
    assert result.exit_code == 0 and "temperature barely vary" in result.output.replace("\n", " "), result.output


def test_an_output_of_one_value_is_not_called_constant_and_is_not_judged_by_its_cosine(save, npz_folder, tmp_path):
    """A score per input (a quality estimator's MOS) held out on one sample: one number, whose cosine is 1 whenever the signs
    agree; neither "nearly constant" nor a passed check."""
    import numpy as np
    from onnx import TensorProto, helper

    from onnxslim import validate

    model = conv_bn_relu(batch="N")
    logits = model.graph.output[0].name
    model.graph.node.append(helper.make_node("ReduceMean", [logits], ["score"], axes=[1], keepdims=0))  # one score per input
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"]))
    path = save(model)
    rng = np.random.default_rng(3)
    one = npz_folder([{"input": rng.normal(size=(1, 3, 32, 32)).astype(np.float32)} for _ in range(5)], name="one")
    result = invoke("quantize", path, "-o", tmp_path / "q.onnx", "--data", one, "--latency-runs", "0", "-q")
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "output 'score' gives one value" in text and "nearly constant" not in text and "--input-shapes" in text
    assert not (tmp_path / "q.onnx").exists()
    # several held-out samples in one batch: checked as any output
    eight = npz_folder([{"input": rng.normal(size=(8, 3, 32, 32)).astype(np.float32)} for _ in range(5)], name="eight")
    result = invoke("quantize", path, "-o", tmp_path / "q.onnx", "--data", eight, "--latency-runs", "0", "--accuracy-budget", "none", "-q")
    assert result.exit_code == 0, result.output
    single = npz_folder([{"input": rng.normal(size=(1, 3, 32, 32)).astype(np.float32)}], name="single")
    report = validate(path, path, single, runs=0)
    assert any("'score' gives one value" in w for w in report.warnings) and not any("nearly constant" in w for w in report.warnings)


def test_an_integer_side_output_of_one_value_is_said_not_refused(save, npz_folder, tmp_path):
    """A speech front-end's frame count beside its features: one integer per input, which quantization cannot blind the
    check of while the features vary; a float output of one value is still refused (above)."""
    import numpy as np
    from onnx import TensorProto, helper

    model = conv_bn_relu()
    model.graph.input.append(helper.make_tensor_value_info("lengths", TensorProto.INT64, [1]))
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([160], np.int64), "hop"))
    model.graph.node.append(helper.make_node("Div", ["lengths", "hop"], ["frames"]))
    model.graph.output.append(helper.make_tensor_value_info("frames", TensorProto.INT64, [1]))
    path = save(model)
    rng = np.random.default_rng(4)
    data = npz_folder([{"input": rng.normal(size=(1, 3, 32, 32)).astype(np.float32), "lengths": np.array([16000], np.int64)} for _ in range(5)])
    report_path = tmp_path / "r.json"
    result = invoke("quantize", path, "-o", tmp_path / "q.onnx", "--data", data, "--latency-runs", "0", "--report", report_path, "-q")
    assert result.exit_code == 0, result.output
    assert any("integer output 'frames' gives one value" in w for w in json.loads(report_path.read_text())["warnings"])
    assert (tmp_path / "q.onnx").exists()


def test_an_already_quantized_model_is_named_as_such(save, npz_folder, tmp_path):
    import numpy as np

    path = save(conv_bn_relu())
    rng = np.random.default_rng(2)
    data = npz_folder([{"input": rng.normal(size=(1, 3, 32, 32)).astype(np.float32)} for _ in range(6)])
    first = tmp_path / "q.onnx"
    assert invoke("quantize", path, "-o", first, "--data", data, "--latency-runs", "0", "--if-slower", "keep-int8", "-q").exit_code == 0
    for command in ("quantize", "prune", "compress"):  # refused before any work, not after every candidate failed
        out = tmp_path / f"{command}.onnx"
        result = invoke(command, first, "-o", out, "--data", data, "--latency-runs", "3", "-q")
        assert result.exit_code == 1, result.output
        assert "already quantized (DequantizeLinear" in result.output and f"{command} its float original" in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and not out.exists()


def test_integer_operators_inside_branches_count_as_quantized():
    from onnx import TensorProto, helper

    from onnxslim.ir.quantized import quantized_ops

    def branch(op: str) -> onnx.GraphProto:
        inputs = ["a_q", "b_q"] if op == "MatMulInteger" else []
        node = helper.make_node(op, inputs, [f"{op}_out"], name=op)
        out = helper.make_tensor_value_info(f"{op}_out", TensorProto.INT32 if op == "MatMulInteger" else TensorProto.FLOAT, None)
        return helper.make_graph([node], op, [], [out])

    branches = helper.make_node("If", ["cond"], ["y"], name="if", then_branch=branch("MatMulInteger"), else_branch=branch("Constant"))
    graph = helper.make_graph(
        [helper.make_node("QLinearAdd", ["x"] * 8, ["z"], name="add", domain="com.microsoft"), branches], "g",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])], [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
    )
    assert quantized_ops(helper.make_model(graph)) == {"MatMulInteger": 1, "QLinearAdd": 1}


@pytest.mark.parametrize("name", ["same", ""])
def test_every_command_works_when_node_names_repeat_or_are_empty(tmp_path, name):
    from models.builders import residual

    model = residual()
    for node in model.graph.node:
        node.name = name
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    before = digest(path)
    for args in (
        ("optimize", path, "-o", tmp_path / "o.onnx"),
        ("prune", path, "-o", tmp_path / "p.onnx", "--latency-runs", "0", "-q"),
        ("quantize", path, "-o", tmp_path / "q.onnx", "--data", "random", "--latency-runs", "0", "-q"),
        ("validate", path, tmp_path / "p.onnx", "--data", "random", "--runs", "0", "-q"),
    ):
        result = invoke(*args)
        assert result.exit_code == 0, (args[0], result.output)
    assert digest(path) == before  # names are made unique in the working copy only


def test_image_size_must_be_positive(save, tmp_path):
    path = save(conv_bn_relu())
    result = invoke("quantize", path, "-o", tmp_path / "q.onnx", "--data", tmp_path, "--image-size", "0x0")
    assert result.exit_code == 2 and "at least 1" in result.output and "Traceback" not in result.output


LOADERS = {
    "missing": None,
    "syntax": "def batches(:\n",
    "raises_on_import": "raise RuntimeError('no GPU here')\n",
    "raises_mid_stream": (
        "import numpy as np\n"
        "def batches():\n"
        "    for i in range(6):\n"
        "        if i == 3:\n"
        "            raise ValueError('corrupt record 3')\n"
        "        yield {'input': np.ones((1, 3, 32, 32), np.float32) * i}\n"
    ),
    "needs_arguments": "def batches(folder):\n    yield {}\n",
}


@pytest.mark.parametrize(("kind", "needle"), [
    ("missing", "file not found"), ("syntax", "SyntaxError"), ("raises_on_import", "RuntimeError: no GPU here"),
    ("raises_mid_stream", "batch 3 raised ValueError: corrupt record 3"), ("needs_arguments", "calling it raised TypeError"),
])
def test_loader_errors_are_one_line_naming_the_loader(save, tmp_path, kind, needle):
    path = save(conv_bn_relu())
    loader = tmp_path / f"{kind}.py"
    if LOADERS[kind] is not None:
        loader.write_text(LOADERS[kind])
    result = invoke("quantize", path, "-o", tmp_path / "q.onnx", "--data-loader", f"{loader}:batches", "--latency-runs", "0", "-q")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{kind}.py" in result.output and needle in result.output.replace("\n", " "), result.output


ENDLESS = """
import numpy as np
from pathlib import Path
LOG = Path(__file__).with_suffix(".log")
def batches():
    with LOG.open("a") as log:
        log.write("call\\n")
    rng = np.random.default_rng(0)
    while True:
        with LOG.open("a") as log:
            log.write("item\\n")
        yield {"input": rng.normal(size=(1, 3, 32, 32)).astype(np.float32)}
"""


@pytest.mark.parametrize("command", ["quantize", "prune"])
def test_an_endless_loader_is_called_once_and_read_no_further_than_max_samples(save, tmp_path, command):
    path = save(conv_bn_relu())
    loader = tmp_path / "endless.py"
    loader.write_text(ENDLESS)
    result = invoke(command, path, "-o", tmp_path / "out.onnx", "--data-loader", f"{loader}:batches", "--max-samples", "20", "--latency-runs", "0", "-q")
    assert result.exit_code == 0, result.output
    log = (tmp_path / "endless.log").read_text().split()
    assert log.count("call") == 1
    assert log.count("item") <= 20 + 5 + 1  # the calibration batches, their share held out, and one read ahead


def test_an_eval_fraction_that_leaves_no_calibration_data_is_a_usage_error(save, npz_folder, tmp_path):
    import numpy as np

    path = save(conv_bn_relu())
    data = npz_folder([{"input": np.random.default_rng(i).normal(size=(1, 3, 32, 32)).astype(np.float32)} for i in range(6)])
    result = invoke("quantize", path, "-o", tmp_path / "q.onnx", "--data", data, "--eval-fraction", "0.7", "-q")
    assert result.exit_code == 2 and "hold out every batch" in result.output, result.output


def test_silently_ignored_input_is_named(save, npz_folder, tmp_path):
    import numpy as np
    from PIL import Image

    path = save(conv_bn_relu())
    rng = np.random.default_rng(3)
    data = npz_folder([{"input": rng.normal(size=(1, 3, 32, 32)).astype(np.float32)} for _ in range(6)])
    images = tmp_path / "images"
    images.mkdir()
    for index in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(images / f"{index}.png")
    out = tmp_path / "q.onnx"
    quantize = ("quantize", path, "-o", out, "--latency-runs", "0", "-q")

    result = invoke(*quantize, "--data", images)
    assert result.exit_code == 0 and "--image-mean and --image-std" in result.output, result.output
    np.savez(images / "stray.npz", input=np.zeros((1, 3, 32, 32), np.float32))
    assert invoke(*quantize, "--data", images).exit_code == 2
    result = invoke(*quantize, "--data", data, "--exclude-nodes", "no_such_node")
    assert result.exit_code == 0 and "no node named 'no_such_node'" in result.output, result.output
    result = invoke(*quantize, "--data", data, "--input-shapes", "image:1,3,32,32")
    assert result.exit_code == 2 and "'image', which is not a model input" in result.output, result.output
    # without data too, where only a random test batch or the MAC count would read the shapes
    for command in (("prune", path, "-o", out, "--ratio", "0.5", "-q"), ("share", path, "-o", out, "-q"), ("inspect", path)):
        result = invoke(*command, "--input-shapes", "image:1,3,32,32")
        assert result.exit_code == 2 and "'image', which is not a model input" in result.output, (command, result.output)
    result = invoke("prune", path, "-o", out, "--ratio", "0.5", "--target-macs", "0.5", "-q")
    assert result.exit_code == 2 and "not both" in result.output


def test_prune_says_when_accuracy_was_not_measured_on_real_data(save, tmp_path):
    path = save(conv_bn_relu())
    result = invoke("prune", path, "-o", tmp_path / "p.onnx", "--latency-runs", "0", "-q")
    assert result.exit_code == 0 and "accuracy was not measured" in result.output.replace("\n", " "), result.output
    result = invoke("prune", path, "-o", tmp_path / "p.onnx", "--data", "random", "--latency-runs", "0", "-q")
    assert result.exit_code == 0 and "proves nothing about real inputs" in result.output.replace("\n", " "), result.output


def test_progress_shows_as_plain_lines_when_output_is_piped(monkeypatch, capsys):
    import onnxslim.progress as progress

    monkeypatch.setattr(progress, "PLAIN_INTERVAL_S", 0.0)
    assert list(progress.track(range(3), "calibrating")) == [0, 1, 2]
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("calibrating: 1/3 (33%)") and lines[-1].startswith("calibrating: 3/3 (100%)") and lines[-1].endswith("done")
    for round_ in progress.track(range(20), "timing", total=20):  # a loop that stops once its verdict is clear says where it stopped
        if round_ == 7:
            break
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("timing: 8 of up to 20, ") and last.endswith("stopped"), last


def test_misleading_reasons_say_what_really_happened(save, tmp_path):
    path = save(conv_bn_relu())
    report = tmp_path / "prune.json"
    result = invoke("prune", path, "-o", tmp_path / "p.onnx", "--ratio", "1e-9", "-q", "--report", report)
    assert result.exit_code == 1 and "removes no whole channel" in result.output.replace("\n", " "), result.output
    # the refusal still writes every channel group it weighed, and nothing claimed as written
    written = json.loads(report.read_text())
    assert written["written"] == "nothing" and written["output"] is None and written["groups"]
    assert all(group["channels_after"] == group["channels_before"] for group in written["groups"])
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "a.npz").write_bytes(b"not an archive at all")
    result = invoke("quantize", path, "-o", tmp_path / "q.onnx", "--data", garbage, "-q")
    assert result.exit_code == 1 and "not a .npz file: no zip archive" in result.output.replace("\n", " ") and "pickled" not in result.output, result.output


def test_fp16_models_prune_with_data(tmp_path, npz_folder):
    import numpy as np
    from onnx import TensorProto, numpy_helper

    from models.builders import mlp

    model = mlp()
    for tensor in model.graph.initializer:
        if tensor.data_type == TensorProto.FLOAT:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), tensor.name))
    for value in list(model.graph.input) + list(model.graph.output):
        value.type.tensor_type.elem_type = TensorProto.FLOAT16
    path = tmp_path / "fp16.onnx"
    onnx.save(model, str(path))
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(4)
    data = npz_folder([{model.graph.input[0].name: rng.normal(size=shape).astype(np.float16)} for _ in range(8)])
    result = invoke("prune", path, "-o", tmp_path / "p.onnx", "--ratio", "0.5", "--data", data, "--latency-runs", "0", "-q")
    assert result.exit_code == 0, result.output
    assert "cosine" in result.output


def test_prune_measures_fidelity_on_batches_it_did_not_use(save, npz_folder, tmp_path):
    import numpy as np

    path = save(conv_bn_relu())
    rng = np.random.default_rng(6)
    data = npz_folder([{"input": rng.normal(size=(1, 3, 32, 32)).astype(np.float32)} for _ in range(10)])
    result = invoke("prune", path, "-o", tmp_path / "p.onnx", "--ratio", "0.5", "--data", data, "--latency-runs", "0", "-q")
    assert result.exit_code == 0 and "2 held-out batch(es) of --data" in result.output.replace("\n", " "), result.output
    other = npz_folder([{"input": rng.normal(size=(1, 3, 32, 32)).astype(np.float32)} for _ in range(3)], name="other")
    result = invoke("prune", path, "-o", tmp_path / "p.onnx", "--ratio", "0.5", "--data", data, "--eval-data", other, "--latency-runs", "0", "-q")
    assert result.exit_code == 0 and "3 batch(es) of --eval-data" in result.output.replace("\n", " "), result.output
    result = invoke("prune", path, "-o", tmp_path / "p.onnx", "--ratio", "0.5", "--eval-data", other, "--latency-runs", "0", "-q")
    flat = result.output.replace("\n", " ")
    assert result.exit_code == 0 and "cosine" in flat and "measured on --eval-data" in flat, result.output


def test_sizes_are_printed_with_digits_that_tell_them_apart():
    """A 30 kB model printed as '0.03 MB against 0.03 MB' said two different sizes were the same."""
    from onnxslim.units import size_text

    assert [size_text(n) for n in (512, 30_912, 31_208, 11_545_911)] == ["512 bytes", "30.9 kB", "31.2 kB", "11.55 MB"]
