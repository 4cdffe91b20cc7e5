"""Start-up time of each ``medprobe`` command that runs no model, next to ``python -c pass``.

Each command runs in a fresh subprocess of this interpreter (``python -m medprobe.cli.main ...``, what the
``medprobe`` script runs), interleaved with the ``python -c pass`` baseline in one loop, best and median of
``--repeat`` rounds. ``results list`` reads a scratch results database with a few stored rows, so it opens
SQLite and formats rows as it does on real results. Also shows whether each command imported torch.

    python bench/cli.py               # target: --help, results list, report --help <= 0.5 s
    python bench/cli.py --repeat 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 0.5
TARGETED = ("--help", "results list", "report --help")


def _scratch_db(folder: Path) -> Path:
    """A results database with three stored rows (one per head of a small classification record)."""
    from medprobe.results import ResultsDB

    db = ResultsDB(folder / "results.db")
    for i, head in enumerate(("logreg", "knn", "linear")):
        rec = {"task": "bench-cli", "task_type": "binary", "encoder": "dinov3-vits16", "weights": "random",
               "pretrained": False, "head": head, "dataset": "phantom:xray2d-binary", "seed": i,
               "config_hash": f"{i:016x}", "layers": [11], "resolution": [224, 224], "config": {"head": head}}
        db.add_run(rec, {"auc": (0.8 + i / 100, 0.7, 0.9), "acc": 0.75})
    return db.path


def _time(argv: list[str]) -> tuple[float, bool]:
    """Wall seconds of one fresh process, and whether it imported torch (the command's output is dropped)."""
    probe = ("import runpy, sys; sys.argv = ['medprobe', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('medprobe.cli.main', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "sys.stderr.write('TORCH=%d' % ('torch' in sys.modules))")
    cmd = [sys.executable, "-c", "pass"] if argv == ["<python -c pass>"] else [sys.executable, "-c", probe, *argv]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    return dt, "TORCH=1" in proc.stderr


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=10, help="rounds (each runs every command once), e.g. 20")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="medprobe-bench-cli-") as tmp:
        db = _scratch_db(Path(tmp))
        cases = {
            "python -c pass": ["<python -c pass>"],
            "--help": ["--help"],
            "results list": ["results", "list", "--db", str(db)],
            "report --help": ["report", "--help"],
            "run --help": ["run", "--help"],
            "config keys": ["config", "keys"],
            "datasets": ["datasets"],
            "cache list": ["cache", "list", "--cache-dir", str(Path(tmp) / "cache")],
            "heads": ["heads"],
        }
        times: dict[str, list[float]] = {k: [] for k in cases}
        torch_used: dict[str, bool] = {}
        for name, argv in cases.items():  # warm the file cache once
            _, torch_used[name] = _time(argv)
        for _ in range(args.repeat):
            for name, argv in cases.items():
                times[name].append(_time(argv)[0])
    base = min(times["python -c pass"])
    print(f"{'command':<16} {'best':>7} {'median':>7} {'- python':>9}  torch  target")
    ok = True
    for name, ts in times.items():
        best, med = min(ts), statistics.median(ts)
        target = ""
        if name in TARGETED:
            passed = best <= TARGET_S
            ok &= passed
            target = f"<= {TARGET_S} s: {'PASS' if passed else 'FAIL'}"
        torch_s = "-" if name == "python -c pass" else ("yes" if torch_used[name] else "no")
        print(f"{name:<16} {best:6.3f}s {med:6.3f}s {best - base:8.3f}s  {torch_s:<5}  {target}")
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"({args.repeat} rounds, interleaved; python {sys.version.split()[0]}; {os.cpu_count()} CPUs, load average "
          f"{load} at the end)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
