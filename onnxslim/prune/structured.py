"""``prune``: find coupled channel groups, rank them, cut the weights, verify, recover.

Contract: the input model is not modified; inputs and outputs keep their names
and shapes; at ratio 0 no weight changes, so outputs are bit-identical (but where
sums of parallel convolutions were merged into one: the same within float rounding); a group
is either pruned consistently everywhere its channels reach or left whole with
its reason in the report; the result must pass the checker and run in
onnxruntime with the original output shapes, or nothing is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import onnx

from onnxslim.data.sources import DataSource, batch_of_one_note, check_input_shapes, evaluation_split, for_several_passes, open_data, random_batch_or_none
from onnxslim.errors import ModelWriteError, NothingToDoError, OnnxSlimError, UsageError
from onnxslim.ir.counts import MAC_OPS, count_macs, count_parameters, node_macs
from onnxslim.ir.io import load_model, model_file_bytes, model_label, model_weight_bytes
from onnxslim.ir.layers import WEIGHTED_LAYERS
from onnxslim.ir.loops import in_front_of_loops
from onnxslim.ir.mapped import has_mapped, spill
from onnxslim.ir.quantized import refuse_blocked_layout, refuse_quantized
from onnxslim.ir.scopes import all_nodes
from onnxslim.ir.shapes import infer_shapes
from onnxslim.ir.tensors import graph_inputs, initializer_map, producer_map, subgraphs, to_array
from onnxslim.measure import LatencyComparison, RememberedReference, evaluation_warnings, fidelity, latency_ratios
from onnxslim.measure.channels import ChannelMoments, input_moments
from onnxslim.measure.latency import also_one_thread, disagreement, interleaved_latency, keep_fallback, threads_text
from onnxslim.options import check_settings, setting
from onnxslim.passes import (
    SAVED_BY_ONNXRUNTIME,
    PassResult,
    Pipeline,
    constants_to_initializers,
    einsum_to_matmul,
    fold_constants,
    initializers_out_of_inputs,
    parallel_convs_as_one,
    picked_concat_inputs_read_directly,
    recurrent_loops_as_layers,
    remove_dead_nodes,
    remove_identities,
    repeated_heads_as_gathers,
    zero_initial_states_left_out,
)
from onnxslim.passes.batchnorm import normalization_scale
from onnxslim.passes.naming import name_unnamed_nodes
from onnxslim.passes.static_dims import fold_static_dims
from onnxslim.prune.branches import branches_with_layers, prune_branches
from onnxslim.prune.edits import EditRole, GroupedInput, SliceInput, WorkingWeights
from onnxslim.prune.groups import Groups, apply_removal, build_groups, kept_positions, renormalized
from onnxslim.prune.importance import DATA_METHODS, METHODS, class_costs, class_scores, linear_consumer_edits, second_order_scores
from onnxslim.prune.recover import RecoveryStep, as_matrix, recover, refittable
from onnxslim.prune.select import GroupOutcome, GroupReport, SelectionSettings, considered, select
from onnxslim.prune.trace import trace
from onnxslim.prune.unstructured import magnitude_sparsify
from onnxslim.prune.widths import CANDIDATE_MULTIPLES, WidthChoice, cache_key, cached, choice_stopper, choose_multiple, remember
from onnxslim.records import BeforeAfter, Record
from onnxslim.report import nothing_written
from onnxslim.runtime import Runner
from onnxslim.runtime.probe import check_random_batch, check_runs, runtime_shapes
from onnxslim.runtime.shapes import known_shapes
from onnxslim.runtime.write import write_verified

MAX_MEASURED_BYTES = 256 * 2**20  # models with more weights keep the exact counts unless --round-to says otherwise


def only_setting():
    """``--only``, one definition for prune and compress."""
    return setting("all", "Prune only whole attention heads, or only channels and neurons.", choices=("all", "heads", "channels"))


@dataclass(frozen=True)
class PruneConfig:
    """How to prune.

    ratio: share of each group's channels to remove (0..1).
    importance: 'l1', 'l2' (magnitude, BatchNorm-aware), 'activation' (variance times
        weights, needs data) or 'second-order' (the output error left after the refit of
        every linear consumer, from the inputs' covariance, removing greedily; needs data,
        and with a recovery other than 'refit' it is 'activation'); 'auto' (the default):
        'second-order' with data and refit, 'activation' with data and another recovery,
        'l2' without data.
    scope: 'local' ranks within each group; 'global' ranks all groups together
        (scores normalized per group) and removes ``ratio`` of all channels; 'cost'
        ranks them by normalized score per multiply-accumulate saved and removes
        ``ratio`` of the prunable multiply-accumulates (ratios differ per group).
    round_to: keep channel counts at multiples of this; 0 (the default) measures the
        candidates 1, 4, 8, 16 and 32 against the original on the timing batch and
        keeps the fastest (onnxruntime's blocked kernels want multiples of their
        vector width; which multiple pays depends on the model and the machine).
    target_params / target_macs: instead of ``ratio``, the smallest global ratio
        reaching at most this share (0..1) of the original parameters / MACs.
    recovery: 'auto' (the default: 'refit' when data is given, 'none' without),
        'none', 'bias' (add the mean contribution of removed channels to the
        consumer's bias) or 'refit' (ridge least squares of linear consumers and
        convolutions against the original model's outputs, the ridge toward the layer's
        own weights and its strength chosen on held-out batches; then 'bias' for the
        others); needs data.
    unstructured: zero the smallest weights per layer to ``ratio`` sparsity instead.
    token_mask: name of an input whose zeros mark padding tokens (``attention_mask``,
        used by default when the model has an input of that name): activation
        statistics and recovery then use real tokens only; 'none' turns it off.
    only: 'all', 'heads' (whole attention heads only) or 'channels' (channels and
        neurons, no heads).
    """

    ratio: float = setting(0.3, "Share of each group's channels to remove (or, with --unstructured, of each layer's weights to zero).", low=0.0, high=1.0, high_open=True)
    importance: str = setting(
        "auto",
        "Channel ranking: weight magnitude (BatchNorm-aware), activation-aware, or second-order (the error left after the refit; both need --data); "
        "auto: second-order with --data (activation under --recovery bias or none), l2 without.",
        choices=("auto", *METHODS),
    )
    scope: str = setting(
        "local", "Rank within each group, across all groups, or across all groups per multiply-accumulate saved (cost: --ratio of the MACs).",
        choices=("local", "global", "cost"),
    )
    round_to: int = setting(0, "Keep channel counts at multiples of this (0: the multiple measured fastest on this machine, of 1, 4, 8, 16, 32).", low=0)
    target_params: float | None = setting(None, "Instead of --ratio: keep at most this share of the parameters.", low=0.0, high=1.0, low_open=True)
    target_macs: float | None = setting(None, "Instead of --ratio: keep at most this share of the multiply-accumulates.", low=0.0, high=1.0, low_open=True)
    recovery: str = setting("auto", "Retraining-free recovery (auto: refit when data is given, else none).", choices=("auto", "none", "bias", "refit"))
    ridge: float = 1e-2  # the refit's ridge strength when there are too few batches to choose one on held-out ones
    token_mask: str | None = setting(
        None, "Input whose zeros mark padding tokens, left out of statistics and recovery (default: attention_mask when the model has it; 'none': off).", metavar="INPUT"
    )
    unstructured: bool = setting(False, "Zero the smallest weights instead of removing channels (smaller after compression, not faster).")
    only: str = only_setting()
    max_calibration_samples: int | None = setting(None, "Use at most this many batches of the data.", low=1, option="--max-samples")
    eval_fraction: float = setting(0.2, "Share of --data held out for the fidelity check.", low=0.0, high=0.5)
    max_eval_batches: int = setting(64, "Measure fidelity on at most this many held-out batches.", low=1)
    threads: int = 0  # onnxruntime intra-op threads to time at, the count the user deploys with (0: onnxruntime's default); 1 thread is timed too
    latency_runs: int = setting(30, "Timed runs of the original and the pruned model, interleaved; fewer (8 at least) once one is clearly faster (0: no timing).", low=0)
    if_slower: str = setting(
        "keep-original", "What to write when the pruned model is not faster than the original.", choices=("keep-original", "write", "fail")
    )

    @property
    def selection(self) -> SelectionSettings:
        return SelectionSettings(scope=self.scope, only=self.only, round_to=self.round_to)

    @property
    def budgeted(self) -> bool:
        """The amount is a parameter or MAC budget (--target-params / --target-macs) rather than --ratio."""
        return bool(self.target_params or self.target_macs)

    def __post_init__(self) -> None:
        check_settings(self)

    def with_data(self, has_data: bool) -> PruneConfig:
        """The settings with 'auto' resolved: refit and second-order ranking when there is data, no recovery and l2 otherwise."""
        config = self
        if config.recovery == "auto":
            config = dataclasses.replace(config, recovery="refit" if has_data else "none")
        if config.importance == "auto":
            ranking = ("second-order" if config.recovery == "refit" else "activation") if has_data else "l2"
            config = dataclasses.replace(config, importance=ranking)
        return config


@dataclass
class PruneReport(Record):
    """What ``prune`` did: every group, sizes before and after, recovery, fidelity and latency against the original."""

    command: ClassVar[str] = "prune"

    model: str
    output: str | None
    mode: str
    config: dict
    parameters: BeforeAfter = BeforeAfter()
    macs: BeforeAfter = BeforeAfter()
    macs_unknown: list[str] = field(default_factory=list)  # weighted nodes of either model whose shapes are unknown: not in ``macs``
    file_bytes: BeforeAfter = BeforeAfter()
    latency: LatencyComparison | None = None  # at --threads, the count the user deploys with
    latency_1_thread: LatencyComparison | None = None  # the same at 1 thread, when --threads is another count
    fidelity: list = field(default_factory=list)
    groups: list[GroupReport] = field(default_factory=list)
    recovery: list[RecoveryStep] = field(default_factory=list)
    sparsity: list[str] = field(default_factory=list)
    prepare: list[PassResult] = field(default_factory=list)
    # or "original", when the pruned model was not faster (--if-slower keep-original); "nothing" in the report a refusal carries
    written: str = "pruned"
    evaluation: str = ""  # the data the fidelity was measured on
    warnings: list[str] = field(default_factory=list)
    widths: WidthChoice | None = None

    @property
    def pruned_groups(self) -> list[GroupReport]:
        return [g for g in self.groups if g.channels_after < g.channels_before]


def fold_fixed_sizes(model: onnx.ModelProto) -> PassResult:
    """Sizes read off shapes that the model fixes become constants, and the arithmetic on them is folded."""
    result = fold_static_dims(model, _fixed_input_shapes(model))
    if result.modified:
        folded = fold_constants(model)
        result.changes.extend(folded.changes)
        result.declined.extend(folded.declined)
    return result


# Only steps that leave every output as it was, bit-identical (ratio 0 must change nothing), but one: the sums of parallel
# convolutions of one input become one convolution (the same sums within float rounding), so that a multi-branch block
# exported as trained is pruned as the one layer it is once deployed, not as branches tied by their Adds (timm's
# mobileone_s0 at 0.3 without data, one thread: 3 of 5 channel groups pruned, 0.64x the export's latency; merged first, 19 of 23, 0.18x)
# a key/value head repeated for its query heads (grouped-query attention) is listed once per query head, after the
# sizes fold (the repeat's target is a constant by then), so that query heads go one at a time. An LSTM or GRU a
# converter unrolled into a Loop becomes the node it is (the same sums, in another order), whose hidden units prune
PREPARE = Pipeline((*SAVED_BY_ONNXRUNTIME, initializers_out_of_inputs, constants_to_initializers, remove_identities, fold_constants, einsum_to_matmul,
                    parallel_convs_as_one, fold_fixed_sizes, repeated_heads_as_gathers, recurrent_loops_as_layers, zero_initial_states_left_out,
                    picked_concat_inputs_read_directly, remove_dead_nodes, name_unnamed_nodes))


def _bn_scales(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Producer node -> gamma / sqrt(var + eps) of the BatchNormalization right after it."""
    inits = initializer_map(model.graph)
    producers = producer_map(model.graph)
    scales = {}
    for node in model.graph.node:
        if node.op_type != "BatchNormalization" or not all(n in inits for n in node.input[1:5]):
            continue
        producer = producers.get(node.input[0])
        if producer is None:
            continue
        scales[producer.name] = normalization_scale(node, inits)
    return scales


