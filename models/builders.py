"""Small ONNX models, built with onnx.helper, covering the graph shapes onnxslim must handle.

Every builder is deterministic (seeded weights) and returns a checked
``ModelProto`` whose single input is named ``input`` unless said otherwise.
Weights are scaled so that activations stay in a realistic range.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


class GraphBuilder:
    """A tiny helper that names tensors and collects nodes and initializers."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.counter = 0

    def name(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}_{self.counter}"

    def const(self, array: np.ndarray, prefix: str = "w") -> str:
        name = self.name(prefix)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], n_out: int = 1, **attrs) -> str | list[str]:
        outputs = [self.name(op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=self.name(op), **attrs))
        return outputs[0] if n_out == 1 else outputs

    def weight(self, *shape: int, fan_in: int | None = None) -> np.ndarray:
        fan = fan_in if fan_in is not None else int(np.prod(shape[1:])) or 1
        return (self.rng.standard_normal(shape) * np.sqrt(2.0 / fan)).astype(np.float32)

    def conv(self, x: str, c_in: int, c_out: int, k: int = 3, stride: int = 1, groups: int = 1, bias: bool = True) -> str:
        w = self.const(self.weight(c_out, c_in // groups, k, k))
        inputs = [x, w]
        if bias:
            inputs.append(self.const((self.rng.standard_normal(c_out) * 0.1).astype(np.float32), "b"))
        return self.node("Conv", inputs, kernel_shape=[k, k], pads=[k // 2] * 4, strides=[stride, stride], group=groups)

    def batchnorm(self, x: str, channels: int) -> str:
        gamma = self.const((1.0 + 0.2 * self.rng.standard_normal(channels)).astype(np.float32), "gamma")
        beta = self.const((0.1 * self.rng.standard_normal(channels)).astype(np.float32), "beta")
        mean = self.const((0.1 * self.rng.standard_normal(channels)).astype(np.float32), "mean")
        var = self.const((0.5 + self.rng.random(channels)).astype(np.float32), "var")
        return self.node("BatchNormalization", [x, gamma, beta, mean, var], epsilon=1e-5)

    def linear(self, x: str, d_in: int, d_out: int, bias: bool = True) -> str:
        y = self.node("MatMul", [x, self.const(self.weight(d_in, d_out, fan_in=d_in))])
        if bias:
            y = self.node("Add", [y, self.const((0.1 * self.rng.standard_normal(d_out)).astype(np.float32), "b")])
        return y

    def model(self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto], name: str, opset: int = OPSET) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="onnxslim-models")
        model.ir_version = min(model.ir_version, 8 if opset <= 17 else 10)  # the oldest that holds the opset
        onnx.checker.check_model(model)
        return model


def _image_input(channels: int, size: int, batch: int | str = 1) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, channels, size, size])


