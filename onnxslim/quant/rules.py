"""One quantization rule per op type, kept in a registry.

A rule looks at one node with the planner's view of the graph, marks what to
quantize through the planner's helpers (``quantize_input``, ``quantize_output``,
``add_weight``, ...) and returns the :class:`~onnxslim.reasons.Reason` for its
decision; the code says whether the node was quantized. :func:`rule_for` picks
the rule of an op type for a target: ``cpu`` follows what onnxruntime's CPU
provider fuses into integer kernels, the signed (GPU) targets put Q/DQ on the
inputs of weighted layers only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import onnx

from onnxslim.ir.graph import MS_DOMAIN, node_attr, text_attr
from onnxslim.ir.tensors import to_array
from onnxslim.passes.opset import default_opset
from onnxslim.quant.decisions import ActivationQuant, QuantReason
from onnxslim.reasons import Reason

if TYPE_CHECKING:
    from onnxslim.quant.plan import Planner

Rule = Callable[["Planner", onnx.NodeProto], Reason]

PASS_THROUGH = {"MaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Resize", "Slice", "DepthToSpace", "SpaceToDepth", "Gather"}
INTEGER_UNARY = {"GlobalAveragePool", "AveragePool"}
# activations with a QLinear kernel on onnxruntime's CPU provider (DQ -> op -> Q fuses): SiLU's and
# squeeze-excitation's Sigmoid then joins QLinearMul instead of leaving a float island in every block
CPU_INTEGER_ACTIVATIONS = {"Sigmoid", "LeakyRelu"}
# HardSigmoid(x) = clip(alpha * x + beta, 0, 1) and HardSwish(x) = x * HardSigmoid(x) with alpha 1/6, beta 1/2 have no
# integer kernel, but alpha * x is x's own UINT8 codes read with alpha times its scale, and the clip is the saturation of
# a UINT8 output with zero point 0 and scale <= 1/255: written as QLinearAdd (and QLinearMul), every MobileNetV3 block
# stays in UINT8 instead of dequantizing around each activation
HARD_ACTIVATIONS = {"HardSigmoid", "HardSwish"}
# PRelu(x) = max(x, slope * x) where every slope is at most 1: slope * x on x's own UINT8 grid (QLinearMul with the
# slopes as UINT8 codes), then Max of the two code tensors, which on one grid is the codes of the max (with a negative
# slope, slope * x can pass x's largest value: then both go onto the output's own grid, x by a QLinearMul by 1); where
# a slope is above 1 (TFLite's MediaPipe nets mix them), that channel's PRelu is min(x, slope * x): a Min of the same two
# code tensors beside the Max, and a Max and a Min with constant codes per channel pick each one's; onnxruntime has no
# integer PRelu, and its float one between a DequantizeLinear and a QuantizeLinear took 4.2 ms on 64 channels of 112x112
# at one thread, more than the 3x3 convolution beside it (2.3 ms), where this form takes 0.3 ms
SLOPE_ACTIVATIONS = {"PRelu"}
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


def _unsupported(text: str) -> Reason:
    return Reason(QuantReason.UNSUPPORTED, text)


def weighted(planner: Planner, node: onnx.NodeProto) -> Reason:
    """A layer with a constant weight: INT8 per-channel weight, quantized input, INT32 bias where it fuses."""
    op = node.op_type
    if len(node.input) < 2:
        return _unsupported("no weight input")
    activation, weight = node.input[0], node.input[1]
    output_layer = Reason(QuantReason.OUTPUT_LAYER, "output layer kept in float: its rounding errors reach the result directly (--output-layers int8 quantizes it)")
    if weight not in planner.constants:
        source = planner.producer.get(weight)
        if source is not None and source.op_type == "Transpose" and source.input and source.input[0] in planner.constants:
            # left unfolded because folding would copy it: other nodes read the table too (an output projection tied to the
            # token embedding), or the weights are too big to hold twice
            if node.name in planner.output_layers:
                return output_layer
            return _unsupported("weight is a constant read through a Transpose that folding left in place (a table other nodes also read, "
                                "or weights too big to copy): kept in float")
        if op == "MatMul" and planner.is_float_activation(weight):
            return activation_matmul(planner, node)
        if source is not None:
            return _unsupported(f"weight is computed at run time by {source.op_type}, not stored as a constant initializer")
        return _unsupported("weight is not a constant initializer")
    if not planner.is_float_activation(activation):
        return _unsupported("input is not a float activation")
    if node.name in planner.output_layers:
        return output_layer
    array = to_array(planner.inits[weight])
    if array.dtype != np.float32:
        return _unsupported(f"weight is {array.dtype}, not float32")
    if op == "MatMul" and array.ndim != 2:
        return _unsupported(f"batched constant weight of rank {array.ndim}")
    if op == "Gemm":
        if int(node_attr(node, "transA", 0)):
            return _unsupported("Gemm with transA=1")
        if float(node_attr(node, "alpha", 1.0)) != 1.0:
            return _unsupported("Gemm with alpha != 1")
    if not planner.add_weight(node, weight):
        return _unsupported("weight is shared with a layer that quantizes it on another axis")
    planner.quantize_input(activation, node)
    if planner.plan.signed:
        return Reason(QuantReason.QDQ_INPUTS, "INT8 input and per-channel weights (Q/DQ on inputs)")
    bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if op == "MatMul" and not planner.bias_fuses(node, activation):
        return Reason(QuantReason.INTEGER_KERNEL, "MatMulIntegerToFloat: UINT8 input, INT8 per-channel weights, float output, float bias "
                      "(onnxruntime builds no QGemm here: an INT32 bias would be dequantized on every run)")
    if op == "MatMul":
        bias_name = planner.matmul_bias(node)
    if bias_name is not None:
        planner.add_bias(node, bias_name, activation, weight)
    if op == "Conv":
        planner.quantize_output(node, allow_fold=True)
        return Reason(QuantReason.INTEGER_KERNEL, "QLinearConv: UINT8 input and output, INT8 per-channel weights, INT32 bias")
    if op == "MatMul" and bias_name is None:
        planner.plan.zero_bias_for[node.name] = (activation, weight)
        return Reason(QuantReason.INTEGER_KERNEL, "QGemm: UINT8 input, INT8 per-channel weights, float output")
    if _relu_follows(planner, node, bias_name):
        # onnxruntime fuses a float-output Gemm with the Relu after it into a float FusedGemm that dequantizes its
        # weights on every run; a quantized output (the Relu folded into its quantizer) keeps the integer QGemm
        planner.quantize_output(planner.consumers[node.output[0]][0] if op == "MatMul" else node, allow_fold=True)
        return Reason(QuantReason.INTEGER_KERNEL, "QGemm: UINT8 input and output (the Relu after it folded), INT8 per-channel weights, INT32 bias")
    return Reason(QuantReason.INTEGER_KERNEL, "QGemm: UINT8 input, INT8 per-channel weights, INT32 bias, float output")


# what a com.microsoft Attention may set for QAttention to compute the same: no past state, rotary embedding, causal
# mask or unequal query/key/value widths
FUSED_ATTENTION_ATTRIBUTES = {"num_heads", "scale", "mask_filter_value", "unidirectional"}
CONTRIB_QUANTIZED = {"Attention"}  # com.microsoft operators with a rule of their own (on the CPU target)


def fused_attention(planner: Planner, node: onnx.NodeProto) -> Reason:
    """onnxruntime's fused com.microsoft Attention (its transformer optimizer writes one per layer): its input and weight
    quantized, written as QAttention (the same kernel with UINT8 x INT8 products) once Q/DQ are in place."""
    if node.domain != MS_DOMAIN:
        return no_integer_kernel(planner, node)
    from onnxslim.runtime.kernels import runs_quantized_attention

    if not runs_quantized_attention():
        return _unsupported("this onnxruntime has no QAttention kernel that computes fused attention the same way: kept in float")
    unsupported = [a.name for a in node.attribute if a.name not in FUSED_ATTENTION_ATTRIBUTES]
    if unsupported or int(node_attr(node, "unidirectional", 0)):
        return _unsupported(f"fused attention with {', '.join(unsupported) or 'unidirectional=1'}: QAttention does not compute it the same way")
    if len(node.input) > 4 and any(node.input[4:]):
        return _unsupported("fused attention with past state or an attention bias: kept in float")
    activation, weight, bias = node.input[0], node.input[1], node.input[2] if len(node.input) > 2 else ""
    if weight not in planner.constants or not bias or bias not in planner.constants:
        return _unsupported("fused attention whose weight or bias is not a constant initializer")
    if not planner.is_float_activation(activation):
        return _unsupported("input is not a float activation")
    array = to_array(planner.inits[weight])
    if array.dtype != np.float32 or array.ndim != 2 or array.shape[1] != 3 * array.shape[0] or to_array(planner.inits[bias]).shape != (array.shape[1],):
        return _unsupported("fused attention whose weight is not (D, 3D) float32 with a bias of 3D")
    if not planner.add_weight(node, weight):
        return _unsupported("weight is shared with a layer that quantizes it on another axis")
    planner.quantize_input(activation, node)
    return Reason(QuantReason.INTEGER_KERNEL, "QAttention: UINT8 input, INT8 per-column weights, float bias (onnxruntime's fused attention, quantized)")


def _relu_follows(planner: Planner, node: onnx.NodeProto, bias_name: str | None) -> bool:
    """The layer's result (after its bias Add, for a MatMul) is read only by a Relu or Clip that can fold into a quantizer."""
    if planner.plan.signed or bias_name is None:
        return False
    result = node
    if node.op_type == "MatMul":
        result = planner.consumers[node.output[0]][0]  # the bias Add matmul_bias found
    readers = planner.consumers.get(result.output[0], [])
    if len(readers) != 1 or result.output[0] in planner.graph_outputs or readers[0].name in planner.plan.decisions:
        return False
    return planner._foldable_clamp(readers[0]) is not None and planner._allowed(readers[0]) is None


