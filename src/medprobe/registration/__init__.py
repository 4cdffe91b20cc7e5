"""Image registration at head level: MIND-SSC descriptors, the ConvexAdam optimiser on any feature channels,
affine and identity baselines, warping helpers, and DINO-Reg style dense encoder features."""

from medprobe.registration.convexadam import ConvexAdamConfig, convex_adam
from medprobe.registration.mind import mind_ssc
from medprobe.registration.warp import affine_register, warp_image

__all__ = ["ConvexAdamConfig", "affine_register", "convex_adam", "mind_ssc", "warp_image"]
