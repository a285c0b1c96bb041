"""``compress``: spend one accuracy budget on pruning and quantization together, and write the fastest model within it.

Contract: the input model is not modified; every candidate is measured against
the ORIGINAL model on held-out data it was not built with (``eval_data``, or
every ``1/eval_fraction``-th batch of ``data``), and timed interleaved with the
original and every other candidate; the model written is the chosen candidate,
and when none is within the budget and faster than the original nothing is
written and the call raises :class:`~onnxslim.errors.BudgetError` with the table.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import onnx

from onnxslim.compress.search import Budget, Candidate, choose
from onnxslim.data.sources import batch_of_one_note, evaluation_split, for_several_passes, open_data
from onnxslim.distill import DistillConfig, distill
from onnxslim.distill.module import require_torch, training_device
from onnxslim.errors import BudgetError, NothingToDoError, OnnxSlimError, ProviderError, UnsupportedModelError, UsageError, naming_the_file, without_model_label
from onnxslim.ir.counts import count_parameters
from onnxslim.ir.io import load_model, model_file_bytes, model_label
from onnxslim.ir.quantized import refuse_blocked_layout, refuse_quantized
from onnxslim.ir.tensors import graph_inputs
from onnxslim.measure import fidelity
from onnxslim.measure.fidelity import SCORES, RememberedReference, evaluation_warnings, worst_cosine, worst_score
from onnxslim.measure.latency import also_one_thread, interleaved_latency, threads_text
from onnxslim.options import check_settings, setting
from onnxslim.progress import stderr_console
from onnxslim.prune import PruneConfig
from onnxslim.prune.importance import METHODS
from onnxslim.prune.structured import only_setting, pruned_unmeasured
from onnxslim.quant import QuantConfig, quantize
from onnxslim.quant.config import TARGETS, conv_kernel_setting, depthwise_setting, output_layers_setting, scalar_affine_setting, smooth_setting, weight_range_setting
from onnxslim.quant.pipeline import quantized_untimed
from onnxslim.records import Record
from onnxslim.runtime import Runner, available_providers, resolve_provider
from onnxslim.runtime.write import write_verified
from onnxslim.share import ShareConfig, share

RETRIES = 2  # INT8 builds after the first, when a candidate misses the budget on the held-out batches
# a retry gives quantize the allowance that would have met the budget had the loss scaled with it, less this margin
RETRY_MARGIN = 0.8


@dataclass(frozen=True)
class CompressConfig:
    """How to compress: the budget, the pruning amounts to try, and the shared data, timing and target settings."""

    # 0.01 is quantize's default budget (every output's score >= 0.99) as a loss: by default compress is held
    # to what quantize alone is, and writes a pruned candidate only where it fits that and is faster
    max_loss: float = setting(
        0.01, "Largest loss against the original allowed on any output, on held-out data: 1 - its --accuracy-metric.", low=0.0, high=1.0, high_open=True
    )
    accuracy_metric: str = setting(
        "cosine", "What --max-loss bounds: cosine, top-1 agreement, or auto (top-1 for class scores and per-step probabilities, for integer outputs "
        "the share of equal values or a label map's mean IoU per class, cosine otherwise).",
        choices=SCORES,
    )
    target_latency: float | None = setting(None, "Instead of the fastest: the most faithful candidate at or below this latency ratio to the original.", low=0.0, high=1.0, low_open=True)
    ratios: tuple[float, ...] = setting((0.1, 0.2, 0.3, 0.4), "Pruning ratios to try, each also quantized (larger ones are skipped once one exceeds the budget).", metavar="R,R,...")
    prune_by: str = setting(
        "channels", "What each of --ratios removes a share of: every group's channels (prune --ratio), or the model's multiply-accumulates "
        "or parameters (prune --target-macs / --target-params at 1 - ratio).", choices=("channels", "macs", "params"),
    )
    only: str = only_setting()
    importance: str = setting("auto", "Channel ranking for pruning, as prune --importance (auto: second-order, since compress always has data and refits).", choices=("auto", *METHODS))
    distill: bool = setting(
        False, "Distill every pruned candidate toward the original before measuring and quantizing it (the distill extra; larger ratios pay then).",
        option="--distill/--no-distill",
    )
    distill_epochs: int = setting(5, "Epochs of distillation per pruned candidate, with --distill.", low=1)
    distill_time_budget: float | None = setting(None, "Minutes of distillation per pruned candidate at most, with --distill.", low=0.0, low_open=True, metavar="MIN")
    distill_lr: float | None = setting(None, "Learning rate of the distillation, with --distill (default: distill's own, as distill --lr).", low=0.0, low_open=True)
    distill_lr_schedule: str = setting("cosine", "Learning-rate schedule of the distillation, with --distill (as distill --lr-schedule).",
                                       choices=("constant", "cosine"))
    distill_train_device: str = setting("auto", "Where the distillation's training steps run, with --distill (as distill --train-device).",
                                        choices=("auto", "cpu", "cuda"))
    objective: str = setting(
        "latency", "What to minimize within the budget: latency, or size (the smallest file among candidates not slower than the original; "
        "INT4 weight-only and 16-code shared candidates join).", choices=("latency", "size"),
    )
    quantize: bool = setting(True, "Also quantize the original and every pruned candidate (--no-quantize: pruning alone under the budget).", option="--quantize/--no-quantize")
    target: str = setting(
        "cpu", "Where the result runs: cpu = INT8 for onnxruntime's CPU provider; cuda/tensorrt = FP16 with FP32 islands (as quantize --precision fp16), "
        "every candidate timed on CUDA.", choices=TARGETS,
    )
    scalar_affine: str = scalar_affine_setting()
    depthwise: str = depthwise_setting()
    conv_kernel: str = conv_kernel_setting()
    output_layers: str = output_layers_setting()
    smooth: float | str | None = smooth_setting()
    weight_range: str = weight_range_setting()
    max_calibration_samples: int | None = setting(None, "Use at most this many batches of the data.", low=1, option="--max-samples")
    eval_fraction: float = setting(0.2, "Share of --data held out to measure every candidate.", low=0.05, high=0.5)
    max_eval_batches: int = setting(64, "Measure fidelity on at most this many held-out batches.", low=1)
    threads: int = 0  # onnxruntime intra-op threads to time at, the count the user deploys with (0: onnxruntime's default); 1 thread is timed too
    latency_runs: int = setting(30, "Timed runs of the original and every candidate, interleaved.", low=3)

    def __post_init__(self) -> None:
        check_settings(self)
        if not self.ratios or any(not 0.0 < r < 1.0 for r in self.ratios):
            raise UsageError("--ratios must be numbers between 0 and 1 (exclusive), e.g. 0.1,0.2,0.3")
        if isinstance(self.smooth, (int, float)) and self.target != "cpu":
            raise UsageError("--smooth applies to INT8 candidates (--target cpu); the cuda/tensorrt candidates are float16")


@dataclass
class CompressReport(Record):
    """Every candidate with its loss, latency ratio and size against the original, and which one was written and why."""

    command: ClassVar[str] = "compress"

    model: str
    output: str | None
    config: dict
    budget: dict
    evaluation: str = ""
    threads: int | None = 1
    candidates: list[Candidate] = field(default_factory=list)
    chosen: str | None = None
    why: str = ""
    sensitivity: list[dict] = field(default_factory=list)  # per layer: the loss when only it is quantized (from quantize's budget search)
    warnings: list[str] = field(default_factory=list)


def compress(
    model: str | os.PathLike | onnx.ModelProto,
    data,
    *,
    config: CompressConfig = CompressConfig(),
    output: str | os.PathLike | None = None,
    eval_data=None,
    input_shapes=None,
    show_progress: bool = False,
) -> tuple[onnx.ModelProto | None, CompressReport]:
    """Prune at each of ``config.ratios``, quantize each, measure all against ``model``; write the fastest within the budget to ``output``.

    The arguments mirror :func:`onnxslim.quantize` and :func:`onnxslim.prune`.
    """
    label = model_label(model)
    _timing_provider(config)
    if config.distill:
        require_torch()  # before any work: the extra is missing, or the GPU asked for, say so now
        training_device(config.distill_train_device, "--distill-train-device")
    try:  # candidates are built from in-memory copies: errors name the user's file
        original = load_model(model)
        refuse_quantized(original, label, "compress")
        refuse_blocked_layout(original, label, "compress")
        inputs = graph_inputs(original)
        source = for_several_passes(open_data(data, inputs, input_shapes=input_shapes), config.max_calibration_samples)
        calibration, held, evaluation = _split(source, eval_data, inputs, config, input_shapes)
        budget = Budget(config.max_loss, config.target_latency, config.objective)
        report = CompressReport(label, str(output) if output else None, dataclasses.asdict(config), dataclasses.asdict(budget), evaluation, config.threads)
        if isinstance(data, str) and data == "random":
            report.warnings.append(f"--data random{batch_of_one_note(inputs, input_shapes)}: candidates were pruned, refit and calibrated on noise and judged on noise, "
                                   "which proves nothing about real inputs; the budget needs real data")
        reference = RememberedReference(Runner(original, threads=None, label="original"))  # every candidate is compared on the same held-out batches
        given = Candidate("original", 0.0, False, loss=0.0, file_bytes=model_file_bytes(original), parameters=count_parameters(original), note="the model as given")
        built: list[tuple[Candidate, onnx.ModelProto | None]] = [(given, original)]
        ratios = ", ".join(f"{r:.0%}" for r in sorted(config.ratios))
        _say(show_progress, f"compress: quantizing the original, then pruning at {ratios}" if config.quantize else f"compress: pruning at {ratios}")
        if config.quantize:
            built.append(_quantized(original, "quantized", 0.0, 0.0, calibration, held, config, budget, reference, report, show_progress))
        if config.objective == "size":
            built.append(_weights_only(original, "INT4 weights", 0.0, calibration, config, show_progress))
            built.append(_shared(original, "shared (16 codes)", 0.0, calibration, config, budget, show_progress))
        statistics: dict = {}  # the original's activation statistics on the building batches, gathered once for every amount
        for ratio in sorted(config.ratios):
            pruned = _pruned(original, ratio, calibration, config, show_progress, statistics)
            if config.distill and pruned[1] is not None:
                pruned = _distilled(pruned, original, calibration, config, show_progress)
            built.append(pruned)
            candidate, pruned_model = pruned
            _measure_fidelity(reference, candidate, pruned_model, held, config.accuracy_metric)
            if not candidate.failed and candidate.loss > budget.max_loss:
                candidate.note += "; over the budget already, so larger ratios were not tried"
                break
            if not candidate.failed and config.objective == "size":
                built.append(_weights_only(pruned_model, f"{candidate.name} + INT4 weights", ratio, calibration, config, show_progress))
                built.append(_shared(pruned_model, f"{candidate.name} + shared (16 codes)", ratio, calibration, config, budget, show_progress, spent=candidate.loss))
            if not candidate.failed and config.quantize:
                built.append(_quantized(pruned_model, f"{candidate.name} + quantized", ratio, candidate.loss, calibration, held, config, budget, reference, report, show_progress))
        for candidate, candidate_model in built:
            if candidate_model is not None and math.isnan(candidate.loss):
                _measure_fidelity(reference, candidate, candidate_model, held, config.accuracy_metric)
        for candidate, _ in built:  # the data's shortcomings, said once for every candidate compared on it
            report.warnings.extend(w for w in candidate.details.pop("data_warnings", []) if w not in report.warnings)
        _time_all(built, held, config, show_progress)
        best, report.why = choose([c for c, _ in built], budget)
        report.candidates = [c for c, _ in built]
        if best is None:
            raise BudgetError(f"{label}: {report.why}; nothing written", report=report)
    except OnnxSlimError as exc:
        naming_the_file(exc, label)
        raise
    report.chosen = best.name
    result = next(m for c, m in built if c is best)
    if output is not None:
        write_verified(result, output, source=None if isinstance(model, onnx.ModelProto) else model)
    return result, report


def _say(enabled: bool, text: str) -> None:
    if enabled:
        stderr_console.print(text, highlight=False)


def _split(source, eval_data, inputs, config: CompressConfig, input_shapes):
    """Batches to build candidates with, batches to judge them on (never the same), and how to name the latter."""
    rest, held, origin = evaluation_split(source, eval_data, inputs, fraction=config.eval_fraction, cap=config.max_eval_batches, input_shapes=input_shapes)
    if origin == "eval-data":
        return rest, held, f"{len(held)} batch(es) of --eval-data"
    if origin is None:
        raise UsageError(
            f"--data has too few batches to hold any out for the accuracy check (1 in {round(1 / config.eval_fraction)} is held out): give more batches or --eval-data"
        )
    return rest, held, f"{len(held)} held-out batch(es) of --data (1 in {round(1 / config.eval_fraction)}, not used to build any candidate)"


def _weights_only(model, name: str, ratio: float, calibration, config: CompressConfig, show_progress: bool) -> tuple[Candidate, onnx.ModelProto | None]:
    """The candidate with MatMul/Gemm weights and tables in 4-bit blocks (error-compensated from the building batches)."""
    _say(show_progress, f"compress: {name}")
    quant_config = QuantConfig(weights_only="int4", threads=config.threads, latency_runs=0, if_slower="write", accuracy_metric=config.accuracy_metric)
    try:
        low_bit, quant_report = quantize(model, calibration, config=quant_config, show_progress=show_progress)
    except (NothingToDoError, UnsupportedModelError) as exc:
        return Candidate(name, ratio, True, note=f"not built: {without_model_label(exc)}", failed=True), None
    note = f"{len(quant_report.quantized)} weights in 4-bit blocks"
    return Candidate(name, ratio, True, note=note, details={"quantize": quant_report.to_dict()}), low_bit


def _shared(model, name: str, ratio: float, calibration, config: CompressConfig, budget: Budget, show_progress: bool, spent: float = 0.0):
    """The candidate with its weights as 16-value codebooks (error-compensated from the building batches), the same speed as ``model``.

    share's own accuracy budget gets what pruning left of compress's (cosine of every output, on share's held-out share
    of the building batches); compress then measures the result against the original like every candidate.
    """
    _say(show_progress, f"compress: {name}")
    left = budget.max_loss - (0.0 if math.isnan(spent) else spent)
    share_config = ShareConfig(clusters=16, threads=config.threads, latency_runs=0, accuracy_budget=1.0 - left if config.accuracy_metric == "cosine" and left > 0 else None)
    try:
        shared, share_report = share(model, calibration, config=share_config, show_progress=show_progress)
    except NothingToDoError as exc:
        return Candidate(name, ratio, False, shared=True, note=f"not built: {without_model_label(exc)}", failed=True), None
    moved = len(share_report.kept_for_budget)
    note = f"{sum(1 for t in share_report.tensors if t.how.startswith('codebook'))} weights as codebooks" + (f", {moved} moved up a step for the budget" if moved else "")
    return Candidate(name, ratio, False, shared=True, note=note, details={"share": share_report.to_dict()}), shared


def _distilled(pruned: tuple[Candidate, onnx.ModelProto], original, calibration, config: CompressConfig, show_progress: bool) -> tuple[Candidate, onnx.ModelProto]:
    """The pruned candidate trained toward the original on the building batches (distill holds out its own share of them)."""
    candidate, model = pruned
    _say(show_progress, f"compress: distilling {candidate.name}")
    distill_config = DistillConfig(epochs=config.distill_epochs, time_budget=config.distill_time_budget, lr=config.distill_lr,
                                   lr_schedule=config.distill_lr_schedule, train_device=config.distill_train_device, accuracy_metric=config.accuracy_metric)
    student, distill_report = distill(model, original, calibration, config=distill_config, show_progress=show_progress)
    epochs = f"best of {len(distill_report.epochs)} epoch(s): {distill_report.score_before:.4f} -> {distill_report.score_after:.4f}"
    named = Candidate(f"{candidate.name} + distilled", candidate.prune_ratio, False, note=f"{candidate.note}; distilled ({epochs})",
                      details=candidate.details | {"distill": distill_report.to_dict()})
    return named, student


# --prune-by budgets: what the candidate's name calls the amount, and the PruneReport count of it
BUDGET_UNITS = {"macs": ("MACs", "macs"), "params": ("parameters", "parameters")}


def _pruned(original, ratio: float, calibration, config: CompressConfig, show_progress: bool, statistics: dict) -> tuple[Candidate, onnx.ModelProto | None]:
    unit, counted = BUDGET_UNITS.get(config.prune_by, (None, None))
    name = f"pruned {ratio:.0%}" + (f" of {unit}" if unit else "") + (f" ({config.only} only)" if config.only != "all" else "")
    _say(show_progress, f"compress: {name}")
    amount = {"ratio": ratio} if config.prune_by == "channels" else {f"target_{config.prune_by}": 1.0 - ratio}
    prune_config = PruneConfig(
        **amount, importance=config.importance, only=config.only, threads=config.threads, latency_runs=min(config.latency_runs, 20), if_slower="write", eval_fraction=0.0
    )
    try:
        # compress compares and times every candidate itself, on its own held-out batches
        pruned, prune_report = pruned_unmeasured(original, calibration, config=prune_config, memo=statistics, show_progress=show_progress)
    except (NothingToDoError, UnsupportedModelError) as exc:
        return Candidate(name, ratio, False, note=f"not built: {without_model_label(exc)}", failed=True), None
    widths = prune_report.widths.multiple if prune_report.widths is not None else 1
    note = f"{len(prune_report.pruned_groups)} of {len(prune_report.groups)} channel groups pruned, counts at multiples of {widths}"
    if unit:
        kept = getattr(prune_report, counted)
        note += f", {kept.after / max(kept.before, 1):.0%} of the {unit} kept"
    return Candidate(name, ratio, False, note=note, details={"prune": prune_report.to_dict()}), pruned


def _quantized(
    model, name: str, ratio: float, spent: float, calibration, held, config: CompressConfig, budget: Budget, reference: RememberedReference, report: CompressReport,
    show_progress: bool,
):
    """The INT8 candidate of ``model`` (the original, or a pruned copy), measured against the original.

    quantize's own layer search holds out its own share of the calibration
    batches, so compress's held-out batches judge the candidate and choose none
    of its layers. Its budget is what is left of compress's once ``model``'s own
    loss (``spent``: 0 for the original) is taken; two small sets rarely agree to
    the third decimal, so when the candidate misses the budget on the held-out
    batches it is built again (at most ``RETRIES`` times) with quantize's
    allowance scaled by how far it missed, less ``RETRY_MARGIN``: every layer
    a tighter budget keeps in float gives back some of the speed-up.
    """
    allowance = budget.max_loss - spent
    candidate, quantized = None, None
    for attempt in range(RETRIES + 1):
        _say(show_progress, f"compress: {name}" + (f" (again, quantize's budget {1 - allowance:.4f})" if attempt else ""))
        quant_config = QuantConfig(
            precision=_precision(config), target=config.target, threads=config.threads, if_slower="write", accuracy_budget=1.0 - allowance,
            accuracy_metric=config.accuracy_metric, scalar_affine=config.scalar_affine, depthwise=config.depthwise, output_layers=config.output_layers, smooth=config.smooth,
            weight_range=config.weight_range, conv_kernel=config.conv_kernel,
            # auto times both forms; compress times the candidates itself, so quantize's own timing against FP32 is left out
            latency_runs=config.latency_runs if "auto" in (config.scalar_affine, config.depthwise, config.output_layers, config.conv_kernel) else 0,
        )
        try:
            quantized, quant_report = quantized_untimed(model, calibration, config=quant_config, show_progress=show_progress)
        except (NothingToDoError, UnsupportedModelError) as exc:  # a candidate that cannot be built; the user's mistakes still stop the run
            if candidate is not None:
                break  # keep the previous attempt, measured
            return Candidate(name, ratio, True, note=f"not built: {without_model_label(exc)}", failed=True), None
        kept = len(quant_report.kept_float_for_budget)
        count = len(quant_report.quantized)
        note = f"{count} node{'s' if count != 1 else ''} {quant_report.precision.upper()}" + (f", {kept} kept in float for the budget" if kept else "")
        candidate = Candidate(name, ratio, True, note=note, details={"quantize": quant_report.to_dict()})
        _measure_fidelity(reference, candidate, quantized, held, config.accuracy_metric)
        if ratio == 0.0 and quant_report.sensitivity:
            report.sensitivity = list(quant_report.sensitivity)
        miss = candidate.loss - spent
        if candidate.loss <= budget.max_loss or not math.isfinite(miss) or miss <= 0 or allowance <= 0:
            break
        allowance *= RETRY_MARGIN * min(1.0, allowance / miss)
        if attempt == RETRIES:
            break
    return candidate, quantized


def _precision(config: CompressConfig) -> str:
    """INT8 for the CPU; FP16 for GPUs, whose execution provider runs INT8 Q/DQ models as float between the quantizers."""
    return "int8" if config.target == "cpu" else "fp16"


def _timing_provider(config: CompressConfig) -> str:
    """The execution provider the candidates are timed on: the target's, which must be here, since the choice rests on it."""
    provider = resolve_provider("cpu" if config.target == "cpu" else "cuda")
    if provider not in available_providers():
        raise ProviderError(
            f"compress --target {config.target} times every candidate on CUDA, and this onnxruntime has no CUDA provider "
            f"(available: {', '.join(available_providers())}); install onnxruntime-gpu on a machine with an NVIDIA GPU, or use --target cpu"
        )
    return provider


