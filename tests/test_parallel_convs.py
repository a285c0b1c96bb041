"""parallel-convs-as-one: the branches of a training-time multi-branch block summed into one convolution."""

import numpy as np
import onnx
import pytest

from onnxslim import PruneConfig, prune
from onnxslim.ir.counts import count_parameters
from onnxslim.passes import CLEANUP, DeclineCode, parallel_convs_as_one
from tests.conftest import run_model
from tests.test_pass_contract import assert_same_outputs, on_a_copy, with_weights

RNG = np.random.default_rng(3)


def feed(shape=(1, 4, 8, 8)) -> dict:
    return {"x": RNG.normal(size=shape).astype(np.float32)}


MOBILEONE_BLOCK = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 4, 8, 8] x) => (float[1, 4, 8, 8] y) {
    a = Conv <pads = [1, 1, 1, 1]> (x, wa, ba)
    b = Conv <pads = [1, 1, 1, 1]> (x, wb, bb)
    c = Conv <pads = [0, 0, 0, 0]> (x, wc)
    n = BatchNormalization <epsilon = 0.001> (x, gamma, beta, mean, var)
    ab = Add (a, b)
    abc = Add (ab, c)
    s = Add (abc, n)
    y = Relu (s)
}
"""


def mobileone_block() -> onnx.ModelProto:
    return with_weights(MOBILEONE_BLOCK, wa=RNG.normal(size=(4, 4, 3, 3)), ba=RNG.normal(size=4), wb=RNG.normal(size=(4, 4, 3, 3)),
                        bb=RNG.normal(size=4), wc=RNG.normal(size=(4, 4, 1, 1)), gamma=RNG.uniform(0.5, 2, 4), beta=RNG.normal(size=4),
                        mean=RNG.normal(size=4), var=RNG.uniform(0.5, 2, 4))


def test_every_branch_of_a_multi_branch_block_becomes_one_conv():
    model = mobileone_block()
    work, result = on_a_copy(parallel_convs_as_one, model)
    assert [n.op_type for n in work.graph.node] == ["Conv", "Relu"]
    assert len(result.changes) == 3 and not result.declined
    conv = work.graph.node[0]
    assert list(conv.input[:1]) == ["x"] and conv.output[0] == "s"  # the sum's own name: what read it reads the merged layer
    assert {t.name for t in work.graph.initializer} == set(conv.input[1:])  # the branches' weights are gone with them
    assert_same_outputs(model, work, feed())


def test_cleanup_leaves_the_block_as_one_conv_with_fewer_parameters():
    model = mobileone_block()
    work = onnx.ModelProto()
    work.CopyFrom(model)
    CLEANUP(work)
    assert [n.op_type for n in work.graph.node] == ["Conv", "Relu"]
    assert count_parameters(work) == 4 * 4 * 9 + 4 < count_parameters(model)
    assert_same_outputs(model, work, feed())


DEPTHWISE_RESIDUAL = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 4, 8, 8] x) => (float[1, 4, 8, 8] y) {
    d = Conv <group = 4, pads = [1, 1, 1, 1]> (x, w, bias)
    y = Add (x, d)
}
"""


def test_a_convolution_plus_its_own_input_becomes_one_conv():
    """x + depthwise(x), as a conditional position encoding or a RepMixer writes it: 1 added at each channel's centre tap."""
    model = with_weights(DEPTHWISE_RESIDUAL, w=RNG.normal(size=(4, 1, 3, 3)), bias=RNG.normal(size=4))
    work, result = on_a_copy(parallel_convs_as_one, model)
    assert [n.op_type for n in work.graph.node] == ["Conv"] and result.modified
    assert_same_outputs(model, work, feed())


