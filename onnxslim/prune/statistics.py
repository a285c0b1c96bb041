"""Activation statistics for pruning: the variance of every weighted layer's input channels."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx

from onnxslim.measure.channels import channel_rows, input_moments

__all__ = ["channel_energy", "channel_rows"]


def channel_energy(model: onnx.ModelProto, source: Iterable, *, token_mask: str | None = None, show_progress: bool = False) -> dict[str, np.ndarray]:
    """Consumer node -> variance of each input channel over the data.

    Variance rather than mean square: the mean of a removed channel is restored
    by bias compensation, so only its variation is lost.
    """
    return {name: moments.variance for name, moments in input_moments(model, source, token_mask=token_mask, show_progress=show_progress).items()}
