"""Read a scale and shift by scalars after a quantized tensor out of its UINT8 codes, instead of computing them.

PP-LCNet's learnable affine blocks put ``y = a * h + b`` (constant scalars) after
every activation. Quantized, that is h's codes -> QLinearMul -> QLinearAdd ->
y's codes: two extra integer ops per block and two extra roundings. But for
``a > 0`` the codes of h already are codes of y: dequantized with scale
``a * s_h`` and zero point ``z_h - k``, ``k = round(b / (a * s_h))``, they give
``a * h + b - e`` with ``e = b - k * a * s_h``, at most half a step. The readers'
DequantizeLinear nodes are pointed at h's codes with those parameters, and the
Mul/Add chain (quantized between its steps or not) disappears.

The remaining shift ``-e`` is put back where it can be: a convolution reading y
gets ``e * (sum of its weights per output channel)`` added to its bias, which
is exact for an unpadded convolution and wrong on the border pixels of a
padded one (by up to half a step of y there, which on a 48-pixel-high text
line is most of the rows). So where a reader is padded, and h's quantizer feeds
nothing else, h's step is first made a little coarser (at most 1/8) so that b
is a whole number of steps and nothing is left over. Every reading
convolution's INT32 bias is requantized at the new input scale, because
onnxruntime's integer convolution reads the INT32 codes as ``input scale *
weight scale`` (the scale of y's old quantizer is gone). A reader that cannot
take a shift (no bias, or not a convolution) is left as it was, unless the
shift is below ``NEGLIGIBLE`` of a step.

Matched: a per-tensor DequantizeLinear read only by a Mul or Add whose other
input is one constant value (a float scalar, or a DequantizeLinear of one
constant code), then any number of such steps, possibly each quantized in
between, ending in a QuantizeLinear whose every reader is a DequantizeLinear.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxslim.ir.graph import node_attr
from onnxslim.ir.tensors import all_value_names, from_array, unique_name
from onnxslim.passes.base import DeclineCode, PassResult
from onnxslim.passes.cleanup import remove_dead_nodes
from onnxslim.passes.matching import GraphIndex

NEGLIGIBLE = 1.0 / 16.0  # a shift below this fraction of y's step needs no compensation
REGRID_STEPS = 8  # a coarser grid for the codes is taken when the shift is at least this many steps (at most 1/8 coarser)
STEPS = ("Mul", "Add")
EDGE_STEPS = 2  # the result's own range may end this many steps inside the codes' (calibrated ranges of h and a * h + b round apart)
INT32_MAX = np.iinfo(np.int32).max


class _Matcher(GraphIndex):
    """Finds scalar affine chains between a quantized tensor and the DequantizeLinear nodes of their result."""

    def per_tensor(self, node: onnx.NodeProto) -> tuple[float, int, np.dtype] | None:
        """Scale, zero point and code type of a Quantize/DequantizeLinear with one constant scale and zero point."""
        scale = self.array(node.input[1]) if len(node.input) > 1 else None
        zero = self.array(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros((), np.uint8)
        if scale is None or zero is None or scale.size != 1 or zero.size != 1 or zero.dtype not in (np.uint8, np.int8):
            return None
        value = float(scale.reshape(()))
        return (value, int(zero.reshape(())), zero.dtype) if np.isfinite(value) and value > 0 else None

    def constant_value(self, name: str) -> float | None:
        """The one value of a float scalar constant or of a DequantizeLinear of one constant code."""
        value = self.scalar(name)
        if value is not None:
            return value if np.isfinite(value) else None
        node = self.producers.get(name)
        if node is None or node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
            return None
        codes, params = self.array(node.input[0]), self.per_tensor(node)
        if codes is None or params is None or codes.size != 1:
            return None
        return (float(codes.reshape(())) - params[1]) * params[0]

    def single_reader(self, tensor: str) -> onnx.NodeProto | None:
        readers = self.readers(tensor)
        return readers[0] if len(readers) == 1 and readers[0].domain in ("", "ai.onnx") else None

    def chain(self, start: onnx.NodeProto) -> _Chain | None:
        """The affine steps after ``start`` up to a QuantizeLinear read only by DequantizeLinear nodes, or None."""
        chain = _Chain()
        tensor = start.output[0]
        while True:
            node = self.single_reader(tensor)
            if node is None:
                return None
            if node.op_type in STEPS and len(node.input) == 2:
                value = self.constant_value(self.other(node, tensor))
                if value is None:
                    return None
                chain.step(node, value)
                tensor = node.output[0]
                continue
            quantizer = self.per_tensor(node) if node.op_type == "QuantizeLinear" else None
            if quantizer is None or not chain.steps or node.output[0] in self.outputs:
                return None
            readers = self.consumers.get(node.output[0], [])
            if not readers or any(r.op_type != "DequantizeLinear" or self.per_tensor(r) != quantizer for r in readers):
                return None
            chain.operations.append(("round", *quantizer))
            follower = self.single_reader(readers[0].output[0]) if len(readers) == 1 else None
            if follower is not None and follower.op_type in STEPS and self.constant_value(self.other(follower, readers[0].output[0])) is not None:
                chain.passed += [node, readers[0]]  # a quantized step in between: go on through it
                tensor = readers[0].output[0]
                continue
            chain.final, chain.readers = node, readers
            return chain


@dataclass
class _Chain:
    """Scalar affine steps ``a * x + b`` from a DequantizeLinear to the QuantizeLinear of their result."""

    scale: float = 1.0
    shift: float = 0.0
    passed: list = field(default_factory=list)  # the nodes between the first DequantizeLinear and final
    operations: list = field(default_factory=list)  # ("mul" | "add", value) and ("round", scale, zero point, code type), in order
    final: onnx.NodeProto | None = None
    readers: list = field(default_factory=list)

    @property
    def steps(self) -> int:
        return sum(1 for operation in self.operations if operation[0] != "round")

    @property
    def step_of_result(self) -> float:
        """The step of the final quantizer (the last operation once the chain is complete)."""
        return self.operations[-1][1]

    def step(self, node: onnx.NodeProto, value: float) -> None:
        if node.op_type == "Mul":
            self.scale, self.shift = self.scale * value, self.shift * value
        else:
            self.shift += value
        self.passed.append(node)
        self.operations.append((node.op_type.lower(), value))

    def computed(self, values: np.ndarray) -> np.ndarray:
        """What the chain gives for dequantized ``values``, with every quantizer's rounding and saturation."""
        values = values.astype(np.float64)
        for operation in self.operations:
            if operation[0] == "mul":
                values = values * operation[1]
            elif operation[0] == "add":
                values = values + operation[1]
            else:
                _, step, zero, code_type = operation
                limits = np.iinfo(code_type)
                values = (np.clip(np.round(values / step) + zero, limits.min, limits.max) - zero) * step
        return values

    def rounding_allowance(self) -> float:
        """Half a step of each quantizer in the chain, carried to the result by the scales after it."""
        allowance, later_scale = 0.0, 1.0
        for operation in reversed(self.operations):
            if operation[0] == "mul":
                later_scale *= abs(operation[1])
            elif operation[0] == "round":
                allowance += 0.5 * operation[1] * later_scale
        return allowance


