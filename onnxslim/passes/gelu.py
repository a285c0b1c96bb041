"""Fuse GELU written out of elementary ops into one Gelu node.

Exporters write exact GELU as x * 0.5 * (1 + erf(x / sqrt(2))):

    Mul(Mul(x, Add(Erf(Div(x, 1.4142)), 1)), 0.5)      (or Mul(x, 0.7071) for the Div)
    Mul(Mul(x, 0.5), Add(Erf(Div(x, 1.4142)), 1))

onnxruntime fuses these itself in a float graph, but not where x is a quantized tensor:
it gives each reader of a DequantizeLinear a copy of its own, so the Div and the Mul no
longer read the same tensor and the pattern no longer matches. A quantized CNN with
GELU then runs five float nodes per activation (EfficientFormerV2: 30 of 35 GELUs). One
Gelu node reads one DequantizeLinear: the standard op from opset 20, onnxruntime's
com.microsoft Gelu below it (the caller decides whether that domain may be used).
"""

from __future__ import annotations

import math

import onnx
from onnx import helper

from onnxslim.ir.graph import MS_DOMAIN, import_domain
from onnxslim.ir.shapes import shapes_and_types
from onnxslim.passes.base import PassResult
from onnxslim.passes.matching import GraphIndex
from onnxslim.passes.opset import default_opset

SQRT2 = math.sqrt(2.0)


def _near(value: float | None, target: float) -> bool:
    return value is not None and abs(value - target) <= 1e-4 * abs(target)


class _Matcher(GraphIndex):
    """Matches the spelled-out exact GELU patterns."""

    def constant_operand(self, node: onnx.NodeProto, target: float) -> str | None:
        """The operand of a two-input node that is not the constant ``target``, or None when neither is."""
        for index in (0, 1):
            if _near(self.scalar(node.input[index]), target):
                return node.input[1 - index]
        return None

    def only_reader(self, tensor: str, op: str) -> onnx.NodeProto | None:
        readers = self.readers(tensor)
        return readers[0] if len(readers) == 1 and readers[0].op_type == op and len(readers[0].input) == 2 else None

    def match(self, erf: onnx.NodeProto) -> tuple[str, list[onnx.NodeProto]] | None:
        """x and every node of the GELU around ``erf`` (the last one writes the result), or None."""
        scaled = self.producers.get(erf.input[0])
        if scaled is None or not self.private(erf.input[0]) or len(scaled.input) != 2:
            return None
        if scaled.op_type == "Div" and _near(self.scalar(scaled.input[1]), SQRT2):
            x = scaled.input[0]
        elif scaled.op_type == "Mul":
            x = self.constant_operand(scaled, 1.0 / SQRT2)
        else:
            return None
        add = self.only_reader(erf.output[0], "Add")
        if x is None or add is None or self.constant_operand(add, 1.0) != erf.output[0]:
            return None
        product = self.only_reader(add.output[0], "Mul")
        if product is None:
            return None
        factor = self.other(product, add.output[0])
        if factor == x:  # Mul(Mul(x, 1 + erf), 0.5)
            half = self.only_reader(product.output[0], "Mul")
            if half is None or self.constant_operand(half, 0.5) != product.output[0]:
                return None
            return x, [scaled, erf, add, product, half]
        halved = self.producers.get(factor)  # Mul(Mul(x, 0.5), 1 + erf)
        if halved is not None and halved.op_type == "Mul" and self.private(factor) and self.constant_operand(halved, 0.5) == x:
            return x, [scaled, erf, add, halved, product]
        return None


def fuse_gelu(model: onnx.ModelProto, *, allow_contrib: bool = False) -> PassResult:
    """Replace each spelled-out exact GELU (module docstring) by one Gelu node: ONNX's from opset 20, else
    com.microsoft's when ``allow_contrib`` (onnxruntime only); without either, nothing is changed."""
    result = PassResult("fuse-gelu")
    graph = model.graph
    standard = default_opset(model) >= 20
    if not standard and not allow_contrib:
        return result
    matcher = _Matcher(graph)
    replaced: dict[int, onnx.NodeProto] = {}
    removed: set[int] = set()
    for erf in [n for n in graph.node if n.op_type == "Erf"]:
        found = matcher.match(erf)
        if found is None:
            continue
        x, nodes = found
        if any(id(n) in removed or id(n) in replaced for n in nodes):
            continue
        last = nodes[-1]
        name = (last.name or last.output[0]) + "_gelu"
        fused = helper.make_node("Gelu", [x], [last.output[0]], name=name) if standard else helper.make_node("Gelu", [x], [last.output[0]], name=name, domain=MS_DOMAIN)
        replaced[id(last)] = fused
        removed.update(id(n) for n in nodes[:-1])
    if replaced:
        if not standard:  # shape inference knows no com.microsoft op: the results' types and shapes are declared for it
            shapes, types = shapes_and_types(model)
            declared = {v.name for v in graph.value_info}
            for fused in replaced.values():
                x, y = fused.input[0], fused.output[0]
                if y not in declared:
                    graph.value_info.append(helper.make_tensor_value_info(y, types.get(x, onnx.TensorProto.FLOAT), shapes.get(x)))
        kept = [replaced.get(id(n), n) for n in graph.node if id(n) not in removed]
        del graph.node[:]
        graph.node.extend(kept)
        if not standard:
            import_domain(model, MS_DOMAIN)
        result.change(f"fused {len(replaced)} spelled-out GELU pattern(s) into Gelu" + ("" if standard else " (com.microsoft)"))
    return result
