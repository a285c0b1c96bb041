"""How a removal of channels changes each node: the slicing rules, one small class per kind.

Edits work on a :class:`WorkingWeights` view so that several edits on the same
node (a Conv losing both input and output channels) compose, and a weight
shared by two nodes is copied rather than cut under the other's feet.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from enum import Enum

import numpy as np
import onnx
from onnx import helper

from onnxslim.ir.mapped import ArrayStore
from onnxslim.ir.tensors import initializer_map, to_array, unique_name
from onnxslim.prune.atoms import Layout


class WorkingWeights:
    """Arrays of node inputs as edits change them; written back as fresh initializers."""

    def __init__(self, model: onnx.ModelProto, taken: set[str]):
        self.model = model
        self.inits = initializer_map(model.graph)
        self.nodes = {n.name: n for n in model.graph.node}
        self.arrays: dict[tuple[str, int], np.ndarray] = {}
        self.changed: set[tuple[str, int]] = set()
        self.taken = taken
        self.store = ArrayStore(model)

    def get(self, node: str, index: int) -> np.ndarray:
        key = (node, index)
        if key not in self.arrays:
            # read-only (a memory map for weights kept on disk): every edit builds a new array
            self.arrays[key] = self.read(node, index)
        return self.arrays[key]

    def read(self, node: str, index: int) -> np.ndarray:
        """The current model's array, not kept by the view."""
        return to_array(self.inits[self.nodes[node].input[index]])

    def set(self, node: str, index: int, array: np.ndarray) -> None:
        self.arrays[(node, index)] = array
        self.changed.add((node, index))

    def commit(self) -> None:
        """Write every changed array as a new initializer; uses of one weight that came out equal share one tensor. An
        array only read (an edit that removed nothing from it) stays the tensor it was: a copy would be stored beside
        the original wherever another node reads that too."""
        for key in set(self.arrays) - self.changed:
            del self.arrays[key]
        def original_of(node_name: str, index: int) -> str:
            node = self.nodes[node_name]
            return node.input[index] if index < len(node.input) else f"{node_name}_input{index}"

        uses = Counter(original_of(*key) for key in self.arrays)
        written: dict[str, list[tuple[np.ndarray, str]]] = {}
        # arrays leave the view as they enter the model, so the two are never both held in full (shared ones aside)
        for (node_name, index) in list(self.arrays):
            array = self.arrays.pop((node_name, index))
            node = self.nodes[node_name]
            original = original_of(node_name, index)
            twins = written.setdefault(original, []) if uses[original] > 1 else []
            name = next((n for a, n in twins if a.dtype == array.dtype and a.shape == array.shape and np.array_equal(a, array)), None)
            if name is None:
                name = unique_name(f"{original}_pruned", self.taken)
                self.model.graph.initializer.append(self.store.tensor(array, name))
                twins.append((array, name))
            while len(node.input) <= index:
                node.input.append("")
            node.input[index] = name
        self.changed.clear()


def positions(layout: Layout, removed: set[int]) -> list[int]:
    """Positions on the tensor's axis to delete (expanded by the layout's repeat)."""
    gone = [p for p, atom in enumerate(layout.atoms) if atom is not None and atom in removed]
    if layout.repeat == 1:
        return gone
    return [p * layout.repeat + r for p in gone for r in range(layout.repeat)]


class EditRole(Enum):
    """What a sliced input is to the channels being removed: what importance and recovery read."""

    PRODUCER = "producer"  # the filters that produce the channels
    PRODUCER_BIAS = "producer-bias"  # their bias
    CONSUMER = "consumer"  # the weight columns that read the channels
    PARAMETER = "parameter"  # per-channel parameters of ops in between (BatchNorm, LayerNorm, biases of Add)
    PASSTHROUGH = "passthrough"  # depthwise filters: one per channel, in and out
    RECURRENT = "recurrent"  # a recurrent layer's R columns: its own hidden state, read back at the next step



@dataclass
class SliceInput:
    """Delete positions of a constant input along an axis: weights, biases, per-channel parameters."""

    node: str
    index: int
    axis: int
    layout: Layout
    kind: EditRole

    def apply(self, weights: WorkingWeights, removed: set[int]) -> None:
        array = weights.get(self.node, self.index)
        axis = self.axis if self.axis >= 0 else array.ndim + self.axis
        if array.ndim == 0 or array.shape[axis] == 1 and len(self.layout) * self.layout.repeat != 1:
            return  # broadcast along the channel axis: nothing to cut
        gone = positions(self.layout, removed)
        if gone:
            weights.set(self.node, self.index, np.delete(array, gone, axis=axis))


