"""The study's headline figure: memorization against fit.

One trajectory per model and training-set size (its audited checkpoints, in
order of images seen), with the references as single points: real held-out
images (what a good generator that copies nothing scores), the optimal
denoiser or a copier (a perfect memorizer) and the Gaussian control (a
generator that learnt nothing). Two panels, one per condition of the
reading rule: the sharpness ratio (log axis, the rule's band shaded) and
the 1-NN two-sample accuracy against the training subset. A point is filled
where the model counts as fitted by the rule and hollow where it does not,
so a memorization fraction of an unfitted model is shown but never read as
one of a fitted model.
"""

from __future__ import annotations

import pandas as pd

from .style import COLOURS, display_name

REQUIRED = ("model", "role", "n_train", "sharpness", "nn_accuracy", "memorized", "fitted")
REFERENCE_STYLE = {"held_out": ("0.35", "D"), "copier": ("tab:green", "*"), "optimal_denoiser": ("tab:green", "*"),
                   "gaussian_control": ("tab:purple", "X")}
SHARPNESS_TICKS = (0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100, 300)
SIZE_MARKERS = ("o", "s", "^", "v", "P", "h")


def _check(table: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise ValueError(f"memorization-against-fit table: missing columns {missing} (has {list(table.columns)})")
    return table


def memorization_against_fit(table: pd.DataFrame, *, sharpness_band: tuple[float, float], held_out_nn: float | None = None,
                             memorized_label: str = "memorized (%)"):
    """The figure (matplotlib) from a tidy table: one row per model, size
    (and subset ``rule``, where a run has several) and audited checkpoint (``images_seen``; NaN for references), with
    ``memorized`` as a fraction. ``held_out_nn``: the held-out images' 1-NN
    accuracy plus the rule's margin, drawn as the fit limit of panel two."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    table = _check(table).copy()
    table["memorized_pct"] = 100 * table["memorized"].astype(float)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True, layout="constrained")
    several_rules = "rule" in table and table.loc[table.role == "model", "rule"].nunique() > 1
    table["run"] = (table["n_train"].astype(str) + " training images"
                    + ((" (" + table["rule"].astype(str) + ")") if several_rules else ""))
    models_rows = table[table.role == "model"].sort_values("n_train", kind="stable")
    runs = list(dict.fromkeys(models_rows["run"]))
    marker_of = {run: SIZE_MARKERS[i % len(SIZE_MARKERS)] for i, run in enumerate(runs)}
    for ax, column in zip(axes, ("sharpness", "nn_accuracy")):
        for (model, run), rows in models_rows.groupby(["model", "run"], sort=True):
            rows = rows.sort_values("images_seen") if "images_seen" in rows else rows
            colour = COLOURS.get(model, "tab:red")
            ax.plot(rows[column], rows["memorized_pct"], "-", color=colour, alpha=0.5, lw=1)
            for fitted, part in rows.groupby("fitted"):
                ax.scatter(part[column], part["memorized_pct"], marker=marker_of[run], s=36,
                           facecolors=colour if fitted else "none", edgecolors=colour, zorder=3)
        for _, row in table[table.role != "model"].iterrows():
            colour, marker = REFERENCE_STYLE.get(row.model, ("0.5", "P"))
            ax.scatter(row[column], row["memorized_pct"], marker=marker, s=70, color=colour, edgecolors="k",
                       linewidths=0.5, zorder=4, alpha=0.8)
    low, high = sharpness_band
    axes[0].axvspan(low, high, color="0.9", zorder=0)
    axes[0].set_xscale("log")
    axes[0].xaxis.set_major_locator(FixedLocator(SHARPNESS_TICKS))
    axes[0].xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axes[0].xaxis.set_minor_locator(NullLocator())
    axes[0].set_xlabel(f"sharpness ratio (fitted: {low:g}–{high:g}, shaded)")
    if held_out_nn is not None:
        axes[1].axvspan(0, held_out_nn, color="0.9", zorder=0)
    axes[1].set_xlim(0, 1.02)
    axes[1].set_xlabel("1-NN accuracy vs training images (fitted: shaded; low: copies)")
    axes[0].set_ylabel(memorized_label)
    for ax in axes:
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=COLOURS.get(m, "tab:red"), marker="o", ls="-", label=display_name(m))
               for m in sorted(table.loc[table.role == "model", "model"].unique())]
    handles += [plt.Line2D([], [], color="0.3", marker=marker_of[run], ls="", mfc="none", label=run) for run in runs]
    handles += [plt.Line2D([], [], color=REFERENCE_STYLE.get(m, ("0.5", "P"))[0], marker=REFERENCE_STYLE.get(m, ("0.5", "P"))[1],
                           ls="", label=display_name(m).replace("_", " "))
                for m in table.loc[table.role != "model", "model"].unique()]
    handles += [plt.Line2D([], [], color="0.3", marker="o", ls="", label="filled: fitted by the rule; hollow: not fitted")]
    axes[1].legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return fig

