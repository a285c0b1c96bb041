import math

import pytest
from onnx import helper

from onnxslim.measure.sensitivity import (
    WORK_FLOOR,
    added_noise,
    by_damage_per_work,
    counts_to_try,
    effect_at_outputs,
    next_count,
    noise_power,
    rank_by_added_noise,
    stretches,
    tensors_to_compare,
)


def _chain():
    return [
        helper.make_node("Conv", ["x", "w0"], ["a"], name="conv0"),
        helper.make_node("Relu", ["a"], ["b"], name="relu"),
        helper.make_node("Conv", ["b", "w1"], ["c"], name="conv1"),
        helper.make_node("Add", ["c", "b"], ["d"], name="add"),
    ]


def test_each_node_is_charged_the_noise_beyond_its_noisiest_input():
    noise = {"a": 0.01, "b": 0.01, "c": 0.05, "d": 0.02}
    added = added_noise(_chain(), noise)
    assert added == {"conv0": 0.01, "relu": 0.0, "conv1": 0.04, "add": 0.0}  # the residual Add dilutes noise: never credited
    assert rank_by_added_noise(_chain(), noise) == [("conv1", 0.04), ("conv0", 0.01), ("relu", 0.0), ("add", 0.0)]


def test_nan_is_charged_to_the_node_that_first_produces_it():
    added = added_noise(_chain(), {"a": 0.01, "b": 0.01, "c": math.inf, "d": math.inf})
    assert math.isinf(added["conv1"]) and added["add"] == 0.0
    assert noise_power(1.0, 4.0) == 0.25 and noise_power(0.0, 0.0) == 0.0 and math.isinf(noise_power(1.0, 0.0)) and math.isinf(noise_power(0.0, 1.0, nonfinite=3))


def test_only_float_activations_are_compared_and_counts_end_with_all():
    assert tensors_to_compare(_chain(), {"x", "a", "b", "c", "d"}) == ["x", "a", "b", "c", "d"]
    assert tensors_to_compare(_chain(), {"a", "c"}) == ["a", "c"]
    assert list(counts_to_try(3)) == [1, 2, 3] and list(counts_to_try(8)) == [1, 2, 4, 8] and list(counts_to_try(0)) == []
    assert list(counts_to_try(20)) == [1, 2, 4, 8, 10, 12, 14, 16, 18, 20]
    assert list(counts_to_try(3, finish_with_all=False)) == [1, 2] and list(counts_to_try(9, finish_with_all=False)) == [1, 2, 4, 8, 9]



def test_layers_are_kept_in_float_by_the_noise_they_add_per_share_of_the_work():
    ranked = [("head", 0.004), ("stem", 0.003), ("add", 0.001), ("body", 0.0004)]
    shares = {"head": 0.16, "stem": 0.001, "add": 0.0, "body": 0.02}
    # the stem gives back 3/4 of the head's noise for 1/16 of its work (its share counts as the floor); the Add, without
    # multiply-adds, still counts as the floor: its conversions to and from float are work too
    assert by_damage_per_work(ranked, shares) == [("stem", 0.003), ("add", 0.001), ("head", 0.004), ("body", 0.0004)]
    assert 0.001 < WORK_FLOOR
    # NaN/Inf stays first whatever it holds; equal ratios keep the given order
    assert by_damage_per_work([("a", 0.01), ("b", math.inf)], {"a": 0.1, "b": 0.5}) == [("b", math.inf), ("a", 0.01)]
    assert by_damage_per_work([("a", 0.02), ("b", 0.01)], {"a": 0.2, "b": 0.1}) == [("a", 0.02), ("b", 0.01)]


def test_a_layer_whose_work_is_unknown_counts_as_the_average_layer_with_work():
    ranked = [("unknown", 0.375), ("big", 0.5), ("small", 0.25)]
    # the working layers average (0.5 + 0.25) / 2 = 0.375: each gives 1.0 per share (ties keep the order)
    assert by_damage_per_work(ranked, {"big": 0.5, "small": 0.25, "norm": 0.0}) == ranked
    assert by_damage_per_work(ranked, {"big": 0.5, "small": 0.125}) == [("small", 0.25), ("unknown", 0.375), ("big", 0.5)]
    assert by_damage_per_work(ranked, {}) == ranked  # nothing known: the damage alone


def test_stretches_are_runs_of_consecutive_layers_of_nearly_equal_length():
    layers = [f"n{i}" for i in range(10)]
    runs = stretches(layers, 4)
    assert [len(run) for run in runs] == [2, 3, 3, 2] and sum(runs, []) == layers
    assert stretches(layers[:3], 12) == [["n0"], ["n1"], ["n2"]]  # fewer layers than stretches: one each
    assert stretches([], 4) == []


def test_a_stretchs_measured_loss_is_shared_among_its_layers_by_their_own_noise():
    own = {"stem": 0.001, "act": 0.003, "head": 0.5, "quiet": 0.0}
    # the outputs lost 0.02 with the first stretch alone quantized: 4 times what its layers' own noise says,
    # while the head's large noise barely shows
    early = effect_at_outputs(["stem", "act"], own, 0.02)
    late = effect_at_outputs(["head", "quiet"], own, 0.0005)
    assert early == pytest.approx({"stem": 0.005, "act": 0.015}) and late == pytest.approx({"head": 0.0005, "quiet": 0.0})
    assert by_damage_per_work(sorted({**early, **late}.items(), key=lambda item: -item[1]), {})[0][0] == "act"
    # no own noise shows in the stretch: its loss is shared evenly; a stretch that brings NaN/Inf charges all of it
    assert effect_at_outputs(["quiet", "other"], own, 0.002) == pytest.approx({"quiet": 0.001, "other": 0.001})
    assert all(math.isinf(v) for v in effect_at_outputs(["stem", "act"], own, math.inf).values())
    assert math.isinf(effect_at_outputs(["bad", "stem"], {"bad": math.inf, "stem": 0.001}, 0.01)["bad"])
    assert effect_at_outputs(["bad", "stem"], {"bad": math.inf, "stem": 0.001}, 0.01)["stem"] == pytest.approx(0.01)
    assert effect_at_outputs(["stem"], own, -1e-9) == {"stem": 0.0}  # a score above 1 by rounding is no negative damage


