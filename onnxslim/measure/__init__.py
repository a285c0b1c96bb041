"""Measurements of a candidate model against its reference: output fidelity and interleaved latency.

One implementation of each, used by validate, quantize and prune alike.
"""

from onnxslim.measure.fidelity import fidelity, worst_cosine
from onnxslim.measure.latency import LatencyComparison, interleaved_latency, latency_ratio, summarize_latency, time_pair
from onnxslim.measure.outputs import OutputComparison, looks_like_class_scores

__all__ = ["LatencyComparison", "OutputComparison", "fidelity", "interleaved_latency", "latency_ratio", "looks_like_class_scores", "summarize_latency", "time_pair", "worst_cosine"]
