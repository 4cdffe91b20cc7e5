"""A 16-cell sweep through ``--launcher local`` (2 workers) vs the same sweep in process, side by side; then the
study's size (``medprobe study --plan``) for the full grid.

The sweep: 2 phantom tasks x 2 resolutions x 4 seeds, head logreg (4 feature groups of 4 cells). Each variant runs
as one ``medprobe sweep`` command in a fresh subprocess against an empty results folder and feature cache, so import
time is in every number. The launched variants run the job graph through submitit's local executor, every job a
fresh Python process: by default (the local launcher's ``cells_per_job``: each group's cells over the workers) one
job per feature group that extracts and runs its 4 cells -- 4 jobs; with ``--cells-per-job 1`` an extraction job
per group and 16 head jobs -- 20 jobs, the SLURM shape. Rows are checked equal (config hashes and metrics)::

    python bench/sweep_launcher.py                          # encoder none (the work is the heads)
    python bench/sweep_launcher.py --encoder dinov3-vits16  # random ViT-S/16 at 64/96 px: extraction dominates
    python bench/sweep_launcher.py --plan-ips 2400 --gpu H100   # + the full study's plan at that speed

On 2 cores there is no spare core for a second worker when the machine is busy, and every job pays a Python +
torch start-up: the launcher is for clusters (many GPUs, many nodes), not for speed on a laptop. The ratio shows its
overhead.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).parent))

from _common import table  # noqa: E402


def _sweep_yaml(folder: Path, encoder: str, n: int) -> Path:
    import yaml

    res = [32, 48] if encoder == "none" else [64, 96]
    doc = {"name": "bench16",
           "base": {"encoder": encoder, "split": {"fractions": [0.5, 0.2, 0.3]},
                    "features": {"progress": False, "batch_size": 32}, "audit": {"mode": "off"},
                    "metrics": {"bootstrap": 200}, "head_params": {"logreg": {"Cs": [0.1, 1.0]}}},
           "tasks": [{"name": "xray", "dataset": "phantom:xray2d-binary", "data": {"n": n, "size": 64}},
                     {"name": "xray-b", "dataset": "phantom:xray2d-binary", "data": {"n": n, "size": 64, "seed": 1}}],
           "grid": {"resolution": res, "head": ["logreg"], "seed": [0, 1, 2, 3]}}
    p = folder / "bench16.yaml"
    p.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return p


def _run(args: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "medprobe.cli.main", *args], capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        sys.stderr.write(p.stdout[-3000:] + p.stderr[-3000:])
        raise SystemExit(f"sweep bench: command failed ({p.returncode}): medprobe {' '.join(args)}")
    return dt


def _rows(db: Path) -> dict[str, object]:
    from medprobe.results import ResultsDB

    return {r["config_hash"]: r["metrics"] for r in ResultsDB(db).runs()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", default="none", help="none (default) or e.g. dinov3-vits16 (random weights)")
    ap.add_argument("--n", type=int, default=48, help="phantom images per task (default 48)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--plan-ips", type=float, default=None, metavar="N",
                    help="also print the full study's plan at N img/s of --reference (e.g. measured on a GPU)")
    ap.add_argument("--reference", default="dinov3-vitb16@224")
    ap.add_argument("--gpu", default=None)
    a = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    with tempfile.TemporaryDirectory(prefix="medprobe-bench-sweep-") as tmp:
        t = Path(tmp)
        cfg = t / "cluster.yaml"
        cfg.write_text("poll_s: 0.2\n", encoding="utf-8")
        env["MEDPROBE_CLUSTER_CONFIG"] = str(cfg)
        sw = _sweep_yaml(t, a.encoder, a.n)
        local = ["--launcher", "local", "--workers", str(a.workers)]
        variants = [("in process", []),
                    (f"local, {a.workers} workers (default: 4 jobs)", local),
                    (f"local, {a.workers} workers, 1 cell/job (20 jobs)", [*local, "--cells-per-job", "1"])]
        rows, base, ref = [], None, None
        load0 = os.getloadavg()[0]
        for i, (name, extra) in enumerate(variants):
            db, cache = t / f"db{i}", t / f"cache{i}"
            dt = _run(["sweep", str(sw), "--db", str(db), "--cache-dir", str(cache), *extra], env)
            got = _rows(db)
            if ref is None:
                ref, base = got, dt
            same = got == ref
            rows.append([name, round(dt, 1), round(dt / base, 2) if base else 1.0, len(got),
                         "yes" if same else "NO"])
        print(f"16-cell sweep ({a.encoder}, {a.n} phantom images per task; load average {load0:.1f} -> "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
        print(table(rows, ["variant", "wall s", "ratio to in-process", "rows", "same rows+metrics"]))
    if a.plan_ips:
        plan = ["study", "--data-root", str(REPO.parent / "shared" / "data"), "--plan", "--images-per-s",
                str(a.plan_ips), "--reference", a.reference] + (["--gpu", a.gpu] if a.gpu else [])
        p = subprocess.run([sys.executable, "-m", "medprobe.cli.main", *plan], capture_output=True, text=True,
                           env=env, cwd=REPO)
        out = p.stdout
        print(out[out.index("study plan"):] if "study plan" in out else out + p.stderr)


if __name__ == "__main__":
    main()
