"""A CRNN text recognizer (random weights) exported to ONNX with torch: the CNN+LSTM shape whose bytes sit in the LSTM.

A small VGG-style convolution stack reduces a 32 x W grey line to a sequence
of 512-wide columns, two bidirectional LSTM (or GRU) layers of 256 read it, and
a linear layer scores 6,625 characters per column (PP-OCR's dictionary size).
Random weights: this model proves size and latency only.

    python models/crnn_export.py             # -> models/cache/crnn.onnx
    python models/crnn_export.py --rnn gru   # -> models/cache/crnn_gru.onnx
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build(classes: int = 6625, hidden: int = 256, rnn: str = "lstm"):
    import torch
    from torch import nn

    def block(cin, cout, pool):
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), *([nn.MaxPool2d(pool)] if pool else [])]

    class CRNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*block(1, 64, 2), *block(64, 128, 2), *block(128, 256, None), *block(256, 256, (2, 1)),
                                          *block(256, 512, None), *block(512, 512, (2, 1)), *block(512, 512, (2, 1)))
            self.lstm = (nn.LSTM if rnn == "lstm" else nn.GRU)(512, hidden, num_layers=2, bidirectional=True)
            self.head = nn.Linear(2 * hidden, classes)

        def forward(self, image):
            columns = self.features(image).squeeze(2).permute(2, 0, 1)  # (width, batch, channels)
            sequence, _ = self.lstm(columns)
            return self.head(sequence).softmax(-1)

    torch.manual_seed(0)
    return CRNN().eval()


def export(path: Path, rnn: str = "lstm") -> Path:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(build(rnn=rnn), (torch.randn(1, 1, 32, 320),), str(path), input_names=["image"], output_names=["probabilities"],
                          dynamic_axes={"image": {0: "batch", 3: "width"}, "probabilities": {0: "steps", 1: "batch"}}, opset_version=17, dynamo=False)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rnn", choices=("lstm", "gru"), default="lstm")
    parser.add_argument("--out", default=None, help="default: models/cache/crnn.onnx, crnn_gru.onnx with --rnn gru")
    args = parser.parse_args()
    out = Path(args.out) if args.out else ROOT / "models" / "cache" / ("crnn.onnx" if args.rnn == "lstm" else "crnn_gru.onnx")
    print(export(out, args.rnn))


if __name__ == "__main__":
    main()
