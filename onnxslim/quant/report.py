"""What ``quantize`` did, in a form for the terminal table and the JSON report."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from onnxslim.measure import LatencyComparison, OutputComparison
from onnxslim.passes import PassResult
from onnxslim.quant.decisions import NodeDecision

INTEGER_KERNELS = {"QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat", "ConvInteger", "QLinearAdd", "QLinearMul",
                   "QLinearConcat", "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax"}


@dataclass
class QuantReport:
    model: str
    output: str | None
    target: str
    method: str
    calibration_batches: int = 0
    calibration_seconds: float = 0.0
    calibration_peak_rss_mb: float | None = None
    evaluation: str = ""
    evaluation_batches: int = 0
    written: str = "int8"
    prepare: list[PassResult] = field(default_factory=list)
    decisions: list[NodeDecision] = field(default_factory=list)
    kept_float_for_budget: list[dict] = field(default_factory=list)
    fidelity: list[OutputComparison] = field(default_factory=list)
    latency: LatencyComparison | None = None
    onnxruntime_kernels: dict[str, int] = field(default_factory=dict)
    fp32_bytes: int = 0
    int8_bytes: int = 0
    warnings: list[str] = field(default_factory=list)
    budget: float | None = None

    @property
    def quantized(self) -> list[NodeDecision]:
        return [d for d in self.decisions if d.quantized]

    @property
    def skipped(self) -> list[NodeDecision]:
        return [d for d in self.decisions if not d.quantized]

    @property
    def integer_kernels(self) -> dict[str, int]:
        return {op: n for op, n in self.onnxruntime_kernels.items() if op in INTEGER_KERNELS}

    def skipped_by_reason(self) -> dict[str, Counter]:
        grouped: dict[str, Counter] = {}
        for decision in self.skipped:
            grouped.setdefault(decision.reason.text, Counter())[decision.op_type] += 1
        return grouped

    def to_dict(self) -> dict:
        return {
            "command": "quantize",
            "model": self.model,
            "output": self.output,
            "written": self.written,
            "target": self.target,
            "method": self.method,
            "calibration": {"batches": self.calibration_batches, "seconds": self.calibration_seconds, "peak_rss_mb": self.calibration_peak_rss_mb},
            "evaluation": {"data": self.evaluation, "batches": self.evaluation_batches},
            "accuracy_budget": self.budget,
            "fidelity": [c.to_dict() for c in self.fidelity],
            "latency": self.latency.to_dict() if self.latency else {},
            "onnxruntime_kernels": self.onnxruntime_kernels,
            "integer_kernels": self.integer_kernels,
            "sizes": {"fp32_bytes": self.fp32_bytes, "int8_bytes": self.int8_bytes},
            "prepare": [p.to_dict() for p in self.prepare],
            "quantized_nodes": [d.to_dict() for d in self.quantized],
            "skipped_nodes": [d.to_dict() for d in self.skipped],
            "kept_float_for_budget": self.kept_float_for_budget,
            "warnings": list(self.warnings),
        }
