"""Second-order (Optimal Brain Surgeon) ranking of channel classes: the removals a refit can best make up for.

A linear consumer ``y = x W`` (W: inputs x outputs) whose inputs have covariance
``H`` over the calibration data loses, when the input positions S are removed and
the other weights are re-solved by least squares (what recovery's refit does),

    cost(S) = trace(W_S^T ((H^-1)_SS)^-1 W_S)

of expected squared output error per row; the best re-solve moves the other
weights by ``-(H^-1)_:S ((H^-1)_SS)^-1 W_S``. Correlated channels are cheap to
remove together with a refit even when each carries much energy, which the
diagonal (activation) ranking cannot see.

A group's classes are removed greedily: the cheapest (summed over the group's
consumers) first, then the consumers' weights and inverse covariances are updated
as if the refit had happened, and the rest are priced again. Each round takes a
small share of what is left, so a group of n classes costs about n^3 in all.
Consumers priced without a covariance of their inputs (convolutions over more
than 1x1, which the refit re-solves over their patches but whose patch covariance
is not gathered; grouped convolutions; layers too wide to hold one) add their
diagonal cost: the removed channel's variance times its squared weights.

A class's score is the cost at the moment it was taken, made increasing along the
order, so that removing a group's lowest scores reproduces the greedy order at any
ratio, and scores of different groups stay in the same units for global ranking.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

ROUND_SHARE = 1 / 16  # share of the remaining classes taken per greedy round
MAX_COVARIANCE_INPUTS = 2048  # wider consumers are priced by their diagonal cost
COVARIANCE_BUDGET_BYTES = 2**30  # all covariances together (float64); the narrowest consumers get theirs first


@dataclass
class LinearConsumer:
    """A consumer that recovery refits: its weights as (inputs, outputs), its input covariance, and where each class sits."""

    name: str
    weight: np.ndarray
    covariance: np.ndarray
    positions: Mapping[int, np.ndarray]  # class root -> the input positions it occupies


def affordable(widths: Mapping[str, int], pending_rows: int = 0) -> set[str]:
    """The consumers (name -> input width) whose covariances fit ``COVARIANCE_BUDGET_BYTES`` together, narrowest first.

    ``pending_rows``: the input rows each one's running sum holds before it multiplies them in (float64, as wide as
    the covariance): for a narrow consumer they take more memory than the covariance itself.
    """
    chosen, spent = set(), 0
    for name, width in sorted(widths.items(), key=lambda item: (item[1], item[0])):
        cost = 8 * width * (width + pending_rows)
        if width > MAX_COVARIANCE_INPUTS or spent + cost > COVARIANCE_BUDGET_BYTES:
            break
        chosen.add(name)
        spent += cost
    return chosen


def damped_inverse(covariance: np.ndarray, ridge: float) -> np.ndarray:
    """(H + ridge * mean(diag H) I)^-1, the same damping as the refit's ridge term."""
    damping = ridge * float(np.mean(np.diag(covariance))) if covariance.size else 0.0
    damping = damping if damping > 0 else 1e-12
    return np.linalg.inv(covariance + damping * np.eye(covariance.shape[0]))


def removal_scores(
    roots: Sequence[int], consumers: Sequence[LinearConsumer], diagonal_cost: Mapping[int, float], *, ridge: float
) -> dict[int, float]:
    """Score of each of ``roots`` (higher: removed later); every class's cost includes ``diagonal_cost``."""
    states = [_ConsumerState(c, ridge) for c in consumers]
    remaining = list(roots)
    scores: dict[int, float] = {}
    previous = 0.0
    while remaining:
        costs = np.array([diagonal_cost.get(r, 0.0) for r in remaining], dtype=np.float64)
        for state in states:
            costs += state.costs(remaining)
        costs = np.where(np.isfinite(costs), costs, np.inf)
        take = max(1, int(len(remaining) * ROUND_SHARE))
        order = np.argsort(costs, kind="stable")[:take]
        chosen = [remaining[i] for i in order]
        for i in order:
            previous = max(float(costs[i]) if np.isfinite(costs[i]) else previous, previous) * (1 + 1e-12) + 1e-300
            scores[remaining[i]] = previous
        for state in states:
            state.remove(chosen)
        taken = set(chosen)
        remaining = [r for r in remaining if r not in taken]
    return scores


class _ConsumerState:
    """One consumer's weights and inverse covariance as greedy removal updates them."""

    def __init__(self, consumer: LinearConsumer, ridge: float):
        self.weight = consumer.weight.astype(np.float64, copy=True)
        self.inverse = damped_inverse(consumer.covariance.astype(np.float64), ridge)
        self.positions = consumer.positions

    def costs(self, roots: Sequence[int]) -> np.ndarray:
        result = np.zeros(len(roots))
        singles = [(i, self.positions[r][0]) for i, r in enumerate(roots) if r in self.positions and len(self.positions[r]) == 1]
        if singles:
            index, where = (np.array(v) for v in zip(*singles))
            result[index] = (self.weight[where] ** 2).sum(axis=1) / np.maximum(self.inverse[where, where], 1e-300)
        for i, root in enumerate(roots):
            where = self.positions.get(root)
            if where is None or len(where) <= 1:
                continue
            block = self.inverse[np.ix_(where, where)]
            rows = self.weight[where]
            try:
                result[i] = float(np.sum(rows * np.linalg.solve(block, rows)))
            except np.linalg.LinAlgError:
                result[i] = np.inf
        return result

    def remove(self, roots: Sequence[int]) -> None:
        where = [self.positions[r] for r in roots if r in self.positions]
        if not where:
            return
        gone = np.concatenate(where)
        block = self.inverse[np.ix_(gone, gone)]
        columns = self.inverse[:, gone]
        try:
            self.weight -= columns @ np.linalg.solve(block, self.weight[gone])
            self.inverse -= columns @ np.linalg.solve(block, self.inverse[gone])
        except np.linalg.LinAlgError:
            pass  # a singular block: the prices stay as they were, the removal still counts
        self.weight[gone] = 0.0
        self.inverse[gone, :] = 0.0
        self.inverse[:, gone] = 0.0