class _OnDemand(Mapping):
    """A read-only mapping whose values are computed on each access and never stored."""

    def __init__(self, compute, keys):
        self._compute, self._keys = compute, keys

    def __getitem__(self, key):
        if key not in self._keys:
            raise KeyError(key)
        return self._compute(key)

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def channel_scores(
    model: onnx.ModelProto, groups: Groups, importance: str, moments: Mapping[str, ChannelMoments] | None = None, *,
    ridge: float = 1e-2, selection: SelectionSettings | None = None,
) -> dict[int, float]:
    """Importance of every class of ``groups`` (higher: keep), read from ``model``'s weights one tensor at a time.

    ``moments``: the consumers' input statistics, for the data-driven rankings (with covariances for 'second-order',
    whose greedy order runs over the classes ``selection`` may remove).
    """
    view = WorkingWeights(model, set())
    keys = {(edit.node, edit.index) for edit in groups.tracing.edits if isinstance(edit, (SliceInput, GroupedInput))}
    # read one at a time and not kept: for a model with weights on disk they are memory maps
    weights = _OnDemand(lambda key: view.read(*key), keys)
    energy = {name: m.variance for name, m in moments.items()} if moments is not None else None
    if importance == "second-order":
        covariances = {name: m.covariance for name, m in (moments or {}).items() if m.cross is not None}
        refit = _refit_matrices(model, groups)
        matrices = {name: refit[name] for name in covariances}
        roots = [tuple(considered(group, selection or SelectionSettings())) for group in groups.groups]
        return second_order_scores(
            groups.classes, roots, groups.tracing.edits, weights, matrices=matrices, covariances=covariances, channel_energy=energy or {}, ridge=ridge
        )
    return class_scores(groups.classes, groups.tracing.edits, weights, method=importance, bn_scale=_bn_scales(model), channel_energy=energy)


