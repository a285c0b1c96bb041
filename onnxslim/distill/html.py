"""``distill --html``: one self-contained HTML file with the held-out fidelity and training loss after every epoch.

Drawn with plotly (the ``html`` extra), its JavaScript embedded; ``compress
--html`` draws the same curve for each candidate it distilled.
"""

from __future__ import annotations

import html
import os

from onnxslim.distill.pipeline import DistillReport
from onnxslim.report import html_number, html_page, plotly_figures, write_text


def fidelity_curves(runs: list[tuple[str, dict]], metric: str):
    """Held-out score against the teacher by epoch (epoch 0: the student as given), one line per ``(name, report dict)``;
    the training loss on a second axis, the best epoch of each run marked."""
    go = plotly_figures()
    figure = go.Figure()
    for name, run in runs:
        epochs = run.get("epochs") or []
        scores = [run.get("score_before")] + [e["score"] for e in epochs]
        figure.add_trace(go.Scatter(x=list(range(len(scores))), y=scores, mode="lines+markers", name=f"{name}: held-out {metric}"))
        figure.add_trace(go.Scatter(x=[e["epoch"] for e in epochs], y=[e["loss"] for e in epochs], mode="lines", line={"dash": "dot"},
                                    name=f"{name}: training loss", yaxis="y2"))
        best = run.get("best_epoch") or 0
        if best:
            figure.add_trace(go.Scatter(x=[best], y=[scores[best]], mode="markers", marker={"size": 14, "symbol": "star"}, name=f"{name}: best epoch {best}"))
    figure.update_layout(
        title="Distillation: fidelity to the teacher on held-out batches, after every epoch",
        xaxis_title="epoch (0: the student as given)",
        yaxis_title=f"held-out {metric} against the teacher",
        yaxis2={"title": "training loss", "overlaying": "y", "side": "right", "type": "log"},
        template="plotly_white",
    )
    return figure


def write_html(report: DistillReport, path: str | os.PathLike) -> None:
    """The curve and the epoch table in one file, written atomically."""
    data = report.to_dict()
    figure = fidelity_curves([("student", data)], report.accuracy_metric)
    rows = "".join(
        f"<tr><td>{'&#9733; ' if e.epoch == report.best_epoch else ''}{e.epoch}</td><td>{e.loss:.4f}</td><td>{html_number(e.score, 5)}</td><td>{e.lr:.2g}</td><td>{e.seconds:.0f}</td></tr>"
        for e in report.epochs
    )
    written = {"distilled": f"the student after epoch {report.best_epoch}", "distilled-int8": f"the INT8 model of epoch {report.best_epoch}",
               "int8-student": "quantize's INT8 model of the student (training did not beat it)"}.get(report.written, "the student as given (no epoch beat it)")
    before = "quantize's INT8 student" if report.int8 else "the student as given"
    warnings = "".join(f"<li>{html.escape(w)}</li>" for w in report.warnings)
    body = f"""<p>{html.escape(report.student)} trained toward {html.escape(report.teacher)}; scored on {html.escape(report.evaluation)}:
{report.accuracy_metric} {html_number(report.score_before, 5)} for {before}, {html_number(report.score_after, 5)} written ({html.escape(written)}).</p>
<table><tr><th>epoch</th><th>training loss</th><th>held-out {report.accuracy_metric}</th><th>learning rate (last step)</th><th>seconds</th></tr>{rows}</table>
{"<ul>" + warnings + "</ul>" if warnings else ""}
{figure.to_html(full_html=False, include_plotlyjs=True)}"""
    write_text(html_page("distill", report.student, body), path, "HTML report")
