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


@pytest.mark.parametrize(
    "identifier, named, advice",
    [(b"ORTM", "onnxruntime ORT-format model", "converted from"), (b"TFL3", "TensorFlow Lite model", "convert it to ONNX")],
)
def test_model_files_of_other_formats_are_named_as_such(tmp_path, identifier, named, advice):
    path = tmp_path / "model.onnx"  # the suffix says ONNX; the flatbuffer's identifier says otherwise
    path.write_bytes(b"\x18\x00\x00\x00" + identifier + b"\x00" * 24)
    with pytest.raises(ModelLoadError) as info:
        load_model(path)
    message = str(info.value)
    assert "model.onnx" in message and named in message and advice in message and "\n" not in message


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
    (tmp_path / "model.onnx").write_bytes(b"")  # an exported folder (a Hugging Face repo's onnx/): the files it holds are named
    with pytest.raises(ModelLoadError, match="is a folder, not an ONNX model file: it holds model.onnx; give one of them"):
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


def test_sizes_and_copies_that_leave_weights_alone_agree_with_protobuf():
    from onnx import TensorProto, helper

    from onnxslim.ir.io import copy_leaving_out, model_weight_bytes, serialized_bytes
    from onnxslim.ir.shapes import without_large_values

    rng = np.random.default_rng(0)
    big = numpy_helper.from_array(rng.standard_normal((300, 200)).astype(np.float32), "big")
    big.doc_string = "a weight with a note"
    big.data_location = TensorProto.DEFAULT
    half = numpy_helper.from_array(rng.standard_normal((256, 256)).astype(np.float16), "half")
    packed = helper.make_tensor("packed", TensorProto.INT4, [301, 300], rng.integers(-8, 8, 301 * 300).tolist())
    packed = numpy_helper.from_array(numpy_helper.to_array(packed), "packed")  # raw data, two values a byte
    small = numpy_helper.from_array(np.arange(6, dtype=np.int64), "small")
    nodes = [helper.make_node("MatMul", ["x", "big"], ["y"], name="mm"), helper.make_node("Shape", ["y"], ["s"], name="shape")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 300])],
                              [helper.make_tensor_value_info("s", TensorProto.INT64, [2])], initializer=[big, half, packed, small])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], doc_string="sized")
    model.metadata_props.add(key="k", value="v")

    assert serialized_bytes(model) == model.ByteSize()
    assert model_weight_bytes(model) == sum(len(t.raw_data) for t in model.graph.initializer)
    stripped = without_large_values(model)
    assert [t.name for t in stripped.graph.initializer] == ["big", "half", "packed", "small"]
    assert [list(t.dims) for t in stripped.graph.initializer] == [list(t.dims) for t in model.graph.initializer]
    assert stripped.graph.initializer[3].raw_data == small.raw_data and not stripped.graph.initializer[0].raw_data
    left = copy_leaving_out(model, {"big", "packed"})
    assert [t.name for t in left.graph.initializer] == ["half", "small"]
    assert left.graph.node == model.graph.node and left.metadata_props == model.metadata_props and left.doc_string == "sized"
    assert len(model.graph.initializer) == 4  # the source is left as it was


def test_batches_are_kept_in_memory_between_passes_where_they_fit(tmp_path, monkeypatch):
    import numpy as np

    from onnxslim.data import sources
    from onnxslim.data.sources import for_several_passes, open_data
    from onnxslim.ir.tensors import TensorSpec

    for index in range(5):
        np.savez(tmp_path / f"{index:03d}.npz", x=np.full((2, 4), index, np.float32))
    inputs = [TensorSpec("x", np.dtype(np.float32), ("n", 4))]
    reads = []
    real = sources.NpzFolder._read
    monkeypatch.setattr(sources.NpzFolder, "_read", staticmethod(lambda path: reads.append(path) or real(path)))

    source = for_several_passes(open_data(tmp_path, inputs), 3)
    first = next(iter(source))  # a pass stopped early keeps nothing
    assert first[1]["x"][0, 0] == 0 and len(reads) == 1
    passes = [[float(batch["x"][0, 0]) for _, batch in source] for _ in range(3)]
    assert passes == [[0.0, 1.0, 2.0]] * 3 and len(reads) == 1 + 3  # the whole first pass read the files, the next two none
    assert source.known_length() == 3
    kept = next(iter(source))[1]["x"]
    with pytest.raises(ValueError):
        kept[0, 0] = 7.0  # read-only: no pass can change what the next one reads
    fresh = for_several_passes(open_data(tmp_path, inputs), 2)
    handed = [batch["x"] for _, batch in fresh]
    assert all(array.flags.writeable for array in handed)  # the first pass's arrays keep their flags (a reader's own arrays)

    reads.clear()
    monkeypatch.setattr(sources, "KEPT_BYTES", 100)  # three batches of 32 bytes fit, five do not: nothing is kept
    large = for_several_passes(open_data(tmp_path, inputs), None)
    assert [len(list(large)) for _ in range(2)] == [5, 5] and len(reads) == 10


