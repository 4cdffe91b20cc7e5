"""Registration metrics: Jacobian determinant, folding, label warping, and Dice/HD95/ASD of warped labels.

Displacement fields are arrays ``disp`` of shape ``(ndim, *spatial)``; ``disp[k]`` is the displacement along
array axis ``k``, in voxels by default (``units="mm"``: millimetres, converted with ``spacing``).

Convention (backward warping, as in VoxelMorph/MONAI ``Warp``): the warped image is
``output(x) = input(x + disp(x))``, and the transform whose Jacobian is measured is ``phi(x) = x + disp(x)``.
For a voxel-unit field the determinant does not depend on the spacing: with S = diag(spacing),
det(I + S D S⁻¹) = det(I + D).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from medprobe.errors import ConfigError, DataError
from medprobe.metrics.segmentation import _spacing, segmentation_metrics

__all__ = ["folding_fraction", "jacobian_determinant", "landmark_tre", "pair_metrics", "registration_metrics",
           "warp_labels"]


def _voxel_disp(
    disp: np.ndarray, spacing: float | Sequence[float] | None, units: str
) -> tuple[np.ndarray, tuple[float, ...]]:
    disp = np.asarray(disp)
    if disp.ndim < 2 or disp.shape[0] != disp.ndim - 1:
        raise DataError(f"displacement shape {disp.shape} must be (ndim, *spatial) with ndim spatial axes")
    if not np.issubdtype(disp.dtype, np.floating):
        disp = disp.astype(np.float64)
    sp = _spacing(spacing, disp.shape[0])
    if units == "voxel":
        return disp, sp
    if units == "mm":
        scale = np.asarray(sp, dtype=disp.dtype).reshape((-1,) + (1,) * (disp.ndim - 1))
        return disp / scale, sp
    raise ConfigError(f"units {units!r} must be 'voxel' or 'mm'")


def jacobian_determinant(
    disp: np.ndarray, spacing: float | Sequence[float] | None = None, units: str = "voxel"
) -> np.ndarray:
    """det(∂phi/∂x) at every voxel, phi(x) = x + disp(x); derivatives by ``np.gradient``.

    Central differences inside, one-sided first-order differences at the border (exact for affine fields).
    Returns an array of the spatial shape. ``spacing`` only matters for ``units="mm"``.
    """
    u, _ = _voxel_disp(disp, spacing, units)
    n = u.shape[0]
    if min(u.shape[1:]) < 2:
        raise DataError(f"displacement spatial shape {u.shape[1:]} needs at least 2 voxels per axis")
    # J[i][j] = d phi_i / d x_j = delta_ij + d u_i / d x_j
    jac = [list(np.gradient(u[i])) if n > 1 else [np.gradient(u[i])] for i in range(n)]
    for i in range(n):
        jac[i][i] = jac[i][i] + 1.0
    if n == 2:
        return jac[0][0] * jac[1][1] - jac[0][1] * jac[1][0]
    if n == 3:
        return (
            jac[0][0] * (jac[1][1] * jac[2][2] - jac[1][2] * jac[2][1])
            - jac[0][1] * (jac[1][0] * jac[2][2] - jac[1][2] * jac[2][0])
            + jac[0][2] * (jac[1][0] * jac[2][1] - jac[1][1] * jac[2][0])
        )
    mat = np.stack([np.stack(row, axis=-1) for row in jac], axis=-2)
    return np.linalg.det(mat)


def folding_fraction(
    disp: np.ndarray,
    spacing: float | Sequence[float] | None = None,
    units: str = "voxel",
    mask: np.ndarray | None = None,
) -> float:
    """Share of voxels (inside ``mask`` if given) whose Jacobian determinant is <= 0."""
    det = jacobian_determinant(disp, spacing, units)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != det.shape:
            raise DataError(f"mask shape {mask.shape} differs from displacement spatial shape {det.shape}")
        det = det[mask]
    return float(np.count_nonzero(det <= 0) / det.size) if det.size else float("nan")


def warp_labels(
    labels: np.ndarray,
    disp: np.ndarray,
    spacing: float | Sequence[float] | None = None,
    units: str = "voxel",
    fill: int = 0,
) -> np.ndarray:
    """Nearest-neighbour warp of a label map: ``output(x) = labels(x + disp(x))``.

    Samples outside the image take ``fill`` (background by default). Keeps the label dtype.
    """
    labels = np.asarray(labels)
    u, _ = _voxel_disp(disp, spacing, units)
    if u.shape[1:] != labels.shape:
        raise DataError(f"displacement spatial shape {u.shape[1:]} differs from label shape {labels.shape}")
    grid = np.indices(labels.shape, dtype=u.dtype)
    coords = grid + u
    out = ndimage.map_coordinates(labels, coords, order=0, mode="grid-constant", cval=fill, prefilter=False)
    return out.astype(labels.dtype, copy=False)


def registration_metrics(
    warped_moving_labels: np.ndarray,
    fixed_labels: np.ndarray,
    disp: np.ndarray,
    labels: Mapping[int, str] | Sequence[int],
    spacing: float | Sequence[float] | None,
    units: str = "voxel",
    empty_policy: str = "nan",
    include: Iterable[str] = ("dice", "hd95", "asd"),
) -> dict[str, float]:
    """Overlap/surface metrics of warped moving labels vs fixed labels, plus field regularity.

    Keys: ``<metric>/<class>`` and class means ``<metric>`` as in
    :func:`medprobe.metrics.segmentation.segmentation_metrics` (same empty-mask policy), plus
    ``folding_fraction`` (share of voxels with det J <= 0) and ``std_log_jacobian`` (standard deviation of
    log(clip(det J, 1e-9, 1e9)) over all voxels).
    """
    out = segmentation_metrics(
        warped_moving_labels, fixed_labels, labels, spacing, empty_policy=empty_policy, include=include
    )
    det = jacobian_determinant(disp, spacing, units)
    if det.shape != np.asarray(fixed_labels).shape:
        raise DataError(f"displacement spatial shape {det.shape} differs from label shape {fixed_labels.shape}")
    out["folding_fraction"] = float(np.count_nonzero(det <= 0) / det.size)
    out["std_log_jacobian"] = float(np.log(np.clip(det, 1e-9, 1e9)).std())
    return out


def landmark_tre(
    fixed_points: np.ndarray,
    moving_points: np.ndarray,
    disp: np.ndarray,
    spacing: float | Sequence[float] | None = None,
    units: str = "voxel",
) -> np.ndarray:
    """Target registration error per landmark, in mm: ``|| (x_f + disp(x_f) - x_m) * spacing ||``.

    Points are ``(N, ndim)`` voxel coordinates (fixed and corresponding moving landmarks on the fixed grid);
    the field is interpolated linearly at the fixed points.
    """
    u, sp = _voxel_disp(disp, spacing, units)
    fp, mp = np.asarray(fixed_points, dtype=np.float64), np.asarray(moving_points, dtype=np.float64)
    if fp.shape != mp.shape or fp.ndim != 2 or fp.shape[1] != u.shape[0]:
        raise DataError(f"landmarks {fp.shape} and {mp.shape} must both be (N, {u.shape[0]})")
    at = np.stack([ndimage.map_coordinates(u[k], fp.T, order=1, mode="nearest") for k in range(u.shape[0])], 1)
    return np.linalg.norm((fp + at - mp) * np.asarray(sp), axis=1)


def pair_metrics(
    warped_moving_labels: np.ndarray | None,
    fixed_labels: np.ndarray | None,
    disp: np.ndarray,
    labels: Mapping[int, str] | Sequence[int],
    spacing: float | Sequence[float] | None,
    landmarks: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, float]:
    """Everything scored for one registered pair: Dice, HD95 and ASD in mm and in pixels (``*_px``) of the
    warped labels (when labels exist), mean landmark TRE in mm (when landmarks exist), folding in % and the
    standard deviation of log det J."""
    det = jacobian_determinant(disp)
    out: dict[str, float] = {"folding_pct": float(100.0 * np.count_nonzero(det <= 0) / det.size),
                             "std_log_jacobian": float(np.log(np.clip(det, 1e-9, 1e9)).std())}
    if warped_moving_labels is not None and fixed_labels is not None:
        mm = segmentation_metrics(warped_moving_labels, fixed_labels, labels, spacing, include=("dice", "hd95", "asd"))
        px = segmentation_metrics(warped_moving_labels, fixed_labels, labels, None, include=("hd95", "asd"))
        out.update(mm)
        out.update({f"{k.split('/')[0]}_px" + (f"/{k.split('/', 1)[1]}" if "/" in k else ""): v
                    for k, v in px.items()})
    if landmarks is not None:
        out["tre_mm"] = float(landmark_tre(landmarks[0], landmarks[1], disp, spacing).mean())
    return out