def _output(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _rename_output(b: GraphBuilder, tensor: str, name: str) -> None:
    for node in b.nodes:
        for index, out in enumerate(node.output):
            if out == tensor:
                node.output[index] = name


def conv_bn_relu(channels: int = 16, size: int = 32, *, seed: int = 0, batch: int | str = 1) -> onnx.ModelProto:
    """Conv -> BatchNorm -> Relu, twice, then global pooling and a classifier."""
    b = GraphBuilder(seed)
    x = b.node("Relu", [b.batchnorm(b.conv("input", 3, channels, bias=False), channels)])
    x = b.node("Relu", [b.batchnorm(b.conv(x, channels, channels * 2, stride=2), channels * 2)])
    x = b.node("GlobalAveragePool", [x])
    x = b.node("Flatten", [x], axis=1)
    w = b.const(b.weight(10, channels * 2))
    bias = b.const(np.zeros(10, np.float32), "b")
    y = b.node("Gemm", [x, w, bias], transB=1)
    _rename_output(b, y, "logits")
    return b.model([_image_input(3, size, batch)], [_output("logits", [batch, 10])], "conv_bn_relu")


def residual(channels: int = 16, size: int = 16, blocks: int = 2, *, seed: int = 1) -> onnx.ModelProto:
    """A stem conv and residual blocks (conv-relu-conv + skip Add, then Relu)."""
    b = GraphBuilder(seed)
    x = b.node("Relu", [b.conv("input", 3, channels)])
    for _ in range(blocks):
        y = b.node("Relu", [b.conv(x, channels, channels)])
        y = b.conv(y, channels, channels)
        x = b.node("Relu", [b.node("Add", [x, y])])
    x = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    y = b.conv(x, channels, 4, k=1)
    _rename_output(b, y, "features")
    return b.model([_image_input(3, size)], [_output("features", [1, 4, size // 2, size // 2])], "residual")


def depthwise_separable(channels: int = 16, size: int = 16, *, seed: int = 2) -> onnx.ModelProto:
    """Pointwise expand, depthwise 3x3 (group = channels), squeeze-and-excitation gate, pointwise project."""
    b = GraphBuilder(seed)
    x = b.node("Relu", [b.conv("input", 3, channels, k=1)])
    x = b.node("Relu", [b.conv(x, channels, channels, groups=channels)])
    gate = b.node("GlobalAveragePool", [x])
    gate = b.node("Relu", [b.conv(gate, channels, channels // 4, k=1)])
    gate = b.node("HardSigmoid", [b.conv(gate, channels // 4, channels, k=1)], alpha=1.0 / 6, beta=0.5)
    x = b.node("Mul", [x, gate])
    y = b.conv(x, channels, 8, k=1)
    _rename_output(b, y, "features")
    return b.model([_image_input(3, size)], [_output("features", [1, 8, size, size])], "depthwise_separable")


def _silu(b: GraphBuilder, x: str) -> str:
    return b.node("Mul", [x, b.node("Sigmoid", [x])])


def silu_se_block(channels: int = 16, size: int = 16, *, seed: int = 14, activation: str = "silu", pool: str = "global") -> onnx.ModelProto:
    """An EfficientNet block: pointwise expand, depthwise 3x3, SiLU after each (x * Sigmoid(x)), squeeze-excitation
    with a Sigmoid gate, pointwise project and a residual Add. ``activation="leaky"`` uses LeakyRelu instead of SiLU;
    ``pool="reduce_mean"`` pools as torch's dynamo exporter writes it (ReduceMean over axes 2 and 3)."""
    b = GraphBuilder(seed)

    def act(x: str) -> str:
        return _silu(b, x) if activation == "silu" else b.node("LeakyRelu", [x], alpha=0.1)

    stem = act(b.conv("input", 3, channels, k=1))
    x = act(b.conv(stem, channels, channels * 2, k=1))
    x = act(b.conv(x, channels * 2, channels * 2, groups=channels * 2))
    gate = b.node("GlobalAveragePool", [x]) if pool == "global" else b.node("ReduceMean", [x], axes=[2, 3], keepdims=1)
    gate = act(b.conv(gate, channels * 2, channels // 2, k=1))
    gate = b.node("Sigmoid", [b.conv(gate, channels // 2, channels * 2, k=1)])
    x = b.node("Mul", [x, gate])
    x = b.node("Add", [stem, b.conv(x, channels * 2, channels, k=1)])
    y = b.conv(x, channels, 8, k=1)
    _rename_output(b, y, "features")
    return b.model([_image_input(3, size)], [_output("features", [1, 8, size, size])], "silu_se_block")


def hardswish_block(channels: int = 16, expanded: int = 24, size: int = 16, *, seed: int = 24, batchnorm: bool = False) -> onnx.ModelProto:
    """A MobileNetV3 block: pointwise expand to ``expanded`` channels (24: not a multiple of 16), HardSwish, depthwise 3x3,
    HardSwish, squeeze-excitation with a HardSigmoid gate, pointwise project, residual Add. ``batchnorm`` leaves a
    BatchNormalization after the depthwise layer unfolded (the expand layer's output is read twice)."""
    b = GraphBuilder(seed)
    stem = b.node("HardSwish", [b.conv("input", 3, channels)])
    x = b.node("HardSwish", [b.conv(stem, channels, expanded, k=1)])
    x = b.conv(x, expanded, expanded, groups=expanded)
    if batchnorm:
        x = b.batchnorm(x, expanded)
    x = b.node("HardSwish", [x])
    gate = b.node("GlobalAveragePool", [x])
    gate = b.node("Relu", [b.conv(gate, expanded, channels // 2, k=1)])
    gate = b.node("HardSigmoid", [b.conv(gate, channels // 2, expanded, k=1)], alpha=1.0 / 6, beta=0.5)
    x = b.node("Mul", [x, gate])
    x = b.node("Add", [stem, b.conv(x, expanded, channels, k=1)])
    y = b.conv(x, channels, 8, k=1)
    _rename_output(b, y, "features")
    return b.model([_image_input(3, size)], [_output("features", [1, 8, size, size])], "hardswish_block")


def widening_residual(narrow: int = 24, wide: int = 28, size: int = 16, *, seed: int = 31, activation: str = "Relu") -> onnx.ModelProto:
    """BlazeFace's block as tf2onnx writes a TFLite export: depthwise 3x3 and pointwise ``narrow`` -> ``wide`` beside a
    shortcut widened by a Pad of zero channels, their Add and a Relu, then a depthwise layer over the ``wide`` channels."""
    b = GraphBuilder(seed)
    stem = b.node(activation, [b.conv("input", 3, narrow)])
    x = b.conv(b.conv(stem, narrow, narrow, groups=narrow), narrow, wide, k=1)
    shortcut = b.node("Pad", [stem, b.const(np.array([0, 0, 0, 0, 0, wide - narrow, 0, 0], np.int64), "channel_pads")])
    x = b.node("Relu", [b.node("Add", [x, shortcut])])
    y = b.conv(b.conv(x, wide, wide, groups=wide), wide, 8, k=1)
    _rename_output(b, y, "features")
    return b.model([_image_input(3, size)], [_output("features", [1, 8, size, size])], "widening_residual")


def grouped_conv(channels: int = 16, groups: int = 4, size: int = 16, *, seed: int = 3) -> onnx.ModelProto:
    """Conv -> grouped Conv (``groups`` groups) -> Conv."""
    b = GraphBuilder(seed)
    x = b.node("Relu", [b.conv("input", 3, channels)])
    x = b.node("Relu", [b.conv(x, channels, channels, groups=groups)])
    y = b.conv(x, channels, 8, k=1)
    _rename_output(b, y, "features")
    return b.model([_image_input(3, size)], [_output("features", [1, 8, size, size])], "grouped_conv")


def concat_split(channels: int = 8, size: int = 16, *, seed: int = 4) -> onnx.ModelProto:
    """Two branches concatenated on channels, a conv, then Split back into two heads."""
    b = GraphBuilder(seed)
    left = b.node("Relu", [b.conv("input", 3, channels)])
    right = b.node("Relu", [b.conv("input", 3, channels * 2, k=1)])
    x = b.node("Concat", [left, right], axis=1)
    x = b.node("Relu", [b.conv(x, channels * 3, channels * 2)])
    split = b.const(np.array([channels, channels], dtype=np.int64), "split")
    head_a, head_b = b.node("Split", [x, split], n_out=2, axis=1)
    ya = b.conv(head_a, channels, 4, k=1)
    yb = b.conv(head_b, channels, 4, k=1)
    _rename_output(b, ya, "head_a")
    _rename_output(b, yb, "head_b")
    outs = [_output("head_a", [1, 4, size, size]), _output("head_b", [1, 4, size, size])]
    return b.model([_image_input(3, size)], outs, "concat_split")


def mlp(d_in: int = 32, hidden: int = 64, d_out: int = 10, *, seed: int = 5, batch: int | str = 1) -> onnx.ModelProto:
    """Gemm -> Relu -> Gemm -> Relu -> Gemm."""
    b = GraphBuilder(seed)
    x = "input"
    for fan_in, fan_out in ((d_in, hidden), (hidden, hidden)):
        w = b.const(b.weight(fan_out, fan_in))
        x = b.node("Relu", [b.node("Gemm", [x, w, b.const((0.1 * b.rng.standard_normal(fan_out)).astype(np.float32), "b")], transB=1)])
    y = b.node("Gemm", [x, b.const(b.weight(d_out, hidden)), b.const(np.zeros(d_out, np.float32), "b")], transB=1)
    _rename_output(b, y, "logits")
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, d_in])]
    return b.model(inputs, [_output("logits", [batch, d_out])], "mlp")


def outlier_mlp(width: int = 64, layers: int = 4, *, seed: int = 15) -> onnx.ModelProto:
    """MatMul -> Relu chains whose first weight ignores input channel 0 (zero row): fed :func:`outlier_inputs`,
    the first layer's per-tensor INT8 input scale is set by a channel nothing reads, as activation outliers do in
    real transformers, and rounds every other channel to zero; the later layers quantize well."""
    b = GraphBuilder(seed)
    x = "input"
    for i in range(layers):
        w = b.weight(width, width).T.copy()
        if i == 0:
            w[0, :] = 0.0
        x = b.node("MatMul", [x, b.const(w)])
        if i < layers - 1:
            x = b.node("Relu", [x])
    _rename_output(b, x, "features")
    return b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", width])], [_output("features", ["batch", width])], "outlier_mlp")


def outlier_inputs(count: int, width: int = 64, *, scale: float = 3000.0, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Batches for :func:`outlier_mlp`: normal values with channel 0 ``scale`` times larger."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(count):
        x = rng.standard_normal((8, width)).astype(np.float32)
        x[:, 0] *= scale
        batches.append({"input": x})
    return batches


def _layernorm(b: GraphBuilder, x: str, dim: int) -> str:
    scale = b.const((1.0 + 0.1 * b.rng.standard_normal(dim)).astype(np.float32), "ln_scale")
    bias = b.const((0.05 * b.rng.standard_normal(dim)).astype(np.float32), "ln_bias")
    return b.node("LayerNormalization", [x, scale, bias], axis=-1, epsilon=1e-5)


def transformer_block(dim: int = 32, heads: int = 4, ffn: int = 64, seq: int = 8, *, seed: int = 6) -> onnx.ModelProto:
    """Pre-norm encoder block: multi-head self-attention and a GELU feed-forward, both residual.

    The head split is spelled out as exporters write it: MatMul -> Add ->
    Reshape (B, S, H, D) -> Transpose (B, H, S, D), scaled dot product with
    Softmax, then Transpose -> Reshape back and the output projection.
    """
    b = GraphBuilder(seed)
    head_dim = dim // heads
    split_shape = b.const(np.array([0, 0, heads, head_dim], dtype=np.int64), "shape")
    merge_shape = b.const(np.array([0, 0, dim], dtype=np.int64), "shape")
    h = _layernorm(b, "input", dim)

    def heads_of(t: str, perm: list[int]) -> str:
        return b.node("Transpose", [b.node("Reshape", [t, split_shape])], perm=perm)

    q = heads_of(b.linear(h, dim, dim), [0, 2, 1, 3])
    k = heads_of(b.linear(h, dim, dim), [0, 2, 3, 1])
    v = heads_of(b.linear(h, dim, dim), [0, 2, 1, 3])
    scores = b.node("Mul", [b.node("MatMul", [q, k]), b.const(np.array(1.0 / np.sqrt(head_dim), np.float32), "scale")])
    attn = b.node("MatMul", [b.node("Softmax", [scores], axis=-1), v])
    merged = b.node("Reshape", [b.node("Transpose", [attn], perm=[0, 2, 1, 3]), merge_shape])
    x = b.node("Add", ["input", b.linear(merged, dim, dim)])
    h = _layernorm(b, x, dim)
    h = _gelu(b, b.linear(h, dim, ffn))
    y = b.node("Add", [x, b.linear(h, ffn, dim)])
    _rename_output(b, y, "hidden")
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, seq, dim])]
    return b.model(inputs, [_output("hidden", [1, seq, dim])], "transformer_block")


def _gelu(b: GraphBuilder, x: str) -> str:
    """GELU spelled out with Erf, as PyTorch exports it before opset 20."""
    scaled = b.node("Div", [x, b.const(np.array(np.sqrt(2.0), np.float32), "sqrt2")])
    erf = b.node("Add", [b.node("Erf", [scaled]), b.const(np.array(1.0, np.float32), "one")])
    return b.node("Mul", [b.node("Mul", [x, erf]), b.const(np.array(0.5, np.float32), "half")])


def constant_node_weights(channels: int = 8, size: int = 16, *, seed: int = 7, opset: int = 11) -> onnx.ModelProto:
    """A conv net whose weights sit in Constant nodes, at an old opset, as Paddle2ONNX writes them."""
    model = residual(channels, size, blocks=1, seed=seed)
    graph = model.graph
    constants = [helper.make_node("Constant", [], [t.name], value=t) for t in graph.initializer]
    del graph.initializer[:]
    nodes = constants + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("", opset))
    onnx.checker.check_model(model)
    return model


def generated_weights(channels: int = 64, size: int = 8) -> onnx.ModelProto:
    """Two 3x3 convolutions whose weight ConstantOfShape makes at run time, as in onnx's "light" model graphs.

    Folding it would grow the file from a few bytes to ``channels**2 * 9`` floats, which onnxslim declines.
    """
    import onnx.parser

    return onnx.parser.parse_model(f"""
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, {channels}, {size}, {size}] x) => (float[1, {channels}, {size}, {size}] y) {{
    shape = Constant <value = int64[4] {{{channels}, {channels}, 3, 3}}> ()
    w = ConstantOfShape <value = float[1] {{0.01}}> (shape)
    c = Conv <pads = [1, 1, 1, 1]> (x, w)
    r = Relu (c)
    y = Conv <pads = [1, 1, 1, 1]> (r, w)
}}
""")


def mixed_range_concat(size: int = 8, *, seed: int = 8) -> onnx.ModelProto:
    """A detector-style head: box coordinates in pixels concatenated with class scores in 0..1.

    Both branches end in an activation that folds into a quantizer (Relu, Clip to
    0..1), so a naive quantizer would give the Concat one shared scale.
    """
    b = GraphBuilder(seed)
    x = b.node("Relu", [b.conv("input", 3, 8)])
    w = b.const(b.weight(4, 8, 1, 1) * 300.0)
    boxes = b.node("Relu", [b.node("Conv", [x, w, b.const(np.full(4, 200.0, np.float32), "b")], kernel_shape=[1, 1])])
    scores = b.node("Clip", [b.conv(x, 8, 3, k=1), b.const(np.array(0.0, np.float32), "lo"), b.const(np.array(1.0, np.float32), "hi")])
    y = b.node("Concat", [boxes, scores], axis=1)
    _rename_output(b, y, "detections")
    return b.model([_image_input(3, size)], [_output("detections", [1, 7, size, size])], "mixed_range_concat")


def channel_shuffle(channels: int = 8, size: int = 8, units: int = 2, *, seed: int = 9) -> onnx.ModelProto:
    """ShuffleNetV2 units as PyTorch exports them.

    ``chunk`` splits the channels in half through Shape -> Gather -> Add ->
    Div -> Mul -> Slice; one half passes, the other goes through 1x1, depthwise
    3x3 and 1x1 convolutions; the halves are concatenated and shuffled by
    Reshape (N, 2, C/2, H, W) -> Transpose -> Reshape (N, C, H, W).
    """
    b = GraphBuilder(seed)
    x = b.node("Relu", [b.conv("input", 3, channels)])
    half = channels // 2
    split_shape = b.const(np.array([1, 2, half, size, size], np.int64), "shape")
    merge_shape = b.const(np.array([1, channels, size, size], np.int64), "shape")
    for _ in range(units):
        count = b.node("Gather", [b.node("Shape", [x]), b.const(np.array(1, np.int64), "index")], axis=0)
        middle = b.node("Div", [b.node("Add", [count, b.const(np.array(1, np.int64), "one")]), b.const(np.array(2, np.int64), "two")])
        middle = b.node("Unsqueeze", [middle, b.const(np.array([0], np.int64), "axes")])
        end = b.node("Mul", [middle, b.const(np.array([2], np.int64), "two")])
        axis = b.const(np.array([1], np.int64), "axis")
        kept = b.node("Slice", [x, b.const(np.array([0], np.int64), "start"), middle, axis])
        branch = b.node("Slice", [x, middle, end, axis])
        branch = b.node("Relu", [b.conv(branch, half, half, k=1)])
        branch = b.node("Relu", [b.conv(b.conv(branch, half, half, groups=half), half, half, k=1)])
        joined = b.node("Concat", [kept, branch], axis=1)
        shuffled = b.node("Transpose", [b.node("Reshape", [joined, split_shape])], perm=[0, 2, 1, 3, 4])
        x = b.node("Reshape", [shuffled, merge_shape])
    pooled = b.node("Flatten", [b.node("GlobalAveragePool", [x])])
    logits = b.node("Gemm", [pooled, b.const(b.weight(10, channels)), b.const(np.zeros(10, np.float32), "b")], transB=1)
    _rename_output(b, logits, "logits")
    return b.model([_image_input(3, size)], [_output("logits", [1, 10])], "channel_shuffle")


def packed_attention(dim: int = 16, heads: int = 4, seq: int = 8, *, seed: int = 11) -> onnx.ModelProto:
    """Self-attention as nn.MultiheadAttention exports it (ViT): one packed Q/K/V projection.

    (S, 1, E) -> MatMul (E, 3E) -> Reshape (S, 1, 3, E) -> Unsqueeze -> Transpose ->
    Squeeze -> Gather 0 / 1 / 2, each Reshape (S, H, D) (a batch of one merged into
    the heads) -> Transpose -> Reshape (1, H, S, D); attention; Transpose ->
    Reshape (S, E) -> Gemm output projection -> Reshape (S, 1, E), residual.
    """
    b = GraphBuilder(seed)
    head_dim = dim // heads
    packed = b.linear("input", dim, 3 * dim)
    split = b.node("Reshape", [packed, b.const(np.array([seq, 1, 3, dim], np.int64), "shape")])
    moved = b.node("Transpose", [b.node("Unsqueeze", [split, b.const(np.array([0], np.int64), "axes")])], perm=[3, 1, 2, 0, 4])
    parts = b.node("Squeeze", [moved, b.const(np.array([3], np.int64), "axes")])
    per_head = b.const(np.array([seq, heads, head_dim], np.int64), "shape")
    batched = b.const(np.array([1, heads, seq, head_dim], np.int64), "shape")

    def part(index: int) -> str:
        x = b.node("Gather", [parts, b.const(np.array(index, np.int64), "index")], axis=0)
        return b.node("Reshape", [b.node("Transpose", [b.node("Reshape", [x, per_head])], perm=[1, 0, 2]), batched])

    q, k, v = part(0), part(1), part(2)
    scores = b.node("MatMul", [b.node("Mul", [q, b.const(np.array(head_dim**-0.5, np.float32), "scale")]), b.node("Transpose", [k], perm=[0, 1, 3, 2])])
    attn = b.node("MatMul", [b.node("Softmax", [scores], axis=-1), v])
    merged = b.node("Reshape", [b.node("Transpose", [attn], perm=[2, 0, 1, 3]), b.const(np.array([seq, dim], np.int64), "shape")])
    projected = b.node("Gemm", [merged, b.const(b.weight(dim, dim)), b.const(np.zeros(dim, np.float32), "b")], transB=1)
    y = b.node("Add", ["input", b.node("Reshape", [projected, b.const(np.array([seq, 1, dim], np.int64), "shape")])])
    _rename_output(b, y, "hidden")
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [seq, 1, dim])]
    return b.model(inputs, [_output("hidden", [seq, 1, dim])], "packed_attention")


def _attention_block(b: GraphBuilder, q: str, k: str, v: str, dim: int, head_dim: int, seq: int, name: str) -> onnx.ModelProto:
    """The rest of a (1, S, E) self-attention block from its (1, H, S, D) queries, keys and values: scores scaled by
    1 / sqrt(D), Softmax, the heads merged back into (1, S, E), an output projection with bias, the residual."""
    scores = b.node("MatMul", [b.node("Mul", [q, b.const(np.array(head_dim**-0.5, np.float32), "scale")]), b.node("Transpose", [k], perm=[0, 1, 3, 2])])
    attn = b.node("MatMul", [b.node("Softmax", [scores], axis=-1), v])
    merged = b.node("Reshape", [b.node("Transpose", [attn], perm=[0, 2, 1, 3]), b.const(np.array([1, seq, dim], np.int64), "shape")])
    y = b.node("Add", ["input", b.linear(merged, dim, dim)])
    _rename_output(b, y, "hidden")
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, seq, dim])]
    return b.model(inputs, [_output("hidden", [1, seq, dim])], name)


def unbound_attention(dim: int = 16, heads: int = 4, seq: int = 8, *, seed: int = 13, unbind: str = "split") -> onnx.ModelProto:
    """Self-attention as timm's ``Attention`` exports it (ViT-Tiny): packed Q/K/V taken apart by ``unbind``.

    (1, N, C) -> MatMul (C, 3C) + bias -> Reshape (1, N, 3, H, D) -> Transpose (2, 0, 3, 1, 4) ->
    unbind along axis 0 -> q, k, v (1, H, N, D); attention; Transpose -> Reshape (1, N, C) ->
    output projection, residual. ``unbind``: 'split' (Split, then a Squeeze of each part, as the
    TorchScript exporter writes it) or 'slice' (a Slice and a Squeeze per part, as torch.export does).
    """
    b = GraphBuilder(seed)
    head_dim = dim // heads
    packed = b.linear("input", dim, 3 * dim)
    heads_view = b.node("Reshape", [packed, b.const(np.array([1, seq, 3, heads, head_dim], np.int64), "shape")])
    moved = b.node("Transpose", [heads_view], perm=[2, 0, 3, 1, 4])
    axis0 = b.const(np.array([0], np.int64), "axes")
    if unbind == "split":
        parts = b.node("Split", [moved, b.const(np.array([1, 1, 1], np.int64), "split")], n_out=3, axis=0)
    else:
        parts = [b.node("Slice", [moved, b.const(np.array([i], np.int64), "start"), b.const(np.array([i + 1], np.int64), "end"), axis0]) for i in range(3)]
    q, k, v = (b.node("Squeeze", [part, axis0]) for part in parts)
    return _attention_block(b, q, k, v, dim, head_dim, seq, "unbound_attention")


def window_attention(dim: int = 16, heads: int = 4, tokens: int = 8, windows: int = 2, *, seed: int = 12, position_bias: str = "stored") -> onnx.ModelProto:
    """Swin's window attention: the packed Q/K/V reshaped straight into (3, heads, head size).

    (W, N, E) -> MatMul (E, 3E) -> Reshape (W, N, 3, H, D) -> Transpose (3, W, H, N, D) ->
    Gather 0 / 1 / 2; scores plus a per-head relative position bias (H, N, N); attention;
    Transpose -> Reshape (W, N, E) -> output projection, residual. ``position_bias``: 'stored' (one constant) or
    'gathered' (Swin V2's form: a (2N - 1, H) table gathered by each pair's relative position at run time, Reshape
    (N, N, H), Transpose (H, N, N), 16 * Sigmoid) or 'interpolated' (BEiT's: gathered for N / 2 positions, then
    Unsqueeze, Resize to (1, H, N, N), Squeeze).
    """
    b = GraphBuilder(seed)
    head_dim = dim // heads
    packed = b.linear("input", dim, 3 * dim)
    split = b.node("Reshape", [packed, b.const(np.array([windows, tokens, 3, heads, head_dim], np.int64), "shape")])
    parts = b.node("Transpose", [split], perm=[2, 0, 3, 1, 4])
    q, k, v = (b.node("Gather", [parts, b.const(np.array(i, np.int64), "index")], axis=0) for i in range(3))
    scores = b.node("MatMul", [b.node("Mul", [q, b.const(np.array(head_dim**-0.5, np.float32), "scale")]), b.node("Transpose", [k], perm=[0, 1, 3, 2])])
    if position_bias == "stored":
        bias = b.const((0.1 * b.rng.standard_normal((heads, tokens, tokens))).astype(np.float32), "position_bias")
    else:
        # 'interpolated' (BEiT at another resolution): gathered for half the tokens, then resized over positions
        n = tokens // 2 if position_bias == "interpolated" else tokens
        table = b.const((0.1 * b.rng.standard_normal((2 * n - 1, heads))).astype(np.float32), "bias_table")
        relative = (np.arange(n)[:, None] - np.arange(n)[None, :] + n - 1).reshape(-1).astype(np.int64)
        gathered = b.node("Gather", [table, b.const(relative, "relative_index")], axis=0)
        by_pair = b.node("Reshape", [gathered, b.const(np.array([n, n, heads], np.int64), "shape")])
        if position_bias == "interpolated":
            batched = b.node("Unsqueeze", [b.node("Transpose", [by_pair], perm=[2, 0, 1]), b.const(np.array([0], np.int64), "axes")])
            sizes = b.const(np.array([1, heads, tokens, tokens], np.int64), "sizes")
            resized = b.node("Resize", [batched, "", "", sizes], mode="linear")
            bias = b.node("Squeeze", [resized, b.const(np.array([0], np.int64), "axes")])
        else:
            squashed = b.node("Sigmoid", [b.node("Transpose", [by_pair], perm=[2, 0, 1])])
            bias = b.node("Mul", [squashed, b.const(np.array(16.0, np.float32), "sixteen")])
    scores = b.node("Add", [scores, bias])
    attn = b.node("MatMul", [b.node("Softmax", [scores], axis=-1), v])
    merged = b.node("Reshape", [b.node("Transpose", [attn], perm=[0, 2, 1, 3]), b.const(np.array([windows, tokens, dim], np.int64), "shape")])
    y = b.node("Add", ["input", b.linear(merged, dim, dim)])
    _rename_output(b, y, "hidden")
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [windows, tokens, dim])]
    return b.model(inputs, [_output("hidden", [windows, tokens, dim])], "window_attention")


def grouped_query_attention(dim: int = 32, heads: int = 4, kv_heads: int = 2, seq: int = 8, *, seed: int = 15) -> onnx.ModelProto:
    """Causal self-attention as torch.export writes a Llama block: grouped-query heads and rotary positions.

    (1, S, E) -> Q (E, H*D), K and V (E, Hkv*D) -> Reshape (1, S, -1, D) -> Transpose (1, h, S, D);
    rotary positions on Q and K (x * cos + cat(-x2, x1) * sin, halves of the head size); K and V
    repeated for the H / Hkv query heads of their group (Unsqueeze, Expand (1, Hkv, H / Hkv, S, D),
    Reshape (1, H, S, D)); scores plus a causal mask, Softmax, its NaNs zeroed (IsNaN, Where);
    Transpose -> Reshape (1, S, -1) -> output projection, residual.
    """
    b = GraphBuilder(seed)
    head_dim, repeat = dim // heads, heads // kv_heads
    half = head_dim // 2
    angles = np.arange(seq)[:, None] / 100.0 ** (np.arange(head_dim) % half / half)
    cos, sin = (b.const(f(angles).reshape(1, 1, seq, head_dim).astype(np.float32), name) for f, name in ((np.cos, "cos"), (np.sin, "sin")))
    last = b.const(np.array([3], np.int64), "axes")

    def heads_of(x: str) -> str:
        return b.node("Transpose", [b.node("Reshape", [x, b.const(np.array([1, seq, -1, head_dim], np.int64), "shape")])], perm=[0, 2, 1, 3])

    def rotary(x: str) -> str:
        first = b.node("Slice", [x, b.const(np.array([0], np.int64), "start"), b.const(np.array([half], np.int64), "end"), last])
        second = b.node("Slice", [x, b.const(np.array([half], np.int64), "start"), b.const(np.array([head_dim], np.int64), "end"), last])
        turned = b.node("Concat", [b.node("Neg", [second]), first], axis=3)
        return b.node("Add", [b.node("Mul", [x, cos]), b.node("Mul", [turned, sin])])

    def repeated(x: str) -> str:
        grown = b.node("Unsqueeze", [x, b.const(np.array([2], np.int64), "axes")])
        grown = b.node("Expand", [grown, b.const(np.array([1, kv_heads, repeat, seq, head_dim], np.int64), "shape")])
        return b.node("Reshape", [grown, b.const(np.array([1, heads, seq, head_dim], np.int64), "shape")])

    q = rotary(heads_of(b.linear("input", dim, dim, bias=False)))
    k = repeated(rotary(heads_of(b.linear("input", dim, kv_heads * head_dim, bias=False))))
    v = repeated(heads_of(b.linear("input", dim, kv_heads * head_dim, bias=False)))
    causal = np.triu(np.full((seq, seq), -np.inf, np.float32), 1).reshape(1, 1, seq, seq)
    scores = b.node("MatMul", [b.node("Mul", [q, b.const(np.array(head_dim**-0.5, np.float32), "scale")]), b.node("Transpose", [k], perm=[0, 1, 3, 2])])
    weights = b.node("Softmax", [b.node("Add", [scores, b.const(causal, "mask")])], axis=-1)
    weights = b.node("Where", [b.node("IsNaN", [weights]), b.const(np.array(0.0, np.float32), "zero"), weights])
    attn = b.node("MatMul", [weights, v])
    merged = b.node("Reshape", [b.node("Transpose", [attn], perm=[0, 2, 1, 3]), b.const(np.array([1, seq, -1], np.int64), "shape")])
    y = b.node("Add", ["input", b.linear(merged, dim, dim, bias=False)])
    _rename_output(b, y, "hidden")
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, seq, dim])]
    return b.model(inputs, [_output("hidden", [1, seq, dim])], "grouped_query_attention")


def split_attention(dim: int = 16, heads: int = 4, seq: int = 8, *, seed: int = 16) -> onnx.ModelProto:
    """Self-attention as GPT-2 exports it: one packed Q/K/V projection cut into three equal parts by a Split without sizes.

    (1, S, E) -> MatMul (E, 3E) + bias -> Split (3 equal parts of the last axis) -> each Reshape (1, S, H, D)
    -> Transpose (1, H, S, D); attention; Transpose -> Reshape (1, S, E) -> output projection, residual.
    """
    b = GraphBuilder(seed)
    head_dim = dim // heads
    q, k, v = (
        b.node("Transpose", [b.node("Reshape", [part, b.const(np.array([1, seq, heads, head_dim], np.int64), "shape")])], perm=[0, 2, 1, 3])
        for part in b.node("Split", [b.linear("input", dim, 3 * dim)], n_out=3, axis=-1)
    )
    return _attention_block(b, q, k, v, dim, head_dim, seq, "split_attention")


def convnext_block(channels: int = 16, size: int = 8, *, seed: int = 10) -> onnx.ModelProto:
    """A ConvNeXt block: depthwise 7x7, permute to channels-last, LayerNorm over channels, MLP, layer scale, residual."""
    b = GraphBuilder(seed)
    x = b.conv("input", 3, channels, k=3)
    h = b.node("Transpose", [b.conv(x, channels, channels, k=7, groups=channels)], perm=[0, 2, 3, 1])
    h = _gelu(b, b.linear(_layernorm(b, h, channels), channels, 4 * channels))
    h = b.node("Mul", [b.linear(h, 4 * channels, channels), b.const(np.full(channels, 0.5, np.float32), "gamma")])
    x = b.node("Add", [x, b.node("Transpose", [h], perm=[0, 3, 1, 2])])
    pooled = b.node("Flatten", [b.node("GlobalAveragePool", [x])])
    logits = b.node("Gemm", [pooled, b.const(b.weight(10, channels)), b.const(np.zeros(10, np.float32), "b")], transB=1)
    _rename_output(b, logits, "logits")
    return b.model([_image_input(3, size)], [_output("logits", [1, 10])], "convnext_block")


def _take_nodes(b: GraphBuilder) -> list[onnx.NodeProto]:
    taken, b.nodes = b.nodes, []
    return taken


def _as_constant_nodes(b: GraphBuilder, first: int) -> list[onnx.NodeProto]:
    """The initializers added since index ``first``, moved into Constant nodes (weights a subgraph holds itself)."""
    moved = b.initializers[first:]
    del b.initializers[first:]
    return [helper.make_node("Constant", [], [t.name], name=f"{t.name}_Constant", value=t) for t in moved]


def branching_convs(channels: int = 16, size: int = 16, *, seed: int = 20) -> onnx.ModelProto:
    """A conv stem, then an If on the input's mean choosing between two conv blocks.

    The then branch reads its weights and the stem's output from the main graph
    (as exporters write it); the else branch holds its weights in Constant nodes.
    Both branches run on inputs whose mean has either sign.
    """
    b = GraphBuilder(seed)
    stem = b.node("Relu", [b.conv("input", 3, channels)])
    cond = b.node("Greater", [b.node("ReduceMean", ["input"], keepdims=0), b.const(np.float32(0.0), "zero")])
    main = _take_nodes(b)
    then_out = b.node("Add", [b.conv(b.node("Relu", [b.conv(stem, channels, channels)]), channels, channels), stem])
    then_nodes = _take_nodes(b)
    first = len(b.initializers)
    else_out = b.conv(b.node("Relu", [b.conv(stem, channels, channels, k=1)]), channels, channels)
    else_nodes = _as_constant_nodes(b, first) + _take_nodes(b)
    shape = [1, channels, size, size]
    then_graph = helper.make_graph(then_nodes, "then_block", [], [_output(then_out, shape)])
    else_graph = helper.make_graph(else_nodes, "else_block", [], [_output(else_out, shape)])
    chosen = b.name("chosen")
    b.nodes = [*main, helper.make_node("If", [cond], [chosen], name="choose_block", then_branch=then_graph, else_branch=else_graph)]
    pooled = b.node("Flatten", [b.node("GlobalAveragePool", [chosen])])
    logits = b.node("Gemm", [pooled, b.const(b.weight(10, channels)), b.const(np.zeros(10, np.float32), "b")], transB=1)
    _rename_output(b, logits, "logits")
    return b.model([_image_input(3, size)], [_output("logits", [1, 10])], "branching_convs")


def looped_mlp(width: int = 32, steps: int = 3, *, seed: int = 21, with_branch: bool = False) -> onnx.ModelProto:
    """A Loop applying the same residual MLP layer ``steps`` times (weights read from the main graph).

    ``with_branch``: the layer sits in an If inside the loop body, choosing one
    of two weight sets by the parity of the iteration (a nested subgraph).
    """
    b = GraphBuilder(seed)
    x = b.node("Relu", [b.linear("input", width, width)])
    main = _take_nodes(b)

    def layer(h: str) -> str:
        return b.node("Add", [h, b.node("Relu", [b.linear(h, width, width)])])

    carried, step, keep_going = b.name("h"), b.name("step"), b.name("cond")
    if with_branch:
        parity = b.node("Equal", [b.node("Mod", [step, b.const(np.int64(2), "two")]), b.const(np.int64(0), "zero")])
        outer = _take_nodes(b)
        even, odd = layer(carried), None
        even_graph = helper.make_graph(_take_nodes(b), "even_step", [], [_output(even, [1, width])])
        odd = layer(carried)
        odd_graph = helper.make_graph(_take_nodes(b), "odd_step", [], [_output(odd, [1, width])])
        result = b.name("stepped")
        b.nodes = [*outer, helper.make_node("If", [parity], [result], name="pick_step", then_branch=even_graph, else_branch=odd_graph)]
    else:
        result = layer(carried)
    still = b.node("Identity", [keep_going])
    body = helper.make_graph(
        _take_nodes(b), "step_body",
        [helper.make_tensor_value_info(step, TensorProto.INT64, []), helper.make_tensor_value_info(keep_going, TensorProto.BOOL, []), _output(carried, [1, width])],
        [helper.make_tensor_value_info(still, TensorProto.BOOL, []), _output(result, [1, width])],
    )
    looped = b.name("looped")
    trips, always = b.const(np.int64(steps), "trips"), b.const(np.bool_(True), "always")
    b.nodes = [*main, helper.make_node("Loop", [trips, always, x], [looped], name="repeat_layer", body=body)]
    logits = b.linear(looped, width, 10)
    _rename_output(b, logits, "logits")
    return b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, width])], [_output("logits", [1, 10])], "looped_mlp")


def scanned_cell(width: int = 16, steps: int = 6, *, seed: int = 22) -> onnx.ModelProto:
    """A Scan over the time axis: a recurrent cell h = tanh(x_t W + h U + c), every step's h as the scan output."""
    b = GraphBuilder(seed)
    state, x_t = b.name("state"), b.name("x_t")
    mixed = b.node("Add", [b.linear(x_t, width, width), b.linear(state, width, width, bias=False)])
    new_state = b.node("Tanh", [mixed])
    emitted = b.node("Identity", [new_state])
    body = helper.make_graph(
        _take_nodes(b), "cell",
        [_output(state, [1, width]), _output(x_t, [1, width])],
        [_output(new_state, [1, width]), _output(emitted, [1, width])],
    )
    start = b.const(np.zeros((1, width), np.float32), "h0")
    final, every = b.name("final"), b.name("every")
    b.nodes = [helper.make_node("Scan", [start, "input"], [final, every], name="run_cell", body=body, num_scan_inputs=1)]
    logits = b.linear(final, width, 4)
    _rename_output(b, logits, "logits")
    return b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, [steps, 1, width])], [_output("logits", [1, 4])], "scanned_cell")


