"""Fold a constant scale and shift after a convolution into its weights and bias.

Exporters of reparameterizable networks (PP-LCNet's learnable affine blocks,
ONNX exports of ``x * gamma + beta`` layers) write Conv -> Mul(c) -> Add(d)
with constants c and d that are scalars or one value per output channel.
Since Mul(Conv(x, W, b), c) = Conv(x, W * c, b * c) and
Add(Conv(x, W, b), d) = Conv(x, W, b + d), both fold exactly, leaving fewer
float ops between quantized layers.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxslim.ir.tensors import all_value_names, constant_names, consumers_map, from_array, initializer_map, to_array, unique_name
from onnxslim.passes.base import PassResult


def _per_channel(constant: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """The constant as one value per output channel, if it broadcasts that way over an NC... tensor."""
    if constant.size == 1:
        return np.full(channels, constant.reshape(()), dtype=np.float64)
    shape = constant.shape
    if len(shape) > rank:
        return None
    padded = (1,) * (rank - len(shape)) + tuple(shape)
    if padded[1] == channels and all(d == 1 for i, d in enumerate(padded) if i != 1):
        return constant.reshape(channels).astype(np.float64)
    return None


def fold_affine_into_conv(model: onnx.ModelProto) -> PassResult:
    result = PassResult("fold-affine-into-conv")
    graph = model.graph
    outputs = {v.name for v in graph.output}
    changed = True
    folded: set[int] = set()
    while changed:
        changed = False
        constants = constant_names(graph)
        inits = initializer_map(graph)
        consumers = consumers_map(graph)
        taken = all_value_names(graph)
        for conv in graph.node:
            if id(conv) in folded or conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx"):
                continue
            if len(conv.input) < 2 or conv.input[1] not in constants:
                continue
            if len(conv.input) > 2 and conv.input[2] and conv.input[2] not in constants:
                continue
            readers = consumers.get(conv.output[0], [])
            if len(readers) != 1 or conv.output[0] in outputs:
                continue
            follower = readers[0]
            if follower.op_type not in ("Mul", "Add") or follower.domain not in ("", "ai.onnx") or len(follower.input) != 2:
                continue
            other = follower.input[1] if follower.input[0] == conv.output[0] else follower.input[0]
            if other not in constants or other == conv.output[0]:
                continue
            weight = to_array(inits[conv.input[1]])
            if weight.dtype != np.float32:
                continue
            values = _per_channel(to_array(inits[other]), weight.shape[0], weight.ndim)
            if values is None:
                result.decline(follower.name or follower.output[0], "constant does not act per output channel")
                continue
            bias = to_array(inits[conv.input[2]]).astype(np.float64) if len(conv.input) > 2 and conv.input[2] else np.zeros(weight.shape[0])
            if follower.op_type == "Mul":
                new_weight = weight.astype(np.float64) * values.reshape((-1,) + (1,) * (weight.ndim - 1))
                new_bias = bias * values
            else:
                new_weight, new_bias = weight, bias + values
            weight_name = unique_name(conv.input[1] + "_folded", taken)
            bias_name = unique_name((conv.input[2] if len(conv.input) > 2 and conv.input[2] else conv.output[0] + "_bias") + "_folded", taken)
            graph.initializer.append(from_array(np.asarray(new_weight, np.float32), weight_name))
            graph.initializer.append(from_array(np.asarray(new_bias, np.float32), bias_name))
            conv.input[1] = weight_name
            if len(conv.input) > 2:
                conv.input[2] = bias_name
            else:
                conv.input.append(bias_name)
            conv.output[0] = follower.output[0]
            folded.add(id(follower))
            result.change(f"folded {follower.op_type} {follower.name or follower.output[0]} into {conv.name or conv.op_type}")
            changed = True
            break
        if changed:
            kept = [n for n in graph.node if id(n) not in folded]
            del graph.node[:]
            graph.node.extend(kept)
            folded.clear()
    return result
