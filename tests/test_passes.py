import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from models.builders import GraphBuilder, constant_node_weights, conv_bn_relu, sample_inputs
from onnxslim.ir import load_model
from onnxslim.passes import (
    CLEANUP,
    DeclineCode,
    constants_to_initializers,
    fold_constants,
    fuse_batchnorm,
    remove_dead_nodes,
    remove_identities,
    upgrade_opset,
)
from tests.conftest import run_model


def assert_same_outputs(before, after, atol=1e-5):
    for feed in sample_inputs(before, 2):
        for a, b in zip(run_model(before, feed), run_model(after, feed)):
            np.testing.assert_allclose(a, b, atol=atol, rtol=1e-4)


def test_constants_become_initializers():
    model = constant_node_weights()
    work = load_model(model)
    result = constants_to_initializers(work)
    assert result.modified
    assert not any(n.op_type == "Constant" for n in work.graph.node)
    assert len(work.graph.initializer) == sum(n.op_type == "Constant" for n in model.graph.node)
    assert_same_outputs(model, work)
    assert not constants_to_initializers(work).modified


@pytest.mark.parametrize("op", ["Conv", "ConvTranspose", "Gemm"])
def test_batchnorm_folds_into_layer(op):
    b = GraphBuilder(3)
    if op == "Conv":
        y = b.node("Conv", ["input", b.const(b.weight(6, 2, 3, 3))], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=2)
        shape, out_shape = [1, 4, 8, 8], [1, 6, 8, 8]
        channels = 6
    elif op == "ConvTranspose":
        y = b.node("ConvTranspose", ["input", b.const(b.weight(4, 3, 3, 3)), b.const(np.ones(6, np.float32))], kernel_shape=[3, 3], group=2)
        shape, out_shape = [1, 4, 8, 8], [1, 6, 10, 10]
        channels = 6
    else:
        y = b.node("Gemm", ["input", b.const(b.weight(4, 6)), b.const(np.ones(6, np.float32))], alpha=0.5, beta=2.0)
        shape, out_shape = [2, 4], [2, 6]
        channels = 6
    out = b.batchnorm(y, channels)
    model = b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)], [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)], "bn")
    work = load_model(model)
    result = fuse_batchnorm(work)
    assert result.modified, result.declined
    assert [n.op_type for n in work.graph.node] == [op]
    assert_same_outputs(model, work, atol=1e-4)


def test_batchnorm_not_folded_when_conv_output_is_shared():
    b = GraphBuilder(4)
    y = b.conv("input", 3, 4)
    out = b.batchnorm(y, 4)
    total = b.node("Add", [out, y])
    model = b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])], [helper.make_tensor_value_info(total, TensorProto.FLOAT, [1, 4, 8, 8])], "shared")
    result = fuse_batchnorm(load_model(model))
    assert not result.modified
    assert result.declined[0].reason.code == DeclineCode.SHARED_VALUE and "also read elsewhere" in result.declined[0].reason.text


def test_identity_and_dead_nodes_removed_and_subgraph_reference_kept():
    b = GraphBuilder(5)
    x = b.node("Relu", ["input"])
    alias = b.node("Identity", [x])
    b.node("Sigmoid", [x])  # dead
    then_out = helper.make_tensor_value_info("then_out", TensorProto.FLOAT, [2, 3])
    else_out = helper.make_tensor_value_info("else_out", TensorProto.FLOAT, [2, 3])
    then_graph = helper.make_graph([helper.make_node("Neg", [alias], ["then_out"])], "then", [], [then_out])
    else_graph = helper.make_graph([helper.make_node("Abs", [alias], ["else_out"])], "else", [], [else_out])
    cond = b.const(np.array(True), "cond")
    y = b.node("If", [cond], then_branch=then_graph, else_branch=else_graph)
    model = b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 3])], [helper.make_tensor_value_info(y, TensorProto.FLOAT, [2, 3])], "sub")
    work = load_model(model)
    assert remove_identities(work).modified
    assert remove_dead_nodes(work).modified
    assert [n.op_type for n in work.graph.node] == ["Relu", "If"]
    then_node = work.graph.node[1].attribute[0].g.node[0]
    assert then_node.input[0] == work.graph.node[0].output[0]
    feed = {"input": np.array([[-1.0, 2.0, 3.0], [4.0, -5.0, 6.0]], np.float32)}
    np.testing.assert_array_equal(run_model(model, feed)[0], run_model(work, feed)[0])


