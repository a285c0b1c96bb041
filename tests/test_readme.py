"""Every command README shows runs as written after the set-up line, and exits 0."""

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")

pytest.importorskip("rapidocr_onnxruntime", reason="the dev extra (rapidocr-onnxruntime) ships the models README uses")
pytest.importorskip("PIL", reason="rendering text lines needs Pillow (dev extra)")

pytestmark = pytest.mark.slow


def readme_commands() -> list[str]:
    return [line[2:] for line in README.splitlines() if line.startswith("$ onnxslim ")]


def setup_steps() -> list[str]:
    line = next(line for line in README.splitlines() if line.startswith("python3 -m venv"))
    return [step.strip() for step in line.split("&&") if step.strip().startswith("python ")]


def test_readme_has_the_commands_it_tours():
    commands = readme_commands()
    for name in ("inspect", "optimize", "quantize", "prune", "compress", "share", "validate"):
        assert any(c.split()[1] == name for c in commands), name
    assert setup_steps() == ["python models/gather.py", "python calibration/make_datasets.py rec"]


def test_readme_commands_run_as_written(tmp_path):
    for step in setup_steps():
        subprocess.run([sys.executable, *shlex.split(step)[1:]], cwd=ROOT, check=True, capture_output=True, timeout=600)
    for folder in ("models", "calibration"):
        (tmp_path / folder).symlink_to(ROOT / folder)
    for command in readme_commands():
        args = shlex.split(command)[1:]
        result = subprocess.run([sys.executable, "-m", "onnxslim", *args, "-q"], cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"{command}\n{result.stdout[-1500:]}\n{result.stderr[-1500:]}"
