"""The criteria registry: every pre-declared memorization criterion judged
on every run (a sweep's size folders, or the one results folder), into one
tidy table.

A criterion is one decorated function of a run::

    @criterion("l2")
    def l2_ratio(run: RunData) -> dict[group, dict[criterion name, flags]]

``run`` gives the run's folder, step 05's summary and thresholds, the
training images and each group's images (every model with samples, and the
held-out real images, :data:`REAL`); ``flags`` is one value per judged
image (1 memorized, 0 not, NaN cannot judge; see :mod:`helpers.memorization`).
A criterion may also name the flags that count for the training-set
coverage (``coverage=...``). Judging a run (:func:`judge_run`) writes
``correlation/criteria.csv`` and ``correlation/coverage.csv`` and adds the
rows to ``correlation/summary.json`` under ``criteria``; a sweep's tables
(:func:`sweep_tables`) are every run's rows with each group's capacity.

Counts use one vocabulary with the audit's exceedances (``n_images``,
``n_above``, ``fraction``, ``wilson_low``, ``wilson_high``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import common, memorization, sweep
from .audit.tables import BASELINE_NAME
from .data import load_split
from .layout import Results, Run
from .sampling import load_samples

REAL = BASELINE_NAME        # held-out real images: the negative reference
L2_CRITERION = "l2: d1 < d2/3"
CAPACITY_FRACTION = 0.9     # Gu et al.: "most samples memorized"
#: the columns of tables written before the vocabulary was one → the one vocabulary (read old results)
VOCABULARY = {"n": "n_images", "k": "n_above", "ci_low": "wilson_low", "ci_high": "wilson_high"}
COLUMNS = ["headline", "rule", "size", "n_subjects", "group", "criterion", "n_images", "n_above", "fraction",
           "wilson_low", "wilson_high"]


def correlation_criterion(measure: str, threshold_name: str) -> str:
    return f"{measure}: r > {threshold_name}"


# --------------------------------------------------------------------------
# One run's data, read once
# --------------------------------------------------------------------------

@dataclass
class RunData:
    """What the criteria of one run read (loaded lazily, once)."""

    folder: Path
    models: Sequence[str]

    @property
    def files(self) -> Run:
        return Run(self.folder)

    @functools.cached_property
    def summary(self) -> dict:
        return common.read_json(self.files.summary)

    @property
    def headline(self) -> str:
        return self.summary["headline"]

    @property
    def measures(self) -> list[str]:
        """Step 05's image measures (label maps are never a criterion)."""
        return [m for m in self.summary["measures"] if not self.summary["by_measure"][m].get("label_map")]

    @functools.cached_property
    def meta(self) -> dict:
        return common.read_json(self.files.data.meta)

    @functools.cached_property
    def _train(self) -> tuple[np.ndarray, pd.DataFrame]:
        return load_split(self.folder, "train")

    @property
    def train(self) -> np.ndarray:
        return self._train[0]

    @property
    def train_table(self) -> pd.DataFrame:
        return self._train[1]

    @property
    def rule(self) -> str:
        return self.meta.get("sweep_rule", "whole_subjects")

    @functools.cached_property
    def groups(self) -> dict[str, np.ndarray]:
        """Every model of ``models`` with samples, then the held-out real images."""
        sets = {}
        for model in self.models:
            if self.files.samples(model).is_file():
                sets[model] = load_samples(self.folder, model)[0]
        sets[REAL] = np.load(self.files.data.test, mmap_mode="r")
        return sets

    def thresholds(self, measure: str) -> dict[str, float]:
        """Step 05's own thresholds of ``measure`` (its ``thresholds.csv``),
        those that are pre-declared criteria: the paper's fixed 0.95 and 0.99
        and the held-out percentiles."""
        path = self.files.audit(measure).thresholds
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; it is written by notebooks/05_correlate.ipynb")
        table = pd.read_csv(path)
        wanted = {f"fixed_{t:.2f}" for t in memorization.CRITERION_THRESHOLDS}
        wanted |= {f"baseline_p{p}" for p in memorization.BASELINE_PERCENTILES}
        return {str(n): float(v) for n, v in zip(table["name"], table["value"]) if n in wanted}

    def best_correlations(self, measure: str, group: str) -> np.ndarray:
        """Each image's best correlation with a training image (NaN: constant image)."""
        files = self.files.audit(measure)
        frame = pd.read_csv(files.baseline if group == REAL else files.matches(group))
        return frame["correlation"].where(~frame["constant"].astype(bool)).to_numpy(float)

    @functools.cached_property
    def nearest(self) -> dict[str, pd.DataFrame]:
        """Exact ℓ2 nearest and second-nearest training images of every group's images."""
        size = int(self.meta["image_size"])
        return {group: memorization.nearest_l2(images, self.train, self.train_table, image_size=size)
                for group, images in self.groups.items()}