def _search(noise, loss_of, budget_loss):
    """Run next_count against a loss function of the count; the counts measured, in order, and the smallest passing one."""
    losses = {0: loss_of(0)}
    tried = []
    while (count := next_count(noise, losses, budget_loss)) is not None:
        assert count not in losses and 0 < count <= len(noise)
        tried.append(count)
        losses[count] = loss_of(count)
    passing = [k for k, loss in losses.items() if loss <= budget_loss]
    return tried, min(passing) if passing else None


@pytest.mark.parametrize("propagation", [1.0, 0.3, 3.0])  # loss proportional to the noise left, or growing slower or faster than it
def test_the_budget_search_lands_near_the_fewest_layers_in_few_measurements(propagation):
    noise = [1.0 / (i + 1) for i in range(80)]  # a long tail: most of the noise in a few layers
    total = sum(noise)

    def loss_of(count):
        return 0.03 * (1.0 - sum(noise[:count]) / total) ** propagation

    fewest = next(k for k in range(81) if loss_of(k) <= 0.01)
    tried, found = _search(noise, loss_of, 0.01)
    assert fewest <= found <= fewest + max(1, found // 4)
    # doubling from 1 needs more: 1, 2, 4, 8, 18, ...; one more where only nearly every layer will do, rather than all of them
    assert len(tried) <= (5 if fewest < 0.75 * len(noise) else 6), tried
    assert found < len(noise)
    assert loss_of(found) <= 0.01


@pytest.mark.parametrize("step", [2, 4, 9])
def test_the_budget_search_halves_its_bracket_where_the_loss_is_flat(step):
    """As PP-OCRv4 det's search measured: keeping its first few ranked layers in float takes the loss below the budget,
    and every layer after them barely moves it, though they hold most of the noise. The line through the counts would
    step down a quarter of the bracket at a time (10-12 measurements here); once two passing counts show the loss flat,
    the bracket is halved."""
    noise = [0.025] + [0.004 * 0.98**i for i in range(106)]
    tried, found = _search(noise, lambda count: 0.0226 if count < step else 0.0063, 0.01)
    assert step <= found <= step + max(1, found // 4)
    assert len(tried) <= 7, tried


def test_the_budget_search_climbs_past_nan_and_ends_when_every_layer_fails():
    noise = [math.inf, math.inf, 0.5, 0.25, 0.25]
    tried, found = _search(noise, lambda count: math.inf if count < 2 else 0.02 * (5 - count) / 3, 0.01)
    assert found in (4, 5) and tried[0] == 1
    tried, found = _search(noise, lambda count: 0.5, 0.01)
    assert found is None and tried[-1] == 5 and len(tried) <= 4


def test_the_budget_search_does_not_settle_for_every_layer_kept_when_fewer_may_do():
    # measured on PP-OCRv4 rec: 36 of 46 layers kept missed 0.01 by 0.0006, all 46 met it; a quarter's bracket would stop
    # there, and keeping every layer in float leaves nothing quantized
    noise = [1.0 / (i + 1) for i in range(46)]
    measured = {0: 0.0179, 4: 0.03, 10: 0.027, 15: 0.0247, 22: 0.016, 33: 0.0113, 36: 0.0106, 46: 0.0}
    assert 36 < next_count(noise, measured, 0.01) < 46
    tried, found = _search(noise, lambda count: measured.get(count, 0.0106 if count < 39 else 0.008), 0.01)
    assert 39 <= found <= 39 + 39 // 4
    assert next_count(noise, {0: 0.02, 45: 0.011, 46: 0.0}, 0.01) is None  # next to it: nothing fewer to try


def test_work_shares_are_each_layers_part_of_the_multiply_adds_at_the_given_shapes():
    import numpy as np
    from onnx import TensorProto, numpy_helper

    from onnxslim.ir.counts import work_shares
    from onnxslim.runtime.shapes import known_shapes

    weights = [numpy_helper.from_array(np.ones((8, 16), np.float32), "w0"), numpy_helper.from_array(np.ones((16, 64), np.float32), "w1")]
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["a"], name="narrow"), helper.make_node("Relu", ["a"], ["b"], name="relu"),
             helper.make_node("MatMul", ["b", "w1"], ["y"], name="wide")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    shares = work_shares(model, ["narrow", "relu", "wide"], known_shapes(model, {"x": (4, 8)}))
    assert shares == pytest.approx({"narrow": 512 / 4608, "relu": 0.0, "wide": 4096 / 4608})
    assert work_shares(model, ["narrow", "wide"], known_shapes(model)) == {}  # the batch size unknown: no work known
    # each value a node reads or writes (its constants aside) can count as work too: what converting it costs where it alone is float
    with_values = work_shares(model, ["narrow", "relu", "wide"], known_shapes(model, {"x": (4, 8)}), per_element=10.0)
    assert with_values == pytest.approx({"narrow": (512 + 10 * (32 + 64)) / 4608, "relu": 10 * (64 + 64) / 4608, "wide": (4096 + 10 * (64 + 256)) / 4608})
