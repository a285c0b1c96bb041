"""MiniLM after onnxruntime's transformer optimizer: quantize on a graph of fused contrib operators, against the peer.

    python models/gather.py --minilm
    python calibration/make_datasets.py minilm
    python benchmarks/quantize_fused.py --runs 40 --json fused.json

onnxruntime's optimizer (``onnxruntime.transformers.optimizer``, model type bert) rewrites each layer into
com.microsoft operators (EmbedLayerNormalization, Attention, SkipLayerNormalization, BiasGelu): a model a
deployment pipeline often has before it quantizes. onnx's shape inference types nothing behind those operators.
Rows, all from that optimized model: FP32; ``onnxslim quantize`` with its defaults (the first ``--calib``
sentences of calibration/cache/minilm/calib); onnxruntime's ``quantize_dynamic`` (INT8 weights; it stops on this
graph unless told ``DefaultTensorType`` float) and the plain export's ``onnxslim quantize`` for reference; ``onnxslim prune``
of the FFN neurons (``--prune``, refit on the same sentences) of both forms. Scored by
sentence-embedding cosine against the optimized FP32 model on calibration/cache/minilm/eval, timed in one
interleaved loop per thread count against the optimized FP32 model (the plain export's row against the same).
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


def optimized(model: Path, out: Path) -> Path:
    from onnxruntime.transformers.optimizer import optimize_model

    optimize_model(str(model), model_type="bert", num_heads=12, hidden_size=384, opt_level=0).save_model_to_file(str(out))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calib", type=int, default=64)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--prune", type=float, default=0.3, help="FFN neurons pruned (--only channels) in both forms")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    task = TASKS["minilm"]
    feeds = eval_feeds(task)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        calib = first_samples(task, args.calib, work / "calib")
        fused = optimized(task.model, work / "fused.onnx")
        ops = sorted({n.op_type for n in onnx.load(str(fused), load_external_data=False).graph.node if n.domain == "com.microsoft"})
        print(f"optimized graph's contrib operators: {', '.join(ops)}", flush=True)
        rows = [("FP32, onnxruntime-optimized", fused, 0.0)]
        start = time.perf_counter()
        quantize(fused, str(calib), config=QuantConfig(), output=work / "onnxslim.onnx")
        rows.append(("onnxslim quantize (defaults)", work / "onnxslim.onnx", time.perf_counter() - start))
        start = time.perf_counter()
        quantize_dynamic(str(fused), str(work / "dynamic.onnx"), weight_type=QuantType.QInt8, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        rows.append(("onnxruntime quantize_dynamic (DefaultTensorType float)", work / "dynamic.onnx", time.perf_counter() - start))
        start = time.perf_counter()
        quantize(task.model, str(calib), config=QuantConfig(), output=work / "plain.onnx")
        rows.append(("onnxslim quantize (defaults) of the plain export", work / "plain.onnx", time.perf_counter() - start))
        for label, source in (("", fused), (" of the plain export", task.model)):
            start = time.perf_counter()
            config = PruneConfig(ratio=args.prune, only="channels", latency_runs=0)
            prune(source, str(calib), config=config, output=work / f"pruned{len(rows)}.onnx")
            rows.append((f"onnxslim prune --only channels --ratio {args.prune}{label}", work / f"pruned{len(rows)}.onnx", time.perf_counter() - start))
        results = scored_and_timed(task, rows, feeds, run_all(fused, feeds), runs=args.runs)
    print(results_table(task, results))
    if args.json:
        save_json(args.json, results)


if __name__ == "__main__":
    main()
