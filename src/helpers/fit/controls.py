"""The underfitting control: a generator that knows only the first-order
statistics of its training images — every pixel's mean and variance, pixels
drawn independently (``covariance="pixel"``, the control of the study).

It can neither copy (a draw lands on a training image with probability 0)
nor draw any structure beyond the mean image: every fit measure should call
it unfitted at every size.

``covariance="full"`` draws from the Gaussian with the training images'
whole pixel covariance instead (rank ≤ N − 1, sampled through the SVD of the
centred images: mean + z·(S/√(N−1))·Vᵀ). It is *not* the study's control:
on 4 phantom slices its draws are blends of the 4 slices that look like
brain slices (benchmarks/probe_fit_measures.py shows them), a model of the
4 images rather than a generator that learnt nothing.

Samples are clipped and rounded to uint8, as the models' samples are.

One seed per image, so any image can be drawn again on its own.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np


class GaussianControl:
    """The Gaussian fitted to ``training`` (uint8 N×C×H×W): independent pixels
    (``covariance="pixel"``) or the whole covariance (``"full"``)."""

    def __init__(self, training, covariance: str = "pixel"):
        array = np.asarray(training)
        if array.ndim != 4 or len(array) == 0:
            raise ValueError(f"Gaussian control: expected training images as N×C×H×W, got shape {array.shape}")
        if covariance not in ("pixel", "full"):
            raise ValueError(f"Gaussian control: covariance must be 'pixel' or 'full', not {covariance!r}")
        self.covariance = covariance
        self.shape = array.shape[1:]
        flat = array.reshape(len(array), -1).astype(np.float64)
        self.mean = flat.mean(axis=0)
        self.pixel_sd = flat.std(axis=0, ddof=1) if len(array) > 1 else np.zeros_like(self.mean)
        if covariance == "full" and len(array) > 1:
            _, s, vt = np.linalg.svd(flat - self.mean, full_matrices=False)
            self.components = (s / np.sqrt(len(array) - 1))[:, None] * vt     # rank × D
        else:
            self.components = np.zeros((0, flat.shape[1]))

    def sample(self, seeds: Sequence[int]) -> np.ndarray:
        """One uint8 image per seed (the image of a seed never depends on the others)."""
        out = np.empty((len(seeds), *self.shape), dtype=np.uint8)
        for i, seed in enumerate(seeds):
            rng = np.random.default_rng(int(seed))
            if self.covariance == "pixel":
                image = self.mean + rng.standard_normal(self.mean.shape) * self.pixel_sd
            else:
                image = self.mean + rng.standard_normal(len(self.components)) @ self.components
            out[i] = np.clip(np.rint(image), 0, 255).astype(np.uint8).reshape(self.shape)
        return out


#: the control's name in the model registry and its samples file
CONTROL_NAME = "gaussian_control"


def sample(run: str | os.PathLike, n_images: int, first_seed: int, batch_size: int, progress: bool = True) -> Path:
    """``samples/gaussian_control.npy`` (uint8 N×C×H×W) and its seeds: image
    i drawn with seed ``first_seed + i`` from the Gaussian of the run's
    ``data/train.npy`` (independent pixels). The training data it was fitted
    to is kept in ``samples/gaussian_control_sampler.json``; samples of
    other data are never mixed in or overwritten silently."""
    from ..common import read_json, write_json
    from ..layout import Run
    from ..sampling import finished_samples, sample_to_npy, samples_path
    from ..training import TrainingImages

    data = TrainingImages(Run(run).data.folder)
    control = GaussianControl(np.asarray(data.array))
    out = samples_path(run, CONTROL_NAME)
    partial = out.with_name(out.stem + ".partial.npy")
    record_path = out.with_name(f"{CONTROL_NAME}_sampler.json")
    what = {"covariance": control.covariance, "data": data.fingerprint(), "n_training": len(data)}
    if record_path.exists() and (out.exists() or partial.exists()):
        old = read_json(record_path)
        if {k: old.get(k) for k in what} != what:
            raise ValueError(f"{record_path}: the existing Gaussian-control samples were fitted to {old}, not "
                             f"{what}; remove {out.name} and {partial.name} in {out.parent} to sample again")
        if finished_samples(out, n_images, first_seed, control.shape):
            return out
    write_json(record_path, what)
    return sample_to_npy(lambda seeds: control.sample(seeds), out, n_images, first_seed, control.shape,
                         batch_size=batch_size, progress=progress, desc="Gaussian control")
