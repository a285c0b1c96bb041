"""Models that onnxruntime itself rewrote before onnxslim sees them: fused contrib operators instead of standard ones.

    python models/gather.py --minilm
    python calibration/make_datasets.py minilm det
    python benchmarks/quantize_fused.py --tasks minilm minilm_saved det --runs 40 --json fused.json

- minilm: all-MiniLM-L6-v2 through onnxruntime's transformer optimizer (``onnxruntime.transformers.optimizer``, model
  type bert), which rewrites each layer into com.microsoft operators (EmbedLayerNormalization, Attention,
  SkipLayerNormalization, BiasGelu): what a deployment pipeline often has before it quantizes. Rows: that model in FP32;
  ``onnxslim quantize`` with its defaults; onnxruntime's ``quantize_dynamic`` (INT8 weights; it stops on this graph unless
  told ``DefaultTensorType`` float); ``onnxslim prune --only channels --ratio`` ``--prune`` (the FFN neurons, refit on the
  calibration sentences) of the optimized model and of the plain export; ``onnxslim prune --only heads --ratio`` ``--heads``
  (the heads, through the fused Attention) of both; the plain export's ``onnxslim quantize``.
  Scored by sentence-embedding cosine against the optimized FP32 model on calibration/cache/minilm/eval.
- minilm_saved: all-MiniLM-L6-v2 as an onnxruntime session saves it at its 'extended' level (LayerNormalization below
  opset 17, FusedMatMul for the attention scores, BiasGelu). Rows: that model in FP32; ``onnxslim quantize`` of it and of
  the plain export.
- det: PP-OCRv4's text detector as an onnxruntime session saves it at its 'extended' optimization level (com.microsoft
  FusedConv: convolutions with their activation). Rows: that model in FP32; ``onnxslim quantize`` of it and of the
  detector as shipped. Scored by text-mask IoU against the saved FP32 model on calibration/cache/det/eval.

Every row is timed in one interleaved loop per thread count against the first row's model (median of ``--runs``);
calibration on the first ``--calib`` samples of calibration/cache/<task>/calib.
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

from benchmarks.tasks import TASKS, eval_feeds, first_samples, results_table, run_all, save_json, scored_and_timed  # noqa: E402
from onnxslim import PruneConfig, QuantConfig, prune, quantize  # noqa: E402


def transformer_optimized(model: Path, out: Path) -> Path:
    from onnxruntime.transformers.optimizer import optimize_model

    optimize_model(str(model), model_type="bert", num_heads=12, hidden_size=384, opt_level=0).save_model_to_file(str(out))
    return out


def saved_by_a_session(model: Path, out: Path) -> Path:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(out)
    ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    return out


def timed(label: str, build, path: Path) -> tuple[str, Path, float]:
    start = time.perf_counter()
    build(path)
    return label, path, time.perf_counter() - start


def bench(task_name: str, work: Path, calib_count: int, prune_ratio: float, heads_ratio: float, runs: int) -> list[dict]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    task = TASKS["minilm" if task_name.startswith("minilm") else task_name]
    feeds = eval_feeds(task)
    calib = str(first_samples(task, calib_count, work / f"{task_name}-calib"))
    if task_name == "minilm":
        fused = transformer_optimized(task.model, work / "minilm-fused.onnx")
    else:
        fused = saved_by_a_session(task.model, work / f"{task_name}-fused.onnx")
    ops = sorted({n.op_type for n in onnx.load(str(fused), load_external_data=False).graph.node if n.domain == "com.microsoft"})
    print(f"{task_name}: contrib operators of the rewritten model: {', '.join(ops)}", flush=True)
    rows = [("FP32, rewritten by onnxruntime", fused, 0.0)]
    rows.append(timed("onnxslim quantize (defaults)", lambda out: quantize(fused, calib, config=QuantConfig(), output=out), work / f"{task_name}-q.onnx"))
    if task_name == "minilm":
        rows.append(timed(
            "onnxruntime quantize_dynamic (DefaultTensorType float)",
            lambda out: quantize_dynamic(str(fused), str(out), weight_type=QuantType.QInt8, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT}),
            work / "minilm-dynamic.onnx",
        ))
        config = PruneConfig(ratio=prune_ratio, only="channels", latency_runs=0)
        rows.append(timed(f"onnxslim prune --only channels --ratio {prune_ratio}", lambda out: prune(fused, calib, config=config, output=out),
                          work / "minilm-pruned.onnx"))
        rows.append(timed(f"onnxslim prune --only channels --ratio {prune_ratio} of the plain export",
                          lambda out: prune(task.model, calib, config=config, output=out), work / "minilm-plain-pruned.onnx"))
        heads = PruneConfig(ratio=heads_ratio, only="heads", latency_runs=0)
        rows.append(timed(f"onnxslim prune --only heads --ratio {heads_ratio}", lambda out: prune(fused, calib, config=heads, output=out),
                          work / "minilm-heads.onnx"))
        rows.append(timed(f"onnxslim prune --only heads --ratio {heads_ratio} of the plain export",
                          lambda out: prune(task.model, calib, config=heads, output=out), work / "minilm-plain-heads.onnx"))
    rows.append(timed("onnxslim quantize (defaults) of the model as shipped", lambda out: quantize(task.model, calib, config=QuantConfig(), output=out),
                      work / f"{task_name}-plain-q.onnx"))
    results = scored_and_timed(task, rows, feeds, run_all(fused, feeds), runs=runs)
    print(results_table(task, results), flush=True)
    return [{"task": task_name, **r} for r in results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["minilm", "minilm_saved", "det"], choices=["minilm", "minilm_saved", "det"])
    parser.add_argument("--calib", type=int, default=64)
    parser.add_argument("--prune", type=float, default=0.3, help="MiniLM: share of the FFN neurons pruned (--only channels), both forms")
    parser.add_argument("--heads", type=float, default=0.5, help="MiniLM: share of the attention heads pruned (--only heads), both forms")
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            results += bench(task, Path(tmp), args.calib, args.prune, args.heads, args.runs)
    if args.json:
        save_json(args.json, results)


if __name__ == "__main__":
    main()
