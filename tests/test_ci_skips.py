"""tests/conftest.py: in CI a test skipped because a module is missing fails; other skips stay skips."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

_CASES = '''
import pytest

def test_missing():
    pytest.importorskip("medprobe_no_such_module")

def test_other_skip():
    pytest.skip("needs a GPU")

def test_ok():
    pass
'''


def _pytest(folder: Path, ci: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider",
                           "-rfs", str(folder)], cwd=folder, env=env, capture_output=True, text=True, timeout=120)


def test_missing_module_skip_fails_in_ci(tmp_path: Path) -> None:
    (tmp_path / "test_cases.py").write_text(_CASES, encoding="utf-8")
    local = _pytest(tmp_path, ci=False)
    assert local.returncode == 0 and "1 passed, 2 skipped" in local.stdout
    ci = _pytest(tmp_path, ci=True)
    assert ci.returncode == 1 and "1 failed, 1 passed, 1 skipped" in ci.stdout
    assert "FAILED test_cases.py::test_missing" in ci.stdout and "medprobe_no_such_module" in ci.stdout
    assert "'test' extra" in ci.stdout


def test_module_level_importorskip_fails_in_ci(tmp_path: Path) -> None:
    (tmp_path / "test_mod.py").write_text('import pytest\npytest.importorskip("medprobe_no_such_module")\n\n\n'
                                          'def test_a() -> None:\n    pass\n')
    local = _pytest(tmp_path, ci=False)
    assert local.returncode == 5 and "1 skipped" in local.stdout  # 5: nothing ran, nothing failed
    ci = _pytest(tmp_path, ci=True)
    assert ci.returncode == 2 and "1 error" in ci.stdout and "medprobe_no_such_module" in ci.stdout
