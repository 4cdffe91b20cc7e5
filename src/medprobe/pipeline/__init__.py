"""Task pipelines: wire data -> preprocess -> encoder -> cached features -> heads -> metrics -> results.

A task is a small YAML (:class:`TaskSpec`); :func:`run_task` runs it and returns the result rows.
"""

from medprobe.pipeline.task import TaskSpec, load_task

__all__ = ["TaskSpec", "load_task", "run_task"]


def run_task(spec: TaskSpec, **kw):  # type: ignore[no-untyped-def]
    """Run a task spec of any kind (classification or segmentation)."""
    if spec.kind == "segmentation":
        from medprobe.pipeline.segmentation import run_segmentation

        return run_segmentation(spec, **kw)
    from medprobe.pipeline.classification import run_classification

    return run_classification(spec, **kw)
