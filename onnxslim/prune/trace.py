"""Follow every prunable channel through the graph and record what its removal touches.

One walk over the graph in order computes, for every tensor that carries
channels of a prunable producer, its :class:`~onnxslim.prune.atoms.Layout`, and
records the edits that removing those channels implies (producer filters,
consumer input slices, per-channel parameters, group counts, split sizes,
reshape targets). Ops without a rule, graph outputs and unresolved shapes block
the channels they see, with the reason kept for the report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxslim.ir.graph import MS_DOMAIN, node_attr, text_attr
from onnxslim.ir.layers import INITIAL_STATE_INPUTS, RECURRENT_LAYERS
from onnxslim.ir.tensors import (
    constant_names,
    consumers_map,
    initializer_map,
    outer_references,
    producer_map,
    subgraphs,
    to_array,
)
from onnxslim.prune.atoms import AtomTable, Layout
from onnxslim.prune.constant_operands import GraphView, NotFollowed, constant_operand_edits
from onnxslim.prune.edits import (
    EditRole,
    GroupedInput,
    SetKeptCount,
    ShapeEntry,
    SliceBounds,
    SliceInput,
    SplitSizes,
)
from onnxslim.prune.reshapes import ReshapeRules

UNARY = {"Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Erf", "Gelu", "Elu", "Selu", "Softplus", "Softsign",
         "Mish", "Identity", "Dropout", "Cast", "Clip", "Abs", "Neg", "Sqrt", "Exp", "Log", "Reciprocal", "Floor", "Ceil", "Round", "Sin", "Cos",
         "IsNaN", "IsInf", "Not"}
SPATIAL = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "Upsample", "SpaceToDepth"}
# a stored map several layers add (a folded attention bias) is cut for each of them on its own while its copies weigh
# at most this share of the model's weights; a heavier one stays one tensor and its readers lose the same channels
COPIED_MAP_SHARE = 0.01
# reductions that may run across the channels: each channel is one term of the result
SUMS_OVER_CHANNELS = {"ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2"}
BINARY = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "Sum", "Mean", "Where", "Equal", "Less", "Greater", "And", "Or"}


@dataclass
class Tracing:
    """What tracing found: the channel atoms and their ties and blocks, each tracked tensor's layout, and the edits removal implies."""

    atoms: AtomTable = field(default_factory=AtomTable)
    layouts: dict[str, Layout] = field(default_factory=dict)
    edits: list = field(default_factory=list)
    producers: dict[str, str] = field(default_factory=dict)  # producer node -> op type
    consumer_inputs: dict[str, str] = field(default_factory=dict)  # consumer node -> the tracked tensor it reads
    head_atoms: set[int] = field(default_factory=set)  # atoms standing for whole attention heads
    # producers that make no prunable channels, and why (a fused Attention whose heads this rule cannot cut): nothing to attach
    # a block to, so the report says it apart
    unprunable: dict[str, str] = field(default_factory=dict)
    # (layout, groups): channels of a grouped convolution, which every group must lose equally
    block_constraints: list[tuple[Layout, int]] = field(default_factory=list)
    # LayerNormalization or reduction node -> the channels it normalizes or sums over: removing any changes its statistics
    renormalized: dict[str, Layout] = field(default_factory=dict)


