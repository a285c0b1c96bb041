"""The ``onnxslim`` command line: thin wrappers over the Python API."""

from __future__ import annotations

import math
import os
import signal
import sys
import textwrap
import threading
from collections import Counter

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from onnxslim import __version__
from onnxslim.cli_options import (
    config_options,
    config_values,
    data_options,
    input_shapes_option,
    output_option,
    providers_option,
    quiet_option,
    report_option,
    threads_option,
)
from onnxslim.compress import CompressConfig
from onnxslim.distill import DistillConfig
from onnxslim.errors import NothingToDoError, OnnxSlimError
from onnxslim.ir.destinations import check_destinations
from onnxslim.measure.latency import threads_text
from onnxslim.measure.outputs import DETECTION_SCORE
from onnxslim.prune import PruneConfig
from onnxslim.quant import QuantConfig
from onnxslim.report import plotly_figures, to_json, write_report
from onnxslim.share import ShareConfig
from onnxslim.units import size_text

console = Console()
err_console = Console(stderr=True)

GATE_FAILED_EXIT = 3


class _Terminated(BaseException):
    """SIGTERM, raised where the program is so that every cleanup on the way out runs."""


def _raise_terminated(signum, frame):
    raise _Terminated()


class _Group(click.Group):
    """Turns onnxslim's user-facing errors into one line and an exit code; SIGTERM cleans up like Ctrl-C."""

    def invoke(self, ctx):
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            return super().invoke(ctx)
        except OnnxSlimError as exc:
            if os.environ.get("ONNXSLIM_DEBUG"):
                err_console.print_exception()
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted[/]")
            sys.exit(130)
        except _Terminated:
            err_console.print("[bold red]terminated[/]")
            sys.exit(143)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="onnxslim")
def main() -> None:
    """Make trained ONNX models smaller and faster: prune, quantize, and prove it with onnxruntime."""


def _finish(report: dict, report_path: str | None) -> None:
    if report_path:
        write_report(report, report_path)
        err_console.print(f"report written to {report_path}", highlight=False)


def _report_refusal(exc: NothingToDoError, report_path: str | None) -> None:
    """A run that changed nothing still writes what it measured on the way (a budget's ranking, every channel group and
    why it stayed), where the error carries it."""
    if exc.report is not None:
        _finish(exc.report.to_dict(), report_path)


def _grouped_declines(declined) -> list[tuple]:
    """One (first decline, count) per reason code, in order of first appearance: the report keeps every one."""
    groups: dict = {}
    for decline in declined:
        first, count = groups.get(decline.reason.code, (decline, 0))
        groups[decline.reason.code] = (first, count + 1)
    return list(groups.values())


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return f"{value:.{digits}g}"
    return str(value)


def _count(value: int) -> str:
    return f"{value:,}"


# ---------------------------------------------------------------- inspect
@main.command()
@click.argument("model", type=click.Path(dir_okay=True))
@input_shapes_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON instead of tables.")
@report_option
@quiet_option
def inspect(model, input_shapes, as_json, report_path, quiet):
    """Show opset, inputs/outputs, op histogram, parameters and MACs of MODEL."""
    check_destinations(inputs=[model], report=report_path)
    from onnxslim.summary import inspect as inspect_model

    summary = inspect_model(model, input_shapes=input_shapes)
    data = summary.to_dict()
    if as_json:
        click.echo(to_json(data))
    else:
        _print_summary(summary)
    _finish(data, report_path)


def _print_summary(summary) -> None:
    opsets = ", ".join(f"{domain} {version}" for domain, version in summary.opsets.items())
    console.print(f"[bold]{escape(summary.path)}[/]  IR {summary.ir_version}, opset {opsets}" + (f", from {summary.producer}" if summary.producer else ""), highlight=False)
    table = Table(box=None, pad_edge=False)
    table.add_column("")
    table.add_column("name")
    table.add_column("dtype")
    table.add_column("shape")
    for kind, specs in (("input", summary.inputs), ("output", summary.outputs)):
        for spec in specs:
            table.add_row(kind, escape(spec.name), spec.dtype_name, escape(spec.shape_text()))
    console.print(table)
    ops = ", ".join(f"{op} {count}" for op, count in summary.op_histogram.items())
    console.print(f"nodes: {summary.nodes}  ({ops})", highlight=False)
    in_attributes = f" (and {summary.ml_attribute_values:,} in the attributes of ai.onnx.ml operators)" if summary.ml_attribute_values else ""
    stored = ", ".join(kind if len(summary.weight_types) == 1 else f"{kind} {_count(count)}" for kind, count in summary.weight_types.items())
    console.print(f"parameters: {_count(summary.parameters)}{in_attributes}  weights: {size_text(summary.weight_bytes)}" + (f" ({stored})" if stored else ""),
                  highlight=False)
    if summary.initializers_listed_as_inputs:
        console.print(f"{summary.initializers_listed_as_inputs} initializer(s) are listed as graph inputs too, so onnxruntime may fold none of them "
                      "(optimize drops the listing where it lists every weight)", highlight=False)
    macs = f"{summary.macs / 1e6:,.1f} M"
    if summary.macs_unknown_nodes:
        macs += f" (shapes unknown for {len(summary.macs_unknown_nodes)} weighted node(s); give --input-shapes)"
    if summary.macs_in_bodies:
        macs += f" (not counted: {len(summary.macs_in_bodies)} weighted node(s) inside If/Loop/Scan bodies)"
    console.print(f"multiply-accumulates: {macs}", highlight=False)


