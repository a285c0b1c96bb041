import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from models.builders import conv_bn_relu, residual, sample_inputs
from onnxslim import ShareConfig, share
from onnxslim.cli import main
from onnxslim.errors import NothingToDoError, UsageError
from onnxslim.runtime.session import optimized_ops
from onnxslim.share.codebook import compensated_indices, identical_groups, kmeans_1d, pack_nibbles, refit_codebook, unpack_nibbles
from tests.conftest import run_model


def test_nibbles_round_trip_like_a_plain_reference():
    indices = np.random.default_rng(0).integers(0, 16, 1001).astype(np.uint8)
    packed = pack_nibbles(indices)
    assert packed.size == 501 and packed[0] == (indices[0] << 4 | indices[1])
    np.testing.assert_array_equal(unpack_nibbles(packed, indices.size), indices)
    with pytest.raises(ValueError):
        pack_nibbles(np.array([16], np.uint8))


def test_kmeans_codebook_round_trip():
    values = np.random.default_rng(1).standard_normal(50_000).astype(np.float32)
    for clusters, bound in ((256, 0.01), (16, 0.11)):
        codebook, indices = kmeans_1d(values, clusters)
        error = np.sqrt(np.mean((codebook[indices.astype(int)] - values) ** 2))
        assert codebook.shape == (clusters,) and np.all(np.diff(codebook) >= 0) and error < bound
    few = np.array([0.5, -1.0, 0.5, 2.0], np.float32)  # fewer distinct values than codes: exact
    codebook, indices = kmeans_1d(few, 16)
    np.testing.assert_array_equal(codebook[indices.astype(int)], few)


def test_identical_and_nearly_identical_tensors_are_found():
    a = np.arange(32, dtype=np.float32)
    groups = identical_groups({"a": a, "b": a.copy(), "c": a + 1e-4, "d": a[::-1].copy()})
    assert groups == [["a", "b"]]
    assert identical_groups({"a": a, "c": a + 1e-4}, tolerance=1e-5) == [["a", "c"]]


def tied_model() -> onnx.ModelProto:
    """Two layers whose weights are separate tensors with the same values (a tied export)."""
    weight = np.random.default_rng(2).standard_normal((64, 64)).astype(np.float32) * 0.1
    inits = [onnx.numpy_helper.from_array(weight, "w1"), onnx.numpy_helper.from_array(weight.copy(), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="first"), helper.make_node("MatMul", ["h", "w2"], ["y"], name="second")]
    graph = helper.make_graph(nodes, "tied", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 64])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_tied_weights_are_stored_once_and_compute_the_same():
    model = tied_model()
    shared, report = share(model, config=ShareConfig(clusters=0, latency_runs=0))
    assert [t.how for t in report.tensors] == ["tied to w1"]
    assert [t.name for t in shared.graph.initializer] == ["w1"]
    assert {n.input[1] for n in shared.graph.node} == {"w1"}
    feed = {"x": np.random.default_rng(3).standard_normal((2, 64)).astype(np.float32)}
    np.testing.assert_array_equal(run_model(shared, feed)[0], run_model(model, feed)[0])
    assert report.file_bytes.after < 0.6 * report.file_bytes.before


@pytest.mark.parametrize("clusters", [256, 16])
def test_codebooks_shrink_the_file_and_onnxruntime_folds_the_lookups(clusters):
    model = residual(channels=32, size=8)
    data = sample_inputs(model, 10)
    shared, report = share(model, data, config=ShareConfig(clusters=clusters, min_elements=1024, latency_runs=0))
    onnx.checker.check_model(shared)
    codebooks = [t for t in report.tensors if t.how.startswith("codebook")]
    assert codebooks and all(t.bytes_after < t.bytes_before / (3 if clusters == 256 else 6) for t in codebooks)
    assert report.zipped_bytes.after < report.zipped_bytes.before
    # what the session runs is the plain model: every lookup folded into a weight at load time
    ops = optimized_ops(shared)
    assert not {"Gather", "BitShift", "Cast"} & set(ops)
    cosine = report.fidelity[0].cosine
    assert cosine > (0.999 if clusters == 256 else 0.97), cosine
    assert report.evaluation.startswith("2 held-out")


