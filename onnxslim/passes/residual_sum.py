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

from onnxslim.ir.graph import node_attr
from onnxslim.passes.base import DeclineCode, PassResult
from onnxslim.passes.matching import GraphIndex
from onnxslim.passes.opset import default_opset

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
