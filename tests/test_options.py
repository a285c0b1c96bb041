"""One set of option names and defaults: the CLI's options are built from the config declarations."""

import dataclasses

import pytest

from onnxslim.cli import main
from onnxslim.errors import UsageError
from onnxslim.options import option_name
from onnxslim.prune import PruneConfig
from onnxslim.quant import QuantConfig


def declared(config_type):
    return {f.name: f for f in dataclasses.fields(config_type) if "setting" in f.metadata}


@pytest.mark.parametrize(("command", "config_type"), [("quantize", QuantConfig), ("prune", PruneConfig)])
def test_every_declared_setting_is_an_option_with_the_same_default(command, config_type):
    params = {p.name: p for p in main.commands[command].params}
    for name, field in declared(config_type).items():
        assert name in params, f"{command} has no option for {config_type.__name__}.{name}"
        param = params[name]
        flags = option_name(name, field.metadata["setting"]).split("/")  # --flag/--no-flag pairs
        assert flags[0] in param.opts and all(flag in param.opts + param.secondary_opts for flag in flags)
        default = param.default if not (param.default is None and field.default == ()) else ()
        assert default == field.default, name


@pytest.mark.parametrize(
    ("config_type", "values", "message"),
    [
        (QuantConfig, {"target": "npu"}, "--target must be one of cpu, cuda, tensorrt"),
        (QuantConfig, {"percentile": 50.0}, "--percentile 50.0 must be in (50, 100]"),
        (QuantConfig, {"max_calibration_samples": 0}, "--max-samples 0 must be in [1, inf]"),
        (PruneConfig, {"ratio": 1.0}, "--ratio 1.0 must be in [0, 1)"),
        (PruneConfig, {"recovery": "retrain"}, "--recovery must be one of auto, none, bias, refit"),
        (PruneConfig, {"target_macs": 0.0}, "--target-macs 0.0 must be in (0, 1]"),
    ],
)
def test_api_values_are_checked_with_the_cli_names(config_type, values, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        config_type(**values)


def test_prune_recovery_defaults_to_refit_with_data_in_the_api_as_in_the_cli():
    assert PruneConfig().recovery == "auto"
    assert PruneConfig().with_data(True).recovery == "refit"
    assert PruneConfig().with_data(False).recovery == "none"
    assert PruneConfig(recovery="bias").with_data(True).recovery == "bias"
    assert PruneConfig().with_data(True).importance == "second-order"
    assert PruneConfig(recovery="bias").with_data(True).importance == "activation"
    assert PruneConfig().with_data(False).importance == "l2"
    assert PruneConfig(importance="l1").with_data(True).importance == "l1"


def test_compress_is_held_by_default_to_what_quantize_alone_is():
    from onnxslim import CompressConfig

    assert CompressConfig().max_loss == pytest.approx(1.0 - QuantConfig().accuracy_budget)
    assert CompressConfig().accuracy_metric == QuantConfig().accuracy_metric


DATA_OPTIONS = {"--data", "--data-loader", "--image-size", "--image-layout", "--image-scale", "--image-mean", "--image-std", "--image-channels", "--input-shapes"}


def options_of(command: str) -> set[str]:
    return {opt for p in main.commands[command].params for opt in getattr(p, "opts", [])}


def test_the_same_option_names_on_every_command():
    for command in ("quantize", "prune", "validate"):
        assert DATA_OPTIONS <= options_of(command), command
        assert {"--latency-runs", "--threads", "--max-samples"} & options_of(command) >= {"--latency-runs", "--threads"}, command
    for command in main.commands:
        assert {"-q", "--report"} <= options_of(command), command
    assert "--max-samples" in options_of("quantize") and "--max-samples" in options_of("prune")


def _images(folder, count: int, size: int, *, seed: int = 0, suffix: str = ".png") -> None:
    """``count`` random RGB images of ``size`` x ``size`` pixels written to ``folder`` (made if missing)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{index}{suffix}")


def _channels_last(element_type):
    """conv_bn_relu reading its image channels last ([1, 32, 32, 3]) as ``element_type``, as a tf2onnx export does."""
    from onnx import TensorProto, helper

    from models.builders import conv_bn_relu

    model = conv_bn_relu()
    model.graph.input[0].name = "pixels"
    tensor_type = model.graph.input[0].type.tensor_type
    tensor_type.elem_type = element_type
    tensor_type.shape.dim[1].dim_value, tensor_type.shape.dim[3].dim_value = 32, 3
    cast = [helper.make_node("Cast", ["pixels"], ["scaled"], to=TensorProto.FLOAT)] if element_type != TensorProto.FLOAT else []
    transpose = helper.make_node("Transpose", [cast[0].output[0] if cast else "pixels"], ["input"], perm=[0, 3, 1, 2])
    for index, node in enumerate([*cast, transpose]):
        model.graph.node.insert(index, node)
    return model


def test_validate_reads_images_like_quantize(tmp_path):
    import onnx
    from click.testing import CliRunner

    from models.builders import conv_bn_relu

    path = tmp_path / "m.onnx"
    onnx.save(conv_bn_relu(), str(path))
    images = tmp_path / "images"
    _images(images, 3, 40)
    result = CliRunner().invoke(main, ["validate", str(path), str(path), "--data", str(images), "--image-mean", "0.5,0.5,0.5", "--image-std", "0.25,0.25,0.25",
                                       "--latency-runs", "0", "--min-cosine", "0.999", "-q"])
    assert result.exit_code == 0, result.output
    assert "PASSED" in result.output


def test_image_folders_are_laid_out_as_the_model_reads_them(tmp_path):
    """A channels-last export (tf2onnx: [N, 224, 224, 3]) gets channels-last images without being told; asked for
    channels first, it is refused naming the input and its shape."""
    import onnx
    from click.testing import CliRunner
    from onnx import TensorProto

    from onnxslim.data.resolve import image_layout_of

    assert image_layout_of(("N", 32, 32, 3)) == "nhwc" and image_layout_of(("N", 3, 32, 32)) == "nchw" and image_layout_of(("N", 3, 32, 3)) == "nchw"
    path = tmp_path / "nhwc.onnx"
    onnx.save(_channels_last(TensorProto.FLOAT), str(path))
    images = tmp_path / "images"
    _images(images, 3, 40)
    common = ["validate", str(path), str(path), "--data", str(images), "--latency-runs", "0", "-q"]
    result = CliRunner().invoke(main, common)
    assert result.exit_code == 0 and "PASSED" in result.output, result.output
    result = CliRunner().invoke(main, [*common, "--image-layout", "nchw"])
    assert result.exit_code != 0 and "input 'pixels'" in result.output and "Traceback" not in result.output, result.output


def test_a_model_taking_uint8_pixels_gets_them_as_decoded_from_images_and_random_data(tmp_path):
    """An export that takes images as decoded (uint8, channels last) and scales them itself: image folders give the
    pixels unscaled, and random data draws them over 0-255 (not the 0 or 1 of ids and lengths)."""
    import numpy as np
    import onnx
    from click.testing import CliRunner
    from onnx import TensorProto
    from PIL import Image

    from onnxslim.data.sources import ImageFolder, RandomInputs
    from onnxslim.ir.tensors import graph_inputs

    model = _channels_last(TensorProto.UINT8)
    path = tmp_path / "pixels.onnx"
    onnx.save(model, str(path))
    images = tmp_path / "images"
    _images(images, 6, 32)
    result = CliRunner().invoke(main, ["quantize", str(path), "-o", str(tmp_path / "q.onnx"), "--data", str(images), "--image-mean", "0.5,0.5,0.5",
                                       "--latency-runs", "0", "--accuracy-budget", "none"])
    assert result.exit_code == 0, result.output
    assert "not applied" in " ".join(result.output.split())
    (_, batch), *_ = ImageFolder(images, "pixels", size=(32, 32), layout="nhwc", dtype=np.uint8)
    assert batch["pixels"].dtype == np.uint8 and np.array_equal(batch["pixels"][0], np.asarray(Image.open(images / "0.png")))
    (_, drawn), *_ = RandomInputs(graph_inputs(model), batches=1)
    assert drawn["pixels"].dtype == np.uint8 and drawn["pixels"].max() > 200


def test_images_in_a_folder_per_class_are_read_as_an_imagenet_style_set_is_laid_out(tmp_path):
    import onnx
    from click.testing import CliRunner

    from models.builders import conv_bn_relu
    from onnxslim.data.sources import image_files

    path = tmp_path / "m.onnx"
    onnx.save(conv_bn_relu(), str(path))
    images = tmp_path / "calib"
    for seed, label in enumerate(("cat", "dog"), start=1):
        _images(images / label, 2, 40, seed=seed, suffix=".jpg")
    assert [p.relative_to(images).as_posix() for p in image_files(images)] == ["cat/0.jpg", "cat/1.jpg", "dog/0.jpg", "dog/1.jpg"]
    result = CliRunner().invoke(main, ["validate", str(path), str(path), "--data", str(images), "--latency-runs", "0", "-q", "--report", str(tmp_path / "r.json")])
    assert result.exit_code == 0 and "PASSED" in result.output, result.output
    assert "4 image(s)" in (tmp_path / "r.json").read_text()
