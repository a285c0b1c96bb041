"""Key/value heads repeated for their query heads, written as a Gather that lists each query head's key/value head.

Grouped-query and multi-query attention (Llama, Qwen2, Mistral, Gemma, Falcon ...) give each key/value head to
several query heads. Exporters write the repeat as

    Unsqueeze(k, axes=[a + 1]) -> Expand (n copies along a + 1) -> Reshape joining axes a and a + 1

so that query head g * n + r reads key/value head g. The same tensor is

    Gather(k, indices=[0] * n + [1] * n + ..., axis=a)

(then the Reshape, where it also adds or drops dims of 1). In that form each query head has its own entry in the list:
pruning removes a query head by leaving its entry out, where the Expand tied it to every query head of its group
(a model with one key/value head could lose no query head at all; one with two, half of them or none). The key and
value heads then stay whole. With ``WHOLE_GROUPS_FROM`` key/value heads or more, a group is a fine enough unit, and
removing one also shrinks the key and value projections: the Expand is left as it is.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from onnxslim.ir.graph import node_attr, replace_nodes
from onnxslim.ir.shapes import infer_shapes
from onnxslim.ir.tensors import all_value_names, consumers_map, initializer_map, producer_map, to_array, unique_name
from onnxslim.passes.base import PassResult

# from this many key/value heads on, a key/value head with its query heads stays the unit pruning removes: a ratio of 0.3
# of 4 groups removes one (25%), where of 2 it removes none and of 1 nothing can go
WHOLE_GROUPS_FROM = 4


def repeated_heads_as_gathers(model: onnx.ModelProto) -> PassResult:
    """Replace each Unsqueeze -> Expand -> Reshape that repeats every entry of one axis n times in a row (and changes
    nothing else, dims of 1 aside) with a Gather of that axis by a constant index list, where that axis has fewer than
    ``WHOLE_GROUPS_FROM`` entries; the Reshape stays where it adds or drops dims of 1. Only constant Expand targets that
    broadcast nothing else are rewritten."""
    result = PassResult("repeated-heads-as-gathers")
    graph = model.graph
    expands = [n for n in graph.node if n.op_type == "Expand" and n.domain in ("", "ai.onnx")]
    if not expands:
        return result
    producers, readers = producer_map(graph), consumers_map(graph)
    inits = initializer_map(graph)
    outputs = {v.name for v in graph.output}
    shapes = infer_shapes(model, {})
    taken = all_value_names(graph)
    replaced: dict[int, list[onnx.NodeProto]] = {}
    for expand in expands:
        found = _repeat(expand, producers, readers, inits, outputs, shapes)
        if found is None:
            continue
        source, axis, groups, copies, reshape, same_shape = found
        where = expand.name or expand.output[0]
        indices = unique_name(f"{where}_heads", taken)
        graph.initializer.append(onnx.numpy_helper.from_array(np.repeat(np.arange(groups, dtype=np.int64), copies), indices))
        if same_shape:  # the Reshape only joined the two axes: the Gather writes its output
            gather = helper.make_node("Gather", [source, indices], list(reshape.output), name=expand.name, axis=axis)
            replaced[id(reshape)] = []
        else:
            gathered = unique_name(f"{where}_gathered", taken)
            gather = helper.make_node("Gather", [source, indices], [gathered], name=expand.name, axis=axis)
            reshape.input[0] = gathered
        replaced[id(expand)] = [gather]
        result.change(f"Expand {where}: {groups} head(s) along axis {axis} of '{source}' repeated {copies} times, as a Gather of each one's copies")
    replace_nodes(graph, replaced)
    return result


def _repeat(expand, producers, readers, inits, outputs, shapes):
    """(source, axis, entries along it, copies of each, the Reshape, whether the Reshape's output has the Gather's
    shape) where ``expand`` repeats each entry of one axis of ``source`` in a row; None otherwise."""
    unsqueeze = producers.get(expand.input[0])
    after = readers.get(expand.output[0], [])
    if unsqueeze is None or unsqueeze.op_type != "Unsqueeze" or len(after) != 1 or after[0].op_type != "Reshape" or expand.output[0] in outputs:
        return None
    reshape = after[0]
    if len(expand.input) < 2 or expand.input[1] not in inits:
        return None
    target = to_array(inits[expand.input[1]])
    source = unsqueeze.input[0]
    source_shape, grown_shape, out_shape = shapes.get(source), shapes.get(unsqueeze.output[0]), shapes.get(reshape.output[0])
    if source_shape is None or grown_shape is None or out_shape is None or target.ndim != 1 or target.size != len(grown_shape):
        return None
    axes = _unsqueeze_axes(unsqueeze, inits)
    if axes is None or len(axes) != 1:
        return None
    inserted = axes[0] % len(grown_shape)
    axis = inserted - 1
    groups, copies = source_shape[axis] if axis >= 0 else None, int(target[inserted])
    if not isinstance(groups, int) or groups < 1 or groups >= WHOLE_GROUPS_FROM or copies < 2:
        return None
    # every other entry keeps the input's size: 1 (Expand keeps the dim) or that size stated
    if any(i != inserted and int(t) != 1 and int(t) != grown_shape[i] for i, t in enumerate(target)):
        return None
    gathered = [*source_shape[:axis], groups * copies, *source_shape[axis + 1 :]]
    if [d for d in out_shape if d != 1] != [d for d in gathered if d != 1]:
        return None
    return source, axis, groups, copies, reshape, list(out_shape) == gathered


def _unsqueeze_axes(node: onnx.NodeProto, inits) -> list[int] | None:
    if len(node.input) > 1 and node.input[1]:
        return to_array(inits[node.input[1]]).reshape(-1).tolist() if node.input[1] in inits else None
    axes = node_attr(node, "axes")
    return None if axes is None else list(axes)
