"""``validate``: run a reference and a candidate model on the same data and compare them.

For each execution provider asked for, both models run on every batch; each
output is compared with streaming statistics, where the nodes ran is read from
onnxruntime's profile, and latency is measured interleaved on one batch. Gates
turn the numbers into a verdict.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx
from onnx import numpy_helper

from onnxslim.data.sources import DataSource, batch_of_one_note, open_data
from onnxslim.errors import DataError, ProviderError, UsageError
from onnxslim.ir.graph import has_duplicate_node_names
from onnxslim.ir.io import load_model
from onnxslim.ir.layers import one_channel_per_group
from onnxslim.ir.tensors import graph_inputs, graph_outputs
from onnxslim.measure import LatencyComparison, OutputComparison, evaluation_warnings, fidelity, time_pair
from onnxslim.measure.latency import also_one_thread
from onnxslim.progress import track
from onnxslim.records import Record, json_field
from onnxslim.runtime import Runner, available_providers, resolve_provider
from onnxslim.runtime.kernels import integer_products_saturate
from onnxslim.runtime.passes import PassRunner
from onnxslim.runtime.providers import short_name


@dataclass(frozen=True)
class Gates:
    """Limits that make validation fail; ``None`` means not checked."""

    min_cosine: float | None = None
    min_snr_db: float | None = None
    max_abs_error: float | None = None
    min_top1: float | None = None
    max_latency_ratio: float | None = None
    allow_cpu_nodes: bool = False  # on an accelerator, the candidate may run more nodes on the CPU than the reference


@dataclass
class GateCheck(Record):
    """One gate checked on one output (or on latency) of one provider."""

    gate: str
    provider: str
    output: str | None
    value: float | None
    limit: float
    passed: bool



@dataclass
class ProviderResult(Record):
    """Both models on one execution provider: output comparisons, where the nodes ran, latency."""

    provider: str = json_field(omit=True)
    status: str = "ok"  # "ok", "not available", "fell back"
    message: str = ""
    placement: dict = field(default_factory=dict)
    outputs: list[OutputComparison] = field(default_factory=list)
    latency: LatencyComparison | None = None  # at --threads, the count the user deploys with
    latency_1_thread: LatencyComparison | None = None  # the same at 1 thread, on the CPU when --threads is another count

    def derived(self) -> dict:
        return {"provider": short_name(self.provider)}


@dataclass
class ValidationReport(Record):
    """What ``validate`` found: per provider, per output, the gates and the verdict."""

    command: ClassVar[str] = "validate"

    reference: str
    candidate: str
    data: str
    random_data: bool
    threads: int | None
    providers: list[ProviderResult] = field(default_factory=list)
    gates: list[GateCheck] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return all(p.status == "ok" for p in self.providers)

    @property
    def passed(self) -> bool:
        return self.complete and all(g.passed for g in self.gates)

    def derived(self) -> dict:
        return {"complete": self.complete, "passed": self.passed}


def _label(model, default: str) -> str:
    return str(model) if isinstance(model, (str, os.PathLike)) else default


def _as_session_input(model, proto: onnx.ModelProto) -> str | onnx.ModelProto:
    """The path for onnxruntime to open, or the loaded model where its node names had to be made unique first."""
    if not isinstance(model, (str, os.PathLike)):
        return model
    return load_model(model) if has_duplicate_node_names(proto.graph) else str(model)


def validate(
    reference: str | os.PathLike | onnx.ModelProto,
    candidate: str | os.PathLike | onnx.ModelProto,
    data: str | Path | DataSource,
    *,
    providers: Sequence[str] = ("cpu",),
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    threads: int | None = 0,
    warmup: int = 5,
    runs: int = 50,
    gates: Gates = Gates(),
    show_progress: bool = False,
) -> ValidationReport:
    """Compare ``candidate`` with ``reference`` on ``data`` for each provider in ``providers``."""
    if runs == 0 and gates.max_latency_ratio is not None:
        raise UsageError("--max-latency-ratio needs timing, but --runs is 0: give --runs 1 or more, or drop the latency gate")
    resolved = [resolve_provider(p) for p in providers]
    ref_label, cand_label = _label(reference, "reference"), _label(candidate, "candidate")
    ref_proto = load_model(reference, load_weights=False, unique_names=False)
    cand_proto = load_model(candidate, load_weights=False, unique_names=False)
    inputs = graph_inputs(ref_proto)
    _check_same_interface(ref_proto, cand_proto, ref_label, cand_label)
    source = open_data(data, inputs, input_shapes=input_shapes)
    is_random = isinstance(data, str) and data == "random"
    report = ValidationReport(ref_label, cand_label, source.description, is_random, threads)
    if is_random:
        report.warnings.append(f"inputs are random{batch_of_one_note(inputs, input_shapes)}: agreement on random data proves little about real inputs; pass --data DIR")
    report.warnings.extend(_float_types_differ(ref_proto, cand_proto, cand_label))
    ref_model, cand_model = _as_session_input(reference, ref_proto), _as_session_input(candidate, cand_proto)
    output_names = [o.name for o in graph_outputs(ref_proto)]
    available = available_providers()
    for provider in resolved:
        if provider not in available:
            report.providers.append(
                ProviderResult(provider, "not available", f"{short_name(provider)} is not available in this onnxruntime (available: {', '.join(short_name(p) for p in available)})")
            )
            continue
        report.providers.append(
            _run_provider(provider, ref_model, cand_model, ref_label, cand_label, source, output_names, threads, warmup, runs, show_progress)
        )
    for result in report.providers:
        if result.status != "ok":
            report.warnings.append(f"{short_name(result.provider)}: {result.status}: {result.message}")
        for output in result.outputs:
            if output.single_value:
                report.warnings.append(
                    f"{short_name(result.provider)}: output '{output.name}' gives one value on this data: its cosine is 1 whenever the signs agree; "
                    "give more batches or a larger batch (--input-shapes)"
                )
            if output.degenerate:
                report.warnings.append(
                    f"{short_name(result.provider)}: reference output '{output.name}' is nearly constant (std {output.reference_std:.3g}); any candidate would match it"
                )
            if output.nonfinite_mismatches:
                report.warnings.append(
                    f"{short_name(result.provider)}: output '{output.name}': {output.nonfinite_mismatches} value(s) are NaN/Inf in one model and not the other "
                    f"(reference {output.nonfinite_reference}, candidate {output.nonfinite_candidate}, both but different {output.nonfinite_disagreeing}); "
                    "every accuracy gate fails"
                )
        report.warnings.extend(f"{short_name(result.provider)}: {w}" for w in evaluation_warnings(result.outputs, source.description))
    for result in report.providers:
        note = cpu_fallback_note(result)
        if note:
            report.warnings.append(note)
    if "CPUExecutionProvider" in resolved and integer_products_saturate():
        wide = full_range_integer_layers(cand_proto)
        if wide:
            report.warnings.append(
                f"cpu: {len(wide)} INT8 layer(s) of the candidate have weight codes beyond +-64 (e.g. '{wide[0]}'); this CPU's onnxruntime adds UINT8 x INT8 "
                "products in pairs in 16 bits (no VNNI), where those saturate: quantize for such CPUs with --weight-range reduced"
            )
    report.gates = _check_gates(report.providers, gates)
    if gates.min_top1 is not None:
        _check_top1_applies(report)
    return report


# where each integer layer reads its INT8 weight: directly (integer ops) or through a DequantizeLinear (QDQ)
_INTEGER_WEIGHT_INPUT = {"QLinearConv": 3, "QLinearMatMul": 3, "MatMulInteger": 1, "ConvInteger": 1, "MatMulIntegerToFloat": 1}
_QDQ_WEIGHT_INPUT = {"Conv": 1, "MatMul": 1, "Gemm": 1}


def full_range_integer_layers(model: onnx.ModelProto) -> list[str]:
    """Layers of ``model`` whose INT8 weight (in the file, not external data) has codes beyond +-64, depthwise convolutions left out.

    Those are the layers onnxruntime multiplies with a UINT8 x INT8 kernel that adds product pairs in 16 bits on x86 CPUs
    without VNNI (depthwise convolutions add in 32 bits).
    """
    weights = {t.name: t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and t.data_location != onnx.TensorProto.EXTERNAL}
    dequantized = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input and n.input[0] in weights}
    found = []
    for node in model.graph.node:
        if node.op_type in _INTEGER_WEIGHT_INPUT:
            index = _INTEGER_WEIGHT_INPUT[node.op_type]
            name = node.input[index] if len(node.input) > index else ""
        elif node.op_type in _QDQ_WEIGHT_INPUT and len(node.input) > 1:
            name = dequantized.get(node.input[1], "")
        else:
            continue
        if name not in weights:
            continue
        codes = numpy_helper.to_array(weights[name])
        if node.op_type in ("Conv", "QLinearConv", "ConvInteger") and one_channel_per_group(node, codes.shape):
            continue  # depthwise
        if codes.size and int(np.abs(codes.astype(np.int16)).max()) > 64:
            found.append(node.name or node.output[0])
    return found


def _check_top1_applies(report: ValidationReport) -> None:
    """--min-top1 is checked only on class-score outputs: say where it is not, and refuse it when no output is one."""
    outputs = [o for result in report.providers for o in result.outputs]
    without = sorted({o.name for o in outputs if o.top1 is None})
    if outputs and len(without) == len({o.name for o in outputs}):
        raise UsageError(
            f"--min-top1 cannot be checked: no output is a class-score vector ((batch, classes), or probabilities over the last axis); "
            f"'{without[0]}' is not"
        )
    for name in without:
        report.warnings.append(f"--min-top1 not checked on output '{name}': it is not a class-score vector, so top-1 is not meaningful there")


def _float_types_differ(ref: onnx.ModelProto, cand: onnx.ModelProto, cand_label: str) -> list[str]:
    """A note per input the candidate takes in another float type than the reference (a float16 conversion): the data,
    read as the reference's, is cast for it."""
    ref_types = {s.name: s.dtype for s in graph_inputs(ref)}
    return [
        f"{cand_label}: input '{spec.name}' is {spec.dtype}, the reference's {ref_types[spec.name]}: the data is cast to {spec.dtype} for it"
        for spec in graph_inputs(cand)
        if spec.dtype is not None and spec.dtype.kind == "f" and ref_types.get(spec.name) is not None and ref_types[spec.name].kind == "f" and spec.dtype != ref_types[spec.name]
    ]