def test_a_folder_of_npy_files_feeds_a_model_with_one_input(tmp_path, save):
    from click.testing import CliRunner

    from onnxslim.cli import main
    from onnxslim.data.sources import open_data
    from onnxslim.errors import DataError, UsageError
    from onnxslim.ir.tensors import TensorSpec

    folder = tmp_path / "npy"
    folder.mkdir()
    for index in range(3):
        np.save(folder / f"{index:03d}.npy", np.full((1, 4), index, np.float32))
    one = [TensorSpec("x", np.dtype(np.float32), ("n", 4))]
    assert [float(batch["x"][0, 0]) for _, batch in open_data(folder, one)] == [0.0, 1.0, 2.0]
    assert [list(batch) for _, batch in open_data(folder / "001.npy", one)] == [["x"]]  # one file: one batch
    with pytest.raises(UsageError, match=r"\.npy files name no input and this model has 2 \(x, y\); write \.npz batches"):
        open_data(folder, one + [TensorSpec("y", np.dtype(np.float32), ("n", 4))])
    (folder / "003.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match=r"003\.npy: not a \.npy file \(it starts with b'not nu'\)"):
        list(open_data(folder, one))
    (folder / "003.npy").unlink()
    model = conv_bn_relu(channels=8, size=8)
    images = tmp_path / "images"
    images.mkdir()
    for index in range(8):
        np.save(images / f"{index:03d}.npy", np.random.default_rng(index).standard_normal((1, 3, 8, 8)).astype(np.float32))
    result = CliRunner().invoke(main, ["quantize", str(save(model)), "-o", str(tmp_path / "q.onnx"), "--data", str(images), "--latency-runs", "0", "-q"])
    assert result.exit_code == 0 and "wrote" in result.output, result.output


def test_erfc_which_no_opset_defines_is_read_as_one_minus_erf(save):
    """tf2onnx writes TensorFlow's erfc (Keras 3's exact GELU) as an Erfc node: the file stays as it is, the copy runs,
    and every command writes a model onnx's checker and onnxruntime accept."""
    import math

    from onnx import TensorProto, helper

    from tests.conftest import run_model
    from tests.test_hostile import invoke

    node = helper.make_node("Erfc", ["x"], ["y"], name="gelu/erfc")
    graph = helper.make_graph([node], "erfc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    path = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    before = path.read_bytes()
    loaded = load_model(path)
    assert [n.op_type for n in loaded.graph.node] == ["Erf", "Constant", "Sub"]
    x = np.linspace(-2, 2, 6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(run_model(loaded, {"x": x})[0], np.vectorize(math.erfc)(x), atol=1e-6)
    result = invoke("optimize", path, "-o", path.parent / "out.onnx")
    assert result.exit_code == 0, result.output
    onnx.checker.check_model(onnx.load(str(path.parent / "out.onnx")), full_check=True)
    assert path.read_bytes() == before


def test_an_operator_no_opset_defines_is_refused_in_one_line_naming_the_node(save):
    """tf2onnx leaves what it cannot convert as the TensorFlow call it was (Keras 3's ConvNeXt: StatefulPartitionedCall);
    every command said the result or a calibration model could not be loaded, as if onnxslim had written it."""
    from onnx import TensorProto, helper

    from tests.test_hostile import assert_one_line_error, invoke

    node = helper.make_node("StatefulPartitionedCall", ["x"], ["y"], name="block/depthwise_conv/call")
    graph = helper.make_graph([node], "tf", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    path = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    for command in (["optimize"], ["quantize", "--data", "random"], ["prune", "--ratio", "0.3"]):
        result = invoke(command[0], path, "-o", path.parent / "out.onnx", *command[1:])
        assert_one_line_error(result, "'block/depthwise_conv/call' is a StatefulPartitionedCall, an operator no ONNX opset defines")
