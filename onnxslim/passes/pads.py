"""Zero padding written as a Pad before a convolution, folded into the convolution's own pads.

TensorFlow's "same" padding reaches ONNX as an explicit Pad before each convolution (tf2onnx, and PyTorch ports of
TF models such as transformers' MobileNetV2 and EfficientNet, which even write Pads of nothing). onnxruntime folds
such a Pad into a float Conv itself, but not into a quantized one: there the Pad stays a float step between a
DequantizeLinear and a QuantizeLinear, before every layer (transformers' MobileNetV2 in INT8 spent a third of its
time on them, 1.38x FP32's latency at two threads). The same zeros added by the Conv give the same sums.
"""

from __future__ import annotations

import onnx
from onnx import helper

from onnxslim.ir.graph import node_attr, replace_nodes, text_attr
from onnxslim.ir.tensors import consumers_map, initializer_map, to_array
from onnxslim.passes.base import PassResult


def pads_into_convs(model: onnx.ModelProto) -> PassResult:
    """Drop each constant Pad that pads nothing, and fold each zero-valued constant Pad of the spatial axes into the
    Convs that read it (as their data input, with explicit pads). A Pad that a graph output or any other op reads, one
    that pads the batch or channel axis, crops (negative pads), or pads with another value, stays."""
    result = PassResult("pads-into-convs")
    graph = model.graph
    pads_nodes = [n for n in graph.node if n.op_type == "Pad" and n.domain in ("", "ai.onnx")]
    if not pads_nodes:
        return result
    inits = initializer_map(graph)
    readers = consumers_map(graph)
    outputs = {v.name for v in graph.output}
    removed: dict[int, list[onnx.NodeProto]] = {}  # Pads, by id, to drop
    for pad in pads_nodes:
        pads = zero_padding(pad, inits)
        after = readers.get(pad.output[0], [])
        if pads is None or pad.output[0] in outputs or not after or any(pad.output[0] not in r.input for r in after):
            continue  # (a reader inside a subgraph reads it by name)
        where = pad.name or pad.output[0]
        if not any(pads):
            for reader in after:
                reader.input[:] = [pad.input[0] if name == pad.output[0] else name for name in reader.input]
            removed[id(pad)] = []
            result.change(f"Pad {where} pads nothing: removed")
            continue
        rank = len(pads) // 2
        spatial = rank - 2
        if spatial < 1 or min(pads) < 0 or pads[0] or pads[1] or pads[rank] or pads[rank + 1]:
            continue
        if not all(_takes_pads(reader, pad.output[0], spatial) for reader in after):
            continue
        for conv in after:
            own = list(node_attr(conv, "pads", [0] * (2 * spatial)))
            merged = [own[i] + pads[2 + i] for i in range(spatial)] + [own[spatial + i] + pads[rank + 2 + i] for i in range(spatial)]
            kept = [a for a in conv.attribute if a.name not in ("pads", "auto_pad")]
            del conv.attribute[:]
            conv.attribute.extend([*kept, helper.make_attribute("pads", merged)])
            conv.input[0] = pad.input[0]
        removed[id(pad)] = []
        result.change(f"Pad {where} folded into {', '.join(c.name or c.op_type for c in after)}")
    replace_nodes(graph, removed)
    return result


def zero_padding(pad: onnx.NodeProto, inits) -> list[int] | None:
    """A constant-mode Pad's pads (begins, then ends, every axis) where they and its value are stored and the value is
    zero; None otherwise (other modes, pads computed at run time, an axes input)."""
    if text_attr(pad, "mode", "constant") != "constant" or (len(pad.input) > 3 and pad.input[3]):
        return None
    if len(pad.input) > 1 and pad.input[1]:
        if pad.input[1] not in inits:
            return None
        pads = to_array(inits[pad.input[1]]).reshape(-1).tolist()
    else:
        pads = node_attr(pad, "pads")
        if pads is None:
            return None
        pads = list(pads)
    if len(pad.input) > 2 and pad.input[2]:
        if pad.input[2] not in inits:
            return None
        value = to_array(inits[pad.input[2]]).reshape(-1)
        if value.size > 1 or (value.size == 1 and float(value[0]) != 0.0):
            return None
    elif float(node_attr(pad, "value", 0.0)) != 0.0:
        return None
    return [int(p) for p in pads] if len(pads) % 2 == 0 else None


def _takes_pads(node: onnx.NodeProto, name: str, spatial: int) -> bool:
    """``node`` is a Conv reading ``name`` as its data alone, with explicit pads (or none) over ``spatial`` axes."""
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or list(node.input).count(name) != 1 or node.input[0] != name:
        return False
    if text_attr(node, "auto_pad", "NOTSET") != "NOTSET":
        return False
    own = node_attr(node, "pads")
    return own is None or len(own) == 2 * spatial
