"""Where a run and a results folder keep each result: one object instead of path strings.

A *run* is a results folder shaped like ``results/<dataset>/`` (or one size
folder of a sweep, ``sizes/n<K>/``)::

    data/{train,test}.npy|.csv, meta.json     step 01 (also split.csv, skipped.csv, slice_fractions.csv)
    <model>/                                   steps 02, 03 (a model's training outputs)
    samples/<model>.npy, <model>_seeds.csv     step 04 (checkpoints/<model>/step_*.npy: its audits over training)
    correlation/summary.json, <measure>/…      step 05 (the audit), criteria.csv, coverage.csv
    fit/fit.csv, over_training.csv             step 05 (the fit of every model)

The *results folder* ``results/<name>/`` is a run too (the only one without
a sweep) and holds the study's own files besides::

    data/sizes.json, sizes/<label>/            step 01: the sweep's size runs
    sweep/criteria.csv, coverage.csv, …        step 05: every size run's tables in one (with a sweep)
    fit/fit_rule.json                          step 05: the fit's reading rule
    figures/                                   step 06
    logs/<job>/                                torchrun jobs' logs (steps 02-05 with processes > 1)
    notebooks/, .stamps/, plan.txt, index.html the runner's: executed notebooks, stamps, plan, landing page

``Run(folder).data.train``, ``.samples("diffusion")``, ``.audit("t1").thresholds``,
``Results(folder).sweep.fit``, ``.size_run("n00016").data.train``, ``.figures`` …
name these files; nothing is read or created here. ``Run("")`` and
``Results("")`` name them relative to the folder (as tables of expected
files and the landing page's links show them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DATA, SAMPLES, AUDIT, FIT = "data", "samples", "correlation", "fit"
SUMMARY = "summary.json"   # step 05's, in its folder (and a training's, in the model's)
SIZES, SWEEP, FIGURES, LOGS = "sizes", "sweep", "figures", "logs"
NOTEBOOKS, STAMPS, PLAN, INDEX = "notebooks", ".stamps", "plan.txt", "index.html"
#: the runner's own files and folders, written around the steps (not by them):
#: never a step's output, never compared as a result
RUNNER_FOLDERS, RUNNER_FILES = (NOTEBOOKS, STAMPS), (PLAN, INDEX)
#: the landing page as a step report (``notebooks/*.html``) links it
INDEX_FROM_NOTEBOOKS = f"../{INDEX}"
#: the notebook that writes each of a run's top-level folders (a model's
#: training folder: its registry entry's notebook)
WRITTEN_BY = {DATA: "01_prepare_data", SAMPLES: "04_sample", AUDIT: "05_correlate", FIT: "05_correlate",
              SWEEP: "05_correlate", FIGURES: "06_figures"}


class ResultMissing(FileNotFoundError):
    """A result file another step should have written is not there."""


def missing(path: str | os.PathLike, step: str) -> ResultMissing:
    """The error for a missing ``path`` that notebook ``step`` writes."""
    return ResultMissing(f"{path}: missing; it is written by notebooks/{step}.ipynb "
                         f"(run that step first, e.g. ./runall.sh <dataset> --from {step[:2]})")


def seeds_of(samples: str | os.PathLike) -> Path:
    """The seed table beside a samples file: ``<stem>_seeds.csv``."""
    samples = Path(samples)
    return samples.with_name(samples.stem + "_seeds.csv")


@dataclass(frozen=True)
class DataFiles:
    """Step 01's files of a run."""

    folder: Path

    @property
    def train(self) -> Path:
        return self.images("train")

    @property
    def train_table(self) -> Path:
        return self.table("train")

    @property
    def test(self) -> Path:
        return self.images("test")

    @property
    def test_table(self) -> Path:
        return self.table("test")

    @property
    def meta(self) -> Path:
        return self.folder / "meta.json"

    @property
    def sizes(self) -> Path:
        """The size sweep's runs (``sizes.json``; none without a sweep)."""
        return self.folder / "sizes.json"

    @property
    def split(self) -> Path:
        """Every subject's role (train/test) and status."""
        return self.folder / "split.csv"

    @property
    def skipped(self) -> Path:
        """The inputs step 01 could not read, and why."""
        return self.folder / "skipped.csv"

    @property
    def slice_fractions(self) -> Path:
        """Brain MRI only: each slice's brain fraction and whether it was kept."""
        return self.folder / "slice_fractions.csv"

    def images(self, split: str) -> Path:
        """``<split>.npy`` (``split``: train or test)."""
        return self.folder / f"{split}.npy"

    def table(self, split: str) -> Path:
        """``<split>.csv``: one row per image of ``<split>.npy``."""
        return self.folder / f"{split}.csv"


