"""Each pass on a model it changes and on one it leaves alone, run through a Pipeline that checks the contract."""

import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import numpy_helper

from onnxslim.passes import (
    CLEANUP,
    DeclineCode,
    PassError,
    PassResult,
    Pipeline,
    deepen_attention_masks,
    fold_affine_into_conv,
    fuse_hardswish,
    graph_is_sorted,
    initializers_out_of_inputs,
    model_is_valid,
    reduce_mean_to_global_pool,
)
from onnxslim.passes.gelu import fuse_gelu
from onnxslim.passes.static_dims import fold_static_dims
from tests.conftest import run_model

RNG = np.random.default_rng(0)


def checked(graph_pass) -> Pipeline:
    return Pipeline((graph_pass,), checks=(model_is_valid, graph_is_sorted), verify_unmodified=True)


def on_a_copy(graph_pass, model: onnx.ModelProto) -> tuple[onnx.ModelProto, PassResult]:
    """``graph_pass`` run (contract checked) on a copy of ``model``, which stays as it was to compare against."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    (result,) = checked(graph_pass)(work)
    return work, result


def with_weights(text: str, **arrays) -> onnx.ModelProto:
    model = onnx.parser.parse_model(text)
    model.graph.initializer.extend(numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in arrays.items())
    onnx.checker.check_model(model)
    return model


def assert_same_outputs(before: onnx.ModelProto, after: onnx.ModelProto, feed: dict) -> None:
    for a, b in zip(run_model(before, feed), run_model(after, feed)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


CONV_AFFINE = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 3, 8, 8] x) => (float[1, 4, 8, 8] y) {
    c = Conv <pads = [1, 1, 1, 1]> (x, w)
    s = Mul (c, scale)
    y = Add (s, shift)
}
"""


def test_fold_affine_into_conv_changes_and_keeps_numbers():
    model = with_weights(CONV_AFFINE, w=RNG.normal(size=(4, 3, 3, 3)), scale=RNG.normal(size=(1, 4, 1, 1)), shift=RNG.normal(size=(4, 1, 1)))
    work, result = on_a_copy(fold_affine_into_conv, model)
    assert result.modified and len(result.changes) == 2
    assert [n.op_type for n in work.graph.node] == ["Conv"]
    assert_same_outputs(model, work, {"x": RNG.normal(size=(1, 3, 8, 8)).astype(np.float32)})


def test_a_scale_folded_into_a_convolution_without_bias_adds_no_bias():
    """A Keras BatchNormalization whose shift the exporter folded away leaves a Mul alone: its fold is the weights'
    alone, and no bias of zeros grows the model (tf2onnx's EfficientNetB0 grew by 6,144 zeros)."""
    model = with_weights(
        """
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[1, 3, 8, 8] x) => (float[1, 4, 8, 8] y) {
            c = Conv <pads = [1, 1, 1, 1]> (x, w)
            y = Mul (c, scale)
        }
        """,
        w=RNG.normal(size=(4, 3, 3, 3)), scale=RNG.normal(size=(1, 4, 1, 1)),
    )
    work, result = on_a_copy(fold_affine_into_conv, model)
    assert result.modified and [list(n.input) for n in work.graph.node] == [["x", "w_folded"]]
    assert not any(t.name.endswith("_bias_folded") for t in work.graph.initializer)
    assert_same_outputs(model, work, {"x": RNG.normal(size=(1, 3, 8, 8)).astype(np.float32)})


def test_a_transposed_convolution_takes_its_bias_add_scale_and_the_batchnorm_behind_them():
    """PaddlePaddle writes ConvTranspose -> Add(bias) -> BatchNormalization; grouped, the output channels are axis 1 within each group."""
    model = with_weights(
        """
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[1, 4, 8, 8] x) => (float[1, 6, 16, 16] y) {
            t = ConvTranspose <strides = [2, 2], group = 2> (x, w)
            a = Add (t, bias)
            m = Mul (a, scale)
            n = BatchNormalization (m, gamma, beta, mean, var)
            y = Relu (n)
        }
        """,
        w=RNG.normal(size=(4, 3, 2, 2)), bias=RNG.normal(size=(1, 6, 1, 1)), scale=RNG.normal(size=(6, 1, 1)),
        gamma=RNG.normal(size=6), beta=RNG.normal(size=6), mean=RNG.normal(size=6), var=RNG.uniform(0.5, 2.0, size=6),
    )
    work = onnx.ModelProto()
    work.CopyFrom(model)
    CLEANUP(work)
    assert [n.op_type for n in work.graph.node] == ["ConvTranspose", "Relu"]
    assert_same_outputs(model, work, {"x": RNG.normal(size=(1, 4, 8, 8)).astype(np.float32)})


def test_fold_affine_into_conv_declines_with_a_reason_and_leaves_the_model():
    # the scale varies along the width, not per channel
    model = with_weights(CONV_AFFINE, w=RNG.normal(size=(4, 3, 3, 3)), scale=RNG.normal(size=(1, 1, 1, 8)), shift=RNG.normal(size=(4, 1, 1)))
    (result,) = checked(fold_affine_into_conv)(model)
    assert not result.modified
    assert [d.reason.code for d in result.declined] == [DeclineCode.UNSUPPORTED_FORM]


def test_fold_affine_into_conv_leaves_other_graphs_alone():
    model = with_weights(
        """
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[1, 3, 8, 8] x) => (float[1, 4, 8, 8] y) {
            c = Conv (x, w)
            y = Relu (c)
        }
        """,
        w=RNG.normal(size=(4, 3, 1, 1)),
    )
    (result,) = checked(fold_affine_into_conv)(model)
    assert not result.modified and not result.declined


HARDSWISH = """
<ir_version: 8, opset_import: ["" : 14]>
g (float[1, 4] x) => (float[1, 4] y)
  <float three = {3.0}, float zero = {0.0}, float six = {6.0}> {
    a = Add (x, three)
    c = Clip (a, zero, six)
    m = Mul (x, c)
    y = Div (m, six)
}
"""


def test_fuse_hardswish_changes_and_keeps_numbers():
    model = onnx.parser.parse_model(HARDSWISH)
    work, result = on_a_copy(fuse_hardswish, model)
    assert result.modified
    assert "HardSwish" in [n.op_type for n in work.graph.node]
    assert_same_outputs(model, work, {"x": np.linspace(-5, 5, 4, dtype=np.float32).reshape(1, 4)})


def test_fuse_hardswish_declines_below_opset_14():
    model = onnx.parser.parse_model(HARDSWISH.replace('"" : 14', '"" : 13'))
    (result,) = checked(fuse_hardswish)(model)
    assert not result.modified and result.declined[0].reason.code == DeclineCode.OPSET


SPATIAL_MEANS = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[N, 8, 6, 5] x, float[2, 7, 16] tokens) => (float[N, 8] head, float[N, 8, 6, 5] gated, float[N, 1, 6, 5] across, float[2, 7, 1] feature_mean)
  <int64[2] spatial = {2, 3}, int64[2] negative = {-1, -2}, int64[1] channels = {1}, int64[1] last = {-1}> {
    pooled = ReduceMean <keepdims = 1> (x, spatial)
    gate = Sigmoid (pooled)
    gated = Mul (x, gate)
    head = ReduceMean <keepdims = 0> (gated, negative)
    across = ReduceMean <keepdims = 1> (x, channels)
    feature_mean = ReduceMean <keepdims = 1> (tokens, last)
}
"""


def test_means_over_every_spatial_axis_become_global_pools_and_no_other_mean_does():
    """The dynamo exporter's squeeze-excitation and classifier pooling; a channel mean and a LayerNorm-style mean stay."""
    model = onnx.parser.parse_model(SPATIAL_MEANS)
    work, result = on_a_copy(reduce_mean_to_global_pool, model)
    assert result.modified
    ops = [n.op_type for n in work.graph.node]
    assert ops.count("GlobalAveragePool") == 2 and ops.count("Flatten") == 1 and ops.count("ReduceMean") == 2
    feed = {"x": RNG.normal(size=(3, 8, 6, 5)).astype(np.float32), "tokens": RNG.normal(size=(2, 7, 16)).astype(np.float32)}
    assert_same_outputs(model, work, feed)


def test_reduce_mean_to_global_pool_leaves_a_model_without_spatial_means_alone():
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 8, 6, 5] x, float[2, 7, 16] tokens) => (float[N, 8, 6] partial, float[2, 1, 1] token_mean) {
        partial = ReduceMean <axes = [3], keepdims = 0> (x)
        token_mean = ReduceMean <axes = [1, 2]> (tokens)
    }
    """)
    (result,) = checked(reduce_mean_to_global_pool)(model)
    assert not result.modified


MASKED_ATTENTION = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 3, 8, 4] q, float[2, 3, 4, 8] k, float[2, 3, 8, 4] v, bool[1, 1, 8, 8] blocked) => (float[2, 3, 8, 4] y, float[2, 3, 8, 8] w) {
    s = MatMul (q, k)
    m = Where (blocked, minus, zero)
    a = Add (s, m)
    b = Add (a, bias)
    scaled = Mul (gate, gain)
    c = Add (b, scaled)
    w = Softmax <axis = -1> (c)
    y = MatMul (w, v)
}
"""


