"""A fake SLURM for tests: ``sbatch``, ``srun``, ``sacct``, ``scancel``, ``squeue`` that record every call and really
run the jobs on this machine, honouring job arrays (``--array=0-3%2``), ``--dependency=afterok:ID[:ID]`` and
``--kill-on-invalid-dep=yes``. State lives in ``$FAKE_SLURM_DIR`` (``calls.jsonl``, ``jobs/<id>.json``).
A job submitted to partition ``hold`` stays PENDING until cancelled (to test ``--status`` and ``--cancel``).

:func:`install` writes the command wrappers into a folder to put first on PATH.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

COMMANDS = ("sbatch", "srun", "sacct", "scancel", "squeue")
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"}


def install(bin_dir: Path, state_dir: Path) -> dict[str, str]:
    """Write the wrappers; returns the environment to run with (PATH first, FAKE_SLURM_DIR)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    for cmd in COMMANDS:
        w = bin_dir / cmd
        w.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(__file__)} {cmd} \"$@\"\n",
                     encoding="utf-8")
        w.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "FAKE_SLURM_DIR": str(state_dir)}


def _dir() -> Path:
    return Path(os.environ["FAKE_SLURM_DIR"])


def _locked(fn):  # type: ignore[no-untyped-def]
    def wrapped(*a, **k):  # type: ignore[no-untyped-def]
        with open(_dir() / ".lock", "a+", encoding="utf-8") as lk:
            fcntl.flock(lk, fcntl.LOCK_EX)
            try:
                return fn(*a, **k)
            finally:
                fcntl.flock(lk, fcntl.LOCK_UN)
    return wrapped


