"""Where the channels are in the weights of the layers onnxslim quantizes and prunes."""

from __future__ import annotations

import onnx
from onnx import helper

WEIGHTED_LAYERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # the layers whose weights are quantized and pruned
RECURRENT_LAYERS = ("LSTM", "GRU", "RNN")  # input weights W (directions, gates x hidden, features): prune removes features
INITIAL_STATE_INPUTS = {"LSTM": (5, 6), "GRU": (5,), "RNN": (5,)}  # each recurrent layer's initial_h (and initial_c) inputs


def weight_axes(node: onnx.NodeProto, weight_ndim: int = 2) -> tuple[int, int]:
    """(input-channel axis, output-channel axis) of a Conv, ConvTranspose, Gemm or MatMul weight.

    Conv (C_out, C_in/g, k...); ConvTranspose (C_in, C_out/g, k...); Gemm (N, K) with transB,
    (K, N) without; MatMul (..., K, N).
    """
    op = node.op_type
    if op == "Conv":
        return 1, 0
    if op == "ConvTranspose":
        return 0, 1
    if op == "Gemm":
        trans_b = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "transB"), 0)
        return (1, 0) if int(trans_b) else (0, 1)
    return weight_ndim - 2, weight_ndim - 1


def one_channel_per_group(node: onnx.NodeProto, weight_shape) -> bool:
    """Whether a convolution ``node`` (Conv, QLinearConv, ConvInteger) with a weight of ``weight_shape`` (C_out, C_in/g, k...)
    reads and writes one channel per group: onnxruntime's integer depthwise kernel, which adds its products in 32 bits."""
    group = next((int(helper.get_attribute_value(a)) for a in node.attribute if a.name == "group"), 1)
    return len(weight_shape) >= 3 and weight_shape[1] == 1 and weight_shape[0] == group