def test_attention_masks_are_deepened_until_masked_weights_are_exactly_zero():
    """Shifted-window attention adds -100: weights near 4e-44 are subnormal and slow the MatMul after the Softmax."""
    bias = RNG.normal(size=(1, 1, 8, 8))
    bias[0, 0, 0, 1] = -100.0  # a masked entry inside a bias table
    model = with_weights(MASKED_ATTENTION, minus=-100.0, zero=0.0, bias=bias, gate=np.zeros((1, 1, 8, 8)), gain=-100.0)
    work, result = on_a_copy(deepen_attention_masks, model)
    assert result.modified and len(result.changes) == 2
    inits = {t.name: numpy_helper.to_array(t) for t in work.graph.initializer}
    reads = {name for node in work.graph.node for name in node.input}
    assert inits["gain"] == -100.0 and "gain" in reads  # reached only through a product: left as it is
    assert not {"minus", "bias"} & reads
    feed = {
        "q": RNG.normal(size=(2, 3, 8, 4)).astype(np.float32), "k": RNG.normal(size=(2, 3, 4, 8)).astype(np.float32),
        "v": RNG.normal(size=(2, 3, 8, 4)).astype(np.float32), "blocked": RNG.random(size=(1, 1, 8, 8)) < 0.4,
    }
    before, after = run_model(model, feed)[1], run_model(work, feed)[1]
    subnormal = lambda w: int(((w > 0) & (w < np.finfo(np.float32).tiny)).sum())  # noqa: E731
    assert subnormal(before) > 0 and subnormal(after) == 0
    assert_same_outputs(model, work, feed)


def test_masks_already_deep_enough_are_left_alone():
    model = with_weights(MASKED_ATTENTION, minus=-1e9, zero=0.0, bias=RNG.normal(size=(1, 1, 8, 8)), gate=np.zeros((1, 1, 8, 8)), gain=-100.0)
    (result,) = checked(deepen_attention_masks)(model)
    assert not result.modified


SPELLED_GELUS = """
<ir_version: 8, opset_import: ["" : OPSET]>
g (float[2, 8, 5, 5] x) => (float[2, 8, 5, 5] a, float[2, 8, 5, 5] b, float[2, 8, 5, 5] shared) {
    d = Div (x, sqrt2)
    e = Erf (d)
    p = Add (e, one)
    q = Mul (x, p)
    a = Mul (q, half)
    m = Mul (inv_sqrt2, x)
    f = Erf (m)
    r = Add (one, f)
    h = Mul (x, half)
    b = Mul (h, r)
    d2 = Div (x, sqrt2)
    e2 = Erf (d2)
    shared = Add (e2, one)
}
"""


def _gelu_model(opset: int) -> onnx.ModelProto:
    return with_weights(SPELLED_GELUS.replace("OPSET", str(opset)), sqrt2=np.sqrt(2.0), inv_sqrt2=1 / np.sqrt(2.0), one=1.0, half=0.5)


@pytest.mark.parametrize(("opset", "domain"), [(20, ""), (17, "com.microsoft")])
def test_spelled_out_gelus_become_one_node_and_keep_their_numbers(opset, domain):
    """Both spellings exporters write; an Erf whose sum is a graph output is not a GELU and stays."""
    model = _gelu_model(opset)
    work, result = on_a_copy(lambda m: fuse_gelu(m, allow_contrib=True), model)
    assert result.modified and "fused 2" in result.changes[0]
    gelus = [n for n in work.graph.node if n.op_type == "Gelu"]
    assert [n.domain for n in gelus] == [domain, domain] and sum(n.op_type == "Erf" for n in work.graph.node) == 1
    if domain:  # shape inference does not know the contrib op: its results are declared
        assert {v.name for v in work.graph.value_info} >= {"a", "b"}
    assert_same_outputs(model, work, {"x": RNG.normal(size=(2, 8, 5, 5)).astype(np.float32)})


def test_gelu_is_left_spelled_out_below_opset_20_unless_the_contrib_op_is_allowed():
    (result,) = checked(fuse_gelu)(_gelu_model(17))
    assert not result.modified


