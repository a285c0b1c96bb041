"""Turn the command line's data options into a DataSource."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from onnxslim.data.sources import IMAGE_SUFFIXES, ImageFolder, LoaderFunction, image_files
from onnxslim.errors import UsageError
from onnxslim.ir.tensors import graph_inputs


def data_from_options(model: onnx.ModelProto, *, data: str | None, data_loader: str | None, image_size, image_layout: str, image_scale: float,
                      image_mean, image_std, image_channels: str, required: bool = True, warn=lambda text: None):
    """The data source the options describe: .npz folder, image folder, loader function or 'random'.

    ``warn`` is called with what the user should know about the choice (images without normalization).
    """
    if data and data_loader:
        raise UsageError("give either --data or --data-loader, not both")
    if data_loader:
        return LoaderFunction(data_loader)
    if not data:
        if required:
            raise UsageError("give --data DIR (.npz batches or images), --data-loader MODULE:FUNCTION, or --data random")
        return None
    folder = Path(data)
    has_images = data != "random" and folder.is_dir() and (any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir())
                                                         or (not any(folder.glob("*.np[yz]")) and bool(image_files(folder))))
    if has_images and any(folder.glob("*.npz")):
        raise UsageError(f"{folder} holds both .npz batches and images: put them in separate folders (onnxslim reads one kind)")
    if has_images:
        inputs = graph_inputs(model)
        if len(inputs) != 1:
            raise UsageError(f"an image folder feeds models with one input; this one has {len(inputs)}: {', '.join(i.name for i in inputs)}")
        shape = inputs[0].shape or ()
        if image_layout == "auto":
            image_layout = image_layout_of(shape)
        if image_size is None:
            spatial = shape[2:4] if image_layout == "nchw" else shape[1:3]
            if len(spatial) == 2 and all(isinstance(d, int) for d in spatial):
                image_size = tuple(spatial)
            else:
                raise UsageError(f"{folder} holds images: give --image-size HxW (the model's input '{inputs[0].name}' is {inputs[0].shape_text()})")
        pixels = inputs[0].dtype == np.uint8  # the model takes images as decoded and scales them itself
        if pixels and (image_mean is not None or image_std is not None):
            warn(f"{folder}: the model's input '{inputs[0].name}' takes uint8 pixels, so --image-mean and --image-std are not applied (the model normalizes them)")
        elif not pixels and image_mean is None and image_std is None:
            warn(f"{folder}: images are only scaled by {image_scale:g}: give --image-mean and --image-std if the model was trained on normalized inputs")
        return ImageFolder(
            folder, inputs[0].name, size=image_size, layout=image_layout, scale=image_scale,
            mean=image_mean or (0.0, 0.0, 0.0), std=image_std or (1.0, 1.0, 1.0), channels=image_channels, dtype=np.uint8 if pixels else np.float32,
        )
    return data


def image_layout_of(shape) -> str:
    """'nhwc' for a 4-D input with 3 values on its last axis and not on axis 1 (a channels-last export's), else 'nchw'."""
    if len(shape) == 4 and shape[3] == 3 and shape[1] != 3:
        return "nhwc"
    return "nchw"
