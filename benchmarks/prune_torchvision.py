"""Structured pruning coverage on torchvision's classification models: onnxslim (on the ONNX
export) against Torch-Pruning (on the PyTorch module), side by side.

    pip install torch==2.14.1 torchvision==0.29.1 torch-pruning   # in the benchmark environment
    python benchmarks/prune_torchvision.py --ratio 0.5 --models resnet18 mobilenet_v2 ...
    python benchmarks/prune_torchvision.py --ratio 0.5 --all --resume     # a journal lets a long run resume
    python benchmarks/prune_torchvision.py --ratio 0.5 --all --remeasure --runs 15   # time again, quieter
    python benchmarks/prune_torchvision.py --ratio 0.3 --all --tools onnxslim --runs 0   # coverage only

Weights are random (coverage and speed do not depend on them). For each model: export to ONNX
(opset 17), prune the export with `onnxslim.prune` with its defaults (l2 magnitude without data,
per group; kept channel counts at the multiple it measures fastest; the original written when the
pruned model is not faster: the `written` field says which), and prune the
module with Torch-Pruning's MagnitudePruner (L2, same ratio, classifier left whole) then export
that. Each result must run in onnxruntime with the original output shape. Parameter ratio and
latency ratio (interleaved medians against the unpruned export, 1 thread, batch 1) are reported.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.timing import median_latencies  # noqa: E402

WORK = ROOT / "benchmarks" / "cache" / "torchvision"
DEFAULT_MODELS = [
    "alexnet", "vgg11", "resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "densenet121", "googlenet", "squeezenet1_0",
    "mobilenet_v2", "mobilenet_v3_small", "mnasnet0_5", "shufflenet_v2_x0_5", "efficientnet_b0", "regnet_x_400mf", "regnet_y_400mf",
    "convnext_tiny", "vit_b_16", "swin_t",
]


def export(module, path: Path, size: int) -> None:
    import torch

    # the fused multi-head-attention fast path of eval mode has no ONNX export
    torch.backends.mha.set_fastpath_enabled(False)
    example = torch.randn(1, 3, size, size)
    with torch.no_grad():
        torch.onnx.export(module, (example,), str(path), input_names=["input"], output_names=["logits"], opset_version=17, dynamo=False)


def runs_with_shape(path: Path, reference_shape: tuple, size: int) -> bool:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {"input": np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)})[0]
    return tuple(out.shape) == tuple(reference_shape)


def torch_pruning(module, ratio: float, size: int):
    import torch
    import torch_pruning as tp

    example = torch.randn(1, 3, size, size)
    classifier = [m for m in module.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1000]
    pruner = tp.pruner.MagnitudePruner(module, example, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio, ignored_layers=classifier)
    pruner.step()
    return module


def reference(name: str):
    import torch
    import torchvision

    size = 299 if name.startswith("inception") else 224
    module = torchvision.models.get_model(name, weights=None).eval()
    with torch.no_grad():
        shape = tuple(module(torch.randn(1, 3, size, size)).shape)
    return module, size, shape


def run_tool(name: str, tool: str, ratio: float) -> dict:
    """One tool on one model, in this process; writes the pruned ONNX file and returns its entry."""
    from onnxslim import PruneConfig, prune

    WORK.mkdir(parents=True, exist_ok=True)
    module, size, shape = reference(name)
    base = WORK / f"{name}.onnx"
    start = time.perf_counter()
    try:
        if tool == "onnxslim":
            if not base.exists():  # one export per model, shared by every ratio
                export(module, base, size)
            target = WORK / f"{name}.onnxslim-{ratio}.onnx"
            # defaults: the channel multiple measured fastest, and the original kept when pruning is not faster
            _, report = prune(base, config=PruneConfig(ratio=ratio), output=target)
            entry = {
                "params": report.parameters[1] / report.parameters[0], "groups": f"{len(report.pruned_groups)}/{len(report.groups)}",
                "multiple": report.widths.multiple if report.widths else None, "written": report.written,
                "own_latency_ratio": report.latency.ratio if report.latency else None,
            }
        else:
            params0 = sum(p.numel() for p in module.parameters())
            pruned_module = torch_pruning(module, ratio, size)
            target = WORK / f"{name}.torch_pruning-{ratio}.onnx"
            export(pruned_module, target, size)
            entry = {"params": sum(p.numel() for p in pruned_module.parameters()) / params0}
        entry.update(ok=runs_with_shape(target, shape, size), seconds=time.perf_counter() - start, path=str(target))
        if not entry["ok"]:
            entry["error"] = "the pruned model's output shape changed"
        return entry
    except Exception as exc:  # a benchmark records failures instead of stopping
        message = str(exc).splitlines()[0][:160] if str(exc) else traceback.format_exc(limit=1)[-160:]
        return {"ok": False, "error": f"{type(exc).__name__}: {message}"}


def run_isolated(name: str, tool: str, ratio: float, timeout: int) -> dict:
    """``run_tool`` in a child process, so that a tool that crashes or exhausts memory costs one cell."""
    import subprocess

    command = [sys.executable, __file__, "--one", name, "--tool", tool, "--ratio", str(ratio)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"did not finish in {timeout // 60} minutes"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode == 0 and lines:
        return json.loads(lines[-1])
    reason = "killed (out of memory)" if done.returncode == -9 else f"the process crashed (exit code {done.returncode})"
    return {"ok": False, "error": reason}


def bench(name: str, ratio: float, runs: int, timeout: int, tools: list[str]) -> dict:
    row = {"model": name, "onnxslim": run_isolated(name, "onnxslim", ratio, timeout)}
    base = WORK / f"{name}.onnx"
    if "torch_pruning" not in tools:
        row["torch_pruning"] = {"ok": False, "error": "not run here (time)"}
    else:
        row["torch_pruning"] = run_isolated(name, "torch_pruning", ratio, timeout) if base.exists() else {"ok": False, "error": "no ONNX export"}
    return measure(row, runs) if runs > 0 else row


def measure(row: dict, runs: int) -> dict:
    """Latency ratios of both tools' results against the unpruned export, interleaved in one run."""
    name, base = row["model"], WORK / f"{row['model']}.onnx"
    candidates = {tool: Path(row[tool]["path"]) for tool in ("onnxslim", "torch_pruning") if row[tool].get("ok")}
    if candidates:
        size = 299 if name.startswith("inception") else 224
        feed = {"input": np.random.default_rng(1).standard_normal((1, 3, size, size)).astype(np.float32)}
        medians = median_latencies([base, *candidates.values()], feed, threads=1, runs=runs, warmup=3)
        for tool, ms in zip(candidates, medians[1:]):
            row[tool]["latency_ratio"] = ms / medians[0]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--tool", default="onnxslim", help=argparse.SUPPRESS)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--all", action="store_true", help="every torchvision classification model")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--timeout", type=int, default=1800, help="seconds for one tool on one model")
    parser.add_argument("--tools", nargs="+", default=["onnxslim", "torch_pruning"], help="onnxslim alone for a quick coverage pass (with --runs 0: no timing)")
    parser.add_argument("--resume", action="store_true", help="reuse the rows of models already measured at this ratio")
    parser.add_argument("--report-only", action="store_true", help="write the table from the rows already measured; run nothing")
    parser.add_argument("--remeasure", action="store_true", help="time the rows already measured again with --runs, then write the table")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_tool(args.one, args.tool, args.ratio)))
        return
    names = args.models
    if args.all:
        import torchvision

        names = torchvision.models.list_models(module=torchvision.models)
    journal = WORK / f"coverage_{args.ratio}.jsonl"
    done = {}
    if (args.resume or args.report_only or args.remeasure) and journal.exists():
        done = {row["model"]: row for row in map(json.loads, journal.read_text().splitlines())}
    elif journal.exists():
        journal.unlink()
    rows = []
    if args.remeasure:
        for name in names:
            if name in done:
                done[name] = measure(done[name], args.runs)
                print(json.dumps(done[name]), flush=True)
        journal.write_text("".join(json.dumps(row) + "\n" for row in done.values()))
        args.report_only = True
    for name in names:
        if args.report_only and name not in done:
            rows.append({"model": name, "onnxslim": {"ok": False, "error": "not run"}, "torch_pruning": {"ok": False, "error": "not run"}})
            continue
        row = done.get(name) or bench(name, args.ratio, args.runs, args.timeout, args.tools)
        if name not in done:
            with open(journal, "a") as handle:
                handle.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
        rows.append(row)
    (WORK / f"coverage_{args.ratio}.json").write_text(json.dumps(rows, indent=1))
    measured = [r for r in rows if r["onnxslim"].get("error") != "not run"]

    def cell(entry: dict) -> str:
        if not entry.get("ok"):
            return entry.get("error", "output shape changed")[:70]
        latency = f", latency {entry['latency_ratio']:.2f}" if "latency_ratio" in entry else ""
        how = f", multiple {entry['multiple']}" if entry.get("multiple") else ""
        if entry.get("written") == "original":
            how += ", original kept (pruned not faster)"
        return f"params {entry['params']:.2f}{latency}" + (f", groups {entry['groups']}" if "groups" in entry else "") + how

    lines = [f"| model | onnxslim at {args.ratio:.0%} | Torch-Pruning at {args.ratio:.0%} |", "|---|---|---|"]
    lines += [f"| {r['model']} | {cell(r['onnxslim'])} | {cell(r['torch_pruning'])} |" for r in rows]
    for tool in ("onnxslim", "torch_pruning"):
        tried = [r for r in measured if not r[tool].get("error", "").startswith("not run")]
        good = [r[tool] for r in tried if r[tool].get("ok")]
        ratios = [g["latency_ratio"] for g in good if "latency_ratio" in g]
        params = np.median([g["params"] for g in good]) if good else float("nan")
        latency = np.median(ratios) if ratios else float("nan")
        lines.append(f"\n{tool}: {len(good)}/{len(tried)} pruned and ran; median parameter ratio {params:.2f}; median latency ratio {latency:.2f}")
    both = [r for r in measured if r["onnxslim"].get("ok") and r["torch_pruning"].get("ok") and "latency_ratio" in r["onnxslim"] and "latency_ratio" in r["torch_pruning"]]
    if both:
        lines.append(
            f"\nwhere both ran ({len(both)} models): median latency ratio onnxslim {np.median([r['onnxslim']['latency_ratio'] for r in both]):.2f}, "
            f"Torch-Pruning {np.median([r['torch_pruning']['latency_ratio'] for r in both]):.2f}; median parameter ratio onnxslim "
            f"{np.median([r['onnxslim']['params'] for r in both]):.2f}, Torch-Pruning {np.median([r['torch_pruning']['params'] for r in both]):.2f}"
        )
    if len(measured) < len(rows):
        lines.append(f"\nnot run: {', '.join(r['model'] for r in rows if r not in measured)}")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.markdown:
        args.markdown.write_text(table)


if __name__ == "__main__":
    main()