def static_dims_model(index: int) -> onnx.ModelProto:
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 6, 4] x) => (float[N, 6, 4] y, int64 d) {
        s = Shape (x)
        d = Gather <axis = 0> (s, i)
        y = Identity (x)
    }
    """
    model = onnx.parser.parse_model(text)
    model.graph.initializer.append(numpy_helper.from_array(np.array(index, np.int64), "i"))
    return model


def test_fold_static_dims_turns_a_fixed_dimension_into_a_constant():
    model = static_dims_model(1)
    work, result = on_a_copy(fold_static_dims, model)
    assert result.modified and not any(n.op_type == "Gather" for n in work.graph.node)
    assert_same_outputs(model, work, {"x": np.ones((3, 6, 4), np.float32)})


def test_fold_static_dims_declines_a_dynamic_dimension():
    (result,) = checked(fold_static_dims)(static_dims_model(0))
    assert not result.modified and [d.reason.code for d in result.declined] == [DeclineCode.DYNAMIC]


def test_fold_static_dims_turns_a_whole_static_shape_into_a_constant_whatever_reads_it():
    # Swin V2's cosine attention: a norm expanded to its query's shape, the Shape read by Expand directly
    model = onnx.parser.parse_model(
        """
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[N, 6, 4] x, float[2, 3, 4] q) => (float[N, 6, 4] y, float[2, 3, 4] z) {
            n = ReduceL2 <axes = [-1], keepdims = 1> (q)
            s = Shape (q)
            e = Expand (n, s)
            z = Div (q, e)
            batch = Shape (x)
            y = Reshape (x, batch)
        }
        """
    )
    work, result = on_a_copy(fold_static_dims, model)
    assert result.modified and [n.op_type for n in work.graph.node].count("Shape") == 1  # x's batch size is not static
    assert any("static shape became a constant" in change for change in result.changes)
    rng = np.random.default_rng(3)
    feed = {"x": rng.normal(size=(3, 6, 4)).astype(np.float32), "q": rng.normal(size=(2, 3, 4)).astype(np.float32)}
    assert_same_outputs(model, work, feed)


def test_initializers_out_of_inputs_changes_old_models_only():
    old = with_weights(
        """
        <ir_version: 3, opset_import: ["" : 8]>
        g (float[1, 4] x, float[4, 2] w) => (float[1, 2] y) {
            y = MatMul (x, w)
        }
        """,
        w=RNG.normal(size=(4, 2)),
    )
    (result,) = checked(initializers_out_of_inputs)(old)
    assert result.modified and old.ir_version == 4 and [v.name for v in old.graph.input] == ["x"]
    (again,) = checked(initializers_out_of_inputs)(old)
    assert not again.modified


def test_initializers_out_of_inputs_takes_every_weight_listed_by_habit_and_keeps_settings_listed_on_purpose():
    text = """
        <ir_version: 7, opset_import: ["" : 13]>
        g (float[1, 4] x, float[4, 2] w, float[2] b) => (float[1, 2] y) {
            m = MatMul (x, w)
            y = Add (m, b)
        }
        """
    habit = with_weights(text, w=RNG.normal(size=(4, 2)), b=RNG.normal(size=(2,)))  # torch's keep_initializers_as_inputs
    before = onnx.ModelProto()
    before.CopyFrom(habit)
    (result,) = checked(initializers_out_of_inputs)(habit)
    assert result.modified and habit.ir_version == 7 and [v.name for v in habit.graph.input] == ["x"]
    assert "every weight" in result.changes[0]
    assert_same_outputs(before, habit, {"x": RNG.normal(size=(1, 4)).astype(np.float32)})
    on_purpose = with_weights(
        """
        <ir_version: 7, opset_import: ["" : 13]>
        g (float[1, 4] x, float[1] threshold) => (bool[1, 2] y) {
            m = MatMul (x, w)
            y = Greater (m, threshold)
        }
        """,
        w=RNG.normal(size=(4, 2)),
        threshold=np.array([0.5]),
    )  # a setting with a default, its weight not listed: the listing is meant
    (kept,) = checked(initializers_out_of_inputs)(on_purpose)
    assert not kept.modified and [v.name for v in on_purpose.graph.input] == ["x", "threshold"]


def test_pipeline_names_the_pass_that_breaks_its_contract():
    def lying_pass(model):
        model.graph.node[0].name = "renamed"
        return PassResult("lying-pass")

    model = with_weights(CONV_AFFINE, w=RNG.normal(size=(4, 3, 3, 3)), scale=np.ones((1, 4, 1, 1)), shift=np.zeros((4, 1, 1)))
    with pytest.raises(PassError, match="lying-pass changed the model but reported modified=False"):
        Pipeline((lying_pass,), verify_unmodified=True)(model)

    def unsorting_pass(model):
        nodes = list(model.graph.node)[::-1]
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        result = PassResult("unsorting-pass")
        result.change("reversed the nodes")
        return result

    with pytest.raises(PassError, match="after pass unsorting-pass: node .* reads"):
        Pipeline((unsorting_pass,), checks=(graph_is_sorted,))(model)

    def broken_pass(model):
        raise KeyError("w")

    with pytest.raises(PassError, match="pass broken-pass failed: KeyError"):
        Pipeline((broken_pass,))(model)


def test_pipeline_repeats_until_nothing_changes():
    calls = []

    def halves(model):
        calls.append(1)
        result = PassResult("halves")
        if len(calls) < 3:
            result.change("halved")
        return result

    results = Pipeline((halves,), max_steps=10)(onnx.ModelProto())
    assert [r.modified for r in results] == [True, True, False]
    assert len(Pipeline((halves,), max_steps=1)(onnx.ModelProto())) == 1


def test_fold_constants_never_grows_the_weights():
    from onnxslim.ir.io import model_weight_bytes
    from onnxslim.passes import fold_constants

    rng = np.random.default_rng(1)
    # LeViT-style attention bias: a small table gathered by constant indices into a large one
    model = onnx.parser.parse_model(
        """
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[1, 4, 64, 64] x) => (float[1, 4, 64, 64] y) {
            bias = Gather <axis = 1> (table, index)
            y = Add (x, bias)
        }
        """
    )
    model.graph.initializer.extend([
        numpy_helper.from_array(rng.normal(size=(4, 100)).astype(np.float32), "table"),
        numpy_helper.from_array(rng.integers(0, 100, (64, 64)).astype(np.int64), "index"),
    ])
    before = model_weight_bytes(model)
    (result,) = checked(fold_constants)(model)
    assert not result.modified and result.declined[0].reason.code == DeclineCode.WOULD_GROW
    assert model_weight_bytes(model) == before
    # the same table beside a weight 64 times its gathered size: a growth of 1.5% is declined all the same
    large = onnx.parser.parse_model(
        """
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[1, 4, 64, 64] x, float[1, 1024] v) => (float[1, 4, 64, 64] y, float[1, 1024] u) {
            bias = Gather <axis = 1> (table, index)
            y = Add (x, bias)
            u = MatMul (v, weight)
        }
        """
    )
    large.graph.initializer.extend([*model.graph.initializer, numpy_helper.from_array(rng.normal(size=(1024, 1024)).astype(np.float32), "weight")])
    before = model_weight_bytes(large)
    (result,) = checked(fold_constants)(large)
    assert result.declined and result.declined[0].reason.code == DeclineCode.WOULD_GROW and model_weight_bytes(large) == before



def _expanded_rows_model(op: str, rows: int, count: int) -> onnx.ModelProto:
    """``count`` constants of ``rows`` x 16 values made at run time from a few stored values (``op``: Expand of a row or
    ConstantOfShape), each added in turn to a Reshape of x whose target is computed from constants."""
    names = [f"c{k}" for k in range(count)]
    made = {
        "Expand": lambda k: f"{k} = Expand (row_{k}, rows)",
        "ConstantOfShape": lambda k: f"{k} = ConstantOfShape <value = float[1] {{0.5}}> (rows)",
    }[op]
    sums = "\n".join(f"s{i + 1} = Add (s{i}, {k})" for i, k in enumerate(names))
    model = onnx.parser.parse_model(
        f"""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[{rows}, 16] x) => (float[{rows}, 16] s{count}) {{
            {chr(10).join(made(k) for k in names)}
            t = Concat <axis = 0> (minus_one, sixteen)
            s0 = Reshape (x, t)
            {sums}
        }}
        """
    )
    rng = np.random.default_rng(2)
    if op == "Expand":
        model.graph.initializer.extend([numpy_helper.from_array(rng.normal(size=(1, 16)).astype(np.float32), f"row_{k}") for k in names])
    model.graph.initializer.extend([
        numpy_helper.from_array(np.array([rows, 16], np.int64), "rows"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
        numpy_helper.from_array(np.array([16], np.int64), "sixteen"),
    ])
    return model


@pytest.mark.parametrize(
    ("op", "rows", "count", "declined"),
    [
        # each 2 KB constant expanded from a 64-byte row: the node outgrows its inputs and stays
        ("Expand", 32, 4, "results larger than what they are computed from were left to run time"),
        # each 1 KB constant is within the per-node allowance, all eight together over the slack: only small sizes fold
        ("ConstantOfShape", 16, 8, "only results under 256 bytes were folded"),
    ],
)
def test_fold_constants_folds_the_shape_arithmetic_where_other_results_would_grow_the_model(op, rows, count, declined):
    from onnxslim.ir.io import model_weight_bytes
    from onnxslim.passes import fold_constants

    model = _expanded_rows_model(op, rows, count)
    work, result = on_a_copy(fold_constants, model)
    ops = [n.op_type for n in work.graph.node]
    assert result.modified and "Concat" not in ops and ops.count(op) == count
    assert declined in result.declined[0].reason.text
    assert model_weight_bytes(work) <= model_weight_bytes(model) + 4096
    assert_same_outputs(model, work, {"x": np.random.default_rng(4).normal(size=(rows, 16)).astype(np.float32)})


LAYER_NORM = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[2, 3, 8] x) => (float[2, 3, 8] y)
  <float two = {2.0}, float eps = {1e-12}, float[8] gamma = {1,2,3,4,5,6,7,8}, float[8] beta = {0,1,0,1,0,1,0,1}> {
    mean = ReduceMean <axes = [-1]> (x)
    d = Sub (x, mean)
    sq = SQUARE
    var = ReduceMean <axes = [-1]> (sq)
    padded = Add (var, eps)
    std = Sqrt (padded)
    normed = Div (d, std)
    scaled = Mul (normed, gamma)
    y = Add (scaled, beta)
}
"""


@pytest.mark.parametrize("square", ["Pow (d, two)", "Mul (d, d)"])
def test_fuse_layernorm_upgrades_to_opset_17_and_keeps_numbers(square):
    from onnxslim.passes import default_opset, fuse_layernorm

    model = onnx.parser.parse_model(LAYER_NORM.replace("SQUARE", square))
    work, result = on_a_copy(fuse_layernorm, model)
    assert result.modified and default_opset(work) == 17
    (fused,) = work.graph.node
    assert fused.op_type == "LayerNormalization" and list(fused.input) == ["x", "gamma", "beta"] and list(fused.output) == ["y"]
    assert {a.name: onnx.helper.get_attribute_value(a) for a in fused.attribute}["stash_type"] == 1
    left = {t.name for t in work.graph.initializer}
    assert "eps" not in left and left <= {"beta", "gamma", "two"} and ("two" in left) == square.startswith("Mul")  # constants go with their nodes
    feed = {"x": RNG.normal(size=(2, 3, 8)).astype(np.float32) * 50}
    assert_same_outputs(model, work, feed)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (("mean = ReduceMean <axes = [-1]> (x)", "mean = ReduceMean <axes = [1]> (x)"), "not the last axis"),
        (("y = Add (scaled, beta)", "y = Add (scaled, d)"), "the centred tensor has a third reader"),
        (("padded = Add (var, eps)", "padded = Add (var, var)"), "no constant epsilon"),
    ],
)
def test_fuse_layernorm_leaves_what_is_not_a_layernorm(change, why):
    from onnxslim.passes import fuse_layernorm

    text = LAYER_NORM.replace("SQUARE", "Pow (d, two)").replace(*change)
    model = onnx.parser.parse_model(text)
    (result,) = checked(fuse_layernorm)(model)
    assert not result.modified, why
    assert "LayerNormalization" not in [n.op_type for n in model.graph.node]


def test_align_depthwise_channels_pads_every_layer_of_the_set_and_keeps_numbers():
    from models.builders import hardswish_block
    from onnxslim.passes.align import align_depthwise_channels

    model = hardswish_block(batchnorm=True)
    work, result = on_a_copy(align_depthwise_channels, model)
    assert result.modified and "from 24 to 32 channels" in result.changes[0]
    shapes = {t.name: tuple(t.dims) for t in work.graph.initializer}
    convs = [n for n in work.graph.node if n.op_type == "Conv"]
    # expand (writes), depthwise, SE expand (writes the gate's channels), SE reduce and project (read)
    assert shapes[convs[1].input[1]][0] == 32 and shapes[convs[2].input[1]] == (32, 1, 3, 3)
    assert shapes[convs[3].input[1]][1] == 32 and shapes[convs[4].input[1]][0] == 32 and shapes[convs[5].input[1]][1] == 32
    norm = next(n for n in work.graph.node if n.op_type == "BatchNormalization")
    assert all(shapes[name] == (32,) for name in norm.input[1:])
    assert not {t.name for t in model.graph.initializer if t.name in shapes and shapes[t.name] != tuple(t.dims)}  # no array changed under its old name
    assert_same_outputs(model, work, {"input": RNG.normal(size=(1, 3, 16, 16)).astype(np.float32)})


