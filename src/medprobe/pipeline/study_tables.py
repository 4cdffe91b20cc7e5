"""The study's tables (arXiv 2509.06467 v3, Tables 2-16 and the BCNB radar chart), row by row, as medprobe sees them.

One source: every printed row -- its method, the grid encoder that produces it, the input it ran on (Table 14), the
head and head parameters of the paper's protocol, whether it needs weights, or why medprobe cannot produce it -- is
read from the reference tables (:func:`medprobe.report.reference.paper_cells` and ``protocols``:
``report/paper_tables.json``). This module adds only what that file does not hold: which tasks of the study sweep
make each table (by their study keys, :func:`~medprobe.report.reference.match_task`), the grid's heads that never
run the encoder, medprobe-side notes, and Fig. 3 (BCNB: a radar chart without printed numbers, so no cells; its rows
are the whole-slide rows of Table 3). ``medprobe study`` prints its coverage table by table from this. Torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from medprobe.report.reference import Cell, paper_cells, paper_tables, protocols


@dataclass(frozen=True)
class StudyRow:
    """One printed row: ``encoder`` (a grid encoder; None: encoder-free) produces it under ``protocols`` (keys of
    :func:`~medprobe.report.reference.protocols`), or ``reason`` says why medprobe does not.

    ``heads``: the heads of the row's protocols (e.g. ``identity`` = "Unregistered"); ``inputs`` the input ablation
    value (Table 14); ``needs_weights`` False for encoder-free rows; ``note``: a caveat on a row medprobe produces."""

    method: str
    encoder: str | None = None
    reason: str = ""
    heads: tuple[str, ...] = ()
    inputs: str | None = None
    needs_weights: bool = True
    note: str = ""
    protocols: tuple[str, ...] = ()

    @property
    def supported(self) -> bool:
        return not self.reason

    @property
    def matches(self) -> list[Mapping[str, Any]]:
        """What a medprobe cell must have to run this row (one per protocol; see ``Protocol.match``)."""
        prots = protocols()
        return [m for m in (prots[k].match for k in self.protocols) if m is not None]


@dataclass(frozen=True)
class StudyTable:
    """One table of the study: its tasks (study keys), the heads of its protocols, its printed rows."""

    key: str
    title: str
    tasks: tuple[str, ...]
    heads: tuple[str, ...]
    rows: tuple[StudyRow, ...]
    encoder_free_heads: tuple[str, ...] = ()  # heads of these tasks that never run the encoder (weights unused)
    not_supported: tuple[str, ...] = ()  # parts of the table medprobe cannot produce, each with its reason
    note: str = ""

    @property
    def short(self) -> str:
        """The title up to its first parenthesis: ``Table 7. EndoVis 2018``."""
        return self.title.split(" (")[0]


# what the reference file does not hold: the study sweep's tasks (study keys) that make each printed table
TABLE_TASKS: dict[str, tuple[str, ...]] = {
    "2": ("nih14", "rsna-pneumonia"),
    "3": ("camelyon16",),
    "4": ("camelyon16-to-17",),
    "5": ("kvasir-capsule",),
    "6": ("autolaparo",),
    "7": ("endovis2018",),
    "8": ("edd2020",),
    "9": ("ct-rate",),
    "10-11": ("msd-braintumour", "msd-heart", "msd-liver", "msd-hippocampus", "msd-prostate", "msd-lung",
              "msd-pancreas", "msd-hepaticvessel", "msd-spleen", "msd-colon"),
    "12": ("cremi-a", "cremi-b", "cremi-c"),
    "13": ("ac3-ac4",),
    "14": ("autopet-ii", "hecktor2022"),
    "15": ("camus",),
    "16": ("acdc",),
}
# heads of the grid that never run the encoder (medprobe's, not the paper's: affine is medprobe's extra baseline)
ENCODER_FREE_HEADS: dict[str, tuple[str, ...]] = {"15": ("identity", "affine"), "16": ("identity", "affine")}
# medprobe-side notes printed with a table's coverage (the paper's own caveats are the reference file's notes)
NOTES: dict[str, str] = {
    "14": "the study does not say how CT and PET were fused (medprobe: features of each, concatenated)",
    "fig3": "the study prints no BCNB number: rows run, nothing to compare them with",
}
FIG3 = ("fig3", "Fig. 3. BCNB, 5 biomarkers, 5-fold CV, ABMIL (radar chart only)",
        ("bcnb-aln", "bcnb-er", "bcnb-pr", "bcnb-her2", "bcnb-ki67"), "3")  # key, title, tasks, rows as Table ...


def _reason(row: str, whys: list[str]) -> str:
    """A row's cells' reasons, once each, without the method's name in front (rows with one reason group)."""
    return "; ".join(dict.fromkeys(w.removeprefix(f"{row}: ") for w in whys))


