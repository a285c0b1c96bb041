"""What ``quantize`` did, in a form for the terminal table and the JSON report."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar

from onnxslim.measure import LatencyComparison, OutputComparison
from onnxslim.passes import PassResult
from onnxslim.quant.decisions import NodeDecision
from onnxslim.records import Record, json_field

INTEGER_KERNELS = {"QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat", "ConvInteger", "QLinearAdd", "QLinearMul",
                   "QLinearConcat", "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax",
                   "QAttention", "DynamicQuantizeLSTM"}


@dataclass
class CalibrationSummary(Record):
    """How many batches calibration read, how long it took, and the process's peak memory by then."""

    batches: int = 0
    seconds: float = 0.0
    peak_rss_mb: float | None = None


@dataclass
class EvaluationSummary(Record):
    """Which held-out data the fidelity was measured on."""

    data: str = ""
    batches: int = 0


@dataclass
class Sizes(Record):
    """Bytes of the float model and of the result, as files (external data included)."""

    fp32_bytes: int = 0
    quantized_bytes: int = 0  # the INT8 or FP16 model


@dataclass
class QuantReport(Record):
    """What ``quantize`` did: the decision for every node, calibration, fidelity, latency, sizes, what was written."""

    command: ClassVar[str] = "quantize"

    model: str
    output: str | None
    target: str
    method: str
    precision: str = "int8"
    original_precision: str = "FP32"  # FP16 for a float16 model, which quantize computes in float32 (passes/widen.py); "mixed FP16/FP32" for a float32 one with float16 weights
    # int8, fp16, fp32 (the cleaned float model, when the result was not faster), original (when that was no faster either),
    # or nothing (an accuracy budget that left nothing quantized: the report the refusal carries)
    written: str = "int8"
    calibration: CalibrationSummary = field(default_factory=CalibrationSummary)
    evaluation: EvaluationSummary = field(default_factory=EvaluationSummary)
    budget: float | None = json_field(None, key="accuracy_budget")
    accuracy_metric: str = "cosine"  # what the budget bounds: cosine, top1 or auto
    fidelity: list[OutputComparison] = field(default_factory=list)
    latency: LatencyComparison | None = None  # at --threads, the count the user deploys with
    latency_1_thread: LatencyComparison | None = None  # the same at 1 thread, when --threads is another count
    onnxruntime_kernels: dict[str, int] = field(default_factory=dict)
    sizes: Sizes = field(default_factory=Sizes)
    prepare: list[PassResult] = field(default_factory=list)
    decisions: list[NodeDecision] = json_field(omit=True, factory=list)
    kept_float_for_budget: list[dict] = field(default_factory=list)
    sensitivity: list[dict] = field(default_factory=list)  # with a budget search: every layer's score when it alone is quantized
    ranking_check: dict = field(default_factory=dict)  # the fast ranking checked against the outputs by stretches of the graph: both searches, which was taken
    weight_range: dict = field(default_factory=dict)  # INT8 weight codes used ('full' or 'reduced', see --weight-range) and why
    scalar_affine: dict = field(default_factory=dict)  # --scalar-affine auto: both forms of constant-scalar Add/Mul measured, which was written and why
    depthwise: dict = field(default_factory=dict)  # convolutions on onnxruntime's depthwise integer kernel: both forms measured, which was written and why
    conv_kernel: dict = field(default_factory=dict)  # convolutions onnxruntime could run on its integer matrix product: timed, which were offset and why
    output_layers: dict = field(default_factory=dict)  # MatMul/Gemm layers writing a graph output: both forms measured, which was written and why
    kept_float_weights: dict = field(default_factory=dict)  # the float layers' weights stored smaller (INT8, float16): measured, written or not, and why
    float16: dict = field(default_factory=dict)  # --precision fp16: where fidelity was measured, Casts inserted, weights converted
    warnings: list[str] = field(default_factory=list)

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

    def derived(self) -> dict:
        return {"integer_kernels": self.integer_kernels, "quantized_nodes": self.quantized, "skipped_nodes": self.skipped}
