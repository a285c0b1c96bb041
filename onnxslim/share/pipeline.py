"""``share``: weights that share values, stored once.

Two steps, each optional:

1. identical tensors (tied embeddings and output projections, repeated constant
   tables) are stored once and read by every user (``tolerance`` > 0 also ties
   tensors equal within that share of their largest magnitude);
2. each float weight of at least ``min_elements`` values becomes a codebook of
   ``clusters`` values (16 or 256) and an index per element, restored by a lookup
   onnxruntime folds into the plain weight when it creates the session: the
   file and the download shrink, inference is unchanged. With data, the fit
   weighs each weight by the mean square of the input channel it multiplies
   (the diagonal of the layer's input Gram matrix), so values that move the
   layer's output most are reproduced best.

Contract: the input model is not modified; inputs, outputs and every node that
reads a weight are unchanged (the weight's name is now produced by the lookup);
the result passes the checker and runs in onnxruntime before it is written.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxslim.data.sources import DataSource, evaluation_split, for_several_passes, open_data
from onnxslim.errors import NothingToDoError, UsageError
from onnxslim.ir.io import load_model, model_file_bytes
from onnxslim.ir.layers import weight_axes
from onnxslim.ir.tensors import all_value_names, from_array, graph_inputs, initializer_map, to_array, unique_name
from onnxslim.measure import LatencyComparison, fidelity, latency_ratios
from onnxslim.measure.channels import input_moments
from onnxslim.options import check_settings, setting
from onnxslim.passes import Pipeline, constants_to_initializers, initializers_out_of_inputs
from onnxslim.progress import track
from onnxslim.records import BeforeAfter, Record
from onnxslim.runtime import Runner
from onnxslim.runtime.write import write_verified
from onnxslim.share.codebook import identical_groups, kmeans_1d, pack_nibbles

CLUSTERS = (0, 16, 256)
WEIGHTED = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1, "Gather": 0}  # op -> the input that holds its weight
PREPARE = Pipeline((initializers_out_of_inputs, constants_to_initializers))


@dataclass(frozen=True)
class ShareConfig:
    """How to share: codebook size, which tensors, the tie tolerance; data, timing and fidelity settings."""

    clusters: int = setting(
        256, "Codebook size per weight: 256 (8-bit indices) or 16 (4-bit: a quarter of the bytes, and about 10% error per weight); 0: only tie identical tensors.", low=0
    )
    min_elements: int = setting(4096, "Give a codebook only to weights of at least this many values.", low=1)
    tolerance: float = setting(0.0, "Tie tensors equal within this share of their largest magnitude (0: bitwise identical only).", low=0.0, high=0.1)
    max_calibration_samples: int | None = setting(None, "Use at most this many batches of the data.", low=1, option="--max-samples")
    eval_fraction: float = setting(0.2, "Share of --data held out for the fidelity check.", low=0.0, high=0.5)
    max_eval_batches: int = setting(64, "Measure fidelity on at most this many held-out batches.", low=1)
    threads: int = 0  # onnxruntime intra-op threads to time at, the count the user deploys with (0: onnxruntime's default); 1 thread is timed too
    latency_runs: int = setting(30, "Timed runs of the original and the shared model, interleaved (0: no timing).", low=0)

    def __post_init__(self) -> None:
        check_settings(self)
        if self.clusters not in CLUSTERS:
            raise UsageError(f"--clusters must be one of {', '.join(map(str, CLUSTERS))} (got {self.clusters})")


@dataclass(frozen=True)
class TensorShare(Record):
    """What happened to one tensor."""

    name: str
    elements: int
    bytes_before: int
    bytes_after: int
    how: str  # "codebook 16", "codebook 256", "tied to <name>"
    rms_error: float = 0.0  # relative to the tensor's RMS


@dataclass
class ShareReport(Record):
    """Every tensor shared, file and zipped sizes before and after, fidelity and latency against the original."""

    command: ClassVar[str] = "share"

    model: str
    output: str | None
    config: dict
    tensors: list[TensorShare] = field(default_factory=list)
    file_bytes: BeforeAfter = BeforeAfter()
    zipped_bytes: BeforeAfter = BeforeAfter()
    fidelity: list = field(default_factory=list)
    latency: LatencyComparison | None = None  # at --threads, the count the user deploys with
    latency_1_thread: LatencyComparison | None = None  # the same at 1 thread, when --threads is another count
    evaluation: str = ""
    warnings: list[str] = field(default_factory=list)


def share(
    model: str | os.PathLike | onnx.ModelProto,
    data: str | os.PathLike | DataSource | None = None,
    *,
    config: ShareConfig = ShareConfig(),
    output: str | os.PathLike | None = None,
    eval_data=None,
    input_shapes=None,
    show_progress: bool = False,
) -> tuple[onnx.ModelProto, ShareReport]:
    """Tie identical tensors and give large weights codebooks (see the module docstring); write to ``output`` when given."""
    label = str(model) if not isinstance(model, onnx.ModelProto) else "<in-memory model>"
    original = load_model(model)
    work = load_model(original)
    PREPARE(work)
    report = ShareReport(label, str(output) if output else None, dict(config.__dict__))
    source = for_several_passes(open_data(data, graph_inputs(original), input_shapes=input_shapes), config.max_calibration_samples) if data is not None else None
    source, held, _ = evaluation_split(
        source, eval_data, graph_inputs(original), fraction=config.eval_fraction, cap=config.max_eval_batches, input_shapes=input_shapes
    )
    report.tensors.extend(tie_identical(work, config.tolerance))
    if config.clusters:
        energy = _input_energy(work, source, show_progress) if source is not None else {}
        report.tensors.extend(give_codebooks(work, config.clusters, config.min_elements, energy, show_progress))
    if not report.tensors:
        raise NothingToDoError(f"{label}: nothing to share (no identical tensors, and no float weight of at least {config.min_elements} values)")
    _measure(original, work, held, input_shapes, config, report)
    if output is not None:
        write_verified(work, output, source=None if isinstance(model, onnx.ModelProto) else model)
    return work, report


def tie_identical(model: onnx.ModelProto, tolerance: float) -> list[TensorShare]:
    """Point every reader of a tensor that repeats another at the first one; the copies are dropped."""
    inits = initializer_map(model.graph)
    arrays = {name: to_array(t) for name, t in inits.items() if t.data_type != TensorProto.UNDEFINED and _elements(t) >= 16}
    done = []
    renamed: dict[str, str] = {}
    for names in identical_groups(arrays, tolerance):
        keep = names[0]
        for copy in names[1:]:
            renamed[copy] = keep
            done.append(TensorShare(copy, arrays[copy].size, arrays[copy].nbytes, 0, f"tied to {keep}", _rms_error(arrays[copy], arrays[keep])))
    if renamed:
        for node in model.graph.node:
            for i, name in enumerate(node.input):
                if name in renamed:
                    node.input[i] = renamed[name]
        for value in model.graph.output:
            if value.name in renamed:  # a graph output must keep its name: leave that copy in place
                renamed.pop(value.name)
        kept = [t for t in model.graph.initializer if t.name not in renamed]
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
    return done


def give_codebooks(model: onnx.ModelProto, clusters: int, min_elements: int, energy: dict[str, np.ndarray], show_progress: bool = False) -> list[TensorShare]:
    """Replace each large float weight with a codebook and indices restored by a lookup (in place)."""
    inits = initializer_map(model.graph)
    outputs = {v.name for v in model.graph.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    taken = all_value_names(model.graph)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    packed = clusters <= 16 and opset >= 11  # BitShift, to unpack 4-bit indices, is opset 11
    candidates = [
        name for name, t in inits.items()
        if t.data_type == TensorProto.FLOAT and _elements(t) >= min_elements and name not in outputs
        and readers.get(name) and all(WEIGHTED.get(n.op_type) == list(n.input).index(name) for n in readers[name])
    ]
    done, lookups = [], []
    for name in track(candidates, "fitting codebooks", enabled=show_progress):
        array = to_array(inits[name]).astype(np.float32)
        scales = _channel_scales(array, _output_axis(readers[name][0], array.ndim))
        codebook, indices = kmeans_1d(array / scales, clusters, weights=_weights_of(array, readers[name], energy))
        restored = codebook[indices.astype(np.int64)].reshape(array.shape) * scales
        nodes, tensors = _lookup(name, array.shape, codebook, indices, scales, packed, opset, taken)
        lookups.extend(nodes)
        model.graph.initializer.extend(tensors)
        after = sum(len(t.raw_data) or t.ByteSize() for t in tensors)
        done.append(TensorShare(name, array.size, array.nbytes, after, f"codebook {clusters}" + ("" if packed or clusters > 16 else " (8-bit indices: opset < 11)"),
                                _rms_error(restored, array)))
    if done:
        gone = {d.name for d in done}
        kept = [t for t in model.graph.initializer if t.name not in gone]
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
        rest = list(model.graph.node)
        del model.graph.node[:]
        model.graph.node.extend(lookups + rest)  # lookups read initializers only: they can come first
    return done


def _output_axis(reader: onnx.NodeProto, ndim: int) -> int:
    """The axis of a weight's output channels (rows of a Gather table)."""
    if reader.op_type == "Gather":
        return 0
    return weight_axes(reader, ndim)[1]


