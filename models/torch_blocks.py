"""Small torch networks of shapes the packaged models do not have, for the coverage benchmark (random weights).

Each is written the way its kind is usually written in torch, so that the export carries the exporter's own spelling:
GroupNorm as Reshape / InstanceNormalization / Reshape, nn.GLU as a Split, einsum attention as Einsum,
F.scaled_dot_product_attention, causal convolutions trimmed by a Slice, token mixing across a transposed axis.

    python -c "from models.torch_blocks import export_block; export_block('unet', 'unet.onnx')"
"""

from __future__ import annotations

from pathlib import Path


def _modules():
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class UNet(nn.Module):
        """Two GroupNorm + SiLU stages down, a transposed convolution up, a skip joined by Concat, a sigmoid mask."""

        def __init__(self):
            super().__init__()

            def stage(c_in, c_out, stride):
                return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.GroupNorm(8, c_out), nn.SiLU(),
                                     nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.SiLU())

            self.down1, self.down2 = stage(3, 32, 1), stage(32, 64, 2)
            self.up = nn.ConvTranspose2d(64, 32, 2, stride=2)
            self.head = nn.Sequential(nn.Conv2d(64, 32, 3, padding=1), nn.GroupNorm(8, 32), nn.SiLU(), nn.Conv2d(32, 1, 1))

        def forward(self, x):
            a = self.down1(x)
            return torch.sigmoid(self.head(torch.cat([a, self.up(self.down2(a))], 1)))

    class GRUText(nn.Module):
        """Token embeddings, a two-layer bidirectional GRU, mean pooling over time, a linear classifier."""

        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(5000, 128)
            self.gru = nn.GRU(128, 192, num_layers=2, batch_first=True, bidirectional=True)
            self.classify = nn.Linear(384, 10)

        def forward(self, ids):
            states, _ = self.gru(self.embed(ids))
            return self.classify(states.mean(1))

    class EinsumAttention(nn.Module):
        """A post-norm transformer layer whose attention is written with einsum."""

        def __init__(self, dim=64, heads=4):
            super().__init__()
            self.heads = heads
            self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
            self.norm, self.up, self.down = nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

        def forward(self, x):
            b, n, d = x.shape
            q, k, v = (p(x).view(b, n, self.heads, d // self.heads) for p in (self.q, self.k, self.v))
            weights = torch.einsum("bnhd,bmhd->bhnm", q, k).softmax(-1)
            x = self.norm(x + self.o(torch.einsum("bhnm,bmhd->bnhd", weights, v).reshape(b, n, d)))
            return x + self.down(F.gelu(self.up(x)))

    class ConformerConv(nn.Module):
        """A conformer's convolution module: pointwise convolution to twice the width, GLU, depthwise, BatchNorm, SiLU."""

        def __init__(self, dim=64):
            super().__init__()
            self.inp, self.norm = nn.Linear(40, dim), nn.LayerNorm(dim)
            self.widen, self.glu = nn.Conv1d(dim, 2 * dim, 1), nn.GLU(dim=1)
            self.depthwise, self.bn = nn.Conv1d(dim, dim, 15, padding=7, groups=dim), nn.BatchNorm1d(dim)
            self.narrow, self.out = nn.Conv1d(dim, dim, 1), nn.Linear(dim, 30)

        def forward(self, x):
            x = self.inp(x)
            y = self.glu(self.widen(self.norm(x).transpose(1, 2)))
            y = self.narrow(F.silu(self.bn(self.depthwise(y))))
            return self.out(x + y.transpose(1, 2))

    class SDPABlock(nn.Module):
        """A pre-norm transformer layer with a packed projection split by chunk and F.scaled_dot_product_attention."""

        def __init__(self, dim=64, heads=4):
            super().__init__()
            self.heads = heads
            self.qkv, self.o = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.n1, self.n2, self.up, self.down = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

        def forward(self, x):
            b, n, d = x.shape
            q, k, v = (t.view(b, n, self.heads, d // self.heads).transpose(1, 2) for t in self.qkv(self.n1(x)).chunk(3, dim=-1))
            x = x + self.o(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))
            return x + self.down(F.gelu(self.up(self.n2(x))))

    class TCN(nn.Module):
        """Dilated causal 1-D convolutions (padded, then trimmed by a Slice) with residual sums, the last step classified."""

        def __init__(self):
            super().__init__()
            self.convs = nn.ModuleList(nn.Conv1d(16 if i == 0 else 48, 48, 3, dilation=2**i, padding=2 * 2**i) for i in range(4))
            self.classify = nn.Linear(48, 5)

        def forward(self, x):
            for i, conv in enumerate(self.convs):
                y = F.relu(conv(x))[:, :, : x.shape[2]]
                x = y if i == 0 else x + y
            return self.classify(x[:, :, -1])

    class Mixer(nn.Module):
        """An MLP-Mixer layer: an MLP across tokens (on the transposed axis), one across channels, mean pooling."""

        def __init__(self, tokens=16, dim=64):
            super().__init__()
            self.n1, self.t1, self.t2 = nn.LayerNorm(dim), nn.Linear(tokens, 64), nn.Linear(64, tokens)
            self.n2, self.c1, self.c2, self.head = nn.LayerNorm(dim), nn.Linear(dim, 128), nn.Linear(128, dim), nn.Linear(dim, 10)

        def forward(self, x):
            x = x + self.t2(F.gelu(self.t1(self.n1(x).transpose(1, 2)))).transpose(1, 2)
            x = x + self.c2(F.gelu(self.c1(self.n2(x))))
            return self.head(x.mean(1))

    return {
        "unet": (UNet, lambda: torch.randn(1, 3, 128, 128)),
        "gru_text": (GRUText, lambda: torch.randint(0, 5000, (1, 40))),
        "einsum_attention": (EinsumAttention, lambda: torch.randn(1, 50, 64)),
        "conformer_conv": (ConformerConv, lambda: torch.randn(1, 50, 40)),
        "sdpa_block": (SDPABlock, lambda: torch.randn(1, 20, 64)),
        "tcn": (TCN, lambda: torch.randn(1, 16, 100)),
        "mixer": (Mixer, lambda: torch.randn(1, 16, 64)),
    }


BLOCKS = ("unet", "gru_text", "einsum_attention", "conformer_conv", "sdpa_block", "tcn", "mixer")


def export_block(name: str, path: str | Path, exporter: str = "legacy") -> None:
    """Export block ``name`` (one of BLOCKS) with random weights to ``path``: TorchScript at opset 17, or torch.export ("dynamo")."""
    import torch

    modules = _modules()
    if name not in modules:
        raise ValueError(f"unknown block {name!r}; choose from {', '.join(BLOCKS)}")
    torch.manual_seed(0)
    factory, example = modules[name]
    module = factory().eval()
    with torch.no_grad():
        if exporter == "dynamo":
            torch.onnx.export(module, (example(),), str(path), input_names=["x"], dynamo=True, external_data=False)
        else:
            torch.onnx.export(module, (example(),), str(path), input_names=["x"], opset_version=17, dynamo=False)
