"""Registration methods as pair-input heads (``registration`` task): ``identity``, ``affine`` and
``convexadam`` (on ``features``: ``mind``, ``intensity``, ``dino`` or ``dino+mind``). A head takes a fixed
and a moving image on one grid (plus, for ``dino``, an encoder) and returns the voxel displacement
``(ndim, *spatial)`` and timings split into feature extraction and optimisation."""

from __future__ import annotations

import time
from typing import Any, ClassVar

import numpy as np
import torch
from scipy import ndimage

from medprobe.errors import ConfigError
from medprobe.heads.base import register_head
from medprobe.registration.convexadam import ConvexAdamConfig, convex_adam
from medprobe.registration.dino import encoder_dense, joint_pca, normalise_intensity
from medprobe.registration.mind import mind_ssc
from medprobe.registration.warp import affine_register
from medprobe.utils import torch_seeded

__all__ = ["AffineHead", "ConvexAdamHead", "IdentityHead", "RegistrationHead"]

FEATURES = ("mind", "intensity", "dino", "dino+mind")


class RegistrationHead:
    """Base of pair heads: ``register(fixed, moving, encoder=None) -> (disp, timings)``."""

    name: ClassVar[str] = ""
    input_kind: ClassVar[str] = "pair"
    tasks: ClassVar[tuple[str, ...]] = ("registration",)
    outputs: ClassVar[tuple[str, ...]] = ("displacement",)
    needs_encoder: ClassVar[bool] = False

    def get_params(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.endswith("_")}

    def register(self, fixed: np.ndarray, moving: np.ndarray, encoder: Any = None
                 ) -> tuple[np.ndarray, dict[str, float]]:
        raise NotImplementedError


