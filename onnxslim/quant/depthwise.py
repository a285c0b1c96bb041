"""Convolutions onnxruntime would run on its depthwise integer kernel: both forms built, the faster one kept.

onnxruntime's QLinearConv takes a kernel of its own when every group reads one input channel and writes
one output channel (a depthwise convolution, or a one-channel filter such as an audio model's low-pass
before each decimation). On a CPU without VNNI that kernel measured 2-7 times slower than the float
depthwise convolution over the same shapes (onnxruntime 1.32: 3x3 over 32 channels of 112x112, 3.0x; a
256-tap filter over one channel of 44,098 samples, 4.2x). Keeping such a layer in float costs a
dequantize before it and a quantize after it, which can cost as much as it saves, so neither form is
right everywhere: the model is built with those convolutions in float too, and the float form is
written only when it pays by the rule ``--scalar-affine auto`` uses (:mod:`onnxslim.quant.forms`):
measured faster at the thread count the user deploys with and not slower at 1 thread (or tied there and
faster at 1 thread), as faithful and within the accuracy budget. That is ``--depthwise auto``; ``int8``
and ``float`` write one form without measuring (quantizing on one machine for another: measure there).
"""

from __future__ import annotations

import dataclasses

import onnx

from onnxslim.ir.graph import node_attr
from onnxslim.ir.tensors import initializer_map
from onnxslim.measure import fidelity, worst_score
from onnxslim.quant.decisions import QuantPlan, QuantReason
from onnxslim.quant.forms import fidelity_verdict, timed_decision
from onnxslim.reasons import Reason


def depthwise_convolutions(model: onnx.ModelProto, plan: QuantPlan) -> list[str]:
    """The quantized Convs of ``model``'s main graph whose every group has one input and one output channel."""
    weights = initializer_map(model.graph)
    found = []
    for node in model.graph.node:
        decision = plan.decisions.get(node.name)
        if node.op_type != "Conv" or decision is None or not decision.quantized or len(node.input) < 2 or node.input[1] not in weights:
            continue
        dims = list(weights[node.input[1]].dims)
        if len(dims) >= 3 and dims[1] == 1 and dims[0] == int(node_attr(node, "group", 1)):
            found.append(node.name)
    return found


def float_depthwise_if_faster(run, config, report, plan: QuantPlan, model: onnx.ModelProto, comparisons: list):
    """The plan, model and comparisons to write: as given, or with the depthwise convolutions in float when that is measured faster.

    ``report.depthwise`` records what was measured and which form was written; nothing is recorded for a model without such layers.
    """
    nodes = depthwise_convolutions(run.prepared, plan)
    if not nodes:
        return plan, model, comparisons
    entry: dict = {"nodes": len(nodes), "written": "int8"}
    report.depthwise = entry
    if config.depthwise == "int8":
        entry["why"] = "--depthwise int8"
        return plan, model, comparisons
    if config.depthwise == "auto" and (config.latency_runs <= 0 or not run.eval_batches):
        entry["why"] = "not measured (timing is off): the integer form is kept"
        return plan, model, comparisons
    keep_float = frozenset(e["node"] for e in report.kept_float_for_budget) | frozenset(nodes)
    # the same form of constant-scalar Add/Mul as the model measured against
    form_config = dataclasses.replace(config, scalar_affine="int8") if report.scalar_affine.get("written") == "int8" else config
    float_plan, float_model = run.build(form_config, keep_float)
    if config.depthwise == "float":
        return _float_form(entry, "--depthwise float", nodes, float_plan, float_model, fidelity(run.reference, float_model, run.eval_batches))
    verdict, speed = timed_decision(
        run, config, model, float_model, entry, "latency_vs_integer_form", description="timing depthwise convolutions: integer vs float form",
        labels=("integer form", "float form"), against="the integer form's",
    )
    if verdict is not None:
        entry["why"] = f"the float form is not faster ({speed})"
        return plan, model, comparisons
    float_comparisons = fidelity(run.reference, float_model, run.eval_batches)
    metric = config.accuracy_metric
    score, float_score = worst_score(comparisons, metric), worst_score(float_comparisons, metric)
    entry |= {"worst_score_integer_form": score, "worst_score_float_form": float_score}
    problem = fidelity_verdict(score, float_score, config.accuracy_budget)
    if problem is not None:
        entry["why"] = f"the float form is faster ({speed}) but {problem} ({metric} {float_score:.5f} against {score:.5f})"
        return plan, model, comparisons
    why = f"onnxruntime's integer depthwise kernel is slower here: the float form is {speed}, {metric} {float_score:.5f}"
    return _float_form(entry, why, nodes, float_plan, float_model, float_comparisons)


def _float_form(entry: dict, why: str, nodes: list[str], plan: QuantPlan, model: onnx.ModelProto, comparisons: list):
    entry["written"], entry["why"] = "float", why
    short = "measured faster than onnxruntime's integer depthwise kernel" if why.startswith("onnxruntime") else why
    reasons = {node: Reason(QuantReason.KEPT_FLOAT, f"depthwise convolution kept in float: {short} (--report: depthwise)") for node in nodes if node in plan.decisions}
    return plan.with_reasons(reasons), model, comparisons
