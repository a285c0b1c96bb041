"""Float weights stored in INT8 on disk and turned back into float when onnxruntime loads the model.

A weight written as INT8 codes read through a Cast to float32 and a Mul by its
scales is a constant expression: onnxruntime's constant folding computes it
once, when the session is created, and the layer then runs its float kernel
on weights within half a step of their scale of the original. (A
DequantizeLinear would say the same, but onnxruntime keeps those for its QDQ
fusions and runs them on every call.) The file holds a quarter of the bytes;
the model in memory and its speed are the float model's.

Used for layers that run in float anyway: GRU and RNN layers (no integer
kernel), and the layers the accuracy budget or the output rule keeps in float
(with the token-embedding table an output layer is tied to, one copy for both).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxslim.ir.graph import drop_unread_initializers, node_attr
from onnxslim.ir.layers import WEIGHTED_LAYERS, weight_axes
from onnxslim.ir.tensors import all_value_names, consumers_map, from_array, initializer_map, tensor_elements, to_array, unique_name
from onnxslim.quant.params import quantize_weight, weight_params

MIN_ELEMENTS = 4096  # smaller weights are not worth two nodes


def restored_at_load(graph: onnx.GraphProto, codes: np.ndarray, scales: np.ndarray, stem: str, taken: set[str]) -> tuple[list[onnx.NodeProto], str]:
    """INT8 ``codes`` and their ``scales`` (shaped to broadcast over them) added to ``graph``; the Cast and Mul that turn them
    back into float32, and their output's name."""
    name = unique_name(f"{stem}_int8", taken)
    graph.initializer.append(from_array(codes, name))
    return restored_from(name, scales, graph, stem, taken)


def restored_from(codes: str, scales: np.ndarray, graph: onnx.GraphProto, stem: str, taken: set[str]) -> tuple[list[onnx.NodeProto], str]:
    """The Cast and Mul that turn the INT8 initializer ``codes`` of ``graph`` back into float32 with ``scales`` (added to
    ``graph``, shaped to broadcast over the codes), and their output's name."""
    names = {part: unique_name(f"{stem}_{part}", taken) for part in ("scale", "as_float", "restored")}
    graph.initializer.append(from_array(scales.astype(np.float32), names["scale"]))
    nodes = [
        helper.make_node("Cast", [codes], [names["as_float"]], name=unique_name(f"{stem}_cast", taken), to=TensorProto.FLOAT),
        helper.make_node("Mul", [names["as_float"], names["scale"]], [names["restored"]], name=unique_name(f"{stem}_rescale", taken)),
    ]
    return nodes, names["restored"]


def weights_only_read_by(model: onnx.ModelProto, nodes: frozenset[str] | set[str]) -> dict[str, list[onnx.NodeProto]]:
    """The constant float32 weights of ``nodes`` (Conv, ConvTranspose, Gemm, MatMul) of at least :data:`MIN_ELEMENTS` values that
    nothing else reads (not a graph output, no node outside ``nodes``, no If/Loop body), each with the nodes that read it."""
    weights = initializer_map(model.graph)
    readers = consumers_map(model.graph)  # an If/Loop reading a weight inside its body is a reader not among ``nodes``
    outputs = {v.name for v in model.graph.output}
    chosen: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        if node.name not in nodes or node.op_type not in WEIGHTED_LAYERS or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        name = node.input[1]
        tensor = weights.get(name)
        if tensor is None or tensor.data_type != TensorProto.FLOAT or name in chosen or name in outputs:
            continue
        if int(np.prod(tensor.dims)) >= MIN_ELEMENTS and all(r.name in nodes for r in readers[name]):
            chosen[name] = readers[name]
    return chosen


def tied_tables_read_by(model: onnx.ModelProto, nodes: frozenset[str] | set[str]) -> dict[str, list[onnx.NodeProto]]:
    """Constant 2-D tables that a layer of ``nodes`` reads as its weight with the output channels on the table's rows (through a
    Transpose, or a Gemm with transB) and that are otherwise only looked up by Gathers along those rows: an output projection
    tied to the token embedding. Each with every node that reads it; its rows are the layer's output channels."""
    weights = initializer_map(model.graph)
    readers = consumers_map(model.graph)
    outputs = {v.name for v in model.graph.output}
    chosen: dict[str, list[onnx.NodeProto]] = {}
    for name, tensor in weights.items():
        users = readers.get(name, [])
        if tensor.data_type != TensorProto.FLOAT or len(tensor.dims) != 2 or int(np.prod(tensor.dims)) < MIN_ELEMENTS or name in outputs:
            continue
        layers = [u for u in users if _reads_rows_as_outputs(u, name, nodes, readers, outputs)]
        lookups = [u for u in users if u.op_type == "Gather" and u.domain in ("", "ai.onnx") and u.input[0] == name and node_attr(u, "axis", 0) == 0]
        if layers and lookups and len(layers) + len(lookups) == len(users):
            chosen[name] = users
    return chosen


