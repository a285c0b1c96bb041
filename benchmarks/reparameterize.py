"""Multi-branch blocks exported as trained: onnxslim's merge of parallel convolutions against timm's own re-parameterization.

    pip install -e ".[bench]" torch==2.14.1 torchvision==0.29.1 timm
    python benchmarks/reparameterize.py --models mobileone_s0 repvgg_a0 repvit_m0_9 fastvit_t8 --runs 30

RepVGG, MobileOne, RepViT and FastViT train several parallel branches per block (convolutions of one
input, an identity or batch-normalized shortcut) and are meant to be folded into one convolution per
block before deployment, with the training code (timm's ``reparameterize_model``). Each model (random
weights, BatchNorm statistics from a few training-mode passes so outputs are not constant) is exported
twice with torch's TorchScript exporter: as trained, and after timm's re-parameterization (the peer:
what a user with the training code gets). The first goes through ``onnxslim optimize`` (which merges the
branches) and ``onnxslim quantize --data random``. Rows: nodes, parameters, the largest output difference
relative to the largest output of the export as trained (random inputs, several), and FP32 latency as a
ratio to the export as trained, every model of a row's group timed in one interleaved loop (median of
``--runs``) at 1 thread and at onnxruntime's default. Random weights prove graph coverage, equality and
latency only, never task accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.timing import median_latencies  # noqa: E402
from benchmarks.unseen_exports import settle_batchnorm  # noqa: E402
from onnxslim import QuantConfig, optimize, quantize  # noqa: E402
from onnxslim.ir.counts import count_parameters  # noqa: E402
from onnxslim.ir.io import load_model  # noqa: E402
from onnxslim.runtime import Runner  # noqa: E402

WORK = ROOT / "benchmarks" / "cache" / "reparameterize"


def export_both(name: str, trained: Path, folded: Path) -> None:
    """``name`` exported as trained and after timm's re-parameterization (the same weights)."""
    import timm
    import torch
    from timm.utils.model import reparameterize_model

    torch.manual_seed(0)
    module = timm.create_model(name, pretrained=False).eval()
    example = torch.randn(1, 3, 224, 224)
    settle_batchnorm(module, example)
    with torch.no_grad():
        torch.onnx.export(module, (example,), str(trained), input_names=["input"], opset_version=17, dynamo=False)
        torch.onnx.export(reparameterize_model(module), (example,), str(folded), input_names=["input"], opset_version=17, dynamo=False)


def largest_difference(reference: Path, candidate: Path, feeds: list[dict]) -> float:
    """The largest absolute output difference over ``feeds``, relative to the reference's largest output value."""
    ref, cand = Runner(str(reference), label="reference"), Runner(str(candidate), label="candidate")
    worst, scale = 0.0, 0.0
    for feed in feeds:
        for a, b in zip(ref.run(feed), cand.run(feed)):
            worst, scale = max(worst, float(np.abs(a - b).max())), max(scale, float(np.abs(a).max()))
    return worst / scale if scale else worst


def bench(name: str, runs: int) -> list[dict]:
    trained, folded, optimized, quantized = (WORK / f"{name}.{kind}.onnx" for kind in ("trained", "timm_reparameterized", "optimized", "int8"))
    if not (trained.exists() and folded.exists()):
        export_both(name, trained, folded)
    _, optimize_report = optimize(str(trained), str(optimized))
    merged = sum(len(r.changes) for r in optimize_report.passes if r.name == "parallel-convs-as-one")
    _, quantize_report = quantize(str(trained), "random", config=QuantConfig(if_slower="write"), output=quantized)
    rng = np.random.default_rng(0)
    feeds = [{"input": rng.normal(size=(1, 3, 224, 224)).astype(np.float32)} for _ in range(4)]
    forms = [("exported as trained", trained), ("timm reparameterize_model, then exported (peer)", folded),
             (f"onnxslim optimize ({merged} Adds merged)", optimized), ("onnxslim quantize --data random (INT8)", quantized)]
    at_one = median_latencies([path for _, path in forms], feeds[0], threads=1, runs=runs)
    at_default = median_latencies([path for _, path in forms], feeds[0], threads=0, runs=runs)
    rows = []
    for (label, path), one, default in zip(forms, at_one, at_default):
        model = load_model(str(path))
        rows.append({"model": name, "form": label, "nodes": len(model.graph.node), "parameters": count_parameters(model),
                     "largest_difference": largest_difference(trained, path, feeds) if path != quantized else None,
                     "worst_cosine_reported": min(c.cosine for c in quantize_report.fidelity) if path == quantized else None,
                     "ms_1_thread": one, "ratio_1_thread": one / at_one[0], "ms_default": default, "ratio_default": default / at_default[0]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mobileone_s0", "repvgg_a0", "repvit_m0_9", "fastvit_t8"])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--json", type=Path, default=WORK / "reparameterize.json")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    rows = []
    print("| model | form | nodes | parameters | largest difference | latency 1T | latency default threads |\n|---|---|---|---|---|---|---|")
    for name in args.models:
        try:
            measured = bench(name, args.runs)
        except Exception as exc:  # an exporter's or a command's failure is a row of the table, not the end of the run
            rows.append({"model": name, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
            print(f"| {name} | failed: {rows[-1]['error']} | | | | | |", flush=True)
            continue
        for row in measured:
            rows.append(row)
            difference = f"{row['largest_difference']:.1e}" if row["largest_difference"] is not None else f"cosine {row['worst_cosine_reported']:.4f} (its report)"
            print(f"| {name} | {row['form']} | {row['nodes']} | {row['parameters']:,} | {difference} | {row['ratio_1_thread']:.2f}x "
                  f"| {row['ratio_default']:.2f}x |", flush=True)
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
