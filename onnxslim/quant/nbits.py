"""Weight-only low-bit layers: which MatMul/Gemm weights and Gather tables to store in 4 or 8 bits, and the graph rewrite.

MatMul (and Gemm without transposed input or scaling) with a constant 2-D
weight becomes onnxruntime's com.microsoft MatMulNBits (block-wise codes,
float activations); a Gather of a constant table becomes GatherBlockQuantized
(rows stored in blocks along the embedding axis, only the looked-up rows
turned back into float). A weight read by several nodes is stored once and
referenced by every reader.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxslim.ir.graph import MS_DOMAIN, drop_unread_initializers, import_domain, node_attr
from onnxslim.ir.tensors import all_value_names, consumers_map, from_array, initializer_map, to_array, unique_name
from onnxslim.quant.blocks import BlockQuantized, pack
from onnxslim.quant.tables import MIN_TABLE_ELEMENTS

MIN_WEIGHT_ELEMENTS = 1 << 12  # smaller weights are not worth a kernel change
LAYERS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose", "MatMulNBits"})  # a later layer of these averages the errors out
OUTPUT_LAYER_BITS = 8  # the layer that writes a graph output keeps finer steps: its errors are not averaged by later layers


@dataclass(frozen=True)
class WeightChoice:
    """One node whose weight may be stored in low bits, the bits it gets, or why it stays float."""

    node: str
    op_type: str
    weight: str
    transposed: bool = False  # Gemm with transB=1: the stored tensor is W^T
    bits: int = 4
    reason: str | None = None  # None: quantized
    note: str = ""
    by_user: bool = False  # kept in float by the user's --exclude-nodes/--exclude-op-types/--op-types

    @property
    def quantized(self) -> bool:
        return self.reason is None

    @property
    def is_table(self) -> bool:
        return self.op_type == "Gather"


def _feeds_output(node: onnx.NodeProto, outputs: set[str], readers: dict[str, list[onnx.NodeProto]], constants: set[str]) -> bool:
    """Whether ``node``'s result reaches a graph output through ops that are not layers and whose other inputs are constants (bias, reshape, softmax)."""
    queue, seen = deque([(node.output[0], 0)]), set()
    while queue:
        tensor, depth = queue.popleft()
        if tensor in outputs:
            return True
        if depth >= 4 or tensor in seen:
            continue
        seen.add(tensor)
        for reader in readers.get(tensor, []):
            if reader.op_type not in LAYERS and all(name in constants or name == tensor or not name for name in reader.input):
                queue.extend((out, depth + 1) for out in reader.output)
    return False


def plan_weights(
    model: onnx.ModelProto, bits: int, block_size: int, *, excluded=lambda node: None, quantize_output_layers: bool = False
) -> list[WeightChoice]:
    """A choice for every MatMul/Gemm with a constant 2-D float weight and every Gather of a constant float table.

    ``excluded(node)``: the user's reason to keep ``node`` in float, or None.
    """
    weights = initializer_map(model.graph)
    constants = set(weights)
    outputs, readers = {v.name for v in model.graph.output}, consumers_map(model.graph)
    choices = []
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in ("MatMul", "Gemm", "Gather") or len(node.input) < 2:
            continue
        name = node.input[0] if node.op_type == "Gather" else node.input[1]
        tensor = weights.get(name)
        if tensor is None or tensor.data_type != TensorProto.FLOAT or len(tensor.dims) != 2:
            continue
        elements = int(np.prod(tensor.dims))
        transposed = node.op_type == "Gemm" and bool(node_attr(node, "transB", 0))
        reason, chosen_bits, note = None, bits, ""
        user = excluded(node)
        if user is not None:
            reason = user.text
        elif node.op_type == "Gather":
            columns = int(tensor.dims[1])
            if int(node_attr(node, "axis", 0)) != 0:
                reason = "a lookup along another axis than rows"
            elif elements < MIN_TABLE_ELEMENTS:
                reason = f"table of {elements} values: too small to be worth it"
            elif columns % block_size:
                reason = f"rows of {columns} values do not split into blocks of {block_size}"
        elif node.input[0] in constants:
            reason = "both operands are constant"
        elif node.op_type == "Gemm" and (node_attr(node, "transA", 0) or node_attr(node, "alpha", 1.0) != 1.0 or node_attr(node, "beta", 1.0) != 1.0):
            reason = "Gemm with a transposed input or scaling"
        elif node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] and (node.input[2] not in weights or len(weights[node.input[2]].dims) != 1):
            reason = "Gemm whose bias is not a constant vector"
        elif elements < MIN_WEIGHT_ELEMENTS:
            reason = f"weight of {elements} values: too small to be worth it"
        elif bits < OUTPUT_LAYER_BITS and not quantize_output_layers and _feeds_output(node, outputs, readers, constants):
            chosen_bits, note = OUTPUT_LAYER_BITS, f"writes a graph output: {OUTPUT_LAYER_BITS}-bit blocks (--output-layers int8 for {bits})"
        choices.append(WeightChoice(node.name, node.op_type, name, transposed, chosen_bits, reason, note, by_user=user is not None))
    return choices


