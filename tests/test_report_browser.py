"""The report in a real (headless) browser: tables present, every image loaded, no console errors, screenshot.

Skips when Chromium is absent (Debian: ``apt-get install chromium``). The report comes from a tiny sweep
(image-only ``none`` encoder, so PCA pictures are computed too) plus synthetic rows for comparisons.
Set ``MEDPROBE_DEMO_SCREENSHOT=1`` to also run the demo sweep and refresh ``docs/report-screenshot.png``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medprobe.pipeline.sweep import run_sweep, sweep_from_dict
from medprobe.report import build_report
from medprobe.report.browser import browser_check, find_chromium
from medprobe.results import ResultsDB

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(find_chromium() is None,
                                reason="chromium not installed (apt-get install chromium): browser check skipped")

SWEEP = {
    "name": "browser",
    "base": {"dataset": "phantom:xray2d-binary", "data": {"n": 24, "size": 32}, "encoder": "none",
             "split": {"fractions": [0.5, 0.2, 0.3]}, "features": {"progress": False},
             "metrics": {"bootstrap": 50}, "head_params": {"logreg": {"Cs": [1.0]}}},
    "tasks": [{"name": "xa"}, {"name": "ct", "dataset": "phantom:ct3d-binary", "data": {"n": 12, "size": [32, 32, 8]}}],
    "grid": {"resolution": [32, 64], "head": ["logreg", "knn"], "seed": [0]},
}


def test_report_loads_in_chromium(tmp_path: Path) -> None:
    db = ResultsDB(tmp_path / "db")
    res = run_sweep(sweep_from_dict(SWEEP), db=db, cache_dir=str(tmp_path / "cache"), echo=lambda s: None)
    assert res["failed"] == 0
    out = build_report(db, tmp_path / "report.html", sweep="browser", cache_dir=tmp_path / "cache", n_boot=50)
    text = out.read_text(encoding="utf-8")
    assert text.count("<img ") >= 4 and 'data-fig="pca-xa"' in text and 'data-fig="pca-ct"' in text
    shot = tmp_path / "shot.png"
    status = browser_check(out, screenshot=shot)
    assert status["images"] == text.count("<img ") and status["loaded"] == status["images"], status
    assert status["tables"] == text.count("<table"), status
    assert status["errors"] == [] and status["console_errors"] == [], status
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(os.environ.get("MEDPROBE_DEMO_SCREENSHOT") != "1",
                    reason="set MEDPROBE_DEMO_SCREENSHOT=1 to run the demo sweep and refresh the README screenshot")
def test_demo_report_screenshot(tmp_path: Path) -> None:
    from medprobe.pipeline.demo import run_demo_sweep

    out = run_demo_sweep(ResultsDB(tmp_path / "db"), tmp_path / "cache", tmp_path / "report.html", True)
    shot = REPO / "docs" / "report-screenshot.png"
    status = browser_check(out, screenshot=shot, window=(1280, 2400))
    assert status["loaded"] == status["images"] > 0 and not status["errors"] and not status["console_errors"]
    assert shot.stat().st_size < 400_000
