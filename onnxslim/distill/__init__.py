"""Knowledge distillation from the ONNX files alone: the original model teaches a smaller student (needs the distill extra)."""

from onnxslim.distill.pipeline import DistillConfig, DistillReport, distill

__all__ = ["DistillConfig", "DistillReport", "distill"]
