"""``quantize --precision fp16``: FP16 with FP32 islands, chosen from measured ranges and the accuracy budget.

Order: which nodes have a float16 path; calibration (each tensor's largest
magnitude) keeps both sides of any tensor near float16's limit in float32;
the float16 model's fidelity is measured (on the target's provider when it
is here, otherwise on the CPU through the float32 emulation of its rounding);
with an accuracy budget the most harmful nodes join the FP32 islands until it
holds; then it is timed on the target and kept only if faster.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import onnx
from onnx import TensorProto

from onnxslim.errors import NothingToDoError
from onnxslim.ir.counts import weight_types
from onnxslim.ir.io import model_file_bytes
from onnxslim.measure import evaluation_warnings, fidelity, worst_score
from onnxslim.measure.sensitivity import counts_to_try
from onnxslim.passes import fuse_layernorm
from onnxslim.progress import track
from onnxslim.quant.budget import SENSITIVITY_BATCHES, budget_shortfall
from onnxslim.quant.calibrate import calibrate
from onnxslim.quant.decisions import NodeDecision, QuantReason, excluded_by_user
from onnxslim.quant.fallback import faster_or_float
from onnxslim.quant.float16 import FRAGILE_OPS, Float16Result, eligible_nodes, overflowing, to_float16
from onnxslim.quant.report import Sizes
from onnxslim.reasons import Reason
from onnxslim.runtime import available_providers, resolve_provider

EMULATED = "cpu, FP16 rounding emulated in float32"


@dataclass(frozen=True)
class HalfSearch:
    """Nodes the budget keeps in float32, and whether the budget was met."""

    keep_float: frozenset[str]
    kept: list[dict]
    met: bool
    note: str
    sensitivity: list[dict]


class HalfRun:
    """The float16 side of a :class:`~onnxslim.quant.pipeline.QuantRun`: eligibility, ranges, candidates."""

    def __init__(self, run, config):
        self.run, self.config = run, config
        self.eligibility = eligible_nodes(run.prepared)
        self.types = self.eligibility.types
        self.nodes = {n.name: n for n in run.prepared.graph.node}
        self.decisions: dict[str, NodeDecision] = {}
        for name, why in self.eligibility.refused.items():
            self.decisions[name] = NodeDecision(name, self.nodes[name].op_type, Reason(QuantReason.UNSUPPORTED, why))
        self.target_provider = resolve_provider(config.target if config.target != "tensorrt" else "cuda")
        self.on_target = self.target_provider in available_providers()

    def user_excluded(self) -> set[str]:
        excluded = set()
        for name in self.eligibility.eligible:
            node = self.nodes[name]
            reason = excluded_by_user(node, self.config)
            if reason is not None:
                excluded.add(name)
                self.decisions[name] = NodeDecision(name, node.op_type, reason)
        return excluded

    def observe_ranges(self) -> dict[str, float]:
        """Largest magnitude of every float tensor that a candidate node reads or writes, over the calibration batches."""
        run = self.run
        wanted = set()
        for name in self.eligibility.eligible:
            node = self.nodes[name]
            wanted |= {t for t in list(node.input) + list(node.output) if t and self.types.get(t) == TensorProto.FLOAT}
        wanted -= {t.name for t in run.prepared.graph.initializer}
        start = time.perf_counter()
        run.stats, seen = calibrate(
            run.prepared, wanted, run.calib_source, histogram=False, provider=run.provider, total=run.calib_source.total,
            show_progress=run.show_progress, stats=run.stats,
        )
        run.calibration_batches = max(run.calibration_batches, seen)
        run.calibration_seconds += time.perf_counter() - start
        return {t: max(abs(run.stats[t].minmax.min), abs(run.stats[t].minmax.max)) for t in wanted}

    def convert(self, half: frozenset[str], *, emulate: bool) -> Float16Result:
        return to_float16(self.run.prepared, half, self.types, emulate=emulate)

    def score(self, half: frozenset[str], batches) -> float:
        comparisons = fidelity(self.run.reference, self.convert(half, emulate=True).model, batches, label="FP16 emulation")
        return worst_score(comparisons, self.config.accuracy_metric)

    def search(self, half: frozenset[str], budget: float) -> HalfSearch:
        """Keep the nodes that cost the most accuracy in float32 until ``budget`` holds: fragile ops first, then the rest."""
        batches = self.run.eval_batches[:SENSITIVITY_BATCHES]
        in_order = [n for n in self.eligibility.eligible if n in half]  # graph order: ties rank the same way every run
        fragile = [n for n in in_order if self.nodes[n].op_type in FRAGILE_OPS]
        others = [n for n in in_order if n not in set(fragile)]
        damage: dict[str, float] = {}
        kept: list[str] = []
        score = math.nan
        for stage, candidates in (("fragile ops", fragile), ("every other node", others)):
            for node in track(candidates, f"FP16 sensitivity ({stage})", enabled=self.run.show_progress):
                alone = self.score(frozenset({node}), batches)
                damage[node] = 2.0 if math.isnan(alone) else 1.0 - alone
            ranked = sorted(candidates, key=lambda n: damage[n], reverse=True)
            for count in counts_to_try(len(ranked), finish_with_all=False):
                trial = kept + ranked[:count]
                score = self.score(half - frozenset(trial), batches)
                if score >= budget:
                    chosen = [{"node": n, "score_when_alone_fp16": 1.0 - damage[n]} for n in trial]
                    note = f"accuracy budget {budget} met with {len(trial)} node(s) kept in float32 ({self.config.accuracy_metric} {score:.6f} on {len(batches)} batch(es))"
                    return HalfSearch(frozenset(trial), chosen, True, note, _ranked(damage))
            kept += ranked
        chosen = [{"node": n, "score_when_alone_fp16": 1.0 - damage[n]} for n in kept]
        return HalfSearch(frozenset(kept), chosen, False, f"accuracy budget {budget} cannot be met even with every node in float32", _ranked(damage))


def _ranked(damage: dict[str, float]) -> list[dict]:
    return [{"node": n, "score_when_alone_fp16": 1.0 - d} for n, d in sorted(damage.items(), key=lambda item: -item[1])]


def quantize_half(run, config, report, eval_data_given: bool, evaluation_problems) -> onnx.ModelProto:
    """The FP16 model (or the cleaned FP32 one under ``if_slower``), with ``report`` filled in."""
    floats = {kind for kind in weight_types(run.original.graph) if kind in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)}
    if floats == {onnx.TensorProto.FLOAT16}:  # widened to float32 to be worked on: converting it back would only relabel it
        raise NothingToDoError(f"{run.label}: the model is float16 already (every weight is float16); nothing to convert (INT8 makes it smaller)")
    # one LayerNormalization keeps its statistics in float32: no square to overflow, one kernel instead of nine
    fused = fuse_layernorm(run.prepared, leave=lambda node: excluded_by_user(node, config) is not None)
    if fused.modified or fused.declined:
        run.prepare_results.append(fused)
    half_run = HalfRun(run, config)
    excluded = half_run.user_excluded()
    candidates = [n for n in half_run.eligibility.eligible if n not in excluded]
    if not candidates:
        reasons = sorted({d.reason.text for d in half_run.decisions.values()})[:3]
        raise NothingToDoError(f"{run.label}: nothing to convert to FP16 ({'; '.join(reasons) or 'no float nodes'})")
    absmax = half_run.observe_ranges()
    overflow = {n: why for n, why in overflowing(run.prepared, absmax).items() if n in set(candidates)}
    for name, why in overflow.items():
        half_run.decisions[name] = NodeDecision(name, half_run.nodes[name].op_type, Reason(QuantReason.OVERFLOW, why))
    half = frozenset(n for n in candidates if n not in overflow)
    if not half:
        raise NothingToDoError(f"{run.label}: every float node reads or writes a tensor beyond float16's range; nothing written")

    everything = half
    emulated = half_run.convert(half, emulate=True)
    comparisons = fidelity(run.reference, emulated.model, run.eval_batches, label="FP16 emulation")
    report.warnings.extend(evaluation_problems(comparisons, run, eval_data_given))
    if config.accuracy_budget is not None and not worst_score(comparisons, config.accuracy_metric) >= config.accuracy_budget:
        search = half_run.search(half, config.accuracy_budget)
        report.kept_float_for_budget = search.kept
        report.sensitivity = search.sensitivity
        if not search.met:
            report.warnings.append(search.note)
        alone = {k["node"]: k["score_when_alone_fp16"] for k in search.kept}
        for name in search.keep_float:
            text = f"kept in float32 for --accuracy-budget ({config.accuracy_metric} {alone[name]:.6f} when it alone is FP16)"
            half_run.decisions[name] = NodeDecision(name, half_run.nodes[name].op_type, Reason(QuantReason.KEPT_FOR_ACCURACY, text))
        half = half - search.keep_float
        if not half:
            raise NothingToDoError(f"{run.label}: the accuracy budget {config.accuracy_budget} leaves no node in FP16; nothing written")
    for name in half:
        half_run.decisions[name] = NodeDecision(name, half_run.nodes[name].op_type, Reason(QuantReason.FLOAT16, "runs in float16"))

    converted = half_run.convert(half, emulate=False)
    measured_on = EMULATED
    if half_run.on_target:
        comparisons = fidelity(run.reference, converted.model, run.eval_batches, provider=half_run.target_provider, label="FP16 model")
        measured_on = config.target
    elif half != everything:  # the budget moved nodes to float32 since the first measurement
        comparisons = fidelity(run.reference, half_run.convert(half, emulate=True).model, run.eval_batches, label="FP16 emulation")
    if not half_run.on_target:
        report.warnings.append(
            f"{config.target}: execution provider not available here: fidelity measured on the CPU by emulating FP16 rounding in float32, latency not measured"
        )
    report.fidelity = comparisons
    report.warnings.extend(budget_shortfall(comparisons, config, run))
    report.warnings.extend(evaluation_warnings(comparisons, run.eval_label))
    report.decisions = [half_run.decisions[n.name] for n in run.prepared.graph.node if n.name in half_run.decisions]
    report.float16 = {
        "fidelity_measured_on": measured_on, "casts_inserted": converted.casts, "weights_converted": converted.weights_converted,
        "saturated_weight_values": converted.saturated_weights, "tiny_weight_values_kept_nonzero": converted.lifted_weights,
    }
    if converted.saturated_weights:
        report.warnings.append(f"{converted.saturated_weights} weight value(s) beyond float16's range stored as +-65504")
    return _faster_or_float(run, converted.model, config, report, half_run)


def _faster_or_float(run, converted: onnx.ModelProto, config, report, half_run: HalfRun) -> onnx.ModelProto:
    report.sizes = Sizes(model_file_bytes(run.original), model_file_bytes(converted))  # the FP16 model's, whichever is written
    return faster_or_float(
        run, converted, config, report, feed=run.eval_batches[0][1] if half_run.on_target else None, subject="FP16 is", where=f"on {config.target}",
        anyway="--if-slower write writes FP16 anyway", written="fp16", description="timing FP32 vs FP16", labels=("float model", "FP16 model"),
        provider=half_run.target_provider,
    )