def stopping_decoder(width: int = 16, hidden: int = 48, max_steps: int = 12, *, seed: int = 30) -> onnx.ModelProto:
    """An encoder (two linear layers) and a decoder Loop that stops on its own: each step h = tanh(h W + c) is emitted, and
    the loop goes on while the sum of h stays below a threshold, so how many steps ``steps`` holds follows the input
    (as a table or text decoder exported with its search in the graph stops at its end token)."""
    b = GraphBuilder(seed)
    encoded = b.linear(b.node("Relu", [b.linear("input", width, hidden)]), hidden, width)
    main = _take_nodes(b)
    step, keep_going, carried = b.name("step"), b.name("cond"), b.name("h")
    stepped = b.node("Tanh", [b.linear(carried, width, width)])
    emitted = b.node("Identity", [stepped])
    still = b.node("Less", [b.node("ReduceSum", [stepped], keepdims=0), b.const(np.float32(0.5), "threshold")])
    body = helper.make_graph(
        _take_nodes(b), "decode_step",
        [helper.make_tensor_value_info(step, TensorProto.INT64, []), helper.make_tensor_value_info(keep_going, TensorProto.BOOL, []), _output(carried, [1, width])],
        [helper.make_tensor_value_info(still, TensorProto.BOOL, []), _output(stepped, [1, width]), _output(emitted, [1, width])],
    )
    trips, always = b.const(np.int64(max_steps), "max_steps"), b.const(np.bool_(True), "start")
    b.nodes = [*main, helper.make_node("Loop", [trips, always, encoded], ["last", "steps"], name="decode", body=body)]
    return b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, width])], [_output("steps", ["T", 1, width])], "stopping_decoder")


