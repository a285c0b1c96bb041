"""The last step of every quantize path: time the result against FP32 and keep it only when faster (``--if-slower``)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx

from onnxslim.measure import latency_ratios
from onnxslim.measure.latency import disagreement, keep_fallback, threads_text


def faster_or_float(
    run, candidate: onnx.ModelProto, config, report, *, feed: Mapping[str, np.ndarray] | None, subject: str, where: str, anyway: str, written: str,
    description: str, labels: tuple[str, str], provider: str = "CPUExecutionProvider",
) -> onnx.ModelProto:
    """``candidate``, or the cleaned FP32 model when it is not faster and ``config.if_slower`` keeps FP32; ``report`` says which and why.

    ``feed``: the batch to time on (None: not timed). ``subject`` ("INT8 is"),
    ``where`` ("here", "on cuda") and ``anyway`` (how to write it regardless)
    make the warning; ``written`` is what the report records when it is kept.
    """
    if config.latency_runs > 0 and feed is not None:
        report.latency, report.latency_1_thread = latency_ratios(
            run.original, candidate, feed, threads=config.threads, runs=config.latency_runs, show_progress=run.show_progress, description=description, labels=labels, provider=provider
        )
        split = disagreement(report.latency, report.latency_1_thread, subject.rsplit(" ", 1)[0])  # "INT8 is" -> "INT8"
        if split:
            report.warnings.append(split)
    ratio = report.latency.ratio if report.latency is not None else None
    message = f"{subject} not faster than FP32 {where} ({ratio:.2f}x FP32 latency at {threads_text(config.threads)})" if ratio is not None else ""
    use_fp32, warning = keep_fallback(ratio, config.if_slower, keep="keep-fp32", message=message, kept=f"wrote the cleaned FP32 model instead ({anyway})")
    if warning:
        report.warnings.append(warning)
    if use_fp32:
        report.written = "fp32"
        return run.cleaned
    report.written = written
    return candidate
