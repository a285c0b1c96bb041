"""The accuracy budget for codebooks: which weights get more codes (16 -> 256) or stay float (256 -> float).

The model with every weight at the chosen codebook size is run once side by
side with the original, every weighted layer's inputs and outputs exposed;
each weight is ranked by the noise its layers add beyond their inputs', and the
noisiest are moved one step up (16 codes to 256, 256 to float), 1, 2, 4, 8, ...
at a time, each count measured on held-out batches, until every output's cosine
meets the budget. The same ranking and schedule as quantize's layers kept in float.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx

from onnxslim.ir.shapes import element_types
from onnxslim.measure import RememberedReference, fidelity, tensor_fidelity, worst_score
from onnxslim.measure.sensitivity import counts_to_try, noise_power, rank_by_added_noise, tensors_to_compare
from onnxslim.progress import track
from onnxslim.runtime import Runner
from onnxslim.share.encode import Coded, TensorShare, encode

SEARCH_BATCHES = 16  # held-out batches each step of the search measures


def step_up(coded: Coded, refit: Callable[[int], Coded]) -> Coded | None:
    """The next level for a weight: 256 codes for one at 16, float (None) for one at 256."""
    return refit(256) if coded.clusters < 256 else None


def ranked_weights(work: onnx.ModelProto, coded_model: onnx.ModelProto, weights: list[str], batches, show_progress: bool = False) -> list[dict]:
    """``weights`` by the noise their readers add in ``coded_model`` against ``work`` (its float original), the noisiest first."""
    wanted = set(weights)
    readers = [n for n in work.graph.node if wanted & set(n.input)]
    types = element_types(work)
    constants = {t.name for t in work.graph.initializer}
    activations = {name for name, kind in types.items() if kind in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)} - constants
    compared = tensor_fidelity(work, coded_model, tensors_to_compare(readers, activations), track(batches, "per-weight noise", enabled=show_progress))
    noise = {name: noise_power(c.err_sq, c.ref_sq, c.nonfinite_mismatches) for name, c in compared.items()}
    by_node = {n.name: n for n in readers}
    order: dict[str, float] = {}
    for node, added in rank_by_added_noise(readers, noise):
        for name in by_node[node].input:
            if name in wanted and name not in order:
                order[name] = added
    return [{"weight": name, "added_noise": added} for name, added in order.items()]


def within_budget(
    original: onnx.ModelProto, work: onnx.ModelProto, fits: dict[str, Coded], refit: Callable[[str, int], Coded], held: list, budget: float,
    show_progress: bool = False,
) -> tuple[onnx.ModelProto, list[TensorShare], list[dict], str | None]:
    """The encoded model that meets ``budget`` on ``held`` (every output's cosine), the weights moved up for it, and a note when it is missed.

    ``refit(name, clusters)`` fits weight ``name`` again with more codes.
    """
    reference = RememberedReference(_runner(original))
    batches = held[:SEARCH_BATCHES]
    model, coded = encode(work, fits)
    if worst_score(fidelity(reference, model, batches, label="shared model")) >= budget:
        return model, coded, [], None
    ranked = ranked_weights(work, model, list(fits), batches, show_progress)
    for count in counts_to_try(len(ranked)):
        trial = dict(fits)
        for entry in ranked[:count]:
            name = entry["weight"]
            trial[name] = step_up(fits[name], lambda clusters, name=name: refit(name, clusters))
        model, coded = encode(work, trial)
        score = worst_score(fidelity(reference, model, batches, label="shared model"))
        if score >= budget:
            moved = [{**entry, "to": _level(trial[entry["weight"]])} for entry in ranked[:count]]
            return model, coded, moved, None
    moved = [{**entry, "to": _level(trial[entry["weight"]])} for entry in ranked]
    return model, coded, moved, f"accuracy budget {budget} missed even with every weight one step up (cosine {score:.5f} on {len(batches)} batch(es))"


def _level(coded: Coded | None) -> str:
    return "float" if coded is None else f"codebook {coded.clusters}"


def _runner(model: onnx.ModelProto) -> Runner:
    return Runner(model, threads=None, label="original")
