"""End to end on the pretrained PP-OCRv4 models that ship inside rapidocr-onnxruntime."""

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

pytest.importorskip("rapidocr_onnxruntime", reason="the dev extra (rapidocr-onnxruntime) ships the PP-OCRv4 models")
pytest.importorskip("PIL", reason="rendering text lines needs Pillow (dev extra)")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.tasks import char_accuracy  # noqa: E402
from calibration.make_datasets import make  # noqa: E402
from models.gather import gather_ppocr  # noqa: E402
from onnxslim import QuantConfig, quantize  # noqa: E402
from onnxslim.cli import main  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ppocr():
    return gather_ppocr()


@pytest.fixture(scope="module")
def rec_data(ppocr, tmp_path_factory):
    return make("rec", 24, 48, root=tmp_path_factory.mktemp("data"))


def test_recognizer_quantizes_with_fused_kernels_and_keeps_accuracy(ppocr, rec_data, tmp_path):
    out = tmp_path / "rec.int8.onnx"
    _, report = quantize(ppocr["ppocr_rec.onnx"], rec_data / "calib", eval_data=rec_data / "eval", output=out, config=QuantConfig(latency_runs=0, accuracy_budget=None))
    assert report.written == "int8"
    assert report.integer_kernels.get("QLinearConv", 0) >= 30  # the Paddle Constant-node weights were found and fused
    assert out.stat().st_size < ppocr["ppocr_rec.onnx"].stat().st_size * 0.6
    fp32, int8 = char_accuracy(ppocr["ppocr_rec.onnx"], rec_data / "eval"), char_accuracy(out, rec_data / "eval")
    assert fp32 > 0.85
    assert int8 >= fp32 - 0.02, (fp32, int8)
    # the default budget: every output's cosine on the held-out lines at 0.99 or more, layers kept in float to get there
    _, default = quantize(ppocr["ppocr_rec.onnx"], rec_data / "calib", eval_data=rec_data / "eval", output=out, config=QuantConfig(latency_runs=0))
    assert min(c.cosine for c in report.fidelity) < 0.99 <= min(c.cosine for c in default.fidelity)
    assert default.kept_float_for_budget and not any("accuracy budget" in w and "missed" in w for w in default.warnings)
    assert char_accuracy(out, rec_data / "eval") >= fp32 - 0.015


def test_compress_on_the_recognizer_writes_a_faster_model_within_its_budget(ppocr, rec_data, tmp_path):
    from onnxslim import CompressConfig, compress
    from onnxslim.errors import BudgetError

    out = tmp_path / "rec.small.onnx"
    # timed at one thread: two threads on a two-core CI machine are noise-dominated (FP32 often slower than at one)
    config = CompressConfig(ratios=(0.1,), latency_runs=20, threads=1)
    try:
        _, report = compress(ppocr["ppocr_rec.onnx"], rec_data / "calib", eval_data=rec_data / "eval", config=config, output=out)
    except BudgetError as exc:  # show what was measured
        pytest.fail(f"{exc}: {[(c.name, c.loss, c.latency_ratio) for c in exc.report.candidates]}")
    chosen = next(c for c in report.candidates if c.chosen)
    assert chosen.loss <= config.max_loss and chosen.latency_ratio < 1.0
    assert {c.name for c in report.candidates} >= {"original", "quantized", "pruned 10%"}
    fp32, small = char_accuracy(ppocr["ppocr_rec.onnx"], rec_data / "eval"), char_accuracy(out, rec_data / "eval")
    assert small >= fp32 - 0.02, (fp32, small)


def perturbed_copy(source: Path, target: Path) -> None:
    model = onnx.load(str(source))
    rng = np.random.default_rng(0)
    for node in model.graph.node:
        if node.op_type == "Constant":
            tensor = node.attribute[0].t
            array = numpy_helper.to_array(tensor)
            if array.ndim == 4 and array.dtype == np.float32:
                noisy = array + 0.3 * np.abs(array).mean() * rng.standard_normal(array.shape).astype(np.float32)
                tensor.CopyFrom(numpy_helper.from_array(noisy, tensor.name))
    onnx.save(model, str(target))


def test_validate_detector_against_itself_and_a_perturbed_copy(ppocr, tmp_path):
    det = ppocr["ppocr_det.onnx"]
    runner = CliRunner()
    report = tmp_path / "same.json"
    # one thread: at onnxruntime's default (every core of a 2-core CI machine) a model timed against itself read 1.60x
    args = ["--data", "random", "--input-shapes", "x:1,3,160,160", "--runs", "20", "--threads", "1", "-q"]
    same = runner.invoke(main, ["validate", str(det), str(det), *args, "--min-cosine", "0.999", "--report", str(report)])
    assert same.exit_code == 0, same.output
    content = json.loads(report.read_text())
    cpu = content["providers"][0]
    assert cpu["outputs"][0]["cosine"] == pytest.approx(1.0)
    assert 0.6 < cpu["latency"]["ratio"] < 1.6
    bad = tmp_path / "perturbed.onnx"
    perturbed_copy(det, bad)
    worse = runner.invoke(main, ["validate", str(det), str(bad), *args, "--min-cosine", "0.999"])
    assert worse.exit_code == 3, worse.output
    assert "FAILED" in worse.output


def test_recognizer_in_fp16_keeps_char_accuracy(ppocr, rec_data, tmp_path):
    out = tmp_path / "rec.fp16.onnx"
    _, report = quantize(ppocr["ppocr_rec.onnx"], rec_data / "calib", eval_data=rec_data / "eval", output=out, config=QuantConfig(precision="fp16", target="cuda"))
    assert report.written == "fp16"
    assert report.fidelity[0].cosine > 0.999
    assert out.stat().st_size < ppocr["ppocr_rec.onnx"].stat().st_size * 0.55
    fp32, fp16 = char_accuracy(ppocr["ppocr_rec.onnx"], rec_data / "eval"), char_accuracy(out, rec_data / "eval")  # the CPU runs float16 through casts
    assert fp16 >= fp32 - 0.005


def test_recognizer_weights_only_int4_keeps_char_accuracy(ppocr, rec_data, tmp_path):
    out = tmp_path / "rec.w4.onnx"
    config = QuantConfig(weights_only="int4", if_slower="write", latency_runs=0)
    _, report = quantize(ppocr["ppocr_rec.onnx"], rec_data / "calib", eval_data=rec_data / "eval", output=out, config=config)
    assert report.written == "int4-weights" and len(report.quantized) >= 8
    assert all("error-compensated" in d.reason.text for d in report.quantized)
    onnx.checker.check_model(str(out))
    fp32, int4 = char_accuracy(ppocr["ppocr_rec.onnx"], rec_data / "eval"), char_accuracy(out, rec_data / "eval")
    assert int4 >= fp32 - 0.01
