"""Groups: the channels that must be pruned together, built from what tracing found.

A class is a set of tied channel atoms (see :mod:`onnxslim.prune.atoms`),
removed whole or not at all; a group is every class produced by the same set
of nodes (the filters of one Conv, or of several Convs whose outputs are added).
Selection ranks and removes classes within (or across) groups; this module only
describes them, and applies a chosen removal to a model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import onnx

from onnxslim.ir.tensors import all_value_names
from onnxslim.passes import remove_dead_nodes
from onnxslim.prune.edits import EditRole, SliceInput, WorkingWeights, positions
from onnxslim.prune.trace import Tracing


@dataclass(frozen=True)
class Group:
    """The classes (by root atom) produced by one set of producer nodes, and what constrains them.

    ``blocked``: root -> why that class cannot be removed. ``heads``: the group
    stands for attention heads. ``blocks``: root -> (group count, group index)
    for channels of grouped convolutions, which every group must lose equally
    ((0, 0) where the convolutions disagree). ``channels_per_class``: the fewest channels one class
    holds in any of its producers (a head's size, a GroupNorm group's channels); 1 for single channels.
    """

    producers: tuple[str, ...]
    roots: tuple[int, ...]
    blocked: Mapping[int, str]
    heads: bool
    blocks: Mapping[int, tuple[int, int]]
    channels_per_class: int = 1

    @property
    def removable(self) -> tuple[int, ...]:
        return tuple(r for r in self.roots if r not in self.blocked)

    def block_reason(self, roots) -> str | None:
        """The reason the given classes cannot be removed, when none of them can."""
        reasons = [self.blocked.get(r) for r in roots]
        return reasons[0] if reasons and all(reason is not None for reason in reasons) else None


@dataclass(frozen=True)
class Groups:
    """Every group of a traced model, with the classes' atoms to map a removal back to channels."""

    tracing: Tracing
    classes: Mapping[int, tuple[int, ...]]
    groups: tuple[Group, ...]

    def atoms_of(self, removed: set[int]) -> set[int]:
        return {atom for root in removed for atom in self.classes[root]}

    def channels_of(self, removed: set[int]) -> list[tuple[str, int]]:
        """(producer node, channel) of every removed atom, sorted."""
        return sorted(self.tracing.atoms.producers[a] for a in self.atoms_of(removed))


def build_groups(tracing: Tracing) -> Groups:
    """Group the traced classes by the producer nodes of their atoms."""
    atoms = tracing.atoms
    classes = {root: tuple(members) for root, members in atoms.classes().items()}
    blocks = _block_of_class(tracing)
    heads = {atoms.find(a) for a in tracing.head_atoms}
    by_producers: dict[tuple[str, ...], list[int]] = {}
    for root, members in classes.items():
        key = tuple(sorted({atoms.producers[a][0] for a in members}))
        by_producers.setdefault(key, []).append(root)
    groups = []
    for key, roots in by_producers.items():
        blocked = {r: reason for r in roots if (reason := atoms.class_block_reason(list(classes[r]))) is not None}
        is_heads = any(r in heads for r in roots)
        # a class is as many channels as it holds in each of its layers: a head's size, a GroupNorm group's channels, one
        # channel of every group of a channel shuffle, and one channel for the rest (a Gather listing heads is no layer)
        per_class = min(min(Counter(atoms.producers[a][0] for a in classes[r] if tracing.producers.get(atoms.producers[a][0]) != "Gather").values(),
                            default=1) for r in roots)
        groups.append(Group(key, tuple(roots), blocked, is_heads, {r: blocks[r] for r in roots if r in blocks}, per_class))
    return Groups(tracing, classes, tuple(groups))


def _block_of_class(tracing: Tracing) -> dict[int, tuple[int, int]]:
    found: dict[int, set[tuple[int, int]]] = {}
    for layout, count in tracing.block_constraints:
        size = len(layout) // count
        for position, atom in enumerate(layout.atoms):
            if atom is not None:
                found.setdefault(tracing.atoms.find(atom), set()).add((count, position // size))
    return {root: next(iter(ids)) if len(ids) == 1 else (0, 0) for root, ids in found.items()}


def apply_removal(model: onnx.ModelProto, groups: Groups, removed: set[int]) -> onnx.ModelProto:
    """A copy of ``model`` with the classes ``removed`` cut out of every layer they touch."""
    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    removed_atoms = groups.atoms_of(removed)
    if not removed_atoms:
        return pruned
    view = WorkingWeights(pruned, all_value_names(pruned.graph))
    for edit in groups.tracing.edits:
        edit.apply(view, removed_atoms)
    view.commit()
    for value in list(pruned.graph.value_info):
        pruned.graph.value_info.remove(value)
    remove_dead_nodes(pruned)
    return pruned


def kept_positions(groups: Groups, removed: set[int]) -> dict[str, dict[str, list[int]]]:
    """Per layer, which input ('in') and output ('out') channels survive, in original numbering."""
    removed_atoms = groups.atoms_of(removed)
    kept: dict[str, dict[str, list[int]]] = {}
    for edit in groups.tracing.edits:
        if isinstance(edit, SliceInput) and edit.kind in (EditRole.CONSUMER, EditRole.PRODUCER):
            side = "in" if edit.kind == EditRole.CONSUMER else "out"
            gone = set(positions(edit.layout, removed_atoms))
            total = len(edit.layout) * edit.layout.repeat
            kept.setdefault(edit.node, {})[side] = [p for p in range(total) if p not in gone]
    return kept


def renormalized(groups: Groups, removed: set[int]) -> list[str]:
    """LayerNormalization and reduction nodes that normalize or sum over some of the removed channels."""
    gone = groups.atoms_of(removed)
    return [name for name, layout in groups.tracing.renormalized.items() if any(a in gone for a in layout.atoms if a is not None)]
