import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxslim.runtime.providers import available_providers


def pytest_configure(config):
    os.environ.setdefault("COLUMNS", "160")
    # measured channel widths are cached per machine; tests must measure, not read a developer's cache
    import tempfile

    os.environ["ONNXSLIM_CACHE_DIR"] = tempfile.mkdtemp(prefix="onnxslim-cache-")


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


requires_cuda = pytest.mark.skipif(
    "CUDAExecutionProvider" not in available_providers(),
    reason="needs the CUDA execution provider (onnxruntime-gpu and an NVIDIA GPU); this onnxruntime has only "
    + ", ".join(available_providers()),
)
