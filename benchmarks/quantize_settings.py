"""quantize with different settings on the same real model and data, side by side: what each setting buys.

    python calibration/make_datasets.py rec det cls minilm
    python benchmarks/quantize_settings.py --tasks det rec --settings scalar_affine=float scalar_affine=int8 scalar_affine=auto \\
        accuracy_budget=none,scalar_affine=float accuracy_budget=none,scalar_affine=int8 accuracy_budget=none,scalar_affine=auto
    python benchmarks/quantize_settings.py --tasks det --model pruned_det.onnx --label "det pruned 50% MACs + distilled" --settings ...
    python benchmarks/quantize_settings.py --tasks det --model pruned_det.onnx --against models/cache/ppocr_det.onnx --settings ...
    python benchmarks/quantize_settings.py --tasks minilm rec det --settings kept_float_weights=float32 kept_float_weights=float16
    python benchmarks/quantize_settings.py --tasks minilm rec cls table --settings smooth=none "" smooth=0.8

Each ``--settings`` entry is one quantize run: comma-separated QuantConfig fields (``none`` for
None) over quantize's defaults (timing on, so settings that measure, such as ``scalar_affine=auto``,
do) with ``if_slower=write``. Every run calibrates on the first ``--calib`` samples of
calibration/cache/<task>/calib and is scored on the task's held-out split by its metric (against the
labels for rec and cls, against the FP32 model, ``--model``, or ``--against``, for det and minilm); every
model is timed in one interleaved loop with that float model at 1 and 2 threads (median of ``--runs``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.tasks import TASKS, Task, eval_feeds, first_samples, results_table, run_all, save_json, scored_and_timed  # noqa: E402
from onnxslim import QuantConfig, quantize  # noqa: E402

FIELDS = {f.name: f for f in dataclasses.fields(QuantConfig)}


def parse_settings(text: str) -> dict:
    """'accuracy_budget=none,scalar_affine=int8' -> QuantConfig keyword arguments, typed by each field's declaration:
    a setting declared with a range takes a number unless the value is one of its words (``smooth=outliers``)."""
    settings = {}
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        if name not in FIELDS:
            raise SystemExit(f"--settings: QuantConfig has no field '{name}'")
        field = FIELDS[name]
        described = field.metadata.get("setting")
        ranged = described is not None and (described.low is not None or described.high is not None)
        words = (described.choices or ()) if described is not None else ()
        number = int if "int" in str(field.type) else float
        if value == "none":
            settings[name] = None
        elif isinstance(field.default, bool):
            settings[name] = value.lower() in ("1", "true", "yes")
        elif isinstance(field.default, (int, float)) or (ranged and value not in words):
            settings[name] = number(value)
        else:
            settings[name] = value
    return settings


def bench(task: Task, model: Path, work: Path, calib_count: int, variants: list[str], runs: int, against: Path | None = None) -> list[dict]:
    """``against``: the model every row is scored and timed against (default ``model``), e.g. the original of a pruned one."""
    calib = first_samples(task, calib_count, work / "calib")
    feeds = eval_feeds(task)
    reference = run_all(against or model, feeds)
    rows: list[tuple] = [("FP32", against or model, 0.0, {"worst_cosine_reported": 1.0})]
    if against is not None:
        rows.append(("the model quantized (float)", model, 0.0, {"worst_cosine_reported": 1.0}))
    for index, text in enumerate(variants):
        out = work / f"{index}.onnx"
        started = time.perf_counter()
        _, report = quantize(model, str(calib), config=QuantConfig(**({"if_slower": "write"} | parse_settings(text))), output=out)
        extra = {"written": report.written, "kept_float_for_budget": len(report.kept_float_for_budget), "scalar_affine": report.scalar_affine,
                 "depthwise": report.depthwise, "output_layers": report.output_layers,
                 "conv_kernel": {k: v for k, v in report.conv_kernel.items() if k != "layers"}, "worst_cosine_reported": min(c.cosine for c in report.fidelity), "settings": text}
        # what each form measured by default chose: the scalar affines and output layers, in the setting's label
        forms = [f"{label} {entry['written']}" for label, entry in (("scalar affines", report.scalar_affine), ("output layers", report.output_layers)) if entry]
        if report.conv_kernel.get("offset_nodes"):
            forms.append(f"{len(report.conv_kernel['offset_nodes'])} of {report.conv_kernel['candidates']} convolutions on the matrix product")
        chose = f" ({', '.join(forms)})" if forms else ""
        rows.append((f"{text or 'defaults'}{chose}" + ("" if report.written == "int8" else f", wrote {report.written}"), out, time.perf_counter() - started, extra))
        print(rows[-1][0], extra, flush=True)
    return scored_and_timed(task, rows, feeds, reference, runs=runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["det", "rec"], choices=sorted(TASKS))
    parser.add_argument("--settings", nargs="+", required=True, metavar="FIELD=VALUE[,FIELD=VALUE]", help="one quantize run each ('' for the defaults)")
    parser.add_argument("--model", type=Path, default=None, help="quantize this model of the (single) task instead of the packaged one")
    parser.add_argument("--label", default=None, help="what --model is, for the table")
    parser.add_argument("--against", type=Path, default=None, help="score and time every row against this model (default: the model quantized), "
                        "e.g. the packaged original of a pruned --model")
    parser.add_argument("--calib", type=int, default=64)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.model is not None and len(args.tasks) != 1:
        parser.error("--model goes with one task")
    for text in args.settings:
        parse_settings(text)  # fail before any work
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in args.tasks:
            task = TASKS[name]
            label = args.label or name
            results[label] = bench(task, args.model or task.model, Path(folder) / name, args.calib, args.settings, args.runs, args.against)
            table = results_table(task, results[label], (("worst output cosine reported", "worst_cosine_reported"),))
            print(f"\n**{label}**\n\n{table}", flush=True)
    save_json(args.json or ROOT / "benchmarks" / "cache" / "quantize_settings.json", results)


if __name__ == "__main__":
    main()
