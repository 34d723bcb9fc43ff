"""The underfitting control: a generator that knows only the first- and
second-order statistics of its training images.

Samples are drawn from the Gaussian with the training images' mean and
pixel covariance (every channel together, in 0–255 units), then clipped and
rounded to uint8 as the models' samples are. The covariance of N images has
rank at most N − 1, so the Gaussian is sampled through the SVD of the
centred images: mean + z·(S/√(N−1))·Vᵀ with z standard normal. It can
neither copy (a draw lands on a training image with probability 0) nor draw
anatomy it was not given as a mean or a principal component: every fit
measure should call it unfitted at every size.

One seed per image, so any image can be drawn again on its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class GaussianControl:
    """The Gaussian fitted to ``training`` (uint8 N×C×H×W)."""

    def __init__(self, training):
        array = np.asarray(training)
        if array.ndim != 4 or len(array) == 0:
            raise ValueError(f"Gaussian control: expected training images as N×C×H×W, got shape {array.shape}")
        self.shape = array.shape[1:]
        flat = array.reshape(len(array), -1).astype(np.float64)
        self.mean = flat.mean(axis=0)
        if len(array) > 1:
            _, s, vt = np.linalg.svd(flat - self.mean, full_matrices=False)
            self.components = (s / np.sqrt(len(array) - 1))[:, None] * vt     # rank × D
        else:
            self.components = np.zeros((0, flat.shape[1]))

    def sample(self, seeds: Sequence[int]) -> np.ndarray:
        """One uint8 image per seed (the image of a seed never depends on the others)."""
        out = np.empty((len(seeds), *self.shape), dtype=np.uint8)
        for i, seed in enumerate(seeds):
            z = np.random.default_rng(int(seed)).standard_normal(len(self.components))
            image = self.mean + z @ self.components
            out[i] = np.clip(np.rint(image), 0, 255).astype(np.uint8).reshape(self.shape)
        return out
