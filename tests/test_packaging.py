"""The wheel carries the presets from configs/ and the model-card template."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_presets_and_template(tmp_path):
    pytest.importorskip("setuptools")
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("hf_llmarch-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    presets = {p.name for p in (ROOT / "configs").glob("*.json")}
    assert presets and {f"hf_llmarch/_configs/{p}" for p in presets} <= names
    assert "hf_llmarch/templates/model_card.md" in names
    assert any(n.endswith("entry_points.txt") for n in names)


def test_tested_transformers_range_is_stated_once_consistently():
    """pyproject's pin, compat.TESTED_TRANSFORMERS, .ci/run's oldest release and the README agree,
    and the installed transformers is inside the range."""
    import re

    import transformers
    from packaging.version import Version

    from hf_llmarch.compat import TESTED_TRANSFORMERS

    oldest, newest = TESTED_TRANSFORMERS
    pin = re.search(r'"transformers>=([\d.]+),<([\d.]+)"', (ROOT / "pyproject.toml").read_text())
    assert pin, "pyproject.toml must pin transformers to a range of minors"
    assert pin.group(1) == oldest
    major, minor = newest.split(".")
    assert pin.group(2) == f"{major}.{int(minor) + 1}", "the pin's upper bound must be the minor after the newest tested"
    assert f"OLDEST={oldest}.0" in (ROOT / ".ci" / "run").read_text()
    assert f"transformers **{oldest} to {newest}**" in (ROOT / "README.md").read_text()
    installed = Version(transformers.__version__)
    assert Version(oldest) <= Version(f"{installed.major}.{installed.minor}") <= Version(newest)