# ---------------------------------------------------------------- optimize
@main.command()
@click.argument("model", type=click.Path(dir_okay=True))
@output_option
@report_option
@quiet_option
def optimize(model, output, report_path, quiet):
    """Clean MODEL up: Constant weights to initializers, constant folding, BatchNorm folding, dead code."""
    check_destinations(inputs=[model], output=output, report=report_path)
    from onnxslim.optimize import optimize as optimize_model

    _, report = optimize_model(model, output)
    for result in report.passes if not quiet else ():
        if result.changes:
            console.print(f"[green]{result.name}[/]: {escape(result.summary())}", highlight=False)
        for first, count in _grouped_declines(result.declined):
            where = escape(first.where) if count == 1 else f"{count} places, e.g. {escape(first.where)}"
            console.print(f"[yellow]{result.name}[/]: left {where}: {escape(first.reason.text)}", highlight=False)
    console.print(
        f"nodes {report.nodes_before} -> {report.nodes_after}, parameters {_count(report.parameters_before)} -> {_count(report.parameters_after)}; "
        + (f"wrote {output}" if any(r.modified for r in report.passes) else f"nothing to change: wrote an unchanged copy to {output}"),
        highlight=False,
    )
    _finish(report.to_dict(), report_path)


# ---------------------------------------------------------------- validate
@main.command()
@click.argument("reference", type=click.Path(dir_okay=True))
@click.argument("candidate", type=click.Path(dir_okay=True))
@data_options
@providers_option()
@threads_option
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True, help="Untimed runs of each model before timing.")
@click.option("--latency-runs", "--runs", "runs", type=click.IntRange(min=0), default=50, show_default=True, help="Timed runs of each model, interleaved (0: no timing).")
@click.option("--min-cosine", type=float, default=None, help="Fail (exit 3) when an output's cosine similarity is below this.")
@click.option("--min-snr", "min_snr_db", type=float, default=None, help="Fail when an output's SNR in dB is below this.")
@click.option("--max-abs-error", type=float, default=None, help="Fail when an output's largest absolute error exceeds this.")
@click.option("--min-top1", type=click.FloatRange(0, 1), default=None, help="Fail when top-1 agreement of class-score outputs is below this.")
@click.option("--max-latency-ratio", type=float, default=None, help="Fail when candidate/reference median latency exceeds this.")
@click.option("--allow-cpu-nodes", is_flag=True, help="On cuda/tensorrt, accept a candidate that runs more nodes on the CPU than the reference (fails by default).")
@report_option
@quiet_option
def validate(reference, candidate, input_shapes, providers, threads, warmup, runs, min_cosine, min_snr_db, max_abs_error, min_top1, max_latency_ratio, allow_cpu_nodes,
             report_path, quiet, **data_options):
    """Compare CANDIDATE with REFERENCE: accuracy per output, latency, where nodes ran."""
    check_destinations(inputs=[reference, candidate], report=report_path)
    from onnxslim.validate import Gates
    from onnxslim.validate import validate as validate_models

    data = _resolve_data(reference, data_options)
    gates = Gates(min_cosine, min_snr_db, max_abs_error, min_top1, max_latency_ratio, allow_cpu_nodes)
    report = validate_models(
        reference, candidate, data, providers=providers, input_shapes=input_shapes, threads=threads or None, warmup=warmup, runs=runs, gates=gates, show_progress=not quiet
    )
    _print_validation(report)
    _finish(report.to_dict(), report_path)
    if not report.complete:
        sys.exit(1)
    if not report.passed:
        sys.exit(GATE_FAILED_EXIT)


def _cosine_text(output, digits: int) -> str:
    """The cosine, and how it was taken where not over every value alike: as a detector's output, with channels at one scale,
    or around the reference's mean."""
    text = _fmt(output.cosine, digits)
    if output.detection_view is not None:
        text += f" (as detections, score >= {DETECTION_SCORE:g}; plain {_fmt(output.plain_cosine, digits)})"
    elif output.balanced_axis is not None:
        text += f" (channels of axis {output.balanced_axis} at one scale; plain {_fmt(output.plain_cosine, digits)})"
    elif output.centred_on is not None:
        text += f" (around the reference's mean {output.centred_on:.4g}; plain {_fmt(output.plain_cosine, digits)})"
    if output.lengths_differed:
        text += f" (lengths differed on {output.lengths_differed} of {output.batches} batches: compared zero-padded)"
    return text


RANGE_COLUMN = "90% range"


def _range_text(output) -> str:
    """Where 90% of resamples of the compared batches put the cosine, or '-' where it is not resampled."""
    spread = output.cosine_range
    return f"{spread[0]:.3f}-{spread[1]:.3f}" if spread else "-"


