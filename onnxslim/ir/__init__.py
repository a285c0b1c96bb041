"""The model layer: loading and saving (external data, weights kept on disk), shapes, counts, graph helpers.

Nothing here runs a model; onnxruntime is reached only through ``onnxslim.runtime``.
"""

from onnxslim.ir.io import load_model, model_weight_bytes, save_model

__all__ = ["load_model", "model_weight_bytes", "save_model"]
