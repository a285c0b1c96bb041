"""``quantize --weights-only int4|int8``: low-bit weights, float activations.

Order: plan which weights to store (MatMul/Gemm weights, Gather tables); with
data, one pass collects the Gram matrix of every planned MatMul's input and
each weight is rounded with error compensation, otherwise rounded to nearest
with a clipping search; the rewritten model is checked against the original
on held-out data, timed, and kept only if faster.
"""

from __future__ import annotations

import time

import numpy as np
import onnx

from onnxslim.errors import NothingToDoError
from onnxslim.ir.io import model_file_bytes
from onnxslim.measure import evaluation_warnings, fidelity
from onnxslim.measure.channels import input_grams
from onnxslim.quant.blocks import BlockQuantized, error_compensated, round_to_nearest
from onnxslim.quant.budget import budget_shortfall
from onnxslim.quant.decisions import NodeDecision, QuantReason, excluded_by_user
from onnxslim.quant.fallback import faster_or_float
from onnxslim.quant.nbits import WeightChoice, plan_weights, rewrite, weight_matrix
from onnxslim.quant.report import Sizes
from onnxslim.reasons import Reason

BITS = {"int4": 4, "int8": 8}


def _grams(run, choices: list[WeightChoice]) -> tuple[dict[str, np.ndarray], int]:
    """The summed Gram matrix of each planned MatMul weight's input(s) over the calibration batches."""
    nodes = {n.name: n for n in run.prepared.graph.node}
    layers = {nodes[c.node].input[0]: c.node for c in choices if c.quantized and not c.is_table}
    if not layers:
        return {}, 0
    mask = "attention_mask" if "attention_mask" in {v.name for v in run.prepared.graph.input} else None
    grams, batches = input_grams(run.prepared, layers, run.calib_source, token_mask=mask, show_progress=run.show_progress, description="input statistics for rounding")
    per_weight: dict[str, np.ndarray] = {}
    for choice in choices:
        tensor = nodes[choice.node].input[0]
        if choice.quantized and not choice.is_table and tensor in grams:
            per_weight[choice.weight] = per_weight.get(choice.weight, 0) + grams[tensor]
    return per_weight, batches


def _quantize_all(run, choices: list[WeightChoice], config, grams: dict[str, np.ndarray]) -> dict[str, BlockQuantized]:
    results: dict[str, BlockQuantized] = {}
    for choice in choices:
        if not choice.quantized or choice.weight in results:
            continue
        matrix = weight_matrix(run.prepared, choice)
        gram = grams.get(choice.weight)
        if gram is not None and gram.shape[0] == matrix.shape[0]:
            results[choice.weight] = error_compensated(matrix, gram, choice.bits, config.block_size, symmetric=config.symmetric)
        else:
            results[choice.weight] = round_to_nearest(matrix, choice.bits, config.block_size, symmetric=config.symmetric)
    return results


def _decision(choice: WeightChoice, config, compensated: bool) -> NodeDecision:
    if not choice.quantized:
        return NodeDecision(choice.node, choice.op_type, Reason(QuantReason.EXCLUDED_BY_USER if choice.by_user else QuantReason.UNSUPPORTED, choice.reason))
    kernel = "GatherBlockQuantized" if choice.is_table else "MatMulNBits"
    rounding = "error-compensated rounding from the inputs' statistics" if compensated and not choice.is_table else "round-to-nearest, clipping searched per block"
    kind = "symmetric" if config.symmetric else "asymmetric"
    text = f"{kernel}: {choice.bits}-bit {kind} blocks of {config.block_size}, {rounding}" + (f"; {choice.note}" if choice.note else "")
    return NodeDecision(choice.node, choice.op_type, Reason(QuantReason.WEIGHT_ONLY, text))


def quantize_weights(run, config, report, eval_data_given: bool, evaluation_problems) -> onnx.ModelProto:
    """The weight-only model (or the cleaned FP32 one under ``if_slower``), with ``report`` filled in; ``run`` may hold no data."""
    bits = BITS[config.weights_only]
    choices = plan_weights(
        run.prepared, bits, config.block_size, excluded=lambda node: excluded_by_user(node, config), quantize_output_layers=config.output_layers == "int8",
    )
    if config.embeddings == "float":
        choices = [c if not c.is_table else WeightChoice(c.node, c.op_type, c.weight, reason="kept in float by --embeddings float") for c in choices]
    if not any(c.quantized for c in choices):
        reasons = sorted({c.reason for c in choices if c.reason})[:3]
        raise NothingToDoError(f"{run.label}: no MatMul, Gemm or Gather weight to store in {bits} bits ({'; '.join(reasons) or 'none in the graph'})")
    start = time.perf_counter()
    grams, batches = _grams(run, choices) if run.has_data else ({}, 0)
    results = _quantize_all(run, choices, config, grams)
    run.calibration_batches, run.calibration_seconds = batches, time.perf_counter() - start
    model = onnx.ModelProto()
    model.CopyFrom(run.prepared)
    rewrite(model, choices, results, accuracy_level=config.accuracy_level)
    report.decisions = [_decision(c, config, bool(grams)) for c in choices]
    if run.has_data:
        comparisons = fidelity(run.reference, model, run.eval_batches, label="weight-only model")
        report.warnings.extend(evaluation_problems(comparisons, run, eval_data_given))
        report.fidelity = comparisons
        report.warnings.extend(budget_shortfall(comparisons, config, run))
        report.warnings.extend(evaluation_warnings(comparisons, run.eval_label))
    else:
        report.warnings.append("no --data: accuracy not measured, and weights were rounded without the inputs' statistics; pass --data to do both")
    report.sizes = Sizes(model_file_bytes(run.original), model_file_bytes(model))  # the low-bit model's, whichever is written
    label = f"{config.weights_only.upper()} weights"
    return faster_or_float(
        run, model, config, report, feed=run.timing_feed(), subject=f"{label} are", where="here", anyway="--if-slower write writes it anyway",
        written=f"{config.weights_only}-weights", description="timing FP32 vs weight-only", labels=("float model", "weight-only model"),
    )
