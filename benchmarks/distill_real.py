"""Pruning with and without distillation on real pretrained models, scored on held-out data.

    python calibration/make_datasets.py rec                     # the 200 held-out lines (calibration/cache/rec/eval)
    python benchmarks/distill_real.py --train 1000 --ratios 0.3,0.5 --time-budget 12
    python benchmarks/distill_real.py --task minilm --train 12000 --ratios 0.5 --time-budget 30 --lr 4e-4
    python benchmarks/distill_real.py --task det --train 800 --ratios 0.5 --by macs --time-budget 15
    python benchmarks/distill_real.py --task minilm --train 12000 --ratios 0.5 --heads-scope global --prune-samples 4000 --time-budget 30 --epochs 40 --lr 8e-4
    python benchmarks/distill_real.py --task minilm --train 12000 --ratios 0.5 --only channels --prune-samples 4000 --time-budget 25 --epochs 40 --lr 8e-4
    python benchmarks/distill_real.py --task minilm --ratios 0.5 --train-data DIR --student p50.onnx --device cuda --time-budget 5 --epochs 60 --lr 8e-4 --runs 0

PP-OCRv4 rec is scored by char accuracy on the 200 held-out lines; all-MiniLM-L6-v2 by
sentence-embedding cosine to FP32 on 200 held-out sentences, and pruned in two steps:
``--ratio`` of the attention heads (of each layer's, or with ``--heads-scope global`` of all of
them), then ``--ratio`` of the FFN neurons (``--only channels``: the FFN neurons alone, every head kept);
PP-OCRv4 det by text-mask IoU against FP32 on 200 held-out 480x480 images.
``--by macs`` removes that share of the multiply-accumulates instead of each
group's channels.

Training lines are rendered apart from the held-out ones (``--train`` of them,
into a folder of their own); distill holds out 1 in 5 of them to pick its best
epoch, so the held-out set scores models that never saw it nor were chosen on
it. Each ratio: ``prune`` (activation ranking, refit on the first ``--prune-samples``
training lines), then ``distill`` toward the original, then ``quantize`` (64 lines);
every model is scored and timed interleaved with FP32 and with ``quantize``
alone (median of ``--runs``) at 1 and 2 threads. Needs the distill extra.
Results: docs/distill-benchmark.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.tasks import TASKS, eval_feeds, results_table, run_all, save_json, scored_and_timed  # noqa: E402
from calibration.make_datasets import make  # noqa: E402
from onnxslim import DistillConfig, PruneConfig, QuantConfig, distill, prune, quantize  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="rec", choices=("rec", "minilm", "det"))
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--ratios", default="0.3,0.5")
    parser.add_argument("--by", default="channels", choices=("channels", "macs"), help="what --ratios removes: each group's channels, or the model's multiply-accumulates")
    parser.add_argument("--only", default="all", choices=("all", "heads", "channels"),
                        help="prune --only (MiniLM's default: the heads, then the FFN neurons, each at --ratios; channels: the FFN neurons alone)")
    parser.add_argument("--heads-scope", default="local", choices=("local", "global"),
                        help="prune --scope of the heads step (global: each layer keeps as many heads as their importance earns, "
                             "--ratios of all heads go)")
    parser.add_argument("--time-budget", type=float, default=12.0, help="minutes of distillation per ratio")
    parser.add_argument("--epochs", type=int, default=20, help="at most this many epochs per ratio")
    parser.add_argument("--lr", type=float, default=None, help="distill's learning rate (default: distill's own)")
    parser.add_argument("--prune-samples", type=int, default=64, help="training samples prune refits on (its own default: all of them)")
    parser.add_argument("--lr-schedule", default=None, choices=("constant", "cosine"), help="distill's learning-rate schedule (default: distill's own)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="distill --train-device (auto: the GPU when torch sees one)")
    parser.add_argument("--teacher-memory-mb", type=float, default=None, help="distill --teacher-memory-mb (default: distill's own)")
    parser.add_argument("--train-data", type=Path, default=None, help="a training folder made earlier (make_datasets' calib split) instead of rendering --train samples")
    parser.add_argument("--student", type=Path, default=None, help="a pruned student made earlier (one ratio): distill it instead of pruning")
    parser.add_argument("--runs", type=int, default=40, help="timing runs per model and thread count (0: score only, not timed)")
    parser.add_argument("--json", default=None, help="default: benchmarks/cache/distill_<task>.json")
    parser.add_argument("--keep", type=Path, default=None, help="copy every model built into this folder (to quantize or time again later)")
    args = parser.parse_args()
    if args.student is not None and "," in args.ratios:
        parser.error("--student is one pruned model: give the one ratio it was pruned at in --ratios")
    task = TASKS[args.task]
    feeds = eval_feeds(task)
    reference = run_all(task.model, feeds)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        train = args.train_data or make(args.task, args.train, 8, root=work / "data") / "calib"
        rows = [("FP32", task.model, 0.0)]
        started = time.time()
        quantize(task.model, str(train), config=QuantConfig(max_calibration_samples=64), output=work / "int8.onnx")
        rows.append(("quantize", work / "int8.onnx", time.time() - started))
        notes = {}
        for ratio in (float(r) for r in args.ratios.split(",")):
            tag = f"{ratio:.0%}" + (" MACs" if args.by == "macs" else "")
            started = time.time()
            steps = ("heads", "channels") if args.task == "minilm" and args.only == "all" else (args.only,)
            source = task.model
            if args.student is not None:
                steps = ()
                shutil.copy(args.student, work / f"p{tag}.onnx")
            for index, only in enumerate(steps):
                target = work / (f"p{tag}.onnx" if index == len(steps) - 1 else f"p{tag}.{only}.onnx")
                amount = {"target_macs": 1.0 - ratio} if args.by == "macs" else {"ratio": ratio}
                # prune's own defaults otherwise: channel counts on the multiple measured fastest here, never slower than the original
                scope = {"scope": args.heads_scope} if only == "heads" else {}
                _, pruned = prune(source, str(train), config=PruneConfig(**amount, **scope, only=only, max_calibration_samples=args.prune_samples), output=target)
                notes.setdefault(tag, {})[f"prune {only}"] = {"written": pruned.written, "multiple": pruned.widths.multiple if pruned.widths else None, "warnings": pruned.warnings}
                source = target
            rows.append((f"prune {tag}" + (" (given)" if args.student else ""), work / f"p{tag}.onnx", time.time() - started))
            started = time.time()
            schedule = {"lr_schedule": args.lr_schedule} if args.lr_schedule else {}
            memory = {"teacher_memory_mb": args.teacher_memory_mb} if args.teacher_memory_mb is not None else {}
            config = DistillConfig(epochs=args.epochs, time_budget=args.time_budget, lr=args.lr, train_device=args.device, **schedule, **memory)
            _, report = distill(work / f"p{tag}.onnx", task.model, str(train), config=config, output=work / f"d{tag}.onnx")
            rows.append((f"prune {tag} + distill", work / f"d{tag}.onnx", time.time() - started))
            notes.setdefault(tag, {})
            notes[tag] |= {"epochs": [e.to_dict() for e in report.epochs], "best_epoch": report.best_epoch, "score_before": report.score_before, "score_after": report.score_after,
                           "train_device": report.train_device, "warnings": report.warnings}
            started = time.time()
            quantize(work / f"d{tag}.onnx", str(train), config=QuantConfig(max_calibration_samples=64), output=work / f"d{tag}.int8.onnx")
            rows.append((f"prune {tag} + distill + quantize", work / f"d{tag}.int8.onnx", time.time() - started))
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            for _, path, _ in rows[1:]:
                shutil.copy(path, args.keep / Path(path).name)
        results = scored_and_timed(task, rows, feeds, reference, runs=args.runs)
    print(results_table(task, results))
    save_json(args.json or ROOT / "benchmarks" / "cache" / f"distill_{args.task}.json", {"rows": results, "distill": notes})


if __name__ == "__main__":
    main()
