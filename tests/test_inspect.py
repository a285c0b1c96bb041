import json

from click.testing import CliRunner

from models.builders import conv_bn_relu, transformer_block
from onnxslim import inspect
from onnxslim.cli import main


def test_inspect_counts_parameters_and_macs():
    summary = inspect(conv_bn_relu(channels=16, size=32))
    # conv1: 3->16 3x3 on 32x32, conv2: 16->32 3x3 stride 2 on 16x16, gemm 32->10
    expected = 32 * 32 * 16 * 3 * 9 + 16 * 16 * 32 * 16 * 9 + 32 * 10
    assert summary.macs == expected
    assert not summary.macs_unknown_nodes
    assert summary.op_histogram["Conv"] == 2
    assert summary.inputs[0].shape == (1, 3, 32, 32)


def test_inspect_dynamic_dims_are_named_and_fixable(save):
    path = save(conv_bn_relu(batch="batch"))
    summary = inspect(path)
    assert summary.inputs[0].shape[0] == "batch"
    assert summary.macs_unknown_nodes
    fixed = inspect(path, input_shapes={"input": (2, 3, 32, 32)})
    assert not fixed.macs_unknown_nodes and fixed.macs > 0


def test_cli_inspect_json(save):
    path = save(transformer_block())
    result = CliRunner().invoke(main, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["op_histogram"]["MatMul"] == 8
    assert data["macs"] > 0


def test_layers_inside_if_branches_are_named_as_not_counted():
    from models.builders import rate_branch_convs

    summary = inspect(rate_branch_convs())
    assert summary.macs == 0 and len(summary.macs_in_bodies) == 6  # two convolutions and a MatMul in each branch
    assert summary.to_dict()["macs_complete"] is False


def test_multiply_accumulates_are_counted_through_onnxruntimes_fused_operators():
    from tests.test_prune import fused_ffn

    summary = inspect(fused_ffn())  # onnx's inference types nothing after the fused BiasGelu; onnxruntime does
    assert summary.macs == 2 * 8 * 16 * 32 and summary.macs_unknown_nodes == []


def test_classical_operators_count_the_numbers_their_attributes_hold(save):
    """A scikit-learn export keeps a linear model's coefficients in attributes, not in initializers: 'parameters: 0'
    alone would be false, so the count beside it says how many numbers the ai.onnx.ml operators hold."""
    from onnx import TensorProto, helper

    node = helper.make_node("LinearRegressor", ["X"], ["Y"], domain="ai.onnx.ml", coefficients=[0.5, -1.0, 2.0, 0.25], intercepts=[0.1])
    graph = helper.make_graph([node], "linear", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 1)])
    model.ir_version = 8
    summary = inspect(model)
    assert summary.parameters == 0 and summary.ml_attribute_values == 5
    result = CliRunner().invoke(main, ["inspect", str(save(model))])
    assert result.exit_code == 0 and "parameters: 0 (and 5 in the attributes of ai.onnx.ml operators)" in result.output, result.output


def test_inspect_says_what_type_the_weights_are_stored_in_and_which_are_listed_as_inputs(save):
    import numpy as np
    from onnx import helper, numpy_helper

    model = conv_bn_relu()
    assert inspect(model).weight_types == {"float32": sum(int(np.prod(t.dims)) for t in model.graph.initializer if len(t.dims) >= 2)}
    assert inspect(model).initializers_listed_as_inputs == 0
    first = model.graph.initializer[0]
    first.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(first).astype(np.float16), first.name))
    model.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in model.graph.initializer)
    summary = inspect(model)
    assert set(summary.weight_types) == {"float32", "float16"} and summary.initializers_listed_as_inputs == len(model.graph.initializer)
    result = CliRunner().invoke(main, ["inspect", str(save(model))])
    text = " ".join(result.output.split())
    assert result.exit_code == 0 and "float16" in text and f"{len(model.graph.initializer)} initializer(s) are listed as graph inputs too" in text
