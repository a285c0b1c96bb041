"""Quantization settings shared by the Python API and the CLI."""

from __future__ import annotations

from dataclasses import dataclass

from onnxslim.errors import UsageError
from onnxslim.quant.ranges import METHODS

TARGETS = ("cpu", "cuda", "tensorrt")
IF_SLOWER = ("keep-fp32", "keep-int8", "fail")


@dataclass(frozen=True)
class QuantConfig:
    """How to quantize.

    target: 'cpu' emits the layout onnxruntime's CPU provider fuses into integer
        kernels (UINT8 asymmetric activations, INT8 per-channel weights, Relu
        folded into the quantizer); 'cuda'/'tensorrt' emit INT8 symmetric
        activations with Q/DQ on the inputs of weighted ops.
    method: calibration range method (percentile, minmax, moving-minmax: the
        moving average of per-batch extremes, entropy (KL), mse).
    op_types: only these op types are quantized (empty: every supported one).
    exclude_nodes / exclude_op_types: kept in float.
    quantize_output_layers: quantize the layers whose results reach a graph
        output through single-input ops only (a final classifier); kept in
        float by default, since their rounding errors flip close decisions.
    accuracy_budget: minimum cosine similarity per output on held-out data;
        the most sensitive layers are kept in float until it holds.
    if_slower: what to write when INT8 is not faster than FP32.
    """

    target: str = "cpu"
    method: str = "percentile"
    percentile: float = 99.999
    per_channel: bool = True
    op_types: tuple[str, ...] = ()
    exclude_nodes: tuple[str, ...] = ()
    exclude_op_types: tuple[str, ...] = ()
    quantize_attention: bool = False
    quantize_output_layers: bool = False
    concat_range_ratio: float = 16.0
    accuracy_budget: float | None = None
    calibration_provider: str = "cpu"
    max_calibration_samples: int | None = None
    eval_fraction: float = 0.2
    max_eval_batches: int = 64
    threads: int = 1
    latency_runs: int = 30
    if_slower: str = "keep-fp32"
    histogram_bins: int = 2048

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise UsageError(f"unknown target '{self.target}' (choose from {', '.join(TARGETS)})")
        if self.method not in METHODS:
            raise UsageError(f"unknown calibration method '{self.method}' (choose from {', '.join(METHODS)})")
        if not 50.0 < self.percentile <= 100.0:
            raise UsageError(f"percentile {self.percentile} must be in (50, 100]")
        if self.accuracy_budget is not None and not -1.0 <= self.accuracy_budget <= 1.0:
            raise UsageError(f"accuracy budget {self.accuracy_budget} is a cosine similarity and must be in [-1, 1]")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise UsageError(f"eval fraction {self.eval_fraction} must be in [0, 1)")
        if self.if_slower not in IF_SLOWER:
            raise UsageError(f"--if-slower must be one of {', '.join(IF_SLOWER)}")

    @property
    def signed_activations(self) -> bool:
        return self.target != "cpu"

