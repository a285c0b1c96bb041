"""Write an Einsum that applies a constant weight to an activation as the MatMul it is.

Keras' EinsumDense (its MultiHeadAttention projections), and models that call ``einsum`` for a
linear layer, export as an Einsum of the activation and a constant weight: ``bld,dh->blh``,
``abc,cde->abde`` (into heads), ``abcd,cde->abe`` (out of heads). Every rule that quantizes or
prunes a linear layer is written for MatMul, and onnxruntime has no integer Einsum. When the
activation ends with the contracted indices and the output is the activation's other indices then
the weight's, the Einsum is a matrix product of the activation with its last contracted axes
flattened and the weight (a constant, so its axes can be put in any order) flattened to two:

    Einsum("abc,cde->abde", x, W)  ->  Reshape(MatMul(x, W.reshape(c, d * e)), [0, 0, d, e])
    Einsum("abcd,cde->abe", x, W)  ->  MatMul(Reshape(x, [0, 0, c * d]), W.reshape(c * d, e))

An ellipsis may stand for the activation's leading axes (``...d,dh->...h``) where its rank is
known. Other Einsums (batch indices in both operands, repeated indices, contracted axes of the
activation that are not its last ones) are left as they are.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper

from onnxslim.ir.graph import drop_unread_initializers, replace_nodes
from onnxslim.ir.shapes import infer_shapes
from onnxslim.ir.tensors import all_value_names, from_array, unique_name
from onnxslim.passes.base import DeclineCode, PassResult
from onnxslim.passes.matching import GraphIndex

ELLIPSIS = "."


def _terms(equation: str) -> tuple[list[str], str] | None:
    """(operand subscripts, output subscripts) with '...' written as one '.', or None for an equation without an explicit output."""
    equation = equation.replace(" ", "").replace("...", ELLIPSIS)
    if "->" not in equation:
        return None
    inputs, output = equation.split("->")
    return inputs.split(","), output


def linear_form(x_terms: str, w_terms: str, out_terms: str) -> tuple[int, list[int]] | None:
    """When ``x, w -> out`` is a product of x, its contracted axes last, with the constant weight: (how many axes of x are
    contracted, the order of the weight's axes that puts its contracted ones first, as x ends with them, and its other ones
    as the output ends with them); else None."""
    if ELLIPSIS in w_terms or any(len(set(t.replace(ELLIPSIS, ""))) != len(t.replace(ELLIPSIS, "")) for t in (x_terms, w_terms, out_terms)):
        return None
    if ELLIPSIS in x_terms and not (x_terms.startswith(ELLIPSIS) and out_terms.startswith(ELLIPSIS)):
        return None
    contracted = {c for c in w_terms if c in x_terms and c not in out_terms}
    if not contracted or any(c in x_terms for c in w_terms if c not in contracted):  # a batch index shared by both: not a plain product
        return None
    count = len(contracted)
    x_free, x_contracted = x_terms[: len(x_terms) - count], x_terms[len(x_terms) - count :]
    w_free = out_terms[len(x_free):]
    if set(x_contracted) != contracted or not out_terms.startswith(x_free) or sorted(w_free) != sorted(c for c in w_terms if c not in contracted) or not w_free:
        return None
    return count, [w_terms.index(c) for c in x_contracted + w_free]


def einsum_to_matmul(model: onnx.ModelProto) -> PassResult:
    """Rewrite each two-operand Einsum of an activation and a constant weight that is a matrix product (see the module docstring)."""
    result = PassResult("einsum-to-matmul")
    graph = model.graph
    einsums = [n for n in graph.node if n.op_type == "Einsum" and n.domain in ("", "ai.onnx") and len(n.input) == 2]
    if not einsums:
        return result
    index = GraphIndex(graph)
    shapes = None
    taken = all_value_names(graph) | {n.name for n in graph.node}
    placed: dict[int, list[onnx.NodeProto]] = {}
    replaced: set[str] = set()
    for node in einsums:
        where = node.name or node.output[0]
        equation = next((a.s.decode() for a in node.attribute if a.name == "equation"), "")
        terms = _terms(equation)
        constant = [i for i, name in enumerate(node.input) if name in index.constants]
        if terms is None or len(constant) != 1:
            continue
        w_at = constant[0]
        x_terms, w_terms = terms[0][1 - w_at], terms[0][w_at]
        form = linear_form(x_terms, w_terms, terms[1])
        weight = index.array(node.input[w_at])
        if form is None or weight is None or weight.ndim != len(w_terms) or weight.dtype.kind != "f":
            result.decline(where, DeclineCode.UNSUPPORTED_FORM, f"Einsum '{equation}' is not a product with the weight's axes in order")
            continue
        contracted, order = form
        weight = np.transpose(weight, order)  # a constant: its axes can be put in the product's order here
        free = len(order) - contracted
        x = node.input[1 - w_at]
        rank = len(x_terms)
        if ELLIPSIS in x_terms:
            shapes = infer_shapes(model) if shapes is None else shapes
            known = shapes.get(x)
            if known is None:
                result.decline(where, DeclineCode.UNSUPPORTED_FORM, f"Einsum '{equation}': the rank behind '...' is unknown")
                continue
            rank = len(known)
        k = int(np.prod(weight.shape[:contracted]))
        out_dims = [int(d) for d in weight.shape[contracted:]]
        flat = unique_name(f"{node.input[w_at]}_as_matrix", taken)
        graph.initializer.append(from_array(weight.reshape(k, math.prod(out_dims)), flat))
        nodes, source = [], x
        if contracted > 1:
            shape = unique_name(f"{where}_input_shape", taken)
            graph.initializer.append(from_array(np.array([0] * (rank - contracted) + [k], np.int64), shape))
            source = unique_name(f"{x}_flattened", taken)
            nodes.append(helper.make_node("Reshape", [x, shape], [source], name=unique_name(f"{where}_flatten", taken)))
        product = node.output[0] if free == 1 else unique_name(f"{node.output[0]}_matmul", taken)
        nodes.append(helper.make_node("MatMul", [source, flat], [product], name=where))
        if free > 1:
            shape = unique_name(f"{where}_output_shape", taken)
            graph.initializer.append(from_array(np.array([0] * (rank - contracted) + out_dims, np.int64), shape))
            nodes.append(helper.make_node("Reshape", [product, shape], [node.output[0]], name=unique_name(f"{where}_unflatten", taken)))
        placed[id(node)] = nodes
        replaced.add(node.input[w_at])
        result.change(f"{where}: Einsum '{equation}' as " + " + ".join(n.op_type for n in nodes))
    if not placed:
        return result
    replace_nodes(graph, placed)
    drop_unread_initializers(graph, replaced)
    return result