def test_chained_identities_are_read_from_the_first_input_in_branches_too():
    b = GraphBuilder(5)
    x = b.node("Relu", ["input"])
    first = b.node("Identity", [x])
    second = b.node("Identity", [first])
    then_out = helper.make_tensor_value_info("then_out", TensorProto.FLOAT, [2, 3])
    then_graph = helper.make_graph([helper.make_node("Neg", [second], ["then_out"])], "then", [], [then_out])
    else_out = helper.make_tensor_value_info("else_out", TensorProto.FLOAT, [2, 3])
    else_graph = helper.make_graph([helper.make_node("Abs", [second], ["else_out"])], "else", [], [else_out])
    y = b.node("If", [b.const(np.array(True), "cond")], then_branch=then_graph, else_branch=else_graph)
    z = b.node("Add", [y, second])
    model = b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 3])], [helper.make_tensor_value_info(z, TensorProto.FLOAT, [2, 3])], "chain")
    work = load_model(model)
    result = remove_identities(work)
    assert result.changes == ["removed 2 Identity/Dropout node(s)"]
    relu = work.graph.node[0].output[0]
    assert [n.op_type for n in work.graph.node] == ["Relu", "If", "Add"] and work.graph.node[2].input[1] == relu
    assert [g.g.node[0].input[0] for g in work.graph.node[1].attribute] == [relu, relu]
    onnx.checker.check_model(work, full_check=True)
    feed = {"input": np.array([[-1.0, 2.0, 3.0], [4.0, -5.0, 6.0]], np.float32)}
    np.testing.assert_array_equal(run_model(model, feed)[0], run_model(work, feed)[0])


def test_identity_feeding_graph_output_is_kept_with_reason():
    b = GraphBuilder(6)
    x = b.node("Relu", ["input"])
    b.nodes.append(helper.make_node("Identity", [x], ["out"], name="final"))
    model = b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, [2])], [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2])], "id")
    result = remove_identities(load_model(model))
    assert not result.modified
    assert result.declined[0].reason.code == DeclineCode.GRAPH_OUTPUT and "graph output" in result.declined[0].reason.text


def test_fold_constants_folds_weight_only_subgraph():
    b = GraphBuilder(7)
    w = b.node("Transpose", [b.const(b.weight(8, 4))], perm=[1, 0])  # weight stored transposed
    y = b.node("MatMul", ["input", w])
    model = b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 4])], [helper.make_tensor_value_info(y, TensorProto.FLOAT, [2, 8])], "fold")
    work = load_model(model)
    result = fold_constants(work)
    assert result.modified and "Transpose" in result.changes[0]
    assert [n.op_type for n in work.graph.node] == ["MatMul"]
    feed = {"input": np.ones((2, 4), np.float32)}
    np.testing.assert_allclose(run_model(model, feed)[0], run_model(work, feed)[0], rtol=1e-6)


def test_upgrade_opset():
    model = constant_node_weights(opset=11)
    work = load_model(model)
    result = upgrade_opset(work, 13)
    assert result.modified
    assert work.opset_import[0].version == 13
    assert not upgrade_opset(work, 13).modified
    assert_same_outputs(model, work)


def test_cleanup_pipeline_on_conv_bn_relu_keeps_numbers():
    model = conv_bn_relu()
    work = load_model(model)
    results = CLEANUP(work)
    assert not any(n.op_type == "BatchNormalization" for n in work.graph.node)
    assert any(r.modified for r in results)
    assert_same_outputs(model, work, atol=1e-4)