def _print_validation(report) -> None:
    for warning in report.warnings:
        _warn(warning)
    console.print(f"data: {report.data}; threads: {threads_text(report.threads)}", highlight=False)
    accuracy = Table(title="accuracy (candidate vs reference)", title_justify="left")
    resampled = any(o.cosine_range for result in report.providers for o in result.outputs)
    for column in ("provider", "output", "cosine", *((RANGE_COLUMN,) if resampled else ()), "SNR dB", "max abs", "mean abs", "task metric", "non-finite"):
        accuracy.add_column(column, justify="right" if column not in ("provider", "output") else "left")
    timing = Table(title="latency, interleaved", title_justify="left")
    for column in ("provider", "nodes ran on", "reference median / p90 ms", "candidate median / p90 ms", "ratio"):
        timing.add_column(column, justify="right" if "ms" in column or column == "ratio" else "left")
    for result in report.providers:
        name = result.to_dict()["provider"]
        if result.status == "not available":
            accuracy.add_row(name, "-", "not available", *([""] if resampled else []), "", "", "", "", "")
            continue
        for output in result.outputs:
            cos = _cosine_text(output, 6) + (" (degenerate)" if output.degenerate else "")
            nonfinite = f"[red]{output.nonfinite_mismatches}[/]" if output.nonfinite_mismatches else "0"
            max_abs = _fmt(float("inf") if output.nonfinite_mismatches else output.max_abs)
            accuracy.add_row(name, escape(output.name), cos, *([_range_text(output)] if resampled else []), _fmt(output.snr_db, 3), max_abs,
                             _fmt(output.mean_abs), _task_text(output), nonfinite)
        placement = result.placement.get("candidate", {}).get("nodes_by_provider", {})
        ran = ", ".join(f"{p} {n}" for p, n in placement.items()) or "-"
        if result.status != "ok":
            ran += f" [red]({result.status})[/]"
        latency = result.latency
        if latency:
            ref, cand = latency.reference, latency.candidate
            timing.add_row(name, ran, f"{ref['median_ms']:.3f} / {ref['p90_ms']:.3f}", f"{cand['median_ms']:.3f} / {cand['p90_ms']:.3f}", f"{latency.ratio:.3f}")
        else:
            timing.add_row(name, ran, "-", "-", "-")
        single = result.latency_1_thread
        if single:
            ref, cand = single.reference, single.candidate
            timing.add_row(f"{name}, 1 thread", "", f"{ref['median_ms']:.3f} / {ref['p90_ms']:.3f}", f"{cand['median_ms']:.3f} / {cand['p90_ms']:.3f}", f"{single.ratio:.3f}")
    console.print(accuracy)
    console.print(timing)
    failed = [g for g in report.gates if not g.passed]
    for gate in failed:
        where = f"{gate.provider}" + (f" output '{gate.output}'" if gate.output else "")
        console.print(f"[red]gate {gate.gate}: {where}: {_fmt(gate.value, 6)} vs limit {gate.limit}[/]", highlight=False)
    if not report.complete:
        console.print("[bold red]INCOMPLETE[/]: not every provider ran (see warnings)")
    elif report.passed:
        checked = f"{len(report.gates)} gate(s) checked" if report.gates else "no gates set"
        console.print(f"[bold green]PASSED[/] ({checked})")
    else:
        console.print(f"[bold red]FAILED[/] ({len(failed)} of {len(report.gates)} gate(s) failed)")


# ---------------------------------------------------------------- quantize
def _resolve_data(model_path, options: dict, required: bool = True, *, data=None):
    """The data the options describe; ``data`` replaces --data (as --eval-data does), read with the same image options."""
    from onnxslim.data.resolve import data_from_options
    from onnxslim.ir import load_model

    keys = ("data", "data_loader", "image_size", "image_layout", "image_scale", "image_mean", "image_std", "image_channels")
    values = {k: options[k] for k in keys}
    if data is not None:
        values.update(data=data, data_loader=None)
    model = load_model(model_path, load_weights=False)
    return data_from_options(model, required=required, warn=_warn, **values)


def _warn(text: str) -> None:
    err_console.print(f"[bold yellow]warning:[/] {escape(text)}", highlight=False, soft_wrap=True)


BUDGET_LINES = 5  # layers kept for the budget named on the console; the report has them all


def _task_text(output) -> str:
    """Top-1 agreement for class scores, mask IoU for probability maps, anchor IoU for a detector's output, the mean row cosine
    for unit-length embeddings, the share of agreeing decisions at 0.5 for a probability per sample, the share of equal
    values for integer outputs, '-' for other outputs."""
    task = output.task_metric
    return f"{task[0]} {_fmt(task[1], 4)}" if task else "-"


def _agreement_text(output) -> str:
    """', top-1 0.9219' where the output's shape calls for a decision-level score (see _task_text); '' elsewhere."""
    return f", {_task_text(output)}" if output.task_metric else ""


def _sensitivity_text(entry: dict, metric: str, label: str) -> str:
    work = f"; {_share_text(entry['work_share'])} of the multiply-adds" if "work_share" in entry else ""
    if "added_noise" in entry:
        noise = entry["added_noise"]
        damage = "adds NaN/Inf" if math.isinf(noise) else f"adds noise {10 * math.log10(1 / noise):.1f} dB below its output's power" if noise > 0 else "adds no measurable noise"
        if "stretch_score" in entry:
            damage += f"; its stretch of the graph alone quantized: {metric} {entry['stretch_score']:.5f}"
        return damage + work
    score = entry.get("score_when_alone_quantized", entry.get("score_when_alone_fp16"))
    return f"{metric} {score:.5f} when it alone is {label}{work}"


def _ranking_check_lines(check: dict) -> list[str]:
    """What checking the noise ranking against the outputs found, what ranking by the conversions each layer makes found,
    and which search's layers were kept in float."""
    lines = []
    if "noise_ranking" in check:
        noise, checked = check["noise_ranking"], check["checked_ranking"]
        found = (f"{checked['kept']} layer(s) holding {_share_text(checked['work_share'])}" if checked["met"]
                 else "no set of layers meeting the budget")
        taken = "kept" if check["taken"] == "checked_ranking" else "not kept"
        if check.get("conversions", {}).get("taken") == "conversions":
            taken += ", then replaced as below"
        lines.append(f"ranked by their own noise, the layers kept in float held {_share_text(noise['work_share'])} of the multiply-adds ({noise['kept']} layer(s)); "
                     f"each layer's noise weighted by what the outputs lose with its stretch of the graph alone quantized ({check['stretches']} stretches measured): "
                     f"{found} ({taken})")
    if "conversions" in check:
        other = check["conversions"]
        if not other["met"]:
            found = "no set of layers meeting the budget"
        elif "why" in other:
            found = other["why"]
        else:
            found = "the same layers"
        taken = "kept" if other["taken"] == "conversions" else "not kept"
        lines.append(f"ranked counting the values each layer converts to and from float, besides its multiply-adds: {found} ({taken})")
    return lines