def _refit_matrices(model: onnx.ModelProto, groups: Groups) -> _OnDemand:
    """Node -> its weight as (inputs, outputs), for the consumers of ``groups`` a refit re-solves; computed when read."""
    inits = initializer_map(model.graph)
    readers = Counter(name for node in model.graph.node for name in node.input[1:] if name)
    consumers = {edit.node for edit in groups.tracing.edits if isinstance(edit, SliceInput) and edit.kind == EditRole.CONSUMER}
    nodes = {n.name: n for n in model.graph.node if n.name in consumers and refittable(model, n, inits, readers)}
    return _OnDemand(lambda name: as_matrix(to_array(inits[nodes[name].input[1]]), nodes[name]), set(nodes))


def _statistics(work: onnx.ModelProto, groups: Groups, source, config: PruneConfig, show_progress: bool,
                memo: dict | None = None) -> dict[str, ChannelMoments] | None:
    """The consumers' input statistics the ranking reads: none for magnitude; covariances of the refit layers for 'second-order'.

    ``memo``: statistics already gathered from this model on this data by an earlier pruning (at another amount), by what
    they cover; those are read instead of passing over the data again, and new ones are added.
    """
    if config.importance not in DATA_METHODS:
        return None
    covariance_for: set[str] = set()
    if config.importance == "second-order" and config.recovery == "refit":
        roots = {root for group in groups.groups for root in considered(group, config.selection)}
        atoms = {atom for root in roots for atom in groups.classes[root]}
        covariance_for = {
            edit.node for edit in linear_consumer_edits(groups.tracing.edits, _refit_matrices(work, groups)) if any(atom in atoms for atom in edit.layout.atoms)
        }
    key = (config.importance, config.token_mask, frozenset(covariance_for))
    if memo is not None and key in memo:
        return memo[key]
    moments = input_moments(work, source, token_mask=config.token_mask, show_progress=show_progress, cross_for=covariance_for)
    if memo is not None:
        memo[key] = moments
    return moments


def _fixed_input_shapes(model: onnx.ModelProto) -> dict | None:
    """The shapes that ``Shape`` nodes read, from one run of a model whose inputs all have fixed sizes (None otherwise).

    Such a model can only ever see these shapes, so whatever size it reads
    with ``Shape`` is a constant, including where ONNX shape inference gives up.
    """
    inputs = graph_inputs(model)
    if not inputs or any(spec.dtype is None or spec.shape is None or not all(isinstance(d, int) and d > 0 for d in spec.shape) for spec in inputs):
        return None
    feed = {spec.name: np.zeros(spec.shape, spec.dtype) for spec in inputs}
    read = {n.input[0] for n in model.graph.node if n.op_type == "Shape" and n.input}
    if not read:
        return None
    return runtime_shapes(model, feed, read) or None


