"""Quantization settings shared by the Python API and the CLI."""

from __future__ import annotations

from dataclasses import dataclass

from onnxslim.errors import UsageError
from onnxslim.measure.fidelity import SCORES
from onnxslim.options import check_settings, setting
from onnxslim.quant.ranges import METHODS

RANKINGS = ("fast", "measured")  # how the accuracy budget ranks layers: by the noise each adds in one pass, or each measured alone

TARGETS = ("cpu", "cuda", "tensorrt")
IF_SLOWER = ("keep-fp32", "write", "keep-int8", "fail")  # keep-int8: the older name of write
PRECISIONS = ("int8", "fp16")
SCALAR_AFFINE = ("auto", "int8", "float")  # auto: the pipeline builds both forms and measures; the planner itself plans 'auto' as 'float'


def weight_range_setting():
    """``--weight-range``, one definition for quantize and compress."""
    return setting(
        "auto", "INT8 weight codes: full = [-127, 127]; reduced = [-64, 64], for x86 CPUs without VNNI, whose UINT8 x INT8 kernels add pairs of products "
        "in 16 bits and would saturate (depthwise layers keep the full range); auto = reduced where this machine's onnxruntime is seen to saturate.",
        choices=("auto", "full", "reduced"),
    )


def scalar_affine_setting():
    """``--scalar-affine``, one definition for quantize and compress."""
    return setting(
        "auto", "Add/Mul of a quantized tensor and a constant scalar between quantized layers (a learnable scale or bias after an activation): "
        "int8 = integer (a positive scale and its shift read from the codes of the tensor before them, or QLinearAdd/QLinearMul "
        "with the scalar exact); float = kept float; auto = both forms built and measured, "
        "the integer one kept only when it is as faithful and faster at --threads (or within 3% there and faster at 1 thread), "
        "and not slower at 1 thread.",
        choices=SCALAR_AFFINE,
    )


DEPTHWISE = ("auto", "int8", "float")
CONV_KERNELS = ("auto", "symmetric", "gemm")
OUTPUT_LAYERS = ("auto", "int8", "float")


def depthwise_setting():
    """``--depthwise``, one definition for quantize and compress."""
    return setting(
        "auto", "Convolutions whose every group has one input and one output channel (depthwise ones, one-channel filters), which onnxruntime "
        "runs on its depthwise integer kernel: int8 = integer; float = kept float (a dequantize before, a quantize after each); auto = both "
        "forms built and measured, the float one kept only when the model is faster with it at --threads (or within 3% there and faster at "
        "1 thread), not slower at 1 thread, and as faithful. Measure where you deploy: the integer kernel's speed depends on the CPU.",
        choices=DEPTHWISE,
    )


def conv_kernel_setting():
    """``--conv-kernel``, one definition for quantize and compress."""
    return setting(
        "auto", "Which onnxruntime integer kernel runs each quantized convolution (target cpu): symmetric = its symmetric convolution "
        "kernels (INT8 weights with zero points of 0); gemm = its integer matrix product (the same weights stored with a zero point of -1: "
        "the same values and results; it uses AMX where the CPU has it); auto = each layer timed alone in both forms at its input's size, "
        "those faster on the matrix product offset, kept only when the model is faster with them at --threads (or within 3% there and "
        "faster at 1 thread), not slower at 1 thread, and its outputs unchanged. Nothing is offset where weights use the reduced range.",
        choices=CONV_KERNELS,
    )


def output_layers_setting():
    """``--output-layers``, one definition for quantize and compress."""
    return setting(
        "auto", "Layers whose result reaches a graph output through single-input ops only (a final classifier): float = kept float (their "
        "rounding is not averaged by any later layer); int8 = quantized; auto = MatMul/Gemm ones (whose integer kernels write float results) "
        "built quantized too and kept so only when as faithful, within the accuracy budget, and faster at --threads (or within 3% there and "
        "faster at 1 thread) and not slower at 1 thread; convolutions stay float. With --weights-only, int8 gives them its bits, "
        "auto and float 8-bit blocks.",
        choices=OUTPUT_LAYERS,
    )


