"""Subgraph bodies (If branches, Loop and Scan bodies) as places a pass can work in.

A body is named by its path from the main graph: ``If_3.then_branch``, or
``Loop_1.body>If_0.else_branch`` for one nested in another. A tensor inside a
body is named by a *scoped key*, ``path@@tensor``, since sibling bodies may use
the same tensor names; tensors of the main graph keep their plain names.

Three things are offered:

- :func:`find_bodies` lists every body, outer ones before the bodies they hold;
- :func:`body_view` turns a body into a standalone model (its reads of enclosing
  scopes become graph inputs, or initializers for constants) so that a pass
  written for a main graph can run on it, and :func:`put_back` writes the
  result back in its place;
- :func:`expose` returns a copy of a model whose graph outputs also carry
  tensors from inside bodies, named by their scoped keys: from an If branch as
  an extra output (the other branch gives an empty tensor), from a Loop or Scan
  body as every iteration's values flattened and concatenated.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxslim.ir.tensors import all_value_names, outer_references, subgraphs, unique_name

SCOPE_MARK = "@@"
LEVEL_MARK = ">"


@dataclass(frozen=True)
class Body:
    """One subgraph: the chain of (node name, attribute name) that leads to it from the main graph."""

    chain: tuple[tuple[str, str], ...]

    @property
    def path(self) -> str:
        return LEVEL_MARK.join(f"{node}.{attr}" for node, attr in self.chain)

    @property
    def depth(self) -> int:
        return len(self.chain)

    @property
    def owner(self) -> str:
        """The node holding this body."""
        return self.chain[-1][0]


def scoped(path: str, name: str) -> str:
    """The key of tensor ``name`` inside the body at ``path`` (the plain name for the main graph, path '')."""
    return f"{path}{SCOPE_MARK}{name}" if path else name


def split_scoped(key: str) -> tuple[str, str]:
    """(body path, tensor name) of a key; ('', key) for a main-graph tensor."""
    path, mark, name = key.partition(SCOPE_MARK)
    return (path, name) if mark else ("", key)


def _graph_attributes(node: onnx.NodeProto):
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.name, attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            for index, graph in enumerate(attr.graphs):
                yield f"{attr.name}[{index}]", graph


def find_bodies(graph: onnx.GraphProto, _chain: tuple = ()) -> list[Body]:
    """Every subgraph of ``graph`` (nodes must be named), outer bodies before the ones inside them."""
    found: list[Body] = []
    for node in graph.node:
        for attr, sub in _graph_attributes(node):
            body = Body((*_chain, (node.name, attr)))
            found.append(body)
            found.extend(find_bodies(sub, body.chain))
    return found


def _owner_and_graph(graph: onnx.GraphProto, node_name: str, attr_name: str) -> tuple[onnx.NodeProto, onnx.GraphProto]:
    for node in graph.node:
        if node.name == node_name:
            for attr, sub in _graph_attributes(node):
                if attr == attr_name:
                    return node, sub
    raise KeyError(f"no subgraph '{attr_name}' on node '{node_name}'")


def graphs_along(model: onnx.ModelProto, body: Body) -> list[tuple[onnx.GraphProto, onnx.NodeProto, onnx.GraphProto]]:
    """(enclosing graph, owner node, body graph) for each level of ``body``, outermost first; references into ``model``."""
    levels = []
    graph = model.graph
    for node_name, attr in body.chain:
        owner, sub = _owner_and_graph(graph, node_name, attr)
        levels.append((graph, owner, sub))
        graph = sub
    return levels


def body_graph(model: onnx.ModelProto, body: Body) -> onnx.GraphProto:
    """The graph of ``body`` inside ``model`` (a reference: changes to it change ``model``)."""
    return graphs_along(model, body)[-1][2]


def _constant_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
        return None
    for attr in node.attribute:
        if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
            return attr.t
    return None


@dataclass
class BodyView:
    """A body as a standalone model, and what :func:`put_back` needs to undo the wrapping."""

    model: onnx.ModelProto
    body: Body
    outer_inputs: frozenset[str]  # activations of enclosing scopes, declared as graph inputs
    outer_constants: frozenset[str]  # constants of enclosing scopes, copied in as initializers


def body_view(model: onnx.ModelProto, body: Body, element_types: Mapping[str, int] | None = None) -> BodyView:
    """``body`` as a model of its own: a copy whose reads of enclosing scopes are graph inputs (typed from
    ``element_types``, float when unknown) or, for constants there, initializers; its own Constant nodes
    become initializers too. Opsets and IR version are ``model``'s.
    """
    levels = graphs_along(model, body)
    graph = onnx.GraphProto()
    graph.CopyFrom(levels[-1][2])
    constants: dict[str, onnx.TensorProto] = {}
    for enclosing, _, _ in levels:  # inner scopes shadow outer ones
        constants.update({t.name: t for t in enclosing.initializer})
        constants.update({n.output[0]: value for n in enclosing.node if (value := _constant_value(n)) is not None})
    kept_nodes = []
    for node in graph.node:
        value = _constant_value(node)
        if value is not None and node.output[0] not in {t.name for t in graph.initializer}:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            kept_nodes.append(node)
    del graph.node[:]
    graph.node.extend(kept_nodes)
    types = element_types or {}
    outer_inputs, outer_constants = [], []
    for name in sorted(outer_references(graph)):
        if name in constants:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(constants[name])
            graph.initializer.append(tensor)
            outer_constants.append(name)
        else:
            graph.input.append(helper.make_tensor_value_info(name, types.get(name, TensorProto.FLOAT), None))
            outer_inputs.append(name)
    view = helper.make_model(graph, opset_imports=list(model.opset_import))
    view.ir_version = model.ir_version
    return BodyView(view, body, frozenset(outer_inputs), frozenset(outer_constants))


def put_back(model: onnx.ModelProto, view: BodyView, rewritten: onnx.ModelProto) -> None:
    """Replace ``view.body`` in ``model`` (in place) by ``rewritten``'s graph, the wrapping of :func:`body_view` undone."""
    target = body_graph(model, view.body)
    graph = onnx.GraphProto()
    graph.CopyFrom(rewritten.graph)
    graph.name = target.name
    inputs = [v for v in graph.input if v.name not in view.outer_inputs]
    del graph.input[:]
    graph.input.extend(inputs)
    initializers = [t for t in graph.initializer if t.name not in view.outer_constants]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    target.CopyFrom(graph)


