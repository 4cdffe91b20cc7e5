"""Check a report in headless Chromium: every image loaded, no console errors, optional screenshot.

Uses ``--dump-dom`` after the page's own status script has written ``{images, loaded, tables, errors}``
into ``<div id="status">`` (see :mod:`.html`), plus Chromium's console log on stderr
(``--enable-logging=stderr``) for errors the page script cannot see. Standard library only.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars")


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


def _run(exe: str, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="medprobe-chromium-") as prof:
        return subprocess.run([exe, *FLAGS, f"--user-data-dir={prof}", *args], capture_output=True, text=True,
                              encoding="utf-8", errors="replace",
                              timeout=timeout, check=False)


def browser_check(html_path: str | Path, screenshot: str | Path | None = None, window: tuple[int, int] = (1280, 2400),
                  chromium: str | None = None, timeout: float = 60.0) -> dict[str, Any]:
    """Load ``html_path`` headless; returns ``{images, loaded, tables, errors, console_errors, dom_len}``
    and writes a PNG ``screenshot`` when asked. Raises ``RuntimeError`` when Chromium is missing or fails."""
    exe = chromium or find_chromium()
    if exe is None:
        raise RuntimeError("chromium not found")
    url = Path(html_path).resolve().as_uri()
    res = _run(exe, ["--virtual-time-budget=10000", "--enable-logging=stderr", "--v=0", "--dump-dom", url],
               timeout)
    m = re.search(r'<div id="status" data-state="(\w+)">(.*?)</div>', res.stdout, re.S)
    if m is None or m.group(1) != "done":
        raise RuntimeError(f"status element not written (rc {res.returncode}): {res.stderr[-500:]}")
    status: dict[str, Any] = json.loads(html.unescape(m.group(2)))
    console = [ln for ln in res.stderr.splitlines() if "CONSOLE" in ln and ("ERROR" in ln or ":ERROR:" in ln)]
    status["console_errors"] = console
    status["dom_len"] = len(res.stdout)
    if screenshot is not None:
        shot = Path(screenshot).resolve()
        shot.parent.mkdir(parents=True, exist_ok=True)
        r2 = _run(exe, [f"--window-size={window[0]},{window[1]}", "--virtual-time-budget=10000",
                        f"--screenshot={shot}", url], timeout)
        if not shot.is_file():
            raise RuntimeError(f"screenshot not written (rc {r2.returncode}): {r2.stderr[-500:]}")
        status["screenshot"] = str(shot)
    return status
