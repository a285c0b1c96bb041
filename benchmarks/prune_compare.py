"""onnxslim prune on real models without retraining: accuracy against the amount pruned.

    python models/gather.py --minilm
    python calibration/make_datasets.py rec minilm --calib 1024 --eval 200
    python benchmarks/prune_compare.py --markdown docs/pruning-benchmark.md

- all-MiniLM-L6-v2: 25% and 50% of FFN neurons (`--only channels`) and 50% of attention heads
  (`--only heads`), ranked by magnitude (l2) or by activation, with no recovery, bias
  compensation, or the least-squares refit; metric: mean cosine of sentence embeddings
  (mean pooled, normalized) with the unpruned model on held-out sentences.
- PP-OCRv4 recognizer: character accuracy on held-out rendered lines against the pruning ratio,
  with activation ranking and refit.
Latency ratios are interleaved medians against the unpruned model, 1 thread, batch 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.tasks import TASKS, eval_feeds, run_all, score  # noqa: E402
from benchmarks.timing import median_latencies  # noqa: E402
from onnxslim import PruneConfig, prune  # noqa: E402
from onnxslim.data.sources import NpzFolder  # noqa: E402

WORK = ROOT / "benchmarks" / "cache" / "prune"

MINILM_RUNS = [
    (only, ratio, importance, recovery, scope)
    for only, ratio in (("channels", 0.25), ("channels", 0.5), ("heads", 0.5))
    for importance, recovery, scope in (("l2", "none", "local"), ("activation", "none", "local"), ("activation", "bias", "local"), ("activation", "refit", "local"))
] + [("heads", 0.5, "activation", "bias", "global"), ("heads", 0.5, "activation", "refit", "global")]


def calibration(task, count: int) -> NpzFolder:
    source = NpzFolder(task.calib)
    source.files = source.files[:count]
    return source


def run(task_name: str, runs, calib: int, latency_runs: int) -> list[dict]:
    task = TASKS[task_name]
    WORK.mkdir(parents=True, exist_ok=True)
    feeds = eval_feeds(task)
    reference = run_all(task.model, feeds)
    rows = [{"task": task_name, "setting": "unpruned", "metric": score(task, reference, reference, feeds), "params": None, "latency_ratio": 1.0}]
    for only, ratio, importance, recovery, scope in runs:
        config = PruneConfig(ratio=ratio, importance=importance, recovery=recovery, only=only, scope=scope, latency_runs=0)
        pruned, report = prune(str(task.model), config=config, data=calibration(task, calib))
        target = WORK / f"{task_name}-{only}-{ratio}-{importance}-{recovery}-{scope}.onnx"
        onnx.save(pruned, str(target))
        outputs = run_all(target, feeds)
        ms = median_latencies([task.model, target], feeds[0], threads=1, runs=latency_runs)
        row = {
            "task": task_name,
            "setting": _label((only, ratio, importance, recovery, scope)),
            "calibration": calib,
            "metric": score(task, outputs, reference, feeds),
            "params": report.parameters[1] / report.parameters[0],
            "latency_ratio": ms[1] / ms[0],
        }
        print(row, flush=True)
        rows.append(row)
    return rows


def _label(run: tuple) -> str:
    only, ratio, importance, recovery, scope = run
    return f"{only} {ratio:.0%}, {importance}, recovery {recovery}" + (", global ranking" if scope == "global" else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calib", type=int, default=1024, help="MiniLM calibration sentences")
    parser.add_argument("--rec-calib", type=int, default=128, help="recognizer calibration lines")
    parser.add_argument("--minilm-only", nargs="+", default=None, metavar="SETTING", help="run only these MiniLM settings, e.g. 'heads 50%%, activation, recovery bias'")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--rec-ratios", nargs="+", type=float, default=[0.1, 0.2, 0.3])
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args()
    minilm = MINILM_RUNS
    if args.minilm_only:
        minilm = [r for r in MINILM_RUNS if any(_label(r).startswith(wanted) for wanted in args.minilm_only)]
    rows = run("minilm", minilm, args.calib, args.runs)
    rows += run("rec", [("channels", r, "activation", "refit", "local") for r in args.rec_ratios], args.rec_calib, args.runs)
    (WORK / "prune_compare.json").write_text(json.dumps(rows, indent=1))
    lines = ["| model | setting | calibration samples | metric | parameters kept | latency vs unpruned (1 thread) |", "|---|---|---|---|---|---|"]
    for row in rows:
        params = f"{row['params']:.2f}" if row["params"] is not None else "1.00"
        lines.append(f"| {row['task']} ({TASKS[row['task']].metric}) | {row['setting']} | {row.get('calibration', '-')} | {row['metric']:.4f} | {params} | {row['latency_ratio']:.2f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.markdown:
        args.markdown.write_text(table)


if __name__ == "__main__":
    main()
