"""The typed result of planning: what to quantize, and a coded reason for every node."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from onnxslim.ir.scopes import scoped
from onnxslim.reasons import Reason
from onnxslim.records import Record


class QuantReason(Enum):
    """Why a node is or is not quantized."""

    # quantized
    INTEGER_KERNEL = "integer_kernel"  # runs as an integer kernel (QLinearConv, QGemm, QLinearAdd, ...)
    SHARED_SCALE = "shared_scale"  # runs on UINT8 with the scale of its input (MaxPool, Reshape, ...)
    FOLDED = "folded"  # a Relu/Clip folded into the quantizer before it
    BIAS_FUSED = "bias_fused"  # the bias Add of a MatMul, fused into QGemm
    QDQ_INPUTS = "qdq_inputs"  # INT8 Q/DQ on the inputs of a weighted layer (GPU targets)
    WEIGHT_ONLY = "weight_only"  # weights stored low-bit, computed on in float: a lookup table's rows, a GRU's gate rows
    FLOAT16 = "float16"  # runs in float16 (--precision fp16)
    DYNAMIC = "dynamic"  # INT8 weights, inputs quantized at run time (an LSTM as DynamicQuantizeLSTM)
    # kept in float
    EXCLUDED_BY_USER = "excluded_by_user"  # --exclude-nodes, --exclude-op-types, --op-types
    KEPT_FOR_ACCURACY = "kept_for_accuracy"  # kept in float to meet --accuracy-budget
    OUTPUT_LAYER = "output_layer"  # feeds a graph output directly
    ATTENTION = "attention"  # activation x activation MatMul
    KEPT_FLOAT = "kept_float"  # quantizing around it costs more than it saves, or precision matters
    NO_INTEGER_KERNEL = "no_integer_kernel"  # the target has no integer kernel for it
    INPUTS_NOT_QUANTIZED = "inputs_not_quantized"  # would need extra quantizers before it
    UNSUPPORTED = "unsupported"  # weight, attribute, type or domain the rules do not handle
    MIXED_RANGES = "mixed_ranges"  # a Concat whose inputs' ranges differ too much for one scale
    NOT_CALIBRATED = "not_calibrated"  # inside an If branch or Loop body the calibration data never ran
    OVERFLOW = "overflow"  # a tensor it reads or writes leaves float16's range


QUANTIZED = frozenset(
    {QuantReason.INTEGER_KERNEL, QuantReason.SHARED_SCALE, QuantReason.FOLDED, QuantReason.BIAS_FUSED, QuantReason.QDQ_INPUTS, QuantReason.WEIGHT_ONLY,
     QuantReason.FLOAT16, QuantReason.DYNAMIC}
)


def excluded_by_user(node, config, *, always_allowed: frozenset[str] = frozenset()) -> Reason | None:
    """Why ``config``'s --exclude-nodes, --exclude-op-types or --op-types keep ``node`` as it is, or None (``always_allowed``: op types --op-types never leaves out)."""
    if node.name in config.exclude_nodes:
        return Reason(QuantReason.EXCLUDED_BY_USER, "excluded by --exclude-nodes")
    if node.op_type in config.exclude_op_types:
        return Reason(QuantReason.EXCLUDED_BY_USER, "excluded by --exclude-op-types")
    if config.op_types and node.op_type not in config.op_types and node.op_type not in always_allowed:
        return Reason(QuantReason.EXCLUDED_BY_USER, "op type not in --op-types")
    return None


@dataclass
class ActivationQuant:
    """A tensor that gets QuantizeLinear -> DequantizeLinear."""

    tensor: str
    observe: str
    share: str | None = None  # take scale and zero point of this tensor (pass-through ops)
    clamp_low: float | None = None  # lower bound from a folded Relu/Clip
    clamp_high: float | None = None  # upper bound from a folded Clip
    rewire_all: bool = False  # every reader reads the dequantized value (needed for producer fusion)
    readers: set[str] = field(default_factory=set)  # nodes reading the dequantized value, when not all
    folded_into: str | None = None  # a Relu/Clip output name that the dequantized value replaces
    bounded: bool = False  # the op bounds its output (HardSigmoid's clip to [0, 1]): the observed min and max are its range, whatever the method


