"""Shared test fixtures.

``shared_data`` returns ``Path`` to the real data folder ``../shared/data`` (relative to the repo root)
and skips the test with a clear reason when it is absent.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

_SRC = REPO_ROOT / "src"
if _SRC.is_dir() and str(_SRC) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(_SRC))


def shared_data_path() -> Path:
    """Path to ../shared/data; ``pytest.skip`` when it is missing."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent: real-data test skipped")
    return SHARED_DATA


@pytest.fixture
def shared_data() -> Path:
    """Path to ../shared/data (skips the test when absent)."""
    return shared_data_path()


@pytest.fixture(scope="module")
def single_thread():  # type: ignore[no-untyped-def]
    """One torch intra-op thread for a module: the 2 cores are shared, and oversubscribed OpenMP threads crawl."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


_MISSING_MODULE = ("could not import", "no module named")


def _missing_module_skip(report: pytest.CollectReport | pytest.TestReport) -> str | None:
    """The reason of a skip caused by a module that is not installed, else None."""
    if not report.skipped or not isinstance(report.longrepr, tuple):
        return None
    reason = str(report.longrepr[2])
    return reason if any(m in reason.lower() for m in _MISSING_MODULE) else None


def _fail_missing_module(report: pytest.CollectReport | pytest.TestReport) -> None:
    """In CI (``CI`` set) a test skipped for a missing module fails: the test extra must install it."""
    reason = _missing_module_skip(report) if os.environ.get("CI") else None
    if reason:
        report.outcome = "failed"
        report.longrepr = f"skipped for a missing module in CI (add it to the 'test' extra): {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    _fail_missing_module(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):  # type: ignore[no-untyped-def]
    outcome = yield
    _fail_missing_module(outcome.get_result())


def pytest_configure(config: pytest.Config) -> None:
    """transformers imports any installed torchvision: make it importable first (see medprobe.encoders.extras),
    so tests that import a transformers model class before medprobe.encoders work in any order."""
    from medprobe.encoders.extras import ensure_torchvision

    ensure_torchvision()
