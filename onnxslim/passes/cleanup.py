"""Remove Identity nodes, inference-mode Dropout, and nodes whose results nobody reads.

Names a subgraph reads from the enclosing graph count as reads, so a node
feeding only an If branch or a Loop body is kept, and renaming an Identity's
output is carried into the subgraphs that refer to it.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxslim.ir.graph import remove_initializers, rename_reads_everywhere
from onnxslim.ir.tensors import constant_names, initializer_map, outer_references, subgraphs, to_array
from onnxslim.passes.base import DeclineCode, PassResult


def _is_passthrough(node: onnx.NodeProto, graph: onnx.GraphProto) -> bool:
    if node.domain not in ("", "ai.onnx"):
        return False
    if node.op_type == "Identity":
        return True
    if node.op_type != "Dropout":
        return False
    if len(node.output) > 1 and node.output[1]:
        return False  # the mask is used
    if len(node.input) < 3 or not node.input[2]:
        return True
    # training_mode fed from outside could switch dropout on at run time
    if node.input[2] not in constant_names(graph):
        return False
    return not bool(np.asarray(to_array(initializer_map(graph)[node.input[2]])).any())


def remove_identities(model: onnx.ModelProto) -> PassResult:
    """Remove Identity nodes and inference-mode Dropout, renaming their readers to read the input directly."""
    result = PassResult("remove-identity")
    graph = model.graph
    outputs = {v.name for v in graph.output}
    renames: dict[str, str] = {}
    kept: list[onnx.NodeProto] = []
    for node in graph.node:
        if not _is_passthrough(node, graph):
            kept.append(node)
            continue
        source, target = node.input[0], node.output[0]
        if target in outputs:
            result.decline(node.name or target, DeclineCode.GRAPH_OUTPUT, "its output is a graph output, whose name must stay")
            kept.append(node)
            continue
        renames[target] = source
    if renames:
        for old in renames:  # a chain of them reads the first one's input, in whatever order they come
            seen = {old}
            while renames[old] in renames and renames[old] not in seen:
                seen.add(renames[old])
                renames[old] = renames[renames[old]]
        rename_reads_everywhere(graph, renames)
        del graph.node[:]
        graph.node.extend(kept)
        result.change(f"removed {len(renames)} Identity/Dropout node(s)")
    return result


def remove_dead_nodes(model: onnx.ModelProto) -> PassResult:
    """Drop nodes and initializers that no graph output depends on."""
    result = PassResult("remove-dead")
    graph = model.graph
    live = {v.name for v in graph.output}
    kept_reversed: list[onnx.NodeProto] = []
    dropped: dict[str, int] = {}
    for node in reversed(list(graph.node)):
        if any(o in live for o in node.output if o):
            kept_reversed.append(node)
            live.update(n for n in node.input if n)
            for sub in subgraphs(node):
                live |= outer_references(sub)
        else:
            dropped[node.op_type] = dropped.get(node.op_type, 0) + 1
    if dropped:
        del graph.node[:]
        graph.node.extend(reversed(kept_reversed))
        detail = ", ".join(f"{count} {op}" for op, count in sorted(dropped.items()))
        result.change(f"removed {sum(dropped.values())} dead node(s): {detail}")
    inputs = {v.name for v in graph.input}
    unused = {t.name for t in graph.initializer if t.name not in live and t.name not in inputs}
    if unused:
        remove_initializers(graph, unused)
        result.change(f"removed {len(unused)} unused initializer(s)")
    produced = {o for n in graph.node for o in n.output}
    stale = [v for v in graph.value_info if v.name not in produced]
    if stale:
        keep = [v for v in graph.value_info if v.name in produced]
        del graph.value_info[:]
        graph.value_info.extend(keep)
        result.modified = True  # shape annotations of removed tensors: not worth a line in the report
    return result