# ------------------------------------------------------------------ exposing tensors inside bodies
def _empty_constant(graph: onnx.GraphProto, taken: set[str], elem_type: int) -> str:
    name = unique_name("exposed_empty", taken)
    empty = np.zeros((0,), helper.tensor_dtype_to_np_dtype(elem_type))
    graph.node.append(helper.make_node("Constant", [], [name], name=unique_name(f"{name}_Constant", taken), value=numpy_helper.from_array(empty)))
    return name


def _flattened(graph: onnx.GraphProto, tensor: str, taken: set[str]) -> str:
    shape = unique_name("exposed_flat_shape", taken)
    graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), shape))
    flat = unique_name(f"{tensor}_flat", taken)
    graph.node.append(helper.make_node("Reshape", [tensor, shape], [flat], name=unique_name(f"{flat}_Reshape", taken)))
    return flat


def _carry_out(parent: onnx.GraphProto, owner: onnx.NodeProto, attr_name: str, tensor: str, taken: set[str], elem_type: int) -> str:
    """Make ``tensor`` of body ``graph`` an output of ``owner`` in ``parent``; returns its name there."""
    graph = next(sub for attr, sub in _graph_attributes(owner) if attr == attr_name)
    outside = unique_name(f"{tensor}_exposed", taken)
    value = lambda name: helper.make_tensor_value_info(name, elem_type, None)  # noqa: E731
    if owner.op_type == "If":
        inside = unique_name(f"{tensor}_out", taken)
        graph.node.append(helper.make_node("Identity", [tensor], [inside], name=unique_name(f"{inside}_Identity", taken)))
        graph.output.append(value(inside))
        for attr, sibling in _graph_attributes(owner):
            if attr != attr_name:
                sibling.output.append(value(_empty_constant(sibling, taken, elem_type)))
        owner.output.append(outside)
    elif owner.op_type == "Loop":
        # a loop-carried buffer that grows by the flattened values of every iteration (their shapes may change)
        carried = len(owner.input) - 2
        start = _empty_constant(parent, taken, elem_type)
        owner.input.append(start)
        before = unique_name(f"{tensor}_so_far", taken)
        after = unique_name(f"{tensor}_gathered", taken)
        graph.input.append(value(before))
        flat = _flattened(graph, tensor, taken)
        graph.node.append(helper.make_node("Concat", [before, flat], [after], axis=0, name=unique_name(f"{after}_Concat", taken)))
        graph.output.insert(1 + carried, value(after))
        owner.output.insert(carried, outside)
    elif owner.op_type == "Scan":
        flat = _flattened(graph, tensor, taken)
        graph.output.append(value(flat))
        owner.output.append(outside)
        for attr in owner.attribute:
            if attr.name in ("scan_output_axes", "scan_output_directions"):
                attr.ints.append(0)
        return _flattened(parent, outside, taken)  # Scan stacks the iterations on a new axis
    else:
        raise ValueError(f"cannot expose tensors from inside {owner.op_type} '{owner.name}'")
    return outside


