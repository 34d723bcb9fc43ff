"""Where a run keeps each result: one object instead of path strings.

A *run* is a results folder shaped like ``results/<dataset>/`` (or one size
folder of a sweep, ``sizes/n<K>/``)::

    data/{train,test}.npy|.csv, meta.json     step 01
    <model>/                                   steps 02, 03 (a model's training outputs)
    samples/<model>.npy, <model>_seeds.csv     step 04
    correlation/summary.json, <measure>/…      step 05 (the audit), criteria.csv, coverage.csv

``Run(folder).data.train``, ``.samples("diffusion")``, ``.audit("t1").thresholds`` …
name these files; nothing is read or created here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DataFiles:
    """Step 01's files of a run."""

    folder: Path

    @property
    def train(self) -> Path:
        return self.folder / "train.npy"

    @property
    def train_table(self) -> Path:
        return self.folder / "train.csv"

    @property
    def test(self) -> Path:
        return self.folder / "test.npy"

    @property
    def test_table(self) -> Path:
        return self.folder / "test.csv"

    @property
    def meta(self) -> Path:
        return self.folder / "meta.json"


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

    def matches(self, model: str) -> Path:
        return self.folder / f"matches_{model}.csv"


@dataclass(frozen=True)
class Run:
    """One run's folder and the names of its results."""

    folder: Path

    def __init__(self, folder: str | os.PathLike) -> None:
        object.__setattr__(self, "folder", Path(folder))

    @property
    def data(self) -> DataFiles:
        return DataFiles(self.folder / "data")

    def output(self, model: str) -> Path:
        """A model's training outputs (``<model>/``)."""
        return self.folder / model

    def samples(self, model: str) -> Path:
        return self.folder / "samples" / f"{model}.npy"

    def seeds(self, model: str) -> Path:
        return self.folder / "samples" / f"{model}_seeds.csv"

    @property
    def correlation(self) -> Path:
        return self.folder / "correlation"

    @property
    def summary(self) -> Path:
        return self.correlation / "summary.json"

    def audit(self, measure: str) -> AuditFiles:
        return AuditFiles(self.correlation / measure)

    @property
    def criteria(self) -> Path:
        return self.correlation / "criteria.csv"

    @property
    def coverage(self) -> Path:
        return self.correlation / "coverage.csv"
