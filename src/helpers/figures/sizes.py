"""Figure 6: memorization against training-set size, from sibling result
folders ``results/<dataset>_n<K>/`` (the sweep has its own figures in
:mod:`helpers.sweep_figures`)."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..common import read_json
from ..correlate import JOINT, measure_summary
from .results import load_index, load_summary
from .style import BASELINE, COLOURS, CONTROL, display_name, interval_columns

_SIZE_SUFFIX = re.compile(r"^(?P<base>.+)_n(?P<k>\d+)$")


def _n_train_subjects(folder: Path) -> int | None:
    meta_path = folder / "data/meta.json"
    if meta_path.is_file():
        value = read_json(meta_path).get("n_train_subjects")
        if value is not None:
            return int(value)
    if (folder / "data/train.csv").is_file():
        return int(load_index(folder, "train")["subject"].nunique())
    match = _SIZE_SUFFIX.match(folder.name)
    return int(match["k"]) if match else None


def _summary_view(folder: Path, measure: str | None) -> dict | None:
    """One measure of a folder's summary.json (None: its headline); None
    when that folder did not compute the measure."""
    summary = load_summary(folder)
    try:
        return measure_summary(summary, measure)
    except ValueError:
        return None


def size_series(results_dir, measure: str | None = None) -> pd.DataFrame:
    """Memorization rates of the same dataset trained on different numbers
    of training subjects.

    Convention: runs of one dataset with a reduced training set live in
    sibling folders ``results/<dataset>_n<K>/`` (``./runall.sh <dataset>
    --name <dataset>_n<K> --set prepare_data.n_train_subjects=<K>``) next to
    the full run ``results/<dataset>/``. A folder's training-set size is
    ``data/meta.json``'s ``n_train_subjects`` when present, else the number
    of distinct subjects in ``data/train.csv``, else ``K``. Every such folder
    with a ``correlation/summary.json`` contributes one row per model and
    threshold (columns: folder, n_train_subjects, n_train, measure, model,
    threshold_name, n, n_above, fraction, wilson_low, wilson_high) on ``measure`` (None: each folder's headline; folders
    without that measure are left out).
    """
    results_dir = Path(results_dir)
    match = _SIZE_SUFFIX.match(results_dir.name)
    base = match["base"] if match else results_dir.name
    parent = results_dir.parent
    folders = [parent / base] + sorted(p for p in parent.glob(f"{base}_n*") if _SIZE_SUFFIX.match(p.name))
    rows = []
    for folder in folders:
        if not (folder / "correlation/summary.json").is_file():
            continue
        summary = _summary_view(folder, measure)
        if summary is None:
            continue
        size = _n_train_subjects(folder)
        for model, info in summary["models"].items():
            for name, exc in (info.get("exceedances") or {}).items():
                rows.append({"folder": folder.name, "n_train_subjects": size, "n_train": summary.get("n_train"),
                             "measure": summary["measure"], "model": model, "threshold_name": name, "n": info.get("n"),
                             "n_above": exc["n_above"], "fraction": exc["fraction"],
                             "wilson_low": exc["wilson_low"], "wilson_high": exc["wilson_high"]})
    return pd.DataFrame(rows, columns=["folder", "n_train_subjects", "n_train", "measure", "model", "threshold_name",
                                       "n", "n_above", "fraction", "wilson_low", "wilson_high"])


def size_note(series: pd.DataFrame) -> str | None:
    """Why no size plot is drawn (None when one is)."""
    sizes = series["n_train_subjects"].dropna().unique() if len(series) else []
    if len(sizes) >= 2:
        return None
    have = f"only one training-set size ({int(sizes[0])} subjects)" if len(sizes) else "no sized results"
    return (f"Memorization against training-set size needs results for at least two sizes; there is {have}. "
            "Add runs as sibling folders `results/<dataset>_n<K>/`, e.g. `./runall.sh phantom --name phantom_n8 "
            "--set prepare_data.n_train_subjects=8`.")


def plot_memorization_vs_size(series: pd.DataFrame, threshold_name: str = "baseline_p99"):
    """Fraction of synthetic images above ``threshold_name`` (with 95 % CI)
    against the number of training subjects, one line per model. Returns
    None when fewer than two sizes exist (see :func:`size_note`)."""
    if size_note(series) is not None:
        return None
    data = series[(series["threshold_name"] == threshold_name) & (series["model"] != CONTROL)]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    groups = list(data.groupby("model", sort=False))
    for i, (model, group) in enumerate(groups):
        g = group.sort_values("n_train_subjects")
        y = 100 * g["fraction"].to_numpy(float)
        lo, hi = interval_columns(g)
        err = np.vstack([y - 100 * lo, 100 * hi - y])
        dodge = 1 + 0.04 * (i - (len(groups) - 1) / 2)  # side by side, so equal rates do not hide each other
        ax.errorbar(g["n_train_subjects"].to_numpy(float) * dodge, y, yerr=err, marker="o", capsize=3,
                    label=display_name(model), color=COLOURS.get(model), ls="--" if model == BASELINE else "-")
    ax.set_xscale("log")
    sizes = sorted(data["n_train_subjects"].dropna().unique())
    ax.set_xticks(sizes, [str(int(s)) for s in sizes])
    ax.minorticks_off()
    ax.set_ylim(bottom=0)
    ax.set_xlabel("training subjects")
    ax.set_ylabel(f"% images above {threshold_name}")
    ax.legend(fontsize=8)
    used = ", ".join(dict.fromkeys(data["measure"].astype(str))) if "measure" in data else JOINT
    ax.set_title(f"memorization vs training-set size (measure {used}; 95 % CI)", fontsize=9)
    fig.tight_layout()
    return fig

