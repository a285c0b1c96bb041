"""Torch-Pruning on all-MiniLM-L6-v2's PyTorch module, the peer that applies where the source model is at hand.

    python benchmarks/torch_pruning_minilm.py --ratio 0.2 -o minilm.tp20.onnx

The module is the one models/minilm_export.py exports (the package's weights),
pruned with Torch-Pruning's MetaPruner and its default group L2 magnitude
ranking: ``ratio`` of the attention heads (whole heads, their Q/K/V rows and the
output projection's columns) and of the FFN neurons in every layer; the hidden
width stays 384 (embeddings, residuals and LayerNorms keep every channel), as
onnxslim prunes it. No data, no recovery: Torch-Pruning leaves that to a
training loop, which is what onnxslim's refit and distill are measured against.
Then exported with the same exporter and settings as the original.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.minilm_export import export_module, load_minilm  # noqa: E402


def torch_pruning_minilm(ratio: float, target: Path) -> Path:
    import torch
    import torch_pruning as tp

    model = load_minilm()
    example = (torch.ones(1, 16, dtype=torch.int64), torch.ones(1, 16, dtype=torch.int64), torch.zeros(1, 16, dtype=torch.int64))
    num_heads = {linear: model.heads for layer in model.layers for linear in (layer.query, layer.key, layer.value)}
    # layers whose outputs are the residual width: left whole, so only heads and FFN neurons go
    keep_width = [model.word, model.position, model.token_type] + [linear for layer in model.layers for linear in (layer.attn_out, layer.ffn_out)]
    pruner = tp.pruner.MetaPruner(
        model, example, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio, ignored_layers=keep_width,
        num_heads=num_heads, prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=ratio,
    )
    pruner.step()
    return export_module(model.eval(), target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()
    print(torch_pruning_minilm(args.ratio, Path(args.output)))


if __name__ == "__main__":
    main()