REP_MIXER = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 4, 8, 8] x) => (float[1, 4, 8, 8] y) {
    m = Conv <group = 4, pads = [1, 1, 1, 1]> (x, w, bias)
    n = BatchNormalization (x, gamma, beta, mean, var)
    d = Sub (m, n)
    s = Mul (d, layer_scale)
    y = Add (x, s)
}
"""
SHIFTED_NORM = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 4, 8, 8] x) => (float[1, 4, 8, 8] y) {
    n = BatchNormalization (x, gamma, beta, mean, var)
    shifted = Add (n, shift)
    c = Conv <pads = [1, 1, 1, 1]> (x, w)
    y = Add (shifted, c)
}
"""
INPUT_MINUS_CONV = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 4, 8, 8] x) => (float[1, 4, 8, 8] y) {
    c = Conv <pads = [0, 0, 0, 0]> (x, w)
    y = Sub (x, c)
}
"""
NORM = {"gamma": RNG.uniform(0.5, 2, 4), "beta": RNG.normal(size=4), "mean": RNG.normal(size=4), "var": RNG.uniform(0.5, 2, 4)}


@pytest.mark.parametrize(("text", "weights"), [
    (REP_MIXER, {"w": RNG.normal(size=(4, 1, 3, 3)), "bias": RNG.normal(size=4), "layer_scale": RNG.normal(size=(4, 1, 1)), **NORM}),
    (SHIFTED_NORM, {"w": RNG.normal(size=(4, 4, 3, 3)), "shift": RNG.normal(size=(1, 4, 1, 1)), **NORM}),
    (INPUT_MINUS_CONV, {"w": RNG.normal(size=(4, 4, 1, 1))}),
], ids=["x-plus-scale-times-mixer-minus-norm", "norm-plus-a-bias-plus-conv", "x-minus-conv"])
def test_branches_through_per_channel_constants_and_differences_become_one_conv(text, weights):
    """FastViT's RepMixer (x + layer_scale * (mixer(x) - norm(x))), a bias the exporter moved out of the branches, a Sub."""
    model = with_weights(text, **weights)
    work, result = on_a_copy(parallel_convs_as_one, model)
    assert [n.op_type for n in work.graph.node] == ["Conv"], result.declined
    assert_same_outputs(model, work, feed())


UNFOLDED_NORMS = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 4, 8, 8] x) => (float[1, 4, 8, 8] y) {
    a = Conv <pads = [1, 1, 1, 1]> (x, wa)
    na = BatchNormalization (a, gamma, beta, mean, var)
    b = Conv (x, wb)
    nb = BatchNormalization (b, gamma2, beta2, mean2, var2)
    y = Add (na, nb)
}
"""
SCALED_INPUT = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 4, 8, 8] x) => (float[1, 4, 8, 8] y) {
    c = Conv <group = 4, pads = [2, 2, 2, 2]> (x, w)
    s = Mul (x, gamma)
    y = Add (c, s)
}
"""


def test_branches_whose_normalizations_are_not_folded_yet_become_one_conv():
    """As the dynamo exporter writes them (prune merges before it folds anything)."""
    norm2 = {f"{k}2": RNG.uniform(0.5, 2, 4) if k in ("gamma", "var") else RNG.normal(size=4) for k in NORM}
    model = with_weights(UNFOLDED_NORMS, wa=RNG.normal(size=(4, 4, 3, 3)), wb=RNG.normal(size=(4, 4, 1, 1)), **NORM, **norm2)
    work, _ = on_a_copy(parallel_convs_as_one, model)
    assert [n.op_type for n in work.graph.node] == ["Conv"]
    assert_same_outputs(model, work, feed())


def test_a_layer_scaled_shortcut_joins_a_5x5_depthwise_conv():
    model = with_weights(SCALED_INPUT, w=RNG.normal(size=(4, 1, 5, 5)), gamma=RNG.normal(size=(1, 4, 1, 1)))
    work, _ = on_a_copy(parallel_convs_as_one, model)
    assert [n.op_type for n in work.graph.node] == ["Conv"]
    assert_same_outputs(model, work, feed())


