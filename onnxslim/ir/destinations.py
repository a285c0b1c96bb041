"""Checks on where a command will write, made before any work starts.

A destination must never be one of the command's inputs (a model, or a data
file a model references), the same file as another destination, or anything
but a regular file: writing replaces the path, so a device node, a FIFO or a
symbolic link would be replaced by a plain file.
"""

from __future__ import annotations

import itertools
import os
import stat
from collections.abc import Sequence
from pathlib import Path

import onnx
from onnx import external_data_helper

from onnxslim.errors import OnnxSlimError, UsageError

PathLike = str | os.PathLike


def model_files(path: PathLike) -> list[Path]:
    """The model file and every external data file it references (those that exist)."""
    model_path = Path(path)
    files = [model_path]
    try:
        proto = onnx.load(str(model_path), load_external_data=False)
    except Exception:  # not readable as a model: the loader reports that later, in its own words
        return files
    seen = set()
    for tensor in external_data_helper._get_all_tensors(proto):
        if external_data_helper.uses_external_data(tensor):
            location = external_data_helper.ExternalDataInfo(tensor).location
            if location and location not in seen:
                seen.add(location)
                candidate = model_path.parent / location
                if candidate.is_file():
                    files.append(candidate)
    return files


def _same(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_writable_path(path: Path, role: str, error: type[OnnxSlimError] = UsageError) -> None:
    """Raise ``error`` unless ``path`` is a regular file or absent, in an existing writable folder."""
    try:
        info = path.lstat()
    except (FileNotFoundError, NotADirectoryError):  # absent, or under a file: the folder checks below say which
        info = None
    except OSError as exc:
        raise error(f"{role} {path}: {exc.strerror or exc}") from None
    if info is not None:
        if stat.S_ISLNK(info.st_mode):
            raise error(f"{role} {path} is a symbolic link; give the path of the file itself")
        if stat.S_ISDIR(info.st_mode):
            raise error(f"{role} {path} is a folder; give a file name")
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{role} {path} is not a regular file (a device, FIFO or socket); writing would replace it")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.exists():
        raise error(f"{role} folder {folder} does not exist")
    if not folder.is_dir():
        raise error(f"{role} folder {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise error(f"cannot write to {role} folder {folder}: permission denied")


def check_destinations(
    *, inputs: Sequence[PathLike] = (), output: PathLike | None = None, report: PathLike | None = None, html: PathLike | None = None
) -> None:
    """Refuse, with one line, destinations that would overwrite an input, each other, or a special file.

    ``inputs`` are model paths (their external data files count too) or other
    files the command reads. ``output`` is a model path: its data file
    ``<output>.data`` must not be an input either.
    """
    existing = [Path(p) for p in (output, report, html, None if output is None else str(output) + ".data") if p is not None and os.path.lexists(p)]
    read: list[tuple[Path, str]] = []
    for item in inputs:
        # only a destination that exists can be one of the files a model references: parse the model only then
        files = model_files(item) if existing and Path(item).is_file() else [Path(item)]
        read.append((files[0], "the input model"))
        read.extend((f, f"external data of the input model {files[0]}") for f in files[1:])
    destinations: list[tuple[Path, str]] = []
    if output is not None:
        destinations.append((Path(output), "output"))
    if report is not None:
        destinations.append((Path(report), "report"))
    if html is not None:
        destinations.append((Path(html), "HTML report"))
    for path, role in destinations:
        for source, what in read:
            if _same(path, source):
                raise UsageError(f"{role} {path} is {what}; choose another path")
        check_writable_path(path, role)
    if output is not None:
        data = Path(str(output) + ".data")
        for source, what in read:
            if _same(data, source):
                raise UsageError(f"output {output} would write its weights to {data}, which is {what}; choose another output path")
    for (first, first_role), (second, second_role) in itertools.combinations(destinations, 2):
        if _same(first, second):
            raise UsageError(f"{second_role} {second} is the {first_role} too; choose another path for one of them")
