"""expand-depthwise-multipliers: a depthwise Conv with M outputs per input channel becomes a channel Gather and a plain
depthwise Conv, with the same outputs, and quantize's INT8 model runs it on onnxruntime's depthwise integer kernel."""

import numpy as np
import onnx
import onnx.parser
from onnx import numpy_helper

from onnxslim import QuantConfig, quantize
from onnxslim.passes import DeclineCode
from onnxslim.passes.depthwise_multiplier import expand_depthwise_multipliers, has_depthwise_multipliers
from onnxslim.runtime.session import optimized_graph
from tests.conftest import run_model
from tests.test_pass_contract import on_a_copy
from tests.test_quantize import calibrate_on, ops

RNG = np.random.default_rng(5)

# a and b: 4 channels times 2 from one input (one Gather for both); c: times 3; d: plain depthwise; e: a 1-D multiplier
LAYERS = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 4, 10, 10] x, float[1, 4, 12] s) => (float[1, 8, 10, 10] a, float[1, 8, 10, 10] b, float[1, 12, 10, 10] c, float[1, 4, 10, 10] d, float[1, 8, 12] e) {
    a = Conv <group = 4, pads = [1, 1, 1, 1]> (x, wa, ba)
    b = Conv <group = 4, pads = [2, 2, 2, 2]> (x, wb)
    c = Conv <group = 4, pads = [1, 1, 1, 1], strides = [1, 1]> (x, wc)
    d = Conv <group = 4, pads = [1, 1, 1, 1]> (x, wd)
    e = Conv <group = 4, pads = [1, 1]> (s, we)
}
"""


def layers() -> onnx.ModelProto:
    model = onnx.parser.parse_model(LAYERS)
    weights = {"wa": (8, 1, 3, 3), "ba": (8,), "wb": (8, 1, 5, 5), "wc": (12, 1, 3, 3), "wd": (4, 1, 3, 3), "we": (8, 1, 3)}
    model.graph.initializer.extend(numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32), name) for name, shape in weights.items())
    onnx.checker.check_model(model, full_check=True)
    return model


def test_each_multiplier_convolution_reads_its_channels_repeated_and_computes_the_same():
    model = layers()
    assert has_depthwise_multipliers(model)
    rewritten, result = on_a_copy(expand_depthwise_multipliers, model)
    assert result.modified and "3 depthwise convolution(s)" in result.changes[0]
    gathers = [n for n in rewritten.graph.node if n.op_type == "Gather"]
    assert len(gathers) == 2  # times 2 shared by a and b, times 3 for c
    groups = {n.output[0]: next(a.i for a in n.attribute if a.name == "group") for n in rewritten.graph.node if n.op_type == "Conv"}
    assert groups == {"a": 8, "b": 8, "c": 12, "d": 4, "e": 4}
    assert [(d.where, d.reason.code) for d in result.declined] == [(rewritten.graph.node[-1].name or "e", DeclineCode.UNSUPPORTED_FORM)]
    feed = {"x": RNG.standard_normal((1, 4, 10, 10)).astype(np.float32), "s": RNG.standard_normal((1, 4, 12)).astype(np.float32)}
    for before, after in zip(run_model(model, feed), run_model(rewritten, feed)):
        np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6)


def test_plain_depthwise_and_grouped_convolutions_are_left_as_they_are():
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 4, 10, 10] x) => (float[1, 4, 10, 10] d, float[1, 4, 10, 10] p) {
        d = Conv <group = 4, pads = [1, 1, 1, 1]> (x, wd)
        p = Conv <group = 2, pads = [1, 1, 1, 1]> (x, wp)
    }
    """)
    model.graph.initializer.extend([numpy_helper.from_array(np.ones((4, 1, 3, 3), np.float32), "wd"), numpy_helper.from_array(np.ones((4, 2, 3, 3), np.float32), "wp")])
    assert not has_depthwise_multipliers(model)
    _, result = on_a_copy(expand_depthwise_multipliers, model)
    assert not result.modified and not result.declined


MULTIPLIER_BLOCK = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 8, 16, 16] x) => (float[1, 16, 16, 16] y) {
    p = Conv <pads = [1, 1, 1, 1]> (x, w1)
    r = Relu (p)
    m = Conv <group = 8, pads = [3, 3, 3, 3]> (r, w2, b2)
    q = Relu (m)
    y = Conv (q, w3)
}
"""


def test_quantize_runs_a_multiplier_convolution_on_the_depthwise_integer_kernel():
    model = onnx.parser.parse_model(MULTIPLIER_BLOCK)
    weights = {"w1": (8, 8, 3, 3), "w2": (16, 1, 7, 7), "b2": (16,), "w3": (16, 16, 1, 1)}
    model.graph.initializer.extend(numpy_helper.from_array((0.3 * RNG.standard_normal(shape)).astype(np.float32), name) for name, shape in weights.items())
    data = calibrate_on(model, 16)
    # untimed: the integer form of depthwise layers is kept (timed, the float form may be written where it is faster)
    written, report = quantize(model, data, config=QuantConfig(latency_runs=0, accuracy_budget=None))
    assert report.written == "int8"
    assert any(r.name == "expand-depthwise-multipliers" and r.modified for r in report.prepare)
    runs = optimized_graph(written)
    convolutions = {next(a.i for a in n.attribute if a.name == "group") if any(a.name == "group" for a in n.attribute) else 1
                    for n in runs.graph.node if n.op_type == "QLinearConv"}
    # the multiplier layer is a 16-channel depthwise one, in integer (the output layer stays float, quantize's default)
    assert convolutions == {1, 16} and ops(runs)["QLinearConv"] == 2
    float_model = [run_model(model, feed)[0] for feed in data[:4]]
    int8_model = [run_model(written, feed)[0] for feed in data[:4]]
    for reference, candidate in zip(float_model, int8_model):
        cosine = float(np.sum(reference * candidate) / np.linalg.norm(reference) / np.linalg.norm(candidate))
        assert cosine > 0.99
