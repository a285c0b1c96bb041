"""Fuse HardSwish written out of elementary ops into one HardSwish node (opset >= 14).

Recognized, with x read by the first and the multiplying node:
    Mul(x, Clip(Add(x, 3), 0, 6)) / 6      (Div by 6 or Mul by 1/6, either operand order)
    Mul(x, Clip(Add(x, 3), 0, 6) / 6)
    Mul(x, HardSigmoid(x, alpha=1/6, beta=0.5))
All equal x * min(max(x + 3, 0), 6) / 6 = HardSwish(x).
"""

from __future__ import annotations

import onnx
from onnx import helper

from onnxslim.passes.base import DeclineCode, PassResult
from onnxslim.passes.matching import GraphIndex
from onnxslim.passes.opset import default_opset

SIXTH = 1.0 / 6.0


class _Matcher(GraphIndex):
    """Matches the spelled-out HardSwish patterns."""

    def hard_sigmoid_of(self, tensor: str, scaled: bool) -> tuple[str, list[onnx.NodeProto]] | None:
        """If ``tensor`` is relu6(x + 3) (scaled=False) or relu6(x + 3) / 6 (scaled=True), return x and the nodes."""
        node = self.producers.get(tensor)
        if node is None or not self.private(tensor):
            return None
        if node.op_type == "HardSigmoid" and scaled:
            alpha = next((a.f for a in node.attribute if a.name == "alpha"), 0.2)
            beta = next((a.f for a in node.attribute if a.name == "beta"), 0.5)
            if abs(alpha - SIXTH) < 1e-6 and abs(beta - 0.5) < 1e-6:
                return node.input[0], [node]
            return None
        nodes = []
        if scaled:
            if node.op_type == "Div" and self.scalar(node.input[1]) == 6.0:
                inner = node.input[0]
            elif node.op_type == "Mul" and any(abs((self.scalar(n) or 0) - SIXTH) < 1e-7 for n in node.input):
                inner = node.input[0] if self.scalar(node.input[1]) is not None else node.input[1]
            else:
                return None
            nodes.append(node)
            node = self.producers.get(inner)
            if node is None or not self.private(inner):
                return None
        if node.op_type != "Clip":
            return None
        low = self.scalar(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        high = self.scalar(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if low != 0.0 or high != 6.0:
            return None
        nodes.append(node)
        add = self.producers.get(node.input[0])
        if add is None or add.op_type != "Add" or not self.private(node.input[0]):
            return None
        if self.scalar(add.input[1]) == 3.0:
            x = add.input[0]
        elif self.scalar(add.input[0]) == 3.0:
            x = add.input[1]
        else:
            return None
        nodes.append(add)
        return x, nodes

    def match(self, node: onnx.NodeProto) -> tuple[str, list[onnx.NodeProto]] | None:
        """``node`` is the last node of a HardSwish pattern: return x and every node of it."""
        if node.op_type == "Mul" and len(node.input) == 2:
            for gate in node.input:
                found = self.hard_sigmoid_of(gate, scaled=True)
                if found and self.other(node, gate) == found[0]:
                    return found[0], found[1] + [node]
        divided = None
        if node.op_type == "Div" and self.scalar(node.input[1]) == 6.0:
            divided = node.input[0]
        elif node.op_type == "Mul" and len(node.input) == 2:
            for index in (0, 1):
                if abs((self.scalar(node.input[index]) or 0) - SIXTH) < 1e-7:
                    divided = node.input[1 - index]
        if divided is None or not self.private(divided):
            return None
        product = self.producers.get(divided)
        if product is None or product.op_type != "Mul":
            return None
        for gate in product.input:
            found = self.hard_sigmoid_of(gate, scaled=False)
            if found and self.other(product, gate) == found[0]:
                return found[0], found[1] + [product, node]
        return None


def fuse_hardswish(model: onnx.ModelProto) -> PassResult:
    """Replace each spelled-out HardSwish (see the module docstring) by one HardSwish node; needs opset 14."""
    result = PassResult("fuse-hardswish")
    graph = model.graph
    if default_opset(model) < 14:
        if any(n.op_type == "Clip" for n in graph.node):
            result.decline("model", DeclineCode.OPSET, f"HardSwish needs opset 14; the model has {default_opset(model)}")
        return result
    matcher = _Matcher(graph)
    replaced: dict[int, onnx.NodeProto] = {}
    removed: set[int] = set()
    for node in graph.node:
        if id(node) in removed:
            continue
        found = matcher.match(node)
        if found is None:
            continue
        x, nodes = found
        if any(id(n) in removed for n in nodes):
            continue
        fused = helper.make_node("HardSwish", [x], [node.output[0]], name=(node.name or node.output[0]) + "_hardswish")
        replaced[id(node)] = fused
        removed.update(id(n) for n in nodes if n is not node)
    if replaced:
        kept = [replaced.get(id(n), n) for n in graph.node if id(n) not in removed]
        del graph.node[:]
        graph.node.extend(kept)
        result.change(f"fused {len(replaced)} spelled-out HardSwish pattern(s) into HardSwish")
    return result