def _share_text(share: float) -> str:
    """A share of the work as a percentage with the digits that keep a small one from reading 0%."""
    return "0%" if share == 0 else f"{100 * share:.1f}%" if share >= 0.001 else f"{100 * share:.2g}%"


@main.command()
@click.argument("model", type=click.Path(dir_okay=True))
@output_option
@data_options
@click.option("--eval-data", default=None, help=(
    "Held-out data for the fidelity check, read like --data (default: every 5th batch of --data, not used for calibration)."
))
@config_options(
    QuantConfig, "precision", "weights_only", "block_size", "symmetric", "accuracy_level", "target", "method", "percentile", "op_types", "exclude_nodes",
    "exclude_op_types", "quantize_attention", "output_layers", "recurrent", "scalar_affine", "depthwise", "conv_kernel", "smooth", "kept_float_weights", "weight_range",
    "embeddings", "accuracy_budget", "accuracy_metric", "sensitivity", "calibration_provider", "max_calibration_samples", "eval_fraction", "max_eval_batches",
)
@click.option("--per-tensor", is_flag=True, help="One scale per weight tensor instead of per output channel.")
@threads_option
@config_options(QuantConfig, "latency_runs", "if_slower")
@report_option
@quiet_option
def quantize(model, output, eval_data, per_tensor, threads, report_path, quiet, input_shapes, **options):
    """Quantize MODEL to INT8 (QDQ), or FP16 for GPUs, with calibration data; check it against FP32, write OUTPUT."""
    check_destinations(inputs=[model], output=output, report=report_path)
    from onnxslim.quant import quantize as quantize_model

    config = QuantConfig(per_channel=not per_tensor, threads=threads, **config_values(QuantConfig, options))
    data = _resolve_data(model, options, required=not config.weights_only)
    eval_data = _resolve_data(model, options, data=eval_data) if eval_data is not None else None
    try:
        _, report = quantize_model(model, data, config=config, output=output, eval_data=eval_data, input_shapes=input_shapes, show_progress=not quiet)
    except NothingToDoError as exc:
        _report_refusal(exc, report_path)
        raise
    _print_quantization(report)
    _finish(report.to_dict(), report_path)


