"""Calibration: one pass over the data, folding the planned tensors into observers.

The float model is run with the observed tensors added as outputs (those inside
If/Loop/Scan bodies carried out of them, see :func:`onnxslim.ir.scopes.expose`); each
batch's values update fixed-size observers and are dropped, so memory stays
flat however many samples there are, and samples may differ in shape.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import onnx

from onnxslim.errors import DataError
from onnxslim.ir.scopes import expose
from onnxslim.progress import track
from onnxslim.quant.observers import HistogramObserver, MinMaxObserver, TensorStats
from onnxslim.runtime.passes import PassRunner


def calibrate(
    model: onnx.ModelProto,
    tensors: Iterable[str],
    batches: Iterable[tuple[str, Mapping[str, np.ndarray]]],
    *,
    histogram: bool,
    bins: int = 2048,
    provider: str = "CPUExecutionProvider",
    total: int | None = None,
    show_progress: bool = False,
    stats: dict[str, TensorStats] | None = None,
) -> tuple[dict[str, TensorStats], int]:
    """Observe ``tensors`` over ``batches``; returns the statistics and the number of batches."""
    stats = {} if stats is None else stats
    wanted = sorted(set(tensors) - set(stats))
    if not wanted:
        return stats, 0
    inputs = {v.name for v in model.graph.input}
    from_graph = [t for t in wanted if t not in inputs]
    for name in wanted:
        stats[name] = TensorStats(MinMaxObserver(), HistogramObserver(bins) if histogram else None)
    runner = PassRunner(expose(model, from_graph), provider, label="calibration model")
    seen = 0
    for label, batch, outputs in runner.run_many(track(batches, "calibrating", total=total, enabled=show_progress), from_graph or None):
        values = outputs if from_graph else []
        for name, value in zip(from_graph, values):
            if not stats[name].update(value):
                raise DataError(f"{label}: the float model produces NaN/Inf in '{name}' on this batch")
        for name in wanted:
            if name in inputs:
                stats[name].update(batch[name])
        seen += 1
    if seen == 0:
        raise DataError("no calibration batches")
    return stats, seen
