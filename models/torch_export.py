"""Export a torch network with one input and one output to ONNX, checked against torch before the file takes its name."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np


def export_checked(network, example, target: Path, *, input_name: str, output_name: str, dynamic_axes: dict, check=None) -> Path:
    """Write ``network`` (in eval mode) to ``target`` with torch's TorchScript exporter at opset 17, traced on ``example``.

    The model is first written beside ``target`` and takes its name only once onnxruntime reproduces torch's output
    on ``check`` (another batch size or length than ``example``, to prove the dynamic axes; ``example`` when None)
    within 1e-4; otherwise RuntimeError, and ``target`` is left as it was.
    """
    import onnxruntime as ort
    import torch

    partial = target.with_suffix(".part.onnx")
    with warnings.catch_warnings():
        # the TorchScript exporter writes a recurrent layer as one ONNX LSTM node; its deprecation notice, the tracer's notes on
        # the module's Python-side size checks and the exporter's cautions (an unfolded strided Slice, LSTM states at other
        # batch sizes) say nothing the check below does not verify
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", UserWarning)
        torch.onnx.export(network, (example,), str(partial), input_names=[input_name], output_names=[output_name], dynamic_axes=dynamic_axes,
                          opset_version=17, dynamo=False)
    check = example if check is None else check
    with torch.no_grad():
        expected = network(check).numpy()
    got = ort.InferenceSession(str(partial), providers=["CPUExecutionProvider"]).run(None, {input_name: check.numpy()})[0]
    if not np.allclose(got, expected, atol=1e-4):
        raise RuntimeError(f"{target.name}: the export differs from torch by {np.abs(got - expected).max():.2e}")
    partial.replace(target)
    return target
