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

from . import common, criteria, memorization, models, sweep
from .data import load_split
from .layout import Results, Run
from .sampling import checkpoint_sample_files, load_samples, samples_path

if TYPE_CHECKING:
    from .fit import FitRule

UNDERFIT_CONTROL = "gaussian_control"   # helpers.fit.UNDERFIT_CONTROL (imported lazily: the fit measures need torch)
OVER_TRAINING = ["size", "rule", "model", "role", "step", "images_seen", "n_scored", "fitted", "why", "sharpness", "nn_accuracy",
                 "texture_accuracy", "coverage", "copying", "memorized", "memorized_l2"]
SHOWN = ["size", "rule", "model", "role", "n_scored", "fitted", "why", "sharpness", "sharpness_low", "sharpness_high",
         "nn_accuracy", "nn_low", "nn_high", "texture_accuracy", "precision", "recall", "density", "coverage",
         "copying"]


def rule_from(settings) -> FitRule:
    """The reading rule of step 05's settings."""
    from .fit import FitRule

    return FitRule(settings.fit_sharpness_low, settings.fit_sharpness_high, settings.fit_nn_margin)


def not_fitted(value) -> bool:
    """Whether a ``fitted`` cell says the reading rule judged the model not
    fitted (blank, None or NaN: not judged, so not 'not fitted')."""
    return value is not None and not pd.isna(value) and not bool(value)


def rows_of(table: pd.DataFrame, model: str, size: int, rule: str = sweep.RULES[0]) -> pd.DataFrame:
    """The rows of ``model`` at ``size`` and subset ``rule`` (two rules can
    share a size; tables written before the ``rule`` column hold one rule)."""
    mask = (table["model"] == model) & (table["size"] == size)
    if "rule" in table:
        mask &= table["rule"] == rule
    return table[mask]


def run_keys(table: pd.DataFrame) -> list[str]:
    """The columns that name a run in a fit table: rule (where present) and size."""
    return ["rule", "size"] if "rule" in table else ["size"]


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
        if samples_path(run_dir, name).is_file():
            generated[name] = np.asarray(load_samples(run_dir, name)[0][:n_samples])
    references = [UNDERFIT_CONTROL] + ([] if "optimal_denoiser" in generated else [COPIER])
    table = fit_table(generated, training=training, held_out=held_out,
                      real=np.concatenate([real_pool, held_out]), rule=rule,
                      roles={name: _role(name) for name in generated}, seed=seed, references=references)
    table.insert(0, "size", len(training))
    table.insert(1, "rule", common.read_json(Run(run_dir).data.meta).get("sweep_rule", sweep.RULES[0]))
    table = table.rename(columns={"n": "n_scored"})
    common.write_csv(Run(run_dir).fit.fit, table[SHOWN])
    return table[SHOWN]


def _memorized(run: criteria.RunData, images: np.ndarray) -> tuple[float, float]:
    """The fraction of ``images`` memorized by the paper's criterion on the
    headline measure (best r above the held-out images' 99th percentile,
    step 05's threshold) and by Gu et al.'s ℓ2 ratio (NaN-flagged images left out)."""
    from .correlation import top_matches

    channels = [run.summary["channels"].index(c) for c in run.summary["by_measure"][run.headline]["channels"]]
    threshold = run.thresholds(run.headline)["baseline_p99"]
    r = top_matches(images, run.train, channels=channels, progress=False).correlation[:, 0]
    paper = memorization.exceedance_flags(r, threshold)
    near = memorization.nearest_l2(images, run.train, run.train_table, image_size=int(run.meta["image_size"]))
    l2 = memorization.l2_ratio_flags(near["nearest_distance"], near["second_distance"])
    mean = lambda flags: float(np.nanmean(flags)) if np.isfinite(flags).any() else float("nan")  # noqa: E731
    return mean(paper), mean(l2)


