"""Write an upsampling transposed convolution as a convolution over the input and a DepthToSpace (sub-pixel convolution).

A 2-D ConvTranspose with stride s whose output is exactly s times its input (kernel - pads + output_padding
== s on each axis) computes output pixel (s*h + i, s*w + j) from the input pixels near (h, w): along an axis,
input h + d meets kernel tap i + pad_begin - s*d. So each of the s*s output phases (i, j) is an ordinary
convolution of the input with a kernel gathered from the transposed one (taps outside it are zero), and
the s*s phases side by side as channels, put back in place by DepthToSpace (mode CRD), are the output:

    ConvTranspose(x, w[Cin, Cout, k, k], b)  ->  DepthToSpace(Conv(x, w'[Cout*s*s, Cin, K, K], repeat(b, s*s)), s, CRD)

the same numbers up to the order of float sums. For the common doubling kernel (k 4, stride 2, pads 1) K is 3:
2.25 times the multiply-adds. In float that is slower (fastmrz's U-Net 1.22x / 1.15x at one / two threads), but
onnxruntime's CPU provider has no integer ConvTranspose, and the Conv runs as QLinearConv: quantize applies the
rewrite to the graph it quantizes (fastmrz's U-Net in INT8: 0.52x -> 0.38x the original's latency at one thread,
0.57x -> 0.41x at two), never to the float fallback. Only overlapping windows (kernel > stride) are rewritten:
with kernel == stride (PaddleOCR's DB heads) the 1x1 form measured no faster in INT8. A ConvTranspose whose output
reaches a graph output before another weighted layer is left too: the output layer stays float, where the rewrite
only costs.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from onnxslim.ir.graph import drop_unread_initializers, node_attr, text_attr
from onnxslim.ir.tensors import all_value_names, from_array, unique_name
from onnxslim.passes.base import DeclineCode, PassResult
from onnxslim.passes.matching import GraphIndex
from onnxslim.passes.opset import default_opset

DEPTH_TO_SPACE_MODE_OPSET = 11  # DepthToSpace's CRD mode


def convtranspose_as_subpixel_conv(model: onnx.ModelProto) -> PassResult:
    """Rewrite each 2-D ConvTranspose with a constant weight, one group, dilation 1, the same stride on both axes and an
    output exactly stride times its input as a Conv and a DepthToSpace."""
    result = PassResult("convtranspose-as-subpixel-conv")
    graph = model.graph
    if default_opset(model) < DEPTH_TO_SPACE_MODE_OPSET:
        return result
    index = GraphIndex(graph)
    taken = all_value_names(graph) | {n.name for n in graph.node}
    rewritten: dict[int, list[onnx.NodeProto]] = {}
    replaced: set[str] = set()  # the weights and biases the rewrites stop reading
    for position, node in enumerate(graph.node):
        if node.op_type != "ConvTranspose" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        where = node.name or node.output[0]
        weight = index.array(node.input[1])
        if weight is None:
            result.decline(where, DeclineCode.NOT_CONSTANT, "the weight is computed at run time")
            continue
        layout = _subpixel_layout(node, weight.shape)
        if layout is None or layout[2] == 1:  # kernel == stride: no overlap, nothing gained
            continue
        if _feeds_an_output(graph, node, index):
            result.decline(where, DeclineCode.UNSUPPORTED_FORM, "an output layer stays in float, where the ConvTranspose is faster")
            continue
        bias = index.array(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(weight.shape[1], weight.dtype)
        if bias is None:
            result.decline(where, DeclineCode.NOT_CONSTANT, "the bias is computed at run time")
            continue
        stride, first, size, pad_begin = layout
        phases = _phase_kernels(weight, stride, first, size, pad_begin)
        names = {part: unique_name(f"{where}_{part}", taken) for part in ("weight", "bias", "phases", "conv", "to_space")}
        graph.initializer.append(from_array(phases, names["weight"]))
        graph.initializer.append(from_array(np.repeat(bias, stride * stride).astype(weight.dtype), names["bias"]))
        rewritten[position] = [
            helper.make_node("Conv", [node.input[0], names["weight"], names["bias"]], [names["phases"]], name=names["conv"],
                             kernel_shape=[size, size], pads=[-first, -first, size - 1 + first, size - 1 + first]),
            helper.make_node("DepthToSpace", [names["phases"]], [node.output[0]], name=names["to_space"], blocksize=stride, mode="CRD"),
        ]
        replaced.update(node.input[1:3])
        result.change(f"{where}: {weight.shape[2]}x{weight.shape[3]} kernel at stride {stride} as a {size}x{size} Conv "
                      f"({phases.shape[0]} channels) and a DepthToSpace")
    if rewritten:
        kept = []
        for position, node in enumerate(graph.node):
            kept.extend(rewritten.get(position, [node]))
        del graph.node[:]
        graph.node.extend(kept)
        drop_unread_initializers(graph, replaced)
    return result


WEIGHTED = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def _feeds_an_output(graph: onnx.GraphProto, node: onnx.NodeProto, index: GraphIndex) -> bool:
    """Whether ``node``'s output reaches a graph output without passing another weighted layer."""
    outputs = {v.name for v in graph.output}
    pending, seen = [node.output[0]], set()
    while pending:
        name = pending.pop()
        if name in outputs:
            return True
        for reader in index.readers(name):
            if reader.op_type not in WEIGHTED and id(reader) not in seen:
                seen.add(id(reader))
                pending.extend(o for o in reader.output if o)
    return False


