"""Export the speaker encoder shipped by the ``resemblyzer`` package (PyTorch weights) to ONNX with torch.

Resemblyzer's voice encoder (the GE2E d-vector network) reads 40-band mel power spectrograms of 16 kHz
audio (25 ms windows every 10 ms, not logarithmic) and gives a 256-value speaker embedding: three stacked
LSTM layers of 256 units, the last layer's final hidden state through a linear layer and a ReLU, then
scaled to unit length. Two clips of one voice give embeddings whose cosine is higher than two voices'.
The network is written out here in torch from that layout, the package's ``pretrained.pt`` weights are
loaded from its wheel, downloaded, not installed, and the export is checked against torch.
:func:`mel_frames` computes the spectrogram the encoder reads, as the package does before it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.torch_export import export_checked
from models.wheels import take_from_wheel

WHEEL = "resemblyzer==0.1.4"
SAMPLE_RATE = 16000
WINDOW, HOP, MELS = 400, 160, 40  # 25 ms windows every 10 ms, 40 mel bands
PARTIAL_FRAMES = 160  # the encoder's partial utterance: 1.6 s
HIDDEN, LAYERS = 256, 3
TARGET_DBFS = -30.0  # the package scales quieter audio up to this level before the spectrogram


def _network():
    import torch
    from torch import nn

    class VoiceEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(MELS, HIDDEN, LAYERS, batch_first=True)
            self.linear = nn.Linear(HIDDEN, HIDDEN)

        def forward(self, mels):
            _, (hidden, _) = self.lstm(mels)
            embedding = torch.relu(self.linear(hidden[-1]))
            return embedding / torch.norm(embedding, dim=1, keepdim=True)

    return VoiceEncoder()


def export_voice_encoder(folder: Path) -> Path:
    """``voice_encoder.onnx`` in ``folder``: input ``mels`` (batch, frames, 40), output ``embedding`` (batch, 256)."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "voice_encoder.onnx"
    if target.exists():
        return target
    weights = folder / "resemblyzer_pretrained.pt"
    if not weights.exists():
        take_from_wheel(WHEEL, {weights: "resemblyzer/pretrained.pt"})
    network = _network()
    state = torch.load(weights, map_location="cpu", weights_only=True)["model_state"]
    network.load_state_dict({k: v for k, v in state.items() if k.startswith(("lstm.", "linear."))})  # the training loss's two scalars are not the network's
    network.eval()
    rng = np.random.default_rng(0)
    mels = torch.from_numpy(mel_frames(_tone(rng, seconds=1.6))[None])
    check = torch.from_numpy(np.stack([mel_frames(_tone(rng, seconds=1.2)) for _ in range(2)]))  # another batch size and length
    return export_checked(network, mels, target, input_name="mels", output_name="embedding",
                          dynamic_axes={"mels": {0: "batch", 1: "frames"}, "embedding": {0: "batch"}}, check=check)


def _tone(rng: np.random.Generator, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (sum(np.sin(2 * np.pi * k * rng.uniform(100, 200) * t) / k for k in range(1, 8)) + 0.01 * rng.normal(size=t.size)).astype(np.float32)


def _hz_to_mel(hz):
    """The Slaney mel scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, np.float64)
    linear = hz * 3.0 / 200.0
    return np.where(hz >= 1000.0, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), linear)


def _mel_to_hz(mel):
    mel = np.asarray(mel, np.float64)
    return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0)), mel * 200.0 / 3.0)


def mel_filters() -> np.ndarray:
    """(40, 201) triangular filters over the FFT bins, centres evenly spaced on the Slaney mel scale from 0 Hz to 8 kHz, each
    scaled to unit area (the package's spectrogram uses these)."""
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(SAMPLE_RATE / 2), MELS + 2))
    bins = np.linspace(0, SAMPLE_RATE / 2, WINDOW // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising, falling = (bins - lower) / (centre - lower), (upper - bins) / (upper - centre)
    return (np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (upper - lower))).astype(np.float32)


def mel_frames(audio: np.ndarray) -> np.ndarray:
    """(frames, 40) mel power spectrogram of 16 kHz ``audio``, as the encoder reads it: scaled up to -30 dBFS when quieter,
    Hann windows of 400 samples every 160 centred on each hop (the signal zero-padded by half a window at both ends)."""
    audio = np.asarray(audio, np.float64)
    rms = np.sqrt(np.mean(audio**2))
    gain = 10 ** (TARGET_DBFS / 20) / max(rms, 1e-10)
    audio = audio * max(gain, 1.0)
    padded = np.pad(audio, WINDOW // 2)
    count = 1 + (padded.size - WINDOW) // HOP
    frames = np.lib.stride_tricks.sliding_window_view(padded, WINDOW)[::HOP][:count]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WINDOW) / WINDOW)  # periodic Hann
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2
    return (power @ mel_filters().T).astype(np.float32)
