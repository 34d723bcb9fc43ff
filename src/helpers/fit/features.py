"""A fixed feature space for the fit measures: a random convolutional
network with a recorded seed, standardized on real images only.

Why not pixels: an average (blurry) image is close in ℓ2 to every image, so
nearest-neighbour measures in pixel space reward blur. Why not a pretrained
network: nothing may be downloaded at run time, and ImageNet features know
nothing of 5-channel MR slices. Random convolutional features keep what
blur and noise destroy — the local contrast and edge statistics of every
channel, at several scales — and the network is the same for every model,
size and run (Naeem et al., ICML 2020, show that randomly initialised
embeddings rank generators as pretrained ones do).

Two embeddings of one network. ``"full"``: for each of four conv → ReLU →
2×2-pool stages, the spatial mean and standard deviation of every feature
map, plus the last stage pooled to 2×2 (coarse layout: where the anatomy
is). ``"texture"``: the standard deviations of the first two stages only —
local contrast and edges, blind to layout, so that a new subject does not
stand out for being a new subject while blur and noise do (measured on the
phantom: benchmarks/probe_fit_measures.py). Features are then standardized with the mean and
standard deviation of a *real* reference set, so no model's samples move
the space the models are measured in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

#: widths of the four stages; the seed of their weights
WIDTHS = (32, 64, 128, 256)
EMBEDDING_SEED = 20231105
EMBEDDINGS = ("full", "texture")


class _RandomNet(nn.Module):
    """Four 3×3 conv stages with fixed random weights (He-normal), never trained."""

    def __init__(self, in_channels: int, widths=WIDTHS, seed: int = EMBEDDING_SEED):
        super().__init__()
        generator = torch.Generator().manual_seed(int(seed) + 7919 * int(in_channels))
        self.convs = nn.ModuleList()
        previous = in_channels
        for width in widths:
            conv = nn.Conv2d(previous, width, 3, padding=1, padding_mode="reflect")
            with torch.no_grad():
                conv.weight.normal_(0.0, (2.0 / (previous * 9)) ** 0.5, generator=generator)
                conv.bias.normal_(0.0, 0.1, generator=generator)
            self.convs.append(conv)
            previous = width
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor, kind: str = "full") -> torch.Tensor:
        if kind == "texture":
            parts = []
            for conv in self.convs[:2]:
                x = F.relu(conv(x))
                parts.append(x.std(dim=(2, 3), unbiased=False))
                x = F.avg_pool2d(x, 2)
            return torch.cat(parts, dim=1)
        parts = []
        for conv in self.convs:
            x = F.relu(conv(x))
            parts += [x.mean(dim=(2, 3)), x.std(dim=(2, 3), unbiased=False)]
            if min(x.shape[-2:]) >= 4:
                x = F.avg_pool2d(x, 2)
        parts.append(F.adaptive_avg_pool2d(x, 2).flatten(1))
        return torch.cat(parts, dim=1)


def _check_images(images, what: str) -> np.ndarray:
    array = np.asarray(images)
    if array.ndim != 4:
        raise ValueError(f"{what}: expected images as N×C×H×W, got shape {array.shape}")
    if len(array) == 0:
        raise ValueError(f"{what}: no images")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).reshape(len(array), -1).any(axis=1).sum())
        raise ValueError(f"{what}: {bad} of {len(array)} images hold NaN or Inf (a diverged model?)")
    return array


def raw_embedding(images, *, kind: str = "full", batch_size: int = 256, seed: int = EMBEDDING_SEED,
                  what: str = "images") -> np.ndarray:
    """Unstandardized random-CNN features (float64, N × F) of uint8 images
    (or floats on 0–255), N×C×H×W of any channel count and size ≥ 8."""
    if kind not in EMBEDDINGS:
        raise ValueError(f"fit features: kind must be one of {EMBEDDINGS}, not {kind!r}")
    array = _check_images(images, what)
    if min(array.shape[-2:]) < 8:
        raise ValueError(f"{what}: images of {array.shape[-2]}×{array.shape[-1]} are too small for the fit features (≥ 8×8)")
    net = _RandomNet(array.shape[1], seed=seed).eval()
    out = []
    with torch.no_grad():
        for lo in range(0, len(array), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(array[lo:lo + batch_size], dtype=np.float32))
            out.append(net(batch / 127.5 - 1.0, kind).double().numpy())
    return np.concatenate(out)


@dataclass(frozen=True)
class FeatureSpace:
    """The random-CNN embedding standardized on one set of real images."""

    mean: np.ndarray
    scale: np.ndarray
    kind: str = "full"
    seed: int = EMBEDDING_SEED

    @classmethod
    def fit(cls, real_images, *, kind: str = "full", seed: int = EMBEDDING_SEED) -> FeatureSpace:
        raw = raw_embedding(real_images, kind=kind, seed=seed, what="real reference images")
        scale = raw.std(axis=0)
        # a feature that no real image varies in carries no information: unit scale keeps it finite
        scale = np.where(scale > 1e-12, scale, 1.0)
        return cls(mean=raw.mean(axis=0), scale=scale, kind=kind, seed=seed)

    def embed(self, images, *, what: str = "images") -> np.ndarray:
        return (raw_embedding(images, kind=self.kind, seed=self.seed, what=what) - self.mean) / self.scale
