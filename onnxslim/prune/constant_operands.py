"""Per-channel operands computed from stored constants at run time, cut along with the channels they meet.

A relative position bias (BEiT, Swin V2, LeViT) is a small table gathered into
a larger one when the model runs: folding it would grow the model, so it stays
a chain of nodes over constants. Where such a chain meets pruned channels (the
attention heads it is added to), each channel is followed back through the
chain to the stored constants it comes from, and those lose the removed
channels instead. Every step must keep the channels apart (elementwise ops,
gathers by any indices, slices, joins, expansions, resizes, transposes and
reshapes of other axes), and no tensor of the chain may be read outside it. A
stored constant that something else reads too is reported, for the caller to
keep it one tensor or leave the channels whole.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from onnxslim.ir.graph import node_attr
from onnxslim.prune.atoms import Layout
from onnxslim.prune.edits import EditRole, ShapeEntry, SliceInput

ELEMENTWISE_ONE_INPUT = {"Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "Tanh", "Erf", "Gelu", "Elu", "Softplus", "Identity", "Dropout",
                         "Cast", "Abs", "Neg", "Sqrt", "Exp", "Log", "Reciprocal", "Sign", "Floor", "Ceil", "Round"}
ELEMENTWISE_BROADCAST = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Where"}


class NotFollowed(Exception):
    """A step of the chain that the channels cannot be followed through; the message says which and why."""


@dataclass
class GraphView:
    """What the walk reads of the graph: who writes and who reads each tensor, its shape, and the constants' values."""

    producers: dict[str, onnx.NodeProto]
    readers: dict[str, list[onnx.NodeProto]]
    outputs: set[str]
    shapes: dict[str, tuple]
    is_constant: Callable[[str], bool]
    const: Callable[[str], np.ndarray | None]
    tracked: Callable[[str], bool]  # the tensor already carries prunable channels of its own


@dataclass
class ConstantCut:
    """What cutting a constant expression takes: the edits, the nodes of the expression, and each stored constant it
    cuts (name -> axis) that something outside the expression reads as well."""

    edits: list
    nodes: set[str]
    shared: dict[str, int]
    readers: set[str]  # the nodes outside the expression that read the operand itself (the ones meeting the channels)


def constant_operand_edits(view: GraphView, tensor: str, axis: int, layout: Layout) -> ConstantCut:
    """The edits that remove ``layout``'s channels from ``tensor`` (channels on ``axis``), a tensor computed from
    constants alone, by cutting the constants it is computed from. A stored constant read outside the expression as
    well is listed in the result: the caller keeps it one tensor (every reader cut alike) or blocks the channels.
    So are the readers of ``tensor`` itself (several layers may add one mask or bias): each must meet the same
    channels. Raises :class:`NotFollowed`."""
    size = len(layout) * layout.repeat
    edits: list = []
    chain: set[str] = set()  # names of the chain's nodes
    internal: list[str] = []  # tensors the chain computes and reads
    stored: dict[str, int] = {}  # the constants it cuts, and along which axis
    pending = [(tensor, axis)]
    seen: dict[str, int] = {}
    while pending:
        name, channel_axis = pending.pop()
        if name in seen:
            if seen[name] != channel_axis:
                raise NotFollowed(f"'{name}' is read with its channels on two axes")
            continue
        seen[name] = channel_axis
        node = view.producers.get(name)
        if node is None:
            raise NotFollowed(f"'{name}' is not computed from stored constants")
        if view.tracked(name):
            raise NotFollowed(f"'{name}' carries channels of its own")
        shape = view.shapes.get(name)
        if shape is not None and node.op_type == "Expand" and channel_axis < len(shape) and shape[channel_axis] is None:
            shape = _expanded_shape(view, node) or shape  # a target computed at run time, its channel entry stored
        if shape is None or channel_axis >= len(shape) or shape[channel_axis] != size:
            raise NotFollowed(f"shape of '{name}' unknown or not {size} channels on axis {channel_axis}")
        chain.add(node.name)
        internal.append(name)
        for index, in_axis in _input_axes(view, node, channel_axis, size, layout, edits):
            source = node.input[index]
            if view.is_constant(source):
                edits.append(SliceInput(node.name, index, in_axis, layout, EditRole.PARAMETER))
                if stored.setdefault(source, in_axis) != in_axis:
                    raise NotFollowed(f"'{source}' is cut along two axes")
            else:
                pending.append((source, in_axis))
    for name in internal:
        outside = [r.name for r in view.readers.get(name, []) if r.name not in chain]
        if name in view.outputs or (outside and name != tensor):
            raise NotFollowed(f"'{name}' is also read outside the constant expression")
    shared = {name: a for name, a in stored.items() if any(r.name not in chain for r in view.readers.get(name, []))}
    return ConstantCut(edits, chain, shared, {r.name for r in view.readers.get(tensor, []) if r.name not in chain})


