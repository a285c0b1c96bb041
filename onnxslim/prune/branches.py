"""Channels inside If branches (models exported with ``torch.jit.script`` control flow).

A voice-activity model that picks its network by sample rate holds every
convolution inside the branches of one If: the main graph has nothing to prune.
The main graph's own channel groups stop where a branch reads them. Each
branch is a graph of its own whose only contact with the rest of the model is
by name: the tensors it reads from the enclosing graph and the outputs it hands
back. So a branch is pruned as a model whose inputs are those tensors and whose
outputs are its own, which keeps every name the If and the enclosing graph see,
and is put back in place of the old one.

With data, the branch's inputs are the enclosing graph's tensors as the model
(the main graph already pruned) computes them on each batch, kept only for the batches on which
the If took that branch (a branch that never ran is left as it is, and the
report says so). Initializers of the enclosing graph that a branch reads are
copied into the branch under names of its own, so the pruned copy never
shadows the original, which other readers may still need.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper

from onnxslim.ir.graph import rename_reads, rename_reads_everywhere
from onnxslim.ir.layers import WEIGHTED_LAYERS
from onnxslim.ir.scopes import all_nodes
from onnxslim.ir.shapes import shapes_and_types
from onnxslim.ir.tensors import all_value_names, initializer_map, outer_references, unique_name
from onnxslim.runtime.probe import probe_runner

BRANCHES = ("then_branch", "else_branch")


@dataclasses.dataclass
class Branch:
    """One branch of a top-level If: the node, which branch, and the graph it holds."""

    node: onnx.NodeProto
    attribute: str
    graph: onnx.GraphProto

    @property
    def label(self) -> str:
        return f"{self.node.name or self.node.output[0]}.{self.attribute}"

    @property
    def taken_when(self) -> bool:
        return self.attribute == "then_branch"


def branches_with_layers(model: onnx.ModelProto) -> list[Branch]:
    """The branches of the main graph's If nodes that hold a Conv, ConvTranspose, Gemm or MatMul (at any depth)."""
    found = []
    for node in model.graph.node:
        if node.op_type != "If":
            continue
        for attr in node.attribute:
            if attr.name in BRANCHES and any(n.op_type in WEIGHTED_LAYERS for n in all_nodes(attr.g)):
                found.append(Branch(node, attr.name, attr.g))
    return found


def branch_model(model: onnx.ModelProto, branch: Branch, shapes: dict, types: dict) -> tuple[onnx.ModelProto, list[str]]:
    """``branch`` as a model of its own, and the enclosing graph's tensors it reads (its inputs, in order).

    The enclosing graph's initializers it reads become its own, renamed (see the module docstring).
    """
    graph = onnx.GraphProto()
    graph.CopyFrom(branch.graph)
    outer_inits = initializer_map(model.graph)
    reads = sorted(outer_references(graph))
    taken = all_value_names(model.graph)
    renames = {name: unique_name(f"{name}__{branch.attribute}", taken) for name in reads if name in outer_inits}
    rename_reads(graph, renames)
    for old, new in renames.items():
        copy = onnx.TensorProto()
        copy.CopyFrom(outer_inits[old])
        copy.name = new
        graph.initializer.append(copy)
    inputs = [name for name in reads if name not in outer_inits]
    declared = []
    for name in inputs:
        shape = shapes.get(name)
        dims = [d if isinstance(d, int) else None for d in shape] if shape is not None else None
        declared.append(helper.make_tensor_value_info(name, types.get(name, onnx.TensorProto.FLOAT), dims))
    graph.input.extend(declared)
    del graph.value_info[:]  # inferred for the old sizes; the pruned graph's are inferred again
    graph.name = branch.label
    standalone = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    return standalone, inputs


def _outside_names(model: onnx.ModelProto, branch: Branch) -> set[str]:
    """Names the enclosing graph and the If's other branches define: a name the branch defines must differ from them all."""
    graph = model.graph
    names = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output if o}
    for attr in branch.node.attribute:
        if attr.name in BRANCHES and attr.name != branch.attribute:
            names |= all_value_names(attr.g)
    return names


def put_back(model: onnx.ModelProto, branch: Branch, pruned: onnx.ModelProto) -> None:
    """Replace ``branch``'s graph in its If by ``pruned``'s graph, its inputs read again from the enclosing graph.

    A tensor the pruned graph defines under a name the enclosing graph or the other branch uses (new weights are
    named by the pruning, which saw the branch alone) is renamed inside it.
    """
    graph = onnx.GraphProto()
    graph.CopyFrom(pruned.graph)
    outer = {v.name for v in graph.input}
    del graph.input[:]
    del graph.value_info[:]
    outside = _outside_names(model, branch)
    taken = outside | all_value_names(graph)
    kept = outer | {v.name for v in graph.output}
    defined = [t.name for t in graph.initializer] + [o for n in graph.node for o in n.output if o]
    clashes = {name: unique_name(name, taken) for name in defined if name in outside and name not in kept}
    if clashes:
        for tensor in graph.initializer:
            tensor.name = clashes.get(tensor.name, tensor.name)
        for node in graph.node:
            node.output[:] = [clashes.get(o, o) for o in node.output]
        rename_reads_everywhere(graph, clashes)
    graph.name = branch.graph.name
    for attr in branch.node.attribute:
        if attr.name == branch.attribute:
            attr.g.CopyFrom(graph)
            branch.graph = attr.g


def branch_batches(model: onnx.ModelProto, branches: list[Branch], inputs: dict[str, list[str]], source) -> dict[str, list[dict[str, np.ndarray]]]:
    """For each branch (by label), the enclosing graph's tensors it reads, on every batch of ``source`` on which its If took it."""
    conditions = sorted({b.node.input[0] for b in branches})
    wanted = sorted({name for names in inputs.values() for name in names} | set(conditions))
    given = {v.name for v in model.graph.input}
    exposed = [name for name in wanted if name not in given]
    runner = probe_runner(model, exposed) if exposed else None
    batches: dict[str, list[dict[str, np.ndarray]]] = {b.label: [] for b in branches}
    for _, batch in source:
        values = dict(batch)
        if runner is not None:
            values.update(zip(exposed, runner.run(batch, exposed)))
        for b in branches:
            if bool(np.asarray(values[b.node.input[0]]).reshape(-1)[0]) == b.taken_when:
                batches[b.label].append({name: values[name] for name in inputs[b.label]})
    return batches


def prune_branches(model: onnx.ModelProto, source, prune_one: Callable, warn: Callable[[str], None]) -> tuple[onnx.ModelProto, list[str]]:
    """``model`` with each If branch that holds layers pruned by ``prune_one(branch model, its batches or None, label)``,
    and the labels of the branches pruned.

    ``prune_one`` returns the pruned branch model, or None to leave the branch as it is.
    """
    result = onnx.ModelProto()
    result.CopyFrom(model)
    branches = branches_with_layers(result)
    shapes, types = shapes_and_types(result)
    standalone = {b.label: branch_model(result, b, shapes, types) for b in branches}
    batches = branch_batches(result, branches, {label: names for label, (_, names) in standalone.items()}, source) if source is not None else {}
    done: list[str] = []
    for branch in branches:
        body, _ = standalone[branch.label]
        data = batches.get(branch.label) if source is not None else None
        if source is not None and not data:
            warn(f"{branch.label} never ran on the data: its layers are left as they are (give data that runs it)")
            continue
        pruned = prune_one(body, data, branch.label)
        if pruned is not None:
            put_back(result, branch, pruned)
            done.append(branch.label)
    return result, done