def _check_same_interface(ref: onnx.ModelProto, cand: onnx.ModelProto, ref_label: str, cand_label: str) -> None:
    ref_in = {s.name for s in graph_inputs(ref)}
    cand_in = {s.name for s in graph_inputs(cand)}
    if ref_in != cand_in:
        missing = sorted(ref_in - cand_in) or sorted(cand_in - ref_in)
        raise DataError(f"{cand_label}: inputs differ from {ref_label} (input '{missing[0]}' is not in both)")
    ref_out = [s.name for s in graph_outputs(ref)]
    cand_out = {s.name for s in graph_outputs(cand)}
    absent = [name for name in ref_out if name not in cand_out]
    if absent:
        raise DataError(f"{cand_label}: has no output '{absent[0]}', which {ref_label} has")


def _run_provider(provider, ref_model, cand_model, ref_label, cand_label, source, output_names, threads, warmup, runs, show_progress) -> ProviderResult:
    name = short_name(provider)
    batches = track(source, f"{name}: comparing outputs", enabled=show_progress)
    if provider == "CPUExecutionProvider":  # outputs compared in sessions side by side; timed below at the thread count asked for
        comparisons, first = _compared(PassRunner(ref_model, provider, label=ref_label, cast_floats=True), PassRunner(cand_model, provider, label=cand_label, cast_floats=True),
                                       batches, output_names)
    try:
        ref_runner = Runner(ref_model, provider, threads=threads, label=ref_label, cast_floats=True)
        cand_runner = Runner(cand_model, provider, threads=threads, label=cand_label, cast_floats=True)
    except ProviderError as exc:
        return ProviderResult(provider, "not available", str(exc))
    result = ProviderResult(provider, "ok")
    if provider != "CPUExecutionProvider":
        comparisons, first = _compared(ref_runner, cand_runner, batches, output_names)
    result.outputs = comparisons
    feed = first[1]
    ref_place = ref_runner.placement(feed)
    cand_place = cand_runner.placement(feed)
    result.placement = {"reference": ref_place.to_dict(), "candidate": cand_place.to_dict()}
    if provider != "CPUExecutionProvider" and (ref_place.fell_back or cand_place.fell_back):
        which = [lbl for lbl, p in (("reference", ref_place), ("candidate", cand_place)) if p.fell_back]
        result.status = "fell back"
        result.message = f"{' and '.join(which)} ran no node on {name}; onnxruntime fell back (nodes ran on {cand_place.ran_on()})"
    if runs > 0:
        result.latency = time_pair(
            ref_runner, cand_runner, feed, warmup=warmup, runs=runs, batch=first[0], show_progress=show_progress, description=f"{name}: timing"
        )
        if also_one_thread(threads, provider):
            del ref_runner, cand_runner  # one pair of sessions at a time
            result.latency_1_thread = time_pair(
                Runner(ref_model, provider, threads=1, label=ref_label, cast_floats=True), Runner(cand_model, provider, threads=1, label=cand_label, cast_floats=True), feed,
                warmup=warmup, runs=runs, batch=first[0], show_progress=show_progress, description=f"{name}: timing at 1 thread",
            )
    return result


