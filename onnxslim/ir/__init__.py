"""Model I/O and small graph helpers shared by every pass."""

from onnxslim.ir.io import load_model, save_model, model_weight_bytes

__all__ = ["load_model", "save_model", "model_weight_bytes"]
