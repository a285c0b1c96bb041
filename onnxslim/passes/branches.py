"""Sum the parallel convolutions of one input into one convolution (structural re-parameterization).

Multi-branch blocks trained for accuracy (RepVGG, MobileOne, RepViT, FastViT's token mixers and
position encodings, ACNet-style kernels) are meant to be folded into one convolution per block
before deployment; exported without that step, each block runs every branch and adds them:

    Add(Conv_a(x), Conv_b(x))             ->  Conv(x), W = W_a + W_b, b = b_a + b_b
    Add(Conv(x), x)                        ->  Conv(x), 1 added at each output channel's own input tap
    Add(Conv(x), BatchNormalization(x))    ->  the same with the normalization's factor, its shift in the bias

A branch may go on through Mul and Add by constants of one value per channel (a layer scale, a
bias the exporter moved out of the convolutions), and Sub takes the second branch away (FastViT's
``x + scale * (mixer(x) - norm(x))``). A convolution is linear in its weights, so the merged layer
computes the same sum (within float rounding) in one pass over its output, with no Add: faster in
float, and in INT8 one quantized layer where there were several quantized outputs and an integer Add.
The smaller kernel is placed inside the larger one where its taps fall; a merge is made only where
one kernel holds the other's taps (1x1 inside 3x3, and not 1x3 with 3x1, which would grow into a
3x3 with more multiply-adds than the two). Chains of Adds (``a + b + c + ...``) merge pair by pair.
Two Gemms of one input merge the same way (a distilled classifier's head and distillation head).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from onnxslim.ir.graph import drop_unread_initializers, node_attr, replace_nodes, text_attr
from onnxslim.ir.tensors import all_value_names, from_array, unique_name
from onnxslim.passes.affine import per_channel_values
from onnxslim.passes.base import DeclineCode, NotRewritten, PassResult
from onnxslim.passes.batchnorm import normalization_affine
from onnxslim.passes.matching import GraphIndex

DEFAULT_DOMAINS = ("", "ai.onnx")
CHANNEL_OPS = ("Mul", "Add", "Sub")  # with a constant of one value per channel: what a branch may go on through


def parallel_convs_as_one(model: onnx.ModelProto) -> PassResult:
    """Merge each Add (or Sub) of two convolutions of one tensor, or of a convolution and that tensor (itself or
    batch-normalized), into one convolution (see the module docstring); repeated until no such sum is left."""
    result = PassResult("parallel-convs-as-one")
    declined: dict[str, tuple[DeclineCode, str]] = {}
    while _merge_round(model.graph, result, declined):
        pass
    for where, (code, text) in declined.items():
        result.decline(where, code, text)
    return result


@dataclass
class _Branch:
    """One side of a sum: ``scale * conv(source) + shift`` per output channel, or ``scale * source + shift`` without a conv."""

    source: str
    conv: onnx.NodeProto | None
    nodes: list[onnx.NodeProto] = field(default_factory=list)  # the nodes the merged convolution replaces
    # in order: (Mul / Add / Sub, its constant), or (BatchNormalization, the node)
    channel_ops: list[tuple[str, np.ndarray | onnx.NodeProto]] = field(default_factory=list)


def _merge_round(graph: onnx.GraphProto, result: PassResult, declined: dict) -> bool:
    """One pass over the sums: each whose two sides merge becomes a Conv (a sum reading another merged in this round
    waits for the next); whether any did."""
    index = GraphIndex(graph)
    taken = all_value_names(graph)
    replaced: dict[int, list[onnx.NodeProto]] = {}  # a sum -> [its Conv]; each node merged into it -> []
    weights: set[str] = set()
    for node in graph.node:
        if node.op_type not in ("Add", "Sub") or node.domain not in DEFAULT_DOMAINS or len(node.input) != 2:
            continue
        where = node.name or node.output[0]
        try:
            sides = _sides(node, index)
            if sides is None:
                continue
            used = [n for side in sides for n in side.nodes]
            if any(id(n) in replaced for n in used):
                continue  # rewritten this round: its merged form is matched in the next
            merged, initializers, text = _merged(node, *sides, index, taken)
        except NotRewritten as why:
            declined[where] = (why.code, why.text)
            continue
        declined.pop(where, None)
        graph.initializer.extend(initializers)
        replaced[id(node)] = [merged]
        replaced.update((id(n), []) for n in used)
        weights.update(name for n in used for name in n.input)
        result.change(f"{where}: {text}")
    if not replaced:
        return False
    replace_nodes(graph, replaced)
    drop_unread_initializers(graph, weights - {v.name for v in graph.input})  # an initializer listed as an input stays one
    return True


def _sides(node: onnx.NodeProto, index: GraphIndex) -> tuple[_Branch, _Branch] | None:
    """Both sides of the sum ``node`` as branches of one source, at least one through a Conv; else None (nothing is
    checked here beyond the graph's shape). Raises NotRewritten for two convolutions of one input whose outputs are not
    the sum's alone."""
    first, second = (_branch(name, index) for name in node.input)
    if first.source != second.source or (first.conv is None and second.conv is None):
        producers = [index.producers.get(name) for name in node.input]
        if all(_is_op(p, "Conv") for p in producers) and producers[0] is not producers[1] and producers[0].input[0] == producers[1].input[0]:
            shared = next((p for p in producers if not index.private(p.output[0])), producers[0])
            raise NotRewritten(DeclineCode.SHARED_VALUE, f"the output of {shared.name or shared.output[0]} is also read elsewhere")
        return None
    if first.conv is not None and first.conv is second.conv:
        return None  # conv(x) + conv(x): a doubling, not two branches
    if node.op_type == "Sub":
        second.channel_ops.append(("Mul", np.array(-1.0)))
    return first, second


def _branch(tensor: str, index: GraphIndex) -> _Branch:
    """``tensor`` as a branch: back through per-channel Mul/Add/Sub by constants and BatchNormalizations to a Conv's
    output, or to the tensor a normalization reads, or to ``tensor`` itself."""
    producer = index.producers.get(tensor)
    if producer is None or producer.domain not in DEFAULT_DOMAINS:
        return _Branch(tensor, None)
    if not index.private(tensor):
        if _is_op(producer, "BatchNormalization") and producer.input:
            # a normalization of the source read elsewhere too (an exporter shares equal ones): the merged layer takes its
            # scale and shift as well, and the normalization stays for its other readers
            return _Branch(producer.input[0], None, [], [("BatchNormalization", producer)])
        return _Branch(tensor, None)
    if producer.op_type in CHANNEL_OPS and len(producer.input) == 2:
        constants = [index.array(name) for name in producer.input]
        for position in (0, 1):
            value, constant = producer.input[1 - position], constants[position]
            if constant is None or constants[1 - position] is not None or (producer.op_type == "Sub" and position == 0):
                continue  # Sub(c, t) turns the branch around: not followed
            inner = _branch(value, index)
            inner.nodes.append(producer)
            inner.channel_ops.append((producer.op_type, constant.astype(np.float64)))
            return inner
        return _Branch(tensor, None)
    if (_is_op(producer, "Conv") or _is_op(producer, "Gemm") and not int(node_attr(producer, "transA", 0))) and len(producer.input) >= 2:
        return _Branch(producer.input[0], producer, [producer])
    if _is_op(producer, "BatchNormalization") and producer.input:
        inner = _branch(producer.input[0], index)
        inner.nodes.append(producer)  # one more scale and shift per channel, after a convolution or on the source itself
        inner.channel_ops.append(("BatchNormalization", producer))
        return inner
    return _Branch(tensor, None)


def _is_op(node: onnx.NodeProto | None, op_type: str) -> bool:
    return node is not None and node.op_type == op_type and node.domain in DEFAULT_DOMAINS


def _own_weight(node: onnx.NodeProto, index: GraphIndex, label: str, rank_ok) -> np.ndarray:
    """``node``'s constant floating-point weight of a rank ``rank_ok`` accepts, read by no other node; raises NotRewritten
    otherwise. A shared bias is one value per channel (exporters share equal ones, zeros most often) and is not checked;
    a shared weight would stay for its other readers beside the merged copy, and the model would grow."""
    weight = index.array(node.input[1])
    if weight is None:
        raise NotRewritten(DeclineCode.NOT_CONSTANT, f"the weight of {label} is not a constant")
    if weight.dtype.kind != "f" or not rank_ok(weight.ndim):
        raise NotRewritten(DeclineCode.UNSUPPORTED_TYPE, f"the weight of {label} is {weight.dtype} of rank {weight.ndim}")
    if len(index.consumers.get(node.input[1], [])) > 1:
        raise NotRewritten(DeclineCode.SHARED_VALUE, f"{label} shares its weight with another node (a merged copy would grow the model)")
    return weight


class _Conv:
    """One convolution's weight, bias and geometry, checked to be mergeable on its own."""

    def __init__(self, node: onnx.NodeProto, index: GraphIndex):
        label = node.name or node.output[0]
        weight = _own_weight(node, index, label, lambda rank: rank >= 3)
        has_bias = len(node.input) > 2 and bool(node.input[2])
        bias = index.array(node.input[2]) if has_bias else np.zeros(weight.shape[0], weight.dtype)
        if bias is None or bias.shape != (weight.shape[0],):
            raise NotRewritten(DeclineCode.NOT_CONSTANT, f"the bias of {label} is not a constant of one value per output channel")
        spatial = weight.ndim - 2
        self.node, self.label, self.weight, self.bias = node, label, weight.astype(np.float64), bias.astype(np.float64)
        self.dtype = weight.dtype
        self.kernel = tuple(weight.shape[2:])
        self.group = int(node_attr(node, "group", 1))
        self.strides = tuple(node_attr(node, "strides", [1] * spatial))
        self.dilations = tuple(node_attr(node, "dilations", [1] * spatial))
        auto_pad = text_attr(node, "auto_pad", "NOTSET")
        if auto_pad in ("SAME_UPPER", "SAME_LOWER") and all(s == 1 for s in self.strides):
            # unstrided, SAME pads (kernel - 1) * dilation in all whatever the input's size: the extra one at the end (UPPER)
            totals = [(k - 1) * d for k, d in zip(self.kernel, self.dilations)]
            self.begin = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in totals]
            self.end = [t - b for t, b in zip(totals, self.begin)]
            return
        if auto_pad not in ("NOTSET", "VALID"):
            raise NotRewritten(DeclineCode.UNSUPPORTED_FORM, f"{label} pads with auto_pad={auto_pad} at stride {list(self.strides)} (by the input's size)")
        pads = [0] * (2 * spatial) if auto_pad == "VALID" else list(node_attr(node, "pads", [0] * (2 * spatial)))
        self.begin, self.end = pads[:spatial], pads[spatial:]

    def written(self, inputs: list[str], output: str) -> onnx.NodeProto:
        """This convolution's node with other weights and bias: ``inputs`` (source, weight, bias), writing ``output``."""
        merged = helper.make_node("Conv", inputs, [output], name=self.node.name or None)
        merged.attribute.extend(a for a in self.node.attribute if a.name != "kernel_shape")
        merged.attribute.append(helper.make_attribute("kernel_shape", list(self.kernel)))
        return merged

    def reach(self, axis: int) -> int:
        """How many input positions the output size falls short of the padded input along ``axis`` (equal for two
        convolutions with the same strides: then their outputs have the same size for every input)."""
        return self.begin[axis] + self.end[axis] - (self.kernel[axis] - 1) * self.dilations[axis]