def _by_rate(b: GraphBuilder, cond: str, branch) -> onnx.NodeProto:
    """The If ``by_rate`` on ``cond`` with ``branch(name)`` in both branches: the then branch reads its weights from the
    main graph's initializers, the else branch holds its own in Constant nodes."""
    then_graph = branch("rate_16k")
    first = len(b.initializers)
    else_graph = branch("rate_8k")
    nodes = [*_as_constant_nodes(b, first), *else_graph.node]
    del else_graph.node[:]
    else_graph.node.extend(nodes)
    return helper.make_node("If", [cond], ["speech"], name="by_rate", then_branch=then_graph, else_branch=else_graph)


def rate_branches(features: int = 16, hidden: int = 32, *, seed: int = 23, recurrent: str = "LSTM") -> onnx.ModelProto:
    """A voice-activity-shaped model: the sample rate input picks an If branch, each a 1-D conv front end and an LSTM (or a GRU).

    ``input`` is (1, features, T) audio features, ``sr`` an int64 scalar (16000 takes the then branch). The then
    branch reads its weights from the main graph; the else branch holds its own in Constant nodes.
    """
    b = GraphBuilder(seed)
    cond = b.node("Equal", ["sr", b.const(np.int64(16000), "rate")])
    main = _take_nodes(b)

    def branch(name: str) -> onnx.GraphProto:
        w = b.const(b.weight(hidden, features, 3))
        h = b.node("Relu", [b.node("Conv", ["input", w, b.const(np.zeros(hidden, np.float32), "b")], kernel_shape=[3], pads=[1, 1])])
        steps = b.node("Transpose", [h], perm=[2, 0, 1])  # (T, 1, hidden): sequence first for the LSTM
        count = {"LSTM": 4, "GRU": 3}[recurrent]
        gates = [b.const((b.rng.standard_normal((1, count * hidden, hidden)) * 0.15).astype(np.float32), p) for p in ("W", "R")]
        seq = b.node(recurrent, [steps, *gates], hidden_size=hidden)
        last = b.node("Squeeze", [seq, b.const(np.array([1], np.int64), "axis")])  # (T, 1, hidden)
        prob = b.node("Sigmoid", [b.linear(last, hidden, 1)])
        return helper.make_graph(_take_nodes(b), name, [], [_output(prob, ["T", 1, 1])])

    b.nodes = [*main, _by_rate(b, cond, branch)]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, features, "T"]), helper.make_tensor_value_info("sr", TensorProto.INT64, [])]
    return b.model(inputs, [_output("speech", ["T", 1, 1])], "rate_branches")