def _shapes_for(model: onnx.ModelProto, source) -> dict:
    """Every tensor's shape on the first data batch, as onnxruntime computes it (exact where inference gives up)."""
    _, batch = next(iter(source))
    shapes = infer_shapes(model, {k: tuple(v.shape) for k, v in batch.items()})
    shapes.update(runtime_shapes(model, batch))
    return shapes


def prune(
    model: str | os.PathLike | onnx.ModelProto,
    data: str | os.PathLike | DataSource | None = None,
    *,
    config: PruneConfig = PruneConfig(),
    output: str | os.PathLike | None = None,
    eval_data: str | os.PathLike | DataSource | None = None,
    input_shapes=None,
    show_progress: bool = False,
) -> tuple[onnx.ModelProto, PruneReport]:
    """Prune ``model`` by ``config``, with optional ``data`` for ranking, recovery and checks; write to ``output`` when given.

    The arguments mirror :func:`onnxslim.quantize`: the model, its data, then keywords.
    """
    return _prune(model, data, config, output, eval_data, input_shapes, show_progress, memo=None, measured=True)


def pruned_unmeasured(model: onnx.ModelProto, data: DataSource, *, config: PruneConfig, memo: dict, show_progress: bool = False) -> tuple[onnx.ModelProto, PruneReport]:
    """:func:`prune` for a caller that prunes one model on the same data at several amounts and measures every result
    itself (compress): the activation statistics the ranking reads are gathered once and kept in ``memo`` (a dict the caller
    keeps for that model and data), and the pruned model is neither timed against the original nor compared with it here
    (``config.if_slower`` does not apply); the channel multiples are still timed, and parameters and MACs counted."""
    return _prune(model, data, config, None, None, None, show_progress, memo=memo, measured=False)


def _prune(model, data, config: PruneConfig, output, eval_data, input_shapes, show_progress: bool, *, memo: dict | None,
           measured: bool) -> tuple[onnx.ModelProto, PruneReport]:
    label = model_label(model)
    original = load_model(model)
    refuse_quantized(original, label, "prune")
    refuse_blocked_layout(original, label, "prune")
    check_input_shapes(input_shapes, graph_inputs(original))  # also without data, where only the random test batch reads them
    work = load_model(original)
    prepared = PREPARE(work)
    source = open_data(data, graph_inputs(original), input_shapes=input_shapes) if data is not None else None
    held_out, evaluation = [], ""
    if source is not None:
        source = for_several_passes(source, config.max_calibration_samples)
    if source is not None or eval_data is not None:
        source, held_out, evaluation = _evaluation_split(source, eval_data, original, config, input_shapes)
    config = config.with_data(source is not None)
    if (config.importance in DATA_METHODS or config.recovery != "none") and source is None:
        raise UsageError(f"--importance {config.importance} and recovery need calibration data: give --data")
    config = _resolve_token_mask(config, original)
    data_warnings = _data_warnings(data, eval_data, config, batch_of_one_note(graph_inputs(original), input_shapes))
    report = PruneReport(label, str(output) if output else None, "unstructured" if config.unstructured else "structured", config.__dict__.copy())
    report.prepare = prepared
    report.evaluation = evaluation
    report.warnings.extend(data_warnings)
    if data is not None and not held_out:
        report.warnings.append("no held-out data: fidelity is measured on the batches that ranked and refit the channels; give --eval-data or more batches")
    probe = _probe_feed(original, source, input_shapes)
    # without data, the random test batch's sizes (--input-shapes, a dynamic batch axis alone taken as 1) count the MACs
    without_data = {name: tuple(array.shape) for name, array in probe.items()} if probe is not None else dict(input_shapes or {})
    if source is not None:
        shapes = _shapes_for(work, source)
    else:
        shapes = known_shapes(work, without_data)
        if probe is not None:  # a run of the random test batch sizes what inference leaves unknown, as a data batch does
            seen = runtime_shapes(work, probe)
            if not seen:  # the run failed or could not expose its tensors: the original on the same batch says which
                check_random_batch(original, probe, label)
            shapes.update(seen)
    # the work of a Loop body has no count: where preparation wrote unrolled LSTM and GRU steps as layer nodes, the original's
    # multiply-adds are those of the prepared graph, which computes the same
    prepared_macs = count_macs(work, shapes) if any(r.name == "recurrent-loops-as-layers" and r.modified for r in prepared) else None
    if config.unstructured:
        pruned, lines = magnitude_sparsify(work, config.ratio)
        report.sparsity.extend(lines)
        report.warnings.append("unstructured sparsity keeps every tensor's shape: the model compresses better but dense runtimes do not run it faster")
    else:
        pruned = _remove_channels(work, shapes, source, probe, config, report, label, show_progress, memo)
    if has_mapped(original):
        pruned = spill(pruned)
    _check_result(original, pruned, probe, report, label)
    _measure(original, pruned, shapes, held_out or source, probe if measured else None, config, report, compared=measured, prepared_macs=prepared_macs)
    result = _never_slower(original, pruned, config, report) if measured else pruned
    if output is not None:
        write_verified(result, output, source=None if isinstance(model, onnx.ModelProto) else model)
    return result, report