def _record(entry: dict) -> None:
    with open(_dir() / "calls.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


def calls(state_dir: Path) -> list[dict]:
    p = state_dir / "calls.jsonl"
    return [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines()] if p.is_file() else []


def jobs(state_dir: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted((state_dir / "jobs").glob("*.json"))}


def _job_file(jid: str) -> Path:
    return _dir() / "jobs" / f"{jid}.json"


@_locked
def _update(jid: str, **kw: object) -> dict:
    f = _job_file(jid)
    d = json.loads(f.read_text(encoding="utf-8"))
    if d.get("state") == "CANCELLED" and kw.get("state") not in (None, "CANCELLED"):
        kw.pop("state")  # cancelled stays cancelled
    d.update(kw)
    tmp = f.with_suffix(".tmp")
    tmp.write_text(json.dumps(d), encoding="utf-8")
    tmp.replace(f)
    return d


def _read(jid: str) -> dict:
    return json.loads(_job_file(jid).read_text(encoding="utf-8"))


@_locked
def _new_id() -> str:
    f = _dir() / "next_id"
    n = int(f.read_text(encoding="utf-8")) if f.is_file() else 1000
    f.write_text(str(n + 1), encoding="utf-8")
    return str(n)


def _parse_opts(lines: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for s in lines:
        s = s.strip()
        if not s.startswith("--"):
            continue
        k, sep, v = s[2:].partition("=")
        out[k] = v if sep else True
    return out


def sbatch(argv: list[str]) -> int:
    script = Path(argv[-1])
    text = script.read_text(encoding="utf-8")
    opts = _parse_opts([ln[len("#SBATCH"):].strip() for ln in text.splitlines() if ln.startswith("#SBATCH")])
    opts.update(_parse_opts(argv[:-1]))
    jid = _new_id()
    _record({"cmd": "sbatch", "id": jid, "argv": argv, "params": opts, "script": text, "t": time.time()})
    (_dir() / "jobs").mkdir(exist_ok=True)
    tasks: list[str] = [jid]
    par = 1
    if "array" in opts:
        m = re.fullmatch(r"(\d+)-(\d+)(?:%(\d+))?", str(opts["array"]))
        assert m, opts["array"]
        tasks = [f"{jid}_{i}" for i in range(int(m.group(1)), int(m.group(2)) + 1)]
        par = int(m.group(3) or len(tasks))
    for t in tasks:
        _job_file(t).write_text(json.dumps({"id": t, "state": "PENDING", "params": opts, "script": str(script)}),
                                encoding="utf-8")
    _job_file(jid).parent.mkdir(exist_ok=True)
    if len(tasks) > 1:
        (_dir() / "jobs" / f"{jid}.array").write_text(json.dumps({"tasks": tasks, "parallelism": par}),
                                                      encoding="utf-8")
    subprocess.Popen([sys.executable, __file__, "_run", jid, script.as_posix()], start_new_session=True,
                     stdout=subprocess.DEVNULL, stderr=open(_dir() / f"runner-{jid}.log", "w", encoding="utf-8"))
    print(f"Submitted batch job {jid}")
    return 0


def _tasks_of(jid: str) -> list[str]:
    arr = _dir() / "jobs" / f"{jid}.array"
    if arr.is_file():
        return list(json.loads(arr.read_text(encoding="utf-8"))["tasks"])
    return [jid] if _job_file(jid).is_file() else []


def _run(jid: str, script: str) -> int:
    tasks = _tasks_of(jid)
    first = _read(tasks[0])
    opts = first["params"]
    deps = [d for d in str(opts.get("dependency", "")).replace("afterok:", "").split(":") if d]
    while True:
        states = [_read(t)["state"] for d in deps for t in _tasks_of(d)]
        if any(_read(t)["state"] == "CANCELLED" for t in tasks):
            return 0
        if all(s in TERMINAL for s in states):
            break
        time.sleep(0.05)
    if any(s != "COMPLETED" for s in states):
        for t in tasks:
            _update(t, state="CANCELLED", reason="DependencyNeverSatisfied")
        return 0
    if opts.get("partition") == "hold":  # stays pending until cancelled
        while not all(_read(t)["state"] == "CANCELLED" for t in tasks):
            time.sleep(0.1)
        return 0
    arr = _dir() / "jobs" / f"{jid}.array"
    par = json.loads(arr.read_text(encoding="utf-8"))["parallelism"] if arr.is_file() else 1

    def one(t: str) -> None:
        if _read(t)["state"] == "CANCELLED":
            return
        env = dict(os.environ)
        ntasks = int(opts.get("ntasks-per-node", 1) or 1)
        env.update(SLURM_JOB_ID=t.replace("_", "9"), SLURM_NTASKS=str(ntasks), SLURM_JOB_NUM_NODES="1",
                   SLURM_NODEID="0", SLURM_JOB_NODELIST="fakenode", SLURM_SUBMIT_DIR=os.getcwd())
        if "_" in t:
            env.update(SLURM_ARRAY_JOB_ID=jid, SLURM_ARRAY_TASK_ID=t.split("_")[1])
        p = subprocess.Popen(["bash", script], env=env, start_new_session=True)
        _update(t, state="RUNNING", pid=p.pid, started=time.time())
        rc = p.wait()
        _update(t, state="COMPLETED" if rc == 0 else "FAILED", ended=time.time(), rc=rc)

    with ThreadPoolExecutor(max_workers=par) as ex:
        list(ex.map(one, tasks))
    return 0


def srun(argv: list[str]) -> int:
    i, out, err = 0, None, None
    while i < len(argv) and argv[i].startswith("-"):
        a = argv[i]
        key, sep, val = a.partition("=")
        takes = key in ("--output", "--error", "-o", "-e") and not sep
        if takes:
            val = argv[i + 1]
            i += 1
        if key in ("--output", "-o"):
            out = val
        elif key in ("--error", "-e"):
            err = val
        i += 1
    cmd = argv[i:]
    _record({"cmd": "srun", "argv": argv, "t": time.time()})
    n = int(os.environ.get("SLURM_NTASKS", "1"))
    jobid = os.environ.get("SLURM_JOB_ID", "0")
    procs = []
    for rank in range(n):
        def expand(p: str | None, rank: int = rank) -> str | None:
            if p is None:
                return None
            return (p.replace("%A", os.environ.get("SLURM_ARRAY_JOB_ID", jobid))
                    .replace("%a", os.environ.get("SLURM_ARRAY_TASK_ID", "0")).replace("%j", jobid)
                    .replace("%t", str(rank)))
        env = dict(os.environ, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank))
        o = open(expand(out), "a", encoding="utf-8") if out else None  # noqa: SIM115
        e = open(expand(err), "a", encoding="utf-8") if err else None  # noqa: SIM115
        procs.append(subprocess.Popen(cmd, env=env, stdout=o, stderr=e))
    rcs = [p.wait() for p in procs]
    return max(rcs) if rcs else 0


def sacct(argv: list[str]) -> int:
    ids = [argv[k + 1] for k, a in enumerate(argv) if a == "-j"]
    _record({"cmd": "sacct", "argv": argv, "t": time.time()})
    print("JobID|State|NodeList")
    for jid in ids:
        for t in _tasks_of(jid.split("_")[0]):
            if "_" in jid and t != jid:
                continue
            st = _read(t)["state"]
            print(f"{t}|{st}|fakenode")
    return 0


def scancel(argv: list[str]) -> int:
    _record({"cmd": "scancel", "argv": argv, "t": time.time()})
    if "--signal" in argv:
        return 0
    for jid in [a for a in argv if not a.startswith("-")]:
        targets = _tasks_of(jid) if "_" not in jid else [jid]
        for t in targets:
            d = _read(t)
            if d["state"] in TERMINAL:
                continue
            _update(t, state="CANCELLED")
            if d.get("pid"):
                try:
                    os.killpg(int(d["pid"]), signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    pass
    return 0


def squeue(argv: list[str]) -> int:
    _record({"cmd": "squeue", "argv": argv, "t": time.time()})
    print("JOBID STATE")
    for p in sorted((_dir() / "jobs").glob("*.json")):
        d = json.loads(p.read_text(encoding="utf-8"))
        if d["state"] not in TERMINAL:
            print(f"{d['id']} {d['state']}")
    return 0


def main() -> int:
    cmd, argv = sys.argv[1], sys.argv[2:]
    if cmd == "_run":
        return _run(argv[0], argv[1])
    return int({"sbatch": sbatch, "srun": srun, "sacct": sacct, "scancel": scancel, "squeue": squeue}[cmd](argv))


if __name__ == "__main__":
    sys.exit(main())
