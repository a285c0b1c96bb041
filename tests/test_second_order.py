"""Second-order channel ranking: its costs are the refit's real residuals, and it finds what the diagonal ranking cannot."""

import numpy as np
import pytest
from onnx import TensorProto, helper

from models.builders import GraphBuilder, _rename_output
from onnxslim import PruneConfig, prune
from onnxslim.errors import UsageError
from onnxslim.measure.channels import ChannelMoments
from onnxslim.prune import second_order
from onnxslim.prune.second_order import LinearConsumer, affordable, damped_inverse, removal_scores


def refit_residual(x: np.ndarray, y: np.ndarray, kept: list[int]) -> float:
    """Mean squared error per row of the least-squares fit of ``y`` from the kept columns of ``x`` (centered: the intercept)."""
    xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
    solution, *_ = np.linalg.lstsq(xc[:, kept], yc, rcond=None)
    return float(((xc[:, kept] @ solution - yc) ** 2).sum() / x.shape[0])


def test_first_removal_costs_are_the_refit_residuals():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4000, 6)) @ rng.standard_normal((6, 6))
    weight = rng.standard_normal((6, 3))
    y = x @ weight
    covariance = np.cov(x, rowvar=False, bias=True)
    inverse = damped_inverse(covariance, 1e-9)
    for channel in range(6):
        predicted = float((weight[channel] ** 2).sum() / inverse[channel, channel])
        assert predicted == pytest.approx(refit_residual(x, y, [c for c in range(6) if c != channel]), rel=1e-4)


def test_greedy_order_follows_the_refit_costs_and_blocks_price_together():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5000, 8))
    x[:, 3] = x[:, 0] * 2.0 + 0.01 * rng.standard_normal(5000)  # nearly a copy of channel 0
    weight = rng.standard_normal((8, 4))
    weight[[0, 3]] *= 5.0  # the twins carry the most energy, and the refit can move either onto the other
    covariance = np.cov(x, rowvar=False, bias=True)
    singles = LinearConsumer("layer", weight, covariance, {c: np.array([c]) for c in range(8)})
    scores = removal_scores(list(range(8)), [singles], {}, ridge=1e-6)
    assert min(scores, key=scores.get) in (0, 3), scores  # one of the twins goes first
    ranked = sorted(scores, key=scores.get)
    assert sorted(scores.values()) == [scores[r] for r in ranked] and len(set(scores.values())) == 8  # strictly increasing along the order
    # the diagonal (activation) ranking would take the least energetic channel instead: it cannot see the copy
    energy = covariance.diagonal() * (weight**2).sum(axis=1)
    assert set(np.argsort(energy)[-2:]) == {0, 3}
    # a class of two positions is priced as one block removal: the refit residual of both columns gone
    pairs = LinearConsumer("layer", weight, covariance, {0: np.array([1, 2]), 1: np.array([4, 5])})
    scores = removal_scores([0, 1], [pairs], {}, ridge=1e-9)
    y = x @ weight
    first = min(scores, key=scores.get)
    gone = [1, 2] if first == 0 else [4, 5]
    assert scores[first] == pytest.approx(refit_residual(x, y, [c for c in range(8) if c not in gone]), rel=1e-3)


def test_diagonal_costs_add_to_the_refit_costs():
    covariance = np.eye(3)
    weight = np.ones((3, 2))
    consumer = LinearConsumer("layer", weight, covariance, {c: np.array([c]) for c in range(3)})
    scores = removal_scores([0, 1, 2], [consumer], {0: 10.0, 1: 0.0, 2: 5.0}, ridge=1e-9)
    assert sorted(scores, key=scores.get) == [1, 2, 0]


def twin_neurons(seed: int = 3):
    """An MLP whose hidden layer has pairs of neurons that always fire together (one 1.5 times the other), and quiet independent ones."""
    b = GraphBuilder(seed)
    rng = np.random.default_rng(seed)
    first = rng.standard_normal((8, 6)).astype(np.float32)
    first = np.concatenate([first, first[:, :4] * 1.5, 0.2 * rng.standard_normal((8, 2)).astype(np.float32)], axis=1)  # 12 hidden: 4 twins, 2 quiet
    hidden = b.node("Relu", [b.node("MatMul", ["input", b.const(first)])])
    second = rng.standard_normal((12, 5)).astype(np.float32)
    y = b.node("Add", [b.node("MatMul", [hidden, b.const(second)]), b.const(np.zeros(5, np.float32))])
    _rename_output(b, y, "output")
    return b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 8])],
                   [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 5])], "twins")


def test_second_order_prune_keeps_what_the_refit_cannot_rebuild():
    model = twin_neurons()
    rng = np.random.default_rng(5)
    data = [{"input": rng.standard_normal((64, 8)).astype(np.float32)} for _ in range(20)]
    cosine = {}
    for importance in ("activation", "second-order"):
        _, report = prune(model, data, config=PruneConfig(ratio=4 / 12, importance=importance, latency_runs=0, round_to=1))
        cosine[importance] = report.fidelity[0].cosine
    # the four twins cost nothing once the refit has doubled up their partners; the activation ranking takes quiet neurons instead
    assert cosine["second-order"] > 0.999, cosine  # the ridge term alone keeps it from 1
    assert cosine["activation"] < cosine["second-order"] - 1e-3, cosine


