"""Criteria → flag arrays (1 memorized, 0 not, NaN cannot judge), their
counts with Wilson 95 % intervals, and the training-set coverage."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

#: Gu et al.'s threshold on d_nearest / d_second
GU_RATIO = 1.0 / 3.0
#: the fixed correlation thresholds the audit reports: the paper's 0.95 and
#: 0.99, and 0.90 below them to show how close the rest come
FIXED_THRESHOLDS: tuple[float, ...] = (0.90, 0.95, 0.99)
#: the fixed thresholds that are pre-declared memorization criteria (the
#: paper's two; 0.90 is reported, never a criterion)
CRITERION_THRESHOLDS: tuple[float, ...] = FIXED_THRESHOLDS[1:]
#: percentiles of the held-out real images' best correlations used as thresholds
BASELINE_PERCENTILES: tuple[int, ...] = (95, 99)
#: the tidy table's columns: the audit's vocabulary (exceedances.csv, summary.json): n_images judged,
#: n_above memorized, their fraction and its Wilson interval
TABLE_COLUMNS = ["size", "n_subjects", "group", "criterion", "n_images", "n_above", "fraction", "wilson_low",
                 "wilson_high"]


def l2_ratio_flags(nearest_distance, second_distance, ratio: float = GU_RATIO) -> np.ndarray:
    """Gu et al.: memorized when ``d_nearest < ratio · d_second`` (strictly).
    NaN where the second distance is missing. Two training images at
    distance 0 from the sample (exact duplicates in the training set) give
    0 < 0: not memorized by this criterion."""
    d1 = np.asarray(nearest_distance, dtype=float)
    d2 = np.asarray(second_distance, dtype=float)
    ok = np.isfinite(d1) & np.isfinite(d2)
    out = np.full(d1.shape, np.nan)
    out[ok] = (d1[ok] < float(ratio) * d2[ok]).astype(float)
    return out


def exceedance_flags(best_correlation, threshold: float) -> np.ndarray:
    """The paper's criterion: the best Pearson correlation with any training
    image *exceeds* (strictly, as in ``helpers.audit``) ``threshold``.
    NaN where the correlation is undefined (constant images)."""
    r = np.asarray(best_correlation, dtype=float)
    out = np.full(r.shape, np.nan)
    ok = np.isfinite(r)
    out[ok] = (r[ok] > float(threshold)).astype(float)
    return out


def correlation_thresholds(baseline_best=None, fixed: Sequence[float] = CRITERION_THRESHOLDS,
                           percentiles: Sequence[int] = BASELINE_PERCENTILES) -> dict[str, float]:
    """``{"fixed_0.95": 0.95, ..., "baseline_p95": …}``: the fixed thresholds
    and the percentiles of the held-out real images' best correlations with
    the same training images (left out without a baseline)."""
    out = {f"fixed_{float(t):.2f}": float(t) for t in fixed}
    if baseline_best is not None:
        base = np.asarray(baseline_best, dtype=float)
        base = base[np.isfinite(base)]
        if len(base):
            for p in percentiles:
                out[f"baseline_p{int(p)}"] = float(np.percentile(base, p))
    return out


def _flags(values) -> tuple[np.ndarray, np.ndarray]:
    """(flagged, judged) boolean arrays of a flag array."""
    a = np.asarray(values)
    if a.dtype == bool:
        return a.ravel(), np.ones(a.size, dtype=bool)
    a = a.astype(float).ravel()
    judged = np.isfinite(a)
    return judged & (np.where(judged, a, 0.0) != 0), judged


def count_flags(values) -> tuple[int, int]:
    """``(k, n)``: memorized and judged images of a flag array."""
    flagged, judged = _flags(values)
    return int(flagged.sum()), int(judged.sum())


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of k/n; (NaN, NaN) for n = 0. Unlike a
    percentile bootstrap it is not [0, 0] at 0/n: 0 of 64 gives 0–5.7 %, not
    a certainty 64 samples cannot give.

    Newcombe's (1998) form, the one ``scipy.stats.binomtest(k, n).proportion_ci(
    method="wilson")`` evaluates, in the same order of operations, so the
    values are bit for bit scipy's (tested against it); written out because
    importing ``scipy.stats`` costs the audit command ~0.9 s, ``scipy.special``
    (for the normal quantile) a quarter of that."""
    from scipy.special import ndtri

    k, n = int(k), int(n)
    if n == 0:
        return math.nan, math.nan
    if not 0 <= k <= n:
        raise ValueError(f"need 0 ≤ k ≤ n, got k={k}, n={n}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    p = k / n
    z = ndtri(0.5 + 0.5 * confidence)
    denom = 2 * (n + z**2)
    center = (2 * n * p + z**2) / denom
    delta = z / denom * math.sqrt(4 * n * p * (1 - p) + z**2)
    return (0.0 if k == 0 else float(center - delta)), (1.0 if k == n else float(center + delta))


def criteria_table(flags: Mapping[str, Mapping[str, Any]], size: int, n_subjects: int | None = None,
                   confidence: float = 0.95) -> pd.DataFrame:
    """The tidy criteria table of one training set: for every ``group``
    (a model, ``optimal_denoiser``, the held-out real images …) and every
    ``criterion`` of ``flags[group]``, n_images (judged), n_above
    (memorized), fraction and its Wilson interval. ``size`` is the number of training
    images, ``n_subjects`` the number of training subjects. Tables of
    several training-set sizes are simply concatenated (``pd.concat``)."""
    rows = []
    for group, by_criterion in flags.items():
        for criterion, values in by_criterion.items():
            k, n = count_flags(values)
            lo, hi = wilson_interval(k, n, confidence)
            rows.append({"size": int(size), "n_subjects": pd.NA if n_subjects is None else int(n_subjects),
                         "group": str(group), "criterion": str(criterion), "n_images": n, "n_above": k,
                         "fraction": k / n if n else math.nan, "wilson_low": lo, "wilson_high": hi})
    frame = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    frame["n_subjects"] = frame["n_subjects"].astype("Int64")
    return frame


def coverage(nearest_index, flags, n_training: int, training_index: pd.DataFrame | None = None) -> dict:
    """How much of the training set leaks: the training images that are the
    nearest match of at least one flagged sample.

    Returns ``n_training``, ``n_samples`` (judged), ``n_flagged``,
    ``n_covered`` (distinct training images), ``fraction`` (n_covered /
    n_training) and, with ``training_index``, ``n_subjects``,
    ``n_subjects_covered`` and ``subject_fraction``. No interval: the
    training set is counted in full, not sampled; what is uncertain is how
    many samples it would take to reach the rest."""
    idx = np.asarray(nearest_index, dtype=np.int64).ravel()
    flagged, judged = _flags(flags)
    if len(idx) != len(flagged):
        raise ValueError(f"{len(idx)} nearest indices but {len(flagged)} flags")
    hit = idx[flagged & (idx >= 0)]
    if len(hit) and hit.max() >= n_training:
        raise ValueError(f"nearest index {hit.max()} is outside the {n_training} training images")
    covered = np.unique(hit)
    out = {"n_training": int(n_training), "n_samples": int(judged.sum()), "n_flagged": int(flagged.sum()),
           "n_covered": int(len(covered)), "fraction": len(covered) / n_training if n_training else math.nan}
    if training_index is not None:
        subjects = training_index["subject"].astype(str).to_numpy()
        n_sub = int(pd.unique(subjects).size)
        n_cov = int(pd.unique(subjects[covered]).size) if len(covered) else 0
        out |= {"n_subjects": n_sub, "n_subjects_covered": n_cov,
                "subject_fraction": n_cov / n_sub if n_sub else math.nan}
    return out


def coverage_table(groups: Mapping[str, tuple[Any, Mapping[str, Any]]], n_training: int, size: int | None = None,
                   training_index: pd.DataFrame | None = None) -> pd.DataFrame:
    """:func:`coverage` for every ``group -> (nearest_index, {criterion: flags})``, one row each."""
    rows = []
    for group, (nearest_index, by_criterion) in groups.items():
        for criterion, values in by_criterion.items():
            rows.append({"size": int(size if size is not None else n_training), "group": str(group),
                         "criterion": str(criterion),
                         **coverage(nearest_index, values, n_training, training_index)})
    return pd.DataFrame(rows)

