"""Constant folding of weight-only subgraphs, through onnx-graphsurgeon.

graphsurgeon evaluates every node whose inputs are all constants with
onnxruntime and replaces it by its value (Transpose/Cast/Reshape of weights,
DequantizeLinear of stored INT8 weights, shape arithmetic on static shapes).
Folding is refused when it would grow the model by more than
``max_growth_bytes`` (an Expand or Tile of a constant can be huge) and for
in-memory weights that would not fit in one protobuf, where graphsurgeon
would need a second copy of them. Weights kept on disk (mapped) take part as
runtime values: whatever reads them is left as it is.
"""

from __future__ import annotations

from collections import Counter

import onnx
from onnx import helper

from onnxslim.ir.io import EXTERNAL_DATA_THRESHOLD, model_weight_bytes
from onnxslim.ir.tensors import external_info, is_mapped
from onnxslim.passes.base import PassResult
from onnxslim.runtime.session import quiet_onnxruntime


def fold_constants(model: onnx.ModelProto, *, max_growth_bytes: int = 128 << 20) -> PassResult:
    result = PassResult("fold-constants")
    mapped = [t for t in model.graph.initializer if is_mapped(t)]
    if model_weight_bytes(model) - _mapped_bytes(mapped) > EXTERNAL_DATA_THRESHOLD // 2:
        result.decline("model", "weights too large to fold without a second copy in memory")
        return result
    work = _mapped_as_inputs(model, mapped) if mapped else model
    import onnx_graphsurgeon as gs

    gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR  # its warnings go to stdout, which must stay clean for --json
    quiet_onnxruntime()  # graphsurgeon evaluates with onnxruntime sessions of its own
    before = Counter(node.op_type for node in model.graph.node)
    size_before = model_weight_bytes(model)
    try:
        graph = gs.import_onnx(work)
        graph.fold_constants(error_ok=True, size_threshold=max_growth_bytes, flatten_subgraphs=False, fold_shapes=False)
        graph.cleanup(remove_unused_graph_inputs=False)
        folded = gs.export_onnx(graph, do_type_check=False)
    except Exception as exc:  # graphsurgeon wraps onnxruntime's own errors
        result.decline("model", f"constant folding failed and was skipped: {str(exc).splitlines()[0][:200]}")
        return result
    if [v.name for v in folded.graph.input] != [v.name for v in work.graph.input] or [
        v.name for v in folded.graph.output
    ] != [v.name for v in model.graph.output]:
        result.decline("model", "folding would have changed the graph's inputs or outputs")
        return result
    if model_weight_bytes(folded) > size_before + max_growth_bytes:
        result.decline("model", "folding would have grown the weights beyond the limit")
        return result
    after = Counter(node.op_type for node in folded.graph.node)
    removed = before - after
    if not removed:
        return result
    if mapped:
        del folded.graph.input[len(model.graph.input):]
        folded.graph.initializer.extend(mapped)
    folded.ir_version = model.ir_version
    folded.producer_name = model.producer_name
    folded.producer_version = model.producer_version
    model.CopyFrom(folded)
    detail = ", ".join(f"{count} {op}" for op, count in sorted(removed.items()))
    result.change(f"folded {sum(removed.values())} node(s) with constant inputs: {detail}")
    return result


def _mapped_bytes(tensors) -> int:
    return sum(int(external_info(t)[2] or 0) for t in tensors)


def _mapped_as_inputs(model: onnx.ModelProto, mapped: list[onnx.TensorProto]) -> onnx.ModelProto:
    """A copy of ``model`` whose mapped weights are graph inputs instead of initializers."""
    names = {t.name for t in mapped}
    work = onnx.ModelProto()
    work.CopyFrom(model)
    kept = [t for t in work.graph.initializer if t.name not in names]
    del work.graph.initializer[:]
    work.graph.initializer.extend(kept)
    listed = {v.name for v in work.graph.input}
    for tensor in mapped:
        if tensor.name not in listed:
            work.graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    return work
