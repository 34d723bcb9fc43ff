"""Names, colours and labels every figure and table shares, so a group is
called and coloured the same everywhere."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from ..config import MODELS
from ..correlate import BASELINE_NAME as BASELINE
from ..correlate import CONTROL_NAME as CONTROL
from ..correlate import reported_interval
from ..memorization import BASELINE_PERCENTILES, FIXED_THRESHOLDS

__all__ = ["BASELINE", "COLOURS", "CONTROL", "DISPLAY_NAMES", "MODELS", "THRESHOLD_NAMES", "display_name",
           "interval_columns", "measure_label", "threshold_label"]

#: The thresholds the tables report, in order (names of thresholds.csv).
THRESHOLD_NAMES: tuple[str, ...] = (*(f"fixed_{t:.2f}" for t in FIXED_THRESHOLDS),
                                    *(f"baseline_p{p}" for p in BASELINE_PERCENTILES))

DISPLAY_NAMES = {
    "stylegan": "StyleGAN",
    "diffusion": "diffusion",
    BASELINE: "real held-out (baseline)",
    CONTROL: "positive control (planted copies)",
}
COLOURS = {"stylegan": "tab:blue", "diffusion": "tab:orange", BASELINE: "0.35", CONTROL: "tab:green"}


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
    """:func:`helpers.correlate.reported_interval` for every row of a table
    with wilson_low/wilson_high columns (exceedances.csv, summary rows)."""
    pairs = [reported_interval(row) for row in frame.to_dict("records")]
    return np.array([p[0] for p in pairs], dtype=float), np.array([p[1] for p in pairs], dtype=float)