# --------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------

Flags = dict[str, dict[str, np.ndarray]]


@dataclass(frozen=True)
class Criterion:
    name: str
    judge: Callable[[RunData], Flags]
    coverage: Callable[[RunData], Sequence[str]] | None = None  # criterion names whose flags count for coverage
    coverage_rank: int = 0  # where its coverage rows stand among the others' (lower first)


CRITERIA: dict[str, Criterion] = {}


def criterion(name: str, *, coverage: Callable[[RunData], Sequence[str]] | None = None, coverage_rank: int = 0,
              replace: bool = False):
    """Register the decorated ``judge(run) -> {group: {criterion: flags}}``;
    its table rows follow the registration order."""
    def register(judge: Callable[[RunData], Flags]) -> Callable[[RunData], Flags]:
        if name in CRITERIA and not replace:
            raise ValueError(f"criterion {name!r} is registered already")
        CRITERIA[name] = Criterion(name, judge, coverage, coverage_rank)
        return judge
    return register


def unregister(name: str) -> None:
    CRITERIA.pop(name, None)


@criterion("paper", coverage=lambda run: [correlation_criterion(run.headline, "baseline_p99")], coverage_rank=1)
def paper_thresholds(run: RunData) -> Flags:
    """The paper's: the best Pearson r on each image measure above 0.95 / 0.99
    and above the 95th / 99th percentile of held-out real images against
    *this* training set (step 05's thresholds.csv); the real images only
    against the fixed ones, since they define the percentiles."""
    flags: Flags = {group: {} for group in run.groups}
    for measure in run.measures:
        thresholds = run.thresholds(measure)
        for group in run.groups:
            usable = {k: v for k, v in thresholds.items() if k.startswith("fixed")} if group == REAL else thresholds
            r = run.best_correlations(measure, group)
            for name, value in usable.items():
                flags[group][correlation_criterion(measure, name)] = memorization.exceedance_flags(r, value)
    return flags


@criterion("l2", coverage=lambda run: [L2_CRITERION])
def l2_ratio(run: RunData) -> Flags:
    """Gu et al.'s: ℓ2 distance to the nearest training image below a third
    of that to the second nearest (not a near-duplicate slice of it)."""
    return {group: {L2_CRITERION: memorization.l2_ratio_flags(near["nearest_distance"], near["second_distance"])}
            for group, near in run.nearest.items()}


# --------------------------------------------------------------------------
# Judging a run, and a sweep
# --------------------------------------------------------------------------

def in_vocabulary(table: pd.DataFrame) -> pd.DataFrame:
    """A criteria table written before the vocabulary was one, in it (a no-op on new tables)."""
    return table.rename(columns=VOCABULARY)


