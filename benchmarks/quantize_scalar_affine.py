"""``quantize --scalar-affine float|int8|auto`` on the PP-OCR models, whose PP-LCNet blocks scale and shift after every HardSwish.

    python calibration/make_datasets.py rec det cls
    python benchmarks/quantize_scalar_affine.py --tasks det rec cls
    python benchmarks/quantize_scalar_affine.py --tasks det --model pruned_det.onnx --label "det pruned 50% MACs + distilled"

Every row quantizes the same model (the packaged one, or ``--model``: another model of that task,
such as a pruned and distilled detector) on the first ``--calib`` samples of
calibration/cache/<task>/calib with quantize's defaults (timing on, so ``auto`` measures both
forms at onnxruntime's default threads and at 1 thread) but for the form of the constant-scalar
Add/Mul, with the default accuracy budget (0.99) and without one. Scored on the task's held-out
split by its metric against the labels (rec, cls) or the FP32 model (det); every model timed in
one interleaved loop with FP32 at 1 and 2 threads (median of ``--runs``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.tasks import TASKS, Task, eval_feeds, first_samples, results_table, run_all, save_json, scored_and_timed  # noqa: E402
from onnxslim import QuantConfig, quantize  # noqa: E402

FORMS = ("float", "int8", "auto")


def bench(task: Task, model: Path, work: Path, calib_count: int, budgets: list[str], runs: int) -> list[dict]:
    calib = first_samples(task, calib_count, work / "calib")
    feeds = eval_feeds(task)
    reference = run_all(model, feeds)
    rows: list[tuple] = [("FP32", model, 0.0, {"worst_cosine_reported": 1.0})]
    for budget in budgets:
        for form in FORMS:
            out = work / f"{budget}-{form}.onnx"
            started = time.perf_counter()
            _, report = quantize(model, str(calib), config=QuantConfig(scalar_affine=form, accuracy_budget=None if budget == "none" else float(budget),
                                                                         if_slower="write"), output=out)
            extra = {"written": report.written, "kept_float_for_budget": len(report.kept_float_for_budget), "scalar_affine": report.scalar_affine,
                     "worst_cosine_reported": min(c.cosine for c in report.fidelity)}
            chose = f" (wrote {report.scalar_affine['written']})" if form == "auto" and report.scalar_affine else ""
            rows.append((f"budget {budget}, --scalar-affine {form}{chose}" + ("" if report.written == "int8" else f", wrote {report.written}"), out,
                         time.perf_counter() - started, extra))
            print(rows[-1][0], extra, flush=True)
    return scored_and_timed(task, rows, feeds, reference, runs=runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["det", "rec", "cls"], choices=("det", "rec", "cls"))
    parser.add_argument("--model", type=Path, default=None, help="quantize this model of the (single) task instead of the packaged one")
    parser.add_argument("--label", default=None, help="what --model is, for the table")
    parser.add_argument("--calib", type=int, default=64)
    parser.add_argument("--budgets", nargs="+", default=["0.99", "none"])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.model is not None and len(args.tasks) != 1:
        parser.error("--model goes with one task")
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in args.tasks:
            task = TASKS[name]
            model = args.model or task.model
            label = args.label or name
            results[label] = bench(task, model, Path(folder) / name, args.calib, args.budgets, args.runs)
            table = results_table(task, results[label], (("worst output cosine reported", "worst_cosine_reported"),))
            print(f"\n**{label}**\n\n{table}", flush=True)
    save_json(args.json or ROOT / "benchmarks" / "cache" / "quantize_scalar_affine.json", results)


if __name__ == "__main__":
    main()
