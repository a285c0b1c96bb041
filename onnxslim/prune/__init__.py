"""Structured pruning of ONNX graphs: coupled channel groups, importance, slicing, recovery."""

from onnxslim.prune.structured import PruneConfig, PruneReport, prune

__all__ = ["PruneConfig", "PruneReport", "prune"]
