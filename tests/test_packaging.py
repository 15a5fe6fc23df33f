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