def _print_quantization(report) -> None:
    from onnxslim.passes.base import DeclineCode

    for result in report.prepare:
        if result.changes:
            console.print(f"[dim]prepare {result.name}:[/] {escape(result.summary())}", highlight=False)
        # left out because the budget holds without it: a choice the user should see, not a limitation
        spared = [d for d in result.declined if d.reason.code == DeclineCode.NOT_NEEDED]
        if spared:
            console.print(f"[dim]prepare {result.name}:[/] {len(spared)} not applied, e.g. {escape(spared[0].where)}: "
                          f"{escape(spared[0].reason.text)}", highlight=False)
    quantized = report.quantized
    weights_only = report.precision.endswith("-weights")
    label = {"int8": "INT8", "fp16": "FP16"}.get(report.precision, report.precision.split("-")[0].upper() + " weights")
    ops: dict[str, int] = {}
    for decision in quantized:
        ops[decision.op_type] = ops.get(decision.op_type, 0) + 1
    listed = ", ".join(f"{op} {n}" for op, n in sorted(ops.items()))
    if weights_only:
        statistics = f"inputs' statistics from {report.calibration.batches} batch(es)" if report.calibration.batches else "no data"
        console.print(f"{label}: {len(quantized)} of {len(report.decisions)} weights ({listed}); {statistics}, {report.calibration.seconds:.1f} s", highlight=False)
    else:
        verb = "quantized" if report.precision == "int8" else "in FP16:"
        console.print(
            f"{verb} {len(quantized)} of {len(report.decisions)} nodes ({listed}); "
            f"target {report.target}, {report.method} ranges from {report.calibration.batches} batch(es) in {report.calibration.seconds:.1f} s",
            highlight=False,
        )
    if report.precision == "int8":
        kernels = ", ".join(f"{op} {n}" for op, n in sorted(report.integer_kernels.items()))
        console.print(f"onnxruntime runs: {kernels or 'no integer kernels'}", highlight=False)
    elif report.float16:
        console.print(f"{report.float16['casts_inserted']} Cast(s) where precision changes, {report.float16['weights_converted']} weight tensor(s) in float16", highlight=False)
    skipped = Table(title="kept in float" if report.precision == "int8" else "kept in float32", title_justify="left", show_lines=False)
    skipped.add_column("ops")
    skipped.add_column("why")
    for reason, counter in sorted(report.skipped_by_reason().items(), key=lambda item: -sum(item[1].values())):
        skipped.add_row(", ".join(f"{op} {n}" for op, n in counter.most_common()), escape(reason))
    if report.skipped:
        console.print(skipped)
    shown = report.kept_float_for_budget[:BUDGET_LINES]
    for entry in shown:
        console.print(f"  kept in float for the accuracy budget: {escape(entry['node'])} ({_sensitivity_text(entry, report.accuracy_metric, label)})", highlight=False)
    if len(report.kept_float_for_budget) > len(shown):
        console.print(f"  ... and {len(report.kept_float_for_budget) - len(shown)} more kept in float for the accuracy budget (--report lists every one)", highlight=False)
    for line in _ranking_check_lines(report.ranking_check):
        console.print(f"  {escape(line)}", highlight=False)
    where = f" (measured on {report.float16['fidelity_measured_on']})" if report.float16 else ""
    padding = sorted({o.padding_left_out for o in report.fidelity if o.padding_left_out})
    where += f" (real tokens only: positions where {', '.join(padding)} is 0 left out)" if padding else ""
    original = report.original_precision
    fidelity = Table(title=f"{label} vs {original} on {report.evaluation.data}{where}", title_justify="left")
    resampled = any(o.cosine_range for o in report.fidelity)
    for column in ("output", "cosine", *((RANGE_COLUMN,) if resampled else ()), "SNR dB", "max abs", "task metric"):
        fidelity.add_column(column, justify="left" if column == "output" else "right")
    for output in report.fidelity:
        fidelity.add_row(escape(output.name), _cosine_text(output, 6), *([_range_text(output)] if resampled else []), _fmt(output.snr_db, 3),
                         _fmt(output.max_abs), _task_text(output))
    if report.fidelity:
        console.print(fidelity)
    for latency in (report.latency, report.latency_1_thread):
        if latency:
            cleaned = f", cleaned FP32 {latency.fallback['median_ms']:.3f} ms" if latency.fallback else ""
            console.print(
                f"latency ({threads_text(latency.threads)}, median of {latency.runs} interleaved runs): {original} {latency.reference['median_ms']:.3f} ms{cleaned}, "
                f"{label} {latency.candidate['median_ms']:.3f} ms, ratio {latency.ratio:.3f}",
                highlight=False,
            )
    console.print(f"size: {original} {size_text(report.sizes.fp32_bytes)}, {label} {size_text(report.sizes.quantized_bytes)}", highlight=False)
    if report.weight_range.get("used") == "reduced":
        console.print(f"INT8 weights in [-64, 64]: {escape(report.weight_range['why'])}", highlight=False)
    if report.scalar_affine:
        affine = report.scalar_affine
        form = "integer" if affine["written"] == "int8" else "float"
        console.print(f"constant scalar Add/Mul ({affine['nodes']}): {form} form written: {escape(affine['why'])}", highlight=False)
    if report.depthwise:
        form = "integer" if report.depthwise["written"] == "int8" else "float"
        console.print(f"depthwise convolutions ({report.depthwise['nodes']}): {form} form written: {escape(report.depthwise['why'])}", highlight=False)
    if report.conv_kernel:
        kernels = report.conv_kernel
        offset = f"{len(kernels['offset_nodes'])} of {kernels['candidates']} on the integer matrix product" if kernels["written"] == "gemm" else "all on the symmetric kernels"
        console.print(f"convolution kernels ({kernels['candidates']} candidates): {offset}: {escape(kernels['why'])}", highlight=False)
    if report.output_layers:
        form = "integer" if report.output_layers["written"] == "int8" else "float"
        console.print(f"output layers ({report.output_layers['nodes']}): {form} form written: {escape(report.output_layers['why'])}", highlight=False)
    if report.kept_float_weights:
        console.print(f"weights of the layers kept in float: {report.kept_float_weights['written']}: {escape(report.kept_float_weights['why'])}", highlight=False)
    for warning in report.warnings:
        _warn(warning)
    if report.output:
        if report.written == "int8":
            what = f"INT8 QDQ model ({len(report.quantized)} of {len(report.decisions)} nodes quantized)"
        elif report.written == "fp16":
            what = f"FP16 model ({len(report.quantized)} of {len(report.decisions)} float nodes in FP16)"
        elif report.written.endswith("-weights"):
            what = f"{label} model ({len(report.quantized)} of {len(report.decisions)} weights stored low-bit; activations in float)"
        elif report.written == "original":
            what = f"[bold yellow]the original model, unchanged, not {label}[/]"
        else:
            what = f"[bold yellow]FP32 model (cleaned), not {label}[/]"
        console.print(f"wrote {escape(report.output)}: {what}", highlight=False)


# ---------------------------------------------------------------- prune
@main.command()
@click.argument("model", type=click.Path(dir_okay=True))
@output_option
@config_options(PruneConfig, "ratio")
@data_options
@click.option("--eval-data", default=None, help=(
    "Held-out data for the fidelity check, read like --data (default: every 5th batch of --data, not used for pruning)."
))
@config_options(
    PruneConfig, "max_calibration_samples", "eval_fraction", "max_eval_batches", "importance", "scope", "round_to", "target_params", "target_macs", "recovery",
    "unstructured", "token_mask", "only",
)
@threads_option
@config_options(PruneConfig, "latency_runs", "if_slower")
@report_option
@quiet_option
def prune(model, output, eval_data, threads, report_path, quiet, input_shapes, **options):
    """Remove whole channels, neurons and heads from MODEL; write the smaller dense model to OUTPUT."""
    check_destinations(inputs=[model], output=output, report=report_path)
    from onnxslim.prune import prune as prune_model

    ratio_given = click.get_current_context().get_parameter_source("ratio") == click.core.ParameterSource.COMMANDLINE
    if ratio_given and (options.get("target_params") is not None or options.get("target_macs") is not None):
        raise click.UsageError("give --ratio or --target-params/--target-macs, not both: a target chooses the ratio")
    config = PruneConfig(threads=threads, **config_values(PruneConfig, options))
    data = _resolve_data(model, options, required=False)
    eval_data = _resolve_data(model, options, data=eval_data) if eval_data is not None else None
    try:
        _, report = prune_model(model, data, config=config, output=output, eval_data=eval_data, input_shapes=input_shapes, show_progress=not quiet)
    except NothingToDoError as exc:
        _report_refusal(exc, report_path)
        raise
    _print_pruning(report)
    _finish(report.to_dict(), report_path)