DEPTHWISE_TO_OUTPUT = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 4, 8, 8] x) => (float[1, 24, 8, 8] y) {
    e = Conv (x, we)
    y = Conv <group = 24, pads = [1, 1, 1, 1]> (e, wd)
}
"""
DEPTHWISE_INTO_RESHAPE = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 4, 8, 8] x) => (float[1, 1536] y) {
    e = Conv (x, we)
    d = Conv <group = 24, pads = [1, 1, 1, 1]> (e, wd)
    y = Flatten (d)
}
"""
DEPTHWISE_SHARED_WEIGHT = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 4, 8, 8] x) => (float[1, 4, 8, 8] y, float[1, 24, 8, 8] z) {
    e = Conv (x, we)
    d = Conv <group = 24, pads = [1, 1, 1, 1]> (e, wd)
    y = Conv (d, wp)
    z = Conv (x, we)
}
"""


@pytest.mark.parametrize(("text", "problem"), [
    (DEPTHWISE_TO_OUTPUT, "is a graph output"), (DEPTHWISE_INTO_RESHAPE, "(Flatten) is not a per-channel op"), (DEPTHWISE_SHARED_WEIGHT, "'we' is shared"),
])
def test_align_depthwise_channels_declines_what_it_cannot_follow(text, problem):
    from onnxslim.passes.align import align_depthwise_channels

    model = with_weights(text, we=RNG.normal(size=(24, 4, 1, 1)), wd=RNG.normal(size=(24, 1, 3, 3)), wp=RNG.normal(size=(4, 24, 1, 1)))
    (result,) = checked(align_depthwise_channels)(model)
    assert not result.modified
    assert problem in result.declined[0].reason.text


TWO_DEPTHWISE_SETS = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 4, 8, 8] x) => (float[1, 8, 8, 8] y) {
    a = Conv (x, wa, ba)
    da = Conv <group = 40, pads = [1, 1, 1, 1]> (a, wda)
    b = Conv (da, wb, bb)
    db = Conv <group = 24, pads = [1, 1, 1, 1]> (b, wdb)
    y = Conv (db, wc)
}
"""


def test_align_depthwise_channels_grows_a_layer_between_two_sets_on_both_axes():
    """The 40 -> 24 layer reads the first padded set and writes the second: its weight becomes 32 x 48."""
    from onnxslim.passes.align import align_depthwise_channels

    model = with_weights(TWO_DEPTHWISE_SETS, wa=RNG.normal(size=(40, 4, 1, 1)), ba=RNG.normal(size=40), wda=RNG.normal(size=(40, 1, 3, 3)),
                         wb=RNG.normal(size=(24, 40, 1, 1)), bb=RNG.normal(size=24), wdb=RNG.normal(size=(24, 1, 3, 3)), wc=RNG.normal(size=(8, 24, 1, 1)))
    work, result = on_a_copy(align_depthwise_channels, model)
    assert len(result.changes) == 2
    shapes = {t.name: tuple(t.dims) for t in work.graph.initializer}
    middle = next(n for n in work.graph.node if n.output[0] == "b")
    assert shapes[middle.input[1]] == (32, 48, 1, 1) and shapes[middle.input[2]] == (32,)
    assert len(work.graph.initializer) == len(model.graph.initializer)
    assert_same_outputs(model, work, {"x": RNG.normal(size=(1, 4, 8, 8)).astype(np.float32)})


@pytest.mark.parametrize(("narrow", "wide", "channels_added"), [(24, 28, None), (24, 36, 16), (24, 40, 16)])
def test_align_depthwise_channels_follows_a_pad_that_adds_channels(narrow, wide, channels_added):
    """The Pad reads the narrow set and writes the wide one: it adds the wide set's zero channels and as many fewer as
    the narrow set gained (24 -> 32 and 28 -> 32: none, and it is left out; 24 -> 32 and 36 -> 48: 16)."""
    from models.builders import widening_residual
    from onnxslim.passes.align import align_depthwise_channels

    model = widening_residual(narrow, wide)
    work, result = on_a_copy(align_depthwise_channels, model)
    assert result.modified and f"from {narrow} to 32 channels" in result.changes[0]
    pads = [n for n in work.graph.node if n.op_type == "Pad"]
    if channels_added is None:
        assert not pads and "left out" in result.changes[-1]
    else:
        amounts = numpy_helper.to_array(next(t for t in work.graph.initializer if t.name == pads[0].input[1]))
        assert amounts.tolist() == [0, 0, 0, 0, 0, channels_added, 0, 0]
        assert not {t.name for t in model.graph.initializer if t.name.startswith("channel_pads")} & {t.name for t in work.graph.initializer}
    assert_same_outputs(model, work, {"input": RNG.normal(size=(1, 3, 16, 16)).astype(np.float32)})


def test_align_depthwise_channels_leaves_a_pad_that_would_pass_on_non_zero_channels():
    """After a Sigmoid the narrow set's added channels hold 0.5: the Pad would pass them on where the wide set reads zeros."""
    from models.builders import widening_residual
    from onnxslim.passes.align import align_depthwise_channels

    model = widening_residual(24, 28, activation="Sigmoid")
    work, result = on_a_copy(align_depthwise_channels, model)
    assert any("not zero after" in d.reason.text for d in result.declined)
    assert [n.op_type for n in work.graph.node].count("Pad") == 1
    assert_same_outputs(model, work, {"input": RNG.normal(size=(1, 3, 16, 16)).astype(np.float32)})


PARALLEL_LINEAR = """
<ir_version: 8, opset_import: ["" : OPSET]>
g (float[1, S, 8] x) => (float[1, S, 4] q, float[1, S, 6] k, float[1, S, 8] v, float[1, S, 5] other) {
    mq = MatMul (x, wq)
    q = Add (mq, bq)
    mk = MatMul (x, wk)
    k = Add (bk, mk)
    v = MatMul (x, wv)
    other = MatMul (x, wo)
}
"""


@pytest.mark.parametrize("opset", [11, 13])
def test_merge_parallel_matmuls_keeps_every_output(opset):
    from onnxslim.passes.parallel import has_parallel_matmuls, merge_parallel_matmuls

    model = with_weights(PARALLEL_LINEAR.replace("OPSET", str(opset)), wq=RNG.normal(size=(8, 4)), bq=RNG.normal(size=4),
                         wk=RNG.normal(size=(8, 6)), bk=RNG.normal(size=6), wv=RNG.normal(size=(8, 8)), wo=RNG.normal(size=(8, 5)))
    assert has_parallel_matmuls(model)
    work, result = on_a_copy(merge_parallel_matmuls, model)
    chain = with_weights("""
<ir_version: 8, opset_import: ["" : 13]>
g (float[2, 8] x) => (float[2, 8] y) {
    h = MatMul (x, w1)
    y = MatMul (h, w2)
}
""", w1=RNG.normal(size=(8, 8)), w2=RNG.normal(size=(8, 8)))
    assert not has_parallel_matmuls(chain)  # nothing to merge: quantize then copies no weights for it
    # q and k merge with their biases, v and other (no bias) with each other
    assert result.modified and len(result.changes) == 2
    assert sorted(n.op_type for n in work.graph.node) == ["Add", "MatMul", "MatMul", "Split", "Split"]
    assert {t.name for t in work.graph.initializer}.isdisjoint({"wq", "bq", "wk", "bk", "wv", "wo"})
    for length in (1, 7):
        assert_same_outputs(model, work, {"x": RNG.normal(size=(1, length, 8)).astype(np.float32)})


def test_merge_parallel_matmuls_leaves_shared_weights_and_named_nodes():
    from onnxslim.passes.parallel import merge_parallel_matmuls

    text = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[2, 8] x, float[2, 8] z) => (float[2, 4] a, float[2, 4] b, float[2, 4] c, float[2, 4] d) {
    a = MatMul (x, w)
    b = MatMul (x, u)
    c = MatMul (z, w)
    d = MatMul (x, t)
}
"""
    model = with_weights(text, w=RNG.normal(size=(8, 4)), u=RNG.normal(size=(8, 4)), t=RNG.normal(size=(8, 4)))
    for node, name in zip(model.graph.node, "abcd"):
        node.name = name
    work, result = on_a_copy(lambda m: merge_parallel_matmuls(m, keep_separate=["d"]), model)
    # a's weight is also read by c, d is kept apart by name: only b is left, and one MatMul merges with nothing
    assert not result.modified and [n.name for n in work.graph.node] == ["a", "b", "c", "d"]
    assert [d.where for d in result.declined] == ["a"] and result.declined[0].reason.code == DeclineCode.SHARED_VALUE
    (result,) = checked(merge_parallel_matmuls)(work)
    assert result.modified and "b" in result.changes[0] and "d" in result.changes[0]
    assert_same_outputs(model, work, {"x": RNG.normal(size=(2, 8)).astype(np.float32), "z": RNG.normal(size=(2, 8)).astype(np.float32)})


def test_merge_parallel_matmuls_puts_int8_weights_and_their_scales_side_by_side():
    from onnxslim.passes.parallel import merge_parallel_matmuls

    text = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, S, 8] x) => (float[1, S, 4] a, float[1, S, 6] b) {
    ka = DequantizeLinear <axis = 1> (qa, sa, za)
    kb = DequantizeLinear <axis = 1> (qb, sb, zb)
    a = MatMul (x, ka)
    b = MatMul (x, kb)
}
"""
    model = onnx.parser.parse_model(text)
    for name, columns in (("a", 4), ("b", 6)):
        model.graph.initializer.extend([
            numpy_helper.from_array(RNG.integers(-127, 128, size=(8, columns)).astype(np.int8), f"q{name}"),
            numpy_helper.from_array(RNG.uniform(0.01, 0.1, size=columns).astype(np.float32), f"s{name}"),
            numpy_helper.from_array(np.zeros(columns, np.int8), f"z{name}"),
        ])
    work, result = on_a_copy(merge_parallel_matmuls, model)
    assert result.modified
    assert [n.op_type for n in work.graph.node] == ["DequantizeLinear", "MatMul", "Split"]
    assert len(work.graph.initializer) == 4  # stored values, scales, zero points, widths
    assert_same_outputs(model, work, {"x": RNG.normal(size=(1, 5, 8)).astype(np.float32)})


