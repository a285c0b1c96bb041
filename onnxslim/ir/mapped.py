"""Weights that stay on disk, for models too big to hold twice in memory.

A model over the protobuf limit is loaded with its initializers *mapped*:
each keeps a reference to its bytes in a copy of the input's data file in a
temporary work folder (the input itself is only read). Passes read those values
through read-only memory maps (``ir.tensors.to_array``), so the process holds
only the tensors it creates.

onnxruntime opens such a model from a skeleton file written into the same
work folder (:class:`SessionFile`): it maps the same bytes rather than
receiving a serialized copy. Passes that make new weights for such a model
put them in the work folder as they go (:class:`ArrayStore`), and
:func:`spill` moves whatever large tensors are still in memory there, so a
pruned or quantized copy of a big model is never held in memory in full.
The work folders are removed when the process exits.
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np
import onnx
from onnx import external_data_helper, numpy_helper

from onnxslim.errors import ModelLoadError
from onnxslim.ir.external import align_page, set_external_location, write_skeleton
from onnxslim.ir.staging import WORK_PREFIX, remove_stale
from onnxslim.ir.tensors import external_info, is_mapped, nominal_bytes

# A model serialized for onnxruntime in one piece must stay under protobuf's 2 GiB limit.
SERIALIZE_LIMIT = 1_800_000_000
# External tensors smaller than this are read into memory even when the big ones stay on disk.
MAP_MIN_BYTES = 1 << 20

_FOLDERS: list[Path] = []
_FOLDER_FOR: dict[Path, Path] = {}
_STAGED: dict[Path, Path] = {}
_COUNTER = itertools.count()


def _remove_folders() -> None:
    for folder in _FOLDERS:
        shutil.rmtree(folder, ignore_errors=True)


atexit.register(_remove_folders)


def _work_folder() -> Path | None:
    """This process's work folder in the temp folder (TMPDIR), or None where it cannot be created."""
    key = Path(tempfile.gettempdir()).resolve()
    folder = _FOLDER_FOR.get(key)
    if folder is not None and folder.exists():
        return folder
    remove_stale(key, WORK_PREFIX)
    try:
        folder = Path(tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{os.getpid()}-", dir=key)).resolve()
    except OSError:
        return None
    _FOLDERS.append(folder)
    _FOLDER_FOR[key] = folder
    return folder


def _stage(source: Path) -> Path:
    """The work-folder copy of ``source``'s bytes.

    A copy, not a link: a hard link would change the input file's link count,
    which onnx's own loader then refuses as a possible hard-link attack. The
    copy is made by the kernel (copy_file_range / sendfile), not through memory.
    """
    source = source.resolve()
    staged = _STAGED.get(source)
    if staged is not None and staged.exists():
        return staged
    folder = _work_folder()
    if folder is None:
        raise ModelLoadError("cannot create a work folder for the model's weights (no writable temporary folder)")
    target = folder / f"{next(_COUNTER)}-{source.name}"
    try:
        shutil.copyfile(source, target)
    except OSError as exc:
        raise ModelLoadError(f"cannot copy external data {source.name} to the work folder {folder}: {exc.strerror or exc}") from None
    _STAGED[source] = target
    return target


def map_external_weights(model: onnx.ModelProto, model_path: Path, min_bytes: int | None = None) -> None:
    """Point the external initializers of ``model`` (loaded from ``model_path``) at work-folder files.

    Locations were checked to lie inside the model's folder before this is
    called. Initializers under ``min_bytes`` (default ``MAP_MIN_BYTES``) and external tensors outside
    the main graph's initializers (Constant attributes, subgraphs) are read
    into memory.
    """
    base = model_path.parent
    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location, offset, length = external_info(tensor)
        length = length if length is not None else nominal_bytes(tensor)
        if length < (MAP_MIN_BYTES if min_bytes is None else min_bytes):
            continue  # small ones are read below: folding and rules see their values
        set_external_location(tensor, str(_stage(base / location)), offset, length)
    for tensor in external_data_helper._get_all_tensors(model):
        if external_data_helper.uses_external_data(tensor) and not is_mapped(tensor):
            external_data_helper.load_external_data_for_tensor(tensor, str(base))
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]