def _print_pruning(report) -> None:
    from onnxslim.prune.recover import RecoveryKind

    for result in report.prepare:
        if result.changes:
            console.print(f"[dim]prepare {result.name}:[/] {escape(result.summary())}", highlight=False)
    if report.mode == "structured":
        table = Table(title="channel groups", title_justify="left")
        for column in ("producers", "channels", "kept", "importance cut", "note"):
            table.add_column(column, justify="right" if column in ("channels", "kept", "importance cut") else "left")
        for group in report.groups:
            producers = ", ".join(group.producers[:3]) + (f" +{len(group.producers) - 3}" if len(group.producers) > 3 else "")
            cut = f"{group.score_removed:.1%}" if group.score_removed else ""
            width = f" x {group.channels_per_class}" if group.channels_per_class > 1 else ""  # heads or groups of that many channels
            table.add_row(escape(producers), f"{group.channels_before}{width}", f"{group.channels_after}{width}", cut, escape(group.skipped or ""))
        console.print(table)
        console.print(f"pruned {len(report.pruned_groups)} of {len(report.groups)} groups", highlight=False)
        if report.widths is not None:
            console.print(escape(str(report.widths)), highlight=False)
    if report.recovery:
        kinds = Counter(step.kind for step in report.recovery)
        refit, compensated = kinds[RecoveryKind.REFIT], kinds[RecoveryKind.BIAS]
        other = len(report.recovery) - refit - compensated
        summary = f"recovery: {refit} layer(s) refit by least squares, {compensated} bias-compensated"
        console.print(summary + (f", {other} other (see --report)" if other else " (details in --report)"), highlight=False)
    if report.sparsity:
        console.print(f"zeroed the smallest weights of {len(report.sparsity)} layer(s) (details in --report)", highlight=False)
    (p0, p1), (m0, m1), (f0, f1) = report.parameters, report.macs, report.file_bytes
    if report.macs_unknown:  # a total without some layers would be a number that is not true
        macs = f"MACs not counted (shapes unknown for {len(report.macs_unknown)} weighted node(s), e.g. {report.macs_unknown[0]}; give --input-shapes)"
    elif m0:
        macs = f"MACs {m0 / 1e6:,.1f} M -> {m1 / 1e6:,.1f} M ({m1 / m0:.2f}x)"
    else:
        macs = "MACs not counted (the main graph has no layer of known size)"
    console.print(
        f"parameters {_count(p0)} -> {_count(p1)} ({p1 / max(p0, 1):.2f}x); {macs}; "
        f"file {size_text(f0)} -> {size_text(f1)}",
        highlight=False,
    )
    for output in report.fidelity:
        console.print(f"output {escape(output.name)}: cosine {_cosine_text(output, 5)}{_agreement_text(output)} vs the original on {escape(report.evaluation)}", highlight=False)
    for latency in (report.latency, report.latency_1_thread):
        if latency:
            console.print(
                f"latency ({threads_text(latency.threads)}): {latency.reference['median_ms']:.3f} ms -> {latency.candidate['median_ms']:.3f} ms, ratio {latency.ratio:.3f}",
                highlight=False,
            )
    for warning in report.warnings:
        _warn(warning)
    if report.output:
        unchanged = report.mode == "structured" and not report.pruned_groups
        if report.written == "original":
            what = ": [bold yellow]the original model, not the pruned one[/] (it was not faster)"
        else:
            what = ": unchanged (ratio 0 removes nothing)" if unchanged else ""
        console.print(f"wrote {escape(report.output)}{what}", highlight=False)


@main.command()
@click.argument("student", type=click.Path(dir_okay=True))
@click.option("--teacher", required=True, type=click.Path(dir_okay=True), help="The original model the student learns to reproduce (same inputs and outputs).")
@output_option
@data_options
@click.option("--eval-data", default=None, help="Held-out data to score every epoch, read like --data (default: every 5th batch of --data, not trained on).")
@config_options(DistillConfig, "epochs", "time_budget", "lr", "lr_schedule", "batch_size", "patience", "features", "temperature", "augment", "accuracy_metric", "int8",
                "train_precision", "train_device", "teacher_memory_mb", "max_calibration_samples", "eval_fraction", "max_eval_batches")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), default=None, help="Also write one self-contained HTML page: held-out fidelity and training loss after every epoch.")