def onnxruntime_fused_layers() -> onnx.ModelProto:
    """x -> FusedConv (Relu) -> FusedConv (+ the first's output, LeakyRelu) -> FusedConv (Clip) -> Flatten -> FusedGemm (HardSigmoid),
    as onnxruntime saves a session optimized at its 'extended' level."""
    b = GraphBuilder(41)
    w1, w2, w3 = (b.const(b.weight(8, c, 3, 3)) for c in (3, 8, 8))
    bias = [b.const((0.1 * b.rng.standard_normal(8)).astype(np.float32), "b") for _ in range(3)]
    conv = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    b.nodes += [
        helper.make_node("FusedConv", ["x", w1, bias[0]], ["c1"], name="c1", domain="com.microsoft", activation="Relu", **conv),
        helper.make_node("FusedConv", ["c1", w2, bias[1], "c1"], ["c2"], name="c2", domain="com.microsoft", activation="LeakyRelu",
                         activation_params=[0.2], **conv),
        helper.make_node("FusedConv", ["c2", w3, bias[2]], ["c3"], name="c3", domain="com.microsoft", activation="Clip", activation_params=[0.0, 6.0], **conv),
        helper.make_node("Flatten", ["c3"], ["flat"], name="flat"),
        helper.make_node("FusedGemm", ["flat", b.const(b.weight(10, 8 * 8 * 8)), b.const(np.zeros(10, np.float32), "b")], ["y"], name="head",
                         domain="com.microsoft", transB=1, activation="HardSigmoid", activation_alpha=0.25, activation_beta=0.4),
    ]
    graph = helper.make_graph(b.nodes, "fused", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], b.initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def test_onnxruntimes_fused_layers_are_written_back_as_standard_operators():
    from onnxslim.passes import unfuse_onnxruntime_layers

    model = onnxruntime_fused_layers()
    work = load_model(model)
    result = unfuse_onnxruntime_layers(work)
    assert len(result.changes) == 4 and not result.declined
    assert [n.op_type for n in work.graph.node] == ["Conv", "Relu", "Conv", "Add", "LeakyRelu", "Conv", "Clip", "Flatten", "Gemm", "HardSigmoid"]
    assert all(n.domain == "" for n in work.graph.node)
    assert_same_outputs(model, work)
    unknown = load_model(model)
    unknown.graph.node[0].attribute[0].s = b"Gelu"  # no standard spelling here: left as it is, and said so
    declined = unfuse_onnxruntime_layers(unknown)
    assert declined.declined and declined.declined[0].where == "c1" and unknown.graph.node[0].op_type == "FusedConv"


def fused_matmuls() -> onnx.ModelProto:
    """Attention's query-key product as onnxruntime saves it at 'extended' (alpha: the 1/sqrt(d) scale), and FusedMatMuls that
    swap either operand's last two axes, with and without a scale."""
    b = GraphBuilder(43)
    w = b.const(b.weight(4, 5))
    b.nodes += [
        helper.make_node("FusedMatMul", ["q", "k"], ["scores"], name="qk", domain="com.microsoft", alpha=0.25, transA=0, transB=0),
        helper.make_node("FusedMatMul", ["scores", "v"], ["mixed"], name="sv", domain="com.microsoft", transB=1),
        helper.make_node("FusedMatMul", ["mixed", w], ["projected"], name="proj", domain="com.microsoft", alpha=-1.5, transA=1),
    ]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in (("q", [2, 3, 4, 8]), ("k", [2, 3, 8, 4]), ("v", [2, 3, 6, 4]))]
    graph = helper.make_graph(b.nodes, "fused_matmuls", inputs, [helper.make_tensor_value_info("projected", TensorProto.FLOAT, [2, 3, 6, 5])],
                              b.initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def test_onnxruntimes_fused_matmuls_are_written_back_as_matmuls_and_their_scale():
    from onnxslim.passes import unfuse_onnxruntime_layers

    model = fused_matmuls()
    work = load_model(model)
    result = unfuse_onnxruntime_layers(work)
    assert len(result.changes) == 3 and not result.declined
    assert [n.op_type for n in work.graph.node] == ["MatMul", "Mul", "Transpose", "MatMul", "Transpose", "MatMul", "Mul"]
    assert all(n.domain == "" for n in work.graph.node)
    onnx.checker.check_model(work, full_check=True)
    assert_same_outputs(model, work)
    batched = load_model(model)
    batched.graph.node[0].attribute.append(helper.make_attribute("transBatchA", 1))  # moves batch axes: no one-node spelling
    declined = unfuse_onnxruntime_layers(batched)
    assert [d.where for d in declined.declined] == ["qk"] and "transBatchA" in declined.declined[0].reason.text
    assert batched.graph.node[0].op_type == "FusedMatMul" and len(declined.changes) == 2


def test_a_model_in_onnxruntimes_blocked_layout_is_refused_in_one_line():
    from onnxslim import PruneConfig, QuantConfig, prune, quantize
    from onnxslim.errors import UnsupportedModelError

    model = onnxruntime_fused_layers()
    model.graph.node[0].domain = "com.microsoft.nchwc"
    model.graph.node[0].op_type = "Conv"
    model.opset_import.append(helper.make_opsetid("com.microsoft.nchwc", 1))
    data = sample_inputs(model, 3)
    for run in (lambda: quantize(model, data, config=QuantConfig(latency_runs=0)), lambda: prune(model, data, config=PruneConfig(ratio=0.3, latency_runs=0))):
        with pytest.raises(UnsupportedModelError, match=r"blocked-layout operators \(com.microsoft.nchwc: Conv 1\)"):
            run()


def float16_conv_net() -> onnx.ModelProto:
    """conv_bn_relu with every float in float16, its input and output included: a model exported in half precision."""
    from onnxslim.passes import fuse_batchnorm

    model = load_model(conv_bn_relu())
    fuse_batchnorm(model)
    for index, tensor in enumerate(model.graph.initializer):
        if tensor.data_type == TensorProto.FLOAT:
            model.graph.initializer[index].CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor).astype(np.float16), tensor.name))
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.elem_type = TensorProto.FLOAT16
    del model.graph.value_info[:]
    return model