def activation_matmul(planner: Planner, node: onnx.NodeProto) -> Reason:
    """A MatMul of two activations (attention scores and context): QLinearMatMul when asked for."""
    if not planner.config.quantize_attention:
        return Reason(QuantReason.ATTENTION, "activation x activation MatMul (attention) kept in float; --quantize-attention quantizes it")
    a, b = node.input[0], node.input[1]
    if not (planner.is_float_activation(a) and planner.is_float_activation(b)):
        return _unsupported("inputs are not float activations")
    planner.quantize_input(a, node)
    planner.quantize_input(b, node)
    if not planner.plan.signed:
        planner.quantize_output(node, allow_fold=False)
    return Reason(QuantReason.INTEGER_KERNEL, "QLinearMatMul on two quantized activations")


def _inputs_not_quantized() -> Reason:
    return Reason(QuantReason.INPUTS_NOT_QUANTIZED, "inputs are not all quantized, so an integer kernel would need extra quantizers")


def shared_scale(planner: Planner, node: onnx.NodeProto) -> Reason:
    """Data movement (MaxPool, Reshape, ...): runs on UINT8 when its input is the quantized output of a quantized node."""
    data = node.input[0] if node.input else ""
    if not (planner.is_quantized(data) and data in planner.quantized_outputs):
        return _inputs_not_quantized()
    out = node.output[0]
    planner.plan.activations[out] = ActivationQuant(out, observe=out, share=data, rewire_all=True)
    planner.quantized_outputs.add(out)
    return Reason(QuantReason.SHARED_SCALE, "runs on UINT8: same scale before and after")


