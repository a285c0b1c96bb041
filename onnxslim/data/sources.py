"""Where batches of model inputs come from.

The project's one data format is a folder of ``.npz`` files, one batch each,
whose keys are the model's input names (see ``calibration/README.md``). A
:class:`DataSource` yields ``(label, {input name: array})`` pairs, where the
label names the file a batch came from so that errors can point at it.
"""

from __future__ import annotations

import itertools
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Protocol

import numpy as np

from onnxslim.data.checks import check_batch
from onnxslim.errors import DataError, OnnxSlimError, UsageError, first_line
from onnxslim.ir.tensors import TensorSpec
from onnxslim.memory import available_bytes

Batch = dict[str, np.ndarray]


class DataSource(Protocol):
    """Yields labelled batches; ``len()`` is the number of batches when known."""

    description: str

    def __iter__(self) -> Iterator[tuple[str, Batch]]: ...

    def __len__(self) -> int: ...


class NpzFolder:
    """A folder of ``.npz`` files, read in name order, one batch each."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not self.folder.exists():
            raise DataError(f"data folder not found: {self.folder}")
        if self.folder.is_file():
            if self.folder.suffix != ".npz":
                raise DataError(f"{self.folder}: data must be a folder of .npz files (or one .npz file, or .npy for a model with one input)")
            self.files = [self.folder]
        else:
            self.files = sorted(self.folder.glob("*.npz"))
        if not self.files:
            raise DataError(f"data folder {self.folder} holds no .npz files (nor .npy files)")
        self.description = f"{len(self.files)} batch(es) from {self.folder}"

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[tuple[str, Batch]]:
        for path in self.files:
            yield str(path), self._read(path)

    @staticmethod
    def _read(path: Path) -> Batch:
        head = _head(path)
        if not head.startswith(b"PK"):
            what = "pickled Python objects, which onnxslim never loads" if head[:1] == b"\x80" else f"no zip archive (it starts with {head!r})"
            raise DataError(f"{path}: not a .npz file: {what}; write batches with numpy.savez")
        try:
            with np.load(path, allow_pickle=False) as archive:
                return {key: archive[key] for key in archive.files}
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise DataError(f"{path}: not a readable .npz file ({first_line(exc, 120)})") from None


def _head(path: Path) -> bytes:
    """The first bytes of a batch file, enough to tell its format (a zip archive, numpy's own, a pickle) before loading it."""
    try:
        with open(path, "rb") as handle:
            return handle.read(6)
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc.strerror or exc})") from None


class NpyFolder:
    """A folder of ``.npy`` files, read in name order, one batch each of a model's only input (``input_name``): the format
    numpy.save writes, which names no input, so it feeds one-input models only."""

    def __init__(self, folder: str | Path, input_name: str):
        self.folder = Path(folder)
        self.files = sorted(self.folder.glob("*.npy")) if self.folder.is_dir() else [self.folder]
        if not self.files:
            raise DataError(f"data folder {self.folder} holds no .npy files")
        self.input_name = input_name
        self.description = f"{len(self.files)} batch(es) of '{input_name}' from {self.folder}"

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[tuple[str, Batch]]:
        for path in self.files:
            head = _head(path)
            if head != b"\x93NUMPY":
                raise DataError(f"{path}: not a .npy file (it starts with {head!r}); write batches with numpy.save")
            try:
                array = np.load(path, allow_pickle=False)
            except (OSError, ValueError, EOFError) as exc:
                raise DataError(f"{path}: not a readable .npy file ({first_line(exc, 120)}); write batches with numpy.save") from None
            yield str(path), {self.input_name: array}


def parse_input_shapes(specs: str | list[str] | tuple[str, ...] | None) -> dict[str, tuple[int, ...]]:
    """Parse ``name:1,3,224,224`` entries (several given as a list or separated by spaces)."""
    if not specs:
        return {}
    items = specs.split() if isinstance(specs, str) else [part for spec in specs for part in spec.split()]
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items:
        name, sep, dims = item.rpartition(":")
        if not sep or not name:
            raise UsageError(f"--input-shapes entry '{item}' is not NAME:D1,D2,...")
        try:
            shape = tuple(int(d) for d in dims.split(",") if d.strip())
        except ValueError:
            raise UsageError(f"--input-shapes entry '{item}': dimensions must be integers") from None
        if any(d < 0 for d in shape):
            raise UsageError(f"--input-shapes entry '{item}': dimensions must not be negative")
        shapes[name] = shape
    return shapes


