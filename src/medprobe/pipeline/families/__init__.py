"""Built-in task families, one module each (see :mod:`medprobe.pipeline.family`)."""
