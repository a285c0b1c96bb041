"""Weights kept on disk (models over the protobuf limit): the same results as in memory, input files untouched.

These use small models with the mapping forced, so they run in a second; the
real over-2-GB run is in test_large_model.py.
"""

import hashlib

import numpy as np
import onnx
import pytest

import onnxslim.ir.io as io
from models.builders import conv_bn_relu, residual, sample_inputs, transformer_block
from onnxslim import PruneConfig, QuantConfig, prune, quantize
from onnxslim.ir.io import load_model, save_model
from onnxslim.ir.mapped import SessionFile, has_mapped, spill
from onnxslim.ir.tensors import is_mapped, to_array
from onnxslim.runtime import Runner
from tests.conftest import run_model


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def save_external(model, folder):
    folder.mkdir(exist_ok=True)
    path = save_model(model, folder / "model.onnx", external_data=True)
    return path, {p.name: digest(p) for p in folder.iterdir()}


def test_mapped_weights_read_the_same_values_without_touching_the_input(tmp_path):
    model = residual()
    path, before = save_external(model, tmp_path / "in")
    mapped = load_model(path, map_weights=True)
    assert has_mapped(mapped)
    by_name = {t.name: t for t in model.graph.initializer}
    for tensor in mapped.graph.initializer:
        if is_mapped(tensor):
            values = to_array(tensor)
            assert not values.flags.writeable
            np.testing.assert_array_equal(values, to_array(by_name[tensor.name]))
    feed = sample_inputs(model, 1)[0]
    np.testing.assert_array_equal(Runner(mapped).run(feed)[0], run_model(model, feed)[0])
    assert {p.name: digest(p) for p in (tmp_path / "in").iterdir()} == before


def test_session_files_are_removed_when_closed(tmp_path):
    path, _ = save_external(conv_bn_relu(), tmp_path / "in")
    mapped = load_model(path, map_weights=True)
    file = SessionFile(mapped)
    written = list(file.paths)
    assert all(p.exists() for p in written)
    file.close()
    assert not any(p.exists() for p in written)


def test_spill_moves_new_weights_to_disk_and_keeps_their_values(tmp_path):
    model = residual()
    path, _ = save_external(model, tmp_path / "in")
    mapped = load_model(path, map_weights=True)
    extra = np.arange(4096, dtype=np.float32)
    mapped.graph.initializer.append(onnx.numpy_helper.from_array(extra, "extra"))
    spilled = spill(mapped)
    tensor = next(t for t in spilled.graph.initializer if t.name == "extra")
    assert is_mapped(tensor)
    np.testing.assert_array_equal(to_array(tensor), extra)


@pytest.fixture
def big_threshold(monkeypatch):
    """Treat every model with external data as one over the protobuf limit."""
    import onnxslim.ir.mapped as mapped

    monkeypatch.setattr(io, "EXTERNAL_DATA_THRESHOLD", 1000)
    monkeypatch.setattr(mapped, "MAP_MIN_BYTES", 0)


def test_quantize_from_disk_equals_quantize_in_memory(tmp_path, big_threshold):
    model = conv_bn_relu()
    path, before = save_external(model, tmp_path / "in")
    data = sample_inputs(model, 6)
    # timed, but INT8 written both times whatever 3 runs say, its output layer quantized both times (auto would time that too)
    config = QuantConfig(latency_runs=3, if_slower="keep-int8", output_layers="int8")
    in_memory, _ = quantize(model, data, config=config)
    from_disk, report = quantize(path, data, config=config, output=tmp_path / "q.onnx")
    assert has_mapped(from_disk)
    written = onnx.load(str(tmp_path / "q.onnx"))
    for feed in sample_inputs(model, 2, seed=7):
        np.testing.assert_array_equal(run_model(written, feed)[0], run_model(in_memory, feed)[0])
    assert report.sizes.fp32_bytes > report.sizes.quantized_bytes > 0
    assert {p.name: digest(p) for p in (tmp_path / "in").iterdir()} == before


def test_prune_from_disk_equals_prune_in_memory(tmp_path, big_threshold, npz_folder):
    model = transformer_block()
    path, before = save_external(model, tmp_path / "in")
    data = npz_folder(sample_inputs(model, 4))
    # timed, but the same channels and the pruned model written both times whatever 3 runs say
    config = PruneConfig(ratio=0.5, latency_runs=3, importance="activation", recovery="refit", round_to=1, if_slower="write")
    in_memory, _ = prune(model, config=config, data=data)
    _, report = prune(path, data, config=config, output=tmp_path / "p.onnx")
    written = onnx.load(str(tmp_path / "p.onnx"))
    for feed in sample_inputs(model, 2, seed=7):
        np.testing.assert_allclose(run_model(written, feed)[0], run_model(in_memory, feed)[0], rtol=0, atol=1e-5)
    assert report.parameters[1] < report.parameters[0]
    assert report.latency
    assert {p.name: digest(p) for p in (tmp_path / "in").iterdir()} == before


def test_external_data_without_lengths_one_file_per_tensor(tmp_path, big_threshold):
    """As PyTorch writes models over 2 GB: a file per tensor, named after it, no length recorded."""
    model = residual()
    folder = tmp_path / "in"
    folder.mkdir()
    for index, tensor in enumerate(model.graph.initializer):
        if len(tensor.raw_data) < 256:
            continue
        (folder / f"w{index}").write_bytes(tensor.raw_data)
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        entry = tensor.external_data.add()
        entry.key, entry.value = "location", f"w{index}"
    onnx.save(model, str(folder / "model.onnx"))
    assert io.model_weight_bytes(load_model(folder / "model.onnx", load_weights=False)) > 1000
    pruned, report = prune(folder / "model.onnx", config=PruneConfig(ratio=0.5, latency_runs=0), output=tmp_path / "p.onnx")
    assert report.parameters[1] < report.parameters[0]
    feed = sample_inputs(residual(), 1)[0]
    assert run_model(onnx.load(str(tmp_path / "p.onnx")), feed)[0].shape == run_model(residual(), feed)[0].shape
