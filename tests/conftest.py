import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import settings

from onnxslim.runtime.providers import available_providers

# The property tests draw random graphs and check statistical bounds (an output cosine after INT8); a fresh draw
# on every run would let a hard example (an evaluation input far outside 12 calibration samples) fail one run in
# many. The same examples on every run and machine keep the suite's verdict reproducible.
settings.register_profile("reproducible", derandomize=True, database=None)
settings.load_profile("reproducible")


def _build_models_at_the_lowest_ir_version_their_opsets_allow() -> None:
    """onnx.helper.make_model stamps the newest IR version the installed onnx knows (14 for onnx 1.23), which
    onnxruntime-gpu 1.31, the newest CUDA build, refuses to load (it reads up to 13). Exporters stamp the
    lowest version their opsets need; the models the tests build do the same, so the suite runs against
    every onnxruntime the project supports, the GPU build included. An explicit ir_version is kept."""
    make_model = onnx.helper.make_model

    def lowest_ir_make_model(graph, **kwargs):
        model = make_model(graph, **kwargs)
        if "ir_version" not in kwargs:
            model.ir_version = max(onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True), 7)
        return model

    onnx.helper.make_model = lowest_ir_make_model


def pytest_configure(config):
    os.environ.setdefault("COLUMNS", "160")
    _build_models_at_the_lowest_ir_version_their_opsets_allow()
    # measured channel widths are cached per machine; tests must measure, not read a developer's cache
    import tempfile

    config._onnxslim_cache = tempfile.TemporaryDirectory(prefix="onnxslim-cache-")
    os.environ["ONNXSLIM_CACHE_DIR"] = config._onnxslim_cache.name


def pytest_unconfigure(config):
    cache = getattr(config, "_onnxslim_cache", None)
    if cache is not None:
        cache.cleanup()


@pytest.fixture
def save(tmp_path):
    """Write a ModelProto under tmp_path and return its path."""

    def _save(model: onnx.ModelProto, name: str = "model.onnx") -> Path:
        path = tmp_path / name
        onnx.save(model, str(path))
        return path

    return _save


@pytest.fixture
def npz_folder(tmp_path):
    """Write a list of input dicts as a .npz folder and return it."""

    def _write(batches, name: str = "data") -> Path:
        folder = tmp_path / name
        folder.mkdir()
        for index, batch in enumerate(batches):
            np.savez(folder / f"batch_{index:03d}.npz", **batch)
        return folder

    return _write


def run_model(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def timed_as(ratio: float, threads: int | None = 0):
    """A LatencyComparison at ``threads`` whose candidate takes ``ratio`` times the reference's median (1 ms)."""
    from onnxslim.measure import LatencyComparison

    return LatencyComparison(threads, {"median_ms": 1.0, "runs": 3}, {"median_ms": ratio, "runs": 3})


def weight_is_dequantized(model: onnx.ModelProto, node: onnx.NodeProto) -> bool:
    """Whether ``node`` reads its weight through a DequantizeLinear (an integer layer) rather than as a float constant."""
    return any(n.op_type == "DequantizeLinear" and node.input[1] in n.output for n in model.graph.node)


def reported_cosine_is_the_written_models(model: onnx.ModelProto, written: onnx.ModelProto, data: list, report) -> bool:
    """Whether the report's output cosine is that of ``written`` against ``model`` on the held-out batches (every fifth of ``data``)."""
    held = [b for i, b in enumerate(data) if i % 5 == 4]
    ours = np.concatenate([run_model(written, b)[0].ravel() for b in held])
    theirs = np.concatenate([run_model(model, b)[0].ravel() for b in held])
    return report.fidelity[0].cosine == pytest.approx(float(ours @ theirs / np.linalg.norm(ours) / np.linalg.norm(theirs)), abs=1e-5)


requires_cuda = pytest.mark.skipif(
    "CUDAExecutionProvider" not in available_providers(),
    reason="needs the CUDA execution provider (onnxruntime-gpu and an NVIDIA GPU); this onnxruntime has only "
    + ", ".join(available_providers()),
)


def noisy_comparison(noise_by_batch, seed: int = 0):
    """An OutputComparison of random 200-value batches with their copies plus Gaussian noise of the given scale, one batch per entry."""
    from onnxslim.measure import OutputComparison

    rng = np.random.default_rng(seed)
    comparison = OutputComparison("y")
    for noise in noise_by_batch:
        reference = rng.standard_normal(200).astype(np.float32)
        comparison.add(reference, (reference + noise * rng.standard_normal(200)).astype(np.float32))
    return comparison