def _never_slower(original: onnx.ModelProto, pruned: onnx.ModelProto, config: PruneConfig, report: PruneReport) -> onnx.ModelProto:
    """The model to write: the pruned one, unless it was measured no faster than the original (``if_slower``)."""
    if report.mode != "structured":
        return pruned
    ratio = report.latency.ratio if report.latency is not None else None
    if ratio is None:
        if config.latency_runs > 0:
            report.warnings.append("the pruned model was not timed (its inputs have unknown sizes): give --data or --input-shapes to check it is faster")
        return pruned
    message = f"the pruned model is not faster than the original ({ratio:.2f}x its latency at {threads_text(config.threads)})"
    use_original, warning = keep_fallback(
        ratio, config.if_slower, keep="keep-original", message=message, kept="wrote the original model instead (--if-slower write writes the pruned one anyway)"
    )
    if warning:
        report.warnings.append(warning)
    if use_original:
        report.written = "original"
        return original
    return pruned


def _computed_weights(model: onnx.ModelProto) -> str:
    """'; the weights of N layers are computed at run time by OP' when that is why no layer is prunable, else ''."""
    producers = producer_map(model.graph)
    makers = Counter(producers[n.input[1]].op_type for n in model.graph.node
                     if n.op_type in WEIGHTED_LAYERS and len(n.input) > 1 and n.input[1] in producers)
    if not makers:
        return ""
    return "; the weights of " + ", ".join(f"{count} layer(s) are computed at run time by {op}" for op, count in makers.most_common())


def _layers_in_bodies(model: onnx.ModelProto) -> str:
    """'; N Conv layer(s) sit inside the bodies of Loop ...' for layers prune does not reach there, else ''."""
    holders: Counter = Counter()
    layers: Counter = Counter()
    for node in model.graph.node:
        inside = [n.op_type for sub in subgraphs(node) for n in all_nodes(sub) if n.op_type in WEIGHTED_LAYERS]
        if inside:
            holders[node.op_type] += 1
            layers.update(inside)
    if not layers:
        return ""
    found = ", ".join(f"{count} {op}" for op, count in layers.most_common())
    where = ", ".join(f"{count} {op} node(s)" for op, count in holders.most_common())
    return f"; {found} layer(s) sit inside the bodies of {where}, which prune leaves as they are (quantize enters them)"


def _remove_channels(
    work: onnx.ModelProto, shapes: dict, source, probe: dict | None, config: PruneConfig, report: PruneReport, label: str, show_progress: bool,
    memo: dict | None = None,
) -> onnx.ModelProto:
    """Trace, group, score, select and cut; then recover from the data when there is some (``memo``: see :func:`_statistics`)."""
    groups = build_groups(trace(work, shapes))
    report.warnings.extend(groups.tracing.unprunable.values())
    if not any(group.roots for group in groups.groups) and branches_with_layers(work):
        return _remove_channels_in_branches(work, source, config, report, label, show_progress, main="no prunable layer in the main graph")
    if not any(group.roots for group in groups.groups):
        raise NothingToDoError(f"{label}: no prunable layer (Conv, ConvTranspose, Gemm or MatMul with constant weights){_computed_weights(work)}{_layers_in_bodies(work)}")
    scores = channel_scores(work, groups, config.importance, _statistics(work, groups, source, config, show_progress, memo), ridge=config.ridge, selection=config.selection)
    costs = class_costs(groups.classes, groups.tracing.edits, _node_macs(work, shapes)) if config.scope == "cost" else None

    def ratio_for(multiple: int) -> tuple[float, bool]:
        """--ratio, or under a parameter or MAC budget the ratio that meets it with channel counts at ``multiple`` (rounding keeps
        more channels at larger multiples, so one ratio for all would time every other multiple over the budget); and whether
        the budget can be met at that multiple."""
        if not config.budgeted:
            return config.ratio, True
        return _ratio_for_budget(work, groups, scores, shapes, dataclasses.replace(config, round_to=multiple), costs)

    removed, report.groups, report.widths = _select_widths(work, groups, scores, ratio_for, probe, config, show_progress, costs)
    if config.ratio > 0 and not removed and not config.target_params and not config.target_macs:
        if branches_with_layers(work):  # nothing to cut in the main graph, but inside its If branches there may be
            reasons = sorted({g.skipped for g in report.groups if g.skipped})[:3]
            main = f"no channel group of the main graph can be pruned ({'; '.join(reasons)})"
            return _remove_channels_in_branches(work, source, config, report, label, show_progress, main=main)
        free = [g for g in report.groups if g.outcome in (GroupOutcome.UNCHANGED, GroupOutcome.PARTLY_BLOCKED)]
        if free:
            largest = max(g.channels_before for g in free)
            if config.round_to > 1:
                raise nothing_written(
                    report, f"{label}: --ratio {config.ratio:g} removes no whole channel from any group at --round-to {config.round_to} (channel counts "
                    f"kept at multiples of {config.round_to}); at --round-to 1 a ratio of at least {1 / largest:.3g} removes one from the "
                    f"largest prunable group ({largest} channels)"
                )
            raise nothing_written(
                report, f"{label}: --ratio {config.ratio:g} removes no whole channel from any group (the largest prunable group has {largest} "
                f"channels: a ratio of at least {1 / largest:.3g} removes one from it)"
            )
        reasons = sorted({g.skipped for g in report.groups if g.skipped})[:3] + list(groups.tracing.unprunable.values())[:1]
        raise nothing_written(report, f"{label}: no channel group can be pruned ({'; '.join(reasons)})")
    pruned = apply_removal(work, groups, removed)
    statistics = renormalized(groups, removed)
    if statistics:
        kinds = " and ".join(sorted({n.op_type for n in work.graph.node if n.name in statistics}))
        report.warnings.append(
            f"{kinds} over pruned channels ({', '.join(statistics[:3])}{' ...' if len(statistics) > 3 else ''}): "
            "its statistics are now taken over the kept channels, so outputs change beyond the removed channels' share"
        )
    if source is not None and config.recovery != "none" and removed:
        report.recovery.extend(recover(work, pruned, source, config, kept_positions(groups, removed), show_progress=show_progress))
        remove_dead_nodes(pruned)
    if branches_with_layers(pruned):  # the branches' own channels: the main graph's cut left every tensor they read or return as it was
        pruned = _remove_channels_in_branches(pruned, source, config, report, label, show_progress)
    return pruned