def rate_branch_convs(features: int = 8, hidden: int = 32, *, seed: int = 29, front: bool = False) -> onnx.ModelProto:
    """The sample rate input picks an If branch holding the whole network (two 1-D convolutions and a linear score),
    as scripted voice-activity exports do: the main graph itself has no layer (``front``: it has a front end of two
    1-D convolutions of its own, whose output the branches read).

    ``input`` is (1, features, T), ``sr`` an int64 scalar (16000 takes the then branch). The then branch reads its
    weights from the main graph, whose ``weight_energy`` output also reads the first one; the else branch holds its
    own in Constant nodes.
    """
    b = GraphBuilder(seed)
    cond = b.node("Equal", ["sr", b.const(np.int64(16000), "rate")])
    source = "input"
    if front:
        inner = b.node("Relu", [b.node("Conv", [source, b.const(b.weight(hidden, features, 3)), b.const(np.zeros(hidden, np.float32), "b")], kernel_shape=[3], pads=[1, 1])])
        source = b.node("Conv", [inner, b.const(b.weight(features, hidden, 1)), b.const(np.zeros(features, np.float32), "b")], kernel_shape=[1])
    main = _take_nodes(b)
    shared = []

    def branch(name: str) -> onnx.GraphProto:
        w1 = b.const(b.weight(hidden, features, 3))
        shared.append(w1)
        h = b.node("Relu", [b.node("Conv", [source, w1, b.const((0.1 * b.rng.standard_normal(hidden)).astype(np.float32), "b")], kernel_shape=[3], pads=[1, 1])])
        h = b.node("Relu", [b.node("Conv", [h, b.const(b.weight(hidden, hidden, 3)), b.const(np.zeros(hidden, np.float32), "b")], kernel_shape=[3], pads=[1, 1])])
        steps = b.node("Transpose", [h], perm=[0, 2, 1])  # (1, T, hidden)
        score = b.node("Sigmoid", [b.linear(steps, hidden, 1)])
        return helper.make_graph(_take_nodes(b), name, [], [_output(score, [1, "T", 1])])

    by_rate = _by_rate(b, cond, branch)
    energy = b.node("ReduceSumSquare", [shared[0]], keepdims=0)
    _rename_output(b, energy, "weight_energy")
    b.nodes = [*main, by_rate, *b.nodes]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, features, "T"]), helper.make_tensor_value_info("sr", TensorProto.INT64, [])]
    return b.model(inputs, [_output("speech", [1, "T", 1]), _output("weight_energy", [])], "rate_branch_convs")


