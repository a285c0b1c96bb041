"""INT8 for models whose layers live inside If branches and Loop bodies: onnxslim against onnxruntime.quantization.

    pip install torch==2.14.1
    python benchmarks/quantize_control_flow.py --threads 1 2

Three models, random weights (graph coverage, size and latency; fidelity as output cosine):

- ``scripted_branches``: a conv net exported from ``torch.jit.script`` whose forward takes one of two conv
  blocks by the sign of the input's mean (an ONNX If) and then repeats a conv block a data-dependent number of
  times (an ONNX Loop); 64 channels, 56x56 inputs;
- ``rate_branches``: voice-activity shaped (models/builders.py): the sample-rate input picks an If branch, each
  a 1-D conv front end and an LSTM of 128; 200 frames;
- ``looped_mlp``: a Loop applying a 512-wide residual MLP layer 4 times.

Each is calibrated on ``--calib`` batches that take every branch and measured on ``--eval`` others. onnxslim
runs with its defaults (accuracy budget 0.99, timing check off so the INT8 model is what is compared);
onnxruntime.quantization with its static QDQ defaults and with quantize_dynamic. Latency: every model
interleaved, median of ``--runs``, at each thread count.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.quantize_silu import measured, onnxruntime_static, run_benchmarks  # noqa: E402
from models.builders import looped_mlp, rate_branches  # noqa: E402
from models.scripted_export import scripted_branches  # noqa: E402
from onnxslim import QuantConfig, quantize  # noqa: E402


def feeds(name: str, count: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Inputs that take every branch: alternating signs of the mean, alternating sample rates."""
    rng = np.random.default_rng(seed)
    if name == "scripted_branches":
        return [{"input": (rng.standard_normal((1, 3, 56, 56)) + (0.5 if i % 2 else -0.5)).astype(np.float32)} for i in range(count)]
    if name == "rate_branches":
        return [{"input": rng.standard_normal((1, 64, 200)).astype(np.float32), "sr": np.array(16000 if i % 2 else 8000, np.int64)} for i in range(count)]
    return [{"input": rng.standard_normal((1, 512)).astype(np.float32)} for _ in range(count)]


MODELS = {"scripted_branches": scripted_branches, "rate_branches": lambda: rate_branches(features=64, hidden=128), "looped_mlp": lambda: looped_mlp(width=512, steps=4)}


def onnxruntime_dynamic(fp32: Path, out: Path) -> Path:
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(fp32), str(out))
    return out


def bench(name: str, work: Path, args) -> dict:
    fp32 = work / f"{name}.onnx"
    onnx.save(MODELS[name](), fp32)
    calib, held = feeds(name, args.calib, seed=1), feeds(name, args.eval, seed=2)
    models = {"FP32": fp32}
    ours = work / f"{name}.onnxslim.onnx"
    _, report = quantize(fp32, calib, config=QuantConfig(latency_runs=0, if_slower="write"), output=ours)
    models["onnxslim"] = ours
    models["onnxruntime static"] = onnxruntime_static(fp32, calib, work / f"{name}.ort_static.onnx", per_channel=False)
    models["onnxruntime dynamic"] = onnxruntime_dynamic(fp32, work / f"{name}.ort_dynamic.onnx")
    row = {"model": name, **measured(models, held, args), "integer_kernels": {"onnxslim": report.integer_kernels}}
    row["kept_float_for_budget"] = len(report.kept_float_for_budget)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--calib", type=int, default=32)
    parser.add_argument("--eval", type=int, default=16)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "cache" / "quantize_control_flow.json")
    args = parser.parse_args()
    run_benchmarks(args.models, bench, args, mb_digits=2, also=lambda row: print("onnxslim integer kernels:", row["integer_kernels"]["onnxslim"], flush=True))


if __name__ == "__main__":
    main()
