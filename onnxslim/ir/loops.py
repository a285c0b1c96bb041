"""Loops whose step count follows the data, and the part of a model in front of them.

A decoder exported with its search in the graph (a Loop that stops at an end
token) runs as many steps as its outputs ask for: a model whose weights were
cut, before any recovery, may never emit the end token and run ten times
longer, whatever its layers cost. Comparing such models' latencies times their
outputs, not their layers; timing the part in front of the loops compares
what a change to the layers there costs.
"""

from __future__ import annotations

import onnx

from onnxslim.ir.graph import node_attr, observing_only
from onnxslim.ir.shapes import element_types
from onnxslim.ir.tensors import outer_references, subgraphs


def data_dependent_loops(graph: onnx.GraphProto) -> list[int]:
    """The positions of the top-level Loop nodes whose body computes its own continue condition (so the data decide how
    many steps run)."""
    found = []
    for index, node in enumerate(graph.node):
        body = node_attr(node, "body") if node.op_type == "Loop" else None
        if body is None or len(body.input) < 2 or not body.output:
            continue
        condition_in, condition_out = body.input[1].name, body.output[0].name
        producers = {o: n for n in body.node for o in n.output if o}
        producer = producers.get(condition_out)
        passed_through = producer is None or (producer.op_type == "Identity" and producer.input[0] == condition_in)
        if not passed_through:
            found.append(index)
    return found


def in_front_of_loops(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """``model`` cut where its data-dependent loops begin: its outputs are what the loops (and the nodes after them) read
    from the rest, and the graph outputs that do not depend on a loop. None when the model has no such loop, when
    nothing is in front of them, or when a tensor at the cut has no known element type."""
    graph = model.graph
    nodes = list(graph.node)
    loops = data_dependent_loops(graph)
    if not loops:
        return None
    after = set(loops)
    tainted = {o for index in loops for o in nodes[index].output if o}
    for index, node in enumerate(nodes):  # graphs are in topological order: one pass reaches everything after a loop
        if index in after or _reads(node) & tainted:
            after.add(index)
            tainted.update(o for o in node.output if o)
    in_front = {o for index, node in enumerate(nodes) if index not in after for o in node.output if o}
    cut: list[str] = []
    for index in sorted(after):
        cut += [name for name in sorted(_reads(nodes[index])) if name in in_front and name not in cut]
    cut += [o.name for o in graph.output if o.name in in_front and o.name not in cut]
    if not cut:
        return None
    types = element_types(model)
    if any(not types.get(name) for name in cut):
        return None
    return observing_only(model, cut, types)


def _reads(node: onnx.NodeProto) -> set[str]:
    """Every tensor ``node`` reads: its inputs and what its subgraphs take from the enclosing scope."""
    names = {name for name in node.input if name}
    for body in subgraphs(node):
        names |= outer_references(body)
    return names
