"""``quantize``: prepare, plan, calibrate, insert Q/DQ, check, and keep what is faster.

The pieces live in their own modules; this one only orders them and turns
their results into a :class:`~onnxslim.quant.report.QuantReport`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxslim.data.sources import DataSource, batch_of_one_note, in_memory, open_data, random_batch, read_once, reiterable
from onnxslim.errors import DataError, ModelLoadError, NothingToDoError, UsageError, first_line
from onnxslim.ir.counts import weight_types, work_shares
from onnxslim.ir.io import load_model, model_file_bytes, model_label
from onnxslim.ir.layers import WEIGHTED_LAYERS
from onnxslim.ir.mapped import has_mapped, spill
from onnxslim.ir.quantized import refuse_blocked_layout, refuse_quantized
from onnxslim.ir.scopes import all_nodes, scoped
from onnxslim.ir.tensors import consumers_map, graph_inputs, producer_map
from onnxslim.measure import RememberedReference, dominant_batches, evaluation_warnings, fidelity, fidelity_with_head, paired_tensor_fidelity, tensor_fidelity, worst_score
from onnxslim.measure.sensitivity import by_damage_per_work, effect_at_outputs, next_count, noise_power, rank_by_added_noise, stretches, tensors_to_compare
from onnxslim.memory import peak_rss_bytes
from onnxslim.passes import PassResult
from onnxslim.passes.align import align_depthwise_channels, has_unaligned_depthwise
from onnxslim.passes.attention import fuse_quantized_attention, quantize_fused_attention
from onnxslim.passes.conv_channels import pad_conv_input_channels
from onnxslim.passes.conv_transpose import convtranspose_as_subpixel_conv
from onnxslim.passes.depthwise_multiplier import expand_depthwise_multipliers, has_depthwise_multipliers
from onnxslim.passes.dequantize_affine import fold_scalar_affines
from onnxslim.passes.gelu import fuse_gelu
from onnxslim.passes.integer_matmul import bias_into_integer_matmuls
from onnxslim.passes.parallel import has_parallel_matmuls, merge_parallel_matmuls
from onnxslim.passes.residual_sum import fused_skip_layernorms, has_adds_before_layernorm, skip_layernorm_apart, sum_before_layernorm
from onnxslim.progress import track
from onnxslim.quant.affine import integer_form_if_it_pays
from onnxslim.quant.bodies import (
    BodyScopes,
    compared_body_nodes,
    find_everywhere,
    in_scope,
    insert_qdq_everywhere,
    plan_everywhere,
    rewrite_everywhere,
    uncalibrated_bodies,
)
from onnxslim.quant.budget import SENSITIVITY_BATCHES, budget_shortfall, budget_uncertain
from onnxslim.quant.calibrate import calibrate, channel_maxima
from onnxslim.quant.config import QuantConfig
from onnxslim.quant.conv_kernels import gemm_kernels_if_faster
from onnxslim.quant.decisions import NodeDecision
from onnxslim.quant.depthwise import float_depthwise_if_faster
from onnxslim.quant.fallback import faster_or_float
from onnxslim.quant.forms import timed_decision
from onnxslim.quant.half import quantize_half
from onnxslim.quant.half_weights import store_weights_in_half
from onnxslim.quant.isolation import float_copy, inputs_made_exact
from onnxslim.quant.observers import ChannelMaxima
from onnxslim.quant.output_layers import FLOAT_RESULT_KERNELS, int8_output_layers_if_they_pay
from onnxslim.quant.params import FULL_LEVELS, REDUCED_LEVELS, activation_params
from onnxslim.quant.plan import QuantPlan, QuantReason, drop_mixed_range_concats
from onnxslim.quant.prepare import float_tensors_and_shapes, prepare
from onnxslim.quant.ranges import calibrated_range
from onnxslim.quant.recurrent import find_recurrent, store_recurrent_in_int8
from onnxslim.quant.report import CalibrationSummary, EvaluationSummary, QuantReport, Sizes
from onnxslim.quant.smooth import MAXIMA_BATCHES, OUTLIER_BATCHES, OUTLIERS, STRONG_GAIN, outlier_scales, smooth_inputs, smoothable
from onnxslim.quant.stored import readers_of_largest_weights, store_weights_in_int8
from onnxslim.quant.tables import find_tables, store_tables_in_int8
from onnxslim.quant.weights import quantize_weights
from onnxslim.reasons import Reason
from onnxslim.report import nothing_written
from onnxslim.runtime import Runner, resolve_provider
from onnxslim.runtime.kernels import gathers_block_quantized_rows, integer_products_saturate, runs_quantized_attention, skip_layernorm_slower
from onnxslim.runtime.session import optimized_graph, optimized_ops
from onnxslim.runtime.shapes import known_shapes
from onnxslim.runtime.write import write_verified
from onnxslim.units import size_text


def _peak_rss_mb() -> float:
    return peak_rss_bytes() / 1024.0**2


class _Calibration:
    """The batches of a source not held out for evaluation, up to ``limit``."""

    def __init__(self, source, held: set[int], limit: int | None):
        self.source, self.held, self.limit = source, held, limit
        total = source.known_length()
        self.total = None if total is None else total - len(held)
        if self.total is not None and limit is not None:
            self.total = min(self.total, limit)

    def __len__(self) -> int:
        if self.total is None:
            raise TypeError("length unknown")
        return self.total

    def __iter__(self):
        taken = 0
        for index, item in enumerate(self.source):
            if index in self.held:
                continue
            if self.limit is not None and taken >= self.limit:
                return
            taken += 1
            yield item


class QuantRun:
    """State of one quantization run: the prepared model, data splits, statistics."""

    def __init__(self, model, data, config: QuantConfig, eval_data, input_shapes, show_progress: bool, *, align: bool = True):
        self.config = config
        self.show_progress = show_progress
        self.label = model_label(model)
        self.original = load_model(model)
        self.prepared = load_model(self.original)
        self.prepare_results = prepare(self.prepared)
        integer_cpu = config.target == "cpu" and config.precision == "int8" and not config.weights_only
        if integer_cpu:  # a GELU reading a quantized tensor is no longer fused by onnxruntime: fuse it here
            fused = fuse_gelu(self.prepared, allow_contrib=True)
            if fused.modified:
                self.prepare_results.append(fused)
        if config.target == "cpu" and fused_skip_layernorms(self.prepared) and skip_layernorm_slower():
            # onnxruntime's transformer optimizer wrote its fused kernel, slower here than the two it joins: the INT8 model and
            # the float fallback both get the two
            apart = skip_layernorm_apart(self.prepared)
            if apart.modified or apart.declined:
                self.prepare_results.append(apart)
        self.cleaned = self.prepared  # what --if-slower keep-fp32 writes: without the channels added for INT8 kernels
        # a float16 model computed in float32: twice the bytes, so never the fallback; the user's own model is
        self.original_precision = _precision_of(self.original) if any(r.name == "float16-to-float32" and r.modified for r in self.prepare_results) else "FP32"
        kept_half = next((r.declined[0] for r in self.prepare_results if r.name == "float16-to-float32" and r.declined), None)
        if kept_half is not None:  # every rule reads float32 tensors: say why there are none rather than "nothing to quantize"
            raise ModelLoadError(f"{self.label}: the model computes in float16 and was not widened to float32 ({kept_half.reason.text}); "
                                 "quantize its float32 original")
        # rewrites for the integer kernels, on a copy: the float kernels can be faster as the model was (few wide depthwise
        # channels; a ConvTranspose, which has no integer kernel on the CPU), so the FP32 fallback keeps the cleaned graph
        if integer_cpu and has_depthwise_multipliers(self.prepared):
            self._prepared_for_int8(expand_depthwise_multipliers)
        if integer_cpu and any(n.op_type == "ConvTranspose" for n in self.prepared.graph.node):
            self._prepared_for_int8(convtranspose_as_subpixel_conv)
        if align and integer_cpu and has_unaligned_depthwise(self.prepared):
            self._prepared_for_int8(align_depthwise_channels)
        if config.target == "cpu" and not has_mapped(self.original) and _rewrites_for_cpu(self.cleaned):
            cleaned = load_model(self.cleaned)
            # the float fallback gets the merge and the Sums the INT8 model gets when it is built
            merged = merge_parallel_matmuls(cleaned).modified
            summed = _sums_where_faster(cleaned)
            if merged or (summed is not None and summed.modified):
                self.cleaned = cleaned
        self.float_names, self.shapes = float_tensors_and_shapes(self.prepared)
        self.scopes = BodyScopes(self.prepared)
        self.weight_range = resolve_weight_range(config)
        self.provider = resolve_provider(config.calibration_provider)
        inputs = graph_inputs(self.original)
        for spec in inputs:
            widened = spec.dtype == np.float16 and self.original_precision == "FP16"  # cast to float32 where it enters
            if spec.dtype is not None and spec.dtype != np.float32 and spec.dtype.kind == "f" and not widened:
                raise ModelLoadError(f"{self.label}: input '{spec.name}' is {spec.dtype}; quantize the float32 model")
        self.warnings: list[str] = []
        self.inputs, self.input_shapes = inputs, input_shapes
        self.has_data = data is not None
        if self.has_data:
            source = open_data(data, inputs, input_shapes=input_shapes)
            if isinstance(data, str) and data == "random":
                self.warnings.append(f"calibrating on random inputs{batch_of_one_note(inputs, input_shapes)}: the ranges will not match real data; pass --data DIR")
            self.calib_source, self.eval_batches, self.eval_label = self._split(source, eval_data, inputs, input_shapes)
        else:
            self.calib_source, self.eval_batches, self.eval_label = None, [], "no data"
        self._reference: RememberedReference | None = None
        self.stats: dict = {}
        self.uncalibrated: dict[str, str] = {}  # node -> the body it sits in, which calibration never ran
        self.calibration_batches = 0
        self.calibration_seconds = 0.0
        self.float_biases: frozenset[str] = frozenset()  # MatMuls whose bias onnxruntime was seen not to fuse
        self.biases_checked = False
        self.table_rows: dict = {}  # INT8 rows of the lookup tables, quantized once for every build
        self.unfused_integer: frozenset[str] = frozenset()  # MatMuls onnxruntime was seen to leave apart from their bias as MatMulInteger
        self.integer_checked = False
        # the smallest gain a Mul needs in each graph with fewer smoothing Muls (none; only the strongest), fastest first (the
        # free divisions kept in all), and the tensors the Muls read, observed in the same calibration pass: the accuracy
        # budget chooses among these graphs and the smoothed one (see with_fewer_smoothing_muls)
        self.fewer_smoothing_muls: list[float] = []
        self.smoothing_mul_inputs: frozenset[str] = frozenset()
        self._unsmoothed: tuple | None = None  # the graph before smoothing, the channel maxima, alpha, and the seconds they took
        # the statistics the smoothing pass gathered of the graph it left as it was: (stats, batches seen, whether they were
        # all of them, seconds), taken up by the first calibration pass
        self._calibration_head: tuple | None = None
        if config.smooth is not None and config.precision == "int8" and not config.weights_only and self.calib_source is not None:
            self._smooth(config.smooth)

    def _prepared_for_int8(self, graph_pass) -> None:
        """Run ``graph_pass`` on a copy of the prepared graph, which becomes the one quantized where the pass changed it."""
        rewritten = load_model(self.prepared)
        result = graph_pass(rewritten)
        if result.modified:
            self.prepared = rewritten
            self.prepare_results.append(result)

    def _smooth(self, alpha: float | str) -> None:
        """Smooth the prepared model's MatMul inputs (see :mod:`onnxslim.quant.smooth`); the cleaned FP32 model stays as it was.

        The default (OUTLIERS) is silent where there is nothing to smooth; an ALPHA the user asked for says why it was not applied.
        """
        asked = alpha != OUTLIERS
        if has_mapped(self.original):
            self.warnings.append(f"--smooth {alpha} skipped: the model's weights stay on disk (external data over 2 GB), and smoothing rewrites them")
            return
        groups = smoothable(self.prepared, keep=self.config.exclude_nodes)
        if not groups:
            if asked:
                self.warnings.append("--smooth found no MatMul with a constant weight of its own to smooth")
            return
        start = time.perf_counter()
        limit = MAXIMA_BATCHES if asked else OUTLIER_BATCHES
        total = limit if self.calib_source.total is None else min(self.calib_source.total, limit)
        batches = itertools.islice(self.calib_source, limit)
        if asked:  # smoothing will rewrite the graph: the calibration of this one would be thrown away
            maxima = channel_maxima(self.prepared, list(groups), batches, provider=self.provider, total=total, show_progress=self.show_progress)
        else:
            # most graphs have no outliers to smooth: the same pass starts the calibration of this graph, which goes on from
            # where it stopped when smoothing leaves the graph as it is (see observe)
            observers = {tensor: ChannelMaxima() for tensor in groups}
            unobserved = self.plan(self.config, calibrated=False)
            planned = unobserved.observed_tensors() | self._output_layer_inputs(self.config, frozenset(), unobserved)

            outliers_seen = []

            def no_outliers_yet() -> bool:  # once one shows, smoothing will rewrite the graph: its statistics would be thrown away
                if not outliers_seen and any(o.maxima is not None and outlier_scales(o.maxima) is not None for o in observers.values()):
                    outliers_seen.append(True)
                return not outliers_seen

            head, seen = calibrate(self.prepared, planned, batches, histogram=self.config.method != "minmax", bins=self.config.histogram_bins,
                                   provider=self.provider, total=total, show_progress=self.show_progress, channel_maxima=observers,
                                   observe_while=no_outliers_yet, description="calibrating, looking for outlier channels")
            maxima = {tensor: observer.maxima for tensor, observer in observers.items() if observer.maxima is not None}
            if not any(outlier_scales(channels) is not None for channels in maxima.values()):
                if not outliers_seen:  # the pass observed this graph on every batch it ran
                    self._calibration_head = (head, seen, seen < limit, time.perf_counter() - start)
                return  # nothing to smooth: the graph stays as it is, uncopied
        smoothed = load_model(self.prepared)
        groups = smoothable(smoothed, keep=self.config.exclude_nodes)  # the copy's nodes, which smoothing rewires
        result = smooth_inputs(smoothed, groups, maxima, alpha)
        result.seconds = time.perf_counter() - start
        if asked or result.modified:
            self.prepare_results.append(result)
        if not result.modified:
            return
        mul_inputs = {tensor for tensor, readers in groups.items() if readers[0].input[0] != tensor}
        if not asked and mul_inputs and self.config.accuracy_budget is not None:
            # a Mul costs time on every run: an accuracy budget gets to say which outliers need one (see _within_budget)
            gains = [outlier_scales(maxima[tensor]).max() for tensor in mul_inputs]
            kept_muls = set()
            for min_gain in (math.inf, STRONG_GAIN):  # the fastest first; each a graph of its own
                left = sum(gain >= min_gain for gain in gains)
                if left < len(gains) and left not in kept_muls:
                    self.fewer_smoothing_muls.append(min_gain)
                    kept_muls.add(left)
            self._unsmoothed = (self.prepared, maxima, alpha, result.seconds, self.float_names, self.shapes)
            self.smoothing_mul_inputs = frozenset(mul_inputs)
        self.use_prepared(smoothed)

    def with_fewer_smoothing_muls(self, min_gain: float) -> tuple[onnx.ModelProto, PassResult, tuple]:
        """The prepared graph smoothed as before but with a Mul only where it narrows the range at least ``min_gain`` times, its
        smoothing result, and its float tensors and shapes (those of the graphs before and after smoothing: it holds no other)."""
        model, maxima, alpha, seconds, names, shapes = self._unsmoothed
        fewer = load_model(model)
        result = smooth_inputs(fewer, smoothable(fewer, keep=self.config.exclude_nodes), maxima, alpha, min_mul_gain=min_gain)
        result.seconds = seconds
        return fewer, result, (names | self.float_names, {**shapes, **self.shapes})

    def use_prepared(self, model: onnx.ModelProto, tensors: tuple[set[str], dict] | None = None) -> None:
        """Build from ``model`` from now on: a variant of the prepared graph whose tensors calibration has observed
        (``tensors``: its float tensor names and shapes, where already known)."""
        self.prepared = model
        self.float_names, self.shapes = tensors or float_tensors_and_shapes(self.prepared)
        self.scopes = BodyScopes(self.prepared)

    @property
    def reference(self) -> RememberedReference:
        """The float model's session, opened on first use (its weights are not held during calibration); its outputs on the held-out batches are kept."""
        if self._reference is None:
            # at the thread count the result is timed at, so the final timing reuses this session (see take_reference)
            self._reference = RememberedReference(Runner(self.original, "CPUExecutionProvider", threads=self.config.threads or None, label=self.label))
        return self._reference

    def take_reference(self, provider: str, threads: int | None) -> Runner | None:
        """The float model's open session, handed over to time the result with (it is not kept here), when it runs on ``provider`` at ``threads``."""
        reference, self._reference = self._reference, None
        if reference is None or reference.runner.provider != provider or (reference.runner.threads or None) != (threads or None):
            return None
        return reference.runner

    def timing_feed(self) -> dict | None:
        """A batch to time on: the first held-out one, or random inputs when there is no data and every shape is known."""
        if self.eval_batches:
            return self.eval_batches[0][1]
        try:
            return random_batch(self.inputs, self.input_shapes)
        except (DataError, UsageError) as exc:
            self.warnings.append(f"latency not measured: {first_line(exc)}")
            return None

    def _split(self, source, eval_data, inputs, input_shapes):
        """Calibration batches (re-iterable) and held-out batches (kept in memory: they are few).

        The data is read once, and no further than it is used: with
        ``max_calibration_samples`` the read stops once that many calibration
        batches and their share of held-out ones are in. A source that cannot
        be read twice (a loader function) is kept in memory as it is read.
        """
        limit, cap = self.config.max_calibration_samples, self.config.max_eval_batches
        once = not reiterable(source)
        if eval_data is not None:
            evaluation = open_data(eval_data, inputs, input_shapes=input_shapes)
            held_out = list(itertools.islice(evaluation, cap + 1))
            if len(held_out) > cap:
                held_out = held_out[:cap]
                self.warnings.append(f"evaluation uses the first {cap} batches of --eval-data (--max-eval-batches)")
            calibration = read_once(source, limit) if once else source
            return _Calibration(calibration, set(), limit), held_out, f"{len(held_out)} batch(es) of --eval-data"
        period = round(1.0 / self.config.eval_fraction) if self.config.eval_fraction > 0 else 0
        if period == 1:
            raise UsageError(f"--eval-fraction {self.config.eval_fraction} would hold out every batch; use at most 0.5, or give --eval-data")
        held_out, held_index, kept, count, taken = [], set(), [], 0, 0
        wanted_held = cap if limit is None or not period else min(cap, max(1, -(-limit // (period - 1))))
        for index, item in enumerate(source):
            count = index + 1
            if once:
                kept.append(item)
            if period and index % period == period - 1 and len(held_out) < cap:
                held_out.append(item)
                held_index.add(index)
            else:
                taken += 1
            if limit is not None and taken >= limit and (not period or len(held_out) >= wanted_held):
                break
        if once:
            source = in_memory(kept, source)
        if count == 0:
            raise DataError(f"{source.description}: no batches")
        if not held_out and count >= 2 and period:
            held_index = {count - 1}
            held_out = [item for index, item in enumerate(source) if index == count - 1]
        if not held_out:
            self.warnings.append("no held-out data: fidelity is measured on calibration batches; pass --eval-data or more batches")
            calibration = _Calibration(source, set(), limit)
            return calibration, list(itertools.islice(calibration, SENSITIVITY_BATCHES)), "the calibration batches (no held-out data)"
        if len(held_out) == cap and source.known_length() is not None and source.known_length() // period > cap:
            self.warnings.append(f"evaluation uses {cap} held-out batches; more are available (--max-eval-batches)")
        calibration = _Calibration(source, held_index, limit)
        return calibration, held_out, f"{len(held_out)} held-out batch(es) of --data (1 in {period}, not used for calibration)"

    def observe(self, plan: QuantPlan, also: set[str] = frozenset()) -> None:
        """Calibrate: one pass over the calibration batches, observing the plan's tensors (and ``also``) not yet observed.

        Where the smoothing pass observed this graph over the first batches (it smoothed nothing), the pass goes on
        from there: its tensors see only the batches after those, any other tensor the first ones too.
        """
        start = time.perf_counter()
        needed = plan.observed_tensors() | set(also) | (self.smoothing_mul_inputs & self.float_names)
        options = {"histogram": self.config.method != "minmax", "bins": self.config.histogram_bins, "provider": self.provider,
                   "show_progress": self.show_progress}
        total = self.calib_source.total
        if self._calibration_head is None:
            self.stats, seen = calibrate(self.prepared, needed, self.calib_source, total=total, stats=self.stats, **options)
        else:
            head, seen, exhausted, seconds = self._calibration_head
            self._calibration_head = None
            self.calibration_seconds += seconds
            partial = needed - set(self.stats)  # to be observed on every batch: from the first pass where it saw them
            self.stats.update({tensor: head[tensor] for tensor in partial if tensor in head})
            calibrate(self.prepared, partial, itertools.islice(self.calib_source, seen), total=min(seen, total or seen), stats=self.stats,
                      description=f"calibrating more tensors on the first {seen} batches", **options)
            rest = itertools.islice(self.calib_source, seen, None) if not exhausted else iter(())
            following = next(rest, None)  # the data may end where the first pass stopped
            if following is not None:
                _, after = calibrate(self.prepared, partial, itertools.chain([following], rest), total=None if total is None else max(total - seen, 1),
                                     stats=self.stats, resume=partial, description=f"calibrating the batches after the first {seen}", **options)
                seen += after
        self.calibration_batches = max(self.calibration_batches, seen)
        self.calibration_seconds += time.perf_counter() - start

    def plan(self, config: QuantConfig, keep_float: frozenset[str] = frozenset(), *, calibrated: bool = True) -> QuantPlan:
        """The plan for ``config``; calibrates first if it observes tensors not yet seen.

        Layers inside a body the calibration data never ran (an If branch no batch took) have no ranges:
        they stay in float, with a warning that names the body. ``calibrated=False``: the plan as the
        graph alone decides it, without a calibration pass (what it would quantize, not with which ranges).
        """
        if config.weight_range == "auto":
            config = dataclasses.replace(config, weight_range=self.weight_range["used"])
        plan = plan_everywhere(self.prepared, self.scopes, config, self.float_names, keep_float | frozenset(self.uncalibrated), self.shapes,
                               self.float_biases)
        if not calibrated:
            return plan
        if any(t not in self.stats for t in plan.observed_tensors()):
            self.observe(plan, also=set() if self.stats else self._output_layer_inputs(config, keep_float, plan))
        unseen = uncalibrated_bodies(plan, self.stats)
        if unseen:
            for path in unseen:
                nodes = [n for n in self.scopes.views[path].model.graph.node if plan.decisions[n.name].quantized]
                self.uncalibrated.update({n.name: path for n in nodes})
                self.warnings.append(
                    f"{path} never ran on the {self.calibration_batches} calibration batch(es): its {len(nodes)} layer(s) stay in float "
                    "(calibrate on data that runs it)"
                )
            plan = plan_everywhere(self.prepared, self.scopes, config, self.float_names, keep_float | frozenset(self.uncalibrated), self.shapes,
                                   self.float_biases)
        for node, path in self.uncalibrated.items():
            if node not in keep_float:
                why = f"inside {path}, which never ran on the calibration data: no ranges to quantize it with"
                decision = NodeDecision(node, plan.decisions[node].op_type, Reason(QuantReason.NOT_CALIBRATED, why))
                plan.decisions[node] = plan.bodies[path].decisions[node] = decision
        return plan

    def _output_layer_inputs(self, config: QuantConfig, keep_float: frozenset[str], plan: QuantPlan) -> set[str]:
        """The tensors ``--output-layers auto``'s integer form reads beyond what ``plan`` (``config``'s) observes, observed in
        the first calibration pass so that trying that form needs no second one."""
        if config.output_layers != "auto" or config.precision != "int8" or config.target != "cpu" or config.weights_only:
            return set()
        if not any(d.code == QuantReason.OUTPUT_LAYER and d.op_type in FLOAT_RESULT_KERNELS for d in plan.decisions.values()):
            return set()
        integer = plan_everywhere(self.prepared, self.scopes, dataclasses.replace(config, output_layers="int8"), self.float_names,
                                  keep_float | frozenset(self.uncalibrated), self.shapes, self.float_biases)
        return integer.observed_tensors()

    def params(self, plan: QuantPlan) -> tuple[QuantPlan, dict]:
        """The plan as calibration leaves it (a copy) and the scale and zero point of every quantized activation (by scoped key)."""
        bounded = plan.observed_tensors(bounded_only=True)
        ranges = {
            t: calibrated_range(self.stats[t], "minmax" if t in bounded else self.config.method, symmetric=plan.signed, percentile=self.config.percentile)
            for t in plan.observed_tensors()
        }
        main, params = self._scope_params(plan, self.prepared, in_scope(ranges, ""))
        bodies = {}
        decisions = dict(main.decisions)
        for path, body_plan in plan.bodies.items():
            body_plan, body_params = self._scope_params(body_plan, self.scopes.views[path].model, in_scope(ranges, path))
            bodies[path] = body_plan
            decisions.update(body_plan.decisions)
            params.update({scoped(path, key): value for key, value in body_params.items()})
        return dataclasses.replace(main, bodies=bodies, decisions=decisions), params

    def _scope_params(self, plan: QuantPlan, model: onnx.ModelProto, ranges: dict) -> tuple[QuantPlan, dict]:
        """For one graph (the main one or a body's view): the plan with mixed-range Concats undone, and its activations' parameters."""
        signed = plan.signed
        plan = drop_mixed_range_concats(dataclasses.replace(plan, bodies={}), model, ranges, self.config.concat_range_ratio)
        params: dict = {}

        def resolve(key: str, depth: int = 0):
            if key in params:
                return params[key]
            spec = plan.activations[key]
            if spec.share is not None and spec.share in plan.activations and depth < 64:
                params[key] = resolve(spec.share, depth + 1)
                return params[key]
            lo, hi = ranges[spec.observe]
            if spec.clamp_high is not None:
                hi = min(hi, spec.clamp_high)
            if spec.clamp_low is not None:
                lo = max(lo, spec.clamp_low)
            params[key] = activation_params(lo, hi, signed=signed)
            return params[key]

        for key in plan.activations:
            resolve(key)
        return plan, params

    def rebuilt_with_weights(self, model: onnx.ModelProto, config: QuantConfig) -> onnx.ModelProto:
        """The QDQ model of ``model`` (this run's prepared graph with new weight values) with this run's plan and scales, not recalibrated."""
        self.prepared = model
        self.table_rows = {}  # new weights: new tables
        return self.build(config)[1]

    def build(self, config: QuantConfig, keep_float: frozenset[str] = frozenset()) -> tuple[QuantPlan, onnx.ModelProto]:
        """The QDQ model for ``config`` (``keep_float``: nodes kept in float for the budget) and the plan it follows."""
        plan, params = self.params(self.plan(config, keep_float))
        quantized = insert_qdq_everywhere(self.prepared, plan, params, self.scopes)
        if config.target == "cpu" and not self.biases_checked:
            self.biases_checked = True
            unfused = biases_dequantized_at_run_time(quantized, plan)
            if unfused:  # onnxruntime runs these as MatMulIntegerToFloat + Add: their biases stay float from now on
                self.float_biases = frozenset(unfused)
                plan, params = self.params(self.plan(config, keep_float))
                quantized = insert_qdq_everywhere(self.prepared, plan, params, self.scopes)
        if config.embeddings == "int8":
            # onnxruntime's CPU provider looks rows up in one contrib node; other targets get standard operators
            lookup = "contrib" if config.target == "cpu" and gathers_block_quantized_rows() else "onnx"
            plan = _with_int8_tables(plan, quantized, keep_float, self.table_rows, lookup)
        if config.recurrent == "int8":
            plan = _with_int8_recurrent(plan, quantized, keep_float, REDUCED_LEVELS if self.weight_range["used"] == "reduced" else FULL_LEVELS)
        if config.target == "cpu":
            # after planning, so the accuracy budget weighs and names every layer on its own
            merged = merge_parallel_matmuls(quantized, keep_separate=keep_float | frozenset(config.exclude_nodes))
            attention, in_attention = _attention_fused(quantized) if runs_quantized_attention() else (None, set())
            fused_attention = quantize_fused_attention(quantized)
            integer = bias_into_integer_matmuls(quantized, skip=self.unfused_integer)
            if integer.modified and not self.integer_checked:
                self.integer_checked = True
                unfused = integer_matmuls_left_apart(quantized)
                if unfused:  # this onnxruntime did not fuse them: they stay QDQ MatMuls with a float bias Add
                    self.unfused_integer = frozenset(unfused)
                    return self.build(config, keep_float)
            affines, read_from_codes = fold_scalar_affines(quantized)
            summed = _sums_where_faster(quantized)
            decisions = _in_attention(_read_from_codes(plan.decisions, read_from_codes), in_attention)
            layout = [merged, attention, fused_attention, integer, pad_conv_input_channels(quantized), affines, summed]
            plan = dataclasses.replace(plan, layout=[p for p in layout if p is not None], decisions=decisions)
        if has_mapped(self.original):
            quantized = spill(quantized)  # the INT8 weights join the float ones on disk
        return plan, quantized


def _rewrites_for_cpu(model: onnx.ModelProto) -> bool:
    """Whether ``model`` has MatMuls to merge or Adds to write as Sums (see QuantRun), found without copying its weights."""
    return has_parallel_matmuls(model) or (has_adds_before_layernorm(model) and skip_layernorm_slower())


def _sums_where_faster(model: onnx.ModelProto) -> PassResult | None:
    """``sum_before_layernorm`` on ``model`` where it has an Add to rewrite and this onnxruntime's fused kernel is the
    slower one (timed once per process, and only for a model that has such an Add); None where it does not run."""
    if not has_adds_before_layernorm(model) or not skip_layernorm_slower():
        return None
    return sum_before_layernorm(model)


def _attention_fused(model: onnx.ModelProto) -> tuple[PassResult, set[str]]:
    """``fuse_quantized_attention`` on ``model``, and the layers whose MatMul went into a QAttention (merged MatMuls are named A+B+C)."""
    before = {n.name for n in model.graph.node if n.op_type == "MatMul"}
    result = fuse_quantized_attention(model)
    gone = before - {n.name for n in model.graph.node}
    return result, {part for name in gone for part in name.split("+")}


def _in_attention(decisions: dict[str, NodeDecision], fused: set[str]) -> dict[str, NodeDecision]:
    """``decisions`` with each layer that runs inside a QAttention said so."""
    text = "QAttention: UINT8 input, INT8 per-channel weights, float bias, inside onnxruntime's fused attention kernel"
    return {name: NodeDecision(name, d.op_type, Reason(QuantReason.INTEGER_KERNEL, text)) if name in fused and d.quantized else d
            for name, d in decisions.items()}


def _read_from_codes(decisions: dict[str, NodeDecision], removed: dict[str, str]) -> dict[str, NodeDecision]:
    """``decisions`` with each Mul/Add that became DequantizeLinear parameters said so."""
    if not removed:
        return decisions
    return {name: NodeDecision(name, decision.op_type, Reason(QuantReason.FOLDED, f"no integer op: {removed[name]}")) if name in removed else decision
            for name, decision in decisions.items()}


def resolve_weight_range(config: QuantConfig) -> dict:
    """The INT8 weight range the run uses ('full' or 'reduced') and why, resolving ``--weight-range auto`` by a run on this machine."""
    if config.weight_range != "auto":
        return {"used": config.weight_range, "why": "--weight-range " + config.weight_range}
    if config.target != "cpu" or config.precision != "int8" or config.weights_only:
        return {"used": "full", "why": f"target {config.target}: its integer kernels add in 32 bits"}
    if integer_products_saturate():
        return {"used": "reduced", "why": "this CPU's onnxruntime adds UINT8 x INT8 products in pairs in 16 bits (no VNNI), where full-range weights "
                "can saturate: codes in [-64, 64] (depthwise layers, added in 32 bits, keep [-127, 127]); --weight-range full for CPUs with VNNI"}
    return {"used": "full", "why": "this CPU's onnxruntime adds UINT8 x INT8 products without saturating; --weight-range reduced for x86 CPUs without VNNI"}


def integer_matmuls_left_apart(model: onnx.ModelProto) -> set[str]:
    """The MatMulInteger nodes of ``model`` that onnxruntime's optimized graph still runs as MatMulInteger (not fused with their scale and bias)."""
    try:
        optimized = optimized_graph(model)
    except Exception:  # no verdict: keep the rewrite, the final timing still guards the result
        return set()
    return {n.name for n in optimized.graph.node if n.op_type == "MatMulInteger"} & {n.name for n in model.graph.node if n.op_type == "MatMulInteger"}


def biases_dequantized_at_run_time(model: onnx.ModelProto, plan: QuantPlan) -> set[str]:
    """The MatMuls of ``model`` (a QDQ build of ``plan``) whose INT32 bias onnxruntime dequantizes on every run.

    onnxruntime folds a MatMul and its bias Add into QGemm only where its own shape inference and fusion rules
    allow (a 2-D or static input, not an attention projection); elsewhere the MatMul becomes
    MatMulIntegerToFloat and the bias's DequantizeLinear is left in its optimized graph, which this reads.
    """
    matmuls = ({spec.node for spec in plan.biases} | set(plan.zero_bias_for)) & {n.name for n in model.graph.node if n.op_type == "MatMul"}
    if not matmuls:
        return set()
    try:
        optimized = optimized_graph(model)
    except Exception:  # no verdict: the planner's shape rule stands
        return set()
    stored = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT32}
    surviving = {n.input[0] for n in optimized.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in stored}
    readers, producers = consumers_map(model.graph), producer_map(model.graph)
    found = set()
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in surviving:
            continue
        for add in readers.get(node.output[0], []):
            for name in add.input:
                source = producers.get(name)
                if add.op_type == "Add" and source is not None and source.name in matmuls:
                    found.add(source.name)
    return found


def _with_int8_tables(plan: QuantPlan, model: onnx.ModelProto, keep_float: frozenset[str], rows_cache: dict | None = None, lookup: str = "onnx") -> QuantPlan:
    """Store the lookup tables of ``model`` (inside If/Loop/Scan bodies too) in INT8, in place, except those kept in float; the plan's decisions say so."""
    choices: list = []

    def rewrite(graph_model: onnx.ModelProto, reserved: set[str]) -> list[str]:
        found = [c for c in find_tables(graph_model) if c.node not in keep_float]
        choices.extend(found)
        return store_tables_in_int8(graph_model, found, reserved=reserved, rows_cache=rows_cache, lookup=lookup)

    rewritten = set(rewrite_everywhere(model, rewrite))
    if not rewritten:
        return plan
    decisions = dict(plan.decisions)
    stored: dict[str, list] = {}
    for choice in choices:
        if choice.node in rewritten and choice.quantized:
            stored.setdefault(choice.node, []).append(choice)
    for node, tables in stored.items():
        listed = ", ".join(f"{c.table} ({c.elements:,} values)" for c in tables)
        restored = "the looked-up rows are turned back into float" if tables[0].op_type == "Gather" else "turned back into float when onnxruntime loads the model"
        text = f"table{'s' if len(tables) > 1 else ''} {listed} stored INT8 per row; {restored}"
        decisions[node] = NodeDecision(node, tables[0].op_type, Reason(QuantReason.WEIGHT_ONLY, text))
    return dataclasses.replace(plan, decisions=decisions)


STORAGE = {"int8": store_weights_in_int8, "float16": store_weights_in_half}
# each --kept-float-weights setting and what is tried, in order, until the outputs meet the budget
STORAGE_TRIED = {"int8": ("int8", "float16"), "float16": ("float16",), "float32": ()}
# the layers are kept in float for fidelity: INT8 weights may move the worst output score by this much at most, whatever the budget
# leaves (PP-OCRv4 rec, 42 layers in float: 0.9998 -> 0.9925, within a 0.99 budget, cost 0.9 points of character accuracy)
INT8_WEIGHTS_SCORE_DROP = 1e-3


def _kept_weights_within_budget(run: QuantRun, config: QuantConfig, report: QuantReport, plan: QuantPlan, model: onnx.ModelProto, comparisons: list):
    """The result with the weights of the layers kept in float stored smaller (INT8 per output channel, else float16), when the
    outputs still meet the budget with them.

    Those are the layers the budget search kept in float and the output layers the plan keeps in float
    (their weights can be most of a model's bytes: a recognizer's 6,625-way classifier). Done once the
    budget search has chosen its layers (rounded weights move some outputs, a peaked softmax most, and
    the search's scores are not monotone: left to the search, they could change its choice). Without a
    budget (``--accuracy-budget none``) a smaller form is written only when no output's score moves by
    more than INT8_WEIGHTS_SCORE_DROP on the held-out batches, and with none of them nothing is checked,
    so nothing is changed. Where neither form holds for every kept layer, the weights of the few layers
    holding most of the bytes are tried alone (a small depthwise layer can be the one whose outputs
    float16 rounding moves). ``report.kept_float_weights`` says what was measured and which was written.
    """
    output_layers = {node for node, decision in plan.decisions.items() if decision.code == QuantReason.OUTPUT_LAYER}
    keep_float = frozenset(entry["node"] for entry in report.kept_float_for_budget) | output_layers
    tried = STORAGE_TRIED[config.kept_float_weights]
    if not tried or not keep_float or config.precision != "int8" or not comparisons:
        return plan, model, comparisons
    score = worst_score(comparisons, config.accuracy_metric)
    entry: dict = {"worst_score_float32": score}
    largest = readers_of_largest_weights(model, keep_float)
    # every layer's weights first; where no form holds for all of them, those of the layers holding most of the bytes alone
    attempts = [(storage, keep_float, "") for storage in tried] + [(storage, largest, "_largest") for storage in tried if largest and not keep_float <= largest]
    for storage, layers, which in attempts:
        smaller = onnx.ModelProto()
        smaller.CopyFrom(model)
        stored = set(STORAGE[storage](smaller, layers))
        changed = {node for node in stored if plan.decisions.get(node) is None or plan.decisions[node].op_type != "Gather"}  # layers
        if not stored:
            continue
        if has_mapped(run.original):
            smaller = spill(smaller)  # the stored copies join the other weights on disk
        smaller_comparisons = fidelity(run.reference, smaller, run.eval_batches)
        smaller_score = worst_score(smaller_comparisons, config.accuracy_metric)
        saved = model_file_bytes(model) - model_file_bytes(smaller)
        entry |= {"layers": len(changed), f"worst_score_{storage}{which}": smaller_score}
        report.kept_float_weights = entry
        subject = f"with {storage} weights" + (f" on the {len(changed)} holding most of the bytes" if which else "")
        if config.accuracy_budget is not None and not smaller_score >= min(config.accuracy_budget, score):  # NaN fails
            entry["why"] = f"{subject} an output's {config.accuracy_metric} falls to {smaller_score:.5f}, below the budget"
            continue
        if (storage == "int8" or config.accuracy_budget is None) and not score - smaller_score <= INT8_WEIGHTS_SCORE_DROP:
            entry["why"] = (f"{subject} an output's {config.accuracy_metric} falls to {smaller_score:.5f} from {score:.5f}, "
                            f"more than {INT8_WEIGHTS_SCORE_DROP:g}")
            continue
        missed = f"; {entry['why']}" if "why" in entry else ""  # the smaller form tried first
        which_layers = f"{len(changed)} of the {len(keep_float)} layer(s) kept in float, those holding most of the bytes," if which else f"{len(changed)} layer(s) kept in float"
        entry |= {"written": storage, "bytes_saved": saved,
                  "why": f"{which_layers} store {storage} weights ({size_text(saved)} less); {config.accuracy_metric} {smaller_score:.5f}{missed}"}
        how = "weights stored in INT8 per output channel, float when loaded" if storage == "int8" else "weights stored in float16"
        shared = "its table stored with the output layer's weights (tied): " + ("INT8 with a scale per row" if storage == "int8" else "float16")
        reasons = {node: Reason(plan.decisions[node].code, f"{plan.decisions[node].reason.text}; {how if node in changed else shared}")
                   for node in stored if node in plan.decisions}
        return plan.with_reasons(reasons), smaller, smaller_comparisons
    if "why" in entry:
        entry["written"] = "float32"
    return plan, model, comparisons


def _with_int8_recurrent(plan: QuantPlan, model: onnx.ModelProto, keep_float: frozenset[str], levels: int) -> QuantPlan:
    """Rewrite (in place) the recurrent layers of ``model`` (inside If/Loop/Scan bodies too) not kept in float: LSTMs as DynamicQuantizeLSTM,
    GRUs and RNNs with INT8 weights turned back into float when the model loads; the plan's decisions say so."""
    found: list = []

    def rewrite(graph_model: onnx.ModelProto, reserved: set[str]) -> list[str]:
        here = find_recurrent(graph_model)
        found.extend(here)
        return store_recurrent_in_int8(graph_model, [c for c in here if c.node not in keep_float], reserved=reserved, levels=levels)

    rewritten = set(rewrite_everywhere(model, rewrite))
    decisions = dict(plan.decisions)
    for choice in found:
        if choice.node in rewritten and choice.form == "dynamic":
            text = "DynamicQuantizeLSTM: INT8 weights with a scale per gate row, inputs and hidden state quantized per step at run time"
            decisions[choice.node] = NodeDecision(choice.node, choice.op_type, Reason(QuantReason.DYNAMIC, text))
        elif choice.node in rewritten:
            text = (f"weights stored in INT8 with a scale per gate row, turned back into float when onnxruntime loads the model "
                    f"(no integer {choice.op_type} kernel{' for a batch-first LSTM' if choice.op_type == 'LSTM' else ''}): a smaller file, float speed")
            decisions[choice.node] = NodeDecision(choice.node, choice.op_type, Reason(QuantReason.WEIGHT_ONLY, text))
        elif choice.reason:
            decisions[choice.node] = NodeDecision(choice.node, choice.op_type, Reason(QuantReason.UNSUPPORTED, choice.reason))
    return dataclasses.replace(plan, decisions=decisions)


@dataclass(frozen=True)
class BudgetSearch:
    """The layers the accuracy budget keeps in float, and whether the budget was met."""

    keep_float: frozenset[str]
    kept: list[dict]
    met: bool
    note: str
    sensitivity: list[dict] = field(default_factory=list)  # every candidate layer, in the order the search keeps them in float
    # the last model the search built and measured (plan, model, comparisons on the search's batches): kept so it is not built twice
    built: tuple | None = field(default=None, repr=False, compare=False)
    built_on_every_batch: bool = False  # those comparisons cover every held-out batch
    closest_miss: tuple[int, float] | None = None  # the most layers kept in float (count, score) that still missed the budget
    recheck: dict | None = None  # the fast ranking checked against the outputs by stretches (see _sensitivity): both results, which was taken


STORED_IN_INT8 = (QuantReason.WEIGHT_ONLY, QuantReason.DYNAMIC)  # INT8 tables and recurrent weights: weights stored low-bit, no Q/DQ on inputs


def _sensitivity(run: QuantRun, plan: QuantPlan, quantized: onnx.ModelProto, budget: float, measured_all: list,
                 measured_sample: list | None = None) -> BudgetSearch:
    """Keep the layers that cost the most accuracy per share of the work they hold in float until the budget holds.

    ``config.sensitivity`` says how layers are ranked: 'fast' by the noise each adds in one side-by-side pass
    of the float and the quantized model; 'measured' by the outputs' score with each layer alone quantized
    (a model build and a pass over the batches per layer). Either way that damage is divided by the layer's
    share of the model's multiply-adds (a layer kept in float gives up the speed-up of its work), and the
    budget is confirmed by measurement (:func:`_search_counts`). Where the fast ranking's result keeps
    layers holding more than RECHECK_SHARE of the work in float, the ranking is checked against the
    outputs (:func:`_with_stretch_effects`) and searched again; the result keeping less work in float is taken.
    ``measured_all``: the fully quantized model's comparisons on every held-out batch; ``measured_sample``: on the first
    SENSITIVITY_BATCHES of them (taken in the same pass), where there are more.
    """
    batches = run.eval_batches[:SENSITIVITY_BATCHES]
    # an Add/Mul with a constant scalar follows its neighbours: integer while they are, float once either side is kept float
    candidates = [d.node for d in plan.decisions.values() if d.quantized and d.code not in (QuantReason.FOLDED, QuantReason.BIAS_FUSED)
                  and d.node not in plan.constant_operands]
    metric = run.config.accuracy_metric
    fast = run.config.sensitivity == "fast"
    every = _ranked_by_added_noise(run, candidates, quantized, batches) if fast else _ranked_alone(run, candidates, batches)
    # tables and recurrent layers keep their inputs float and hold most of the bytes: kept in float last, when nothing else will do
    stored_only = {d.node for d in plan.decisions.values() if d.code in STORED_IN_INT8}

    whole = len(batches) == len(run.eval_batches)
    on_sample = measured_all if whole else measured_sample or fidelity(run.reference, quantized, batches)
    first_loss = _loss(worst_score(on_sample, metric))
    if first_loss <= 1.0 - budget:  # the sample passes with nothing kept, the whole held-out set does not: search on all of it
        batches, whole = run.eval_batches, True
        first_loss = _loss(worst_score(measured_all, metric))

    def searched(shares: Mapping[str, float]) -> BudgetSearch:
        """The search over ``every`` kept in float by damage per ``shares`` of the work (checked by stretches where it keeps much)."""
        # kept in float alone these take nothing back (every other node reads the same conversions): after the layers that do
        # (with conversions counted no node is without work, and none is set aside: they compete by what they convert)
        inert = _inert_alone(run, [entry["node"] for entry in every], shares)

        def in_keep_order(entries: list[dict]) -> list[dict]:
            def tier(entry: dict) -> int:
                return 2 if entry["node"] in stored_only else 1 if entry["node"] in inert else 0

            return sorted(_by_damage_per_work(entries, shares), key=tier)  # stable: damage per work within each tier

        search = _search_counts(run, in_keep_order(every), budget, measured_all, batches, first_loss)
        if not (fast and search.met and _float_share(search.kept) > RECHECK_SHARE):
            return search
        rescaled = _with_stretch_effects(run, every, batches)
        if rescaled is None:
            return search
        again = _search_counts(run, in_keep_order(rescaled), budget, measured_all, batches, first_loss)
        lighter = again.met and (_float_share(again.kept), len(again.kept)) < (_float_share(search.kept), len(search.kept))
        recheck = {
            "stretches": len({e["stretch"] for e in rescaled}),
            "noise_ranking": {"kept": len(search.kept), "work_share": _float_share(search.kept)},
            "checked_ranking": {"kept": len(again.kept), "work_share": _float_share(again.kept), "met": again.met},
            "taken": "checked_ranking" if lighter else "noise_ranking",
        }
        return dataclasses.replace(again if lighter else search, recheck=recheck)

    nodes = [entry["node"] for entry in every]
    shapes = _held_out_shapes(run)  # shape inference once, for both counts of the work
    search = searched(work_shares(run.prepared, nodes, shapes))
    if not (fast and search.met and search.kept and search.built is not None and run.config.latency_runs > 0 and run.config.target == "cpu"):
        return search
    if _float_share(search.kept) > CONVERSIONS_CHECKED_BELOW:
        return search
    return _fewer_conversions_if_faster(run, search, searched, work_shares(run.prepared, nodes, shapes, CONVERSION_MACS))


# the float layers hold less of the multiply-adds than this: what they cost is mostly the conversions around them, and the
# search counting those is run (a second search, often checked by stretches, and a timing: 10 s of PP-OCRv4 det's 49)
CONVERSIONS_CHECKED_BELOW = 0.1


# what converting one value to and from float costs where a node alone is kept float, in multiply-adds of an integer
# layer: regnet_y_400mf's 11 residual Adds (and Relus) kept float took 1.6 ms of its 9.6 at one thread (onnxruntime 1.32,
# AVX512-VNNI + AMX), about 2 ns per value of the tensors they read and write, where its integer convolutions take
# 0.018 ns per multiply-add
CONVERSION_MACS = 100.0


def _fewer_conversions_if_faster(run: QuantRun, search: BudgetSearch, searched, shares: Mapping[str, float]) -> BudgetSearch:
    """``search``, or the search with the work of each layer counting the values it converts to and from float
    (CONVERSION_MACS multiply-adds each) besides its multiply-adds, when that meets the budget with other layers and the
    model is measured faster.

    Counted by multiply-adds alone, a node without work (a residual Add, its Relu) costs the least to keep in float, and so
    do the first convolutions of a net; but each float island converts the tensors around it, and on large maps that costs
    more than the work: regnet_y_400mf's default budget kept 11 residual Adds in float at 0.69x FP32 (one thread), where
    keeping its squeeze-excitation convolutions meets the same budget at 0.61x. Neither count is right everywhere (a
    recognizer whose stem convolutions are cheap to keep loses with the second), so both are built and timed like any
    other form, by the rule of :mod:`onnxslim.quant.forms`; only where the first search's float layers hold less than
    CONVERSIONS_CHECKED_BELOW of the multiply-adds (the recognizer's hold a quarter: its second search and timing took 11 s
    for nothing). ``searched``: the search for a given count of the work; ``shares``: the work counted with conversions. The
    result's ``recheck`` gains a ``conversions`` entry saying what was found and taken; its entries keep their share of
    the multiply-adds as ``work_share``."""
    by_work = {entry["node"]: entry.get("work_share") for entry in search.sensitivity}
    other = searched(shares)
    kept = frozenset(entry["node"] for entry in search.kept)
    entry: dict = {"kept": len(search.kept), "kept_counting_conversions": len(other.kept), "met": other.met, "taken": "multiply-adds"}
    recheck = dict(search.recheck or {}) | {"conversions": entry}
    if not other.met or other.built is None or frozenset(e["node"] for e in other.kept) == kept:
        return dataclasses.replace(search, recheck=recheck)
    verdict, speed = timed_decision(
        run, run.config, search.built[1], other.built[1], entry, "latency_vs_multiply_adds",
        description="timing the budget's float layers: two rankings", labels=("ranked by multiply-adds", "counting conversions"),
        against="the other set's",
    )
    entry["why"] = f"{len(other.kept)} layer(s) in float against {len(search.kept)}: {speed}" + ("" if verdict is None else f" ({verdict})")
    if verdict is not None:
        return dataclasses.replace(search, recheck=recheck)
    entry["taken"] = "conversions"

    def as_reported(entries: list[dict]) -> list[dict]:
        return [e | {"work_share_with_conversions": e["work_share"]} | ({"work_share": by_work[e["node"]]} if by_work.get(e["node"]) is not None else {})
                if "work_share" in e else e for e in entries]

    # the report's ranking check stays the first search's (its shares are of the multiply-adds); this entry says what replaced it
    return dataclasses.replace(other, kept=as_reported(other.kept), sensitivity=as_reported(other.sensitivity), recheck=recheck)


# nodes without work are planned in float one at a time, the noisiest first, as many as keep the plans to this many nodes
# in all (a plan of a 355-node graph: 12-14 ms; every one of its 206 such nodes checked: 2.8 s)
INERT_CHECK_NODES = 80_000


def _inert_alone(run: QuantRun, candidates: list[str], shares: Mapping[str, float]) -> set[str]:
    """The ``candidates`` (ranked, the noisiest first) without multiply-adds that, kept in float alone, leave every other
    node and every graph output reading what it read: the same tensors quantized with the same ranges. The first of them
    (INERT_CHECK_NODES: all of a 355-node graph's, 26 in a 3,000-node one) are checked, those the budget would keep in
    float first; the others keep their rank.

    Between integer convolutions an Add, a Resize, a Concat or a pooling kept in float still gets its inputs as the codes
    its producers write, and its output is still quantized for the layers after it: the outputs do not move. Ranked by
    their own noise, which is mostly those conversions, for work they do not have, such nodes filled a budget's float
    layers without taking noise back; they go after the layers that do, and follow their neighbours into float where
    those are kept (the planner's rule for a node whose inputs are not all quantized). A node whose float plan changes
    what another node reads (a gate whose product then reads it exact, an Add read by a float LayerNorm, an output)
    keeps its rank.
    """
    workless = [node for node in candidates if shares.get(node) == 0.0][: max(16, INERT_CHECK_NODES // max(len(run.prepared.graph.node), 1))]
    if not workless:
        return set()
    readers = consumers_map(run.prepared.graph)
    outputs = {o.name for o in run.prepared.graph.output}
    base = _conversions(run.plan(run.config, calibrated=False), readers, outputs)
    return {node for node in workless
            if _seen_by_others(_conversions(run.plan(run.config, frozenset({node}), calibrated=False), readers, outputs), node) == _seen_by_others(base, node)}


def _conversions(plan: QuantPlan, readers: Mapping[str, list], outputs: set[str]) -> dict:
    """The plan's quantized tensors, each with its range, the nodes that read it dequantized, and whether it is a graph output."""
    every = {}
    for key, spec in plan.activations.items():
        dequantized_by = {n.name for n in readers.get(key, [])} if spec.rewire_all else set(spec.readers)
        every[key] = ((spec.tensor, spec.observe, spec.share, spec.clamp_low, spec.clamp_high, spec.folded_into, spec.bounded),
                      frozenset(dequantized_by), key in outputs)
    return every


def _seen_by_others(conversions: dict, node: str) -> dict:
    """``conversions`` as every node but ``node`` and the graph's outputs see them: the tensors read dequantized by another
    node or written as an output, each with its range and those other readers."""
    seen = {}
    for key, (quantization, dequantized_by, is_output) in conversions.items():
        others = dequantized_by - {node}
        if others or is_output:
            seen[key] = (quantization, others)
    return seen


RECHECK_SHARE = 0.25  # the fast ranking's float layers hold more of the multiply-adds than this: checked against the outputs
STRETCHES = 12  # runs of consecutive layers each measured alone quantized for that check


def _float_share(kept: list[dict]) -> float:
    """The share of the model's multiply-adds the ``kept`` entries hold (those whose share is known)."""
    return sum(entry.get("work_share", 0.0) for entry in kept)


def _with_stretch_effects(run: QuantRun, every: list[dict], batches) -> list[dict] | None:
    """``every`` (ranked by the noise each layer adds) with each layer's estimated effect at the outputs: the graph's
    ranked layers are cut into STRETCHES runs in graph order, each run alone is quantized and measured, and its loss is
    shared among its layers by their own noise (:func:`effect_at_outputs`). Each entry gains ``output_effect``, ``stretch``
    (its run's index) and ``stretch_score`` (the worst output score with that run alone quantized). None where a ranked
    layer lies inside a subgraph body (no place in the main graph's order)."""
    position = {node.name: index for index, node in enumerate(run.prepared.graph.node)}
    if any(entry["node"] not in position for entry in every):
        return None
    ordered = sorted((entry["node"] for entry in every), key=position.__getitem__)
    own = {entry["node"]: entry["added_noise"] for entry in every}
    everyone = frozenset(ordered)
    measured: dict[str, dict] = {}
    runs = stretches(ordered, STRETCHES)
    for index, stretch in enumerate(track(runs, "checking the ranking by stretches", enabled=run.show_progress)):
        _, model = run.build(run.config, everyone - frozenset(stretch))
        score = worst_score(fidelity(run.reference, model, batches), run.config.accuracy_metric)
        for node, effect in effect_at_outputs(stretch, own, _loss(score)).items():
            measured[node] = {"output_effect": effect, "stretch": index, "stretch_score": score}
    return [entry | measured[entry["node"]] for entry in every]


def _search_counts(run: QuantRun, every: list[dict], budget: float, measured_all: list, batches, first_loss: float) -> BudgetSearch:
    """Keep the first of ``every`` (in the order they are kept in float) in float, as many as :func:`next_count` guesses
    from the losses measured so far, until the smallest count that meets the budget is found.

    The counts are measured on ``batches`` (the first SENSITIVITY_BATCHES held-out batches, or all of them); a count found
    on a sample is confirmed on every held-out batch, and where it misses there, the search goes on over all of them.
    ``first_loss``: the fully quantized model's loss on ``batches``.
    """
    metric = run.config.accuracy_metric
    ranked = [entry["node"] for entry in every]
    noise = [_damage(entry) for entry in every]
    whole = len(batches) == len(run.eval_batches)
    losses = {0: first_loss}
    measured = 0
    while True:
        best = None  # (count, score, built) of the smallest count measured to meet the budget
        last = None
        while (count := next_count(noise, losses, 1.0 - budget)) is not None:
            kept_plan, model = run.build(run.config, frozenset(ranked[:count]))
            comparisons = fidelity(run.reference, model, batches)
            score = worst_score(comparisons, metric)
            losses[count] = _loss(score)
            measured += 1
            last = (kept_plan, model, comparisons)
            if score >= budget and (best is None or count < best[0]):
                best = (count, score, last)
        if best is None or whole:
            break
        count, _, (kept_plan, model, _) = best
        confirmed = fidelity(run.reference, model, run.eval_batches)
        if worst_score(confirmed, metric) >= budget:
            best = (count, worst_score(confirmed, metric), (kept_plan, model, confirmed))
            batches, whole = run.eval_batches, True  # what best's comparisons now cover
            break
        # a sample of the held-out set passed it, the whole set does not: measure every count on all of it from here
        batches, whole = run.eval_batches, True
        losses = {0: _loss(worst_score(measured_all, metric)), count: _loss(worst_score(confirmed, metric))}
    missed = [k for k, loss in losses.items() if not loss <= 1.0 - budget]
    closest = (max(missed), 1.0 - losses[max(missed)] if math.isfinite(losses[max(missed)]) else math.nan) if missed else None  # NaN outputs: no score
    if best is not None:
        count, score, built = best
        note = (f"accuracy budget {budget} met with {count} most sensitive layer(s) kept in float ({metric} {score:.5f} on {len(batches)} batch(es); "
                f"{measured} count(s) measured)")
        return BudgetSearch(frozenset(ranked[:count]), every[:count], True, note, every, built, whole, closest)
    note = f"accuracy budget {budget} cannot be met even with every quantized layer in float"
    return BudgetSearch(frozenset(ranked), every, False, note, every, last, whole, closest)  # the search ends by measuring every ranked layer kept


def _below(score: float, budget: float) -> str:
    """``score`` with the digits that show it below ``budget`` (five at least): 0.9999996 misses 0.999999, "1.00000" would not say so."""
    for digits in range(5, 10):
        text = f"{score:.{digits}f}"
        if float(text) < budget:
            return text
    return f"{score:.10f}"


def _damage(entry: dict) -> float:
    """What quantizing a ranked layer costs the outputs: its estimated effect at the outputs where its stretch was measured,
    else the noise it adds, or the score it takes away when it alone is quantized."""
    if "output_effect" in entry:
        return entry["output_effect"]
    return entry["added_noise"] if "added_noise" in entry else 1.0 - entry["score_when_alone_quantized"]


def _held_out_shapes(run: QuantRun) -> dict:
    """The prepared graph's tensor shapes at the first held-out batch's input sizes, where known (for :func:`work_shares`)."""
    inputs = {i.name for i in run.prepared.graph.input}
    feed = run.eval_batches[0][1]
    try:
        return known_shapes(run.prepared, {name: np.shape(value) for name, value in feed.items() if name in inputs})
    except Exception:  # no shapes, no shares: the damage alone orders the layers (every count is measured all the same)
        return {}


def _by_damage_per_work(every: list[dict], shares: Mapping[str, float]) -> list[dict]:
    """``every`` (ranked by damage) in the order the budget keeps layers in float, by damage per share of the model's
    multiply-adds (``shares``, :func:`by_damage_per_work`); each entry gains its ``work_share`` where known."""
    entries = {entry["node"]: entry for entry in every}
    ordered = by_damage_per_work([(entry["node"], _damage(entry)) for entry in every], shares)
    return [entries[node] | ({"work_share": shares[node]} if node in shares else {}) for node, _ in ordered]


def _loss(score: float) -> float:
    return math.inf if math.isnan(score) else 1.0 - score


def _ranked_by_added_noise(run: QuantRun, candidates: list[str], quantized: onnx.ModelProto, batches) -> list[dict]:
    wanted = set(candidates)
    nodes = [n for n in run.prepared.graph.node if n.name in wanted]
    computed = {o for n in quantized.graph.node for o in n.output}
    batches = track(batches, "per-layer noise", enabled=run.show_progress)
    isolated = inputs_made_exact(run.prepared, quantized)
    if isolated is not None:  # each layer's own noise, measured with exact inputs: nothing inherited to subtract
        names = [o for n in nodes for o in n.output if o in computed and o in run.float_names]
        compared = paired_tensor_fidelity(isolated, {name: float_copy(name) for name in names}, batches)
    else:  # with If/Loop/Scan bodies: both models side by side, each layer charged the noise beyond what its inputs carry
        # activations only: weights are not computed, and the quantized graph replaces them
        computed |= {v.name for v in quantized.graph.input}
        activations = {t for t in run.float_names if t in computed} - {i.name for i in run.prepared.graph.initializer}
        body_nodes, body_activations = compared_body_nodes(run.scopes, quantized, wanted)
        nodes, activations = nodes + body_nodes, activations | body_activations
        compared = tensor_fidelity(run.prepared, quantized, tensors_to_compare(nodes, activations), batches)
    noise = {name: noise_power(c.err_sq, c.ref_sq, c.nonfinite_mismatches) for name, c in compared.items()}
    ranked = rank_by_added_noise(nodes, noise, inputs_exact=isolated is not None)
    return [{"node": node, "added_noise": added} for node, added in ranked]


def _ranked_alone(run: QuantRun, candidates: list[str], batches) -> list[dict]:
    damage: dict[str, float] = {}
    for node in track(candidates, "per-layer sensitivity", enabled=run.show_progress):
        others = frozenset(n for n in candidates if n != node)
        _, model = run.build(run.config, others)
        score = worst_score(fidelity(run.reference, model, batches), run.config.accuracy_metric)
        damage[node] = 2.0 if math.isnan(score) else 1.0 - score  # NaN/Inf where FP32 is finite: worst of all
    ranked = sorted(candidates, key=lambda n: damage[n], reverse=True)
    return [{"node": n, "score_when_alone_quantized": 1.0 - damage[n]} for n in ranked]


def _precision_of(model: onnx.ModelProto) -> str:
    """How a model that uses float16 stores its weights (:func:`~onnxslim.ir.counts.weight_types`): 'FP16' when none is
    float32, else 'mixed FP16/FP32' (a float32 model with a float16 island), so that no label calls it what it is not."""
    return "mixed FP16/FP32" if onnx.TensorProto.FLOAT in weight_types(model.graph) else "FP16"


def _evaluation_problems(comparisons, run: QuantRun, eval_data_given: bool) -> list[str]:
    """Refuse (or, with --eval-data, warn about) held-out data that does not exercise the model.

    Inputs that do not vary give the float model the same outputs for every
    sample, so any candidate that matches them once "passes"; the same holds
    for outputs that are constant whatever the input.
    """
    problems = []
    float_inputs = {name for _, batch in run.eval_batches for name, array in batch.items() if array.dtype.kind == "f"}
    still = _constant_inputs(run.eval_batches)
    if still:
        problems.append(f"input(s) {', '.join(still)} barely vary over {run.eval_label}: agreement on such data says little about real inputs")
    # An integer output (a length, a count) that stands still (one value, the same for every sample) blinds no check
    # while a float output carries the samples' differences: said, not refused.
    informative = any(not (c.single_value or c.degenerate) for c in comparisons)
    incidental = [c for c in comparisons if (c.single_value or c.degenerate) and c.integer_values and informative]
    comparisons = [c for c in comparisons if c not in incidental]
    constant = [c for c in comparisons if c.degenerate]
    if constant:
        problems.append(
            f"the float model's output '{constant[0].name}' is nearly constant on {run.eval_label} (std {constant[0].reference_std:.3g}): "
            "agreement with it proves nothing"
        )
    single = [c for c in comparisons if c.single_value]
    if single:
        problems.append(
            f"the float model's output '{single[0].name}' gives one value on {run.eval_label}: the cosine of one number is 1 whenever "
            "the signs agree, so it shows nothing"
        )
        if not eval_data_given and not constant:
            raise DataError(f"{run.label}: {problems[-1]}; give more batches (more held out), a larger batch (--input-shapes), or --eval-data")
    # token ids or masks that vary carry the samples' differences even where every float input (a scalar setting) stands still
    refuse = constant or (float_inputs and set(still) >= float_inputs and not _varying_other_inputs(run.eval_batches))
    if refuse and not eval_data_given:
        raise DataError(f"{run.label}: {problems[0]}; calibrate on real inputs, or give --eval-data to measure on other data")
    problems.extend(
        f"the float model's integer output '{c.name}' {'gives one value' if c.single_value else 'is the same for every sample'} on {run.eval_label}: "
        "the check that it is unchanged shows little" for c in incidental
    )
    return problems


def _constant_inputs(batches) -> list[str]:
    """Float inputs whose values hardly change over ``batches`` (all zeros, one repeated image)."""
    # two passes a batch at a time (the mean, then the spread around it) in float64: joining every held-out batch
    # first took seconds and hundreds of MB on a detector's 64 images
    floats = [(name, array) for _, batch in batches for name, array in batch.items() if array.dtype.kind == "f"]
    sums: dict[str, float] = {}
    sizes: dict[str, int] = {}
    for name, array in floats:
        sums[name] = sums.get(name, 0.0) + float(np.sum(array, dtype=np.float64))
        sizes[name] = sizes.get(name, 0) + array.size
    means = {name: sums[name] / sizes[name] for name in sums if sizes[name]}
    spreads: dict[str, float] = {}
    with np.errstate(invalid="ignore", over="ignore"):  # Inf inputs: a NaN spread, never constant
        for name, array in floats:
            if name in means:
                spreads[name] = spreads.get(name, 0.0) + float(np.sum(np.square(np.subtract(array, means[name], dtype=np.float64))))
    return [name for name, mean in means.items() if math.sqrt(spreads[name] / sizes[name]) <= 1e-6 * max(1.0, abs(mean))]


def _varying_other_inputs(batches) -> list[str]:
    """Integer and boolean inputs (token ids, masks) that take more than one value over ``batches``."""
    values: dict[str, set] = {}
    for _, batch in batches:
        for name, array in batch.items():
            if array.dtype.kind in "iub":
                values.setdefault(name, set()).update(np.unique(array).tolist())
    return [name for name, seen in values.items() if len(seen) > 1]


def quantize(
    model: str | os.PathLike | onnx.ModelProto,
    data: str | os.PathLike | DataSource | None,
    *,
    config: QuantConfig = QuantConfig(),
    output: str | os.PathLike | None = None,
    eval_data: str | os.PathLike | DataSource | None = None,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    show_progress: bool = False,
) -> tuple[onnx.ModelProto, QuantReport]:
    """Quantize ``model`` to INT8 QDQ (or FP16, ``config.precision``) with calibration ``data``; write to ``output`` when given.

    Returns the model written (INT8 or FP16, or the cleaned FP32 model when
    the result is slower and ``config.if_slower`` is 'keep-fp32') and the report.
    """
    return _quantize(model, data, config, output, eval_data, input_shapes, show_progress, timed=True)


def quantized_untimed(
    model: str | os.PathLike | onnx.ModelProto,
    data: str | os.PathLike | DataSource | None,
    *,
    config: QuantConfig = QuantConfig(),
    show_progress: bool = False,
) -> tuple[onnx.ModelProto, QuantReport]:
    """:func:`quantize` without its final timing against the float model, for a caller that times the result itself (compress
    times every candidate in one loop): the INT8 model is returned whatever its speed, and the report has no latency. The
    forms ``--scalar-affine auto``, ``--depthwise auto`` and ``--output-layers auto`` choose between are still timed when ``config.latency_runs`` allows."""
    return _quantize(model, data, config, None, None, None, show_progress, timed=False)


def _quantize(model, data, config: QuantConfig, output, eval_data, input_shapes, show_progress: bool, *, timed: bool) -> tuple[onnx.ModelProto, QuantReport]:
    if data is None and not config.weights_only:
        raise UsageError("quantize needs calibration data (--data); only --weights-only works without it")
    run = QuantRun(model, data, config, eval_data, input_shapes, show_progress)
    refuse_quantized(run.prepared, run.label, "quantize")
    refuse_blocked_layout(run.prepared, run.label, "quantize")
    report = QuantReport(
        run.label, str(output) if output else None, config.target, _method(config),
        precision=f"{config.weights_only}-weights" if config.weights_only else config.precision, budget=config.accuracy_budget, accuracy_metric=config.accuracy_metric,
        original_precision=run.original_precision,
    )
    report.prepare = run.prepare_results
    if config.precision == "int8" and not config.weights_only:
        report.weight_range = run.weight_range
    report.warnings.extend(run.warnings + _unknown_exclusions(run.prepared, config))
    if config.precision == "fp16" or config.weights_only:
        if config.weights_only:
            result = quantize_weights(run, config, report, eval_data is not None, _evaluation_problems)
            report.warnings.extend(w for w in run.warnings if w not in report.warnings)
        else:
            result = quantize_half(run, config, report, eval_data is not None, _evaluation_problems)
        report.calibration = CalibrationSummary(run.calibration_batches, run.calibration_seconds, _peak_rss_mb())
        report.evaluation = EvaluationSummary(run.eval_label, len(run.eval_batches))
        if output is not None:
            write_verified(result, output, source=None if isinstance(model, onnx.ModelProto) else model)
        return result, report
    # the integer form of constant-scalar Add/Mul is observed later, and only where the budget leaves it nodes to measure
    measure_scalar_affine = config.scalar_affine == "auto" and config.target == "cpu"
    plan = run.plan(config)
    tables = config.embeddings == "int8" and any(c.quantized for c in find_everywhere(run.prepared, run.scopes, find_tables))
    recurrent = config.recurrent == "int8" and any(c.quantized for c in find_everywhere(run.prepared, run.scopes, find_recurrent))
    if not plan.quantized_nodes and not tables and not recurrent:
        raise NothingToDoError(f"{run.label}: nothing to quantize ({_main_reasons(plan) or 'no nodes'})")
    plan, quantized, comparisons = _within_budget(run, config, report, eval_data is not None)
    if measure_scalar_affine:
        plan, quantized, comparisons = integer_form_if_it_pays(run, config, report, plan, quantized, comparisons)
    if config.target == "cpu":
        plan, quantized, comparisons = float_depthwise_if_faster(run, config, report, plan, quantized, comparisons)
    plan, quantized, comparisons = int8_output_layers_if_they_pay(run, config, report, plan, quantized, comparisons)
    plan, quantized, comparisons = _kept_weights_within_budget(run, config, report, plan, quantized, comparisons)
    if config.target == "cpu":  # last: it changes no value, only which kernel runs a layer
        quantized, comparisons = gemm_kernels_if_faster(run, config, report, quantized, comparisons)
    report.warnings.extend(budget_uncertain(comparisons, config, run))
    report.warnings.extend(evaluation_warnings(comparisons, run.eval_label))
    report.warnings.extend(w for w in run.warnings if w not in report.warnings)
    report.prepare = [*report.prepare, *(p for p in plan.layout if p.modified)]
    report.decisions = list(plan.decisions.values())
    report.fidelity = comparisons
    report.calibration = CalibrationSummary(run.calibration_batches, run.calibration_seconds, _peak_rss_mb())
    report.evaluation = EvaluationSummary(run.eval_label, len(run.eval_batches))
    report.sizes = Sizes(model_file_bytes(run.original), model_file_bytes(quantized))
    if report.sizes.quantized_bytes > report.sizes.fp32_bytes:
        report.warnings.append(
            f"the INT8 model is larger than the original ({size_text(report.sizes.quantized_bytes)} against {size_text(report.sizes.fp32_bytes)}, "
            f"{report.sizes.quantized_bytes - report.sizes.fp32_bytes:,} bytes more): "
            "a weight kept in float beside its INT8 codes for readers in a subgraph body, or quantizers outweighing small weights, "
            "can do that; --if-slower and the latency check do not look at size"
        )
    try:
        report.onnxruntime_kernels = dict(optimized_ops(quantized, threads=config.threads))
    except Exception as exc:  # an optimizer failure is worth reporting, not fatal
        report.warnings.append(f"could not read onnxruntime's optimized graph: {first_line(exc, 160)}")
    result = faster_or_float(
        run, quantized, config, report, feed=run.eval_batches[0][1] if timed else None, subject="INT8 is", where="here", anyway="--if-slower write writes INT8 anyway",
        written="int8", description="timing FP32 vs INT8", labels=("float model", "quantized model"),
    )
    if output is not None:
        write_verified(result, output, source=None if isinstance(model, onnx.ModelProto) else model)
    return result, report


def _main_reasons(plan: QuantPlan, shown: int = 3) -> str:
    """The most telling reasons nothing was quantized: the layers' first (they hold the work), then the commonest, with the op types they cover."""
    groups: dict[str, Counter] = {}
    for decision in plan.decisions.values():
        groups.setdefault(decision.reason.text, Counter())[decision.op_type] += 1
    ranked = sorted(groups.items(), key=lambda item: (not any(op in WEIGHTED_LAYERS for op in item[1]), -sum(item[1].values()), item[0]))
    return "; ".join(f"{', '.join(f'{op} {count}' for op, count in ops.most_common())}: {text}" for text, ops in ranked[:shown])


def _method(config: QuantConfig) -> str:
    """How ranges were chosen, as the report states it."""
    if config.weights_only:
        return "block-wise, error-compensated with data, clipping search without"
    return config.method if config.precision == "int8" else "minmax"


def _unknown_exclusions(model: onnx.ModelProto, config: QuantConfig) -> list[str]:
    names = {n.name for n in all_nodes(model.graph)}
    types = {n.op_type for n in all_nodes(model.graph)}
    return [f"--exclude-nodes: no node named '{name}' (names as in the report's decisions)" for name in config.exclude_nodes if name not in names] + [
        f"--exclude-op-types: the model has no {op} node" for op in config.exclude_op_types if op not in types
    ]


def _fewer_smoothing_muls(run: QuantRun, config: QuantConfig, report: QuantReport, smoothed_comparisons: list):
    """The plan, QDQ model and fidelity of the fastest prepared graph with fewer smoothing Muls (none, then only the
    strongest), every layer quantized, that meets the accuracy budget on every held-out batch as firmly as the smoothed
    graph (``smoothed_comparisons``) does; otherwise None, and the run builds from the smoothed graph again.

    A Mul before a layer costs time on every run (a tenth of MiniLM's INT8 time at one thread): outlier channels the budget
    tolerates are left as they are. Firmly: where resampling the held-out batches puts the smoothed graph's score above the
    budget, it must put this one's there too (the Muls are cheap insurance against a pass at the budget's edge). The
    divisions folded into a normalization cost nothing and stay in every graph.
    """
    smoothed, tensors = run.prepared, (run.float_names, run.shapes)
    firm = not budget_uncertain(smoothed_comparisons, config, run)
    for min_gain in run.fewer_smoothing_muls:
        fewer, fewer_result, fewer_tensors = run.with_fewer_smoothing_muls(min_gain)
        run.use_prepared(fewer, fewer_tensors)
        plan, quantized = run.build(config)
        comparisons = fidelity(run.reference, quantized, run.eval_batches)
        if not worst_score(comparisons, config.accuracy_metric) >= config.accuracy_budget:  # NaN misses the budget
            continue
        if firm and budget_uncertain(comparisons, config, run):
            continue
        # the report's preparation steps say what this graph holds: the Muls kept, those left out and why
        steps = [fewer_result if step.name == fewer_result.name else step for step in run.prepare_results]
        run.prepare_results[:] = [step for step in steps if step.modified or step.declined]
        report.prepare = run.prepare_results
        return plan, quantized, comparisons
    run.use_prepared(smoothed, tensors)
    return None


def _within_budget(run: QuantRun, config: QuantConfig, report: QuantReport, eval_data_given: bool):
    """The plan, the QDQ model and its fidelity: with an accuracy budget, the most sensitive layers kept in float until it holds."""
    plan, quantized = run.build(config)
    # the search measures its counts on the first SENSITIVITY_BATCHES held-out batches, and starts from this model there
    comparisons, on_sample = fidelity_with_head(run.reference, quantized, run.eval_batches, SENSITIVITY_BATCHES if config.accuracy_budget is not None else None)
    report.warnings.extend(_evaluation_problems(comparisons, run, eval_data_given))
    if config.accuracy_budget is None:
        return plan, quantized, comparisons
    if worst_score(comparisons, config.accuracy_metric) >= config.accuracy_budget:  # NaN misses the budget
        # where the smoothed graph needs layers in float, the graph without its Muls (noisier) would too: tried only here
        chosen = _fewer_smoothing_muls(run, config, report, comparisons)
        return chosen or (plan, quantized, comparisons)
    search = _sensitivity(run, plan, quantized, config.accuracy_budget, comparisons, on_sample)
    report.kept_float_for_budget = search.kept
    report.sensitivity = search.sensitivity
    report.ranking_check = search.recheck or {}
    if not search.met:
        report.warnings.append(search.note)
    if search.built is not None:
        plan, quantized, searched = search.built
    else:
        (plan, quantized), searched = run.build(config, search.keep_float), None
    if not plan.quantized_nodes:
        alone = [k["score_when_alone_quantized"] for k in search.kept if "score_when_alone_quantized" in k]
        if config.sensitivity == "measured":
            why = (f"every layer alone brings an output's {config.accuracy_metric} score on {run.eval_label} below it"
                   + (f" (the least harmful reaches {max(alone):.5f})" if alone else ""))
        elif not search.met:
            why = f"it is missed even with every one of the {len(search.sensitivity)} layers the search ranked in float"
        else:  # what was measured: the ranked layers kept in float in their order, not every set of them
            kept, score = search.closest_miss
            why = (f"kept in float from the noisiest per share of the work, the layers miss it until every one is (with {kept} of {len(search.sensitivity)} in float, "
                   f"{config.accuracy_metric} {_below(score, config.accuracy_budget)}): where a layer's noise grows on its way to the outputs, its own noise does not show it; "
                   "--sensitivity measured ranks layers one by one")
        alone = dominant_batches(comparisons, run.eval_label)  # the INT8 model's comparison on every held-out batch
        why += f" ({alone[0]})" if alone else ""
        raise nothing_written(report, f"{run.label}: the accuracy budget {config.accuracy_budget} leaves nothing quantized: {why}; nothing written")
    # the search may have measured only the first SENSITIVITY_BATCHES held-out batches: the report covers all of them
    comparisons = searched if searched is not None and search.built_on_every_batch else fidelity(run.reference, quantized, run.eval_batches)
    report.warnings.extend(budget_shortfall(comparisons, config, run))
    return plan, quantized, comparisons
