import numpy as np
import pytest

from onnxslim.quant.observers import HistogramObserver, MinMaxObserver, TensorStats
from onnxslim.quant.params import activation_params, quantize_bias, quantize_weight, weight_params
from onnxslim.quant.ranges import calibrated_range, entropy_threshold


def test_histogram_growth_is_exact_and_shapes_may_differ():
    rng = np.random.default_rng(0)
    batches = [rng.normal(0, scale, shape) for scale, shape in ((0.1, (3, 5)), (1.0, (7,)), (8.0, (2, 2, 9)), (0.5, (40,)), (30.0, (4, 4)))]
    observer = HistogramObserver(256)
    for batch in batches:
        observer.update(batch)
    values = np.concatenate([b.ravel() for b in batches]).astype(np.float32)
    assert observer.total == values.size
    assert observer.low <= values.min() and observer.high > values.max()
    expected, _ = np.histogram(values, bins=observer.edges())
    np.testing.assert_array_equal(observer.counts, expected)


def test_state_is_fixed_size_whatever_the_number_of_samples():
    observer = HistogramObserver(512)
    rng = np.random.default_rng(1)
    for _ in range(200):
        observer.update(rng.normal(0, 1, 1000))
    assert observer.counts.shape == (512,) and observer.total == 200_000


def test_minmax_and_moving_average():
    observer = MinMaxObserver(momentum=0.5)
    observer.update(np.array([-1.0, 2.0]))
    observer.update(np.array([-3.0, 4.0]))
    assert (observer.min, observer.max) == (-3.0, 4.0)
    assert (observer.avg_min, observer.avg_max) == (-2.0, 3.0)


def stats_of(values) -> TensorStats:
    stats = TensorStats(MinMaxObserver(), HistogramObserver())
    for chunk in np.array_split(values, 10):
        stats.update(chunk)
    return stats


def test_percentile_range_ignores_rare_outliers():
    rng = np.random.default_rng(2)
    values = np.concatenate([rng.normal(0, 1, 200_000), [80.0]])
    lo, hi = calibrated_range(stats_of(values), "percentile", symmetric=False, percentile=99.99)
    assert 3.0 < hi < 5.0 and -5.0 < lo < -3.0
    assert calibrated_range(stats_of(values), "minmax", symmetric=False)[1] == 80.0


def test_entropy_and_mse_on_gaussian_are_sane():
    values = np.random.default_rng(3).normal(0, 1, 300_000)
    stats = stats_of(values)
    threshold = entropy_threshold(stats.histogram, symmetric=True)
    assert 2.5 < threshold < 6.0
    lo, hi = calibrated_range(stats, "mse", symmetric=True)
    assert lo == -hi and 2.0 < hi <= np.abs(values).max()


def test_entropy_is_not_pulled_in_by_a_spike_at_zero():
    """After a ReLU half the values are exactly zero (exact on any grid); the rest decide the threshold, as without the zeros."""
    positive = np.abs(np.random.default_rng(5).normal(0, 1, 150_000))
    with_zeros = np.concatenate([np.zeros(150_000), positive])
    for values in (positive, with_zeros):
        _, hi = calibrated_range(stats_of(values), "entropy", symmetric=False)
        assert 2.5 < hi <= positive.max(), hi


def test_ranges_always_contain_zero():
    stats = stats_of(np.random.default_rng(4).uniform(2.0, 3.0, 10_000))
    for method in ("minmax", "percentile", "entropy", "mse"):
        lo, hi = calibrated_range(stats, method, symmetric=False)
        assert lo == 0.0 and hi > 2.0


def test_uint8_and_int8_parameters():
    scale, zero = activation_params(-1.0, 3.0, signed=False)
    assert zero.dtype == np.uint8 and int(zero) == 64 and scale == pytest.approx(4.0 / 255)
    scale, zero = activation_params(0.0, 6.0, signed=False)
    assert int(zero) == 0
    scale, zero = activation_params(-1.0, 3.0, signed=True)
    assert zero.dtype == np.int8 and int(zero) == 0 and scale == pytest.approx(3.0 / 127)
    # a range of a few subnormal floats (a random HF MobileViT's attention output): a scale of 0 would divide by zero
    scale, zero = activation_params(-1e-44, 1e-44, signed=False)
    assert scale > 0 and np.isfinite(scale) and int(zero) == 0


def test_weight_and_bias_quantization_round_trip():
    rng = np.random.default_rng(5)
    weight = rng.normal(0, 1, (6, 3, 3, 3)).astype(np.float32) * np.arange(1, 7, dtype=np.float32)[:, None, None, None]
    scales = weight_params(weight, 0)
    assert scales.shape == (6,)
    quantized = quantize_weight(weight, scales, 0)
    assert quantized.dtype == np.int8 and np.abs(quantized).max() == 127
    error = np.abs(quantized * scales[:, None, None, None] - weight).max(axis=(1, 2, 3))
    assert np.all(error <= scales / 2 + 1e-7)
    bias, bias_scale = quantize_bias(np.linspace(-1, 1, 6).astype(np.float32), np.float32(0.02), scales)
    assert bias.dtype == np.int32
    np.testing.assert_allclose(bias * bias_scale, np.linspace(-1, 1, 6), atol=bias_scale.max())


