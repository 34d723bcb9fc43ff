"""The fit of every model on every run, beside its memorization (issue 22).

For each run (a sweep's size folder, or the one results folder) the fit
table of :func:`helpers.fit.fit_table`: every model's and control's samples
(the first ``fit_samples`` of each) against the run's training images, with
the held-out real images as the reference every verdict is read against,
the Gaussian control and the optimal denoiser (or, without it, a copier) as
the references of an unfitted and a copying generator. Written to
``<run>/fit/fit.csv``; with a sweep, every run's rows also to
``<results>/sweep/fit.csv``. The reading rule comes from step 05's settings
(``fit_*``), fixed before any result.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from . import common, models, sweep
from .data import load_split
from .sampling import samples_path

if TYPE_CHECKING:
    from .fit import FitRule

UNDERFIT_CONTROL = "gaussian_control"   # helpers.fit.UNDERFIT_CONTROL (imported lazily: the fit measures need torch)
FIT_DIR = "fit"
FIT_FILE = "fit.csv"
SHOWN = ["size", "model", "role", "n", "fitted", "why", "sharpness", "sharpness_low", "sharpness_high",
         "nn_accuracy", "nn_low", "nn_high", "texture_accuracy", "precision", "recall", "density", "coverage",
         "copying"]


def rule_from(settings) -> FitRule:
    """The reading rule of step 05's settings."""
    from .fit import FitRule

    return FitRule(settings.fit_sharpness_low, settings.fit_sharpness_high, settings.fit_nn_margin)


def _role(name: str) -> str:
    if name in models.REGISTRY and models.REGISTRY[name].control:
        return "control" if name == UNDERFIT_CONTROL else "reference"
    return "model"


def judge_run(run_dir: str | os.PathLike, model_names: Sequence[str], rule: FitRule, *, real_pool: np.ndarray,
              n_samples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One run's fit table, written to ``<run>/fit/fit.csv``."""
    from .fit import COPIER, fit_table

    run_dir = Path(run_dir)
    training = np.asarray(load_split(run_dir, "train")[0])
    held_out = np.asarray(load_split(run_dir, "test")[0])
    generated = {}
    for name in model_names:
        path = samples_path(run_dir, name)
        if path.is_file():
            generated[name] = np.asarray(np.load(path, mmap_mode="r")[:n_samples])
    references = [UNDERFIT_CONTROL] + ([] if "optimal_denoiser" in generated else [COPIER])
    table = fit_table(generated, training=training, held_out=held_out,
                      real=np.concatenate([real_pool, held_out]), rule=rule,
                      roles={name: _role(name) for name in generated}, seed=seed, references=references)
    table.insert(0, "size", len(training))
    common.write_csv(run_dir / FIT_DIR / FIT_FILE, table[SHOWN])
    return table[SHOWN]


def judge_every_run(results_dir: str | os.PathLike, model_names: Sequence[str], settings) -> pd.DataFrame:
    """Every run's fit table, one frame (also ``sweep/fit.csv`` with a sweep)."""
    results_dir = Path(results_dir)
    pool = np.asarray(load_split(results_dir, "train")[0])
    rule = rule_from(settings)
    parts = [judge_run(run, model_names, rule, real_pool=pool, n_samples=settings.fit_samples,
                       seed=settings.fit_seed) for run in sweep.run_dirs(results_dir).values()]
    table = pd.concat(parts, ignore_index=True)
    if sweep.sizes_table(results_dir) is not None:
        common.write_csv(results_dir / "sweep" / FIT_FILE, table)
    return table


def load_fit(run_or_results: str | os.PathLike) -> pd.DataFrame | None:
    """A run's fit table, or a sweep's (``sweep/fit.csv``); None before step 05 judged it."""
    folder = Path(run_or_results)
    for path in (folder / "sweep" / FIT_FILE, folder / FIT_DIR / FIT_FILE):
        if path.is_file():
            return pd.read_csv(path, keep_default_na=False, na_values=[""])
    return None


def measure_checks(table: pd.DataFrame) -> pd.DataFrame:
    """Per size: which measures call the Gaussian control unfitted (a
    measure that does not, at some size, is not fit for purpose there)."""
    from .fit import measure_check

    rows = []
    for size, part in table.groupby("size", sort=True):
        if UNDERFIT_CONTROL in set(part["model"]):
            rows.append({"size": size, **measure_check(part)})
    return pd.DataFrame(rows)


def fitted(table: pd.DataFrame | None, model: str, size: int) -> bool | None:
    """Whether ``model`` counts as fitted at ``size`` (None: not judged)."""
    if table is None:
        return None
    row = table[(table["model"] == model) & (table["size"] == size)]
    return None if row.empty else bool(row["fitted"].iloc[0])


def rule_markdown(settings) -> str:
    """The reading rule in words, from the settings that declare it."""
    return (f"**Reading rule** (declared in the settings before any result; `fit_*` of step 05): a model counts "
            f"as *fitted* at a size when its images hold as much fine detail as real ones — sharpness ratio "
            f"between {settings.fit_sharpness_low:g} and {settings.fit_sharpness_high:g} — and are no easier to "
            f"tell from its training images than real unseen images are — 1-NN two-sample accuracy at most the "
            f"held-out images' plus {settings.fit_nn_margin:g}. The first {settings.fit_samples} samples of each "
            f"model are scored.")