def _channel_scales(array: np.ndarray, axis: int) -> np.ndarray:
    """Each output channel's largest magnitude (1 for an all-zero channel), shaped to broadcast over ``array``.

    One codebook is shared by channels of very different ranges; dividing each
    by its own scale first lets the codes follow the shape of the values rather
    than the spread between channels, for one float per channel.
    """
    other = tuple(i for i in range(array.ndim) if i != axis)
    peak = np.abs(array).max(axis=other, keepdims=True) if other else np.abs(array)
    return np.where(peak > 0, peak, 1.0).astype(np.float32)


def _lookup(name: str, shape: tuple, codebook: np.ndarray, indices: np.ndarray, scales: np.ndarray, packed: bool, opset: int, taken: set[str]):
    """Nodes and initializers that compute tensor ``name``: Gather(codebook, indices) * per-channel scales."""
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
    nodes.append(helper.make_node("Mul", [normalized, scale], [name], name=fresh("scale")))
    return nodes, tensors


def _unsqueeze(tensor: str, axis: str, output: str, opset: int, name: str) -> onnx.NodeProto:
    if opset >= 13:
        return helper.make_node("Unsqueeze", [tensor, axis], [output], name=name)
    return helper.make_node("Unsqueeze", [tensor], [output], name=name, axes=[1])