class _Gemm(_Conv):
    """A Gemm's weight as (outputs, inputs) and its bias, alpha and beta applied: a 1x1 convolution of a (batch, features) input."""

    def __init__(self, node: onnx.NodeProto, index: GraphIndex):
        label = node.name or node.output[0]
        weight = _own_weight(node, index, label, lambda rank: rank == 2)
        alpha, beta = float(node_attr(node, "alpha", 1.0)), float(node_attr(node, "beta", 1.0))
        matrix = (weight if int(node_attr(node, "transB", 0)) else weight.T).astype(np.float64) * alpha  # (outputs, inputs)
        has_bias = len(node.input) > 2 and bool(node.input[2])
        bias = index.array(node.input[2]) if has_bias else np.zeros(1, weight.dtype)
        if bias is None or bias.size not in (1, matrix.shape[0]) or bias.ndim > 2:
            raise NotRewritten(DeclineCode.NOT_CONSTANT, f"the bias of {label} is not a constant of one value per output")
        self.node, self.label, self.weight, self.dtype = node, label, matrix, weight.dtype
        self.bias = np.broadcast_to(bias.astype(np.float64).reshape(-1), (matrix.shape[0],)) * (beta if has_bias else 0.0)
        self.kernel, self.begin, self.end, self.group, self.strides, self.dilations = (), [], [], 1, (), ()

    def written(self, inputs: list[str], output: str) -> onnx.NodeProto:
        return helper.make_node("Gemm", inputs, [output], name=self.node.name or None, transB=1)


