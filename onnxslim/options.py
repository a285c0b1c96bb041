"""Settings described once: a config field carries its choices, range and help.

The config dataclasses (``QuantConfig``, ``PruneConfig``) declare each
user-facing setting with :func:`setting`; :func:`check_settings` validates an
instance against those declarations, and the command line builds its options
from the same declarations, so the API and the CLI cannot drift apart in names,
choices or defaults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from onnxslim.errors import UsageError


@dataclass(frozen=True)
class Setting:
    """What the CLI and validation need to know about one config field."""

    help: str
    choices: tuple[str, ...] | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    option: str | None = None  # the command-line name, when it is not the field name with dashes
    metavar: str | None = None


def setting(default: Any, help: str, **details: Any) -> Any:
    """A dataclass field with a default and its :class:`Setting` (choices, range, help, command-line name)."""
    return dataclasses.field(default=default, metadata={"setting": Setting(help, **details)})


def setting_of(config_type: type, name: str) -> Setting:
    for field in dataclasses.fields(config_type):
        if field.name == name:
            found = field.metadata.get("setting")
            if found is None:
                raise KeyError(f"{config_type.__name__}.{name} is not declared with setting()")
            return found
    raise KeyError(f"{config_type.__name__} has no field {name}")


def option_name(field_name: str, described: Setting) -> str:
    return described.option or "--" + field_name.replace("_", "-")


def _in_range(value: float, described: Setting) -> bool:
    if described.low is not None and (value < described.low or (described.low_open and value == described.low)):
        return False
    if described.high is not None and (value > described.high or (described.high_open and value == described.high)):
        return False
    return True


def range_text(described: Setting) -> str:
    low = "-inf" if described.low is None else f"{described.low:g}"
    high = "inf" if described.high is None else f"{described.high:g}"
    return f"{'(' if described.low_open else '['}{low}, {high}{')' if described.high_open else ']'}"


def check_settings(config: Any) -> None:
    """Raise a UsageError naming the option whose value is not among its choices or out of its range."""
    for field in dataclasses.fields(config):
        described = field.metadata.get("setting")
        value = getattr(config, field.name)
        if described is None or value is None:
            continue
        name = option_name(field.name, described)
        ranged = described.low is not None or described.high is not None
        if described.choices is not None and (isinstance(value, str) or not ranged) and value not in described.choices:
            expected = ", ".join(described.choices) + (f" or a number in {range_text(described)}" if ranged else "")
            raise UsageError(f"{name} must be one of {expected} (got '{value}')")
        if ranged and not isinstance(value, (bool, str)) and not _in_range(value, described):
            raise UsageError(f"{name} {value} must be in {range_text(described)}")
        if ranged and described.choices is None and isinstance(value, str):
            raise UsageError(f"{name} must be a number in {range_text(described)} (got '{value}')")
