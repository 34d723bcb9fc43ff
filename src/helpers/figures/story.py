"""The story figure of the landing page: one row per training-set size — a
training slice, then for each generator its most copy-like sample beside the
training slice it correlates with most, with r, the held-out threshold and
the fit verdict — so a reader sees at a glance what "memorized" and "fitted"
mean at each size before reading any table."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from ..layout import Run
from ..sampling import load_samples
from .results import load_images, load_matches, load_meta, load_thresholds, shown_channel
from .style import COLOURS, display_name
from .top_matches import image_panel

#: the threshold the story marks: the paper's (held-out images' 99th percentile)
STORY_THRESHOLD = "baseline_p99"


def most_copy_like(matches: pd.DataFrame) -> pd.Series | None:
    """The row of the sample with the highest best-match r (constant and
    undefined images left out); None when there is none. Ties: the lowest
    synthetic index (the table's order), so the choice is reproducible."""
    valid = matches[~matches["constant"].astype(bool) & matches["correlation"].notna()]
    if valid.empty:
        return None
    return valid.sort_values(["correlation", "synthetic_index"], ascending=[False, True], kind="stable").iloc[0]


def _panel(ax, image, title: str | None = None, note: str | None = None, colour: str | None = None) -> None:
    """The best-match figure's image panel, framed in the model's colour."""
    image_panel(ax, image, title, note)
    if colour:
        for spine in ax.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(2.5)


def _fit_word(fit: pd.DataFrame | None, model: str, size: int | None, rule: str) -> str:
    from .. import run_fit

    verdict = None if size is None else run_fit.fitted(fit, model, size, rule)
    return {None: "fit not judged", True: "fitted", False: "NOT fitted"}[verdict]


def plot_story(runs: Mapping[str, str | os.PathLike], models: Sequence[str] = ("stylegan", "diffusion"), *,
               fit: pd.DataFrame | None = None, channel: str | None = None):
    """One row per run (``{label: run folder}``, smallest set first): a
    training slice of that set; then per model its sample with the highest
    best-match r (on the headline measure) and that training slice, noted
    with r, whether r exceeds the run's held-out 99th percentile, and the fit
    verdict of ``fit`` (``size`` × ``model`` rows of step 05's fit table, a
    run's size being its number of training images). Shown: ``channel``
    (None: the headline measure's own)."""
    labels = list(runs)
    n_cols = 1 + 2 * len(models)
    fig, axes = plt.subplots(len(labels), n_cols, figsize=(1.45 * n_cols + 0.6, 1.7 * len(labels) + 0.5),
                             squeeze=False)
    ch_name, word = "", "slice"
    for r, label in enumerate(labels):
        run = Path(runs[label])
        ch = shown_channel(run, channel)
        meta = load_meta(run)
        ch_name = str(meta["channels"][ch]) if meta.get("channels") else f"ch{ch}"
        train = load_images(run, "train")
        threshold = load_thresholds(run).get(STORY_THRESHOLD, math.nan)
        size = len(train)
        first = r == 0
        if first:   # x-rays are images, not slices of a volume
            from .. import sweep

            table = Run(run).data.train_table
            word = "image" if table.is_file() and sweep.is_planar(pd.read_csv(table)) else "slice"
        _panel(axes[r, 0], train[0, ch], f"a training {word}" if first else None, note=f"1 of {len(train)}")
        rule = str(meta.get("sweep_rule", "whole_subjects"))
        per_subject = "\none per subject" if rule == "one_per_subject" else ""
        axes[r, 0].set_ylabel(f"{len(train)} training\n{word}s{per_subject}\n(p99 {threshold:.3f})", fontsize=8)
        for m, model in enumerate(models):
            sample_ax, match_ax = axes[r, 1 + 2 * m], axes[r, 2 + 2 * m]
            name = display_name(model)
            try:
                matches = load_matches(run, model)
            except FileNotFoundError:
                _panel(sample_ax, None, f"{name} sample" if first else None, note="no samples audited")
                _panel(match_ax, None, f"its nearest training {word}" if first else None, note="")
                continue
            row = most_copy_like(matches)
            if row is None:
                _panel(sample_ax, None, f"{name} sample" if first else None, note="every sample constant")
                _panel(match_ax, None, f"its nearest training {word}" if first else None, note="")
                continue
            corr = float(row["correlation"])
            above = "above" if corr > threshold else "below"
            judged = matches["correlation"].notna() & ~matches["constant"].astype(bool)
            n_above = int((matches.loc[judged, "correlation"] > threshold).sum())
            samples = load_samples(run, model)[0]
            _panel(sample_ax, samples[int(row["synthetic_index"]), ch], f"{name}: most copy-like" if first else None,
                   note=f"{_fit_word(fit, model, size, rule)}; {n_above}/{int(judged.sum())} above p99",
                   colour=COLOURS.get(model))
            _panel(match_ax, train[int(row["train_index"]), ch], f"its nearest training {word}" if first else None,
                   note=f"r = {corr:.3f} ({above} p99)")
    fig.suptitle(f"What each generator's most copy-like sample looks like at each training-set size "
                 f"(channel '{ch_name}'; r: Pearson correlation on the headline measure; p99: the 99th percentile "
                 f"of real held-out {word}s' best r — above it counts as memorized)", fontsize=8, wrap=True)
    fig.tight_layout()
    return fig


def plot_story_of(results_dir, models: Sequence[str], channel: str | None = None):
    """:func:`plot_story` of every run of a results folder (each size of a
    sweep, or the one run) with step 05's fit verdicts, for the trained
    generators among ``models`` (controls left out: they are not the question)."""
    from .. import models as registry
    from .. import run_fit, sweep

    trained = [m for m in models if m in registry.REGISTRY and not registry.REGISTRY[m].control]
    return plot_story(sweep.run_dirs(results_dir), trained, fit=run_fit.load_fit(results_dir), channel=channel)