def test_second_order_needs_data():
    with pytest.raises(UsageError, match="second-order"):
        prune(twin_neurons(), config=PruneConfig(importance="second-order", latency_runs=0))


def test_covariance_comes_with_the_moments():
    rows = np.array([[1.0, 2.0], [3.0, 6.0]])
    moments = ChannelMoments(rows.mean(axis=0), (rows**2).mean(axis=0), rows.T @ rows / 2)
    np.testing.assert_allclose(moments.covariance, np.cov(rows, rowvar=False, bias=True))
    assert ChannelMoments(rows.mean(axis=0), (rows**2).mean(axis=0)).covariance is None


def test_covariances_are_held_narrowest_first_within_the_budget(monkeypatch):
    monkeypatch.setattr(second_order, "COVARIANCE_BUDGET_BYTES", 8 * (100**2 + 200**2))
    assert affordable({"wide": 300, "narrow": 100, "middle": 200, "too wide": second_order.MAX_COVARIANCE_INPUTS + 1}) == {"narrow", "middle"}
    # the rows each running sum holds before multiplying them in count too: then only the narrowest fits
    assert affordable({"narrow": 100, "middle": 200}, pending_rows=200) == {"narrow"}


def conv_consumers(stride: int, kernel: int, seed: int = 7):
    """A 3x3 Conv + Relu whose 16 channels feed a Conv with the given kernel and stride (padding kernel // 2)."""
    b = GraphBuilder(seed)
    x = b.node("Relu", [b.conv("input", 4, 16, k=3)])
    y = b.conv(x, 16, 6, k=kernel, stride=stride)
    _rename_output(b, y, "output")
    size = 12 // stride
    return b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, 12, 12])],
                   [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 6, size, size])], "conv_consumer")


@pytest.mark.parametrize(("stride", "kernel"), [(1, 3), (2, 3), (2, 1), (1, 1)])
def test_conv_patches_times_the_weight_are_the_conv_output(stride, kernel):
    from onnxslim.ir.tensors import initializer_map, to_array
    from onnxslim.prune.recover import as_matrix, conv_patches
    from tests.conftest import run_model

    model = conv_consumers(stride, kernel)
    inits = initializer_map(model.graph)
    consumer = [n for n in model.graph.node if n.op_type == "Conv"][-1]
    hidden = helper.make_tensor_value_info(consumer.input[0], TensorProto.FLOAT, None)
    model.graph.output.append(hidden)
    x = np.random.default_rng(0).standard_normal((1, 4, 12, 12)).astype(np.float32)
    output, inner = run_model(model, {"input": x})
    rows = np.arange(output.shape[0] * output.shape[2] * output.shape[3])
    weight = to_array(inits[consumer.input[1]])
    product = conv_patches(inner, consumer, weight.shape[2:], rows) @ as_matrix(weight, consumer) + to_array(inits[consumer.input[2]])
    np.testing.assert_allclose(product, np.moveaxis(output, 1, -1).reshape(-1, 6), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("stride", "kernel"), [(1, 3), (2, 3), (2, 1)])
def test_convolutions_reading_patches_are_refit(stride, kernel):
    """A 3x3 consumer used to get bias compensation only; a strided 1x1 one was refit on input rows that were not
    its output's (cosine 0.57 against 0.93 by bias compensation on this model)."""
    model = conv_consumers(stride, kernel)
    rng = np.random.default_rng(8)
    data = [{"input": (rng.standard_normal((1, 4, 12, 12)) + 0.3).astype(np.float32)} for _ in range(30)]
    cosine = {}
    for recovery in ("bias", "refit"):
        _, report = prune(model, data, config=PruneConfig(ratio=0.5, importance="activation", recovery=recovery, latency_runs=0, round_to=1))
        cosine[recovery] = report.fidelity[0].cosine
        consumer = report.recovery[0]
        assert consumer.reason.code.value == recovery, report.recovery
    assert cosine["refit"] > cosine["bias"] + 0.005, cosine


def _sums(x, y):
    from onnxslim.prune.recover import _Sums

    sums = _Sums()
    sums.add(x.astype(np.float64), y.astype(np.float64))
    return sums


def test_held_out_error_from_the_sums_is_the_squared_error():
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((50, 4)), rng.standard_normal((50, 3))
    weights, intercept = rng.standard_normal((4, 3)), rng.standard_normal(3)
    direct = float(((x @ weights + intercept - y) ** 2).sum() - (y**2).sum())
    assert _sums(x, y).error(weights, intercept) == pytest.approx(direct, rel=1e-9)


def test_ridge_is_chosen_on_held_out_rows():
    from onnxslim.prune.recover import _chosen_ridge

    rng = np.random.default_rng(3)
    prior = rng.standard_normal((40, 2))
    # few noisy rows around the layer's own weights: refitting 40 weights on 45 rows overfits, keeping them does not
    x = rng.standard_normal((90, 40))
    y = x @ prior + 0.5 * rng.standard_normal((90, 2))
    assert _chosen_ridge(_sums(x[:45], y[:45]), _sums(x[45:], y[45:]), 1e-2, prior) >= 1.0
    # many rows from other weights than the layer's own: the least-squares fit is right, the prior is not
    x = rng.standard_normal((4000, 40))
    y = x @ rng.standard_normal((40, 2))
    assert _chosen_ridge(_sums(x[:3000], y[:3000]), _sums(x[3000:], y[3000:]), 1e-2, prior) <= 1e-2
