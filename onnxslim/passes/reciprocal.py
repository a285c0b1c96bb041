"""Write a product with a reciprocal as a division, so onnxruntime fuses the RMS normalization around it.

torch exports ``x * torch.rsqrt(mean(x ** 2) + eps)`` (the RMSNorm of Llama-style models) as
``Mul(x, Reciprocal(Sqrt(...)))``. onnxruntime fuses the Pow, ReduceMean, Add, Sqrt, Div and the
scale's Mul into one SimplifiedLayerNormalization kernel, but only when the division is a Div:
written with Reciprocal and Mul, every normalization runs as seven small kernels. The two
forms compute the same quotient (within a rounding of the last bit).

    Mul(x, Reciprocal(y))  ->  Div(x, y)        (the Reciprocal read by that Mul only)
"""

from __future__ import annotations

import onnx
from onnx import helper

from onnxslim.passes.base import PassResult
from onnxslim.passes.matching import GraphIndex


def reciprocal_products_as_division(model: onnx.ModelProto) -> PassResult:
    """Replace each Mul by the output of a Reciprocal read by nothing else with a Div by the Reciprocal's input
    (Reciprocal is defined on floating-point types only, each of which Div takes too: no type to check)."""
    result = PassResult("reciprocal-products-as-division")
    graph = model.graph
    index = GraphIndex(graph)
    reciprocals = [n for n in graph.node if n.op_type == "Reciprocal" and n.domain in ("", "ai.onnx")]
    if not reciprocals:
        return result
    rewritten: dict[int, onnx.NodeProto] = {}
    dropped: set[int] = set()
    for reciprocal in reciprocals:
        where = reciprocal.name or reciprocal.output[0]
        readers = index.readers(reciprocal.output[0])
        if len(readers) != 1 or readers[0].op_type != "Mul" or readers[0].domain not in ("", "ai.onnx") or len(readers[0].input) != 2:
            continue  # a reciprocal used more than once is cheaper computed once
        product = readers[0]
        numerator = GraphIndex.other(product, reciprocal.output[0])
        if numerator == reciprocal.output[0]:
            continue  # Mul(r, r): a square, not a quotient
        rewritten[id(product)] = helper.make_node("Div", [numerator, reciprocal.input[0]], list(product.output), name=product.name)
        dropped.add(id(reciprocal))
        result.change(f"{product.name or product.output[0]}: times Reciprocal {where} -> Div")
    if not rewritten:
        return result
    nodes = [rewritten.get(id(n), n) for n in graph.node if id(n) not in dropped]
    del graph.node[:]
    graph.node.extend(nodes)
    return result
