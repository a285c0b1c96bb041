"""Writing a model with its weights in a separate data file.

The skeleton of a model is its graph with every large initializer replaced by
a reference (location, offset, length) into a data file. Both the saver
(models over the protobuf limit) and the weights kept on disk (``ir.mapped``)
write one; neither holds a second copy of the weights in memory.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from onnx import external_data_helper, numpy_helper

from onnxslim.errors import ModelWriteError
from onnxslim.ir.tensors import external_info, is_mapped

# Tensors smaller than this stay inside the .onnx file when external data is written.
EXTERNAL_TENSOR_MIN_BYTES = 1024


def write_skeleton(model: onnx.ModelProto, model_path: Path, data_name: str, *, link_mapped: bool = False) -> None:
    """Write big initializers to ``data_name`` beside ``model_path`` and a skeleton model that points at them.

    The caller's proto is not touched: protobuf's arena does not give back the
    memory of a cleared field, so clearing and restoring the weights would hold
    two copies of them. Instead a skeleton graph is assembled field by field,
    its large initializers replaced by references into the data file. Mapped
    weights (kept on disk, see ``ir.mapped``) are copied file to file; with
    ``link_mapped`` those already in ``model_path``'s folder are referenced
    where they are instead.
    """
    skeleton = without_initializers(model)
    graph = model.graph
    folder = model_path.parent.resolve()
    with open(model_path.parent / data_name, "wb") as data_file:
        for tensor in graph.initializer:
            if is_mapped(tensor):
                location, offset, length = external_info(tensor)
                if link_mapped and Path(location).parent == folder:
                    _add_stub(skeleton, tensor, Path(location).name, offset, length)
                    continue
                start = align_page(data_file)
                _copy_range(location, offset, length, data_file)
            elif tensor.HasField("raw_data") and len(tensor.raw_data) >= EXTERNAL_TENSOR_MIN_BYTES:
                start = align_page(data_file)
                data_file.write(tensor.raw_data)
            elif external_data_helper.uses_external_data(tensor):
                raise ModelWriteError(f"{model_path.name}: weights of '{tensor.name}' were never loaded; load the model with its weights")
            elif tensor.ByteSize() >= EXTERNAL_TENSOR_MIN_BYTES and tensor.data_type != onnx.TensorProto.STRING:
                start = align_page(data_file)
                data_file.write(numpy_helper.to_array(tensor).tobytes())
            else:
                skeleton.graph.initializer.append(tensor)
                continue
            _add_stub(skeleton, tensor, data_name, start, data_file.tell() - start)
        data_file.flush()
        os.fsync(data_file.fileno())
    with open(model_path, "wb") as handle:
        handle.write(skeleton.SerializeToString())
        handle.flush()


def align_page(data_file) -> int:
    """Pad to a page boundary: aligned offsets let onnxruntime map the weights instead of copying them."""
    data_file.write(b"\0" * (-data_file.tell() % 4096))
    return data_file.tell()


def _copy_range(location: str, offset: int, length: int | None, data_file, chunk: int = 64 << 20) -> None:
    with open(location, "rb") as source:
        source.seek(offset)
        remaining = length
        while remaining is None or remaining > 0:
            block = source.read(chunk if remaining is None else min(chunk, remaining))
            if not block:
                break
            data_file.write(block)
            if remaining is not None:
                remaining -= len(block)


def _add_stub(skeleton: onnx.ModelProto, tensor: onnx.TensorProto, location: str, offset: int, length: int | None) -> None:
    stub = skeleton.graph.initializer.add()
    stub.name = tensor.name
    stub.data_type = tensor.data_type
    stub.dims.extend(tensor.dims)
    stub.doc_string = tensor.doc_string
    set_external_location(stub, location, offset, length)


def set_external_location(tensor: onnx.TensorProto, location: str, offset: int, length: int | None) -> None:
    """Make ``tensor`` refer to ``length`` bytes at ``offset`` of the file ``location`` (its own bytes are not touched)."""
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entries = [("location", location), ("offset", str(offset))] + ([("length", str(length))] if length is not None else [])
    for key, value in entries:
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def without_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with no initializers in its main graph, assembled field by field so the weights are never copied."""
    copy = onnx.ModelProto()
    copy_fields(copy, model, skip={"graph"})
    copy_fields(copy.graph, model.graph, skip={"initializer"})
    return copy


def copy_fields(target, source, skip: set[str] | frozenset[str] = frozenset()) -> None:
    """Copy every field of the protobuf message ``source`` into the empty ``target`` but those named in ``skip``."""
    for descriptor, value in source.ListFields():
        if descriptor.name not in skip:
            _copy_field(target, descriptor, value)


def tensor_without_data(tensor: onnx.TensorProto) -> onnx.TensorProto:
    """Every field of ``tensor`` but its raw data, read without touching that (reading a bytes field copies it)."""
    stub = onnx.TensorProto()
    for descriptor in tensor.DESCRIPTOR.fields:
        if descriptor.name == "raw_data" or not (_repeated(descriptor) or tensor.HasField(descriptor.name)):
            continue
        _copy_field(stub, descriptor, getattr(tensor, descriptor.name))
    return stub


def _copy_field(target, descriptor, value) -> None:
    """Set field ``descriptor`` of ``target`` to ``value`` (repeated, message or scalar)."""
    if _repeated(descriptor):
        getattr(target, descriptor.name).extend(value)
    elif descriptor.type == descriptor.TYPE_MESSAGE:
        getattr(target, descriptor.name).CopyFrom(value)
    else:
        setattr(target, descriptor.name, value)


def _repeated(descriptor) -> bool:
    return descriptor.is_repeated if hasattr(descriptor, "is_repeated") else descriptor.label == descriptor.LABEL_REPEATED  # protobuf 6: is_repeated