def _remove_channels_in_branches(
    work: onnx.ModelProto, source, config: PruneConfig, report: PruneReport, label: str, show_progress: bool, *, main: str | None = None
) -> onnx.ModelProto:
    """Prune the channels inside ``work``'s If branches, one branch at a time (see :mod:`onnxslim.prune.branches`); ``main``: why
    nothing in the main graph was cut, when nothing was, so that a model where no branch could be pruned either is an error."""
    first_note = len(report.warnings)

    def prune_one(body: onnx.ModelProto, batches: list | None, branch: str) -> onnx.ModelProto | None:
        PREPARE(body)
        names = [spec.name for spec in graph_inputs(body)]
        body_config = config if config.token_mask in names else dataclasses.replace(config, token_mask=None)
        body_source = open_data(batches, graph_inputs(body)) if batches else None
        shapes = _shapes_for(body, body_source) if body_source is not None else infer_shapes(body)
        probe = batches[0] if batches else _probe_feed(body, None, None)
        where = f"{label}: {branch}"
        part = PruneReport(where, None, "structured", report.config)
        try:
            pruned = _remove_channels(body, shapes, body_source, probe, body_config, part, where, show_progress)
        except NothingToDoError as exc:
            text = str(exc)
            report.warnings.append(f"{branch} left as it is: {text.removeprefix(where + ': ')}")
            return None
        report.groups.extend(part.groups)
        report.recovery.extend(part.recovery)
        report.warnings.extend(part.warnings)
        report.widths = report.widths or part.widths
        return pruned

    pruned, done = prune_branches(work, source, prune_one, report.warnings.append)
    if not done:
        if main is not None:
            raise NothingToDoError(f"{label}: {main}, nor inside its If branches ({'; '.join(report.warnings[first_note:]) or 'nothing to prune'})")
        return work
    remove_dead_nodes(pruned)
    report.warnings.append(f"layers inside If branches: {', '.join(done)} pruned, each as a graph of its own with its inputs and outputs unchanged")
    return pruned


def _node_macs(model: onnx.ModelProto, shapes: dict) -> dict[str, int]:
    return {node.name: macs for node in model.graph.node if node.op_type in MAC_OPS and (macs := node_macs(node, shapes))}


def _select_widths(
    work: onnx.ModelProto, groups: Groups, scores, ratio_for, probe: dict | None, config: PruneConfig, show_progress: bool, costs=None
):
    """The classes to remove, the group reports, and the channel multiple used: the one given, or the fastest measured
    (``ratio_for(multiple)``: the ratio to select at with channel counts at that multiple)."""
    if config.round_to:
        removed, reports = select(groups, scores, ratio_for(config.round_to)[0], config.selection, costs)
        return removed, reports, WidthChoice(config.round_to, note="--round-to")
    weight_bytes = model_weight_bytes(work)
    measurable = probe is not None and config.latency_runs > 0 and weight_bytes <= MAX_MEASURED_BYTES
    choices = {}
    for m in CANDIDATE_MULTIPLES if measurable or not config.budgeted else (1,):  # a budget is solved again per multiple: only when they are timed
        ratio, meets = ratio_for(m)
        if meets or m == 1:  # a multiple whose smallest counts still exceed the budget is not a candidate; 1 comes closest
            choices[m] = select(groups, scores, ratio, dataclasses.replace(config.selection, round_to=m), costs)
    distinct: dict[frozenset, list[int]] = {}
    for m, (removed, _) in choices.items():
        if removed:  # a multiple that keeps every channel is the original model, not a way to prune it
            distinct.setdefault(frozenset(removed), []).append(m)
    if len(distinct) <= 1 or not measurable:
        if len(distinct) == 1 and (measurable or not config.budgeted):
            multiple = max(next(iter(distinct.values())))
            same = "every multiple that removes channels" + (" and meets the budget" if config.budgeted else "") + " removes the same ones"
            return *choices[multiple], WidthChoice(multiple, note=same)
        if not distinct:
            why = "no multiple removes a channel"
        elif probe is None or config.latency_runs == 0:
            why = "not measured: no timing batch" if probe is None else "not measured: --latency-runs 0"
        else:
            why = f"not measured: {weight_bytes / 1e9:.2f} GB of weights, and every candidate is held at once to time them (up to {MAX_MEASURED_BYTES / 1e6:.0f} MB); --round-to sets it"
        removed, reports = choices[1]
        return removed, reports, WidthChoice(1, note=why)
    # a decoder whose loop stops at an end token runs as many steps as its outputs ask for, and an unrecovered candidate's
    # outputs ask for any number: only the part in front of such loops is timed (the same cut of every model)
    original_timed = in_front_of_loops(work)
    settings = repr(sorted(sorted(r) for r in distinct))
    measured = {m for multiples in distinct.values() for m in multiples}
    digest = _digest(work)
    # the widths must be fast where the user deploys (--threads) and at 1 thread: each count is measured, the slower ratio counts
    by_threads, candidates = {}, None
    for threads in [config.threads] + ([1] if also_one_thread(config.threads) else []):
        key = cache_key(digest, settings + (" in front of loops" if original_timed is not None else ""), "CPUExecutionProvider", threads)
        ratios = cached(key)
        if ratios is None or set(ratios) != measured:
            if candidates is None:  # built once, for whichever thread counts the cache lacks
                candidates = [apply_removal(work, groups, set(removed)) for removed in distinct]
                cuts = [in_front_of_loops(c) for c in candidates] if original_timed is not None else []
                if cuts and all(cut is not None for cut in cuts):
                    candidates = cuts
                elif original_timed is not None:  # a candidate the same cut does not apply to: every model is timed whole
                    original_timed = None
                    key = cache_key(digest, settings, "CPUExecutionProvider", threads)
            runners = [Runner(original_timed or work, threads=threads, label="original")]
            runners += [Runner(c, threads=threads, label=f"candidate {i}") for i, c in enumerate(candidates)]
            runs = max(5, min(config.latency_runs, 20))
            samples = interleaved_latency(runners, probe, warmup=3, runs=runs, show_progress=show_progress, description=f"timing channel multiples ({threads_text(threads)})",
                                          until=choice_stopper([max(multiples) for multiples in distinct.values()]))
            # a candidate left out is compared with the original's runs of the same rounds
            ratios = {m: float(np.median(s)) / float(np.median(samples[0][: len(s)])) for s, multiples in zip(samples[1:], distinct.values()) for m in multiples}
            remember(key, ratios)
        by_threads[threads] = ratios
    worst = {m: max(r[m] for r in by_threads.values()) for m in measured}
    multiple = choose_multiple(worst)
    removed, reports = choices[multiple]
    one_thread = by_threads.get(1) if config.threads != 1 else None
    where = "in front of the loop(s) that stop at a condition the data decide" if original_timed is not None else ""
    return removed, reports, WidthChoice(multiple, by_threads[config.threads], config.threads, cached=candidates is None, measured_1_thread=one_thread or {},
                                         note=where)


