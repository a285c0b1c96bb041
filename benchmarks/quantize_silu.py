"""INT8 on SiLU / squeeze-excitation / depthwise nets: onnxslim against onnxruntime.quantization, side by side.

    pip install torch==2.14.1 torchvision==0.29.1
    python benchmarks/quantize_silu.py --models efficientnet_b0 efficientnet_b3 mobilenet_v3_large regnet_y_400mf --threads 1 2
    python benchmarks/quantize_silu.py --models convnext_tiny vit_b_16 swin_t --threads 1 2 --dynamic
    python benchmarks/quantize_silu.py --models efficientnet_b0 regnet_y_400mf swin_t --threads 1 2 --exporter dynamo
    python benchmarks/quantize_silu.py --models resnet50 regnet_y_400mf --threads 1 2 --also conv_kernel=symmetric

torchvision architectures with random weights (their BatchNorm statistics set by a
few training-mode passes, see benchmarks/gpu_fp16.py): these rows prove graph
coverage and latency, not task accuracy. Each model is calibrated on ``--calib``
random 224x224 images; output cosine is measured on ``--eval`` others. Latency:
FP32 and every INT8 model interleaved, median of ``--runs``, at each thread count.
onnxruntime.quantization runs with its defaults for static QDQ (per-tensor
weights unless ``per_channel``: both are shown), and with ``--dynamic`` its
``quantize_dynamic`` too, the usual choice for transformers. ``--also`` adds onnxslim runs with other settings
(comma-separated QuantConfig fields, as benchmarks/quantize_settings.py reads them).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.gpu_fp16 import export_torchvision  # noqa: E402
from benchmarks.quantize_settings import parse_settings  # noqa: E402
from benchmarks.tasks import run_all  # noqa: E402
from benchmarks.timing import median_latencies  # noqa: E402
from onnxslim import QuantConfig, quantize  # noqa: E402
from onnxslim.measure import OutputComparison  # noqa: E402


def onnxruntime_static(fp32: Path, calib: list[dict], out: Path, per_channel: bool) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(calib)

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel)
    return out


def bench(name: str, work: Path, args) -> dict:
    fp32, calib_dir, held = export_torchvision(name, work, args.calib, args.exporter)
    held = held[: args.eval]
    calib = [dict(np.load(p)) for p in sorted(calib_dir.glob("*.npz"))]
    models = {"FP32": fp32}
    ours = work / f"{name}.onnxslim.onnx"
    _, report = quantize(fp32, str(calib_dir), config=QuantConfig(if_slower="write"), output=ours, show_progress=False)
    models["onnxslim"] = ours
    unbudgeted = work / f"{name}.onnxslim-no-budget.onnx"
    quantize(fp32, str(calib_dir), config=QuantConfig(if_slower="write", accuracy_budget=None), output=unbudgeted, show_progress=False)
    models["onnxslim --accuracy-budget none"] = unbudgeted
    for index, settings in enumerate(args.also):
        other = work / f"{name}.onnxslim-also{index}.onnx"
        quantize(fp32, str(calib_dir), config=QuantConfig(if_slower="write", **parse_settings(settings)), output=other, show_progress=False)
        models[f"onnxslim {settings}"] = other
    if args.float_output_layers:  # what a default run wrote before --output-layers auto
        kept = work / f"{name}.onnxslim-float-output-layers.onnx"
        quantize(fp32, str(calib_dir), config=QuantConfig(if_slower="write", output_layers="float"), output=kept, show_progress=False)
        models["onnxslim --output-layers float"] = kept
    for per_channel in (False, True):
        label = f"onnxruntime{' per-channel' if per_channel else ''}"
        models[label] = onnxruntime_static(fp32, calib, work / f"{name}.ort{int(per_channel)}.onnx", per_channel)
    if args.dynamic:
        from onnxruntime.quantization import quantize_dynamic

        models["onnxruntime dynamic"] = work / f"{name}.ort-dynamic.onnx"
        quantize_dynamic(str(fp32), str(models["onnxruntime dynamic"]))
    return {"model": name, **measured(models, held, args), "integer_kernels": report.integer_kernels, "kept_float_for_budget": len(report.kept_float_for_budget)}


def measured(models: dict[str, Path], held: list[dict], args) -> dict:
    """Each model against the one labelled FP32 on ``held``: the lowest cosine of its first output over the inputs, its file's
    MB, and the median latency of every model in one interleaved loop at each of ``args.threads``."""
    reference = run_all(models["FP32"], held)
    row: dict = {"cosine": {}, "latency_ms": {}, "mb": {}}
    for label, path in models.items():
        comparison = OutputComparison("output")
        for ref, cand in zip(reference, run_all(path, held)):
            comparison.add(ref[0], cand[0])
        row["cosine"][label] = comparison.min_batch_cosine
        row["mb"][label] = path.stat().st_size / 1e6
    for threads in args.threads:
        medians = median_latencies(list(models.values()), held[0], threads=threads, runs=args.runs)
        row["latency_ms"][f"{threads}T"] = dict(zip(models, medians))
    return row


def run_benchmarks(names: list, bench, args, *, mb_digits: int = 1, also: Callable[[dict], None] | None = None) -> list[dict]:
    """``bench(name, folder, args)`` for each of ``names`` in one scratch folder: each row printed as it comes (then ``also``
    with it) and all of them kept in ``args.json``; the whole table at the end."""
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            rows.append(bench(name, Path(folder), args))
            print(markdown(rows[-1:], args.threads, mb_digits), flush=True)
            if also is not None:
                also(rows[-1])
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(rows, indent=1))
    print(markdown(rows, args.threads, mb_digits))
    return rows


def markdown(rows: list[dict], threads: list[int], mb_digits: int = 1) -> str:
    lines = ["| model | tool | min output cosine | " + " | ".join(f"{t}T ms (x FP32)" for t in threads) + " | MB |", "|" + "---|" * (4 + len(threads))]
    for row in rows:
        for label in row["cosine"]:
            timing = " | ".join(
                f"{row['latency_ms'][f'{t}T'][label]:.2f} ({row['latency_ms'][f'{t}T'][label] / row['latency_ms'][f'{t}T']['FP32']:.2f}x)" for t in threads
            )
            lines.append(f"| {row['model']} | {label} | {row['cosine'][label]:.4f} | {timing} | {row['mb'][label]:.{mb_digits}f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["efficientnet_b0", "efficientnet_b3", "mobilenet_v3_large", "regnet_y_400mf"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--calib", type=int, default=32)
    parser.add_argument("--eval", type=int, default=16)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--exporter", choices=("legacy", "dynamo"), default="legacy", help="torch.onnx.export's TorchScript exporter (opset 17) or torch.export (dynamo, needs onnxscript)")
    parser.add_argument("--dynamic", action="store_true", help="also onnxruntime.quantization.quantize_dynamic (transformers: convnext_tiny, vit_b_16, swin_t)")
    parser.add_argument("--also", nargs="+", default=[], metavar="FIELD=VALUE[,FIELD=VALUE]", help="also onnxslim with these settings over its defaults, one run each")
    parser.add_argument("--float-output-layers", action="store_true", help="also onnxslim with --output-layers float (the output layer kept in float, as before auto)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "cache" / "quantize_silu.json")
    args = parser.parse_args()
    run_benchmarks(args.models, bench, args)


if __name__ == "__main__":
    main()