def _input_axes(view: GraphView, node: onnx.NodeProto, axis: int, size: int, layout: Layout, edits: list) -> list[tuple[int, int]]:
    """(input index, channel axis in that input) for each input of ``node`` that carries the channels its output has on
    ``axis``; edits to ``node``'s own shape inputs are appended to ``edits``. Raises :class:`NotFollowed`."""
    op, where = node.op_type, f"{node.op_type} {node.name}"
    out_rank = len(view.shapes[node.output[0]])
    if op in ELEMENTWISE_ONE_INPUT:
        return [(0, axis)]
    if op in ELEMENTWISE_BROADCAST:
        return [(i, a) for i, a in ((i, _broadcast_axis(view, name, axis, out_rank, size, where)) for i, name in enumerate(node.input) if name) if a is not None]
    if op == "Transpose":
        perm = node_attr(node, "perm")
        return [(0, int(perm[axis]) if perm is not None else out_rank - 1 - axis)]
    if op in ("Unsqueeze", "Squeeze"):
        return [(0, _squeeze_axis(view, node, axis, out_rank, where))]
    if op == "Gather":
        indices = view.shapes.get(node.input[1])
        data_rank = len(view.shapes.get(node.input[0]) or ())
        if indices is None or not data_rank:
            raise NotFollowed(f"{where}: shapes unknown")
        gathered = int(node_attr(node, "axis", 0)) % data_rank
        if gathered <= axis < gathered + len(indices):
            raise NotFollowed(f"{where} picks along the channel axis")
        return [(0, axis if axis < gathered else axis - len(indices) + 1)]
    if op == "Slice":
        data_rank = len(view.shapes.get(node.input[0]) or ())
        axes = view.const(node.input[3]) if len(node.input) > 3 and node.input[3] else np.arange(data_rank)
        if axes is None or any(int(a) % data_rank == axis for a in np.reshape(axes, -1)):
            raise NotFollowed(f"{where} slices the channel axis")
        return [(0, axis)]
    if op == "Concat":
        if int(node_attr(node, "axis", 0)) % out_rank == axis:
            raise NotFollowed(f"{where} joins along the channel axis")
        return [(i, axis) for i, name in enumerate(node.input) if name]
    if op == "Reshape":
        return [(0, _reshape_axis(view, node, axis, size, layout, edits, where))]
    if op == "Expand":
        entries = target_entries(view, node, 1)
        if entries is None:
            raise NotFollowed(f"{where}: target shape not readable")
        entry = axis - (out_rank - len(entries))
        if entry >= 0 and entries[entry][0] == size:
            if entries[entry][1] is None:
                raise NotFollowed(f"{where}: the target's channel count is not stored where it can be edited")
            edits.append(ShapeEntry(*entries[entry][1], layout, layout.repeat))
        in_axis = _broadcast_axis(view, node.input[0], axis, out_rank, size, where)
        return [] if in_axis is None else [(0, in_axis)]
    if op == "Resize":
        return [(0, _resize_axis(view, node, axis, size, layout, edits, where))]
    raise NotFollowed(f"{where} has no rule in a constant expression")


Entry = tuple  # (value or None where unknown, (node, input index, element) where that value is stored, or None)
MAX_TARGET_RANK = 16  # a shape vector longer than this is not one


