"""Where a run keeps each result: one object instead of path strings.

A *run* is a results folder shaped like ``results/<dataset>/`` (or one size
folder of a sweep, ``sizes/n<K>/``)::

    data/{train,test}.npy|.csv, meta.json     step 01
    <model>/                                   steps 02, 03 (a model's training outputs)
    samples/<model>.npy, <model>_seeds.csv     step 04 (checkpoints/<model>/step_*.npy: its audits over training)
    correlation/summary.json, <measure>/…      step 05 (the audit), criteria.csv, coverage.csv

``Run(folder).data.train``, ``.samples("diffusion")``, ``.audit("t1").thresholds`` …
name these files; nothing is read or created here. ``Run("")`` names them
relative to a run (as tables of expected files show them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DATA, SAMPLES, AUDIT = "data", "samples", "correlation"
SUMMARY = "summary.json"   # step 05's, in its folder (and a training's, in the model's)
#: the notebook that writes each of a run's top-level folders (a model's
#: training folder: its registry entry's notebook)
WRITTEN_BY = {DATA: "01_prepare_data", SAMPLES: "04_sample", AUDIT: "05_correlate"}


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
