"""``--output-layers auto``: a MatMul/Gemm that writes a graph output runs on its integer kernel where that is measured to pay.

The layer whose result reaches a graph output through single-input ops (a classifier's last Gemm, a
recognizer's per-step projection) is planned in float: its rounding is not averaged by any later layer,
and on PP-OCRv4 rec it moved the characters read. Yet in float it can cost more than its multiply-adds
say: at batch 1 a 1280 x 1000 Gemm reads 5 MB of float weights (MobileNetV3's last layer, 6% of its INT8
time at one thread), and where its input is already a tensor of codes (after an integer global pooling)
the integer kernel computes the same numbers from the same rounded input and INT8 weights the float form
restores at load. onnxruntime runs a quantized MatMul/Gemm with a float result (MatMulIntegerToFloat,
QGemm without an output scale), so the output itself is not rounded; a convolution has no such kernel
(QLinearConv writes codes), and stays in float.

The model is built with those layers quantized too (the same layers kept in float for the budget, the
same forms for depthwise convolutions and scalar affines), and that form is written only when it pays by
the rule of :mod:`onnxslim.quant.forms`: as faithful and within the accuracy budget on every held-out
batch, and measured faster at the thread count the user deploys with (not slower at 1 thread), or tied
there and faster at 1 thread. ``int8`` quantizes every output layer without measuring, ``float`` keeps them.
"""

from __future__ import annotations

import dataclasses

import onnx

from onnxslim.measure import fidelity, worst_score
from onnxslim.measure.latency import latency_ratios, threads_text
from onnxslim.quant.decisions import QuantPlan, QuantReason
from onnxslim.quant.depthwise import depthwise_convolutions
from onnxslim.quant.forms import MISSES_BUDGET, NOT_FASTER, SETTLE_AT, SLOWER_ALONE, TIED, fidelity_verdict, ratio_text, record_ratios, timing_verdict, worth_timing_alone
from onnxslim.reasons import Reason

FLOAT_RESULT_KERNELS = ("Gemm", "MatMul")  # output layers auto quantizes: onnxruntime runs them with a float result


def int8_output_layers_if_they_pay(run, config, report, plan: QuantPlan, model: onnx.ModelProto, comparisons: list):
    """The plan, model and comparisons to write: as given (output layers in float), or with the MatMul/Gemm output layers
    quantized where that is measured to pay (see the module docstring).

    ``report.output_layers`` records what was measured and which form was written; nothing is recorded for a model
    without such layers, or where ``--output-layers`` is not auto.
    """
    if config.output_layers != "auto" or config.precision != "int8" or config.target != "cpu" or config.weights_only:
        return plan, model, comparisons
    nodes = [d.node for d in plan.decisions.values() if d.code == QuantReason.OUTPUT_LAYER and d.op_type in FLOAT_RESULT_KERNELS]
    if not nodes:
        return plan, model, comparisons
    entry: dict = {"nodes": len(nodes), "written": "float"}
    report.output_layers = entry
    if config.latency_runs <= 0 or not run.eval_batches:
        entry["why"] = "not measured (timing is off): kept in float; --output-layers int8 quantizes them"
        return plan, model, comparisons
    candidate_plan, candidate = _with_integer_output_layers(run, config, report, plan)
    quantized = [node for node in nodes if candidate_plan.decisions[node].quantized]
    if not quantized:
        entry["why"] = "none of them can be quantized (see their decisions)"
        return plan, model, comparisons
    entry["nodes"] = len(quantized)
    problem, candidate_comparisons = _challenge(run, config, entry, model, comparisons, candidate, description="timing output layers: float vs integer")
    if problem is not None:
        reasons = {node: Reason(QuantReason.OUTPUT_LAYER, f"{plan.decisions[node].reason.text}; {problem} (--report: output_layers)") for node in quantized}
        return plan.with_reasons(reasons), model, comparisons
    reasons = {node: Reason(candidate_plan.decisions[node].code, f"{candidate_plan.decisions[node].reason.text}; output layer quantized: measured as faithful "
                                                                 "and faster (--report: output_layers)") for node in quantized}
    return candidate_plan.with_reasons(reasons), candidate, candidate_comparisons


