"""The wheel holds what the installed CLI needs, and building it prints no deprecation warning of ours."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A wheel built from a copy of the source tree (the checkout's build/ folder is left alone)."""
    pytest.importorskip("setuptools")
    src = tmp_path_factory.mktemp("src")
    shutil.copytree(REPO / "src" / "medprobe", src / "src" / "medprobe",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / f, src / f)
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation",
                           "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    wheels = list(out.glob("medprobe-*.whl"))
    assert len(wheels) == 1
    return wheels[0], proc.stdout + proc.stderr


def test_wheel_contents(wheel: tuple[Path, str]) -> None:
    path, _ = wheel
    names = set(zipfile.ZipFile(path).namelist())
    cli = sorted(p.name for p in (REPO / "src" / "medprobe" / "cli").glob("*.py"))
    for name in cli:  # every sub-command module is discovered from the installed package
        assert f"medprobe/cli/{name}" in names
    assert "medprobe/py.typed" in names
    assert "medprobe/report/paper_tables.json" in names  # the study's reference tables (report.reference)
    for pkg in ("data", "encoders", "features", "heads", "metrics", "pipeline", "pipeline/families", "report",
                "results", "analysis", "preprocess"):
        assert f"medprobe/{pkg}/__init__.py" in names
    dist = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    entry = zipfile.ZipFile(path).read(dist).decode()
    assert "medprobe = medprobe.cli.main:main" in entry
    meta = zipfile.ZipFile(path).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in meta
    assert "Provides-Extra: pandas" in meta
    # the task YAMLs are repository files (tasks/), not package data: nothing under medprobe/tasks/
    assert not any(n.startswith("medprobe/tasks/") for n in names)


def test_build_prints_no_deprecation(wheel: tuple[Path, str]) -> None:
    _, log = wheel
    bad = [ln for ln in log.splitlines() if "deprecat" in ln.lower() or "license" in ln.lower() and "warn" in
           ln.lower()]
    assert not bad, bad
