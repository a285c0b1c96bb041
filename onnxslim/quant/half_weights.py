"""Weights of the layers the accuracy budget keeps in float, stored in float16 and cast back when the model loads.

A layer kept in float for the budget is kept there for its activations' rounding,
not its weights': float16 weights (11 significant bits) change its output far less
than INT8 activations would, and halve the bytes it adds to the INT8 file. The
weight is written as a float16 initializer read through a Cast to float32;
onnxruntime folds that Cast when it loads the model, so the layer runs exactly as
the float layer did, on float16-rounded weights.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxslim.ir.tensors import from_array, unique_name
from onnxslim.quant.stored import layers_behind_transposes, rewire_weights, tied_tables_read_by, weights_only_read_by

MAX_RELATIVE_ERROR = 1e-3  # a weight whose float16 copy is further from it than this (tiny or huge values) stays float32


def half_weight_error(values: np.ndarray) -> float:
    """Relative L2 distance between ``values`` and their float16 rounding (inf where float16 overflows)."""
    if not np.isfinite(values).all() or np.abs(values).max(initial=0.0) > float(np.finfo(np.float16).max):
        return float("inf")
    norm = float(np.linalg.norm(values))
    if norm == 0.0:
        return 0.0
    return float(np.linalg.norm(values.astype(np.float16).astype(np.float32) - values)) / norm


def store_weights_in_half(model: onnx.ModelProto, nodes: frozenset[str] | set[str], *, reserved: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """Store (in place) the float32 weight of each of ``nodes`` in float16 behind a Cast; returns the nodes changed.

    A weight is converted when :func:`~onnxslim.quant.stored.weights_only_read_by` or
    :func:`~onnxslim.quant.stored.tied_tables_read_by` offers it (one Cast then serves all its readers) and float16
    keeps it within :data:`MAX_RELATIVE_ERROR`.
    """

    def restore(name: str, values: np.ndarray, taken: set[str]):
        if half_weight_error(values) > MAX_RELATIVE_ERROR:
            return None
        half, restored = unique_name(f"{name}_float16", taken), unique_name(f"{name}_restored", taken)
        model.graph.initializer.append(from_array(values.astype(np.float16), half))
        return [helper.make_node("Cast", [half], [restored], name=unique_name(f"{name}_to_float", taken), to=TensorProto.FLOAT)], restored

    return layers_behind_transposes(model, rewire_weights(model, weights_only_read_by(model, nodes) | tied_tables_read_by(model, nodes), restore, reserved))