def test_a_float16_model_is_computed_in_float32_behind_its_float16_interface():
    from onnxslim.passes.widen import float16_to_float32

    model = float16_conv_net()
    work = load_model(model)
    result = float16_to_float32(work)
    assert result.modified and "float16 weight(s) widened exactly" in result.changes[0]
    assert all(t.data_type != TensorProto.FLOAT16 for t in work.graph.initializer)
    assert [v.type.tensor_type.elem_type for v in (*work.graph.input, *work.graph.output)] == [TensorProto.FLOAT16, TensorProto.FLOAT16]
    assert work.graph.node[0].op_type == "Cast" and work.graph.node[-1].op_type == "Cast"
    feed = {"input": np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float16)}
    (half,), (wide,) = run_model(model, feed), run_model(work, feed)
    assert wide.dtype == np.float16 and half.shape == wide.shape
    np.testing.assert_allclose(wide.astype(np.float32), half.astype(np.float32), rtol=0.02, atol=0.02)
    assert not float16_to_float32(work).modified  # once is enough


def test_quantize_takes_a_float16_model_and_says_so():
    from onnxslim import QuantConfig, quantize

    model = float16_conv_net()
    rng = np.random.default_rng(1)
    data = [{"input": rng.standard_normal((1, 3, 32, 32)).astype(np.float16)} for _ in range(10)]
    quantized, report = quantize(model, data, config=QuantConfig(latency_runs=0))
    assert report.original_precision == "FP16" and report.written == "int8"
    assert any(p.name == "float16-to-float32" and p.modified for p in report.prepare)
    assert sum(d.quantized and d.op_type == "Conv" for d in report.decisions) == 2
    assert quantized.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16  # the callers' interface is kept
    assert report.fidelity[0].cosine > 0.99


