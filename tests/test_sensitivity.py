import math

from onnx import helper

from onnxslim.measure.sensitivity import added_noise, counts_to_try, noise_power, rank_by_added_noise, tensors_to_compare


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