@report_option
@quiet_option
def distill(student, teacher, output, eval_data, html_path, report_path, quiet, input_shapes, **options):
    """Train STUDENT (a pruned or smaller model) to reproduce TEACHER on unlabeled --data; write the best epoch to OUTPUT.

    Needs the distill extra (torch, onnx2pytorch). Only weights change: OUTPUT has the student's graph, inputs, outputs and opset.
    """
    check_destinations(inputs=[student, teacher], output=output, report=report_path, html=html_path)
    from onnxslim.distill import distill as distill_model

    if html_path:
        plotly_figures()  # fail before the training, not after it

    config = DistillConfig(**config_values(DistillConfig, options))
    data = _resolve_data(teacher, options)
    eval_data = _resolve_data(teacher, options, data=eval_data) if eval_data is not None else None
    _, report = distill_model(student, teacher, data, config=config, output=output, eval_data=eval_data, input_shapes=input_shapes, show_progress=not quiet)
    console.print(
        f"{report.trainable_parameters:,} trainable parameters; matched: {len(report.output_kinds)} output(s) "
        f"({', '.join(f'{escape(k)}: {v}' for k, v in report.output_kinds.items())}), {len(report.features)} shared feature(s); "
        f"training steps in {config.train_precision} on {escape(report.train_device)}",
        highlight=False,
    )
    if report.int8:
        console.print(f"INT8 rounding simulated on {report.rounded_activations} activation(s) and {report.rounded_weights} weight(s); scores are of INT8 models", highlight=False)
    for epoch in report.epochs:
        console.print(f"  epoch {epoch.epoch}: loss {epoch.loss:.4f}, held-out {report.accuracy_metric} {epoch.score:.5f}, lr {epoch.lr:.2g} ({epoch.seconds:.0f} s)",
                      highlight=False)
    before = "quantize's INT8 student" if report.int8 else "before"
    console.print(f"{report.accuracy_metric} against the teacher on {escape(report.evaluation)}: {report.score_before:.5f} {before}, {report.score_after:.5f} written",
                  highlight=False)
    for warning in report.warnings:
        _warn(warning)
    if report.output:
        what = {
            "distilled": f"the student trained for {report.best_epoch} epoch(s)",
            "distilled-int8": f"INT8 model of the student trained for {report.best_epoch} epoch(s) with INT8 rounding",
            "int8-student": "[bold yellow]quantize's INT8 model of the student (training did not beat it)[/]",
        }.get(report.written, "[bold yellow]the student as given (no epoch improved it)[/]")
        console.print(f"wrote {escape(report.output)}: {what}", highlight=False)
    if html_path:
        from onnxslim.distill.html import write_html

        write_html(report, html_path)
        err_console.print(f"HTML report written to {html_path}", highlight=False)
    _finish(report.to_dict(), report_path)


@main.command()
@click.argument("model", type=click.Path(dir_okay=True))
@output_option
@config_options(ShareConfig, "clusters", "min_elements", "tolerance", "accuracy_budget")
@data_options
@click.option("--eval-data", default=None, help="Held-out data for the fidelity check, read like --data (default: every 5th batch of --data).")
@config_options(ShareConfig, "max_calibration_samples", "eval_fraction", "max_eval_batches")
@threads_option
@config_options(ShareConfig, "latency_runs")
@report_option
@quiet_option
def share(model, output, eval_data, threads, report_path, quiet, input_shapes, **options):
    """Store identical tensors once and large weights as codebooks (16 or 256 values) that onnxruntime expands when it loads OUTPUT.

    The file and its download shrink; inference speed does not change. With --data the codebooks favour the weights that
    multiply the busiest input channels, and fidelity is measured on held-out batches.
    """
    check_destinations(inputs=[model], output=output, report=report_path)
    from onnxslim.share import share as share_model

    config = ShareConfig(threads=threads, **config_values(ShareConfig, options))
    data = _resolve_data(model, options, required=False)
    eval_data = _resolve_data(model, options, data=eval_data) if eval_data is not None else None
    _, report = share_model(model, data, config=config, output=output, eval_data=eval_data, input_shapes=input_shapes, show_progress=not quiet)
    codebooks = [t for t in report.tensors if t.how.startswith("codebook")]
    tied = [t for t in report.tensors if t.how.startswith("tied")]
    if codebooks:
        worst = max(codebooks, key=lambda t: t.rms_error)
        sizes = Counter(t.how.split()[1] for t in codebooks)
        counted = ", ".join(f"{n} of {size} values" for size, n in sorted(sizes.items(), key=lambda item: int(item[0])))
        console.print(f"{len(codebooks)} weight(s) as codebooks: {counted} (largest relative RMS error {worst.rms_error:.4f}, {escape(worst.name)})", highlight=False)
    if report.kept_for_budget:
        moved = Counter(entry["to"] for entry in report.kept_for_budget)
        console.print(
            f"accuracy budget {config.accuracy_budget}: " + ", ".join(f"{n} weight(s) moved up to {level}" for level, n in moved.items())
            + f", the noisiest first ({escape(report.kept_for_budget[0]['weight'])} first)", highlight=False,
        )
    if tied:
        console.print(f"{len(tied)} tensor(s) tied to an identical one: {escape(', '.join(t.name for t in tied[:3]))}{' ...' if len(tied) > 3 else ''}", highlight=False)
    (f0, f1), (z0, z1) = report.file_bytes, report.zipped_bytes
    console.print(f"file {size_text(f0)} -> {size_text(f1)} ({f1 / max(f0, 1):.2f}x); zipped {size_text(z0)} -> {size_text(z1)} ({z1 / max(z0, 1):.2f}x)", highlight=False)
    for comparison in report.fidelity:
        console.print(f"output {escape(comparison.name)}: cosine {_cosine_text(comparison, 5)}{_agreement_text(comparison)} vs the original on {escape(report.evaluation)}", highlight=False)
    for latency in (report.latency, report.latency_1_thread):
        if latency and latency.ratio is not None:
            console.print(f"latency ({threads_text(latency.threads)}): ratio {latency.ratio:.3f} (the lookups are folded when the session loads)", highlight=False)
    for warning in report.warnings:
        _warn(warning)
    console.print(f"wrote {escape(output)}", highlight=False)
    _finish(report.to_dict(), report_path)


@main.command()
@click.argument("model", type=click.Path(dir_okay=True))
@output_option
@data_options
@click.option("--eval-data", default=None, help=(
    "Held-out data every candidate is measured on, read like --data (default: every 5th batch of --data, used to build no candidate)."
))
@config_options(CompressConfig, "max_loss", "accuracy_metric", "target_latency", "ratios", "prune_by", "only", "importance", "distill", "distill_epochs", "distill_time_budget",
                "distill_lr", "distill_lr_schedule", "distill_train_device", "objective", "quantize", "target", "scalar_affine", "depthwise", "conv_kernel", "output_layers", "smooth", "weight_range",
                "max_calibration_samples",
                "eval_fraction", "max_eval_batches")
