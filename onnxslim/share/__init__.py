"""``share``: identical tensors stored once, and large weights as codebooks that onnxruntime expands when it loads the model."""

from onnxslim.share.pipeline import ShareConfig, ShareReport, TensorShare, share

__all__ = ["ShareConfig", "ShareReport", "TensorShare", "share"]