def target_entries(view: GraphView, reader: onnx.NodeProto, index: int, depth: int = 12) -> list[Entry] | None:
    """The elements of a 1-D shape tensor, input ``index`` of ``reader``: each value where it is known, and where it is
    stored when a constant holds it. Reads what exporters compute shapes with (torch's ``expand(-1, heads, -1, -1)``:
    a Concat of stored counts and sizes taken from Shape, then ``Where(target == -1, 1, target)``); None where the
    number of elements is unknown."""
    name = reader.input[index]
    array = view.const(name)
    if array is not None:
        return [(int(v), (reader.name, index, i)) for i, v in enumerate(np.reshape(array, -1))]
    node = view.producers.get(name)
    if node is None or depth == 0:
        return None
    op = node.op_type

    def inputs(position: int) -> list[Entry] | None:
        return target_entries(view, node, position, depth - 1) if len(node.input) > position and node.input[position] else None

    if op == "Concat":
        parts = [inputs(i) for i in range(len(node.input))]
        return None if any(p is None for p in parts) else [e for p in parts for e in p]
    if op in ("Reshape", "Cast", "Unsqueeze", "Squeeze", "Identity"):  # the same elements, in order
        return inputs(0)
    if op == "Shape":
        shape = view.shapes.get(node.input[0])
        return None if shape is None or node_attr(node, "start") is not None or node_attr(node, "end") is not None else [(d, None) for d in shape]
    if op == "Gather":
        data, picked = inputs(0), view.const(node.input[1])
        if data is None or picked is None:
            return None
        indices = [int(i) for i in np.reshape(picked, -1)]
        return [data[i] for i in indices] if all(-len(data) <= i < len(data) for i in indices) else None
    if op == "Slice":  # of a 1-D vector, stored bounds and step 1
        data = inputs(0)
        bounds = [view.const(node.input[i]) if len(node.input) > i and node.input[i] else None for i in range(1, 5)]
        if data is None or bounds[0] is None or bounds[1] is None or any(b is not None and b.size != 1 for b in bounds):
            return None
        if (bounds[2] is not None and int(bounds[2].reshape(-1)[0]) not in (0, -1)) or (bounds[3] is not None and int(bounds[3].reshape(-1)[0]) != 1):
            return None
        return data[int(bounds[0].reshape(-1)[0]) : int(bounds[1].reshape(-1)[0])]
    if op == "ConstantOfShape":
        count = inputs(0)
        if count is None or len(count) != 1 or count[0][0] is None or not 0 <= count[0][0] <= MAX_TARGET_RANK:
            return None
        value = node_attr(node, "value")
        fill = int(np.reshape(onnx.numpy_helper.to_array(value), -1)[0]) if value is not None else 0
        return [(fill, None)] * count[0][0]
    if op in ("Mul", "Add", "Sub", "Equal"):
        a, b = inputs(0), inputs(1)
        if a is None or b is None or (len(a) != len(b) and 1 not in (len(a), len(b))):
            return None
        apply = {"Mul": lambda x, y: x * y, "Add": lambda x, y: x + y, "Sub": lambda x, y: x - y, "Equal": lambda x, y: int(x == y)}[op]
        a, b = (a * len(b), b) if len(a) == 1 else (a, b * len(a) if len(b) == 1 else b)
        return [(apply(x[0], y[0]) if x[0] is not None and y[0] is not None else None, None) for x, y in zip(a, b)]
    if op == "Where":
        condition, chosen, other = inputs(0), inputs(1), inputs(2)
        if condition is None or chosen is None or other is None or not len(condition) == len(chosen) == len(other):
            return None
        picked = [(c if flag[0] else o) if flag[0] is not None else (None, None) for flag, c, o in zip(condition, chosen, other)]
        # an edited count must not flip the choice: it may stay stored only behind a comparison with -1 or 0, values a
        # count of channels never takes
        test = view.producers.get(node.input[0])
        steady = test is not None and test.op_type == "Equal" and any(
            side is not None and all(v is not None and v <= 0 for v, _ in side)
            for side in (target_entries(view, test, i, depth - 1) for i in (0, 1)))
        return picked if steady else [(value, None) for value, _ in picked]
    return None


