"""all-MiniLM-L6-v2 INT8: onnxslim against onnxruntime's dynamic quantization, per exporter, and the layer-norm kernels.

    python models/gather.py --minilm
    python calibration/make_datasets.py minilm
    python benchmarks/transformer_latency.py --exporters torchscript dynamo
    python benchmarks/transformer_latency.py --layernorm

For each exporter (TorchScript: models/cache/minilm.onnx; dynamo: the same module
exported with torch.export), quantize with onnxslim's defaults on the cached
calibration sentences and with onnxruntime's quantize_dynamic, score both on the
200 held-out sentences (embedding cosine against FP32), and time FP32, the dynamic
model and onnxslim's in one loop: ``--rounds`` rounds of ``--runs`` runs each, the
order of the models reversed every other round (the position in a loop alone moves a
model by a few percent on a shared machine), at 1 and 2 threads, on the first
held-out sentence (32 tokens) and on a 128-token input. Ratios are to the dynamic
model, median over rounds.

``--layernorm``: onnxruntime's SkipLayerNormalization against Add + LayerNormalization
(optimizations off, so it stays unfused) and Sum + LayerNormalization (optimizations
on, which leave it unfused), one thread, at a few transformer shapes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.tasks import TASKS, eval_feeds, run_all, score  # noqa: E402
from benchmarks.timing import median_latencies  # noqa: E402
from onnxslim import QuantConfig, quantize  # noqa: E402

LONG = 128  # tokens of the longer input


def dynamo_export(target: Path) -> Path:
    import torch

    from models.minilm_export import load_minilm

    example = (torch.ones(1, 16, dtype=torch.int64), torch.ones(1, 16, dtype=torch.int64), torch.zeros(1, 16, dtype=torch.int64))
    batch, sequence = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("sequence", min=2, max=512)
    with torch.no_grad():
        torch.onnx.export(load_minilm(), example, str(target), input_names=["input_ids", "attention_mask", "token_type_ids"],
                          output_names=["last_hidden_state"], dynamic_shapes=({0: batch, 1: sequence},) * 3, dynamo=True, external_data=False)
    return target


def long_input(feeds: list[dict]) -> dict:
    """The held-out sentences' real tokens one after another, cut to LONG: a 128-token input of real text."""
    ids = np.concatenate([f["input_ids"][0][f["attention_mask"][0].astype(bool)] for f in feeds])[:LONG][None, :]
    return {"input_ids": ids.astype(np.int64), "attention_mask": np.ones_like(ids, np.int64), "token_type_ids": np.zeros_like(ids, np.int64)}


def compare(fp32: Path, work: Path, args) -> list[str]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    task = TASKS["minilm"]
    ours, dynamic = work / f"{fp32.stem}.onnxslim.onnx", work / f"{fp32.stem}.dynamic.onnx"
    quantize(fp32, str(task.calib), config=QuantConfig(), output=ours)
    quantize_dynamic(str(fp32), str(dynamic), weight_type=QuantType.QInt8)
    models = {"FP32": fp32, "onnxruntime dynamic": dynamic, "onnxslim": ours}
    feeds = eval_feeds(task)
    reference = run_all(fp32, feeds)
    lines = [f"embedding cosine vs FP32 on {len(feeds)} held-out sentences: "
             + ", ".join(f"{label} {score(task, run_all(path, feeds), reference, feeds):.5f}" for label, path in models.items() if label != "FP32"),
             "", "| input | threads | onnxslim | FP32 |", "|---|---|---|---|"]
    for label, feed in ((f"{feeds[0]['input_ids'].shape[1]} tokens", feeds[0]), (f"{LONG} tokens", long_input(feeds))):
        for threads in args.threads:
            ratios: dict[str, list[float]] = {name: [] for name in models}
            for round_index in range(args.rounds):
                names = list(models) if round_index % 2 == 0 else list(reversed(models))
                ms = dict(zip(names, median_latencies([models[n] for n in names], feed, threads=threads, runs=args.runs)))
                for name in models:
                    ratios[name].append(ms[name] / ms["onnxruntime dynamic"])
            lines.append(f"| {label} | {threads} | {statistics.median(ratios['onnxslim']):.3f}x | {statistics.median(ratios['FP32']):.2f}x |")
    return lines


def layernorm_kernels(shapes=((1, 32, 384), (1, 128, 384), (1, 128, 768), (1, 512, 1024)), rounds: int = 7, runs: int = 200) -> list[str]:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    def session(shape, form: str):
        width = shape[-1]
        inits = [numpy_helper.from_array(np.ones(width, np.float32), "gamma"), numpy_helper.from_array(np.zeros(width, np.float32), "beta")]
        if form == "SkipLayerNormalization":
            nodes = [helper.make_node("SkipLayerNormalization", ["a", "b", "gamma", "beta"], ["y"], domain="com.microsoft")]
        else:
            nodes = [helper.make_node(form.split(" ")[0], ["a", "b"], ["s"]), helper.make_node("LayerNormalization", ["s", "gamma", "beta"], ["y"], axis=-1)]
        graph = helper.make_graph(nodes, "layernorm", [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(shape)) for n in "ab"],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        if form.startswith("Add"):  # left to itself onnxruntime would fuse it into the first form
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    forms = ("SkipLayerNormalization", "Add + LayerNormalization", "Sum + LayerNormalization")
    lines = ["| input | " + " | ".join(forms) + " |", "|---|---|---|---|"]
    rng = np.random.default_rng(0)
    for shape in shapes:
        feed = {n: rng.standard_normal(shape).astype(np.float32) for n in "ab"}
        sessions = {form: session(shape, form) for form in forms}
        micros: dict[str, list[float]] = {form: [] for form in forms}
        for _ in range(rounds):
            for form, s in sessions.items():
                s.run(None, feed)
                start = time.perf_counter()
                for _ in range(runs):
                    s.run(None, feed)
                micros[form].append((time.perf_counter() - start) / runs * 1e6)
        lines.append(f"| {shape} | " + " | ".join(f"{statistics.median(micros[f]):.1f} us" for f in forms) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exporters", nargs="+", default=["torchscript", "dynamo"], choices=["torchscript", "dynamo"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--layernorm", action="store_true", help="only the layer-norm kernel comparison")
    args = parser.parse_args()
    if args.layernorm:
        print("\n".join(layernorm_kernels()))
        return
    with tempfile.TemporaryDirectory(prefix="onnxslim-transformer-") as folder:
        work = Path(folder)
        for exporter in args.exporters:
            fp32 = ROOT / "models" / "cache" / "minilm.onnx" if exporter == "torchscript" else dynamo_export(work / "minilm.dynamo.onnx")
            print(f"\n### {exporter} export (latency as a ratio to onnxruntime's dynamic model)\n")
            print("\n".join(compare(fp32, work, args)), flush=True)


if __name__ == "__main__":
    main()