@register_head("identity")
class IdentityHead(RegistrationHead):
    """No deformation (the lower bound every method must beat)."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def register(self, fixed: np.ndarray, moving: np.ndarray, encoder: Any = None
                 ) -> tuple[np.ndarray, dict[str, float]]:
        return np.zeros((fixed.ndim, *fixed.shape), np.float32), {"features_s": 0.0, "optimise_s": 0.0}


@register_head("affine")
class AffineHead(RegistrationHead):
    """Affine transform fitted by Adam on MIND-SSC maps, coarse to fine, from the intensity centre-of-mass
    translation (``com_init``)."""

    def __init__(self, iters: int = 100, lr: float = 0.01, levels: int = 2, com_init: bool = True,
                 seed: int = 0) -> None:
        self.iters, self.lr, self.levels, self.com_init, self.seed = iters, lr, levels, com_init, seed

    def register(self, fixed: np.ndarray, moving: np.ndarray, encoder: Any = None
                 ) -> tuple[np.ndarray, dict[str, float]]:
        t0 = time.perf_counter()
        nf, nm = normalise_intensity(fixed), normalise_intensity(moving)
        ff, fm = mind_ssc(nf)[0], mind_ssc(nm)[0]
        t1 = time.perf_counter()
        shift = np.subtract(ndimage.center_of_mass(nm), ndimage.center_of_mass(nf)) if self.com_init else None
        with torch_seeded(self.seed):
            disp = affine_register(ff, fm, self.iters, self.lr, self.levels, init_shift=shift)
        return disp, {"features_s": t1 - t0, "optimise_s": time.perf_counter() - t1}


@register_head("convexadam")
class ConvexAdamHead(RegistrationHead):
    """ConvexAdam on the chosen feature channels (DINO-Reg when ``features`` has ``dino``: slice-wise encoder
    features along ``axes``, joint PCA to ``pca_k`` channels, optionally with MIND concatenated)."""

    def __init__(self, features: str = "mind", grid_sp: int = 6, disp_hw: int = 4, lambda_weight: float = 1.25,
                 niter: int = 80, grid_sp_adam: int = 2, ic: bool = True, cost_scale: float = 12.0,
                 pca_k: int = 12, axes: str = "2", input_size: int = 224, layer: int = -1, seed: int = 0) -> None:
        if features not in FEATURES:
            raise ConfigError(f"convexadam features {features!r}: use one of {', '.join(FEATURES)}", "head_params")
        self.features, self.grid_sp, self.disp_hw, self.lambda_weight = features, grid_sp, disp_hw, lambda_weight
        self.niter, self.grid_sp_adam, self.ic, self.cost_scale = niter, grid_sp_adam, ic, cost_scale
        self.pca_k, self.axes, self.input_size, self.layer, self.seed = pca_k, axes, input_size, layer, seed
        self.pca_: dict[str, Any] = {}

    @property
    def needs_encoder(self) -> bool:  # type: ignore[override]
        """True when the features come from an encoder (``dino``, ``dino+mind``)."""
        return "dino" in self.features

    def config(self) -> ConvexAdamConfig:
        return ConvexAdamConfig(grid_sp=self.grid_sp, disp_hw=self.disp_hw, lambda_weight=self.lambda_weight,
                                niter=self.niter, grid_sp_adam=self.grid_sp_adam, ic=self.ic,
                                cost_scale=self.cost_scale)

    def pair_features(self, fixed: np.ndarray, moving: np.ndarray, encoder: Any = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """The feature channels both images are registered on, ``(C, *spatial)`` each."""
        nf, nm = normalise_intensity(fixed), normalise_intensity(moving)
        if self.features == "intensity":
            return torch.from_numpy(nf)[None], torch.from_numpy(nm)[None]
        parts_f, parts_m = [], []
        if "dino" in self.features:
            if encoder is None:
                raise ConfigError("convexadam with dino features needs an encoder", "head_params")
            axes = [int(a) for a in str(self.axes).replace(",", " ").split()] if fixed.ndim == 3 else [0]
            ef = encoder_dense(encoder, fixed, self.layer, axes, self.input_size)
            em = encoder_dense(encoder, moving, self.layer, axes, self.input_size)
            pf, pm, self.pca_ = joint_pca(ef, em, self.pca_k, seed=self.seed)
            parts_f.append(pf)
            parts_m.append(pm)
        if "mind" in self.features:
            parts_f.append(mind_ssc(nf)[0])
            parts_m.append(mind_ssc(nm)[0])
        return torch.cat(parts_f, 0), torch.cat(parts_m, 0)

    def register(self, fixed: np.ndarray, moving: np.ndarray, encoder: Any = None
                 ) -> tuple[np.ndarray, dict[str, float]]:
        t0 = time.perf_counter()
        ff, fm = self.pair_features(fixed, moving, encoder)
        t1 = time.perf_counter()
        with torch_seeded(self.seed):
            disp = convex_adam(ff, fm, self.config())
        return disp, {"features_s": t1 - t0, "optimise_s": time.perf_counter() - t1}


@register_head("elastix")
class ElastixHead(RegistrationHead):
    """Classical baseline: elastix (``itk-elastix``, optional extra ``medprobe[elastix]``) affine then B-spline
    on intensities (mutual information), in voxel units."""

    def __init__(self, grid_spacing: float = 8.0, iterations: int = 250, bspline: bool = True,
                 seed: int = 0) -> None:
        self.grid_spacing, self.iterations, self.bspline, self.seed = grid_spacing, iterations, bspline, seed

    def register(self, fixed: np.ndarray, moving: np.ndarray, encoder: Any = None
                 ) -> tuple[np.ndarray, dict[str, float]]:
        try:
            import itk
        except ImportError:
            raise ConfigError("head elastix needs itk-elastix: pip install 'medprobe[elastix]'", "heads") from None
        t0 = time.perf_counter()
        f = itk.image_from_array(np.ascontiguousarray(normalise_intensity(fixed)))
        m = itk.image_from_array(np.ascontiguousarray(normalise_intensity(moving)))
        params = itk.ParameterObject.New()
        maps = ["affine", "bspline"] if self.bspline else ["affine"]
        for name in maps:
            pm = params.GetDefaultParameterMap(name)
            pm["MaximumNumberOfIterations"] = [str(self.iterations)]
            pm["RandomSeed"] = [str(self.seed)]
            if name == "bspline":
                pm["FinalGridSpacingInPhysicalUnits"] = [str(self.grid_spacing)]
            params.AddParameterMap(pm)
        _, tp = itk.elastix_registration_method(f, m, parameter_object=params, log_to_console=False)
        field = np.asarray(itk.transformix_deformation_field(m, tp), dtype=np.float32)  # (*spatial, xyz)
        disp = np.moveaxis(field[..., ::-1], -1, 0).copy()  # ITK x is the last array axis
        return disp, {"features_s": 0.0, "optimise_s": time.perf_counter() - t0}
