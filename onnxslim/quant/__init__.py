"""Static INT8 quantization in QDQ format: plan, calibrate, insert, verify."""

from onnxslim.quant.config import QuantConfig
from onnxslim.quant.pipeline import quantize
from onnxslim.quant.report import QuantReport

__all__ = ["QuantConfig", "QuantReport", "quantize"]
