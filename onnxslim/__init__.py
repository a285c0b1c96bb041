"""onnxslim: post-training structured pruning, INT8/FP16/weight-only quantization, weight sharing and distillation of ONNX models.

The Python API mirrors the command line::

    import onnxslim
    summary = onnxslim.inspect("model.onnx")
    model, report = onnxslim.quantize("model.onnx", "calib/", output="model.int8.onnx")
    report = onnxslim.validate("model.onnx", "model.int8.onnx", "data/")
    model, report = onnxslim.compress("model.onnx", "calib/", output="model.small.onnx")
    model, report = onnxslim.distill("pruned.onnx", "model.onnx", "data/", output="distilled.onnx")  # the distill extra
"""

__version__ = "0.1.0"

from onnxslim.compress import CompressConfig, compress  # noqa: E402
from onnxslim.distill import DistillConfig, distill  # noqa: E402
from onnxslim.errors import OnnxSlimError  # noqa: E402
from onnxslim.ir.io import load_model, save_model  # noqa: E402
from onnxslim.optimize import optimize  # noqa: E402
from onnxslim.prune import PruneConfig, prune  # noqa: E402
from onnxslim.quant import QuantConfig, quantize  # noqa: E402
from onnxslim.share import ShareConfig, share  # noqa: E402
from onnxslim.summary import inspect  # noqa: E402
from onnxslim.validate import Gates, validate  # noqa: E402

__all__ = [
    "CompressConfig",
    "DistillConfig",
    "OnnxSlimError",
    "Gates",
    "PruneConfig",
    "QuantConfig",
    "ShareConfig",
    "compress",
    "distill",
    "inspect",
    "load_model",
    "optimize",
    "prune",
    "quantize",
    "save_model",
    "share",
    "validate",
    "__version__",
]
