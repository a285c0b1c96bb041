"""Sizes as people read them: megabytes where a model is that large, kilobytes or bytes where it is not."""

from __future__ import annotations


def size_text(size: int | float) -> str:
    """``size`` bytes with a unit that keeps three significant digits or more (0.01 MB would hide a 30 kB model's size)."""
    if size >= 1e6:
        return f"{size / 1e6:.2f} MB"
    if size >= 1e3:
        return f"{size / 1e3:.1f} kB"
    return f"{int(size)} bytes"
