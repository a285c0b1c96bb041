"""Move the outlier channels of MatMul inputs into their weights before quantizing (SmoothQuant).

A transformer's activations often carry a few channels far larger than the rest
(LayerNorm outputs, GELU outputs): one scale per tensor then rounds every other
channel coarsely. ``x @ W == (x / s) @ (s * W)`` for any positive per-channel
``s``: dividing channel j of the input by ``s_j = max|x_j|^a / max|W_j|^(1-a)``
and multiplying row j of the weight by it flattens the input's range, at the
price of a wider weight range, which per-column weight scales absorb better.
The division costs nothing when the input comes from a LayerNormalization (or
a spelled-out ``* gamma + beta``) that only these layers read, as in a pre-norm
transformer: its scale and shift are divided instead. Otherwise it is a Mul
placed before the layers (one elementwise node per smoothed input). ``a`` near
1 moves more of the range into the weights.

``outliers`` (the default) touches only the channels that set the range: each
channel larger than the OUTLIER_RANK-th largest is brought down to it, the
other channels keep their values, and a tensor is left alone (no Mul) unless
this narrows its range at least OUTLIER_GAIN times. A model without such
channels comes out as it went in. Where Muls are needed, quantize also builds
the graph without them, and the one with Muls only where the range narrows at
least STRONG_GAIN times (``min_mul_gain``): the fastest of these that meets
the accuracy budget with every layer quantized is written, since a Mul costs
time on every run.

Smoothed: each float tensor read as the first input of MatMuls with a constant
2-D float32 weight that no other node reads (scaling a shared weight would
change its other readers); readers named in ``keep`` stay as they are. The
channel maxima come from one pass over (at most MAXIMA_BATCHES of) the
calibration batches; for ``outliers``, the first OUTLIER_BATCHES, in the pass
that also starts the calibration of a graph with nothing to smooth.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import helper

from onnxslim.ir.graph import insert_before
from onnxslim.ir.tensors import all_value_names, from_array, unique_name
from onnxslim.passes.base import DeclineCode, PassResult
from onnxslim.passes.matching import GraphIndex

SCALE_LIMIT = 1e4  # a channel's scale is kept within [1 / limit, limit] of the tensor's typical one
MAXIMA_BATCHES = 256  # the scales need each channel's rough size, not the extremes of a long calibration set
OUTLIERS = "outliers"
OUTLIER_RANK = 16  # at most this many channels are brought down to the next one's size (fewer in narrow tensors)
OUTLIER_GAIN = 2.0  # a tensor is smoothed for outliers only when its range narrows at least this much (one more bit)
OUTLIER_BATCHES = 16  # which channels are outliers shows on a few inputs; the scales need no more
STRONG_GAIN = 4.0  # a range narrowed this much (two bits) is the last Mul an accuracy budget gives up


def smoothable(model: onnx.ModelProto, keep: Iterable[str] = ()) -> dict[str, list[onnx.NodeProto]]:
    """Input tensor -> the MatMuls reading it whose weights may be scaled (see the module docstring)."""
    index = GraphIndex(model.graph)
    kept = set(keep)
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or node.name in kept or node.input[0] in index.constants:
            continue
        weight = index.array(node.input[1])
        if weight is None or weight.dtype != np.float32 or weight.ndim != 2:
            continue
        if not index.private(node.input[1]):
            continue
        found.setdefault(node.input[0], []).append(node)
    return found


def channel_scales(input_maxima: np.ndarray, weight_maxima: np.ndarray, alpha: float) -> np.ndarray:
    """s_j = max|x_j|^alpha / max|W_j|^(1 - alpha), normalized to a geometric mean of 1 and kept within SCALE_LIMIT.

    A channel the weight ignores (a zero row) gets the largest scale: dividing it away costs nothing. A channel
    that never moved keeps 1.
    """
    inputs = input_maxima.astype(np.float64)
    weights = weight_maxima.astype(np.float64)
    weights = np.maximum(weights, weights.max() / SCALE_LIMIT**2) if weights.max() > 0 else np.ones_like(weights)
    live = inputs > 0
    scales = np.ones_like(inputs)
    scales[live] = inputs[live] ** alpha / weights[live] ** (1.0 - alpha)
    if live.any():
        scales[live] /= np.exp(np.mean(np.log(scales[live])))
    return np.clip(scales, 1.0 / SCALE_LIMIT, SCALE_LIMIT)


def outlier_scales(input_maxima: np.ndarray) -> np.ndarray | None:
    """1 for every channel but the few largest, which are divided down to the size of the largest one left as it is;
    None when that narrows the tensor's range by less than OUTLIER_GAIN (nothing worth a Mul)."""
    rank = min(OUTLIER_RANK, input_maxima.size // 16)
    if rank < 1:
        return None
    maxima = input_maxima.astype(np.float64)
    bound = np.sort(maxima)[::-1][rank]
    if not bound > 0 or maxima.max() / bound < OUTLIER_GAIN:
        return None
    return np.clip(maxima / bound, 1.0, SCALE_LIMIT)


def _affine_before(index: GraphIndex, tensor: str, readers: list[onnx.NodeProto], channels: int) -> list[str] | None:
    """The constants whose division by the channel scales divides ``tensor`` itself: the scale and shift of the
    LayerNormalization (or the spelled-out ``* gamma + beta``) that produces it, when nothing but ``readers`` reads
    ``tensor`` and no other node reads those constants. None when a Mul is needed instead."""
    if tensor in index.outputs or {id(n) for n in index.consumers.get(tensor, [])} != {id(n) for n in readers}:
        return None
    node = index.producers.get(tensor)
    if node is None:
        return None

    def per_channel(names) -> bool:
        return all(index.private(name) and index.array(name) is not None and index.array(name).shape == (channels,) for name in names)

    if node.op_type == "LayerNormalization":  # a (channels,) scale: normalized over the last axis alone
        constants = [name for name in node.input[1:3] if name]
        return constants if constants and per_channel(constants) else None
    constants = []
    if node.op_type == "Add":  # ... * gamma + beta
        shift = next((i for i in node.input if index.array(i) is not None), None)
        product = next((i for i in node.input if i != shift), None)
        if shift is None or product is None or not index.private(product):
            return None
        constants.append(shift)
        node = index.producers.get(product)
    if node is None or node.op_type != "Mul":
        return None
    gamma = next((i for i in node.input if index.array(i) is not None), None)
    if gamma is None:
        return None
    constants.append(gamma)
    return constants if per_channel(constants) else None


def smooth_inputs(model: onnx.ModelProto, groups: dict[str, list[onnx.NodeProto]], maxima: dict[str, np.ndarray],
                  alpha: float | str, *, min_mul_gain: float = 0.0) -> PassResult:
    """Divide each input in ``groups`` by its channel scales and scale the readers' weight rows.

    ``alpha``: SmoothQuant's migration strength, or OUTLIERS (see the module docstring). The division is folded into
    the normalization that produces the input when only these readers read it (a pre-norm transformer's LayerNorm:
    free); otherwise it is a Mul before the readers, or, where that narrows the input's range less than ``min_mul_gain``
    times (its largest channel scale; ``math.inf``: no Mul at all), the input is left as it is (declined).
    """
    result = PassResult("smooth-activations")
    graph = model.graph
    index = GraphIndex(graph)
    taken = all_value_names(graph) | {n.name for n in graph.node}
    inserted: dict[int, onnx.NodeProto] = {}
    replaced: dict[str, onnx.TensorProto] = {}
    order = {id(node): position for position, node in enumerate(graph.node)}
    for tensor, readers in groups.items():
        weights = [index.array(node.input[1]) for node in readers]
        if tensor not in maxima or maxima[tensor].shape != (weights[0].shape[0],):
            continue
        if alpha == OUTLIERS:
            scales = outlier_scales(maxima[tensor])
            if scales is None:
                continue
        else:
            scales = channel_scales(maxima[tensor], np.max([np.abs(w).max(axis=1) for w in weights], axis=0), alpha)
        folded = _affine_before(index, tensor, readers, scales.size)
        if folded is not None:
            for name in folded:
                replaced[name] = from_array((index.array(name) / scales).astype(np.float32), name)
            how = f"folded into {index.producers[tensor].name}'s scale and shift"
        elif scales.max() < min_mul_gain:
            result.decline(tensor, DeclineCode.NOT_NEEDED, f"{len(readers)} MatMul(s) ({', '.join(n.name for n in readers)}), largest channel scale "
                           f"{scales.max():.3g}: the accuracy budget holds without the Mul that smoothing them needs")
            continue
        else:
            inverse = from_array((1.0 / scales).astype(np.float32), unique_name(f"{tensor}_smoothing", taken))
            graph.initializer.append(inverse)
            smoothed = unique_name(f"{tensor}_smoothed", taken)
            first = min(readers, key=lambda node: order[id(node)])
            inserted[id(first)] = helper.make_node("Mul", [tensor, inverse.name], [smoothed], name=unique_name(f"{first.name}_smoothing", taken))
            for node in readers:
                node.input[0] = smoothed
            how = "a Mul before them"
        for node, weight in zip(readers, weights):
            replaced[node.input[1]] = from_array((weight * scales[:, None]).astype(np.float32), node.input[1])
        result.change(f"{tensor}: {len(readers)} MatMul(s) ({', '.join(n.name for n in readers)}), largest channel scale {scales.max():.3g}, {how}")
    if replaced:
        for tensor in graph.initializer:
            if tensor.name in replaced:
                tensor.CopyFrom(replaced[tensor.name])
        insert_before(graph, inserted)
    return result
