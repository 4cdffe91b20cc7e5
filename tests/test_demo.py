"""The README's main job, ``medprobe demo``, end to end through the CLI (offline, phantoms, untrained)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from medprobe.cli.main import main


def _rows(db: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT task, head, status FROM runs").fetchall()


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MEDPROBE_SLOW_TESTS"),
                    reason="the --full demo's classification part takes ~8 minutes on 2 cores (its solver case is also "
                           "covered by test_heads::test_logreg_low_rank_offset_features_solve_at_every_C): set "
                           "MEDPROBE_SLOW_TESTS=1")
def test_demo_full_size_classification(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The classification part at the demo's own size (random-init features are low-rank and offset, which
    is what once broke the logreg Newton factorisation here but not in the smaller --quick data)."""
    assert main(["demo", "--full", "--out", str(tmp_path), "--skip-seg", "--skip-sweep", "--skip-families"]) == 0
    out = capsys.readouterr().out
    assert "PIPELINE CHECK, NOT A SCORE" in out and "UNTRAINED" in out
    rows = _rows(tmp_path / "results.db")
    heads = {(t, h) for t, h, s in rows if s == "complete"}
    assert {("demo-xray2d-binary", h) for h in ("logreg", "linear", "knn")} <= heads
    assert {("demo-ct3d-binary", h) for h in ("logreg", "linear", "knn", "abmil")} <= heads


def test_demo_default_every_family(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The default (small) demo runs every family once, says it is an untrained pipeline check, prints its
    wall time."""
    assert main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "PIPELINE CHECK, NOT A SCORE" in out and "UNTRAINED weights -- a pipeline check, not a score" in out
    assert "segmentation done" in out and "0 failed" in out
    assert "all done: wall time " in out and "(small demo)" in out
    assert (tmp_path / "report.html").stat().st_size > 10_000
    rows = _rows(tmp_path / "results.db")
    assert len(rows) >= 7 + 8  # classification heads + sweep cells (+ segmentation, families)
    done = {t for t, _, s in rows if s == "complete"}
    assert {"demo-seg2d", "demo-seg3d", "demo-regression", "demo-instances", "demo-registration",
            "demo-slides", "demo-xray2d-binary", "demo-ct3d-binary"} <= done