def _digest(model: onnx.ModelProto) -> str:
    """A fingerprint of the model's graph and weights (of the weights' names and shapes only, for a model too large to serialize)."""
    if model.ByteSize() < 2**31 - 2**20:
        return hashlib.sha256(model.SerializeToString()).hexdigest()
    summary = [(t.name, tuple(t.dims), t.data_type) for t in model.graph.initializer] + [(n.name, n.op_type, tuple(n.input)) for n in model.graph.node]
    return hashlib.sha256(repr(summary).encode()).hexdigest()


def _check_result(original: onnx.ModelProto, pruned: onnx.ModelProto, probe: dict | None, report: PruneReport, label: str) -> None:
    """The same interface, and a run next to the original on ``probe`` with outputs of the same shapes."""
    _check_interface(original, pruned, label)
    if probe is None:
        report.warnings.append("the pruned model was not test-run: give --data or --input-shapes for its dynamic inputs")
        return
    problem = check_runs(original, pruned, probe)
    if problem is not None:
        raise OnnxSlimError(f"{label}: the pruned model fails a test run ({problem}); nothing written. This is a bug in onnxslim's rules, please report it")


def _measure(original: onnx.ModelProto, pruned: onnx.ModelProto, shapes: dict, source, probe, config: PruneConfig, report: PruneReport, *,
             compared: bool = True, prepared_macs: tuple | None = None) -> None:
    """Parameters, MACs and file bytes before and after; interleaved latency on ``probe`` (None: not timed); with data and
    ``compared``, fidelity. ``prepared_macs``: the original's count, taken on the prepared graph (see :func:`_prune`)."""
    inputs = [i.name for i in graph_inputs(original)]
    sizes = {k: v for k, v in ((s, shapes.get(s)) for s in inputs) if v and all(isinstance(d, int) for d in v)}
    new_shapes = known_shapes(pruned, sizes)
    report.parameters = BeforeAfter(count_parameters(original), count_parameters(pruned))
    if prepared_macs is not None:
        before, _, unknown_before = prepared_macs
    else:
        # ``shapes`` are the prepared graph's: the branches its preparation merged are the original's alone
        merged = any(r.name == "parallel-convs-as-one" and r.modified for r in report.prepare)
        original_shapes = {**known_shapes(original, sizes), **shapes} if merged else shapes
        before, _, unknown_before = count_macs(original, original_shapes)
        if unknown_before and original_shapes is shapes:  # nodes preparation rewrote (an Einsum as a MatMul) are the original's alone
            before, _, unknown_before = count_macs(original, {**known_shapes(original, sizes), **shapes})
    after, _, unknown_after = count_macs(pruned, new_shapes)
    if unknown_after and probe is not None:  # sizes inference leaves unknown, read off a run of the test batch
        new_shapes.update(runtime_shapes(pruned, probe))
        after, _, unknown_after = count_macs(pruned, new_shapes)
    report.macs = BeforeAfter(before, after)
    report.macs_unknown = sorted(set(unknown_before) | set(unknown_after))
    report.file_bytes = BeforeAfter(model_file_bytes(original), model_file_bytes(pruned))
    if report.parameters.after > report.parameters.before:  # pruning removes; a preparation step must have added them
        report.warnings.append(f"the pruned model holds more parameters than the original ({report.parameters.before:,} -> {report.parameters.after:,}): "
                               "see the preparation steps in the report")
    if config.latency_runs > 0 and probe is not None and report.mode == "structured":
        report.latency, report.latency_1_thread = latency_ratios(
            original, pruned, probe, threads=config.threads, runs=config.latency_runs, description="timing original vs pruned", labels=("original", "pruned model")
        )
        split = disagreement(report.latency, report.latency_1_thread, "the pruned model")
        if split:
            report.warnings.append(split)
    if source is not None and compared:
        report.fidelity = fidelity(RememberedReference(Runner(original, threads=None, label="original")), pruned, source, label="pruned model")
        report.warnings.extend(evaluation_warnings(report.fidelity, report.evaluation or "the data"))
        moved = _moved_outputs(report.fidelity, report.evaluation or "the data")
        if moved:
            report.warnings.append(moved)


