"""What every reader shares: the errors it raises and the units of work it
hands the driver (:mod:`.prepare`). Kept apart so that the BraTS and x-ray
readers need not import each other."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd


class DataError(ValueError):
    """A raw input that is not what the study expects: names the file (or
    folder) and says what was expected. ``on_bad_subject="skip"`` leaves
    the subject/image out instead of stopping."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class DataLayoutError(DataError):
    """The dataset folder as a whole is empty or laid out wrongly (never skipped)."""


class DatasetNotFoundError(FileNotFoundError):
    """The raw dataset folder is not given or does not exist; the message
    says where to get the data, the layout, and the command to run."""


@dataclass
class PreparedUnit:
    """What one subject (BraTS) or one file (x-ray) contributes: images
    (K×C×H×W uint8) with one table row each, and extra per-slice records."""
    images: np.ndarray
    rows: list[dict]
    fractions: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Unit:
    """One piece of work for the driver: a subject folder (BraTS) or an
    image file (x-ray), with the role and rank the split gave it."""
    key: str          # subject id, or file path for x-ray
    subject: str
    role: str         # train | test
    rank: int
    path: str
    args: Any


@dataclass
class ReaderPlan:
    """What a reader (:func:`.brats.plan_brats`, :func:`.cxr.plan_cxr`)
    hands the driver: the split, the units to read in output order, how to
    read one, and what only this reader records. The driver itself knows
    no file format."""
    layout: str
    split_table: pd.DataFrame
    units: list[Unit]
    work: Callable[[Unit], PreparedUnit]
    columns: list[str]            # train.csv / test.csv columns
    bar_unit: str                 # progress bar: "subject" or "image"
    split_rule: str               # meta.json's split_rule
    meta: dict                    # reader-only meta.json entries, written last
    split_path: Path | None = None
    skipped: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    empty_hint: str = ""          # appended to the "no train/test images" error
    writes_fractions: bool = False  # slice_fractions.csv (the BraTS slice rule)
