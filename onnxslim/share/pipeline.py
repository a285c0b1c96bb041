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
   layer's output most are reproduced best; 16-code weights also take
   error-compensated indices and a codebook refit from the whole Gram matrix
   (:mod:`onnxslim.share.encode`), and the accuracy budget moves the weights
   that cost the most up a step (:mod:`onnxslim.share.budget`).

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
from onnx import TensorProto

from onnxslim.data.sources import DataSource, batch_of_one_note, check_input_shapes, evaluation_split, for_several_passes, open_data, random_batch_or_none
from onnxslim.errors import NothingToDoError, UsageError
from onnxslim.ir.io import load_model, model_file_bytes, model_label
from onnxslim.ir.tensors import graph_inputs, initializer_map, to_array
from onnxslim.measure import LatencyComparison, RememberedReference, evaluation_warnings, fidelity, latency_ratios
from onnxslim.measure.channels import input_grams, input_moments
from onnxslim.options import check_settings, setting
from onnxslim.passes import Pipeline, constants_to_initializers, initializers_out_of_inputs
from onnxslim.passes.naming import name_unnamed_nodes
from onnxslim.records import BeforeAfter, Record
from onnxslim.runtime import Runner
from onnxslim.runtime.probe import check_random_batch
from onnxslim.runtime.session import optimized_ops
from onnxslim.runtime.write import write_verified
from onnxslim.share.budget import within_budget
from onnxslim.share.codebook import identical_groups
from onnxslim.share.encode import TensorShare, codebook_candidates, compensable_layers, encode, fit_codebooks, fit_one, rms_error

CLUSTERS = (0, 16, 256)
# the per-layer statistics are kept by node name: an unnamed node gets one, as quantize and prune give it
PREPARE = Pipeline((initializers_out_of_inputs, constants_to_initializers, name_unnamed_nodes))


@dataclass(frozen=True)
class ShareConfig:
    """How to share: codebook size, which tensors, the tie tolerance; data, timing and fidelity settings."""

    clusters: int = setting(
        256, "Codebook size per weight: 256 (8-bit indices) or 16 (4-bit: half the bytes of 256; with --data, indices compensate each "
        "other's error on the layer's outputs); 0: only tie identical tensors.", low=0
    )
    min_elements: int = setting(4096, "Give a codebook only to weights of at least this many values.", low=1)
    tolerance: float = setting(0.0, "Tie tensors equal within this share of their largest magnitude (0: bitwise identical only).", low=0.0, high=0.1)
    accuracy_budget: float | None = setting(
        0.99, "With held-out data: give the weights that cost the most accuracy 256 codes (from 16) or keep them float (from 256) until every output's "
        "cosine reaches this; 'none': no search.", low=-1.0, high=1.0, metavar="SCORE|none",
    )
    max_calibration_samples: int | None = setting(None, "Use at most this many batches of the data.", low=1, option="--max-samples")
    eval_fraction: float = setting(0.2, "Share of --data held out for the fidelity check.", low=0.0, high=0.5)
    max_eval_batches: int = setting(64, "Measure fidelity on at most this many held-out batches.", low=1)
    threads: int = 0  # onnxruntime intra-op threads to time at, the count the user deploys with (0: onnxruntime's default); 1 thread is timed too
    latency_runs: int = setting(30, "Timed runs of the original and the shared model, interleaved; fewer (8 at least) once one is clearly faster (0: no timing).", low=0)

    def __post_init__(self) -> None:
        check_settings(self)
        if self.clusters not in CLUSTERS:
            raise UsageError(f"--clusters must be one of {', '.join(map(str, CLUSTERS))} (got {self.clusters})")


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
    kept_for_budget: list[dict] = field(default_factory=list)  # weights given more codes (or kept float) for the accuracy budget, worst first
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
    label = model_label(model)
    original = load_model(model)
    check_input_shapes(input_shapes, graph_inputs(original))  # also without data, where only the random batch reads them
    work = load_model(original)
    PREPARE(work)
    report = ShareReport(label, str(output) if output else None, dict(config.__dict__))
    source = for_several_passes(open_data(data, graph_inputs(original), input_shapes=input_shapes), config.max_calibration_samples) if data is not None else None
    source, held, _ = evaluation_split(
        source, eval_data, graph_inputs(original), fraction=config.eval_fraction, cap=config.max_eval_batches, input_shapes=input_shapes
    )
    random_feed = None if held else random_batch_or_none(graph_inputs(original), input_shapes)  # unknown sizes: no timing
    if random_feed is not None:
        check_random_batch(original, random_feed, label)  # before the codebooks are fitted: a batch the model refuses says so at once
    report.tensors.extend(tie_identical(work, config.tolerance))
    result = work
    if config.clusters:
        energy = _input_energy(work, source, show_progress) if source is not None else {}
        grams = _input_grams(work, source, config, show_progress) if source is not None and config.clusters <= 16 else None
        fits = fit_codebooks(work, config.clusters, config.min_elements, energy, show_progress, grams)
        result, coded = encode(work, fits)
        if fits and held and config.accuracy_budget is not None:
            refit = lambda name, clusters: fit_one(work, name, clusters, energy, grams)  # noqa: E731
            result, coded, report.kept_for_budget, missed = within_budget(original, work, fits, refit, held, config.accuracy_budget, show_progress)
            if missed:
                report.warnings.append(missed)
        report.tensors.extend(coded)
    if not report.tensors:
        raise NothingToDoError(f"{label}: nothing to share (no identical tensors, and no float weight of at least {config.min_elements} values)")
    _measure(original, result, held, random_feed, input_shapes, config, report)
    if output is not None:
        write_verified(result, output, source=None if isinstance(model, onnx.ModelProto) else model)
    return result, report


