"""Task pipelines: wire data -> preprocess -> encoder -> cached features -> heads -> metrics -> results.

A task is a small YAML parsed into a typed :class:`TaskSpec` (:func:`parse_task` / :func:`load_task`);
:func:`run_task` runs it through its task family (:mod:`medprobe.pipeline.family`) and returns the rows.
Importing this package does not import torch.
"""

from __future__ import annotations

from typing import Any

from medprobe.pipeline.task import TaskSpec, load_task, parse_task

__all__ = ["TaskSpec", "load_task", "parse_task", "run_task"]


def run_task(spec: TaskSpec, **kw: Any) -> list[dict[str, Any]]:
    """Run a task of any family (see :func:`medprobe.pipeline.run.run_task`)."""
    from medprobe.pipeline.run import run_task as _run

    return _run(spec, **kw)