def smooth_setting():
    """``--smooth``, one definition for quantize and compress."""
    return setting(
        "outliers", "Move outlier input channels of MatMul layers into their weights before static INT8 (x @ W == (x / s) @ (s * W)): "
        "outliers = only the few channels that set an input's range, brought down to the next one's size, where that narrows the range at "
        "least 2x (elsewhere nothing changes); ALPHA = every channel, divided by max|x_j|^ALPHA / max|W_j|^(1-ALPHA) (SmoothQuant); "
        "'none': off. The division is folded into a LayerNorm only these layers read, a Mul before them otherwise; with outliers, "
        "those Muls are left out where the accuracy budget holds as firmly without them.",
        choices=("outliers",), low=0.0, high=1.0, low_open=True, metavar="outliers|ALPHA|none",
    )


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
    output_layers: the layers whose results reach a graph output through
        single-input ops only (a final classifier): 'float' keeps them (their
        rounding errors flip close decisions), 'int8' quantizes them, 'auto'
        quantizes MatMul/Gemm ones where measured as faithful and faster.
    accuracy_budget: minimum score per output on held-out data (cosine
        similarity, or top-1 agreement: ``accuracy_metric``); the layers that
        cost the most accuracy per share of the model's multiply-adds are kept
        in float until it holds (None: no search).
    sensitivity: how layers are ranked for the budget ('fast': one pass
        of per-tensor noise; 'measured': each layer alone), before that
        damage is divided by each layer's share of the work.
    precision: 'int8' (static QDQ) or 'fp16' (float16 with float32 islands, for GPUs).
    if_slower: what to write when the result is not faster than FP32.
    """

    precision: str = setting(
        "int8", "int8: static INT8 (QDQ) with calibration; fp16: float16 with float32 islands where ranges or the accuracy budget need them (for GPUs).",
        choices=PRECISIONS,
    )
    weights_only: str | None = setting(
        None, "Store MatMul/Gemm weights and Gather tables in 4 or 8 bits (block-wise; activations stay float): "
        "error-compensated rounding with --data, round-to-nearest with a clipping search without.", choices=("int4", "int8"),
    )
    block_size: int = setting(32, "Values per scale along the input axis, for --weights-only (a power of two).", low=16, high=256)
    symmetric: bool = setting(False, "Symmetric blocks (no zero points) for --weights-only.", option="--symmetric/--asymmetric")
    accuracy_level: int = setting(
        4, "onnxruntime's MatMulNBits accuracy_level for --weights-only: 4 computes in INT8 (fastest on CPUs with VNNI/AMX), 0 in the activations' type.", low=0, high=4
    )
    target: str = setting("cpu", "Layout to emit: cpu = what onnxruntime's CPU provider fuses (UINT8 activations); cuda/tensorrt = INT8 symmetric Q/DQ on weighted-op inputs.", choices=TARGETS)
    method: str = setting("percentile", "Calibration range method.", choices=METHODS)
    percentile: float = setting(99.999, "Percentile for --method percentile.", low=50.0, high=100.0, low_open=True)
    per_channel: bool = True
    weight_range: str = weight_range_setting()
    op_types: tuple[str, ...] = setting((), "Quantize only these op types.")
    exclude_nodes: tuple[str, ...] = setting((), "Keep these nodes (by name) in float.")
    exclude_op_types: tuple[str, ...] = setting((), "Keep these op types in float.")
    quantize_attention: bool = setting(False, "Also quantize MatMuls of two activations (attention scores).")
    output_layers: str = output_layers_setting()
    embeddings: str = setting(
        "int8", "Lookup tables of Gathers (token embeddings) of at least 65,536 values: stored INT8 with a scale per row, or kept float.", choices=("int8", "float")
    )
    recurrent: str = setting(
        "int8", "Recurrent layers: LSTM weights stored INT8 per gate row as onnxruntime's DynamicQuantizeLSTM (inputs quantized per step at run time); "
        "GRU, RNN and batch-first LSTM weights stored INT8 per gate row and turned back into float when the model loads (a smaller file, float speed); "
        "or kept float.",
        choices=("int8", "float"),
    )
    scalar_affine: str = scalar_affine_setting()
    depthwise: str = depthwise_setting()
    conv_kernel: str = conv_kernel_setting()
    smooth: float | str | None = smooth_setting()
    kept_float_weights: str = setting(
        "int8", "Weights of the layers kept in float (for --accuracy-budget, and output layers), stored smaller and turned back into float32 when the "
        "model loads, written only when every output still meets the budget with them (with --accuracy-budget none: when no output's score moves by "
        "more than 0.001): int8 (a quarter of the bytes, a scale per output channel, where it moves no output's score by more than 0.001; float16 "
        "elsewhere), float16 (half), or float32 (as they were).",
        choices=("int8", "float16", "float32"),
    )
    concat_range_ratio: float = 16.0
    accuracy_budget: float | None = setting(
        0.99, "Keep the most sensitive layers in float until every output's score (--accuracy-metric) on held-out data reaches this; 'none': no search.",
        low=-1.0, high=1.0, metavar="SCORE|none",
    )
    sensitivity: str = setting(
        "fast", "How --accuracy-budget ranks layers: fast = the noise each adds, from one side-by-side pass (checked against the outputs, a pass per stretch of "
        "the graph, where the layers it keeps in float hold over a quarter of the work); measured = each layer alone quantized (a pass per layer).",
        choices=RANKINGS,
    )
    accuracy_metric: str = setting(
        "cosine", "What --accuracy-budget bounds: cosine, top-1 agreement, or auto (top-1 for class scores and per-step probabilities, for integer outputs "
        "the share of equal values or a label map's mean IoU per class, cosine otherwise).",
        choices=SCORES,
    )
    calibration_provider: str = setting("cpu", "Execution provider for calibration runs.")
    max_calibration_samples: int | None = setting(None, "Calibrate on at most this many batches.", low=1, option="--max-samples")
    eval_fraction: float = setting(0.2, "Share of --data held out for the fidelity check.", low=0.0, high=0.9)
    max_eval_batches: int = setting(64, "Measure fidelity on at most this many held-out batches.", low=1)
    threads: int = 0  # onnxruntime intra-op threads to time at, the count the user deploys with (0: onnxruntime's default); 1 thread is timed too
    latency_runs: int = setting(30, "Timed runs of FP32 and INT8, interleaved; fewer (8 at least) once one is clearly faster (0: no timing).", low=0)
    if_slower: str = setting("keep-fp32", "What to write when the result is not faster than FP32 (write: the quantized model anyway).", choices=IF_SLOWER)
    histogram_bins: int = 2048

    def __post_init__(self) -> None:
        check_settings(self)
        if self.weights_only and self.precision != "int8":
            raise UsageError("--weights-only and --precision fp16 do not combine: choose one")
        if isinstance(self.smooth, (int, float)) and (self.weights_only or self.precision != "int8"):
            raise UsageError("--smooth applies to static INT8 (activations quantized); drop it for --weights-only or --precision fp16")
        if self.block_size & (self.block_size - 1):
            raise UsageError(f"--block-size must be a power of two from 16 to 256 (got {self.block_size})")

    @property
    def signed_activations(self) -> bool:
        return self.target != "cpu"

