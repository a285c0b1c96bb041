"""An example loader for ``--data-loader calibration/readers_example.py:imagenet_style``.

A loader is any function that yields dicts of model input name -> numpy array,
one batch per dict. This one reads the images of a folder (set
ONNXSLIM_IMAGES, default ./images) the way torchvision classifiers expect:
resize to 224x224, RGB, scaled to 0..1, ImageNet mean/std, NCHW, batch of one.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def imagenet_style(input_name: str = "input"):
    from PIL import Image

    folder = Path(os.environ.get("ONNXSLIM_IMAGES", "images"))
    for path in sorted(folder.glob("*")):
        if path.suffix.lower() not in {".jpg", ".jpeg", ".png"}:
            continue
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB").resize((224, 224)), np.float32) / 255.0
        yield {input_name: ((rgb - MEAN) / STD).transpose(2, 0, 1)[None].astype(np.float32)}