def tie_identical(model: onnx.ModelProto, tolerance: float) -> list[TensorShare]:
    """Point every reader of a tensor that repeats another at the first one; the copies are dropped."""
    inits = initializer_map(model.graph)
    arrays = {name: to_array(t) for name, t in inits.items() if t.data_type != TensorProto.UNDEFINED and int(np.prod(t.dims)) >= 16}
    done = []
    renamed: dict[str, str] = {}
    for names in identical_groups(arrays, tolerance):
        keep = names[0]
        for copy in names[1:]:
            renamed[copy] = keep
            done.append(TensorShare(copy, arrays[copy].size, arrays[copy].nbytes, 0, f"tied to {keep}", rms_error(arrays[copy], arrays[keep])))
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


def _input_grams(model: onnx.ModelProto, source, config: ShareConfig, show_progress: bool) -> dict[str, np.ndarray]:
    """Input tensor -> X^T X over the data, for the layers whose 16-code weights get error-compensated indices."""
    layers = compensable_layers(model, codebook_candidates(model, config.min_elements))
    if not layers:
        return {}
    grams, _ = input_grams(model, layers, source, show_progress=show_progress, description="input Gram matrices")
    return grams


def _input_energy(model: onnx.ModelProto, source, show_progress: bool) -> dict[str, np.ndarray]:
    """Layer -> mean square of each input channel over the data."""
    moments = input_moments(model, source, show_progress=show_progress, description="input statistics")
    return {name: m.mean_square for name, m in moments.items()}


def _measure(original: onnx.ModelProto, shared: onnx.ModelProto, held: list, random_feed, input_shapes, config: ShareConfig, report: ShareReport) -> None:
    """Sizes; fidelity on the held-out batches, or else on ``random_feed`` (None: sizes unknown, neither compared nor timed); latency."""
    report.file_bytes = BeforeAfter(model_file_bytes(original), model_file_bytes(shared))
    report.zipped_bytes = BeforeAfter(_zipped(original), _zipped(shared))
    feed = held[0][1] if held else random_feed
    if held:
        report.evaluation = f"{len(held)} held-out batch(es)"
        report.fidelity = fidelity(RememberedReference(Runner(original, threads=None, label="original")), shared, held, label="shared model")
        report.warnings.extend(evaluation_warnings(report.fidelity, report.evaluation))
    elif feed is not None:
        report.evaluation = "random inputs (no --data): fidelity on noise says little about real inputs"
        report.fidelity = fidelity(RememberedReference(Runner(original, threads=None, label="original")), shared, [("random", feed)], label="shared model")
        report.warnings.append(f"no --data: the fidelity is measured on random inputs{batch_of_one_note(graph_inputs(original), input_shapes)}, "
                               "and the codebooks were fitted to the weights alone")
    if feed is not None and config.latency_runs > 0:
        report.latency, report.latency_1_thread = latency_ratios(original, shared, feed, threads=config.threads, runs=config.latency_runs, labels=("original", "shared model"))
        if report.latency.ratio is not None and report.latency.ratio > 1.05:
            report.warnings.append(f"the shared model ran at {report.latency.ratio:.2f}x the original's latency: {_why_slower(original, shared)}")


def _why_slower(original: onnx.ModelProto, shared: onnx.ModelProto) -> str:
    """Whether onnxruntime left lookups to run (more nodes than the original's once both are optimized at load), said
    as found: a slower timing with every lookup folded is the same kernels timed again, not the codebooks."""
    left = sum(optimized_ops(shared).values()) - sum(optimized_ops(original).values())
    if left > 0:
        return f"onnxruntime did not fold every lookup ({left} more node(s) run than in the original)"
    return "yet onnxruntime folded every lookup when loading it (no more nodes run than in the original), so the codebooks cost no time at run time"


def _zipped(model: onnx.ModelProto) -> int:
    """Bytes of the model file compressed with DEFLATE (what a .zip download costs); 0 for models over 2 GB."""
    if model.ByteSize() >= 2**31:
        return 0
    return len(zlib.compress(model.SerializeToString(), 9))
