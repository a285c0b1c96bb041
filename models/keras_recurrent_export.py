"""Keras recurrent layers (random weights) as tf2onnx writes them: the models tests/exported/keras_recurrent holds.

With TensorFlow 2.21 (Keras 3) and tf2onnx 1.17 every Keras LSTM, GRU and SimpleRNN but the plainest LSTM comes out
as a Loop over the time steps, one step's gates computed node by node (recurrent dropout, hard_sigmoid, every GRU).
Each variant reads (N, 12, 7) and ends in a dense layer to 3 scores; next to each model, an .npz holds an input
and Keras's own output for it. The pass that writes such Loops as LSTM and GRU nodes is tested on these files.

    pip install tensorflow-cpu==2.21.0 tf2onnx==1.17.0   # this script's own dependencies, in an environment of its own
    python models/keras_recurrent_export.py
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "tests" / "exported" / "keras_recurrent"
STEPS, FEATURES, UNITS = 12, 7, 16


def variants(layers) -> dict:
    return {
        "lstm_recurrent_dropout": lambda: layers.LSTM(UNITS, recurrent_dropout=0.1),
        "bilstm_recurrent_dropout_sequences": lambda: layers.Bidirectional(layers.LSTM(UNITS, return_sequences=True, recurrent_dropout=0.1)),
        "lstm_hard_sigmoid": lambda: layers.LSTM(UNITS, recurrent_activation="hard_sigmoid"),
        "gru": lambda: layers.GRU(UNITS),
        "gru_recurrent_dropout": lambda: layers.GRU(UNITS, recurrent_dropout=0.1),
        "gru_reset_before": lambda: layers.GRU(UNITS, reset_after=False),
        "simple_rnn_recurrent_dropout": lambda: layers.SimpleRNN(UNITS, recurrent_dropout=0.1),
        # the length fixed at export: the loop's bounds are constants
        "simple_rnn_fixed_length": lambda: layers.SimpleRNN(UNITS, activation="relu"),
    }


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    import tf2onnx

    keras = tf.keras
    OUT.mkdir(parents=True, exist_ok=True)
    for name, layer in variants(keras.layers).items():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((STEPS, FEATURES), name="x")
        model = keras.Model(inputs, keras.layers.Dense(3)(layer()(inputs)))
        signature = (tf.TensorSpec((None, STEPS if "fixed_length" in name else None, FEATURES), tf.float32, name="x"),)
        function = tf.function(lambda x, model=model: model(x, training=False), input_signature=signature)
        tf2onnx.convert.from_function(function, input_signature=signature, opset=15, output_path=str(OUT / f"{name}.onnx"))
        x = np.random.default_rng(0).normal(size=(3, STEPS, FEATURES)).astype(np.float32)
        np.savez(OUT / f"{name}.npz", x=x, keras=model(x, training=False).numpy())
        print(f"wrote {OUT / name}.onnx")


if __name__ == "__main__":
    main()
