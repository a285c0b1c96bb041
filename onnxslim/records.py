"""The base of every report type: a dataclass that turns itself into plain JSON data.

``Record.to_dict()`` walks the fields in order: nested records, reasons and
lists of them become dicts and lists, enums their values, numpy scalars Python
numbers, and infinities and NaN the strings 'inf', '-inf', 'nan' (JSON has no
such numbers). A field's metadata may rename it (``key``) or leave it out
(``omit``); a record adds computed entries (ratios, verdicts, short names) in
:meth:`Record.derived`, and names its command in ``command``.
"""

from __future__ import annotations

import dataclasses
import math
from enum import Enum
from typing import Any, ClassVar, NamedTuple

import numpy as np


def json_field(default: Any = dataclasses.MISSING, *, key: str | None = None, omit: bool = False, factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with its JSON key (when not its name), or left out of the JSON."""
    metadata = {"key": key, "omit": omit}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


class Record:
    """Mixin for report dataclasses: ``to_dict`` gives the whole record as plain JSON data."""

    command: ClassVar[str | None] = None

    def derived(self) -> dict[str, Any]:
        """Computed entries added after the fields."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"command": self.command} if self.command else {}
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            if field.metadata.get("omit"):
                continue
            data[field.metadata.get("key") or field.name] = plain(getattr(self, field.name))
        data.update({key: plain(value) for key, value in self.derived().items()})
        return data


class BeforeAfter(NamedTuple):
    """A quantity before and after a transformation; a pair in code, {"before", "after"} in JSON."""

    before: int = 0
    after: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"before": self.before, "after": self.after}


def plain(value: Any) -> Any:
    """``value`` as JSON-ready data (see the module docstring)."""
    if hasattr(value, "to_dict") and not isinstance(value, type):
        return value.to_dict()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value