@dataclass
class WeightQuant:
    """A constant weight quantized to INT8, per channel along ``axis`` (None: per tensor), codes in [-levels, levels]."""

    tensor: str
    axis: int | None
    levels: int = 127


@dataclass
class BiasQuant:
    """A bias quantized to INT32 with the scale of ``activation`` times that of ``weight``."""

    tensor: str
    node: str
    activation: str
    weight: str


@dataclass(frozen=True)
class NodeDecision(Record):
    """Whether a node runs quantized, and why (``reason.code`` is a :class:`QuantReason`)."""

    node: str
    op_type: str
    reason: Reason

    @property
    def quantized(self) -> bool:
        return self.reason.code in QUANTIZED

    @property
    def code(self) -> QuantReason:
        return self.reason.code  # type: ignore[return-value]

    def derived(self) -> dict:
        return {"quantized": self.quantized}


@dataclass
class QuantPlan:
    """Which tensors get Q/DQ, which weights and biases are quantized, and a decision for every node.

    Built by the planner before calibration; afterwards only copies are changed
    (see :func:`onnxslim.quant.plan.drop_mixed_range_concats`).
    """

    # keyed by the name readers see: the folded Relu/Clip output where one was folded, else the tensor
    activations: dict[str, ActivationQuant] = field(default_factory=dict)
    weights: dict[str, WeightQuant] = field(default_factory=dict)
    weight_readers: dict[str, set[str]] = field(default_factory=dict)
    biases: list[BiasQuant] = field(default_factory=list)
    folded_nodes: dict[str, str] = field(default_factory=dict)  # Relu/Clip node -> tensor quantized in its place
    zero_bias_for: dict[str, tuple[str, str]] = field(default_factory=dict)  # MatMul node -> (activation, weight)
    concat_candidates: list[str] = field(default_factory=list)
    hard_activations: dict[str, tuple[float, float]] = field(default_factory=dict)  # HardSigmoid/HardSwish node -> (alpha, beta), written as QLinearAdd
    constant_operands: dict[str, int] = field(default_factory=dict)  # Add/Mul node -> index of its scalar constant input, written as an exact UINT8 DQ
    slope_activations: dict[str, str] = field(default_factory=dict)  # PRelu node -> its slope constant, written as max(x, slope * x) on UINT8
    single_slopes: dict[str, float] = field(default_factory=dict)  # PRelu node with one slope -> that slope, written as LeakyRelu
    code_pads: set[str] = field(default_factory=set)  # Pad nodes written on their input's UINT8 codes (no Q/DQ around them)
    decisions: dict[str, NodeDecision] = field(default_factory=dict)
    signed: bool = False
    # body path -> the plan of that If branch or Loop/Scan body (nested bodies listed here too, not in their parents' plans)
    bodies: dict[str, QuantPlan] = field(default_factory=dict)
    # what the build of this plan rewrote after planning for onnxruntime's kernels (pass results: merged MatMuls, integer MatMuls)
    layout: list = field(default_factory=list)

    def observed_tensors(self, *, bounded_only: bool = False) -> set[str]:
        """Tensors calibration observes (those of bounded outputs only, when asked): plain names for the main graph, scoped keys inside bodies."""
        observed = {a.observe for a in self.activations.values() if a.bounded or not bounded_only}
        for path, body in self.bodies.items():
            observed |= {scoped(path, t) for t in body.observed_tensors(bounded_only=bounded_only)}
        return observed

    @property
    def quantized_nodes(self) -> list[str]:
        return [d.node for d in self.decisions.values() if d.quantized]

    def with_reasons(self, reasons: Mapping[str, Reason]) -> QuantPlan:
        """A copy whose decisions for the nodes of ``reasons`` carry those reasons (each node keeps its op type)."""
        decisions = dict(self.decisions)
        for node, reason in reasons.items():
            decisions[node] = NodeDecision(node, decisions[node].op_type, reason)
        return dataclasses.replace(self, decisions=decisions)
