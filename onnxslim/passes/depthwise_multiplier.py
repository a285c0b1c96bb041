"""Write a depthwise convolution with a channel multiplier as a channel Gather and a plain depthwise convolution.

A Conv with one input channel per group and M > 1 output channels per group
(group = C, weight (M*C, 1, k...); FastViT's and some MobileNet variants'
"depthwise multiplier") misses onnxruntime's CPU depthwise kernels: both the
float and the integer provider run it as C tiny matrix products. Measured at
one thread on this project's machine, a 48 -> 96 channel 7x7 layer on 64x64:
FP32 2.5 ms, INT8 (QLinearConv) 36 ms. Output channel o of such a layer reads
input channel o // M only, so repeating every input channel M times (a Gather
on the channel axis) and convolving with group = M*C computes the same products
with the same weight: 0.85 ms in FP32, 1.15 ms in INT8, where the
Gather of a quantized tensor runs on its INT8 codes.

Contract: changes ``model`` in place; its inputs and outputs keep their names,
types and shapes, and every output is the same function of the inputs (the
same products summed; a kernel may add them in another order, 1e-7 apart on
FastViT in FP32). quantize applies it to the model it builds the INT8 one
from; its FP32 fallback keeps the layers as they were, because the float
kernels are sometimes faster that way (24 channels times 6 at 112x112: 1.2 ms
grouped, 2.5 ms as Gather and depthwise). Rewritten: a standard-domain Conv of a
2-D image whose weight is a constant of shape (M*C, 1, kh, kw) with group C > 1 and M > 1.
Several such layers reading one tensor with the same C and M share one Gather.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from onnxslim.ir.graph import insert_before, node_attr
from onnxslim.ir.tensors import all_value_names, from_array, initializer_map, unique_name
from onnxslim.passes.base import DeclineCode, PassResult

# 2-D only, where it was measured: 1-D and 3-D convolutions are left alone, with a reason
SPATIAL_RANKS = (2,)


def _multiplied(node: onnx.NodeProto, weights: dict[str, onnx.TensorProto]) -> tuple[int, int] | None:
    """(C, M) of a Conv with one input channel per group and M > 1 outputs per group; None for any other Conv."""
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
        return None
    weight = weights.get(node.input[1])
    groups = int(node_attr(node, "group", 1))
    if weight is None or groups <= 1 or len(weight.dims) < 3 or weight.dims[1] != 1:
        return None
    outputs = int(weight.dims[0])
    if outputs <= groups or outputs % groups:
        return None
    return groups, outputs // groups


def has_depthwise_multipliers(model: onnx.ModelProto) -> bool:
    """Whether ``model``'s main graph has a convolution :func:`expand_depthwise_multipliers` would look at."""
    weights = initializer_map(model.graph)
    return any(_multiplied(node, weights) is not None for node in model.graph.node)


def expand_depthwise_multipliers(model: onnx.ModelProto) -> PassResult:
    """Give each depthwise Conv with a channel multiplier a Gather that repeats its input channels, and group = its outputs."""
    result = PassResult("expand-depthwise-multipliers")
    graph = model.graph
    weights = initializer_map(graph)
    taken = all_value_names(graph) | {n.name for n in graph.node}
    gathers: dict[tuple[str, int, int], str] = {}  # (input, C, M) -> the repeated tensor
    inserted: dict[int, onnx.NodeProto] = {}
    held = []  # the Convs a Gather goes before: their wrappers must outlive the loop for their ids to stay theirs
    rewritten = 0
    for node in graph.node:
        shape = _multiplied(node, weights)
        if shape is None:
            continue
        channels, multiplier = shape
        where = node.name or node.output[0]
        spatial = len(weights[node.input[1]].dims) - 2
        if spatial not in SPATIAL_RANKS:
            result.decline(where, DeclineCode.UNSUPPORTED_FORM, f"{spatial}-D convolution: the rewrite is measured faster on 2-D images only")
            continue
        key = (node.input[0], channels, multiplier)
        if key not in gathers:
            indices = unique_name(f"{node.input[0]}_channel_repeat_indices", taken)
            repeated = unique_name(f"{node.input[0]}_channels_x{multiplier}", taken)
            graph.initializer.append(from_array(np.repeat(np.arange(channels, dtype=np.int64), multiplier), indices))
            inserted[id(node)] = helper.make_node("Gather", [node.input[0], indices], [repeated], name=unique_name(f"{where}_repeat_channels", taken), axis=1)
            gathers[key] = repeated
            held.append(node)
        node.input[0] = gathers[key]
        for attribute in node.attribute:
            if attribute.name == "group":
                attribute.i = channels * multiplier
        rewritten += 1
    if rewritten:
        insert_before(graph, inserted)
        result.change(f"wrote {rewritten} depthwise convolution(s) with a channel multiplier as a channel Gather and a plain depthwise convolution")
    return result
