"""Figures and sentences of the training-set-size sweep, from the files
step 05 writes under ``results_dir/sweep/`` (criteria.csv, capacity.csv,
coverage.csv). Like :mod:`helpers.figures` it reads results and runs no
model."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from . import criteria as judged
from . import models, run_fit, sweep
from .layout import Results, Run

REAL_STYLE = ("real held-out images (flagged, never trained on)", "0.45", "D")


def groups() -> dict[str, tuple[str, str, str]]:
    """group → (label, colour, marker), the order of the legend: every
    registered model (:mod:`helpers.models`), then the held-out real images."""
    out = {m.name: (m.legend or m.display, m.colour, m.marker) for m in models.REGISTRY.values()}
    return out | {judged.REAL: REAL_STYLE}


def _dashed(group: str) -> bool:
    """Controls and the real images: references, drawn dashed."""
    return group == judged.REAL or (group in models.REGISTRY and models.REGISTRY[group].control)


def load_sweep(results_dir: str | os.PathLike) -> dict[str, pd.DataFrame] | None:
    """The sweep's tables, or None when this results folder has no sweep."""
    files = Results(results_dir).sweep
    if not files.criteria.is_file():
        return None
    tables = {name: judged.in_vocabulary(pd.read_csv(files.table(name))) for name in ("criteria", "coverage", "capacity")}
    if files.fit.is_file():   # helpers.run_fit: each model's fit at each size
        tables["fit"] = pd.read_csv(files.fit, keep_default_na=False, na_values=[""])
    return tables


def headline_criteria(criteria: pd.DataFrame) -> list[str]:
    """The criteria the figure shows: the paper's on the headline modality
    (fixed 0.95 and the baseline's 99th percentile) and Gu et al.'s ℓ2 ratio."""
    headline = str(criteria["headline"].iloc[0])
    return [judged.correlation_criterion(headline, "fixed_0.95"),
            judged.correlation_criterion(headline, "baseline_p99"), judged.L2_CRITERION]


def _fitted_at(fit: pd.DataFrame | None, group: str, sizes, rule: str = sweep.RULES[0]) -> np.ndarray:
    """Per size: whether ``group`` counts as fitted there (True where fit was not judged)."""
    return np.array([run_fit.fitted(fit, group, int(s), rule) is not False for s in sizes], dtype=bool)


def _rule_of(rows: pd.DataFrame) -> str:
    """The one subset rule of a criteria table's rows (the sweep figure shows one rule)."""
    rules = rows["rule"].unique() if "rule" in rows else [sweep.RULES[0]]
    if len(rules) > 1:
        raise ValueError(f"one subset rule per sweep figure or table, got {sorted(rules)}")
    return str(rules[0]) if len(rules) else sweep.RULES[0]


def plot_sweep(criteria: pd.DataFrame, shown: Sequence[str] | None = None, dodge: float = 0.06,
               fit: pd.DataFrame | None = None):
    """Memorization fraction against training-set size (log axis), one
    panel per criterion, one line per group, Wilson 95 % intervals as error
    bars (dodged sideways so equal values stay visible). With ``fit`` (the
    sweep's fit table, :mod:`helpers.run_fit`), a model's point at a size
    where it is not fitted by the reading rule is hollow."""
    import matplotlib.pyplot as plt

    shown = list(shown or headline_criteria(criteria))
    fig, axes = plt.subplots(1, len(shown), figsize=(4.6 * len(shown), 4.0), sharey=True, squeeze=False)
    styles = groups()
    present = [g for g in styles if g in set(criteria["group"])]
    for ax, criterion in zip(axes[0], shown):
        rows = criteria[criteria["criterion"] == criterion]
        for j, group in enumerate(present):
            part = rows[rows["group"] == group].sort_values("size")
            if part.empty:
                continue
            label, colour, marker = styles[group]
            x = part["size"].to_numpy(float) * 10 ** (dodge * (j - (len(present) - 1) / 2))
            y = part["fraction"].to_numpy(float)
            err = np.vstack([y - part["wilson_low"].to_numpy(float), part["wilson_high"].to_numpy(float) - y])
            ax.errorbar(x, 100 * y, yerr=100 * err, color=colour, marker=None, capsize=3, lw=1.2,
                        ls="--" if _dashed(group) else "-", label=label)
            fitted = _fitted_at(fit, group, part["size"].to_numpy(), _rule_of(part))
            ax.scatter(x, 100 * y, marker=marker, s=30, zorder=3, edgecolors=colour,
                       facecolors=[colour if f else "white" for f in fitted])
        ax.axhline(100 * judged.CAPACITY_FRACTION, color="k", lw=0.6, ls=":")
        ax.set_xscale("log")
        sizes = sorted(rows["size"].unique())
        ax.set_xticks(sizes, [f"{s}\n({int(rows[rows['size'] == s]['n_subjects'].iloc[0])} subj.)" for s in sizes])
        ax.minorticks_off()
        ax.set(title=criterion, xlabel="training images (subjects)", ylim=(-5, 105))
    axes[0][0].set_ylabel("% of images flagged by the criterion\n(a generator's: memorized)")
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)  # off the lines
    fig.suptitle("Memorization against training-set size (same budget at every size; dotted: 90 %"
                 + ("; hollow: not fitted" if fit is not None else "") + ")")
    fig.tight_layout()
    return fig