# quantize's and compress's default budget: every output's cosine with the original at least this on held-out data
FAITHFUL_COSINE = 0.99


def _moved_outputs(comparisons, data_label: str) -> str | None:
    """A warning when some output of the pruned model is further from the original's than the default budgets allow
    (NaN counts as furthest): pruning as much as asked costs this model accuracy, which the number alone may not say."""
    worst = min(comparisons, key=lambda c: -1.0 if math.isnan(c.cosine) else c.cosine, default=None)
    if worst is None or worst.cosine >= FAITHFUL_COSINE:
        return None
    return (f"output '{worst.name}' moved: cosine {worst.cosine:.4f} with the original on {data_label}, under the {FAITHFUL_COSINE} quantize and compress "
            "hold by default; prune less (--ratio), or let `onnxslim compress` choose how much under an accuracy budget")


def _evaluation_split(source, eval_data, model: onnx.ModelProto, config: PruneConfig, input_shapes):
    """Batches for ranking and recovery, batches for the fidelity check (never the same ones), and how to name the latter."""
    rest, held, origin = evaluation_split(source, eval_data, graph_inputs(model), fraction=config.eval_fraction, cap=config.max_eval_batches, input_shapes=input_shapes)
    if origin == "eval-data":
        return rest, held, f"{len(held)} batch(es) of --eval-data"
    if origin is None:
        return rest, [], "the batches it was pruned with (no held-out data)"
    return rest, held, f"{len(held)} held-out batch(es) of --data (1 in {round(1 / config.eval_fraction)}, not used for pruning)"


def _data_warnings(data, eval_data, config: PruneConfig, batch_of_one: str = "") -> list[str]:
    """What the user must know about the data behind the numbers (or their absence). ``batch_of_one``: what random inputs
    assume of the batch axes (:func:`batch_of_one_note`), said where random inputs are run."""
    if data is None and eval_data is not None:
        return ["no --data: channels were ranked by their weights and nothing was recovered; the accuracy is measured on --eval-data"]
    if data is None:
        timed = f" (the test run and timing on random inputs{batch_of_one})" if batch_of_one else ""
        return [f"no --data: the pruned model's accuracy was not measured and nothing was recovered{timed}; give real inputs with --data"]
    if isinstance(data, str) and data == "random":
        what = "channels were ranked and layers refit on noise" if config.recovery == "refit" else "the fidelity reported is on noise"
        return [f"--data random{batch_of_one}: {what}, which proves nothing about real inputs; recovery and accuracy need real data"]
    return []


def _resolve_token_mask(config: PruneConfig, model: onnx.ModelProto) -> PruneConfig:
    names = [spec.name for spec in graph_inputs(model)]
    if config.token_mask is None:
        return dataclasses.replace(config, token_mask="attention_mask") if "attention_mask" in names else config
    if config.token_mask == "none":
        return dataclasses.replace(config, token_mask=None)
    if config.token_mask not in names:
        raise UsageError(f"--token-mask names '{config.token_mask}', which is not a model input ({', '.join(names)})")
    return config


def _probe_feed(model: onnx.ModelProto, source, input_shapes) -> dict | None:
    """One batch to test-run the result on: the first of the data, or random inputs where every size is known."""
    if source is not None:
        return next(iter(source))[1]
    return random_batch_or_none(graph_inputs(model), input_shapes)


def _ratio_for_budget(model: onnx.ModelProto, groups: Groups, scores, shapes: dict, config: PruneConfig, costs=None) -> tuple[float, bool]:
    """The smallest ratio whose result fits the parameter or MAC budget (bisection), and whether any does (if not: the largest tried)."""
    params0, macs0 = count_parameters(model), count_macs(model, shapes)[0]

    def fits(ratio: float) -> bool:
        removed, _ = select(groups, scores, ratio, config.selection, costs)
        pruned = apply_removal(model, groups, removed)
        if config.target_params is not None and count_parameters(pruned) > config.target_params * params0:
            return False
        if config.target_macs is not None:
            inputs = {i.name: shapes[i.name] for i in graph_inputs(model) if i.name in shapes}
            if count_macs(pruned, known_shapes(pruned, inputs))[0] > config.target_macs * macs0:
                return False
        return True

    low, high = 0.0, 0.95
    if not fits(high):
        return high, False
    for _ in range(12):
        middle = (low + high) / 2
        if fits(middle):
            high = middle
        else:
            low = middle
    return high, True


def _interface(model: onnx.ModelProto) -> list[tuple[str, bytes]]:
    weights = {t.name for t in model.graph.initializer}  # inputs with a default value are not part of it; an output folded to a constant is
    inputs = [v for v in model.graph.input if v.name not in weights]
    return [(v.name, v.type.SerializeToString()) for v in inputs + list(model.graph.output)]


def _check_interface(original: onnx.ModelProto, pruned: onnx.ModelProto, label: str) -> None:
    if _interface(original) != _interface(pruned):
        raise ModelWriteError(f"{label}: pruning would change the model's inputs or outputs; nothing written")
