"""Quantization inside If branches and Loop / Scan bodies.

Each body is planned as a graph of its own (a :class:`~onnxslim.ir.scopes.BodyView`:
its reads of enclosing scopes are inputs, or initializers for weights), with
the same rules as the main graph; its tensors are observed during the one
calibration pass under scoped keys (``path@@tensor``), and its Q/DQ nodes and
INT8 weights are written inside the body, innermost bodies first. Node names
are unique across the model (see :func:`onnxslim.ir.graph.name_nodes`), so
decisions, exclusions and the accuracy budget's kept layers name body nodes
as they name main-graph ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import onnx
from onnx import TensorProto, shape_inference

from onnxslim.ir.scopes import Body, BodyView, all_nodes, body_graph, body_view, find_bodies, put_back, scoped, scoped_element_types, split_scoped, visible_types
from onnxslim.ir.shapes import without_large_values
from onnxslim.ir.tensors import all_value_names, outer_references
from onnxslim.passes.cleanup import remove_dead_nodes
from onnxslim.quant.config import QuantConfig
from onnxslim.quant.decisions import QuantPlan
from onnxslim.quant.plan import make_plan
from onnxslim.quant.qdq import insert_qdq


class BodyScopes:
    """The bodies of a prepared model, each as a standalone view, and the float tensors visible in each."""

    def __init__(self, model: onnx.ModelProto):
        self.bodies: list[Body] = find_bodies(model.graph)
        self.views: dict[str, BodyView] = {}
        self.float_names: dict[str, set[str]] = {}
        self.types: dict[str, dict[str, int]] = {}
        if not self.bodies:
            return
        try:
            inferred = shape_inference.infer_shapes(without_large_values(model), strict_mode=False)
        except Exception:  # inference is a help here, not a requirement
            inferred = model
        types = scoped_element_types(inferred)
        for body in self.bodies:
            visible = visible_types(types, body)
            self.types[body.path] = visible
            self.views[body.path] = body_view(model, body, visible)
            self.float_names[body.path] = {name for name, kind in visible.items() if kind == TensorProto.FLOAT}

    def __bool__(self) -> bool:
        return bool(self.bodies)


def plan_everywhere(model: onnx.ModelProto, scopes: BodyScopes, config: QuantConfig, float_names: set[str],
                    keep_float: frozenset[str] = frozenset(), shapes: Mapping[str, tuple] | None = None,
                    float_biases: frozenset[str] = frozenset()) -> QuantPlan:
    """The main graph's plan, with a plan per body in ``plan.bodies`` and every body node's decision among ``plan.decisions``.

    ``shapes``: the main graph's tensor shapes where known (bodies are planned without them).
    """
    plan = make_plan(model, config, float_names, keep_float, shapes, float_biases)
    model_outputs = {v.name for v in model.graph.output}
    owners = {n.name: n for n in model.graph.node}
    for body in scopes.bodies:
        path = body.path
        view = scopes.views[path]
        # a body's outputs are the model's outputs only when its outermost owner writes them; otherwise more layers follow
        outermost = owners[body.chain[0][0]]
        ends_model = any(o in model_outputs for o in outermost.output)
        body_config = config if ends_model or config.output_layers == "int8" else dataclasses.replace(config, output_layers="int8")
        body_plan = make_plan(view.model, body_config, scopes.float_names[path], keep_float)
        plan.bodies[path] = body_plan
        plan.decisions.update(body_plan.decisions)
    return plan


def in_scope(keyed: dict, path: str) -> dict:
    """The entries of ``keyed`` (scoped keys) that belong to the body at ``path`` ('' for the main graph), by plain name."""
    found = {}
    for key, value in keyed.items():
        key_path, name = split_scoped(key)
        if key_path == path:
            found[name] = value
    return found


def insert_qdq_everywhere(model: onnx.ModelProto, plan: QuantPlan, params: dict, scopes: BodyScopes) -> onnx.ModelProto:
    """The QDQ model: each body rewritten in place (innermost first) by its own plan, then the main graph.

    ``params``: scale and zero point by scoped key. New names never repeat a name used anywhere in the model,
    so nothing inside a body shadows a tensor of an enclosing scope.
    """
    by_depth = sorted((b for b in scopes.bodies if b.path in plan.bodies), key=lambda b: -b.depth)
    by_depth = [b for b in by_depth if plan.bodies[b.path].activations or plan.bodies[b.path].weights]
    if not by_depth:
        return insert_qdq(model, plan, in_scope(params, ""))  # which works on a copy of its own
    work = onnx.ModelProto()
    work.CopyFrom(model)
    for body in by_depth:
        body_plan = plan.bodies[body.path]
        reserved = all_value_names(work.graph) | {n.name for n in all_nodes(work.graph)}
        view = body_view(work, body, scopes.types.get(body.path))
        rewritten = insert_qdq(view.model, body_plan, in_scope(params, body.path), reserved=reserved)
        put_back(work, view, rewritten)
    return insert_qdq(work, plan, in_scope(params, ""))


def compared_body_nodes(scopes: BodyScopes, quantized: onnx.ModelProto, candidates: set[str]) -> tuple[list[onnx.NodeProto], set[str]]:
    """Copies of the candidate nodes inside bodies with their tensors renamed to scoped keys, and the scoped keys of
    the float activations computed in those bodies of ``quantized`` (what a side-by-side pass may expose)."""
    nodes: list[onnx.NodeProto] = []
    activations: set[str] = set()
    for body in scopes.bodies:
        path = body.path
        view = scopes.views[path]
        for node in view.model.graph.node:
            if node.name in candidates:
                copy = onnx.NodeProto()
                copy.CopyFrom(node)
                copy.input[:] = [scoped(path, n) if n else n for n in node.input]
                copy.output[:] = [scoped(path, n) if n else n for n in node.output]
                nodes.append(copy)
        graph = body_graph(quantized, body)
        computed = {o for n in graph.node for o in n.output} | {v.name for v in graph.input} | (outer_references(graph) & view.outer_inputs)
        activations |= {scoped(path, t) for t in computed & scopes.float_names[path]}
    return nodes, activations


def uncalibrated_bodies(plan: QuantPlan, stats: dict) -> list[str]:
    """Paths of the bodies whose planned tensors calibration never saw a value of (a branch no batch took, a loop that never ran)."""
    unseen = []
    for path, body_plan in plan.bodies.items():
        keys = [scoped(path, t) for t in body_plan.observed_tensors()]
        if any(key in stats and stats[key].minmax.count == 0 for key in keys):
            unseen.append(path)
    return unseen


def rewrite_everywhere(model: onnx.ModelProto, rewrite: Callable[[onnx.ModelProto, set[str]], list[str]]) -> list[str]:
    """Run ``rewrite`` on every body of ``model`` (as a standalone view, innermost first) and then on ``model`` itself,
    all in place; returns the nodes it rewrote.

    ``rewrite(graph_model, reserved)`` changes ``graph_model`` in place, avoiding the names in ``reserved``, and
    returns the names of the nodes it changed. Opset imports a body's rewrite adds are added to ``model``; weights
    of the main graph that no body reads any more are dropped.
    """
    rewritten: list[str] = []
    for body in sorted(find_bodies(model.graph), key=lambda b: -b.depth):
        view = body_view(model, body)
        done = rewrite(view.model, all_value_names(model.graph) | {n.name for n in all_nodes(model.graph)})
        if not done:
            continue
        put_back(model, view, view.model)
        known = {o.domain for o in model.opset_import}
        model.opset_import.extend(o for o in view.model.opset_import if o.domain not in known)
        rewritten.extend(done)
    rewritten.extend(rewrite(model, set()))
    if rewritten:
        remove_dead_nodes(model)
    return rewritten


def find_everywhere(model: onnx.ModelProto, scopes: BodyScopes, find: Callable[[onnx.ModelProto], list]) -> list:
    """``find`` applied to the main graph and to every body's view."""
    return [*find(model), *(choice for view in scopes.views.values() for choice in find(view.model))]
