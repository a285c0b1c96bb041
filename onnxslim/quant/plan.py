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
becomes QGemm (float output, so no output quantizer is needed); Add, Mul,
GlobalAveragePool, AveragePool and Concat with quantized inputs and output
become QLinear* ops; MaxPool, Reshape, Transpose, Resize and the like run on
UINT8 when the quantizers before and after them share one scale. ConvTranspose,
HardSigmoid, Tanh, normalizations and reductions have no integer kernel and
stay in float, because quantizing around them only adds work.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxslim.ir.graph import node_attr
from onnxslim.ir.layers import weight_axes
from onnxslim.ir.tensors import constant_names, initializer_map, to_array
from onnxslim.quant.config import QuantConfig

PASS_THROUGH = {"MaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Resize", "Slice", "DepthToSpace", "SpaceToDepth", "Gather"}
INTEGER_UNARY = {"GlobalAveragePool", "AveragePool"}
INTEGER_BINARY = {"Add", "Mul"}
REMOVABLE = {"Relu", "Clip"}
WEIGHTED_CPU = {"Conv", "Gemm", "MatMul"}
WEIGHTED_GPU = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
KEPT_FLOAT_REASONS = {
    "Softmax": "softmax kept in float (its output precision matters more than its cost)",
    "LayerNormalization": "normalization kept in float",
    "BatchNormalization": "normalization kept in float (not folded into a layer)",
    "InstanceNormalization": "normalization kept in float",
    "HardSigmoid": "smooth activation kept in float: no integer kernel on CPU",
    "HardSwish": "smooth activation kept in float: no integer kernel on CPU",
    "Sigmoid": "smooth activation kept in float",
    "Tanh": "smooth activation kept in float: no integer kernel on CPU",
    "Erf": "GELU path kept in float",
    "Div": "division kept in float (part of normalization or smooth activation)",
    "Pow": "kept in float (part of a spelled-out normalization)",
    "Sqrt": "kept in float (part of a spelled-out normalization)",
    "ReduceMean": "reduction kept in float",
    "ConvTranspose": "onnxruntime's CPU provider has no integer ConvTranspose; Q/DQ around it would only add work",
}


@dataclass
class ActivationQuant:
    """A tensor that gets QuantizeLinear -> DequantizeLinear."""

    tensor: str
    observe: str
    share: str | None = None  # take scale and zero point of this tensor (pass-through ops)
    clamp_high: float | None = None  # upper bound from a folded Clip
    rewire_all: bool = False  # every reader reads the dequantized value (needed for producer fusion)
    readers: set[str] = field(default_factory=set)  # nodes reading the dequantized value, when not all
    folded_into: str | None = None  # a Relu/Clip output name that the dequantized value replaces


@dataclass
class WeightQuant:
    tensor: str
    axis: int | None


@dataclass
class BiasQuant:
    tensor: str
    node: str
    activation: str
    weight: str


@dataclass
class NodeDecision:
    node: str
    op_type: str
    quantized: bool
    reason: str

    def to_dict(self) -> dict:
        return {"node": self.node, "op_type": self.op_type, "quantized": self.quantized, "reason": self.reason}


@dataclass
class QuantPlan:
    # keyed by the name readers see: the folded Relu/Clip output where one was folded, else the tensor
    activations: dict[str, ActivationQuant] = field(default_factory=dict)
    weights: dict[str, WeightQuant] = field(default_factory=dict)
    weight_readers: dict[str, set[str]] = field(default_factory=dict)
    biases: list[BiasQuant] = field(default_factory=list)
    folded_nodes: dict[str, str] = field(default_factory=dict)  # Relu/Clip node -> tensor quantized in its place
    zero_bias_for: dict[str, tuple[str, str]] = field(default_factory=dict)  # MatMul node -> (activation, weight)
    concat_candidates: list[str] = field(default_factory=list)
    decisions: dict[str, NodeDecision] = field(default_factory=dict)
    signed: bool = False

    def observed_tensors(self) -> set[str]:
        return {a.observe for a in self.activations.values()}

    @property
    def quantized_nodes(self) -> list[str]:
        return [d.node for d in self.decisions.values() if d.quantized]


