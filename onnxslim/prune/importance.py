"""Importance of removable channel classes: pure functions of weights and activation statistics.

Magnitude: the Lp norm (p = 1 or 2) of every weight slice a class would remove,
producer filters and consumer input slices alike, with filters followed by a
BatchNormalization scaled by |gamma| / sqrt(var + eps) so that a channel the
normalization silences counts as small. Activation-aware: for each consumer,
Var[x_c] (the variance of the channel's activation over the calibration
data, its variance) times the squared norm of the consumer weights reading
it: the energy a removal takes out of the consumer's output once bias
compensation has restored the channel's mean. Second-order: the same energy
after the refit of every linear consumer has made up what the kept channels
can (see :mod:`onnxslim.prune.second_order`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from onnxslim.measure.channels import GRAM_BLOCK_ROWS, STATE
from onnxslim.prune.edits import EditRole, GroupedInput, SliceInput
from onnxslim.prune.second_order import LinearConsumer, affordable, removal_scores

METHODS = ("l1", "l2", "activation", "second-order")
DATA_METHODS = ("activation", "second-order")  # rankings that read activation statistics


def _slice_norms(array: np.ndarray, axis: int, count: int, repeat: int, p: int) -> np.ndarray:
    """Norm contribution of each of ``count`` positions (spanning ``repeat`` entries each) along ``axis``."""
    axis = axis if axis >= 0 else array.ndim + axis
    moved = np.moveaxis(np.abs(array.astype(np.float64)) ** p, axis, 0)
    per_entry = moved.reshape(moved.shape[0], -1).sum(axis=1)
    if per_entry.size != count * repeat:
        return np.zeros(count)
    return per_entry.reshape(count, repeat).sum(axis=1)


def class_scores(
    classes: Mapping[int, list[int]],
    edits: list,
    weights: Mapping[tuple[str, int], np.ndarray],
    *,
    method: str = "l2",
    bn_scale: Mapping[str, np.ndarray] | None = None,
    channel_energy: Mapping[str, np.ndarray] | None = None,
) -> dict[int, float]:
    """Score of each class (keyed by its root atom); higher means more important.

    ``weights`` maps (node, input index) to the array an edit slices; ``bn_scale``
    maps a producer node to the per-channel factor of a BatchNormalization after
    it; ``channel_energy`` maps a consumer node to E[x^2] per input position (a recurrent layer's name and
    :data:`~onnxslim.measure.channels.STATE` to its hidden state's, which its R columns read back).
    """
    p = 1 if method == "l1" else 2
    root_of = {atom: root for root, members in classes.items() for atom in members}
    scores = {root: 0.0 for root in classes}
    for edit in edits:
        if not isinstance(edit, (SliceInput, GroupedInput)) or edit.kind not in (EditRole.PRODUCER, EditRole.CONSUMER, EditRole.RECURRENT):
            continue
        array = weights.get((edit.node, edit.index))
        if array is None:
            continue
        if isinstance(edit, GroupedInput):
            norms = edit.norms(array, 2 if method == "activation" else p)
            if method == "activation" and channel_energy is not None and edit.node in channel_energy and channel_energy[edit.node].size == norms.size:
                norms = norms * channel_energy[edit.node]
            elif method == "activation":
                continue
        elif method == "activation":
            reader = edit.node + STATE if edit.kind == EditRole.RECURRENT else edit.node
            if edit.kind == EditRole.PRODUCER or channel_energy is None or reader not in channel_energy:
                continue
            norms = _slice_norms(array, edit.axis, len(edit.layout), edit.layout.repeat, 2)
            energy = channel_energy[reader]
            if energy.size == len(edit.layout) * edit.layout.repeat:
                energy = energy.reshape(len(edit.layout), edit.layout.repeat).mean(axis=1)
            if energy.size != norms.size:
                continue
            norms = norms * energy
        else:
            norms = _slice_norms(array, edit.axis, len(edit.layout), edit.layout.repeat, p)
        if isinstance(edit, SliceInput) and method != "activation":
            if edit.kind == EditRole.PRODUCER and bn_scale and edit.node in bn_scale and bn_scale[edit.node].size == norms.size:
                norms = norms * np.abs(bn_scale[edit.node]) ** p
        for position, atom in enumerate(edit.layout.atoms):
            if atom is not None and atom in root_of:
                scores[root_of[atom]] += float(norms[position])
    return scores


def linear_consumer_edits(edits: list, matrices: Mapping[str, np.ndarray]) -> list[SliceInput]:
    """The consumer edits of layers a refit re-solves (``matrices``: node -> its (inputs, outputs) weight) whose
    covariances can be held (see :func:`onnxslim.prune.second_order.affordable`)."""
    found = [
        edit for edit in edits
        if isinstance(edit, SliceInput) and edit.kind == EditRole.CONSUMER and edit.index == 1 and edit.node in matrices
        and matrices[edit.node].shape[0] == len(edit.layout) * edit.layout.repeat
    ]
    held = affordable({edit.node: len(edit.layout) * edit.layout.repeat for edit in found}, pending_rows=GRAM_BLOCK_ROWS)
    return [edit for edit in found if edit.node in held]


def second_order_scores(
    classes: Mapping[int, list[int]],
    group_roots: list[tuple[int, ...]],
    edits: list,
    weights: Mapping[tuple[str, int], np.ndarray],
    *,
    matrices: Mapping[str, np.ndarray],
    covariances: Mapping[str, np.ndarray],
    channel_energy: Mapping[str, np.ndarray],
    ridge: float,
) -> dict[int, float]:
    """Score of each class by greedy second-order removal within each group of ``group_roots`` (higher: keep).

    Consumers in ``matrices`` with a covariance are priced by the cost left after
    their refit; every other consumer by the activation score.
    """
    linear = [edit for edit in linear_consumer_edits(edits, matrices) if edit.node in covariances]
    handled = {id(edit) for edit in linear}
    diagonal = class_scores(classes, [e for e in edits if id(e) not in handled], weights, method="activation", channel_energy=channel_energy)
    root_of = {atom: root for root, members in classes.items() for atom in members}
    scores = dict(diagonal)
    for roots in group_roots:
        if not roots:
            continue
        members = set(roots)
        consumers = []
        for edit in linear:
            where: dict[int, list[int]] = {}
            for position, atom in enumerate(edit.layout.atoms):
                root = root_of.get(atom) if atom is not None else None
                if root in members:
                    start = position * edit.layout.repeat
                    where.setdefault(root, []).extend(range(start, start + edit.layout.repeat))
            if where:
                positions = {root: np.array(p) for root, p in where.items()}
                consumers.append(LinearConsumer(edit.node, matrices[edit.node], covariances[edit.node], positions))
        scores.update(removal_scores(list(roots), consumers, diagonal, ridge=ridge))
    return scores


def class_costs(classes: Mapping[int, list[int]], edits: list, node_macs: Mapping[str, int]) -> dict[int, float]:
    """Multiply-accumulates each class's removal saves: its share of every weighted layer it is a filter, column or depthwise channel of."""
    root_of = {atom: root for root, members in classes.items() for atom in members}
    costs = {root: 0.0 for root in classes}
    weighted = (EditRole.PRODUCER, EditRole.CONSUMER, EditRole.PASSTHROUGH)
    for edit in edits:
        if isinstance(edit, SliceInput) and not (edit.kind in weighted and edit.index == 1):
            continue
        if not isinstance(edit, (SliceInput, GroupedInput)):
            continue
        total = node_macs.get(edit.node)
        positions = len(edit.layout) * edit.layout.repeat
        if not total or not positions:
            continue
        per_atom = total / positions * edit.layout.repeat
        for atom in edit.layout.atoms:
            if atom is not None and atom in root_of:
                costs[root_of[atom]] += per_atom
    return costs
