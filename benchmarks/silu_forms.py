"""What a SiLU and a squeeze-excitation product cost between two integer convolutions, at EfficientNet-B0's shapes.

    python benchmarks/silu_forms.py --threads 1

Each model is a QDQ depthwise convolution, then the form measured, then a QDQ
1x1 convolution, so that onnxruntime runs the block channels-last in integer
kernels as it does in a quantized EfficientNet. Forms, each timed against the
same block with nothing between the convolutions (interleaved, median of
``--runs``):

- ``se``: the squeeze-excitation product, (1, H, W, C) codes times (1, 1, 1, C)
  codes: QLinearMul broadcasting one value per channel;
- ``se_rows``: the same product on rows: the map's codes seen channels-last as
  (1, H, 1, W * C) and the gate's repeated W times along a row (a Transpose and
  Reshapes that onnxruntime cancels against its own, an Expand of the gate), so
  that QLinearMul's kernel is called once per row instead of once per position;
- ``same``: a product of two tensors of the same shape, the floor for ``se``;
- ``silu_int``: x * Sigmoid(x) as QLinearSigmoid then QLinearMul (what quantize writes);
- ``silu_float``: the same SiLU in float between a DequantizeLinear and a
  QuantizeLinear (the float island a quantizer without integer rules leaves).

Printed: the extra milliseconds of each form per shape, and per element.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.timing import median_latencies  # noqa: E402

# (channels, height = width) of the expanded tensors of EfficientNet-B0's 16 blocks at 224x224
SHAPES = [(32, 112), (96, 56), (144, 56), (144, 28), (240, 28), (240, 14), (480, 14), (672, 14), (672, 7), (1152, 7)]
FORMS = ("none", "se", "se_rows", "same", "silu_int", "silu_float")


def _quantize(name: str, tensor: str, scale: str, zero: str) -> onnx.NodeProto:
    return helper.make_node("QuantizeLinear", [tensor, scale, zero], [name])


def _dequantize(name: str, tensor: str, scale: str, zero: str) -> onnx.NodeProto:
    return helper.make_node("DequantizeLinear", [tensor, scale, zero], [name])


def block(channels: int, size: int, form: str) -> onnx.ModelProto:
    """Depthwise QDQ convolution -> ``form`` -> 1x1 QDQ convolution, NCHW as an exporter writes it."""
    rng = np.random.default_rng(0)
    constants = {
        "act_scale": np.float32(0.05), "act_zero": np.uint8(128), "gate_scale": np.float32(1 / 256), "gate_zero": np.uint8(0),
        "dw": rng.integers(-60, 60, (channels, 1, 3, 3)).astype(np.int8), "dw_scale": np.full(channels, 0.01, np.float32),
        "pw": rng.integers(-60, 60, (channels, channels, 1, 1)).astype(np.int8), "pw_scale": np.full(channels, 0.01, np.float32),
        "w_zero": np.zeros(channels, np.int8),
    }
    nodes = [
        _quantize("x_q", "x", "act_scale", "act_zero"), _dequantize("x_dq", "x_q", "act_scale", "act_zero"),
        _dequantize("dw_dq", "dw", "dw_scale", "w_zero"),
        helper.make_node("Conv", ["x_dq", "dw_dq"], ["h"], group=channels, pads=[1, 1, 1, 1]),
        _quantize("h_q", "h", "act_scale", "act_zero"), _dequantize("h_dq", "h_q", "act_scale", "act_zero"),
    ]
    if form == "se":
        nodes += [_quantize("s_q", "s", "gate_scale", "gate_zero"), _dequantize("s_dq", "s_q", "gate_scale", "gate_zero"),
                  helper.make_node("Mul", ["h_dq", "s_dq"], ["m"])]
    elif form == "se_rows":
        # the same product on rows of W * C codes: channels-last as onnxruntime runs the block, each row of the map
        # one span, the gate repeated W times along it
        def requantized(op: str, source: str, name: str, *extra: str, scale: str = "act_scale", zero: str = "act_zero", **attributes):
            return [helper.make_node(op, [source, *extra], [f"{name}_f"], **attributes), _quantize(f"{name}_q", f"{name}_f", scale, zero),
                    _dequantize(name, f"{name}_q", scale, zero)]
        gate = {"scale": "gate_scale", "zero": "gate_zero"}
        nodes += [_quantize("s_q", "s", "gate_scale", "gate_zero"), _dequantize("s_dq", "s_q", "gate_scale", "gate_zero"),
                  *requantized("Reshape", "s_dq", "s_c", "gate_c", **gate), *requantized("Expand", "s_c", "s_wc", "gate_wc", **gate),
                  *requantized("Reshape", "s_wc", "s_row", "gate_row", **gate),
                  *requantized("Transpose", "h_dq", "h_t", perm=[0, 2, 3, 1]), *requantized("Reshape", "h_t", "h_rows", "rows"),
                  helper.make_node("Mul", ["h_rows", "s_row"], ["m_rows"]), _quantize("m_rows_q", "m_rows", "act_scale", "act_zero"),
                  _dequantize("m_rows_dq", "m_rows_q", "act_scale", "act_zero"),
                  *requantized("Reshape", "m_rows_dq", "m_t", "nhwc"), helper.make_node("Transpose", ["m_t"], ["m"], perm=[0, 3, 1, 2])]
        constants |= {"gate_c": np.array([1, 1, 1, channels], np.int64), "gate_wc": np.array([1, 1, size, channels], np.int64),
                      "gate_row": np.array([1, 1, 1, size * channels], np.int64), "rows": np.array([1, size, 1, size * channels], np.int64),
                      "nhwc": np.array([1, size, size, channels], np.int64)}
    elif form == "same":
        nodes.append(helper.make_node("Mul", ["h_dq", "h_dq"], ["m"]))
    elif form == "silu_int":
        nodes += [helper.make_node("Sigmoid", ["h_dq"], ["g"]), _quantize("g_q", "g", "gate_scale", "gate_zero"),
                  _dequantize("g_dq", "g_q", "gate_scale", "gate_zero"), helper.make_node("Mul", ["h_dq", "g_dq"], ["m"])]
    elif form == "silu_float":
        nodes += [helper.make_node("Sigmoid", ["h_dq"], ["g"]), helper.make_node("Mul", ["h_dq", "g"], ["m"])]
    else:
        nodes.append(helper.make_node("Identity", ["h_dq"], ["m"]))
    nodes += [
        _quantize("m_q", "m", "act_scale", "act_zero"), _dequantize("m_dq", "m_q", "act_scale", "act_zero"),
        _dequantize("pw_dq", "pw", "pw_scale", "w_zero"), helper.make_node("Conv", ["m_dq", "pw_dq"], ["y_float"]),
        _quantize("y_q", "y_float", "act_scale", "act_zero"), _dequantize("y", "y_q", "act_scale", "act_zero"),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size]),
              helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, channels, 1, 1])]
    graph = helper.make_graph(nodes, f"{form}_{channels}x{size}", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in constants.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    totals = dict.fromkeys(FORMS, 0.0)
    print("channels x size: extra ms (ns per element) over the block without anything between its convolutions")
    with tempfile.TemporaryDirectory() as tmp:
        for channels, size in SHAPES:
            paths = []
            for form in FORMS:
                path = Path(tmp) / f"{form}_{channels}_{size}.onnx"
                onnx.save(block(channels, size, form), path)
                paths.append(path)
            rng = np.random.default_rng(1)
            feed = {"x": rng.standard_normal((1, channels, size, size)).astype(np.float32),
                    "s": rng.uniform(size=(1, channels, 1, 1)).astype(np.float32)}
            milliseconds = dict(zip(FORMS, median_latencies(paths, feed, threads=args.threads, runs=args.runs, warmup=10)))
            elements = channels * size * size
            cells = [f"{form} {milliseconds[form] - milliseconds['none']:.3f} ({(milliseconds[form] - milliseconds['none']) / elements * 1e6:.2f})"
                     for form in FORMS[1:]]
            print(f"{channels:5d} x {size:3d}: " + ", ".join(cells))
            for form in FORMS:
                totals[form] += milliseconds[form] - milliseconds["none"]
    print("sum over the shapes (ms): " + ", ".join(f"{form} {totals[form]:.3f}" for form in FORMS[1:]))


if __name__ == "__main__":
    main()
