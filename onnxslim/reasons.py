"""Why something was or was not done, as a code a program can test and a text a person can read.

Every decline of a graph pass, every quantization decision and every pruning
group carries a :class:`Reason`. Code branches on ``reason.code``; the text
is for the report and the terminal and may change wording freely.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from onnxslim.records import Record


@dataclass(frozen=True)
class Reason(Record):
    """A reason: ``code`` (a member of one of onnxslim's reason enums) and a human-readable ``text``."""

    code: Enum
    text: str

    def __str__(self) -> str:
        return self.text
