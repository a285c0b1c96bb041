"""Turn a :class:`~onnxslim.quant.plan.QuantPlan` and its parameters into a QDQ model.

Contract: takes the prepared float model (not modified), the plan, and the
scale/zero point of every planned activation; returns a new model in which
every planned activation passes through QuantizeLinear -> DequantizeLinear,
weights are stored as INT8 with a DequantizeLinear, biases as INT32 with scale
input_scale * weight_scale, folded Relu/Clip nodes are gone, and graph inputs
and outputs keep their names, types and shapes.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from onnxslim.ir.graph import text_attr, topological_sort
from onnxslim.ir.io import copy_leaving_out
from onnxslim.ir.mapped import ArrayStore, has_mapped
from onnxslim.ir.scopes import all_nodes
from onnxslim.ir.tensors import all_value_names, initializer_map, outer_references, subgraphs, tensor_elements, to_array, unique_name
from onnxslim.passes.cleanup import remove_dead_nodes
from onnxslim.quant.decisions import QuantPlan
from onnxslim.quant.params import BIAS_CODES, quantize_bias, quantize_weight, weight_params
from onnxslim.quant.stored import MIN_ELEMENTS, restored_from


class _Emitter:
    """Builds the QDQ graph: new initializers and nodes with unique names, then the rewired copy of the float graph."""

    def __init__(self, model: onnx.ModelProto, plan: QuantPlan, reserved: frozenset[str] | set[str] = frozenset()):
        # the float weights INT8 codes replace are read from ``model``, not copied (on disk when mapped: copied as they are)
        self.left_out = {} if has_mapped(model) else {t.name: t for t in model.graph.initializer if t.name in plan.weights}
        self.model = copy_leaving_out(model, set(self.left_out))
        self.source_order = {t.name: index for index, t in enumerate(model.graph.initializer)}
        self.graph = self.model.graph
        self.plan = plan
        self.taken = all_value_names(model.graph) | {n.name for n in model.graph.node} | set(reserved)
        self.inits = {**initializer_map(self.graph), **self.left_out}
        self.new_nodes: list[onnx.NodeProto] = []
        self.weight_scales: dict[str, np.ndarray] = {}
        self.weight_codes: dict[str, tuple[str, np.ndarray, int | None]] = {}  # weight -> (its INT8 codes' name, scales, axis)
        self.store = ArrayStore(self.model)

    def name(self, base: str) -> str:
        return unique_name(base, self.taken)

    def constant(self, base: str, array: np.ndarray) -> str:
        name = self.name(base)
        tensor = self.store.tensor(np.asarray(array), name)
        self.graph.initializer.append(tensor)
        self.inits[name] = tensor
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> None:
        self.new_nodes.append(helper.make_node(op, inputs, [output], name=self.name(f"{output}_{op}"), **attrs))

    def dequantize(self, quantized: str, scale: str, zero: str, output: str, axis: int | None) -> None:
        attrs = {} if axis is None else {"axis": axis}
        self.node("DequantizeLinear", [quantized, scale, zero], output, **attrs)

    # ------------------------------------------------------------ weights and biases
    def weights(self, params=None) -> dict[str, str]:
        replaced: dict[str, str] = {}
        floors = self._scales_biases_need(params or {})
        for name, spec in self.plan.weights.items():
            array = to_array(self.inits[name]).astype(np.float32)
            scales = weight_params(array, spec.axis, spec.levels)
            if spec.axis is not None and name in floors and floors[name].shape == scales.shape:
                scales = np.maximum(scales, floors[name]).astype(np.float32)
            self.weight_scales[name] = scales
            codes = quantize_weight(array, scales, spec.axis, spec.levels)
            quantized = self.constant(f"{name}_quantized", codes)
            self.weight_codes[name] = (quantized, scales, spec.axis)
            scale = self.constant(f"{name}_scale", scales)
            zero = self.constant(f"{name}_zero_point", np.zeros(scales.shape, np.int8))
            output = self.name(f"{name}_dequantized")
            self.dequantize(quantized, scale, zero, output, spec.axis)
            replaced[name] = output
        nodes = {n.name: n for n in self.graph.node}
        for name, readers in self.plan.weight_readers.items():
            for reader in readers:
                node = nodes[reader]
                node.input[1] = replaced[name]
        return replaced

    def _scales_biases_need(self, params) -> dict[str, np.ndarray]:
        """Per weight, the smallest per-channel scales at which each INT32 bias it meets keeps its value.

        A channel whose weights are all near zero gets a tiny scale, and its bias (input scale times that
        scale per code) then needs more than INT32 holds: it used to be clipped, turning a constant channel
        into zero. Such a channel's scale is raised until its bias fits in BIAS_CODES; its weights, next to
        nothing, round the same either way.
        """
        floors: dict[str, np.ndarray] = {}
        for spec in self.plan.biases:
            if not spec.tensor or spec.activation not in params or spec.tensor not in self.inits:
                continue
            bias = np.abs(to_array(self.inits[spec.tensor]).astype(np.float64)).reshape(-1)
            need = (bias / (float(params[spec.activation][0]) * BIAS_CODES)).astype(np.float32)
            floors[spec.weight] = np.maximum(floors[spec.weight], need) if spec.weight in floors and floors[spec.weight].shape == need.shape else need
        return floors

    def bias(self, bias_name: str, activation: str, weight: str, params) -> str:
        scale_in = params[activation][0]
        bias = to_array(self.inits[bias_name]) if bias_name else None
        weight_scales = self.weight_scales[weight]
        columns = weight_scales.size if weight_scales.ndim else (bias.size if bias is not None else 1)
        if bias is None:
            bias = np.zeros(columns, np.float32)
        full_scales = np.broadcast_to(weight_scales, (bias.size,)) if weight_scales.ndim == 0 else weight_scales
        quantized, scale = quantize_bias(bias, scale_in, np.asarray(full_scales, np.float32))
        base = bias_name or f"{weight}_zero_bias"
        q = self.constant(f"{base}_quantized", quantized)
        s = self.constant(f"{base}_scale", scale)
        z = self.constant(f"{base}_zero_point", np.zeros(scale.shape, np.int32))
        output = self.name(f"{base}_dequantized")
        self.dequantize(q, s, z, output, 0)
        return output

    def biases(self, params) -> None:
        nodes = {n.name: n for n in self.graph.node}
        for spec in self.plan.biases:
            output = self.bias(spec.tensor, spec.activation, spec.weight, params)
            for node in self.graph.node:
                if node.name == spec.node and node.op_type in ("Conv", "Gemm"):
                    node.input[2] = output
            if nodes[spec.node].op_type == "MatMul":
                matmul_out = nodes[spec.node].output[0]
                for node in self.graph.node:
                    if node.op_type == "Add" and matmul_out in node.input:
                        for index, name in enumerate(node.input):
                            if name == spec.tensor:
                                node.input[index] = output
        for matmul_name, (activation, weight) in self.plan.zero_bias_for.items():
            node = nodes[matmul_name]
            zero = self.bias("", activation, weight, params)
            product = self.name(f"{node.output[0]}_product")
            final = node.output[0]
            node.output[0] = product
            self.node("Add", [product, zero], final)

    # ------------------------------------------------------------ activations
    def activations(self, params) -> None:
        producers = {o: n for n in list(self.graph.node) + self.new_nodes for o in n.output if o}
        folded = set(self.plan.folded_nodes)
        for key, spec in self.plan.activations.items():
            scale_value, zero_value = params[key]
            scale = self.constant(f"{spec.tensor}_scale", np.asarray(scale_value, np.float32))
            zero = self.constant(f"{spec.tensor}_zero_point", np.asarray(zero_value))
            quantized = self.name(f"{spec.tensor}_quantized")
            if spec.folded_into:
                self.node("QuantizeLinear", [spec.tensor, scale, zero], quantized)
                self.dequantize(quantized, scale, zero, spec.folded_into, None)
            elif spec.rewire_all:
                producer = producers.get(spec.tensor)
                if producer is None:
                    raise AssertionError(f"tensor {spec.tensor} is quantized for its producer but has none")
                source = self.name(f"{spec.tensor}_float")
                producer.output[list(producer.output).index(spec.tensor)] = source
                self.node("QuantizeLinear", [source, scale, zero], quantized)
                self.dequantize(quantized, scale, zero, spec.tensor, None)
            else:
                output = self.name(f"{spec.tensor}_dequantized")
                self.node("QuantizeLinear", [spec.tensor, scale, zero], quantized)
                self.dequantize(quantized, scale, zero, output, None)
                for node in self.graph.node:
                    if node.name in spec.readers:
                        for index, name in enumerate(node.input):
                            if name == spec.tensor:
                                node.input[index] = output
        kept = [n for n in self.graph.node if n.name not in folded]
        del self.graph.node[:]
        self.graph.node.extend(kept)

    def _added_pairs(self) -> tuple[dict[str, onnx.NodeProto], dict[str, onnx.NodeProto]]:
        """The DequantizeLinear nodes added so far by the tensor each writes, and the QuantizeLinear nodes by the tensor each reads."""
        dequantizers = {n.output[0]: n for n in self.new_nodes if n.op_type == "DequantizeLinear"}
        quantizers = {n.input[0]: n for n in self.new_nodes if n.op_type == "QuantizeLinear"}
        return dequantizers, quantizers

    def hard_activations(self) -> None:
        """Rewrite each planned HardSigmoid / HardSwish (already between a DequantizeLinear and a QuantizeLinear).

        HardSigmoid(x) = clip(alpha * x + beta, 0, 1): x's UINT8 codes read with alpha times x's scale, plus beta,
        into the node's own output quantizer, whose zero point 0 clamps at 0 (its calibrated top is at most 1).
        HardSwish(x) = x * that gate, with the gate on a fixed UINT8 grid of step 1/255 so it clamps at 1 exactly.
        onnxruntime fuses the Add and Mul between Q/DQ into QLinearAdd and QLinearMul.
        """
        if not self.plan.hard_activations:
            return
        dequantizers, _ = self._added_pairs()
        replaced = set()
        for node in self.graph.node:
            if node.name not in self.plan.hard_activations:
                continue
            alpha, beta = self.plan.hard_activations[node.name]
            source = dequantizers[node.input[0]]
            codes, scale, zero = source.input
            base = node.output[0]
            scaled = self.name(f"{base}_scaled")
            self.dequantize(codes, self.constant(f"{base}_scaled_scale", np.asarray(to_array(self.inits[scale]) * alpha, np.float32)), zero, scaled, None)
            offset = self.name(f"{base}_offset")
            self.dequantize(self.constant(f"{base}_offset_quantized", np.asarray(1, np.uint8)), self.constant(f"{base}_offset_scale", np.asarray(beta, np.float32)),
                            self.constant(f"{base}_offset_zero_point", np.asarray(0, np.uint8)), offset, None)
            if node.op_type == "HardSigmoid":
                self.node("Add", [scaled, offset], node.output[0])
            else:
                gate_scale = self.constant(f"{base}_gate_scale", np.asarray(1.0 / 255.0, np.float32))
                gate_zero = self.constant(f"{base}_gate_zero_point", np.asarray(0, np.uint8))
                gate, gate_codes, gate_value = self.name(f"{base}_gate"), self.name(f"{base}_gate_quantized"), self.name(f"{base}_gate_dequantized")
                self.node("Add", [scaled, offset], gate)
                self.node("QuantizeLinear", [gate, gate_scale, gate_zero], gate_codes)
                self.dequantize(gate_codes, gate_scale, gate_zero, gate_value, None)
                self.node("Mul", [node.input[0], gate_value], node.output[0])
            replaced.add(node.name)
        kept = [n for n in self.graph.node if n.name not in replaced]
        del self.graph.node[:]
        self.graph.node.extend(kept)

    def slope_activations(self) -> None:
        """Rewrite each planned PRelu (between x's DequantizeLinear and the QuantizeLinear of its output, which has x's
        scale and zero point where every slope is in [0, 1]) as max(x, slope * x) on UINT8 codes: the PRelu becomes a
        Mul by the slopes as UINT8 codes, quantized on the output's grid, and a Max of those codes and x's (requantized
        onto the output's grid first where the grids differ) writes the output's codes; with a slope above 1, the Min
        of the two in those channels. onnxruntime fuses each Mul between
        Q/DQ into QLinearMul and runs Max on UINT8. A PRelu with one slope becomes LeakyRelu instead (its output quantized
        on its own grid).
        """
        for node in self.graph.node:
            if node.name in self.plan.single_slopes:  # one slope: LeakyRelu, which onnxruntime fuses into QLinearLeakyRelu
                node.op_type = "LeakyRelu"
                del node.input[1:]
                node.attribute.append(helper.make_attribute("alpha", self.plan.single_slopes[node.name]))
        if not self.plan.slope_activations:
            return
        dequantizers, quantizers = self._added_pairs()
        for node in self.graph.node:
            if node.name not in self.plan.slope_activations:
                continue
            codes = dequantizers[node.input[0]].input[0]
            quantizer = quantizers[node.output[0]]
            slopes = to_array(self.inits[node.input[1]]).astype(np.float64)
            low, high = min(float(slopes.min()), 0.0), max(float(slopes.max()), 0.0)
            scale = (high - low) / 255.0 if high > low else 1.0
            zero = int(round(-low / scale))
            base = node.output[0]
            if low < 0.0 or high > 1.0:  # the output has a grid of its own: x goes onto it too (a QLinearMul by one exact code)
                one = self.name(f"{base}_one")
                self.dequantize(self.constant(f"{base}_one_quantized", np.asarray(1, np.uint8)), self.constant(f"{base}_one_scale", np.asarray(1.0, np.float32)),
                                self.constant(f"{base}_one_zero_point", np.asarray(0, np.uint8)), one, None)
                moved = self.name(f"{base}_input_on_output_grid")
                self.node("Mul", [node.input[0], one], moved)
                codes = self.name(f"{base}_input_on_output_grid_quantized")
                self.node("QuantizeLinear", [moved, quantizer.input[1], quantizer.input[2]], codes)
            slope_value = self.name(f"{base}_slope_dequantized")
            self.dequantize(self.constant(f"{base}_slope_quantized", np.clip(np.round(slopes / scale) + zero, 0, 255).astype(np.uint8)),
                            self.constant(f"{base}_slope_scale", np.asarray(scale, np.float32)), self.constant(f"{base}_slope_zero_point", np.asarray(zero, np.uint8)),
                            slope_value, None)
            node.op_type = "Mul"
            node.input[1] = slope_value
            result = quantizer.output[0]
            product = quantizer.output[0] = self.name(f"{base}_product_quantized")
            if high <= 1.0:
                self.node("Max", [codes, product], result)
                continue
            # where a slope is above 1, slope * x is the smaller of the two for every x: that channel takes the Min. A
            # channel's floor (0 there, 255 elsewhere) lifts the Min to the Max in the others: Min(Max, Max(Min, floor))
            # picks each channel's in UINT8 (onnxruntime's Where over a mask of the channels took five times as long)
            larger, smaller, lifted = (self.name(f"{base}_{part}_quantized") for part in ("larger", "smaller", "lifted"))
            self.node("Max", [codes, product], larger)
            self.node("Min", [codes, product], smaller)
            self.node("Max", [smaller, self.constant(f"{base}_floor", np.where(slopes <= 1.0, 255, 0).astype(np.uint8))], lifted)
            self.node("Min", [larger, lifted], result)

    def code_pads(self) -> None:
        """Rewrite each planned Pad (between its input's DequantizeLinear and the QuantizeLinear of its output, which share
        one scale and zero point) as a Pad of the input's UINT8 codes whose constant is the zero point: the same codes that
        quantizing the float Pad's output would give, without the dequantize and quantize onnxruntime would run around it."""
        if not self.plan.code_pads:
            return
        dequantizers, quantizers = self._added_pairs()
        replaced = set()
        for node in self.graph.node:
            if node.name not in self.plan.code_pads:
                continue
            codes, _, zero = dequantizers[node.input[0]].input
            quantizer = quantizers[node.output[0]]
            node.input[0] = codes
            if text_attr(node, "mode", "constant") == "constant":
                if len(node.input) < 3:
                    node.input.append(zero)
                node.input[2] = zero
            node.output[0] = quantizer.output[0]
            replaced.add(id(quantizer))
        self.new_nodes = [n for n in self.new_nodes if id(n) not in replaced]

    def constant_operands(self) -> None:
        """Give each planned Add/Mul's scalar constant a DequantizeLinear of one exact UINT8 code, so onnxruntime fuses it.

        v > 0 is code 1 at scale v; v < 0 is code 0 at zero point 1 and scale -v; 0 is code 0. The code array keeps
        the constant's shape, so broadcasting gives the node the output shape it had.
        """
        for node in self.graph.node:
            index = self.plan.constant_operands.get(node.name)
            if index is None:
                continue
            value = to_array(self.inits[node.input[index]])
            v = float(value.reshape(()))
            code, scale, zero = (1, v, 0) if v > 0 else (0, -v, 1) if v < 0 else (0, 1.0, 0)
            base = f"{node.input[index]}_{node.name}"
            output = self.name(f"{base}_dequantized")
            self.dequantize(self.constant(f"{base}_quantized", np.full(value.shape, code, np.uint8)), self.constant(f"{base}_scale", np.asarray(scale, np.float32)),
                            self.constant(f"{base}_zero_point", np.asarray(zero, np.uint8)), output, None)
            node.input[index] = output

    def finish(self) -> onnx.ModelProto:
        self.graph.node.extend(self.new_nodes)
        read = {name for node in all_nodes(self.graph) for name in node.input} | {v.name for v in self.graph.output}
        still_read = []  # a weight float nodes still read, which they cannot read restored from its codes
        for name in self.left_out:
            if name in read and not self._restored_from_codes(name):
                still_read.append(name)
        if still_read:  # back in its place among the model's initializers, before the new ones
            self.graph.initializer.extend(self.left_out[name] for name in still_read)
            ordered = sorted(self.graph.initializer, key=lambda t: self.source_order.get(t.name, len(self.source_order)))
            del self.graph.initializer[:]
            self.graph.initializer.extend(ordered)
        topological_sort(self.graph)
        remove_dead_nodes(self.model)
        return self.model

    def _restored_from_codes(self, name: str) -> bool:
        """Where the nodes that still read a quantized weight in float (a Loop it is handed to) all read it as an input of the
        main graph, they read it restored from its INT8 codes (a Cast and a Mul onnxruntime folds when it loads the model):
        one copy on disk instead of the float weight beside its codes. Small weights, graph outputs and weights read
        inside subgraph bodies keep their float copy."""
        if name not in self.weight_codes or tensor_elements(self.left_out[name]) < MIN_ELEMENTS or any(v.name == name for v in self.graph.output):
            return False
        readers = [node for node in self.graph.node if name in node.input]
        if any(name in outer_references(sub) for node in self.graph.node for sub in subgraphs(node)):
            return False
        codes, scales, axis = self.weight_codes[name]
        rank = len(self.left_out[name].dims)
        shape = [1] * rank
        if axis is not None:
            shape[axis] = scales.size
        nodes, restored = restored_from(codes, np.reshape(scales, shape), self.model.graph, f"{name}_restored", self.taken)
        self.graph.node.extend(nodes)  # finish() has placed the new nodes already; it sorts the graph after this
        for node in readers:
            node.input[:] = [restored if value == name else value for value in node.input]
        return True


def insert_qdq(model: onnx.ModelProto, plan: QuantPlan, params: dict[str, tuple[np.float32, np.integer]], *, reserved: frozenset[str] | set[str] = frozenset()) -> onnx.ModelProto:
    """The QDQ model for ``plan`` with activation ``params`` (tensor -> (scale, zero point)); new tensor and node names avoid ``reserved``.

    Only ``model``'s main graph is rewritten: the bodies of its If/Loop/Scan nodes are left as they are
    (see :mod:`onnxslim.quant.bodies`).
    """
    emitter = _Emitter(model, plan, reserved)
    emitter.weights(params)
    emitter.biases(params)
    emitter.activations(params)
    emitter.hard_activations()
    emitter.slope_activations()
    emitter.code_pads()
    emitter.constant_operands()
    return emitter.finish()
