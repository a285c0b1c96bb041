"""Weight-only INT4 side by side: onnxslim against onnxruntime's MatMulNBitsQuantizer on the same data.

    python benchmarks/weights_only_peers.py --tasks minilm,rec,decoder --calib 64 --threads 1,2

For minilm and rec (real weights): onnxslim ``quantize --weights-only int4``
with the first ``--calib`` samples of calibration/cache/<task>/calib (and
without data), and onnxruntime's quantizer with its defaults, its RTN and HQQ
algorithms at block 32, and its default with Gather tables included; every
model scored on calibration/cache/<task>/eval (sentence-embedding cosine for
MiniLM, char accuracy for rec) and timed interleaved with FP32 (median of
``--runs``) at each thread count. For the GPT-2-shaped decoder
(models/decoder_export.py, random weights: size and latency only) one forward
pass at sequence 1 and 128. onnxruntime's module needs ``onnx_ir`` (not
declared by onnxruntime). Results: docs/weights-only-benchmark.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.tasks import MODELS, TASKS, eval_feeds, first_samples, run_all, save_json, score  # noqa: E402
from benchmarks.timing import median_latencies  # noqa: E402
from onnxslim import QuantConfig, quantize  # noqa: E402


def file_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / 1e6


def save(model: onnx.ModelProto, path: Path) -> Path:
    large = model.ByteSize() > 1_500_000_000 if hasattr(model, "ByteSize") else True
    onnx.save(model, str(path), save_as_external_data=large, location=path.name + ".data" if large else None)
    return path


def onnxruntime_variants(source: Path, work: Path, with_tables: bool) -> list[tuple[str, Path, float]]:
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        HQQWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
        RTNWeightOnlyQuantConfig,
    )

    variants = [("onnxruntime default (block 128)", {}, None), ("onnxruntime RTN, block 32", {"block_size": 32}, RTNWeightOnlyQuantConfig()),
                ("onnxruntime HQQ, block 32", {"block_size": 32}, HQQWeightOnlyQuantConfig(block_size=32))]
    if with_tables:
        variants.append(("onnxruntime default, block 32, Gather included", {"block_size": 32, "op_types_to_quantize": ("MatMul", "Gather")}, None))
    built = []
    for name, options, algo in variants:
        started = time.time()
        quantizer = MatMulNBitsQuantizer(onnx.load(str(source)), algo_config=algo, **options)
        quantizer.process()
        path = work / f"ort_{len(built)}.onnx"
        quantizer.model.save_model_to_file(str(path), use_external_data_format=file_mb(source) > 1500)
        built.append((name, path, time.time() - started))
    return built


def ours(source: Path, data, work: Path, name: str, input_shapes=None) -> tuple[str, Path, float]:
    started = time.time()
    out = work / f"onnxslim_{name}.onnx"
    quantize(source, data, config=QuantConfig(weights_only="int4", if_slower="write", latency_runs=0), output=out, input_shapes=input_shapes)
    return (f"onnxslim int4, {'with' if data else 'without'} data", out, time.time() - started)


def bench_task(name: str, args, work: Path) -> dict:
    task = TASKS[name]
    data = first_samples(task, args.calib, work / name / "calib")
    feeds = eval_feeds(task)
    reference = run_all(task.model, feeds)
    shapes = {spec: (1, 128) for spec in ("input_ids", "attention_mask", "token_type_ids")} if name == "minilm" else None
    rows = [("FP32", task.model, 0.0), ours(task.model, str(data), work, f"{name}_data"), ours(task.model, None, work, f"{name}_nodata", shapes)]
    rows += onnxruntime_variants(task.model, work, with_tables=name == "minilm")
    results, loadable = [], []
    for setting, path, seconds in rows:
        try:
            results.append({"setting": setting, "mb": file_mb(path), "metric": score(task, run_all(path, feeds), reference, feeds), "seconds": seconds})
            loadable.append(path)
        except Exception as exc:  # a peer's output that onnxruntime cannot load is a result, not a crash
            results.append({"setting": setting, "mb": file_mb(path), "metric": None, "seconds": seconds, "error": str(exc).splitlines()[0][-160:]})
    timed = [r for r in results if r["metric"] is not None]
    for threads in args.threads:
        medians = median_latencies(loadable, feeds[0], threads=threads, runs=args.runs)
        for result, median in zip(timed, medians):
            result[f"latency_{threads}t"] = median / medians[0]
    return {"task": name, "metric": task.metric, "rows": results}


def bench_decoder(args, work: Path) -> dict:
    source = MODELS / "decoder.onnx"
    if not source.exists():
        raise SystemExit("run models/decoder_export.py first (needs torch)")
    rows = [("FP32", source, 0.0), ours(source, None, work, "decoder", {"input_ids": (1, 128)})]
    rows += onnxruntime_variants(source, work, with_tables=False)[:1]
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    started = time.time()
    quantizer = MatMulNBitsQuantizer(onnx.load(str(source)), block_size=32)
    quantizer.process()
    path = work / "ort_decoder_32.onnx"
    quantizer.model.save_model_to_file(str(path), use_external_data_format=False)
    rows.append(("onnxruntime default, block 32", path, time.time() - started))
    results = [{"setting": s, "mb": file_mb(p), "seconds": t} for s, p, t in rows]
    for sequence in (1, 128):
        feed = {"input_ids": np.zeros((1, sequence), np.int64)}
        for threads in args.threads:
            medians = median_latencies([p for _, p, _ in rows], feed, threads=threads, runs=max(5, args.runs // 3))
            for result, median in zip(results, medians):
                result[f"seq{sequence}_{threads}t_ms"] = median
    return {"task": "decoder", "metric": "random weights: size and latency only", "rows": results}


def markdown(result: dict, threads: list[int]) -> str:
    rows = result["rows"]
    if result["task"] == "decoder":
        columns = [k for k in rows[0] if k.startswith("seq")]
        lines = ["| setting | MB | " + " | ".join(c.replace("_", " ") for c in columns) + " | build s |", "|" + "---|" * (3 + len(columns))]
        lines += [f"| {r['setting']} | {r['mb']:.1f} | " + " | ".join(f"{r[c]:.1f}" for c in columns) + f" | {r['seconds']:.0f} |" for r in rows]
    else:
        lines = [f"| setting | {result['metric']} | MB | " + " | ".join(f"latency {t}T" for t in threads) + " | build s |", "|" + "---|" * (4 + len(threads))]
        for r in rows:
            if r["metric"] is None:
                lines.append(f"| {r['setting']} | cannot be loaded: {r['error']} | {r['mb']:.1f} | " + " | ".join("-" for _ in threads) + f" | {r['seconds']:.0f} |")
                continue
            latency = " | ".join(f"{r[f'latency_{t}t']:.2f}x" for t in threads)
            lines.append(f"| {r['setting']} | {r['metric']:.4f} | {r['mb']:.1f} | {latency} | {r['seconds']:.0f} |")
    return f"\n**{result['task']}**\n\n" + "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="minilm,rec,decoder")
    parser.add_argument("--calib", type=int, default=64)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "cache" / "weights_only.json"))
    args = parser.parse_args()
    args.threads = [int(t) for t in args.threads.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.tasks.split(","):
            result = bench_decoder(args, Path(folder)) if name == "decoder" else bench_task(name, args, Path(folder))
            results.append(result)
            save_json(args.json, results)
            print(markdown(result, args.threads), flush=True)


if __name__ == "__main__":
    main()