def batch_axis_only(spec: TensorSpec) -> bool:
    """Whether the first axis is the only dynamic one of an input of rank 2 or more: a batch, which random data makes 1
    (as a data loader would, one sample at a time); any other dynamic size (frames, tokens, pixels) has no such default."""
    return spec.shape is not None and len(spec.shape) >= 2 and not isinstance(spec.shape[0], int) and all(isinstance(d, int) for d in spec.shape[1:])


def batch_of_one_note(inputs: list[TensorSpec], shapes: Mapping[str, tuple[int, ...]] | None) -> str:
    """"; batch axis of X taken as 1 ..." for the inputs random data makes a batch of one for (see :func:`batch_axis_only`),
    else "": every warning about random inputs carries it, so that the sizes measured are never a guess nobody saw."""
    taken = [spec.name for spec in inputs if spec.name not in (shapes or {}) and batch_axis_only(spec)]
    return f"; batch axis of {', '.join(taken)} taken as 1, --input-shapes sets it" if taken else ""


def resolve_shape(spec: TensorSpec, overrides: Mapping[str, tuple[int, ...]]) -> tuple[int, ...]:
    """A concrete shape for ``spec``: the override if given, else its static dims (a dynamic batch axis alone: 1)."""
    if spec.name in overrides:
        shape = overrides[spec.name]
        if spec.shape is not None:
            if len(shape) != len(spec.shape):
                raise UsageError(f"--input-shapes {spec.name}: rank {len(shape)} given, the model expects {spec.shape_text()}")
            for axis, (dim, size) in enumerate(zip(spec.shape, shape)):
                if isinstance(dim, int) and dim != size:
                    raise UsageError(f"--input-shapes {spec.name}: axis {axis} is {dim} in the model, {size} given")
        return shape
    if spec.shape is None:
        raise UsageError(f"input '{spec.name}' has unknown rank; give --input-shapes {spec.name}:D1,D2,...")
    if batch_axis_only(spec):
        return (1, *spec.shape[1:])
    dynamic = [(axis, dim) for axis, dim in enumerate(spec.shape) if not isinstance(dim, int)]
    if dynamic:
        named = ", ".join(f"{repr(dim) if dim else 'unnamed'} (axis {axis})" for axis, dim in dynamic)
        raise UsageError(
            f"input '{spec.name}' has dynamic dimension{'s' if len(dynamic) > 1 else ''} {named}; give --input-shapes {spec.name}:"
            + ",".join("N" if not isinstance(d, int) else str(d) for d in spec.shape)
        )
    return tuple(int(d) for d in spec.shape)


