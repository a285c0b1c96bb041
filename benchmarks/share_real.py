"""``onnxslim share`` on the real pretrained models: file and zipped size, task metric, latency.

    python benchmarks/share_real.py --tasks rec,minilm --calib 64 --threads 1,2

Each setting shares the FP32 model with the first ``--calib`` samples of
calibration/cache/<task>/calib (share holds 1 in 5 of them out for its own
fidelity check and accuracy budget) and is scored on calibration/cache/<task>/eval,
which no run saw: character accuracy against the labels for the recognizer,
sentence-embedding cosine against FP32 for MiniLM. Sizes are the file and the
file compressed with DEFLATE (what a zipped download costs). Latency: every
model of a task interleaved with FP32, median of ``--runs``, at each thread count.
Results: docs/share-benchmark.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.tasks import TASKS, eval_feeds, first_samples, run_all, score  # noqa: E402
from benchmarks.timing import median_latencies  # noqa: E402
from onnxslim import ShareConfig, share  # noqa: E402

SETTINGS = {
    "share (256 codes)": ShareConfig(clusters=256, latency_runs=0),
    "share --clusters 16": ShareConfig(clusters=16, latency_runs=0),
    "share --clusters 16 --accuracy-budget none": ShareConfig(clusters=16, latency_runs=0, accuracy_budget=None),
}


def zipped_mb(path: Path) -> float:
    return len(zlib.compress(path.read_bytes(), 9)) / 1e6


def bench(task_name: str, work: Path, args) -> dict:
    task = TASKS[task_name]
    calib = first_samples(task, args.calib, work / f"{task_name}_calib")
    feeds = eval_feeds(task)
    reference = run_all(task.model, feeds)
    models = {"FP32": task.model}
    row: dict = {"task": task_name, "metric_name": task.metric, "settings": {}}
    for label, config in SETTINGS.items():
        out = work / f"{task_name}.{len(models)}.onnx"
        started = time.perf_counter()
        _, report = share(task.model, str(calib), config=config, output=out)
        seconds = time.perf_counter() - started
        moved = {}
        for entry in report.kept_for_budget:
            moved[entry["to"]] = moved.get(entry["to"], 0) + 1
        row["settings"][label] = {"seconds": seconds, "moved_up": moved, "warnings": report.warnings,
                                  "held_out_cosine": min(c.cosine for c in report.fidelity) if report.fidelity else None}
        models[label] = out
    for label, path in models.items():
        entry = row["settings"].setdefault(label, {})
        entry["metric"] = score(task, run_all(path, feeds), reference, feeds)
        entry["mb"] = path.stat().st_size / 1e6
        entry["zipped_mb"] = zipped_mb(path)
    for threads in args.threads:
        medians = median_latencies(list(models.values()), feeds[0], threads=threads, runs=args.runs)
        for label, ms in zip(models, medians):
            row["settings"][label][f"latency_{threads}T"] = ms / medians[0]
    return row


def markdown(row: dict, threads: list[int]) -> str:
    fp32 = row["settings"]["FP32"]
    lines = [f"**{row['task']}** ({row['metric_name']} on the eval split; FP32 {fp32['metric']:.4f})", "",
             "| setting | metric | file MB | zipped MB (x FP32) | " + " | ".join(f"latency {t}T" for t in threads) + " | moved up for the budget | run s |",
             "|" + "---|" * (6 + len(threads))]
    for label, entry in row["settings"].items():
        timing = " | ".join(f"{entry[f'latency_{t}T']:.2f}x" for t in threads)
        moved = ", ".join(f"{n} to {level}" for level, n in entry.get("moved_up", {}).items()) or "-"
        lines.append(f"| {label} | {entry['metric']:.4f} | {entry['mb']:.2f} | {entry['zipped_mb']:.2f} ({entry['zipped_mb'] / fp32['zipped_mb']:.2f}x) | {timing} | "
                     f"{moved} | {entry.get('seconds', 0):.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="rec,minilm")
    parser.add_argument("--calib", type=int, default=64)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "cache" / "share_real.json")
    args = parser.parse_args()
    args.threads = [int(t) for t in args.threads.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for task in args.tasks.split(","):
            rows.append(bench(task, Path(folder), args))
            print(markdown(rows[-1], args.threads), flush=True)
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
