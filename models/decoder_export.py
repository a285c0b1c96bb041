"""A GPT-2-small-shaped decoder (random weights) exported to ONNX with torch: the shape weight-only benchmarks time.

12 blocks of pre-LayerNorm causal self-attention (12 heads, width 768) and a
3072-wide GELU MLP, learned positions, a 50,257-token vocabulary and an untied
output projection: 163 M parameters, one forward pass over ``input_ids``
(no key/value cache), logits out. Random weights: this model proves sizes and
latency only, never accuracy.

    python models/decoder_export.py            # -> models/cache/decoder.onnx (+ .data)
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build(layers: int = 12, width: int = 768, heads: int = 12, vocab: int = 50257, context: int = 1024):
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
            self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
            self.fc, self.out = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

        def forward(self, x):
            n, t, _ = x.shape
            q, k, v = self.qkv(self.norm1(x)).split(width, dim=-1)
            q, k, v = (z.view(n, t, heads, width // heads).transpose(1, 2) for z in (q, k, v))
            scores = q @ k.transpose(-1, -2) / (width // heads) ** 0.5
            mask = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)
            attended = scores.masked_fill(mask, float("-inf")).softmax(-1) @ v
            x = x + self.proj(attended.transpose(1, 2).reshape(n, t, width))
            return x + self.out(nn.functional.gelu(self.fc(self.norm2(x))))

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.tokens, self.positions = nn.Embedding(vocab, width), nn.Embedding(context, width)
            self.blocks = nn.ModuleList(Block() for _ in range(layers))
            self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, vocab, bias=False)

        def forward(self, input_ids):
            positions = torch.arange(input_ids.shape[1]).unsqueeze(0)
            x = self.tokens(input_ids) + self.positions(positions)
            for block in self.blocks:
                x = block(x)
            return self.head(self.norm(x))

    torch.manual_seed(0)
    model = Decoder().eval()
    for parameter in model.parameters():
        if parameter.dim() > 1:
            nn.init.normal_(parameter, std=0.02)
    return model


def export(path: Path, **shape) -> Path:
    import onnx
    import torch

    model = build(**shape)
    ids = torch.zeros(1, 16, dtype=torch.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(model, (ids,), str(path), input_names=["input_ids"], output_names=["logits"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"}}, opset_version=17, dynamo=False)
    proto = onnx.load(str(path))
    onnx.save(proto, str(path), save_as_external_data=True, location=path.name + ".data")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "models" / "cache" / "decoder.onnx"))
    args = parser.parse_args()
    print(export(Path(args.out)))


if __name__ == "__main__":
    main()
