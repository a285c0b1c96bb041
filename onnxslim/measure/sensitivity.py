"""Which layers to keep exact for an accuracy budget, ranked from one pass of per-tensor noise.

Shared by ``quantize`` (layers kept in float) and ``share`` (weights kept at 256 codes).
Measuring each layer alone (quantize only it, run the model, score the outputs)
costs a model build and a pass over the data per layer. Instead the fully
quantized model runs once with the float model computed inside it, every
layer's quantized inputs rounded from the float values (quantize's
:mod:`~onnxslim.quant.isolation`): the noise a layer adds is the relative error
power at its outputs. Where that cannot be built (subgraph bodies) the two
models run side by side and a layer is charged the error power at its outputs
less that already on its inputs, which undercounts layers deep in a noisy
chain. Ranked by it (quantize divides it by each layer's share of the model's
work, :func:`by_damage_per_work`: a layer kept in float gives up the speed-up
of its work), the layers are kept exact a few at a time until the measured
outputs meet the budget, so the ranking is only trusted once it is confirmed.
A layer's own noise does not say what the rest of the graph does to it; where
that matters (quantize: the layers kept hold much of the work), runs of
consecutive layers (:func:`stretches`) are each measured alone and their loss
shared among their layers (:func:`effect_at_outputs`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import onnx


def noise_power(error_sq: float, signal_sq: float, nonfinite: int = 0) -> float:
    """Error power over signal power (1/SNR); infinite where the quantized model gives NaN/Inf the float one does not."""
    if nonfinite:
        return math.inf
    if signal_sq == 0.0:
        return 0.0 if error_sq == 0.0 else math.inf
    return error_sq / signal_sq


def added_noise(nodes: Sequence[onnx.NodeProto], noise: Mapping[str, float]) -> dict[str, float]:
    """Per node: the noise at its noisiest output less the noise on its noisiest input (tensors not in ``noise`` count as exact).

    A layer keeps roughly the relative noise it receives (a ReLU, a pooling, a
    normalisation rescale signal and noise alike), so what its outputs carry
    beyond its inputs is what rounding its inputs, weights and result added;
    keeping it in float removes about that much. Never negative: a residual Add
    or a Softmax that dilutes noise is not credited for it.
    """
    added = {}
    for node in nodes:
        out = max((noise.get(t, 0.0) for t in node.output if t), default=0.0)
        into = max((noise.get(t, 0.0) for t in node.input if t), default=0.0)
        if math.isinf(out):
            added[node.name] = 0.0 if math.isinf(into) else math.inf
        else:
            added[node.name] = max(out - into, 0.0)
    return added


def own_noise(nodes: Sequence[onnx.NodeProto], noise: Mapping[str, float]) -> dict[str, float]:
    """Per node: the noise at its noisiest output, where every layer read exact inputs (nothing inherited to take off)."""
    return {node.name: max((noise.get(t, 0.0) for t in node.output if t), default=0.0) for node in nodes}


def rank_by_added_noise(nodes: Sequence[onnx.NodeProto], noise: Mapping[str, float], *, inputs_exact: bool = False) -> list[tuple[str, float]]:
    """``nodes`` by the noise each adds, the largest first (graph order breaks ties). ``inputs_exact``: ``noise`` was measured
    with every layer reading exact inputs (:func:`own_noise`); otherwise each node is charged what it adds to its inputs'."""
    added = own_noise(nodes, noise) if inputs_exact else added_noise(nodes, noise)
    order = {node.name: i for i, node in enumerate(nodes)}
    return sorted(added.items(), key=lambda item: (-item[1], order[item[0]]))


WORK_FLOOR = 0.005  # the least share of the work a layer counts for: one without multiply-adds still converts to and from float


def by_damage_per_work(ranked: Sequence[tuple[str, float]], shares: Mapping[str, float], floor: float = WORK_FLOOR) -> list[tuple[str, float]]:
    """``ranked`` ((node, damage), the most damaging first) reordered by damage per share of the model's work each node holds.

    Keeping a layer in float takes its noise back and gives up the speed-up of its work, so where the
    budget needs noise taken back, the layers that return the most of it per share of the work go first:
    a recognizer's stem convolution (0.1% of the multiply-adds) before a slightly noisier one holding 16%.
    A share counts as at least ``floor``: a layer without multiply-adds (an Add, a pooling) still costs
    its conversions to and from float. Nodes missing from ``shares`` (shapes unknown, inside a subgraph
    body) count as the average layer with work; with no shares at all the order is kept. Infinite damage
    (NaN/Inf) stays first; ties keep the given order.
    """
    if not shares:
        return list(ranked)
    working = [share for share in shares.values() if share > 0]
    average = sum(working) / len(working) if working else floor

    def per_work(item: tuple[int, tuple[str, float]]) -> tuple[float, int]:
        index, (node, damage) = item
        return -(damage / max(shares.get(node, average), floor)), index

    return [entry for _, entry in sorted(enumerate(ranked), key=per_work)]


def stretches(ordered: Sequence[str], count: int) -> list[list[str]]:
    """``ordered`` (layers in graph order) cut into ``count`` runs of consecutive layers of nearly equal length (as many as there are layers, when fewer)."""
    count = min(count, len(ordered))
    if count < 1:
        return []
    bounds = [round(i * len(ordered) / count) for i in range(count + 1)]
    return [list(ordered[start:end]) for start, end in zip(bounds, bounds[1:])]


