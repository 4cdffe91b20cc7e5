"""medprobe: benchmark frozen vision foundation models as universal encoders for medical imaging.

One-way flow: data -> preprocess -> encoders -> features (cache) -> heads -> metrics -> results -> report.

From a notebook: ``rows = medprobe.run("tasks/pneumoniamnist.yaml")`` runs a task, and
``medprobe.results.load()`` gives the results database as a pandas data frame. Importing medprobe does not
import torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medprobe.version import FEATURE_FORMAT_VERSION, __version__


def run(task: Any, db: Any = None, verbose: bool = True, rerun: bool = False) -> list[dict[str, Any]]:
    """Run one task and return the rows it wrote to the results database (one per head: ``run_id``, ``head``,
    ``metrics`` {name: (value, low, high)}, ``record``).

    ``task``: a :class:`~medprobe.pipeline.TaskSpec`, a task YAML path, or a mapping of task options (as in a
    YAML file); ``db``: a :class:`~medprobe.results.ResultsDB` or a database path (default
    ``./medprobe-results/results.db``); ``rerun``: run heads whose row is already stored again."""
    from medprobe.errors import ConfigError
    from medprobe.pipeline.task import TaskSpec, load_task, parse_task

    source: str | None = None
    if isinstance(task, TaskSpec):
        spec = task
    elif isinstance(task, (str, Path)):
        spec, source = load_task(task), str(task)
    elif isinstance(task, Mapping):
        spec = parse_task({"name": "python", **task}, source="medprobe.run")
    else:
        raise ConfigError(f"medprobe.run: task must be a TaskSpec, a YAML path or a mapping, got "
                          f"{type(task).__name__}")
    from medprobe.pipeline.run import run_task
    from medprobe.results import ResultsDB

    rdb = ResultsDB(db) if isinstance(db, (str, Path)) else db
    return run_task(spec, db=rdb, verbose=verbose, source=source, rerun=rerun)


__all__ = ["FEATURE_FORMAT_VERSION", "__version__", "run"]
