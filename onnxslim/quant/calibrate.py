"""Calibration: one pass over the data, folding the planned tensors into observers.

The float model is run with the observed tensors added as outputs (those inside
If/Loop/Scan bodies carried out of them, see :func:`onnxslim.ir.scopes.expose`); each
batch's values update fixed-size observers and are dropped, so memory stays
flat however many samples there are, and samples may differ in shape.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping

import numpy as np
import onnx

from onnxslim.errors import DataError
from onnxslim.ir.scopes import expose
from onnxslim.progress import track
from onnxslim.quant.observers import ChannelMaxima, HistogramObserver, MinMaxObserver, TensorStats
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
    resume: Collection[str] = (),
    channel_maxima: Mapping[str, ChannelMaxima] | None = None,
    observe_while: Callable[[], bool] | None = None,
    description: str = "calibrating",
) -> tuple[dict[str, TensorStats], int]:
    """Observe ``tensors`` over ``batches``; returns the statistics and the number of batches.

    ``stats``: statistics kept so far; its tensors are not observed again, but those in ``resume``, which saw
    the batches before ``batches`` of the same data and fold these in after them. ``channel_maxima``: observers of
    each channel's largest magnitude, updated in the same pass. ``observe_while``: asked after the channel maxima take
    in each batch; once it says no, ``tensors`` are no longer observed (their statistics are then incomplete).
    """
    stats = {} if stats is None else stats
    channel_maxima = channel_maxima or {}
    wanted = sorted(set(tensors) - (set(stats) - set(resume)))
    if not wanted and not channel_maxima:
        return stats, 0
    inputs = {v.name for v in model.graph.input}
    exposed = list(dict.fromkeys(t for t in [*wanted, *channel_maxima] if t not in inputs))
    for name in wanted:
        if name not in stats:
            stats[name] = TensorStats(MinMaxObserver(), HistogramObserver(bins) if histogram else None)
    runner = PassRunner(expose(model, exposed), provider, label="calibration model", batches=total)
    seen = 0
    for label, batch, outputs in runner.run_many(track(batches, description, total=total, enabled=show_progress), exposed or None):
        values = dict(zip(exposed, outputs if exposed else []))
        values.update({name: batch[name] for name in [*wanted, *channel_maxima] if name in inputs})
        for name, observer in channel_maxima.items():
            if not observer.update(values[name]):
                raise DataError(f"{label}: the float model produces NaN/Inf in '{name}' on this batch")
        if observe_while is not None and wanted and not observe_while():
            wanted = []
        for name in wanted:
            if not stats[name].update(values[name]):
                raise DataError(f"{label}: the float model produces NaN/Inf in '{name}' on this batch")
        seen += 1
    if seen == 0:
        raise DataError("no calibration batches")
    return stats, seen


def channel_maxima(model: onnx.ModelProto, tensors: Iterable[str], batches: Iterable[tuple[str, Mapping[str, np.ndarray]]], *, provider: str = "CPUExecutionProvider",
                   total: int | None = None, show_progress: bool = False) -> dict[str, np.ndarray]:
    """The largest magnitude of each channel (last axis) of ``tensors`` over ``batches`` ((label, feed) pairs)."""
    observers = {name: ChannelMaxima() for name in tensors}
    calibrate(model, (), batches, histogram=False, provider=provider, total=total, show_progress=show_progress, channel_maxima=observers,
              description="channel maxima")
    return {name: observer.maxima for name, observer in observers.items() if observer.maxima is not None}
