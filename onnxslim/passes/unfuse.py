"""Write onnxruntime's fused layers back as the standard operators they fuse.

A model saved from an onnxruntime session at its 'extended' optimization level (or by a tool that
does so) holds com.microsoft FusedConv and FusedGemm: a Conv or Gemm with its activation, and for
FusedConv an optional tensor added before it. Every rule of onnxslim (quantizing, pruning, folding
a BatchNormalization) is written for the standard operators, and onnxruntime fuses them again when
it loads the model, so nothing is lost by spelling them out:

    FusedConv(X, W, B, Z; activation)  ->  act(Add(Conv(X, W, B), Z))
    FusedGemm(A, B, C; activation)     ->  act(Gemm(A, B, C))

Activations: Relu, Sigmoid, Tanh, LeakyRelu (alpha), HardSigmoid (alpha, beta), Clip (min, max);
a fused layer with another activation is left as it is. FusedMatMul (a MatMul with its operands'
last two axes swapped and its result scaled: attention's query-key product with its 1/sqrt(d)) is
written as the MatMul an exporter writes, so quantize treats it as one:

    FusedMatMul(A, B; alpha, transA, transB)  ->  Mul(MatMul(A', B'), alpha)    (A' = A with its last two axes swapped where transA)

One that also moves batch axes (transBatchA, transBatchB) is left as it is.

Such a model also holds LayerNormalization nodes (fused by onnxruntime from the spelled-out form)
at the model's own opset, where onnxruntime registers the operator and onnx does not (it exists
from opset 17): no checker accepts the file. :func:`layernorm_at_opset_17` upgrades the model to
opset 17, those nodes held aside while onnx's converter (which has no adapter for them) runs.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from onnxslim.ir.graph import MS_DOMAIN, node_attr, text_attr
from onnxslim.ir.shapes import shapes_and_types
from onnxslim.ir.tensors import all_value_names, from_array, unique_name
from onnxslim.passes.base import DeclineCode, PassResult
from onnxslim.passes.clamps import CLIP_BOUNDS_AS_INPUTS_OPSET
from onnxslim.passes.layernorm import LAYER_NORM_OPSET
from onnxslim.passes.opset import default_opset, upgrade_opset

FUSED = {"FusedConv": "Conv", "FusedGemm": "Gemm"}
FUSION_ATTRIBUTES = {"activation", "activation_params", "activation_alpha", "activation_beta", "activation_gamma"}


def _activation_parameters(node: onnx.NodeProto) -> list[float]:
    """FusedConv lists them in activation_params; FusedGemm names them activation_alpha, _beta."""
    params = node_attr(node, "activation_params")
    if params is not None:
        return [float(p) for p in params]
    return [float(v) for v in (node_attr(node, "activation_alpha"), node_attr(node, "activation_beta")) if v is not None]


def _activation(node: onnx.NodeProto, x: str, y: str, taken: set[str], opset: int, graph: onnx.GraphProto) -> onnx.NodeProto | None:
    """The standard node computing ``node``'s fused activation from ``x`` into ``y``, or None for one this pass does not know."""
    kind = text_attr(node, "activation", "")
    params = _activation_parameters(node)
    name = unique_name(f"{node.name or y}_{kind.lower() or 'activation'}", taken)
    if kind in ("Relu", "Sigmoid", "Tanh"):
        return helper.make_node(kind, [x], [y], name=name)
    if kind == "LeakyRelu":
        return helper.make_node(kind, [x], [y], name=name, alpha=params[0] if params else 0.01)
    if kind == "HardSigmoid":
        alpha, beta = (params + [0.2, 0.5][len(params):])[:2]
        return helper.make_node(kind, [x], [y], name=name, alpha=alpha, beta=beta)
    if kind == "Clip" and len(params) == 2:
        if opset < CLIP_BOUNDS_AS_INPUTS_OPSET:
            return helper.make_node(kind, [x], [y], name=name, min=params[0], max=params[1])
        bounds = [unique_name(f"{name}_{which}", taken) for which in ("min", "max")]
        graph.initializer.extend(from_array(np.array(value, np.float32), bound) for value, bound in zip(params, bounds))
        return helper.make_node(kind, [x, *bounds], [y], name=name)
    return None


def _matmul(node: onnx.NodeProto, taken: set[str], graph: onnx.GraphProto, shapes: dict, types: dict) -> list[onnx.NodeProto] | str:
    """The standard nodes computing a FusedMatMul, or why it is left as it is."""
    if node_attr(node, "transBatchA", 0) or node_attr(node, "transBatchB", 0):
        return "it moves batch axes (transBatchA/transBatchB)"
    where = node.name or node.output[0]
    operands, nodes = [], []
    for index, flag in enumerate(("transA", "transB")):
        operand = node.input[index]
        if node_attr(node, flag, 0):
            rank = len(shapes[operand]) if operand in shapes else 0
            if rank < 2:
                return f"the rank of {flag}'s operand '{operand}' is unknown"
            swapped = unique_name(f"{operand}_{flag}", taken)
            perm = list(range(rank - 2)) + [rank - 1, rank - 2]
            nodes.append(helper.make_node("Transpose", [operand], [swapped], name=unique_name(f"{where}_{flag}", taken), perm=perm))
            operand = swapped
        operands.append(operand)
    alpha = float(node_attr(node, "alpha", 1.0))
    if alpha == 1.0:
        nodes.append(helper.make_node("MatMul", operands, [node.output[0]], name=where))
        return nodes
    element = types.get(node.input[0])
    if element not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE):
        return "the element type of its inputs is unknown"
    product = unique_name(f"{node.output[0]}_product", taken)
    scale = unique_name(f"{where}_alpha", taken)
    graph.initializer.append(from_array(np.array(alpha, helper.tensor_dtype_to_np_dtype(element)), scale))
    nodes.append(helper.make_node("MatMul", operands, [product], name=where))
    nodes.append(helper.make_node("Mul", [product, scale], [node.output[0]], name=unique_name(f"{where}_scale", taken)))
    return nodes


