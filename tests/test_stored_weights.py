"""Float weights stored as INT8 with a scale per output channel, turned back into float when onnxruntime loads the model."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxslim.quant.params import quantize_weight, weight_params
from onnxslim.quant.stored import store_weights_in_int8
from onnxslim.runtime.session import optimized_ops
from tests.conftest import run_model

RNG = np.random.default_rng(11)


def test_codes_keep_a_scale_per_output_channel():
    values = RNG.standard_normal((6, 4, 3, 3)).astype(np.float32)
    scales = weight_params(values, 0)
    codes = quantize_weight(values, scales, 0)
    assert codes.dtype == np.int8 and scales.shape == (6,)
    assert (np.abs(codes).reshape(6, -1).max(axis=1) == 127).all()
    np.testing.assert_allclose(codes * scales.reshape(6, 1, 1, 1), values, atol=float(scales.max()) / 2 + 1e-7)
    unit = weight_params(np.zeros((2, 8), np.float32), 1)
    assert not quantize_weight(np.zeros((2, 8), np.float32), unit, 1).any() and (unit == 1.0).all()


def test_each_layer_kind_stores_its_weight_per_output_channel_and_onnxruntime_folds_it_back():
    weights = {
        "conv_w": RNG.standard_normal((32, 16, 3, 3)) * 0.1,  # Conv: output channels on axis 0
        "gemm_w": RNG.standard_normal((64, 32 * 8 * 8)) * 0.02,  # Gemm transB=1: outputs on axis 0
        "mm_w": RNG.standard_normal((64, 96)) * 0.1,  # MatMul: outputs on the last axis
        "small": RNG.standard_normal((96, 8)),  # 768 values: left as it is
        "shared": RNG.standard_normal((8, 80 * 80)),  # also read by a layer not asked for
    }
    nodes = [
        helper.make_node("Conv", ["x", "conv_w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Flatten", ["c"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "gemm_w"], ["g"], name="gemm", transB=1),
        helper.make_node("MatMul", ["g", "mm_w"], ["m"], name="mm"),
        helper.make_node("MatMul", ["m", "small"], ["y"], name="tiny"),
        helper.make_node("MatMul", ["s", "shared"], ["z"], name="kept_shared"),
        helper.make_node("MatMul", ["s", "shared"], ["z2"], name="other_shared"),
    ]
    graph = helper.make_graph(
        nodes, "stored", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8]), helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n, shape in (("y", [1, 8]), ("z", [1, 6400]), ("z2", [1, 6400]))],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    stored = onnx.ModelProto()
    stored.CopyFrom(model)
    changed = store_weights_in_int8(stored, {"conv", "gemm", "mm", "tiny", "kept_shared"})
    assert sorted(changed) == ["conv", "gemm", "mm"]
    onnx.checker.check_model(stored, full_check=True)
    arrays = {t.name: numpy_helper.to_array(t) for t in stored.graph.initializer}
    assert {"conv_w", "gemm_w", "mm_w"}.isdisjoint(arrays) and arrays["small"].dtype == arrays["shared"].dtype == np.float32
    assert arrays["conv_w_scale"].shape == (32, 1, 1, 1) and arrays["gemm_w_scale"].shape == (64, 1) and arrays["mm_w_scale"].shape == (1, 96)
    assert model.ByteSize() - stored.ByteSize() > 2.95 * (32 * 16 * 9 + 64 * 2048 + 64 * 96)  # 4 bytes a value -> 1, and the scales
    assert optimized_ops(stored) == optimized_ops(model)  # the Casts and Muls are computed when the model loads
    feed = {"x": RNG.standard_normal((1, 16, 8, 8)).astype(np.float32), "s": RNG.standard_normal((1, 8)).astype(np.float32)}
    for before, after in zip(run_model(model, feed), run_model(stored, feed)):
        assert float(np.sum(before * after) / np.linalg.norm(before) / np.linalg.norm(after)) > 0.9995
