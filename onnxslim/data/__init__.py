"""Input data: the ``.npz`` folder format, random inputs, and checks against a model's inputs."""

from onnxslim.data.sources import (
    DataSource,
    NpzFolder,
    RandomInputs,
    parse_input_shapes,
    open_data,
)
from onnxslim.data.checks import check_batch

__all__ = ["DataSource", "NpzFolder", "RandomInputs", "parse_input_shapes", "open_data", "check_batch"]
