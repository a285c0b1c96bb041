"""fuse-quantized-attention: a QDQ self-attention block as one QAttention, with the same outputs, or left alone."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxslim.errors import NothingToDoError
from onnxslim.passes import DeclineCode
from onnxslim.passes.attention import fuse_quantized_attention
from onnxslim.runtime.kernels import runs_quantized_attention
from tests.conftest import run_model
from tests.test_pass_contract import on_a_copy
from tests.test_quantize import ops

DIM, HEADS, SEQ = 16, 2, 6


def qdq_attention(*, mask: str | None = "padding", order=("q", "k", "v"), scale_op: str = "Div", extra_output: str | None = None,
                  split_heads_with_shape: bool = True, mask_first: bool = False, sliced_shapes: bool = False, merge_shape=(0, 0, DIM)) -> onnx.ModelProto:
    """x (1, SEQ, DIM) -> QDQ merged query/key/value projection -> attention as exporters write it -> y.

    ``mask``: 'padding' ((1 - R) * -10000 from a 2-D input R), 'bias' (a constant added to the scores), or None.
    ``order``: which of q, k, v the Split gives first. ``extra_output``: a tensor of the block also made a graph output.
    ``split_heads_with_shape``: the Reshape shapes computed from Shape of q, k, v as torch exports them.
    ``mask_first``: the mask as the Add's first operand.
    ``sliced_shapes``: the head shapes from Shape(x, start, end) slices and Reshape allowzero=1, as torch.export writes them.
    ``merge_shape``: the constant shape the heads are joined back to.
    """
    rng = np.random.default_rng(0)
    width = DIM
    head = DIM // HEADS
    blocks = {name: rng.integers(-127, 128, (DIM, width), dtype=np.int8) for name in "qkv"}
    scales = {name: rng.uniform(0.004, 0.008, width).astype(np.float32) for name in "qkv"}
    biases = {name: rng.normal(0, 0.1, width).astype(np.float32) for name in "qkv"}
    inits = [
        numpy_helper.from_array(np.concatenate([blocks[n] for n in order], axis=1), "w_stored"),
        numpy_helper.from_array(np.concatenate([scales[n] for n in order]), "w_scale"),
        numpy_helper.from_array(np.zeros(3 * width, np.int8), "w_zero"),
        numpy_helper.from_array(np.concatenate([biases[n] for n in order]), "bias"),
        numpy_helper.from_array(np.array(0.03, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(128, np.uint8), "x_zero"),
        numpy_helper.from_array(np.array([width] * 3, np.int64), "widths"),
        numpy_helper.from_array(np.array(merge_shape, np.int64), "merge_shape"),
        numpy_helper.from_array(np.array(np.sqrt(head), np.float32) if scale_op == "Div" else np.array(1 / np.sqrt(head), np.float32), "scale"),
        numpy_helper.from_array(np.array([HEADS], np.int64), "heads"),
        numpy_helper.from_array(np.array([head], np.int64), "head"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([1], np.int64), "one_index"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(-10000.0, np.float32), "filler"),
        numpy_helper.from_array(np.array([1, 2], np.int64), "mask_axes"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w_stored", "w_scale", "w_zero"], ["w"], axis=1),
        helper.make_node("MatMul", ["xd", "w"], ["qkv"]),
        helper.make_node("Add", ["qkv", "bias"], ["qkv_biased"]),
        helper.make_node("Split", ["qkv_biased", "widths"], list(order), axis=-1),
    ]
    for name, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
        if sliced_shapes:  # Concat(Shape(x, 0, 1), Shape(x, 1, 2), N, H)
            nodes += [
                helper.make_node("Shape", ["x"], [f"{name}_b"], start=0, end=1),
                helper.make_node("Shape", ["x"], [f"{name}_s"], start=1, end=2),
                helper.make_node("Concat", [f"{name}_b", f"{name}_s", "heads", "head"], [f"{name}_heads_shape"], axis=0),
            ]
        elif split_heads_with_shape:  # Concat(Unsqueeze(Gather(Shape(t), 0)), Unsqueeze(Gather(Shape(t), 1)), N, H)
            nodes += [
                helper.make_node("Shape", [name], [f"{name}_shape"]),
                helper.make_node("Gather", [f"{name}_shape", "zero"], [f"{name}_b"], axis=0),
                helper.make_node("Gather", [f"{name}_shape", "one_index"], [f"{name}_s"], axis=0),
                helper.make_node("Concat", [f"{name}_b", f"{name}_s", "heads", "head"], [f"{name}_heads_shape"], axis=0),
            ]
        else:
            inits.append(numpy_helper.from_array(np.array([0, 0, HEADS, head], np.int64), f"{name}_heads_shape"))
        nodes += [helper.make_node("Reshape", [name, f"{name}_heads_shape"], [f"{name}_split"], **({"allowzero": 1} if sliced_shapes else {})),
                  helper.make_node("Transpose", [f"{name}_split"], [f"{name}_t"], perm=perm)]
    nodes += [helper.make_node("MatMul", ["q_t", "k_t"], ["scores"]), helper.make_node(scale_op, ["scores", "scale"], ["scaled"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, SEQ, DIM])]
    logits = "scaled"
    if mask == "padding":
        inputs.append(helper.make_tensor_value_info("keep", TensorProto.INT64, [1, SEQ]))
        nodes += [
            helper.make_node("Unsqueeze", ["keep", "mask_axes"], ["keep4"]),
            helper.make_node("Cast", ["keep4"], ["keep_float"], to=TensorProto.FLOAT),
            helper.make_node("Sub", ["one", "keep_float"], ["dropped"]),
            helper.make_node("Mul", ["dropped", "filler"], ["mask"]),
            helper.make_node("Add", ["mask", "scaled"] if mask_first else ["scaled", "mask"], ["masked"]),
        ]
        logits = "masked"
    elif mask == "bias":
        inits.append(numpy_helper.from_array(rng.normal(0, 1, (1, 1, SEQ, SEQ)).astype(np.float32), "score_bias"))
        nodes.append(helper.make_node("Add", ["scaled", "score_bias"], ["masked"]))
        logits = "masked"
    nodes += [
        helper.make_node("Softmax", [logits], ["weights"], axis=-1),
        helper.make_node("MatMul", ["weights", "v_t"], ["context"]),
        helper.make_node("Transpose", ["context"], ["context_t"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["context_t", "merge_shape"], ["y"]),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, None, merge_shape[2] if merge_shape[2] > 0 else DIM])]
    if extra_output:
        outputs.append(helper.make_tensor_value_info(extra_output, TensorProto.FLOAT, [1, SEQ, DIM] if extra_output == "k" else [1, HEADS, SEQ, SEQ]))
    graph = helper.make_graph(nodes, "qdq_attention", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15 if sliced_shapes else 13)])
    onnx.checker.check_model(model)
    return model


def feed(model: onnx.ModelProto) -> dict:
    rng = np.random.default_rng(1)
    data = {"x": rng.normal(0, 1, (1, SEQ, DIM)).astype(np.float32)}
    if any(v.name == "keep" for v in model.graph.input):
        data["keep"] = np.array([[1, 1, 1, 1, 0, 0]], np.int64)
    return data


def unread(model: onnx.ModelProto) -> set[str]:
    read = {i for n in model.graph.node for i in n.input}
    return {t.name for t in model.graph.initializer if t.name not in read}


@pytest.mark.parametrize("mask", ["padding", None])
@pytest.mark.parametrize("order", [("q", "k", "v"), ("k", "v", "q")])
@pytest.mark.parametrize("scale_op", ["Div", "Mul"])
def test_a_qdq_attention_block_becomes_one_qattention_with_the_same_outputs(mask, order, scale_op):
    model = onnx.shape_inference.infer_shapes(qdq_attention(mask=mask, order=order, scale_op=scale_op))  # every tensor annotated
    fused, result = on_a_copy(fuse_quantized_attention, model)
    produced = {o for n in fused.graph.node for o in n.output}
    assert model.graph.value_info and all(v.name in produced for v in fused.graph.value_info)  # no shape left of a removed tensor
    assert result.modified and len(result.changes) == 1
    assert ops(fused) == ({"QuantizeLinear": 1, "QAttention": 1} | ({"Cast": 1} if mask else {}))  # the shape arithmetic went with it
    before, after = run_model(model, feed(model))[0], run_model(fused, feed(model))[0]
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
    assert unread(fused) <= unread(model)  # the merged weight, the shape and mask constants went with their nodes


@pytest.mark.parametrize("variant", [{"split_heads_with_shape": False}, {"mask_first": True}, {"sliced_shapes": True}])
def test_constant_or_sliced_head_shapes_and_a_mask_added_first_are_read_too(variant):
    model = qdq_attention(**variant)
    fused, result = on_a_copy(fuse_quantized_attention, model)
    assert ops(fused).get("QAttention") == 1
    np.testing.assert_allclose(run_model(fused, feed(model))[0], run_model(model, feed(model))[0], rtol=1e-5, atol=1e-5)


def test_heads_joined_by_a_shape_onnxruntime_folded_are_read_too():
    """A session saved at 'extended' folds the join's Concat to [0, -1, width]: the -1 is the sequence when width is every head's."""
    model = qdq_attention(merge_shape=(0, -1, DIM))
    fused, result = on_a_copy(fuse_quantized_attention, model)
    assert ops(fused).get("QAttention") == 1
    np.testing.assert_allclose(run_model(fused, feed(model))[0], run_model(model, feed(model))[0], rtol=1e-5, atol=1e-5)
    other = qdq_attention(merge_shape=(0, -1, DIM // 2))  # twice the rows, half the width: not attention's output
    assert "QAttention" not in ops(on_a_copy(fuse_quantized_attention, other)[0])


def test_a_mask_that_is_not_padding_is_left_alone():
    model = qdq_attention(mask="bias")
    fused, result = on_a_copy(fuse_quantized_attention, model)
    assert not result.modified and "QAttention" not in ops(fused)
    (decline,) = result.declined
    assert decline.reason.code == DeclineCode.UNSUPPORTED_FORM and "score_bias" in decline.reason.text and decline.where == "weights"


@pytest.mark.parametrize("extra_output", ["k", "weights"])
def test_a_block_whose_tensors_are_read_elsewhere_is_left_alone(extra_output):
    model = qdq_attention(extra_output=extra_output)
    fused, result = on_a_copy(fuse_quantized_attention, model)
    assert not result.modified and "QAttention" not in ops(fused)
    if extra_output == "k":  # the core matched and the Split's output is wanted outside it
        assert [d.reason.code for d in result.declined] == [DeclineCode.SHARED_VALUE]


def test_this_onnxruntime_runs_qattention_as_the_unfused_graph_computes_it():
    # quantize fuses attention only where this probe passes; the onnxruntime the project installs must pass it
    assert runs_quantized_attention()


def test_a_literal_zero_dimension_is_not_taken_for_a_copy():
    model = qdq_attention(split_heads_with_shape=False)
    for node in model.graph.node:
        if node.op_type == "Reshape" and node.output[0] == "q_split":
            node.attribute.append(helper.make_attribute("allowzero", 1))  # [0, 0, N, H] would then mean zero rows: not this block
    model.opset_import[0].version = 14
    result = fuse_quantized_attention(model)  # not through the contract's checks: such a block has no valid shapes to infer
    assert not result.modified and "QAttention" not in ops(model)


def test_a_block_whose_tensor_an_if_branch_reads_is_left_alone():
    model = qdq_attention()
    branch = [helper.make_node("Identity", ["k"], ["picked_k"])]
    body = helper.make_graph(branch, "branch", [], [helper.make_tensor_value_info("picked_k", TensorProto.FLOAT, [1, SEQ, DIM])])
    model.graph.node.append(helper.make_node("If", ["flag"], ["picked"], then_branch=body, else_branch=body))
    model.graph.input.append(helper.make_tensor_value_info("flag", TensorProto.BOOL, []))
    model.graph.output.append(helper.make_tensor_value_info("picked", TensorProto.FLOAT, [1, SEQ, DIM]))
    onnx.checker.check_model(model)
    fused, result = on_a_copy(fuse_quantized_attention, model)
    assert not result.modified and [d.reason.code for d in result.declined] == [DeclineCode.SHARED_VALUE]


def fused_attention_model(mask_rank: int = 2, *, seed: int = 3) -> onnx.ModelProto:
    """x (1, SEQ, DIM) -> onnxruntime's fused com.microsoft Attention (mask_index 2-D ones and zeros, or 1-D lengths) -> MatMul -> y,
    as its transformer optimizer writes a layer."""
    rng = np.random.default_rng(seed)
    weight = (rng.standard_normal((DIM, 3 * DIM)) / np.sqrt(DIM)).astype(np.float32)
    bias = (0.1 * rng.standard_normal(3 * DIM)).astype(np.float32)
    out = (rng.standard_normal((DIM, DIM)) / np.sqrt(DIM)).astype(np.float32)
    nodes = [
        helper.make_node("Attention", ["x", "qkv_weight", "qkv_bias", "mask_index"], ["context"], name="fused_attention", domain="com.microsoft", num_heads=HEADS),
        helper.make_node("MatMul", ["context", "out_weight"], ["projected"], name="projection"),
        helper.make_node("Relu", ["projected"], ["y"], name="relu"),
    ]
    mask = helper.make_tensor_value_info("mask_index", TensorProto.INT32, [1, SEQ] if mask_rank == 2 else [1])
    graph = helper.make_graph(nodes, "fused", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, SEQ, DIM]), mask],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, SEQ, DIM])],
                              [numpy_helper.from_array(a, n) for a, n in ((weight, "qkv_weight"), (bias, "qkv_bias"), (out, "out_weight"))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def fused_attention_batches(mask_rank: int, count: int = 30, *, seed: int = 4) -> list[dict]:
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(count):
        length = int(rng.integers(2, SEQ + 1))
        mask = (np.arange(SEQ) < length).astype(np.int32)[None] if mask_rank == 2 else np.array([length], np.int32)
        batches.append({"x": rng.standard_normal((1, SEQ, DIM)).astype(np.float32), "mask_index": mask})
    return batches


@pytest.mark.skipif(not runs_quantized_attention(), reason="this onnxruntime has no QAttention kernel that matches the unfused graph")
@pytest.mark.parametrize("mask_rank", [2, 1])
def test_onnxruntimes_fused_attention_is_quantized_as_qattention(mask_rank):
    from onnxslim import QuantConfig, quantize

    model = fused_attention_model(mask_rank)
    batches = fused_attention_batches(mask_rank)
    quantized, report = quantize(model, batches, config=QuantConfig(latency_runs=0, accuracy_budget=None))
    decision = next(d for d in report.decisions if d.node == "fused_attention")
    assert decision.quantized and "QAttention" in decision.reason.text
    assert ops(quantized)["QAttention"] == 1 and ops(quantized)["Attention"] == 0
    assert report.integer_kernels.get("QAttention") == 1
    # the codes, scales, bias and mask QAttention reads give what the float Attention computes on the dequantized values
    feeds = fused_attention_batches(mask_rank, 5, seed=9)
    expected = [run_model(model, feed)[0] for feed in feeds]
    got = [run_model(quantized, feed)[0] for feed in feeds]
    for e, g in zip(expected, got):
        assert np.dot(e.ravel(), g.ravel()) / np.linalg.norm(e) / np.linalg.norm(g) > 0.99


def test_a_fused_attention_with_state_it_cannot_carry_stays_float():
    from onnxslim import QuantConfig, quantize

    model = fused_attention_model()
    model.graph.node[0].attribute.append(helper.make_attribute("unidirectional", 1))
    with pytest.raises(NothingToDoError, match="Attention 1: fused attention with unidirectional=1: QAttention does not compute it the same way"):
        quantize(model, fused_attention_batches(2), config=QuantConfig(latency_runs=0, accuracy_budget=None))
