"""Weights as codebooks: fitting one per weight, and writing a model whose weights are looked up from them.

A weight becomes a codebook of 16 or 256 values, an index per element (two
per byte for 16) and one scale per output channel; a Gather and a Mul restore
it, and onnxruntime folds them into the plain weight when a session loads, so
the file shrinks and inference is the float model's. Pure graph work: no session.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxslim.ir.layers import RECURRENT_LAYERS, weight_axes
from onnxslim.ir.tensors import all_value_names, from_array, initializer_map, to_array, unique_name
from onnxslim.measure.channels import STATE
from onnxslim.passes.opset import default_opset
from onnxslim.progress import track
from onnxslim.records import Record
from onnxslim.share.codebook import compensated_indices, kmeans_1d, pack_nibbles, refit_codebook

# op -> the inputs that hold its weights; a recurrent layer's W (directions, gates x hidden, features) reads its input,
# its R (directions, gates x hidden, hidden) the state it carries
WEIGHTED = {"Conv": (1,), "ConvTranspose": (1,), "Gemm": (1,), "MatMul": (1,), "Gather": (0,), **{op: (1, 2) for op in RECURRENT_LAYERS}}


@dataclass(frozen=True)
class TensorShare(Record):
    """What happened to one tensor."""

    name: str
    elements: int
    bytes_before: int
    bytes_after: int
    how: str  # "codebook 16", "codebook 256", "tied to <name>"
    rms_error: float = 0.0  # relative to the tensor's RMS


@dataclass(frozen=True)
class Coded:
    """One weight as a codebook: normalized codes, an index per value, one scale per output channel."""

    clusters: int
    codebook: np.ndarray
    indices: np.ndarray
    scales: np.ndarray
    rms_error: float  # of the restored weight, relative to the weight's RMS


def _readers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers


def codebook_candidates(model: onnx.ModelProto, min_elements: int) -> list[str]:
    """Float (32- or 16-bit) weights of at least ``min_elements`` values read only as the weight of Conv, Gemm, MatMul,
    Gather or a recurrent layer (its W or R)."""
    inits = initializer_map(model.graph)
    outputs = {v.name for v in model.graph.output}
    readers = _readers(model)
    return [
        name for name, t in inits.items()
        if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16) and _elements(t) >= min_elements and name not in outputs
        and readers.get(name) and all(list(n.input).index(name) in WEIGHTED.get(n.op_type, ()) for n in readers[name])
    ]


def fit_one(model: onnx.ModelProto, name: str, clusters: int, energy: dict[str, np.ndarray], grams: dict[str, np.ndarray] | None = None) -> Coded:
    """The codebook of weight ``name`` of ``model``: values scaled per output channel, then weighted 1-D k-means.

    With the Gram matrix of its layer's inputs (``grams``, by input tensor) a 16-code weight read by one Conv
    (not grouped), MatMul or Gemm gets error-compensated indices, then its codebook refit to the layer's outputs
    (:func:`~onnxslim.share.codebook.compensated_indices`, :func:`~onnxslim.share.codebook.refit_codebook`).
    """
    array = to_array(initializer_map(model.graph)[name]).astype(np.float32)
    readers = _readers(model)[name]
    scales = _channel_scales(array, _output_axis(readers[0], array.ndim))
    codebook, indices = kmeans_1d(_normalized(array, scales), clusters, weights=_weights_of(array, name, readers, energy), zero_code=_needs_zero_code(array, scales))
    layout = _as_matrix(array, scales, readers) if grams and clusters <= 16 and len(readers) == 1 else None
    gram = grams.get(readers[0].input[0]) if layout is not None else None
    if layout is not None and gram is not None and gram.shape[0] == layout[0].shape[0]:
        matrix, column_scales, to_array_layout = layout
        sparse = bool(np.any(codebook == 0)) and bool(np.any(array == 0))  # kmeans_1d gave the zeros a code of their own
        chosen = compensated_indices(matrix, column_scales, codebook, gram, keep_zeros=sparse)
        codebook, order = refit_codebook(matrix, column_scales, chosen, gram, codebook)
        indices = to_array_layout(order[chosen]).astype(indices.dtype).ravel()
    restored = codebook[indices.astype(np.int64)].reshape(array.shape) * scales
    return Coded(clusters, codebook, indices, scales, rms_error(restored, array))


def _as_matrix(array: np.ndarray, scales: np.ndarray, readers: list[onnx.NodeProto]):
    """(K x N matrix with K the layer's inputs, each column's scale, a function turning K x N indices back into ``array``'s layout), or None."""
    node = readers[0]
    if node.op_type == "MatMul" and array.ndim == 2:
        return array, scales.reshape(-1), lambda m: m
    if node.op_type == "Gemm" and array.ndim == 2:
        if int(next((a.i for a in node.attribute if a.name == "transB"), 0)):
            return array.T, scales.reshape(-1), lambda m: m.T
        return array, scales.reshape(-1), lambda m: m
    if node.op_type == "Conv" and array.ndim >= 3 and int(next((a.i for a in node.attribute if a.name == "group"), 1)) == 1:
        out_channels, in_channels = array.shape[:2]
        taps = int(np.prod(array.shape[2:]))
        # every kernel tap of an output channel is a column; its rows are the input channels (their Gram ignores
        # the correlation between neighbouring positions)
        matrix = array.reshape(out_channels, in_channels, taps).transpose(1, 0, 2).reshape(in_channels, out_channels * taps)
        column_scales = np.repeat(scales.reshape(-1), taps)
        return matrix, column_scales, lambda m: m.reshape(in_channels, out_channels, taps).transpose(1, 0, 2).reshape(array.shape)
    return None


def fit_codebooks(
    model: onnx.ModelProto, clusters: int, min_elements: int, energy: dict[str, np.ndarray], show_progress: bool = False, grams: dict[str, np.ndarray] | None = None,
) -> dict[str, Coded]:
    """A codebook of ``clusters`` values for every candidate weight (see :func:`codebook_candidates`)."""
    candidates = codebook_candidates(model, min_elements)
    return {name: fit_one(model, name, clusters, energy, grams) for name in track(candidates, "fitting codebooks", enabled=show_progress)}


def compensable_layers(model: onnx.ModelProto, weights: list[str]) -> dict[str, str]:
    """Input tensor -> the node reading it, for the layers whose weight (among ``weights``) can take error-compensated indices."""
    readers = _readers(model)
    found = {}
    for name in weights:
        nodes = readers.get(name, [])
        if len(nodes) == 1 and nodes[0].op_type in ("Conv", "MatMul", "Gemm"):
            found[nodes[0].input[0]] = nodes[0].name
    return found


def encode(model: onnx.ModelProto, fits: dict[str, Coded | None]) -> tuple[onnx.ModelProto, list[TensorShare]]:
    """A copy of ``model`` whose weights in ``fits`` are replaced by their codebooks and a lookup (None: left float)."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    inits = initializer_map(result.graph)
    taken = all_value_names(result.graph)
    opset = default_opset(result)
    done, lookups = [], []
    for name, coded in fits.items():
        if coded is None:
            continue
        packed = coded.clusters <= 16 and opset >= 11  # BitShift, to unpack 4-bit indices, is opset 11
        shape = tuple(inits[name].dims)
        dtype = helper.tensor_dtype_to_np_dtype(inits[name].data_type)
        nodes, tensors = _lookup(name, shape, coded.codebook, coded.indices, coded.scales, packed, opset, taken, dtype)
        lookups.extend(nodes)
        result.graph.initializer.extend(tensors)
        after = sum(len(t.raw_data) or t.ByteSize() for t in tensors)
        how = f"codebook {coded.clusters}" + ("" if packed or coded.clusters > 16 else " (8-bit indices: opset < 11)")
        done.append(TensorShare(name, coded.indices.size, coded.indices.size * dtype.itemsize, after, how, coded.rms_error))
    if done:
        gone = {d.name for d in done}
        kept = [t for t in result.graph.initializer if t.name not in gone]
        del result.graph.initializer[:]
        result.graph.initializer.extend(kept)
        rest = list(result.graph.node)
        del result.graph.node[:]
        result.graph.node.extend(lookups + rest)  # lookups read initializers only: they can come first
    return result, done


def _output_axis(reader: onnx.NodeProto, ndim: int) -> int:
    """The axis of a weight's output channels (rows of a Gather table)."""
    if reader.op_type == "Gather":
        return 0
    if reader.op_type in RECURRENT_LAYERS:
        return 1  # each gate row of each direction
    return weight_axes(reader, ndim)[1]


def _channel_scales(array: np.ndarray, axis: int) -> np.ndarray:
    """Each output channel's largest magnitude, shaped to broadcast over ``array``; 0 for a channel of zeros.

    One codebook is shared by channels of very different ranges; dividing each
    by its own scale first lets the codes follow the shape of the values rather
    than the spread between channels, for one float per channel. A channel of
    zeros keeps scale 0 and is restored as exact zeros.
    """
    other = tuple(i for i in range(array.ndim) if i != axis)
    peak = np.abs(array).max(axis=other, keepdims=True) if other else np.abs(array)
    return peak.astype(np.float32)


def _needs_zero_code(array: np.ndarray, scales: np.ndarray) -> bool:
    """True when a channel whose largest value is subnormal (below float32's smallest normal number) also holds exact zeros.

    Its scale is subnormal, so any code but an exact 0 restores a subnormal value, which the CPU multiplies many
    times slower than a normal one: a channel of 239 zeros and one subnormal value, restored as 240 subnormals,
    took one of the recognizer's convolutions from 0.5 to 11 ms. With a zero code its zeros stay zeros.
    """
    subnormal = np.broadcast_to((scales > 0) & (scales < np.finfo(np.float32).tiny), array.shape)
    return bool(np.any(subnormal & (array == 0)))


def _normalized(array: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """``array`` divided by its channel scales (zero where the scale is zero)."""
    return np.divide(array, scales, out=np.zeros(array.shape, np.float32), where=np.broadcast_to(scales > 0, array.shape))


def _lookup(name: str, shape: tuple, codebook: np.ndarray, indices: np.ndarray, scales: np.ndarray, packed: bool, opset: int, taken: set[str],
            dtype=np.float32):
    """Nodes and initializers that compute tensor ``name``: Gather(codebook, indices) * per-channel scales, cast to ``dtype``
    where that is not float32 (a float16 model's weight: computed in float32, which onnxruntime folds at load on the CPU,
    where float16 lookups are left to run)."""
    def fresh(suffix: str) -> str:
        return unique_name(f"{name}_{suffix}", taken)

    code, scale = fresh("codebook"), fresh("channel_scale")
    tensors = [from_array(codebook, code), from_array(scales, scale)]
    nodes = []
    if packed:
        bytes_name, four, flat_shape, column = fresh("indices4"), fresh("four"), fresh("flat"), fresh("axis")
        tensors += [from_array(pack_nibbles(indices), bytes_name), from_array(np.array([4], np.uint8), four), from_array(np.array([-1], np.int64), flat_shape)]
        if opset >= 13:  # Unsqueeze takes its axes as an input from opset 13
            tensors.append(from_array(np.array([1], np.int64), column))
        high, shifted, low, high1, low1, pairs, flat = (fresh(s) for s in ("high", "low_shifted", "low", "high_column", "low_column", "pairs", "flat_indices"))
        # uint8 shifts drop the bits they push out: (b << 4) >> 4 is the low half (no Sub: uint8 Sub needs opset 14)
        nodes += [
            helper.make_node("BitShift", [bytes_name, four], [high], name=fresh("unpack_high"), direction="RIGHT"),
            helper.make_node("BitShift", [bytes_name, four], [shifted], name=fresh("unpack_shift"), direction="LEFT"),
            helper.make_node("BitShift", [shifted, four], [low], name=fresh("unpack_low"), direction="RIGHT"),
            _unsqueeze(high, column, high1, opset, fresh("unsqueeze_high")),
            _unsqueeze(low, column, low1, opset, fresh("unsqueeze_low")),
            helper.make_node("Concat", [high1, low1], [pairs], name=fresh("pairs"), axis=1),
            helper.make_node("Reshape", [pairs, flat_shape], [flat], name=fresh("flatten")),
        ]
        source = flat
        if indices.size % 2:
            starts, ends, trimmed = fresh("start"), fresh("end"), fresh("trimmed")
            tensors += [from_array(np.array([0], np.int64), starts), from_array(np.array([indices.size], np.int64), ends)]
            nodes.append(helper.make_node("Slice", [flat, starts, ends], [trimmed], name=fresh("trim")))
            source = trimmed
        target_shape, shaped = fresh("shape"), fresh("shaped_indices")
        tensors.append(from_array(np.array(shape, np.int64), target_shape))
        nodes.append(helper.make_node("Reshape", [source, target_shape], [shaped], name=fresh("reshape")))
    else:
        shaped = fresh("indices8")
        tensors.append(from_array(indices.reshape(shape).astype(np.uint8), shaped))
    wide, normalized = fresh("indices"), fresh("normalized")
    nodes.append(helper.make_node("Cast", [shaped], [wide], name=fresh("cast"), to=TensorProto.INT32))
    nodes.append(helper.make_node("Gather", [code, wide], [normalized], name=fresh("lookup"), axis=0))
    if dtype == np.float32:
        nodes.append(helper.make_node("Mul", [normalized, scale], [name], name=fresh("scale")))
    else:
        restored = fresh("restored")
        nodes.append(helper.make_node("Mul", [normalized, scale], [restored], name=fresh("scale")))
        nodes.append(helper.make_node("Cast", [restored], [name], name=fresh("to_weight_type"), to=helper.np_dtype_to_tensor_dtype(dtype)))
    return nodes, tensors


def _unsqueeze(tensor: str, axis: str, output: str, opset: int, name: str) -> onnx.NodeProto:
    if opset >= 13:
        return helper.make_node("Unsqueeze", [tensor, axis], [output], name=name)
    return helper.make_node("Unsqueeze", [tensor], [output], name=name, axes=[1])


def _weights_of(array: np.ndarray, name: str, readers: list[onnx.NodeProto], energy: dict[str, np.ndarray]) -> np.ndarray | None:
    """Per element of weight ``name``: the mean square of the input channel it multiplies (summed over the layers that
    read it), or None without data. A recurrent layer's R multiplies the state it carries, kept under its name and STATE."""
    total = None
    for node in readers:
        if node.op_type == "Gather":
            continue
        recurrent = node.op_type in RECURRENT_LAYERS
        channel = energy.get(node.name + STATE if recurrent and list(node.input).index(name) == 2 else node.name)
        if channel is None:
            continue
        axis = 2 if recurrent else weight_axes(node, array.ndim)[0]
        if array.shape[axis] != channel.size:  # grouped convolutions: their columns are not the input's channels
            continue
        shape = [1] * array.ndim
        shape[axis] = channel.size
        part = np.broadcast_to(channel.reshape(shape), array.shape)
        total = part if total is None else total + part
    return total


def _elements(tensor: onnx.TensorProto) -> int:
    return int(np.prod(tensor.dims)) if tensor.dims else 1


def rms_error(approx: np.ndarray, exact: np.ndarray) -> float:
    scale = float(np.sqrt(np.mean(np.square(exact, dtype=np.float64)))) or 1.0
    return float(np.sqrt(np.mean(np.square(approx.astype(np.float64) - exact)))) / scale
