"""Quantization-aware distillation against post-training INT8, on a real pretrained model, scored on held-out data.

    python calibration/make_datasets.py rec                     # the 200 held-out lines (calibration/cache/rec/eval)
    python benchmarks/qat_real.py --task rec --train 1000 --time-budget 10

Training lines are rendered apart from the held-out ones. Rows: FP32; ``quantize`` with its
defaults (the 0.99 output-cosine budget keeps the noisiest layers in float) and with
``--accuracy-budget none`` (every layer INT8), both calibrated on the first 64 training
lines; and ``distill --int8`` with the original as its own teacher: the float weights
trained under quantize's INT8 rounding on the training lines (1 in 5 held out to pick the
epoch), then quantized with every layer INT8. Each model is scored on the held-out set
(char accuracy for rec, text-mask IoU for det) and by its output's cosine to FP32 there,
and timed interleaved with FP32 (median of ``--runs``) at 1 and 2 threads.
Results: docs/distill-benchmark.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.tasks import TASKS, eval_feeds, results_table, run_all, save_json, scored_and_timed  # noqa: E402
from calibration.make_datasets import make  # noqa: E402
from onnxslim import DistillConfig, QuantConfig, distill, quantize  # noqa: E402


def pooled_cosine(reference: list, candidate: list) -> float:
    a = np.concatenate([r[0].ravel() for r in reference]).astype(np.float64)
    b = np.concatenate([c[0].ravel() for c in candidate]).astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="rec", choices=("rec", "det"))
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--time-budget", type=float, default=10.0, help="minutes of training")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--json", default=None, help="default: benchmarks/cache/qat_<task>.json")
    args = parser.parse_args()
    task = TASKS[args.task]
    feeds = eval_feeds(task)
    reference = run_all(task.model, feeds)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        train = make(args.task, args.train, 8, root=work / "data") / "calib"
        rows = [("FP32", task.model, 0.0, {})]
        for label, budget in (("quantize (defaults)", 0.99), ("quantize --accuracy-budget none", None)):
            started = time.time()
            _, report = quantize(task.model, str(train), config=QuantConfig(latency_runs=0, max_calibration_samples=64, accuracy_budget=budget), output=work / f"{len(rows)}.onnx")
            rows.append((label, work / f"{len(rows)}.onnx", time.time() - started, {"kept_float": len(report.kept_float_for_budget)}))
        started = time.time()
        config = DistillConfig(epochs=args.epochs, time_budget=args.time_budget, lr=args.lr, int8=True)
        _, report = distill(task.model, task.model, str(train), config=config, output=work / "qat.onnx", show_progress=True)
        notes = {"written": report.written, "score_before": report.score_before, "score_after": report.score_after, "best_epoch": report.best_epoch,
                 "epochs": [e.to_dict() for e in report.epochs], "rounded_activations": report.rounded_activations, "rounded_weights": report.rounded_weights}
        rows.append(("distill --int8", work / "qat.onnx", time.time() - started, notes))
        results = scored_and_timed(task, rows, feeds, reference, runs=args.runs, also=lambda outputs: {"cosine": pooled_cosine(reference, outputs)})
    save_json(args.json or ROOT / "benchmarks" / "cache" / f"qat_{args.task}.json", results)
    print(results_table(task, results, (("output cosine vs FP32", "cosine"),)))
    print(json.dumps(notes, indent=1))


if __name__ == "__main__":
    main()