QDQ_LINEAR = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, S, 8] x) => (float[1, S, 6] y, float[1, S, 6] z) {
    q = QuantizeLinear (x, xs, xz)
    d = DequantizeLinear (q, xs, xz)
    k = DequantizeLinear <axis = 1> (w, ws, wz)
    m = MatMul (d, k)
    y = Add (b, m)
    n = MatMul (d, k)
    z = Relu (n)
}
"""


def qdq_linear(weight_zero=0, activation_type=np.uint8) -> onnx.ModelProto:
    model = onnx.parser.parse_model(QDQ_LINEAR)
    model.graph.initializer.extend([
        numpy_helper.from_array(np.array(0.02, np.float32), "xs"), numpy_helper.from_array(np.array(128 if activation_type == np.uint8 else 0, activation_type), "xz"),
        numpy_helper.from_array(RNG.integers(-127, 128, size=(8, 6)).astype(np.int8), "w"),
        numpy_helper.from_array(RNG.uniform(0.01, 0.1, size=6).astype(np.float32), "ws"),
        numpy_helper.from_array(np.full(6, weight_zero, np.int8), "wz"),
        numpy_helper.from_array(RNG.normal(size=6).astype(np.float32), "b"),
    ])
    for index, node in enumerate(model.graph.node):
        node.name = f"n{index}"
    return model


@pytest.mark.parametrize("weight_zero", [0, 3])
def test_bias_into_integer_matmuls_keeps_every_value_and_onnxruntime_fuses_the_bias(weight_zero):
    from onnxslim.passes.integer_matmul import bias_into_integer_matmuls
    from onnxslim.runtime.session import optimized_ops

    model = qdq_linear(weight_zero)
    work, result = on_a_copy(bias_into_integer_matmuls, model)
    # the MatMul with a bias is rewritten; the one without (n5, read by Relu) keeps its DequantizeLinear inputs
    assert result.modified and len(result.changes) == 1 and "n3" in result.changes[0]
    types = [n.op_type for n in work.graph.node]
    assert types.count("MatMulInteger") == 1 and types.count("MatMul") == 1 and types.count("DequantizeLinear") == 3
    integer = next(n for n in work.graph.node if n.op_type == "MatMulInteger")
    assert len(integer.input) == (4 if weight_zero else 3)  # an all-zero weight zero point is left out
    for length in (1, 7):
        feed = {"x": RNG.normal(size=(1, length, 8)).astype(np.float32)}
        for a, b in zip(run_model(model, feed), run_model(work, feed)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    before, after = optimized_ops(model), optimized_ops(work)
    assert before["Add"] == 1 and after["Add"] == 0  # the bias went into the kernel
    assert after["MatMulIntegerToFloat"] == 2 and after["MatMulInteger"] == 0 and after["Cast"] == 0
    assert after["DequantizeLinear"] == 1  # the 1.0 the kernel's scale is read from: one node, however many layers


def test_bias_into_integer_matmuls_leaves_signed_activations_and_named_nodes():
    from onnxslim.passes.integer_matmul import bias_into_integer_matmuls

    work = qdq_linear(activation_type=np.int8)
    (result,) = checked(bias_into_integer_matmuls)(work)
    assert not result.modified and [d.where for d in result.declined] == ["n3", "n5"]
    assert result.declined[0].reason.code == DeclineCode.UNSUPPORTED_TYPE
    work = qdq_linear()
    (result,) = checked(lambda m: bias_into_integer_matmuls(m, skip=["n3"]))(work)
    assert not result.modified and "MatMulInteger" not in {n.op_type for n in work.graph.node}


QDQ_STEM = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N, C, 16, 16] x) => (float[N, 8, 8, 8] y) {
    q = QuantizeLinear (x, xs, xz)
    d = DequantizeLinear (q, xs, xz)
    k = DequantizeLinear <axis = 0> (w, ws, wz)
    c = Conv <pads = [1, 1, 1, 1], strides = [2, 2], group = G> (d, k)
    cq = QuantizeLinear (c, cs, cz)
    y = DequantizeLinear (cq, cs, cz)
}
"""