SHARED_NORM = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 4, 8, 8] x) => (float[1, 4, 8, 8] y) {
    n = BatchNormalization (x, gamma, beta, mean, var)
    c = Conv <group = 4, pads = [1, 1, 1, 1]> (x, w)
    m = Add (c, n)
    d = Sub (m, n)
    s = Mul (d, layer_scale)
    y = Add (x, s)
}
"""


def test_a_normalization_shared_by_two_sums_joins_both():
    """FastViT's RepMixer as the dynamo exporter writes it with equal normalizations made one: mixer(x) = conv(x) + norm(x)
    and the norm(x) taken away read the same node, which stays until the second sum takes it."""
    model = with_weights(SHARED_NORM, w=RNG.normal(size=(4, 1, 3, 3)), layer_scale=RNG.normal(size=(4, 1, 1)), **NORM)
    work, _ = on_a_copy(parallel_convs_as_one, model)
    assert [n.op_type for n in work.graph.node] == ["Conv"]
    assert_same_outputs(model, work, feed())


STRIDED_STEM = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 3, 9, 9] x) => (float[1, 4, 5, 5] y) {
    a = Conv <strides = [2, 2], pads = [1, 1, 1, 1]> (x, wa)
    b = Conv <strides = [2, 2], pads = [0, 0, 0, 0]> (x, wb, bb)
    y = Add (b, a)
}
"""


def test_a_strided_1x1_branch_joins_the_3x3_at_its_centre():
    model = with_weights(STRIDED_STEM, wa=RNG.normal(size=(4, 3, 3, 3)), wb=RNG.normal(size=(4, 3, 1, 1)), bb=RNG.normal(size=4))
    work, _ = on_a_copy(parallel_convs_as_one, model)
    (conv,) = work.graph.node
    assert [a.ints for a in conv.attribute if a.name == "kernel_shape"] == [[3, 3]]
    assert_same_outputs(model, work, feed((1, 3, 9, 9)))


SAME_PADDED = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 4, 8, 8] x) => (float[1, 4, 8, 8] y) {
    a = Conv <auto_pad = "SAME_UPPER"> (x, wa)
    b = Conv <auto_pad = "SAME_UPPER"> (x, wb)
    c = Conv <pads = [1, 1, 1, 1]> (x, wc)
    s = Add (a, b)
    y = Add (s, c)
}
"""


def test_unstrided_same_padding_merges_with_explicit_padding():
    """auto_pad SAME (as tf2onnx writes it where sizes are unknown) pads by the kernel alone when unstrided."""
    model = with_weights(SAME_PADDED, wa=RNG.normal(size=(4, 4, 3, 3)), wb=RNG.normal(size=(4, 4, 1, 1)), wc=RNG.normal(size=(4, 4, 3, 3)))
    work, _ = on_a_copy(parallel_convs_as_one, model)
    assert [n.op_type for n in work.graph.node] == ["Conv"]
    assert_same_outputs(model, work, feed())


CONV1D_PAIR = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 4, 16] x) => (float[1, 6, 16] y) {
    a = Conv <pads = [2, 2]> (x, wa)
    b = Conv <pads = [1, 1]> (x, wb)
    y = Add (a, b)
}
"""


def test_a_3_tap_kernel_sits_inside_a_5_tap_one_along_one_axis():
    model = with_weights(CONV1D_PAIR, wa=RNG.normal(size=(6, 4, 5)), wb=RNG.normal(size=(6, 4, 3)))
    work, _ = on_a_copy(parallel_convs_as_one, model)
    assert [n.op_type for n in work.graph.node] == ["Conv"]
    assert_same_outputs(model, work, feed((1, 4, 16)))


