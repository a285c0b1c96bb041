"""Channel rules for Reshape: flattening into features, attention heads, packed projections, channel shuffles, GroupNorm.

Exporters spell head splits, Q/K/V unpacking and channel shuffles with
Reshape, Transpose and Gather; each rule here recognizes one such spelling
from static shapes and constant targets, ties the channels that must go
together and records the edits of the targets. A Reshape no rule explains
blocks the channels it carries.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxslim.ir.graph import node_attr
from onnxslim.prune.atoms import Layout
from onnxslim.prune.edits import EditRole, ReshapeChannels, ShapeEntry, SliceInput


def _resizable(entry: tuple[int | None, tuple[str, int, int] | None]) -> bool:
    """A target entry pruning can keep right: known, and either stored where it can be edited or one that adapts (0, -1)."""
    value, where = entry
    return value is not None and (value <= 0 or where is not None)


class ReshapeRules:
    """Reshape rules of the tracer (mixed into :class:`~onnxslim.prune.trace.Tracer`, whose state they use)."""

    def _resize(self, entry: tuple[int | None, tuple[str, int, int] | None], layout: Layout, per_unit: int) -> None:
        """Record the edit of a positive target entry that counts ``layout``'s kept units; 0 and -1 adapt by themselves."""
        value, where = entry
        if value is not None and value > 0:
            self.t.edits.append(ShapeEntry(where[0], where[1], where[2], layout, per_unit))

    def channel_shuffle(self, node: onnx.NodeProto, layout: Layout) -> tuple[Layout, str] | None:
        """Reshape (g*n) -> (g, n), a Transpose swapping the two, Reshape back to g*n: a fixed permutation.

        Returns the layout after the second Reshape and that tensor's name.

        Position i1*n + i2 moves to i2*g + i1. Pruned, the same three nodes must
        shuffle the kept channels the same way, so channel i2 goes in all g groups
        or in none: those g channels are tied.
        """
        in_shape, out_shape = self.shapes.get(node.input[0]), self.shapes.get(node.output[0])
        axis = layout.axis
        if in_shape is None or out_shape is None or layout.repeat != 1 or len(out_shape) != len(in_shape) + 1:
            return None
        groups, per_group = out_shape[axis], out_shape[axis + 1]
        if not isinstance(groups, int) or not isinstance(per_group, int) or groups < 2 or groups * per_group != len(layout):
            return None
        transpose = self._sole_reader(node.output[0])
        if transpose is None or transpose.op_type != "Transpose":
            return None
        swapped = list(range(len(out_shape)))
        swapped[axis], swapped[axis + 1] = axis + 1, axis
        if list(node_attr(transpose, "perm", [])) != swapped:
            return None
        merge = self._sole_reader(transpose.output[0])
        if merge is None or merge.op_type != "Reshape" or self.shapes.get(merge.output[0]) != in_shape:
            return None
        split_entries, merge_entries = self._target_entries(node), self._target_entries(merge)
        if split_entries is None or merge_entries is None or len(merge_entries) != len(in_shape):
            return None
        if split_entries[axis][0] != groups or not _resizable(split_entries[axis + 1]) or not _resizable(merge_entries[axis]):
            return None
        for i2 in range(per_group):
            for i1 in range(1, groups):
                self.t.atoms.tie(layout.atoms[i2], layout.atoms[i1 * per_group + i2])
        out = Layout(axis, tuple(layout.atoms[i1 * per_group + i2] for i2 in range(per_group) for i1 in range(groups)))
        self._resize(split_entries[axis + 1], Layout(axis, layout.atoms[:per_group]), 1)
        self._resize(merge_entries[axis], out, 1)
        self.handled.update((transpose.name, merge.name))
        return out, merge.output[0]

    def group_norm_reshapes(self, node: onnx.NodeProto, layout: Layout) -> tuple[Layout, str] | None:
        """Reshape (N, C, ...) -> (N, G, -1), InstanceNormalization of each of the G rows, Reshape back: a GroupNorm as
        torch writes it (its per-channel scale and shift follow as a Mul and an Add, which other rules carry).

        Returns the layout after the closing Reshape and that tensor's name. A group is C / G channels that go together:
        removing whole groups leaves every other group's mean and variance as they were, so the kept channels are
        normalized exactly as before. G, the normalization's per-group parameters and a constant closing target
        follow the kept groups; a closing target read from the input's Shape adapts by itself.
        """
        found = self._group_norm_parts(node)
        in_shape = self.shapes.get(node.input[0])
        if found is None or in_shape is None or layout.axis != 1 or layout.repeat != 1 or in_shape[1] != len(layout):
            return None
        norm, close, entries, close_entries = found
        groups = entries[1][0]
        if groups < 2:
            return self._one_group_norm(node, layout, found)
        if len(layout) % groups:
            return None
        per_group = self.tie_groups(layout, groups)
        self._resize(entries[1], Layout(1, per_group.atoms), 1)
        for index in (1, 2):
            self.t.edits.append(SliceInput(norm.name, index, 0, per_group, EditRole.PARAMETER))
        if close_entries is not None:
            self._resize(close_entries[1], layout, 1)
        self.handled.update((norm.name, close.name))
        return Layout(1, layout.atoms), close.output[0]

    def _one_group_norm(self, node: onnx.NodeProto, layout: Layout, found) -> tuple[Layout, str] | None:
        """A GroupNorm of one group (PoolFormer's and MobileViTV2's norm: a LayerNorm over channels and positions): its
        mean and variance come from the kept channels from then on, as a LayerNorm's over pruned channels do (said in the
        warning). Its scale and shift are one value each; an opening target that states the row's size follows the
        channels kept."""
        norm, close, entries, close_entries = found
        rest, where = entries[2]
        in_shape = self.shapes.get(node.input[0])
        if rest != -1:
            positions_each = int(np.prod(in_shape[2:], dtype=np.int64))
            if where is None or rest != len(layout) * positions_each:
                return None
            self._resize(entries[2], layout, positions_each)
        if close_entries is not None:
            self._resize(close_entries[1], layout, 1)
        self.t.renormalized[norm.name] = layout
        self.handled.update((norm.name, close.name))
        return Layout(1, layout.atoms), close.output[0]

    def tie_groups(self, layout: Layout, groups: int) -> Layout:
        """Tie each of ``groups`` runs of consecutive channels (a normalization's groups); returns one atom per group, for
        the per-group parameters and counts that follow the groups kept."""
        size = len(layout) // groups
        for group in range(groups):
            for offset in range(1, size):
                self.t.atoms.tie(layout.atoms[group * size], layout.atoms[group * size + offset])
        return Layout(0, tuple(layout.atoms[group * size] for group in range(groups)))

    def _group_norm_parts(self, node: onnx.NodeProto):
        """For a Reshape opening a GroupNorm: (the InstanceNormalization, the closing Reshape, the opening target's entries,
        the closing target's entries or None where it is the input's Shape); None when ``node`` opens none."""
        in_shape, out_shape = self.shapes.get(node.input[0]), self.shapes.get(node.output[0])
        entries = self._target_entries(node)
        if in_shape is None or out_shape is None or len(in_shape) < 3 or len(out_shape) != 3 or entries is None or len(entries) != 3:
            return None
        (batch, _), (groups, where), (rest, _) = entries
        per_row = None if None in in_shape[1:] else int(np.prod(in_shape[1:], dtype=np.int64)) // max(groups or 1, 1)
        if groups is None or where is None or groups < 1 or batch not in (0, in_shape[0]) or rest not in (-1, per_row):
            return None
        norm = self._sole_reader(node.output[0])
        if norm is None or norm.op_type != "InstanceNormalization" or len(norm.input) < 3:
            return None
        if any(scale_or_shift is None or scale_or_shift.shape != (groups,) for scale_or_shift in map(self.const, norm.input[1:3])):
            return None
        close = self._sole_reader(norm.output[0])
        if close is None or close.op_type != "Reshape":
            return None
        source = next((n for n in self.graph.node if close.input[1] in n.output), None)
        if source is not None and source.op_type == "Shape" and source.input[0] == node.input[0] and not source.attribute:
            return norm, close, entries, None
        close_entries = self._target_entries(close)
        if close_entries is None or len(close_entries) != len(in_shape) or not _resizable(close_entries[1]):
            return None
        if close_entries[1][0] not in (in_shape[1], -1) or any(
            value not in (0, in_shape[axis]) for axis, (value, _) in enumerate(close_entries) if axis != 1
        ):
            return None
        return norm, close, entries, close_entries

    def restores_group_norm_input(self, shape_node: onnx.NodeProto) -> bool:
        """Whether ``shape_node`` only gives a GroupNorm's closing Reshape its input's shape, which follows the kept channels."""
        close = self._sole_reader(shape_node.output[0])
        if close is None or close.op_type != "Reshape" or close.input[1] != shape_node.output[0] or shape_node.attribute:
            return False
        norm = next((n for n in self.graph.node if close.input[0] in n.output), None)
        opening = None if norm is None else next((n for n in self.graph.node if norm.input[0] in n.output), None)
        if opening is None or opening.op_type != "Reshape" or opening.input[0] != shape_node.input[0]:
            return False
        found = self._group_norm_parts(opening)
        return found is not None and found[1] is close

    def _sole_reader(self, name: str) -> onnx.NodeProto | None:
        readers = [n for n in self.graph.node if name in n.input]
        is_output = any(o.name == name for o in self.graph.output)
        return readers[0] if len(readers) == 1 and not is_output else None

    def flatten(self, node: onnx.NodeProto, layout: Layout) -> Layout | None:
        shape = self.shapes.get(node.input[0])
        axis = int(node_attr(node, "axis", 1)) if node.op_type == "Flatten" else 1
        if node.op_type == "Reshape":
            shuffled = self.group_norm_reshapes(node, layout) or self.channel_shuffle(node, layout)
            if shuffled is not None:
                out, name = shuffled
                self.t.layouts[name] = out
                return None
            if self.packed_parts(node, layout):
                return None
            heads = self.split_heads(node, layout) or self.merge_outer(node, layout) or self.regroup(node, layout)
            if heads is not None:
                return heads
            target = self.const(node.input[1])
            out_rank = self.rank(node.output[0])
            if target is None or shape is None:
                self.t.atoms.block_layout(layout, f"Reshape {node.name}: target shape not constant")
                return None
            if len(target) == len(shape) and all(
                int(target[i]) in (0, shape[i]) or i == layout.axis for i in range(len(shape))
            ):
                self.t.edits.append(ReshapeChannels(node.name, layout.axis, layout))
                return Layout(layout.axis, layout.atoms, layout.repeat)
            if not (len(target) == 2 and out_rank == 2 and layout.axis == 1):
                self.t.atoms.block_layout(layout, f"Reshape {node.name} rearranges the channel axis")
                return None
        if shape is None or axis != layout.axis or not all(isinstance(d, int) for d in shape[axis + 1 :]):
            self.t.atoms.block_layout(layout, f"{node.op_type} {node.name}: flattened sizes unknown")
            return None
        inner = int(np.prod(shape[axis + 1 :], dtype=np.int64)) if len(shape) > axis + 1 else 1
        out = Layout(1, layout.atoms, layout.repeat * inner)
        if node.op_type == "Reshape":
            self.t.edits.append(ReshapeChannels(node.name, 1, out))  # the feature count: kept channels x spatial size
        return out

    def _target_entries(self, node: onnx.NodeProto) -> list[tuple[int | None, tuple[str, int, int] | None]] | None:
        """A Reshape target as (value or None, where a constant entry is stored), or None when unreadable."""
        target = node.input[1]
        array = self.const(target)
        if array is not None:
            return [(int(v), (node.name, 1, i)) for i, v in enumerate(array.reshape(-1))]
        producer = next((n for n in self.graph.node if target in n.output), None)
        if producer is not None and producer.op_type == "Cast" and int(node_attr(producer, "to", 0)) == onnx.TensorProto.INT64:
            # tf2onnx builds targets in int32 (TensorFlow's shape type) and casts them: the entries are the Concat's
            producer = next((n for n in self.graph.node if producer.input[0] in n.output), None)
        if producer is None or producer.op_type != "Concat":
            return None
        entries = []
        for index, piece in enumerate(producer.input):
            value = self.const(piece)
            if value is not None:
                entries.extend((int(v), (producer.name, index, i)) for i, v in enumerate(value.reshape(-1)))
                continue
            shape = self.shapes.get(piece)
            if shape is None or len(shape) != 1 or not isinstance(shape[0], int):
                return None
            entries.extend((None, None) for _ in range(shape[0]))
        return entries

    def _unit_free(self, node: onnx.NodeProto) -> tuple[list[tuple[int, int]], list[tuple[int, int]]] | None:
        """(axis, size) of the dims other than 1 of a Reshape's input and output, when both shapes are static."""
        in_shape, out_shape = self.shapes.get(node.input[0]), self.shapes.get(node.output[0])
        if in_shape is None or out_shape is None or not all(isinstance(d, int) for d in (*in_shape, *out_shape)):
            return None
        return [(i, d) for i, d in enumerate(in_shape) if d != 1], [(i, d) for i, d in enumerate(out_shape) if d != 1]

    def _split_axes(self, node: onnx.NodeProto, layout: Layout, pieces: int = 2) -> list[tuple[int, int]] | None:
        """For a Reshape splitting the channel axis into ``pieces`` adjacent dims (dims of 1 aside): their (axis, size)."""
        dims = self._unit_free(node)
        if dims is None or layout.repeat != 1:
            return None
        ins, outs = dims
        k = next((i for i, (axis, _) in enumerate(ins) if axis == layout.axis), None)
        if k is None or len(outs) != len(ins) + pieces - 1 or k + pieces > len(outs):
            return None
        split = outs[k : k + pieces]
        if any(b[0] != a[0] + 1 for a, b in zip(split, split[1:])) or int(np.prod([d for _, d in split])) != len(layout) or split[0][1] < 2:
            return None
        if [d for _, d in outs[:k]] != [d for _, d in ins[:k]] or [d for _, d in outs[k + pieces :]] != [d for _, d in ins[k + 1 :]]:
            return None
        return split

    def split_heads(self, node: onnx.NodeProto, layout: Layout) -> Layout | None:
        """Reshape (..., H*D, ...) -> (..., H, D, ...): a head is D channels that go together.

        Dims of 1 may come and go on the way ((S, 1, H*D) -> (S, H, D) merges a
        batch of one into the heads, as nn.MultiheadAttention exports write it). A head may also split into two dims,
        (..., H, 3, D) where query, key and value are packed per head (BLOOM): a head is then 3*D channels.
        """
        split = self._split_axes(node, layout) or self._split_axes(node, layout, pieces=3)
        entries = self._target_entries(node)
        if split is None or entries is None:
            return None
        (axis, heads), *within = split
        size = int(np.prod([d for _, d in within]))
        value, where = entries[axis]
        # the head count stored, or -1 beside a stored head size (torch.export writes (N, S, -1, D)): either follows the heads kept
        inferred = value == -1 and all(entries[a][0] == d for a, d in within)
        if value is None or where is None or (value != heads and not inferred):
            return None
        for head in range(heads):
            first = layout.atoms[head * size]
            for offset in range(1, size):
                self.t.atoms.tie(first, layout.atoms[head * size + offset])
        atoms = tuple(layout.atoms[head * size] for head in range(heads))
        self.t.head_atoms.update(a for a in atoms if a is not None)
        out = Layout(axis, atoms)
        self._resize(entries[axis], out, 1)
        return out

    def merge_outer(self, node: onnx.NodeProto, layout: Layout) -> Layout | None:
        """Reshape (..., P, C, ...) -> (..., P*C, ...) with the channels inner: the channels P times in a row (a bidirectional
        recurrent layer's two directions joined into one feature axis).

        Only the two joined dims need fixed sizes: the others are copied (0) or stated as they are, so a
        sequence of any length passes.
        """
        in_shape, entries = self.shapes.get(node.input[0]), self._target_entries(node)
        axis = layout.axis
        if layout.repeat != 1 or axis < 1 or in_shape is None or entries is None or len(entries) != len(in_shape) - 1:
            return None
        parts = in_shape[axis - 1]
        if not isinstance(parts, int) or parts < 2 or in_shape[axis] != len(layout):
            return None
        merged_value = entries[axis - 1][0]
        if merged_value is None or merged_value not in (-1, parts * len(layout)) or not _resizable(entries[axis - 1]):
            return None
        for out_axis, (value, _) in enumerate(entries):
            if out_axis == axis - 1:
                continue
            source = out_axis if out_axis < axis - 1 else out_axis + 1  # the input dim this output dim holds
            if value == 0 and source == out_axis:
                continue  # 0 copies the input dim at the same index: right whatever its size
            copied = in_shape[out_axis] if value == 0 else value
            if value is None or value == -1 or copied is None or copied != in_shape[source]:
                return None
        out = Layout(axis - 1, layout.atoms * parts)
        self._resize(entries[axis - 1], out, 1)
        return out

    def regroup(self, node: onnx.NodeProto, layout: Layout) -> Layout | None:
        """A Reshape that keeps each channel's elements together and in place: what lies before the channel axis is the
        same, and one output axis holds the channels, each over the same number of consecutive positions. That is the
        other dims regrouped ((N, C, H, W) -> (N, C, H*W), dims of 1 added or dropped), heads merged back into channels
        ((..., H, D) -> (..., H*D): D positions each), and MobileViT's unfolding ((1, C, H, W) -> (C * h, H / h, w, W / w)
        puts channel c at positions c*h .. c*h + h - 1 of the first axis; (C * h, ...) -> (1, C, N, P) folds them back)."""
        in_shape, out_shape = self.shapes.get(node.input[0]), self.shapes.get(node.output[0])
        entries = self._target_entries(node)
        if in_shape is None or out_shape is None or entries is None or not all(isinstance(d, int) for d in (*in_shape, *out_shape)):
            return None
        channels, axis = len(layout), layout.axis
        if in_shape[axis] != channels * layout.repeat:
            return None
        before = int(np.prod(in_shape[:axis], dtype=np.int64))
        each = layout.repeat * int(np.prod(in_shape[axis + 1 :], dtype=np.int64))  # elements of one channel in a row
        for k, size in enumerate(out_shape):
            if int(np.prod(out_shape[:k], dtype=np.int64)) != before or (size == 1 and channels * layout.repeat > 1):
                continue  # (a dim of 1 ahead of the channels' own)
            if size % channels or (size // channels) * int(np.prod(out_shape[k + 1 :], dtype=np.int64)) != each:
                continue
            out = Layout(k, layout.atoms, size // channels)
            if len(entries) != len(out_shape) or not _resizable(entries[k]):
                return None
            self._resize(entries[k], out, out.repeat)
            return out
        return None

    def _follow_to_gathers(self, node: onnx.NodeProto, parts_axis: int, channel_axis: int):
        """Follow Unsqueeze / Squeeze / Transpose after ``node`` to the Gathers that take the parts apart.

        Returns (the ops passed, the Gathers, the parts and channel axes there, the rank there), or None.
        """
        chain, current, rank = [], node, self.rank(node.output[0])
        while True:
            readers = [n for n in self.graph.node if current.output[0] in n.input]
            if any(o.name == current.output[0] for o in self.graph.output) or not readers:
                return None
            takes_parts = all(r.op_type in ("Gather", "Slice") and r.input[0] == current.output[0] for r in readers)
            if takes_parts or (len(readers) == 1 and readers[0].op_type == "Split"):
                return chain, readers, parts_axis, channel_axis, rank
            if len(readers) != 1 or rank is None:
                return None
            step = readers[0]
            axes = self.listed_axes(step)
            if step.op_type == "Unsqueeze" and axes is not None:
                rank += len(axes)
                for added in sorted(a % rank for a in axes):
                    parts_axis += added <= parts_axis
                    channel_axis += added <= channel_axis
            elif step.op_type == "Squeeze" and axes is not None:
                gone = {a % rank for a in axes}
                if parts_axis in gone or channel_axis in gone:
                    return None
                parts_axis -= sum(a < parts_axis for a in gone)
                channel_axis -= sum(a < channel_axis for a in gone)
                rank -= len(gone)
            elif step.op_type == "Transpose" and node_attr(step, "perm") is not None:
                perm = list(node_attr(step, "perm"))
                parts_axis, channel_axis = perm.index(parts_axis), perm.index(channel_axis)
            else:
                return None
            chain.append(step)
            current = step

    def _parts_taken(self, readers: list[onnx.NodeProto], parts_axis: int, parts: int, rank: int | None):
        """(node whose output is one part, which part) for each part: Gathers of one index, or a Split into
        single parts each followed by a Squeeze of that axis (torch's ``unbind`` as timm's attention exports it)."""
        if rank is None:
            return None
        if len(readers) == 1 and readers[0].op_type == "Split":
            return self._split_parts(readers[0], parts_axis, parts, rank)
        if all(r.op_type == "Slice" for r in readers):
            return self._sliced_parts(readers, parts_axis, parts, rank)
        taken = []
        for gather in readers:
            index = self.const(gather.input[1]) if len(gather.input) > 1 else None
            if int(node_attr(gather, "axis", 0)) % rank != parts_axis or index is None or index.size != 1 or index.ndim != 0:
                return None
            taken.append((gather, int(index) % parts))
        return taken

    def _sliced_parts(self, slices: list[onnx.NodeProto], parts_axis: int, parts: int, rank: int):
        """Slices [i, i+1) along the parts axis, each followed by a Squeeze of it (torch.export's ``unbind``)."""
        taken = []
        for node in slices:
            starts, ends, axes, steps = (self.const(node.input[i]) if len(node.input) > i and node.input[i] else None for i in range(1, 5))
            if starts is None or ends is None or starts.size != 1 or ends.size != 1:
                return None
            axis = int(axes.reshape(-1)[0]) % rank if axes is not None else 0
            if axis != parts_axis or (steps is not None and int(steps.reshape(-1)[0]) != 1):
                return None
            part = int(starts.reshape(-1)[0]) % parts
            if int(ends.reshape(-1)[0]) != part + 1:
                return None
            squeeze = self._squeeze_of(node.output[0], parts_axis, rank)
            if squeeze is None:
                return None
            taken.append((squeeze, part))
        return taken if sorted(part for _, part in taken) == list(range(parts)) else None

    def _squeeze_of(self, tensor: str, axis: int, rank: int) -> onnx.NodeProto | None:
        """The one reader of ``tensor`` when it is a Squeeze of exactly ``axis``."""
        readers = [n for n in self.graph.node if tensor in n.input]
        if len(readers) != 1 or readers[0].op_type != "Squeeze":
            return None
        squeeze = readers[0]
        axes = self.const(squeeze.input[1]) if len(squeeze.input) > 1 and squeeze.input[1] else node_attr(squeeze, "axes")
        if axes is None or [int(a) % rank for a in np.asarray(axes).reshape(-1)] != [axis]:
            return None
        return squeeze

    def _split_parts(self, split: onnx.NodeProto, parts_axis: int, parts: int, rank: int):
        sizes = self.const(split.input[1]) if len(split.input) > 1 and split.input[1] else node_attr(split, "split")
        if int(node_attr(split, "axis", 0)) % rank != parts_axis or len(split.output) != parts:
            return None
        if sizes is not None and [int(s) for s in np.asarray(sizes).reshape(-1)] != [1] * parts:
            return None
        taken = []
        for part, output in enumerate(split.output):
            squeeze = self._squeeze_of(output, parts_axis, rank)
            if squeeze is None:
                return None
            taken.append((squeeze, part))
        return taken

    def _tie_parts(self, layout: Layout, parts: int, count: int, head_size: int) -> None:
        """Position j of every part goes together, and so do a head's channels."""
        size = count * head_size
        for j in range(size):
            for part in range(1, parts):
                self.t.atoms.tie(layout.atoms[j], layout.atoms[part * size + j])
        for head in range(parts * count):
            for offset in range(1, head_size):
                self.t.atoms.tie(layout.atoms[head * head_size], layout.atoms[head * head_size + offset])

    def packed_parts(self, node: onnx.NodeProto, layout: Layout) -> bool:
        """A packed projection (Q, K and V in one MatMul) split into its parts.

        Reshape (..., P*C) -> (..., P, C), or straight into heads (..., P, H, D)
        as Swin writes it, then Unsqueeze / Transpose / Squeeze moving the axes,
        then one Gather per part: each Gather's output carries that part's C
        channels (or H heads). Position j of every part is tied, so the C (or H)
        of the Reshape target stays one number.
        """
        entries = self._target_entries(node)
        split = self._split_axes(node, layout, 2) or self._split_axes(node, layout, 3)
        if split is None or entries is None:
            return False
        (parts_axis, parts), (channel_axis, count) = split[0], split[1]
        head_size = split[2][1] if len(split) == 3 else 1
        size = count * head_size
        entry = entries[channel_axis]  # channel_axis moves with the ops below; the entry is the Reshape's
        if entries[parts_axis][0] != parts or not _resizable(entry):
            return False
        if head_size > 1 and (entry[0] != count or entry[1] is None):
            return False
        followed = self._follow_to_gathers(node, parts_axis, channel_axis)
        if followed is None:
            return False
        chain, readers, parts_axis, channel_axis, rank = followed
        gathers = self._parts_taken(readers, parts_axis, parts, rank)
        if gathers is None:
            return False
        if readers[0].op_type in ("Split", "Slice"):
            chain = chain + readers
        self._tie_parts(layout, parts, count, head_size)
        axis = channel_axis - (channel_axis > parts_axis)
        for gather, part in gathers:
            atoms = layout.atoms[part * size : (part + 1) * size : head_size]
            if head_size > 1:
                self.t.head_atoms.update(a for a in atoms if a is not None)
            self.t.layouts[gather.output[0]] = Layout(axis, atoms)
        self._resize(entry, Layout(axis, layout.atoms[:size:head_size]), 1)
        self.handled.update(n.name for n in chain + [g for g, _ in gathers])
        return True
