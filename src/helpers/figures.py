"""Plots and tables from result files (seaborn/matplotlib).

It reads arrays and tables that other steps wrote; it never runs a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


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


def plot_loss_log(log: pd.DataFrame | str | Path, columns: Sequence[str], x: str = "step", title: str | None = None,
                  smooth: int = 1):
    """Training curves from a loss-log CSV: one panel per column, raw values
    faint and a running mean over ``smooth`` rows on top."""
    frame = pd.read_csv(log) if isinstance(log, (str, Path)) else log
    columns = [c for c in columns if c in frame.columns]
    fig, axes = plt.subplots(1, max(len(columns), 1), figsize=(4 * max(len(columns), 1), 3), squeeze=False)
    for ax, column in zip(axes[0], columns):
        ax.plot(frame[x], frame[column], alpha=0.3 if smooth > 1 else 1.0, lw=0.8)
        if smooth > 1:
            ax.plot(frame[x], frame[column].rolling(smooth, min_periods=1).mean(), lw=1.5)
        ax.set_xlabel(x)
        ax.set_title(column, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def save_figure(fig, out_dir: str | Path, name: str, pdf: bool = True) -> list[Path]:
    """Save ``fig`` as ``<name>.png`` (and ``.pdf``) under ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    if pdf:
        paths.append(out_dir / f"{name}.pdf")
        fig.savefig(paths[1], bbox_inches="tight")
    return paths
