"""Compare a candidate model with its reference: accuracy per output, latency, placement."""

from onnxslim.validate.compare import Gates, ValidationReport, validate
from onnxslim.validate.metrics import OutputComparison

__all__ = ["Gates", "OutputComparison", "ValidationReport", "validate"]