def effect_at_outputs(stretch: Sequence[str], own: Mapping[str, float], loss: float) -> dict[str, float]:
    """Each layer of ``stretch``'s share of ``loss``, what the outputs lose with that stretch alone quantized: in proportion
    to the noise each adds itself (``own``), evenly where none shows.

    A layer's own noise misses what the graph after it does to that noise: the layers behind a
    mobile network's stem carry it through every block and grow it, while most of a late
    layer's noise may never reach the outputs (on a random-weight MobileNetV3 the outputs lost
    4 times the stem stretch's own noise and a thousandth of the last one's). Layers next to
    each other share most of that path, so one measurement per stretch puts its layers' noise in
    the outputs' units. A stretch that alone brings NaN/Inf to the outputs charges every layer
    of it infinitely; infinite own noise stays infinite.
    """
    finite = {node: own.get(node, 0.0) for node in stretch if math.isfinite(own.get(node, 0.0))}
    total = sum(finite.values())
    effect = {}
    for node in stretch:
        if node not in finite or not math.isfinite(loss):
            effect[node] = math.inf
        elif total > 0:
            effect[node] = max(loss, 0.0) * finite[node] / total
        else:
            effect[node] = max(loss, 0.0) / len(stretch)
    return effect


def tensors_to_compare(nodes: Sequence[onnx.NodeProto], float_tensors: set[str]) -> list[str]:
    """The float tensors read or written by ``nodes``, in first-seen order: what the side-by-side pass exposes."""
    seen: dict[str, None] = {}
    for node in nodes:
        for name in (*node.input, *node.output):
            if name and name in float_tensors:
                seen.setdefault(name, None)
    return list(seen)


def counts_to_try(total: int, *, finish_with_all: bool = True):
    """How many of the ranked layers to keep in float, in the order tried: 1, 2, 4, 8, then steps of an eighth of them, then all
    (unless ``finish_with_all`` is false: a staged search that goes on to its next stage with every one of these kept)."""
    count, last = 1, 0
    while count <= total:
        yield count
        last = count
        count = count * 2 if count < 8 else count + max(1, total // 8)
    if finish_with_all and last < total:
        yield total


def next_count(noise: Sequence[float], losses: Mapping[int, float], budget_loss: float) -> int | None:
    """How many of the ranked layers to keep exact next, or None when the search is done.

    ``noise``: each ranked layer's added noise, in the order they are kept. ``losses``: every count
    measured so far -> its loss (1 - the worst output score; inf for NaN), with 0 (nothing kept)
    among them. The loss is taken as proportional to the noise still left in the model, the
    line drawn through the measured counts either side of the budget; the guess is aimed a
    tenth inside it and kept well inside the bracket, so the bracket shrinks by a quarter or
    more (or the count grows by half) every step. Where the loss fell between the smallest passing
    count and the next one measured by much less than the noise between them predicts, it is
    flat there and the bracket is halved instead. Done when the smallest passing count is within a quarter of the largest
    failing one below it (next to it, when only keeping every layer passes), or every layer is
    kept and fails: each measurement costs a model build and a pass over the held-out batches,
    a layer too many in float costs a little speed.
    """
    total = len(noise)
    passing = [k for k, loss in losses.items() if loss <= budget_loss]
    high = min(passing) if passing else None
    low = max(k for k, loss in losses.items() if loss > budget_loss and (high is None or k < high))
    if high is None and low >= total:
        return None
    # every layer kept is no result at all (nothing left quantized): worth measuring down to the last layer
    if high is not None and high - low <= (1 if high == total else max(1, high // 4)):
        return None
    left = _noise_left(noise)
    target = 0.9 * budget_loss
    low_loss = losses[low]
    if math.isinf(low_loss) or math.isnan(low_loss):
        guess = max(2 * low, 1)
    elif high is None:
        # through the origin: the loss left when no noise is left is 0
        wanted = left[low] * target / low_loss if low_loss > 0 else 0.0
        guess = next((k for k in range(low + 1, total + 1) if left[k] <= wanted), total)
    elif _flat_above(losses, high, left):
        guess = (low + high) // 2
    else:
        high_loss = losses[high]
        slope = (low_loss - high_loss) / (left[low] - left[high]) if left[low] > left[high] else 0.0
        wanted = left[high] + (target - high_loss) / slope if slope > 0 else left[high]
        guess = next((k for k in range(low + 1, high) if left[k] <= wanted), high - 1)
    if high is None:
        return min(max(guess, low + max(1, low // 2)), total)
    margin = max(1, (high - low) // 4)
    return min(max(guess, low + margin), high - margin)


FLAT = 0.5  # the loss fell by less than this share of what the noise removed predicts: flat there


def _flat_above(losses: Mapping[int, float], high: int, left: Sequence[float]) -> bool:
    """Whether keeping the layers between ``high`` (the smallest passing count) and the next count measured above it
    bought much less than the noise they remove predicts (or raised the loss: measured losses are not monotone).

    Then the loss is not following the noise left there (a few layers near the top of the ranking
    hold most of it, others add noise the outputs never see), the line through the measured counts
    overestimates how many are needed, and halving the bracket finds the step sooner.
    """
    above = [k for k in losses if k > high and math.isfinite(losses[k])]
    if not above or losses[high] <= 0 or left[high] <= 0:
        return False
    next_high = min(above)
    predicted = 1.0 - left[next_high] / left[high]
    measured = 1.0 - losses[next_high] / losses[high]
    return predicted > 0 and measured < FLAT * predicted


def _noise_left(noise: Sequence[float]) -> list[float]:
    """For each count k, the fraction of the finite added noise left when the first k ranked layers are exact (layers with
    infinite noise, ranked first, count as nothing left to remove until they are all kept)."""
    finite = [n if math.isfinite(n) else 0.0 for n in noise]
    total = sum(finite)
    left, removed = [1.0], 0.0
    for value in finite:
        removed += value
        left.append(1.0 - removed / total if total > 0 else 0.0)
    return left
