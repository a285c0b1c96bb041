"""MediaPipe's pretrained TFLite models converted to ONNX by tf2onnx, for benchmarks/unseen_real.py's photograph rows.

    pip install tensorflow-cpu==2.21.0 tf2onnx==1.17.0   # this script's own dependencies, in an environment of its own
    python models/tflite_export.py [NAME ...]             # -> models/cache/unseen/mediapipe_NAME.onnx

mediapipe 0.10.14's wheel (downloaded, never installed) ships the models of its solutions as .tflite files; tf2onnx
1.17 converts them as a user would (`python -m tf2onnx.convert --tflite`): channels-last inputs turned by a Transpose,
residual shortcuts widened by Pads of zero channels, PReLU slopes above 1. Of its fourteen models, these five convert
to operators every runtime knows; the selfie segmenters keep MediaPipe's own transposed convolution and the attention
face mesh its landmark transforms (tf2onnx leaves them unconverted), and two sparse detectors fail in tf2onnx itself.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.choice import chosen_names  # noqa: E402
from models.wheels import take_from_wheel  # noqa: E402

OUT = ROOT / "models" / "cache" / "unseen"
WHEEL = "mediapipe==0.10.14"
MODULES = {
    "face_detection_short_range": "face_detection/face_detection_short_range.tflite",  # BlazeFace, 128x128, inputs in [-1, 1]
    "palm_detection_lite": "palm_detection/palm_detection_lite.tflite",  # 192x192, inputs in [0, 1]
    "face_landmark": "face_landmark/face_landmark.tflite",  # 468 points, 192x192
    "hand_landmark_lite": "hand_landmark/hand_landmark_lite.tflite",  # 21 points, 224x224
    "iris_landmark": "iris_landmark/iris_landmark.tflite",  # 64x64
}


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tf2onnx

    names = chosen_names(__doc__.splitlines()[0], MODULES)
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        files = {Path(folder) / f"{name}.tflite": f"mediapipe/modules/{MODULES[name]}" for name in names}
        take_from_wheel(WHEEL, files)
        for tflite in files:
            path = OUT / f"mediapipe_{tflite.stem}.onnx"
            tf2onnx.convert.from_tflite(str(tflite), opset=17, output_path=str(path))
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