def _compared(reference, candidate, batches, output_names: list[str]) -> tuple[list[OutputComparison], tuple | None]:
    """Every output compared over ``batches`` (read once, see :func:`fidelity`), and the first (label, batch) pair."""
    first: list[tuple] = []

    def noting_the_first(items):
        for item in items:
            if not first:
                first.append(item)
            yield item

    comparisons = fidelity(reference, candidate, noting_the_first(batches))
    by_name = {c.name: c for c in comparisons}
    return [by_name[name] for name in output_names], first[0] if first else None


def _extra_cpu_nodes(result: ProviderResult) -> int | None:
    """On an accelerator: how many more nodes the candidate ran on the CPU than the reference (None: not measured or on the CPU)."""
    if result.provider == "CPUExecutionProvider" or result.status != "ok" or not result.placement:
        return None
    ran = [result.placement[side].get("nodes_by_provider", {}) for side in ("reference", "candidate")]
    if not ran[1]:
        return None
    return ran[1].get("cpu", 0) - ran[0].get("cpu", 0)


def cpu_fallback_note(result: ProviderResult) -> str | None:
    """One line naming the op types the candidate ran on the CPU, when it ran more there than the reference."""
    extra = _extra_cpu_nodes(result)
    if not extra or extra <= 0:
        return None
    ops = result.placement["candidate"].get("ops_by_provider", {}).get("cpu", {})
    listed = ", ".join(f"{op} {n}" for op, n in sorted(ops.items(), key=lambda item: -item[1])[:6])
    return (f"{short_name(result.provider)}: the candidate ran {extra} more node(s) on the CPU than the reference ({listed}); "
            "each costs copies between devices (--allow-cpu-nodes accepts it)")