ASYMMETRIC = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 4, 8, 8] x) => (float[1, 4, 8, 8] y) {
    a = Conv <pads = [0, 1, 0, 1]> (x, wa)
    b = Conv <pads = [1, 0, 1, 0]> (x, wb)
    y = Add (a, b)
}
"""
STRIDED_SAME = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 4, 8, 8] x) => (float[1, 4, 4, 4] y) {
    a = Conv <auto_pad = "SAME_UPPER", strides = [2, 2]> (x, wa)
    b = Conv <auto_pad = "SAME_UPPER", strides = [2, 2]> (x, wb)
    y = Add (a, b)
}
"""
GROUPS = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 4, 8, 8] x) => (float[1, 4, 8, 8] y) {
    a = Conv <pads = [1, 1, 1, 1], group = 4> (x, wa)
    b = Conv <pads = [1, 1, 1, 1]> (x, wb)
    y = Add (a, b)
}
"""
READ_ELSEWHERE = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 4, 8, 8] x) => (float[1, 4, 8, 8] y, float[1, 4, 8, 8] a) {
    a = Conv <pads = [1, 1, 1, 1]> (x, wa)
    b = Conv <pads = [1, 1, 1, 1]> (x, wb)
    y = Add (a, b)
}
"""
SHARED_WEIGHT = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 4, 8, 8] x) => (float[1, 4, 8, 8] y) {
    a = Conv <pads = [1, 1, 1, 1]> (x, wa)
    b = Conv <pads = [1, 1, 1, 1]> (x, wb)
    s = Add (a, b)
    z = Conv <pads = [1, 1, 1, 1]> (s, wa)
    y = Relu (z)
}
"""
COMPUTED_WEIGHT = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 4, 8, 8] x, float[4, 4, 3, 3] wa) => (float[1, 4, 8, 8] y) {
    a = Conv <pads = [1, 1, 1, 1]> (x, wa)
    b = Conv <pads = [1, 1, 1, 1]> (x, wb)
    y = Add (a, b)
}
"""
POSITIONAL = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 4, 8, 8] x) => (float[1, 4, 8, 8] y) {
    c = Conv <pads = [1, 1, 1, 1]> (x, w)
    p = Add (c, table)
    y = Add (x, p)
}
"""
FULL = {"wa": RNG.normal(size=(4, 4, 3, 3)), "wb": RNG.normal(size=(4, 4, 3, 3))}


@pytest.mark.parametrize(("text", "weights", "code", "why"), [
    (ASYMMETRIC, {"wa": RNG.normal(size=(4, 4, 1, 3)), "wb": RNG.normal(size=(4, 4, 3, 1))}, DeclineCode.WOULD_GROW, "kernel would grow"),
    (GROUPS, {"wa": RNG.normal(size=(4, 1, 3, 3)), "wb": FULL["wb"]}, DeclineCode.UNSUPPORTED_FORM, "channels or groups"),
    (READ_ELSEWHERE, FULL, DeclineCode.SHARED_VALUE, "also read elsewhere"),
    (SHARED_WEIGHT, FULL, DeclineCode.SHARED_VALUE, "shares its weight"),
    (COMPUTED_WEIGHT, {"wb": FULL["wb"]}, DeclineCode.NOT_CONSTANT, "not a constant"),
    (POSITIONAL, {"w": FULL["wa"], "table": RNG.normal(size=(1, 4, 8, 8))}, DeclineCode.UNSUPPORTED_FORM, "not one value per channel"),
    (STRIDED_SAME, FULL, DeclineCode.UNSUPPORTED_FORM, "by the input's size"),
], ids=["1x3-with-3x1", "other-groups", "branch-read-elsewhere", "shared-weight", "computed-weight", "a-table-per-position", "strided-same-padding"])
def test_branches_that_cannot_be_one_conv_are_left_with_a_reason(text, weights, code, why):
    model = with_weights(text, **weights)
    work, result = on_a_copy(parallel_convs_as_one, model)
    assert not result.modified
    (decline,) = result.declined
    assert decline.where == "y" or decline.where.startswith("s")
    assert decline.reason.code == code and why in decline.reason.text


def test_a_model_without_parallel_branches_is_left_alone():
    model = with_weights(DEPTHWISE_RESIDUAL.replace("y = Add (x, d)", "y = Relu (d)"), w=RNG.normal(size=(4, 1, 3, 3)), bias=RNG.normal(size=4))
    _, result = on_a_copy(parallel_convs_as_one, model)
    assert not result.modified and not result.declined


TWO_BLOCKS = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 4, 8, 8] x) => (float[1, 8, 8, 8] y) {
    a = Conv <pads = [1, 1, 1, 1]> (x, wa)
    b = Conv (x, wb)
    s = Add (a, b)
    r = Relu (s)
    c = Conv <pads = [1, 1, 1, 1]> (r, wc)
    d = Conv (r, wd)
    n = BatchNormalization (c, gamma, beta, mean, var)
    t = Add (n, d)
    y = Relu (t)
}
"""


