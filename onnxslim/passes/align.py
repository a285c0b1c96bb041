"""Pad the channels of depthwise convolutions to a multiple onnxruntime's integer kernels need.

onnxruntime's CPU provider runs an INT8 depthwise QLinearConv with its fast
symmetric kernel only when the channel count is a multiple of 16 (x86); other
counts take a generic path about twice as slow (MobileNetV3's 72, 120, 184 and
200 channels). :func:`align_depthwise_channels` adds zero channels so the count
becomes a multiple: the layers that produce the channels get zero filters, the
depthwise layers zero filters, the layers that read them zero weight columns,
per-channel constants in between neutral values. The model computes the same
function: every added channel is a finite value (an activation of zero) that
only zero weights read.

A Pad that adds zero channels (TFLite's residual blocks that widen: BlazeFace, MediaPipe's landmark nets) bounds a set
like a layer: where it writes the set, it adds the set's zero channels too; where it reads one, it adds fewer (or crops
some of the set's added channels), so its output keeps its width. Cropping or passing on the set's added channels is
exact only while they are zero, so a set with a Sigmoid-like op (non-zero at zero) read by such a Pad is left as it is.

Contract: changes ``model`` in place; its inputs and outputs keep their names,
types and shapes. A set of channels is padded only when every node that
touches it is understood: the producing and reading layers are Conv with
group 1 and constant weights or Pads of zero channels, and everything in between is elementwise per
channel, a depthwise Conv, BatchNormalization or pooling. Anything else
(a reshape, a concat, a reduction over channels, a graph output, a shared
weight) leaves that set as it is, with a reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxslim.ir.graph import node_attr, rename_reads_everywhere
from onnxslim.ir.shapes import infer_shapes
from onnxslim.ir.tensors import all_value_names, consumers_map, unique_name
from onnxslim.passes.base import DeclineCode, PassResult
from onnxslim.passes.matching import GraphIndex
from onnxslim.passes.opset import default_opset
from onnxslim.passes.pads import zero_padding

DEPTHWISE_MULTIPLE = 16

# elementwise ops of one activation input that map a zero channel to finite values
PER_CHANNEL_UNARY = {"Relu", "Clip", "LeakyRelu", "PRelu", "Elu", "Selu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus", "Mish", "Gelu", "Identity",
                     "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"}
# ... of which these map a zero to something else, so the added channels after them are not zero
NONZERO_AT_ZERO = {"Sigmoid", "HardSigmoid", "Softplus"}
# the value a per-channel constant gets in an added channel
NEUTRAL = {"Add": 0.0, "Sub": 0.0, "Mul": 1.0}
PAD_OPSET = 11  # Pad reads its amounts from an input from here on


@dataclass
class _ChannelSet:
    """Every place one set of channels passes through, found by walking the graph from a depthwise Conv."""

    channels: int
    tensors: set[str] = field(default_factory=set)
    # nodes by position in the graph
    producers: set[int] = field(default_factory=set)  # Conv (group 1): output channels
    readers: set[int] = field(default_factory=set)  # Conv (group 1): input channels
    depthwise: set[int] = field(default_factory=set)
    constants: dict[tuple[int, int], float] = field(default_factory=dict)  # (node, input index) -> value of an added channel
    pad_writers: set[int] = field(default_factory=set)  # Pad adding zero channels: writes these channels
    pad_readers: set[int] = field(default_factory=set)  # Pad adding zero channels to these channels
    nonzero: str | None = None  # a node after which the added channels are not zero
    problem: str | None = None


def label(node: onnx.NodeProto) -> str:
    return node.name or f"{node.op_type} writing '{node.output[0]}'"


class _Walker(GraphIndex):
    def __init__(self, model: onnx.ModelProto):
        super().__init__(model.graph)
        self.pads_as_input = default_opset(model) >= PAD_OPSET
        self.nodes = list(model.graph.node)  # sets name nodes by position: passes also see unnamed nodes
        self.position = {id(n): i for i, n in enumerate(self.nodes)}
        self.graph_inputs = {v.name for v in model.graph.input}
        self.shapes = infer_shapes(model)  # they confirm broadcasting; where unknown, binary ops decline

    def key(self, node: onnx.NodeProto) -> int:
        return self.position[id(node)]

    def weight(self, node: onnx.NodeProto) -> np.ndarray | None:
        return self.array(node.input[1]) if len(node.input) > 1 else None

    def is_depthwise(self, node: onnx.NodeProto) -> bool:
        weight = self.weight(node) if node.op_type == "Conv" else None
        group = int(node_attr(node, "group", 1))
        return weight is not None and group > 1 and weight.shape[0] == group and weight.shape[1] == 1

    def is_dense_conv(self, node: onnx.NodeProto) -> bool:
        return node.op_type == "Conv" and int(node_attr(node, "group", 1)) == 1 and self.weight(node) is not None

    def channel_pads(self, node: onnx.NodeProto) -> list[int] | None:
        """The amounts of a Pad of zeros (see :func:`zero_padding`), a constant input of it, on an input of rank 3 or more; else None."""
        if node.op_type != "Pad" or node.domain not in ("", "ai.onnx") or not self.pads_as_input or len(node.input) < 2 or node.input[1] not in self.constants:
            return None
        pads = zero_padding(node, self.inits)
        return pads if pads is not None and len(pads) >= 6 else None

    def adds_channels(self, node: onnx.NodeProto) -> bool:
        """A Pad of zeros that adds or removes channels (axis 1): a boundary of the sets on both sides."""
        pads = self.channel_pads(node)
        return pads is not None and bool(pads[1] or pads[len(pads) // 2 + 1])

    def walk(self, start: onnx.NodeProto) -> _ChannelSet:
        channels = int(self.weight(start).shape[0])
        found = _ChannelSet(channels, depthwise={self.key(start)})
        pending = [start.input[0], start.output[0]]
        while pending and found.problem is None:
            tensor = pending.pop()
            if tensor in found.tensors:
                continue
            found.tensors.add(tensor)
            found.problem = self._backward(tensor, found, pending) or self._forward(tensor, found, pending)
        if found.problem is None and found.pad_readers and found.nonzero:
            reader = label(self.nodes[min(found.pad_readers)])
            found.problem = f"{reader} passes these channels on, and the added ones are not zero after {found.nonzero}"
        return found

    def _backward(self, tensor: str, found: _ChannelSet, pending: list[str]) -> str | None:
        if tensor in self.graph_inputs or tensor in self.constants:
            return f"channels come from graph input or constant '{tensor}'"
        node = self.producers.get(tensor)
        if node is None:
            return f"no producer for '{tensor}'"
        if self.is_dense_conv(node):
            if self.weight(node).shape[0] != found.channels:
                return f"{label(node)} writes {self.weight(node).shape[0]} channels, not {found.channels}"
            found.producers.add(self.key(node))
            return None
        if self.adds_channels(node):
            if self._channel_dim(tensor) != found.channels:
                return f"{label(node)} (Pad): cannot confirm it writes {found.channels} channels"
            found.pad_writers.add(self.key(node))
            return None
        return self._through(node, tensor, found, pending)

    def _forward(self, tensor: str, found: _ChannelSet, pending: list[str]) -> str | None:
        if tensor in self.outputs:
            return f"'{tensor}' is a graph output"
        for node in self.consumers.get(tensor, []):
            if self.is_dense_conv(node) and node.input[0] == tensor and tensor not in node.input[1:]:
                if self.weight(node).shape[1] != found.channels:
                    return f"{label(node)} reads {self.weight(node).shape[1]} channels, not {found.channels}"
                found.readers.add(self.key(node))
                continue
            if self.adds_channels(node) and node.input[0] == tensor and tensor not in node.input[1:]:
                found.pad_readers.add(self.key(node))
                continue
            problem = self._through(node, tensor, found, pending)
            if problem:
                return problem
        return None

    def _through(self, node: onnx.NodeProto, tensor: str, found: _ChannelSet, pending: list[str]) -> str | None:
        """A node the channels pass through: its channel-carrying inputs and output join the set."""
        if node.domain not in ("", "ai.onnx") or len(node.output) != 1:
            return f"{label(node)} ({node.op_type}) is not a per-channel op"
        op = node.op_type
        if op == "Conv":
            if not self.is_depthwise(node) or int(node_attr(node, "group", 1)) != found.channels or node.input[0] != tensor and node.output[0] != tensor:
                return f"{label(node)}: a Conv that is neither depthwise over these channels nor a plain reader"
            found.depthwise.add(self.key(node))
            pending.extend([node.input[0], node.output[0]])
            return None
        if op in PER_CHANNEL_UNARY or self.channel_pads(node) is not None:  # (a Pad that adds no channel pads each one)
            if any(name and name not in self.constants for name in node.input[1:]) or op == "PRelu" and not self._per_channel_ok(node, 1, found, 0.0):
                return f"{label(node)} ({op}) has run-time parameters"
            if op in NONZERO_AT_ZERO or op == "Clip" and not self._clips_zero_to_zero(node):
                found.nonzero = found.nonzero or label(node)
            pending.extend([node.input[0], node.output[0]])
            return None
        if op == "BatchNormalization":
            for index in (1, 2, 3, 4):
                found.constants[(self.key(node), index)] = 1.0 if index in (1, 4) else 0.0
            if any(self.array(node.input[i]) is None for i in (1, 2, 3, 4)):
                return f"{label(node)}: BatchNormalization with run-time parameters"
            pending.extend([node.input[0], node.output[0]])
            return None
        if op in NEUTRAL and len(node.input) == 2:
            for index, name in enumerate(node.input):
                if name in self.constants:
                    if not self._per_channel_ok(node, index, found, NEUTRAL[op]):
                        return f"{label(node)} ({op}): constant '{name}' does not broadcast per channel"
                elif self._channel_dim(name) != found.channels or self._channel_dim(node.output[0]) != found.channels:
                    return f"{label(node)} ({op}): cannot confirm '{name}' carries the {found.channels} channels"
                else:
                    pending.append(name)
            pending.append(node.output[0])
            return None
        return f"{label(node)} ({op}) is not a per-channel op"

    def _clips_zero_to_zero(self, node: onnx.NodeProto) -> bool:
        low = self.scalar(node.input[1]) if len(node.input) > 1 and node.input[1] else float(node_attr(node, "min", -np.inf))
        high = self.scalar(node.input[2]) if len(node.input) > 2 and node.input[2] else float(node_attr(node, "max", np.inf))
        return low is not None and high is not None and low <= 0.0 <= high

    def _channel_dim(self, tensor: str) -> int | None:
        shape = self.shapes.get(tensor)
        return shape[1] if shape is not None and len(shape) >= 3 else None

    def _per_channel_ok(self, node: onnx.NodeProto, index: int, found: _ChannelSet, neutral: float) -> bool:
        """A constant operand that is a scalar (nothing to pad) or one value per channel on axis -3 of a 4-D result."""
        array = self.array(node.input[index])
        if array is None:
            return False
        if array.size == 1:
            return True
        shape = array.shape
        if len(shape) < 3 or shape[-3] != found.channels or any(d != 1 for d in shape[-2:]) or any(d != 1 for d in shape[:-3]):
            return False
        found.constants[(self.key(node), index)] = neutral
        return True


def _padded(array: np.ndarray, axis: int, extra: int, value: float = 0.0) -> np.ndarray:
    widths = [(0, 0)] * array.ndim
    widths[axis] = (0, extra)
    return np.pad(array, widths, constant_values=np.asarray(value, array.dtype))


def has_unaligned_depthwise(model: onnx.ModelProto, multiple: int = DEPTHWISE_MULTIPLE) -> bool:
    """Whether the main graph has a grouped Conv whose group count is not a multiple of ``multiple`` (a cheap first look)."""
    return any(n.op_type == "Conv" and int(node_attr(n, "group", 1)) > 1 and int(node_attr(n, "group", 1)) % multiple for n in model.graph.node)


def align_depthwise_channels(model: onnx.ModelProto, multiple: int = DEPTHWISE_MULTIPLE) -> PassResult:
    """Pad every depthwise Conv whose channel count is not a multiple of ``multiple`` (see the module docstring)."""
    result = PassResult("align-depthwise-channels")
    graph = model.graph
    walker = _Walker(model)
    done: set[int] = set()
    sets: list[_ChannelSet] = []
    for node in graph.node:
        if walker.key(node) in done or not walker.is_depthwise(node) or walker.weight(node).shape[0] % multiple == 0:
            continue
        found = walker.walk(node)
        done |= found.depthwise
        if found.problem is None and not found.producers and not found.pad_writers:
            found.problem = "no layer produces these channels"
        if found.problem is None:
            # a shared bias gets a padded copy of its own; a shared weight would be stored twice
            weights = [walker.nodes[position].input[index] for position, index in _padded_inputs(walker, found)]
            shared = [n for n in weights if len(walker.consumers.get(n, [])) > 1 and walker.array(n).ndim > 1]
            if shared:
                found.problem = f"weight '{shared[0]}' is shared with other nodes"
        if found.problem is not None:
            result.decline(label(node), DeclineCode.UNSUPPORTED_FORM, found.problem)
            continue
        sets.append(found)
    if not sets:
        return result
    taken = all_value_names(graph)
    replaced: set[str] = set()
    grown: dict[str, np.ndarray] = {}  # a layer between two sets (reads one, writes the other) grows twice
    pad_amounts: dict[int, np.ndarray] = {}  # likewise a Pad between two sets
    for found in sets:
        extra = -found.channels % multiple
        for (position, index), pads in _padded_inputs(walker, found, grown).items():
            node = walker.nodes[position]
            tensor = node.input[index]
            if tensor in grown:
                padded = grown[tensor]
            else:
                padded = walker.array(tensor)
                replaced.add(tensor)
                tensor = node.input[index] = unique_name(f"{tensor}_aligned", taken)
            for axis, value in pads:
                padded = _padded(padded, axis, extra, value)
            grown[tensor] = padded
        for position in found.depthwise:
            for attr in walker.nodes[position].attribute:
                if attr.name == "group":
                    attr.i = found.channels + extra
        for position, change in [(p, extra) for p in found.pad_writers] + [(p, -extra) for p in found.pad_readers]:
            pad = walker.nodes[position]
            amounts = pad_amounts.setdefault(position, walker.array(pad.input[1]).copy())
            amounts[amounts.size // 2 + 1] += change  # the end of the channel axis
        stale = [v for v in graph.value_info if v.name in found.tensors]
        for value in stale:
            graph.value_info.remove(value)
        names = [label(walker.nodes[k]) for k in sorted(found.depthwise)]
        result.change(f"padded {len(names)} depthwise Conv(s) ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}) from {found.channels} to "
                      f"{found.channels + extra} channels, onnxruntime's fast integer depthwise kernel needs multiples of {multiple}")
    emptied = []
    for position, amounts in pad_amounts.items():  # each Pad its own amounts: Pads of one width may share them
        pad = walker.nodes[position]
        replaced.add(pad.input[1])
        if not amounts.any() and _bypass(graph, pad):
            emptied.append(pad)
            continue
        pad.input[1] = unique_name(f"{pad.input[1]}_aligned", taken)
        grown[pad.input[1]] = amounts
    for pad in emptied:
        graph.node.remove(pad)
        result.change(f"{label(pad)}: a Pad that now adds no channel, left out")
    still_read = replaced & set(consumers_map(graph))  # a shared bias's other readers
    kept = [t for t in graph.initializer if t.name not in replaced or t.name in still_read]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    graph.initializer.extend(onnx.numpy_helper.from_array(array, name) for name, array in grown.items())
    return result


def _bypass(graph: onnx.GraphProto, pad: onnx.NodeProto) -> bool:
    """Make the readers of ``pad``'s output (inside subgraphs too) read its input instead, unless it is a graph output."""
    if any(v.name == pad.output[0] for v in graph.output):
        return False
    rename_reads_everywhere(graph, {pad.output[0]: pad.input[0]})
    return True


def _padded_inputs(walker: _Walker, found: _ChannelSet, grown: dict[str, np.ndarray] | None = None) -> dict[tuple[int, int], list[tuple[int, float]]]:
    """(node position, input index) -> every (axis, value of the added channels) by which that constant grows.

    A Conv both writing and reading the channels (C -> C) grows on both axes of its weight.
    """
    inputs: dict[tuple[int, int], list[tuple[int, float]]] = {}
    for position in found.producers | found.depthwise:
        node = walker.nodes[position]
        inputs.setdefault((position, 1), []).append((0, 0.0))
        if len(node.input) > 2 and node.input[2]:
            inputs.setdefault((position, 2), []).append((0, 0.0))
    for position in found.readers:
        inputs.setdefault((position, 1), []).append((1, 0.0))
    for (position, index), value in found.constants.items():
        tensor = walker.nodes[position].input[index]
        array = grown[tensor] if grown and tensor in grown else walker.array(tensor)
        inputs.setdefault((position, index), []).append((0 if array.ndim == 1 else array.ndim - 3, value))
    return inputs
