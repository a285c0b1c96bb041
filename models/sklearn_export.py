"""A scikit-learn classifier exported as scikit-learn's users export it: skl2onnx, a label and a ZipMap of probabilities.

    pip install scikit-learn skl2onnx
    python models/sklearn_export.py            # models/cache/unseen/sklearn_digits.onnx, calibration/cache/digits/{calib,eval}

A standard scaler and an MLP (128, 64) trained on the first 1,200 of scikit-learn's 1,797 handwritten digits (8x8
images as 64 features); the calibration split is 64 of those training digits, the evaluation split the first 200 of
the 597 the model never saw, one .npy batch each (the model has one input).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "cache" / "unseen" / "sklearn_digits.onnx"
DATA = ROOT / "calibration" / "cache" / "digits"
TRAINED = 1200


def main() -> None:
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features, labels = load_digits(return_X_y=True)
    features = features.astype(np.float32)
    classifier = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(128, 64), max_iter=300, random_state=0))
    classifier.fit(features[:TRAINED], labels[:TRAINED])
    print(f"accuracy on the {len(labels) - TRAINED} digits not trained on: {classifier.score(features[TRAINED:], labels[TRAINED:]):.4f}")
    MODEL.parent.mkdir(parents=True, exist_ok=True)
    MODEL.write_bytes(to_onnx(classifier, features[:1]).SerializeToString())
    for split, rows in (("calib", features[:64]), ("eval", features[TRAINED : TRAINED + 200])):
        folder = DATA / split
        folder.mkdir(parents=True, exist_ok=True)
        for index, row in enumerate(rows):
            np.save(folder / f"{index:05d}.npy", row[None])
    print(f"wrote {MODEL} and {DATA}/calib, {DATA}/eval")


if __name__ == "__main__":
    main()