def _rows(table: str) -> tuple[tuple[StudyRow, ...], tuple[str, ...]]:
    """The printed rows of a table (from its cells) and the parts of producible rows medprobe cannot produce."""
    prots = protocols()
    by_row: dict[tuple[str, str | None], list[Cell]] = {}
    for c in paper_cells(table):
        by_row.setdefault((c.row, c.variant), []).append(c)
    rows: list[StudyRow] = []
    parts: dict[str, tuple[list[str], list[str]]] = {}  # why -> (columns, rows) of producible rows' other cells
    for (row, _), cells in by_row.items():
        ok = [c for c in cells if c.why is None and prots[c.protocol].match is not None]
        enc = next((c.encoder for c in cells if c.encoder), None)
        if not ok:
            whys = [c.why or prots[c.protocol].text for c in cells]
            rows.append(StudyRow(cells[0].label, enc, reason=_reason(row, whys)))
            continue
        keys = tuple(dict.fromkeys(c.protocol for c in ok))
        matches = [m for m in (prots[k].match for k in keys) if m is not None]
        free = all(m.get("encoder_free") for m in matches)
        inputs = next((str(m["inputs"]) for m in matches if m.get("inputs")), None)
        rows.append(StudyRow(cells[0].label, None if free else enc, heads=tuple(dict.fromkeys(m["head"] for m in
                             matches)), inputs=inputs, needs_weights=not free, protocols=keys))
        for c in cells:
            if c not in ok:
                cols, who = parts.setdefault(c.why or prots[c.protocol].text, ([], []))
                cols.append(c.column) if c.column not in cols else None
                who.append(c.label) if c.label not in who else None
    return tuple(rows), tuple(f"{', '.join(cols)} of {', '.join(who)} -- {why}" for why, (cols, who) in parts.items())


def _title(table: str, title: str) -> str:
    return f"{'Tables' if '-' in table else 'Table'} {table}. {title}"


def _build() -> tuple[StudyTable, ...]:
    out: list[StudyTable] = []
    for pt in paper_tables():
        rows, parts = _rows(pt.id)
        heads = tuple(dict.fromkeys(h for r in rows for h in r.heads))
        out.append(StudyTable(pt.id, _title(pt.id, pt.title), TABLE_TASKS.get(pt.id, ()), heads, rows,
                              ENCODER_FREE_HEADS.get(pt.id, ()), parts, NOTES.get(pt.id, "")))
        if pt.id == FIG3[3]:
            key, title, tasks, _ = FIG3
            out.append(StudyTable(key, title, tasks, heads, tuple(r for r in rows if r.supported),
                                  note=NOTES.get(key, "")))
    return tuple(out)


STUDY_TABLES: tuple[StudyTable, ...] = _build()


def table_of(study_key: str | None) -> StudyTable | None:
    """The study table a sweep task (by its study key) belongs to, or None."""
    return next((t for t in STUDY_TABLES if study_key in t.tasks), None)


__all__ = ["ENCODER_FREE_HEADS", "NOTES", "STUDY_TABLES", "TABLE_TASKS", "StudyRow", "StudyTable", "table_of"]
