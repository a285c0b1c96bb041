"""Fold inference-mode BatchNormalization into the Conv, ConvTranspose or Gemm before it (or the Gemm after it).

With s = gamma / sqrt(var + eps), a BatchNormalization y = s * (x - mean) + beta
after a layer x = W * a + b equals a layer with weights W' = s * W (scaled on
the output-channel axis) and bias b' = s * (b - mean) + beta. The output channel
axis of W is 0 for Conv, 1 inside each group for ConvTranspose, and the N axis
for Gemm (0 with transB=1, 1 otherwise). A normalization with no layer before it (a classifier
head's pooled features, as RepViT's and LeViT's heads write it) folds into the Gemm that alone
reads it: its scale goes into the rows of the weight that read each feature, its shift through
the weight into the bias.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from onnxslim.ir.graph import node_attr
from onnxslim.ir.tensors import all_value_names, from_array, to_array, unique_name
from onnxslim.passes.base import DeclineCode, NotRewritten, PassResult
from onnxslim.passes.matching import GraphIndex

FOLDABLE = ("Conv", "ConvTranspose", "Gemm")


def _set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for index, attr in enumerate(node.attribute):
        if attr.name == name:
            del node.attribute[index]
            break
    node.attribute.append(helper.make_attribute(name, value))


def scale_output_channels(layer: onnx.NodeProto, weight: np.ndarray, scale: np.ndarray) -> np.ndarray | None:
    """``layer``'s weight with each output channel multiplied by its ``scale`` (None for a layout not understood)."""
    if layer.op_type == "Conv":
        return weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
    if layer.op_type == "ConvTranspose":
        groups = int(node_attr(layer, "group", 1))
        c_in, c_out_per_group = weight.shape[0], weight.shape[1]
        grouped = weight.reshape((groups, c_in // groups, c_out_per_group) + weight.shape[2:])
        factor = scale.reshape((groups, 1, c_out_per_group) + (1,) * (weight.ndim - 2))
        return (grouped * factor).reshape(weight.shape)
    if layer.op_type == "Gemm":
        if weight.ndim != 2:
            return None
        if int(node_attr(layer, "transB", 0)):
            return weight * scale[:, None]
        return weight * scale[None, :]
    return None


def output_channels(layer: onnx.NodeProto, weight: np.ndarray) -> int:
    """How many output channels (features) ``layer`` computes with ``weight``."""
    if layer.op_type == "ConvTranspose":
        return weight.shape[1] * int(node_attr(layer, "group", 1))
    if layer.op_type == "Gemm":
        return weight.shape[0] if int(node_attr(layer, "transB", 0)) else weight.shape[1]
    return weight.shape[0]


def fuse_batchnorm(model: onnx.ModelProto) -> PassResult:
    """Fold each inference BatchNormalization into the Conv, ConvTranspose or Gemm before it, or else into a Gemm after it
    (see the module docstring)."""
    result = PassResult("fuse-batchnorm")
    graph = model.graph
    view = GraphIndex(graph)
    taken = all_value_names(graph)
    fused_bn: set[int] = set()
    for bn in graph.node:
        if bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx"):
            continue
        where = bn.name or bn.output[0]
        try:
            layer, weight, has_bias = _foldable_layer(bn, view)
            new_weight, new_bias = _folded_parameters(bn, layer, weight, has_bias, view.inits)
        except NotRewritten as declined:
            reader = _linear_reader(bn, view)
            if reader is None:
                result.decline(where, declined.code, declined.text)
                continue
            try:  # nothing to fold into before it (a classifier head's pooled features): the Gemm after it takes it
                _fold_into_reader(bn, reader, view, graph, taken)
            except NotRewritten as forward:
                result.decline(where, forward.code, forward.text)
                continue
            fused_bn.add(id(bn))
            result.change(f"folded {where} into {reader.name or reader.op_type} after it")
            continue
        weight_name = unique_name(layer.input[1] + "_bnfused", taken)
        bias_name = unique_name((layer.input[2] if has_bias else layer.output[0] + "_bias") + "_bnfused", taken)
        graph.initializer.append(from_array(new_weight.astype(weight.dtype), weight_name))
        graph.initializer.append(from_array(new_bias.astype(weight.dtype), bias_name))
        layer.input[1] = weight_name
        if has_bias:
            layer.input[2] = bias_name
        else:
            layer.input.append(bias_name)
        if layer.op_type == "Gemm":
            _set_attr(layer, "beta", 1.0)
        layer.output[0] = bn.output[0]
        fused_bn.add(id(bn))
        result.change(f"folded {where} into {layer.name or layer.op_type}")
    if fused_bn:
        kept = [n for n in graph.node if id(n) not in fused_bn]
        del graph.node[:]
        graph.node.extend(kept)
    return result


def _linear_reader(bn: onnx.NodeProto, view: GraphIndex) -> onnx.NodeProto | None:
    """The Gemm that alone reads ``bn``'s output as its first operand (not transposed), or None."""
    readers = view.readers(bn.output[0])
    if len(readers) != 1 or readers[0].op_type != "Gemm" or readers[0].domain not in ("", "ai.onnx"):
        return None
    gemm = readers[0]
    return gemm if gemm.input[0] == bn.output[0] and gemm.input[1] != bn.output[0] and not int(node_attr(gemm, "transA", 0)) else None


def _fold_into_reader(bn: onnx.NodeProto, gemm: onnx.NodeProto, view: GraphIndex, graph: onnx.GraphProto, taken: set[str]) -> None:
    """Fold ``bn`` (y = s * x + t per feature) into the Gemm reading it: alpha * (s * x + t) @ B + beta * C equals
    alpha * x @ (s[:, None] * B) + (alpha * t @ B + beta * C). Edits ``gemm`` in place; raises NotRewritten where it cannot."""
    label = gemm.name or gemm.op_type
    _check_inference(bn, view)
    weight = view.array(gemm.input[1])
    has_bias = len(gemm.input) > 2 and bool(gemm.input[2])
    bias = view.array(gemm.input[2]) if has_bias else None
    if weight is None or (has_bias and bias is None):
        raise NotRewritten(DeclineCode.NOT_CONSTANT, f"the weight or bias of {label} after it is not a constant initializer")
    if weight.dtype.kind != "f" or weight.ndim != 2:
        raise NotRewritten(DeclineCode.UNSUPPORTED_TYPE, f"the weight of {label} after it is {weight.dtype} of rank {weight.ndim}")
    if len(view.consumers.get(gemm.input[1], [])) > 1:
        raise NotRewritten(DeclineCode.SHARED_VALUE, f"the weight of {label} after it is shared (a folded copy would grow the model)")
    scale, shift = normalization_affine(bn, view.inits)
    transposed = bool(int(node_attr(gemm, "transB", 0)))
    product = (weight.T if transposed else weight).astype(np.float64)  # (features in, features out)
    if scale.shape != (product.shape[0],):
        raise NotRewritten(DeclineCode.UNSUPPORTED_FORM, f"{scale.size} BN channels vs {product.shape[0]} inputs of {label}")
    alpha, gemm_beta = float(node_attr(gemm, "alpha", 1.0)), float(node_attr(gemm, "beta", 1.0))
    outputs = product.shape[1]
    if bias is not None and bias.size not in (1, outputs):
        raise NotRewritten(DeclineCode.UNSUPPORTED_FORM, f"the bias of {label} of shape {bias.shape} is not per output feature")
    new_bias = alpha * shift @ product + (gemm_beta * np.broadcast_to(bias.astype(np.float64).reshape(-1), (outputs,)) if bias is not None else 0.0)
    scaled = product * scale[:, None]
    weight_name = unique_name(gemm.input[1] + "_bnfused", taken)
    bias_name = unique_name((gemm.input[2] if has_bias else gemm.output[0] + "_bias") + "_bnfused", taken)
    graph.initializer.append(from_array((scaled.T if transposed else scaled).astype(weight.dtype), weight_name))
    graph.initializer.append(from_array(np.asarray(new_bias).astype(weight.dtype), bias_name))
    gemm.input[0], gemm.input[1] = bn.input[0], weight_name
    if has_bias:
        gemm.input[2] = bias_name
    else:
        gemm.input.append(bias_name)
    _set_attr(gemm, "beta", 1.0)


def _check_inference(bn: onnx.NodeProto, view: GraphIndex) -> None:
    """Raise NotRewritten unless ``bn`` computes in inference mode from constant parameters."""
    if len([o for o in bn.output if o]) > 1 or int(node_attr(bn, "training_mode", 0)):
        raise NotRewritten(DeclineCode.TRAINING_MODE, "training-mode outputs (running mean/var) are used")
    params = list(bn.input[1:5])
    if len(params) < 4 or not all(p in view.constants for p in params):
        raise NotRewritten(DeclineCode.NOT_CONSTANT, "scale, bias, mean or variance is not a constant initializer")


def normalization_scale(bn: onnx.NodeProto, inits) -> np.ndarray:
    """An inference BatchNormalization's gamma / sqrt(var + eps), in float64 (its parameters read from ``inits``)."""
    gamma, var = (to_array(inits[name]).astype(np.float64) for name in (bn.input[1], bn.input[4]))
    return gamma / np.sqrt(var + float(node_attr(bn, "epsilon", 1e-5)))


def normalization_affine(bn: onnx.NodeProto, inits) -> tuple[np.ndarray, np.ndarray]:
    """An inference BatchNormalization as y = scale * x + shift per channel, each a float64 vector."""
    scale = normalization_scale(bn, inits).reshape(-1)
    beta, mean = (to_array(inits[name]).astype(np.float64).reshape(-1) for name in bn.input[2:4])
    return scale, beta - mean * scale


def _foldable_layer(bn: onnx.NodeProto, view: GraphIndex) -> tuple[onnx.NodeProto, np.ndarray, bool]:
    """The layer ``bn`` folds into, its weight, and whether it has a bias; raises NotRewritten otherwise."""
    _check_inference(bn, view)
    layer = view.producers.get(bn.input[0])
    if layer is None or layer.op_type not in FOLDABLE or layer.domain not in ("", "ai.onnx"):
        raise NotRewritten(DeclineCode.UNSUPPORTED_FORM, f"input comes from {layer.op_type if layer is not None else 'a graph input'}, not Conv/ConvTranspose/Gemm")
    if not view.private(bn.input[0]):
        raise NotRewritten(DeclineCode.SHARED_VALUE, f"output of {layer.name or layer.op_type} is also read elsewhere")
    if len(layer.input) < 2 or layer.input[1] not in view.constants:
        raise NotRewritten(DeclineCode.NOT_CONSTANT, f"weights of {layer.name or layer.op_type} are not a constant initializer")
    has_bias = len(layer.input) > 2 and bool(layer.input[2])
    if has_bias and layer.input[2] not in view.constants:
        raise NotRewritten(DeclineCode.NOT_CONSTANT, f"bias of {layer.name or layer.op_type} is not a constant initializer")
    weight = to_array(view.inits[layer.input[1]])
    if weight.dtype not in (np.float32, np.float64, np.float16):
        raise NotRewritten(DeclineCode.UNSUPPORTED_TYPE, f"weights are {weight.dtype}, not floating point")
    return layer, weight, has_bias


def _folded_parameters(bn: onnx.NodeProto, layer: onnx.NodeProto, weight: np.ndarray, has_bias: bool, inits: dict) -> tuple[np.ndarray, np.ndarray]:
    """W * scale and (b - mean) * scale + beta, in float64; raises NotRewritten where the shapes do not fit."""
    beta, mean = (to_array(inits[p]).astype(np.float64) for p in bn.input[2:4])
    scale = normalization_scale(bn, inits)
    channels = output_channels(layer, weight)
    if scale.shape != (channels,):
        raise NotRewritten(DeclineCode.UNSUPPORTED_FORM, f"{scale.shape[0] if scale.ndim == 1 else scale.shape} BN channels vs {channels} layer outputs")
    bias = np.zeros(channels, dtype=np.float64)
    if has_bias:
        raw_bias = to_array(inits[layer.input[2]]).astype(np.float64)
        if layer.op_type == "Gemm":
            if raw_bias.size not in (1, channels):
                raise NotRewritten(DeclineCode.UNSUPPORTED_FORM, f"Gemm bias of shape {raw_bias.shape} is not per output feature")
            raw_bias = np.broadcast_to(raw_bias.reshape(-1), (channels,)) * float(node_attr(layer, "beta", 1.0))
        bias = raw_bias.reshape(channels)
    new_weight = scale_output_channels(layer, weight.astype(np.float64), scale)
    if new_weight is None:
        raise NotRewritten(DeclineCode.UNSUPPORTED_FORM, "weight layout not understood")
    return new_weight, (bias - mean) * scale + beta