def _subpixel_layout(node: onnx.NodeProto, weight_shape: tuple) -> tuple[int, int, int, int] | None:
    """(stride, first input offset, kernel size, pad at the start) of the phase convolution, or None where the rewrite
    does not apply: not 2-D, several groups, dilation, unequal strides or kernels, or an output not stride x its input."""
    if len(weight_shape) != 4 or weight_shape[2] != weight_shape[3] or int(node_attr(node, "group", 1)) != 1:
        return None
    kernel = int(weight_shape[2])
    strides = [int(s) for s in node_attr(node, "strides", [1, 1])]
    pads = [int(p) for p in node_attr(node, "pads", [0, 0, 0, 0])]
    extra = [int(p) for p in node_attr(node, "output_padding", [0, 0])]
    auto_pad = text_attr(node, "auto_pad", "NOTSET")
    if any(int(d) != 1 for d in node_attr(node, "dilations", [1, 1])) or auto_pad not in ("NOTSET", "VALID") or node_attr(node, "output_shape") is not None:
        return None
    if len(strides) != 2 or strides[0] != strides[1] or strides[0] < 2 or len(pads) != 4 or pads[0] != pads[1] or pads[2] != pads[3] or extra[0] != extra[1]:
        return None
    stride, pad_begin = strides[0], pads[0]
    if kernel - pads[0] - pads[2] + extra[0] != stride:  # the output is stride times the input only then
        return None
    # input h + d meets tap i + pad_begin - stride * d, for phases i in [0, stride): the offsets d that reach a tap
    first = -((kernel - 1 - pad_begin) // stride)
    last = (stride - 1 + pad_begin) // stride
    if first > 0 or last < 0:  # a crop past the kernel: no Conv padding says it
        return None
    return stride, first, last - first + 1, pad_begin


def _phase_kernels(weight: np.ndarray, stride: int, first: int, size: int, pad_begin: int) -> np.ndarray:
    """The Conv weight [Cout*s*s, Cin, size, size] whose output channel c*s*s + i*s + j is phase (i, j) of channel c."""
    c_in, c_out, kernel = weight.shape[0], weight.shape[1], weight.shape[2]
    phases = np.zeros((c_out, stride, stride, c_in, size, size), weight.dtype)
    for i in range(stride):
        for j in range(stride):
            for ti in range(size):
                ki = i + pad_begin - stride * (first + ti)
                if not 0 <= ki < kernel:
                    continue
                for tj in range(size):
                    kj = j + pad_begin - stride * (first + tj)
                    if 0 <= kj < kernel:
                        phases[:, i, j, :, ti, tj] = weight[:, :, ki, kj].T
    return phases.reshape(c_out * stride * stride, c_in, size, size)