def sweep_table(criteria: pd.DataFrame, shown: Sequence[str] | None = None,
                fit: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per size and group: 'k/n (fraction, interval)' per criterion,
    marked 'not fitted' where ``fit`` says the model is not."""
    shown = list(shown or headline_criteria(criteria))
    rows = criteria[criteria["criterion"].isin(shown)].copy()
    rule = _rule_of(rows)
    rows["cell"] = [(f"{k}/{n} ({100 * f:.0f} %, {100 * lo:.0f}–{100 * hi:.0f})" if n else "–")
                    + (" — not fitted" if run_fit.fitted(fit, g, int(s), rule) is False else "")
                    for k, n, f, lo, hi, g, s in rows[["n_above", "n_images", "fraction", "wilson_low", "wilson_high",
                                                        "group", "size"]].itertuples(index=False)]
    table = rows.pivot_table(index=["size", "n_subjects", "group"], columns="criterion", values="cell",
                             aggfunc="first")[shown].reset_index()
    order = {g: i for i, g in enumerate(groups())}
    return table.sort_values(["size", "group"], key=lambda c: c.map(order) if c.name == "group" else c)


def capacity_text(capacity: pd.DataFrame, criteria: pd.DataFrame) -> str:
    """One sentence per model and shown criterion (computed, never typed)."""
    shown = headline_criteria(criteria)
    lines = []
    for group in (g for g in groups() if g != judged.REAL):
        rows = capacity[(capacity["group"] == group) & capacity["criterion"].isin(shown)]
        for row in rows.itertuples():
            lines.append(f"- {row.message}")
    return "\n".join(lines)


def _unfitted_note(fit: pd.DataFrame | None, size, rule: str | None = None) -> str:
    """'StyleGAN not fitted (why)' for the models of the comparison not fitted at ``size``; '' if both are."""
    if fit is None:
        return ""
    notes = []
    for model in ("diffusion", "stylegan"):
        row = run_fit.rows_of(fit, model, int(size), rule or sweep.RULES[0])
        if not row.empty and not bool(row["fitted"].iloc[0]):
            notes.append(f"{models.display_name(model)} not fitted ({row['why'].iloc[0]})")
    return "; ".join(notes)


def interval_verdict(d, s) -> str:
    """Diffusion's row against StyleGAN's: a difference only where their Wilson intervals do not overlap."""
    if d["wilson_low"] > s["wilson_high"]:
        return "diffusion memorizes more"
    if s["wilson_low"] > d["wilson_high"]:
        return "StyleGAN memorizes more"
    return "no difference the intervals can show"


def comparison_text(criteria: pd.DataFrame, criterion: str | None = None, fit: pd.DataFrame | None = None) -> str:
    """At each size: does diffusion memorize more than StyleGAN, with both
    intervals (non-overlapping Wilson intervals called a difference) — a
    comparison only where both models are fitted by the reading rule
    (``fit``); elsewhere the numbers are given and the verdict says which
    model is not fitted."""
    criterion = criterion or headline_criteria(criteria)[-1]
    rows = criteria[criteria["criterion"] == criterion]
    several_rules = "rule" in rows and rows["rule"].nunique() > 1
    keys = ["rule", "size"] if "rule" in rows else ["size"]
    out = []
    for key, part in rows.groupby(keys, sort=False):
        rule, size = key if len(keys) == 2 else (None, key[0])
        by = part.set_index("group")
        if not {"stylegan", "diffusion"} <= set(by.index):
            continue
        d, s = by.loc["diffusion"], by.loc["stylegan"]
        verdict = interval_verdict(d, s)
        unfitted = _unfitted_note(fit, size, rule)
        if unfitted:
            verdict = f"no comparison of fitted models: {unfitted}"
        label = f"{size} training images" + (f" ({rule})" if several_rules else "")
        out.append(f"- {label}: diffusion {100 * d['fraction']:.0f} % "
                   f"({100 * d['wilson_low']:.0f}–{100 * d['wilson_high']:.0f}), StyleGAN {100 * s['fraction']:.0f} % "
                   f"({100 * s['wilson_low']:.0f}–{100 * s['wilson_high']:.0f}): {verdict}.")
    return f"By `{criterion}`:\n" + "\n".join(out) if out else ""


def collect_sweeps(results_root: str | os.PathLike) -> pd.DataFrame:
    """The criteria tables of every ``<results_root>/<name>/sweep/``, with a
    ``dataset`` column (for ``./runall.sh compare``)."""
    frames = []
    for path in sorted(Path(results_root).glob(Results("*").sweep.criteria.as_posix())):
        table = judged.in_vocabulary(pd.read_csv(path)).assign(dataset=path.parent.parent.name)
        fit = run_fit.load_fit(path.parent.parent)
        table["fitted"] = [run_fit.fitted(fit, g, int(s), r) for g, s, r in zip(table["group"], table["size"], table["rule"])]
        frames.append(table)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def plot_compare_sweeps(frame: pd.DataFrame, criterion: str = judged.L2_CRITERION):
    """One panel per dataset's sweep (whole-subject subsets), the same
    criterion in each (for correlation criteria: each dataset's headline)."""
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(frame["dataset"]))
    n_cols = min(3, len(datasets))
    n_rows = -(-len(datasets) // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(4.6 * n_cols, 3.7 * n_rows), sharey=True, squeeze=False)
    for ax in axes.flat[len(datasets):]:
        ax.set_visible(False)
    for ax, dataset in zip(axes.flat, datasets):
        part = frame[(frame["dataset"] == dataset) & (frame["rule"] == "whole_subjects")]
        shown = criterion if criterion in set(part["criterion"]) else \
            judged.correlation_criterion(str(part["headline"].iloc[0]), criterion)
        rows = part[part["criterion"] == shown]
        styles = groups()
        for j, group in enumerate(g for g in styles if g in set(rows["group"])):
            g = rows[rows["group"] == group].sort_values("size")
            label, colour, marker = styles[group]
            y = g["fraction"].to_numpy(float)
            err = np.vstack([y - g["wilson_low"].to_numpy(float), g["wilson_high"].to_numpy(float) - y])
            x = g["size"].to_numpy(float) * 10 ** (0.05 * (j - 1.5))
            ax.errorbar(x, 100 * y, yerr=100 * err, color=colour, marker=None, capsize=3, lw=1.2, label=label)
            unfitted = [run_fit.not_fitted(f) for f in g.get("fitted", [None] * len(g))]
            ax.scatter(x, 100 * y, marker=marker, s=26, zorder=3, edgecolors=colour,
                       facecolors=[("white" if u else colour) for u in unfitted])
        sizes = sorted(rows["size"].unique())
        ax.set_xscale("log")
        ax.set_xticks(sizes, [str(s) for s in sizes])   # the sweep's own sizes, not powers of ten
        ax.minorticks_off()
        if len(sizes) == 1:
            ax.set_xlim(sizes[0] / 2, sizes[0] * 2)
        ax.axhline(100 * judged.CAPACITY_FRACTION, color="k", lw=0.6, ls=":")
        ax.set(title=f"{dataset}: {shown}", xlabel="training images", ylim=(-5, 105))
        ax.title.set_fontsize(9)
    for row in axes:
        row[0].set_ylabel("% of images flagged by the criterion\n(a generator's: memorized)")
    legend = {}
    for ax in axes.flat[:len(datasets)]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)     # every group of every panel, once
    axes.flat[len(datasets) - 1].legend(legend.values(), legend.keys(), fontsize=7)
    fig.suptitle("Memorization against training-set size, per dataset (hollow: not fitted; dotted: 90 %)", fontsize=10)
    fig.tight_layout()
    return fig


def run_design_text(results_dir: str | os.PathLike) -> str:
    """This run's own sweep, from its files (not the profile's prose): the
    sizes with their subjects, the slice stride, and each trained model's
    images seen per size."""
    from . import common, sweep

    results_dir = Path(results_dir)
    sizes = sweep.sizes_table(results_dir)
    if sizes is None:
        return "No size sweep in this run."
    params = common.read_params(Run(results_dir).data.folder)
    stride = params.get("slice_stride")
    seen = {}
    for row in sizes.itertuples():
        for model in models.trainable():
            path = Run(results_dir / row.folder).training_summary(model.name)
            if path.is_file():
                seen.setdefault(model.display, set()).add(int(common.read_json(path).get("images_seen", 0)))
    several = sizes["rule"].nunique() > 1
    distinct = lambda r: (f", {int(r.n_distinct)} distinct picture{'' if int(r.n_distinct) == 1 else 's'}"  # noqa: E731
                          if "n_distinct" in sizes and not pd.isna(r.n_distinct) and int(r.n_distinct) != r.size else "")
    cells = [f"{r.size} ({r.n_subjects} subj.{distinct(r)}" + (f", {r.rule})" if several else ")")
             for r in sizes.itertuples()]
    parts = [f"**This run**: sizes {', '.join(cells)}" + ("" if several else f" ({sizes['rule'].iloc[0]})")]
    if stride is not None and str(params.get("source", "")).endswith("brats"):   # slices of volumes only
        parts.append("every slice kept" if int(stride) == 1 else f"every {int(stride)}th axial slice")
    parts += [f"{name}: {', '.join(f'{n:,}' for n in sorted(values))} images seen per size"
              for name, values in seen.items()]
    return "; ".join(parts) + "."
