"""Graph helpers: topological order and node names."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import onnx
from onnx import TensorProto, helper

from onnxslim.ir.tensors import outer_references, subgraphs, unique_name


def node_attr(node: onnx.NodeProto, name: str, default=None):
    """The value of ``node``'s attribute ``name``, or ``default`` when it has none."""
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def text_attr(node: onnx.NodeProto, name: str, default: str) -> str:
    """The value of ``node``'s string attribute ``name`` as text (onnx hands strings back as bytes), or ``default``."""
    value = node_attr(node, name, default)
    return value.decode() if isinstance(value, bytes) else value


def topological_sort(graph: onnx.GraphProto) -> None:
    """Order ``graph``'s nodes so that every tensor is produced before it is read (stable)."""
    available = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    reads = {id(n): set(n.input) | set().union(*(outer_references(s) for s in subgraphs(n))) for n in pending}
    produced_anywhere = {o for n in pending for o in n.output}
    while pending:
        progress = []
        rest = []
        for node in pending:
            needed = {r for r in reads[id(node)] if r in produced_anywhere}
            if needed <= available:
                progress.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if not progress:
            raise ValueError(f"graph has a cycle or a missing tensor near node '{rest[0].name}'")
        ordered.extend(progress)
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def unique_node_names(graph: onnx.GraphProto) -> int:
    """Rename the second and later nodes sharing a name (in ``graph`` and its subgraphs); returns how many.

    onnxruntime refuses a graph with two nodes of one name, and onnxslim's plans
    and reports refer to nodes by name. The first node keeps the name, empty
    names stay empty, and every other name is left as it is.
    """
    taken = {n.name for n in graph.node if n.name}
    seen: set[str] = set()
    renamed = 0
    for node in graph.node:
        if node.name and node.name in seen:
            base, suffix = node.name, 1
            while f"{base}_{suffix}" in taken:
                suffix += 1
            node.name = f"{base}_{suffix}"
            taken.add(node.name)
            renamed += 1
        seen.add(node.name)
        for sub in subgraphs(node):
            renamed += unique_node_names(sub)
    return renamed


def erfc_as_one_minus_erf(graph: onnx.GraphProto) -> int:
    """Write each Erfc node (in ``graph`` and its subgraphs) as 1 - Erf; returns how many.

    tf2onnx (1.17) writes TensorFlow's erfc, which Keras 3's exact GELU computes, as an ``Erfc`` node, an operator no
    ONNX opset defines: onnx's checker and onnxruntime refuse the model. Its meaning is plain, and Erf is defined."""
    rewritten = 0
    nodes = []
    taken = {o for n in graph.node for o in n.output} | {n.name for n in graph.node}
    declared = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.value_info, *graph.output) if v.type.HasField("tensor_type")}
    for node in graph.node:
        for sub in subgraphs(node):
            rewritten += erfc_as_one_minus_erf(sub)
        if node.op_type != "Erfc" or node.domain not in ("", "ai.onnx") or len(node.input) != 1 or len(node.output) != 1:
            nodes.append(node)
            continue
        base = node.name or node.output[0]
        erf, one = unique_name(f"{base}/erf", taken), unique_name(f"{base}/one", taken)
        nodes += [helper.make_node("Erf", [node.input[0]], [erf], name=f"{base}/Erf"),
                  helper.make_node("Constant", [], [one], name=f"{base}/One",  # of the input's type where declared (float32 else)
                                   value=helper.make_tensor("one", declared.get(node.input[0]) or TensorProto.FLOAT, [], [1.0])),
                  helper.make_node("Sub", [one, erf], [node.output[0]], name=node.name or f"{base}/Sub")]
        rewritten += 1
    if rewritten:
        del graph.node[:]
        graph.node.extend(nodes)
    return rewritten


def has_duplicate_node_names(graph: onnx.GraphProto) -> bool:
    """True when two nodes of ``graph`` (or of one of its subgraphs) share a non-empty name."""
    names = [n.name for n in graph.node if n.name]
    return len(names) != len(set(names)) or any(has_duplicate_node_names(s) for n in graph.node for s in subgraphs(n))


def name_nodes(graph: onnx.GraphProto) -> int:
    """Give every unnamed node a unique name (op type and index); returns how many were named.

    Nodes inside subgraphs are named too, and one whose name is already used
    elsewhere in the model (a sibling branch, an enclosing graph) is renamed:
    plans and reports name nodes across the whole model. Main-graph names that
    are already unique stay as they are.
    """
    taken = {n.name for n in graph.node if n.name}
    return _name_nodes(graph, taken, "")


def _name_nodes(graph: onnx.GraphProto, taken: set[str], prefix: str) -> int:
    named = 0
    for index, node in enumerate(graph.node):
        if node.name and (not prefix or node.name not in taken):
            taken.add(node.name)
            continue
        base = node.name or f"{prefix}{node.op_type}_{index}"
        name = base
        suffix = 1
        while name in taken:
            name = f"{base}_{suffix}"
            suffix += 1
        node.name = name
        taken.add(name)
        named += 1
    for node in graph.node:
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs) if attr.type == onnx.AttributeProto.GRAPHS else []
            for sub in subs:
                named += _name_nodes(sub, taken, f"{node.name}.{attr.name}.")
    return named