def weight_matrix(model: onnx.ModelProto, choice: WeightChoice) -> np.ndarray:
    """The weight as (K inputs, N outputs); a table as (row length, rows), so blocks run along each row."""
    values = to_array(initializer_map(model.graph)[choice.weight]).astype(np.float32)
    return values.T if choice.transposed or choice.is_table else values


def rewrite(model: onnx.ModelProto, choices: list[WeightChoice], results: dict[str, BlockQuantized], *, accuracy_level: int = 0) -> list[str]:
    """Replace (in place) each quantized choice's node; ``results`` is keyed by weight name. Returns the nodes rewritten."""
    taken = all_value_names(model.graph)
    by_node = {c.node: c for c in choices if c.quantized and c.weight in results}
    stored: dict[tuple[str, int], tuple[str, str, str | None]] = {}
    nodes, rewritten = [], []
    for node in model.graph.node:
        choice = by_node.get(node.name)
        if choice is None:
            nodes.append(node)
            continue
        result = results[choice.weight]
        key = (choice.weight, result.bits)
        if key not in stored:
            codes = result.codes if not choice.is_table else result.codes.reshape(result.codes.shape[0], -1)
            names = (unique_name(f"{choice.weight}_q{result.bits}", taken), unique_name(f"{choice.weight}_scales", taken),
                     None if result.symmetric else unique_name(f"{choice.weight}_zero_points", taken))
            model.graph.initializer.append(from_array(pack(codes, result.bits), names[0]))
            model.graph.initializer.append(from_array(result.scales if choice.is_table else result.scales.reshape(-1), names[1]))
            if names[2]:
                zero_points = pack(result.zero_points, result.bits)
                model.graph.initializer.append(from_array(zero_points if choice.is_table else zero_points.reshape(-1), names[2]))
            stored[key] = names
        codes_name, scales_name, zeros_name = stored[key]
        if choice.is_table:
            inputs = [codes_name, node.input[1], scales_name] + ([zeros_name] if zeros_name else [])
            nodes.append(helper.make_node(
                "GatherBlockQuantized", inputs, list(node.output), name=node.name, domain=MS_DOMAIN,
                gather_axis=0, quantize_axis=1, block_size=result.block_size, bits=result.bits,
            ))
        else:
            k, n = result.dequantized.shape
            bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] else ""
            inputs = [node.input[0], codes_name, scales_name, zeros_name or ""] + (["", bias] if bias else [])
            while inputs and not inputs[-1]:
                inputs.pop()
            attributes = {"K": k, "N": n, "bits": result.bits, "block_size": result.block_size}
            if accuracy_level:
                attributes["accuracy_level"] = accuracy_level
            nodes.append(helper.make_node("MatMulNBits", inputs, list(node.output), name=node.name, domain=MS_DOMAIN, **attributes))
        rewritten.append(node.name)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    drop_unread_initializers(model.graph, {by_node[name].weight for name in rewritten})
    if rewritten:
        import_domain(model, MS_DOMAIN)
    return rewritten