def code_pad(planner: Planner, node: onnx.NodeProto) -> Reason:
    """A Pad after a quantized layer (BlazeFace's and other TFLite nets' zero channels added to a residual): run on the
    UINT8 codes, padding with the zero point, which is zero exactly; onnxruntime drops no Q/DQ around a Pad, so without
    this the Add it feeds stays in float with a dequantize and a quantize around it."""
    data = node.input[0] if node.input else ""
    if not (planner.is_quantized(data) and data in planner.quantized_outputs):
        return _inputs_not_quantized()
    if default_opset(planner.model) < 11:
        return Reason(QuantReason.UNSUPPORTED, "Pad before opset 11 pads float tensors only")
    mode = text_attr(node, "mode", "constant")
    value = node.input[2] if len(node.input) > 2 else ""
    if mode == "constant" and value:
        if value not in planner.inits or np.any(to_array(planner.inits[value]) != 0):
            return Reason(QuantReason.KEPT_FLOAT, "Pad with a value other than zero: its UINT8 code would round it")
    out = node.output[0]
    planner.plan.activations[out] = ActivationQuant(out, observe=out, share=data, rewire_all=True)
    planner.quantized_outputs.add(out)
    planner.plan.code_pads.add(node.name)
    return Reason(QuantReason.SHARED_SCALE, f"Pad ({mode}) on the UINT8 codes: same scale before and after, zero padded as the zero point")