class RandomInputs:
    """Seeded random batches shaped like the model's inputs; proves little, and says so."""

    def __init__(self, inputs: list[TensorSpec], shapes: Mapping[str, tuple[int, ...]] | None = None, *, batches: int = 4, seed: int = 0):
        unknown = [name for name in (shapes or {}) if name not in {s.name for s in inputs}]
        if unknown:
            raise UsageError(f"--input-shapes names '{unknown[0]}', which is not a model input ({', '.join(s.name for s in inputs)})")
        self.inputs = inputs
        self.shapes = {spec.name: resolve_shape(spec, shapes or {}) for spec in inputs}
        self.batches = batches
        self.seed = seed
        self.description = f"{batches} random batch(es) (seed {seed}{batch_of_one_note(inputs, shapes)})"

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[tuple[str, Batch]]:
        rng = np.random.default_rng(self.seed)
        # uint8 inputs are pixels (a model that takes an image as it is decoded): drawn over 0-255
        integer = [spec.name for spec in self.inputs if spec.dtype is not None and spec.dtype.kind in "iu" and spec.dtype != np.uint8]
        # indices, lengths and ids drawn at random often mean nothing to the model: a batch it refuses says why
        note = f" (0 or 1 at random in integer input(s) {', '.join(repr(name) for name in integer)})" if integer else ""
        for index in range(self.batches):
            batch: Batch = {}
            for spec in self.inputs:
                shape = self.shapes[spec.name]
                dtype = spec.dtype if spec.dtype is not None else np.dtype(np.float32)
                if dtype.kind == "f":
                    batch[spec.name] = rng.standard_normal(shape).astype(dtype)
                elif dtype == np.uint8:
                    batch[spec.name] = rng.integers(0, 256, size=shape).astype(dtype)
                elif dtype.kind in "iu":
                    batch[spec.name] = rng.integers(0, 2, size=shape).astype(dtype)
                elif dtype.kind == "b":
                    batch[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
                else:
                    kind = "strings" if dtype.kind in "OSU" else dtype
                    raise UsageError(f"input '{spec.name}' holds {kind}; random data cannot be made for it: give --data or --data-loader")
            yield f"random batch {index}{note}", batch


class CheckedSource:
    """Wraps a source and checks each batch against the model's inputs as it is read."""

    def __init__(self, source: DataSource, inputs: list[TensorSpec], *, finite: bool = True, check: bool = True):
        self.source = source
        self.inputs = inputs
        self.finite = finite
        self.check = check  # False for batches checked when they were first read
        self.description = source.description

    def __len__(self) -> int:
        return len(self.source)

    def known_length(self) -> int | None:
        try:
            return len(self.source)
        except TypeError:
            return None

    def __iter__(self) -> Iterator[tuple[str, Batch]]:
        for label, batch in self.source:
            if self.check:
                check_batch(batch, self.inputs, label, finite=self.finite)
            yield label, batch


def reiterable(source) -> bool:
    """False for sources that can be read only once (a loader function's generator)."""
    inner = getattr(source, "source", source)
    return getattr(inner, "reiterable", True)


def in_memory(items: list[tuple[str, Batch]], like) -> CheckedSource:
    """Batches already read (and checked), kept under their labels as a source that can be read again."""
    if not items:
        raise DataError(f"{like.description}: no batches")
    memory = InMemory([batch for _, batch in items], labels=[label for label, _ in items])
    memory.description = like.description
    return CheckedSource(memory, getattr(like, "inputs", []), check=False)


def read_once(source, limit: int | None) -> CheckedSource:
    """Read up to ``limit`` batches (all, without one) of a one-shot source into memory."""
    return in_memory(list(itertools.islice(source, limit)), source)


KEPT_BYTES = 1 << 30  # batches kept in memory between passes over the data, at most this much (and a quarter of what is available)


class KeptBetweenPasses:
    """The batches of a source that can be read again (the first ``limit`` of them, when given), for work that passes over
    them several times (pruning's refit waves, compress's candidates).

    The first whole pass keeps what it reads, when the batches fit in KEPT_BYTES and a quarter of the memory available,
    and later passes read those instead of reading and checking the files again. Later passes get read-only views of
    the arrays, so no pass can change what the next one reads (the arrays the first pass handed out keep their flags).
    """

    def __init__(self, source, limit: int | None = None):
        self.source, self.limit = source, limit
        self.description = source.description if limit is None else f"the first {limit} batch(es) of {source.description}"
        self.inputs = getattr(source, "inputs", [])
        self._kept: list[tuple[str, Batch]] | None = None

    def known_length(self) -> int | None:
        if self._kept is not None:
            return len(self._kept)
        total = self.source.known_length() if hasattr(self.source, "known_length") else None
        return None if total is None else total if self.limit is None else min(total, self.limit)

    def __iter__(self) -> Iterator[tuple[str, Batch]]:
        if self._kept is not None:
            yield from self._kept
            return
        available = available_bytes()
        room = KEPT_BYTES if available is None else min(KEPT_BYTES, available // 4)
        kept: list[tuple[str, Batch]] | None = []
        size = 0
        for label, batch in itertools.islice(self.source, self.limit):
            if kept is not None:
                size += sum(np.asarray(value).nbytes for value in batch.values())
                if size > room:
                    kept = None  # too large to keep: every pass reads the files
                else:
                    kept.append((label, {name: _read_only(value) for name, value in batch.items()}))
            yield label, batch
        if kept is not None:  # a whole pass: a pass stopped early keeps nothing
            self._kept = kept


class Excluding:
    """The batches of a source that can be read again, less those at the ``skip`` positions (held out for evaluation)."""

    def __init__(self, source, skip: set[int]):
        self.source, self.skip = source, skip
        self.inputs = getattr(source, "inputs", [])
        self.description = f"{source.description} less {len(skip)} held-out batch(es)"

    def known_length(self) -> int | None:
        total = self.source.known_length() if hasattr(self.source, "known_length") else None
        return None if total is None else total - len(self.skip)

    def __iter__(self) -> Iterator[tuple[str, Batch]]:
        for index, item in enumerate(self.source):
            if index not in self.skip:
                yield item


def hold_out(source, fraction: float, cap: int) -> tuple[object, list[tuple[str, Batch]]]:
    """Every ``1/fraction``-th batch of ``source`` (at most ``cap``) set aside, and the rest as a source.

    A source with fewer than ``1/fraction`` batches but at least two holds out its last
    one, as quantize does; a single batch holds nothing out (the caller says so).
    """
    period = round(1.0 / fraction) if fraction > 0 else 0
    if not period:
        return source, []
    held, skip, count, last = [], set(), 0, None
    for index, item in enumerate(source):
        count, last = index + 1, item
        if index % period == period - 1 and len(held) < cap:
            held.append(item)
            skip.add(index)
    if not held and count >= 2 and cap > 0:
        held, skip = [last], {count - 1}
    if not held:
        return source, []
    return Excluding(source, skip), held


def evaluation_split(source, eval_data, inputs: list[TensorSpec], *, fraction: float, cap: int, input_shapes=None) -> tuple[object, list, str | None]:
    """Batches to build with, batches to judge the result on (never the same ones), and where the latter came from.

    ``eval_data`` given: at most ``cap`` of its batches, and ``source`` whole
    ('eval-data'). Otherwise every ``1/fraction``-th batch of ``source`` ('held-out'),
    or none when it has too few (None: the caller decides what that means).
    """
    if eval_data is not None:
        return source, list(itertools.islice(open_data(eval_data, inputs, input_shapes=input_shapes), cap)), "eval-data"
    if source is None:
        return None, [], None
    rest, held = hold_out(source, fraction, cap)
    return (rest, held, "held-out") if held else (source, [], None)


def _read_only(value):
    """A read-only view of an array (the caller's own array keeps its flags), anything else as it is."""
    if not isinstance(value, np.ndarray):
        return value
    view = value.view()
    view.flags.writeable = False
    return view


def for_several_passes(source, limit: int | None):
    """``source`` bounded to ``limit`` batches, readable as often as a pass over the data needs it (kept in memory
    between passes where it fits, see :class:`KeptBetweenPasses`)."""
    if not reiterable(source):
        return read_once(source, limit)
    return KeptBetweenPasses(source, limit)


def random_batch(inputs: list[TensorSpec], input_shapes: Mapping[str, tuple[int, ...]] | None = None) -> Batch:
    """One batch of random inputs of the model's sizes (``input_shapes`` for its dynamic ones, a lone batch axis as 1), to
    test-run or time a model without data; DataError or UsageError, saying which, where a size is unknown."""
    return next(iter(open_data("random", inputs, input_shapes=input_shapes, random_batches=1)))[1]


def random_batch_or_none(inputs: list[TensorSpec], input_shapes: Mapping[str, tuple[int, ...]] | None = None) -> Batch | None:
    """:func:`random_batch`, or None where a size is unknown (the caller then leaves the test run or timing out)."""
    try:
        return random_batch(inputs, input_shapes)
    except OnnxSlimError:
        return None


def check_input_shapes(input_shapes: Mapping[str, tuple[int, ...]] | None, inputs: list[TensorSpec]) -> None:
    """A :class:`UsageError` naming the first entry of ``input_shapes`` that is not one of ``inputs``."""
    unknown = sorted(set(input_shapes or {}) - {spec.name for spec in inputs})
    if unknown:
        raise UsageError(f"--input-shapes names '{unknown[0]}', which is not a model input ({', '.join(spec.name for spec in inputs)})")


def open_data(
    data: str | Path | DataSource,
    inputs: list[TensorSpec],
    *,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    random_batches: int = 4,
    seed: int = 0,
) -> CheckedSource:
    """Open ``data`` ('random', a folder or file of .npz, of .npy for a one-input model, a DataSource, a reader, a list) as checked batches."""
    check_input_shapes(input_shapes, inputs)
    data = as_source(data)
    if isinstance(data, (str, Path)):
        if str(data) == "random":
            source: DataSource = RandomInputs(inputs, input_shapes, batches=random_batches, seed=seed)
        elif _npy_only(Path(data)):
            if len(inputs) != 1:
                raise UsageError(f"{data}: .npy files name no input and this model has {len(inputs)} ({', '.join(spec.name for spec in inputs)}); "
                                 "write .npz batches keyed by input name (numpy.savez)")
            source = NpyFolder(data, inputs[0].name)
        else:
            source = NpzFolder(data)
    else:
        source = data
    return CheckedSource(source, inputs)


def _npy_only(path: Path) -> bool:
    """A .npy file, or a folder holding .npy files and no .npz ones."""
    if path.is_file():
        return path.suffix == ".npy"
    return path.is_dir() and any(path.glob("*.npy")) and not any(path.glob("*.npz"))


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


def image_files(folder: Path) -> list[Path]:
    """The images in ``folder`` and its subfolders (a folder per class, as ImageNet-style sets are laid out), in path order."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


class ImageFolder:
    """A folder of images turned into one-image batches by a declared preprocessing.

    Each image (subfolders included) is converted to RGB (or BGR), resized to ``size`` (height,
    width), multiplied by ``scale``, normalized per channel with ``mean`` and
    ``std``, and laid out as NCHW or NHWC with a batch dimension of 1. With
    ``dtype`` uint8 (a model that takes pixels as decoded) the pixels are
    given as they are: ``scale``, ``mean`` and ``std`` do not apply.
    """

    def __init__(self, folder: str | Path, input_name: str, *, size: tuple[int, int], layout: str = "nchw", scale: float = 1.0 / 255.0,
                 mean: tuple[float, ...] = (0.0, 0.0, 0.0), std: tuple[float, ...] = (1.0, 1.0, 1.0), channels: str = "rgb", dtype=np.float32):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DataError(f"image folder not found: {self.folder}")
        self.files = image_files(self.folder)
        if not self.files:
            raise DataError(f"{self.folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        if layout not in ("nchw", "nhwc"):
            raise UsageError(f"image layout must be nchw or nhwc, not {layout}")
        if channels not in ("rgb", "bgr"):
            raise UsageError(f"image channels must be rgb or bgr, not {channels}")
        if len(mean) != 3 or len(std) != 3 or any(s == 0 for s in std):
            raise UsageError("image mean and std need three values each, std non-zero")
        self.input_name, self.size, self.layout, self.scale = input_name, size, layout, scale
        self.mean, self.std, self.channels = np.array(mean, np.float32), np.array(std, np.float32), channels
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.uint8):
            raise UsageError(f"image folders give float32 or uint8 pixels, not {self.dtype}")
        pixels = ", uint8 pixels as decoded" if self.dtype == np.uint8 else ""
        self.description = f"{len(self.files)} image(s) from {self.folder} ({size[0]}x{size[1]} {layout}, {channels}{pixels})"

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[tuple[str, Batch]]:
        try:
            from PIL import Image
        except ImportError:
            raise DataError("reading an image folder needs Pillow: pip install pillow") from None
        for path in self.files:
            try:
                with Image.open(path) as image:
                    rgb = image.convert("RGB").resize((self.size[1], self.size[0]), Image.BILINEAR)
            except OSError as exc:
                raise DataError(f"{path}: not a readable image ({exc})") from None
            array = np.asarray(rgb, dtype=np.float32 if self.dtype == np.float32 else np.uint8)
            if self.channels == "bgr":
                array = array[:, :, ::-1]
            if self.dtype == np.float32:
                array = (array * self.scale - self.mean) / self.std
            if self.layout == "nchw":
                array = array.transpose(2, 0, 1)
            yield str(path), {self.input_name: np.ascontiguousarray(array[None], dtype=self.dtype)}


class LoaderFunction:
    """Batches from a user function ``module:function`` (or ``path/to/file.py:function``) yielding dicts."""

    def __init__(self, spec: str):
        import importlib
        import importlib.util

        module_name, sep, function_name = spec.rpartition(":")
        if not sep or not module_name or not function_name:
            raise UsageError(f"--data-loader '{spec}' is not MODULE:FUNCTION")
        try:
            if module_name.endswith(".py") or "/" in module_name:
                path = Path(module_name)
                if not path.is_file():
                    raise DataError(f"--data-loader: file not found: {path}")
                module_spec = importlib.util.spec_from_file_location(path.stem, path)
                module = importlib.util.module_from_spec(module_spec)
                module_spec.loader.exec_module(module)
            else:
                module = importlib.import_module(module_name)
        except DataError:
            raise
        except ImportError as exc:
            raise DataError(f"--data-loader: cannot import '{module_name}': {exc}") from exc
        except Exception as exc:  # the loader's own code failed while being imported (SyntaxError, RuntimeError, ...)
            raise DataError(f"--data-loader {spec}: importing '{module_name}' raised {type(exc).__name__}: {first_line(exc, empty='(no message)')}") from exc
        self.function = getattr(module, function_name, None)
        if not callable(self.function):
            raise DataError(f"--data-loader: '{module_name}' has no function '{function_name}'")
        self.spec = spec
        self.description = f"batches from {spec}"

    def __len__(self) -> int:
        raise TypeError("a loader function's length is not known in advance")

    reiterable = False  # a generator may be one-shot or shuffle: it is called once and read once

    def __iter__(self) -> Iterator[tuple[str, Batch]]:
        try:
            stream = iter(self.function())
        except Exception as exc:  # the user's function, called with no arguments
            raise DataError(f"--data-loader {self.spec}: calling it raised {type(exc).__name__}: {first_line(exc, empty='(no message)')}") from exc
        index = 0
        while True:
            try:
                batch = next(stream)
            except StopIteration:
                return
            except Exception as exc:
                raise DataError(f"--data-loader {self.spec}: batch {index} raised {type(exc).__name__}: {first_line(exc, empty='(no message)')}") from exc
            if not isinstance(batch, Mapping):
                raise DataError(f"{self.spec}: item {index} is {type(batch).__name__}, not a dict of input name -> array")
            yield f"{self.spec} item {index}", {k: np.asarray(v) for k, v in batch.items()}
            index += 1


def from_reader(reader) -> InMemory:
    """An onnxruntime ``CalibrationDataReader`` (anything with ``get_next()``) as a DataSource.

    Its batches are read once and kept, since such readers cannot always rewind.
    """
    batches = []
    while True:
        item = reader.get_next()
        if item is None:
            break
        batches.append(dict(item))
    if not batches:
        raise DataError("the calibration data reader returned no batches")
    source = InMemory(batches, label="reader batch")
    source.description = f"{len(batches)} batch(es) from {type(reader).__name__}"
    return source


def as_source(data) -> DataSource | str | Path:
    """Accept the Python API's forms of data: a path, 'random', a DataSource, a reader, or a list of dicts."""
    if isinstance(data, (str, Path)) or hasattr(data, "__iter__") and hasattr(data, "description"):
        return data
    if hasattr(data, "get_next"):
        return from_reader(data)
    if isinstance(data, (list, tuple)) and all(isinstance(item, Mapping) for item in data):
        return InMemory(list(data))
    raise UsageError(f"data must be a folder of .npz files, 'random', a DataSource or a CalibrationDataReader, not {type(data).__name__}")


class InMemory:
    """A list of input dicts."""

    def __init__(self, batches: list[Mapping[str, np.ndarray]], label: str = "batch", labels: list[str] | None = None):
        if not batches:
            raise DataError("the list of batches is empty")
        self.batches = [{k: np.asarray(v) for k, v in b.items()} for b in batches]
        self.labels = labels or [f"{label} {index}" for index in range(len(self.batches))]
        self.description = f"{len(self.batches)} in-memory batch(es)"

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[str, Batch]]:
        yield from zip(self.labels, self.batches)