def qdq_stem(channels=3, weight_zero=0, group=1, weight_type=np.int8) -> onnx.ModelProto:
    from onnxslim.runtime.kernels import integer_products_saturate

    # weights as quantize writes them for this machine: where onnxruntime adds products in pairs in 16 bits (no VNNI), a
    # full-range weight saturates and moving the channels (the padding) moves which products share a pair
    levels = 60 if integer_products_saturate() else 124
    model = onnx.parser.parse_model(QDQ_STEM.replace("C, 16", f"{channels}, 16").replace("group = G", f"group = {group}"))
    model.graph.initializer.extend([
        numpy_helper.from_array(np.array(0.03, np.float32), "xs"), numpy_helper.from_array(np.array(128, np.uint8), "xz"),
        numpy_helper.from_array(RNG.integers(-levels, levels + 1, size=(8, channels // group, 3, 3)).astype(weight_type), "w"),
        numpy_helper.from_array(RNG.uniform(0.01, 0.1, size=8).astype(np.float32), "ws"),
        numpy_helper.from_array(RNG.integers(-3, 4, size=8).astype(weight_type) if weight_zero else np.zeros(8, weight_type), "wz"),
        numpy_helper.from_array(np.array(0.5, np.float32), "cs"), numpy_helper.from_array(np.array(128, np.uint8), "cz"),
    ])
    model.graph.value_info.extend([onnx.helper.make_tensor_value_info("q", onnx.TensorProto.UINT8, ["N", channels, 16, 16]),
                                   onnx.helper.make_tensor_value_info("k", onnx.TensorProto.FLOAT, [8, channels // group, 3, 3])])
    for index, node in enumerate(model.graph.node):
        node.name = f"n{index}"
    return model


@pytest.mark.parametrize(("channels", "weight_zero"), [(3, 0), (1, 1), (2, 0)])
def test_pad_conv_input_channels_gives_the_same_outputs_bit_for_bit(channels, weight_zero):
    from onnxslim.passes.conv_channels import pad_conv_input_channels
    from onnxslim.runtime.session import optimized_ops

    model = qdq_stem(channels, weight_zero)
    work, result = on_a_copy(pad_conv_input_channels, model)
    assert result.modified and "n3" in result.changes[0] and f"{channels} input channel" in result.changes[0]
    assert [n.op_type for n in work.graph.node][:2] == ["Pad", "QuantizeLinear"]
    stored = numpy_helper.to_array(next(t for t in work.graph.initializer if t.name == "w"))
    zero = numpy_helper.to_array(next(t for t in work.graph.initializer if t.name == "wz"))
    assert stored.shape == (8, 4, 3, 3) and (stored[:, channels:] == zero[:, None, None, None]).all()  # the zero point: exactly 0.0
    assert not {"q", "k"} & {v.name for v in work.graph.value_info}  # their recorded 3-channel shapes no longer hold
    for batch in (1, 2):
        feed = {"x": RNG.normal(size=(batch, channels, 16, 16)).astype(np.float32)}
        for a, b in zip(run_model(model, feed), run_model(work, feed)):
            np.testing.assert_array_equal(a, b)
    assert optimized_ops(work)["QLinearConv"] == 1


def test_pad_conv_input_channels_leaves_wide_grouped_and_shared_convolutions():
    from onnxslim.passes.conv_channels import pad_conv_input_channels

    for model in (qdq_stem(channels=4), qdq_stem(channels=8)):
        (result,) = checked(pad_conv_input_channels)(model)
        assert not result.modified and not result.declined
    (result,) = checked(pad_conv_input_channels)(qdq_stem(channels=2, group=2))
    assert not result.modified and result.declined[0].reason.code == DeclineCode.UNSUPPORTED_FORM
    for reads_input_too in (True, False):  # the quantized input, or only the weight, read by a second convolution
        shared = qdq_stem()
        source = "d"
        if not reads_input_too:
            source = "d2"
            shared.graph.node.extend([onnx.helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["q2"], name="q2"),
                                      onnx.helper.make_node("DequantizeLinear", ["q2", "xs", "xz"], ["d2"], name="d2")])
        shared.graph.node.append(onnx.helper.make_node("Conv", [source, "k"], ["c2"], name="again", pads=[1, 1, 1, 1], strides=[2, 2]))
        shared.graph.output.append(onnx.helper.make_tensor_value_info("c2", onnx.TensorProto.FLOAT, ["N", 8, 8, 8]))
        (result,) = checked(pad_conv_input_channels)(shared)
        assert not result.modified
        assert reads_input_too or {d.reason.code for d in result.declined} == {DeclineCode.SHARED_VALUE}


def test_pad_conv_input_channels_leaves_a_channels_last_input():
    """A TensorFlow export's image arrives channels-last and a Transpose turns it: onnxruntime would run the Pad on the
    innermost axis of three, slower than the stem it speeds up."""
    from onnxslim.passes.conv_channels import pad_conv_input_channels

    model = qdq_stem()
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 16
    model.graph.input[0].type.tensor_type.shape.dim[3].dim_value = 3
    model.graph.node.insert(0, onnx.helper.make_node("Transpose", ["x"], ["turned"], name="turn", perm=[0, 3, 1, 2]))
    model.graph.node[1].input[0] = "turned"
    (result,) = checked(pad_conv_input_channels)(model)
    assert not result.modified and "channels-last" in result.declined[0].reason.text


AFFINE_CHAIN = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N, 8, 12, 12] x) => (float[N, 6, 12, 12] y) {
    hq = QuantizeLinear (x, hs, hz)
    h = DequantizeLinear (hq, hs, hz)
    a = DequantizeLinear (ac, as, az)
    m = Mul (h, a)
    mq = QuantizeLinear (m, ms, mz)
    md = DequantizeLinear (mq, ms, mz)
    b = DequantizeLinear (bc, bs, bz)
    s = Add (md, b)
    sq = QuantizeLinear (s, ss, sz)
    sd = DequantizeLinear (sq, ss, sz)
    k = DequantizeLinear <axis = 0> (w, ws, wz)
    kb = DequantizeLinear <axis = 0> (wb, wbs, wbz)
    c = Conv <pads = PADS> (sd, k, kb)
    cq = QuantizeLinear (c, cs, cz)
    y = DequantizeLinear (cq, cs, cz)
}
"""


OUTPUT_STEP = 0.2  # the convolution's output quantizer: [-25.6, 25.4], wider than its outputs


def affine_chain(scale=0.63, shift=-0.55, gate=False, low=-0.4, high=6.0, kernel=3) -> tuple[onnx.ModelProto, dict]:
    """A quantized tensor h (0..6), then scale * h + shift with each step requantized (as quantize writes a learnable affine
    block's integer form), read by a QDQ convolution (3x3 padded, or 1x1); with ``gate``, the last quantizer clamps to [0, 1]
    (a HardSigmoid's)."""
    from onnxslim.quant.params import activation_params, quantize_bias

    m_range = sorted((scale * low, scale * high))
    s_range = (0.0, 1.0) if gate else (m_range[0] + shift, m_range[1] + shift)
    hs, hz = activation_params(low, high, signed=False)
    ms, mz = activation_params(*m_range, signed=False)
    ss, sz = activation_params(*s_range, signed=False)
    rng = np.random.default_rng(3)
    weights = rng.normal(0.0, 0.3, size=(6, 8, kernel, kernel)).astype(np.float32)
    ws = (np.abs(weights).reshape(6, -1).max(axis=1) / 127).astype(np.float32)
    bias_codes, bias_scale = quantize_bias(rng.normal(0.0, 0.5, size=6).astype(np.float32), ss, ws)
    model = onnx.parser.parse_model(AFFINE_CHAIN.replace("PADS", str([kernel // 2] * 4)))
    arrays = {"hs": hs, "hz": hz, "ms": ms, "mz": mz, "ss": ss, "sz": sz, "cs": np.float32(OUTPUT_STEP), "cz": np.uint8(128),
              "ac": np.uint8(1), "as": np.float32(abs(scale)), "az": np.uint8(0 if scale > 0 else 2),
              "bc": np.uint8(1 if shift > 0 else 0), "bs": np.float32(abs(shift)), "bz": np.uint8(0 if shift > 0 else 1),
              "w": np.round(weights / ws[:, None, None, None]).astype(np.int8), "ws": ws, "wz": np.zeros(6, np.int8),
              "wb": bias_codes, "wbs": bias_scale, "wbz": np.zeros(6, np.int32)}
    model.graph.initializer.extend(numpy_helper.from_array(np.asarray(v), k) for k, v in arrays.items())
    for index, node in enumerate(model.graph.node):
        node.name = f"n{index}"
    # the layer as stored (its INT8 weights dequantized): what the graph computes apart from the affine's rounding
    exact = {"scale": scale, "shift": shift, "weights": arrays["w"] * ws[:, None, None, None], "bias": bias_codes * bias_scale}
    return model, exact


def float_conv(x: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    size = weights.shape[-1]
    padded = np.pad(x, ((0, 0), (0, 0), (size // 2, size // 2), (size // 2, size // 2)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (size, size), axis=(2, 3))  # N, C, H, W, k, k
    return np.einsum("nchwij,ocij->nohw", windows, weights) + bias[None, :, None, None]


@pytest.mark.parametrize(("kernel", "how"), [
    (1, "into the bias"),  # an unpadded convolution takes the shift the zero point cannot hold in its bias, exactly
    (3, "coarser grid"),  # a padded one would get it wrong on the border: the codes' step grows until the shift is whole steps
])
def test_scalar_affines_into_dequantize_drops_the_integer_ops_and_keeps_the_result_as_close(kernel, how):
    from onnxslim.passes.dequantize_affine import scalar_affines_into_dequantize
    from onnxslim.quant.params import activation_params
    from onnxslim.runtime.session import optimized_ops

    step = 0.63 * float(activation_params(-0.4, 6.0, signed=False)[0])
    model, exact = affine_chain(shift=-34.45 * step, kernel=kernel)  # 0.45 step off the codes' grid (a zero point can miss by half a step)
    work, result = on_a_copy(scalar_affines_into_dequantize, model)
    assert result.modified and "0.63 * x + -0.544" in result.changes[0] and "read from the codes of hq" in result.changes[0], result
    assert ("as coarse, so the shift is 34 whole steps" in result.changes[0]) == (how == "coarser grid"), result.changes
    assert not {"Mul", "Add"} & {n.op_type for n in work.graph.node}
    assert optimized_ops(model)["QLinearMul"] == 1 and optimized_ops(model)["QLinearAdd"] == 1
    assert not {"QLinearMul", "QLinearAdd"} & set(optimized_ops(work)) and optimized_ops(work)["QLinearConv"] == 1
    x = np.random.default_rng(5).uniform(-0.4, 6.0, size=(8, 8, 12, 12)).astype(np.float32)
    truth = float_conv(exact["scale"] * x + exact["shift"], exact["weights"], exact["bias"])
    before, after = run_model(model, {"x": x})[0], run_model(work, {"x": x})[0]
    error_before, error_after = np.sqrt(np.mean((before - truth) ** 2)), np.sqrt(np.mean((after - truth) ** 2))
    assert error_after <= 1.05 * error_before, (error_before, error_after)
    # the integer Add rounds the shift to its output's grid and leaves an offset in every channel; the rewrite leaves none
    offset_before, offset_after = (np.abs(np.mean(v - truth, axis=(0, 2, 3))).max() for v in (before, after))
    assert offset_after < 0.5 * offset_before, (offset_before, offset_after)


def test_scalar_affines_into_dequantize_takes_float_steps_too():
    from onnxslim.passes.dequantize_affine import scalar_affines_into_dequantize

    model, exact = affine_chain()
    graph = model.graph
    # the float form: Mul and Add by float scalars between one DequantizeLinear and one QuantizeLinear
    steps = [n for n in graph.node if n.op_type in ("Mul", "Add")]
    steps[0].input[1], steps[1].input[0], steps[1].input[1] = "a_float", "m", "b_float"
    graph.initializer.extend([numpy_helper.from_array(np.float32(0.63), "a_float"), numpy_helper.from_array(np.float32(-0.55), "b_float")])
    kept = [n for n in graph.node if n.output[0] not in ("a", "b", "mq", "md")]
    del graph.node[:]
    graph.node.extend(kept)
    work, result = on_a_copy(scalar_affines_into_dequantize, model)
    assert result.modified and not {"Mul", "Add"} & {n.op_type for n in work.graph.node}
    x = np.random.default_rng(6).uniform(-0.4, 6.0, size=(2, 8, 12, 12)).astype(np.float32)
    truth = float_conv(exact["scale"] * x + exact["shift"], exact["weights"], exact["bias"])
    assert np.sqrt(np.mean((run_model(work, {"x": x})[0] - truth) ** 2)) <= 1.05 * np.sqrt(np.mean((run_model(model, {"x": x})[0] - truth) ** 2))


@pytest.mark.parametrize(("kwargs", "why"), [
    ({"scale": -0.63}, "a negative scale"),
    ({"scale": 1 / 6, "shift": 0.5, "gate": True, "low": -8.0, "high": 8.0}, "clamp"),  # a HardSigmoid's gate: its quantizer's saturation is the clip
])
def test_scalar_affines_into_dequantize_leaves_chains_it_would_change(kwargs, why):
    from onnxslim.passes.dequantize_affine import scalar_affines_into_dequantize

    model, _ = affine_chain(**kwargs)
    (result,) = checked(scalar_affines_into_dequantize)(model)
    assert not result.modified and len(result.declined) == 1 and why in result.declined[0].reason.text, result


def test_scalar_affines_into_dequantize_needs_a_reader_that_takes_the_leftover_shift():
    from onnxslim.passes.dequantize_affine import scalar_affines_into_dequantize
    from onnxslim.quant.params import activation_params

    step = 0.63 * float(activation_params(-0.4, 6.0, signed=False)[0])
    model, _ = affine_chain(shift=-3.3 * step)  # too few steps for a grid to be made coarser by a small amount
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    conv.op_type = "Relu"  # no bias to take the 0.3 step left over, which is not negligible
    del conv.input[1:]
    for attribute in list(conv.attribute):
        conv.attribute.remove(attribute)
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 8
    (result,) = checked(scalar_affines_into_dequantize)(model)
    assert not result.modified and "remaining shift" in result.declined[0].reason.text, result


RMS_NORM = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[1, 8, 64] x) => (float[1, 8, 64] y, float[1, 8, 64] twice)
  <float two = {2.0}, int64[1] last = {-1}, float eps = {1e-6}> {
    p = Pow (x, two)
    m = ReduceMean <keepdims = 1> (p, last)
    a = Add (m, eps)
    s = Sqrt (a)
    r = Reciprocal (s)
    n = Mul (x, r)
    y = Mul (gamma, n)
    q = Reciprocal (x)
    twice = Mul (q, q)
}
"""


def test_a_reciprocal_square_root_becomes_a_division_and_onnxruntime_fuses_the_rms_norm():
    """torch's rsqrt, as Llama's RMSNorm is exported: onnxruntime fuses the normalization only when it divides."""
    from onnxslim.passes import reciprocal_products_as_division
    from onnxslim.runtime.session import optimized_ops

    model = with_weights(RMS_NORM, gamma=RNG.normal(size=64))
    work, result = on_a_copy(reciprocal_products_as_division, model)
    assert result.modified and len(result.changes) == 1  # Mul(q, q) squares a reciprocal: left as it is
    ops = [n.op_type for n in work.graph.node]
    assert ops.count("Reciprocal") == 1 and ops.count("Div") == 1
    assert dict(optimized_ops(work)).get("SimplifiedLayerNormalization") == 1
    assert "SimplifiedLayerNormalization" not in dict(optimized_ops(model))
    assert_same_outputs(model, work, {"x": RNG.normal(size=(1, 8, 64)).astype(np.float32)})


ONE_SLICE_VOLUMES = """
<ir_version: 8, opset_import: ["" : {opset}]>
g (float[N, 3, 1, 10, 12] frame, float[N, 3, 2, 10, 12] clip) => (float[N, 4, 1, 10, 12] y, float[N, 4, 1, 10, 12] z, float[N, 4, 2, 10, 12] c) {{
    a = Conv <kernel_shape = [1, 3, 3], pads = [0, 1, 1, 0, 1, 1]> (frame, w1, b1)
    y = Conv <kernel_shape = [3, 3, 3], pads = [1, 1, 1, 1, 1, 1], strides = [2, 1, 1]> (a, w2)
    t = Tanh (a)
    z = Conv <kernel_shape = [3, 3, 3], pads = [1, 1, 1, 1, 1, 1]> (t, w2)
    c = Conv <kernel_shape = [1, 3, 3], pads = [0, 1, 1, 0, 1, 1]> (clip, w1, b1)
}}
"""


@pytest.mark.parametrize("opset", [11, 13])  # Squeeze's axes as an attribute, then as an input
def test_convolutions_over_one_slice_become_2d_and_others_stay_3d(opset):
    """A watermark network's (N, C, 1, H, W) frames: a (1, 3, 3) kernel, and a (3, 3, 3) kernel whose padding leaves only
    its middle tap on the data; the same layer over two slices stays 3-D, and its weight stays for it."""
    from onnxslim.passes import conv3d_on_one_slice_as_conv2d

    model = with_weights(ONE_SLICE_VOLUMES.format(opset=opset), w1=RNG.normal(size=(4, 3, 1, 3, 3)), b1=RNG.normal(size=4),
                         w2=RNG.normal(size=(4, 4, 3, 3, 3)))
    work, result = on_a_copy(conv3d_on_one_slice_as_conv2d, model)
    assert result.modified and result.changes == ["wrote 3 Conv(s) over a volume one slice deep as 2-D Conv(s)"]
    ranks = sorted(len(t.dims) for t in work.graph.initializer if t.name.startswith("w"))
    assert ranks == [4, 4, 5]  # w1 sliced (and kept for the two-slice clip), w2's middle slice shared by two Convs
    ops = [n.op_type for n in work.graph.node]
    assert ops.count("Conv") == 4 and ops.count("Squeeze") == 2  # frame's and the Tanh's: y reads a's 2-D Conv directly
    producers = {o: n for n in work.graph.node for o in n.output}
    y_conv = producers[producers["y"].input[0]]
    assert producers[y_conv.input[0]].op_type == "Conv" and producers[y_conv.input[0]].name == producers[producers["a"].input[0]].name
    feed = {"frame": RNG.normal(size=(2, 3, 1, 10, 12)).astype(np.float32), "clip": RNG.normal(size=(2, 3, 2, 10, 12)).astype(np.float32)}
    assert_same_outputs(model, work, feed)


def test_a_volume_whose_depth_is_known_only_at_run_time_keeps_its_3d_convolution():
    from onnxslim.passes import conv3d_on_one_slice_as_conv2d

    model = with_weights("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 3, D, 10, 12] clip) => (float[N, 4, D, 10, 12] y) {
        y = Conv <kernel_shape = [1, 3, 3], pads = [0, 1, 1, 0, 1, 1]> (clip, w)
    }
    """, w=RNG.normal(size=(4, 3, 1, 3, 3)))
    (result,) = checked(conv3d_on_one_slice_as_conv2d)(model)
    assert not result.modified and result.declined[0].reason.code == DeclineCode.DYNAMIC


def test_a_slice_whose_shape_onnx_cannot_infer_is_found_by_symbolic_inference():
    """The watermark encoder's bits are reshaped to a shape built from the frame's batch size, then expanded over the
    frame (how the legacy exporter writes view and expand_as): onnx's inference loses every shape after the Reshape,
    onnxruntime's symbolic inference does not."""
    from onnxslim.ir.shapes import infer_shapes
    from onnxslim.passes import conv3d_on_one_slice_as_conv2d

    model = with_weights("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 3, 1, H, W] frame, float[N, 1] bits) => (float[N, 4, 1, H, W] y)
      <int64[1] first = {0}, int64[4] rest = {1, 1, 1, 1}> {
        size = Shape (frame)
        batch = Gather (size, first)
        target = Concat <axis = 0> (batch, rest)
        bits5 = Reshape (bits, target)
        spread = Expand (bits5, size)
        mean = ReduceMean <axes = [1], keepdims = 1> (spread)
        x = Concat <axis = 1> (frame, mean)
        y = Conv <kernel_shape = [1, 3, 3], pads = [0, 1, 1, 0, 1, 1]> (x, w)
    }
    """, w=RNG.normal(size=(4, 4, 1, 3, 3)))
    assert len(infer_shapes(model).get("x") or ()) != 5
    work, result = on_a_copy(conv3d_on_one_slice_as_conv2d, model)
    assert result.modified and [n.op_type for n in work.graph.node].count("Squeeze") == 1
    feed = {"frame": RNG.normal(size=(2, 3, 1, 6, 7)).astype(np.float32), "bits": RNG.normal(size=(2, 1)).astype(np.float32)}
    assert_same_outputs(model, work, feed)


@pytest.mark.parametrize("shape, kernel, attrs, lowered", [
    ((1, 4, 1, 6, 7), (3, 3, 3), 'pads = [2, 1, 1, 0, 1, 1]', True),  # the last tap reads the slice
    ((1, 4, 1, 6, 7), (3, 3, 3), 'pads = [0, 1, 1, 2, 1, 1]', True),  # the first tap does
    ((1, 4, 1, 6, 7), (3, 3, 3), 'pads = [1, 1, 1, 1, 1, 1], strides = [2, 1, 2]', True),
    ((1, 4, 1, 6, 7), (3, 3, 3), 'pads = [1, 1, 1, 2, 1, 1]', False),  # two output slices: the second reads the first tap
    ((1, 4, 5, 1, 7), (3, 1, 3), 'pads = [1, 0, 1, 1, 0, 1], group = 4', True),  # one row deep, depthwise
    ((1, 4, 5, 6, 1), (3, 3, 1), 'auto_pad = "SAME_UPPER"', True),
    ((1, 4, 5, 6, 1), (3, 3, 3), 'auto_pad = "SAME_UPPER"', False),  # padding that follows the input: kept
    ((1, 4, 1, 6, 7), (1, 3, 3), 'auto_pad = "VALID", dilations = [3, 1, 2]', True),
])
def test_each_one_slice_convolution_form_computes_what_the_3d_one_did(shape, kernel, attrs, lowered):
    from onnxslim.passes import conv3d_on_one_slice_as_conv2d

    channels_in = 1 if "group" in attrs else shape[1]
    model = with_weights(f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float{list(shape)} x) => (float[n, c, d, h, w] y) {{
        y = Conv <kernel_shape = {list(kernel)}, {attrs}> (x, w, b)
    }}
    """, w=RNG.normal(size=(4, channels_in, *kernel)), b=RNG.normal(size=4))
    work, result = on_a_copy(conv3d_on_one_slice_as_conv2d, model)
    assert result.modified == lowered
    assert_same_outputs(model, work, {"x": RNG.normal(size=shape).astype(np.float32)})


@pytest.mark.parametrize("opset", [10, 13])  # Clip's bounds as attributes, then as inputs
def test_max_and_min_with_a_constant_scalar_become_clips_and_others_stay(opset):
    from onnxslim.passes import max_min_with_a_constant_as_clip

    model = with_weights(f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g (float[2, 3, 4] x, float[2, 3, 4] other, float[4] row) => (float[2, 3, 4] y, float[2, 3, 4] both, float[1, 4] grown) {{
        f = Max (x, floor)
        y = Min (ceiling, f)
        both = Max (x, other)
        grown = Max (row, wide)
    }}
    """, floor=np.full((1, 1, 1), -0.4), ceiling=np.array(0.7), wide=np.full((1, 1), 0.1))
    work, result = on_a_copy(max_min_with_a_constant_as_clip, model)
    assert result.changes == ["wrote 2 Max/Min with a constant as Clip"]
    assert [n.op_type for n in work.graph.node] == ["Clip", "Clip", "Max", "Max"]
    assert result.declined[0].where == "grown" and result.declined[0].reason.code == DeclineCode.UNSUPPORTED_FORM  # (4,) -> (1, 4)
    assert not {"floor", "ceiling"} & {t.name for t in work.graph.initializer}
    x = RNG.normal(size=(2, 3, 4)).astype(np.float32)
    assert_same_outputs(model, work, {"x": x, "other": RNG.normal(size=(2, 3, 4)).astype(np.float32), "row": x[0, 0]})


def test_a_max_with_a_nan_constant_is_left_as_written():
    from onnxslim.passes import max_min_with_a_constant_as_clip

    model = with_weights("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[2, 3] x) => (float[2, 3] y) {
        y = Max (x, nan)
    }
    """, nan=np.array(np.nan))
    (result,) = checked(max_min_with_a_constant_as_clip)(model)
    assert not result.modified and [n.op_type for n in model.graph.node] == ["Max"]


def _padded_convs(pads: list[int], *, value: float = 0.0, readers: str = "two convolutions", mode: str = "constant") -> onnx.ModelProto:
    """Pad (stored pads and value) -> two 3x3 Convs (one with pads of its own), or -> a Conv and a Relu."""
    second = "r = Relu (p)" if readers == "a conv and a relu" else "r = Conv <pads = [1, 0, 0, 1]> (p, w2)"
    model = onnx.parser.parse_model(f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[1, 3, 8, 8] x) => (float[1, 4, 6, 6] y, float r) {{
        p = Pad <mode = "{mode}"> (x, pads, value)
        y = Conv (p, w)
        {second}
    }}
    """)
    model.graph.initializer.extend([
        numpy_helper.from_array(RNG.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(RNG.normal(size=(4, 3, 3, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array(pads, np.int64), "pads"),
        numpy_helper.from_array(np.array(value, np.float32), "value"),
    ])
    del model.graph.output[:]
    model.graph.output.extend([onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, ["n", "c", "h", "w"]) for n in ("y", "r")])
    return model


@pytest.mark.parametrize("pads", [[0, 0, 0, 0, 0, 0, 1, 1], [0, 0, 1, 1, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0, 0, 0]])
def test_zero_padding_folds_into_the_convolutions_that_read_it(pads):
    from onnxslim.passes import pads_into_convs

    model = _padded_convs(pads)
    work, result = on_a_copy(pads_into_convs, model)
    assert result.modified and [n.op_type for n in work.graph.node] == ["Conv", "Conv"]
    assert all(n.input[0] == "x" for n in work.graph.node)
    assert_same_outputs(model, work, {"x": RNG.normal(size=(1, 3, 8, 8)).astype(np.float32)})


@pytest.mark.parametrize(("pads", "value", "readers", "mode"), [
    ([0, 1, 0, 0, 0, 1, 0, 0], 0.0, "two convolutions", "constant"),  # the channel axis
    ([0, 0, 1, 1, 0, 0, 1, 1], 1.0, "two convolutions", "constant"),  # padded with ones
    ([0, 0, 1, 1, 0, 0, 1, 1], 0.0, "a conv and a relu", "constant"),  # read by another op too
    ([0, 0, 1, 1, 0, 0, 1, 1], 0.0, "two convolutions", "reflect"),
    ([0, 0, -1, 0, 0, 0, 1, 1], 0.0, "two convolutions", "constant"),  # a crop
])
def test_padding_a_convolution_cannot_add_stays(pads, value, readers, mode):
    from onnxslim.passes import pads_into_convs

    model = _padded_convs(pads, value=value, readers=readers, mode=mode)
    if pads[1]:  # the Convs cannot read 5 channels: only the pass's own choice is tested
        (result,) = Pipeline((pads_into_convs,))(model)
    else:
        _, result = on_a_copy(pads_into_convs, model)
    assert not result.modified


def test_zero_padding_of_an_old_opset_folds_from_its_attributes():
    from onnxslim.passes import pads_into_convs

    model = onnx.parser.parse_model("""
    <ir_version: 5, opset_import: ["" : 10]>
    g (float[1, 3, 8, 8] x) => (float[1, 4, 8, 8] y) {
        p = Pad <mode = "constant", pads = [0, 0, 1, 1, 0, 0, 1, 1], value = 0.0> (x)
        y = Conv (p, w)
    }
    """)
    model.graph.initializer.append(numpy_helper.from_array(RNG.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"))
    work, result = on_a_copy(pads_into_convs, model)
    assert result.modified and [n.op_type for n in work.graph.node] == ["Conv"]
    assert_same_outputs(model, work, {"x": RNG.normal(size=(1, 3, 8, 8)).astype(np.float32)})


def _upsampler(kernel: int, stride: int, pads: int, output_padding: int = 0, *, to_output: bool = False) -> onnx.ModelProto:
    """Conv -> ConvTranspose (the decoder's upsampling) -> Relu -> Conv, or with ``to_output`` the ConvTranspose's Relu as the output."""
    from onnx import TensorProto, helper

    w0 = numpy_helper.from_array(RNG.standard_normal((6, 3, 3, 3)).astype(np.float32) * 0.3, "w0")
    wt = numpy_helper.from_array(RNG.standard_normal((6, 4, kernel, kernel)).astype(np.float32) * 0.3, "wt")
    bt = numpy_helper.from_array(RNG.standard_normal(4).astype(np.float32), "bt")
    w1 = numpy_helper.from_array(RNG.standard_normal((2, 4, 3, 3)).astype(np.float32) * 0.3, "w1")
    extra = {"output_padding": [output_padding] * 2} if output_padding else {}
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], name="encode", pads=[1, 1, 1, 1]),
             helper.make_node("ConvTranspose", ["a", "wt", "bt"], ["up"], name="upsample", strides=[stride] * 2, pads=[pads] * 4, **extra),
             helper.make_node("Relu", ["up"], ["r"], name="relu")]
    if not to_output:
        nodes.append(helper.make_node("Conv", ["r", "w1"], ["y"], name="decode", pads=[1, 1, 1, 1]))
    graph = helper.make_graph(nodes, "upsampler", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 5])],
                              [helper.make_tensor_value_info("r" if to_output else "y", TensorProto.FLOAT, ["n", "c", "h", "w"])], [w0, wt, bt, w1])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])


@pytest.mark.parametrize("kernel,stride,pads,output_padding", [(4, 2, 1, 0), (3, 2, 1, 1), (6, 2, 2, 0), (8, 4, 2, 0)])
def test_an_upsampling_convtranspose_becomes_a_subpixel_conv_with_the_same_outputs(kernel, stride, pads, output_padding):
    from onnxslim.passes.conv_transpose import convtranspose_as_subpixel_conv

    model = _upsampler(kernel, stride, pads, output_padding)
    work, result = on_a_copy(convtranspose_as_subpixel_conv, model)
    assert result.modified and [n.op_type for n in work.graph.node] == ["Conv", "Conv", "DepthToSpace", "Relu", "Conv"]
    assert not any(t.name in ("wt", "bt") for t in work.graph.initializer)
    x = {"x": RNG.standard_normal((1, 3, 6, 5)).astype(np.float32)}
    np.testing.assert_allclose(run_model(work, x)[0], run_model(model, x)[0], rtol=1e-5, atol=1e-5)


def test_convtransposes_without_overlap_or_ending_the_model_stay():
    from onnxslim.passes.conv_transpose import convtranspose_as_subpixel_conv

    _, same = on_a_copy(convtranspose_as_subpixel_conv, _upsampler(2, 2, 0))  # kernel == stride: a 1x1 form gains nothing
    assert not same.modified
    _, last = on_a_copy(convtranspose_as_subpixel_conv, _upsampler(4, 2, 1, to_output=True))
    assert not last.modified and "output layer" in last.declined[0].reason.text
    _, cropped = on_a_copy(convtranspose_as_subpixel_conv, _upsampler(4, 2, 0))  # an output of 2H + 2: not stride x the input
    assert not cropped.modified
