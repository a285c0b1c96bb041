"""The models an export script is asked for on its command line."""

from __future__ import annotations

import argparse
from collections.abc import Iterable


def chosen_names(description: str, known: Iterable[str]) -> list[str]:
    """The names given on the command line (all of ``known`` when none is); an unknown one stops the script with a usage error."""
    known = list(known)
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("names", nargs="*", help=f"any of {', '.join(known)} (default: all)")
    names = parser.parse_args().names
    unknown = [name for name in names if name not in known]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return names or known
