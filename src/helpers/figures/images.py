"""Image grids: random samples beside random training images (figure 4) and
the montage the data, training and sampling notebooks show."""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np

from ..sampling import load_samples
from .results import load_images, load_meta, shown_channel
from .style import MODELS, display_name


def montage(
    images: np.ndarray,
    n: int = 16,
    channel_names: Sequence[str] | None = None,
    seed: int = 0,
    title: str | None = None,
    indices: Sequence[int] | None = None,
    cell_inches: float = 1.1,
):
    """A grid of ``n`` images (rows) × channels (columns) from an N×C×H×W
    (or N×H×W) uint8 array; random rows drawn with ``seed`` unless
    ``indices`` are given. Returns the matplotlib Figure."""
    images = np.asarray(images) if not isinstance(images, np.memmap) else images
    if images.ndim == 3:
        images = images[:, None]
    if len(images) == 0:
        raise ValueError("montage: no images to show")
    if indices is None:
        rng = np.random.default_rng(seed)
        indices = np.sort(rng.choice(len(images), size=min(n, len(images)), replace=False))
    indices = list(indices)
    channels = images.shape[1]
    names = list(channel_names) if channel_names else [f"ch{c}" for c in range(channels)]
    fig, axes = plt.subplots(
        len(indices), channels, figsize=(cell_inches * channels, cell_inches * len(indices)), squeeze=False
    )
    for row, idx in enumerate(indices):
        for col in range(channels):
            ax = axes[row, col]
            ax.imshow(np.asarray(images[idx, col]), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(names[col], fontsize=8)
            if col == 0:
                ax.set_ylabel(str(idx), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _grid(subfig, images: np.ndarray, indices: Sequence[int], ch: int, title: str) -> None:
    side = max(1, math.ceil(math.sqrt(len(indices))))
    axes = subfig.subplots(side, side, squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.set_axis_off()
        if k < len(indices):
            ax.imshow(np.asarray(images[indices[k], ch]), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    subfig.suptitle(title, fontsize=9)


def plot_sample_grids(results_dir, models: Sequence[str] = MODELS, n: int = 16, channel: str | None = None,
                      seed: int = 0):
    """Random training images beside random samples of each model (one
    channel: ``channel``, or the headline measure's), so a reader can judge
    realism and variety at a glance."""
    meta = load_meta(results_dir)
    ch = shown_channel(results_dir, channel)
    sources = [("training (random)", load_images(results_dir, "train"))]
    sources += [(f"{display_name(m)} samples (random)", load_samples(results_dir, m)[0]) for m in models]
    rng = np.random.default_rng(seed)
    fig = plt.figure(figsize=(3.2 * len(sources), 3.4))
    subfigs = fig.subfigures(1, len(sources), squeeze=False)[0]
    for sub, (title, images) in zip(subfigs, sources):
        idx = np.sort(rng.choice(len(images), size=min(n, len(images)), replace=False))
        _grid(sub, images, idx, ch, title)
    name = meta["channels"][ch] if meta.get("channels") else ch
    fig.text(0.5, -0.02, f"channel '{name}'; random draw with seed {seed}", ha="center", fontsize=7)
    return fig

