"""Constant folding of weight-only subgraphs, through onnx-graphsurgeon.

graphsurgeon evaluates every node whose inputs are all constants with
onnxruntime and replaces it by its value (Transpose/Cast/Reshape of weights,
DequantizeLinear of stored INT8 weights, shape arithmetic on static shapes).
Folding never grows the model's weights (beyond ``GROWTH_SLACK_BYTES`` of shape
constants): an Expand or Tile of a constant, a Gather of a bias table by
constant indices, a Cast of float16 weights to float32 or a DequantizeLinear
of INT8 weights is left to run time, while the shape arithmetic around it
and the constant expressions that come out no larger than what they read
(torchvision's Swin V2 zeroing a third of a bias) still fold. However small
its share of a large model (LeViT's attention biases are 4% of it), a fold
that grows the file is declined.
graphsurgeon holds its own copy of every constant, so weights kept on disk
(mapped) and, in models with weights over half the protobuf limit, every
tensor of ``HIDE_BYTES`` or more take part as runtime values instead:
whatever reads them is left as it is, while the shape arithmetic around
them still folds. The result is written back in place, without copying them.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import helper

from onnxslim.errors import first_line
from onnxslim.ir.external import without_initializers
from onnxslim.ir.io import EXTERNAL_DATA_THRESHOLD, model_weight_bytes
from onnxslim.ir.shapes import shapes_and_types
from onnxslim.ir.tensors import consumers_map, is_mapped, nominal_bytes, producer_map, subgraphs
from onnxslim.passes.base import DeclineCode, PassResult
from onnxslim.runtime.folding import fold_with_onnxruntime
from onnxslim.units import size_text

# With weights over half the protobuf limit, tensors at least this big are kept out of folding.
HIDE_BYTES = 1 << 20
# Folding may not grow the weights by more than this (shape constants): a Gather of a bias table by constant
# indices, or a DequantizeLinear of INT8 weights, is cheaper left to run time than stored.
GROWTH_SLACK_BYTES = 4096
# When a full fold would grow the model, a constant larger than the stored tensors it is computed from and than this is
# left to run time, with whatever reads it (shape arithmetic and a rewritten bias fold; a gathered table, a float16 weight
# cast to float32 or a dequantized INT8 weight does not) ...
SMALL_RESULT_BYTES_EACH = 1024
# ... and where even that grows the weights, only results up to one of these sizes are evaluated (shape arithmetic), the
# largest that keeps the weights within the slack: many results of a few KB (Swin V2's window indices) can add up.
SMALL_RESULT_BYTES = (4096, 1024, 256, 64)


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
        text = f"evaluating every constant expression would grow the weights from {size_text(size_before)} to {size_text(grown)}"
        try:
            guarded = _fold_leaving_growth_to_run_time(work, max_growth_bytes)
        except Exception:  # the full fold worked; a guarded one failing leaves the smaller ones to try
            guarded = None
        if guarded is not None and model_weight_bytes(guarded) <= limit:
            folded = guarded
            result.decline("model", DeclineCode.WOULD_GROW, text + "; results larger than what they are computed from were left to run time")
        else:
            smaller = _largest_fold_within(work, limit)
            if smaller is None:
                result.decline("model", DeclineCode.WOULD_GROW, text + "; nothing folded")
                return result
            folded, threshold = smaller
            result.decline("model", DeclineCode.WOULD_GROW, text + f"; only results under {threshold} bytes were folded")
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


def _fold_leaving_growth_to_run_time(work: onnx.ModelProto, threshold: int) -> onnx.ModelProto:
    """``work`` with its constant expressions evaluated, except those whose result would be larger than the stored
    tensors it is computed from (and than ``SMALL_RESULT_BYTES_EACH``): a table gathered or expanded into a larger one is
    left to run time, with the nodes after it. A node whose result is larger only on the way to a result that is not (zeros
    scattered into a bias of the same size) folds with it."""
    graph = work.graph
    shapes, types = shapes_and_types(work)
    stored = {t.name: nominal_bytes(t) for t in graph.initializer}
    producers, readers = producer_map(graph), consumers_map(graph)
    computed: set[str] = set()  # tensors computed from stored values alone
    for node in graph.node:
        if not any(True for _ in subgraphs(node)) and all(not name or name in stored or name in computed for name in node.input):
            computed.update(o for o in node.output if o)
    outputs = {v.name for v in graph.output}
    folds: dict[str, bool] = {}
    for node in reversed(graph.node):
        results = [o for o in node.output if o]
        if not results or results[0] not in computed or results[0] != node.output[0]:
            continue
        # a result whose size inference does not know counts as large: it folds only on the way to a known small one
        small = all((_bytes(name, shapes, types) or SMALL_RESULT_BYTES_EACH + 1) <= max(SMALL_RESULT_BYTES_EACH, _stored_bytes(name, producers, stored))
                    for name in results)
        # a larger result may fold where every reader of it folds too: it is then used up on the way, never stored
        used_up = all(name not in outputs and readers.get(name) and all(folds.get(r.output[0], False) for r in readers[name]) for name in results)
        folds[results[0]] = small or used_up  # nodes by their first result: names may be missing or repeated
    unfolded = frozenset(name for name, folded in folds.items() if not folded)
    guarded = fold_with_onnxruntime(work, size_threshold=threshold, keep_unfolded=_writes_one_of(unfolded))
    # then what inference could not size, where it turns out small (shape arithmetic after an op inference does not know)
    return fold_with_onnxruntime(guarded, size_threshold=SMALL_RESULT_BYTES_EACH)


def _writes_one_of(unfolded: frozenset[str]):
    """graphsurgeon's exclusion test: a node that writes one of the ``unfolded`` tensors stays."""
    return lambda inputs, outputs: any(o in unfolded for o in outputs)


def _bytes(name: str, shapes: dict, types: dict) -> int | None:
    shape = shapes.get(name)
    if shape is None or name not in types or not all(isinstance(d, int) and d >= 0 for d in shape):
        return None
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(types[name]).itemsize
    except (KeyError, TypeError, ValueError):
        return None
    return int(np.prod(shape, dtype=np.int64)) * itemsize


def _stored_bytes(name: str, producers: dict[str, onnx.NodeProto], stored: dict[str, int]) -> int:
    """How many stored bytes the constant expression computing ``name`` reads, each tensor counted once."""
    total, seen, pending = 0, set(), [name]
    while pending:
        tensor = pending.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        if tensor in stored:
            total += stored[tensor]
        elif tensor in producers:
            pending.extend(i for i in producers[tensor].input if i)
    return total


def _largest_fold_within(work: onnx.ModelProto, limit: int) -> tuple[onnx.ModelProto, int] | None:
    """The fold of ``work`` with the largest result-size threshold in ``SMALL_RESULT_BYTES`` whose weights stay within
    ``limit`` bytes, with that threshold; None where none does."""
    for threshold in SMALL_RESULT_BYTES:
        try:
            folded = fold_with_onnxruntime(work, size_threshold=threshold)
        except Exception:  # the full fold worked; a smaller one failing leaves nothing to do
            return None
        if model_weight_bytes(folded) <= limit:
            return folded, threshold
    return None


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

