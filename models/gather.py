"""Gather the real pretrained models that ship inside Python packages into models/cache/.

    python models/gather.py            # PP-OCRv4 det/rec and the direction classifier (needs rapidocr-onnxruntime)
    python models/gather.py --minilm   # also export all-MiniLM-L6-v2 to ONNX (needs the `bench` extra: torch)

Files written (all under models/cache/):
    ppocr_det.onnx    PP-OCRv4 text detector, input x [N,3,H,W], H and W multiples of 32
    ppocr_rec.onnx    PP-OCRv4 text recognizer, input x [N,3,48,W], CTC over 6625 classes
    ppocr_cls.onnx    PP-OCR mobile v2 text direction classifier, input x [N,3,48,192]
    ppocr_keys.txt    the recognizer's character list (from the model's metadata)
    minilm.onnx       all-MiniLM-L6-v2 token embeddings; inputs input_ids, attention_mask, token_type_ids
    minilm/           its tokenizer files
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import onnx

CACHE = Path(__file__).resolve().parent / "cache"

PPOCR_FILES = {
    "ppocr_det.onnx": "ch_PP-OCRv4_det_infer.onnx",
    "ppocr_rec.onnx": "ch_PP-OCRv4_rec_infer.onnx",
    "ppocr_cls.onnx": "ch_ppocr_mobile_v2.0_cls_infer.onnx",
}


def rapidocr_model_dir() -> Path:
    try:
        import rapidocr_onnxruntime
    except ImportError:
        sys.exit("rapidocr-onnxruntime is not installed: pip install -e '.[dev]'")
    return Path(rapidocr_onnxruntime.__file__).resolve().parent / "models"


def gather_ppocr(cache: Path = CACHE) -> dict[str, Path]:
    source = rapidocr_model_dir()
    cache.mkdir(parents=True, exist_ok=True)
    written = {}
    for target, name in PPOCR_FILES.items():
        destination = cache / target
        if not destination.exists():
            shutil.copyfile(source / name, destination)
        written[target] = destination
    keys = cache / "ppocr_keys.txt"
    if not keys.exists():
        rec = onnx.load(str(cache / "ppocr_rec.onnx"), load_external_data=False)
        characters = {p.key: p.value for p in rec.metadata_props}.get("character")
        if characters is None:
            sys.exit("the recognizer carries no character list in its metadata")
        keys.write_text(characters, encoding="utf-8")
    written["ppocr_keys.txt"] = keys
    return written


def gather_minilm(cache: Path = CACHE) -> Path:
    from models.minilm_export import export_minilm

    return export_minilm(cache / "minilm.onnx", cache / "minilm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minilm", action="store_true", help="also export all-MiniLM-L6-v2 (needs torch)")
    args = parser.parse_args()
    for name, path in gather_ppocr().items():
        print(f"{name}: {path}")
    if args.minilm:
        print(f"minilm.onnx: {gather_minilm()}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
