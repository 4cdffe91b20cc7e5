"""medprobe.utils.Progress: tqdm's bar on a terminal, plain periodic lines in a log file."""

from __future__ import annotations

import io
import time

from medprobe.utils import Progress, progress_iter


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_file_gets_plain_lines_every_tenth() -> None:
    out = io.StringIO()
    p = Progress(100, desc="extract vits", unit="img", stream=out, log_interval=3600)
    for _ in range(100):
        p.update()
    p.close()
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 10  # every 10 %; close() does not repeat the last line
    assert lines[0].startswith("extract vits: 10/100 img (10%)")
    assert lines[-1].startswith("extract vits: 100/100 img (100%)")
    assert all("img/s" in ln and "<" in ln for ln in lines)  # rate and ETA shown


def test_log_file_time_interval_and_unknown_total() -> None:
    out = io.StringIO()
    p = Progress(None, desc="train", unit="crops", stream=out, log_interval=0.01)
    p.update(3)
    time.sleep(0.02)
    p.update(2)  # due by time
    p.close()
    lines = out.getvalue().splitlines()
    assert lines == [lines[0]] and lines[0].startswith("train: 5 crops [") and "crops/s" in lines[0]


def test_terminal_uses_tqdm_bar() -> None:
    out = _Tty()
    p = Progress(4, desc="extract", unit="img", stream=out, min_interval=0)
    for _ in range(4):
        p.update()
    p.close()
    text = out.getvalue()
    assert "\r" in text and "4/4" in text and "img/s" in text and text.endswith("\n")


def test_disabled_is_silent_but_counts() -> None:
    out = io.StringIO()
    p = Progress(10, stream=out, enabled=False)
    p.update(4)
    time.sleep(0.01)
    assert p.n == 4 and p.rate > 0
    p.close()
    assert out.getvalue() == ""
    assert list(progress_iter(range(3), total=3, enabled=False)) == [0, 1, 2]
