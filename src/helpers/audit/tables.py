"""The audit's tables: best matches, the real-vs-real baseline, thresholds,
exceedances with Wilson 95 % intervals, patient-level leakage, most-matched
training images and the per-group summary of summary.json."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .. import correlation
from ..memorization import FIXED_THRESHOLDS, correlation_thresholds, wilson_interval

#: model name of the real-vs-real baseline in exceedances/leakage tables
BASELINE_NAME = "real_test"
#: group name of the planted-copy positive control
CONTROL_NAME = "control"
#: the first columns of a matches table, in this order
MATCH_COLUMNS = ["synthetic_index", "seed", "train_index", "correlation", "subject", "slice", "prev_correlation",
                 "next_correlation", "constant"]


def _lookup(meta: pd.DataFrame | None, index: np.ndarray, column: str, fill):
    """``meta[column]`` at ``index`` (``fill`` where the index is -1)."""
    if meta is None or column not in meta:
        return np.full(len(index), fill, dtype=object if isinstance(fill, str) else float)
    values = meta[column].to_numpy()
    out = np.where(index >= 0, values[np.clip(index, 0, len(values) - 1)], fill)
    return out


def match_table(result: correlation.MatchResult, train_meta: pd.DataFrame | None = None,
                seeds: np.ndarray | None = None, synthetic_names: Sequence[str] | None = None,
                train_names: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per synthetic image: its best training image (index, subject,
    slice) and the exact maximum correlation; ``constant`` marks zero-variance
    images (correlation NaN, excluded from statistics)."""
    best = result.best_index
    frame = pd.DataFrame({"synthetic_index": np.arange(len(best))})
    frame["seed"] = seeds if seeds is not None else pd.array([pd.NA] * len(best), dtype="Int64")
    frame["train_index"] = best
    frame["correlation"] = result.best_correlation
    frame["subject"] = _lookup(train_meta, best, "subject", "")
    frame["slice"] = pd.array(_lookup(train_meta, best, "slice", -1), dtype="Int64") if train_meta is not None \
        else pd.array([pd.NA] * len(best), dtype="Int64")
    frame["constant"] = result.constant
    if synthetic_names is not None:
        frame["synthetic_file"] = list(synthetic_names)
    if train_names is not None:
        names = np.asarray(train_names, dtype=object)
        frame["train_file"] = np.where(best >= 0, names[np.clip(best, 0, len(names) - 1)], "")
    return frame


def topk_table(result: correlation.MatchResult) -> pd.DataFrame:
    """``synthetic_index, rank, train_index, correlation`` (rank 1 = best)."""
    return result.topk_frame()


