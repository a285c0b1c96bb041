"""The last step of every quantize path: time the result against FP32 and keep it only when faster (``--if-slower``)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx

from onnxslim.ir.mapped import has_mapped
from onnxslim.measure import latency_ratios
from onnxslim.measure.latency import disagreement, keep_fallback, threads_text


def faster_or_float(
    run, candidate: onnx.ModelProto, config, report, *, feed: Mapping[str, np.ndarray] | None, subject: str, where: str, anyway: str, written: str,
    description: str, labels: tuple[str, str], provider: str = "CPUExecutionProvider",
) -> onnx.ModelProto:
    """``candidate``, or the cleaned FP32 model when it is not faster and ``config.if_slower`` keeps FP32 (the original model
    itself where the cleaned one was timed no faster than it); ``report`` says which and why.

    The candidate is timed against the original and, in the same interleaved loop, against the cleaned
    FP32 model that would be written instead (its folds can make it faster than the original): the
    candidate is kept only when it is faster than that fallback. Models with weights in external data
    skip the third session (memory) and are compared with the original alone.

    ``feed``: the batch to time on (None: not timed). ``subject`` ("INT8 is"),
    ``where`` ("here", "on cuda") and ``anyway`` (how to write it regardless)
    make the warning; ``written`` is what the report records when it is kept.
    """
    opened = run.take_reference(provider, config.threads)  # the float model's session, when the run still holds one that fits
    if config.latency_runs > 0 and feed is not None:
        fallback = None if has_mapped(run.original) or run.original_precision != "FP32" else run.cleaned
        report.latency, report.latency_1_thread = latency_ratios(
            opened or run.original, candidate, feed, threads=config.threads, runs=config.latency_runs, show_progress=run.show_progress, description=description,
            labels=labels, provider=provider, fallback=fallback,
        )
        split = disagreement(report.latency, report.latency_1_thread, subject.rsplit(" ", 1)[0])  # "INT8 is" -> "INT8"
        if split:
            report.warnings.append(split)
    latency = report.latency
    # the cleaned model's folds and merges are meant to make it faster; where it was timed no faster, the user's own model is the
    # fallback, and the candidate has to beat that one
    cleaned_not_faster = latency is not None and latency.fallback_not_faster
    original_is_fallback = cleaned_not_faster or run.original_precision != "FP32"
    original = run.original_precision
    ratio, message = (latency.ratio_to_beat, "") if latency is not None else (None, "")
    if ratio is not None and latency.fallback and not cleaned_not_faster:
        message = (f"{subject} not faster than the cleaned FP32 model {where} ({latency.ratio:.2f}x the original's latency, the cleaned FP32 model "
                   f"{latency.fallback_ratio:.2f}x, at {threads_text(config.threads)})")
    elif ratio is not None:
        cleaned = f"; the cleaned FP32 model {latency.fallback_ratio:.2f}x" if latency.fallback else ""
        message = f"{subject} not faster than {original} {where} ({ratio:.2f}x {original} latency{cleaned} at {threads_text(config.threads)})"
    if cleaned_not_faster:
        kept = f"wrote the original model unchanged, the cleaned FP32 model being no faster than it ({anyway})"
    elif original_is_fallback:
        kept = f"wrote the original {original} model unchanged ({anyway})"
    else:
        kept = f"wrote the cleaned FP32 model instead ({anyway})"
    use_fp32, warning = keep_fallback(ratio, config.if_slower, keep="keep-fp32", message=message, kept=kept)
    if warning:
        report.warnings.append(warning)
    if use_fp32 and original_is_fallback:
        report.written = "original"
        return run.original
    if use_fp32:
        report.written = "fp32"
        return run.cleaned
    report.written = written
    return candidate
