"""Weight-only INT8 for lookup tables: a Gather's constant table stored as INT8 rows with one scale per row.

A token-embedding table is most of a small transformer's bytes (all-MiniLM-L6-v2:
47 of 90 MB) but only the rows looked up are ever used, so the table is looked
up in INT8 and only those rows are turned back into float:

    Gather(table, ids)  ->  Mul(Cast(Gather(table_int8, ids)), Unsqueeze(Gather(row_scales, ids), -1))

Each row is scaled symmetrically by its own largest magnitude (127 steps), so a
rare token with small values keeps its precision. The rewrite computes exactly
what a per-row DequantizeLinear would, on the looked-up rows only.

onnxruntime's fused com.microsoft EmbedLayerNormalization (its transformer optimizer's first
node) reads whole float tables: there the INT8 rows and their scales are turned back into float
by a Cast and a Mul of constants, which onnxruntime folds when it loads the model: a file a
quarter of the size, the float model's speed and memory.

Where onnxruntime runs its com.microsoft GatherBlockQuantized on 8-bit rows
(``lookup="contrib"``), the same codes, shifted by 128 to UINT8 with zero point 128,
and the same scales go into that one node instead of five: the same rows to the
last bit, four nodes fewer per table (all-MiniLM-L6-v2 at one thread: 1-3% faster
in three of four interleaved loops, 1% slower in the fourth; small against noise).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxslim.ir.graph import MS_DOMAIN, drop_unread_initializers, import_domain, node_attr
from onnxslim.ir.tensors import all_value_names, from_array, initializer_map, to_array, unique_name
from onnxslim.passes.opset import default_opset
from onnxslim.quant.stored import restored_at_load

MIN_TABLE_ELEMENTS = 1 << 16  # smaller tables are not worth three extra nodes
# com.microsoft EmbedLayerNormalization: its word, position and segment embedding tables
EMBEDDING_TABLE_INPUTS = (2, 3, 4)
LOOKUPS = ("onnx", "contrib")


@dataclass(frozen=True)
class TableChoice:
    """A Gather (or a fused EmbedLayerNormalization) and whether its table is stored in INT8 (``reason`` when not)."""

    node: str
    table: str
    elements: int
    reason: str | None = None
    op_type: str = "Gather"
    input_index: int = 0  # where the node reads the table

    @property
    def quantized(self) -> bool:
        return self.reason is None


def find_tables(model: onnx.ModelProto, *, min_elements: int = MIN_TABLE_ELEMENTS) -> list[TableChoice]:
    """Every Gather that reads a float32 constant table of rows (axis 0, 2-D), and whether it can be stored in INT8."""
    weights = initializer_map(model.graph)
    readers = Counter(name for node in model.graph.node for name in node.input)
    outputs = {v.name for v in model.graph.output}
    choices = []
    for node in model.graph.node:
        if node.op_type == "EmbedLayerNormalization" and node.domain == MS_DOMAIN:
            choices.extend(_embedding_tables(node, weights, readers, min_elements))
            continue
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx") or not node.input or node.input[0] not in weights:
            continue
        table = weights[node.input[0]]
        elements = int(np.prod(table.dims)) if table.dims else 1
        if table.data_type != TensorProto.FLOAT or len(table.dims) != 2 or int(node_attr(node, "axis", 0)) != 0:
            continue
        reason = None
        if elements < min_elements:
            reason = f"table of {elements} values: too small to be worth it"
        elif readers[node.input[0]] > 1:
            reason = "the table is also read by other nodes (a tied output projection): kept in float for them"
        elif node.output[0] in outputs:
            reason = "the lookup is a graph output"
        choices.append(TableChoice(node.name, node.input[0], elements, reason))
    return choices


def _embedding_tables(node: onnx.NodeProto, weights: dict, readers: Counter, min_elements: int) -> list[TableChoice]:
    choices = []
    for index in EMBEDDING_TABLE_INPUTS:
        name = node.input[index] if len(node.input) > index else ""
        table = weights.get(name)
        if table is None or table.data_type != TensorProto.FLOAT or len(table.dims) != 2:
            continue
        elements = int(np.prod(table.dims))
        reason = None
        if elements < min_elements:
            reason = f"table of {elements} values: too small to be worth it"
        elif readers[name] > 1:
            reason = "the table is also read by other nodes: kept in float for them"
        choices.append(TableChoice(node.name, name, elements, reason, node.op_type, index))
    return choices


ROWS_AT_A_TIME = 1024  # a vocabulary table is tens of MB: whole-table float temporaries cost more in fresh memory than the rounding


def row_quantize(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """INT8 rows and their float32 scales: row * 127 / max|row|, rounded; a zero row gets scale 1."""
    peak = np.maximum(table.max(axis=1), -table.min(axis=1)).astype(np.float32)
    scales = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    values = np.empty(table.shape, np.int8)
    buffer = np.empty((min(ROWS_AT_A_TIME, table.shape[0]),) + table.shape[1:], np.float32)
    for start in range(0, table.shape[0], ROWS_AT_A_TIME):
        stop = min(start + ROWS_AT_A_TIME, table.shape[0])
        rows = buffer[: stop - start]
        np.divide(table[start:stop], scales[start:stop, None], out=rows)
        np.rint(rows, out=rows)
        np.clip(rows, -127, 127, out=rows)
        values[start:stop] = rows
    return values, scales


def store_tables_in_int8(
    model: onnx.ModelProto, choices: list[TableChoice], *, reserved: frozenset[str] | set[str] = frozenset(), rows_cache: dict | None = None,
    lookup: str = "onnx",
) -> list[str]:
    """Rewrite (in place) every quantizable choice's Gather; returns the nodes rewritten.

    ``rows_cache``: INT8 rows and scales of tables quantized before, by table name and shape, for
    a caller that builds the same model several times (each build would quantize them again).
    ``lookup``: "onnx" (Gather, Cast and Mul, standard operators) or "contrib" (one GatherBlockQuantized).
    """
    if lookup not in LOOKUPS:
        raise ValueError(f"lookup must be one of {LOOKUPS}, not {lookup!r}")
    weights = initializer_map(model.graph)
    taken = all_value_names(model.graph) | set(reserved)  # names of enclosing scopes, when model is a body's view
    by_name = {c.node: c for c in choices if c.quantized and c.op_type == "Gather"}
    restored = {}
    for choice in choices:
        if choice.quantized and choice.op_type != "Gather":
            restored.setdefault(choice.node, []).append(choice)
    opset = default_opset(model)
    rewritten: list[str] = []
    nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        for choice in restored.get(node.name, []):  # a fused node reading whole tables: they are restored once, at load
            values, scales = _rows(weights, choice, rows_cache)
            added, node.input[choice.input_index] = restored_at_load(model.graph, values, scales[:, None], choice.table, taken)
            nodes.extend(added)
        if node.name in restored:
            rewritten.append(node.name)
        nodes.append(node)
        choice = by_name.get(node.name)
        if choice is None:
            continue
        values, scales = _rows(weights, choice, rows_cache)
        if lookup == "contrib":
            nodes[-1] = _block_quantized_lookup(model, node, choice, _uint8_rows(weights, choice, rows_cache), scales, taken)
            rewritten.append(node.name)
            continue
        table_name = unique_name(f"{choice.table}_int8", taken)
        scale_name = unique_name(f"{choice.table}_row_scale", taken)
        model.graph.initializer.extend([from_array(values, table_name), from_array(scales, scale_name)])
        result, ids = node.output[0], node.input[1]
        looked_up, row_scale, as_float, column = (unique_name(f"{result}_{suffix}", taken) for suffix in ("int8", "scale", "float", "scale_column"))
        node.input[0] = table_name
        node.output[0] = looked_up
        nodes.append(helper.make_node("Gather", [scale_name, ids], [row_scale], name=unique_name(f"{node.name}_scale", taken), axis=0))
        nodes.append(helper.make_node("Cast", [looked_up], [as_float], name=unique_name(f"{node.name}_cast", taken), to=TensorProto.FLOAT))
        if opset >= 13:
            axes = unique_name(f"{node.name}_last_axis", taken)
            model.graph.initializer.append(from_array(np.array([-1], np.int64), axes))
            nodes.append(helper.make_node("Unsqueeze", [row_scale, axes], [column], name=unique_name(f"{node.name}_unsqueeze", taken)))
        else:
            nodes.append(helper.make_node("Unsqueeze", [row_scale], [column], name=unique_name(f"{node.name}_unsqueeze", taken), axes=[-1]))
        nodes.append(helper.make_node("Mul", [as_float, column], [result], name=unique_name(f"{node.name}_dequantize", taken)))
        rewritten.append(node.name)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    drop_unread_initializers(model.graph, {c.table for c in choices if c.node in rewritten})  # each table had one reader
    if rewritten and lookup == "contrib":
        import_domain(model, MS_DOMAIN)
    return rewritten


def _rows(weights: dict, choice: TableChoice, rows_cache: dict | None) -> tuple[np.ndarray, np.ndarray]:
    """``choice``'s table as INT8 rows and row scales (from ``rows_cache`` when quantized before)."""
    key = (choice.table, tuple(weights[choice.table].dims))
    if rows_cache is not None and key in rows_cache:
        return rows_cache[key]
    values, scales = row_quantize(to_array(weights[choice.table]).astype(np.float32))
    if rows_cache is not None:
        rows_cache[key] = (values, scales)
    return values, scales


