"""Loading and saving ONNX models without losing data.

Loading accepts a path or a ``ModelProto`` and refuses, with one line naming the
file, anything that is not a usable ONNX model. External data is read only from
inside the model's folder.

Saving is atomic: the model (and its external data file, when it has one) is
written into a temporary folder beside the destination, checked there with
``onnx.checker`` (by path, so models over 2 GB are checked too) and, optionally,
by opening an onnxruntime session; only then are the files renamed into place.
A failed save leaves nothing behind and never touches an existing file other
than the destination it replaces.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper

from onnxslim.errors import IN_MEMORY, ModelLoadError, ModelWriteError, first_line
from onnxslim.ir.destinations import check_writable_path
from onnxslim.ir.external import copy_fields, tensor_without_data, without_initializers, write_skeleton
from onnxslim.ir.graph import erfc_as_one_minus_erf, unique_node_names
from onnxslim.ir.mapped import map_external_weights
from onnxslim.ir.scopes import all_nodes
from onnxslim.ir.staging import STAGING_PREFIX, remove_stale
from onnxslim.ir.tensors import nominal_bytes

ModelLike = str | os.PathLike | onnx.ModelProto

# protobuf cannot serialize a message of 2 GiB or more; keep a margin for the graph itself.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def _tensors_of(model: onnx.ModelProto):
    return external_data_helper._get_all_tensors(model)


def _uses_external_data(model: onnx.ModelProto) -> bool:
    return any(external_data_helper.uses_external_data(t) for t in _tensors_of(model))


def model_weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes held by tensors in the model (initializers, Constant values, subgraphs)."""
    total = 0
    for tensor in _tensors_of(model):
        if external_data_helper.uses_external_data(tensor):
            info = external_data_helper.ExternalDataInfo(tensor)
            total += int(info.length) if info.length else nominal_bytes(tensor)
        elif tensor.HasField("raw_data"):
            total += nominal_bytes(tensor)
        else:
            total += tensor.ByteSize()
    return total


def model_file_bytes(model: onnx.ModelProto) -> int:
    """Bytes the model takes once saved: the .onnx file plus any external data."""
    external = sum(
        int(external_data_helper.ExternalDataInfo(t).length or nominal_bytes(t)) for t in _tensors_of(model) if external_data_helper.uses_external_data(t)
    )
    return serialized_bytes(model) + external


SIZED_APART_BYTES = 1 << 16  # initializers whose raw data is at least this large are sized from their dims


def serialized_bytes(model: onnx.ModelProto) -> int:
    """``model.ByteSize()``, without serializing the raw data of its large initializers (protobuf sizes a message by
    serializing it, and reading a bytes field copies it): their fields but the data are sized, the data from their dims."""
    large = [t for t in model.graph.initializer if t.HasField("raw_data") and nominal_bytes(t) >= SIZED_APART_BYTES]
    if not large:
        return model.ByteSize()
    apart = {id(t) for t in large}
    graph = onnx.GraphProto()
    copy_fields(graph, model.graph, skip={"initializer"})
    graph_bytes = graph.ByteSize()
    for tensor in model.graph.initializer:
        if id(tensor) in apart:
            data = nominal_bytes(tensor)  # what a valid tensor's raw data holds
            size = tensor_without_data(tensor).ByteSize() + _field_bytes(data)
        else:
            size = tensor.ByteSize()
        graph_bytes += _field_bytes(size)
    rest = onnx.ModelProto()
    copy_fields(rest, model, skip={"graph"})
    return rest.ByteSize() + _field_bytes(graph_bytes)


def _field_bytes(length: int) -> int:
    """A length-delimited field of ``length`` bytes with a one-byte tag (field numbers under 16), as serialized."""
    return 1 + _varint_bytes(length) + length


