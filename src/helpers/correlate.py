"""The memorization audit: tables and figures-of-merit around the
correlation engine (:mod:`helpers.correlation`), and the command

    python -m helpers.correlate --synthetic PATH --training PATH [--test PATH]
        [--channels all|C ...] [--top-k K] [--out DIR] [--backend auto|numpy|cupy]

where PATH is a folder of PNG/JPEG images or an ``.npy`` array (N×C×H×W,
N×H×W). It writes the match table, the real-vs-real baseline (with
``--test``), thresholds, exceedances and a summary, so that anyone with a
generator can audit it without running the notebooks.

Notebook 05 calls the same functions on ``results/<dataset>/`` and adds
what needs the study's index tables: subjects and slices of the matches,
adjacent-slice correlations, patient-level leakage and a planted-copy
positive control.

Like the engine, this module imports neither torch nor CuPy.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import correlation
from .common import read_json, write_csv, write_json

FIXED_THRESHOLDS: tuple[float, ...] = (0.90, 0.95, 0.99)
BASELINE_PERCENTILES: tuple[int, ...] = (95, 99)
MODELS: tuple[str, ...] = ("stylegan", "diffusion")
CONTROL_KINDS: tuple[str, ...] = ("copy", "noise", "brightness", "shift")
#: model name of the real-vs-real baseline in exceedances/leakage tables
BASELINE_NAME = "real_test"
CONTROL_NAME = "control"


# ==========================================================================
# The study's data
# ==========================================================================

@dataclass
class StudyData:
    """The prepared data of one dataset (step 01's outputs)."""

    results: Path
    dataset: str
    channels: list[str]
    train: correlation.ImageSet
    test: correlation.ImageSet | None
    train_meta: pd.DataFrame
    test_meta: pd.DataFrame | None
    channel_names: list[str] | None = None

    def images(self, source, label: str = "images") -> correlation.ImageSet:
        """``source`` (array or path) with the study's channel selection."""
        selection = None if self.train.channels is None else list(self.train.channels)
        return correlation.open_images(source, selection, channel_names=self.channel_names, label=label)

    @property
    def n_train_subjects(self) -> int:
        return int(self.train_meta["subject"].astype(str).nunique())


def load_study_data(results: str | Path, channels="all") -> StudyData:
    """``data/{train,test}.npy`` (memory-mapped) with their index tables;
    ``channels``: ``"all"``, a channel name/index or a list of them."""
    results = Path(results)
    data = results / "data"
    meta_path = data / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: missing — run notebook 01 (prepare data) first")
    meta = read_json(meta_path)
    names = list(meta.get("channels") or [])
    train = correlation.open_images(data / "train.npy", channels, channel_names=names or None, label="train")
    train_meta = _read_index(data / "train.csv", train.n)
    test = test_meta = None
    if (data / "test.npy").is_file():
        test = correlation.open_images(data / "test.npy", channels, channel_names=names or None, label="test")
        test_meta = _read_index(data / "test.csv", test.n)
    selected = names if train.channels is None else [names[i] if names else str(i) for i in train.channels]
    return StudyData(results, str(meta.get("dataset", results.name)), selected, train, test, train_meta, test_meta,
                     names or None)


def _read_index(path: Path, n: int) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing index table (one row per image: subject, slice, label, source)")
    frame = pd.read_csv(path)
    missing = {"subject", "slice"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
    if len(frame) != n:
        raise ValueError(f"{path}: {len(frame)} rows but the image array holds {n} images")
    return frame


def available_models(results: str | Path, models: Sequence[str] = MODELS) -> list[str]:
    """The models whose ``samples/<model>.npy`` exists (in the given order)."""
    return [m for m in models if (Path(results) / "samples" / f"{m}.npy").is_file()]


def load_samples(results: str | Path, model: str, channels="all", channel_names=None):
    """``(ImageSet, seeds or None)`` for ``samples/<model>.npy``."""
    folder = Path(results) / "samples"
    images = correlation.open_images(folder / f"{model}.npy", channels, channel_names=channel_names, label=model)
    seeds = None
    seeds_csv = folder / f"{model}_seeds.csv"
    if seeds_csv.is_file():
        frame = pd.read_csv(seeds_csv)
        if len(frame) == images.n and "seed" in frame:
            seeds = frame.sort_values("index")["seed"].to_numpy() if "index" in frame else frame["seed"].to_numpy()
    return images, seeds


# ==========================================================================
# Tables
# ==========================================================================

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


def baseline_table(result: correlation.MatchResult, test_meta: pd.DataFrame | None,
                   train_meta: pd.DataFrame | None) -> pd.DataFrame:
    """One row per held-out test image: its best training image and the
    maximum correlation — what a generator that memorized nothing scores."""
    best = result.best_index
    frame = pd.DataFrame({"test_index": np.arange(len(best))})
    frame["test_subject"] = _lookup(test_meta, np.arange(len(best)), "subject", "")
    frame["train_index"] = best
    frame["correlation"] = result.best_correlation
    frame["subject"] = _lookup(train_meta, best, "subject", "")
    frame["slice"] = pd.array(_lookup(train_meta, best, "slice", -1), dtype="Int64") if train_meta is not None \
        else pd.array([pd.NA] * len(best), dtype="Int64")
    frame["constant"] = result.constant
    return frame


def valid_correlations(table: pd.DataFrame) -> np.ndarray:
    """The maximum correlations of a table, constant images excluded."""
    corr = table["correlation"].to_numpy(dtype=float)
    return corr[np.isfinite(corr)]


def compute_thresholds(baseline: np.ndarray | None, fixed: Sequence[float] = FIXED_THRESHOLDS,
                       percentiles: Sequence[int] = BASELINE_PERCENTILES) -> dict[str, float]:
    """``fixed_0.90 ...`` and ``baseline_p95 ...`` (percentiles of the
    baseline's maximum correlations; left out without a baseline)."""
    out = {f"fixed_{t:.2f}": float(t) for t in fixed}
    if baseline is not None and len(baseline):
        for p in percentiles:
            out[f"baseline_p{p}"] = float(np.percentile(baseline, p))
    return out


def thresholds_table(thresholds: Mapping[str, float]) -> pd.DataFrame:
    return pd.DataFrame({"name": list(thresholds), "value": list(thresholds.values())})


def quantiles(values: np.ndarray) -> dict[str, float | None]:
    if len(values) == 0:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    q = np.percentile(values, [50, 95, 99])
    return {"p50": float(q[0]), "p95": float(q[1]), "p99": float(q[2]), "max": float(np.max(values))}


def bootstrap_fraction(n_above: int, n: int, n_boot: int, rng: np.random.Generator) -> tuple[float, float]:
    """Percentile bootstrap 95 % interval of a fraction. Resampling n images
    with replacement makes the count binomial(n, n_above/n), so it is drawn
    directly (same distribution, no n×n_boot array)."""
    if n == 0:
        return float("nan"), float("nan")
    draws = rng.binomial(n, n_above / n, size=n_boot) / n
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return float(lo), float(hi)


def wilson_interval(n_above: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson 95 % interval: unlike the bootstrap it is not [0, 0] at 0/n."""
    if n == 0:
        return float("nan"), float("nan")
    p = n_above / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def reported_interval(exc: Mapping) -> tuple[float, float]:
    """The 95 % interval of an exceedance to state in words and error bars:
    Wilson's when present (summary.json of older runs has only the
    bootstrap one). The percentile bootstrap collapses to 0–0 % when no
    image exceeds (100–100 % when all do), a certainty 64 samples cannot
    give; Wilson's interval for 0 of 64 is 0–5.7 %."""
    lo, hi = exc.get("wilson_low"), exc.get("wilson_high")
    if lo is None or hi is None or not (np.isfinite(float(lo)) and np.isfinite(float(hi))):
        lo, hi = exc["ci_low"], exc["ci_high"]
    return float(lo), float(hi)


def exceedance_table(groups: Mapping[str, tuple[str, np.ndarray | pd.DataFrame]], thresholds: Mapping[str, float],
                     n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """For each group (``name -> (kind, max correlations or match table)``; kind = model,
    baseline or control) and threshold: how many images exceed it (strictly
    greater), the fraction and its bootstrap 95 % interval (plus Wilson's).
    The baseline is compared with the fixed thresholds only: against its own
    percentiles it exceeds 5 %/1 % by construction."""
    rng = np.random.default_rng(seed)
    rows = []
    for name, (kind, values) in groups.items():
        values = valid_correlations(values) if isinstance(values, pd.DataFrame) else np.asarray(values, dtype=float)
        values = values[np.isfinite(values)]
        for tname, t in thresholds.items():
            if kind == "baseline" and not tname.startswith("fixed_"):
                continue
            n, above = len(values), int(np.sum(values > t))
            lo, hi = bootstrap_fraction(above, n, n_boot, rng)
            wlo, whi = wilson_interval(above, n)
            rows.append({"model": name, "threshold_name": tname, "threshold": t, "n_images": n,
                         "n_above": above, "fraction": above / n if n else float("nan"),
                         "ci_low": lo, "ci_high": hi, "wilson_low": wlo, "wilson_high": whi, "kind": kind})
    return pd.DataFrame(rows, columns=["model", "threshold_name", "threshold", "n_images", "n_above", "fraction",
                                       "ci_low", "ci_high", "wilson_low", "wilson_high", "kind"])


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
                                                 "ci_low": float(r.ci_low), "ci_high": float(r.ci_high),
                                                 "wilson_low": float(r.wilson_low), "wilson_high": float(r.wilson_high)}
                              for r in sub.itertuples()}
    if leakage is not None and name is not None:
        sub = leakage[leakage["model"] == name]
        out["subjects_leaked"] = {r.threshold_name: int(r.n_subjects_leaked) for r in sub.itertuples()}
    return out


# ==========================================================================
# The planted-copy positive control
# ==========================================================================

def make_control(train: correlation.ImageSet, n: int, seed: int = 0, noise_sd: float = 8.0,
                 kinds: Sequence[str] = CONTROL_KINDS) -> tuple[np.ndarray, pd.DataFrame]:
    """Synthetic-looking copies of ``n`` random (non-constant) training images — exact,
    with Gaussian noise (``noise_sd`` grey levels), with a brightness/contrast
    change (×0.85 + 20) and shifted by one pixel — that the engine must rank
    first. Returns (uint8 images n×C×H×W of all channels, table with
    ``control_index, control_kind, planted_index``)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(train.n)
    picked: list[np.ndarray] = []
    for lo in range(0, train.n, 1024):  # skip constant (blank) images: they have no correlation
        idx = order[lo:lo + 1024]
        rows = train.take(idx)
        picked.append(idx[rows.max(axis=1) != rows.min(axis=1)])
        if sum(map(len, picked)) >= n:
            break
    planted = np.sort(np.concatenate(picked)[:n]) if picked else np.empty(0, dtype=np.int64)
    n = len(planted)
    full = correlation.open_images(train, "all") if train.channels is not None else train
    raw = full.take(planted).reshape(n, *full.image_shape)
    if raw.dtype != np.uint8:
        raise ValueError(f"the planted-copy control expects uint8 training images, not {raw.dtype}")
    images = raw.copy()
    kind = np.array([kinds[i % len(kinds)] for i in range(n)])
    x = raw.astype(np.float64)
    for i in range(n):
        if kind[i] == "noise":
            images[i] = np.clip(np.rint(x[i] + rng.normal(0, noise_sd, x[i].shape)), 0, 255)
        elif kind[i] == "brightness":
            images[i] = np.clip(np.rint(x[i] * 0.85 + 20), 0, 255)
        elif kind[i] == "shift":  # one pixel to the right, first column repeated
            images[i][..., 1:] = raw[i][..., :-1]
            images[i][..., 0] = raw[i][..., 0]
    return images, pd.DataFrame({"control_index": np.arange(n), "control_kind": kind, "planted_index": planted})


def control_table(result: correlation.MatchResult, control: pd.DataFrame, images, train,
                  train_meta: pd.DataFrame | None, channels=None) -> pd.DataFrame:
    """The control's matches: ``found`` = the planted source is the best
    match; ``same_subject`` = the best match is a slice of the source's
    subject; ``planted_correlation`` = exact correlation with the source."""
    table = match_table(result, train_meta)
    table = table.drop(columns=["seed"]).rename(columns={"synthetic_index": "control_index"})
    table.insert(1, "control_kind", control["control_kind"].to_numpy())
    table.insert(2, "planted_index", control["planted_index"].to_numpy())
    table["found"] = table["train_index"].to_numpy() == control["planted_index"].to_numpy()
    # a miss that lands on the same subject is usually the adjacent slice
    planted_subject = _lookup(train_meta, control["planted_index"].to_numpy(), "subject", "")
    table["same_subject"] = (table["subject"].astype(str).to_numpy() == np.asarray(planted_subject, dtype=str)) \
        & (table["train_index"].to_numpy() >= 0)
    table["planted_correlation"] = correlation.pair_correlations(
        images, train, np.arange(len(control)), control["planted_index"].to_numpy(), channels)
    return table


def control_summary(table: pd.DataFrame) -> dict:
    by_kind = {}
    for kind, sub in table.groupby("control_kind", sort=False):
        values = valid_correlations(sub)
        by_kind[kind] = {"n": int(len(sub)), "found_fraction": float(sub["found"].mean()),
                         "same_subject_fraction": float(sub["same_subject"].mean()),
                         "min_correlation": float(values.min()) if len(values) else None,
                         "median_correlation": float(np.median(values)) if len(values) else None}
    return {"n": int(len(table)), "found_fraction": float(table["found"].mean()) if len(table) else None,
            "by_kind": by_kind,
            "note": "positive control: training images planted as copies (exact, noise, brightness, 1-pixel "
                    "shift); not a model"}


# ==========================================================================
# Running the engine with the study's settings
# ==========================================================================

def run_engine(synthetic, training, *, k: int = 1, channels=None, backend: str = "auto",
               memory_budget_gb: float = 2.0, progress: bool = True, desc: str | None = None):
    """:func:`helpers.correlation.top_matches` with a memory budget in GiB."""
    return correlation.top_matches(synthetic, training, k=k, channels=channels, backend=backend,
                                   memory_budget=int(memory_budget_gb * 1024**3), progress=progress, desc=desc)


class RunLog:
    """Pairs, engine seconds and backend over all engine runs of a step."""

    def __init__(self):
        self.pairs = 0
        self.seconds = 0.0
        self.backend = None
        self.note = None
        self.runs: dict[str, dict] = {}

    def add(self, name: str, result: correlation.MatchResult) -> correlation.MatchResult:
        self.pairs += result.pairs
        self.seconds += result.seconds
        self.backend, self.note = result.backend, result.backend_note
        self.runs[name] = {"pairs": result.pairs, "seconds": round(result.seconds, 3),
                           "pairs_per_second": result.pairs_per_second,
                           **{k: v for k, v in result.stats.items() if k != "plan"}}
        return result

    def as_dict(self) -> dict:
        return {"backend": self.backend, "backend_note": self.note, "pairs": self.pairs,
                "seconds": round(self.seconds, 3),
                "pairs_per_second": self.pairs / self.seconds if self.seconds else None, "runs": self.runs}


def audit_model(data: StudyData, model: str, out_dir: str | Path, log: RunLog, *, k: int = 5,
                backend: str = "auto", memory_budget_gb: float = 2.0, progress: bool = True) -> pd.DataFrame:
    """One generator's samples against the training set: writes
    ``matches_<model>.csv`` (best match, subject, slice, adjacent slices) and
    ``topk_<model>.csv``; returns the match table."""
    out_dir = Path(out_dir)
    images, seeds = load_samples(data.results, model)
    images = data.images(images, label=model)
    result = log.add(model, run_engine(images, data.train, k=k, backend=backend,
                                       memory_budget_gb=memory_budget_gb, progress=progress,
                                       desc=f"{model} vs train"))
    table = add_adjacent_slices(match_table(result, data.train_meta, seeds), images, data.train, data.train_meta)
    first = ["synthetic_index", "seed", "train_index", "correlation", "subject", "slice", "prev_correlation",
             "next_correlation", "constant"]
    table = table[first + [c for c in table.columns if c not in first]]
    write_csv(out_dir / f"matches_{model}.csv", table)
    write_csv(out_dir / f"topk_{model}.csv", topk_table(result))
    return table


def study_summary(data: StudyData, thresholds: Mapping[str, float], baseline: pd.DataFrame | None,
                  tables: Mapping[str, pd.DataFrame], exceedances: pd.DataFrame, leakage: pd.DataFrame,
                  log: RunLog, control: pd.DataFrame | None = None, top_k: int | None = None) -> dict:
    """The figures of notebook 05 as one JSON-able dict (``summary.json``)."""
    return {
        "dataset": data.dataset,
        "channels": data.channels,
        "n_train": data.train.n,
        "n_test": 0 if data.test is None else data.test.n,
        "n_train_subjects": data.n_train_subjects,
        "train_constant": max((r.get("n_train_constant", 0) for r in log.runs.values()), default=0),
        "top_k": top_k,
        "thresholds": dict(thresholds),
        "baseline": None if baseline is None else group_summary(baseline, exceedances, BASELINE_NAME, leakage),
        "models": {m: group_summary(t, exceedances, m, leakage) for m, t in tables.items()},
        # the positive control: same shape as a model entry, plus found rates; never under "models"
        "control": None if control is None else {**group_summary(control, exceedances, CONTROL_NAME, leakage),
                                                  **control_summary(control)},
        **log.as_dict(),
    }


# ==========================================================================
# The audit command
# ==========================================================================

def audit(synthetic, training, test=None, *, channels=None, k: int = 1, out: str | Path = "correlation_audit",
          backend: str = "auto", memory_budget_gb: float = 2.0, n_boot: int = 2000, seed: int = 0,
          progress: bool = True) -> dict:
    """Audit a set of synthetic images against training images (and a
    held-out test set for the baseline); writes the tables under ``out``
    and returns the summary."""
    out = Path(out)
    t0 = time.perf_counter()
    syn = correlation.open_images(synthetic, channels, label="synthetic")
    tra = correlation.open_images(training, channels, label="training")
    tst = correlation.open_images(test, channels, label="test") if test is not None else None
    log = RunLog()
    res = log.add("synthetic", run_engine(syn, tra, k=k, backend=backend, memory_budget_gb=memory_budget_gb,
                                          progress=progress, desc="synthetic vs training"))
    matches = match_table(res, synthetic_names=syn.names, train_names=tra.names)
    written = [write_csv(out / "matches.csv", matches)]
    if k > 1:
        written.append(write_csv(out / "topk.csv", topk_table(res)))
    groups = {"synthetic": ("model", valid_correlations(matches))}
    baseline = None
    if tst is not None:
        rb = log.add("baseline", run_engine(tst, tra, backend=backend, memory_budget_gb=memory_budget_gb,
                                            progress=progress, desc="test vs training"))
        baseline = baseline_table(rb, None, None).drop(columns=["test_subject", "subject", "slice"])
        if tst.names is not None:
            baseline.insert(1, "test_file", tst.names)
        if tra.names is not None:
            names = np.asarray(tra.names, dtype=object)
            baseline["train_file"] = np.where(baseline["train_index"] >= 0,
                                              names[np.clip(baseline["train_index"], 0, len(names) - 1)], "")
        written.append(write_csv(out / "baseline.csv", baseline))
        groups[BASELINE_NAME] = ("baseline", valid_correlations(baseline))
    thresholds = compute_thresholds(None if baseline is None else valid_correlations(baseline))
    exceed = exceedance_table(groups, thresholds, n_boot=n_boot, seed=seed)
    written.append(write_csv(out / "thresholds.csv", thresholds_table(thresholds)))
    written.append(write_csv(out / "exceedances.csv", exceed))
    summary = {
        "synthetic": str(synthetic), "training": str(training), "test": None if test is None else str(test),
        "channels": "all" if syn.channels is None else syn.channels, "image_shape": list(syn.shape),
        "n_synthetic": syn.n, "n_train": tra.n, "n_test": None if tst is None else tst.n, "top_k": k,
        "thresholds": thresholds,
        "baseline": None if baseline is None else group_summary(baseline),
        "synthetic_images": group_summary(matches, exceed, "synthetic"),
        "train_constant": int(res.train_constant.sum()),
        **log.as_dict(), "wall_seconds": round(time.perf_counter() - t0, 3),
    }
    written.append(write_json(out / "summary.json", summary))
    summary["written"] = [str(p) for p in written]
    return summary


def _channels_arg(values: Sequence[str] | None):
    if not values or (len(values) == 1 and values[0].lower() == "all"):
        return None
    return [int(v) if v.lstrip("-").isdigit() else v for v in values]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m helpers.correlate",
        description="Audit synthetic images for copies of training images: exact Pearson correlation of "
                    "every synthetic image with every training image (best match and its value).")
    parser.add_argument("--synthetic", required=True, help="folder of PNG/JPEG images or .npy array")
    parser.add_argument("--training", required=True, help="folder of PNG/JPEG images or .npy array")
    parser.add_argument("--test", help="held-out real images (same format) for the real-vs-real baseline")
    parser.add_argument("--channels", nargs="+", default=["all"],
                        help="'all' (default: all channels as one vector) or channel indices")
    parser.add_argument("--top-k", type=int, default=1, help="training matches kept per image (default 1)")
    parser.add_argument("--out", default="correlation_audit", help="output folder (default ./correlation_audit)")
    parser.add_argument("--backend", default="auto", choices=["auto", "numpy", "cupy"])
    parser.add_argument("--memory-gb", type=float, default=2.0, help="memory budget of the engine (GiB)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the intervals")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        summary = audit(args.synthetic, args.training, args.test, channels=_channels_arg(args.channels),
                        k=args.top_k, out=args.out, backend=args.backend, memory_budget_gb=args.memory_gb,
                        n_boot=args.bootstrap, seed=args.seed, progress=not args.quiet)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    q = summary["synthetic_images"]["quantiles"]
    print(f"{summary['n_synthetic']} synthetic × {summary['n_train']} training images "
          f"({summary['pairs']:,} pairs in {summary['seconds']:.2f} s, {summary['backend']}: {summary['backend_note']})")
    if q["max"] is not None:
        print(f"max correlation per synthetic image: median {q['p50']:.4f}, p95 {q['p95']:.4f}, max {q['max']:.4f}")
    for name, rec in summary["synthetic_images"]["exceedances"].items():
        lo, hi = reported_interval(rec)
        print(f"  above {name} ({summary['thresholds'][name]:.4f}): {rec['n_above']} "
              f"({100 * rec['fraction']:.2f} %, Wilson 95 % CI {100 * lo:.2f}–{100 * hi:.2f} %)")
    print("wrote " + ", ".join(summary["written"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
