"""The memorization audit: measures, tables and figures-of-merit around the
correlation engine (:mod:`helpers.correlation`), one audit path for step 05
(:func:`audit_study`) and the command

    python -m helpers.correlate --synthetic PATH --training PATH [--test PATH]
        [--channels all|each|C ...] [--headline C] [--top-k K] [--out DIR]
        [--backend auto|numpy|cupy] [--control N]

where PATH is a folder of PNG/JPEG images or an ``.npy`` array (N×C×H×W,
N×H×W). Both write the same layout and the same ``summary.json``.

Measures
--------
The authors correlated one grayscale modality at a time (each modality's
PNG, flattened, ``pearsonr``). A *measure* is one such choice of pixels:

* one per image channel (``t1``, ``t2``, ``t1ce``, ``flair``; ``gray`` for
  chest x-rays): the paper's measure, a synthetic image's T1 against every
  training image's T1;
* ``all``: every channel as one vector — this study's measure, not the
  paper's (it is what step 05 reported before per-modality correlation);
  left out for single-channel data, where it coincides with the channel;
* ``seg``: the tumour label map is correlated too, since a copied label map
  is a copy, but it is flagged ``label_map``, reported apart (after every
  image measure) and never the headline: it is all zero on slices without
  tumour, so most images are constant there and have no correlation
  (flagged ``constant`` and left out of statistics, as blank images always
  are), and Pearson r of a few discrete labels is not comparable with r of
  intensities.

The *headline* measure (``headline_channel``; default the first image
channel) is the one the finding sentence, the README figure, the size plot
and the cross-dataset comparison use; per-measure output lists it first.
All measures come from one engine pass per image set
(:func:`helpers.correlation.match_groups`): the training set is streamed
once for all of them.

Layout written under ``out`` (``results/<dataset>/correlation/`` in step 05)::

    summary.json                   headline, measures (headline first), by_measure
    <measure>/matches_<model>.csv  best match per synthetic image (+ adjacent slices)
    <measure>/topk_<model>.csv     the top-k
    <measure>/most_matched_<model>.csv
    <measure>/baseline.csv         held-out real images vs training
    <measure>/thresholds.csv       fixed and baseline-percentile thresholds
    <measure>/exceedances.csv      images above each threshold, 95 % intervals
    <measure>/leakage.csv          training subjects with an image matched above it
    <measure>/control_matches.csv  planted-copy positive control

(the command calls its synthetic set ``synthetic`` and writes leakage,
adjacent slices and most-matched tables only where subjects are known).

Like the engine, this module imports neither torch nor CuPy.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
#: channels that hold label maps, not intensities (compared lower-case)
LABEL_CHANNELS: tuple[str, ...] = ("seg",)
#: the measure name of all channels as one vector
JOINT = "all"
JOINT_DESCRIPTION = "all channels as one vector (this study's measure, not the paper's)"
#: the name of the synthetic set of the audit command
SYNTHETIC_NAME = "synthetic"


# ==========================================================================
# Measures: which pixels are correlated
# ==========================================================================

@dataclass(frozen=True)
class Measure:
    """One choice of pixels to correlate: a channel alone, or several as one vector.

    ``name`` is the folder and key (the channel name in lower case, or
    ``all``); ``channels`` the data's channel names, ``index`` their
    positions; ``kind`` is ``modality`` (the paper's measure), ``joint``
    (ours) or ``label_map`` (reported apart, never a headline)."""

    name: str
    channels: tuple[str, ...]
    index: tuple[int, ...]
    kind: str
    description: str

    @property
    def label_map(self) -> bool:
        return self.kind == "label_map"

    def info(self, headline: str | None = None) -> dict:
        return {"measure": self.name, "channels": list(self.channels), "channel_index": list(self.index),
                "kind": self.kind, "label_map": self.label_map, "headline": self.name == headline,
                "description": self.description}


def is_label_channel(name: str) -> bool:
    return str(name).lower() in LABEL_CHANNELS


def _channel_position(token, names: Sequence[str], what: str = "channel") -> int:
    """Index of a channel given by name (any case) or index."""
    if isinstance(token, (int, np.integer)) or (isinstance(token, str) and token.lstrip("-").isdigit()):
        i = int(token)
        if not -len(names) <= i < len(names):
            raise ValueError(f"{what} {i} is out of range for {len(names)} channel(s): {', '.join(names)}")
        return i % len(names)
    lower = [str(n).lower() for n in names]
    if str(token).lower() not in lower:
        raise ValueError(f"{what} {token!r} is not one of the data's channels: {', '.join(map(str, names))}")
    return lower.index(str(token).lower())


def study_measures(channel_names: Sequence[str], channels=None, *, each: bool = True, joint: bool = True,
                   headline: str | None = None) -> tuple[list[Measure], str]:
    """The measures to compute and the headline's name, headline first.

    ``channel_names``: the data's channels (e.g. T1, T2, T1ce, FLAIR, Seg).
    ``channels``: ``None``/``"all"`` (every channel) or the names/indices to
    correlate. ``each``: one measure per selected channel; ``joint``: also
    the selected channels as one vector (``all``; skipped when one channel
    is selected and ``each`` is on, since it would be the same measure).
    ``headline``: a selected image channel (any case), ``all`` when the
    joint measure is computed, or ``None`` for the first image channel (the
    joint measure when no per-channel one exists). A label map (``seg``) is
    refused as headline. Order: headline, the other image channels in data
    order, the joint measure, label maps.
    """
    names = [str(n) for n in channel_names]
    if channels is None or (isinstance(channels, str) and channels.lower() == "all"):
        chosen = list(range(len(names)))
    else:
        tokens = [channels] if isinstance(channels, (str, int, np.integer)) else list(channels)
        if not tokens:
            raise ValueError("channels selects no channel (use null for all)")
        chosen = [_channel_position(t, names) for t in tokens]
        if len(set(chosen)) != len(chosen):
            raise ValueError(f"channels {list(tokens)} repeats a channel")
        chosen.sort()
    measures: list[Measure] = []
    if each:
        for i in chosen:
            label = is_label_channel(names[i])
            measures.append(Measure(
                names[i].lower(), (names[i],), (i,), "label_map" if label else "modality",
                f"{names[i]} alone, a label map: reported apart, never the headline" if label
                else f"{names[i]} alone (the paper's measure: one modality at a time)"))
    if joint and not (each and len(chosen) == 1):
        every = len(chosen) == len(names)
        desc = JOINT_DESCRIPTION if every else \
            f"channels {', '.join(names[i] for i in chosen)} as one vector (this study's measure, not the paper's)"
        measures.append(Measure(JOINT if every else "+".join(names[i].lower() for i in chosen),
                                tuple(names[i] for i in chosen), tuple(chosen), "joint", desc))
    if not measures:
        raise ValueError("no measure to compute: set each and/or joint")
    by_name = {m.name: m for m in measures}
    allowed = [m.name for m in measures if not m.label_map]
    if headline is None or headline == "":
        image = [m for m in measures if m.kind == "modality"]
        pick = image[0] if image else next((m for m in measures if m.kind == "joint"), None)
        if pick is None:
            raise ValueError(f"no image channel among {', '.join(names[i] for i in chosen)} to be the headline: "
                             "label maps are never the headline")
    else:
        key = str(headline).lower()
        pick = by_name.get(key)
        if pick is None and key == JOINT:  # the joint measure of a channel subset
            pick = next((m for m in measures if m.kind == "joint"), None)
        if pick is None and key.lstrip("-").isdigit() and -len(names) <= int(key) < len(names):
            pick = by_name.get(names[int(key)].lower())  # a channel index
        if pick is None or pick.label_map:
            why = (f"{headline!r} is a label map (all zero on slices without tumour), not an image modality"
                   if is_label_channel(key) else f"{headline!r} is not one of the measures computed")
            raise ValueError(f"headline_channel {why}; choose one of: {', '.join(allowed) or '(none)'}")
    order = {"modality": 1, "joint": 2, "label_map": 3}
    ordered = sorted(measures, key=lambda m: (m.name != pick.name, order[m.kind]))
    return ordered, pick.name


def measure_summary(summary: Mapping, measure: str | None = None) -> dict:
    """One measure of ``summary.json`` as a flat dict with the keys of the
    single-measure summary (``dataset``, ``channels``, ``thresholds``,
    ``baseline``, ``models``, ``control``, ...) plus ``measure``, ``kind``,
    ``description`` and ``headline``. ``measure=None``: the headline. A
    summary of the older single-measure layout is its own (joint) measure."""
    if "by_measure" not in summary:
        if measure not in (None, JOINT):
            raise ValueError(f"summary.json has one measure ('{JOINT}', the older layout), not {measure!r}")
        return {**summary, "measure": JOINT, "kind": "joint", "label_map": False, "headline": True,
                "description": JOINT_DESCRIPTION, "data_channels": summary.get("channels", [])}
    name = summary["headline"] if measure is None else str(measure).lower()
    if name not in summary["by_measure"]:
        raise ValueError(f"summary.json has no measure {measure!r}; measures: {', '.join(summary['measures'])}")
    shared = {k: v for k, v in summary.items() if k not in ("by_measure", "measures", "headline", "channels")}
    return {**shared, "data_channels": summary.get("channels", []), **summary["by_measure"][name]}


# ==========================================================================
# The study's data
# ==========================================================================

@dataclass
class StudyData:
    """The images of one audit: training (and held-out test) images with
    their index tables where known, and the synthetic sets to audit
    (``{name: (ImageSet, seeds or None)}``)."""

    results: Path | None
    dataset: str
    channel_names: list[str]
    train: correlation.ImageSet
    test: correlation.ImageSet | None
    train_meta: pd.DataFrame | None
    test_meta: pd.DataFrame | None
    synthetic: dict = field(default_factory=dict)

    def images(self, source, label: str = "images") -> correlation.ImageSet:
        """``source`` (array, path or ImageSet) with the data's channel names."""
        if isinstance(source, correlation.ImageSet) and source.channel_names == self.channel_names:
            return source
        return correlation.open_images(source, channel_names=self.channel_names, label=label)

    @property
    def n_train_subjects(self) -> int | None:
        if self.train_meta is None or "subject" not in self.train_meta:
            return None
        return int(self.train_meta["subject"].astype(str).nunique())


def load_study_data(results: str | Path, models: Sequence[str] = ()) -> StudyData:
    """``data/{train,test}.npy`` (memory-mapped) with their index tables, and
    ``samples/<model>.npy`` of each of ``models`` that exists."""
    results = Path(results)
    data = results / "data"
    meta_path = data / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: missing — run notebook 01 (prepare data) first")
    meta = read_json(meta_path)
    train = correlation.open_images(data / "train.npy", label="train")
    names = [str(n) for n in (meta.get("channels") or [])] or [f"ch{i}" for i in range(train.image_shape[0])]
    if len(names) != train.image_shape[0]:
        raise ValueError(f"{meta_path}: {len(names)} channel names but the images have {train.image_shape[0]} channels")
    train = correlation.open_images(train, channel_names=names)
    train_meta = _read_index(data / "train.csv", train.n)
    test = test_meta = None
    if (data / "test.npy").is_file():
        test = correlation.open_images(data / "test.npy", channel_names=names, label="test")
        test_meta = _read_index(data / "test.csv", test.n)
    study = StudyData(results, str(meta.get("dataset", results.name)), names, train, test, train_meta, test_meta)
    for model in available_models(results, models):
        images, seeds = load_samples(results, model, channel_names=names)
        study.synthetic[model] = (images, seeds)
    return study


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


def load_samples(results: str | Path, model: str, channel_names=None):
    """``(ImageSet, seeds or None)`` for ``samples/<model>.npy``."""
    folder = Path(results) / "samples"
    images = correlation.open_images(folder / f"{model}.npy", channel_names=channel_names, label=model)
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


def wilson_interval(n_above: int, n: int) -> tuple[float, float]:
    """Wilson 95 % interval (scipy's, through :func:`helpers.memorization.wilson_interval`):
    unlike the bootstrap it is not [0, 0] at 0/n; (NaN, NaN) at n = 0."""
    from .memorization import wilson_interval as scipy_wilson

    return scipy_wilson(n_above, n)


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
                 kinds: Sequence[str] = CONTROL_KINDS,
                 require: Sequence[Sequence[int]] | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """Synthetic-looking copies of ``n`` random (non-constant) training images — exact,
    with Gaussian noise (``noise_sd`` grey levels), with a brightness/contrast
    change (×0.85 + 20) and shifted by one pixel — that the engine must rank
    first. ``require``: channel groups (indices) in each of which a picked
    image must be non-constant (default: the whole vector), e.g. every image
    measure, so that the control tests each of them. Returns (uint8 images
    n×C×H×W of all channels, table with ``control_index, control_kind,
    planted_index``)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(train.n)
    picked: list[np.ndarray] = []
    for lo in range(0, train.n, 1024):  # skip constant (blank) images: they have no correlation
        idx = order[lo:lo + 1024]
        rows = train.take_channels(idx)
        ok = np.ones(len(idx), dtype=bool)
        for group in ([None] if not require else require):
            sel = rows.reshape(len(idx), -1) if group is None else rows[:, list(group)].reshape(len(idx), -1)
            ok &= sel.max(axis=1) != sel.min(axis=1)
        picked.append(idx[ok])
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
    subject; ``planted_correlation`` = exact correlation with the source
    (on ``channels``, the measure's); ``source_defined`` = that correlation
    exists (False where the source or the planted image is constant in this
    measure, e.g. the blank label map of a slice without tumour, to which
    the noisy copy adds nothing but noise). Found rates and the control's
    exceedances count only rows with ``source_defined``."""
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
    table["source_defined"] = np.isfinite(table["planted_correlation"].to_numpy(dtype=float))
    return table


def scored_control(table: pd.DataFrame | None) -> pd.DataFrame | None:
    """The control rows that test the measure (``source_defined``)."""
    if table is None or "source_defined" not in table:
        return table
    return table[table["source_defined"].astype(bool)].reset_index(drop=True)


def control_summary(table: pd.DataFrame) -> dict:
    """Found rates of the control, over its images with a defined correlation
    to their source (``source_defined``; a planted image can be blank in one
    measure, e.g. the label map of a slice without tumour)."""
    defined = table["source_defined"].astype(bool) if "source_defined" in table else ~table["constant"].astype(bool)
    table = table.assign(_ok=defined.to_numpy())
    by_kind = {}
    for kind, sub in table.groupby("control_kind", sort=False):
        ok = sub[sub["_ok"]]
        values = valid_correlations(ok)
        by_kind[kind] = {"n": int(len(sub)), "undefined": int((~sub["_ok"]).sum()),
                         "found_fraction": float(ok["found"].mean()) if len(ok) else None,
                         "same_subject_fraction": float(ok["same_subject"].mean()) if len(ok) else None,
                         "min_correlation": float(values.min()) if len(values) else None,
                         "median_correlation": float(np.median(values)) if len(values) else None}
    ok = table[table["_ok"]]
    return {"n_planted": int(len(table)), "n_undefined": int((~table["_ok"]).sum()),
            "found_fraction": float(ok["found"].mean()) if len(ok) else None, "by_kind": by_kind,
            "note": "positive control: training images planted as copies (exact, noise, brightness, 1-pixel "
                    "shift); not a model; found rates and exceedances over planted images with a defined "
                    "correlation to their source in this measure"}


# ==========================================================================
# Running the engine with the study's settings
# ==========================================================================

def run_engine(synthetic, training, groups: Mapping[str, Any] | None = None, *, k: int = 1,
               backend: str = "auto", memory_budget_gb: float = 2.0, progress: bool = True,
               desc: str | None = None) -> dict[str, correlation.MatchResult]:
    """:func:`helpers.correlation.match_groups` (every measure in one pass)
    with a memory budget in GiB."""
    return correlation.match_groups(synthetic, training, groups, k=k, backend=backend,
                                    memory_budget=int(memory_budget_gb * 1024**3), progress=progress, desc=desc)


class RunLog:
    """Correlations, engine seconds and backend over all engine runs of a step.
    ``image_pairs``: synthetic × training images; ``pairs``: correlations
    computed (image pairs × measures, all in one pass per run)."""

    def __init__(self):
        self.pairs = 0
        self.image_pairs = 0
        self.seconds = 0.0
        self.backend = None
        self.note = None
        self.runs: dict[str, dict] = {}

    def add(self, name: str, results: Mapping[str, correlation.MatchResult]) -> dict[str, correlation.MatchResult]:
        first = next(iter(results.values()))
        pairs = first.pairs * len(results)
        self.pairs += pairs
        self.image_pairs += first.pairs
        self.seconds += first.seconds  # one call for every measure
        self.backend, self.note = first.backend, first.backend_note
        self.runs[name] = {
            "image_pairs": first.pairs, "measures": list(results), "pairs": pairs,
            "seconds": round(first.seconds, 3), "pairs_per_second": pairs / first.seconds if first.seconds else None,
            "by_measure": {m: {k: v for k, v in r.stats.items() if k not in ("plan", "groups")}
                           for m, r in results.items()},
            "plan": first.stats.get("plan")}
        return dict(results)

    def as_dict(self) -> dict:
        return {"backend": self.backend, "backend_note": self.note, "pairs": self.pairs,
                "image_pairs": self.image_pairs, "seconds": round(self.seconds, 3),
                "pairs_per_second": self.pairs / self.seconds if self.seconds else None, "runs": self.runs}


# ==========================================================================
# One audit path: step 05 and the command
# ==========================================================================

#: the per-measure files (and per-model patterns) an audit writes; stale ones are removed
_MEASURE_FILES = ("baseline.csv", "thresholds.csv", "exceedances.csv", "leakage.csv", "control_matches.csv")
_MODEL_PATTERNS = ("matches_*.csv", "topk_*.csv", "most_matched_*.csv")
_MATCH_COLUMNS = ["synthetic_index", "seed", "train_index", "correlation", "subject", "slice", "prev_correlation",
                  "next_correlation", "constant"]


@dataclass
class StudyAudit:
    """What :func:`audit_study` computed: per measure (headline first) the
    thresholds, baseline, control and match tables, exceedances and leakage;
    ``summary`` is summary.json. The methods return tables to display."""

    out: Path
    summary: dict
    measures: list[Measure]
    headline: str
    thresholds: dict[str, dict] = field(default_factory=dict)
    baseline: dict[str, pd.DataFrame | None] = field(default_factory=dict)
    control: dict[str, pd.DataFrame | None] = field(default_factory=dict)
    matches: dict[str, dict[str, pd.DataFrame]] = field(default_factory=dict)
    exceedances: dict[str, pd.DataFrame] = field(default_factory=dict)
    leakage: dict[str, pd.DataFrame] = field(default_factory=dict)
    written: list[Path] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        """Measure names, headline first."""
        return [m.name for m in self.measures]

    @property
    def models(self) -> list[str]:
        return list(next(iter(self.matches.values()), {}))

    def describe(self) -> str:
        """Markdown: the data, the measures and the engine run."""
        s = self.summary
        lines = [f"**{s['dataset']}**: {s['n_train']} training images"
                 + (f" from {s['n_train_subjects']} subjects" if s.get("n_train_subjects") else "")
                 + f", {s.get('n_test') or 0} held-out test images; channels {', '.join(map(str, s['channels']))}; "
                 f"audited: {', '.join(self.models) or 'no generator yet (baseline and control only)'}.", "",
                 "| measure | channels | kind | |", "|---|---|---|---|"]
        for m in self.measures:
            lines.append(f"| {m.name}{' (headline)' if m.name == self.headline else ''} | {', '.join(m.channels)} "
                         f"| {m.kind} | {m.description} |")
        lines += ["", f"{s['pairs']:,} correlations ({s['image_pairs']:,} image pairs × measures, one pass per "
                      f"image set) in {s['seconds']:.1f} s on {s['backend']}: {s['backend_note']}"]
        return "\n".join(lines)

    def thresholds_frame(self) -> pd.DataFrame:
        """Thresholds per measure (rows, headline first)."""
        frame = pd.DataFrame.from_dict(self.thresholds, orient="index")
        frame.index.name = "measure"
        return frame

    def overview(self) -> pd.DataFrame:
        """Per measure and group (models, real held-out, control): images,
        constant ones, median / p99 / max of the best correlation."""
        rows = []
        for m in self.names:
            groups = comparison_groups(self.matches[m], self.baseline[m], scored_control(self.control[m]))
            for model, (kind, table) in groups.items():
                q = quantiles(valid_correlations(table))
                rows.append({"measure": m, "kind": kind, "model": model, "n": len(table),
                             "constant": int(table["constant"].astype(bool).sum()), "median": q["p50"],
                             "p99": q["p99"], "max": q["max"]})
        return pd.DataFrame(rows, columns=["measure", "kind", "model", "n", "constant", "median", "p99", "max"])

    def _pivot(self, frames: Mapping[str, pd.DataFrame], values: str) -> pd.DataFrame:
        parts = [f.assign(measure=m) for m, f in frames.items() if f is not None and len(f)]
        if not parts:
            return pd.DataFrame()
        return pd.concat(parts).pivot_table(index=["measure", "kind", "model"], columns="threshold_name",
                                            values=values, sort=False)

    def exceedance_frame(self, values: str = "fraction") -> pd.DataFrame:
        """Images above each threshold (``fraction`` or ``n_above``) per measure, kind and model."""
        return self._pivot(self.exceedances, values)

    def leakage_frame(self) -> pd.DataFrame:
        """Training subjects with an image matched above each threshold."""
        return self._pivot(self.leakage, "n_subjects_leaked")

    def control_frame(self) -> pd.DataFrame:
        """The positive control per measure and kind of planted copy."""
        parts = []
        for m in self.names:
            table = self.control.get(m)
            if table is None or table.empty:
                continue
            by_kind = table.groupby("control_kind", sort=False)
            agg = scored_control(table).groupby("control_kind", sort=False).agg(
                found=("found", "mean"), same_subject=("same_subject", "mean"),
                min_correlation=("correlation", "min"), median_correlation=("correlation", "median"))
            agg = agg.reindex(list(by_kind.groups))
            agg.insert(0, "undefined", by_kind["source_defined"].apply(lambda d: int((~d.astype(bool)).sum())))
            agg.insert(0, "n", by_kind.size())
            parts.append(agg.reset_index().assign(measure=m))
        if not parts:
            return pd.DataFrame()
        return pd.concat(parts).set_index(["measure", "control_kind"])

    def top_matches(self, n: int = 5) -> pd.DataFrame:
        """The ``n`` best matches of each model, per measure."""
        parts = [t.sort_values("correlation", ascending=False).head(n).assign(measure=m, model=model)
                 for m in self.names for model, t in self.matches[m].items()]
        if not parts:
            return pd.DataFrame()
        cols = ["measure", "model"] + [c for c in _MATCH_COLUMNS if c in parts[0]]
        return pd.concat(parts)[cols].reset_index(drop=True)

    def files_frame(self) -> pd.DataFrame:
        """Every file written, with its size."""
        rank = {name: i for i, name in enumerate(self.names)}
        paths = sorted(set(self.written), key=lambda p: (rank.get(p.parent.name, -1), p.name))
        return pd.DataFrame({"file": [str(p.relative_to(self.out)) if p.is_relative_to(self.out) else str(p)
                                      for p in paths],
                             "bytes": [p.stat().st_size if p.is_file() else None for p in paths]})


def _setting(cfg, name: str, default):
    value = getattr(cfg, name, default)
    return default if value is None and default is not None else value


def _previous_folders(out: Path) -> list[Path]:
    """The folders an earlier audit in ``out`` wrote tables to, from its
    summary.json: one per measure, or ``out`` itself (the older layout)."""
    path = out / "summary.json"
    if not path.is_file():
        return []
    try:
        previous = read_json(path)
    except ValueError:
        return []
    if "by_measure" not in previous:
        return [out]
    return [out / str(m) for m in previous.get("measures", []) if str(m) and "/" not in str(m)]


def _remove_stale(out: Path, previous: Sequence[Path], measures: Sequence[str], written: Sequence[Path]) -> None:
    """Remove the tables of an earlier audit (``previous`` folders) that this
    run did not rewrite — the older layout, measures or models no longer
    computed — so the folder holds what summary.json lists. Only this
    step's file names are touched, and a folder is removed only when empty."""
    keep = {Path(p).resolve() for p in written}
    for folder in dict.fromkeys([*previous, *(out / m for m in measures)]):
        if not folder.is_dir():
            continue
        stale = [folder / f for f in _MEASURE_FILES] + [p for pat in _MODEL_PATTERNS for p in folder.glob(pat)]
        for path in stale:
            if path.is_file() and path.resolve() not in keep:
                path.unlink()
        if folder != out and folder.name not in measures and not any(folder.iterdir()):
            folder.rmdir()


def run_audit(data: StudyData, measures: Sequence[Measure], headline: str, out: str | Path, cfg,
              progress: bool = True, extra: Mapping | None = None) -> StudyAudit:
    """The audit of ``data`` for ``measures``: baseline and thresholds,
    planted-copy control, every synthetic set's matches (with adjacent
    slices where slices are known), exceedances with Wilson intervals,
    leakage and most-matched tables where subjects are known, and
    summary.json; one engine pass per image set for all measures. ``cfg``:
    top_k, backend, memory_budget_gb, n_control, control_noise_sd,
    n_bootstrap, seed (attributes)."""
    out = Path(out)
    t0 = time.perf_counter()
    top_k = int(_setting(cfg, "top_k", 5))
    engine = dict(backend=_setting(cfg, "backend", "auto"), progress=progress,
                  memory_budget_gb=float(_setting(cfg, "memory_budget_gb", 2.0)))
    n_control, seed = int(_setting(cfg, "n_control", 0)), int(_setting(cfg, "seed", 0))
    n_boot = int(_setting(cfg, "n_bootstrap", 2000))
    groups = {m.name: list(m.index) for m in measures}
    names = [m.name for m in measures]
    log = RunLog()
    audit = StudyAudit(out, {}, list(measures), headline)
    previous = _previous_folders(out)
    w = audit.written
    meta, test_meta = data.train_meta, data.test_meta
    subjects = meta is not None and "subject" in meta
    train_names = data.train.names

    # 1. the real-vs-real baseline and the thresholds
    res = log.add("baseline", run_engine(data.test, data.train, groups, desc="test vs train", **engine)) \
        if data.test is not None else {}
    for m in measures:
        base = None
        if data.test is not None:
            base = baseline_table(res[m.name], test_meta, meta, data.test.names, train_names)
            w.append(write_csv(out / m.name / "baseline.csv", base))
        audit.baseline[m.name] = base
        audit.thresholds[m.name] = compute_thresholds(None if base is None else valid_correlations(base))
        w.append(write_csv(out / m.name / "thresholds.csv", thresholds_table(audit.thresholds[m.name])))

    # 2. the planted-copy positive control (every image measure must find it)
    audit.control = {m.name: None for m in measures}
    if n_control > 0:
        require = [list(m.index) for m in measures if not m.label_map] or None
        images, control = make_control(data.train, n_control, seed=seed,
                                       noise_sd=float(_setting(cfg, "control_noise_sd", 8.0)), require=require)
        control_set = data.images(images, CONTROL_NAME)
        res = log.add(CONTROL_NAME, run_engine(control_set, data.train, groups, desc="control vs train", **engine))
        for m in measures:
            table = control_table(res[m.name], control, control_set, data.train, meta, list(m.index))
            audit.control[m.name] = table
            w.append(write_csv(out / m.name / "control_matches.csv", table))

    # 3. every synthetic set against the training set
    audit.matches = {m.name: {} for m in measures}
    for model, (images, seeds) in data.synthetic.items():
        images = data.images(images, model)
        res = log.add(model, run_engine(images, data.train, groups, k=top_k, desc=f"{model} vs train", **engine))
        for m in measures:
            table = match_table(res[m.name], meta, seeds, images.names, train_names)
            if subjects and "slice" in meta:
                table = add_adjacent_slices(table, images, data.train, meta, list(m.index))
            table = table[[c for c in _MATCH_COLUMNS if c in table] + [c for c in table if c not in _MATCH_COLUMNS]]
            audit.matches[m.name][model] = table
            w.append(write_csv(out / m.name / f"matches_{model}.csv", table))
            w.append(write_csv(out / m.name / f"topk_{model}.csv", topk_table(res[m.name])))

    # 4. exceedances, leakage, most-matched and the summary, per measure
    by_measure = {}
    for m in measures:
        control = scored_control(audit.control[m.name])
        groups_m = comparison_groups(audit.matches[m.name], audit.baseline[m.name], control)
        exc = exceedance_table(groups_m, audit.thresholds[m.name], n_boot=n_boot, seed=seed)
        audit.exceedances[m.name] = exc
        w.append(write_csv(out / m.name / "exceedances.csv", exc))
        leak = None
        if subjects:
            leak = leakage_table(groups_m, audit.thresholds[m.name], data.n_train_subjects)
            audit.leakage[m.name] = leak
            w.append(write_csv(out / m.name / "leakage.csv", leak))
            for model, table in audit.matches[m.name].items():
                w.append(write_csv(out / m.name / f"most_matched_{model}.csv", most_matched(table)))
        by_measure[m.name] = {
            **m.info(headline),
            "train_constant": max((r["by_measure"][m.name].get("n_train_constant", 0) for r in log.runs.values()),
                                  default=0),
            "thresholds": dict(audit.thresholds[m.name]),
            "baseline": None if audit.baseline[m.name] is None
            else group_summary(audit.baseline[m.name], exc, BASELINE_NAME, leak),
            "models": {model: group_summary(t, exc, model, leak) for model, t in audit.matches[m.name].items()},
            # the positive control: same shape as a model entry, plus found rates; never under "models"
            "control": None if control is None else {**group_summary(control, exc, CONTROL_NAME, leak),
                                                     **control_summary(audit.control[m.name])},
        }
    audit.summary = {
        "dataset": data.dataset, "channels": list(data.channel_names), "n_train": data.train.n,
        "n_test": 0 if data.test is None else data.test.n, "n_train_subjects": data.n_train_subjects,
        "top_k": top_k, **dict(extra or {}),
        "headline": headline, "measures": names, "by_measure": by_measure,
        **log.as_dict(), "wall_seconds": round(time.perf_counter() - t0, 3),
    }
    w.append(write_json(out / "summary.json", audit.summary))
    _remove_stale(out, previous, names, w)
    return audit


def audit_study(results_dir: str | Path, cfg, *, progress: bool = True) -> StudyAudit:
    """Step 05: every measure of ``results_dir``'s samples against its
    training set, written under ``results_dir/correlation/`` (see the module
    docstring for the layout and :func:`measure_summary` for summary.json).

    ``cfg`` (e.g. ``config.CorrelateSettings``): ``models``, ``channels``
    (None = every channel), ``joint``, ``headline_channel``, ``top_k``,
    ``backend``, ``memory_budget_gb``, ``n_control``, ``control_noise_sd``,
    ``n_bootstrap``, ``seed``. Models without samples are skipped (the
    baseline and control still run)."""
    data = load_study_data(results_dir, list(_setting(cfg, "models", MODELS)))
    measures, headline = study_measures(data.channel_names, _setting(cfg, "channels", None),
                                        each=bool(_setting(cfg, "each", True)),
                                        joint=bool(_setting(cfg, "joint", True)),
                                        headline=_setting(cfg, "headline_channel", None))
    return run_audit(data, measures, headline, Path(results_dir) / "correlation", cfg, progress=progress)


# ==========================================================================
# The audit command
# ==========================================================================

@dataclass
class AuditSettings:
    """The settings of the audit command (the attributes of step 05's settings)."""

    channels: list | None = None
    each: bool = False
    joint: bool = True
    headline_channel: str | None = None
    top_k: int = 1
    backend: str = "auto"
    memory_budget_gb: float = 2.0
    n_control: int = 0
    control_noise_sd: float = 8.0
    n_bootstrap: int = 2000
    seed: int = 0


def audit(synthetic, training, test=None, *, out: str | Path = "correlation_audit", cfg: AuditSettings | None = None,
          progress: bool = True) -> StudyAudit:
    """Audit a set of synthetic images against training images (and a
    held-out test set for the baseline) for the measures of ``cfg``; writes
    the same layout and summary.json as step 05, the synthetic set named
    ``synthetic``."""
    cfg = cfg or AuditSettings()
    train = correlation.open_images(training, label="training")
    syn = correlation.open_images(synthetic, label="synthetic")
    tst = correlation.open_images(test, label="test") if test is not None else None
    names = train.channel_names or [f"ch{i}" for i in range(train.image_shape[0])]
    for images in (train, syn, tst):
        if images is not None and images.channel_names is None:
            images.channel_names = names  # unnamed (folders, plain arrays): ch0, ch1, ...
    for other in (syn, tst):
        if other is not None and other.shape != train.shape:
            raise ValueError(f"{other.label} images ({other.label}) are {'×'.join(map(str, other.shape))} but training "
                             f"images ({train.label}) are {'×'.join(map(str, train.shape))}")
    data = StudyData(None, "audit", names, train, tst, None, None, {SYNTHETIC_NAME: (syn, None)})
    measures, headline = study_measures(names, cfg.channels, each=cfg.each, joint=cfg.joint,
                                        headline=cfg.headline_channel)
    extra = {"synthetic": str(synthetic), "training": str(training), "test": None if test is None else str(test),
             "image_shape": list(train.shape), "n_synthetic": syn.n}
    return run_audit(data, measures, headline, out, cfg, progress=progress, extra=extra)


def channels_arg(values: Sequence[str] | None) -> tuple[list | None, bool, bool]:
    """``--channels`` tokens -> (channels, each, joint): ``all`` = the
    selected channels as one vector (default), ``each`` = one measure per
    channel (both may be given); other tokens select channels by index or name."""
    tokens = [str(v) for v in (values or ["all"])]
    modes = {t.lower() for t in tokens} & {"all", "each"}
    chosen = [int(t) if t.lstrip("-").isdigit() else t for t in tokens if t.lower() not in ("all", "each")]
    each = "each" in modes
    return chosen or None, each, "all" in modes or not each


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m helpers.correlate",
        description="Audit synthetic images for copies of training images: exact Pearson correlation of "
                    "every synthetic image with every training image (best match and its value), per measure.")
    parser.add_argument("--synthetic", required=True, help="folder of PNG/JPEG images or .npy array")
    parser.add_argument("--training", required=True, help="folder of PNG/JPEG images or .npy array")
    parser.add_argument("--test", help="held-out real images (same format) for the real-vs-real baseline")
    parser.add_argument("--channels", nargs="+", default=["all"],
                        help="'all' (default: all channels as one vector), 'each' (one result per channel, as the "
                             "paper), both, and/or channel indices to restrict to")
    parser.add_argument("--headline", help="the measure printed first (default: the first channel, or 'all')")
    parser.add_argument("--top-k", type=int, default=1, help="training matches kept per image (default 1)")
    parser.add_argument("--out", default="correlation_audit", help="output folder (default ./correlation_audit)")
    parser.add_argument("--backend", default="auto", choices=["auto", "numpy", "cupy"])
    parser.add_argument("--memory-gb", type=float, default=2.0, help="memory budget of the engine (GiB)")
    parser.add_argument("--control", type=int, default=0, help="planted copies of training images (uint8; default 0)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the intervals")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        channels, each, joint = channels_arg(args.channels)
        cfg = AuditSettings(channels=channels, each=each, joint=joint, headline_channel=args.headline,
                            top_k=args.top_k, backend=args.backend, memory_budget_gb=args.memory_gb,
                            n_control=args.control, n_bootstrap=args.bootstrap, seed=args.seed)
        result = audit(args.synthetic, args.training, args.test, out=args.out, cfg=cfg, progress=not args.quiet)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    s = result.summary
    print(f"{s['n_synthetic']} synthetic × {s['n_train']} training images, {len(s['measures'])} measure(s) "
          f"({s['pairs']:,} correlations in {s['seconds']:.2f} s, {s['backend']}: {s['backend_note']})")
    for name in s["measures"]:
        info = measure_summary(s, name)
        syn = info["models"][SYNTHETIC_NAME]
        q = syn["quantiles"]
        print(f"[{name}{', headline' if name == s['headline'] else ''}] {info['description']}")
        if q["max"] is not None:
            print(f"  max correlation per synthetic image: median {q['p50']:.4f}, p95 {q['p95']:.4f}, "
                  f"max {q['max']:.4f}" + (f" ({syn['constant']} constant)" if syn["constant"] else ""))
        for tname, rec in syn["exceedances"].items():
            lo, hi = reported_interval(rec)
            print(f"  above {tname} ({info['thresholds'][tname]:.4f}): {rec['n_above']} "
                  f"({100 * rec['fraction']:.2f} %, Wilson 95 % CI {100 * lo:.2f}–{100 * hi:.2f} %)")
    print(f"wrote {len(result.written)} files under {result.out} (summary.json, one folder per measure)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