def _expanded_shape(view: GraphView, node: onnx.NodeProto) -> tuple | None:
    """An Expand's output shape where its target is computed: each known target entry other than 1 or -1 (which keep
    the input's size), else the input's size."""
    entries = target_entries(view, node, 1)
    source = view.shapes.get(node.input[0])
    if entries is None or source is None or len(source) > len(entries):
        return None
    source = (1,) * (len(entries) - len(source)) + tuple(source)
    return tuple(value if value is not None and value not in (1, -1) else (s if value in (1, -1) else None)
                 for (value, _), s in zip(entries, source))


def _resize_axis(view: GraphView, node: onnx.NodeProto, axis: int, size: int, layout: Layout, edits: list, where: str) -> int:
    """A Resize that leaves the channel axis at its size (BEiT interpolates its bias table over positions); an explicit
    size of that axis follows the kept channels."""
    scales = view.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    sizes = view.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    if node_attr(node, "axes") is not None or (scales is None and sizes is None):
        raise NotFollowed(f"{where}: scales or sizes not constant")
    if sizes is not None and sizes.size:
        if int(sizes.reshape(-1)[axis]) != size:
            raise NotFollowed(f"{where} resizes the channel axis")
        edits.append(ShapeEntry(node.name, 3, axis, layout, layout.repeat))
    elif float(scales.reshape(-1)[axis]) != 1.0:
        raise NotFollowed(f"{where} resizes the channel axis")
    return axis


def _broadcast_axis(view: GraphView, name: str, axis: int, out_rank: int, size: int, where: str) -> int | None:
    """The channel axis of an input broadcast into an output of rank ``out_rank``, or None where it is broadcast along it."""
    shape = view.shapes.get(name)
    if shape is None:
        raise NotFollowed(f"{where}: shape of '{name}' unknown")
    in_axis = axis - (out_rank - len(shape))
    if in_axis < 0 or shape[in_axis] == 1:
        return None
    if shape[in_axis] != size:
        raise NotFollowed(f"{where}: '{name}' has {shape[in_axis]} entries on the channel axis, not {size}")
    return in_axis


def _squeeze_axis(view: GraphView, node: onnx.NodeProto, axis: int, out_rank: int, where: str) -> int:
    axes = node_attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        array = view.const(node.input[1])
        axes = None if array is None else array.reshape(-1).tolist()
    in_rank = len(view.shapes.get(node.input[0]) or ())
    if axes is None or not in_rank:
        raise NotFollowed(f"{where}: axes not constant")
    if node.op_type == "Unsqueeze":
        inserted = {int(a) % out_rank for a in axes}
        if axis in inserted:
            raise NotFollowed(f"{where} inserts the channel axis")
        return axis - sum(1 for a in inserted if a < axis)
    removed = {int(a) % in_rank for a in axes}
    kept = [a for a in range(in_rank) if a not in removed]
    return kept[axis]


def _reshape_axis(view: GraphView, node: onnx.NodeProto, axis: int, size: int, layout: Layout, edits: list, where: str) -> int:
    """The input axis of a Reshape that moves the channel axis whole (the dimensions after it hold as many values on
    both sides); an explicit channel count in the target follows the kept channels."""
    source, target = view.shapes.get(node.input[0]), view.const(node.input[1])
    out = view.shapes.get(node.output[0])
    if source is None or target is None or out is None or not all(isinstance(d, int) for d in (*source, *out)):
        raise NotFollowed(f"{where}: shapes or target not constant")
    after = int(np.prod(out[axis + 1 :], dtype=np.int64))
    matches = [a for a in range(len(source)) if source[a] == size and int(np.prod(source[a + 1 :], dtype=np.int64)) == after]
    if not matches:
        raise NotFollowed(f"{where} rearranges the channel axis")
    entries = target.reshape(-1)
    if int(entries[axis]) == size:
        edits.append(ShapeEntry(node.name, 1, axis, layout, layout.repeat))
    elif int(entries[axis]) == 0 and matches[0] != axis:
        raise NotFollowed(f"{where} copies the channel count from another axis")
    return matches[0]
