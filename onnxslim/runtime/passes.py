"""Passes over many batches: several sessions of one model, each with its share of the cores, running consecutive batches at once.

A pass over calibration or held-out data wants batches per second, not the latency of one batch,
and one small batch spreads over many threads poorly: on a 2-core machine a detector's 64 held-out
images took 1.17 s in one session at onnxruntime's default threads and 1.00 s in two one-thread
sessions side by side (2.56 s and 0.89 s while one of its cores was slowed by other work). Timing
is not done here: it runs one session at the thread count the user deploys with
(:mod:`onnxslim.measure.latency`).
"""

from __future__ import annotations

import os
import queue
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from onnxslim.errors import DataError, UsageError
from onnxslim.runtime.session import ModelSource, Runner

MAX_WORKERS = 4  # past this, sessions add memory faster than throughput
WEIGHT_COPIES_BYTES = 2 << 30  # every session holds its own copy of the weights: at most this much in all
BATCHES_PER_SESSION = 4  # a session opened for fewer batches than this costs more than it runs


def available_cores() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


WORKERS_VARIABLE = "ONNXSLIM_PASS_WORKERS"  # at most this many sessions per pass (1: one session, the least memory)


def pass_workers(model_bytes: int | None, provider: str, cores: int | None = None) -> int:
    """How many sessions a pass over data runs side by side: one per core up to MAX_WORKERS (or $ONNXSLIM_PASS_WORKERS),
    fewer for large models, one off the CPU.

    ``model_bytes``: the size of the model's weights (None: unknown, treated as too large to copy).
    """
    if provider != "CPUExecutionProvider" or model_bytes is None:
        return 1
    workers = min(_most_workers(), cores or available_cores())
    return max(1, min(workers, WEIGHT_COPIES_BYTES // max(model_bytes, 1)))


def _most_workers() -> int:
    text = os.environ.get(WORKERS_VARIABLE, "").strip()
    if not text:
        return MAX_WORKERS
    try:
        return max(1, int(text))
    except ValueError:
        raise UsageError(f"${WORKERS_VARIABLE} must be a whole number of sessions, not '{text}'") from None


class PassRunner:
    """One model in up to :data:`MAX_WORKERS` sessions that run consecutive batches at once (see the module docstring).

    ``run`` runs one batch in the first session; ``run_many`` keeps every session busy and yields
    the outputs in the order of the batches, so whatever folds them in sees them as one session would.
    """

    def __init__(self, model: ModelSource, provider: str = "CPUExecutionProvider", *, optimization: str = "all", label: str = "model", prepack: bool = True,
                 workers: int | None = None, like: Runner | None = None, cores: int | None = None, batches: int | None = None, cast_floats: bool = False):
        """``like``: a runner of the same ``model`` whose serialized copy these sessions open (see :class:`Runner`);
        ``cores``: the cores its sessions share (default: all this process may use); ``batches``: how many the pass will
        run, where known (a session is opened for every BATCHES_PER_SESSION of them at most); ``cast_floats``: see :class:`Runner`."""
        cores = cores or available_cores()
        most = max(1, batches // BATCHES_PER_SESSION) if batches is not None else None

        def capped(count: int) -> int:
            return count if most is None else min(count, most)

        planned = workers or capped(pass_workers(0, provider, cores))  # sized before the model is serialized, checked after
        first = Runner(model, provider, threads=_share(cores, planned), optimization=optimization, label=label, prepack=prepack, like=like, cast_floats=cast_floats)
        if workers is None:
            workers = capped(pass_workers(first.source_bytes, provider, cores))
            if workers != planned:
                first = Runner(model, provider, threads=_share(cores, workers), optimization=optimization, label=label, prepack=prepack, like=first,
                               cast_floats=cast_floats)
        self._first = first
        # the other sessions open in the background while the first one runs (opening one takes as long as several small batches)
        self._others: list[Future] = []
        if workers > 1:
            opening = ThreadPoolExecutor(max_workers=workers - 1, thread_name_prefix="onnxslim-open")
            self._others = [opening.submit(Runner, model, provider, threads=first.threads, optimization=optimization, label=label, prepack=prepack,
                                           like=first, cast_floats=cast_floats) for _ in range(workers - 1)]
            opening.shutdown(wait=False)  # the pool's threads end once the sessions are open
        self.provider = provider
        self.label = label
        self.input_names = first.input_names
        self.output_names = first.output_names

    @property
    def workers(self) -> int:
        return 1 + len(self._others)

    def run(self, feed: Mapping[str, np.ndarray], outputs: list[str] | None = None) -> list[np.ndarray]:
        return self._first.run(feed, outputs)

    def run_many(self, batches: Iterable[tuple[str, Mapping[str, np.ndarray]]], outputs: list[str] | None = None
                 ) -> Iterator[tuple[str, Mapping[str, np.ndarray], list[np.ndarray]]]:
        """``(label, batch, outputs)`` for each of ``batches``, in order; at most one batch per session in flight.

        A session still opening joins the pass when it is ready; one that failed to open is left out (the first one runs every batch).
        """
        if not self._others:
            for label, batch in batches:
                yield label, batch, _named(label, self._first.run, batch, outputs)
            return
        free: queue.SimpleQueue[Runner] = queue.SimpleQueue()
        free.put(self._first)

        def joins(opened: Future) -> None:
            if opened.exception() is None:
                free.put(opened.result())

        for opening in self._others:
            opening.add_done_callback(joins)

        def run(batch):
            runner = free.get()
            try:
                return runner.run(batch, outputs)
            finally:
                free.put(runner)

        pending: deque = deque()
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="onnxslim-pass") as pool:
            try:
                for label, batch in batches:
                    pending.append((label, batch, pool.submit(run, batch)))
                    if len(pending) >= self.workers:
                        label, batch, future = pending.popleft()
                        yield label, batch, _named(label, future.result)
                while pending:
                    label, batch, future = pending.popleft()
                    yield label, batch, _named(label, future.result)
            finally:
                for _, _, future in pending:
                    future.cancel()


def _named(label: str, outputs, *args):
    """``outputs(*args)``, with a failure to run the batch naming it (which file or random batch the model refused)."""
    try:
        return outputs(*args)
    except DataError as exc:
        raise DataError(f"{label}: {exc}") from None


def _share(cores: int, workers: int) -> int:
    return max(1, cores // max(workers, 1))
