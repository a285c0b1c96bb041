"""Check one batch of inputs against the model's declared inputs."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from onnxslim.errors import DataError
from onnxslim.ir.tensors import TensorSpec


def check_batch(batch: Mapping[str, np.ndarray], inputs: list[TensorSpec], source: str, *, finite: bool = True) -> None:
    """Raise DataError naming ``source`` and the input at fault unless ``batch`` fits ``inputs``."""
    expected = {spec.name for spec in inputs}
    missing = [name for name in expected if name not in batch]
    if missing:
        raise DataError(f"{source}: no array for model input '{missing[0]}' (has: {', '.join(sorted(batch)) or 'nothing'})")
    extra = [name for name in batch if name not in expected]
    if extra:
        raise DataError(f"{source}: array '{extra[0]}' is not an input of the model (inputs: {', '.join(sorted(expected))})")
    for spec in inputs:
        array = batch[spec.name]
        if spec.dtype is not None and array.dtype != spec.dtype:
            raise DataError(f"{source}: input '{spec.name}' is {array.dtype}, the model expects {spec.dtype}")
        if spec.shape is not None:
            if array.ndim != len(spec.shape):
                raise DataError(
                    f"{source}: input '{spec.name}' has shape {tuple(array.shape)}, the model expects rank {len(spec.shape)} {spec.shape_text()}"
                )
            for axis, (dim, size) in enumerate(zip(spec.shape, array.shape)):
                if isinstance(dim, int) and dim != size:
                    raise DataError(
                        f"{source}: input '{spec.name}' has shape {tuple(array.shape)}, the model expects {spec.shape_text()} (axis {axis})"
                    )
        if array.size == 0:
            raise DataError(f"{source}: input '{spec.name}' is empty (shape {tuple(array.shape)})")
        if finite and array.dtype.kind == "f" and not np.isfinite(array).all():
            bad = "NaN" if np.isnan(array).any() else "Inf"
            raise DataError(f"{source}: input '{spec.name}' contains {bad} values")
