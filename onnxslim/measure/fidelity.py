"""Fidelity of a candidate model to its reference, output by output, over a set of batches."""

from __future__ import annotations

import copy
import itertools
import math
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx

from onnxslim.measure.outputs import DETECTION_SCORE, FEW_OBJECTS, OutputComparison, TensorNoise
from onnxslim.runtime.passes import BATCHES_PER_SESSION, PassRunner, available_cores, pass_workers
from onnxslim.runtime.probe import probe_runner
from onnxslim.runtime.session import Runner


class RememberedReference:
    """A reference session whose outputs are computed once per batch object and kept (up to ``limit_bytes``).

    A search compares many candidates with the same reference on the same held-out batches;
    remembering the reference's outputs halves the cost of every comparison after the first.
    Batches not yet seen are run by a :class:`PassRunner` of the same model (opened on first use).
    """

    def __init__(self, runner: Runner, limit_bytes: int = 512 << 20):
        self.runner = runner
        self.output_names = runner.output_names
        self.limit_bytes = limit_bytes
        self._kept: dict[int, tuple[Mapping, list[np.ndarray]]] = {}
        self._bytes = 0
        self._passes: PassRunner | None = None

    def run(self, batch: Mapping[str, np.ndarray], names: Sequence[str] | None = None) -> list[np.ndarray]:
        if names is not None and list(names) != list(self.output_names):
            return self.runner.run(batch, names)
        kept = self._remembered(batch)
        return kept if kept is not None else self._remember(batch, self.runner.run(batch))

    def run_many(self, batches: Iterable[tuple[str, Mapping[str, np.ndarray]]], count: int | None = None
                 ) -> Iterator[tuple[str, Mapping[str, np.ndarray], list[np.ndarray]]]:
        """``(label, batch, outputs)`` for each of ``batches`` in order (read once): remembered ones as kept, the others run
        side by side (``count``: how many batches there are, where known; too few for sessions of their own run in this one)."""
        pending: deque[list] = deque()  # [label, batch, outputs or None], in the order given

        def missing():
            for label, batch in batches:
                pending.append([label, batch, self._remembered(batch)])
                if pending[-1][2] is None:
                    yield label, batch

        def computed():
            wanted = missing()
            first = next(wanted, None)
            if first is not None:  # sessions are opened only for batches not remembered, and only where several pay
                worth_sessions = count is None or count >= 2 * BATCHES_PER_SESSION
                if self._passes is None and worth_sessions and pass_workers(self.runner.source_bytes, self.runner.provider) > 1:
                    self._passes = PassRunner(self.runner.source, self.runner.provider, label=self.runner.label, like=self.runner)
                yield from _outputs(self._passes or self.runner, itertools.chain([first], wanted))

        stream = computed()
        while True:
            item = next(stream, None)  # reads ``batches`` up to the next batch not remembered, and runs it
            if item is not None:
                _, ran, outputs = item
                next(entry for entry in pending if entry[2] is None)[2] = self._remember(ran, outputs)
            while pending and pending[0][2] is not None:
                label, batch, outputs = pending.popleft()
                yield label, batch, outputs
            if item is None:
                return

    def _remembered(self, batch) -> list[np.ndarray] | None:
        kept = self._kept.get(id(batch))
        return kept[1] if kept is not None and kept[0] is batch else None

    def _remember(self, batch, outputs: list[np.ndarray]) -> list[np.ndarray]:
        size = sum(np.asarray(o).nbytes for o in outputs)
        if self._bytes + size <= self.limit_bytes:
            self._kept[id(batch)] = (batch, outputs)  # the batch is held too, so its id is not reused
            self._bytes += size
        return outputs


PADDING_MASK = "attention_mask"  # an input whose zeros mark padding tokens, as transformer exporters name it


def fidelity(
    reference: Runner | PassRunner | RememberedReference, candidate: onnx.ModelProto | Runner | PassRunner, batches: Iterable[tuple[str, Mapping[str, np.ndarray]]], *,
    provider: str = "CPUExecutionProvider", label: str = "quantized model", padding_mask: str | None = PADDING_MASK,
) -> list[OutputComparison]:
    """Per-output comparison of ``candidate`` with ``reference`` over ``batches``; ``label`` names the candidate in errors.

    Where a batch has the input ``padding_mask`` and an output starts with its (batch, tokens) shape,
    only the rows of real tokens are compared: what a model computes at padding positions is read
    by nothing (a pooled embedding masks it out), so its error would only blur the score.
    """
    return fidelity_with_head(reference, candidate, batches, None, provider=provider, label=label, padding_mask=padding_mask)[0]


