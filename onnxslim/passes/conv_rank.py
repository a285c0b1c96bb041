"""Write a 3-D convolution over a volume one slice deep as a 2-D convolution of that slice.

A video or volume network run on single frames (a watermark encoder's (N, C, 1, H, W) input, a
3-D U-Net on one slice) convolves along an axis of length 1. onnxruntime's CPU provider has
blocked-layout (NCHWc) and integer kernels tuned for 2-D convolutions; its 3-D path is a
generic one: on such a model the 3-D form ran at 1.3-1.4x the 2-D form's time in float, and its
INT8 form was slower than float, where the 2-D INT8 form ran at 0.3x the original's time.

Along an axis of input length 1, only one kernel tap touches data when the output along it has
length 1 too (the other taps read padding): the tap at ``pad_begin / dilation``. So

    Conv(x, w)  ->  Unsqueeze(Conv(Squeeze(x, a), w[..., tap along a, ...]), a)

with the attributes of axis ``a`` dropped: the same numbers, up to the order of float sums.
Unsqueeze/Squeeze pairs that meet between two lowered convolutions cancel.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from onnxslim.ir.graph import drop_unread_initializers, node_attr, text_attr
from onnxslim.ir.shapes import infer_shapes
from onnxslim.ir.tensors import all_value_names, from_array, unique_name
from onnxslim.passes.base import DeclineCode, PassResult
from onnxslim.passes.matching import GraphIndex
from onnxslim.passes.opset import default_opset, with_axes
from onnxslim.runtime.shapes import symbolic_shapes

PER_AXIS = ("kernel_shape", "strides", "dilations", "pads")  # Conv attributes with a value per spatial axis


def _lowered_axis(node: onnx.NodeProto, input_shape: tuple, kernel: tuple) -> tuple[int, int] | None:
    """(spatial axis to drop, 0-based; kernel tap that reads the data) for the first spatial axis of input length 1
    whose output has length 1 and is computed by exactly one tap; None when there is none."""
    spatial = len(kernel)
    pads = list(node_attr(node, "pads", [0] * 2 * spatial))
    strides = list(node_attr(node, "strides", [1] * spatial))
    dilations = list(node_attr(node, "dilations", [1] * spatial))
    auto_pad = text_attr(node, "auto_pad", "NOTSET")
    for axis in range(spatial):
        if input_shape[2 + axis] != 1:
            continue
        size = kernel[axis]
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            if size != 1:
                continue  # the padding depends on the stride and the input: kept as written
            begin = end = 0
        elif auto_pad == "VALID":
            begin = end = 0
        else:
            begin, end = pads[axis], pads[spatial + axis]
        reach = dilations[axis] * (size - 1) + 1
        if (1 + begin + end - reach) // strides[axis] + 1 != 1 or begin % dilations[axis]:
            continue
        tap = begin // dilations[axis]
        if tap < size:
            return axis, tap
    return None


def _without(values, axis: int, spatial: int) -> list[int]:
    """A per-spatial-axis attribute (pads: begins then ends) with ``axis`` taken out."""
    values = list(values)
    if len(values) == 2 * spatial:
        return [v for i, v in enumerate(values) if i % spatial != axis]
    return [v for i, v in enumerate(values) if i != axis]


def conv3d_on_one_slice_as_conv2d(model: onnx.ModelProto) -> PassResult:
    """Rewrite each 3-D Conv whose input is one slice deep along a spatial axis (and whose output is too) as a 2-D Conv."""
    result = PassResult("conv3d-on-one-slice-as-conv2d")
    graph = model.graph
    index = GraphIndex(graph)
    convs = [n for n in graph.node if n.op_type == "Conv" and n.domain in ("", "ai.onnx") and len(n.input) >= 2
             and n.input[1] in index.inits and len(index.inits[n.input[1]].dims) == 5]
    if not convs:
        return result
    shapes = infer_shapes(model)
    if any(len(shapes.get(n.input[0]) or ()) != 5 for n in convs):  # a shape computed at run time upstream
        shapes = symbolic_shapes(model) | {name: dims for name, dims in shapes.items() if len(dims) == 5}
    taken = all_value_names(graph)
    opset = default_opset(model)
    axes_names: dict[int, str] = {}
    sliced_weights: dict[tuple[str, int, int], str] = {}
    replacements: dict[int, list[onnx.NodeProto]] = {}

    def axes_tensor(tensor_axis: int) -> str:  # one initializer per axis, shared by every node that needs it
        if tensor_axis not in axes_names:
            axes_names[tensor_axis] = unique_name(f"slice_axis_{tensor_axis}", taken)
            graph.initializer.append(from_array(np.array([tensor_axis], np.int64), axes_names[tensor_axis]))
        return axes_names[tensor_axis]

    def reshaping(op_type: str, source: str, target: str, tensor_axis: int, name: str) -> onnx.NodeProto:
        return with_axes(op_type, source, target, tensor_axis, opset, name, axes_tensor)

    for node in convs:
        where = node.name or node.output[0]
        weight = index.array(node.input[1])
        if weight is None:
            result.decline(where, DeclineCode.NOT_CONSTANT, "the weight is computed at run time")
            continue
        input_shape = shapes.get(node.input[0])
        if input_shape is None or len(input_shape) != 5:
            result.decline(where, DeclineCode.DYNAMIC, "the input's shape is not known")
            continue
        found = _lowered_axis(node, input_shape, tuple(weight.shape[2:]))
        if found is None:
            if None in input_shape[2:]:
                result.decline(where, DeclineCode.DYNAMIC, "a spatial axis of the input has a length known only at run time")
            continue
        axis, tap = found
        tensor_axis = 2 + axis
        key = (node.input[1], axis, tap)
        if key not in sliced_weights:
            sliced_weights[key] = unique_name(f"{node.input[1]}_slice", taken)
            graph.initializer.append(from_array(np.ascontiguousarray(np.take(weight, tap, axis=tensor_axis)), sliced_weights[key]))
        attrs = {}
        for attribute in node.attribute:
            value = helper.get_attribute_value(attribute)
            attrs[attribute.name] = _without(value, axis, 3) if attribute.name in PER_AXIS else value
        squeezed = unique_name(f"{node.input[0]}_slice", taken)
        flat = unique_name(f"{node.output[0]}_slice", taken)
        replacements[id(node)] = [
            reshaping("Squeeze", node.input[0], squeezed, tensor_axis, f"{where}_squeeze"),
            helper.make_node("Conv", [squeezed, sliced_weights[key], *node.input[2:]], [flat], name=where, **attrs),
            reshaping("Unsqueeze", flat, node.output[0], tensor_axis, f"{where}_unsqueeze"),
        ]
    if not replacements:
        return result
    nodes = [new for n in graph.node for new in replacements.get(id(n), [n])]
    added = [new for group in replacements.values() for new in group]
    nodes = _without_round_trips(nodes, added, {v.name for v in graph.output})
    del graph.node[:]
    graph.node.extend(nodes)
    drop_unread_initializers(graph, {n.input[1] for n in convs})
    result.change(f"wrote {len(replacements)} Conv(s) over a volume one slice deep as 2-D Conv(s)")
    return result


def _without_round_trips(nodes: list[onnx.NodeProto], added: list[onnx.NodeProto], graph_outputs: set[str]) -> list[onnx.NodeProto]:
    """``nodes`` where a Squeeze this pass added reads the output of an Unsqueeze it added over the same axis (two lowered
    Convs in a row): the Squeeze's readers read the Unsqueeze's input instead, and what is no longer read goes."""
    unsqueezed = {n.output[0]: n for n in added if n.op_type == "Unsqueeze"}
    bypass: dict[str, str] = {}
    for squeeze in (n for n in added if n.op_type == "Squeeze"):
        unsqueeze = unsqueezed.get(squeeze.input[0])
        if unsqueeze is not None and list(unsqueeze.input[1:]) == list(squeeze.input[1:]) and node_attr(unsqueeze, "axes") == node_attr(squeeze, "axes"):
            bypass[squeeze.output[0]] = unsqueeze.input[0]
    if not bypass:
        return nodes
    for node in nodes:
        for i, name in enumerate(node.input):
            if name in bypass:
                node.input[i] = bypass[name]
    kept = [n for n in nodes if not (n.op_type == "Squeeze" and n.output[0] in bypass)]
    read = {name for n in kept for name in n.input} | graph_outputs
    return [n for n in kept if not (n.op_type == "Unsqueeze" and n.output[0] in unsqueezed and n.output[0] not in read)]