CONTROL_FLOW_BUILDERS = {
    "branching_convs": branching_convs,
    "looped_mlp": looped_mlp,
    "looped_branches": lambda: looped_mlp(with_branch=True),
    "scanned_cell": scanned_cell,
}


def upsample_head(channels: int = 16, size: int = 16, *, seed: int = 17) -> onnx.ModelProto:
    """A segmentation head: strided features brought back to full size by a linear Resize whose output
    ``sizes`` are a constant naming the channel count (as exporters write it once shapes are known), then
    merged with the full-size features."""
    b = GraphBuilder(seed)
    x = b.node("Relu", [b.conv("input", 3, channels)])
    low = b.node("Relu", [b.conv(x, channels, channels, stride=2)])
    sizes = b.const(np.array([1, channels, size, size], np.int64), "sizes")
    up = b.node("Resize", [low, "", "", sizes], mode="linear")
    y = b.conv(b.node("Add", [x, up]), channels, 4, k=1)
    _rename_output(b, y, "mask")
    return b.model([_image_input(3, size)], [_output("mask", [1, 4, size, size])], "upsample_head")


def group_norm(channels: int = 16, groups: int = 4, size: int = 8, *, spelling: str = "reshape", closing: str = "shape", seed: int = 19) -> onnx.ModelProto:
    """Two Conv -> GroupNorm -> Relu blocks (the normalization of UNets and detection heads), then a 1x1 head.

    ``spelling`` "reshape": as torch exports GroupNorm, Reshape (N, G, -1) -> InstanceNormalization (a scale and shift per
    group) -> Reshape back -> Mul and Add per channel, the closing target read from the input's Shape (``closing`` "shape")
    or stored ("constant", as constant folding leaves it once shapes are known). "op": ONNX's GroupNormalization (opset 21:
    a scale and bias per channel).
    """
    b = GraphBuilder(seed)
    x = "input"
    c_in = 3
    for _ in range(2):
        y = b.conv(x, c_in, channels)
        if spelling == "op":
            scale = b.const((1.0 + 0.2 * b.rng.standard_normal(channels)).astype(np.float32), "gamma")
            shift = b.const((0.1 * b.rng.standard_normal(channels)).astype(np.float32), "beta")
            y = b.node("GroupNormalization", [y, scale, shift], num_groups=groups, epsilon=1e-5)
        else:
            rows = b.node("Reshape", [y, b.const(np.array([0, groups, -1], np.int64), "shape")])
            scale = b.const((1.0 + 0.2 * b.rng.standard_normal(groups)).astype(np.float32), "gamma")
            shift = b.const((0.1 * b.rng.standard_normal(groups)).astype(np.float32), "beta")
            rows = b.node("InstanceNormalization", [rows, scale, shift], epsilon=1e-5)
            back = b.node("Shape", [y]) if closing == "shape" else b.const(np.array([1, channels, size, size], np.int64), "shape")
            y = b.node("Reshape", [rows, back])
            y = b.node("Mul", [y, b.const((1.0 + 0.2 * b.rng.standard_normal((channels, 1, 1))).astype(np.float32), "gamma")])
            y = b.node("Add", [y, b.const((0.1 * b.rng.standard_normal((channels, 1, 1))).astype(np.float32), "beta")])
        x, c_in = b.node("Relu", [y]), channels
    head = b.conv(x, channels, 4, k=1)
    _rename_output(b, head, "mask")
    return b.model([_image_input(3, size)], [_output("mask", [1, 4, size, size])], "group_norm", opset=21 if spelling == "op" else OPSET)