def integer_unary(planner: Planner, node: onnx.NodeProto) -> Reason:
    """Pooling, Sigmoid, LeakyRelu with a QLinear kernel: quantized input and output."""
    data = node.input[0] if node.input else ""
    if not (planner.is_quantized(data) and data in planner.quantized_outputs):
        return _inputs_not_quantized()
    planner.quantize_input(data, node)
    planner.quantize_output(node, allow_fold=True)
    return Reason(QuantReason.INTEGER_KERNEL, f"QLinear{node.op_type}")


def hard_activation(planner: Planner, node: onnx.NodeProto) -> Reason:
    """HardSigmoid / HardSwish after a quantized layer: QLinearAdd (and QLinearMul) on UINT8, see HARD_ACTIVATIONS."""
    data = node.input[0] if node.input else ""
    if not (planner.is_quantized(data) and data in planner.quantized_outputs):
        return _inputs_not_quantized()
    if node.op_type == "HardSwish":
        alpha, beta = 1.0 / 6.0, 0.5
    else:
        alpha, beta = float(node_attr(node, "alpha", 0.2)), float(node_attr(node, "beta", 0.5))
    if alpha <= 0.0 or beta <= 0.0:
        return Reason(QuantReason.KEPT_FLOAT, f"HardSigmoid with alpha {alpha:g}, beta {beta:g}: not a scale and offset a UINT8 kernel can apply")
    planner.quantize_input(data, node)
    output = planner.quantize_output(node, allow_fold=False)
    # HardSigmoid's clip at 1 is its quantizer's saturation: a method that clips the range lower would cut every gate there
    planner.plan.activations[output].bounded = node.op_type == "HardSigmoid"
    planner.plan.hard_activations[node.name] = (alpha, beta)
    if node.op_type == "HardSwish":
        return Reason(QuantReason.INTEGER_KERNEL, "QLinearAdd + QLinearMul: x * clip(x / 6 + 1/2, 0, 1) on UINT8")
    return Reason(QuantReason.INTEGER_KERNEL, f"QLinearAdd: clip({alpha:g} * x + {beta:g}, 0, 1) on UINT8")


