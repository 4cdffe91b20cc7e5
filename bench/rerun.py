"""Cached re-run vs cold run of one classification task, measured side by side.

A cold ``medprobe run`` extracts features (the expensive part) and fits the head; a re-run of the same task
finds the features in the cache, never builds the encoder, and only fits the head again. This script runs the
same command twice in fresh subprocesses (same interpreter; import time is in both numbers), against an empty
cache and results database in a scratch folder, and prints both wall times and their ratio.

Default task: a seeded subset of PneumoniaMNIST (``--n`` images split train/val/test 70/10/20 from the official
splits), random-init ``dinov3-vits16`` at 224 px (its native input), bf16 autocast, head ``logreg``, on the CPU::

    python bench/rerun.py                      # data from ../shared/data/medmnist
    python bench/rerun.py --n 500 --resolution 112 --device cuda

It also times the integrity check a cached run pays (every cached array's size + CRC-32 checked once per
process when the entry is opened), in a fresh process, as a share of the cached run's wall time (target <= 0.05).

Target: cached / cold <= 0.05. The cached run still pays for imports, the head fit (logreg: a 45-C sweep) and the
bootstrap, a few seconds in all, so the task must make extraction dominate: at 112 px on 2 busy CPU cores
the cold run took only ~30 s and the ratio was 0.28; at 224 px it was 0.02.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "medmnist"
TARGET = 0.05


def _limit(n: int) -> str:
    test, val = n // 5, n // 10
    return f"{n - test - val},{val},{test}"


def _run(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        sys.stderr.write(p.stdout + p.stderr)
        raise SystemExit(f"rerun bench: command failed with exit code {p.returncode}: {' '.join(cmd)}")
    return dt, p.stdout + p.stderr


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", default=str(DEFAULT_DATA))
    ap.add_argument("--dataset", default="medmnist:pneumoniamnist")
    ap.add_argument("--n", type=int, default=2000, help="images in the subset (train/val/test 70/10/20)")
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--encoder", default="dinov3-vits16")
    ap.add_argument("--head", default="logreg")
    ap.add_argument("--amp", default="bf16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one, removed after)")
    args = ap.parse_args(argv)
    if not Path(args.data_root).is_dir():
        raise SystemExit(f"rerun bench: data folder {args.data_root} not found (pass --data-root)")

    with tempfile.TemporaryDirectory(prefix="medprobe-rerun-") as tmp:
        work = Path(args.workdir) if args.workdir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        db = work / "db" / "results.db"
        if db.exists():
            raise SystemExit(f"rerun bench: {db} exists; give an empty --workdir")
        cmd = [sys.executable, "-m", "medprobe.cli.main", "run", "--name", "rerun-bench",
               "--dataset", args.dataset, "--data-root", args.data_root, "--data-opt", f"limit={_limit(args.n)}",
               "--encoder", args.encoder, "--resolution", str(args.resolution), "--head", args.head,
               "--amp", args.amp, "--device", args.device, "--cache-dir", str(work / "cache"), "--db", str(db)]
        cold, _ = _run(cmd)
        cached, out = _run([*cmd, "--rerun"])  # the same task again: fit and store the head once more
        if "[features from cache]" not in out or "features cached" not in out:
            raise SystemExit("rerun bench: the second run did not report cached features:\n" + out)

        from medprobe.results import ResultsDB

        rows = ResultsDB(db).runs(task="rerun-bench")
        assert len(rows) == 2, rows
        same = rows[0]["metrics"] == rows[1]["metrics"]
        t0, t1 = rows[0]["timings"], rows[1]["timings"]
        ratio = cached / cold
        sp = rows[0]["split"]
        print(f"task: {args.dataset} subset {sp['n_train']}/{sp['n_val']}/{sp['n_test']}, {args.encoder} (random "
              f"init), {args.resolution} px, amp {args.amp}, head {args.head}, device {args.device}")
        print(f"cold run:   {cold:8.2f} s wall  (extraction {t0['extraction_s']:.2f} s, head fit "
              f"{t0['head_fit_s']:.2f} s, in-process total {t0['total_s']:.2f} s)")
        print(f"cached run: {cached:8.2f} s wall  (cache lookup {t1['extraction_s']:.2f} s, head fit "
              f"{t1['head_fit_s']:.2f} s, in-process total {t1['total_s']:.2f} s)  [features from cache]")
        print(f"cached / cold = {ratio:.4f}  (target <= {TARGET}: {'PASS' if ratio <= TARGET else 'FAIL'}); "
              f"metrics identical: {same}")
        entry = work / "cache" / str(rows[1]["labels"]["cache_key"])
        probe = ("import sys, time; from medprobe.features.cache import FeatureStore; "
                 "s = FeatureStore(sys.argv[1], verify=False); t = time.perf_counter(); "
                 "n = s.verify_checksums(force=True); print(n, time.perf_counter() - t)")
        _, out = _run([sys.executable, "-c", probe, str(entry)])
        n_files, check_s = out.split()
        size = sum(f.stat().st_size for f in entry.rglob("*.npy")) / 2**20
        share = float(check_s) / cached
        print(f"checksum check: {float(check_s):.3f} s for {n_files} arrays ({size:.1f} MiB) = {share:.4f} of the "
              f"cached run (target <= {TARGET}: {'PASS' if share <= TARGET else 'FAIL'})")
        return 0 if ratio <= TARGET and same and share <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