def neighbour_slices(train_meta: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """For every training image, the index of the previous and next axial
    slice of the same subject present in the training set (the nearest
    lower/higher slice number; -1 if none, or for 2D data with slice -1)."""
    n = len(train_meta)
    prev = np.full(n, -1, dtype=np.int64)
    nxt = np.full(n, -1, dtype=np.int64)
    frame = pd.DataFrame({"subject": train_meta["subject"].astype(str).to_numpy(),
                          "slice": pd.to_numeric(train_meta["slice"], errors="coerce").to_numpy(),
                          "i": np.arange(n)})
    frame = frame[frame["slice"] >= 0].sort_values(["subject", "slice", "i"])
    same_prev = frame["subject"].eq(frame["subject"].shift(1)) & frame["slice"].ne(frame["slice"].shift(1))
    same_next = frame["subject"].eq(frame["subject"].shift(-1)) & frame["slice"].ne(frame["slice"].shift(-1))
    i = frame["i"].to_numpy()
    prev[i[same_prev.to_numpy()]] = frame["i"].shift(1)[same_prev].astype(np.int64).to_numpy()
    nxt[i[same_next.to_numpy()]] = frame["i"].shift(-1)[same_next].astype(np.int64).to_numpy()
    return prev, nxt


def add_adjacent_slices(table: pd.DataFrame, synthetic, train, train_meta: pd.DataFrame,
                        channels=None) -> pd.DataFrame:
    """Add ``prev_correlation``/``next_correlation``: the exact correlation of
    each synthetic image with the previous/next slice of its best match's
    training subject (NaN where none exists, e.g. chest x-ray), plus their
    indices and slice numbers — a copy of one slice stands out from a
    look-alike of a whole neighbourhood."""
    prev, nxt = neighbour_slices(train_meta)
    best = table["train_index"].to_numpy()
    syn_index = table["synthetic_index"].to_numpy()
    slices = pd.to_numeric(train_meta["slice"], errors="coerce").to_numpy()
    out = table.copy()
    for name, nb in (("prev", prev), ("next", nxt)):
        idx = np.where(best >= 0, nb[np.clip(best, 0, len(nb) - 1)], -1)
        out[f"{name}_correlation"] = correlation.pair_correlations(synthetic, train, syn_index, idx, channels)
        out[f"{name}_index"] = idx
        out[f"{name}_slice"] = pd.array(np.where(idx >= 0, slices[np.clip(idx, 0, len(slices) - 1)], -1),
                                        dtype="Int64")
    return out


def baseline_table(result: correlation.MatchResult, test_meta: pd.DataFrame | None = None,
                   train_meta: pd.DataFrame | None = None, test_names: Sequence[str] | None = None,
                   train_names: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per held-out test image: its best training image and the
    maximum correlation — what a generator that memorized nothing scores.
    Subjects and slices come from the index tables, file names (folders of
    images) from ``*_names``; either is left out when not given."""
    best = result.best_index
    frame = pd.DataFrame({"test_index": np.arange(len(best))})
    if test_meta is not None:
        frame["test_subject"] = _lookup(test_meta, np.arange(len(best)), "subject", "")
    if test_names is not None:
        frame["test_file"] = list(test_names)
    frame["train_index"] = best
    frame["correlation"] = result.best_correlation
    if train_meta is not None:
        frame["subject"] = _lookup(train_meta, best, "subject", "")
        frame["slice"] = pd.array(_lookup(train_meta, best, "slice", -1), dtype="Int64")
    frame["constant"] = result.constant
    if train_names is not None:
        names = np.asarray(train_names, dtype=object)
        frame["train_file"] = np.where(best >= 0, names[np.clip(best, 0, len(names) - 1)], "")
    return frame


def valid_correlations(table: pd.DataFrame) -> np.ndarray:
    """The maximum correlations of a table, constant images excluded."""
    corr = table["correlation"].to_numpy(dtype=float)
    return corr[np.isfinite(corr)]


def compute_thresholds(baseline: np.ndarray | None, fixed: Sequence[float] = FIXED_THRESHOLDS) -> dict[str, float]:
    """``fixed_0.90 ...`` and ``baseline_p95 ...`` (percentiles of the
    baseline's maximum correlations; left out without a baseline): the
    criteria of :func:`helpers.memorization.correlation_thresholds` with
    every fixed threshold the audit reports."""
    return correlation_thresholds(baseline, fixed)


def thresholds_table(thresholds: Mapping[str, float]) -> pd.DataFrame:
    return pd.DataFrame({"name": list(thresholds), "value": list(thresholds.values())})


def quantiles(values: np.ndarray) -> dict[str, float | None]:
    if len(values) == 0:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    q = np.percentile(values, [50, 95, 99])
    return {"p50": float(q[0]), "p95": float(q[1]), "p99": float(q[2]), "max": float(np.max(values))}


def reported_interval(exc: Mapping) -> tuple[float, float]:
    """The Wilson 95 % interval of an exceedance (a row of exceedances.csv
    or an entry of summary.json), to state in words and error bars."""
    return float(exc["wilson_low"]), float(exc["wilson_high"])


def exceedance_table(groups: Mapping[str, tuple[str, np.ndarray | pd.DataFrame]],
                     thresholds: Mapping[str, float]) -> pd.DataFrame:
    """For each group (``name -> (kind, max correlations or match table)``; kind = model,
    baseline or control) and threshold: how many images exceed it (strictly
    greater), the fraction and its Wilson 95 % interval. The baseline is
    compared with the fixed thresholds only: against its own percentiles it
    exceeds 5 %/1 % by construction."""
    rows = []
    for name, (kind, values) in groups.items():
        values = valid_correlations(values) if isinstance(values, pd.DataFrame) else np.asarray(values, dtype=float)
        values = values[np.isfinite(values)]
        for tname, t in thresholds.items():
            if kind == "baseline" and not tname.startswith("fixed_"):
                continue
            n, above = len(values), int(np.sum(values > t))
            lo, hi = wilson_interval(above, n)
            rows.append({"model": name, "threshold_name": tname, "threshold": t, "n_images": n,
                         "n_above": above, "fraction": above / n if n else float("nan"),
                         "wilson_low": lo, "wilson_high": hi, "kind": kind})
    return pd.DataFrame(rows, columns=["model", "threshold_name", "threshold", "n_images", "n_above", "fraction",
                                       "wilson_low", "wilson_high", "kind"])


def comparison_groups(tables: Mapping[str, pd.DataFrame], baseline: pd.DataFrame | None = None,
                      control: pd.DataFrame | None = None) -> dict[str, tuple[str, pd.DataFrame]]:
    """``name -> (kind, table)`` for the exceedance and leakage tables: each
    model (kind "model"), the real test images (``real_test``, kind
    "baseline") and the planted-copy control (``control``, kind "control";
    a positive control, not a model)."""
    groups = {name: ("model", table) for name, table in tables.items()}
    if baseline is not None:
        groups[BASELINE_NAME] = ("baseline", baseline)
    if control is not None:
        groups[CONTROL_NAME] = ("control", control)
    return groups


def leakage_table(tables: Mapping[str, tuple[str, pd.DataFrame]], thresholds: Mapping[str, float],
                  n_train_subjects: int) -> pd.DataFrame:
    """Patient-level leakage: how many distinct training subjects have at
    least one slice that is the best match of an image above the threshold."""
    rows = []
    for name, (kind, table) in tables.items():
        corr = table["correlation"].to_numpy(dtype=float)
        for tname, t in thresholds.items():
            if kind == "baseline" and not tname.startswith("fixed_"):
                continue
            above = np.isfinite(corr) & (corr > t)
            subjects = table.loc[above, "subject"].astype(str)
            n_leaked = int(subjects[subjects != ""].nunique())
            rows.append({"model": name, "threshold_name": tname, "threshold": t,
                         "n_subjects_leaked": n_leaked, "n_train_subjects": int(n_train_subjects),
                         "fraction_subjects": n_leaked / n_train_subjects if n_train_subjects else float("nan"),
                         "n_images_above": int(above.sum()), "kind": kind})
    return pd.DataFrame(rows, columns=["model", "threshold_name", "threshold", "n_subjects_leaked",
                                       "n_train_subjects", "fraction_subjects", "n_images_above", "kind"])


def most_matched(table: pd.DataFrame, threshold: float = FIXED_THRESHOLDS[0]) -> pd.DataFrame:
    """Training images by how often they are some synthetic image's best
    match: ``n_matched`` counts all best matches (overall);
    ``n_matched_above`` only those with correlation above ``threshold`` (the
    lowest fixed threshold by default). Sorted by n_matched, then
    max_correlation."""
    valid = table[np.isfinite(table["correlation"].to_numpy(dtype=float)) & (table["train_index"] >= 0)]
    valid = valid.assign(above=valid["correlation"] > threshold)
    grouped = valid.groupby("train_index").agg(
        subject=("subject", "first"), slice=("slice", "first"), n_matched=("correlation", "size"),
        max_correlation=("correlation", "max"), n_matched_above=("above", "sum"))
    grouped = grouped.reset_index()
    grouped["n_matched_above"] = grouped["n_matched_above"].astype(int)
    grouped["threshold"] = float(threshold)
    return grouped.sort_values(["n_matched", "max_correlation", "train_index"],
                               ascending=[False, False, True]).reset_index(drop=True)


def group_summary(table: pd.DataFrame, exceedances: pd.DataFrame | None = None, name: str | None = None,
                  leakage: pd.DataFrame | None = None) -> dict:
    """``{"n", "constant", "quantiles", "exceedances", "subjects_leaked"}`` of one table."""
    values = valid_correlations(table)
    out = {"n": int(len(table)), "constant": int(table["constant"].sum()), "quantiles": quantiles(values)}
    if exceedances is not None and name is not None:
        sub = exceedances[exceedances["model"] == name]
        out["exceedances"] = {r.threshold_name: {"n_above": int(r.n_above), "fraction": float(r.fraction),
                                                 "wilson_low": float(r.wilson_low), "wilson_high": float(r.wilson_high)}
                              for r in sub.itertuples()}
    if leakage is not None and name is not None:
        sub = leakage[leakage["model"] == name]
        out["subjects_leaked"] = {r.threshold_name: int(r.n_subjects_leaked) for r in sub.itertuples()}
    return out