def slope_activation(planner: Planner, node: onnx.NodeProto) -> Reason:
    """PRelu after a quantized layer, every slope a constant at most 1: QLinearMul and Max on UINT8, see SLOPE_ACTIVATIONS (with
    a negative slope, x requantized onto the output's grid first); one slope for every channel, whatever its value:
    QLinearLeakyRelu, a table of every code's exact result."""
    data = node.input[0] if node.input else ""
    if not (planner.is_quantized(data) and data in planner.quantized_outputs):
        return _inputs_not_quantized()
    slope = node.input[1] if len(node.input) > 1 else ""
    if slope not in planner.inits:
        return Reason(QuantReason.KEPT_FLOAT, "PRelu whose slope is computed at run time: kept in float")
    slopes = to_array(planner.inits[slope])
    if slopes.dtype != np.float32 or not slopes.size or not np.isfinite(slopes).all():
        return Reason(QuantReason.KEPT_FLOAT, "PRelu whose slope is not finite float32: kept in float")
    if (slopes == slopes.flat[0]).all():  # one slope for every channel (torch's nn.PReLU() default): LeakyRelu, any slope
        planner.quantize_input(data, node)
        planner.quantize_output(node, allow_fold=True)
        planner.plan.single_slopes[node.name] = float(slopes.flat[0])
        return Reason(QuantReason.INTEGER_KERNEL, f"QLinearLeakyRelu: one slope ({float(slopes.flat[0]):g}) for every channel")
    planner.quantize_input(data, node)
    planner.plan.slope_activations[node.name] = slope
    if slopes.max() > 1.0:
        # in a channel whose slope is above 1, PRelu(x) is min(x, slope * x): both go onto the output's own grid
        planner.quantize_output(node, allow_fold=False)
        return Reason(QuantReason.INTEGER_KERNEL, "2 QLinearMul + Max and Min: max(x, slope * x), min(x, slope * x) where a slope is above 1, on the output's UINT8 grid")
    if slopes.min() < 0.0:
        # slope * x of a negative x and slope is positive, possibly past x's largest value: both go onto the output's own grid
        planner.quantize_output(node, allow_fold=False)
        return Reason(QuantReason.INTEGER_KERNEL, "2 QLinearMul + Max: max(x, slope * x) on the output's UINT8 grid (slopes <= 1, some negative)")
    out = node.output[0]
    # the Max of two code tensors is the codes of the max only on one grid: the output takes x's scale and zero point
    planner.plan.activations[out] = ActivationQuant(out, observe=out, share=data, rewire_all=True)
    planner.quantized_outputs.add(out)
    return Reason(QuantReason.INTEGER_KERNEL, "QLinearMul + Max: max(x, slope * x) on x's UINT8 codes (every slope in [0, 1])")


def integer_binary(planner: Planner, node: onnx.NodeProto) -> Reason:
    """Add/Mul of two quantized tensors (residuals, SE scales), or of one and a constant scalar: QLinearAdd/QLinearMul."""
    if len(node.input) == 2 and all(n in planner.quantized_outputs for n in node.input):
        for name in node.input:
            planner.quantize_input(name, node)
        planner.quantize_output(node, allow_fold=node.op_type == "Add")
        return Reason(QuantReason.INTEGER_KERNEL, f"QLinear{node.op_type}: both inputs already quantized")
    constant = _scalar_operand(planner, node)
    if constant is None:
        return _inputs_not_quantized()
    planner.quantize_input(node.input[1 - constant], node)
    planner.quantize_output(node, allow_fold=False)
    planner.plan.constant_operands[node.name] = constant
    return Reason(QuantReason.INTEGER_KERNEL, f"QLinear{node.op_type}: a quantized input and a constant scalar (one UINT8 code, exact)")


def _scalar_operand(planner: Planner, node: onnx.NodeProto) -> int | None:
    """The index of ``node``'s float scalar constant input when its other input is a quantized output, else None.

    A scalar is one UINT8 code with its own scale, so the constant is exact: an affine step after an
    activation (PP-LCNet's learnable scale and bias) then runs as QLinearMul/QLinearAdd between quantized layers.
    """
    if len(node.input) != 2 or planner.config.scalar_affine != "int8":
        return None
    for index, name in enumerate(node.input):
        other = node.input[1 - index]
        if name in planner.inits and other in planner.quantized_outputs:
            value = to_array(planner.inits[name])
            if value.dtype == np.float32 and value.size == 1 and np.isfinite(value).all():
                return index
    return None


