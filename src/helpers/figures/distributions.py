"""Figure 1: distributions of the maximum correlation with the training set."""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd

from .results import load_baseline, load_control, load_matches, load_thresholds, measure_files, measure_info, measures
from .style import BASELINE, COLOURS, CONTROL, MODELS, display_name, measure_label


def max_correlations(results_dir, models: Sequence[str], measure: str | None = None,
                     control: bool = False) -> pd.DataFrame:
    """Long table (group, model, correlation) of every non-constant image's
    best correlation on ``measure`` (None: the headline): the models'
    samples and the held-out real baseline (and the planted-copy control
    when ``control`` and step 05 made one)."""
    frames = []
    for model in models:
        m = load_matches(results_dir, model, measure)
        m = m[~m["constant"] & m["correlation"].notna()]
        frames.append(pd.DataFrame({"model": model, "correlation": m["correlation"].astype(float)}))
    b = load_baseline(results_dir, measure)
    b = b[~b["constant"] & b["correlation"].notna()]
    frames.append(pd.DataFrame({"model": BASELINE, "correlation": b["correlation"].astype(float)}))
    if control and measure_files(results_dir, measure).control_matches.is_file():
        c = load_control(results_dir, measure)
        c = c[~c["constant"] & c["correlation"].notna()]
        frames.append(pd.DataFrame({"model": CONTROL, "correlation": c["correlation"].astype(float)}))
    long = pd.concat(frames, ignore_index=True)
    long["group"] = long["model"].map(display_name)
    return long


def plot_max_correlation(results_dir, models: Sequence[str] = MODELS, bins: int = 40, measure: str | None = None):
    """Histogram (density) and ECDF of the maximum correlation with the
    training set on ``measure`` (None: the headline, the README figure), per
    model and for the held-out real baseline, with the fixed and
    baseline-calibrated thresholds marked."""
    import seaborn as sns

    long = max_correlations(results_dir, models, measure)
    thresholds = load_thresholds(results_dir, measure)
    info = measure_info(results_dir, measure)
    palette = {display_name(m): COLOURS.get(m, "k") for m in long["model"].unique()}
    lo = min(float(long["correlation"].min()), min(thresholds.values(), default=1.0)) if len(long) else 0.0
    lo = max(-1.0, math.floor(lo * 20) / 20)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    if long.empty:
        for ax in axes:
            ax.text(0.5, 0.5, "no image with a defined correlation\n(all constant)", ha="center", va="center",
                    transform=ax.transAxes)
        return fig
    sns.histplot(long, x="correlation", hue="group", palette=palette, stat="density", common_norm=False,
                 element="step", bins=bins, binrange=(lo, 1.0), ax=axes[0])
    sns.ecdfplot(long, x="correlation", hue="group", palette=palette, ax=axes[1], legend=False)
    fixed = {n: v for n, v in thresholds.items() if not n.startswith("baseline")}
    calibrated = {n: v for n, v in thresholds.items() if n.startswith("baseline")}
    for ax in axes:
        for value in fixed.values():
            ax.axvline(value, lw=1, color="0.5", ls=":")
        for value in calibrated.values():
            ax.axvline(value, lw=1, color="tab:red", ls="--")
        ax.set_xlim(lo, 1.0)
        ax.set_xlabel("maximum Pearson correlation with any training image")
    from matplotlib.lines import Line2D

    handles = []
    if fixed:
        handles.append(Line2D([], [], color="0.5", ls=":", label="fixed: " + ", ".join(f"{v:.2f}" for v in fixed.values())))
    if calibrated:
        handles.append(Line2D([], [], color="tab:red", ls="--", label="held-out " + ", ".join(
            f"{n.removeprefix('baseline_')} = {v:.3f}" for n, v in calibrated.items())))
    if handles:
        axes[1].legend(handles=handles, fontsize=7, loc="upper left", title="thresholds", title_fontsize=7)
    axes[1].set_ylabel("fraction of images ≤ r")
    counts = long.groupby("group", sort=False).size()
    axes[0].set_title("histogram (" + ", ".join(f"{g}: n={n}" for g, n in counts.items()) + ")", fontsize=8)
    axes[1].set_title("empirical CDF", fontsize=8)
    fig.suptitle(f"measure '{info['measure']}': {measure_label(info)}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_max_correlation_by_measure(results_dir, models: Sequence[str] = MODELS, bins: int = 40, cols: int = 3):
    """One histogram panel per measure (headline first) of the maximum
    correlation of each generator's images, the held-out real baseline and
    the planted-copy control (dashed), with that measure's thresholds."""
    names = measures(results_dir)
    cols = max(1, min(cols, len(names)))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, name in zip(axes.ravel(), names):
        info = measure_info(results_dir, name)
        long = max_correlations(results_dir, models, name, control=True)
        thresholds = load_thresholds(results_dir, name)
        lo = max(-1.0, math.floor(min([*long["correlation"], *thresholds.values(), 1.0]) * 10) / 10)
        for model, part in long.groupby("model", sort=False):
            ax.hist(part["correlation"], bins=bins, range=(lo, 1.0), histtype="step", density=True,
                    color=COLOURS.get(model), ls="--" if model == CONTROL else "-",
                    label=f"{display_name(model)} (n={len(part)})")
        for tname, value in thresholds.items():
            ax.axvline(value, lw=0.8, color="tab:red" if tname.startswith("baseline") else "0.5",
                       ls="--" if tname.startswith("baseline") else ":")
        head = " — headline" if info.get("headline") else ""
        ax.set_title(f"{name}{head} ({info.get('kind')})", fontsize=8)
        ax.set_xlabel("maximum Pearson r with any training image", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=6)
    for ax in axes.ravel()[len(names):]:
        ax.set_axis_off()
    fig.tight_layout()
    return fig

