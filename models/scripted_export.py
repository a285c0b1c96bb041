"""A conv net with data-dependent control flow, exported from ``torch.jit.script`` (random weights).

Its forward takes one of two conv blocks by the sign of the input's mean (an ONNX If), then
repeats a conv a data-dependent number of times (an ONNX Loop): the shape of exported models
whose layers live inside subgraphs. Needs torch (the distill extra or the benchmark set-up).
"""

from __future__ import annotations

import io
import warnings

import onnx


def scripted_branches(width: int = 64, size: int = 56, seed: int = 0) -> onnx.ModelProto:
    """The exported model: input (1, 3, size, size), output logits (1, 10)."""
    import torch

    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            conv = lambda k: torch.nn.Conv2d(width, width, k, padding=k // 2)  # noqa: E731
            self.stem = torch.nn.Conv2d(3, width, 3, padding=1)
            self.wide = torch.nn.Sequential(conv(3), torch.nn.ReLU(), conv(3))
            self.narrow = torch.nn.Sequential(conv(1), torch.nn.ReLU(), conv(3))
            self.repeat = conv(3)
            self.head = torch.nn.Linear(width, 10)

        def forward(self, x):
            h = torch.relu(self.stem(x))
            if bool(x.mean() > 0):
                h = self.wide(h) + h
            else:
                h = self.narrow(h)
            for _ in range(int(x.size(0)) + 1):
                h = torch.relu(self.repeat(h)) + h
            return self.head(h.mean(dim=(2, 3)))

    torch.manual_seed(seed)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript and its exporter are deprecated, and still what exports data-dependent control flow
        scripted = torch.jit.script(Branchy().eval())
        torch.onnx.export(scripted, (torch.randn(1, 3, size, size),), buffer, dynamo=False, input_names=["input"], output_names=["logits"], opset_version=17)
    return onnx.load_from_string(buffer.getvalue())
