"""The accuracy budget's shared pieces: how many held-out batches a layer search measures, and the check on all of them."""

from __future__ import annotations

from onnxslim.measure import worst_score

SENSITIVITY_BATCHES = 16  # held-out batches a per-layer search measures each candidate on


def budget_shortfall(comparisons, config, run) -> list[str]:
    """A warning when the result misses the accuracy budget on the whole held-out set (the search looks at its first batches)."""
    if config.accuracy_budget is None:
        return []
    score = worst_score(comparisons, config.accuracy_metric)
    if score >= config.accuracy_budget:
        return []
    return [f"accuracy budget {config.accuracy_budget} missed on {run.eval_label}: worst output {config.accuracy_metric} {score:.6f} "
            f"(the search measured the first {min(SENSITIVITY_BATCHES, len(run.eval_batches))} batch(es))"]
