"""Names, colours and labels every figure and table shares, so a group is
called and coloured the same everywhere."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from .. import models as registry
from ..audit import BASELINE_NAME as BASELINE
from ..audit import CONTROL_NAME as CONTROL
from ..audit import reported_interval
from ..config import MODELS
from ..memorization import BASELINE_PERCENTILES, FIXED_THRESHOLDS

__all__ = ["BASELINE", "COLOURS", "CONTROL", "DISPLAY_NAMES", "MODELS", "THRESHOLD_NAMES", "display_name",
           "interval_columns", "measure_label", "threshold_label"]

#: The thresholds the tables report, in order (names of thresholds.csv).
THRESHOLD_NAMES: tuple[str, ...] = (*(f"fixed_{t:.2f}" for t in FIXED_THRESHOLDS),
                                    *(f"baseline_p{p}" for p in BASELINE_PERCENTILES))

#: the audit's reference groups; every model's name and colour is its registry entry (:mod:`helpers.models`)
REFERENCE_NAMES = {BASELINE: "real held-out (baseline)", CONTROL: "positive control (planted copies)"}
REFERENCE_COLOURS = {BASELINE: "0.35", CONTROL: "tab:green"}


class _Registered(Mapping):
    """A read-only view of every registered model's ``field``, then the references'."""

    def __init__(self, field: str, references: Mapping[str, str]) -> None:
        self._field, self._references = field, references

    def _items(self) -> dict[str, str]:
        return {m.name: getattr(m, self._field) for m in registry.REGISTRY.values()} | dict(self._references)

    def __getitem__(self, key: str) -> str:
        return self._items()[key]

    def __iter__(self):
        return iter(self._items())

    def __len__(self) -> int:
        return len(self._items())


DISPLAY_NAMES: Mapping[str, str] = _Registered("display", REFERENCE_NAMES)
COLOURS: Mapping[str, str] = _Registered("colour", REFERENCE_COLOURS)


def display_name(model: str) -> str:
    return DISPLAY_NAMES.get(model, model)


def measure_label(info: Mapping) -> str:
    """``T1 alone (the paper's measure ...)``: what a measure correlates."""
    return str(info.get("description") or f"channels {', '.join(map(str, info.get('channels', [])))}")


def threshold_label(name: str, value: float) -> str:
    if name.startswith("fixed_"):
        return f"r > {value:.2f}"
    if name.startswith("baseline_p"):
        return f"held-out p{name.removeprefix('baseline_p')} (r > {value:.3f})"
    return f"{name} ({value:.3f})"


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def interval_columns(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """:func:`helpers.audit.reported_interval` for every row of a table
    with wilson_low/wilson_high columns (exceedances.csv, summary rows)."""
    pairs = [reported_interval(row) for row in frame.to_dict("records")]
    return np.array([p[0] for p in pairs], dtype=float), np.array([p[1] for p in pairs], dtype=float)

