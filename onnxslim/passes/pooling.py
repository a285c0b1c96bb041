"""Write a mean over every spatial axis as GlobalAveragePool.

torch's dynamo exporter writes ``adaptive_avg_pool2d(x, 1)`` and ``x.mean((2, 3))``
(the pooling of every squeeze-and-excitation block, and of the classifier head) as
ReduceMean over axes 2.. of an (N, C, spatial...) tensor, where the older exporter
wrote GlobalAveragePool. The two compute the same numbers, but onnxruntime has an
integer kernel (QLinearGlobalAveragePool) and a blocked-layout one for the latter
only, so a quantized ReduceMean stays float and breaks the integer chain around it.

    ReduceMean(x, axes=[2, ..., r-1], keepdims=1)  ->  GlobalAveragePool(x)
    ReduceMean(x, axes=[2, ..., r-1], keepdims=0)  ->  Flatten(GlobalAveragePool(x), axis=1)        (r = 4 or 5)
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from onnxslim.ir.graph import node_attr, replace_nodes
from onnxslim.ir.shapes import shapes_and_types
from onnxslim.ir.tensors import all_value_names, unique_name
from onnxslim.passes.base import DeclineCode, PassResult
from onnxslim.passes.matching import GraphIndex

POOLABLE = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}


def _axes(node: onnx.NodeProto, index: GraphIndex) -> list[int] | None:
    """The reduced axes as written (attribute before opset 18, constant input after), or None when not known."""
    if len(node.input) > 1 and node.input[1]:
        values = index.array(node.input[1])
        return None if values is None else [int(v) for v in values.reshape(-1)]
    axes = node_attr(node, "axes")
    return None if axes is None else [int(a) for a in axes]


def reduce_mean_to_global_pool(model: onnx.ModelProto) -> PassResult:
    """Replace each ReduceMean over all spatial axes of an (N, C, H, W) or (N, C, D, H, W) float tensor by GlobalAveragePool."""
    result = PassResult("reduce-mean-to-global-pool")
    graph = model.graph
    index = GraphIndex(graph)
    # two or more reduced axes, none of them batch or channels: a mean over tokens or features (LayerNorm's) never qualifies
    candidates = [
        (node, axes) for node in graph.node
        if node.op_type == "ReduceMean" and node.domain in ("", "ai.onnx")
        and (axes := _axes(node, index)) is not None and len(axes) >= 2 and not {0, 1} & set(axes)
    ]
    if not candidates:
        return result
    shapes, types = shapes_and_types(model)
    taken = all_value_names(graph)
    replacements: dict[int, list[onnx.NodeProto]] = {}
    for node, axes in candidates:
        where = node.name or node.output[0]
        rank = len(shapes[node.input[0]]) if node.input[0] in shapes else None
        if rank is None:
            result.decline(where, DeclineCode.DYNAMIC, "input rank unknown")
            continue
        if rank < 4 or sorted(a % rank for a in axes) != list(range(2, rank)):
            continue  # not every spatial axis of an image or volume
        if types.get(node.input[0], TensorProto.FLOAT) not in POOLABLE:
            result.decline(where, DeclineCode.UNSUPPORTED_TYPE, "GlobalAveragePool takes float types only")
            continue
        keepdims = int(node_attr(node, "keepdims", 1))
        if keepdims:
            replacements[id(node)] = [helper.make_node("GlobalAveragePool", [node.input[0]], [node.output[0]], name=f"{where}_global_pool")]
            continue
        pooled = unique_name(f"{node.output[0]}_pooled", taken)
        replacements[id(node)] = [
            helper.make_node("GlobalAveragePool", [node.input[0]], [pooled], name=f"{where}_global_pool"),
            helper.make_node("Flatten", [pooled], [node.output[0]], name=f"{where}_flatten", axis=1),
        ]
    if replacements:
        replace_nodes(graph, replacements)
        result.change(f"wrote {len(replacements)} ReduceMean(s) over every spatial axis as GlobalAveragePool")
    return result
