"""``--scalar-affine auto``: build a constant-scalar Add/Mul in both forms and keep the integer one only when it pays.

An Add or Mul of a quantized tensor and a constant scalar (a learnable scale or
bias after an activation, as in PP-LCNet) can run as QLinearAdd/QLinearMul with
the scalar as one exact UINT8 code, which takes the activation before it into
integers too. Whether that is faster depends on the model and the thread count,
and the extra requantization of its output costs some accuracy, so neither form
is right everywhere: both are built with the same layers kept in float, and the
integer form is written only when it pays by the rule of :mod:`onnxslim.quant.forms`: as
faithful, and measured faster at the thread count the user deploys with (and not slower at
1 thread), or tied there (within 3%) and faster at 1 thread.
"""

from __future__ import annotations

import dataclasses

import onnx

from onnxslim.measure import fidelity, worst_score
from onnxslim.measure.latency import latency_ratios, threads_text
from onnxslim.quant.decisions import QuantPlan, QuantReason
from onnxslim.quant.forms import MISSES_BUDGET, NOT_FASTER, SETTLE_AT, SLOWER_ALONE, TIED, fidelity_verdict, ratio_text, record_ratios, timing_verdict, worth_timing_alone
from onnxslim.reasons import Reason


def scalar_affine_nodes(plan: QuantPlan) -> list[str]:
    """The Add/Mul nodes ``plan`` writes with an exact scalar code, inside If/Loop/Scan bodies too."""
    return list(plan.constant_operands) + [node for body in plan.bodies.values() for node in body.constant_operands]


def integer_form_measured(run, config) -> bool:
    """Whether ``--scalar-affine auto`` will time the integer form (and so needs its ranges): timing is on and there is a batch to time."""
    return config.latency_runs > 0 and bool(run.eval_batches)


def integer_form_if_it_pays(run, config, report, plan: QuantPlan, model: onnx.ModelProto, comparisons: list):
    """The plan, model and comparisons to write: the float form as given, or the integer form when it is measured to pay.

    ``report.scalar_affine`` records what was measured and why one form was chosen; with the float
    form the affected nodes' decisions say so. Nothing is recorded when the model has no such node.
    """
    keep_float = frozenset(entry["node"] for entry in report.kept_float_for_budget)
    integer_config = dataclasses.replace(config, scalar_affine="int8")
    measured = integer_form_measured(run, config)
    # the graph alone says whether the integer form has such nodes once the budget has chosen its float layers (often it
    # has none left: PP-OCRv4 rec's all sit beside layers kept in float); its own tensors are observed only when it does
    planned = scalar_affine_nodes(run.plan(integer_config, keep_float, calibrated=False))
    if not planned:
        return plan, model, comparisons
    metric = config.accuracy_metric
    if not measured:  # a form not measured needs no ranges
        report.scalar_affine = entry = {"nodes": len(planned), "written": "float"}
        return _kept_float(plan, model, comparisons, planned, entry, "not measured (timing is off): the float form is kept; --scalar-affine int8 writes the integer form",
                           "its integer form was not measured")
    integer_plan, integer_model = run.build(integer_config, keep_float)  # a calibration pass for the tensors it adds, first
    nodes = scalar_affine_nodes(integer_plan)  # without those in a body no calibration batch ran
    if not nodes:
        return plan, model, comparisons
    report.scalar_affine = entry = {"nodes": len(nodes), "written": "float"}
    # timed first: a form that is not faster is not written however faithful, and a timing costs less than a pass over the held-out set
    at_threads, at_one = latency_ratios(
        model, integer_model, run.eval_batches[0][1], threads=config.threads, runs=config.latency_runs, show_progress=run.show_progress,
        description="timing scalar Add/Mul: float vs integer form", labels=("float form", "integer form"),
        one_thread_when=worth_timing_alone, settle=SETTLE_AT,  # a form slower where it is deployed is not timed again
    )
    record_ratios(entry, "latency_vs_float_form", at_threads, at_one)
    where = threads_text(config.threads)
    verdict = timing_verdict(at_threads, at_one)
    if verdict == NOT_FASTER:
        return _kept_float(plan, model, comparisons, nodes, entry, f"the integer form is not faster ({ratio_text(at_threads.ratio)} the float form's latency at {where})",
                           "its integer form measured no faster")
    if verdict == SLOWER_ALONE:
        return _kept_float(plan, model, comparisons, nodes, entry, f"the integer form is slower at 1 thread ({ratio_text(at_one.ratio)} the float form's latency)",
                           "its integer form is slower at 1 thread")
    if verdict == TIED:
        return _kept_float(plan, model, comparisons, nodes, entry,
                           f"the integer form is not faster ({ratio_text(at_threads.ratio)} the float form's latency at {where}, "
                           f"{ratio_text(at_one.ratio if at_one else None)} at 1 thread)",
                           "its integer form measured no faster")
    integer_comparisons = fidelity(run.reference, integer_model, run.eval_batches)
    score, integer_score = worst_score(comparisons, metric), worst_score(integer_comparisons, metric)
    entry |= {"worst_score_float_form": score, "worst_score_integer_form": integer_score}
    problem = fidelity_verdict(score, integer_score, config.accuracy_budget)
    if problem == MISSES_BUDGET:
        return _kept_float(plan, model, comparisons, nodes, entry, f"the integer form misses the accuracy budget ({metric} {integer_score:.5f})",
                           "its integer form misses the budget")
    if problem is not None:
        return _kept_float(plan, model, comparisons, nodes, entry, f"the integer form is less faithful ({metric} {integer_score:.5f} against {score:.5f})",
                           "its integer form is less faithful")
    entry["written"] = "int8"
    speed = f"{ratio_text(at_threads.ratio)} the float form's latency at {where}" + (f", {ratio_text(at_one.ratio)} at 1 thread" if at_one is not None else "")
    entry["why"] = f"the integer form is {speed}, {metric} {integer_score:.5f}"
    return integer_plan, integer_model, integer_comparisons


def _kept_float(plan: QuantPlan, model, comparisons, nodes: list[str], entry: dict, why: str, short: str):
    """The float form, with ``why`` in the report's entry and ``short`` in each affected node's decision."""
    entry["why"] = why
    kept = [plan.decisions[node] for node in nodes if node in plan.decisions and not plan.decisions[node].quantized]
    reasons = {d.node: Reason(QuantReason.KEPT_FLOAT, f"constant scalar {d.op_type} kept in float: {short} (--report: scalar_affine)") for d in kept}
    return plan.with_reasons(reasons), model, comparisons
