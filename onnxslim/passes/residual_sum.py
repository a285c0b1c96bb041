"""Write an Add that only a layer normalization reads as Sum, so that onnxruntime keeps the two apart.

onnxruntime's CPU provider fuses Add -> LayerNormalization (also one it has just fused
from ReduceMean, Sub, Pow, ... itself) into its com.microsoft SkipLayerNormalization
wherever it can prove that both inputs of the Add have the same 3-D shape, as models with
shape annotations let it (torch.export writes them for every tensor). In some onnxruntime
releases that kernel is several times slower than the two it replaces: 1.32's takes 67 us
for a (1, 32, 384) input where Add and LayerNormalization take 14 us, and 2.6 ms against
0.33 ms at (1, 512, 1024), a fifth of the run time of an INT8 all-MiniLM-L6-v2 exported
by torch.export. Sum of two tensors computes the same values with the same broadcasting,
and the fusion does not look for it. quantize applies this pass only where a probe finds
the fused kernel slower on the onnxruntime at hand (:func:`onnxslim.runtime.kernels.skip_layernorm_slower`).

Rewritten: an Add (standard domain, two inputs, neither a constant of rank below 3, which
would be a bias another fusion may want) whose result is not a graph output and is read only
by LayerNormalization nodes as their input, or only by the ReduceMean and Sub that start a
spelled-out layer normalization.
"""

from __future__ import annotations

import onnx
from onnx import helper

from onnxslim.ir.graph import node_attr, replace_nodes
from onnxslim.ir.tensors import all_value_names, unique_name
from onnxslim.passes.base import DeclineCode, PassResult
from onnxslim.passes.layernorm import LAYER_NORM_OPSET
from onnxslim.passes.matching import GraphIndex
from onnxslim.passes.opset import default_opset, upgrade_opset

SUM_BROADCAST_OPSET = 8  # Sum broadcasts like Add from here on


def _normalizes(index: GraphIndex, tensor: str) -> bool:
    """Whether only a layer normalization reads ``tensor``: LayerNormalization nodes (as their input), or the
    ReduceMean over the last axis and the Sub of that mean that begin a spelled-out one."""
    readers = index.readers(tensor)
    if not readers:
        return False
    if all(r.op_type == "LayerNormalization" and r.input[0] == tensor for r in readers):
        return True
    if len(readers) != 2 or {r.op_type for r in readers} != {"ReduceMean", "Sub"}:
        return False
    mean = next(r for r in readers if r.op_type == "ReduceMean")
    sub = next(r for r in readers if r.op_type == "Sub")
    axes = node_attr(mean, "axes") if len(mean.input) < 2 else index.array(mean.input[1])
    return axes is not None and [int(a) for a in list(axes)] == [-1] and list(sub.input) == [tensor, mean.output[0]]


def _vector(index: GraphIndex, name: str) -> bool:
    """Whether ``name`` is a constant of rank below 3: a bias, which onnxruntime may fold into the layer before instead."""
    values = index.array(name)
    return values is not None and values.ndim < 3


