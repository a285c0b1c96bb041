"""FP16 (and, for honesty, INT8 QDQ) against FP32 on onnxruntime's CUDA provider: latency at batch 1 and 8, task metrics, node placement.

    python benchmarks/gpu_fp16.py --tasks det,rec,minilm --torchvision resnet50,convnext_tiny,vit_b_16 --batches 1,8

Every model is converted with ``quantize --precision fp16 --target cuda`` and
``quantize --target cuda`` (INT8 Q/DQ, written even when slower, to show what
the CUDA provider does with it), calibrated on the first ``--calib`` samples of
``calibration/cache/<task>/calib``; the task metrics are measured on
``calibration/cache/<task>/eval`` with every model run on ``--provider``.
torchvision classifiers (random weights: latency and top-1 agreement with FP32
only) are exported here when torch and torchvision import. Latency: the three
models of each row timed interleaved, median of ``--runs``, at every batch size
(the first held-out sample repeated). Calibration runs on CUDA too
(``--calibration-provider cuda``). ``nodes on cpu`` counts the FP16 model's
nodes onnxruntime placed on the CPU (shape computations it keeps there on
purpose are counted too; the FP32 model's count is next to it). Results:
docs/gpu-validation.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.tasks import TASKS, eval_feeds, first_samples, run_all, save_json, score  # noqa: E402
from benchmarks.timing import median_latencies  # noqa: E402
from onnxslim import QuantConfig, quantize  # noqa: E402
from onnxslim.runtime import Runner, available_providers, resolve_provider  # noqa: E402


def export_torchvision(name: str, folder: Path, count: int, exporter: str = "legacy") -> tuple[Path, Path, list[dict]]:
    """A torchvision classifier with random weights, exported with a dynamic batch axis, and random 224x224 inputs.

    ``exporter``: "legacy" (TorchScript, opset 17) or "dynamo" (torch.export, the default of recent torch releases).
    """
    import torch
    import torchvision

    torch.manual_seed(0)  # the same random weights in every run, so runs compare
    model = getattr(torchvision.models, name)(weights=None).eval()
    with torch.no_grad():  # some heads start at zero (vit_b_16's), which makes every logit 0 and agreement meaningless
        for parameter in model.parameters():
            if parameter.dim() > 1 and not parameter.any():
                parameter.normal_(0.0, 0.02)
        # fresh BatchNorm statistics (mean 0, variance 1) do not match random weights: efficientnet_b0's logits come out
        # constant (std 1e-14) to the last digit; a few training-mode passes give every layer statistics of its own
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        if norms:
            for norm in norms:
                norm.reset_running_stats()
                norm.momentum = None  # a plain average over the passes
            model.train()
            for _ in range(4):
                model(torch.randn(8, 3, 224, 224))
            model.eval()
    path = folder / (f"{name}.onnx" if exporter == "legacy" else f"{name}.{exporter}.onnx")
    example = torch.randn(1, 3, 224, 224)
    dynamo = {"dynamo": True, "external_data": False} if exporter == "dynamo" else {"dynamo": False}
    torch.onnx.export(model, example, str(path), input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}}, **dynamo)
    calib, held = random_inputs(folder / f"{name}_calib", "x", (1, 3, 224, 224), count)
    return path, calib, held


def random_inputs(calib: Path, input_name: str, shape: tuple[int, ...], count: int) -> tuple[Path, list[dict]]:
    """``count`` seeded random inputs written to the folder ``calib`` as .npz batches, and ``count`` others held out."""
    rng = np.random.default_rng(0)
    feeds = [{input_name: rng.normal(size=shape).astype(np.float32)} for _ in range(count * 2)]
    calib.mkdir(exist_ok=True)
    for index, feed in enumerate(feeds[:count]):
        np.savez(calib / f"{index:05d}.npz", **feed)
    return calib, feeds[count:]


def top1_agreement(reference, candidate) -> float:
    return float(np.mean([np.argmax(r[0], -1) == np.argmax(c[0], -1) for r, c in zip(reference, candidate)]))


def batched(feed: dict, size: int) -> dict:
    return {name: np.repeat(value, size, axis=0) for name, value in feed.items()}


def placement(path: Path, feed: dict, provider: str) -> dict:
    return Runner(str(path), provider, threads=1, label=path.name).placement(feed).to_dict()["nodes_by_provider"]


def bench(name: str, fp32: Path, calib: Path, feeds: list[dict], metric, work: Path, args, provider: str) -> dict:
    row = {"model": name, "files": {}, "metric": {}, "latency": {}, "seconds": {}}
    paths = {"FP32": fp32}
    calibrate_on = "cuda" if provider == "CUDAExecutionProvider" else "cpu"  # --calibration-provider cuda, proven on the way
    for label, config in (("FP16", QuantConfig(precision="fp16", target="cuda", latency_runs=0, calibration_provider=calibrate_on)),
                          ("INT8 QDQ", QuantConfig(target="cuda", latency_runs=0, if_slower="write", calibration_provider=calibrate_on))):
        out = work / f"{name}.{label.split()[0].lower()}.onnx"
        started = time.time()
        _, report = quantize(fp32, str(calib), config=config, output=out, show_progress=False)
        row["seconds"][label] = time.time() - started
        if label == "FP16":
            row["fp16_kept_float32"] = [d.node for d in report.skipped]
            row["fp16_fidelity_on"] = report.float16["fidelity_measured_on"]
        paths[label] = out
    outputs = {label: run_all(path, feeds, provider=provider) for label, path in paths.items()}
    for label, path in paths.items():
        row["files"][label] = path.stat().st_size / 1e6
        row["metric"][label] = metric(outputs["FP32"], outputs[label], feeds)
    for size in args.batches:
        feed = batched(feeds[0], size)
        medians = median_latencies([paths[label] for label in paths], feed, threads=1, runs=args.runs, provider=provider)
        row["latency"][f"batch {size}"] = {label: {"ms": ms, "ratio": ms / medians[0]} for label, ms in zip(paths, medians)}
    row["nodes_on_cpu"] = {label: placement(paths[label], feeds[0], provider).get("cpu", 0) for label in ("FP32", "FP16")}
    return row


def markdown(rows: list[dict], batches: list[int], provider: str) -> str:
    lines = ["| model | metric (FP32 / FP16 / INT8) | " + " | ".join(f"batch {b}: FP32 ms, FP16 x, INT8 x" for b in batches)
             + " | MB (FP32 / FP16) | nodes on cpu (FP32 / FP16) |", "|" + "---|" * (4 + len(batches))]
    for row in rows:
        metric = " / ".join(f"{row['metric'][k]:.4f}" for k in ("FP32", "FP16", "INT8 QDQ"))
        timing = " | ".join(
            f"{row['latency'][f'batch {b}']['FP32']['ms']:.2f}, {row['latency'][f'batch {b}']['FP16']['ratio']:.2f}x, {row['latency'][f'batch {b}']['INT8 QDQ']['ratio']:.2f}x"
            for b in batches
        )
        lines.append(f"| {row['model']} ({row['metric_name']}) | {metric} | {timing} | {row['files']['FP32']:.1f} / {row['files']['FP16']:.1f} | "
                     f"{row['nodes_on_cpu']['FP32']} / {row['nodes_on_cpu']['FP16']} |")
    return f"provider: {provider}\n\n" + "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="det,rec,minilm")
    parser.add_argument("--torchvision", default="resnet50,convnext_tiny,vit_b_16")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--calib", type=int, default=32)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--provider", default="cuda", help="cuda (the point of this script), or cpu for a dry run of the script itself")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "cache" / "gpu_fp16.json"))
    args = parser.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    provider = resolve_provider(args.provider)
    if provider not in available_providers():
        raise SystemExit(f"{args.provider}: not available in this onnxruntime ({', '.join(available_providers())}); install onnxruntime-gpu")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        for name in [t for t in args.tasks.split(",") if t]:
            task = TASKS[name]
            if not task.model.exists() or not task.calib.is_dir():
                print(f"{name}: skipped (run models/gather.py and calibration/make_datasets.py {name} first)", flush=True)
                continue
            calib = first_samples(task, args.calib, work / f"{name}_calib")
            feeds = eval_feeds(task)

            def metric(reference, candidate, feeds, task=task):
                return score(task, candidate, reference, feeds)

            rows.append(bench(name, task.model, calib, feeds, metric, work, args, provider) | {"metric_name": task.metric})
            print(markdown(rows[-1:], args.batches, provider), flush=True)
            save_json(args.json, rows)  # each row as it comes: a run cut short keeps what it measured
        for name in [t for t in args.torchvision.split(",") if t]:
            try:
                path, calib, feeds = export_torchvision(name, work, args.calib)
            except ImportError as exc:
                print(f"{name}: skipped ({exc})", flush=True)
                continue
            rows.append(bench(name, path, calib, feeds, lambda r, c, f: top1_agreement(r, c), work, args, provider)
                        | {"metric_name": "top-1 agreement with FP32, random weights"})
            print(markdown(rows[-1:], args.batches, provider), flush=True)
            save_json(args.json, rows)
    save_json(args.json, rows)
    print(markdown(rows, args.batches, provider))


if __name__ == "__main__":
    main()