@dataclass(frozen=True)
class AuditFiles:
    """Step 05's files of one measure."""

    folder: Path

    @property
    def baseline(self) -> Path:
        return self.folder / "baseline.csv"

    @property
    def thresholds(self) -> Path:
        return self.folder / "thresholds.csv"

    @property
    def exceedances(self) -> Path:
        return self.folder / "exceedances.csv"

    @property
    def leakage(self) -> Path:
        return self.folder / "leakage.csv"

    @property
    def control_matches(self) -> Path:
        return self.folder / "control_matches.csv"

    @property
    def control_by_kind(self) -> Path:
        return self.folder / "control_by_kind.csv"

    def matches(self, model: str) -> Path:
        return self.folder / f"matches_{model}.csv"

    def topk(self, model: str) -> Path:
        return self.folder / f"topk_{model}.csv"

    def most_matched(self, model: str) -> Path:
        return self.folder / f"most_matched_{model}.csv"


@dataclass(frozen=True)
class FitFiles:
    """Step 05's fit of a run (:mod:`helpers.run_fit`)."""

    folder: Path

    @property
    def fit(self) -> Path:
        """Every model's and reference's fit verdict and measures."""
        return self.folder / "fit.csv"

    @property
    def over_training(self) -> Path:
        """Fit and memorization of every sampled training checkpoint."""
        return self.folder / "over_training.csv"

    @property
    def rule(self) -> Path:
        """The reading rule the fit was judged by (the results folder's only)."""
        return self.folder / "fit_rule.json"


@dataclass(frozen=True)
class SweepFiles:
    """A sweep's tables: every size run's rows in one (step 05)."""

    folder: Path

    def table(self, name: str) -> Path:
        """``<name>.csv`` (criteria, coverage, capacity, fit, over_training)."""
        return self.folder / f"{name}.csv"

    @property
    def criteria(self) -> Path:
        return self.table("criteria")

    @property
    def coverage(self) -> Path:
        return self.table("coverage")

    @property
    def capacity(self) -> Path:
        return self.table("capacity")

    @property
    def fit(self) -> Path:
        return self.table("fit")

    @property
    def over_training(self) -> Path:
        return self.table("over_training")


@dataclass(frozen=True)
class Run:
    """One run's folder and the names of its results."""

    folder: Path

    def __init__(self, folder: str | os.PathLike) -> None:
        object.__setattr__(self, "folder", Path(folder))

    @property
    def data(self) -> DataFiles:
        return DataFiles(self.folder / DATA)

    def output(self, model: str) -> Path:
        """A model's training outputs (``<model>/``)."""
        return self.folder / model

    def training_summary(self, model: str) -> Path:
        """A model's ``<model>/summary.json`` (steps 02, 03)."""
        return self.output(model) / SUMMARY

    def loss_log(self, model: str) -> Path:
        return self.output(model) / "loss_log.csv"

    def samples(self, model: str) -> Path:
        return self.folder / SAMPLES / f"{model}.npy"

    def seeds(self, model: str) -> Path:
        return seeds_of(self.samples(model))

    def checkpoint_samples_folder(self, model: str) -> Path:
        """Samples of a model's kept training checkpoints (the audits over training)."""
        return self.folder / SAMPLES / "checkpoints" / model

    def checkpoint_samples(self, model: str, step: int) -> Path:
        return self.checkpoint_samples_folder(model) / f"step_{step:09d}.npy"

    @property
    def correlation(self) -> Path:
        """Step 05's folder (the audit's; ``correlation/`` on disk)."""
        return self.folder / AUDIT

    @property
    def summary(self) -> Path:
        return self.correlation / SUMMARY

    def audit(self, measure: str) -> AuditFiles:
        return AuditFiles(self.correlation / measure)

    @property
    def criteria(self) -> Path:
        return self.correlation / "criteria.csv"

    @property
    def coverage(self) -> Path:
        return self.correlation / "coverage.csv"

    @property
    def fit(self) -> FitFiles:
        """Step 05's fit of this run (``fit/``)."""
        return FitFiles(self.folder / FIT)


class Results(Run):
    """A results folder ``results/<name>/``: a run (the only one without a
    sweep) that also holds the sweep's size runs and tables, the figures,
    the jobs' logs and the runner's own files."""

    @property
    def size_runs(self) -> Path:
        """The folder of the sweep's size runs (``sizes/``; listed in ``data/sizes.json``)."""
        return self.folder / SIZES

    def size_run(self, label: str) -> Run:
        """One size run of the sweep (``sizes/<label>/``, e.g. ``n00016``)."""
        return Run(self.size_runs / label)

    @property
    def sweep(self) -> SweepFiles:
        return SweepFiles(self.folder / SWEEP)

    @property
    def figures(self) -> Path:
        """Step 06's figures and tables."""
        return self.folder / FIGURES

    def logs(self, job: str) -> Path:
        """A torchrun job's logs (``logs/<job>/``)."""
        return self.folder / LOGS / job

    @property
    def notebooks(self) -> Path:
        """The executed step notebooks and their HTML reports."""
        return self.folder / NOTEBOOKS

    @property
    def stamps(self) -> Path:
        """The runner's record of each step that finished (``.stamps/<step>.json``)."""
        return self.folder / STAMPS

    @property
    def plan(self) -> Path:
        """The plan printed before the long steps."""
        return self.folder / PLAN

    @property
    def index(self) -> Path:
        """The landing page."""
        return self.folder / INDEX
