"""What this machine's onnxruntime integer kernels actually compute, found by running them.

On x86 CPUs without VNNI, onnxruntime multiplies UINT8 activations by INT8 weights
with an instruction that adds each pair of products into a 16-bit integer with
saturation: two products of 255 x 127 overflow it, so a layer whose activations and
weights both use their full ranges computes a clipped sum. CPUs with VNNI (or AMX)
add in 32 bits. Which one a machine has is read off one small MatMulInteger run
rather than guessed from CPU flags, so it follows whatever kernel this onnxruntime
picks. The same goes for the contrib kernels quantize writes for onnxruntime (their
results checked against the standard form), and for one of its own fusions that some
releases run slower than the nodes it replaces (timed against them).
"""

from __future__ import annotations

import functools
import time

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


@functools.cache
def runs_quantized_attention(provider: str = "CPUExecutionProvider") -> bool:
    """Whether ``provider`` runs com.microsoft QAttention (per-column weight scales, a 2-D padding mask) as the unfused graph computes it."""
    rng = np.random.default_rng(0)
    batch, length, heads, size = 2, 3, 2, 4
    width = heads * size
    stored = rng.integers(-127, 128, (width, 3 * width), dtype=np.int8)
    weight_scale = rng.uniform(0.01, 0.02, 3 * width).astype(np.float32)
    bias = rng.normal(size=3 * width).astype(np.float32)
    codes = rng.integers(0, 256, (batch, length, width), dtype=np.uint8)
    mask = np.array([[1, 1, 1], [1, 1, 0]], np.int32)
    scale, zero, filler = np.float32(0.05), np.uint8(120), -10000.0
    node = helper.make_node("QAttention", ["x", "w", "b", "x_scale", "w_scale", "mask", "x_zero"], ["y"], domain=MS_DOMAIN,
                            num_heads=heads, scale=0.5, mask_filter_value=filler)
    graph = helper.make_graph(
        [node], "attention_probe",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [batch, length, width]), helper.make_tensor_value_info("mask", TensorProto.INT32, [batch, length])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, length, width])],
        [numpy_helper.from_array(a, n) for a, n in ((stored, "w"), (bias, "b"), (np.array(scale), "x_scale"), (weight_scale, "w_scale"), (np.array(zero), "x_zero"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(MS_DOMAIN, 1)])
    try:
        computed = Runner(model, provider, threads=1, label="QAttention probe", prepack=False).run({"x": codes, "mask": mask})[0]
    except OnnxSlimError:  # an onnxruntime without the contrib kernel: attention stays as exported
        return False
    products = (codes.astype(np.float64) - float(zero)) @ stored.astype(np.float64) * float(scale) * weight_scale + bias
    q, k, v = (products[..., i * width:(i + 1) * width].reshape(batch, length, heads, size).transpose(0, 2, 1, 3) for i in range(3))
    scores = 0.5 * q @ k.transpose(0, 1, 3, 2) + (1.0 - mask[:, None, None, :]) * filler
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    expected = (weights / weights.sum(axis=-1, keepdims=True) @ v).transpose(0, 2, 1, 3).reshape(batch, length, width)
    return bool(np.allclose(computed, expected, rtol=1e-4, atol=1e-4))


_NORMALIZED_SHAPE = (1, 64, 384)  # a short sequence of a small transformer: where the fused kernel's cost shows most
_PROBE_ROUNDS, _PROBE_RUNS = 5, 20
SLOWER_BY = 1.3  # the fused kernel counts as slower past this ratio (1.32's is 4-8x slower; interleaved medians move by far less)


@functools.cache
def skip_layernorm_slower(provider: str = "CPUExecutionProvider") -> bool:
    """Whether ``provider``, left to fuse Add -> LayerNormalization into com.microsoft SkipLayerNormalization, runs them
    slower than as Sum -> LayerNormalization (which it does not fuse): both timed interleaved, one thread."""
    width = _NORMALIZED_SHAPE[-1]

    def model(op: str):
        graph = helper.make_graph(
            [helper.make_node(op, ["a", "b"], ["s"]), helper.make_node("LayerNormalization", ["s", "gamma", "beta"], ["y"], axis=-1)],
            "layernorm_probe", [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(_NORMALIZED_SHAPE)) for n in ("a", "b")],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(_NORMALIZED_SHAPE))],
            [numpy_helper.from_array(np.ones(width, np.float32), "gamma"), numpy_helper.from_array(np.zeros(width, np.float32), "beta")],
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    rng = np.random.default_rng(0)
    feed = {n: rng.standard_normal(_NORMALIZED_SHAPE).astype(np.float32) for n in ("a", "b")}
    try:
        fused, apart = (Runner(model(op), provider, threads=1, label=f"{op} + LayerNormalization probe", prepack=False) for op in ("Add", "Sum"))
    except OnnxSlimError:  # no LayerNormalization at opset 17: nothing to keep apart
        return False
    seconds: dict[str, list[float]] = {"fused": [], "apart": []}
    for _ in range(_PROBE_ROUNDS):
        for key, runner in (("fused", fused), ("apart", apart)):
            runner.run(feed)
            start = time.perf_counter()
            for _ in range(_PROBE_RUNS):
                runner.run(feed)
            seconds[key].append(time.perf_counter() - start)
    return float(np.median(seconds["fused"])) > SLOWER_BY * float(np.median(seconds["apart"]))
