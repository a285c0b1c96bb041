"""Keras 3 models (random weights) exported with tf2onnx, for benchmarks/unseen_exports.py's "keras:" rows.

    pip install tensorflow-cpu==2.21.0 tf2onnx==1.17.0   # this script's own dependencies, in an environment of its own
    python models/keras_export.py [NAME ...]             # -> benchmarks/cache/unseen/keras_NAME.onnx
    python benchmarks/unseen_exports.py --models keras:resnet50 keras:transformer ...

Four `keras.applications` networks and four small models of common Keras shapes: a text CNN over token ids, a
transformer block (MultiHeadAttention, LayerNormalization, an exact-GELU feed-forward), a SimpleRNN with recurrent
dropout, and a Conv / BatchNorm / SeparableConv net. Each takes a dynamic batch. Random weights: these prove graph
coverage and latency, never accuracy (the applications end in a softmax that random weights leave nearly uniform).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.choice import chosen_names  # noqa: E402

OUT = ROOT / "benchmarks" / "cache" / "unseen"


def builders(keras) -> dict:
    layers, applications = keras.layers, keras.applications

    def text_cnn():
        tokens = keras.Input((64,), dtype="int32", name="tokens")
        x = layers.GlobalMaxPooling1D()(layers.Conv1D(128, 5, activation="relu")(layers.Embedding(5000, 64)(tokens)))
        return keras.Model(tokens, layers.Dense(4, activation="softmax")(x))

    def transformer():
        x = keras.Input((32, 64), name="x")
        attended = layers.LayerNormalization()(x + layers.MultiHeadAttention(4, 16)(x, x))
        fed = layers.Dense(64)(layers.Dense(128, activation="gelu")(attended))
        return keras.Model(x, layers.Dense(5)(layers.GlobalAveragePooling1D()(layers.LayerNormalization()(attended + fed))))

    def simple_rnn():
        x = keras.Input((20, 8), name="x")
        return keras.Model(x, layers.Dense(3)(layers.SimpleRNN(32, recurrent_dropout=0.1)(x)))

    def conv_bn():
        x = keras.Input((64, 64, 3), name="x")
        y = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(32, 3, padding="same")(x)))
        y = layers.Activation("swish")(layers.BatchNormalization()(layers.SeparableConv2D(64, 3, padding="same")(y)))
        y = layers.Conv2D(64, 3, padding="same", activation="relu")(layers.MaxPooling2D()(y))
        return keras.Model(x, layers.Dense(10)(layers.GlobalAveragePooling2D()(y)))

    return {
        "mobilenet_v3_small": lambda: applications.MobileNetV3Small(weights=None, input_shape=(224, 224, 3)),
        "efficientnet_b0": lambda: applications.EfficientNetB0(weights=None),
        "resnet50": lambda: applications.ResNet50(weights=None),
        "densenet121": lambda: applications.DenseNet121(weights=None),
        "text_cnn": text_cnn, "transformer": transformer, "simple_rnn": simple_rnn, "conv_bn": conv_bn,
    }


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    import tf2onnx

    every = builders(tf.keras)
    names = chosen_names(__doc__.splitlines()[0], every)
    OUT.mkdir(parents=True, exist_ok=True)
    for name in names:
        tf.keras.utils.set_random_seed(0)
        model = every[name]()
        spec = model.inputs[0]
        input_name = "tokens" if name == "text_cnn" else "x"
        signature = (tf.TensorSpec((None, *spec.shape[1:]), spec.dtype, name=input_name),)
        function = tf.function(lambda x, model=model: model(x, training=False), input_signature=signature)
        path = OUT / f"keras_{name}.onnx"
        tf2onnx.convert.from_function(function, input_signature=signature, opset=17, output_path=str(path))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