def _varint_bytes(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def _check_external_locations(model: onnx.ModelProto, base_dir: Path, model_path: Path) -> None:
    base = base_dir.resolve()
    for tensor in _tensors_of(model):
        if not external_data_helper.uses_external_data(tensor):
            continue
        info = external_data_helper.ExternalDataInfo(tensor)
        location = info.location or ""
        if not location or os.path.isabs(location):
            raise ModelLoadError(
                f"{model_path}: tensor '{tensor.name}' has external data at '{location}', "
                "which is not a path relative to the model's folder"
            )
        target = (base / location).resolve()
        if base != target and base not in target.parents:
            raise ModelLoadError(
                f"{model_path}: tensor '{tensor.name}' points at external data '{location}' "
                "outside the model's folder; refusing to read it"
            )
        if not target.is_file():
            raise ModelLoadError(
                f"{model_path}: external data file '{location}' of tensor '{tensor.name}' is missing"
            )
        size = target.stat().st_size
        end = int(info.offset or 0) + int(info.length or 0)
        if info.length is not None and end > size:
            raise ModelLoadError(
                f"{model_path}: external data file '{location}' is truncated "
                f"(tensor '{tensor.name}' needs bytes up to {end}, file has {size})"
            )


def model_label(model: ModelLike) -> str:
    """How messages name ``model``: its path, or a placeholder for a proto passed in."""
    return IN_MEMORY if isinstance(model, onnx.ModelProto) else str(model)


def copy_leaving_out(model: onnx.ModelProto, initializers: set[str] | frozenset[str]) -> onnx.ModelProto:
    """A copy of ``model`` without the main graph's initializers named in ``initializers``.

    For a pass that replaces those weights: copying a model's float weights only to drop them costs more than the pass.
    """
    copy = without_initializers(model)
    if model.HasField("graph"):
        copy.graph.initializer.extend(t for t in model.graph.initializer if t.name not in initializers)
    return copy


def load_model(model: ModelLike, *, load_weights: bool = True, map_weights: bool | None = None, unique_names: bool = True) -> onnx.ModelProto:
    """Load a model from a path, or return a copy of a ``ModelProto``.

    The returned proto is the caller's to change: a proto passed in is copied,
    so the caller's object is never modified by later passes. Nodes that share
    a name with an earlier node are renamed in the copy (see ``unique_node_names``). External weights
    are read into memory, or, when they exceed what one protobuf holds (or
    ``map_weights`` is true), left on disk and mapped (see ``ir.mapped``).
    """
    if isinstance(model, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        if unique_names:
            unique_node_names(copy.graph)
        erfc_as_one_minus_erf(copy.graph)
        _refuse_undefined_operators(copy, IN_MEMORY)
        return copy
    path = Path(model)
    if not path.exists():
        raise ModelLoadError(f"model file not found: {path}")
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.onnx"))[:4]
        hint = f": it holds {', '.join(inside)}; give one of them" if inside else ""
        raise ModelLoadError(f"{path} is a folder, not an ONNX model file{hint}")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path} is empty, not an ONNX model")
    foreign = _foreign_format(path)
    if foreign:
        raise ModelLoadError(f"{path} is {foreign}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"{path} is not a readable ONNX model (truncated or corrupted: {exc})") from None
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc.strerror or exc}") from None
    _check_plausible(proto, path)
    if unique_names:
        unique_node_names(proto.graph)  # onnxruntime refuses duplicates; the copy, never the file, is renamed
    erfc_as_one_minus_erf(proto.graph)  # an operator an exporter writes that no opset defines, in the copy too
    _refuse_undefined_operators(proto, path)
    if _uses_external_data(proto):
        _check_external_locations(proto, path.parent, path)
        if load_weights:
            if map_weights or (map_weights is None and model_weight_bytes(proto) > EXTERNAL_DATA_THRESHOLD):
                map_external_weights(proto, path, 0 if map_weights else None)
            else:
                external_data_helper.load_external_data_for_model(proto, str(path.parent))
    return proto


# Flatbuffer files carry a four-byte identifier after the root offset; these are the model formats met beside ONNX files.
_FLATBUFFER_FORMATS = {
    b"ORTM": "an onnxruntime ORT-format model, not an ONNX model: give the .onnx file it was converted from",
    b"TFL3": "a TensorFlow Lite model, not an ONNX model: convert it to ONNX first (tf2onnx reads TFLite files)",
}


def _foreign_format(path: Path) -> str | None:
    """What ``path`` is, and what to give instead, when it is a model file of a format often mistaken for ONNX; else None."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError:
        return None  # onnx.load names the reading error
    return _FLATBUFFER_FORMATS.get(head[4:8])


def _check_plausible(proto: onnx.ModelProto, path: Path) -> None:
    # Protobuf happily parses many non-ONNX byte strings into a mostly empty message.
    if proto.ir_version <= 0 or not proto.HasField("graph"):
        raise ModelLoadError(f"{path} is not an ONNX model (no IR version or graph in the file)")
    if not proto.graph.output:
        raise ModelLoadError(f"{path} is not a usable ONNX model: its graph has no outputs")
    if not any(op.domain in ("", "ai.onnx") for op in proto.opset_import) and proto.graph.node:
        raise ModelLoadError(f"{path} does not declare the default ONNX opset")


def _refuse_undefined_operators(proto: onnx.ModelProto, path: Path | str) -> None:
    """A node of the default domain whose operator no ONNX opset defines (and no function of the model): the exporter
    left it unconverted (tf2onnx's StatefulPartitionedCall), and no runtime can run the model."""
    functions = {(f.domain, f.name) for f in proto.functions}
    for node in all_nodes(proto.graph):
        if node.domain in ("", "ai.onnx") and (node.domain, node.op_type) not in functions and not onnx.defs.has(node.op_type):
            raise ModelLoadError(
                f"{path}: node {node.name or node.output[0]!r} is a {node.op_type}, an operator no ONNX opset defines "
                "(the exporter left it unconverted); no runtime can run this model: export it again")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def save_model(
    model: onnx.ModelProto,
    path: str | os.PathLike,
    *,
    external_data: bool | None = None,
    verify: Callable[[Path], None] | None = None,
    protect: tuple[str | os.PathLike, ...] = (),
) -> Path:
    """Write ``model`` to ``path`` atomically and return the path.

    ``external_data``: ``None`` writes the weights to ``<name>.data`` beside the
    model when they would not fit in one protobuf (about 2 GB), ``True`` always,
    ``False`` never. ``verify`` is called with the temporary model path after
    ``onnx.checker`` passed (onnxslim passes an onnxruntime session check here);
    it raises to refuse the file. ``protect`` lists files that must never be
    overwritten, typically the input model.
    """
    dest = Path(path)
    for guarded in protect:
        guarded_path = Path(guarded)
        if dest.resolve() == guarded_path.resolve() or _same_file(dest, guarded_path):
            raise ModelWriteError(f"output {dest} is the input model; choose another output path")
    folder = dest.parent if str(dest.parent) else Path(".")
    check_writable_path(dest, "output", ModelWriteError)

    if external_data is None:
        external_data = model_weight_bytes(model) > EXTERNAL_DATA_THRESHOLD or _uses_external_data(model)
    data_name = dest.name + ".data"
    for guarded in protect:
        if _same_file(folder / data_name, Path(guarded)):
            raise ModelWriteError(f"output data file {folder / data_name} would overwrite an input file")

    remove_stale(folder, STAGING_PREFIX)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=folder))
    except OSError as exc:
        raise ModelWriteError(f"cannot write to output folder {folder}: {exc.strerror or exc}") from None
    try:
        staged_model = staging / dest.name
        _write_checked(model, staged_model, data_name, external_data, dest)
        if verify is not None:
            verify(staged_model)
        staged_data = staging / data_name
        if staged_data.exists():
            os.replace(staged_data, folder / data_name)
        os.replace(staged_model, dest)
    except OSError as exc:
        raise ModelWriteError(f"cannot write {dest}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def _write_checked(model: onnx.ModelProto, staged_model: Path, data_name: str, external_data: bool, dest: Path) -> None:
    """Write ``model`` (and its data file) at ``staged_model`` and check it there with onnx.checker, by path."""
    if external_data:
        _write_with_external_data(model, staged_model, data_name)
    else:
        try:
            data = model.SerializeToString()
        except ValueError as exc:
            raise ModelWriteError(f"{dest}: model too large for one file ({exc}); use external data") from None
        with open(staged_model, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    try:
        onnx.checker.check_model(str(staged_model))
    except onnx.checker.ValidationError as exc:
        raise ModelWriteError(f"{dest}: the result does not pass onnx.checker ({first_line(exc)}); nothing written") from None


def _write_with_external_data(model: onnx.ModelProto, staged_model: Path, data_name: str) -> None:
    write_skeleton(model, staged_model, data_name)
    with open(staged_model, "rb+") as handle:
        os.fsync(handle.fileno())


