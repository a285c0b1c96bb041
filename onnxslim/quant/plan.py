"""Which tensors to quantize, decided per op before any data is seen.

The planner walks the prepared float graph in order and applies one rule per
op type. It only marks: activations that get a Quantize/Dequantize pair (and
whose range comes from which observed tensor, or is shared with another),
weights quantized per channel, biases quantized to INT32, and activations
(Relu, Clip) folded into the quantizer before them. Every node gets a decision
with a reason. :mod:`onnxslim.quant.qdq` then turns the plan into nodes.

Target 'cpu' follows what onnxruntime's CPU provider fuses into integer
kernels (checked with its optimized-model dump): Conv with a quantized output
becomes QLinearConv; MatMul or Gemm with a constant weight and an INT32 bias
becomes QGemm (float output, so no output quantizer is needed) where the input
is 2-D or fully static, and a MatMul of a dynamically shaped input becomes
MatMulIntegerToFloat followed by its float bias Add; Add, Mul,
GlobalAveragePool, AveragePool and Concat with quantized inputs and output
become QLinear* ops, and so does an Add or Mul of a quantized tensor and a
constant scalar when the config plans ``scalar_affine='int8'`` (the scalar as
one exact UINT8 code; 'auto' is planned as float, and :mod:`onnxslim.quant.affine`
builds and measures both forms); HardSigmoid and HardSwish are written as QLinearAdd (and
QLinearMul) on UINT8; MaxPool, Reshape, Transpose, Resize and the like run on
UINT8 when the quantizers before and after them share one scale. ConvTranspose,
Tanh, normalizations and reductions have no integer kernel and stay in float,
because quantizing around them only adds work.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import numpy as np
import onnx

from onnxslim.ir.graph import MS_DOMAIN, node_attr
from onnxslim.ir.layers import one_channel_per_group, weight_axes
from onnxslim.ir.tensors import constant_names, initializer_map, to_array
from onnxslim.quant.config import QuantConfig
from onnxslim.quant.decisions import ActivationQuant, BiasQuant, NodeDecision, QuantPlan, QuantReason, WeightQuant, excluded_by_user
from onnxslim.quant.params import FULL_LEVELS, REDUCED_LEVELS
from onnxslim.quant.rules import CONTRIB_QUANTIZED, REMOVABLE, WEIGHTED_GPU, rule_for
from onnxslim.reasons import Reason

__all__ = ["ActivationQuant", "BiasQuant", "NodeDecision", "Planner", "QuantPlan", "QuantReason", "WeightQuant", "drop_mixed_range_concats", "make_plan"]


class Planner:
    """Walks the prepared graph once, applying the rule of each op type (see :mod:`onnxslim.quant.rules`).

    Holds the lookups the rules need (constants, consumers, producers) and the
    plan being built; rules mark tensors through its helpers.
    """

    def __init__(self, model: onnx.ModelProto, config: QuantConfig, float_tensors: set[str], keep_float: frozenset[str] = frozenset(),
                 shapes: Mapping[str, tuple] | None = None, float_biases: frozenset[str] = frozenset()):
        self.model = model
        self.shapes = shapes or {}
        self.float_biases = float_biases
        self.keep_float = keep_float
        self.graph = model.graph
        self.config = config
        self.constants = constant_names(self.graph)
        self.inits = initializer_map(self.graph)
        self.float_tensors = float_tensors
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.graph.node:
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
        self.producer = {o: n for n in self.graph.node for o in n.output if o}
        self.graph_outputs = {v.name for v in self.graph.output}
        self.plan = QuantPlan(signed=config.signed_activations)
        self.quantized_outputs: set[str] = set()  # tensors produced by quantized nodes and quantized
        self.output_layers = set() if config.output_layers == "int8" else self._output_layers()

    def _output_layers(self) -> set[str]:
        """Weighted nodes whose output reaches a graph output through single-activation ops only."""
        found: set[str] = set()
        for node in self.graph.node:
            if node.op_type not in WEIGHTED_GPU:
                continue
            frontier, seen = [node.output[0]], set()
            while frontier:
                tensor = frontier.pop()
                if tensor in self.graph_outputs:
                    found.add(node.name)
                    break
                for reader in self.consumers.get(tensor, []):
                    activations = [n for n in reader.input if self.is_float_activation(n)]
                    if reader.op_type in WEIGHTED_GPU or reader.op_type == "Shape" or len(activations) != 1 or reader.name in seen:
                        continue
                    seen.add(reader.name)
                    frontier.extend(o for o in reader.output if o)
        return found

    # ------------------------------------------------------------ helpers
    def decide(self, node: onnx.NodeProto, reason: Reason) -> None:
        self.plan.decisions[node.name] = NodeDecision(node.name, node.op_type, reason)

    def is_float_activation(self, name: str) -> bool:
        """A float32 tensor computed at run time (not a constant)."""
        return bool(name) and name not in self.constants and name in self.float_tensors

    def is_quantized(self, name: str) -> bool:
        """``name`` already gets a Quantize/Dequantize pair in the plan."""
        return name in self.plan.activations

    def quantize_input(self, tensor: str, reader: onnx.NodeProto) -> None:
        """Mark ``tensor`` for Q/DQ as an input of ``reader`` (sharing the pair with other readers)."""
        existing = self.plan.activations.get(tensor)
        if existing is None:
            existing = self.plan.activations[tensor] = ActivationQuant(tensor, observe=tensor)
        if not existing.rewire_all:
            existing.readers.add(reader.name)

    def quantize_output(self, node: onnx.NodeProto, *, allow_fold: bool) -> str:
        """Quantize ``node``'s output for fusion, folding a following Relu/Clip when possible."""
        tensor = node.output[0]
        target = ActivationQuant(tensor, observe=tensor, rewire_all=True)
        readers = self.consumers.get(tensor, [])
        if allow_fold and not self.plan.signed and len(readers) == 1 and tensor not in self.graph_outputs:
            follower = readers[0]
            clamp = self._foldable_clamp(follower)
            if clamp is not None and self._allowed(follower) is None:
                low, high = clamp
                target.observe = follower.output[0]
                target.clamp_low, target.clamp_high = low, high
                target.folded_into = follower.output[0]
                self.plan.folded_nodes[follower.name] = tensor
                if low == 0.0:
                    how = "UINT8 with zero point 0 clamps like it"
                elif low is None:
                    how = "its range ends at the clip's ceiling: UINT8 saturates there"
                else:
                    how = f"its range starts at the clip's floor {low:g}: UINT8 saturates there, to half a step"
                self.decide(follower, Reason(QuantReason.FOLDED, f"folded into the quantizer of {node.name}'s output ({how})"))
        visible = target.folded_into or tensor
        self.plan.activations[visible] = target
        self.quantized_outputs.add(visible)
        return visible

    def _foldable_clamp(self, node: onnx.NodeProto) -> tuple[float | None, float | None] | None:
        """(floor, ceiling) of a Relu or a Clip whose quantized output range can do its clamping (None where it has no
        floor or ceiling), or None when it cannot be folded.

        The UINT8 range holds 0 and what calibration saw at the clamp's output: it saturates where the clamp does when
        the floor is at most 0 (exactly at 0, with zero point 0; below 0, at the code nearest the floor) and the
        ceiling at least 0. A floor above 0 or a ceiling below it would leave values the clamp removes."""
        if node.domain not in ("", "ai.onnx") or node.op_type not in REMOVABLE:
            return None
        if node.op_type == "Relu":
            return 0.0, None
        low, high = node_attr(node, "min"), node_attr(node, "max")
        for index in (1, 2):
            if len(node.input) > index and node.input[index]:
                if node.input[index] not in self.constants:
                    return None
                value = float(to_array(self.inits[node.input[index]]).reshape(()))
                low, high = (value, high) if index == 1 else (low, value)
        if any(bound is not None and math.isnan(float(bound)) for bound in (low, high)):
            return None  # a NaN bound: what the Clip computes is not a clamp a range can stand for
        low = None if low is None or float(low) == -math.inf else float(low)
        high = None if high is None or float(high) == math.inf else float(high)
        if (low is not None and low > 0.0) or (high is not None and high < 0.0):
            return None
        return low, high

    def _allowed(self, node: onnx.NodeProto) -> Reason | None:
        """Why the user's options or the node's domain keep ``node`` in float, or None."""
        config = self.config
        if node.name in self.keep_float:
            return Reason(QuantReason.KEPT_FOR_ACCURACY, "kept in float to meet the accuracy budget (among the layers that cost the most accuracy)")
        excluded = excluded_by_user(node, config, always_allowed=REMOVABLE)
        if excluded is not None:
            return excluded
        if node.domain not in ("", "ai.onnx") and not (node.domain == MS_DOMAIN and node.op_type in CONTRIB_QUANTIZED and not self.plan.signed):
            if node.domain == "ai.onnx.ml":  # classical machine learning (trees, linear models, ZipMap): no integer form
                return Reason(QuantReason.UNSUPPORTED, "an ONNX-ML operator (no integer kernel)")
            return Reason(QuantReason.UNSUPPORTED, f"custom domain '{node.domain}'")
        return None

    def weight_axis(self, node: onnx.NodeProto, weight: np.ndarray) -> int | None:
        """The per-channel axis of ``node``'s weight, or None for one scale per tensor."""
        if not self.config.per_channel:
            return None
        if node.op_type == "ConvTranspose" and int(node_attr(node, "group", 1)) != 1:
            return None  # its axis 1 holds output channels of one group only
        return weight_axes(node, weight.ndim)[1]

    def weight_levels(self, node: onnx.NodeProto, weight: np.ndarray) -> int:
        """The largest INT8 code of ``node``'s weight: the reduced range (``--weight-range reduced``) except for a depthwise
        Conv, whose kernel adds its products in 32 bits."""
        if self.config.weight_range != "reduced":
            return FULL_LEVELS
        return FULL_LEVELS if node.op_type == "Conv" and one_channel_per_group(node, weight.shape) else REDUCED_LEVELS

    def add_weight(self, node: onnx.NodeProto, name: str) -> bool:
        """Mark the constant weight ``name`` of ``node`` for INT8; False when another layer quantizes it on another axis."""
        weight = to_array(self.inits[name])
        axis = self.weight_axis(node, weight)
        levels = self.weight_levels(node, weight)
        existing = self.plan.weights.get(name)
        if existing is not None and existing.axis != axis:
            return False
        if existing is not None:
            levels = min(levels, existing.levels)  # shared by layers whose kernels differ: the range every one of them adds exactly
        self.plan.weights[name] = WeightQuant(name, axis, levels)
        self.plan.weight_readers.setdefault(name, set()).add(node.name)
        return True

    def bias_fuses(self, node: onnx.NodeProto, activation: str) -> bool:
        """Whether onnxruntime fuses ``node``, a MatMul reading ``activation``, with its bias Add into QGemm.

        It does for a 2-D input, and for a fully static one (reshaped to 2-D around the QGemm). Otherwise the
        MatMul becomes MatMulIntegerToFloat and the Add stays: an INT32 bias would then be dequantized on
        every run, and a zero bias added to a bias-less MatMul would be pure extra work. Unknown shapes are
        assumed to fuse, so no Gemm silently loses its integer kernel; ``float_biases`` names the MatMuls
        onnxruntime was seen not to fuse (its optimized graph kept their bias's DequantizeLinear).
        """
        if node.name in self.float_biases:
            return False
        shape = self.shapes.get(activation)
        return shape is None or len(shape) == 2 or all(d is not None for d in shape)

    def matmul_bias(self, node: onnx.NodeProto) -> str | None:
        """The constant bias of the Add right after a MatMul, which QGemm fuses (marking that Add), or None."""
        readers = self.consumers.get(node.output[0], [])
        if len(readers) != 1 or node.output[0] in self.graph_outputs:
            return None
        add = readers[0]
        if add.op_type != "Add" or self._allowed(add) is not None:
            return None
        other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
        if other not in self.constants:
            return None
        bias = to_array(self.inits[other])
        columns = to_array(self.inits[node.input[1]]).shape[-1]
        if bias.dtype != np.float32 or bias.shape != (columns,):
            return None
        self.decide(add, Reason(QuantReason.BIAS_FUSED, f"bias of {node.name}, fused with it into QGemm"))
        return other

    def add_bias(self, node: onnx.NodeProto, bias: str, activation: str, weight: str) -> None:
        """Mark ``bias`` for INT32 with the scale of ``activation`` times that of ``weight``."""
        array = to_array(self.inits[bias])
        if array.ndim == 1 and array.dtype == np.float32 and (node.op_type != "Gemm" or float(node_attr(node, "beta", 1.0)) == 1.0):
            self.plan.biases.append(BiasQuant(bias, node.name, activation, weight))

    def run(self) -> QuantPlan:
        """Decide every node in graph order and return the plan."""
        for node in self.graph.node:
            if node.name in self.plan.decisions:
                continue  # decided earlier: a Relu/Clip folded into its producer, a MatMul's bias Add
            reason = self._allowed(node) or rule_for(node.op_type, self.plan.signed)(self, node)
            self.decide(node, reason)
        self._float_readers_keep_constant_operands_float()
        self._float_readers_keep_hard_activations_float()
        self._float_readers_keep_slope_activations_float()
        return self.plan

    def _read_by_quantized(self, output: str) -> bool:
        return output in self.graph_outputs or self._read_by_quantized_node(output)

    def _read_by_quantized_node(self, output: str) -> bool:
        readers = self.consumers.get(output, [])
        return any(self.plan.decisions[r.name].quantized for r in readers if r.name in self.plan.decisions)

    def _float_readers_keep_constant_operands_float(self) -> None:
        """An Add/Mul with a constant scalar whose output no quantized node reads stays in float (last first, so chains unwind).

        Like a hard activation's, its integer form pays off only when the next node takes UINT8. A graph output that a
        quantized layer also reads keeps it: the layer needs its codes.
        """
        order = [n for n in self.graph.node if n.name in self.plan.constant_operands]
        for node in reversed(order):
            output = node.output[0]
            if self._read_by_quantized_node(output):
                continue
            constant = self.plan.constant_operands.pop(node.name)
            self._keep_float_unread(node, node.input[1 - constant])

    def _float_readers_keep_hard_activations_float(self) -> None:
        """A HardSigmoid / HardSwish whose output no quantized node reads stays in float.

        Its integer form pays off only when the next node takes UINT8; otherwise it adds
        a rounding of the gate and of its output that the float op does not have.
        """
        for name in list(self.plan.hard_activations):
            node = next(n for n in self.graph.node if n.name == name)
            output = node.output[0]
            if self._read_by_quantized(output):
                continue
            del self.plan.hard_activations[name]
            self._keep_float_unread(node, node.input[0])

    def _float_readers_keep_slope_activations_float(self) -> None:
        """A PRelu whose output no quantized node reads stays in float (last first, so chains unwind): its float form reads
        x's dequantized values as they are, where the integer one adds a rounding of slope * x. One that is also a graph
        output keeps the integer form where quantized layers read it: they need its codes."""
        order = [n for n in self.graph.node if n.name in self.plan.slope_activations or n.name in self.plan.single_slopes]
        for node in reversed(order):
            output = node.output[0]
            if self._read_by_quantized_node(output):
                continue
            self.plan.slope_activations.pop(node.name, None)
            self.plan.single_slopes.pop(node.name, None)
            self._keep_float_unread(node, node.input[0])

    def _keep_float_unread(self, node: onnx.NodeProto, data: str) -> None:
        """Undo the integer form of ``node``, whose output no quantized node reads: its output is no longer quantized (a
        tensor that shared its scale falls back to its own range), and ``data``, its quantized input, loses it as a reader."""
        output = node.output[0]
        del self.plan.activations[output]
        self.quantized_outputs.discard(output)
        for dependent in [a for a in self.plan.activations.values() if a.share == output]:
            dependent.share = None
        source = self.plan.activations[data]
        source.readers.discard(node.name)
        if not source.rewire_all and not source.readers:
            del self.plan.activations[data]
        self.decide(node, Reason(QuantReason.KEPT_FLOAT, "kept in float: no quantized node reads its output, so an integer form would only add rounding"))