def _with_integer_output_layers(run, config, report, plan: QuantPlan) -> tuple[QuantPlan, onnx.ModelProto]:
    """The plan and QDQ model of ``plan`` (what the run would write) with its MatMul/Gemm output layers quantized, every form
    chosen before kept: the budget's float layers, the scalar Add/Mul and depthwise forms, the other output layers in
    float. The nodes kept in float for those forms keep their decisions' reasons."""
    form_config = dataclasses.replace(config, output_layers="int8", scalar_affine="int8" if report.scalar_affine.get("written") == "int8" else config.scalar_affine)
    budget_kept = frozenset(e["node"] for e in report.kept_float_for_budget)
    kept = {d.node for d in plan.decisions.values() if d.code == QuantReason.OUTPUT_LAYER and d.op_type not in FLOAT_RESULT_KERNELS}
    if report.depthwise.get("written") == "float":
        kept |= set(depthwise_convolutions(run.prepared, run.plan(form_config, budget_kept)))
    built_plan, model = run.build(form_config, budget_kept | kept)
    return built_plan.with_reasons({node: plan.decisions[node].reason for node in kept if node in plan.decisions}), model


def _challenge(run, config, entry: dict, model: onnx.ModelProto, comparisons: list, candidate: onnx.ModelProto, *, description: str) -> tuple[str | None, list]:
    """Measure the integer form ``candidate`` against ``model`` (the float form, whose held-out ``comparisons`` are given):
    fidelity on every held-out batch first (a pass over them costs less than a timing), then latency, by the rule of
    :mod:`onnxslim.quant.forms`. Returns why the float form stays (None: the integer form pays) and the candidate's
    comparisons; ``entry`` (the report's record of the step) gains what was measured and ``why``."""
    metric = config.accuracy_metric
    candidate_comparisons = fidelity(run.reference, candidate, run.eval_batches)
    score, candidate_score = worst_score(comparisons, metric), worst_score(candidate_comparisons, metric)
    entry |= {"worst_score_float_form": score, "worst_score_integer_form": candidate_score}
    problem = fidelity_verdict(score, candidate_score, config.accuracy_budget)
    if problem == MISSES_BUDGET:
        entry["why"] = f"the integer form misses the accuracy budget ({metric} {candidate_score:.5f})"
        return "its integer form misses the budget", candidate_comparisons
    if problem is not None:
        entry["why"] = f"the integer form is less faithful ({metric} {candidate_score:.5f} against {score:.5f})"
        return "its integer form is less faithful", candidate_comparisons
    at_threads, at_one = latency_ratios(
        model, candidate, run.eval_batches[0][1], threads=config.threads, runs=config.latency_runs, show_progress=run.show_progress,
        description=description, labels=("float form", "integer form"), one_thread_when=worth_timing_alone, settle=SETTLE_AT,
    )
    record_ratios(entry, "latency_vs_float_form", at_threads, at_one)
    where = threads_text(config.threads)
    alone = f", {ratio_text(at_one.ratio)} at 1 thread" if at_one is not None else ""
    verdict = timing_verdict(at_threads, at_one)
    if verdict in (NOT_FASTER, TIED):
        entry["why"] = f"the integer form is not faster ({ratio_text(at_threads.ratio)} the float form's latency at {where}{alone if verdict == TIED else ''})"
        return "its integer form measured no faster", candidate_comparisons
    if verdict == SLOWER_ALONE:
        entry["why"] = f"the integer form is slower at 1 thread ({ratio_text(at_one.ratio)} the float form's latency)"
        return "its integer form is slower at 1 thread", candidate_comparisons
    entry |= {"written": "int8", "why": f"the integer form is {ratio_text(at_threads.ratio)} the float form's latency at {where}{alone}, "
                                       f"{metric} {candidate_score:.5f} (against {score:.5f})"}
    return None, candidate_comparisons