def _merged(node: onnx.NodeProto, first: _Branch, second: _Branch, index: GraphIndex,
            taken: set[str]) -> tuple[onnx.NodeProto, list[onnx.TensorProto], str]:
    """The Conv replacing the sum ``node``, its new initializers and what was merged; raises NotRewritten where it cannot be."""
    convs = [(side, (_Conv if side.conv.op_type == "Conv" else _Gemm)(side.conv, index)) for side in (first, second) if side.conv is not None]
    (big_side, larger), *rest = sorted(convs, key=lambda pair: -int(np.prod(pair[1].kernel)))
    channels, rank = larger.weight.shape[0], larger.weight.ndim
    scale, shift = _channel_affine(big_side, channels, rank, index)
    weight, bias = larger.weight * scale.reshape((-1,) + (1,) * (rank - 1)), larger.bias * scale + shift
    if rest:
        (small_side, smaller), = rest
        offsets = _placement(larger, smaller)
        scale, shift = _channel_affine(small_side, channels, rank, index)
        window = (slice(None), slice(None), *(slice(o, o + k) for o, k in zip(offsets, smaller.kernel)))
        weight[window] += smaller.weight * scale.reshape((-1,) + (1,) * (rank - 1))
        bias += smaller.bias * scale + shift
        text = f"{larger.label} and {smaller.label} as one {'x'.join(map(str, larger.kernel)) + ' ' if larger.kernel else ''}{larger.node.op_type}"
    else:
        other = second if big_side is first else first
        factor, shift = _channel_affine(other, channels, rank, index)
        _add_identity(larger, weight, factor)
        bias += shift
        text = f"{larger.label} plus its input as one {larger.node.op_type}"
    weight_name = unique_name(f"{larger.node.input[1]}_merged", taken)
    bias_name = unique_name(f"{node.output[0]}_merged_bias", taken)
    merged = larger.written([larger.node.input[0], weight_name, bias_name], node.output[0])
    return merged, [from_array(weight.astype(larger.dtype), weight_name), from_array(bias.astype(larger.dtype), bias_name)], text


