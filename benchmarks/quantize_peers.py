"""onnxslim quantize against onnxruntime.quantization and NNCF on the packaged real models, side by side.

    python models/gather.py --minilm
    python calibration/make_datasets.py rec det cls minilm --calib 1024 --eval 200
    python benchmarks/quantize_peers.py --tasks rec det cls minilm --markdown docs/quantization-benchmark.md

Every tool gets the same calibration batches (the first N of calibration/cache/<task>/calib;
``ort-dynamic``, onnxruntime's quantize_dynamic, computes its ranges at run time and needs none)
and is scored on the same held-out evaluation set. Latency is the median of interleaved runs
of the FP32 model and every quantized model on one evaluation input (batch 1), at 1 and 2
threads. Calibration wall time and peak memory are measured in a fresh process per run.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.tasks import TASKS, eval_feeds, run_all, score  # noqa: E402
from benchmarks.timing import median_latencies  # noqa: E402

WORK = ROOT / "benchmarks" / "cache"
INTEGER_OPS = {"QuantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "DynamicQuantizeLSTM"}
TOOLS = ("onnxslim", "onnxslim-smooth", "ort-default", "ort-best", "ort-dynamic", "nncf-default")
SMOOTH = 0.8  # onnxslim-smooth: quantize --smooth 0.8


def calibration_batches(task, count: int) -> list[dict]:
    files = sorted(glob.glob(str(task.calib / "*.npz")))[:count]
    batches = []
    for path in files:
        with np.load(path) as archive:
            batches.append({k: archive[k] for k in archive.files})
    return batches


def run_tool(tool: str, task_name: str, count: int, target: Path) -> None:
    """Quantize in this process (called in a child process so that peak memory is its own)."""
    task = TASKS[task_name]
    files = sorted(glob.glob(str(task.calib / "*.npz")))[:count]
    if tool.startswith("onnxslim"):
        from onnxslim import QuantConfig, quantize
        from onnxslim.data.sources import NpzFolder

        source = NpzFolder(task.calib)
        source.files = [Path(f) for f in files]
        # every calibration batch is used for calibration; fidelity is checked on a few of them only
        smooth = {"smooth": SMOOTH} if tool == "onnxslim-smooth" else {}  # onnxslim: its default (--smooth outliers)
        quantize(task.model, source, output=target, config=QuantConfig(eval_fraction=0.0, latency_runs=20, if_slower="keep-fp32", **smooth))
        return
    if tool == "ort-dynamic":  # no calibration: activation ranges are computed at run time
        from onnxruntime.quantization import quantize_dynamic

        quantize_dynamic(str(task.model), str(target))
        return
    if tool.startswith("ort"):
        from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.items = iter(files)

            def get_next(self):
                path = next(self.items, None)
                if path is None:
                    return None
                with np.load(path) as archive:
                    return {k: archive[k] for k in archive.files}

        source = str(task.model)
        options = {}
        if tool == "ort-best":
            import onnx
            from onnxruntime.quantization.shape_inference import quant_pre_process

            from onnxslim.passes import constants_to_initializers, upgrade_opset

            model = onnx.load(source)
            constants_to_initializers(model)
            upgrade_opset(model, 13)
            upgraded = target.with_suffix(".opset13.onnx")
            onnx.save(model, str(upgraded))
            preprocessed = target.with_suffix(".pre.onnx")
            try:
                quant_pre_process(str(upgraded), str(preprocessed), skip_symbolic_shape=True)
                source = str(preprocessed)
            except Exception:  # pre-processing is optional; the recipe goes on without it
                source = str(upgraded)
            options = dict(activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True, calibrate_method=CalibrationMethod.Percentile)
        quantize_static(source, str(target), Reader(), quant_format=QuantFormat.QDQ, **options)
        return
    if tool == "nncf-default":
        import nncf
        import onnx

        model = onnx.load(str(task.model))
        batches = calibration_batches(task, count)
        quantized = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches))
        onnx.save(quantized, str(target))
        return
    raise SystemExit(f"unknown tool {tool}")


def measured_run(tool: str, task_name: str, count: int, target: Path, timeout: int) -> dict:
    command = [sys.executable, __file__, "--child", tool, task_name, str(count), str(target)]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"did not finish in {timeout} s"}
    seconds = time.perf_counter() - start
    if done.returncode < 0:
        return {"ok": False, "error": f"killed by signal {-done.returncode} (out of memory)" if done.returncode == -9 else f"killed by signal {-done.returncode}", "seconds": seconds}
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["?"])[-1][:200]
        return {"ok": False, "error": tail, "seconds": seconds}
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    return {"ok": True, "seconds": seconds, "peak_rss_mb": stats["peak_rss_mb"]}


def bench_task(task_name: str, tools: list[str], sizes: list[int], threads: list[int], runs: int, timeout: int) -> dict:
    task = TASKS[task_name]
    out_dir = WORK / task_name
    out_dir.mkdir(parents=True, exist_ok=True)
    feeds = eval_feeds(task)
    reference = run_all(task.model, feeds)
    result = {"task": task_name, "metric": task.metric, "fp32": score(task, reference, reference, feeds), "eval_samples": len(feeds), "tools": {}}
    main_size = sizes[0]
    for tool in tools:
        entry: dict = {"calibration": {}}
        for count in sizes:
            target = out_dir / f"{tool}-{count}.onnx"
            run = measured_run(tool, task_name, count, target, timeout)
            entry["calibration"][str(count)] = run
            print(f"{task_name} {tool} {count} samples: {run}", flush=True)
        target = out_dir / f"{tool}-{main_size}.onnx"
        if entry["calibration"][str(main_size)].get("ok"):
            outputs = run_all(target, feeds)
            entry["metric"] = score(task, outputs, reference, feeds)
            entry["size_mb"] = target.stat().st_size / 1e6
            import onnx

            entry["int8"] = any(n.op_type in INTEGER_OPS for n in onnx.load(str(target)).graph.node)
        result["tools"][tool] = entry
    feed = feeds[0]
    ok_tools = [t for t in tools if "metric" in result["tools"][t]]
    for count in threads:
        medians = median_latencies([task.model] + [out_dir / f"{t}-{main_size}.onnx" for t in ok_tools], feed, threads=count, runs=runs)
        result.setdefault("fp32_ms", {})[str(count)] = medians[0]
        for tool, ms in zip(ok_tools, medians[1:]):
            result["tools"][tool].setdefault("latency_ratio", {})[str(count)] = ms / medians[0]
    result["fp32_size_mb"] = task.model.stat().st_size / 1e6
    return result


def markdown(results: list[dict], sizes: list[int], threads: list[int]) -> str:
    lines = ["| model (metric) | FP32 | tool | metric | latency INT8/FP32 " + " / ".join(f"{t}T" for t in threads) + " | size MB | "
             + " | ".join(f"calib {s}: s, peak MB" for s in sizes) + " |"]
    lines.append("|" + "---|" * (5 + len(sizes) + 1))
    for result in results:
        for tool, entry in result["tools"].items():
            metric = f"{entry['metric']:.4f}" if "metric" in entry else "failed"
            if entry.get("int8") is False:
                metric += " (wrote the cleaned FP32 model: INT8 was not faster)"
            ratio = " / ".join(f"{entry['latency_ratio'][str(t)]:.2f}" for t in threads) if "latency_ratio" in entry else "-"
            size = f"{entry['size_mb']:.2f}" if "size_mb" in entry else "-"
            calib = []
            for count in sizes:
                run = entry["calibration"].get(str(count), {})
                calib.append(f"{run['seconds']:.0f} s, {run['peak_rss_mb']:.0f}" if run.get("ok") else f"failed: {run.get('error', '?')[:60]}")
            lines.append(f"| {result['task']} ({result['metric']}) | {result['fp32']:.4f} | {tool} | {metric} | {ratio} | {size} | " + " | ".join(calib) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        tool, task_name, count, target = sys.argv[2], sys.argv[3], int(sys.argv[4]), Path(sys.argv[5])
        run_tool(tool, task_name, count, target)
        # VmHWM belongs to this process image alone; ru_maxrss would include the parent's size at fork
        peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
        print(json.dumps({"peak_rss_mb": peak_kb / 1024.0}))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["rec", "det", "cls", "minilm"], choices=sorted(TASKS))
    parser.add_argument("--tools", nargs="+", default=list(TOOLS), choices=TOOLS)
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 256, 1024], help="calibration sample counts; the first is scored")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--timeout", type=int, default=1800)
    parser.add_argument("--json", type=Path, default=WORK / "quantize_peers.json")
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    results = [bench_task(t, args.tools, args.sizes, args.threads, args.runs, args.timeout) for t in args.tasks]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))
    table = markdown(results, args.sizes, args.threads)
    print(table)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table)


if __name__ == "__main__":
    main()