def observe(batches, bins=256) -> TensorStats:
    stats = TensorStats(MinMaxObserver(momentum=0.8), HistogramObserver(bins))
    for batch in batches:
        stats.update(batch)
    return stats


@pytest.mark.parametrize("cuts", [(1,), (2, 5), (1, 2, 3, 4, 5, 6), (6,)])
def test_any_grouping_of_the_same_batches_gives_the_same_state(cuts):
    rng = np.random.default_rng(7)
    batches = [rng.normal(shift, scale, rng.integers(5, 400)) for shift, scale in ((0, 0.01), (3, 1), (-40, 8), (0, 0.5), (100, 30), (2, 2), (0, 1e-4))]
    whole = observe(batches)
    edges = [0, *cuts, len(batches)]
    parts = [observe(batches[a:b]) for a, b in zip(edges, edges[1:])]
    merged = parts[0]
    for part in parts[1:]:
        merged.merge(part)
    assert (merged.histogram.width, merged.histogram.first, merged.histogram.total) == (whole.histogram.width, whole.histogram.first, whole.histogram.total)
    np.testing.assert_array_equal(merged.histogram.counts, whole.histogram.counts)
    assert (merged.minmax.min, merged.minmax.max, merged.minmax.count) == (whole.minmax.min, whole.minmax.max, whole.minmax.count)
    assert merged.minmax.avg_min == pytest.approx(whole.minmax.avg_min, rel=1e-12)
    assert merged.minmax.avg_max == pytest.approx(whole.minmax.avg_max, rel=1e-12)
    for method in ("minmax", "moving-minmax", "percentile", "entropy", "mse"):
        for symmetric in (False, True):
            assert calibrated_range(merged, method, symmetric=symmetric) == pytest.approx(calibrated_range(whole, method, symmetric=symmetric), rel=1e-9), method


def test_histogram_grid_is_fixed_by_the_values_alone():
    rng = np.random.default_rng(8)
    values = rng.normal(0, 3, 5000).astype(np.float32)
    one, shuffled = HistogramObserver(128), HistogramObserver(128)
    one.update(values)
    for chunk in np.array_split(rng.permutation(values), 17):
        shuffled.update(chunk)
    assert (one.width, one.first) == (shuffled.width, shuffled.first)
    np.testing.assert_array_equal(one.counts, shuffled.counts)
    assert one.width == 2.0 ** np.round(np.log2(one.width))
    assert one.low <= values.min() and one.high > values.max()


def test_histogram_leaves_out_non_finite_values_and_survives_huge_ones():
    observer = HistogramObserver(64)
    observer.update(np.array([1e30, 1e30, np.inf, np.nan], np.float32))
    observer.update(np.array([-3e30, 2.0], np.float32))
    assert observer.total == 4 and observer.counts.sum() == 4
    assert observer.low <= -3e30 and observer.high > 1e30


@pytest.mark.parametrize("offset", [0.0, -40.0, 3e4, 3e7])
def test_bin_numbers_far_from_zero_count_as_those_near_it(offset):
    # near zero the index is taken through float32 and int32; where bin numbers pass 2**24 (values far from zero for
    # their spread) through int64: either way, numpy's histogram on the same edges
    rng = np.random.default_rng(10)
    values = (offset + rng.standard_normal(70_000) * (1.0 + abs(offset) * 1e-6)).astype(np.float32)
    observer = HistogramObserver(2048)
    for chunk in np.array_split(values, 3):
        observer.update(chunk)
    assert (abs(observer.first) >= 1 << 24) == (offset == 3e7)
    expected, _ = np.histogram(values.astype(np.float64), bins=observer.edges())
    np.testing.assert_array_equal(observer.counts, expected)


def test_known_extremes_count_the_same_as_recomputed_ones_and_flag_non_finite_batches():
    rng = np.random.default_rng(9)
    values = (rng.standard_t(3, 100_003) * 7).astype(np.float32)  # several counting chunks
    given, found = TensorStats(MinMaxObserver(), HistogramObserver(256)), HistogramObserver(256)
    assert given.update(values) is True
    found.update(values)
    assert (given.histogram.width, given.histogram.first, given.histogram.total) == (found.width, found.first, found.total)
    np.testing.assert_array_equal(given.histogram.counts, found.counts)
    expected, _ = np.histogram(values, bins=found.edges())
    np.testing.assert_array_equal(found.counts, expected)
    assert given.update(np.array([1.0, np.nan], np.float32)) is False and given.histogram.total == values.size + 1


@pytest.mark.parametrize("size", [128, 130, 1000, 2047])
def test_histogram_spread_over_quantization_levels_matches_splitting_it(size):
    from onnxslim.quant.ranges import _spread_over_levels

    rng = np.random.default_rng(size)
    counts = rng.integers(0, 5, size).astype(np.float64) * (rng.random(size) < 0.7)
    expected = np.concatenate([np.where(c > 0, c.sum() / max((c > 0).sum(), 1), 0.0) for c in np.array_split(counts, 128)])
    np.testing.assert_allclose(_spread_over_levels(counts, 128), expected, rtol=1e-12)
