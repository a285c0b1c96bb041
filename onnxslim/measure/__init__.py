"""Measurements of a candidate model against its reference: output fidelity and interleaved latency.

One implementation of each, used by validate, quantize and prune alike.
"""

from onnxslim.measure.fidelity import (
    SCORES,
    RememberedReference,
    add_batch,
    dominant_batches,
    evaluation_warnings,
    few_objects,
    fidelity,
    fidelity_with_head,
    output_score,
    paired_tensor_fidelity,
    tensor_fidelity,
    worst_cosine,
    worst_score,
)
from onnxslim.measure.latency import LatencyComparison, interleaved_latency, latency_ratios, summarize_latency, time_pair
from onnxslim.measure.outputs import OutputComparison, looks_like_class_scores

__all__ = [
    "SCORES", "LatencyComparison", "RememberedReference", "add_batch", "OutputComparison", "dominant_batches", "evaluation_warnings", "few_objects", "fidelity",
    "fidelity_with_head", "interleaved_latency", "latency_ratios", "looks_like_class_scores", "output_score", "paired_tensor_fidelity", "summarize_latency",
    "tensor_fidelity", "time_pair", "worst_cosine", "worst_score",
]
