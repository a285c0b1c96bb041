"""The accuracy budget's shared pieces: how many held-out batches a layer search measures, and the check on all of them."""

from __future__ import annotations

from onnxslim.measure import output_score, worst_score
from onnxslim.measure.outputs import RANGE_CONFIDENCE

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


def budget_uncertain(comparisons, config, run) -> list[str]:
    """A warning per output that meets the cosine budget on the held-out batches while resampling them puts its cosine below it.

    The budget is checked on a sample (by default 1 in 5 calibration batches): where another sample
    as large could well miss it, the check says less than its number suggests.
    """
    budget = config.accuracy_budget
    if budget is None:
        return []
    warnings = []
    for comparison in comparisons:
        if config.accuracy_metric != "cosine" and (comparison.top1 is not None or (config.accuracy_metric == "auto" and comparison.integer_values)):
            continue  # judged by top-1 agreement or, integer values, by their agreement: not resampled
        spread = comparison.cosine_range
        score = output_score(comparison, config.accuracy_metric)
        if spread is None or not score >= budget or spread[0] >= budget:
            continue
        warnings.append(
            f"accuracy budget {budget}: output '{comparison.name}' meets it on {run.eval_label} (cosine {score:.5f}), but resampling those "
            f"{comparison.batches} batch(es) puts it between {spread[0]:.5f} and {spread[1]:.5f} ({RANGE_CONFIDENCE:.0%} of draws): "
            "other data could miss it; --eval-data with more samples makes the check firmer"
        )
    return warnings
