"""User-facing errors: one clear line naming the file (or case) and the problem."""

from __future__ import annotations

from pathlib import Path


class MedprobeError(Exception):
    """An error caused by the user's input; the CLI prints ``str(err)`` as one line and exits non-zero."""

    def __init__(self, problem: str, source: str | Path | None = None) -> None:
        self.problem = problem
        self.source = str(source) if source is not None else None
        msg = f"{self.source}: {problem}" if self.source else problem
        super().__init__(" ".join(msg.split("\n")))


class DataError(MedprobeError):
    """A file, row or case of a dataset is missing, unreadable or inconsistent."""


class WeightsError(MedprobeError):
    """Weights are missing, corrupt, mis-hashed or do not match the architecture."""


class ConfigError(MedprobeError):
    """An option, task spec or name is not valid."""