def fidelity_with_head(
    reference: Runner | PassRunner | RememberedReference, candidate: onnx.ModelProto | Runner | PassRunner, batches: Iterable[tuple[str, Mapping[str, np.ndarray]]],
    head: int | None, *, provider: str = "CPUExecutionProvider", label: str = "quantized model", padding_mask: str | None = PADDING_MASK,
) -> tuple[list[OutputComparison], list[OutputComparison] | None]:
    """:func:`fidelity` over ``batches``, and the comparisons as they stood after the first ``head`` of them (None where
    there are no more than that): the same pass answers for the whole set and for the sample a search measures on."""
    count = len(batches) if isinstance(batches, Sized) else None
    runner = candidate if isinstance(candidate, (Runner, PassRunner)) else PassRunner(candidate, provider, label=label, batches=count)
    comparisons = [OutputComparison(name) for name in reference.output_names]
    at_head, seen = None, 0
    for_reference, for_candidate = itertools.tee(batches)  # ``batches`` is read once
    expected = reference.run_many(for_reference, count) if isinstance(reference, RememberedReference) else _outputs(reference, for_reference)
    for seen, (label, batch, outputs) in enumerate(_outputs(runner, for_candidate, reference.output_names), 1):
        add_batch(comparisons, next(expected)[2], outputs, batch, label, padding_mask)
        if seen == head:
            at_head = copy.deepcopy(comparisons)
    return comparisons, at_head if at_head is not None and seen > head else None


def _outputs(runner, batches, names: Sequence[str] | None = None) -> Iterator[tuple[str, Mapping[str, np.ndarray], list[np.ndarray]]]:
    """``(label, batch, outputs)`` for each batch: side by side where ``runner`` can, one by one where it cannot."""
    if isinstance(runner, PassRunner):
        return runner.run_many(batches, list(names) if names is not None else None)
    if isinstance(runner, RememberedReference) and names is None:
        return runner.run_many(batches)
    return ((label, batch, runner.run(batch, names)) for label, batch in batches)


def add_batch(
    comparisons: Sequence[OutputComparison], reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], batch: Mapping[str, np.ndarray], label: str,
    padding_mask: str | None = PADDING_MASK,
) -> None:
    """Fold one batch's outputs into ``comparisons``, real tokens only where ``padding_mask`` applies (see :func:`fidelity`)."""
    mask = batch.get(padding_mask) if padding_mask else None
    for comparison, a, b in zip(comparisons, reference, candidate):
        if mask is not None and per_token(a, mask) and per_token(b, mask):
            keep = np.asarray(mask) != 0
            a, b = a[keep][None], b[keep][None]  # (1, real tokens, ...): never mistaken for (batch, classes)
            comparison.padding_left_out = padding_mask
        comparison.add(a, b, label)


def per_token(array, mask) -> bool:
    """Whether ``array`` (numpy or torch) starts with the (batch, tokens) shape of ``mask`` and the batch has a real token."""
    shape = tuple(mask.shape)  # numpy, or a torch tensor on any device
    return len(shape) == 2 and len(array.shape) >= 3 and tuple(array.shape[:2]) == shape and bool((mask != 0).any())


def worst_cosine(comparisons: Sequence[OutputComparison]) -> float:
    """The lowest cosine similarity over the outputs (1.0 when there are none; NaN when an output disagrees on NaN/Inf)."""
    values = [c.cosine for c in comparisons]
    if any(math.isnan(v) for v in values):
        return math.nan
    return min(values) if values else 1.0


SCORES = ("cosine", "top1", "auto")


def output_score(comparison: OutputComparison, metric: str = "cosine") -> float:
    """How faithful one output is, 1 being identical: its cosine, or its top-1 agreement.

    'auto' uses top-1 agreement where the output is class scores or per-step
    probabilities (the decision is the argmax, and cosine over probabilities
    punishes changes no decision sees), for integer outputs the share of equal
    values or, on a label map, the mean IoU per class (a cosine over label
    numbers weighs a 0 read as 2 more than one read as 1), cosine elsewhere;
    'top1' falls back to cosine on outputs that are not class scores. NaN/Inf
    disagreement is NaN.
    """
    cosine = comparison.cosine
    if math.isnan(cosine):
        return math.nan
    top1 = comparison.top1
    if metric in ("top1", "auto") and top1 is not None:
        return top1
    if metric == "auto" and comparison.integer_values and comparison.elements:
        return comparison.task_metric[1]
    return cosine


