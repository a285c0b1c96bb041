"""Constant folding evaluated by onnxruntime, through onnx-graphsurgeon.

graphsurgeon evaluates every node whose inputs are all constants by running
it in onnxruntime sessions of its own; this is the one place that lets it, with
both libraries' logging kept off stdout and stderr.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx

from onnxslim.ir.tensors import subgraphs
from onnxslim.runtime.session import quiet_onnxruntime


def fold_with_onnxruntime(
    model: onnx.ModelProto, *, size_threshold: int, keep_unfolded: Callable[[list[str], list[str]], bool] | None = None
) -> onnx.ModelProto:
    """A copy of ``model`` with constant subexpressions evaluated and dead nodes removed; ``model`` is not changed.

    Results larger than ``size_threshold`` bytes stay unevaluated, and so does
    every node for which ``keep_unfolded(input names, output names)`` is true
    (with whatever reads it). Raises what graphsurgeon raises when evaluation fails.
    """
    import onnx_graphsurgeon as gs

    gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR  # its warnings go to stdout, which must stay clean for --json
    quiet_onnxruntime()
    if any(True for node in model.graph.node for _ in subgraphs(node)):
        # graphsurgeon names the tensors of Constant nodes inside subgraphs on the proto it imports
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        model = copy
    graph = gs.import_onnx(model)
    exclude = None
    if keep_unfolded is not None:
        def exclude(node) -> bool:
            return keep_unfolded([t.name for t in node.inputs], [t.name for t in node.outputs])
    graph.fold_constants(error_ok=True, size_threshold=size_threshold, flatten_subgraphs=False, fold_shapes=False, should_exclude_node=exclude)
    graph.cleanup(remove_unused_graph_inputs=False)
    return gs.export_onnx(graph, do_type_check=False)
