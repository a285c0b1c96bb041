"""INT8 on PReLU nets (face-recognition IResNets): onnxslim against onnxruntime.quantization, side by side.

    pip install torch==2.13.0
    python benchmarks/quantize_prelu.py --depths 50 --threads 1 2

An IResNet as insightface's ArcFace models build it (112x112 faces in, a 512-vector out; each block
BatchNorm, 3x3 convolution, BatchNorm, PReLU, 3x3 convolution, BatchNorm, plus the shortcut),
written here in torch with random weights: BatchNorm statistics from a few training-mode passes
and PReLU slopes drawn in [0.05, 0.4] (torch starts them at 0.25). These rows prove graph coverage
and latency, not task accuracy. Each model is calibrated on ``--calib`` random faces; output cosine
is measured on ``--eval`` others (the lowest per face). Latency: FP32 and every INT8 model
interleaved, median of ``--runs``, at each thread count. ``onnxslim, PRelu in float`` is onnxslim
with ``--exclude-op-types PRelu``, the float PRelu between a DequantizeLinear and a QuantizeLinear
that onnxruntime's quantizer writes too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.gpu_fp16 import random_inputs  # noqa: E402
from benchmarks.quantize_silu import measured, onnxruntime_static, run_benchmarks  # noqa: E402
from onnxslim import QuantConfig, quantize  # noqa: E402

LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}


def iresnet(depth: int):
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c_in: int, c_out: int, stride: int):
            super().__init__()
            self.body = nn.Sequential(nn.BatchNorm2d(c_in), nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out), nn.PReLU(c_out),
                                      nn.Conv2d(c_out, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out))
            self.shortcut = None if stride == 1 and c_in == c_out else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

        def forward(self, x):
            return self.body(x) + (x if self.shortcut is None else self.shortcut(x))

    class IResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
            blocks, c_in = [], 64
            for c_out, count in zip((64, 128, 256, 512), LAYERS[depth]):
                blocks += [Block(c_in, c_out, 2)] + [Block(c_out, c_out, 1) for _ in range(count - 1)]
                c_in = c_out
            self.blocks = nn.Sequential(*blocks)
            self.head = nn.Sequential(nn.BatchNorm2d(512), nn.Flatten(), nn.Linear(512 * 7 * 7, 512), nn.BatchNorm1d(512))

        def forward(self, x):
            return self.head(self.blocks(self.stem(x)))

    torch.manual_seed(0)
    model = IResNet()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.PReLU):
                module.weight.uniform_(0.05, 0.4)
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = None
        model.train()
        for _ in range(4):
            model(torch.randn(8, 3, 112, 112))
    return model.eval()


def export(depth: int, folder: Path, count: int) -> tuple[Path, Path, list[dict]]:
    import torch

    path = folder / f"iresnet{depth}.onnx"
    torch.onnx.export(iresnet(depth), torch.randn(1, 3, 112, 112), str(path), input_names=["face"], output_names=["embedding"], opset_version=17, dynamo=False)
    calib, held = random_inputs(folder / f"iresnet{depth}_calib", "face", (1, 3, 112, 112), count)
    return path, calib, held


def bench(depth: int, work: Path, args) -> dict:
    fp32, calib_dir, held = export(depth, work, args.calib)
    held = held[: args.eval]
    calib = [dict(np.load(p)) for p in sorted(calib_dir.glob("*.npz"))]
    models = {"FP32": fp32}
    for label, extra in (("onnxslim", {}), ("onnxslim, PRelu in float", {"exclude_op_types": ("PRelu",)})):
        models[label] = work / f"iresnet{depth}.{len(models)}.onnx"
        quantize(fp32, str(calib_dir), config=QuantConfig(if_slower="write", **extra), output=models[label], show_progress=False)
    for per_channel in (False, True):
        label = f"onnxruntime{' per-channel' if per_channel else ''}"
        models[label] = onnxruntime_static(fp32, calib, work / f"iresnet{depth}.ort{int(per_channel)}.onnx", per_channel)
    return {"model": f"iresnet{depth}", **measured(models, held, args)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", nargs="+", type=int, default=[50], choices=sorted(LAYERS))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--calib", type=int, default=32)
    parser.add_argument("--eval", type=int, default=16)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "cache" / "quantize_prelu.json")
    args = parser.parse_args()
    run_benchmarks(args.depths, bench, args)


if __name__ == "__main__":
    main()