def unfuse_onnxruntime_layers(model: onnx.ModelProto) -> PassResult:
    """Rewrite every com.microsoft FusedConv and FusedGemm of the main graph as its layer, Add and activation, and every
    FusedMatMul as a MatMul and its scale (see the module docstring)."""
    result = PassResult("unfuse-onnxruntime-layers")
    graph = model.graph
    if not any(n.op_type in (*FUSED, "FusedMatMul") and n.domain == MS_DOMAIN for n in graph.node):
        return result
    taken = all_value_names(graph) | {n.name for n in graph.node}
    opset = default_opset(model)
    shapes, types = shapes_and_types(model) if any(n.op_type == "FusedMatMul" and n.domain == MS_DOMAIN for n in graph.node) else ({}, {})
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type == "FusedMatMul" and node.domain == MS_DOMAIN:
            written = _matmul(node, taken, graph, shapes, types)
            # onnx infers nothing behind a contrib operator: a chain of them passes its rank and element type on here
            ranks = [len(shapes[i]) for i in node.input[:2] if i in shapes]
            if len(ranks) == 2:
                shapes.setdefault(node.output[0], (None,) * max(ranks))
            if node.input[0] in types:
                types.setdefault(node.output[0], types[node.input[0]])
            if isinstance(written, str):
                result.decline(node.name or node.output[0], DeclineCode.UNSUPPORTED_FORM, f"FusedMatMul kept: {written}")
                nodes.append(node)
            else:
                nodes.extend(written)
                result.change(f"{node.name or node.output[0]}: FusedMatMul as " + " + ".join(n.op_type for n in written))
            continue
        if node.op_type not in FUSED or node.domain != MS_DOMAIN:
            nodes.append(node)
            continue
        where = node.name or node.output[0]
        op = FUSED[node.op_type]
        summed = node.op_type == "FusedConv" and len(node.input) > 3 and node.input[3]
        layer_out = unique_name(f"{node.output[0]}_{op.lower()}", taken)
        added_out = unique_name(f"{node.output[0]}_sum", taken) if summed else layer_out
        activation = _activation(node, added_out, node.output[0], taken, opset, graph) if node_attr(node, "activation") else None
        if node_attr(node, "activation") and activation is None:
            result.decline(where, DeclineCode.UNSUPPORTED_FORM, f"activation {node_attr(node, 'activation')!r} has no standard spelling here")
            nodes.append(node)
            continue
        final = added_out if activation is not None else node.output[0]
        layer = helper.make_node(op, list(node.input[:3]), [layer_out if summed or activation is not None else final], name=node.name or where)
        layer.attribute.extend(a for a in node.attribute if a.name not in FUSION_ATTRIBUTES)
        nodes.append(layer)
        if summed:
            nodes.append(helper.make_node("Add", [layer.output[0], node.input[3]], [final], name=unique_name(f"{where}_sum", taken)))
        if activation is not None:
            nodes.append(activation)
        result.change(f"{where}: {node.op_type} as {op}" + (" + Add" if summed else "") + (f" + {activation.op_type}" if activation is not None else ""))
    del graph.node[:]
    graph.node.extend(nodes)
    return result


HELD_DOMAIN = "onnxslim.held"  # a domain of its own, which onnx's version converter passes over


def layernorm_at_opset_17(model: onnx.ModelProto) -> PassResult:
    """Upgrade a model whose main graph holds standard LayerNormalization nodes below opset 17 (see the module docstring) to 17."""
    result = PassResult("layernorm-at-opset-17")
    held = [n for n in model.graph.node if n.op_type == "LayerNormalization" and n.domain in ("", "ai.onnx")]
    current = default_opset(model)
    if not held or current >= LAYER_NORM_OPSET:
        return result
    for node in held:
        node.domain = HELD_DOMAIN
    model.opset_import.append(helper.make_opsetid(HELD_DOMAIN, 1))
    upgraded = upgrade_opset(model, LAYER_NORM_OPSET)
    for node in model.graph.node:
        if node.domain == HELD_DOMAIN:
            node.domain = ""
    kept = [entry for entry in model.opset_import if entry.domain != HELD_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    if not upgraded.modified:
        reason = upgraded.declined[0].reason.text if upgraded.declined else "the converter did not run"
        result.decline("model", DeclineCode.OPSET, f"{len(held)} LayerNormalization node(s) at opset {current}, below the 17 onnx defines them at: {reason}")
        return result
    result.change(f"upgraded opset {current} -> {LAYER_NORM_OPSET} for {len(held)} LayerNormalization node(s) onnxruntime wrote below it")
    return result
