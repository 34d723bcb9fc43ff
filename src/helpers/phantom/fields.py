"""Smooth random fields, shared by the brain and the chest generators
(deformations, bias fields, tumour lobes, lung markings)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _smooth_field(rng: np.random.Generator, shape, coarse, sigma=1.0) -> np.ndarray:
    """A smooth random field of unit-ish amplitude: coarse Gaussian noise,
    blurred, then trilinearly upsampled to ``shape`` (cheap at any size)."""
    import torch
    import torch.nn.functional as F

    noise = ndimage.gaussian_filter(rng.standard_normal(coarse), sigma, mode="wrap")
    noise /= noise.std() + 1e-8
    coarse_t = torch.from_numpy(noise.astype(np.float32))[None, None]
    out = F.interpolate(coarse_t, size=tuple(int(s) for s in shape), mode="trilinear",
                        align_corners=True)
    return out[0, 0].numpy()
