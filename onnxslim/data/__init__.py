"""Input data: the ``.npz`` folder format, random inputs, and checks against a model's inputs."""

from onnxslim.data.checks import check_batch
from onnxslim.data.sources import (
    DataSource,
    NpzFolder,
    RandomInputs,
    open_data,
    parse_input_shapes,
)

__all__ = ["DataSource", "NpzFolder", "RandomInputs", "parse_input_shapes", "open_data", "check_batch"]
