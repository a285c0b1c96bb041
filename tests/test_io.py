import hashlib
import os

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from models.builders import conv_bn_relu, mlp
from onnxslim.errors import ModelLoadError, ModelWriteError
from onnxslim.ir import load_model, save_model
from onnxslim.runtime.write import write_verified


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_load_from_path_and_proto_returns_independent_copy(save):
    model = mlp()
    path = save(model)
    loaded = load_model(path)
    assert loaded.graph.node[0].op_type == "Gemm"
    copy = load_model(model)
    copy.graph.node[0].name = "changed"
    assert model.graph.node[0].name != "changed"


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", "is empty"),
        (b"this is plain text, not a protobuf", "not"),
        (b"\x08\x07\x12\x05hello", "not"),
    ],
)
def test_bad_model_files_get_one_line_errors(tmp_path, content, expected):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError) as info:
        load_model(path)
    message = str(info.value)
    assert "bad.onnx" in message and expected in message and "\n" not in message


def test_truncated_model_is_refused(save):
    path = save(conv_bn_relu())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="model.onnx"):
        load_model(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(tmp_path / "nope.onnx")
    with pytest.raises(ModelLoadError, match="is a folder"):
        load_model(tmp_path)


def test_save_is_atomic_and_verified(tmp_path):
    model = mlp()
    out = tmp_path / "out.onnx"
    write_verified(model, out)
    assert out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out.onnx"]
    # An invalid model is refused and leaves neither a file nor a staging folder.
    broken = load_model(model)
    broken.graph.node[0].input[1] = "does_not_exist"
    target = tmp_path / "broken.onnx"
    with pytest.raises(ModelWriteError, match="broken.onnx"):
        write_verified(broken, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]


def test_save_never_overwrites_the_input(save):
    path = save(mlp())
    before = digest(path)
    with pytest.raises(ModelWriteError, match="is the input model"):
        write_verified(load_model(path), path, source=path)
    assert digest(path) == before


def test_save_into_missing_or_readonly_folder(tmp_path):
    with pytest.raises(ModelWriteError, match="does not exist"):
        save_model(mlp(), tmp_path / "missing" / "out.onnx")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running with privileges that ignore folder permissions")
        with pytest.raises(ModelWriteError, match="permission denied"):
            save_model(mlp(), locked / "out.onnx")
    finally:
        locked.chmod(0o700)


def test_external_data_round_trip_keeps_the_callers_model(tmp_path):
    model = conv_bn_relu()
    out = tmp_path / "ext.onnx"
    save_model(model, out, external_data=True)
    assert (tmp_path / "ext.onnx.data").exists()
    # the caller's proto still holds its weights
    assert all(t.HasField("raw_data") or t.float_data for t in model.graph.initializer)
    reloaded = load_model(out)
    for a, b in zip(model.graph.initializer, reloaded.graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))


def test_external_data_outside_the_model_folder_is_refused(tmp_path):
    model = conv_bn_relu()
    folder = tmp_path / "m"
    folder.mkdir()
    save_model(model, folder / "model.onnx", external_data=True)
    proto = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../../etc/passwd"
    onnx.save(proto, str(folder / "model.onnx"))
    with pytest.raises(ModelLoadError, match="outside the model's folder"):
        load_model(folder / "model.onnx")


def test_external_data_file_missing(tmp_path):
    save_model(conv_bn_relu(), tmp_path / "model.onnx", external_data=True)
    (tmp_path / "model.onnx.data").unlink()
    with pytest.raises(ModelLoadError, match="missing"):
        load_model(tmp_path / "model.onnx")
