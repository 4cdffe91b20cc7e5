"""Generations of the heads whose own computation changed after the defaults epoch (torch-free, read by
:meth:`medprobe.pipeline.task.TaskSpec.config_hash`): a head listed here hashes with its generation, so a row
stored before the change is not taken for a new run's result, and no other head's hash moves.

* ``affinity`` 1: the seed threshold is searched with the merge threshold, grids widened at an edge choice;
* ``convexadam`` 1, ``affine`` 1: MIND-SSC and the Adam step bitwise the convexAdam package's (the fields move
  on real pairs);
* ``decoder2d`` 1, ``decoder3d`` 1: a class the prediction misses is scored (HD95 / ASD = the image diagonal,
  ``metrics.empty_prediction: worst``) instead of silently left out, and counted in the record; rows without an
  empty prediction score as before. (The dense ``linear`` head shares its name with the vector ``linear`` head,
  whose hash must not move: its segmentation rows stored before keep their hash; such a row has no
  ``notes.empty_predictions``.)
"""

from __future__ import annotations

HEAD_GENERATIONS: dict[str, int] = {"affinity": 1, "convexadam": 1, "affine": 1, "decoder2d": 1, "decoder3d": 1}

__all__ = ["HEAD_GENERATIONS"]