def test_prune_cuts_a_multi_branch_block_as_the_one_conv_it_becomes():
    """Tied by their Add, the branches used to be pruned together or not at all; merged first, the block is one layer."""
    norm = {k: np.resize(v, 8) for k, v in NORM.items()}
    model = with_weights(TWO_BLOCKS, wa=RNG.normal(size=(8, 4, 3, 3)), wb=RNG.normal(size=(8, 4, 1, 1)), wc=RNG.normal(size=(8, 8, 3, 3)),
                         wd=RNG.normal(size=(8, 8, 1, 1)), **norm)
    pruned, report = prune(model, config=PruneConfig(ratio=0.5, latency_runs=0, round_to=1))
    merge = next(r for r in report.prepare if r.name == "parallel-convs-as-one")
    assert len(merge.changes) == 2
    assert [n.op_type for n in pruned.graph.node] == ["Conv", "Relu", "Conv", "Relu"]
    assert [d.dim_value for d in pruned.graph.output[0].type.tensor_type.shape.dim] == [1, 8, 8, 8]
    assert report.parameters.after < 8 * 4 * 9 + 8 + 8 * 8 * 9 + 8  # the merged layers' own count: the hidden channels went
    assert report.macs.before > 0 and not report.macs_unknown  # the original's branches counted on its own shapes
    assert run_model(pruned, feed())[0].shape == (1, 8, 8, 8)


DISTILLED_HEAD = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[2, 8] x) => (float[2, 5] y) {
    na = BatchNormalization (x, gamma, beta, mean, var)
    a = Gemm <transB = 1> (na, wa, ba)
    nb = BatchNormalization (x, gamma2, beta2, mean2, var2)
    b = Gemm <alpha = 0.5, beta = 2.0> (nb, wb, bb)
    s = Add (a, b)
    y = Div (s, two)
}
"""


def test_a_distilled_classifier_heads_two_linears_become_one():
    """RepViT's (and DeiT's, LeViT's) head: a BatchNorm then a Linear, twice, averaged; the normalizations fold into the Gemms
    after them, and the two Gemms of one input into one."""
    norms = {f"{k}{suffix}": RNG.uniform(0.5, 2, 8) if k in ("gamma", "var") else RNG.normal(size=8) for k in NORM for suffix in ("", "2")}
    model = with_weights(DISTILLED_HEAD, wa=RNG.normal(size=(5, 8)), ba=RNG.normal(size=5), wb=RNG.normal(size=(8, 5)), bb=RNG.normal(size=(1, 5)),
                         two=np.array(2.0), **norms)
    work = onnx.ModelProto()
    work.CopyFrom(model)
    CLEANUP(work)
    assert [n.op_type for n in work.graph.node] == ["Gemm", "Div"]
    assert count_parameters(work) == 5 * 8 + 5 + 1
    assert_same_outputs(model, work, {"x": RNG.normal(size=(2, 8)).astype(np.float32)})
