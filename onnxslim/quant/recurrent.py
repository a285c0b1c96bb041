"""INT8 recurrent layers: an LSTM with constant weights becomes onnxruntime's DynamicQuantizeLSTM.

The input and recurrent weights (W: [directions, 4*hidden, input], R:
[directions, 4*hidden, hidden]) are stored as INT8 with one symmetric scale per
gate row, transposed to the [directions, input, 4*hidden] layout the contrib
op reads; the inputs and hidden state are quantized per step at run time. An
LSTM is usually most of a CRNN's bytes (a text recognizer's 51 of 54 MB) and of
its sequential time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxslim.ir.graph import MS_DOMAIN, drop_unread_initializers, import_domain
from onnxslim.ir.tensors import all_value_names, from_array, initializer_map, to_array, unique_name
from onnxslim.quant.params import quantize_weight, weight_params


@dataclass(frozen=True)
class RecurrentChoice:
    """An LSTM and whether its weights go INT8 (``reason`` when not)."""

    node: str
    reason: str | None = None

    @property
    def quantized(self) -> bool:
        return self.reason is None


def find_recurrent(model: onnx.ModelProto) -> list[RecurrentChoice]:
    """Every LSTM, and whether DynamicQuantizeLSTM can take it."""
    weights = initializer_map(model.graph)
    choices = []
    for node in model.graph.node:
        if node.op_type != "LSTM" or node.domain not in ("", "ai.onnx"):
            continue
        reason = None
        w, r = (weights.get(node.input[i]) if len(node.input) > i else None for i in (1, 2))
        layout = next((a.i for a in node.attribute if a.name == "layout"), 0)
        if w is None or r is None or w.data_type != TensorProto.FLOAT or r.data_type != TensorProto.FLOAT or len(w.dims) != 3 or len(r.dims) != 3:
            reason = "weights that are not constant float32 tensors"
        elif layout != 0:
            reason = "batch-first layout (DynamicQuantizeLSTM takes sequence-first)"
        choices.append(RecurrentChoice(node.name, reason))
    return choices


def row_symmetric(weight: np.ndarray, levels: int = 127) -> tuple[np.ndarray, np.ndarray]:
    """INT8 codes in [-levels, levels] and scales for a [directions, rows, columns] weight, one symmetric scale per (direction, row)."""
    rows = weight.reshape(-1, weight.shape[2])
    scales = weight_params(rows, 0, levels)
    return quantize_weight(rows, scales, 0, levels).reshape(weight.shape), scales.reshape(weight.shape[:2])


def store_recurrent_in_int8(model: onnx.ModelProto, choices: list[RecurrentChoice], *, reserved: frozenset[str] | set[str] = frozenset(), levels: int = 127) -> list[str]:
    """Rewrite (in place) each quantizable LSTM as DynamicQuantizeLSTM (weight codes in [-levels, levels]); returns the nodes rewritten."""
    weights = initializer_map(model.graph)
    taken = all_value_names(model.graph) | set(reserved)  # names of enclosing scopes, when model is a body's view
    wanted = {c.node for c in choices if c.quantized}
    nodes, rewritten, replaced = [], [], set()
    for node in model.graph.node:
        if node.name not in wanted:
            nodes.append(node)
            continue
        extra = []
        for index in (1, 2):
            codes, scales = row_symmetric(to_array(weights[node.input[index]]).astype(np.float32), levels)
            stem = node.input[index]
            names = [unique_name(f"{stem}_int8", taken), unique_name(f"{stem}_scale", taken), unique_name(f"{stem}_zero_point", taken)]
            model.graph.initializer.extend([
                from_array(np.ascontiguousarray(codes.transpose(0, 2, 1)), names[0]),
                from_array(scales, names[1]),
                from_array(np.zeros(scales.shape, np.int8), names[2]),
            ])
            extra.append(names)
            replaced.add(stem)
        inputs = [node.input[0], extra[0][0], extra[1][0]] + [node.input[i] if len(node.input) > i else "" for i in range(3, 8)]
        inputs += [extra[0][1], extra[0][2], extra[1][1], extra[1][2]]
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name != "layout"}
        nodes.append(helper.make_node("DynamicQuantizeLSTM", inputs, list(node.output), name=node.name, domain=MS_DOMAIN, **attributes))
        rewritten.append(node.name)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    drop_unread_initializers(model.graph, replaced)
    if rewritten:
        import_domain(model, MS_DOMAIN)
    return rewritten
