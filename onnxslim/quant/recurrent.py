"""INT8 recurrent layers: an LSTM runs as onnxruntime's DynamicQuantizeLSTM; a GRU or RNN stores its weights in INT8.

An LSTM's input and recurrent weights (W: [directions, 4*hidden, input], R:
[directions, 4*hidden, hidden]) are stored as INT8 with one symmetric scale per
gate row, transposed to the [directions, input, 4*hidden] layout the contrib
op reads; the inputs and hidden state are quantized per step at run time. An
LSTM is usually most of a CRNN's bytes (a text recognizer's 51 of 54 MB) and of
its sequential time.

onnxruntime has no integer GRU or RNN kernel (nor one for a batch-first LSTM),
and it does not fold a DequantizeLinear of a constant: weights behind one would
be turned back into float on every run (+30% on a bidirectional GRU of 256).
Their weights are stored as the same INT8 gate rows read through a Cast and a
Mul by the row scales, which onnxruntime's constant folding computes once when
it loads the model: a file a quarter the size, the same float kernel and speed,
weights within half a step of each row's scale of the original.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxslim.ir.graph import MS_DOMAIN, drop_unread_initializers, import_domain
from onnxslim.ir.tensors import all_value_names, from_array, initializer_map, to_array, unique_name
from onnxslim.quant.params import quantize_weight, weight_params
from onnxslim.quant.stored import restored_at_load

RECURRENT = ("LSTM", "GRU", "RNN")


@dataclass(frozen=True)
class RecurrentChoice:
    """A recurrent layer, how its weights go INT8 (``form``), or ``reason`` when they do not.

    ``form``: 'dynamic' (an LSTM as DynamicQuantizeLSTM) or 'stored' (INT8 on disk, float when loaded).
    """

    node: str
    op_type: str = "LSTM"
    form: str = "dynamic"
    reason: str | None = None

    @property
    def quantized(self) -> bool:
        return self.reason is None


def find_recurrent(model: onnx.ModelProto) -> list[RecurrentChoice]:
    """Every LSTM, GRU and RNN, and how its weights can be stored in INT8."""
    weights = initializer_map(model.graph)
    choices = []
    for node in model.graph.node:
        if node.op_type not in RECURRENT or node.domain not in ("", "ai.onnx"):
            continue
        w, r = (weights.get(node.input[i]) if len(node.input) > i else None for i in (1, 2))
        layout = next((a.i for a in node.attribute if a.name == "layout"), 0)
        form = "dynamic" if node.op_type == "LSTM" and layout == 0 else "stored"  # DynamicQuantizeLSTM takes sequence-first only
        reason = None
        if w is None or r is None or w.data_type != TensorProto.FLOAT or r.data_type != TensorProto.FLOAT or len(w.dims) != 3 or len(r.dims) != 3:
            reason = "weights that are not constant float32 tensors"
        choices.append(RecurrentChoice(node.name, node.op_type, form, reason))
    return choices


def row_symmetric(weight: np.ndarray, levels: int = 127) -> tuple[np.ndarray, np.ndarray]:
    """INT8 codes in [-levels, levels] and scales for a [directions, rows, columns] weight, one symmetric scale per (direction, row)."""
    rows = weight.reshape(-1, weight.shape[2])
    scales = weight_params(rows, 0, levels)
    return quantize_weight(rows, scales, 0, levels).reshape(weight.shape), scales.reshape(weight.shape[:2])


def store_recurrent_in_int8(model: onnx.ModelProto, choices: list[RecurrentChoice], *, reserved: frozenset[str] | set[str] = frozenset(), levels: int = 127) -> list[str]:
    """Rewrite (in place) each quantizable recurrent layer: an LSTM as DynamicQuantizeLSTM (weight codes in [-levels, levels]),
    the others with their weights stored in INT8 (full range: nothing computes in integers); returns the nodes rewritten."""
    weights = initializer_map(model.graph)
    taken = all_value_names(model.graph) | {n.name for n in model.graph.node} | set(reserved)  # names of enclosing scopes, when model is a body's view
    forms = {c.node: c.form for c in choices if c.quantized}
    nodes, rewritten, replaced = [], [], set()
    restored: dict[str, str] = {}  # a weight two layers share is stored once
    for node in model.graph.node:
        if node.name not in forms:
            nodes.append(node)
            continue
        if forms[node.name] == "stored":
            for index in (1, 2):
                stem = node.input[index]
                if stem not in restored:
                    codes, scales = row_symmetric(to_array(weights[stem]).astype(np.float32))  # full range: nothing computes in integers
                    restore, restored[stem] = restored_at_load(model.graph, codes, scales[..., None], stem, taken)
                    nodes.extend(restore)
                node.input[index] = restored[stem]
                replaced.add(stem)
            nodes.append(node)
            rewritten.append(node.name)
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
    if any(forms[name] == "dynamic" for name in rewritten):
        import_domain(model, MS_DOMAIN)
    return rewritten
