"""Read one part of a Concat directly where a Gather picks it out again.

torch exports ``h[-1]`` of a stacked ``nn.LSTM``'s final states as a Concat of every layer's state along the layer axis,
then a Gather of the last entry. The Concat joins tensors that are otherwise unrelated, so every rule that follows
tensors position by position (pruning's channel ties among them) sees them as one; the Gather reads one of them.

    Gather(Concat(a, b, c, axis=k), index=i, axis=k)  ->  Squeeze(the input holding entry i, axes=[k])

where that input has size 1 along k (a scalar index drops the axis, as the Squeeze does).
"""

from __future__ import annotations

import onnx
from onnx import helper

from onnxslim.ir.graph import node_attr
from onnxslim.ir.shapes import infer_shapes
from onnxslim.ir.tensors import all_value_names, initializer_map, to_array, unique_name
from onnxslim.passes.base import PassResult
from onnxslim.passes.opset import default_opset, with_axes


def picked_concat_inputs_read_directly(model: onnx.ModelProto) -> PassResult:
    """Replace each Gather of a constant scalar index from a Concat along the same axis with a Squeeze of the one Concat
    input holding that entry, where the Concat inputs' sizes along the axis are known; the Concat stays for its other
    readers and is otherwise left for dead-node removal."""
    result = PassResult("picked-concat-inputs-read-directly")
    graph = model.graph
    producers = {output: node for node in graph.node for output in node.output}
    inits = initializer_map(graph)
    candidates = [n for n in graph.node if n.op_type == "Gather" and n.domain in ("", "ai.onnx") and len(n.input) == 2
                  and n.input[1] in inits and producers.get(n.input[0]) is not None and producers[n.input[0]].op_type == "Concat"]
    if not candidates:
        return result
    shapes = infer_shapes(model, {})
    opset = default_opset(model)
    taken = all_value_names(graph)
    replaced: dict[int, list[onnx.NodeProto]] = {}
    for gather in candidates:
        concat = producers[gather.input[0]]
        index = to_array(inits[gather.input[1]])
        rank = len(shapes.get(concat.output[0]) or ())
        if index.ndim != 0 or not rank:
            continue
        axis = int(node_attr(concat, "axis", 0)) % rank
        if int(node_attr(gather, "axis", 0)) % rank != axis:
            continue
        sizes = [(shapes.get(name) or (None,) * rank)[axis] for name in concat.input]
        if not all(isinstance(size, int) and size >= 0 for size in sizes):
            continue
        entry = int(index) + (sum(sizes) if int(index) < 0 else 0)
        position, start = None, 0
        for i, size in enumerate(sizes):
            if start <= entry < start + size:
                position = i
                break
            start += size
        if position is None or sizes[position] != 1:
            continue
        source = concat.input[position]
        where = gather.name or gather.output[0]
        def axes_tensor(axis: int, where: str = where) -> str:
            axes = unique_name(f"{where}_axes", taken)
            graph.initializer.append(helper.make_tensor(axes, onnx.TensorProto.INT64, [1], [axis]))
            return axes

        replaced[id(gather)] = [with_axes("Squeeze", source, gather.output[0], axis, opset, gather.name, axes_tensor)]
        result.change(f"Gather {where}: entry {int(index)} of Concat {concat.name or concat.output[0]} read from '{source}' directly")
    if replaced:
        nodes = [new for node in graph.node for new in replaced.get(id(node), [node])]
        del graph.node[:]
        graph.node.extend(nodes)
    return result