@threads_option
@config_options(CompressConfig, "latency_runs")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), default=None, help="Also write one self-contained HTML page: the candidates' accuracy/latency plot and a per-layer chart.")
@report_option
@quiet_option
def compress(model, output, eval_data, threads, html_path, report_path, quiet, input_shapes, **options):
    """Prune and quantize MODEL under one accuracy budget; write the fastest (--objective size: smallest) candidate within it to OUTPUT.

    Every candidate (quantized; pruned at each ratio; pruned and quantized) is measured against MODEL on held-out data
    and timed interleaved with it. When none is within the budget and faster, nothing is written (exit 1).
    """
    check_destinations(inputs=[model], output=output, report=report_path, html=html_path)
    from onnxslim.compress import compress as compress_model
    from onnxslim.errors import BudgetError

    if html_path:
        plotly_figures()  # fail before the work, not after it
    config = CompressConfig(threads=threads, **config_values(CompressConfig, options))
    data = _resolve_data(model, options, required=True)
    eval_data = _resolve_data(model, options, data=eval_data) if eval_data is not None else None
    try:
        _, report = compress_model(model, data, config=config, output=output, eval_data=eval_data, input_shapes=input_shapes, show_progress=not quiet)
    except BudgetError as exc:
        if exc.report is not None:
            _print_candidates(exc.report)
            _write_compress_reports(exc.report, report_path, html_path)
        raise
    _print_candidates(report)
    _write_compress_reports(report, report_path, html_path)


def _write_compress_reports(report, report_path, html_path) -> None:
    if html_path:
        from onnxslim.compress.html import write_html

        write_html(report, html_path)
        err_console.print(f"HTML report written to {html_path}", highlight=False)
    _finish(report.to_dict(), report_path)


WIDE_CANDIDATE_TABLE = 120  # console columns from which compress's candidate table has room for what was done beside the numbers
CANDIDATE_NAME_WIDTH = 14  # "pruned 40% +" on one line: a name squeezed narrower is unreadable


def _print_candidates(report) -> None:
    table = Table(title=f"candidates against the original ({escape(report.evaluation)}; latency at {threads_text(report.threads)})", title_justify="left")
    metric = report.config.get("accuracy_metric", "cosine")
    one_thread = any(c.latency_ratio_1_thread is not None for c in report.candidates)
    # the decision-level score beside the budget's own: headed by its name ("top-1") where every candidate has the same one
    labels = {c.details["worst_task_metric"]["metric"] for c in report.candidates if "worst_task_metric" in c.details}
    task_column = (f"worst {next(iter(labels))}",) if len(labels) == 1 else ("task metric",) if labels else ()
    # the numbers keep their width (their headings on two lines); on a console too narrow for what was done beside them
    # (a CI log's 80 columns), it is listed under the table instead of being squeezed out of sight
    numbers = ("latency", *(("at 1\nthread",) if one_thread else ()), f"worst\n{metric}", *(heading.replace(" ", "\n", 1) for heading in task_column), "size\nMB")
    notes_beside = console.width >= WIDE_CANDIDATE_TABLE
    for column in ("candidate", *numbers, "budget", *(("what was done",) if notes_beside else ())):
        table.add_column(column, justify="right" if column in numbers else "left", no_wrap=column in numbers or column == "budget",
                         min_width=CANDIDATE_NAME_WIDTH if column == "candidate" else None)
    for c in report.candidates:
        latency = f"{c.latency_ratio:.3f}x" if c.latency_ratio is not None else "-"
        single = (f"{c.latency_ratio_1_thread:.3f}x" if c.latency_ratio_1_thread is not None else "-",) if one_thread else ()
        score = "-" if c.failed or c.loss != c.loss else ("nan" if c.loss == float("inf") else f"{1 - c.loss:.5f}")
        task = c.details.get("worst_task_metric")
        agreement = ((_fmt(task["value"], 4) if len(labels) == 1 else f"{task['metric']} {_fmt(task['value'], 4)}") if task else "-",) if labels else ()
        mark = "[bold green]written[/]" if c.chosen else ("ok" if c.within_budget else "over" if c.measured else "-")
        table.add_row(escape(c.name), latency, *single, score, *agreement, f"{c.file_bytes / 1e6:.2f}" if c.file_bytes else "-", mark,
                      *((escape(c.note),) if notes_beside else ()))
    console.print(table)
    if not notes_beside:
        console.print("what was done:", highlight=False)
        for c in report.candidates:
            console.print(textwrap.fill(f"{c.name}: {c.note}", width=console.width - 1, initial_indent="  ", subsequent_indent="    "),
                          markup=False, highlight=False)
    budget = report.budget
    target = f", target latency {budget['target_latency']:g}x" if budget.get("target_latency") else ""
    what = "cosine, top-1 agreement (class scores) or share of equal values (integer outputs; a label map's class IoU)" if metric == "auto" else metric
    console.print(f"budget: every output's {what} >= {1 - budget['max_loss']:g} vs the original{target}", highlight=False)
    for warning in report.warnings:
        _warn(warning)
    chosen = next((c for c in report.candidates if c.chosen), None)
    if chosen is not None and report.output:
        console.print(
            f"wrote {escape(report.output)}: {escape(chosen.name)} ({report.why}), {chosen.latency_ratio:.2f}x the original's latency, "
            f"{size_text(chosen.file_bytes)}, worst {metric} {1 - chosen.loss:.5f}"
            + (f", {task['metric']} {_fmt(task['value'], 4)} on {escape(task['output'])}" if (task := chosen.details.get("worst_task_metric")) else ""),
            highlight=False,
        )


if __name__ == "__main__":  # pragma: no cover
    main()
