"""Fold a constant scale and shift after a convolution into its weights and bias.

Exporters of reparameterizable networks (PP-LCNet's learnable affine blocks,
ONNX exports of ``x * gamma + beta`` layers) write Conv -> Mul(c) -> Add(d)
with constants c and d that are scalars or one value per output channel;
PaddlePaddle writes a ConvTranspose's bias as an Add after it.
Since Mul(Conv(x, W, b), c) = Conv(x, W * c, b * c) and
Add(Conv(x, W, b), d) = Conv(x, W, b + d), both fold exactly, leaving fewer
float ops between quantized layers (and a BatchNormalization after the Add
next to the layer it folds into).
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxslim.ir.tensors import all_value_names, constant_names, consumers_map, from_array, initializer_map, to_array, unique_name
from onnxslim.passes.base import DeclineCode, PassResult
from onnxslim.passes.batchnorm import output_channels, scale_output_channels

LAYERS = ("Conv", "ConvTranspose")


def per_channel_values(constant: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
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


def _affine_follower(conv: onnx.NodeProto, consumers, constants: set[str]) -> tuple[onnx.NodeProto, str] | None:
    """The Mul or Add with one constant operand that reads ``conv``'s output, and that constant (None if no reader is one)."""
    for reader in consumers.get(conv.output[0], []):
        if reader.op_type in ("Mul", "Add") and reader.domain in ("", "ai.onnx") and len(reader.input) == 2:
            other = reader.input[1] if reader.input[0] == conv.output[0] else reader.input[0]
            if other in constants and other != conv.output[0]:
                return reader, other
    return None


def fold_affine_into_conv(model: onnx.ModelProto) -> PassResult:
    """Fold every constant per-channel Mul/Add after a Conv or ConvTranspose into its weights and bias.

    Declines (with a reason) each Conv -> Mul/Add(constant) it cannot fold;
    Convs followed by anything else are not candidates. The lookup maps are
    built once and kept current as folds rename outputs.
    """
    result = PassResult("fold-affine-into-conv")
    graph = model.graph
    outputs = {v.name for v in graph.output}
    constants = constant_names(graph)
    inits = initializer_map(graph)
    consumers = consumers_map(graph)
    taken = all_value_names(graph)
    folded: set[int] = set()
    for conv in list(graph.node):
        if conv.op_type not in LAYERS or conv.domain not in ("", "ai.onnx"):
            continue
        while True:  # Conv -> Mul -> Add folds one follower at a time
            found = _affine_follower(conv, consumers, constants)
            if found is None:
                break
            follower, other = found
            where = follower.name or follower.output[0]
            reason = _why_not_foldable(conv, consumers, outputs, constants, inits, other)
            if reason is not None:
                result.decline(where, *reason)
                break
            _fold(conv, follower, other, inits, taken, graph)
            consumers[conv.output[0]] = consumers.pop(follower.output[0], [])
            constants.update(conv.input[1:3])
            folded.add(id(follower))
            result.change(f"folded {follower.op_type} {where} into {conv.name or conv.op_type}")
    if folded:
        kept = [n for n in graph.node if id(n) not in folded]
        del graph.node[:]
        graph.node.extend(kept)
    return result


def _why_not_foldable(conv, consumers, outputs, constants, inits, other) -> tuple[DeclineCode, str] | None:
    if conv.output[0] in outputs:
        return DeclineCode.GRAPH_OUTPUT, f"output of {conv.name or conv.op_type} is a graph output"
    if len(consumers.get(conv.output[0], [])) != 1:
        return DeclineCode.SHARED_VALUE, f"output of {conv.name or conv.op_type} is also read elsewhere"
    if len(conv.input) < 2 or conv.input[1] not in constants:
        return DeclineCode.NOT_CONSTANT, f"weights of {conv.name or conv.op_type} are not a constant initializer"
    if len(conv.input) > 2 and conv.input[2] and conv.input[2] not in constants:
        return DeclineCode.NOT_CONSTANT, f"bias of {conv.name or conv.op_type} is not a constant initializer"
    weight = to_array(inits[conv.input[1]])
    if weight.dtype != np.float32:
        return DeclineCode.UNSUPPORTED_TYPE, f"weights of {conv.name or conv.op_type} are {weight.dtype}, not float32"
    if per_channel_values(to_array(inits[other]), output_channels(conv, weight), weight.ndim) is None:
        return DeclineCode.UNSUPPORTED_FORM, "constant does not act per output channel"
    return None


def _fold(conv, follower, other, inits, taken, graph) -> None:
    """Fold ``follower`` (Mul or Add by the constant ``other``) into ``conv``; ``conv`` takes over its output."""
    weight = to_array(inits[conv.input[1]])
    channels = output_channels(conv, weight)
    values = per_channel_values(to_array(inits[other]), channels, weight.ndim)
    has_bias = len(conv.input) > 2 and conv.input[2]
    bias = to_array(inits[conv.input[2]]).astype(np.float64) if has_bias else np.zeros(channels)
    if follower.op_type == "Mul":
        new_weight = scale_output_channels(conv, weight.astype(np.float64), values)
        new_bias = bias * values
    else:
        new_weight, new_bias = weight, bias + values
    weight_name = unique_name(conv.input[1] + "_folded", taken)
    written = [(new_weight, weight_name)]
    if has_bias or follower.op_type == "Add":  # a scale of no bias is no bias: none is added (no zeros grow the model)
        bias_name = unique_name((conv.input[2] if has_bias else conv.output[0] + "_bias") + "_folded", taken)
        written.append((new_bias, bias_name))
        if len(conv.input) > 2:
            conv.input[2] = bias_name
        else:
            conv.input.append(bias_name)
    for array, name in written:
        tensor = from_array(np.asarray(array, np.float32), name)
        graph.initializer.append(tensor)
        inits[name] = tensor
    conv.input[1] = weight_name
    conv.output[0] = follower.output[0]
