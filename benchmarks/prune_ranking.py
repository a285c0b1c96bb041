"""Channel rankings side by side on real models: magnitude, activation and second-order, each followed by the same refit.

    python models/gather.py --minilm
    python calibration/make_datasets.py rec det cls minilm
    python benchmarks/prune_ranking.py   # the table of docs/pruning-benchmark.md, "Which channels"

Every setting prunes the same amount from the same model with the same calibration
samples (the first ``--calib`` of calibration/cache/<task>/calib) and recovers with the
ridge refit; only ``--importance`` differs. Scored by the task metric on the held-out
set (never the calibration samples): character accuracy (rec), text-mask IoU against
FP32 (det), accuracy (cls), sentence-embedding cosine against FP32 (minilm). Channel
counts are fixed multiples (``round_to``) and timing is off, so the three rankings cut
the same number of channels in every group and the build time is the ranking's and
the refit's own.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.tasks import TASKS, eval_feeds, first_samples, run_all, save_json, score  # noqa: E402
from onnxslim import PruneConfig, prune  # noqa: E402

RANKINGS = ("l2", "activation", "second-order")
SETTINGS = {  # task -> (label, prune settings)
    "rec": [("30% of channels", {"ratio": 0.3, "round_to": 16}), ("40% of channels", {"ratio": 0.4, "round_to": 16})],
    "det": [("25% of channels", {"ratio": 0.25, "round_to": 16}), ("half the MACs", {"target_macs": 0.5, "round_to": 16})],
    "cls": [("30% of channels", {"ratio": 0.3, "round_to": 8})],
    "minilm": [("50% of FFN neurons", {"ratio": 0.5, "only": "channels", "round_to": 32}), ("50% of heads", {"ratio": 0.5, "only": "heads"})],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--calib", type=int, default=64, help="calibration samples for ranking and refit")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "cache" / "prune_ranking.json"))
    parser.add_argument("--markdown", default=None, help="write the table to this file")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        for name in args.tasks:
            task = TASKS[name]
            feeds = eval_feeds(task)
            reference = run_all(task.model, feeds)
            calibration = first_samples(task, args.calib, work / f"{name}-calib")
            for label, amount in SETTINGS[name]:
                for importance in RANKINGS:
                    started = time.time()
                    pruned, report = prune(str(task.model), str(calibration), config=PruneConfig(importance=importance, recovery="refit", latency_runs=0, **amount))
                    seconds = time.time() - started
                    target = work / f"{name}-{importance}.onnx"
                    onnx.save(pruned, str(target))
                    metric = score(task, run_all(target, feeds), reference, feeds)
                    row = {"task": name, "metric_name": task.metric, "setting": label, "importance": importance, "metric": metric,
                           "fp32": score(task, reference, reference, feeds), "parameters": report.parameters[1] / report.parameters[0], "seconds": seconds}
                    results.append(row)
                    print(f"{name} {label} {importance}: {metric:.4f} ({seconds:.0f} s)", flush=True)
    save_json(args.json, results)
    lines = ["| model (metric, FP32) | pruned | ranking | metric | parameters kept | build s |", "|---|---|---|---|---|---|"]
    for row in results:
        lines.append(f"| {row['task']} ({row['metric_name']}, {row['fp32']:.4f}) | {row['setting']} | {row['importance']} | {row['metric']:.4f} "
                     f"| {row['parameters']:.2f} | {row['seconds']:.0f} |")
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
