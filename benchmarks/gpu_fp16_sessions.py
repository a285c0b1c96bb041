"""What decides FP16's speed on onnxruntime's CUDA provider: session options, batch size, and the converter.

    python benchmarks/gpu_fp16_sessions.py --tasks det,rec,minilm --torchvision resnet50,convnext_tiny,vit_b_16,efficientnet_b0 --batches 1,8,32

For every model: FP32, onnxslim's FP16 (``quantize --precision fp16 --target cuda``)
and onnxruntime's own FP16 conversion (``onnxruntime.transformers.float16``,
inputs and outputs kept float32), plus, for MiniLM, onnxruntime's transformer
optimizer (BERT fusions: Attention, SkipLayerNormalization, BiasGelu) in FP32 and
FP16. Each set is timed interleaved (median of ``--runs``) under every CUDA
provider-option set of ``--options`` (``default`` is what a user gets;
``nhwc`` is ``prefer_nhwc=1``, which lets cuDNN run convolutions channels-last on
tensor cores) at every batch size, and the kernels each optimized graph holds are
counted: at small batches a GPU this fast is bound by kernel launches, not by
arithmetic. Results: docs/gpu-validation.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.gpu_fp16 import batched, export_torchvision  # noqa: E402
from benchmarks.tasks import TASKS, eval_feeds, first_samples  # noqa: E402
from onnxslim import QuantConfig, quantize  # noqa: E402
from onnxslim.measure import interleaved_latency  # noqa: E402

OPTION_SETS = {"default": {}, "nhwc": {"prefer_nhwc": "1"}, "no-tf32": {"use_tf32": "0"}}


def calibration_provider() -> str:
    """CUDA where it is present (calibration there is part of what this run proves); a CPU dry run of the script otherwise."""
    import onnxruntime as ort

    return "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"


def session(path: Path, options: dict, optimized: Path | None = None):
    import onnxruntime as ort

    settings = ort.SessionOptions()
    settings.log_severity_level = 3
    if optimized is not None:
        settings.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), settings, providers=[("CUDAExecutionProvider", options), "CPUExecutionProvider"])


def kernels(path: Path, options: dict, work: Path) -> tuple[object, int]:
    """A CUDA session for ``path`` and the nodes of its optimized graph (each one at least one kernel launch)."""
    optimized = work / f"{path.stem}.optimized.onnx"
    opened = session(path, options, optimized)
    return opened, len(onnx.load(str(optimized), load_external_data=False).graph.node)


class _Timed:
    """An onnxruntime session with provider options (which Runner does not take), timed like a Runner."""

    def __init__(self, opened):
        self.opened = opened

    def time_once(self, feed: dict) -> float:
        start = time.perf_counter()
        self.opened.run(None, feed)
        return time.perf_counter() - start


def interleaved(sessions: dict, feed: dict, runs: int) -> dict[str, float]:
    """Median milliseconds per session, timed in onnxslim's interleaved loop."""
    samples = interleaved_latency([_Timed(s) for s in sessions.values()], feed, warmup=10, runs=runs)
    return {label: float(np.median(v) * 1000) for label, v in zip(sessions, samples)}


def onnxruntime_fp16(path: Path, out: Path) -> Path:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
    onnx.save(model, str(out))
    return out


def bert_optimized(path: Path, work: Path, fp16: bool) -> Path:
    from onnxruntime.transformers.optimizer import optimize_model

    model = optimize_model(str(path), model_type="bert", num_heads=12, hidden_size=384, use_gpu=True, opt_level=0)
    if fp16:
        model.convert_float_to_float16(keep_io_types=True)
    out = work / f"{path.stem}.bert{'16' if fp16 else '32'}.onnx"
    model.save_model_to_file(str(out))
    return out


def variants(name: str, fp32: Path, calib: Path, work: Path) -> dict[str, Path]:
    paths = {"FP32": fp32}
    ours = work / f"{name}.fp16.onnx"
    quantize(fp32, str(calib), config=QuantConfig(precision="fp16", target="cuda", latency_runs=0, calibration_provider=calibration_provider()), output=ours, show_progress=False)
    paths["FP16 onnxslim"] = ours
    for label, build in (("FP16 onnxruntime", lambda: onnxruntime_fp16(fp32, work / f"{name}.ortfp16.onnx")),
                         ("FP32 bert-fused", lambda: bert_optimized(fp32, work, False) if name == "minilm" else None),
                         ("FP16 bert-fused", lambda: bert_optimized(fp32, work, True) if name == "minilm" else None)):
        try:
            path = build()
        except Exception as exc:  # a peer that fails on a model is a result too
            print(f"{name}: {label} failed: {str(exc).splitlines()[0][:200]}", flush=True)
            continue
        if path is not None:
            paths[label] = path
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="det,rec,minilm")
    parser.add_argument("--torchvision", default="resnet50,convnext_tiny,vit_b_16,efficientnet_b0")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--options", default="default,nhwc,no-tf32")
    parser.add_argument("--calib", type=int, default=8)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "cache" / "gpu_fp16_sessions.jsonl"), help="JSON lines, appended one per model")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        models = []
        for name in [t for t in args.tasks.split(",") if t]:
            task = TASKS[name]
            models.append((name, task.model, first_samples(task, args.calib, work / f"{name}_calib"), eval_feeds(task)[0]))
        for name in [t for t in args.torchvision.split(",") if t]:
            path, calib, feeds = export_torchvision(name, work, args.calib)
            models.append((name, path, calib, feeds[0]))
        for name, fp32, calib, feed in models:
            started = time.time()
            try:
                paths = variants(name, fp32, calib, work)
            except Exception as exc:
                print(f"{name}: failed: {str(exc).splitlines()[0][:300]}", flush=True)
                continue
            row = {"model": name, "kernels": {}, "ms": {}}
            for option_name in args.options.split(","):
                options = OPTION_SETS[option_name]
                opened = {label: kernels(path, options, work) for label, path in paths.items()}
                row["kernels"][option_name] = {label: count for label, (_, count) in opened.items()}
                sessions = {label: s for label, (s, _) in opened.items()}
                for size in batches:
                    medians = interleaved(sessions, batched(feed, size), args.runs)
                    row["ms"][f"{option_name} batch {size}"] = medians
                    ratios = ", ".join(f"{label} {ms:.2f} ms ({ms / medians['FP32']:.2f}x)" for label, ms in medians.items())
                    print(f"{name} {option_name} batch {size}: {ratios}", flush=True)
                print(f"{name} {option_name} kernels: {row['kernels'][option_name]}", flush=True)
                del sessions, opened
            row["seconds"] = time.time() - started
            with open(args.json, "a", encoding="utf-8") as lines:  # one line per model: a crash later keeps what was measured
                lines.write(json.dumps(row) + "\n")

if __name__ == "__main__":
    main()