class _Bias:
    """A convolution's INT32 bias, requantized for a new input scale with a shift added to the input."""

    def __init__(self, node: onnx.NodeProto, weight_scale: np.ndarray, weight_sums: np.ndarray, values: np.ndarray):
        self.node = node  # the bias's DequantizeLinear
        self.weight_scale = weight_scale  # per output channel
        self.weight_sums = weight_sums  # the dequantized weights summed per output channel
        self.values = values  # the bias as it dequantizes now

    @classmethod
    def of(cls, index: _Matcher, conv: onnx.NodeProto) -> _Bias | None:
        """``conv``'s INT32 bias with what requantizing it needs, or None when it has none of that form."""
        weight = index.producers.get(conv.input[1])
        bias = index.producers.get(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
        if weight is None or bias is None or weight.op_type != "DequantizeLinear" or bias.op_type != "DequantizeLinear":
            return None
        codes, scale = index.array(weight.input[0]), index.array(weight.input[1])
        zero = index.array(weight.input[2]) if len(weight.input) > 2 and weight.input[2] else np.zeros((), np.int8)
        stored, bias_scale = index.array(bias.input[0]), index.array(bias.input[1])
        if any(v is None for v in (codes, scale, zero, stored, bias_scale)) or stored.dtype != np.int32 or codes.ndim < 3:
            return None
        if not (index.private(bias.output[0]) and index.private(bias.input[0]) and index.private(bias.input[1])):
            return None
        channels = codes.shape[0]
        if scale.size not in (1, channels) or zero.size not in (1, channels) or stored.shape != (channels,) or bias_scale.size not in (1, channels):
            return None
        if scale.size > 1 and node_attr(weight, "axis", 1) != 0:
            return None
        shape = (-1,) + (1,) * (codes.ndim - 1)
        weights = (codes.astype(np.float64) - zero.reshape(shape if zero.size > 1 else ()).astype(np.float64)) * scale.reshape(shape if scale.size > 1 else ())
        return cls(bias, np.broadcast_to(scale.reshape(-1).astype(np.float64), (channels,)), weights.reshape(channels, -1).sum(axis=1),
                   stored.astype(np.float64) * bias_scale.reshape(-1).astype(np.float64))

    def requantized(self, input_scale: float, shift: float) -> tuple[np.ndarray, np.ndarray] | None:
        """INT32 codes and scales for ``input_scale`` with ``shift`` added to every input value; None when a code would overflow."""
        scale = input_scale * self.weight_scale
        codes = np.round((self.values + shift * self.weight_sums) / scale)
        if not np.isfinite(codes).all() or np.abs(codes).max(initial=0) > INT32_MAX:
            return None
        return codes.astype(np.int32), scale.astype(np.float32)

    def write(self, index: _Matcher, codes: np.ndarray, scale: np.ndarray) -> None:
        index.inits[self.node.input[0]].CopyFrom(from_array(codes, self.node.input[0]))
        index.inits[self.node.input[1]].CopyFrom(from_array(scale, self.node.input[1]))


def _dequantizes_int32(index: _Matcher, node: onnx.NodeProto) -> bool:
    """True when an input of ``node`` is an INT32 constant dequantized: a bias whose scale is tied to the input's."""
    for name in node.input:
        producer = index.producers.get(name)
        codes = index.array(producer.input[0]) if producer is not None and producer.op_type == "DequantizeLinear" else None
        if codes is not None and codes.dtype == np.int32:
            return True
    return False


def _compensating_biases(index: _Matcher, readers: list[onnx.NodeProto], residual_steps: float) -> list[_Bias] | None:
    """The biases that take the remaining shift for every reader of the result, or None when one reader cannot."""
    negligible = abs(residual_steps) <= NEGLIGIBLE
    biases = []
    for reader in readers:
        if reader.output[0] in index.outputs and not negligible:
            return None
        for node in index.consumers.get(reader.output[0], []):
            bias = _Bias.of(index, node) if node.op_type == "Conv" and node.domain in ("", "ai.onnx") and node.input[0] == reader.output[0] else None
            if bias is not None:
                biases.append(bias)
            elif not negligible or _dequantizes_int32(index, node):
                return None
    return biases


def _compensated_exactly(index: _Matcher, readers: list[onnx.NodeProto]) -> bool:
    """True when every reader of the result is an unpadded convolution: a shift put into its bias is exact everywhere."""
    for reader in readers:
        if reader.output[0] in index.outputs:
            return False
        for node in index.consumers.get(reader.output[0], []):
            if node.op_type != "Conv" or any(node_attr(node, "pads", [0])) or node_attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID", "NOTSET", "VALID"):
                return False
    return True


def _coarser_grid(index: _Matcher, start: onnx.NodeProto, scale: float, shift: float, source: tuple) -> tuple[onnx.NodeProto, float, int] | None:
    """The QuantizeLinear of the codes, with a step a little coarser on which ``shift`` is a whole number of steps of ``scale`` times it.

    Only where that quantizer feeds nothing else and the step grows by at most 1 / REGRID_STEPS.
    """
    quantizer = index.producers.get(start.input[0])
    if quantizer is None or quantizer.op_type != "QuantizeLinear" or quantizer.domain not in ("", "ai.onnx") or not index.private(start.input[0]):
        return None
    if index.per_tensor(quantizer) != source:
        return None
    step, zero, code_type = source
    whole = math.floor(abs(shift) / (scale * step))
    if whole < REGRID_STEPS:
        return None
    coarser = abs(shift) / (scale * whole)
    limits = np.iinfo(code_type)
    return quantizer, coarser, int(min(max(round(zero * step / coarser), limits.min), limits.max))


def scalar_affines_into_dequantize(model: onnx.ModelProto) -> PassResult:
    """Replace each matched scalar affine chain by DequantizeLinear parameters (see the module docstring)."""
    return fold_scalar_affines(model)[0]


def fold_scalar_affines(model: onnx.ModelProto) -> tuple[PassResult, dict[str, str]]:
    """:func:`scalar_affines_into_dequantize`, and for each Mul/Add it removed, the change that replaced it."""
    result = PassResult("scalar-affines-into-dequantize")
    removed: dict[str, str] = {}
    graph = model.graph
    index = _Matcher(graph)
    taken = all_value_names(graph) | {n.name for n in graph.node}
    seen: set[int] = set()  # nodes of chains already looked at (the index entries of replaced ones are stale)
    for start in list(graph.node):
        if id(start) in seen or start.op_type != "DequantizeLinear" or start.domain not in ("", "ai.onnx") or start.input[0] in index.constants:
            continue
        source = index.per_tensor(start)
        found = index.chain(start) if source is not None else None
        if found is None:
            continue
        scale, shift, final, readers = found.scale, found.shift, found.final, found.readers
        seen |= {id(n) for n in (final, *found.passed, *readers)}
        step_scale, zero, code_type = source
        if scale <= 0.0:
            result.decline(final.name, DeclineCode.UNSUPPORTED_FORM, f"a scale of {scale:g}: a negative scale has no dequantization")
            continue
        new_scale = scale * step_scale
        regrid = None
        if abs(shift / new_scale - round(shift / new_scale)) > NEGLIGIBLE and not _compensated_exactly(index, readers):
            # a shift put into a padded convolution's bias is wrong on the border: a grid on which it is whole steps instead
            regrid = _coarser_grid(index, start, scale, shift, source)
            if regrid is not None:
                step_scale, zero = regrid[1], regrid[2]
                new_scale = scale * step_scale
        steps = round(shift / new_scale)
        new_zero = zero - steps
        limits = np.iinfo(code_type)
        if not limits.min <= new_zero <= limits.max:
            result.decline(final.name, DeclineCode.UNSUPPORTED_FORM, f"the shift {shift:g} moves the zero point to {new_zero}, outside {np.dtype(code_type).name}")
            continue
        residual = shift - steps * new_scale
        every_code = np.arange(limits.min, limits.max + 1, dtype=np.float64)
        values = (every_code - zero) * step_scale
        # over the values the codes held before (a coarser grid reaches a little further, where the data never went)
        held = (values >= (limits.min - source[1]) * source[0] - 1e-6 * source[0]) & (values <= (limits.max - source[1]) * source[0] + 1e-6 * source[0])
        departure = np.abs(found.computed(values[held]) - (every_code[held] - new_zero) * new_scale).max()
        if departure > found.rounding_allowance() + abs(residual) + EDGE_STEPS * found.step_of_result:
            result.decline(final.name, DeclineCode.UNSUPPORTED_FORM, f"the quantizers of the chain clamp its values (by up to {departure:g}): the saturation is part of what it computes")
            continue
        biases = _compensating_biases(index, readers, residual / new_scale)
        requantized = [bias.requantized(new_scale, residual) for bias in biases] if biases is not None else None
        if requantized is None:
            result.decline(final.name, DeclineCode.UNSUPPORTED_FORM, f"a reader of {final.input[0]} cannot take the remaining shift of {residual / new_scale:.2f} step")
            continue
        if any(r is None for r in requantized):
            result.decline(final.name, DeclineCode.UNSUPPORTED_FORM, "a requantized bias would overflow INT32")
            continue
        for bias, (codes, bias_scale) in zip(biases, requantized):
            bias.write(index, codes, bias_scale)
        if regrid is not None:
            quantizer = regrid[0]
            step_name, zero_name = unique_name(f"{quantizer.input[0]}_coarser_scale", taken), unique_name(f"{quantizer.input[0]}_coarser_zero_point", taken)
            graph.initializer.extend([from_array(np.asarray(step_scale, np.float32), step_name), from_array(np.asarray(zero, code_type), zero_name)])
            quantizer.input[1], quantizer.input[2] = step_name, zero_name
        scale_name, zero_name = unique_name(f"{final.input[0]}_from_codes_scale", taken), unique_name(f"{final.input[0]}_from_codes_zero_point", taken)
        graph.initializer.extend([from_array(np.asarray(new_scale, np.float32), scale_name), from_array(np.asarray(new_zero, code_type), zero_name)])
        for reader in readers:
            del reader.input[:]
            reader.input.extend([start.input[0], scale_name, zero_name])
        coarser = f"; their step {regrid[1] / source[0]:.3f}x as coarse, so the shift is {abs(steps)} whole steps" if regrid is not None else ""
        result.change(f"{final.input[0]}: {scale:g} * x + {shift:g} read from the codes of {start.input[0]} (scale {new_scale:g}, zero point {new_zero}{coarser})")
        removed |= {node.name: result.changes[-1] for node in found.passed if node.op_type in STEPS}
    if result.modified:
        remove_dead_nodes(model)
    return result, removed
