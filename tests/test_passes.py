import numpy as np
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
