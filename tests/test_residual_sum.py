"""sum-before-layernorm: an Add that only a layer normalization reads becomes a Sum, same values, not fused by onnxruntime."""

import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import numpy_helper

from onnxslim.ir import load_model
from onnxslim.passes.residual_sum import sum_before_layernorm
from onnxslim.runtime.kernels import skip_layernorm_slower
from onnxslim.runtime.session import optimized_graph
from tests.conftest import run_model
from tests.test_pass_contract import on_a_copy

RNG = np.random.default_rng(3)

NATIVE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 8, 16] x, float[1, 8, 16] r) => (float[1, 8, 16] y) {
    h = MatMul (x, w)
    s = Add (h, r)
    y = LayerNormalization <axis = -1> (s, gamma, beta)
}
"""

SPELLED_OUT = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 8, 16] x, float[1, 8, 16] r) => (float[1, 8, 16] y) {
    h = MatMul (x, w)
    s = Add (r, h)
    mean = ReduceMean <axes = [-1]> (s)
    d = Sub (s, mean)
    two = Constant <value = float {2.0}> ()
    sq = Pow (d, two)
    var = ReduceMean <axes = [-1]> (sq)
    eps = Constant <value = float {0.00001}> ()
    ve = Add (var, eps)
    std = Sqrt (ve)
    n = Div (d, std)
    m = Mul (n, gamma)
    y = Add (m, beta)
}
"""


def built(text: str, **extra: np.ndarray) -> onnx.ModelProto:
    model = onnx.parser.parse_model(text)
    model.graph.initializer.extend([numpy_helper.from_array(values, name) for name, values in extra.items()])
    model.graph.initializer.extend([
        numpy_helper.from_array(RNG.standard_normal((16, 16)).astype(np.float32), "w"),
        numpy_helper.from_array(RNG.uniform(0.5, 1.5, 16).astype(np.float32), "gamma"),
        numpy_helper.from_array(RNG.standard_normal(16).astype(np.float32), "beta"),
    ])
    onnx.checker.check_model(model)
    return model


def feed() -> dict:
    return {"x": RNG.standard_normal((1, 8, 16)).astype(np.float32), "r": RNG.standard_normal((1, 8, 16)).astype(np.float32)}


@pytest.mark.parametrize("text", [NATIVE, SPELLED_OUT], ids=["LayerNormalization", "spelled-out"])
def test_the_add_before_a_layer_normalization_becomes_a_sum_with_the_same_outputs(text):
    model = built(text)
    rewritten, result = on_a_copy(sum_before_layernorm, model)
    assert result.modified and [n.op_type for n in rewritten.graph.node if n.op_type in ("Add", "Sum")][0] == "Sum"
    data = feed()
    # onnxruntime runs the original as SkipLayerNormalization where it fuses it: the same values up to float rounding
    np.testing.assert_allclose(run_model(rewritten, data)[0], run_model(model, data)[0], rtol=1e-5, atol=1e-5)
    assert not [n for n in optimized_graph(rewritten).graph.node if n.op_type == "SkipLayerNormalization"]


def test_an_add_read_elsewhere_or_of_a_bias_stays():
    read_twice = NATIVE.replace("=> (float[1, 8, 16] y)", "=> (float[1, 8, 16] y, float[1, 8, 16] s)")
    of_a_bias = NATIVE.replace("s = Add (h, r)", "s = Add (h, beta)")
    for text in (read_twice, of_a_bias):
        model = built(text)
        rewritten, result = on_a_copy(sum_before_layernorm, model)
        assert not result.modified and "Sum" not in {n.op_type for n in rewritten.graph.node}


def test_an_add_of_a_constant_sequence_becomes_a_sum_too():
    # position embeddings folded to a (1, S, D) constant: onnxruntime fuses that Add as well
    model = built(NATIVE.replace("s = Add (h, r)", "s = Add (h, table)"), table=RNG.standard_normal((1, 8, 16)).astype(np.float32))
    rewritten, result = on_a_copy(sum_before_layernorm, model)
    assert result.modified and "Sum" in {n.op_type for n in rewritten.graph.node}
    assert not [n for n in optimized_graph(rewritten).graph.node if n.op_type == "SkipLayerNormalization"]


def test_quantize_keeps_residual_adds_apart_where_the_fused_kernel_is_slower():
    from onnxslim import QuantConfig, quantize

    model = built(NATIVE)
    data = [feed() for _ in range(16)]
    quantized, report = quantize(model, data, config=QuantConfig(latency_runs=0, accuracy_budget=None, output_layers="int8"))
    ops = {n.op_type for n in quantized.graph.node}
    assert ("Sum" in ops) == skip_layernorm_slower()  # decided by timing both forms on this onnxruntime
    assert any(p.name == "sum-before-layernorm" for p in report.prepare) == skip_layernorm_slower()


def test_the_float_fallback_gets_the_sums_too():
    # what --if-slower keep-fp32 writes when INT8 is not faster: the cleaned model, timed against the INT8 one
    from onnxslim import QuantConfig
    from onnxslim.quant.pipeline import QuantRun

    model = built(NATIVE)
    run = QuantRun(model, [feed() for _ in range(8)], QuantConfig(latency_runs=0), None, None, False)
    assert ("Sum" in {n.op_type for n in run.cleaned.graph.node}) == skip_layernorm_slower()
    assert "Sum" not in {n.op_type for n in run.original.graph.node}  # the original stays as given, for the reference timing


def test_onnxruntimes_fused_skip_layernorm_is_written_as_sum_and_layernorm_with_the_same_outputs():
    from onnxslim.passes.residual_sum import skip_layernorm_apart
    from tests.test_prune import fused_ffn

    model = fused_ffn()  # opset 17 already; the same model at opset 14 is upgraded first
    model.opset_import[0].version = 14
    work = load_model(model)
    result = skip_layernorm_apart(work)
    assert result.modified and "upgraded opset 14 -> 17" in result.changes[0]
    ops = [n.op_type for n in work.graph.node]
    assert "SkipLayerNormalization" not in ops and ops[-2:] == ["Sum", "LayerNormalization"]
    summed = next(n for n in work.graph.node if n.op_type == "Sum")
    assert len(summed.input) == 3  # input, skip and the layer's bias
    feed = {"x": np.random.default_rng(3).standard_normal((1, 8, 16)).astype(np.float32)}
    np.testing.assert_allclose(run_model(work, feed)[0], run_model(model, feed)[0], rtol=1e-4, atol=1e-5)


def test_a_fused_skip_layernorm_whose_statistics_are_read_is_left_alone():
    from onnx import TensorProto, helper

    from onnxslim.passes.residual_sum import skip_layernorm_apart
    from tests.test_prune import fused_ffn

    model = fused_ffn()
    norm = model.graph.node[-1]
    norm.output.extend(["mean"])
    model.graph.output.append(helper.make_tensor_value_info("mean", TensorProto.FLOAT, None))
    result = skip_layernorm_apart(model)
    assert not result.modified and result.declined and model.graph.node[-1].op_type == "SkipLayerNormalization"
