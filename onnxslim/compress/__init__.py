"""``compress``: pruning and quantization under one accuracy budget, every candidate measured against the original."""

from onnxslim.compress.pipeline import CompressConfig, CompressReport, compress
from onnxslim.compress.search import Budget, Candidate, choose

__all__ = ["Budget", "Candidate", "CompressConfig", "CompressReport", "choose", "compress"]