class Planner:
    def __init__(self, model: onnx.ModelProto, config: QuantConfig, float_tensors: set[str]):
        self.model = model
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
        self.output_layers = set() if config.quantize_output_layers else self._output_layers()

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
    def decide(self, node: onnx.NodeProto, quantized: bool, reason: str) -> None:
        self.plan.decisions[node.name] = NodeDecision(node.name, node.op_type, quantized, reason)

    def is_float_activation(self, name: str) -> bool:
        return bool(name) and name not in self.constants and name in self.float_tensors

    def is_quantized(self, name: str) -> bool:
        return name in self.plan.activations

    def quantize_input(self, tensor: str, reader: onnx.NodeProto) -> None:
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
            if clamp is not False and self._allowed(follower) is None:
                target.observe = follower.output[0]
                target.clamp_high = clamp
                target.folded_into = follower.output[0]
                self.plan.folded_nodes[follower.name] = tensor
                self.decide(follower, True, f"folded into the quantizer of {node.name}'s output (UINT8 with zero point 0 clamps like it)")
        visible = target.folded_into or tensor
        self.plan.activations[visible] = target
        self.quantized_outputs.add(visible)
        return visible

    def _foldable_clamp(self, node: onnx.NodeProto):
        """None for Relu, the upper bound for Clip(0, c), False when it cannot be folded."""
        if node.domain not in ("", "ai.onnx") or node.op_type not in REMOVABLE:
            return False
        if node.op_type == "Relu":
            return None
        low, high = node_attr(node, "min"), node_attr(node, "max")
        if len(node.input) > 1 and node.input[1]:
            if node.input[1] not in self.constants:
                return False
            low = float(to_array(self.inits[node.input[1]]))
        if len(node.input) > 2 and node.input[2]:
            if node.input[2] not in self.constants:
                return False
            high = float(to_array(self.inits[node.input[2]]))
        if low is None or float(low) != 0.0:
            return False
        return None if high is None else float(high)

    def _allowed(self, node: onnx.NodeProto) -> str | None:
        config = self.config
        if node.name in config.exclude_nodes:
            return "excluded by --exclude-nodes"
        if node.op_type in config.exclude_op_types:
            return "excluded by --exclude-op-types"
        if config.op_types and node.op_type not in config.op_types and node.op_type not in REMOVABLE:
            return "op type not in --op-types"
        if node.domain not in ("", "ai.onnx"):
            return f"custom domain '{node.domain}'"
        return None

    def weight_axis(self, node: onnx.NodeProto, weight: np.ndarray) -> int | None:
        if not self.config.per_channel:
            return None
        if node.op_type == "ConvTranspose" and int(node_attr(node, "group", 1)) != 1:
            return None  # its axis 1 holds output channels of one group only
        return weight_axes(node, weight.ndim)[1]

    def add_weight(self, node: onnx.NodeProto, name: str) -> bool:
        weight = to_array(self.inits[name])
        axis = self.weight_axis(node, weight)
        existing = self.plan.weights.get(name)
        if existing is not None and existing.axis != axis:
            return False
        self.plan.weights[name] = WeightQuant(name, axis)
        self.plan.weight_readers.setdefault(name, set()).add(node.name)
        return True

    # ------------------------------------------------------------ rules
    def weighted(self, node: onnx.NodeProto) -> str | None:
        """Quantize a layer with a constant weight; returns a reason when it is declined."""
        op = node.op_type
        if len(node.input) < 2:
            return "no weight input"
        activation, weight = node.input[0], node.input[1]
        if weight not in self.constants:
            if op == "MatMul" and self.is_float_activation(weight):
                return self.activation_matmul(node)
            return "weight is not a constant initializer"
        if not self.is_float_activation(activation):
            return "input is not a float activation"
        if node.name in self.output_layers:
            return "output layer kept in float: its rounding errors reach the result directly (--quantize-output-layers quantizes it)"
        array = to_array(self.inits[weight])
        if array.dtype != np.float32:
            return f"weight is {array.dtype}, not float32"
        if op == "MatMul" and array.ndim != 2:
            return f"batched constant weight of rank {array.ndim}"
        if op == "Gemm":
            if int(node_attr(node, "transA", 0)):
                return "Gemm with transA=1"
            if float(node_attr(node, "alpha", 1.0)) != 1.0:
                return "Gemm with alpha != 1"
        if not self.add_weight(node, weight):
            return "weight is shared with a layer that quantizes it on another axis"
        self.quantize_input(activation, node)
        if self.plan.signed:
            self.decide(node, True, "INT8 input and per-channel weights (Q/DQ on inputs)")
            return None
        bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if op == "MatMul":
            bias_name = self._matmul_bias(node)
        if bias_name is not None:
            self._add_bias(node, bias_name, activation, weight)
        if op == "Conv":
            self.quantize_output(node, allow_fold=True)
            self.decide(node, True, "QLinearConv: UINT8 input and output, INT8 per-channel weights, INT32 bias")
        elif op == "MatMul" and bias_name is None:
            self.plan.zero_bias_for[node.name] = (activation, weight)
            self.decide(node, True, "QGemm: UINT8 input, INT8 per-channel weights, float output")
        else:
            self.decide(node, True, "QGemm: UINT8 input, INT8 per-channel weights, INT32 bias, float output")
        return None

    def _matmul_bias(self, node: onnx.NodeProto) -> str | None:
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
        self.decide(add, True, f"bias of {node.name}, fused with it into QGemm")
        return other

    def _add_bias(self, node: onnx.NodeProto, bias: str, activation: str, weight: str) -> None:
        array = to_array(self.inits[bias])
        if array.ndim == 1 and array.dtype == np.float32 and (node.op_type != "Gemm" or float(node_attr(node, "beta", 1.0)) == 1.0):
            self.plan.biases.append(BiasQuant(bias, node.name, activation, weight))

    def activation_matmul(self, node: onnx.NodeProto) -> str | None:
        if not self.config.quantize_attention:
            return "activation x activation MatMul (attention) kept in float; --quantize-attention quantizes it"
        a, b = node.input[0], node.input[1]
        if not (self.is_float_activation(a) and self.is_float_activation(b)):
            return "inputs are not float activations"
        self.quantize_input(a, node)
        self.quantize_input(b, node)
        if not self.plan.signed:
            self.quantize_output(node, allow_fold=False)
        self.decide(node, True, "QLinearMatMul on two quantized activations")
        return None

    def run(self) -> QuantPlan:
        weighted_ops = WEIGHTED_GPU if self.plan.signed else WEIGHTED_CPU
        for node in self.graph.node:
            if node.name in self.plan.decisions:
                continue
            op = node.op_type
            blocked = self._allowed(node)
            if blocked is not None:
                self.decide(node, False, blocked)
                continue
            if op in weighted_ops:
                reason = self.weighted(node)
                if reason is not None:
                    self.decide(node, False, reason)
                continue
            if self.plan.signed:
                self.decide(node, False, KEPT_FLOAT_REASONS.get(op, "only the inputs of weighted layers are quantized for this target"))
                continue
            data = node.input[0] if node.input else ""
            if op in PASS_THROUGH and self.is_quantized(data) and data in self.quantized_outputs:
                out = node.output[0]
                self.plan.activations[out] = ActivationQuant(out, observe=out, share=data, rewire_all=True)
                self.quantized_outputs.add(out)
                self.decide(node, True, "runs on UINT8: same scale before and after")
                continue
            if op in INTEGER_UNARY and self.is_quantized(data) and data in self.quantized_outputs:
                self.quantize_input(data, node)
                self.quantize_output(node, allow_fold=False)
                self.decide(node, True, f"QLinear{op}")
                continue
            if op in INTEGER_BINARY and len(node.input) == 2 and all(n in self.quantized_outputs for n in node.input):
                for name in node.input:
                    self.quantize_input(name, node)
                self.quantize_output(node, allow_fold=op == "Add")
                self.decide(node, True, f"QLinear{op}: both inputs already quantized")
                continue
            if op == "Concat" and node.input and all(n in self.quantized_outputs for n in node.input):
                for name in node.input:
                    self.quantize_input(name, node)
                self.quantize_output(node, allow_fold=False)
                self.plan.concat_candidates.append(node.name)
                self.decide(node, True, "QLinearConcat")
                continue
            if op in KEPT_FLOAT_REASONS:
                self.decide(node, False, KEPT_FLOAT_REASONS[op])
            elif op in PASS_THROUGH | INTEGER_UNARY | INTEGER_BINARY | {"Concat"}:
                self.decide(node, False, "inputs are not all quantized, so an integer kernel would need extra quantizers")
            elif op in REMOVABLE:
                self.decide(node, False, "not directly after a quantized layer, so it cannot be folded")
            else:
                self.decide(node, False, f"no integer kernel for {op} on this target")
        return self.plan


def make_plan(model: onnx.ModelProto, config: QuantConfig, float_tensors: set[str]) -> QuantPlan:
    """Plan the quantization of a prepared model; ``float_tensors`` are the float32 tensor names."""
    return Planner(model, config, float_tensors).run()


def drop_mixed_range_concats(plan: QuantPlan, model: onnx.ModelProto, ranges: dict[str, tuple[float, float]], ratio: float) -> None:
    """Undo Concat quantization where the inputs' ranges differ by more than ``ratio``.

    One scale for box coordinates in pixels and class scores in 0..1 rounds the
    scores to zero; such a Concat stays in float and its inputs keep their own scales.
    """
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
        plan.decisions[name] = NodeDecision(
            name,
            "Concat",
            False,
            f"inputs span ranges from {min(spans):.3g} to {max(spans):.3g} ({max(spans) / min(spans):.0f}x); one scale would round the smaller ones away",
        )