def concat(planner: Planner, node: onnx.NodeProto) -> Reason:
    """Concat of quantized tensors: QLinearConcat, unless calibration finds their ranges too far apart."""
    if not (node.input and all(n in planner.quantized_outputs for n in node.input)):
        return _inputs_not_quantized()
    for name in node.input:
        planner.quantize_input(name, node)
    planner.quantize_output(node, allow_fold=False)
    planner.plan.concat_candidates.append(node.name)
    return Reason(QuantReason.INTEGER_KERNEL, "QLinearConcat")


def unfolded_clamp(planner: Planner, node: onnx.NodeProto) -> Reason:
    """A Relu/Clip the layer before it did not fold into its quantizer."""
    if node.input and node.input[0] in planner.quantized_outputs and planner._foldable_clamp(node) is None:
        if any(bound and bound not in planner.constants for bound in node.input[1:]):
            return Reason(QuantReason.KEPT_FLOAT, "a Clip whose bounds are computed at run time cannot fold into a quantizer")
        return Reason(QuantReason.KEPT_FLOAT, "a Clip whose floor is above 0 or ceiling below 0: the UINT8 range before it holds 0, "
                                              "so saturating it cannot clamp like the Clip")
    return Reason(QuantReason.INPUTS_NOT_QUANTIZED, "not directly after a quantized layer, so it cannot be folded")


def kept_float(planner: Planner, node: onnx.NodeProto) -> Reason:
    return Reason(QuantReason.KEPT_FLOAT, KEPT_FLOAT_REASONS[node.op_type])


def no_integer_kernel(planner: Planner, node: onnx.NodeProto) -> Reason:
    return Reason(QuantReason.NO_INTEGER_KERNEL, f"no integer kernel for {node.op_type} on this target")


CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})


def control_flow(planner: Planner, node: onnx.NodeProto) -> Reason:
    # the layers of its branches or body are planned one by one (onnxslim.quant.bodies), each with its own decision
    return Reason(QuantReason.KEPT_FLOAT, f"{node.op_type} itself runs in float; the layers inside its subgraphs have decisions of their own")


def inputs_of_weighted_only(planner: Planner, node: onnx.NodeProto) -> Reason:
    if node.op_type in KEPT_FLOAT_REASONS:
        return kept_float(planner, node)
    return Reason(QuantReason.NO_INTEGER_KERNEL, "only the inputs of weighted layers are quantized for this target")


CPU_RULES: dict[str, Rule] = {
    **{op: kept_float for op in KEPT_FLOAT_REASONS},
    **{op: shared_scale for op in PASS_THROUGH},
    **{op: integer_unary for op in INTEGER_UNARY | CPU_INTEGER_ACTIVATIONS},
    **{op: integer_binary for op in INTEGER_BINARY},
    **{op: hard_activation for op in HARD_ACTIVATIONS},
    **{op: slope_activation for op in SLOPE_ACTIVATIONS},
    **{op: unfolded_clamp for op in REMOVABLE},
    "Concat": concat,
    "Pad": code_pad,
    "Attention": fused_attention,
    **{op: weighted for op in WEIGHTED_CPU},
    **{op: control_flow for op in CONTROL_FLOW},
}
SIGNED_RULES: dict[str, Rule] = {**{op: weighted for op in WEIGHTED_GPU}, **{op: control_flow for op in CONTROL_FLOW}}


def rule_for(op_type: str, signed: bool) -> Rule:
    """The rule for ``op_type`` on a signed (GPU) or the CPU target."""
    if signed:
        return SIGNED_RULES.get(op_type, inputs_of_weighted_only)
    return CPU_RULES.get(op_type, no_integer_kernel)