def _check_gates(results: list[ProviderResult], gates: Gates) -> list[GateCheck]:
    checks: list[GateCheck] = []
    for result in results:
        if result.status == "not available":
            continue
        name = short_name(result.provider)
        for output in result.outputs:
            finite = not output.nonfinite_mismatches  # NaN/Inf where the other model is finite fails every accuracy gate
            max_abs = output.max_abs if finite else math.inf
            if gates.min_cosine is not None:
                checks.append(GateCheck("min_cosine", name, output.name, output.cosine, gates.min_cosine, finite and output.cosine >= gates.min_cosine))
            if gates.min_snr_db is not None:
                checks.append(GateCheck("min_snr_db", name, output.name, output.snr_db, gates.min_snr_db, finite and output.snr_db >= gates.min_snr_db))
            if gates.max_abs_error is not None:
                checks.append(GateCheck("max_abs_error", name, output.name, max_abs, gates.max_abs_error, finite and max_abs <= gates.max_abs_error))
            if gates.min_top1 is not None and output.top1 is not None:
                checks.append(GateCheck("min_top1", name, output.name, output.top1, gates.min_top1, finite and output.top1 >= gates.min_top1))
        extra = _extra_cpu_nodes(result)
        if extra is not None and not gates.allow_cpu_nodes:
            checks.append(GateCheck("cpu_fallback", name, None, float(extra), 0.0, extra <= 0))
        if gates.max_latency_ratio is not None and result.latency is not None and result.latency.ratio is not None:
            ratio = result.latency.ratio
            checks.append(GateCheck("max_latency_ratio", name, None, ratio, gates.max_latency_ratio, ratio <= gates.max_latency_ratio))
    return checks