def _channel_affine(side: _Branch, channels: int, rank: int, index: GraphIndex) -> tuple[np.ndarray, np.ndarray]:
    """The per-channel ``scale`` and ``shift`` (each of ``channels`` values) that ``side``'s normalization and constants apply
    after its conv (or to its source); raises NotRewritten for a constant that is not one value per channel of a rank-``rank`` output."""
    scale, shift = np.ones(channels), np.zeros(channels)
    steps = []
    for op, operand in side.channel_ops:
        if op == "BatchNormalization":
            factor, offset = _normalization(operand, index)
            per_channel = (-1,) + (1,) * (rank - 2)
            steps += [("Mul", factor.reshape(per_channel)), ("Add", offset.reshape(per_channel))]
        else:
            steps.append((op, operand))
    for op, constant in steps:
        values = per_channel_values(constant, channels, rank)
        if values is None:
            raise NotRewritten(DeclineCode.UNSUPPORTED_FORM, f"a {op} by a constant of shape {list(constant.shape)} is not one value per channel")
        if op == "Mul":
            scale, shift = scale * values, shift * values
        else:
            shift = shift + values if op == "Add" else shift - values
    return scale, shift


def _placement(larger: _Conv, smaller: _Conv) -> list[int]:
    """Where ``smaller``'s kernel sits inside ``larger``'s (an offset per spatial axis); raises NotRewritten where the two do not
    compute on the same grid or the larger kernel does not hold the smaller one's taps."""
    pair = f"{larger.label} and {smaller.label}"
    if larger.node.op_type != smaller.node.op_type:
        raise NotRewritten(DeclineCode.UNSUPPORTED_FORM, f"{pair} are a {larger.node.op_type} and a {smaller.node.op_type}")
    if larger.weight.shape[:2] != smaller.weight.shape[:2] or larger.group != smaller.group:
        raise NotRewritten(DeclineCode.UNSUPPORTED_FORM, f"{pair} differ in channels or groups")
    if larger.strides != smaller.strides or larger.dilations != smaller.dilations or len(larger.kernel) != len(smaller.kernel):
        raise NotRewritten(DeclineCode.UNSUPPORTED_FORM, f"{pair} differ in strides or dilations")
    offsets = []
    for axis, (big, small) in enumerate(zip(larger.kernel, smaller.kernel)):
        if larger.reach(axis) != smaller.reach(axis):
            raise NotRewritten(DeclineCode.UNSUPPORTED_FORM, f"{pair} pad to outputs of different sizes")
        shift, dilation = larger.begin[axis] - smaller.begin[axis], larger.dilations[axis]
        if shift % dilation or shift < 0 or shift // dilation + small > big:
            raise NotRewritten(DeclineCode.WOULD_GROW, f"neither kernel of {pair} holds the other's taps (merged, the kernel would grow)")
        offsets.append(shift // dilation)
    return offsets


def _add_identity(conv: _Conv, weight: np.ndarray, factor: np.ndarray) -> None:
    """Add ``factor`` times the identity to ``weight`` (in place): each output channel's tap on its own input channel at the
    kernel position that reads the output's own location; raises NotRewritten where the convolution cannot hold it."""
    out_channels, per_group = weight.shape[0], weight.shape[1]
    if per_group * conv.group != out_channels:
        raise NotRewritten(DeclineCode.UNSUPPORTED_FORM, f"{conv.label} has {per_group * conv.group} input and {out_channels} output channels")
    if any(s != 1 for s in conv.strides):
        raise NotRewritten(DeclineCode.UNSUPPORTED_FORM, f"{conv.label} is strided: its output is smaller than its input")
    taps = []
    for axis, size in enumerate(conv.kernel):
        dilation = conv.dilations[axis]
        if conv.reach(axis) != 0 or conv.begin[axis] % dilation or not 0 <= conv.begin[axis] // dilation < size:
            raise NotRewritten(DeclineCode.UNSUPPORTED_FORM, f"{conv.label} pads to an output of another size than its input, or off its taps")
        taps.append(conv.begin[axis] // dilation)
    channels = np.arange(out_channels)
    weight[(channels, channels % per_group, *taps)] += factor


def _normalization(node: onnx.NodeProto, index: GraphIndex) -> tuple[np.ndarray, np.ndarray]:
    """An inference BatchNormalization's factor and shift per channel (y = factor * x + shift); raises NotRewritten otherwise."""
    label = node.name or node.output[0]
    if len([o for o in node.output if o]) > 1 or int(node_attr(node, "training_mode", 0)):
        raise NotRewritten(DeclineCode.TRAINING_MODE, f"{label} computes training-mode statistics")
    params = [index.array(name) for name in node.input[1:5]]
    if len(params) < 4 or any(p is None for p in params):
        raise NotRewritten(DeclineCode.NOT_CONSTANT, f"the scale, bias, mean or variance of {label} is not a constant")
    return normalization_affine(node, index.inits)
