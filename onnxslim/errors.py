"""Errors that reach the user as one line.

Everything raised for a user's mistake (a missing file, data that does not fit
the model, an option out of range) is an :class:`OnnxSlimError`. The CLI prints
its message on one line and exits non-zero, without a traceback. Anything else
escaping the CLI is a bug in onnxslim and is shown with its traceback.
"""

from __future__ import annotations

import re


class OnnxSlimError(Exception):
    """A problem with the user's input, with a message that names what is at fault."""

    exit_code = 1


class ModelLoadError(OnnxSlimError):
    """The model file is missing, unreadable, not ONNX, or inconsistent."""


class DataError(OnnxSlimError):
    """Input or calibration data does not fit the model."""


class ProviderError(OnnxSlimError):
    """An execution provider was asked for that this onnxruntime cannot give."""


class ModelWriteError(OnnxSlimError):
    """The output could not be written, or did not pass its checks."""


class NothingToDoError(OnnxSlimError):
    """The requested transformation found nothing it could change; ``report``, where given, holds what was measured on the way."""

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


class UnsupportedModelError(OnnxSlimError):
    """A valid model that this command cannot handle (yet), with the reason."""


class BudgetError(OnnxSlimError):
    """No result met the accuracy budget (or was faster than the input); ``report`` holds everything measured."""

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


class UsageError(OnnxSlimError):
    """An option or argument was given a value that cannot be used."""

    exit_code = 2


IN_MEMORY = "<in-memory model>"


def naming_the_file(exc: OnnxSlimError, label: str) -> None:
    """Make ``exc`` name ``label`` where a step that worked on an in-memory copy of the user's model named none."""
    text = str(exc)
    if label != IN_MEMORY and text.startswith(IN_MEMORY):
        exc.args = (label + text[len(IN_MEMORY):], *exc.args[1:])


def without_model_label(exc: BaseException) -> str:
    """``exc``'s message without the in-memory placeholder that starts it: a step inside a command that names the file already."""
    text = str(exc)
    return text[len(IN_MEMORY) + 2:] if text.startswith(IN_MEMORY + ": ") else text


def first_line(exc: BaseException, limit: int = 300, *, empty: str | None = None) -> str:
    """The first non-blank line of ``exc``'s message, cut to ``limit`` characters (libraries raise pages).

    onnxruntime's messages lose their source file, C++ signature and failed check first, so the
    sentence that says what is wrong (the shapes a Reshape got) survives the cut.
    An exception without a message gives ``empty``, or its type name.
    """
    for line in str(exc).strip().splitlines():
        line = _without_onnxruntime_internals(line.strip())
        if line:
            return line[:limit]
    return empty if empty is not None else type(exc).__name__


def _without_onnxruntime_internals(line: str) -> str:
    line = re.sub(r"\[ONNXRuntimeError\] : \d+ : \w+ : ", "", line)
    line = re.sub(r"\S*onnxruntime_src/\S+:\d+ (?:[\w:~]+\([^()]*\)\S* )?", "", line)
    return re.sub(r"(Status Message: )[^.]*? was false\. ", r"\1", line)