def judge_over_training(run_dir: str | os.PathLike, model_names: Sequence[str], rule: FitRule, *,
                        real_pool: np.ndarray, n_samples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Fit and memorization of every sampled training checkpoint of every
    model (step 04's ``samples/checkpoints/``), beside the references scored
    the same way; written to ``<run>/fit/over_training.csv``."""
    from .fit import COPIER, fit_table

    run_dir = Path(run_dir)
    run = criteria.RunData(run_dir, list(model_names))
    held_out = np.asarray(load_split(run_dir, "test")[0])
    generated, where = {}, {}
    for name in model_names:
        model = models.REGISTRY.get(name)
        if model is None or model.checkpoint_images_seen is None:
            continue
        for step, path in checkpoint_sample_files(run_dir, name).items():
            key = f"{name}@{step}"
            generated[key] = np.asarray(np.load(path, mmap_mode="r")[:n_samples])
            where[key] = (name, step, model.checkpoint_images_seen(run_dir, step))
    if not generated:
        return pd.DataFrame(columns=OVER_TRAINING)
    references = {}
    for name in model_names:
        if name in models.REGISTRY and models.REGISTRY[name].control and samples_path(run_dir, name).is_file():
            references[name] = np.asarray(load_samples(run_dir, name)[0][:n_samples])
    table = fit_table({**generated, **references}, training=np.asarray(run.train), held_out=held_out,
                      real=np.concatenate([real_pool, held_out]), rule=rule,
                      roles={name: _role(name) for name in references}, seed=seed,
                      references=[UNDERFIT_CONTROL] + ([] if "optimal_denoiser" in references else [COPIER]))
    sets = {**generated, **references, "held_out": held_out}
    rows = []
    for row in table.to_dict("records"):
        name, step, seen = where.get(row["model"], (row["model"], None, None))
        images = sets.get(row["model"])
        paper, l2 = _memorized(run, images) if images is not None else (float("nan"), float("nan"))
        rows.append({**row, "n_scored": row["n"], "size": len(run.train), "rule": run.rule, "model": name, "step": step,
                     "images_seen": seen,
                     "memorized": paper, "memorized_l2": l2})
    out = pd.DataFrame(rows)[OVER_TRAINING]
    common.write_csv(Run(run_dir).fit.over_training, out)
    return out


def judge_every_run(results_dir: str | os.PathLike, model_names: Sequence[str], settings) -> pd.DataFrame:
    """Every run's fit table, one frame (also ``sweep/fit.csv`` with a
    sweep), and every run's audit over training (``over_training.csv``)."""
    results_dir = Path(results_dir)
    pool = np.asarray(load_split(results_dir, "train")[0])
    rule = rule_from(settings)
    runs = sweep.run_dirs(results_dir).values()
    table = pd.concat([judge_run(run, model_names, rule, real_pool=pool, n_samples=settings.fit_samples,
                                 seed=settings.fit_seed) for run in runs], ignore_index=True)
    over = pd.concat([judge_over_training(run, model_names, rule, real_pool=pool, n_samples=settings.fit_samples,
                                          seed=settings.fit_seed) for run in runs], ignore_index=True)
    files = Results(results_dir)
    if sweep.sizes_table(results_dir) is not None:
        common.write_csv(files.sweep.fit, table)
        common.write_csv(files.sweep.over_training, over)
    common.write_json(files.fit.rule, {"sharpness_low": rule.sharpness_low, "sharpness_high": rule.sharpness_high,
                                       "nn_margin": rule.nn_margin})
    return table


def load_rule(results_dir: str | os.PathLike) -> FitRule:
    """The reading rule step 05 judged this results folder by."""
    from .fit import FitRule

    path = Results(results_dir).fit.rule
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; step 05 (notebooks/05_correlate.ipynb) writes it with the fit")
    return FitRule(**common.read_json(path))


def load_over_training(results_dir: str | os.PathLike) -> pd.DataFrame | None:
    """Every run's audit over training (the sweep's file, or the one run's); None without one."""
    files = Results(results_dir)
    for path in (files.sweep.over_training, files.fit.over_training):
        if path.is_file():
            table = pd.read_csv(path, keep_default_na=False, na_values=[""])
            return table if len(table) else None
    return None


def load_fit(run_or_results: str | os.PathLike) -> pd.DataFrame | None:
    """A run's fit table, or a sweep's (``sweep/fit.csv``); None before step 05 judged it."""
    files = Results(run_or_results)
    for path in (files.sweep.fit, files.fit.fit):
        if path.is_file():
            return pd.read_csv(path, keep_default_na=False, na_values=[""])
    return None


def measure_checks(table: pd.DataFrame) -> pd.DataFrame:
    """Per size: which measures call the Gaussian control unfitted (a
    measure that does not, at some size, is not fit for purpose there)."""
    from .fit import measure_check

    rows = []
    for key, part in table.groupby(run_keys(table), sort=True):
        if UNDERFIT_CONTROL in set(part["model"]):
            rows.append({**dict(zip(run_keys(table), key)), **measure_check(part)})
    return pd.DataFrame(rows)


def fitted(table: pd.DataFrame | None, model: str, size: int, rule: str = sweep.RULES[0]) -> bool | None:
    """Whether ``model`` counts as fitted at ``size`` (None: not judged)."""
    if table is None:
        return None
    row = rows_of(table, model, size, rule)
    return None if row.empty else bool(row["fitted"].iloc[0])


def rule_markdown(settings) -> str:
    """The reading rule in words, from the settings that declare it."""
    return (f"**Reading rule** (declared in the settings before any result; `fit_*` of step 05): a model counts "
            f"as *fitted* at a size when its images hold as much fine detail as real ones — sharpness ratio "
            f"between {settings.fit_sharpness_low:g} and {settings.fit_sharpness_high:g} — and are no easier to "
            f"tell from its training images than real unseen images are — 1-NN two-sample accuracy at most the "
            f"held-out images' plus {settings.fit_nn_margin:g}. Each model is scored on its first samples, up to the "
            f"limit `fit_samples` = {settings.fit_samples} (the table's `n_scored` says how many).")


def fit_summary_markdown(table: pd.DataFrame | None) -> str:
    """One line per size: each model's verdict (with the reason where it is
    not fitted), then the measures that fail to call the Gaussian control
    unfitted at some size (computed, never typed)."""
    if table is None or table.empty:
        return "No fit judged in this run."
    lines = []
    several_rules = "rule" in table and table["rule"].nunique() > 1
    label = lambda row: f"{row['size']}" + (f" ({row['rule']})" if several_rules else "")  # noqa: E731
    for _, part in table.groupby(run_keys(table), sort=True):
        cells = [f"{models.display_name(r.model)} " + ("fitted" if r.fitted else f"**not fitted** ({r.why})")
                 for r in part.itertuples() if r.role == "model"]
        lines.append(f"- {label(part.iloc[0])} training images: " + ("; ".join(cells) if cells else "no model sampled"))
    checks = measure_checks(table)
    failing = [m for m in checks.columns if m not in ("rule", "size") and not checks[m].astype(bool).all()]
    if failing:
        sizes = {m: ", ".join(label(r) for _, r in checks.loc[~checks[m].astype(bool)].iterrows()) for m in failing}
        lines.append("- Measures that call the Gaussian control fitted (not fit for purpose there): "
                     + "; ".join(f"{m} at {sizes[m]} images" for m in failing))
    return "**Fit by the reading rule**\n\n" + "\n".join(lines)