def _uint8_rows(weights: dict, choice: TableChoice, rows_cache: dict | None) -> np.ndarray:
    """``choice``'s INT8 rows as UINT8 around 128 (from ``rows_cache`` when made before)."""
    key = (choice.table, tuple(weights[choice.table].dims), "uint8")
    if rows_cache is not None and key in rows_cache:
        return rows_cache[key]
    values, _ = _rows(weights, choice, rows_cache)
    codes = (values.astype(np.int16) + 128).astype(np.uint8)
    if rows_cache is not None:
        rows_cache[key] = codes
    return codes


def _block_quantized_lookup(model: onnx.ModelProto, node: onnx.NodeProto, choice: TableChoice, values: np.ndarray, scales: np.ndarray, taken: set[str]) -> onnx.NodeProto:
    """One GatherBlockQuantized reading ``values`` (the rows as UINT8 around 128), one block (and scale) per row."""
    codes, scale_name, zero_name = (unique_name(f"{choice.table}_{suffix}", taken) for suffix in ("uint8", "row_scale", "zero_point"))
    model.graph.initializer.extend([
        from_array(values, codes),
        from_array(scales.reshape(-1, 1), scale_name),
        from_array(np.full((values.shape[0], 1), 128, np.uint8), zero_name),
    ])
    block = max(16, 1 << (values.shape[1] - 1).bit_length())  # a power of two, at least 16, covering the row
    return helper.make_node(
        "GatherBlockQuantized", [codes, node.input[1], scale_name, zero_name], list(node.output), name=node.name, domain=MS_DOMAIN,
        gather_axis=0, quantize_axis=1, block_size=block, bits=8,
    )
