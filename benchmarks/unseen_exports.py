"""Every command on exports the rest of the benchmarks do not cover: does it run, and what comes out.

    pip install -e ".[bench]" torch==2.14.1 torchvision==0.29.1 transformers ultralytics timm
    python benchmarks/unseen_exports.py --models lraspp deeplabv3 ssdlite fasterrcnn r3d_18 \
        dynamo:efficientnet_b0 dynamo:regnet_y_400mf dynamo:swin_t legacy:swin_t bert wav2vec2 vit t5 detr dynamo:llama dynamo:gpt2 \
        yolov8n yolo11n \
        timm:mobilevitv2_050 timm:levit_128s timm:efficientformerv2_s0 timm:repvit_m0_9 timm:fastvit_t8 timm:edgenext_xx_small
    python benchmarks/unseen_exports.py --models timm:ghostnetv2_100 timm:mixnet_s timm:beit_base_patch16_224 timm:poolformer_s12 \
        timm:efficientvit_b0 timm:mobileone_s0 timm:xcit_nano_12_p16_224 timm:hgnetv2_b0 timm:coat_lite_tiny timm:starnet_s1
    python benchmarks/unseen_exports.py --models distilbert albert whisper segformer
    python benchmarks/unseen_exports.py --models deberta mobilebert roberta mpnet clip_text clip_vision swinv2 convnextv2 dinov2 \
        beit mobilevit resnet_hf hubert bart dynamo:qwen2 dynamo:gemma dynamo:phi bloom opt
    python benchmarks/unseen_exports.py --models squeezebert convbert funnel electra dynamo:gpt_neox dynamo:falcon dynamo:llama_mha wavlm \
        mobilenet_v2_hf poolformer cvt levit_hf focalnet glpn yolos ast regnet_hf pvt swiftformer siglip convnext_hf \
        dynamo:mobilevitv2 data2vec_vision bit
    python benchmarks/unseen_exports.py --models block:unet dynamo-block:unet block:gru_text block:einsum_attention \
        block:conformer_conv block:sdpa_block block:tcn block:mixer
    python models/keras_export.py   # TensorFlow 2.21 and tf2onnx 1.17, in an environment of their own
    python benchmarks/unseen_exports.py --models keras:mobilenet_v3_small keras:efficientnet_b0 keras:resnet50 \
        keras:densenet121 keras:text_cnn keras:transformer keras:simple_rnn keras:conv_bn

Random weights (BatchNorm statistics from a few training-mode passes, so outputs are not constant) and
``--data random``: these rows prove graph coverage and show latency, never task accuracy. Each model
goes through ``onnxslim quantize``, ``prune --ratio 0.3`` and ``compress`` from the command line, as a
user would run them; a row records the exit code, the wall time, the latency ratios the command
measured (deploy threads, then 1 thread) and its last line (the error, where there is one).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WORK = ROOT / "benchmarks" / "cache" / "unseen"
COMMANDS = {"quantize": ["--data", "random"], "prune": ["--ratio", "0.3"], "compress": ["--data", "random"]}


def settle_batchnorm(model, example) -> None:
    """Give ``model``'s BatchNorm layers the statistics of three training-mode passes over random inputs shaped like
    ``example``, so that random weights give outputs that are not constant; ``model`` is left in eval mode."""
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(2, *example.shape[1:]))
    model.eval()


def _torchvision(name: str):
    import torchvision.models as M

    builders = {
        "lraspp": lambda: M.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None),
        "deeplabv3": lambda: M.segmentation.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, aux_loss=False),
        "ssdlite": lambda: M.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None),
        "fasterrcnn": lambda: M.detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None),
        "r3d_18": lambda: M.video.r3d_18(weights=None),
    }
    if name in builders:
        return builders[name]()
    return getattr(M, name)(weights=None)


def _transformers(name: str):
    import torch
    import transformers as T

    small = {"num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 1024}
    if name == "bert":
        return T.BertModel(T.BertConfig(**small)), {"input_ids": torch.randint(0, 1000, (1, 48)), "attention_mask": torch.ones(1, 48, dtype=torch.long)}
    if name == "wav2vec2":
        return T.Wav2Vec2Model(T.Wav2Vec2Config(**small)), {"input_values": torch.randn(1, 16000)}
    if name == "vit":
        return T.ViTModel(T.ViTConfig(**small)), {"pixel_values": torch.randn(1, 3, 224, 224)}
    if name == "t5":
        return T.T5EncoderModel(T.T5Config(num_layers=4, d_model=256, num_heads=4, d_ff=1024, use_cache=False)), {"input_ids": torch.randint(0, 1000, (1, 48))}
    if name == "llama":  # grouped-query attention (8 query heads, 4 key/value heads), rotary positions, a gated MLP
        config = T.LlamaConfig(vocab_size=4000, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                               num_key_value_heads=4, max_position_embeddings=256, use_cache=False)
        return T.LlamaForCausalLM(config), {"input_ids": torch.randint(0, 4000, (1, 48))}
    if name == "gpt2":  # one packed query/key/value projection, cut into three by a Split
        config = T.GPT2Config(vocab_size=4000, n_embd=256, n_layer=4, n_head=8, n_positions=256, use_cache=False)
        return T.GPT2LMHeadModel(config), {"input_ids": torch.randint(0, 4000, (1, 48))}
    if name == "distilbert":
        config = T.DistilBertConfig(n_layers=4, dim=256, n_heads=4, hidden_dim=1024)
        return T.DistilBertModel(config), {"input_ids": torch.randint(0, 1000, (1, 48)), "attention_mask": torch.ones(1, 48, dtype=torch.long)}
    if name == "albert":  # every layer reuses one set of weights
        config = T.AlbertConfig(embedding_size=128, num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=1024)
        return T.AlbertModel(config), {"input_ids": torch.randint(0, 1000, (1, 48)), "attention_mask": torch.ones(1, 48, dtype=torch.long)}
    if name == "whisper":  # the encoder: two Conv1d over a log-mel spectrogram, then pre-norm transformer layers
        config = T.WhisperConfig(d_model=256, encoder_layers=4, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=1024, num_mel_bins=80, max_source_positions=1500)
        return T.WhisperModel(config).get_encoder(), {"input_features": torch.randn(1, 80, 3000)}
    if name == "segformer":  # efficient self-attention (keys and values from a strided convolution), Mix-FFN with a depthwise convolution
        config = T.SegformerConfig(num_encoder_blocks=4, depths=[1, 1, 1, 1], hidden_sizes=[32, 64, 160, 256], decoder_hidden_size=128, num_labels=8)
        return T.SegformerForSemanticSegmentation(config), {"pixel_values": torch.randn(1, 3, 256, 256)}
    if name == "detr":
        backbone = T.ResNetConfig(layer_type="basic", depths=[1, 1, 1, 1], hidden_sizes=[64, 128, 256, 512])
        config = T.DetrConfig(use_pretrained_backbone=False, use_timm_backbone=False, backbone_config=backbone, encoder_layers=2, decoder_layers=2, num_queries=20)
        return T.DetrForObjectDetection(config), {"pixel_values": torch.randn(1, 3, 320, 320)}
    if name in MORE_TRANSFORMERS or name in FURTHER_TRANSFORMERS:
        return _more_transformers(small)[name]()
    raise KeyError(name)


MORE_TRANSFORMERS = ("deberta", "mobilebert", "roberta", "mpnet", "clip_text", "clip_vision", "swinv2", "convnextv2", "dinov2", "beit", "mobilevit",
                     "resnet_hf", "hubert", "bart", "qwen2", "gemma", "phi", "bloom", "opt")
# torch.export for gpt_neox, falcon, llama_mha and mobilevitv2 ("dynamo:" specs: TorchScript lacks aten::diff and aten::col2im at opset 17)
FURTHER_TRANSFORMERS = ("squeezebert", "convbert", "funnel", "electra", "gpt_neox", "falcon", "llama_mha", "wavlm", "mobilenet_v2_hf", "poolformer",
                        "cvt", "levit_hf", "focalnet", "glpn", "yolos", "ast", "regnet_hf", "pvt", "swiftformer", "siglip", "convnext_hf",
                        "mobilevitv2", "data2vec_vision", "bit")


def _more_transformers(small: dict) -> dict:
    """The families of ``MORE_TRANSFORMERS`` and ``FURTHER_TRANSFORMERS``, small configurations: name -> a function returning (model, example inputs)."""
    import torch
    import transformers as T

    def ids(length: int = 48, vocab: int = 1000):
        return torch.randint(5, vocab, (1, length))

    def text(model):
        return lambda: (model(), {"input_ids": ids(), "attention_mask": torch.ones(1, 48, dtype=torch.long)})

    def image(model, size: int = 224):
        return lambda: (model(), {"pixel_values": torch.randn(1, 3, size, size)})

    def decoder(model):
        return lambda: (model(), {"input_ids": ids(48, 4000)})

    lm = {"vocab_size": 4000, "hidden_size": 256, "num_hidden_layers": 4, "use_cache": False}
    layers = {"num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 1024}
    return {
        "deberta": text(lambda: T.DebertaV2Model(T.DebertaV2Config(**small, vocab_size=1000))),
        "mobilebert": text(lambda: T.MobileBertModel(T.MobileBertConfig(num_hidden_layers=4, vocab_size=1000))),
        "roberta": text(lambda: T.RobertaModel(T.RobertaConfig(**small, vocab_size=1000))),
        "mpnet": text(lambda: T.MPNetModel(T.MPNetConfig(**small, vocab_size=1000))),
        "clip_text": lambda: (T.CLIPTextModel(T.CLIPTextConfig(**layers, vocab_size=1000)), {"input_ids": ids()}),
        "clip_vision": image(lambda: T.CLIPVisionModel(T.CLIPVisionConfig(**layers, patch_size=32))),
        "swinv2": image(lambda: T.Swinv2Model(T.Swinv2Config(embed_dim=48, depths=[2, 2, 2, 2], num_heads=[3, 6, 12, 24], window_size=7))),
        "convnextv2": image(lambda: T.ConvNextV2Model(T.ConvNextV2Config(depths=[2, 2, 4, 2], hidden_sizes=[40, 80, 160, 320]))),
        "dinov2": image(lambda: T.Dinov2Model(T.Dinov2Config(**small, patch_size=14, image_size=224))),
        "beit": image(lambda: T.BeitModel(T.BeitConfig(**small, use_relative_position_bias=True))),
        "mobilevit": image(lambda: T.MobileViTModel(T.MobileViTConfig(image_size=256)), 256),
        "resnet_hf": image(lambda: T.ResNetModel(T.ResNetConfig())),
        "hubert": lambda: (T.HubertModel(T.HubertConfig(**small)), {"input_values": torch.randn(1, 16000)}),
        "bart": lambda: (
            T.BartModel(T.BartConfig(vocab_size=1000, d_model=256, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                                     decoder_attention_heads=4, encoder_ffn_dim=1024, decoder_ffn_dim=1024, use_cache=False)),
            {"input_ids": ids(), "decoder_input_ids": ids(16)},
        ),
        # decoders: grouped-query (Qwen2: 2 key/value heads; Gemma: 1), partial rotary positions (Phi), ALiBi (BLOOM), OPT
        "qwen2": decoder(lambda: T.Qwen2ForCausalLM(T.Qwen2Config(**lm, intermediate_size=688, num_attention_heads=8, num_key_value_heads=2))),
        "gemma": decoder(lambda: T.GemmaForCausalLM(T.GemmaConfig(**lm, intermediate_size=688, num_attention_heads=4, num_key_value_heads=1, head_dim=64))),
        "phi": decoder(lambda: T.PhiForCausalLM(T.PhiConfig(**lm, intermediate_size=1024, num_attention_heads=4, partial_rotary_factor=0.5))),
        "bloom": decoder(lambda: T.BloomForCausalLM(T.BloomConfig(vocab_size=4000, hidden_size=256, n_layer=4, n_head=4, use_cache=False))),
        "opt": decoder(lambda: T.OPTForCausalLM(T.OPTConfig(**lm, ffn_dim=1024, num_attention_heads=4, word_embed_proj_dim=256))),
        # FURTHER_TRANSFORMERS: grouped 1x1 Conv1d attention (SqueezeBERT), span convolutions (ConvBERT), pooled queries and
        # relative attention in Einsums (Funnel), packed per-head projections (GPT-NeoX), one key/value head (Falcon),
        # gated relative positions (WavLM), one-group GroupNorm (PoolFormer), focal modulation (FocalNet), convolutional
        # projections (CvT), additive attention (SwiftFormer), linear attention (MobileViTV2), weight standardization (BiT)
        "squeezebert": text(lambda: T.SqueezeBertModel(T.SqueezeBertConfig(**small, vocab_size=1000, embedding_size=256))),
        "convbert": text(lambda: T.ConvBertModel(T.ConvBertConfig(**small, vocab_size=1000, embedding_size=256))),
        "funnel": text(lambda: T.FunnelModel(T.FunnelConfig(vocab_size=1000, block_sizes=[1, 1, 1], d_model=256, n_head=4, d_head=64, d_inner=1024))),
        "electra": text(lambda: T.ElectraModel(T.ElectraConfig(**small, vocab_size=1000, embedding_size=128))),
        "gpt_neox": decoder(lambda: T.GPTNeoXForCausalLM(T.GPTNeoXConfig(**lm, num_attention_heads=4, intermediate_size=1024))),
        "falcon": decoder(lambda: T.FalconForCausalLM(T.FalconConfig(vocab_size=4000, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, use_cache=False))),
        "llama_mha": decoder(lambda: T.LlamaForCausalLM(T.LlamaConfig(**lm, intermediate_size=688, num_attention_heads=4, num_key_value_heads=4))),
        "wavlm": lambda: (T.WavLMModel(T.WavLMConfig(**small)), {"input_values": torch.randn(1, 16000)}),
        "mobilenet_v2_hf": image(lambda: T.MobileNetV2Model(T.MobileNetV2Config())),
        "poolformer": image(lambda: T.PoolFormerModel(T.PoolFormerConfig())),
        "cvt": image(lambda: T.CvtModel(T.CvtConfig())),
        "levit_hf": image(lambda: T.LevitModel(T.LevitConfig())),
        "focalnet": image(lambda: T.FocalNetModel(T.FocalNetConfig())),
        "glpn": image(lambda: T.GLPNForDepthEstimation(T.GLPNConfig()), 256),
        "yolos": lambda: (T.YolosModel(T.YolosConfig(**small, image_size=[320, 320], num_detection_tokens=20)), {"pixel_values": torch.randn(1, 3, 320, 320)}),
        "ast": lambda: (T.ASTModel(T.ASTConfig(**small)), {"input_values": torch.randn(1, 1024, 128)}),
        "regnet_hf": image(lambda: T.RegNetModel(T.RegNetConfig())),
        "pvt": image(lambda: T.PvtModel(T.PvtConfig())),
        "swiftformer": image(lambda: T.SwiftFormerModel(T.SwiftFormerConfig())),
        "siglip": image(lambda: T.SiglipVisionModel(T.SiglipVisionConfig(**small, patch_size=16))),
        "convnext_hf": image(lambda: T.ConvNextModel(T.ConvNextConfig())),
        "mobilevitv2": image(lambda: T.MobileViTV2Model(T.MobileViTV2Config()), 256),
        "data2vec_vision": image(lambda: T.Data2VecVisionModel(T.Data2VecVisionConfig(**small, use_relative_position_bias=True))),
        "bit": image(lambda: T.BitModel(T.BitConfig())),
    }


def _first_output(inner, names: list[str]):
    """``inner`` taking its keyword inputs in order and returning its first output (exporters want positional inputs)."""
    import torch

    class FirstOutput(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            return self.inner(**dict(zip(names, args)))[0]

    return FirstOutput()


def export(spec: str, path: Path) -> None:
    """Write ``spec`` ("[legacy:|dynamo:]torchvision name", "timm:name", "[dynamo-]block:name" of models/torch_blocks.py, a
    transformers family, or yolov8n / yolo11n) to ``path``; "keras:name" models are written by models/keras_export.py."""
    exporter, _, name = spec.rpartition(":")
    if exporter == "keras":  # TensorFlow and tf2onnx live in an environment of their own
        raise FileNotFoundError(f"{path} is not there: export it first with models/keras_export.py {name}")
    import torch

    torch.manual_seed(0)
    if name in ("bert", "wav2vec2", "vit", "t5", "detr", "llama", "gpt2", "distilbert", "albert", "whisper", "segformer", *MORE_TRANSFORMERS, *FURTHER_TRANSFORMERS):
        model, inputs = _transformers(name)
        if name in FURTHER_TRANSFORMERS and "pixel_values" in inputs:  # BatchNorm statistics for MobileNetV2, LeViT, MobileViTV2, RegNet ...
            settle_batchnorm(_first_output(model, ["pixel_values"]), inputs["pixel_values"])
        module, args, names = _first_output(model.eval(), list(inputs)), tuple(inputs.values()), list(inputs)
    elif name.startswith("yolo"):
        from ultralytics.nn.tasks import DetectionModel

        module = DetectionModel(f"{name}.yaml", verbose=False).eval()
        for layer in module.modules():
            if hasattr(layer, "export"):
                layer.export, layer.format = True, "onnx"
        args, names = (torch.randn(1, 3, 320, 320),), ["images"]
    elif exporter in ("block", "dynamo-block"):
        from models.torch_blocks import export_block

        export_block(name, path, "dynamo" if exporter == "dynamo-block" else "legacy")
        return
    elif exporter == "timm":
        import timm

        module = timm.create_model(name, pretrained=False).eval()
        example = torch.randn(1, 3, 224, 224)
        settle_batchnorm(module, example)
        args, names = (example,), ["input"]
        exporter = "legacy"
    else:
        module = _torchvision(name).eval()
        shape = (1, 3, 8, 64, 64) if name == "r3d_18" else (1, 3, 320, 320) if name in ("ssdlite", "fasterrcnn") else (1, 3, 224, 224)
        example = torch.randn(*shape)
        if name not in ("ssdlite", "fasterrcnn"):
            settle_batchnorm(module, example)
        args = ([example[0]],) if name in ("ssdlite", "fasterrcnn") else (example,)
        names = ["image" if name in ("ssdlite", "fasterrcnn") else "input"]
    torch.backends.mha.set_fastpath_enabled(False)
    with torch.no_grad():
        if exporter == "dynamo":
            torch.onnx.export(module, args, str(path), input_names=names, dynamo=True, external_data=False)
        else:
            torch.onnx.export(module, args, str(path), input_names=names, opset_version=17, dynamo=False)


def run(command: str, model: Path) -> dict:
    out = WORK / f"{model.stem}.{command}.onnx"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "onnxslim", command, str(model), "-o", str(out), *COMMANDS[command]], capture_output=True, text=True, timeout=1800)
    text = done.stdout + done.stderr
    lines = [line for line in text.splitlines() if line.strip()]
    return {
        "command": command,
        "exit": done.returncode,
        "seconds": round(time.perf_counter() - start, 1),
        "ratios": [float(r) for r in re.findall(r"ratio\s+([0-9.]+)", text)],
        "last_line": lines[-1][:240] if lines else "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["lraspp", "deeplabv3", "r3d_18", "dynamo:efficientnet_b0", "dynamo:swin_t", "bert", "wav2vec2"])
    parser.add_argument("--commands", nargs="+", default=list(COMMANDS), choices=list(COMMANDS))
    parser.add_argument("--json", type=Path, default=WORK / "unseen_exports.json")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    rows = []
    print("| model | command | exit | s | latency ratio (deploy / 1 thread) | last line |\n|---|---|---|---|---|---|")
    for spec in args.models:
        path = WORK / (spec.replace(":", "_") + ".onnx")
        try:
            if not path.exists():
                export(spec, path)
        except Exception as exc:  # an exporter's failure is a row of the table, not the end of the run
            rows.append({"model": spec, "command": "export", "exit": None, "last_line": f"{type(exc).__name__}: {str(exc)[:200]}"})
            print(f"| {spec} | export | failed | - | - | {rows[-1]['last_line']} |", flush=True)
            continue
        for command in args.commands:
            row = {"model": spec, **run(command, path)}
            rows.append(row)
            ratios = " / ".join(f"{r:.2f}x" for r in row["ratios"][:2]) or "-"
            print(f"| {spec} | {command} | {row['exit']} | {row['seconds']:.0f} | {ratios} | {row['last_line']} |", flush=True)
            args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
