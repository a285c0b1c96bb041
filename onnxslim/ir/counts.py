"""What a model costs: parameters and multiply-accumulates of its weighted ops."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

import numpy as np
import onnx
from onnx import external_data_helper

from onnxslim.ir.graph import MS_DOMAIN
from onnxslim.ir.layers import RECURRENT_LAYERS
from onnxslim.ir.tensors import tensor_elements

# onnxruntime's fused attention (com.microsoft Attention, QAttention) holds its query/key/value projection
RECURRENT_OPS = (*RECURRENT_LAYERS, "DynamicQuantizeLSTM")
MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum", "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger", "Attention", "QAttention", *RECURRENT_OPS)


def count_parameters(model: onnx.ModelProto) -> int:
    """Elements of floating-point weights: initializers and Constant node values."""
    total = 0
    for tensor in external_data_helper._get_all_tensors(model):
        if tensor.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16, onnx.TensorProto.INT8, onnx.TensorProto.UINT8):
            total += tensor_elements(tensor)
    return total


def weight_types(graph: onnx.GraphProto) -> Counter:
    """ONNX element type -> values of ``graph``'s weights of that type: its initializers and Constant node values of two
    or more dimensions (the matrices and kernels, not the scalars and vectors beside them)."""
    constants = [a.t for n in graph.node if n.op_type == "Constant" and n.domain in ("", "ai.onnx") for a in n.attribute if a.name == "value"]
    counts: Counter = Counter()
    for tensor in [*graph.initializer, *constants]:
        if len(tensor.dims) >= 2:
            counts[tensor.data_type] += tensor_elements(tensor)
    return counts


def _static(shape) -> bool:
    return shape is not None and all(isinstance(d, int) and d > 0 for d in shape)


def node_macs(node: onnx.NodeProto, shapes: Mapping[str, tuple]) -> int | None:
    """Multiply-accumulates of one weighted node, or None when its shapes are unknown."""
    op = node.op_type
    get = shapes.get
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        weight_index = 3 if op == "QLinearConv" else 1
        out, weight = get(node.output[0]), get(node.input[weight_index])
        if not (_static(out) and _static(weight)):
            return None
        return int(np.prod(out, dtype=np.int64) * np.prod(weight[1:], dtype=np.int64))
    if op == "ConvTranspose":
        inp, weight = get(node.input[0]), get(node.input[1])
        if not (_static(inp) and _static(weight)):
            return None
        return int(np.prod(inp, dtype=np.int64) * np.prod(weight[1:], dtype=np.int64))
    if op in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul"):
        out, a = get(node.output[0]), get(node.input[0])
        if not (_static(out) and _static(a)) or len(a) == 0:
            return None
        if op == "Gemm":
            trans_a = any(attr.name == "transA" and attr.i for attr in node.attribute)
            k = a[0] if trans_a else a[1]
        else:
            k = a[-1]
        return int(np.prod(out, dtype=np.int64) * k)
    if op == "Einsum":
        return _einsum_macs(node, [get(name) for name in node.input])
    if op in RECURRENT_OPS:
        # every step multiplies its input by W and the previous hidden state by R, each gate of each direction
        # (DynamicQuantizeLSTM holds W and R transposed: the same elements)
        inp, w, r = get(node.input[0]), get(node.input[1]), get(node.input[2])
        if not (_static(inp) and _static(w) and _static(r)) or len(inp) != 3:
            return None
        batch_first = any(attr.name == "layout" and attr.i == 1 for attr in node.attribute)
        steps, batch = (inp[1], inp[0]) if batch_first else (inp[0], inp[1])
        return int(steps * batch * (np.prod(w, dtype=np.int64) + np.prod(r, dtype=np.int64)))
    if op in ("Attention", "QAttention") and node.domain == MS_DOMAIN:
        # the (B, S, D) x (D, 3D) projection, then scores and context: 2 S^2 D per sequence
        inp, weight = get(node.input[0]), get(node.input[1])
        if not (_static(inp) and _static(weight)) or len(inp) != 3 or len(weight) != 2:
            return None
        batch, length, width = inp
        return int(batch * length * width * weight[1] + 2 * batch * length * length * (weight[1] // 3))
    return 0


def count_macs(model: onnx.ModelProto, shapes: Mapping[str, tuple]) -> tuple[int, dict[str, int], list[str]]:
    """Total multiply-accumulates, the same per op type, and the weighted nodes whose shapes are unknown."""
    total = 0
    by_op: Counter = Counter()
    unknown: list[str] = []
    for node in model.graph.node:
        if node.op_type not in MAC_OPS:
            continue
        macs = node_macs(node, shapes)
        if macs is None:
            unknown.append(node.name or node.output[0])
            continue
        total += macs
        by_op[node.op_type] += macs
    return total, dict(by_op), unknown


def work_shares(model: onnx.ModelProto, nodes: Iterable[str], shapes: Mapping[str, tuple], per_element: float = 0.0) -> dict[str, float]:
    """Each of ``nodes`` (names of ``model``'s main graph) -> its share of the model's multiply-accumulates at ``shapes``.

    Nodes whose shapes are unknown are left out (the total counts only the known ones); nodes without
    multiply-accumulates (an Add, a pooling) get 0; with no work known at all, the result is empty.
    ``per_element``: each value of the tensors a node reads and writes (its constants aside) also counts as this many
    multiply-accumulates, over the same total: what converting them to and from float costs where the node alone is float.
    """
    total, _, _ = count_macs(model, shapes)
    if total <= 0:
        return {}
    wanted = set(nodes)
    constants = {init.name for init in model.graph.initializer}
    shares = {}
    for node in model.graph.node:
        if node.name not in wanted or (macs := node_macs(node, shapes)) is None:
            continue
        if per_element:
            macs += per_element * sum(int(np.prod(shapes[name])) for name in (*node.input, *node.output)
                                      if name and name not in constants and _static(shapes.get(name)))
        shares[node.name] = macs / total
    return shares


def _einsum_macs(node: onnx.NodeProto, shapes: list) -> int | None:
    """A product of several operands multiplies once for every combination of its indices: the product of all their
    sizes (an ellipsis counts its broadcast dims). One operand (a transpose, a sum) multiplies nothing."""
    equation = next((attr.s.decode() for attr in node.attribute if attr.name == "equation"), None)
    if equation is None or not all(_static(shape) for shape in shapes):
        return None
    terms = equation.replace(" ", "").split("->")[0].split(",")
    if len(terms) != len(shapes):
        return None
    if len(terms) < 2:
        return 0
    sizes: dict[str, int] = {}
    ellipsis: list[int] = []
    for term, shape in zip(terms, shapes):
        letters = term.replace("...", "")
        extra = len(shape) - len(letters)
        if extra < 0 or (extra and "..." not in term):
            return None
        dims = list(shape)
        if "..." in term:
            at = term.index("...")
            try:
                ellipsis = list(np.broadcast_shapes(tuple(ellipsis), tuple(dims[at : at + extra])))
            except ValueError:  # ellipsis dims that do not broadcast: not an equation onnxruntime runs
                return None
            del dims[at : at + extra]
        for letter, size in zip(letters, dims):
            sizes[letter] = max(sizes.get(letter, 1), size)
    return int(np.prod(list(sizes.values()) + ellipsis, dtype=np.int64))
