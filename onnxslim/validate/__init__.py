"""Compare a candidate model with its reference: accuracy per output, latency, placement."""

from onnxslim.measure import OutputComparison
from onnxslim.validate.compare import Gates, ValidationReport, validate

__all__ = ["Gates", "OutputComparison", "ValidationReport", "validate"]
