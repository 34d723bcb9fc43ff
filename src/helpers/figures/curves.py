"""Figure 5: training curves from the loss logs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from .. import models as registry
from .results import load_loss_log
from .style import MODELS, display_name


def plot_training_curves(results_dir, models: Sequence[str] = MODELS, smooth: int = 5) -> dict:
    """One figure per model whose loss log exists (``{model: figure}``),
    against images seen when logged (comparable across models)."""
    out = {}
    for model in models:
        if not (Path(results_dir) / f"{model}/loss_log.csv").is_file():
            continue
        log = load_loss_log(results_dir, model)
        x = "images_seen" if "images_seen" in log.columns else "step"
        entry = registry.REGISTRY.get(model)
        columns = list(entry.loss_columns) if entry and entry.loss_columns else [c for c in log.columns if c != x]
        out[model] = plot_loss_log(log, columns, x=x,
                                   title=f"{display_name(model)} training", smooth=smooth)
    return out



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