def expose(model: onnx.ModelProto, keys: Iterable[str], element_types: Mapping[str, int] | None = None) -> onnx.ModelProto:
    """A copy of ``model`` that also returns the tensors ``keys`` as graph outputs named by the keys.

    Main-graph tensors and those of If branches are returned as they are (a
    branch that did not run gives an empty tensor); one inside a Loop or Scan
    body comes out flattened, every iteration's values one after another.
    ``element_types``: per key, float when not given.
    """
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    types = element_types or {}
    existing = {v.name for v in probe.graph.output}
    taken = all_value_names(probe.graph) | {n.name for n in _all_nodes(probe.graph)}
    bodies = {body.path: body for body in find_bodies(probe.graph)}
    for key in keys:
        if key in existing:
            continue
        elem_type = types.get(key, TensorProto.FLOAT)
        path, name = split_scoped(key)
        if path:
            if path not in bodies:
                raise KeyError(f"no subgraph at '{path}'")
            tensor = name
            for (parent, owner, _), (_, attr) in reversed(list(zip(graphs_along(probe, bodies[path]), bodies[path].chain))):
                tensor = _carry_out(parent, owner, attr, tensor, taken, elem_type)
            probe.graph.node.append(helper.make_node("Identity", [tensor], [key], name=unique_name(f"{key}_Identity", taken)))
        probe.graph.output.append(helper.make_tensor_value_info(key, elem_type, None))
        existing.add(key)
    return probe


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for sub in subgraphs(node):
            yield from _all_nodes(sub)


def all_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Every node of ``graph`` and of its subgraphs, outer ones first."""
    return list(_all_nodes(graph))


def visible_types(types: Mapping[str, int], body: Body | None) -> dict[str, int]:
    """Plain name -> element type of the tensors visible inside ``body`` (None: the main graph), inner scopes shadowing outer ones."""
    paths = [""] + ([LEVEL_MARK.join(f"{n}.{a}" for n, a in body.chain[: depth + 1]) for depth in range(body.depth)] if body else [])
    visible: dict[str, int] = {}
    for path in paths:
        for key, elem_type in types.items():
            key_path, name = split_scoped(key)
            if key_path == path:
                visible[name] = elem_type
    return visible


def scoped_element_types(inferred: onnx.ModelProto) -> dict[str, int]:
    """Element type of every typed tensor of ``inferred`` (a model after shape inference), by scoped key."""
    types: dict[str, int] = {}

    def visit(graph: onnx.GraphProto, path: str) -> None:
        for value in (*graph.input, *graph.value_info, *graph.output):
            if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
                types[scoped(path, value.name)] = value.type.tensor_type.elem_type
        for tensor in graph.initializer:
            types[scoped(path, tensor.name)] = tensor.data_type
        for node in graph.node:
            value = _constant_value(node)
            if value is not None:
                types[scoped(path, node.output[0])] = value.data_type
            for attr, sub in _graph_attributes(node):
                visit(sub, f"{path}{LEVEL_MARK}{node.name}.{attr}" if path else f"{node.name}.{attr}")

    visit(inferred.graph, "")
    return types