def _weights_of(array: np.ndarray, readers: list[onnx.NodeProto], energy: dict[str, np.ndarray]) -> np.ndarray | None:
    """Per element: the mean square of the input channel it multiplies (summed over the layers that read it), or None without data."""
    total = None
    for node in readers:
        channel = energy.get(node.name)
        if channel is None or node.op_type == "Gather":
            continue
        axis = weight_axes(node, array.ndim)[0]
        if array.shape[axis] != channel.size:  # grouped convolutions: their columns are not the input's channels
            continue
        shape = [1] * array.ndim
        shape[axis] = channel.size
        part = np.broadcast_to(channel.reshape(shape), array.shape)
        total = part if total is None else total + part
    return total


def _input_energy(model: onnx.ModelProto, source, show_progress: bool) -> dict[str, np.ndarray]:
    """Layer -> mean square of each input channel over the data."""
    moments = input_moments(model, source, show_progress=show_progress, description="input statistics")
    return {name: m.mean_square for name, m in moments.items()}


def _measure(original: onnx.ModelProto, shared: onnx.ModelProto, held: list, input_shapes, config: ShareConfig, report: ShareReport) -> None:
    report.file_bytes = BeforeAfter(model_file_bytes(original), model_file_bytes(shared))
    report.zipped_bytes = BeforeAfter(_zipped(original), _zipped(shared))
    feed = held[0][1] if held else _random_feed(original, input_shapes)
    if held:
        report.evaluation = f"{len(held)} held-out batch(es)"
        report.fidelity = fidelity(Runner(original, threads=None, label="original"), shared, held, label="shared model")
    elif feed is not None:
        report.evaluation = "random inputs (no --data): fidelity on noise says little about real inputs"
        report.fidelity = fidelity(Runner(original, threads=None, label="original"), shared, [("random", feed)], label="shared model")
        report.warnings.append("no --data: the fidelity is measured on random inputs, and the codebooks were fitted to the weights alone")
    if feed is not None and config.latency_runs > 0:
        report.latency, report.latency_1_thread = latency_ratios(original, shared, feed, threads=config.threads, runs=config.latency_runs, labels=("original", "shared model"))
        if report.latency.ratio is not None and report.latency.ratio > 1.05:
            report.warnings.append(f"the shared model ran at {report.latency.ratio:.2f}x the original's latency: onnxruntime did not fold every lookup")


def _random_feed(model: onnx.ModelProto, input_shapes) -> dict | None:
    try:
        return next(iter(open_data("random", graph_inputs(model), input_shapes=input_shapes, random_batches=1)))[1]
    except Exception:  # inputs of unknown size: no timing, and the report says there was no data
        return None


def _zipped(model: onnx.ModelProto) -> int:
    """Bytes of the model file compressed with DEFLATE (what a .zip download costs); 0 for models over 2 GB."""
    if model.ByteSize() >= 2**31:
        return 0
    return len(zlib.compress(model.SerializeToString(), 9))


def _elements(tensor: onnx.TensorProto) -> int:
    return int(np.prod(tensor.dims)) if tensor.dims else 1


def _rms_error(approx: np.ndarray, exact: np.ndarray) -> float:
    scale = float(np.sqrt(np.mean(np.square(exact, dtype=np.float64)))) or 1.0
    return float(np.sqrt(np.mean(np.square(approx.astype(np.float64) - exact)))) / scale
