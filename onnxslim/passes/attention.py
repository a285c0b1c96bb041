"""Fuse a QDQ self-attention block into onnxruntime's QAttention kernel.

After ``merge-parallel-matmuls`` a quantized transformer layer computes its query,
key and value in one INT8 MatMul and a Split, then runs attention in float as
exporters write it:

    q, k, v = Split(Add(MatMul(DQ(Q(x)), DQ(W)), bias))
    Q = Transpose(Reshape(q, [B, S, N, H]), [0, 2, 1, 3])      V likewise
    K = Transpose(Reshape(k, [B, S, N, H]), [0, 2, 3, 1])
    P = Softmax(Add(Div(MatMul(Q, K), c), mask), axis=-1)       (Div or Mul by a constant, or neither; mask optional)
    y = Reshape(Transpose(MatMul(P, V), [0, 2, 1, 3]), [B, S, D])

onnxruntime's CPU provider has one contrib kernel for all of it, com.microsoft
QAttention: the same UINT8 x INT8 products with the same scales and bias, then the
same attention per head, in one node instead of about fifteen (MiniLM at 32 tokens:
the Split, the six Reshape/Transpose nodes and the float attention nodes cost more
than the products). The weights, scales and bias are those of the merged MatMul
(its columns put in query, key, value order when the Split gives them otherwise).

The mask must be absent or a padding mask built from a 2-D tensor R of ones and
zeros the way exporters of BERT-like models write it,
``Mul(Sub(1, Cast(Unsqueeze(R, [1, 2]))), c)`` with c a large negative constant:
QAttention reads R itself (as INT32) and writes c at the masked positions, where
the unfused graph adds c (both give those positions a softmax weight of 0; only a
row with every position masked, a sequence without a single token, comes out
differently). Other masks (relative positions, causal masks, boolean masks through
Where) are left alone, as is any block whose intermediate tensors something else reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxslim.ir.graph import MS_DOMAIN, drop_unread_initializers, import_domain, node_attr
from onnxslim.ir.tensors import all_value_names, from_array, outer_references, subgraphs, unique_name
from onnxslim.passes.base import DeclineCode, PassResult
from onnxslim.passes.matching import GraphIndex
from onnxslim.passes.opset import default_opset

HEADS_FIRST = [0, 2, 1, 3]  # (B, S, N, H) -> (B, N, S, H), and back
KEYS_TRANSPOSED = [0, 2, 3, 1]  # (B, S, N, H) -> (B, N, H, S)
PADDING_MASK_LIMIT = -1000.0  # a mask constant this negative leaves masked positions a softmax weight of 0 either way
# what exporters compute a Reshape's target shape with; such nodes reading the block's tensors only feed its Reshapes
SHAPE_ARITHMETIC = ("Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Cast")
SOFTMAX_LAST_AXIS_OPSET = 13  # before it, Softmax's default axis is 1 (of the input flattened to 2-D)


@dataclass
class _Core:
    """The float attention between the Split and the output Reshape."""

    q: str
    k: str
    v: str
    heads: int
    head_size: int
    scale: float
    mask: str | None  # the tensor added to the scores
    output: str
    nodes: list[onnx.NodeProto]


@dataclass
class _Projection:
    """The merged query/key/value MatMul in QDQ form, in front of the Split."""

    quantized_input: str
    input_scale: str
    input_zero_point: str
    stored: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray
    bias: np.ndarray
    order: list[int]  # the Split output holding query, key and value
    nodes: list[onnx.NodeProto]
    replaced: list[str]  # initializers only these nodes read


class _Matcher(GraphIndex):
    def __init__(self, graph: onnx.GraphProto, opset: int):
        super().__init__(graph)
        self.declared = {v.name: v for v in (*graph.input, *graph.value_info)}
        self.softmax_default_axis = -1 if opset >= SOFTMAX_LAST_AXIS_OPSET else 1

    def rank(self, tensor: str) -> int | None:
        """The rank declared for ``tensor`` (a graph input or a value_info entry), or None."""
        value = self.declared.get(tensor)
        return len(value.type.tensor_type.shape.dim) if value is not None and value.type.tensor_type.HasField("shape") else None

    def only_reader(self, tensor: str, op: str) -> onnx.NodeProto | None:
        readers = self.readers(tensor)
        return readers[0] if len(readers) == 1 and readers[0].op_type == op and readers[0].domain in ("", "ai.onnx") else None

    def made_by(self, tensor: str, op: str) -> onnx.NodeProto | None:
        """The standard-domain ``op`` node producing ``tensor`` when only one node reads it."""
        node = self.producers.get(tensor)
        if node is None or node.op_type != op or node.domain not in ("", "ai.onnx") or not self.private(tensor):
            return None
        return node

    def shape_entry(self, shape: str, position: int, rank: int) -> int | None:
        """Entry ``position`` of a Reshape's target shape of ``rank`` entries: from a constant, or from a constant piece of a Concat."""
        values = self.array(shape)
        if values is not None:
            return int(values[position]) if values.shape == (rank,) else None
        concat = self.producers.get(shape)
        if concat is None or concat.op_type != "Concat" or len(concat.input) != rank:
            return None
        piece = self.array(concat.input[position])
        return int(piece.reshape(-1)[0]) if piece is not None and piece.size == 1 else None

    def keeps_leading_dims(self, reshape: onnx.NodeProto) -> bool:
        """Whether a Reshape to ``shape`` keeps its input's first two dimensions (batch, sequence): entries 0 (copy), a constant
        [0, -1, width] (the caller checks the width), or
        pieces of a Concat that take dimension 0 and 1 of a Shape (of the input, or of a graph input of the same batch and
        sequence: a Reshape that kept other dimensions would not have the input's element count)."""
        values = self.array(reshape.input[1])
        if values is not None:  # 0 copies the input's dimension, unless allowzero makes it a literal 0
            if values.ndim != 1 or values.size < 2 or values[0] != 0 or node_attr(reshape, "allowzero", 0):
                return False
            # [0, -1, width] (onnxruntime folds the Concat to it): the -1 is the sequence when width is the heads' (checked by the caller)
            return values[1] == 0 or (values[1] == -1 and values.size == 3 and values[2] > 0)
        concat = self.producers.get(reshape.input[1])
        if concat is None or concat.op_type != "Concat" or len(concat.input) < 2:
            return False
        for position, piece in enumerate(concat.input[:2]):
            constant = self.array(piece)
            if constant is not None:
                if constant.size != 1 or int(constant.reshape(())) != 0:
                    return False
                continue
            node = self.producers.get(piece)
            while node is not None and node.op_type in ("Unsqueeze", "Cast"):
                node = self.producers.get(node.input[0])
            if node is not None and node.op_type == "Shape":  # Shape(x, start=p, end=p + 1), as torch.export writes it
                if (node_attr(node, "start", 0), node_attr(node, "end")) != (position, position + 1):
                    return False
                continue
            if node is None or node.op_type != "Gather" or self.scalar(node.input[1]) != position:
                return False
            if (source := self.producers.get(node.input[0])) is None or source.op_type != "Shape" or node_attr(source, "start", 0) != 0:
                return False
        return True

    def split_heads(self, tensor: str, perm: list[int]) -> tuple[str, str, list[onnx.NodeProto]] | None:
        """(the (B, S, D) tensor, its Reshape's target shape, the two nodes) behind Transpose(Reshape(., [B, S, N, H]), perm)."""
        transpose = self.made_by(tensor, "Transpose")
        if transpose is None or list(node_attr(transpose, "perm", [])) != perm:
            return None
        reshape = self.made_by(transpose.input[0], "Reshape")
        if reshape is None or not self.keeps_leading_dims(reshape):
            return None
        return reshape.input[0], reshape.input[1], [reshape, transpose]

    def scores(self, tensor: str) -> tuple[onnx.NodeProto, float, list[onnx.NodeProto]] | None:
        """(the MatMul of queries and keys, the scale, the nodes) behind ``tensor`` = MatMul, Div(MatMul, c) or Mul(MatMul, c)."""
        scale, nodes = 1.0, []
        scaled = self.made_by(tensor, "Div") or self.made_by(tensor, "Mul")
        if scaled is not None:
            positions = (1,) if scaled.op_type == "Div" else (1, 0)
            constant, tensor = next(((self.scalar(scaled.input[i]), scaled.input[1 - i]) for i in positions
                                     if self.scalar(scaled.input[i]) is not None), (None, None))
            if constant is None or constant == 0.0:
                return None
            scale = 1.0 / constant if scaled.op_type == "Div" else constant
            nodes.append(scaled)
        product = self.made_by(tensor, "MatMul")
        return None if product is None else (product, scale, [*nodes, product])

    def core(self, softmax: onnx.NodeProto) -> _Core | None:
        if node_attr(softmax, "axis", self.softmax_default_axis) not in (-1, 3) or softmax.domain not in ("", "ai.onnx"):
            return None
        nodes, mask = [softmax], None
        found = self.scores(softmax.input[0])
        add = self.made_by(softmax.input[0], "Add")
        if found is None and add is not None:
            nodes.append(add)
            for first in (0, 1):
                if (found := self.scores(add.input[first])) is not None:
                    mask = add.input[1 - first]
                    break
        if found is None:
            return None
        product, scale, scoring = found
        nodes += scoring
        query, key = self.split_heads(product.input[0], HEADS_FIRST), self.split_heads(product.input[1], KEYS_TRANSPOSED)
        weighted = self.only_reader(softmax.output[0], "MatMul")
        if query is None or key is None or weighted is None or weighted.input[0] != softmax.output[0]:
            return None
        value = self.split_heads(weighted.input[1], HEADS_FIRST)
        merged = self.only_reader(weighted.output[0], "Transpose")
        if value is None or merged is None or list(node_attr(merged, "perm", [])) != HEADS_FIRST:
            return None
        joined = self.only_reader(merged.output[0], "Reshape")
        if joined is None or not self.keeps_leading_dims(joined):
            return None
        heads, head_size = self.shape_entry(query[1], 2, 4), self.shape_entry(query[1], 3, 4)
        if heads is None or head_size is None or heads <= 0 or head_size <= 0:
            return None
        for other in (key[1], value[1]):
            if (self.shape_entry(other, 2, 4), self.shape_entry(other, 3, 4)) != (heads, head_size):
                return None
        if self.shape_entry(joined.input[1], 2, 3) not in (heads * head_size, -1):
            return None
        nodes += query[2] + key[2] + value[2] + [weighted, merged, joined]
        return _Core(query[0], key[0], value[0], heads, head_size, scale, mask, joined.output[0], nodes)

    def absorbed(self, nodes: list[onnx.NodeProto], kept: str) -> list[onnx.NodeProto] | str:
        """The shape arithmetic that reads what ``nodes`` compute (Shape of q, k, v for their Reshapes), which goes with them;
        or the first tensor of theirs that something else reads (``kept``: the block's result, which stays)."""
        inside = {id(n) for n in nodes}
        vanishing = [o for n in nodes for o in n.output if o and o != kept]
        extra: list[onnx.NodeProto] = []
        while vanishing:
            tensor = vanishing.pop()
            if tensor in self.outputs:
                return tensor
            for reader in self.consumers.get(tensor, []):
                if id(reader) in inside:
                    continue
                if reader.op_type not in SHAPE_ARITHMETIC or reader.domain not in ("", "ai.onnx"):
                    return tensor
                inside.add(id(reader))
                extra.append(reader)
                vanishing.extend(o for o in reader.output if o)
        return extra

    def padding_mask(self, mask: str) -> tuple[str, float, list[onnx.NodeProto]] | tuple[DeclineCode, str]:
        """(R, the masked value c, the nodes that build the mask from R) for Mul(Sub(1, Cast(Unsqueeze(R, [1, 2]))), c)."""
        unsupported = DeclineCode.UNSUPPORTED_FORM, f"mask {mask} is not a padding mask (1 - R) * c of a 2-D R"
        scaled = self.producers.get(mask)
        if scaled is None or scaled.op_type != "Mul":
            return unsupported
        for position in (0, 1):
            filler = self.scalar(scaled.input[position])
            if filler is not None:
                complement = self.producers.get(scaled.input[1 - position])
                break
        else:
            return unsupported
        if filler > PADDING_MASK_LIMIT or complement is None or complement.op_type != "Sub" or self.scalar(complement.input[0]) != 1.0:
            return unsupported
        nodes, tensor, inserted = [scaled, complement], complement.input[1], []
        while (node := self.producers.get(tensor)) is not None and node.op_type in ("Cast", "Unsqueeze"):
            if node.op_type == "Unsqueeze":
                axes = node_attr(node, "axes") if len(node.input) == 1 else self.array(node.input[1])
                if axes is None:
                    return unsupported
                inserted.extend(int(a) for a in np.asarray(axes).reshape(-1))
            nodes.append(node)
            tensor = node.input[0]
        if sorted(inserted) != [1, 2] or self.rank(tensor) != 2:
            return unsupported
        return tensor, float(filler), nodes

    def projection(self, core: _Core) -> _Projection | tuple[DeclineCode, str] | None:
        split = self.producers.get(core.q)
        if split is None or split.op_type != "Split" or len(split.output) != 3:
            return None
        if {core.q, core.k, core.v} != set(split.output):
            return None
        width = core.heads * core.head_size
        widths = self.array(split.input[1]) if len(split.input) > 1 and split.input[1] else node_attr(split, "split")
        if widths is None or [int(w) for w in widths] != [width] * 3 or node_attr(split, "axis", 0) not in (-1, 2):
            return None
        add = self.made_by(split.input[0], "Add")
        if add is None:
            return None
        matmul = next((p for p in map(self.producers.get, add.input) if p is not None and p.op_type == "MatMul"), None)
        if matmul is None or not self.private(matmul.output[0]):
            return None
        bias_name = self.other(add, matmul.output[0])
        bias = self.array(bias_name)
        bias_nodes, replaced = [], [bias_name]
        if bias is None:  # INT32 behind a DequantizeLinear
            dq = self.made_by(bias_name, "DequantizeLinear")
            parts = [self.array(i) for i in dq.input[:3]] if dq is not None and len(dq.input) >= 3 else [None]
            if any(p is None for p in parts):
                return None
            bias = ((parts[0].astype(np.float64) - parts[2].astype(np.float64)) * parts[1].astype(np.float64)).astype(np.float32)
            bias_nodes, replaced = [dq], list(dq.input[:3])
        if bias.dtype != np.float32 or bias.shape != (3 * width,):
            return None
        activation = self.producers.get(matmul.input[0])
        weight = self.made_by(matmul.input[1], "DequantizeLinear")
        if activation is None or activation.op_type != "DequantizeLinear" or weight is None or len(activation.input) < 3 or len(weight.input) < 3:
            return None
        input_scale, input_zero = self.array(activation.input[1]), self.array(activation.input[2])
        if input_scale is None or input_zero is None or input_scale.size != 1 or input_zero.size != 1 or input_zero.dtype != np.uint8:
            return DeclineCode.UNSUPPORTED_TYPE, f"{matmul.name}: the input is not UINT8 with one constant scale and zero point"
        stored, scales, zeros = (self.array(i) for i in weight.input[:3])
        if stored is None or scales is None or zeros is None or stored.ndim != 2 or stored.dtype not in (np.int8, np.uint8):
            return None
        columns = stored.shape[1]
        if scales.size == 1 and zeros.size == 1:
            scales, zeros = np.full(columns, scales.reshape(()), scales.dtype), np.full(columns, zeros.reshape(()), zeros.dtype)
        elif scales.shape != (columns,) or zeros.shape != (columns,) or node_attr(weight, "axis", 1) not in (1, -1):
            return DeclineCode.UNSUPPORTED_FORM, f"{matmul.name}: the weight is not quantized per column or per tensor"
        if any(not self.private(t) for t in weight.input[:3]):
            return DeclineCode.SHARED_VALUE, f"{matmul.name}: its weight is read by other nodes too"
        nodes = [matmul, add, split, weight, *bias_nodes] + ([activation] if self.private(activation.output[0]) else [])
        order = [list(split.output).index(t) for t in (core.q, core.k, core.v)]
        return _Projection(activation.input[0], activation.input[1], activation.input[2], stored, scales.astype(np.float32), zeros, bias, order, nodes,
                           replaced + list(weight.input[:3]))


