"""Fuse LayerNorm written out of elementary ops into one LayerNormalization node (opset >= 17).

Recognized, as exporters write it (x read by the first ReduceMean and the Sub):
    d = x - ReduceMean(x, last axis)
    y = d / Sqrt(ReduceMean(Pow(d, 2) or d * d, last axis) + epsilon) * gamma [+ beta]
with epsilon a constant scalar and gamma, beta constant vectors. One
LayerNormalization node (axis -1, statistics in float32: stash_type 1) replaces
the nine. In float16 this matters twice: the squares of the spelled-out form
overflow float16 where the fused kernel accumulates in float32, and one kernel
launch replaces nine.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx
from onnx import helper

from onnxslim.ir.graph import drop_unread_initializers
from onnxslim.ir.tensors import consumers_map
from onnxslim.passes.base import DeclineCode, PassResult
from onnxslim.passes.matching import GraphIndex
from onnxslim.passes.opset import default_opset, upgrade_opset

LAYER_NORM_OPSET = 17


class _Matcher(GraphIndex):
    """Matches spelled-out LayerNorms."""

    def sole_reader(self, tensor: str, op_type: str) -> onnx.NodeProto | None:
        readers = self.readers(tensor)
        return readers[0] if len(readers) == 1 and readers[0].op_type == op_type else None

    def reduces_last_axis(self, node: onnx.NodeProto) -> bool:
        """A ReduceMean over the last axis only, keeping it (axes as attribute, or as a constant input from opset 18)."""
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attributes.get("keepdims", 1) != 1:
            return False
        axes = attributes.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            values = self.array(node.input[1])
            axes = None if values is None else values.ravel().tolist()
        return axes is not None and list(axes) == [-1]

    def constant_vector(self, node: onnx.NodeProto, tensor: str) -> str | None:
        """The other input of binary ``node`` when it is a constant 1-D vector."""
        if len(node.input) != 2 or tensor not in node.input:
            return None
        other = node.input[1] if node.input[0] == tensor else node.input[0]
        values = self.array(other)
        return other if values is not None and values.ndim == 1 else None

    def match(self, mean: onnx.NodeProto) -> tuple[list[str], str, float, list[onnx.NodeProto]] | None:
        """``mean`` is the first ReduceMean of a LayerNorm: return its inputs (x, gamma[, beta]), output, epsilon and nodes."""
        if mean.op_type != "ReduceMean" or not self.reduces_last_axis(mean):
            return None
        x = mean.input[0]
        sub = self.sole_reader(mean.output[0], "Sub")
        if sub is None or list(sub.input) != [x, mean.output[0]]:
            return None
        centred = sub.output[0]
        readers = self.readers(centred)
        square = next((n for n in readers if n.op_type == "Pow" and n.input[0] == centred and self.scalar(n.input[1]) == 2.0), None)
        square = square or next((n for n in readers if n.op_type == "Mul" and list(n.input) == [centred, centred]), None)
        divide = next((n for n in readers if n.op_type == "Div" and list(n.input[:1]) == [centred]), None)
        if square is None or divide is None or len(readers) != 2:
            return None
        variance = self.sole_reader(square.output[0], "ReduceMean")
        if variance is None or not self.reduces_last_axis(variance):
            return None
        pad = self.sole_reader(variance.output[0], "Add")
        if pad is None or len(pad.input) != 2:
            return None
        epsilon = self.scalar(pad.input[1] if pad.input[0] == variance.output[0] else pad.input[0])
        root = self.sole_reader(pad.output[0], "Sqrt")
        if epsilon is None or root is None or self.sole_reader(root.output[0], "Div") is not divide or divide.input[1] != root.output[0]:
            return None
        scale = self.sole_reader(divide.output[0], "Mul")
        gamma = None if scale is None else self.constant_vector(scale, divide.output[0])
        if gamma is None or self.array(gamma).size < 2:  # a scalar gain is not a per-channel scale
            return None
        nodes = [mean, sub, square, variance, pad, root, divide, scale]
        inputs, output = [x, gamma], scale.output[0]
        shift = self.sole_reader(scale.output[0], "Add")
        beta = None if shift is None else self.constant_vector(shift, scale.output[0])
        if beta is not None and self.array(beta).shape == self.array(gamma).shape:
            inputs.append(beta)
            output = shift.output[0]
            nodes.append(shift)
        return inputs, output, epsilon, nodes


def _matches(model: onnx.ModelProto, leave: Callable[[onnx.NodeProto], bool]) -> list[tuple[list[str], str, float, list[onnx.NodeProto]]]:
    matcher = _Matcher(model.graph)
    found, used = [], set()
    for node in model.graph.node:
        match = matcher.match(node)
        if match is not None and not any(id(n) in used or leave(n) for n in match[3]):
            found.append(match)
            used.update(id(n) for n in match[3])
    return found


def fuse_layernorm(model: onnx.ModelProto, leave: Callable[[onnx.NodeProto], bool] = lambda node: False) -> PassResult:
    """Replace each spelled-out LayerNorm (see the module docstring) by one LayerNormalization node.

    A pattern holding a node for which ``leave`` is true (one the user asked
    to keep as it is) stays spelled out. The model is upgraded to opset 17
    first when it is older and holds at least one such pattern; where that
    upgrade fails nothing changes and the result says why.
    """
    result = PassResult("fuse-layernorm")
    if not _matches(model, leave):
        return result
    if default_opset(model) < LAYER_NORM_OPSET:
        upgraded = upgrade_opset(model, LAYER_NORM_OPSET)
        if not upgraded.modified:
            for decline in upgraded.declined:
                result.decline("model", DeclineCode.OPSET, f"LayerNormalization needs opset {LAYER_NORM_OPSET}: {decline.reason.text}")
            return result
        result.change(upgraded.changes[0])
    graph = model.graph
    matches = _matches(model, leave)  # the converter rebuilt every node
    replaced: dict[int, onnx.NodeProto] = {}
    removed: set[int] = set()
    for inputs, output, epsilon, nodes in matches:
        last = nodes[-1]  # writes the output: the fused node takes its place in the order
        name = (last.name or output) + "_layernorm"
        replaced[id(last)] = helper.make_node("LayerNormalization", inputs, [output], name=name, axis=-1, epsilon=epsilon, stash_type=1)
        removed.update(id(n) for n in nodes if n is not last)
    kept = [replaced.get(id(n), n) for n in graph.node if id(n) not in removed]
    read_before = {name for _, _, _, nodes in matches for n in nodes for name in n.input}
    del graph.node[:]
    graph.node.extend(kept)
    still_read = consumers_map(graph)  # reads from inside subgraphs count too
    drop_unread_initializers(graph, {name for name in read_before if name not in still_read})  # exponents, epsilons
    result.change(f"fused {len(matches)} spelled-out LayerNorm pattern(s) into LayerNormalization")
    return result