ALL_BUILDERS = {
    "conv_bn_relu": conv_bn_relu,
    "residual": residual,
    "depthwise_separable": depthwise_separable,
    "grouped_conv": grouped_conv,
    "concat_split": concat_split,
    "mlp": mlp,
    "transformer_block": transformer_block,
    "constant_node_weights": constant_node_weights,
    "mixed_range_concat": mixed_range_concat,
    "channel_shuffle": channel_shuffle,
    "packed_attention": packed_attention,
    "unbound_attention": unbound_attention,
    "sliced_attention": lambda: unbound_attention(unbind="slice"),
    "window_attention": window_attention,
    "grouped_query_attention": grouped_query_attention,
    "split_attention": split_attention,
    "silu_se_block": silu_se_block,
    "hardswish_block": hardswish_block,
    "widening_residual": widening_residual,
    "upsample_head": upsample_head,
    "group_norm": group_norm,
    "group_norm_constant_target": lambda: group_norm(closing="constant"),
    "group_norm_op": lambda: group_norm(spelling="op"),
}


def sample_inputs(model: onnx.ModelProto, batches: int = 4, seed: int = 100) -> list[dict[str, np.ndarray]]:
    """Random inputs matching ``model``'s static input shapes (dynamic dims become 1)."""
    rng = np.random.default_rng(seed)
    result = []
    for _ in range(batches):
        feed = {}
        for value in model.graph.input:
            shape = [d.dim_value if d.HasField("dim_value") else 1 for d in value.type.tensor_type.shape.dim]
            feed[value.name] = rng.standard_normal(shape).astype(np.float32)
        result.append(feed)
    return result