def _in_order(values: np.ndarray, order: list[int], width: int) -> np.ndarray:
    """The last axis's three blocks of ``width`` columns in ``order``."""
    return np.concatenate([values[..., i * width:(i + 1) * width] for i in order], axis=-1)


def _reads(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> set[str]:
    """What ``nodes`` and the graph's outputs read, names read from inside If/Loop bodies included."""
    read = {v.name for v in graph.output} | {i for n in nodes for i in n.input}
    return read | {name for n in nodes for sub in subgraphs(n) for name in outer_references(sub)}


def _without_shape_leftovers(graph: onnx.GraphProto, nodes: list[onnx.NodeProto], orphaned: set[str]) -> list[onnx.NodeProto]:
    """``nodes`` less those left unread by the fusion: the shape arithmetic of the removed Reshapes, the mask's arithmetic."""
    while True:
        read = _reads(graph, nodes)
        unread = [n for n in nodes if not any(o in read for o in n.output) and any(o in orphaned for o in n.output)]
        if not unread:
            return nodes
        orphaned = orphaned | {i for n in unread for i in n.input}
        gone = {id(n) for n in unread}
        nodes = [n for n in nodes if id(n) not in gone]


def fuse_quantized_attention(model: onnx.ModelProto) -> PassResult:
    """Replace each QDQ self-attention block (see the module docstring) by one com.microsoft QAttention node."""
    result = PassResult("fuse-quantized-attention")
    graph = model.graph
    matcher = _Matcher(graph, default_opset(model))
    found = []
    for softmax in [n for n in graph.node if n.op_type == "Softmax"]:
        core = matcher.core(softmax)
        if core is None:
            continue
        where = softmax.name or softmax.output[0]
        projection = matcher.projection(core)
        if projection is None:
            continue
        if isinstance(projection, tuple):
            result.decline(where, *projection)
            continue
        mask = None
        if core.mask is not None:
            mask = matcher.padding_mask(core.mask)
            if isinstance(mask[0], DeclineCode):
                result.decline(where, *mask)
                continue
        extra = matcher.absorbed(core.nodes + projection.nodes, core.output)
        if isinstance(extra, str):
            result.decline(where, DeclineCode.SHARED_VALUE, f"{extra} is read outside the attention block")
            continue
        found.append((core, projection, mask, extra))
    if not found:
        return result
    taken = all_value_names(graph) | {n.name for n in graph.node}
    placed: dict[int, list[onnx.NodeProto]] = {}
    removed: set[int] = set()
    replaced: set[str] = set()
    masks: dict[str, str] = {}  # R -> its INT32 copy
    for core, projection, mask, extra in found:
        joined = core.nodes[-1]
        base = joined.name or joined.output[0]
        width = core.heads * core.head_size
        names = {what: unique_name(f"{base}_attention_{what}", taken) for what in ("weight", "bias", "weight_scale", "weight_zero_point")}
        graph.initializer.extend([
            from_array(_in_order(projection.stored, projection.order, width), names["weight"]),
            from_array(_in_order(projection.bias, projection.order, width), names["bias"]),
            from_array(_in_order(projection.scales, projection.order, width), names["weight_scale"]),
        ])
        if projection.zero_points.any():
            graph.initializer.append(from_array(_in_order(projection.zero_points, projection.order, width), names["weight_zero_point"]))
        else:
            names["weight_zero_point"] = ""  # all zero: left out, as QAttention reads a missing one
        new_nodes, mask_index, attributes = [], "", {}
        if mask is not None:
            source, filler, _ = mask
            if source not in masks:
                masks[source] = unique_name(f"{source}_int32", taken)
                new_nodes.append(helper.make_node("Cast", [source], [masks[source]], name=unique_name(f"{source}_to_int32", taken), to=TensorProto.INT32))
            mask_index, attributes = masks[source], {"mask_filter_value": filler}
        inputs = [projection.quantized_input, names["weight"], names["bias"], projection.input_scale, names["weight_scale"],
                  mask_index, projection.input_zero_point, names["weight_zero_point"]]
        while not inputs[-1]:
            inputs.pop()
        new_nodes.append(helper.make_node("QAttention", inputs, [core.output], name=unique_name(f"{base}_attention", taken), domain=MS_DOMAIN,
                                          num_heads=core.heads, scale=core.scale, **attributes))
        placed[id(joined)] = new_nodes
        removed.update(id(n) for n in core.nodes + projection.nodes + extra)
        replaced.update(projection.replaced)
        result.change(f"{base}: query/key/value MatMul and attention ({core.heads} heads of {core.head_size}) as one QAttention"
                      + ("" if mask is None else f", padding mask from {mask[0]}"))
    kept = []
    for node in graph.node:
        kept.extend(placed.get(id(node), []))
        if id(node) not in removed:
            kept.append(node)
    kept = _without_shape_leftovers(graph, kept, {i for n in graph.node if id(n) in removed for i in n.input})
    staying = {id(n) for n in kept}
    read_by_gone = {i for n in graph.node if id(n) not in staying for i in n.input}
    del graph.node[:]
    graph.node.extend(kept)
    drop_unread_initializers(graph, replaced | read_by_gone)
    produced = {o for n in graph.node for o in n.output}
    kept_annotations = [v for v in graph.value_info if v.name in produced]  # the removed tensors' shapes go with them
    del graph.value_info[:]
    graph.value_info.extend(kept_annotations)
    import_domain(model, MS_DOMAIN)
    return result


def quantize_fused_attention(model: onnx.ModelProto) -> PassResult:
    """Write each com.microsoft Attention that reads a dequantized UINT8 input and a dequantized INT8 weight as QAttention.

    onnxruntime's transformer optimizer leaves one fused Attention per layer (its query/key/value
    projection inside); quantize puts Q/DQ on its input and weight like any layer's. QAttention
    takes the same inputs as codes with their scales and zero points, the bias, mask and
    attributes unchanged, and runs the projection on integer products.
    """
    result = PassResult("quantize-fused-attention")
    graph = model.graph
    index = GraphIndex(graph)
    taken = all_value_names(graph) | {n.name for n in graph.node}
    replaced: dict[int, onnx.NodeProto] = {}
    for node in graph.node:
        if node.op_type != "Attention" or node.domain != MS_DOMAIN or len(node.input) < 3:
            continue
        where = node.name or node.output[0]
        activation, weight = index.producers.get(node.input[0]), index.producers.get(node.input[1])
        if activation is None or weight is None or activation.op_type != "DequantizeLinear" or weight.op_type != "DequantizeLinear":
            continue
        scale, zero = index.array(activation.input[1]), index.array(activation.input[2]) if len(activation.input) > 2 else None
        if scale is None or zero is None or scale.size != 1 or zero.size != 1 or zero.dtype != np.uint8:
            result.decline(where, DeclineCode.UNSUPPORTED_TYPE, "the input is not UINT8 with one constant scale and zero point")
            continue
        stored = index.array(weight.input[0])
        weight_scale = index.array(weight.input[1])
        weight_zero = index.array(weight.input[2]) if len(weight.input) > 2 else None
        if stored is None or weight_scale is None or stored.ndim != 2 or stored.dtype != np.int8:
            continue
        columns = stored.shape[1]
        if weight_scale.size != 1 and (weight_scale.shape != (columns,) or node_attr(weight, "axis", 1) not in (1, -1)):
            result.decline(where, DeclineCode.UNSUPPORTED_FORM, "the weight is not quantized per column or per tensor")
            continue
        inputs = [activation.input[0], weight.input[0], node.input[2], activation.input[1], weight.input[1],
                  node.input[3] if len(node.input) > 3 else "", activation.input[2],
                  weight.input[2] if weight_zero is not None and weight_zero.any() else ""]
        while not inputs[-1]:
            inputs.pop()
        fused = helper.make_node("QAttention", inputs, list(node.output), name=unique_name(f"{where}_quantized", taken), domain=MS_DOMAIN)
        fused.attribute.extend(node.attribute)
        replaced[id(node)] = fused
        result.change(f"{where}: its fused attention as QAttention on the UINT8 input and INT8 weight")
    if not replaced:
        return result
    nodes = [replaced.get(id(n), n) for n in graph.node]
    read = _reads(graph, nodes)
    # the Q/DQ pairs now unread (the input's DequantizeLinear when only the attention read it, the weight's always)
    nodes = [n for n in nodes if n.op_type != "DequantizeLinear" or any(o in read for o in n.output)]
    del graph.node[:]
    graph.node.extend(nodes)
    drop_unread_initializers(graph, {i for n in index.producers.values() for i in n.input})
    import_domain(model, MS_DOMAIN)
    return result