@dataclass
class SetKeptCount:
    """An integer attribute that counts a node's channels follows the channels it keeps: a depthwise convolution's
    ``group``, a recurrent layer's ``hidden_size``, onnxruntime's fused Attention's ``num_heads`` (``per`` channels of
    its query part to a head)."""

    node: str
    attribute: str
    layout: Layout
    per: int = 1

    def apply(self, weights: WorkingWeights, removed: set[int]) -> None:
        kept = len(self.layout) - len(positions(self.layout, removed))
        for attr in weights.nodes[self.node].attribute:
            if attr.name == self.attribute:
                attr.i = kept // self.per


@dataclass
class SplitSizes:
    """A Split along the channel axis: each output keeps the channels of its range."""

    node: str
    ranges: list[tuple[int, int]]
    layout: Layout

    def apply(self, weights: WorkingWeights, removed: set[int]) -> None:
        node = weights.nodes[self.node]
        sizes = []
        for start, stop in self.ranges:
            kept = sum(1 for atom in self.layout.atoms[start:stop] if atom is None or atom not in removed)
            sizes.append(kept * self.layout.repeat)
        array = np.array(sizes, dtype=np.int64)
        if len(node.input) > 1 and node.input[1]:
            weights.set(self.node, 1, array)
        else:
            for attr in list(node.attribute):
                if attr.name == "split":
                    node.attribute.remove(attr)
            node.attribute.append(helper.make_attribute("split", sizes))


@dataclass
class ReshapeChannels:
    """A Reshape whose constant target names the channel count (or the flattened feature count)."""

    node: str
    position: int
    layout: Layout

    def apply(self, weights: WorkingWeights, removed: set[int]) -> None:
        shape = weights.get(self.node, 1)
        if shape[self.position] <= 0:
            return  # 0 (copy) or -1 (infer) adapt by themselves
        kept = len(self.layout) - sum(1 for a in self.layout.atoms if a is not None and a in removed)
        shape = shape.copy()
        shape[self.position] = kept * self.layout.repeat
        weights.set(self.node, 1, shape)


@dataclass
class SliceBounds:
    """A Slice of the channel axis with constant bounds: start and end move to where the kept channels now lie."""

    node: str
    entry: int  # which element of starts/ends is the channel axis
    layout: Layout  # of the sliced input
    start: int
    end: int

    def apply(self, weights: WorkingWeights, removed: set[int]) -> None:
        for index, bound in ((1, self.start), (2, self.end)):
            kept = sum(1 for atom in self.layout.atoms[:bound] if atom is None or atom not in removed)
            array = weights.get(self.node, index).copy()
            array.reshape(-1)[self.entry] = kept
            weights.set(self.node, index, array)


@dataclass
class ShapeEntry:
    """One entry of a Reshape target (in a constant target, or a one-element constant fed to a Concat)
    that counts pruned units: it becomes kept units times ``per_unit``."""

    node: str
    index: int
    element: int
    layout: Layout
    per_unit: int

    def apply(self, weights: WorkingWeights, removed: set[int]) -> None:
        array = weights.get(self.node, self.index).copy()
        kept = sum(1 for atom in self.layout.atoms if atom is None or atom not in removed)
        flat = array.reshape(-1)
        if flat[self.element] > 0:
            flat[self.element] = kept * self.per_unit
            weights.set(self.node, self.index, flat.reshape(array.shape))


@dataclass
class GroupedInput:
    """Input channels of a grouped convolution: each group loses the same number of its own channels.

    The weight is (C_out, C_in / groups, k...); input channel c belongs to group
    c // (C_in / groups) and is column c % (C_in / groups) of that group's rows.
    """

    node: str
    layout: Layout
    groups: int
    kind: EditRole = EditRole.CONSUMER
    index: int = 1
    axis: int = 1

    def removed_per_group(self, removed: set[int]) -> list[list[int]]:
        size = len(self.layout) // self.groups
        gone = set(positions(self.layout, removed))
        return [[p - g * size for p in range(g * size, (g + 1) * size) if p in gone] for g in range(self.groups)]

    def apply(self, weights: WorkingWeights, removed: set[int]) -> None:
        per_group = self.removed_per_group(removed)
        if not any(per_group):
            return
        if len({len(cut) for cut in per_group}) != 1:
            raise ValueError(f"{self.node}: groups would lose different numbers of channels")
        weight = weights.get(self.node, 1)
        rows = weight.shape[0] // self.groups
        parts = [np.delete(weight[g * rows : (g + 1) * rows], cut, axis=1) for g, cut in enumerate(per_group)]
        weights.set(self.node, 1, np.concatenate(parts, axis=0))

    def norms(self, weight: np.ndarray, p: int) -> np.ndarray:
        """Norm of the weights reading each input position."""
        rows, size = weight.shape[0] // self.groups, weight.shape[1]
        magnitude = np.abs(weight.astype(np.float64)) ** p
        result = np.zeros(len(self.layout))
        for g in range(self.groups):
            result[g * size : (g + 1) * size] = magnitude[g * rows : (g + 1) * rows].reshape(rows, size, -1).sum(axis=(0, 2))
        return result
