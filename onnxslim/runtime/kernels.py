"""What this machine's onnxruntime integer kernels actually compute, found by running them.

On x86 CPUs without VNNI, onnxruntime multiplies UINT8 activations by INT8 weights
with an instruction that adds each pair of products into a 16-bit integer with
saturation: two products of 255 x 127 overflow it, so a layer whose activations and
weights both use their full ranges computes a clipped sum. CPUs with VNNI (or AMX)
add in 32 bits. Which one a machine has is read off one small MatMulInteger run
rather than guessed from CPU flags, so it follows whatever kernel this onnxruntime
picks.
"""

from __future__ import annotations

import functools

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnxslim.errors import OnnxSlimError
from onnxslim.ir.graph import MS_DOMAIN
from onnxslim.runtime.session import Runner

_DEPTH = 64  # products summed per output: enough pairs for a clipped pair to show


@functools.cache
def integer_products_saturate(provider: str = "CPUExecutionProvider") -> bool:
    """Whether ``provider`` clips UINT8 x INT8 products summed in pairs (255 * 127 * 2 > 32767) in a MatMulInteger."""
    weight = np.full((_DEPTH, 8), 127, np.int8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w", "a_zero"], ["y"])], "saturation_probe",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [1, _DEPTH])], [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 8])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.array(0, np.uint8), "a_zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    activations = np.full((1, _DEPTH), 255, np.uint8)
    try:
        computed = Runner(model, provider, threads=1, label="saturation probe", prepack=False).run({"a": activations})[0]
    except OnnxSlimError:  # a build without MatMulInteger: its integer kernels are not what quantize targets either
        return False
    exact = activations.astype(np.int64) @ weight.astype(np.int64)
    return bool(np.any(computed.astype(np.int64) != exact))


@functools.cache
def gathers_block_quantized_rows(provider: str = "CPUExecutionProvider") -> bool:
    """Whether ``provider`` runs com.microsoft GatherBlockQuantized on 8-bit rows as a lookup of exact dequantized rows."""
    codes = np.array([[0, 128, 255], [7, 130, 129]], np.uint8)
    scales = np.array([[0.5], [2.0]], np.float32)
    zeros = np.full((2, 1), 128, np.uint8)
    node = helper.make_node(
        "GatherBlockQuantized", ["codes", "ids", "scales", "zeros"], ["rows"], domain=MS_DOMAIN, gather_axis=0, quantize_axis=1, block_size=16, bits=8
    )
    graph = helper.make_graph(
        [node], "gather_probe", [helper.make_tensor_value_info("ids", TensorProto.INT64, [2])], [helper.make_tensor_value_info("rows", TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(codes, "codes"), numpy_helper.from_array(scales, "scales"), numpy_helper.from_array(zeros, "zeros")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(MS_DOMAIN, 1)])
    ids = np.array([1, 0], np.int64)
    try:
        rows = Runner(model, provider, threads=1, label="GatherBlockQuantized probe", prepack=False).run({"ids": ids})[0]
    except OnnxSlimError:  # an onnxruntime without the op (or without 8-bit rows): the standard-ONNX form
        return False
    expected = (codes[ids].astype(np.float32) - 128.0) * scales[ids]
    return bool(np.array_equal(rows, expected))
