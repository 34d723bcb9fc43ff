"""The tables of step 06, copied from step 05's files (only rescaled to %):
thresholds, memorization per group and measure, most-copied images."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ..audit import JOINT, measure_summary, reported_interval
from .results import load_exceedances, load_leakage, load_most_matched, load_thresholds, measure_files, measures
from .style import BASELINE, CONTROL, THRESHOLD_NAMES, display_name, threshold_label


def thresholds_table(results_dir, measure: str | None = None) -> pd.DataFrame:
    """thresholds.csv of one measure (None: the headline) with what each threshold means."""
    values = load_thresholds(results_dir, measure)
    return pd.DataFrame({"threshold_name": list(values), "r": list(values.values()),
                         "meaning": [threshold_label(n, v) for n, v in values.items()]})


def thresholds_by_measure(results_dir) -> pd.DataFrame:
    """Every measure's thresholds, one row per measure (headline first)."""
    rows = [{"measure": m, **load_thresholds(results_dir, m)} for m in measures(results_dir)]
    return pd.DataFrame(rows)



def memorization_table(results_dir, model: str, threshold_names: Sequence[str] = THRESHOLD_NAMES,
                       measure: str | None = None) -> pd.DataFrame:
    """One row per threshold for ``model``: images above it (count, %, the
    Wilson 95 % interval from step 05) and training subjects leaked, on
    ``measure`` (None: the headline). Values are copied from
    exceedances.csv / leakage.csv, only rescaled to %."""
    files = measure_files(results_dir, measure)
    exc = load_exceedances(results_dir, measure)
    exc = exc[exc["model"] == model]
    if exc.empty:
        raise ValueError(f"{files.exceedances}: no rows for model '{model}'")
    leak_path = files.leakage
    leak = load_leakage(results_dir, measure) if leak_path.is_file() else pd.DataFrame(
        columns=["model", "threshold_name", "n_subjects_leaked", "n_train_subjects", "fraction_subjects"])
    leak = leak[leak["model"] == model][["threshold_name", "n_subjects_leaked", "n_train_subjects", "fraction_subjects"]]
    table = exc.merge(leak, on="threshold_name", how="left")
    order = {n: i for i, n in enumerate(threshold_names)}
    table = table[table["threshold_name"].isin(order)].copy()
    table["_order"] = table["threshold_name"].map(order)
    table = table.sort_values("_order")
    out = pd.DataFrame({
        "threshold_name": table["threshold_name"].to_numpy(),
        "threshold": table["threshold"].astype(float).to_numpy(),
        "n_images": table["n_images"].astype(int).to_numpy(),
        "n_above": table["n_above"].astype(int).to_numpy(),
        "percent": 100 * table["fraction"].astype(float).to_numpy(),
        "wilson_low_percent": 100 * table["wilson_low"].astype(float).to_numpy(),
        "wilson_high_percent": 100 * table["wilson_high"].astype(float).to_numpy(),
        "n_subjects_leaked": pd.to_numeric(table["n_subjects_leaked"]).astype("Int64").to_numpy(),
        "n_train_subjects": pd.to_numeric(table["n_train_subjects"]).astype("Int64").to_numpy(),
        "percent_subjects": 100 * pd.to_numeric(table["fraction_subjects"]).astype(float).to_numpy(),
    })
    if out["n_subjects_leaked"].isna().all():
        out = out.drop(columns=["n_subjects_leaked", "n_train_subjects", "percent_subjects"])
    return out.reset_index(drop=True)


def table_groups(results_dir, models: Sequence[str], measure: str | None = None) -> list[str]:
    """The groups of exceedances.csv to tabulate: the requested generators
    present there, then the real held-out baseline, then the positive
    control (each only if it has rows)."""
    present = set(load_exceedances(results_dir, measure)["model"].astype(str))
    return [m for m in (*models, BASELINE, CONTROL) if m in present]


def memorization_tables(results_dir, models: Sequence[str],
                        threshold_names: Sequence[str] = THRESHOLD_NAMES) -> list[tuple[str, str, pd.DataFrame]]:
    """``(measure, group, table)`` for every measure (headline first) and
    group of :func:`table_groups`: every memorization table of step 05."""
    return [(m, g, memorization_table(results_dir, g, threshold_names, m))
            for m in measures(results_dir) for g in table_groups(results_dir, models, m)]


def table_title(model: str) -> str:
    """A heading that cannot mistake the baseline or control for a generator."""
    if model == BASELINE:
        return "Real held-out test images vs the training set (baseline: what no memorization looks like)"
    if model == CONTROL:
        return ("Positive control: planted copies of training images (NOT a generator; "
                "it checks that the audit finds known copies)")
    return f"{display_name(model)} synthetic images"


def most_copied_table(results_dir, model: str, n: int = 10, measure: str | None = None) -> pd.DataFrame:
    """The training images matched by the most synthetic images."""
    frame = load_most_matched(results_dir, model, measure)
    frame = frame.sort_values(["n_matched", "max_correlation"], ascending=False, kind="stable")
    return frame.head(n).reset_index(drop=True)



def measures_table(summary: Mapping, threshold_name: str = "baseline_p99") -> pd.DataFrame:
    """Every measure (headline first) at ``threshold_name``: per generator,
    the held-out baseline and the control, images above it (count, %,
    reported 95 % interval in %) and the median and highest best correlation,
    so the channel choice can be judged at a glance."""
    names = summary["measures"] if "measures" in summary else [JOINT]
    rows = []
    for name in names:
        info = measure_summary(summary, name)
        value = (info.get("thresholds") or {}).get(threshold_name)
        groups = dict(info.get("models") or {})
        if info.get("baseline"):
            groups[BASELINE] = info["baseline"]
        if info.get(CONTROL):
            groups[CONTROL] = info[CONTROL]
        for model, g in groups.items():
            exc = (g.get("exceedances") or {}).get(threshold_name)
            q = g.get("quantiles") or {}
            lo, hi = reported_interval(exc) if exc else (np.nan, np.nan)
            rows.append({"measure": name, "kind": info.get("kind"), "headline": bool(info.get("headline")),
                         "group": model, "threshold": value, "n": g.get("n"), "constant": g.get("constant"),
                         "n_above": exc["n_above"] if exc else None,
                         "percent": 100 * exc["fraction"] if exc else np.nan,
                         "ci_low_percent": 100 * lo, "ci_high_percent": 100 * hi,
                         "median_r": q.get("p50"), "max_r": q.get("max")})
    frame = pd.DataFrame(rows, columns=["measure", "kind", "headline", "group", "threshold", "n", "constant", "n_above",
                                        "percent", "ci_low_percent", "ci_high_percent", "median_r", "max_r"])
    return frame.astype({"n": "Int64", "constant": "Int64", "n_above": "Int64"})

