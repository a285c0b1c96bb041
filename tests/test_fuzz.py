"""Property-based: random small valid graphs survive quantize and prune.

Each example is a random stack of blocks (plain, depthwise and residual
convolutions, BatchNorm, squeeze-and-excitation gates, channel concats,
pooling) ending in a conv head or a pooled linear classifier. Pruning must
equal cutting the removed channels out of the original; quantization must
run and stay close to the float model. The run is bounded in examples and time.
"""

import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from models.builders import GraphBuilder, sample_inputs
from onnxslim import QuantConfig, quantize
from tests.conftest import run_model
from tests.test_prune import masked_and_pruned

BLOCKS = ("conv", "depthwise", "grouped", "residual", "bn_relu", "se", "concat", "pool")


def build(blocks: list[str], widths: list[int], head: str, seed: int) -> onnx.ModelProto:
    b = GraphBuilder(seed)
    x, channels, size = b.node("Relu", [b.conv("input", 3, 8)]), 8, 8
    for kind, width in zip(blocks, widths):
        if kind == "conv":
            x, channels = b.node("Relu", [b.conv(x, channels, width)]), width
        elif kind == "depthwise":
            x = b.node("Clip", [b.conv(x, channels, channels, groups=channels), b.const(np.array(0.0, np.float32), "lo"), b.const(np.array(6.0, np.float32), "hi")])
        elif kind == "grouped" and channels % 2 == 0 and width % 2 == 0:
            x, channels = b.node("Relu", [b.conv(x, channels, width, groups=2)]), width
        elif kind == "residual":
            x = b.node("Relu", [b.node("Add", [x, b.conv(b.node("Relu", [b.conv(x, channels, width)]), width, channels)])])
        elif kind == "bn_relu":
            x = b.node("Relu", [b.batchnorm(b.conv(x, channels, width, bias=False), width)])
            channels = width
        elif kind == "se":
            gate = b.node("GlobalAveragePool", [x])
            gate = b.node("Sigmoid", [b.conv(b.node("Relu", [b.conv(gate, channels, max(2, channels // 4), k=1)]), max(2, channels // 4), channels, k=1)])
            x = b.node("Mul", [x, gate])
        elif kind == "concat":
            left = b.node("Relu", [b.conv(x, channels, width, k=1)])
            right = b.node("Relu", [b.conv(x, channels, width)])
            x, channels = b.node("Concat", [left, right], axis=1), 2 * width
        elif kind == "pool" and size > 2:
            x, size = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2]), size // 2
    if head == "conv":
        y = b.conv(x, channels, 4, k=1)
        shape = [1, 4, size, size]
    else:
        flat = b.node("Flatten", [b.node("GlobalAveragePool", [x])], axis=1)
        y = b.node("Gemm", [flat, b.const(b.weight(5, channels)), b.const(np.zeros(5, np.float32))], transB=1)
        shape = [1, 5]
    return b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])], [helper.make_tensor_value_info(y, TensorProto.FLOAT, shape)], "fuzz")


graphs = st.builds(
    lambda blocks, widths, head, seed: build(blocks, widths, head, seed),
    st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=5),
    st.lists(st.sampled_from([4, 6, 8, 12]), min_size=5, max_size=5),
    st.sampled_from(["conv", "gemm"]),
    st.integers(0, 1000),
)


def cosine(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs, st.sampled_from([0.25, 0.5, 0.75]))
def test_random_graphs_prune_exactly(model, ratio):
    onnx.checker.check_model(model)
    pruned, masked, _, _ = masked_and_pruned(model, ratio)
    onnx.checker.check_model(pruned)
    for feed in sample_inputs(model, 2, seed=3):
        for a, b in zip(run_model(masked, feed), run_model(pruned, feed)):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs, st.sampled_from(["cpu", "cuda"]))
def test_random_graphs_quantize_and_stay_close(model, target):
    data = sample_inputs(model, 12, seed=1)
    # graph coverage: every layer quantized, the closeness bound below instead of the default budget (which may keep them all in float)
    quantized, report = quantize(model, data, config=QuantConfig(target=target, latency_runs=0, output_layers="int8", accuracy_budget=None))
    onnx.checker.check_model(quantized)
    assert report.quantized
    for feed in sample_inputs(model, 2, seed=9):
        reference, candidate = run_model(model, feed)[0], run_model(quantized, feed)[0]
        assert candidate.shape == reference.shape
        if np.std(reference) > 1e-3:
            assert cosine(reference, candidate) > 0.95