MOST_BYTES = 0.9  # the share of the stored weights' bytes that the largest of them are tried alone for


def readers_of_largest_weights(model: onnx.ModelProto, nodes: frozenset[str] | set[str], share: float = MOST_BYTES) -> frozenset[str]:
    """The layers of ``nodes`` that read the fewest, largest of their storable weights (:func:`weights_only_read_by`,
    :func:`tied_tables_read_by`) holding ``share`` of those weights' values, with every other node that reads those.

    Where the weights of every layer kept in float cannot all take a smaller form (some depthwise convolutions move the
    outputs with float16 rounding alone), the few that hold most of the bytes usually can.
    """
    weights = initializer_map(model.graph)
    chosen = weights_only_read_by(model, nodes) | tied_tables_read_by(model, nodes)
    sizes = sorted(((tensor_elements(weights[name]), name) for name in chosen), reverse=True)
    total = sum(size for size, _ in sizes)
    readers: set[str] = set()
    held = 0
    for size, name in sizes:
        if held >= share * total:
            break
        held += size
        readers.update(r.name for r in chosen[name])
    return frozenset(readers)


def _reads_rows_as_outputs(user: onnx.NodeProto, name: str, nodes, readers, outputs) -> bool:
    """``user`` feeds ``name``'s rows to layers of ``nodes`` as their output channels: Gemm(transB=1), or a Transpose read only by them."""
    if user.op_type == "Gemm":
        return user.name in nodes and len(user.input) > 1 and user.input[1] == name and weight_axes(user)[1] == 0
    if user.op_type != "Transpose" or list(node_attr(user, "perm", [1, 0])) != [1, 0] or user.output[0] in outputs:
        return False
    layers = readers.get(user.output[0], [])
    return bool(layers) and all(
        r.name in nodes and r.op_type in ("MatMul", "Gemm") and len(r.input) > 1 and r.input[1] == user.output[0] and weight_axes(r)[1] == 1
        and r.input[0] != user.output[0] for r in layers
    )


def rewire_weights(model: onnx.ModelProto, chosen: Mapping[str, list[onnx.NodeProto]],
                   restore: Callable[[str, np.ndarray, set[str]], tuple[list[onnx.NodeProto], str] | None],
                   reserved: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """Give every weight of ``chosen`` (name -> the nodes that read it) its stored form: ``restore(name, values, taken)`` adds
    what it needs to ``model`` and returns the nodes that turn it back into float32 and their output's name (None: the
    weight stays as it is). Those nodes go first in the graph, the readers read their output, the float32 copies go;
    returns the readers changed."""
    weights = initializer_map(model.graph)
    taken = all_value_names(model.graph) | {n.name for n in model.graph.node} | set(reserved)
    added, changed = [], []
    for name, users in chosen.items():
        made = restore(name, to_array(weights[name]).astype(np.float32), taken)
        if made is None:
            continue
        nodes, restored = made
        added.extend(nodes)
        for user in users:
            user.input[:] = [restored if i == name else i for i in user.input]
            changed.append(user.name)
    if added:
        nodes_now = list(model.graph.node)
        del model.graph.node[:]
        model.graph.node.extend(added + nodes_now)
        drop_unread_initializers(model.graph, set(chosen))
    return changed


def store_weights_in_int8(model: onnx.ModelProto, nodes: frozenset[str] | set[str], *, reserved: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """Store (in place) the float32 weight of each of ``nodes`` as INT8 with a scale per output channel (full range: nothing
    computes in integers), restored at load (see :func:`weights_only_read_by` for which); returns the nodes changed."""
    weights = initializer_map(model.graph)
    axes = {}
    for name, users in weights_only_read_by(model, nodes).items():
        rank = len(weights[name].dims)
        found = {weight_axes(user, rank)[1] for user in users}
        if rank >= 2 and len(found) == 1:
            axes[name] = (found.pop(), users)
    axes |= {name: (0, users) for name, users in tied_tables_read_by(model, nodes).items()}  # a scale per row: per output channel

    def restore(name: str, values: np.ndarray, taken: set[str]):
        if not np.isfinite(values).all():
            return None
        axis = axes[name][0]
        scales = weight_params(values, axis)
        shape = [1] * values.ndim
        shape[axis] = -1
        return restored_at_load(model.graph, quantize_weight(values, scales, axis), scales.reshape(shape), name, taken)

    return layers_behind_transposes(model, rewire_weights(model, {name: users for name, (_, users) in axes.items()}, restore, reserved))


def layers_behind_transposes(model: onnx.ModelProto, changed: list[str]) -> list[str]:
    """``changed`` with each Transpose replaced by the layers that read it: what a report names for a tied table's new form."""
    by_name = {n.name: n for n in model.graph.node}
    readers = consumers_map(model.graph)
    named: list[str] = []
    for name in changed:
        node = by_name.get(name)
        named.extend([r.name for r in readers.get(node.output[0], [])] if node is not None and node.op_type == "Transpose" else [name])
    return list(dict.fromkeys(named))
