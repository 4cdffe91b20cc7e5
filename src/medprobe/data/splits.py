"""Patient-level splits: every patient's cases land in exactly one split (no leakage).

``patients`` is always the per-case list of patient ids (``Dataset.patients()``); the returned splits
hold case indices, sorted. All functions are deterministic for a given ``seed``.

A "patient" is any group that must stay whole: a video (AutoLaparo, Kvasir-Capsule), a sequence (EndoVis),
a patient. :func:`group_from_name` derives it from a file name with a regular expression (``group_pattern``
of the ``folder``, ``seg2d`` and ``csv`` datasets).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medprobe.errors import ConfigError, DataError


def compile_group_pattern(pattern: str, where: str | Path | None = None) -> re.Pattern[str]:
    """A ``group_pattern`` regex: its named group ``group``, else its first group, else the whole match is the
    group id. A pattern that does not compile is one :class:`ConfigError` line."""
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"group_pattern {pattern!r} is not a regular expression ({e})", where) from None


def group_from_name(name: str, pattern: re.Pattern[str], where: str | Path | None = None) -> str:
    """The group (video / sequence / patient) id of ``name`` by ``pattern`` (searched, not anchored);
    :class:`DataError` naming ``name`` when it does not match."""
    m = pattern.search(name)
    if m is None:
        raise DataError(f"{name!r} does not match group_pattern {pattern.pattern!r}", source=where)
    if "group" in m.groupdict():
        g = m.group("group")
    elif m.groups():
        g = m.group(1)
    else:
        g = m.group(0)
    if not g:
        raise DataError(f"group_pattern {pattern.pattern!r} gives an empty group for {name!r}", source=where)
    return str(g)


def _hashable(label: Any) -> Hashable:
    if isinstance(label, np.ndarray):
        return tuple(int(v) for v in label.ravel())
    if isinstance(label, (list, tuple)):
        return tuple(label)
    if isinstance(label, np.generic):
        return label.item()
    return label


def _group(patients: Sequence[str]) -> tuple[list[str], dict[str, list[int]]]:
    """Unique patients in first-seen order and their case indices."""
    cases: dict[str, list[int]] = {}
    for i, p in enumerate(patients):
        cases.setdefault(str(p), []).append(i)
    return list(cases), cases


def _patient_strata(uniq: list[str], cases: dict[str, list[int]], stratify: Sequence[Any] | None,
                    n: int) -> dict[str, Hashable]:
    """Patient-level label = most common case label (ties -> first seen); all one stratum without labels."""
    if stratify is None:
        return {p: 0 for p in uniq}
    if len(stratify) != n:
        raise ConfigError(f"stratify has {len(stratify)} labels but there are {n} cases")
    out: dict[str, Hashable] = {}
    for p in uniq:
        counts = Counter(_hashable(stratify[i]) for i in cases[p])
        out[p] = counts.most_common(1)[0][0]
    return out


def _ordered_strata(uniq: list[str], strata: dict[str, Hashable],
                    rng: np.random.Generator) -> list[list[str]]:
    """Patients grouped by stratum (strata in a stable order), each group shuffled by ``rng``."""
    groups: dict[Hashable, list[str]] = {}
    for p in sorted(uniq):
        groups.setdefault(strata[p], []).append(p)
    out = []
    for key in sorted(groups, key=repr):
        g = groups[key]
        out.append([g[j] for j in rng.permutation(len(g))])
    return out


def _allocate(n: int, fractions: Sequence[float]) -> list[int]:
    """Integer counts summing to ``n`` (largest remainder); non-zero fractions get >= 1 when n allows."""
    raw = [f * n for f in fractions]
    cnt = [int(np.floor(r)) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - cnt[i]), i))
    for i in order[: n - sum(cnt)]:
        cnt[i] += 1
    for i, f in enumerate(fractions):  # make sure a requested split is not empty
        if f > 0 and cnt[i] == 0:
            donor = max(range(len(cnt)), key=lambda j: cnt[j])
            if cnt[donor] > 1:
                cnt[donor] -= 1
                cnt[i] += 1
    return cnt


def _names(fractions: Sequence[float]) -> tuple[str, ...]:
    if len(fractions) == 3:
        return ("train", "val", "test")
    if len(fractions) == 2:
        return ("train", "test")
    raise ConfigError(f"fractions must have 2 (train, test) or 3 (train, val, test) values, got {fractions}")


def split_by_patient(patients: Sequence[str], fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0,
                     stratify: Sequence[Any] | None = None) -> dict[str, list[int]]:
    """Seeded patient-level split into ``train``/``val``/``test`` (or ``train``/``test`` for 2 fractions).

    With ``stratify`` (per-case labels) patients are split within each patient-level label stratum so
    class proportions are kept. Returns sorted case indices per split.
    """
    names = _names(fractions)
    fr = [float(f) for f in fractions]
    if any(f < 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise ConfigError(f"split fractions must be >= 0 and sum to 1, got {tuple(fractions)}")
    uniq, cases = _group(patients)
    strata = _patient_strata(uniq, cases, stratify, len(patients))
    rng = np.random.default_rng(seed)
    groups = _ordered_strata(uniq, strata, rng)
    out: dict[str, list[int]] = {k: [] for k in names}
    if stratify is None:
        counts = _allocate(len(uniq), fr)
        flat = groups[0] if groups else []
        pos = 0
        for name, c in zip(names, counts):
            for p in flat[pos: pos + c]:
                out[name] += cases[p]
            pos += c
    else:
        # proportional within strata; carry the rounding remainder across strata to keep totals exact
        total = len(uniq)
        target = _allocate(total, fr)
        done = [0] * len(names)
        seen = 0
        for g in groups:
            seen += len(g)
            want = _allocate(seen, fr)
            want = [min(w, t) for w, t in zip(want, target)]
            take = [max(w - d, 0) for w, d in zip(want, done)]
            while sum(take) < len(g):  # fill any shortfall into the split furthest below its target
                k = max(range(len(names)), key=lambda j: (target[j] - done[j] - take[j], -j))
                take[k] += 1
            while sum(take) > len(g):
                k = max(range(len(names)), key=lambda j: (take[j], j))
                take[k] -= 1
            pos = 0
            for k, name in enumerate(names):
                for p in g[pos: pos + take[k]]:
                    out[name] += cases[p]
                pos += take[k]
                done[k] += take[k]
    return {k: sorted(v) for k, v in out.items()}


def kfold_by_patient(patients: Sequence[str], k: int = 5, seed: int = 0, val_fraction: float = 0.2,
                     stratify: Sequence[Any] | None = None) -> list[dict[str, list[int]]]:
    """``k`` patient-level folds: fold ``i`` tests on patient group ``i``; the remaining patients are
    split ``1 - val_fraction`` / ``val_fraction`` into train / val (seeded, stratified when labels given).
    """
    if k < 2:
        raise ConfigError(f"k-fold needs k >= 2, got {k}")
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    uniq, cases = _group(patients)
    if len(uniq) < k:
        raise ConfigError(f"{k}-fold split needs at least {k} patients, got {len(uniq)}")
    strata = _patient_strata(uniq, cases, stratify, len(patients))
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    pos = 0
    for g in _ordered_strata(uniq, strata, rng):  # deal patients round-robin, continuing across strata
        for p in g:
            fold_of[p] = pos % k
            pos += 1
    folds = []
    for f in range(k):
        test_p = [p for p in uniq if fold_of[p] == f]
        rest_p = [p for p in uniq if fold_of[p] != f]
        rest_cases = [i for p in rest_p for i in cases[p]]
        rest_patients = [str(patients[i]) for i in rest_cases]
        rest_labels = None if stratify is None else [stratify[i] for i in rest_cases]
        if val_fraction > 0:
            inner = split_by_patient(rest_patients, (1 - val_fraction, val_fraction),
                                     seed=seed * 1000 + f + 1, stratify=rest_labels)
            train = sorted(rest_cases[j] for j in inner["train"])
            val = sorted(rest_cases[j] for j in inner["test"])
        else:
            train, val = sorted(rest_cases), []
        folds.append({"train": train, "val": val, "test": sorted(i for p in test_p for i in cases[p])})
    return folds


def check_leakage(splits: dict[str, Sequence[int]], patients: Sequence[str]) -> list[str]:
    """Patients whose cases appear in more than one split (sorted)."""
    where: dict[str, set[str]] = {}
    for name, idx in splits.items():
        for i in idx:
            where.setdefault(str(patients[i]), set()).add(name)
    return sorted(p for p, s in where.items() if len(s) > 1)


def validate_splits(splits: dict[str, Sequence[int]], patients: Sequence[str],
                    source: str | Path | None = None) -> None:
    """Raise :class:`DataError` on an empty split, an index out of range or a patient in two splits."""
    n = len(patients)
    for name, idx in splits.items():
        if len(idx) == 0:
            raise DataError(f"split {name!r} is empty", source=source)
        bad = [i for i in idx if not 0 <= int(i) < n]
        if bad:
            raise DataError(f"split {name!r} has case index {bad[0]} out of range for {n} cases",
                            source=source)
    first: dict[str, str] = {}
    for name, idx in splits.items():
        for i in idx:
            p = str(patients[i])
            other = first.setdefault(p, name)
            if other != name:
                raise DataError(f"patient {p} is in both {other} and {name}", source=source)


__all__ = ["check_leakage", "compile_group_pattern", "group_from_name", "kfold_by_patient", "split_by_patient",
           "validate_splits"]
