"""Constant folding of weight-only subgraphs, through onnx-graphsurgeon.

graphsurgeon evaluates every node whose inputs are all constants with
onnxruntime and replaces it by its value (Transpose/Cast/Reshape of weights,
DequantizeLinear of stored INT8 weights, shape arithmetic on static shapes).
Folding never grows the model's weights (beyond ``GROWTH_SLACK_BYTES`` of shape
constants): an Expand or Tile of a constant, a Gather of a bias table by
constant indices, a Cast of float16 weights to float32 or a DequantizeLinear
of INT8 weights is left to run time, while the shape arithmetic around it
still folds. However small its share of a large model (LeViT's attention
biases are 4% of it), a fold that grows the file is declined.
graphsurgeon holds its own copy of every constant, so weights kept on disk
(mapped) and, in models with weights over half the protobuf limit, every
tensor of ``HIDE_BYTES`` or more take part as runtime values instead:
whatever reads them is left as it is, while the shape arithmetic around
them still folds. The result is written back in place, without copying them.
"""

from __future__ import annotations

from collections import Counter

import onnx
from onnx import helper

from onnxslim.errors import first_line
from onnxslim.ir.external import without_initializers
from onnxslim.ir.io import EXTERNAL_DATA_THRESHOLD, model_weight_bytes
from onnxslim.ir.tensors import is_mapped, nominal_bytes
from onnxslim.passes.base import DeclineCode, PassResult
from onnxslim.runtime.folding import fold_with_onnxruntime

# With weights over half the protobuf limit, tensors at least this big are kept out of folding.
HIDE_BYTES = 1 << 20
# Folding may not grow the weights by more than this (shape constants): a Gather of a bias table by constant
# indices, or a DequantizeLinear of INT8 weights, is cheaper left to run time than stored.
GROWTH_SLACK_BYTES = 4096
# When a full fold would grow the model, only results up to this size are evaluated (shape arithmetic).
SMALL_RESULT_BYTES = 4096


def fold_constants(model: onnx.ModelProto, *, max_growth_bytes: int = 128 << 20) -> PassResult:
    """Evaluate every node whose inputs are all constants and replace it by its value (see the module docstring)."""
    result = PassResult("fold-constants")
    hidden = [t for t in model.graph.initializer if is_mapped(t)]
    if model_weight_bytes(model) > EXTERNAL_DATA_THRESHOLD // 2:
        # graphsurgeon would copy every weight; big ones take part as runtime values instead, so
        # shape arithmetic still folds while whatever reads a big weight stays as it is
        hidden += [t for t in model.graph.initializer if not is_mapped(t) and t.HasField("raw_data") and nominal_bytes(t) >= HIDE_BYTES]
    work = _without(model, hidden)
    before = Counter(node.op_type for node in model.graph.node)
    size_before = model_weight_bytes(work)
    try:
        folded = fold_with_onnxruntime(work, size_threshold=max_growth_bytes)
    except Exception as exc:  # graphsurgeon wraps onnxruntime's own errors
        result.decline("model", DeclineCode.TOOL_FAILED, f"constant folding failed and was skipped: {first_line(exc, 200)}")
        return result
    if [v.name for v in folded.graph.input] != [v.name for v in work.graph.input] or [
        v.name for v in folded.graph.output
    ] != [v.name for v in model.graph.output]:
        result.decline("model", DeclineCode.INTERFACE, "folding would have changed the graph's inputs or outputs")
        return result
    limit = size_before + GROWTH_SLACK_BYTES
    grown = model_weight_bytes(folded)
    if grown > limit:
        try:
            small = fold_with_onnxruntime(work, size_threshold=SMALL_RESULT_BYTES)
        except Exception:  # the full fold worked; a smaller one failing leaves nothing to do
            small = work
        text = f"evaluating every constant expression would grow the weights from {size_before / 1e6:.2f} MB to {grown / 1e6:.2f} MB"
        if model_weight_bytes(small) > limit:
            result.decline("model", DeclineCode.WOULD_GROW, text + "; nothing folded")
            return result
        result.decline("model", DeclineCode.WOULD_GROW, text + f"; only results under {SMALL_RESULT_BYTES} bytes were folded")
        folded = small
    after = Counter(node.op_type for node in folded.graph.node)
    removed = before - after
    if not removed:
        return result
    # in place, so that the hidden weights are never copied
    names = {t.name for t in hidden}
    graph = model.graph
    del graph.node[:]
    graph.node.extend(folded.graph.node)
    del graph.value_info[:]
    graph.value_info.extend(folded.graph.value_info)
    for index in reversed(range(len(graph.initializer))):
        if graph.initializer[index].name not in names:
            del graph.initializer[index]
    graph.initializer.extend(t for t in folded.graph.initializer if t.name not in names)
    detail = ", ".join(f"{count} {op}" for op, count in sorted(removed.items()))
    result.change(f"folded {sum(removed.values())} node(s) with constant inputs: {detail}")
    return result


def _without(model: onnx.ModelProto, hidden: list[onnx.TensorProto]) -> onnx.ModelProto:
    """A copy of ``model`` in which the ``hidden`` initializers are graph inputs, assembled without copying them."""
    if not hidden:
        return model
    names = {t.name for t in hidden}
    work = without_initializers(model)
    work.graph.initializer.extend(t for t in model.graph.initializer if t.name not in names)
    listed = {v.name for v in work.graph.input}
    for tensor in hidden:
        if tensor.name not in listed:
            work.graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    return work