def _adds_before_layernorm(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    index = GraphIndex(graph)
    return [n for n in graph.node if n.op_type == "Add" and n.domain in ("", "ai.onnx") and len(n.input) == 2
            and not any(_vector(index, i) for i in n.input) and _normalizes(index, n.output[0])]


def has_adds_before_layernorm(model: onnx.ModelProto) -> bool:
    """Whether :func:`sum_before_layernorm` has an Add to rewrite in ``model`` (so whether its kernels are worth timing)."""
    return bool(_adds_before_layernorm(model.graph))


def sum_before_layernorm(model: onnx.ModelProto) -> PassResult:
    """Replace each Add that only a layer normalization reads (module docstring) by a Sum of the same two inputs."""
    result = PassResult("sum-before-layernorm")
    graph = model.graph
    found = _adds_before_layernorm(graph)
    if not found:
        return result
    if default_opset(model) < SUM_BROADCAST_OPSET:
        result.decline("model", DeclineCode.OPSET, f"Sum broadcasts only from opset {SUM_BROADCAST_OPSET}; the model has {default_opset(model)}")
        return result
    chosen = {id(n) for n in found}
    rewritten = [helper.make_node("Sum", list(n.input), list(n.output), name=n.name) if id(n) in chosen else n for n in graph.node]
    del graph.node[:]
    graph.node.extend(rewritten)
    result.change(f"{len(found)} Add(s) before a layer normalization written as Sum (e.g. {found[0].name or found[0].output[0]}), "
                  "which onnxruntime does not fuse into its slower SkipLayerNormalization")
    return result


SKIP_NORM_OPTIONAL_STATISTICS = (1, 2)  # SkipLayerNormalization's mean and inverse standard deviation outputs
SKIP_NORM_SUM = 3  # its input + skip + bias output


def fused_skip_layernorms(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The main graph's com.microsoft SkipLayerNormalization nodes (onnxruntime's transformer optimizer writes one per residual)."""
    return [n for n in model.graph.node if n.op_type == "SkipLayerNormalization" and n.domain == "com.microsoft"]


def skip_layernorm_apart(model: onnx.ModelProto) -> PassResult:
    """Write each com.microsoft SkipLayerNormalization as Sum(input, skip, bias) -> LayerNormalization (opset 17, upgraded to
    where needed): the same values on the two kernels this module's docstring finds faster than the fused one. A node whose
    mean or inverse standard deviation output is read is left as it is."""
    result = PassResult("skip-layernorm-apart")
    if not fused_skip_layernorms(model):
        return result
    if default_opset(model) < LAYER_NORM_OPSET:
        upgraded = upgrade_opset(model, LAYER_NORM_OPSET)
        if not upgraded.modified:
            reason = upgraded.declined[0].reason.text if upgraded.declined else "the opset could not be upgraded"
            result.decline("model", DeclineCode.OPSET, f"LayerNormalization needs opset {LAYER_NORM_OPSET}: {reason}")
            return result
        result.change(upgraded.changes[0])
    graph = model.graph
    index = GraphIndex(graph)
    chosen = []
    for node in fused_skip_layernorms(model):
        statistics = [node.output[i] for i in SKIP_NORM_OPTIONAL_STATISTICS if len(node.output) > i and node.output[i]]
        if any(index.readers(t) or t in index.outputs for t in statistics):
            result.decline(node.name or node.output[0], DeclineCode.SHARED_VALUE, "its mean or inverse standard deviation is read")
            continue
        chosen.append(node)
    if not chosen:
        return result
    taken = all_value_names(graph) | {n.name for n in graph.node}
    placed: dict[int, list[onnx.NodeProto]] = {}
    for node in chosen:
        where = node.name or node.output[0]
        summed = [name for name in (node.input[0], node.input[1], node.input[4] if len(node.input) > 4 else "") if name]
        total = node.output[SKIP_NORM_SUM] if len(node.output) > SKIP_NORM_SUM and node.output[SKIP_NORM_SUM] else unique_name(f"{where}_sum", taken)
        norm_inputs = [total, node.input[2]] + ([node.input[3]] if len(node.input) > 3 and node.input[3] else [])
        placed[id(node)] = [
            helper.make_node("Sum", summed, [total], name=unique_name(f"{where}_sum", taken)),
            helper.make_node("LayerNormalization", norm_inputs, [node.output[0]], name=where, axis=-1, epsilon=float(node_attr(node, "epsilon", 1e-12))),
        ]
    replace_nodes(graph, placed)
    result.change(f"{len(placed)} SkipLayerNormalization node(s) as Sum and LayerNormalization (e.g. {chosen[0].name or chosen[0].output[0]}), "
                  "two kernels faster than the fused one on this onnxruntime")
    return result