class Tracer(ReshapeRules):
    """One walk over the graph in order, applying the rule of each op type (``RULES``) to the channels it carries."""

    def __init__(self, model: onnx.ModelProto, shapes: dict[str, tuple]):
        self.graph = model.graph
        self.constants = constant_names(self.graph)
        self.inits = initializer_map(self.graph)
        self.shapes = shapes
        self.t = Tracing()
        self.handled: set[str] = set()  # nodes a pattern rule already accounted for
        # (side, weight name) -> the layout of the first layer using that weight: later uses tie to it
        self.shared_weights: dict[tuple[str, str], Layout] = {}
        self._view: GraphView | None = None  # built when a constant expression first meets tracked channels
        # (stored constant, axis) cut by several constant expressions -> (the first one's layout, its operand, the nodes of
        # all of them); cut along two axes, each cut has readers the other's nodes are not, and both keep their channels
        self.shared_tables: dict[tuple[str, int], tuple[Layout, str, set[str]]] = {}
        # computed operand already cut -> (its channel axis, the layout it was cut for, the nodes that read it, those of
        # them that met the same channels): a mask or bias several layers add (the uses of a layer applied repeatedly).
        # Unlike a stored one, which each reader may cut for itself, it is computed once: its readers lose the same channels
        self.cut_operands: dict[str, tuple[int, Layout, set[str], set[str]]] = {}
        self._weights_total: int | None = None  # counted when a stored map first meets channels

    # ------------------------------------------------------------ helpers
    def rank(self, name: str) -> int | None:
        shape = self.shapes.get(name)
        return None if shape is None else len(shape)

    def const(self, name: str) -> np.ndarray | None:
        return to_array(self.inits[name]) if name in self.constants else None

    def listed_axes(self, node: onnx.NodeProto) -> list[int] | None:
        """The axes ``node`` names: its ``axes`` attribute (older opsets) or its constant second input; None when neither."""
        axes = node_attr(node, "axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            array = self.const(node.input[1])
            axes = None if array is None else [int(a) for a in array.reshape(-1)]
        return None if axes is None else [int(a) for a in axes]

    def block_inputs(self, node: onnx.NodeProto, reason: str) -> None:
        for name in node.input:
            self.t.atoms.block_layout(self.t.layouts.get(name), reason)

    def new_atoms(self, node: onnx.NodeProto, count: int, axis: int) -> Layout:
        self.t.producers[node.name] = node.op_type
        layout = Layout(axis, self.t.atoms.new(node.name, count))
        if len(node.input) > 1 and node.input[1] in self.constants:
            self._tie_shared("out", node.input[1], layout)
        return layout

    def consume(self, node: onnx.NodeProto, layout: Layout, index: int, axis: int) -> None:
        self.t.edits.append(SliceInput(node.name, index, axis, layout, EditRole.CONSUMER))
        self.t.consumer_inputs[node.name] = node.input[0]
        self._tie_shared("in", node.input[index], layout)

    def _tie_shared(self, side: str, weight: str, layout: Layout) -> None:
        """A weight used by several layers (tied or repeated blocks) loses the same channels in every use, so it stays one tensor."""
        first = self.shared_weights.setdefault((side, weight), layout)
        if first is layout:
            return
        if len(first) != len(layout) or first.repeat != layout.repeat:
            reason = f"weight '{weight}' is shared by layers whose channels are laid out differently"
            self.t.atoms.block_layout(first, reason)
            self.t.atoms.block_layout(layout, reason)
            return
        for a, b in zip(first.atoms, layout.atoms):
            self.t.atoms.tie(a, b)

    # ------------------------------------------------------------ rules
    def weighted(self, node: onnx.NodeProto, layout: Layout | None) -> Layout | None:
        """Conv / ConvTranspose / Gemm / MatMul with a constant weight: consumer of its input, producer of its output."""
        op = node.op_type
        weight = self.const(node.input[1]) if len(node.input) > 1 else None
        if weight is None and op == "MatMul" and len(node.input) == 2:
            return self.activation_matmul(node)
        if weight is None:
            if layout is not None:
                self.t.atoms.block_layout(layout, f"{op} {node.name} has no constant weight")
            for name in node.input[1:]:
                self.t.atoms.block_layout(self.t.layouts.get(name), f"{op} {node.name} mixes two activations")
            return None
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if op in ("Conv", "ConvTranspose"):
            return self._convolution(node, layout, weight, bias)
        if op == "Gemm":
            return self._gemm(node, layout, weight, bias)
        return self._matmul(node, layout, weight)

    def _convolution(self, node: onnx.NodeProto, layout: Layout | None, weight: np.ndarray, bias: str | None) -> Layout | None:
        op = node.op_type
        group = int(node_attr(node, "group", 1))
        in_axis, out_axis = (1, 0) if op == "Conv" else (0, 1)
        c_in = weight.shape[1] * group if op == "Conv" else weight.shape[0]
        c_out = weight.shape[0] if op == "Conv" else weight.shape[1] * group
        if layout is not None and layout.repeat != 1 and (group != 1 or len(layout) * layout.repeat != c_in):
            # heads merged back into channels (SqueezeBERT's 1x1 Conv1d after attention) read like features; a grouped Conv does not
            self.t.atoms.block_layout(layout, f"{op} {node.name} reads flattened channels")
            layout = None
        if layout is not None and layout.axis != 1:
            # the tracked channels lie on another axis (YOLO's DFL: box sides moved off the channel axis)
            self.t.atoms.block_layout(layout, f"{op} {node.name} reads the tracked channels on axis {layout.axis}, not its channel axis")
            layout = None
        if group > 1:
            return self._grouped_convolution(node, layout, group, c_in, c_out, bias)
        if layout is not None:
            self.consume(node, layout, 1, in_axis)
        out = self.new_atoms(node, c_out, 1)
        self.t.edits.append(SliceInput(node.name, 1, out_axis, out, EditRole.PRODUCER))
        if bias:
            self.t.edits.append(SliceInput(node.name, 2, 0, out, EditRole.PRODUCER_BIAS))
        return out

    def _grouped_convolution(self, node: onnx.NodeProto, layout: Layout | None, group: int, c_in: int, c_out: int, bias: str | None) -> Layout | None:
        """Depthwise: channels pass straight through. Other grouped Convs: every group loses channels equally."""
        op = node.op_type
        if op == "Conv" and group == c_in == c_out and layout is not None:
            # depthwise: output channel c is computed from input channel c alone
            self.t.edits.append(SliceInput(node.name, 1, 0, layout, EditRole.PASSTHROUGH))
            if bias:
                self.t.edits.append(SliceInput(node.name, 2, 0, layout, EditRole.PASSTHROUGH))
            self.t.edits.append(SetKeptCount(node.name, "group", layout))
            return Layout(1, layout.atoms)
        if op != "Conv" or c_in % group or c_out % group:
            self.t.atoms.block_layout(layout, f"grouped {op} {node.name} (group={group}) keeps its groups whole")
            return None
        if layout is not None:
            self.t.edits.append(GroupedInput(node.name, layout, group))
            self.t.block_constraints.append((layout, group))
            self.t.consumer_inputs[node.name] = node.input[0]
        out = self.new_atoms(node, c_out, 1)
        self.t.edits.append(SliceInput(node.name, 1, 0, out, EditRole.PRODUCER))
        if bias:
            self.t.edits.append(SliceInput(node.name, 2, 0, out, EditRole.PRODUCER_BIAS))
        self.t.block_constraints.append((out, group))
        return out

    def _gemm(self, node: onnx.NodeProto, layout: Layout | None, weight: np.ndarray, bias: str | None) -> Layout | None:
        trans_a, trans_b = int(node_attr(node, "transA", 0)), int(node_attr(node, "transB", 0))
        if trans_a or weight.ndim != 2:
            self.t.atoms.block_layout(layout, f"Gemm {node.name} with transA")
            return None
        if layout is not None:
            if layout.axis != 1:
                self.t.atoms.block_layout(layout, f"Gemm {node.name} reads channels on a non-feature axis")
            else:
                self.consume(node, layout, 1, 1 if trans_b else 0)
        out = self.new_atoms(node, weight.shape[0] if trans_b else weight.shape[1], 1)
        self.t.edits.append(SliceInput(node.name, 1, 0 if trans_b else 1, out, EditRole.PRODUCER))
        bias_value = self.const(bias) if bias is not None else None
        if bias_value is not None and bias_value.ndim >= 1 and bias_value.shape[-1] == len(out):
            self.t.edits.append(SliceInput(node.name, 2, -1, out, EditRole.PRODUCER_BIAS))
        elif bias_value is not None and bias_value.size != 1:
            self.t.atoms.block_layout(out, f"Gemm {node.name} bias is not per output feature")
        return out

    def _matmul(self, node: onnx.NodeProto, layout: Layout | None, weight: np.ndarray) -> Layout | None:
        """MatMul with a constant right-hand side."""
        if weight.ndim != 2:
            self.t.atoms.block_layout(layout, f"MatMul {node.name} has a batched weight")
            return None
        rank = self.rank(node.input[0])
        if layout is not None and rank is not None and self.rank(node.output[0]) == rank and layout.axis < rank - 2:
            # the weight is applied to every head alike: channels on a batch axis pass through (WavLM's gate of each
            # head's relative positions, a Linear of the head's own features). Channels on the rows (a token-mixing MLP
            # over (C, T)) still make way for the features the weight makes.
            return Layout(layout.axis, layout.atoms, layout.repeat)
        if layout is not None:
            if rank is None or layout.axis != rank - 1:
                self.t.atoms.block_layout(layout, f"MatMul {node.name} reads channels on a non-feature axis")
            else:
                self.consume(node, layout, 1, 0)
        out_rank = self.rank(node.output[0]) or rank or 2
        out = self.new_atoms(node, weight.shape[1], out_rank - 1)
        self.t.edits.append(SliceInput(node.name, 1, 1, out, EditRole.PRODUCER))
        return out

    def binary(self, node: onnx.NodeProto) -> Layout | None:
        out_rank = self.rank(node.output[0])
        tracked = [(i, self.t.layouts[n]) for i, n in enumerate(node.input) if n in self.t.layouts]
        if not tracked:
            return None
        if out_rank is None:
            for _, layout in tracked:
                self.t.atoms.block_layout(layout, f"{node.op_type} {node.name}: shape unknown")
            return None
        broadcast = set()
        if max(len(layout) * layout.repeat for _, layout in tracked) > 1:
            # a tensor of one channel (FocalNet's gate for a focal level) is spread over every channel of the other side:
            # that one channel stays, the other side's channels pass through
            for index, layout in tracked:
                if len(layout) * layout.repeat == 1:
                    self.t.atoms.block_layout(layout, f"{node.op_type} {node.name} spreads its one channel '{node.input[index]}' over the others")
                    broadcast.add(index)
            tracked = [(index, layout) for index, layout in tracked if index not in broadcast]
        first_index, first = tracked[0]
        in_rank = self.rank(node.input[first_index])
        out_axis = first.axis + (out_rank - in_rank) if in_rank is not None else first.axis
        result = Layout(out_axis, first.atoms, first.repeat)
        for index, name in enumerate(node.input):
            if not name or index == first_index or index in broadcast:
                continue
            layout = self.t.layouts.get(name)
            rank = self.rank(name)
            if layout is not None:
                if len(layout) != len(first) or layout.repeat != first.repeat or (rank is not None and layout.axis + out_rank - rank != out_axis):
                    self.t.atoms.block_layout(layout, f"{node.op_type} {node.name} combines differently laid out channels")
                    self.t.atoms.block_layout(first, f"{node.op_type} {node.name} combines differently laid out channels")
                    continue
                for a, b in zip(first.atoms, layout.atoms):
                    self.t.atoms.tie(a, b)
                continue
            shape = self.shapes.get(name)
            if shape is None:
                self.t.atoms.block_layout(first, f"{node.op_type} {node.name}: shape of '{name}' unknown")
                continue
            axis = out_axis - (out_rank - len(shape))
            if axis < 0 or shape[axis] == 1:
                continue  # broadcast along the channel axis
            if self._cut_operand(node, index, axis, first):
                continue
            self.t.atoms.block_layout(first, f"{node.op_type} {node.name} combines the channels with '{name}', which is not pruned with them")
        return result

    def _cut_operand(self, node: onnx.NodeProto, index: int, axis: int, layout: Layout) -> bool:
        """Input ``index`` of ``node``, which carries no channels of its own, loses ``layout``'s removed channels along
        ``axis``: a stored constant of one value per channel (a bias added, Funnel's per-head segment embeddings in an
        Einsum) is sliced, one computed from constants is cut at them; False where neither."""
        name = node.input[index]
        shape = self.shapes.get(name)
        if name in self.constants and layout.repeat == 1 and shape is not None and shape[axis] == len(layout):
            self.t.edits.append(SliceInput(node.name, index, axis, Layout(axis, layout.atoms), EditRole.PARAMETER))
            if self._copies_would_weigh(name, shape, layout):
                self._tie_shared(f"operand axis {axis}", name, layout)
            return True
        return self._cut_constant_operand(name, axis, layout, node.name)

    def _graph_view(self) -> GraphView:
        """The graph's producers, readers and constants as constant expressions are followed (built once, when first needed)."""
        if self._view is None:
            self._view = GraphView(producer_map(self.graph), consumers_map(self.graph), {v.name for v in self.graph.output}, self.shapes,
                                   lambda n: n in self.constants, self.const, lambda n: n in self.t.layouts)
        return self._view

    def _copies_would_weigh(self, name: str, shape: tuple, layout: Layout) -> bool:
        """Whether the stored operand ``name``, cut by each of its readers for its own channels, would add copies
        weighing more than COPIED_MAP_SHARE of the model's weights (a vector of one value per channel never does)."""
        size = int(np.prod(shape))
        if size <= len(layout):
            return False
        if self._weights_total is None:
            self._weights_total = sum(int(np.prod(t.dims)) for t in self.inits.values())
        return (len(self._graph_view().readers.get(name, [])) - 1) * size > COPIED_MAP_SHARE * self._weights_total

    def _cut_constant_operand(self, name: str, axis: int, layout: Layout, reader: str) -> bool:
        """Where ``name`` is computed from constants (a relative position bias gathered at run time), the removed
        channels are cut from those constants; False where its channels cannot be followed back to them. An operand
        cut already for another of its readers is cut once: the channels ``reader`` meets are tied to those."""
        if name in self.cut_operands:
            first_axis, first, _, met = self.cut_operands[name]
            if first_axis != axis or len(first) != len(layout) or first.repeat != layout.repeat:
                self.t.atoms.block_layout(first, f"'{name}' meets channels laid out differently in its readers")
                return False
            for a, b in zip(first.atoms, layout.atoms):
                self.t.atoms.tie(a, b)
            met.add(reader)
            return True
        try:
            cut = constant_operand_edits(self._graph_view(), name, axis, layout)
        except NotFollowed:
            return False
        # a stored constant several expressions read (blocks whose identical tables the exporter stored once) loses the
        # same channels in each, so that it stays one tensor: as a weight shared by several layers does
        for table, table_axis in cut.shared.items():
            self._tie_shared(f"table axis {table_axis}", table, layout)
            self.shared_tables.setdefault((table, table_axis), (layout, name, set()))[2].update(cut.nodes)
        self.t.edits.extend(cut.edits)
        self.cut_operands[name] = (axis, layout, cut.readers, {reader})
        return True

    def _block_tables_read_elsewhere(self) -> None:
        """A shared stored constant that something besides the cut expressions reads (a token table tied to the output
        layer) would be stored twice, once cut: the channels it was to lose stay. So do those of a computed operand cut
        for them that another node reads without meeting such channels."""
        for (table, _), (layout, operand, readers) in self.shared_tables.items():
            others = [r.name for r in self._view.readers.get(table, []) if r.name not in readers]
            if others:
                self.t.atoms.block_layout(layout, f"'{operand}' is computed from '{table}', which {others[0]} reads as well")
        for operand, (_, layout, readers, met) in self.cut_operands.items():
            others = sorted(readers - met)
            if others:
                self.t.atoms.block_layout(layout, f"{min(met)} combines the channels with '{operand}', which {others[0]} reads as well")

    def concat(self, node: onnx.NodeProto) -> Layout | None:
        layouts = [self.t.layouts.get(n) for n in node.input]
        if not any(layouts):
            return None
        rank = self.rank(node.output[0])
        axis = int(node_attr(node, "axis", 0))
        if rank is not None and axis < 0:
            axis += rank
        tracked = [layout for layout in layouts if layout is not None]
        if any(layout.axis != tracked[0].axis or layout.repeat != 1 for layout in tracked):
            for layout in tracked:
                self.t.atoms.block_layout(layout, f"Concat {node.name} joins differently laid out channels")
            return None
        channel_axis = tracked[0].axis
        if axis != channel_axis:
            return self.binary(node)  # joining along another axis ties the channels position by position
        atoms: list[int | None] = []
        for name, layout in zip(node.input, layouts):
            if layout is not None:
                atoms.extend(layout.atoms)
                continue
            shape = self.shapes.get(name)
            if shape is None or not isinstance(shape[axis], int):
                for layout in tracked:
                    self.t.atoms.block_layout(layout, f"Concat {node.name}: size of input '{name}' unknown")
                return None
            atoms.extend([None] * shape[axis])
        return Layout(axis, tuple(atoms))

    def split(self, node: onnx.NodeProto, layout: Layout) -> None:
        axis = int(node_attr(node, "axis", 0))
        rank = self.rank(node.input[0])
        if rank is not None and axis < 0:
            axis += rank
        if axis != layout.axis:
            for out in node.output:
                self.t.layouts[out] = layout
            return
        sizes = None
        if len(node.input) > 1 and node.input[1]:
            array = self.const(node.input[1])
            sizes = None if array is None else [int(v) for v in array]
        elif node_attr(node, "split") is not None:
            sizes = list(node_attr(node, "split"))
        else:
            self.equal_parts(node, layout, axis)
            return
        if sizes is None or layout.repeat != 1 or sum(sizes) != len(layout):
            self.t.atoms.block_layout(layout, f"Split {node.name}: split sizes not constant")
            return
        ranges, start = [], 0
        for out, size in zip(node.output, sizes):
            ranges.append((start, start + size))
            self.t.layouts[out] = Layout(axis, layout.atoms[start : start + size])
            start += size
        self.t.edits.append(SplitSizes(node.name, ranges, layout))

    def equal_parts(self, node: onnx.NodeProto, layout: Layout, axis: int) -> None:
        """Split into equal parts (a packed query/key/value projection, a gated unit's two halves): position j of every
        part goes together, so the parts stay equal and the Split needs no edit."""
        parts = len(node.output)
        if layout.repeat != 1 or len(layout) % parts:
            self.t.atoms.block_layout(layout, f"Split {node.name} splits into equal parts, which pruning would break")
            return
        size = len(layout) // parts
        for part in range(1, parts):
            for j in range(size):
                self.t.atoms.tie(layout.atoms[j], layout.atoms[part * size + j])
        for part, out in enumerate(node.output):
            self.t.layouts[out] = Layout(axis, layout.atoms[part * size : (part + 1) * size])

    def gather(self, node: onnx.NodeProto, layout: Layout) -> Layout | None:
        """Picking along another axis (the class token of a ViT) keeps the channels; a constant list of channels makes
        channels of its own (:meth:`_listed_channels`); other picks of channels block them."""
        rank = self.rank(node.input[0])
        indices = self.shapes.get(node.input[1]) if len(node.input) > 1 else None
        if rank is None or indices is None or node.input[1] in self.t.layouts:
            self.t.atoms.block_layout(layout, f"Gather {node.name}: shapes unknown")
            return None
        axis = int(node_attr(node, "axis", 0)) % rank
        if axis == layout.axis:
            return self._listed_channels(node, layout)
        source, listed = self.shapes.get(node.input[0]), self.const(node.input[1])
        if source is not None and source[axis] == 1 and listed is not None and listed.ndim == 1 and listed.size > 1:
            # one entry copied for each query head (a single key/value head, its channels its features): the copies
            # are the channels from here on, and the features stay (every query head reads them)
            self.t.atoms.block_layout(layout, f"Gather {node.name} copies them for the channels after it")
            return self._listed_channels(node, Layout(axis, (None,)))
        return Layout(layout.axis if layout.axis < axis else layout.axis - 1 + len(indices), layout.atoms, layout.repeat)

    def _listed_channels(self, node: onnx.NodeProto, layout: Layout) -> Layout | None:
        """A Gather of the channel axis by a constant list (a key/value head listed once per query head it serves, see
        :mod:`onnxslim.passes.repeated_heads`): each entry is a channel of its own, removed by leaving it out of the
        list, so the channels after it go one at a time. The channels it copies stay: an entry left in still reads them."""
        listed = self.const(node.input[1])
        if listed is None or listed.ndim != 1 or layout.repeat != 1:
            self.t.atoms.block_layout(layout, f"Gather {node.name} picks channels")
            return None
        self.t.atoms.block_layout(layout, f"Gather {node.name} lists them for the channels after it")
        out = self.new_atoms(node, listed.size, layout.axis)
        self.t.edits.append(SliceInput(node.name, 1, 0, Layout(0, out.atoms), EditRole.PARAMETER))
        return out

    def slice(self, node: onnx.NodeProto, layout: Layout) -> Layout | None:
        """Slices of other axes keep the channels; a constant-bounds slice of the channel axis keeps a range of them."""
        rank = self.rank(node.input[0])
        bounds = [self.const(node.input[i]) if len(node.input) > i and node.input[i] else None for i in range(1, 5)]
        starts, ends, axes, steps = bounds
        if rank is None or starts is None or ends is None or (len(node.input) > 3 and node.input[3] and axes is None) or (
            len(node.input) > 4 and node.input[4] and steps is None
        ):
            self.t.atoms.block_layout(layout, f"Slice {node.name}: bounds not constant")
            return None
        axes = list(range(starts.size)) if axes is None else [int(a) % rank for a in axes.reshape(-1)]
        if layout.axis not in axes:
            return layout
        entry = axes.index(layout.axis)
        step = 1 if steps is None else int(steps.reshape(-1)[entry])
        size = len(layout) * layout.repeat
        if step != 1 or layout.repeat != 1:
            self.t.atoms.block_layout(layout, f"Slice {node.name} steps through the channel axis")
            return None
        start, end = (int(v.reshape(-1)[entry]) for v in (starts, ends))
        start = min(max(start + size if start < 0 else start, 0), size)
        end = min(max(end + size if end < 0 else end, 0), size)
        if end <= start:
            self.t.atoms.block_layout(layout, f"Slice {node.name} keeps no channel")
            return None
        self.t.edits.append(SliceBounds(node.name, entry, layout, start, end))
        return Layout(layout.axis, layout.atoms[start:end])

    def node(self, node: onnx.NodeProto) -> None:
        """Apply the rule of ``node``'s op type: the layout of its output, or block the channels it cannot carry."""
        if node.name in self.handled:
            return
        op = node.op_type
        layouts = self.t.layouts
        data = layouts.get(node.input[0]) if node.input else None
        if node.domain == MS_DOMAIN and op in CONTRIB_RULES and (data is not None or CONTRIB_RULES[op] in RULES_WITHOUT_DATA):
            out = CONTRIB_RULES[op](self, node, data)
            if out is not None:
                layouts[node.output[0]] = out
            return
        if node.domain not in ("", "ai.onnx"):
            kind = "ONNX-ML operator" if node.domain == "ai.onnx.ml" else "custom op"
            self.block_inputs(node, f"{kind} {node.domain}.{op} has no channel rule")
            return
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            self.block_inputs(node, f"{op} {node.name} has subgraphs")
            for sub in subgraphs(node):
                for name in outer_references(sub):  # read inside the branch or body without being an input
                    self.t.atoms.block_layout(layouts.get(name), f"read inside a subgraph of {op} {node.name}")
            return
        rule = RULES.get(op)
        if data is None and rule not in RULES_WITHOUT_DATA:
            if any(n in layouts for n in node.input):
                self.block_inputs(node, f"{op} {node.name} has no rule for channels on this input")
            return
        if rule is None:
            self.block_inputs(node, f"no channel rule for {op} ({node.name})")
            return
        out = rule(self, node, data)
        if out is not None:
            layouts[node.output[0]] = out

    # ------------------------------------------------------------ per-op rules: (node, layout of input 0) -> output layout
    def same_layout(self, node: onnx.NodeProto, data: Layout) -> Layout:
        """Elementwise and spatial ops keep the channel axis as it is."""
        return data

    def bias_activation(self, node: onnx.NodeProto, data: Layout) -> Layout | None:
        """onnxruntime's fused activations (BiasGelu, FastGelu, QuickGelu, Gelu): elementwise, with an optional bias along the
        last axis that loses the removed channels; a bias this rule cannot follow, or channels on another axis, block."""
        if len(node.input) < 2 or not node.input[1]:
            return data
        rank = self.rank(node.input[0])
        bias = node.input[1]
        if (rank is None or data.axis != rank - 1 or data.repeat != 1 or len(node.input) > 2 or bias not in self.constants
                or tuple(self.inits[bias].dims) != (len(data),) or node.input[0] == bias):
            self.block_inputs(node, f"{node.op_type} {node.name}: its bias does not follow the channels")
            return None
        self.t.edits.append(SliceInput(node.name, 1, 0, Layout(0, data.atoms), EditRole.PARAMETER))
        return data

    def fused_attention(self, node: onnx.NodeProto, data: Layout | None) -> Layout | None:
        """onnxruntime's com.microsoft Attention: one weight of query, key and value columns side by side (num_heads heads of
        the same size in each), producer of the heads; its output is the value part. A head is its columns in all three parts,
        which go together, and num_heads follows the heads kept. Past state, an attention bias, unequal part widths
        (qkv_hidden_sizes) and rotary embeddings block it."""
        weight = self.const(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        heads = int(node_attr(node, "num_heads", 0))
        why = None
        if weight is None or weight.ndim != 2 or weight.shape[1] % 3:
            why = "its weight is not one constant matrix of three equal parts"
        elif heads <= 0 or (weight.shape[1] // 3) % heads:
            why = f"num_heads {heads} does not divide its parts"
        elif node_attr(node, "qkv_hidden_sizes") is not None or node_attr(node, "do_rotary", 0):
            why = "its parts differ in width or it applies rotary embeddings"
        elif any(node.input[4:]) or any(node.output[1:]):
            why = "it carries past state or an attention bias"
        rank = self.rank(node.input[0])
        if why is None and data is not None and (rank is None or data.axis != rank - 1 or data.repeat != 1):
            why = "it reads channels on a non-feature axis"
        if why is not None:
            self.t.unprunable[node.name] = f"Attention {node.name} keeps its heads: {why}"
            self.block_inputs(node, f"Attention {node.name}: {why}")
            return None
        if data is not None:
            self.consume(node, data, 1, 0)
        width = weight.shape[1] // 3
        size = width // heads
        out = self.new_atoms(node, 3 * width, (self.rank(node.output[0]) or rank or 3) - 1)
        self.t.edits.append(SliceInput(node.name, 1, 1, out, EditRole.PRODUCER))
        if len(node.input) > 2 and node.input[2]:
            self.t.edits.append(SliceInput(node.name, 2, 0, out, EditRole.PRODUCER_BIAS))
        for head in range(heads):
            first = out.atoms[head * size]
            for part in range(3):
                for offset in range(size):
                    self.t.atoms.tie(first, out.atoms[part * width + head * size + offset])
        self.t.head_atoms.update(out.atoms[head * size] for head in range(heads))
        self.t.edits.append(SetKeptCount(node.name, "num_heads", Layout(out.axis, out.atoms[:width]), size))
        return Layout(out.axis, out.atoms[2 * width:])

    def resize(self, node: onnx.NodeProto, data: Layout) -> Layout | None:
        """Resize by output ``sizes`` names the channel count: a constant one follows the kept channels, any other blocks."""
        if len(node.input) < 4 or not node.input[3]:
            return data  # by scales: the channel axis keeps its scale of 1
        sizes = self.const(node.input[3])
        rank = self.rank(node.input[0])
        axes = node_attr(node, "axes")
        axes = [] if rank is None else list(range(rank)) if axes is None else [int(a) % rank for a in axes]
        if sizes is None or rank is None or sizes.size != len(axes):
            self.t.atoms.block_layout(data, f"Resize {node.name}: output sizes not constant")
            return None
        if data.axis in axes:
            self.t.edits.append(ShapeEntry(node.name, 3, axes.index(data.axis), data, data.repeat))
        return data

    def prelu(self, node: onnx.NodeProto, data: Layout) -> Layout:
        return (self.binary(node) or data) if len(node.input) > 1 else data

    def normalization(self, node: onnx.NodeProto, data: Layout) -> Layout:
        """BatchNormalization / InstanceNormalization: their per-channel parameters lose the same channels."""
        for index in range(1, len(node.input)):
            if node.input[index]:
                self.t.edits.append(SliceInput(node.name, index, 0, Layout(0, data.atoms), EditRole.PARAMETER))
        return data

    def group_normalization(self, node: onnx.NodeProto, data: Layout) -> Layout | None:
        """GroupNormalization: ``num_groups`` runs of consecutive channels that go together (removing whole groups leaves
        the others' mean and variance as they were). ``num_groups`` follows the groups kept, and its scale and bias lose
        theirs: one entry per group (opset 18) or per channel (from opset 21)."""
        groups = int(node_attr(node, "num_groups", 0))
        params = [self.const(name) for name in node.input[1:3]]
        if groups == 1 and data.axis == 1 and data.repeat == 1 and all(p is not None and p.shape in ((1,), (len(data),)) for p in params):
            # one group: a LayerNorm over channels and positions, whose statistics then come from the kept channels
            for index, param in enumerate(params, start=1):
                if len(param) == len(data) and len(data) != 1:
                    self.t.edits.append(SliceInput(node.name, index, 0, Layout(0, data.atoms), EditRole.PARAMETER))
            self.t.renormalized[node.name] = data
            return data
        if data.axis != 1 or data.repeat != 1 or groups < 2 or len(data) % groups or any(p is None or p.shape not in ((groups,), (len(data),)) for p in params):
            self.t.atoms.block_layout(data, f"GroupNormalization {node.name} normalizes its channels together")
            return None
        per_group = self.tie_groups(data, groups)
        for index, param in enumerate(params, start=1):
            self.t.edits.append(SliceInput(node.name, index, 0, per_group if len(param) == groups else Layout(0, data.atoms), EditRole.PARAMETER))
        self.t.edits.append(SetKeptCount(node.name, "num_groups", per_group))
        return data

    def shape(self, node: onnx.NodeProto, data: Layout | None) -> None:
        """Reading only batch or sequence sizes is unaffected by pruning; reading the channel count blocks it."""
        if node.op_type == "Shape" and data is not None and (self._reads_other_dims(node, data) or self.restores_group_norm_input(node)):
            return None
        self.block_inputs(node, f"its size is read by {node.op_type} {node.name}")
        return None

    def transpose(self, node: onnx.NodeProto, data: Layout) -> Layout | None:
        perm = node_attr(node, "perm")
        if perm is None:
            self.t.atoms.block_layout(data, f"Transpose {node.name} without perm")
            return None
        # the channel axis moves whole, with the positions each atom spans along it
        return Layout(list(perm).index(data.axis), data.atoms, data.repeat)

    def squeeze(self, node: onnx.NodeProto, data: Layout) -> Layout | None:
        """Squeeze / Unsqueeze of other axes move the channel axis by the axes removed or inserted before it."""
        op = node.op_type
        rank = self.rank(node.input[0])
        axes = self.listed_axes(node)
        shape = self.shapes.get(node.input[0])
        if axes is None and op == "Squeeze" and shape is not None and all(isinstance(size, int) for size in shape):
            axes = [i for i, size in enumerate(shape) if size == 1]  # no axes: every axis of size 1 (a named size could be 1 too)
        if axes is None or rank is None:
            self.t.atoms.block_layout(data, f"{op} {node.name}: axes or rank unknown")
            return None
        if op == "Squeeze":
            axes = {a % rank for a in axes}
            if data.axis in axes:
                self.t.atoms.block_layout(data, f"Squeeze {node.name} removes the channel axis")
                return None
            return Layout(data.axis - sum(a < data.axis for a in axes), data.atoms, data.repeat)
        inserted = {a % (rank + len(axes)) for a in axes}
        kept = [position for position in range(rank + len(axes)) if position not in inserted]  # input axis i lands at kept[i]
        return Layout(kept[data.axis], data.atoms, data.repeat)

    def col2im(self, node: onnx.NodeProto, data: Layout) -> Layout | None:
        """Col2Im folds (N, C * block, L) back into images (N, C, H, W): channel c's block of consecutive positions
        (MobileViTV2's patches, folded back) becomes channel c; the image and block shapes do not count channels."""
        block = self.const(node.input[2]) if len(node.input) > 2 else None
        if block is None or data.axis != 1 or data.repeat != int(np.prod(block)):
            self.t.atoms.block_layout(data, f"Col2Im {node.name} folds the channel axis other than channel by channel")
            return None
        return Layout(1, data.atoms)

    def tile(self, node: onnx.NodeProto, data: Layout) -> Layout | None:
        """Tile repeating other axes (GCViT's global query, one copy per window) keeps the channels; repeating the
        channel axis, or repeats computed at run time, block."""
        repeats = self.const(node.input[1]) if len(node.input) > 1 else None
        if repeats is None or repeats.ndim != 1 or data.axis >= repeats.size:
            self.t.atoms.block_layout(data, f"Tile {node.name}: repeats not constant")
            return None
        if int(repeats[data.axis]) != 1:
            self.t.atoms.block_layout(data, f"Tile {node.name} repeats the channel axis")
            return None
        return data

    def expand(self, node: onnx.NodeProto, data: Layout) -> Layout | None:
        """Expand broadcasting other axes (grouped-query attention repeats each key/value head this way) keeps the channels.

        A target entry of 1 on the channel axis keeps the input's size; one equal to the channel count
        follows the channels kept; a target that is not constant, or one that broadcasts the channels, blocks.
        """
        target = self.const(node.input[1]) if len(node.input) > 1 else None
        rank = self.rank(node.input[0])
        if target is None or rank is None or target.ndim != 1 or target.size < rank:
            self.t.atoms.block_layout(data, f"Expand {node.name}: target shape not constant")
            return None
        axis = data.axis + target.size - rank
        entry = int(target[axis])
        if entry not in (1, len(data) * data.repeat):
            self.t.atoms.block_layout(data, f"Expand {node.name} broadcasts the channel axis")
            return None
        out = Layout(axis, data.atoms, data.repeat)
        if entry != 1:
            self.t.edits.append(ShapeEntry(node.name, 1, axis, out, data.repeat))
        return out

    def recurrent(self, node: onnx.NodeProto, data: Layout | None) -> Layout | None:
        """LSTM / GRU / RNN: a consumer of its input features through W (directions, gates x hidden, features), and the
        producer of its hidden units (:meth:`_hidden_units`)."""
        weight = self.const(node.input[1]) if len(node.input) > 1 else None
        if data is not None:
            rank = self.rank(node.input[0])
            if weight is None or weight.ndim != 3 or rank != 3 or data.axis != 2 or weight.shape[2] != len(data) * data.repeat:
                self.t.atoms.block_layout(data, f"{node.op_type} {node.name}: input features or weight not as expected")
            else:
                self.consume(node, data, 1, 2)
        return self._hidden_units(node, weight)

    def _hidden_units(self, node: onnx.NodeProto, weight: np.ndarray | None) -> Layout | None:
        """Hidden unit j of every direction goes as one: row j of each gate of W, R, B (and the peepholes), column j of R
        (the state it feeds back), entry j of a constant initial state, and position j of the last axis of Y, Y_h and Y_c;
        ``hidden_size`` follows. A state given at run time (a graph input, a computed tensor) keeps its size: not pruned."""
        recurrence = self.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if weight is None or recurrence is None or weight.ndim != 3 or recurrence.ndim != 3 or weight.shape[1] % recurrence.shape[2]:
            self.t.unprunable[node.name] = f"{node.op_type} {node.name}: weights not constant or not as expected"
            return None
        hidden = recurrence.shape[2]
        gates = weight.shape[1] // hidden
        states = INITIAL_STATE_INPUTS[node.op_type]
        given = [node.input[i] for i in states if len(node.input) > i and node.input[i] and node.input[i] not in self.constants]
        if given:
            self.t.unprunable[node.name] = f"{node.op_type} {node.name}: its initial state '{given[0]}' is given at run time, so its hidden size stays"
            return None
        units = self.new_atoms(node, hidden, 2)

        def tiled(times: int, axis: int = 1) -> Layout:
            return Layout(axis, units.atoms * times)

        self.t.edits.append(SliceInput(node.name, 1, 1, tiled(gates), EditRole.PRODUCER))
        self.t.edits.append(SliceInput(node.name, 2, 1, tiled(gates), EditRole.PRODUCER))
        self.t.edits.append(SliceInput(node.name, 2, 2, Layout(2, units.atoms), EditRole.RECURRENT))
        if len(node.input) > 3 and node.input[3]:
            self.t.edits.append(SliceInput(node.name, 3, 1, tiled(2 * gates), EditRole.PARAMETER))
        for index in states:
            if len(node.input) > index and node.input[index]:
                self.t.edits.append(SliceInput(node.name, index, 2, Layout(2, units.atoms), EditRole.PARAMETER))
        if node.op_type == "LSTM" and len(node.input) > 7 and node.input[7]:
            self.t.edits.append(SliceInput(node.name, 7, 1, tiled(3), EditRole.PARAMETER))
        self.t.edits.append(SetKeptCount(node.name, "hidden_size", units))
        for index, axis in ((1, 2), (2, 2)):  # Y_h and Y_c: (directions, batch, hidden), or (batch, directions, hidden)
            if len(node.output) > index and node.output[index]:
                self.t.layouts[node.output[index]] = Layout(axis, units.atoms)
        return Layout(3, units.atoms)  # Y: (steps, directions, batch, hidden), or (batch, steps, directions, hidden)

    def pad(self, node: onnx.NodeProto, data: Layout) -> Layout | None:
        """Spatial padding keeps the channels; constant channels added before or after them (TFLite's widened shortcuts)
        are positions no channel of it can be removed from, as a Concat with a constant; other channel padding blocks."""
        pads = self.const(node.input[1]) if len(node.input) > 1 and node.input[1] else np.array(node_attr(node, "pads", []))
        rank = self.rank(node.input[0])
        if pads is None or rank is None or pads.size != 2 * rank or (len(node.input) > 3 and node.input[3]):
            self.t.atoms.block_layout(data, f"Pad {node.name} may pad the channel axis")
            return None
        before, after = int(pads[data.axis]), int(pads[data.axis + rank])
        if not before and not after:
            return data
        if text_attr(node, "mode", "constant") != "constant" or before < 0 or after < 0 or data.repeat != 1:
            self.t.atoms.block_layout(data, f"Pad {node.name} crops the channels or pads them with copies of their own")
            return None
        return Layout(data.axis, (None,) * before + data.atoms + (None,) * after)

    def binary_rule(self, node: onnx.NodeProto, data: Layout | None) -> Layout | None:
        return self.binary(node)

    def concat_rule(self, node: onnx.NodeProto, data: Layout | None) -> Layout | None:
        return self.concat(node)

    def split_rule(self, node: onnx.NodeProto, data: Layout) -> None:
        self.split(node, data)
        return None

    def gather_rule(self, node: onnx.NodeProto, data: Layout) -> Layout | None:
        return self.gather(node, data)

    def layer_normalization(self, node: onnx.NodeProto, data: Layout) -> Layout | None:
        """Over the channels only: scale and bias are per channel, mean and variance then come from the kept ones."""
        if not self._normalizes_channels_only(node, data):
            return self.reduction(node, data)
        for index in (1, 2):
            if len(node.input) > index and node.input[index]:
                self.t.edits.append(SliceInput(node.name, index, 0, Layout(0, data.atoms), EditRole.PARAMETER))
        self.t.renormalized[node.name] = data
        return data

    def reduction(self, node: onnx.NodeProto, data: Layout) -> Layout | None:
        """Softmax, normalizations and reductions over other axes keep the channels (on an axis moved forward by the axes a
        reduction drops before it: mean pooling over tokens or time); across them, block."""
        op = node.op_type
        rank = self.rank(node.input[0])
        axes = self._reduced_axes(node, rank)
        keepdims = int(node_attr(node, "keepdims", 1)) if op.startswith("Reduce") else 1
        if axes is not None and data.axis in axes and op in SUMS_OVER_CHANNELS:
            # the removed channels' terms leave the sum (a mean's divisor becomes the kept count): a statistic of the
            # kept channels from then on (ConvNeXt V2's response normalization, a spelled-out norm), said as for LayerNorm
            self.t.renormalized[node.name] = data
            return None
        if axes is None or data.axis in axes:
            self.t.atoms.block_layout(data, f"{op} {node.name} works across the channel axis")
            return None
        if not keepdims:
            return Layout(data.axis - sum(1 for a in axes if a < data.axis), data.atoms, data.repeat)
        return data

    def _reads_other_dims(self, shape_node: onnx.NodeProto, layout: Layout) -> bool:
        """Whether every reader of ``shape_node`` takes only entries other than the channel axis's (Gathers of constant
        indices, seen through integer Casts: tf2onnx reads shapes in int32)."""
        rank = self.rank(shape_node.input[0])
        if rank is None or node_attr(shape_node, "start") is not None:
            return False
        view = self._graph_view()
        pending, readers = [shape_node.output[0]], []
        while pending:
            name = pending.pop()
            found = view.readers.get(name, [])
            if not found or name in view.outputs:
                return False
            for reader in found:
                if reader.op_type == "Cast" and onnx.helper.tensor_dtype_to_np_dtype(int(node_attr(reader, "to", 0))).kind in "iu":
                    pending.append(reader.output[0])
                else:
                    readers.append(reader)
        for reader in readers:
            index = self.const(reader.input[1]) if reader.op_type == "Gather" and len(reader.input) > 1 and reader.input[0] != reader.input[1] else None
            if index is None or index.size == 0 or any(int(i) % rank == layout.axis for i in index.reshape(-1)):
                return False
        return True

    def activation_matmul(self, node: onnx.NodeProto) -> Layout | None:
        """Both operands are activations: channels on a shared batch axis (attention heads) tie; channels on the axis the
        product sums over (a query's and a key's features, one head per layer as EfficientViT writes it) tie position
        by position and are summed away; rows of the left side or columns of the right one pass through where the
        other side carries no channels; others block."""
        a, b = (self.t.layouts.get(n) for n in node.input[:2])
        ranks = [self.rank(n) for n in node.input[:2]]
        out_rank = self.rank(node.output[0])
        if (
            a is not None and b is not None and None not in ranks and ranks[0] >= 2 and ranks[1] >= 2
            and a.axis == ranks[0] - 1 and b.axis == ranks[1] - 2 and a.repeat == b.repeat == 1 and len(a) == len(b)
        ):
            # removing feature j from both sides leaves the product it would have with feature j of either side zeroed
            for left, right in zip(a.atoms, b.atoms):
                self.t.atoms.tie(left, right)
            return None
        if (a is None) != (b is None) and None not in ranks and out_rank is not None and min(ranks) >= 2:
            # the other side carries no channels (attention weights whose features were summed away): rows of the left
            # side and columns of the right side are the product's own rows and columns
            if a is not None and a.axis == ranks[0] - 2:
                return Layout(out_rank - 2, a.atoms, a.repeat)
            if b is not None and b.axis == ranks[1] - 1:
                return Layout(out_rank - 1, b.atoms, b.repeat)
        ok = (
            a is not None and b is not None and None not in ranks and out_rank is not None and ranks[0] == ranks[1] == out_rank
            and a.axis == b.axis and a.axis < out_rank - 2 and len(a) * a.repeat == len(b) * b.repeat and 1 in (a.repeat, b.repeat)
        )
        if not ok:
            for layout in (a, b):
                self.t.atoms.block_layout(layout, f"MatMul {node.name} mixes two activations")
            return None
        # a head of one side may stand for several consecutive heads of the other (grouped-query attention's repeated
        # keys and values): each is tied to the heads it meets, so a key/value head goes with its whole group of queries
        finer, coarser = (a, b) if a.repeat == 1 else (b, a)
        for position, atom in enumerate(finer.atoms):
            self.t.atoms.tie(atom, coarser.atoms[position // coarser.repeat])
        return Layout(a.axis, finer.atoms)

    def einsum(self, node: onnx.NodeProto, data: Layout | None) -> Layout | None:
        """Einsum of activations, as some exports write attention ('bnhd,bmhd->bhnm'): the channels' subscript moves to its
        place in the output, and operands that share it tie their channels, as a MatMul of two activations does. A
        subscript summed away or read by an operand that carries no channels (a constant), an ellipsis or an implicit
        output blocks them."""
        layouts = [self.t.layouts.get(name) for name in node.input]
        equation = text_attr(node, "equation", "").replace(" ", "")
        terms, _, output = equation.partition("->")
        terms = terms.split(",")
        letters = {terms[i][layout.axis] for i, layout in enumerate(layouts)
                   if layout is not None and i < len(terms) and layout.axis < len(terms[i])}
        why = None
        if "." in equation or "->" not in equation or len(terms) != len(node.input):
            why = "has an ellipsis, an implicit output or operands its equation does not name"
        elif any(layout is not None and self.rank(name) != len(term) for name, term, layout in zip(node.input, terms, layouts)):
            why = "names other axes than its operands have"
        elif len(letters) != 1:
            why = "reads channels under different subscripts"
        if why is None:
            (letter,) = letters
            carriers = [layout for term, layout in zip(terms, layouts) if letter in term]
            if self._einsum_contraction(terms, output, letter, carriers):
                return None
            carried = [layout for layout in carriers if layout is not None]
            if output.count(letter) != 1 or any(term.count(letter) > 1 for term in terms):
                why = f"sums over or repeats the channels' subscript '{letter}'"
            elif any(terms[i].index(letter) != layout.axis for i, layout in enumerate(layouts) if layout is not None):
                why = f"reads the channels' subscript '{letter}' on another axis than its operand carries them"
            elif any(len(layout) != len(carried[0]) or layout.repeat != carried[0].repeat for layout in carried):
                why = "reads channels laid out differently in its operands"
            elif not all(self._cut_operand(node, i, terms[i].index(letter), carried[0])
                         for i, (term, layout) in enumerate(zip(terms, layouts)) if letter in term and layout is None):
                why = f"reads the channels' subscript '{letter}' from an operand that carries none"
            carriers = carried
        if why is not None:
            for layout in layouts:
                self.t.atoms.block_layout(layout, f"Einsum {node.name} {why}")
            return None
        for layout in carriers[1:]:
            for a, b in zip(carriers[0].atoms, layout.atoms):
                self.t.atoms.tie(a, b)
        return Layout(output.index(letter), carriers[0].atoms, carriers[0].repeat)

    def _einsum_contraction(self, terms: list[str], output: str, letter: str, carriers: list[Layout | None]) -> bool:
        """The channels' subscript summed over by exactly two operands that both carry them (a query's and a key's features,
        'bhlk,bhtk->bhlt'): feature j of one goes with feature j of the other, as for a MatMul of two activations. The
        product carries no channels."""
        if letter in output or len(carriers) != 2 or any(term.count(letter) > 1 for term in terms):
            return False
        left, right = carriers
        if left is None or right is None or left.repeat != 1 or right.repeat != 1 or len(left) != len(right):
            return False
        for a, b in zip(left.atoms, right.atoms):
            self.t.atoms.tie(a, b)
        return True

    def _normalizes_channels_only(self, node: onnx.NodeProto, data: Layout) -> bool:
        rank = self.rank(node.input[0])
        if rank is None or data.repeat != 1 or self._reduced_axes(node, rank) != {data.axis}:
            return False
        params = [node.input[i] for i in (1, 2) if len(node.input) > i and node.input[i]]
        return all(name in self.constants and tuple(self.inits[name].dims) == (len(data),) for name in params)

    def _reduced_axes(self, node: onnx.NodeProto, rank: int | None) -> set[int] | None:
        if rank is None:
            return None
        if node.op_type in ("Softmax", "LogSoftmax"):
            return {int(node_attr(node, "axis", -1)) % rank}
        if node.op_type == "LayerNormalization":
            start = int(node_attr(node, "axis", -1)) % rank
            return set(range(start, rank))
        axes = self.listed_axes(node)
        if axes is None:
            return set(range(rank))
        return {a % rank for a in axes}

    def run(self) -> Tracing:
        for node in self.graph.node:
            self.node(node)
        self._block_tables_read_elsewhere()
        for output in self.graph.output:
            self.t.atoms.block_layout(self.t.layouts.get(output.name), f"reaches graph output '{output.name}'")
        return self.t


# The rule of each op type. Rules for ops whose first input may carry no channels (binary ops, Concat, the
# weighted layers, Shape) are listed in RULES_WITHOUT_DATA; every other rule runs only on a tracked input.
RULES: dict[str, Callable[[Tracer, onnx.NodeProto, Layout | None], Layout | None]] = {
    **{op: Tracer.same_layout for op in UNARY - {"PRelu"}},
    "PRelu": Tracer.prelu,
    **{op: Tracer.same_layout for op in SPATIAL},
    "Resize": Tracer.resize,
    "BatchNormalization": Tracer.normalization,
    "InstanceNormalization": Tracer.normalization,
    "GroupNormalization": Tracer.group_normalization,
    **{op: Tracer.binary_rule for op in BINARY},
    "Concat": Tracer.concat_rule,
    "Split": Tracer.split_rule,
    "Gather": Tracer.gather_rule,
    "Slice": Tracer.slice,
    "Flatten": Tracer.flatten,
    "Reshape": Tracer.flatten,
    "Transpose": Tracer.transpose,
    "Squeeze": Tracer.squeeze,
    "Unsqueeze": Tracer.squeeze,
    **{op: Tracer.recurrent for op in RECURRENT_LAYERS},
    "Pad": Tracer.pad,
    "Expand": Tracer.expand,
    "Tile": Tracer.tile,
    "Col2Im": Tracer.col2im,
    "LayerNormalization": Tracer.layer_normalization,
    **{op: Tracer.reduction for op in ("Softmax", "LogSoftmax", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceL2")},
    **{op: Tracer.weighted for op in ("Conv", "ConvTranspose", "Gemm", "MatMul")},
    "Shape": Tracer.shape,
    "Size": Tracer.shape,
    "Einsum": Tracer.einsum,
}
# onnxruntime's com.microsoft operators that carry channels as their standard spelling would (its transformer optimizer's
# fused activations and fused attention); every other operator of another domain blocks the channels it reads
CONTRIB_RULES: dict[str, Callable[[Tracer, onnx.NodeProto, Layout], Layout | None]] = {
    **{op: Tracer.bias_activation for op in ("BiasGelu", "FastGelu", "QuickGelu", "Gelu")},
    "Attention": Tracer.fused_attention,
}
RULES_WITHOUT_DATA = {Tracer.binary_rule, Tracer.concat_rule, Tracer.weighted, Tracer.shape, Tracer.fused_attention, Tracer.recurrent, Tracer.einsum}


def trace(model: onnx.ModelProto, shapes: dict[str, tuple]) -> Tracing:
    """Layouts, ties, blocks and edits for every prunable channel of ``model``."""
    return Tracer(model, shapes).run()
