"""The README's main job, ``medprobe demo``, end to end through the CLI (offline, phantoms, untrained)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from medprobe.cli.main import main


def _rows(db: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT task, head, status FROM runs").fetchall()


def test_demo_full_size_classification(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The classification part at the demo's own size (random-init features are low-rank and offset, which
    is what once broke the logreg Newton factorisation here but not in the smaller --quick data)."""
    assert main(["demo", "--out", str(tmp_path), "--skip-seg", "--skip-sweep"]) == 0
    out = capsys.readouterr().out
    assert "PIPELINE CHECK, NOT A SCORE" in out and "UNTRAINED" in out
    rows = _rows(tmp_path / "results.db")
    heads = {(t, h) for t, h, s in rows if s == "complete"}
    assert {("demo-xray2d-binary", h) for h in ("logreg", "linear", "knn")} <= heads
    assert {("demo-ct3d-binary", h) for h in ("logreg", "linear", "knn", "abmil")} <= heads


def test_demo_quick_every_part(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "segmentation done" in out and "0 failed" in out
    assert (tmp_path / "report.html").stat().st_size > 10_000
    assert len(_rows(tmp_path / "results.db")) >= 7 + 8  # classification heads + sweep cells (+ segmentation)
