"""Whether a model is already quantized: onnxslim compresses float models, and says so rather than failing later."""

from __future__ import annotations

from collections import Counter

import onnx

from onnxslim.errors import NothingToDoError, UnsupportedModelError
from onnxslim.ir.scopes import all_nodes

# QDQ pairs, onnxruntime's integer operators, and weights stored in blocks of a few bits
QUANTIZED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "QGemm", "QAttention",
    "QEmbedLayerNormalization", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM", "MatMulIntegerToFloat", "MatMulNBits", "GatherBlockQuantized",
})


def is_quantized_op(op_type: str) -> bool:
    return op_type in QUANTIZED_OPS or op_type.startswith(("QLinear", "QOrdered"))


def quantized_ops(model: onnx.ModelProto) -> Counter:
    """How many nodes of each quantized op type ``model`` holds, If/Loop/Scan bodies included."""
    return Counter(n.op_type for n in all_nodes(model.graph) if is_quantized_op(n.op_type))


def refuse_quantized(model: onnx.ModelProto, label: str, command: str) -> None:
    """Raise NothingToDoError naming what makes ``model`` quantized; ``command`` is what the user should run on the float original."""
    found = quantized_ops(model)
    if found:
        detail = ", ".join(f"{op} {n}" for op, n in found.most_common(3))
        raise NothingToDoError(f"{label}: the model is already quantized ({detail}); {command} its float original")


BLOCKED_LAYOUT_DOMAIN = "com.microsoft.nchwc"  # onnxruntime's CPU blocked layout: written by its 'all' optimization level


def refuse_blocked_layout(model: onnx.ModelProto, label: str, command: str) -> None:
    """Raise UnsupportedModelError for a model saved from an onnxruntime session with its blocked-layout (NCHWc) operators.

    Their weights are reordered into this CPU's block size and their tensors live in that layout
    between ReorderInput and ReorderOutput nodes: no rule of a command reads them, and onnxruntime
    itself says such a file only runs on the machine that wrote it.
    """
    found = Counter(n.op_type for n in all_nodes(model.graph) if n.domain == BLOCKED_LAYOUT_DOMAIN)
    if found:
        detail = ", ".join(f"{op} {n}" for op, n in found.most_common(3))
        raise UnsupportedModelError(
            f"{label}: the model holds onnxruntime's blocked-layout operators ({BLOCKED_LAYOUT_DOMAIN}: {detail}), written when a session "
            f"at its 'all' optimization level saved it for one CPU; {command} the model as exported, or as saved at the 'extended' level"
        )