def _measure_fidelity(reference: RememberedReference, candidate: Candidate, model: onnx.ModelProto | None, held: list, metric: str) -> None:
    if model is None or candidate.failed:
        return
    comparisons = fidelity(reference, model, held, label=candidate.name)
    score = worst_score(comparisons, metric)
    candidate.loss = math.inf if math.isnan(score) else 1.0 - score
    candidate.details["worst_cosine"] = worst_cosine(comparisons)
    candidate.details["data_warnings"] = evaluation_warnings(comparisons, "the held-out batches")
    tasks = [(c.task_metric[1], c.task_metric[0], c.name) for c in comparisons if c.task_metric is not None]
    if tasks:  # the decision-level score of the output that keeps the fewest (top-1 of class scores, mask IoU, ...)
        value, label, output = min(tasks)
        candidate.details["worst_task_metric"] = {"metric": label, "value": value, "output": output}
    candidate.parameters = count_parameters(model)
    candidate.file_bytes = model_file_bytes(model)
    candidate.details["fidelity"] = [c.to_dict() for c in comparisons]


def _time_all(built: list, held: list, config: CompressConfig, show_progress: bool) -> None:
    """Every built candidate timed interleaved with the original (the first entry) on one held-out batch."""
    timed = [(c, m) for c, m in built if m is not None and not c.failed]
    provider = _timing_provider(config)
    for threads in [config.threads] + ([1] if also_one_thread(config.threads, provider) else []):
        runners = [Runner(m, provider, threads=threads, label=c.name) for c, m in timed]
        samples = interleaved_latency(runners, held[0][1], warmup=3, runs=config.latency_runs, show_progress=show_progress, description=f"timing every candidate ({threads_text(threads)})")
        del runners
        medians = [float(np.median(s)) for s in samples]
        for (candidate, _), median in zip(timed, medians):
            if threads == config.threads:
                candidate.latency_ratio = median / medians[0]
                candidate.details["median_ms"] = median * 1000.0
            else:
                candidate.latency_ratio_1_thread = median / medians[0]
                candidate.details["median_ms_1_thread"] = median * 1000.0