@pytest.mark.parametrize("equation, x_shape, w_shape", [
    ("bld,dh->blh", (2, 5, 8), (8, 6)),
    ("abc,cde->abde", (2, 5, 8), (8, 3, 4)),  # into heads (Keras' EinsumDense in MultiHeadAttention)
    ("abcd,cde->abe", (2, 5, 3, 4), (3, 4, 8)),  # out of heads
    ("...d,dh->...h", (2, 5, 8), (8, 6)),
    ("dh,bld->blh", (8, 6), (2, 5, 8)),  # the weight first
    ("bld,hd->blh", (2, 5, 8), (6, 8)),  # stored (out, in), as torch's Linear keeps it
    ("abc,ecd->abde", (2, 5, 8), (4, 8, 3)),  # the weight's axes in another order than the product's
])
def test_an_einsum_applying_a_constant_weight_becomes_a_matmul(equation, x_shape, w_shape):
    from onnxslim.passes import einsum_to_matmul

    if equation.startswith("dh"):
        x_shape, w_shape = w_shape, x_shape
    rng = np.random.default_rng(2)
    weight = onnx.numpy_helper.from_array(rng.standard_normal(w_shape).astype(np.float32), "w")
    inputs = ["w", "x"] if equation.startswith("dh") else ["x", "w"]
    node = helper.make_node("Einsum", inputs, ["y"], name="proj", equation=equation)
    graph = helper.make_graph([node], "einsum", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    work = load_model(model)
    result = einsum_to_matmul(work)
    assert result.modified and "Einsum" not in [n.op_type for n in work.graph.node]
    assert next(n for n in work.graph.node if n.op_type == "MatMul").name == "proj"  # the layer keeps its name
    feed = {"x": rng.standard_normal(x_shape).astype(np.float32)}
    np.testing.assert_allclose(run_model(work, feed)[0], run_model(model, feed)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("equation", ["bld,bhd->blh", "bdl,dh->blh", "bii,id->bd"])
def test_einsums_that_are_not_a_plain_product_are_left_alone(equation):
    from onnxslim.passes import einsum_to_matmul

    shapes = {"bld,bhd->blh": ((2, 5, 8), (2, 6, 8)), "bdl,dh->blh": ((2, 8, 5), (8, 6)), "bii,id->bd": ((2, 4, 4), (4, 3))}[equation]
    weight = onnx.numpy_helper.from_array(np.ones(shapes[1], np.float32), "w")
    node = helper.make_node("Einsum", ["x", "w"], ["y"], name="e", equation=equation)
    graph = helper.make_graph([node], "einsum", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shapes[0]))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    work = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = einsum_to_matmul(work)
    assert not result.modified and result.declined and [n.op_type for n in work.graph.node] == ["Einsum"]


def test_a_float16_model_with_external_weights_is_refused_in_one_line(tmp_path, monkeypatch):
    import onnxslim.ir.io as io
    import onnxslim.ir.mapped as mapped
    from onnxslim import QuantConfig, quantize
    from onnxslim.errors import ModelLoadError

    monkeypatch.setattr(io, "EXTERNAL_DATA_THRESHOLD", 0)  # weights left on disk, as for a model over 2 GB
    monkeypatch.setattr(mapped, "MAP_MIN_BYTES", 0)

    model = float16_conv_net()
    path = tmp_path / "half.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="half.onnx.data", size_threshold=0)
    data = [{"input": np.random.default_rng(i).standard_normal((1, 3, 32, 32)).astype(np.float16)} for i in range(6)]
    with pytest.raises(ModelLoadError, match=r"half.onnx: the model computes in float16 and was not widened to float32 \(float16 weights in external data"):
        quantize(str(path), data, config=QuantConfig(latency_runs=0))


def test_layernorm_written_by_onnxruntime_below_opset_17_is_made_valid():
    from onnxslim.passes import layernorm_at_opset_17

    rng = np.random.default_rng(4)
    weights = [onnx.numpy_helper.from_array(a, n) for n, a in (("w", rng.standard_normal((16, 16)).astype(np.float32)),
                                                               ("gamma", np.ones(16, np.float32)), ("beta", np.zeros(16, np.float32)))]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="proj"),
             helper.make_node("LayerNormalization", ["h", "gamma", "beta"], ["y"], name="norm", axis=-1, epsilon=1e-5)]
    graph = helper.make_graph(nodes, "saved", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])  # as an onnxruntime session saves it
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(model)
    work = load_model(model)
    result = layernorm_at_opset_17(work)
    assert result.modified and "14 -> 17" in result.changes[0]
    onnx.checker.check_model(work)
    assert [e.domain for e in work.opset_import] == [""] and work.graph.node[-1].domain == ""
    feed = {"x": rng.standard_normal((1, 4, 16)).astype(np.float32)}
    np.testing.assert_allclose(run_model(work, feed)[0], run_model(model, feed)[0], rtol=1e-5, atol=1e-6)


HEAD_NORM = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[2, 4] x) => (float[2, 3] y, float[2, 3] z) {
    n = BatchNormalization (x, gamma, beta, mean, var)
    y = Gemm <transB = 1> (n, w, b)
    z = Gemm <transB = 1> (x, w2, b)
}
"""


@pytest.mark.parametrize("shared", [False, True])
def test_a_batchnorm_with_no_layer_before_it_folds_into_the_gemm_after_it(shared):
    from tests.test_pass_contract import with_weights

    rng = np.random.default_rng(1)
    text = HEAD_NORM.replace("(x, w2, b)", "(x, w, b)") if shared else HEAD_NORM
    weights = {"gamma": rng.uniform(0.5, 2, 4), "beta": rng.normal(size=4), "mean": rng.normal(size=4), "var": rng.uniform(0.5, 2, 4),
               "w": rng.normal(size=(3, 4)), "b": rng.normal(size=3)} | ({} if shared else {"w2": rng.normal(size=(3, 4))})
    model = with_weights(text, **weights)
    work = load_model(model)
    result = fuse_batchnorm(work)
    if shared:  # a folded copy of a weight another layer reads would grow the model
        assert not result.modified and result.declined[0].reason.code == DeclineCode.SHARED_VALUE
        return
    assert result.changes == ["folded n into Gemm after it"]
    assert [n.op_type for n in work.graph.node] == ["Gemm", "Gemm"]
    assert_same_outputs(model, work)