def with_outputs(model: onnx.ModelProto, names: list[str], elem_type: int | Mapping[str, int] = TensorProto.FLOAT) -> onnx.ModelProto:
    """A copy of ``model`` that also returns the tensors ``names`` (to observe intermediate values).

    ``elem_type`` is one element type for all, or one per name.
    """
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {v.name for v in probe.graph.output}
    for name in names:
        if name not in existing:
            kind = elem_type if isinstance(elem_type, int) else elem_type[name]
            probe.graph.output.append(helper.make_tensor_value_info(name, kind, None))
    return probe


def observing_only(model: onnx.ModelProto, names: list[str], elem_type: Mapping[str, int]) -> onnx.ModelProto:
    """A copy of ``model`` whose only outputs are the tensors ``names``, without the nodes and weights they do not need.

    A run of it computes just the part of the model in front of the observed
    tensors, which is what makes observing a model's early layers cheap.
    """
    producers = {o: n for n in model.graph.node for o in n.output if o}
    needed: set[int] = set()
    seen: set[str] = set()
    pending = list(names)
    while pending:
        tensor = pending.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        node = producers.get(tensor)
        if node is None or id(node) in needed:
            continue
        needed.add(id(node))
        pending.extend(node.input)
        for sub in subgraphs(node):
            pending.extend(outer_references(sub))
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    nodes = [copy for copy, original in zip(probe.graph.node, model.graph.node) if id(original) in needed]
    reads = {name for node in nodes for name in node.input} | set().union(*(outer_references(s) for node in nodes for s in subgraphs(node)))
    unneeded = {t.name for t in probe.graph.initializer if t.name not in reads and t.name not in names}
    del probe.graph.node[:]
    probe.graph.node.extend(nodes)
    remove_initializers(probe.graph, unneeded)
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_tensor_value_info(name, elem_type.get(name, TensorProto.FLOAT), None) for name in names)
    return probe


def drop_unread_initializers(graph: onnx.GraphProto, names) -> None:
    """Remove the initializers among ``names`` that nothing in ``graph`` reads any more (weights a rewrite replaced).

    Read means: an input of a node, a name an If/Loop/Scan body of a node reads from outside, or a graph output.
    """
    still_read = {name for node in graph.node for name in node.input} | {v.name for v in graph.output}
    still_read |= {name for node in graph.node for sub in subgraphs(node) for name in outer_references(sub)}
    remove_initializers(graph, set(names) - still_read)


def remove_initializers(graph: onnx.GraphProto, names: set[str]) -> None:
    """Delete the initializers named ``names`` in place (rebuilding the list would copy every weight: 0.1 s on a 90 MB model)."""
    if not names:
        return
    for index in reversed(range(len(graph.initializer))):
        if graph.initializer[index].name in names:
            del graph.initializer[index]


def insert_before(graph: onnx.GraphProto, inserted: Mapping[int, onnx.NodeProto]) -> None:
    """Put each node of ``inserted`` (keyed by the ``id`` of a node of ``graph``) just before that node."""
    if not inserted:
        return
    nodes = []
    for node in graph.node:
        if id(node) in inserted:
            nodes.append(inserted[id(node)])
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)


def replace_nodes(graph: onnx.GraphProto, replacements: Mapping[int, Sequence[onnx.NodeProto]]) -> None:
    """Put the nodes of ``replacements`` (keyed by the ``id`` of a node of ``graph``) where that node was, in their order."""
    if not replacements:
        return
    nodes = [new for node in graph.node for new in replacements.get(id(node), [node])]
    del graph.node[:]
    graph.node.extend(nodes)


MS_DOMAIN = "com.microsoft"  # onnxruntime's contrib operators


def import_domain(model: onnx.ModelProto, domain: str, version: int = 1) -> None:
    """Import operator ``domain`` at ``version`` unless ``model`` already imports it."""
    if not any(o.domain == domain for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(domain, version))


def rename_reads(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    """Point every read of a renamed outer tensor at its new name, inside nested subgraphs too (a name a scope defines itself stops it)."""
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    active = {old: new for old, new in renames.items() if old not in defined}
    if not active:
        return
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in active:
                node.input[index] = active[name]
        for sub in subgraphs(node):
            rename_reads(sub, active)
    for output in graph.output:
        if output.name in active:  # a branch handing back an outer initializer: it reads the copy
            output.name = active[output.name]


def rename_reads_everywhere(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    """Point the reads of tensors renamed in ``graph`` itself at their new names, in its nested subgraphs too."""
    for node in graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        for sub in subgraphs(node):
            rename_reads(sub, renames)