def run_criteria(run_dir: str | os.PathLike, models: Sequence[str],
                 names: Sequence[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every registered criterion (or those of ``names``) on one run: the
    criteria table (one row per group and criterion) and the training-set
    coverage of every model by each criterion's coverage flags."""
    run = RunData(Path(run_dir), list(models))
    flags: Flags = {group: {} for group in run.groups}
    chosen = [CRITERIA[n] for n in (names or list(CRITERIA))]
    for c in chosen:
        for group, by_name in c.judge(run).items():
            flags.setdefault(group, {}).update(by_name)
    coverage_keys = [key for c in sorted(chosen, key=lambda c: c.coverage_rank) if c.coverage is not None
                     for key in c.coverage(run)]
    train_table = run.train_table
    size, n_subjects = len(train_table), int(train_table["subject"].nunique())
    criteria = memorization.criteria_table(flags, size, n_subjects)
    criteria.insert(0, "headline", run.headline)
    criteria.insert(1, "rule", run.rule)
    coverage = memorization.coverage_table(
        {g: (run.nearest[g]["nearest_index"], {c: flags[g][c] for c in coverage_keys if c in flags[g]})
         for g in run.groups if g != REAL}, size, size, train_table)
    coverage.insert(0, "rule", run.rule)
    return criteria, coverage


def judge_run(run_dir: str | os.PathLike, models: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`run_criteria` written into the run's ``correlation/`` folder
    (``criteria.csv``, ``coverage.csv``, and ``criteria`` in summary.json)."""
    files = Run(run_dir)
    criteria, coverage = run_criteria(run_dir, models)
    common.write_csv(files.criteria, criteria)
    common.write_csv(files.coverage, coverage)
    summary = common.read_json(files.summary)
    summary["criteria"] = _records(criteria)
    common.write_json(files.summary, summary)
    return criteria, coverage


def _records(frame: pd.DataFrame) -> list[dict]:
    return [{k: (None if pd.isna(v) else v.item() if hasattr(v, "item") else v) for k, v in row.items()}
            for row in frame.to_dict("records")]


def load_run_criteria(run_dir: str | os.PathLike) -> pd.DataFrame | None:
    """A run's criteria table (None before step 05 judged it)."""
    path = Run(run_dir).criteria
    return pd.read_csv(path) if path.is_file() else None


def capacity_table(criteria: pd.DataFrame) -> pd.DataFrame:
    """Each group's capacity by each criterion: the largest size at which at
    least 90 % of its samples are memorized, with the bracketing sizes
    (rows only where a rule has at least two sizes)."""
    rows = []
    for (rule, group, name), part in criteria.groupby(["rule", "group", "criterion"], sort=False):
        if group == REAL or part["size"].nunique() < 2:
            continue
        cap = memorization.memorization_capacity(part, name, group, CAPACITY_FRACTION)
        rows.append({"rule": rule, "group": group, "criterion": name, "target": cap.target, "status": cap.status,
                     "capacity": cap.capacity, "below": cap.below, "above": cap.above,
                     "monotone": cap.monotone, "message": cap.message})
    return pd.DataFrame(rows, columns=["rule", "group", "criterion", "target", "status", "capacity",
                                       "below", "above", "monotone", "message"])


def judge_every_run(results_dir: str | os.PathLike, models: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Every run judged (:func:`judge_run`); with a sweep, also its tables
    under ``results_dir/sweep/``: every run's ``criteria`` and ``coverage``
    and each group's ``capacity``."""
    results_dir = Path(results_dir)
    runs = sweep.run_dirs(results_dir)
    parts = [judge_run(path, models) for path in runs.values()]
    criteria = pd.concat([p[0] for p in parts], ignore_index=True)
    coverage = pd.concat([p[1] for p in parts], ignore_index=True)
    tables = {"criteria": criteria, "coverage": coverage}
    if sweep.sizes_table(results_dir) is not None:
        tables["capacity"] = capacity_table(criteria)
        for name, frame in tables.items():
            common.write_csv(Results(results_dir).sweep.table(name), frame)
    return tables


def memorization_tables(results_dir: str | os.PathLike, models: Sequence[str]) -> dict[str, pd.DataFrame]:
    """The sweep's tables (``criteria``, ``coverage``, ``capacity``), written under ``results_dir/sweep/``."""
    tables = judge_every_run(results_dir, models)
    if "capacity" not in tables:
        raise ValueError(f"{results_dir}: no size sweep (data/{sweep.SIZES_FILE} is missing)")
    return tables


def headline_rows(frame: pd.DataFrame | Mapping) -> pd.DataFrame:
    """The rows of a criteria table a reader looks at first: the headline
    measure's fixed 0.95 and held-out p99 criteria, and the ℓ2 ratio."""
    frame = pd.DataFrame(frame)
    if frame.empty:
        return frame
    headline = str(frame["headline"].iloc[0])
    shown = [correlation_criterion(headline, "fixed_0.95"), correlation_criterion(headline, "baseline_p99"),
             L2_CRITERION]
    return frame[frame["criterion"].isin(shown)]


def headline_markdown(frame: pd.DataFrame | None) -> str:
    """One line per group of :func:`headline_rows`: 'n_above/n_images (%, interval)' by each shown criterion."""
    if frame is None or len(frame) == 0:
        return ""
    rows = headline_rows(frame)
    lines = []
    for group, part in rows.groupby("group", sort=False):
        cells = [f"`{r.criterion}` {r.n_above}/{r.n_images}"
                 + (f" ({100 * r.fraction:.0f} %, {100 * r.wilson_low:.0f}–{100 * r.wilson_high:.0f})" if r.n_images else "")
                 for r in part.itertuples()]
        lines.append(f"- {group}: " + "; ".join(cells))
    return "\n".join(lines)