def make_plan(model: onnx.ModelProto, config: QuantConfig, float_tensors: set[str], keep_float: frozenset[str] = frozenset(),
              shapes: Mapping[str, tuple] | None = None, float_biases: frozenset[str] = frozenset()) -> QuantPlan:
    """Plan the quantization of a prepared model; ``float_tensors`` are the float32 tensor names.

    ``keep_float``: nodes kept in float for the accuracy budget (reported as such, not as the user's exclusions).
    ``shapes``: tensor shapes where known (None for a dynamic dim); they decide how a MatMul's bias is written,
    as does ``float_biases`` (MatMuls whose bias stays float: see :meth:`Planner.bias_fuses`).
    """
    return Planner(model, config, float_tensors, keep_float, shapes, float_biases).run()


def drop_mixed_range_concats(plan: QuantPlan, model: onnx.ModelProto, ranges: dict[str, tuple[float, float]], ratio: float) -> QuantPlan:
    """A copy of ``plan`` with Concat quantization undone where the inputs' ranges differ by more than ``ratio``.

    One scale for box coordinates in pixels and class scores in 0..1 rounds the
    scores to zero; such a Concat stays in float and its inputs keep their own scales.
    ``plan`` itself is left as planned.
    """
    plan = copy.deepcopy(plan)
    nodes = {n.name: n for n in model.graph.node}
    for name in plan.concat_candidates:
        node = nodes[name]
        observed = [plan.activations[t].observe for t in node.input if t in plan.activations]
        spans = [max(ranges[t][1] - ranges[t][0], 1e-12) for t in observed if t in ranges]
        if len(spans) < 2 or max(spans) / min(spans) <= ratio:
            continue
        out = node.output[0]
        # Quantized layers reading the Concat's output still need it quantized, now as the output of a float op.
        readers = {n.name for n in model.graph.node if out in n.input and n.name in plan.decisions and plan.decisions[n.name].quantized and n.name != name}
        if readers:
            plan.activations[out].rewire_all = False
            plan.activations[out].readers = readers
        else:
            for dependent in [a for a in plan.activations.values() if a.share == out]:
                dependent.share = None  # falls back to its own observed range
            del plan.activations[out]
        for tensor in node.input:
            activation = plan.activations.get(tensor)
            if activation is not None and not activation.rewire_all:
                activation.readers.discard(name)
                if not activation.readers:
                    del plan.activations[tensor]
        spread = f"inputs span ranges from {min(spans):.3g} to {max(spans):.3g} ({max(spans) / min(spans):.0f}x); one scale would round the smaller ones away"
        plan.decisions[name] = NodeDecision(name, "Concat", Reason(QuantReason.MIXED_RANGES, spread))
    return plan