def has_mapped(model: onnx.ModelProto) -> bool:
    """True when some initializer of ``model`` is kept on disk (see the module docstring)."""
    return any(is_mapped(t) for t in model.graph.initializer)


def _home(model: onnx.ModelProto) -> Path:
    """The work folder of the model's mapped weights (the first one found), or a fresh shared one."""
    for tensor in model.graph.initializer:
        if is_mapped(tensor):
            return Path(external_info(tensor)[0]).parent
    folder = _work_folder()
    if folder is None:
        raise ModelLoadError("cannot create a work folder for onnxruntime's copy of the model (no writable temporary folder)")
    return folder


class SessionFile:
    """What onnxruntime should open for ``model``: its bytes, or a skeleton file beside its mapped weights.

    Small in-memory models are serialized; models with mapped weights, or too
    big for one protobuf, are written as a skeleton whose mapped tensors are
    referenced where they lie and whose other large tensors go to a data file
    of its own. The files are removed by :meth:`close` (or when the object
    is collected); onnxruntime keeps what it mapped.
    """

    def __init__(self, model: onnx.ModelProto):
        self.paths: list[Path] = []
        serialized = None if has_mapped(model) else _serialized(model)
        if serialized is not None:
            self.source: bytes | str = serialized
        else:
            folder = _home(model)
            stem = f"session-{os.getpid()}-{next(_COUNTER)}"
            path = folder / f"{stem}.onnx"
            self.paths = [path, folder / f"{stem}.data"]
            write_skeleton(model, path, f"{stem}.data", link_mapped=True)
            self.source = str(path)
        self._finalizer = weakref.finalize(self, _unlink, list(self.paths))

    def close(self) -> None:
        self._finalizer()


def _serialized(model: onnx.ModelProto) -> bytes | None:
    """The model's bytes, or None when it is too big for one protobuf message (serializing is as fast as sizing it first)."""
    try:
        data = model.SerializeToString()
    except Exception:  # protobuf refuses to serialize a message over 2 GiB
        return None
    return data if len(data) < SERIALIZE_LIMIT else None


def _unlink(paths: list[Path]) -> None:
    for path in paths:
        try:
            path.unlink()
        except OSError:
            pass


def spill(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose large in-memory initializers are mapped from a work-folder file.

    The caller drops its reference to ``model`` to release that memory (a
    cleared protobuf field does not give its memory back; a dropped message does).
    """
    folder = _home(model)
    stem = f"spill-{os.getpid()}-{next(_COUNTER)}"
    path = folder / f"{stem}.onnx"
    write_skeleton(model, path, f"{stem}.data", link_mapped=True)
    result = onnx.load(str(path), load_external_data=False)
    path.unlink()
    for tensor in result.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL and not os.path.isabs(external_info(tensor)[0]):
            location, offset, length = external_info(tensor)
            set_external_location(tensor, str(folder / location), offset, length)
    return result


class ArrayStore:
    """Where a pass puts the new weights of ``model``: inside the proto, or on disk beside its mapped weights.

    For a model with mapped weights, arrays of ``min_bytes`` or more are
    appended to a data file in the work folder and come back as mapped
    tensors, so a pruned or quantized copy of a big model is never held in
    memory in full.
    """

    def __init__(self, model: onnx.ModelProto, min_bytes: int = 1 << 20):
        self.folder = _home(model) if has_mapped(model) else None
        self.min_bytes = min_bytes
        self.path: Path | None = None

    def tensor(self, array, name: str) -> onnx.TensorProto:
        array = np.asarray(array, order="C")  # keeps 0-d scalars 0-d, unlike ascontiguousarray
        if self.folder is None or array.nbytes < self.min_bytes or array.dtype.kind not in "biuf":
            return numpy_helper.from_array(array, name)
        if self.path is None:
            self.path = self.folder / f"arrays-{os.getpid()}-{next(_COUNTER)}.data"
        with open(self.path, "ab") as handle:
            offset = align_page(handle)
            handle.write(memoryview(array).cast("B"))
        tensor = onnx.TensorProto(name=name, data_type=onnx.helper.np_dtype_to_tensor_dtype(array.dtype), dims=array.shape)
        set_external_location(tensor, str(self.path), offset, array.nbytes)
        return tensor