def worst_score(comparisons: Sequence[OutputComparison], metric: str = "cosine") -> float:
    """The lowest :func:`output_score` over the outputs (1.0 when there are none; NaN when any is NaN)."""
    values = [output_score(c, metric) for c in comparisons]
    if any(math.isnan(v) for v in values):
        return math.nan
    return min(values) if values else 1.0


def few_objects(comparisons: Sequence[OutputComparison], data_label: str) -> list[str]:
    """A warning per detector output whose comparison on ``data_label`` saw fewer than FEW_OBJECTS anchors with an object.

    On such data nearly every anchor is background: the scores compared are small values that
    decide nothing, a cosine over them swings with noise, and an accuracy budget spent on them keeps
    layers in float for nothing (or passes a model that misplaces the objects it never saw).
    """
    warnings = []
    for comparison in comparisons:
        found = comparison.objects_found
        if found is not None and found < FEW_OBJECTS:
            warnings.append(
                f"output '{comparison.name}' is compared as a detector's, but on {data_label} only {found} anchor(s) hold an object "
                f"(score >= {DETECTION_SCORE:g}): its score is mostly background noise; "
                "measure on held-out data showing what the model detects (--eval-data)"
            )
    return warnings


def dominant_batches(comparisons: Sequence[OutputComparison], data_label: str) -> list[str]:
    """A warning per output whose cosine on ``data_label`` is mostly one batch's (see OutputComparison.dominant_batch).

    An input unlike the others can drive an output far past its usual range (a face detector's score logit at -14,671
    on one crop of a photograph, within +-560 on 199 others): that batch then decides every check alone, so a model
    faithful on the rest can fail it and one that misses the rest can pass.
    """
    warnings = []
    for comparison in comparisons:
        found = comparison.dominant_batch
        if found is not None:
            label, share = found
            warnings.append(f"output '{comparison.name}': {label} holds {share:.0%} of its values' energy on {data_label}, so its cosine is mostly "
                            "that one batch's: look at that input, or measure without it")
    return warnings


def evaluation_warnings(comparisons: Sequence[OutputComparison], data_label: str) -> list[str]:
    """What makes a comparison on ``data_label`` say less than it seems to: few objects for a detector, one batch deciding alone."""
    return few_objects(comparisons, data_label) + dominant_batches(comparisons, data_label)


def tensor_fidelity(
    reference: onnx.ModelProto, candidate: onnx.ModelProto, names: Sequence[str], batches: Sequence[tuple[str, Mapping[str, np.ndarray]]]
) -> dict[str, TensorNoise]:
    """Error and signal power of the intermediate tensors ``names`` (present in both graphs) over ``batches``: one run of each model per batch.

    The two models run each batch at once, each with half the cores: both batches' tensors are held
    together for the comparison anyway, and one small batch spreads over many threads poorly.
    """
    names = list(names)
    share = max(1, available_cores() // 2)
    ref_runner, cand_runner = probe_runner(reference, names, cores=share), probe_runner(candidate, names, cores=share)
    comparisons = {name: TensorNoise(name) for name in names}
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxslim-probe") as pool:
        for label, batch in batches:
            reference_run = pool.submit(ref_runner.run, batch, names)
            got = cand_runner.run(batch, names)
            expected = reference_run.result()
            for name, a, b in zip(names, expected, got):
                comparisons[name].add(a, b, label)
            del expected, got, reference_run  # every tensor of both models: not held while the next batch runs (nor by a zip's reused tuple)
    return comparisons


def paired_tensor_fidelity(model: onnx.ModelProto, pairs: Mapping[str, str], batches: Iterable[tuple[str, Mapping[str, np.ndarray]]]) -> dict[str, TensorNoise]:
    """Error and signal power of the tensors ``pairs`` keys against their values, both computed by ``model``: one run per batch.

    For a model that computes its reference beside the candidate (quantize's
    :func:`~onnxslim.quant.isolation.inputs_made_exact`): one session with every core instead of
    two, and the reference's tensors computed once rather than again in a model of their own.
    """
    candidates = list(pairs)
    references = [pairs[name] for name in candidates]
    names = list(dict.fromkeys(candidates + references))
    runner = probe_runner(model, names)
    position = {name: i for i, name in enumerate(names)}
    comparisons = {name: TensorNoise(name) for name in candidates}
    for label, batch in batches:
        values = runner.run(batch, names)
        for name, reference in zip(candidates, references):
            comparisons[name].add(values[position[reference]], values[position[name]], label)
        del values  # every exposed tensor: not held while the next batch runs
    return comparisons