def test_a_float16_models_weights_become_codebooks_restored_as_float16_and_folded():
    """FP16 exports (GPU deployments) were refused ("no float weight"): their weights are coded as float32 ones are and
    restored in float32 then cast, which onnxruntime folds at load (float16 lookups were left to run on the CPU)."""
    rng = np.random.default_rng(5)
    first, second = rng.standard_normal((64, 512)).astype(np.float16), rng.standard_normal((512, 32)).astype(np.float16)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["y"])],
        "half", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", 64])], [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["N", 32])],
        [onnx.numpy_helper.from_array(first, "w1"), onnx.numpy_helper.from_array(second, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    data = [{"x": rng.standard_normal((4, 64)).astype(np.float16)} for _ in range(10)]
    shared, report = share(model, data, config=ShareConfig(min_elements=1024, latency_runs=0))
    onnx.checker.check_model(shared)
    codebooks = [t for t in report.tensors if t.how.startswith("codebook")]
    assert {t.name for t in codebooks} == {"w1", "w2"} and all(t.bytes_before == t.elements * 2 for t in codebooks)
    assert all(t.bytes_after < 0.6 * t.bytes_before for t in codebooks)
    assert optimized_ops(shared) == optimized_ops(model)  # every lookup folded at load: the session runs what the original's runs
    out = run_model(shared, data[0])[0]
    assert out.dtype == np.float16 and report.fidelity[0].cosine > 0.999


def test_share_refuses_what_it_cannot_do():
    with pytest.raises(UsageError, match="--clusters"):
        ShareConfig(clusters=64)
    tiny = conv_bn_relu(channels=4, size=4)
    with pytest.raises(NothingToDoError, match="nothing to share"):
        share(tiny, config=ShareConfig(min_elements=10**9, latency_runs=0))


def test_cli_share_writes_model_and_report(save, tmp_path):
    path = save(tied_model())
    out, report = tmp_path / "shared.onnx", tmp_path / "share.json"
    result = CliRunner().invoke(main, ["share", str(path), "-o", str(out), "--min-elements", "1024", "--latency-runs", "3", "--report", str(report), "-q"])
    assert result.exit_code == 0, result.output
    content = json.loads(report.read_text())
    assert content["command"] == "share" and content["zipped_bytes"]["after"] < content["zipped_bytes"]["before"]
    assert "tied to w1" in {t["how"] for t in content["tensors"]} and "zipped" in result.output
    assert "random inputs" in result.output  # no --data: said plainly
    onnx.checker.check_model(str(out))


def test_pruned_zeros_stay_exactly_zero():
    rng = np.random.default_rng(4)
    values = rng.standard_normal(20_000).astype(np.float32)
    values[rng.random(values.size) < 0.5] = 0.0  # half the weights pruned
    for clusters in (16, 256):
        codebook, indices = kmeans_1d(values, clusters)
        restored = codebook[indices.astype(int)]
        assert np.all(restored[values == 0] == 0) and codebook.size == clusters
        assert np.sqrt(np.mean((restored - values)[values != 0] ** 2)) < (0.15 if clusters == 16 else 0.02)


def correlated_layer(k=96, n=64, rows=3000, seed=5):
    """Inputs with correlated channels (as real activations have) and a weight (K inputs x N outputs)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, k)) @ rng.standard_normal((k, k)) * 0.3 + rng.standard_normal((rows, k))
    return x, (rng.standard_normal((k, n)) * 0.1).astype(np.float32)


def output_error(x, weight, approx):
    return float(np.linalg.norm(x @ (weight - approx)) / np.linalg.norm(x @ weight))


def test_error_compensated_indices_and_refit_codebook_bring_the_layer_output_closer():
    x, weight = correlated_layer()
    scales = np.abs(weight).max(axis=0)
    codebook, nearest = kmeans_1d(weight / scales, 16)
    gram = x.T @ x
    plain = codebook[nearest.astype(int)].reshape(weight.shape) * scales
    chosen = compensated_indices(weight, scales, codebook, gram)
    compensated = codebook[chosen] * scales
    refit, order = refit_codebook(weight, scales, chosen, gram, codebook)
    refitted = refit[order[chosen]] * scales
    assert np.all(np.diff(refit) >= 0) and sorted(order) == list(range(16))
    errors = [output_error(x, weight, q) for q in (plain, compensated, refitted)]
    assert errors[1] < 0.85 * errors[0] and errors[2] <= errors[1] + 1e-9, errors
    # a reference GPTQ loop (no lazy batches) makes the same choices
    from onnxslim.measure.gram import inverse_cholesky_upper

    work, upper, edges = weight.astype(np.float64).copy(), inverse_cholesky_upper(gram), (codebook[1:] + codebook[:-1]) / 2
    for i in range(work.shape[0]):
        pick = np.searchsorted(edges, work[i] / scales)
        assert np.array_equal(pick, chosen[i])
        work[i + 1 :] -= np.outer(upper[i, i + 1 :], (work[i] - codebook[pick] * scales) / upper[i, i])


def test_compensation_keeps_a_pruned_weights_zeros():
    x, weight = correlated_layer(seed=6)
    weight[np.random.default_rng(1).random(weight.shape) < 0.4] = 0.0
    scales = np.abs(weight).max(axis=0)
    codebook, _ = kmeans_1d(weight / scales, 16)
    assert 0.0 in codebook
    chosen = compensated_indices(weight, scales, codebook, x.T @ x, keep_zeros=True)
    refit, order = refit_codebook(weight, scales, chosen, x.T @ x, codebook)
    assert np.all(refit[order[chosen]][weight == 0] == 0)


def test_sixteen_codes_meet_the_accuracy_budget_by_moving_the_noisiest_weights_up():
    model = residual(channels=32, size=8, blocks=6)
    data = sample_inputs(model, 30, seed=3)
    _, loose = share(model, data, config=ShareConfig(clusters=16, min_elements=1024, latency_runs=0, accuracy_budget=None))
    worst = min(c.cosine for c in loose.fidelity)
    budget = 1 - (1 - worst) / 2  # half the loss
    _, report = share(model, data, config=ShareConfig(clusters=16, min_elements=1024, latency_runs=0, accuracy_budget=budget))
    assert min(c.cosine for c in report.fidelity) >= budget
    assert report.kept_for_budget and all(entry["to"] == "codebook 256" for entry in report.kept_for_budget)
    levels = {t.name: t.how for t in report.tensors}
    assert all(levels[entry["weight"]] == "codebook 256" for entry in report.kept_for_budget)
    assert "codebook 16" in levels.values()  # the rest stay at 16 codes
    # at 256 codes the next step up is float: the weight is left as it was
    _, tight = share(model, data, config=ShareConfig(clusters=256, min_elements=1024, latency_runs=0, accuracy_budget=0.999999))
    assert tight.kept_for_budget and {entry["to"] for entry in tight.kept_for_budget} == {"float"}
    assert not {entry["weight"] for entry in tight.kept_for_budget} & {t.name for t in tight.tensors}


def test_zeros_of_a_subnormal_channel_stay_zeros_and_a_zero_channel_stays_zero():
    model = residual(channels=32, size=8)
    weight = next(t for t in model.graph.initializer if len(t.dims) == 4 and t.dims[0] == 32 and t.dims[1] == 32)
    array = onnx.numpy_helper.to_array(weight).copy()
    array[5] = 0.0
    array[5, 3] = 1e-40  # a dead channel: zeros and one kernel of values below float32's smallest normal number
    array[9] = 0.0  # a pruned channel
    weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
    shared, _ = share(model, config=ShareConfig(min_elements=1024, latency_runs=0))
    values = {t.name: onnx.numpy_helper.to_array(t) for t in shared.graph.initializer}
    stem = weight.name
    indices = values[f"{stem}_indices8"].astype(int)
    restored = values[f"{stem}_codebook"][indices] * values[f"{stem}_channel_scale"]
    tiny = np.finfo(np.float32).tiny
    # restoring the whole channel as subnormal values would multiply many times slower than the original's 9
    assert ((restored != 0) & (np.abs(restored) < tiny)).sum() <= ((array != 0) & (np.abs(array) < tiny)).sum() == 9
    assert np.all(restored[5][array[5] == 0] == 0) and np.all(restored[9] == 0)
    assert values[f"{stem}_channel_scale"].reshape(-1)[9] == 0
