"""compress against quantize alone on the real pretrained models, scored by each task's metric on held-out data.

    python benchmarks/compress_real.py --tasks rec,det,minilm --budgets 0.005,0.01,0.02 --calib 64 --threads 1,2
    python benchmarks/compress_real.py --tasks rec --budgets 0.04 --train 1000 --ratios 0.4 --distill 12
    python benchmarks/compress_real.py --tasks rec --budgets 0.04 --train 1000 --ratios 0.4 --distill 12 --deploy-threads 1
    python benchmarks/compress_real.py --tasks rec --budgets 0.04 --train 1000 --ratios 0.4 --distill 12 --deploy-threads 1 --smooth 0.8
    python benchmarks/compress_real.py --tasks minilm --torch-pruning 0.1,0.2
    python benchmarks/compress_real.py --tasks det --budgets 0.04 --train 800 --ratios 0.5,0.6 --prune-by macs --distill 9

For each task: the FP32 model, ``onnxslim quantize`` with its defaults, and
``onnxslim compress`` at each budget, all built from the first ``--calib``
samples of ``calibration/cache/<task>/calib`` (compress holds 1 in 5 of them
out to judge its candidates) and scored on ``calibration/cache/<task>/eval``,
which none of them saw. Latency: every model of a task timed in one
interleaved loop against the FP32 model (median of ``--runs``), at each thread
count. compress's table of candidates (pruned-only ones included) is kept in
the JSON. With ``--train N`` every model is built from N samples rendered
apart from the held-out set instead (distillation needs more than 64), and
``--distill MIN`` has compress distill each pruned candidate for up to MIN
minutes. ``--torch-pruning`` adds Torch-Pruning on MiniLM's PyTorch module
(benchmarks/torch_pruning_minilm.py), alone and quantized by onnxslim, next to
``onnxslim prune`` at the same ratio (heads and FFN neurons, its defaults, the
same calibration samples).
Results: docs/compress-benchmark.md.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.tasks import TASKS, eval_feeds, first_samples, run_all, save_json, score  # noqa: E402
from benchmarks.timing import median_latencies  # noqa: E402
from benchmarks.torch_pruning_minilm import torch_pruning_minilm  # noqa: E402
from calibration.make_datasets import make  # noqa: E402
from onnxslim import CompressConfig, PruneConfig, QuantConfig, compress, prune, quantize  # noqa: E402
from onnxslim.errors import BudgetError  # noqa: E402


def bench_task(name: str, budgets: list[float], calib: int, threads: list[int], runs: int, work: Path, args) -> dict:
    task = TASKS[name]
    data = make(name, args.train, 8, root=work / name / "rendered") / "calib" if args.train else first_samples(task, calib, work / name / "calib")
    extra = {"ratios": tuple(float(r) for r in args.ratios.split(","))} if args.ratios else {}
    extra |= {"prune_by": args.prune_by, "only": args.only, "smooth": args.smooth, "accuracy_metric": args.accuracy_metric}
    if args.distill:
        extra |= {"distill": True, "distill_epochs": 20, "distill_time_budget": args.distill, "distill_lr": args.lr}
    feeds = eval_feeds(task)
    reference = run_all(task.model, feeds)
    rows = [{"setting": "FP32", "path": str(task.model), "seconds": 0.0}]
    started = time.time()
    out = work / name / "int8.onnx"
    quantize(task.model, str(data), config=QuantConfig(max_calibration_samples=calib), output=out)
    rows.append({"setting": "quantize (defaults)", "path": str(out), "seconds": time.time() - started})
    if args.smooth != "outliers":
        started = time.time()
        out = work / name / "int8_smooth.onnx"
        quantize(task.model, str(data), config=QuantConfig(max_calibration_samples=calib, smooth=args.smooth), output=out)
        rows.append({"setting": f"quantize --smooth {args.smooth}", "path": str(out), "seconds": time.time() - started})
    for ratio in args.torch_pruning:
        started = time.time()
        ours = work / name / f"prune_{ratio}.onnx"
        _, pruned = prune(task.model, str(data), config=PruneConfig(ratio=ratio, max_calibration_samples=calib), output=ours)
        rows.append({"setting": f"onnxslim prune {ratio:.0%} (activation, refit)", "path": str(ours), "seconds": time.time() - started, "written": pruned.written})
        started = time.time()
        peer = torch_pruning_minilm(ratio, work / name / f"torch_pruning_{ratio}.onnx")
        rows.append({"setting": f"Torch-Pruning {ratio:.0%} (L2, no recovery)", "path": str(peer), "seconds": time.time() - started})
        out = work / name / f"torch_pruning_{ratio}.int8.onnx"
        quantize(peer, str(data), config=QuantConfig(max_calibration_samples=calib), output=out)
        rows.append({"setting": f"Torch-Pruning {ratio:.0%} + quantize", "path": str(out), "seconds": time.time() - started})
    for budget in budgets:
        out = work / name / f"compress_{budget}.onnx"
        started = time.time()
        try:
            _, report = compress(task.model, str(data), config=CompressConfig(max_loss=budget, latency_runs=20, threads=args.deploy_threads, **extra), output=out, show_progress=True)
            rows.append({"setting": f"compress --max-loss {budget}", "path": str(out), "seconds": time.time() - started, "chosen": report.chosen,
                         "candidates": [c.to_dict() | {"details": None} for c in report.candidates]})
        except BudgetError as exc:
            rows.append({"setting": f"compress --max-loss {budget}", "path": None, "seconds": time.time() - started, "error": str(exc),
                         "candidates": [c.to_dict() | {"details": None} for c in exc.report.candidates]})
    for row in rows:
        if row["path"]:
            row["metric"] = score(task, run_all(row["path"], feeds), reference, feeds)
            row["mb"] = Path(row["path"]).stat().st_size / 1e6
    timed = [row for row in rows if row["path"]]
    for count in threads:
        medians = median_latencies([row["path"] for row in timed], feeds[0], threads=count, runs=runs)
        for row, median in zip(timed, medians):
            row[f"latency_{count}t"] = median / medians[0]
    return {"task": name, "metric": task.metric, "rows": rows}


def _keep_distilled_students(folder: Path) -> None:
    """Also save each distilled student compress builds (float, before quantizing) in ``folder``, to study its INT8 step apart."""
    pipeline = importlib.import_module("onnxslim.compress.pipeline")  # onnxslim.compress is also the function's name

    distilled = pipeline._distilled

    def saving(pruned, *args, **kwargs):
        candidate, student = distilled(pruned, *args, **kwargs)
        onnx.save(student, str(folder / f"student_{candidate.prune_ratio:g}.onnx"))
        return candidate, student

    pipeline._distilled = saving


def _smooth(value: str) -> str | float | None:
    return None if value == "none" else value if value == "outliers" else float(value)


def markdown(results: list[dict], threads: list[int]) -> str:
    lines = []
    for result in results:
        lines.append(f"\n**{result['task']}** ({result['metric']}, held-out set)\n")
        header = "| setting | written | metric | size MB | " + " | ".join(f"latency {t}T" for t in threads) + " | build s |"
        lines += [header, "|" + "---|" * (5 + len(threads))]
        for row in result["rows"]:
            if not row["path"]:
                lines.append(f"| {row['setting']} | nothing ({row['error'].split(': ', 1)[-1]}) | - | - | " + " | ".join("-" for _ in threads) + f" | {row['seconds']:.0f} |")
                continue
            latency = " | ".join(f"{row[f'latency_{t}t']:.2f}x" for t in threads)
            lines.append(f"| {row['setting']} | {row.get('chosen', '-')} | {row['metric']:.4f} | {row['mb']:.2f} | {latency} | {row['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="rec,det")
    parser.add_argument("--budgets", default="0.005,0.01,0.02")
    parser.add_argument("--calib", type=int, default=64)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--deploy-threads", type=int, default=0, help="compress --threads: the count its candidates are timed and chosen at (0: onnxruntime's default)")
    parser.add_argument("--train", type=int, default=0, help="build from this many samples rendered apart from the held-out set (default: the first --calib cached ones)")
    parser.add_argument("--ratios", default=None, help="compress --ratios (default: its own)")
    parser.add_argument("--prune-by", default="channels", choices=("channels", "macs", "params"), help="compress --prune-by")
    parser.add_argument("--accuracy-metric", default="cosine", choices=("cosine", "top1", "auto"), help="compress --accuracy-metric: what --max-loss bounds")
    parser.add_argument("--only", default="all", choices=("all", "heads", "channels"), help="compress --only (MiniLM: channels = the FFN neurons, every head kept)")
    parser.add_argument("--distill", type=float, default=None, metavar="MIN", help="compress --distill, each pruned candidate for up to MIN minutes")
    parser.add_argument("--lr", type=float, default=None, help="compress --distill-lr (default: distill's own)")
    parser.add_argument("--smooth", type=_smooth, default="outliers", metavar="outliers|ALPHA|none",
                        help="compress --smooth (another value than the default adds a quantize --smooth row)")
    parser.add_argument("--torch-pruning", default="", metavar="R,R,...",
                        help="minilm only: also Torch-Pruning at these ratios of heads and FFN neurons, alone and quantized by onnxslim, "
                        "and onnxslim prune at the same ratios (needs torch-pruning)")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "cache" / "compress_real.json"))
    parser.add_argument("--keep", default=None, metavar="DIR",
                        help="build in this folder and keep what was built, the distilled students too (default: a temporary folder)")
    args = parser.parse_args()
    budgets = [float(b) for b in args.budgets.split(",")]
    args.torch_pruning = [float(r) for r in args.torch_pruning.split(",") if r]
    if args.torch_pruning and args.tasks != "minilm":
        raise SystemExit("--torch-pruning applies to --tasks minilm only (the one real model whose PyTorch source is at hand)")
    threads = [int(t) for t in args.threads.split(",")]
    if args.keep:
        _keep_distilled_students(Path(args.keep))
    results = []
    with tempfile.TemporaryDirectory() as temporary:
        work = args.keep or temporary
        for name in args.tasks.split(","):
            if not TASKS[name].model.exists() or not TASKS[name].calib.is_dir():
                raise SystemExit(f"{name}: run models/gather.py and calibration/make_datasets.py {name} first")
            results.append(bench_task(name, budgets, args.calib, threads, args.runs, Path(work), args))
            save_json(args.json, results)
            print(markdown(results[-1:], threads), flush=True)
    print(markdown(results, threads))


if __name__ == "__main__":
    main()
