"""``compress --html``: one self-contained HTML file with the accuracy/latency plot of the candidates, a per-layer chart,
and with ``--distill`` each distilled candidate's fidelity by epoch.

Drawn with plotly (the ``html`` extra); its JavaScript is embedded, so the file
opens anywhere without a network.
"""

from __future__ import annotations

import html
import os

from onnxslim.compress.pipeline import CompressReport
from onnxslim.distill.html import fidelity_curves
from onnxslim.report import html_number, html_page, plotly_figures, write_text
from onnxslim.units import size_text


def pareto_figure(report: CompressReport):
    """Loss (1 - worst cosine) against latency ratio, one point per measured candidate; the budget as a line."""
    go = plotly_figures()
    figure = go.Figure()
    measured = [c for c in report.candidates if c.measured]
    for chosen in (False, True):
        points = [c for c in measured if c.chosen == chosen]
        if not points:
            continue
        figure.add_trace(
            go.Scatter(
                x=[c.latency_ratio for c in points],
                y=[c.loss for c in points],
                mode="markers+text",
                text=[c.name for c in points],
                textposition="top center",
                marker={"size": 14 if chosen else 9, "symbol": "star" if chosen else "circle"},
                name="written" if chosen else "candidates",
                hovertext=[f"{c.name}: {c.note}; {size_text(c.file_bytes)}" for c in points],
            )
        )
    figure.add_hline(y=report.budget["max_loss"], line_dash="dash", annotation_text=f"budget: loss {report.budget['max_loss']:g}")
    if report.budget.get("target_latency"):
        figure.add_vline(x=report.budget["target_latency"], line_dash="dot", annotation_text="target latency")
    figure.update_layout(
        title="Candidates against the original (held-out data)",
        xaxis_title=f"latency / original's latency ({report.threads or 'default'} thread(s))",
        yaxis_title="loss: 1 - worst output cosine",
        template="plotly_white",
    )
    return figure


def layer_figure(report: CompressReport):
    """Per-layer quantization sensitivity when quantize measured it; otherwise the share of channels each group kept in the written candidate."""
    go = plotly_figures()
    if report.sensitivity:
        rows = report.sensitivity
        if "output_effect" in rows[0]:
            value, title, axis, scale = (lambda r: r["output_effect"], "each layer's share of what the outputs lose with its stretch of the graph alone INT8",
                                         "estimated loss: 1 - worst output cosine", "log")
        elif "added_noise" in rows[0]:
            value, title, axis, scale = lambda r: r["added_noise"], "noise each layer adds when INT8 (one side-by-side pass)", "added noise / signal power", "log"
        else:
            value, title, axis, scale = lambda r: 1.0 - r["score_when_alone_quantized"], "loss when only this layer is INT8", "1 - worst output cosine", "linear"
        rows = sorted(rows, key=lambda r: -value(r))
        figure = go.Figure(go.Bar(x=[r["node"] for r in rows], y=[value(r) for r in rows]))
        figure.update_layout(title=f"Per-layer sensitivity: {title}", yaxis_title=axis, yaxis_type=scale, template="plotly_white")
        return figure
    chosen = next((c for c in report.candidates if c.chosen), None)
    groups = (chosen.details.get("prune", {}) if chosen else {}).get("groups", [])
    if not groups:
        source = next((c for c in report.candidates if c.details.get("prune")), None)
        groups = source.details["prune"]["groups"] if source else []
    figure = go.Figure(go.Bar(x=[", ".join(g["producers"][:2]) for g in groups], y=[g["channels_after"] / max(g["channels_before"], 1) for g in groups]))
    figure.update_layout(title="Channels kept per group (per-layer quantization sensitivity was not measured: the budget held without it)",
                         yaxis_title="kept / original channels", template="plotly_white")
    return figure


def write_html(report: CompressReport, path: str | os.PathLike) -> None:
    """The plot, the chart and the candidate table in one file, written atomically."""
    pareto, layers = pareto_figure(report), layer_figure(report)
    distilled = [(c.name, c.details["distill"]) for c in report.candidates if c.details.get("distill")]
    curves = fidelity_curves(distilled, distilled[0][1].get("accuracy_metric", "cosine")).to_html(full_html=False, include_plotlyjs=False) if distilled else ""
    rows = "".join(
        f"<tr><td>{'&#9733; ' if c.chosen else ''}{html.escape(c.name)}</td><td>{html_number(c.latency_ratio, suffix='x')}</td><td>{html_number(c.loss)}</td>"
        f"<td>{size_text(c.file_bytes)}</td><td>{'yes' if c.within_budget else 'no'}</td><td>{html.escape(c.note)}</td></tr>"
        for c in report.candidates
    )
    body = f"""<p>{html.escape(report.model)} &rarr; {html.escape(str(report.output or "(not written)"))}: {html.escape(report.why)}. Measured on {html.escape(report.evaluation)}.</p>
<table><tr><th>candidate</th><th>latency</th><th>loss</th><th>size</th><th>within budget</th><th>what was done</th></tr>{rows}</table>
{pareto.to_html(full_html=False, include_plotlyjs=True)}
{layers.to_html(full_html=False, include_plotlyjs=False)}
{curves}"""
    write_text(html_page("compress", report.model, body), path, "HTML report")
