"""Plots and tables from result files (seaborn/matplotlib).

It reads arrays and tables that other steps wrote; it never runs a model.

Layout read (all under ``results_dir = results/<dataset>/``, see STUDY.md §3):
``data/`` (step 01), ``stylegan/loss_log.csv`` (02), ``diffusion/loss_log.csv``
(03), ``samples/`` (04) and ``correlation/`` (05). Every file goes through a
small loader that names the missing file and the step that writes it, so a
reader knows what to run; a model whose results are absent is reported, not
fatal (:func:`model_status`).

Measures. Step 05 correlates each modality alone (the paper's measure), all
channels as one vector (ours) and the label map apart (see
:mod:`helpers.correlate`), one folder per measure under ``correlation/``.
Every loader, table and figure of one measure takes ``measure=``; ``None``
means the *headline* measure named in ``correlation/summary.json``. The
finding sentence, the README figure (``max_correlation.png``), the size plot
and the cross-dataset comparison use the headline by default, and
:func:`measures` lists the measures headline first. Result folders of the
older single-measure layout (files directly under ``correlation/``) read as
one measure, ``all``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .common import read_json, write_csv, write_text
from .correlate import JOINT, is_label_channel, measure_summary, neighbour_slices, reported_interval

#: The two generators of the study, in the order figures show them.
MODELS: tuple[str, ...] = ("stylegan", "diffusion")
#: Names in exceedances.csv / summary.json that are not generators.
BASELINE = "real_test"
CONTROL = "control"
#: The thresholds the tables report, in order (names of thresholds.csv).
THRESHOLD_NAMES: tuple[str, ...] = ("fixed_0.90", "fixed_0.95", "fixed_0.99", "baseline_p95", "baseline_p99")

DISPLAY_NAMES = {
    "stylegan": "StyleGAN",
    "diffusion": "diffusion",
    BASELINE: "real held-out (baseline)",
    CONTROL: "positive control (planted copies)",
}
COLOURS = {"stylegan": "tab:blue", "diffusion": "tab:orange", BASELINE: "0.35", CONTROL: "tab:green"}

# Which notebook writes which top-level folder of results_dir.
_PRODUCERS = {
    "data": "01_prepare_data",
    "stylegan": "02_train_stylegan",
    "diffusion": "03_train_diffusion",
    "samples": "04_sample",
    "correlation": "05_correlate",
}


def display_name(model: str) -> str:
    return DISPLAY_NAMES.get(model, model)


# --------------------------------------------------------------------------
# Loaders: one per result file, with errors that say what to run
# --------------------------------------------------------------------------

class ResultMissing(FileNotFoundError):
    """A result file another step should have written is not there."""


def producer(relpath: str | os.PathLike) -> str:
    """The notebook that writes ``relpath`` (relative to results_dir)."""
    top = Path(relpath).parts[0]
    return _PRODUCERS.get(top, "an earlier step")


def result_file(results_dir: str | os.PathLike, relpath: str) -> Path:
    """``results_dir/relpath``, or :class:`ResultMissing` naming the step to run."""
    path = Path(results_dir) / relpath
    if not path.is_file():
        step = producer(relpath)
        raise ResultMissing(
            f"{path}: missing; it is written by notebooks/{step}.ipynb "
            f"(run that step first, e.g. ./runall.sh <dataset> --from {step[:2]})"
        )
    return path


def _read_csv(results_dir, relpath: str, columns: Iterable[str]) -> pd.DataFrame:
    path = result_file(results_dir, relpath)
    frame = pd.read_csv(path, keep_default_na=True)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{path}: expected columns {', '.join(missing)} (has {', '.join(frame.columns)}); "
            f"re-run notebooks/{producer(relpath)}.ipynb"
        )
    return frame


def _as_bool(series: pd.Series) -> pd.Series:
    if series.dtype == bool:
        return series
    return series.astype(str).str.strip().str.lower().isin(("true", "1", "yes"))


def load_meta(results_dir) -> dict:
    return read_json(result_file(results_dir, "data/meta.json"))


def load_index(results_dir, split: str = "train") -> pd.DataFrame:
    """``data/<split>.csv``: one row per image, row i ↔ image i of the array."""
    frame = _read_csv(results_dir, f"data/{split}.csv", ("subject", "slice"))
    frame["subject"] = frame["subject"].astype(str)
    return frame


def load_images(results_dir, split: str = "train") -> np.ndarray:
    """``data/<split>.npy`` memory-mapped (uint8 N×C×H×W)."""
    return np.load(result_file(results_dir, f"data/{split}.npy"), mmap_mode="r")


def load_samples(results_dir, model: str) -> np.ndarray:
    """``samples/<model>.npy`` memory-mapped (uint8 N×C×H×W)."""
    return np.load(result_file(results_dir, f"samples/{model}.npy"), mmap_mode="r")


def load_loss_log(results_dir, model: str) -> pd.DataFrame:
    return _read_csv(results_dir, f"{model}/loss_log.csv", ("step",))


def load_summary(results_dir) -> dict:
    """``correlation/summary.json`` (all measures; :func:`helpers.correlate.measure_summary`
    gives one measure's flat view)."""
    path = result_file(results_dir, "correlation/summary.json")
    summary = read_json(path)
    layout = ("headline", "measures", "by_measure") if "by_measure" in summary else ("thresholds", "baseline", "models")
    for key in layout:
        if key not in summary:
            raise ValueError(f"{path}: no '{key}' entry; re-run notebooks/05_correlate.ipynb")
    for name in summary.get("measures", []):
        for key in ("thresholds", "baseline", "models"):
            if key not in summary["by_measure"].get(name, {}):
                raise ValueError(f"{path}: measure '{name}' has no '{key}' entry; re-run notebooks/05_correlate.ipynb")
    return summary


def measures(results_dir) -> list[str]:
    """Step 05's measures, headline first (``["all"]`` for the older layout)."""
    summary = load_summary(results_dir)
    return list(summary["measures"]) if "measures" in summary else [JOINT]


def headline(results_dir) -> str:
    """The headline measure of step 05 (``all`` for the older layout)."""
    return measures(results_dir)[0]


def measure_info(results_dir, measure: str | None = None) -> dict:
    """One measure of summary.json, flat (``measure``, ``channels``, ``kind``,
    ``description``, ``thresholds``, ``models``, ...); None: the headline."""
    return measure_summary(load_summary(results_dir), measure)


def measure_folder(results_dir, measure: str | None = None) -> str:
    """``correlation/<measure>`` (relative to results_dir). ``None``: the
    headline of summary.json. The older single-measure layout: ``correlation``."""
    if measure is not None:
        name = str(measure).lower()
        if (Path(results_dir) / "correlation" / name).is_dir() or not _old_layout(results_dir):
            return f"correlation/{name}"
        if name != JOINT:
            raise ValueError(f"{Path(results_dir) / 'correlation'}: results of the older single-measure layout "
                             f"have one measure, '{JOINT}', not {measure!r}")
        return "correlation"
    summary = load_summary(results_dir)
    return f"correlation/{summary['headline']}" if "by_measure" in summary else "correlation"


def _old_layout(results_dir) -> bool:
    path = Path(results_dir) / "correlation/summary.json"
    return path.is_file() and "by_measure" not in read_json(path)


def load_matches(results_dir, model: str, measure: str | None = None) -> pd.DataFrame:
    """Best training match of every synthetic image (``constant`` as bool)."""
    frame = _read_csv(
        results_dir, f"{measure_folder(results_dir, measure)}/matches_{model}.csv",
        ("synthetic_index", "train_index", "correlation", "subject", "slice", "constant"),
    )
    frame["constant"] = _as_bool(frame["constant"])
    frame["subject"] = frame["subject"].astype(str)
    return frame


def load_topk(results_dir, model: str, measure: str | None = None) -> pd.DataFrame:
    return _read_csv(results_dir, f"{measure_folder(results_dir, measure)}/topk_{model}.csv",
                     ("synthetic_index", "rank", "train_index", "correlation"))


def load_baseline(results_dir, measure: str | None = None) -> pd.DataFrame:
    """Best training match of every held-out real test image."""
    frame = _read_csv(results_dir, f"{measure_folder(results_dir, measure)}/baseline.csv",
                      ("test_index", "train_index", "correlation", "constant"))
    frame["constant"] = _as_bool(frame["constant"])
    return frame


def load_control(results_dir, measure: str | None = None) -> pd.DataFrame:
    """The planted-copy positive control's matches."""
    frame = _read_csv(results_dir, f"{measure_folder(results_dir, measure)}/control_matches.csv",
                      ("control_index", "control_kind", "train_index", "correlation", "constant", "found"))
    frame["constant"] = _as_bool(frame["constant"])
    return frame


def load_thresholds(results_dir, measure: str | None = None) -> dict[str, float]:
    frame = _read_csv(results_dir, f"{measure_folder(results_dir, measure)}/thresholds.csv", ("name", "value"))
    return {str(n): float(v) for n, v in zip(frame["name"], frame["value"])}


def load_exceedances(results_dir, measure: str | None = None) -> pd.DataFrame:
    return _read_csv(
        results_dir, f"{measure_folder(results_dir, measure)}/exceedances.csv",
        ("model", "threshold_name", "threshold", "n_images", "n_above", "fraction", "ci_low", "ci_high"),
    )


def load_leakage(results_dir, measure: str | None = None) -> pd.DataFrame:
    return _read_csv(
        results_dir, f"{measure_folder(results_dir, measure)}/leakage.csv",
        ("model", "threshold_name", "threshold", "n_subjects_leaked", "n_train_subjects", "fraction_subjects"),
    )


def load_most_matched(results_dir, model: str, measure: str | None = None) -> pd.DataFrame:
    return _read_csv(results_dir, f"{measure_folder(results_dir, measure)}/most_matched_{model}.csv",
                     ("train_index", "subject", "slice", "n_matched", "max_correlation"))


def model_files(model: str, folder: str = "correlation") -> dict[str, str]:
    """The result files of one generator, by what they hold (step 05's under ``folder``)."""
    return {
        "training log": f"{model}/loss_log.csv",
        "samples": f"samples/{model}.npy",
        "seeds": f"samples/{model}_seeds.csv",
        "best matches": f"{folder}/matches_{model}.csv",
        "top-k matches": f"{folder}/topk_{model}.csv",
        "most-matched training images": f"{folder}/most_matched_{model}.csv",
    }


def model_status(results_dir, models: Sequence[str] = MODELS,
                 measure: str | None = None) -> tuple[list[str], pd.DataFrame]:
    """Which models have results, and a table of every expected file (present
    or not, and which step writes it). A model counts as present when its
    best-match table of ``measure`` (None: the headline) exists, since most
    figures start from it. Without step 05's summary the headline's folder
    is unknown and no model counts as present."""
    try:
        folder = measure_folder(results_dir, measure)
    except ResultMissing:
        folder = "correlation/<measure>"
    rows = []
    for model in models:
        for what, rel in model_files(model, folder).items():
            rows.append({"model": model, "file": rel, "holds": what, "present": (Path(results_dir) / rel).is_file(),
                         "written by": producer(rel)})
    status = pd.DataFrame(rows, columns=["model", "file", "holds", "present", "written by"])
    present = [m for m in models if (Path(results_dir) / f"{folder}/matches_{m}.csv").is_file()]
    return present, status


def available(status: pd.DataFrame, holds: str) -> list[str]:
    """Models whose file of kind ``holds`` (e.g. "samples") is present."""
    rows = status[(status["holds"] == holds) & status["present"]]
    return list(dict.fromkeys(rows["model"]))


def missing_text(status: pd.DataFrame) -> str:
    """Markdown: what exists and what is missing, per model."""
    lines = []
    for model, group in status.groupby("model", sort=False):
        absent = group[~group["present"]]
        if absent.empty:
            lines.append(f"- **{display_name(model)}**: all result files present.")
        else:
            files = ", ".join(f"`{f}` ({s})" for f, s in zip(absent["file"], absent["written by"]))
            lines.append(f"- **{display_name(model)}**: missing {files}; figures for it are left out.")
    return "\n".join(lines) if lines else "No models requested."


def channel_index(channels: Sequence[str], channel: str | None) -> int:
    """Index of ``channel`` (any case) in the data's channel names ('' or None: the first)."""
    if not channel:
        return 0
    names = [str(c) for c in channels]
    lower = [n.lower() for n in names]
    if str(channel).lower() not in lower:
        raise ValueError(f"figure_channel {channel!r} is not one of the data's channels: {', '.join(names)}")
    return lower.index(str(channel).lower())


def shown_channel(results_dir, channel: str | None = None, measure: str | None = None) -> int:
    """The channel an image figure shows: ``channel`` when given, else the
    measure's own channel (a one-channel measure; None: the headline), else
    the first image channel of a joint measure, else the first channel."""
    names = [str(c) for c in load_meta(results_dir).get("channels", [])]
    if channel:
        return channel_index(names, channel)
    if not (Path(results_dir) / "correlation/summary.json").is_file():
        return 0
    info = measure_info(results_dir, measure)
    chans = [str(c) for c in info.get("channels", [])]
    if info.get("kind") == "joint":  # the older layout's channels and a joint measure: the first image channel
        chans = [c for c in chans if not is_label_channel(c)] or chans
    return channel_index(names, chans[0]) if chans and names else 0


def measure_label(info: Mapping) -> str:
    """``T1 alone (the paper's measure ...)``: what a measure correlates."""
    return str(info.get("description") or f"channels {', '.join(map(str, info.get('channels', [])))}")


def threshold_label(name: str, value: float) -> str:
    if name.startswith("fixed_"):
        return f"r > {value:.2f}"
    if name.startswith("baseline_p"):
        return f"held-out p{name.removeprefix('baseline_p')} (r > {value:.3f})"
    return f"{name} ({value:.3f})"


def thresholds_table(results_dir, measure: str | None = None) -> pd.DataFrame:
    """thresholds.csv of one measure (None: the headline) with what each threshold means."""
    values = load_thresholds(results_dir, measure)
    return pd.DataFrame({"threshold_name": list(values), "r": list(values.values()),
                         "meaning": [threshold_label(n, v) for n, v in values.items()]})


def thresholds_by_measure(results_dir) -> pd.DataFrame:
    """Every measure's thresholds, one row per measure (headline first)."""
    rows = [{"measure": m, **load_thresholds(results_dir, m)} for m in measures(results_dir)]
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------
# Tables (CSV + a small Markdown writer; tabulate is not a dependency)
# --------------------------------------------------------------------------

def _format_cell(value: Any, fmt: str | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return format(float(value), fmt or ".3f")
    return str(value).replace("|", "\\|").replace("\n", " ")


def _is_number_column(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def markdown_table(frame: pd.DataFrame, formats: Mapping[str, str] | None = None) -> str:
    """A GitHub-style Markdown table. Floats: ``.1f`` in columns whose name
    contains 'percent', ``.3f`` elsewhere, unless ``formats`` says otherwise."""
    formats = dict(formats or {})
    columns = [str(c) for c in frame.columns]
    fmts = [formats.get(c, ".1f" if "percent" in c else ".3f") for c in columns]
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---:" if _is_number_column(frame[c]) else "---" for c in frame.columns) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_format_cell(v, f) for v, f in zip(row, fmts)) + " |")
    return "\n".join(lines) + "\n"


def save_table(frame: pd.DataFrame, out_dir: str | os.PathLike, name: str) -> list[Path]:
    """Write ``<name>.csv`` and ``<name>.md`` under ``out_dir`` (atomically)."""
    out_dir = Path(out_dir)
    return [write_csv(out_dir / f"{name}.csv", frame), write_text(out_dir / f"{name}.md", markdown_table(frame))]


def measure_names(name: str, measure: str, headline_measure: str | None) -> list[str]:
    """File stems of a per-measure output: ``<name>_<measure>``, and for the
    headline measure also ``<name>`` (the name the README and older runs use)."""
    return [f"{name}_{measure}"] + ([name] if measure == headline_measure else [])


def save_measure_table(frame: pd.DataFrame, out_dir, name: str, measure: str,
                       headline_measure: str | None) -> list[Path]:
    """:func:`save_table` under :func:`measure_names`."""
    return [p for stem in measure_names(name, measure, headline_measure) for p in save_table(frame, out_dir, stem)]


def save_measure_figure(fig, out_dir, name: str, measure: str, headline_measure: str | None,
                        pdf: bool = True) -> list[Path]:
    """:func:`save_figure` under :func:`measure_names`."""
    return [p for stem in measure_names(name, measure, headline_measure) for p in save_figure(fig, out_dir, stem, pdf)]


def memorization_table(results_dir, model: str, threshold_names: Sequence[str] = THRESHOLD_NAMES,
                       measure: str | None = None) -> pd.DataFrame:
    """One row per threshold for ``model``: images above it (count, %, the
    bootstrap 95 % interval from step 05) and training subjects leaked, on
    ``measure`` (None: the headline). Values are copied from
    exceedances.csv / leakage.csv, only rescaled to %."""
    folder = measure_folder(results_dir, measure)
    exc = load_exceedances(results_dir, measure)
    exc = exc[exc["model"] == model]
    if exc.empty:
        raise ValueError(f"{Path(results_dir) / folder / 'exceedances.csv'}: no rows for model '{model}'")
    leak_path = Path(results_dir) / folder / "leakage.csv"
    leak = load_leakage(results_dir, measure) if leak_path.is_file() else pd.DataFrame(
        columns=["model", "threshold_name", "n_subjects_leaked", "n_train_subjects", "fraction_subjects"])
    leak = leak[leak["model"] == model][["threshold_name", "n_subjects_leaked", "n_train_subjects", "fraction_subjects"]]
    table = exc.merge(leak, on="threshold_name", how="left")
    order = {n: i for i, n in enumerate(threshold_names)}
    table = table[table["threshold_name"].isin(order)].copy()
    table["_order"] = table["threshold_name"].map(order)
    table = table.sort_values("_order")
    out = pd.DataFrame({
        "threshold_name": table["threshold_name"].to_numpy(),
        "threshold": table["threshold"].astype(float).to_numpy(),
        "n_images": table["n_images"].astype(int).to_numpy(),
        "n_above": table["n_above"].astype(int).to_numpy(),
        "percent": 100 * table["fraction"].astype(float).to_numpy(),
        "ci_low_percent": 100 * table["ci_low"].astype(float).to_numpy(),
        "ci_high_percent": 100 * table["ci_high"].astype(float).to_numpy(),
        "wilson_low_percent": 100 * table.get("wilson_low", pd.Series(np.nan, index=table.index)).astype(float).to_numpy(),
        "wilson_high_percent": 100 * table.get("wilson_high", pd.Series(np.nan, index=table.index)).astype(float).to_numpy(),
        "n_subjects_leaked": pd.to_numeric(table["n_subjects_leaked"]).astype("Int64").to_numpy(),
        "n_train_subjects": pd.to_numeric(table["n_train_subjects"]).astype("Int64").to_numpy(),
        "percent_subjects": 100 * pd.to_numeric(table["fraction_subjects"]).astype(float).to_numpy(),
    })
    if out["wilson_low_percent"].isna().all():
        out = out.drop(columns=["wilson_low_percent", "wilson_high_percent"])
    if out["n_subjects_leaked"].isna().all():
        out = out.drop(columns=["n_subjects_leaked", "n_train_subjects", "percent_subjects"])
    return out.reset_index(drop=True)


def table_groups(results_dir, models: Sequence[str], measure: str | None = None) -> list[str]:
    """The groups of exceedances.csv to tabulate: the requested generators
    present there, then the real held-out baseline, then the positive
    control (each only if it has rows)."""
    present = set(load_exceedances(results_dir, measure)["model"].astype(str))
    return [m for m in (*models, BASELINE, CONTROL) if m in present]


def memorization_tables(results_dir, models: Sequence[str],
                        threshold_names: Sequence[str] = THRESHOLD_NAMES) -> list[tuple[str, str, pd.DataFrame]]:
    """``(measure, group, table)`` for every measure (headline first) and
    group of :func:`table_groups`: every memorization table of step 05."""
    return [(m, g, memorization_table(results_dir, g, threshold_names, m))
            for m in measures(results_dir) for g in table_groups(results_dir, models, m)]


def table_title(model: str) -> str:
    """A heading that cannot mistake the baseline or control for a generator."""
    if model == BASELINE:
        return "Real held-out test images vs the training set (baseline: what no memorization looks like)"
    if model == CONTROL:
        return ("Positive control: planted copies of training images (NOT a generator; "
                "it checks that the audit finds known copies)")
    return f"{display_name(model)} synthetic images"


def most_copied_table(results_dir, model: str, n: int = 10, measure: str | None = None) -> pd.DataFrame:
    """The training images matched by the most synthetic images."""
    frame = load_most_matched(results_dir, model, measure)
    frame = frame.sort_values(["n_matched", "max_correlation"], ascending=False, kind="stable")
    return frame.head(n).reset_index(drop=True)


# --------------------------------------------------------------------------
# Words computed from the numbers
# --------------------------------------------------------------------------

def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def interval_columns(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """:func:`helpers.correlate.reported_interval` for every row of a table
    with ci_low/ci_high (and optionally wilson_low/wilson_high) columns."""
    pairs = [reported_interval(row) for row in frame.to_dict("records")]
    return np.array([p[0] for p in pairs], dtype=float), np.array([p[1] for p in pairs], dtype=float)


def _exceedance_sentence(name: str, info: Mapping, exc: Mapping, label: str) -> str:
    n = int(info.get("n", 0))
    k = int(exc["n_above"])
    lo, hi = reported_interval(exc)
    text = f"Of {n} {name} images, {k} ({_pct(exc['fraction'])}, 95 % CI {_pct(lo)}–{_pct(hi)}) exceed {label}"
    top = (info.get("quantiles") or {}).get("max")
    if top is not None and not (isinstance(top, float) and math.isnan(top)):
        text += f"; the highest correlation with a training image is r = {float(top):.3f}"
    constant = int(info.get("constant", 0) or 0)
    if constant:
        text += f" ({constant} constant image{'s' if constant > 1 else ''} had no defined correlation)"
    return text


def finding_text(summary: Mapping, threshold_name: str = "baseline_p99", n_train_subjects: int | None = None,
                 expected_models: Sequence[str] = MODELS, measure: str | None = None) -> str:
    """A short Markdown paragraph stating the finding at ``threshold_name``
    on ``measure`` (None: the headline), built only from ``summary``
    (correlation/summary.json), so it cannot go stale: counts, percentages,
    intervals, leaked subjects, and whether the two generators' 95 %
    intervals overlap."""
    summary = measure_summary(summary, measure)
    thresholds = summary.get("thresholds", {})
    if threshold_name not in thresholds:
        raise ValueError(f"summary.json has no threshold '{threshold_name}' (has {', '.join(thresholds)})")
    value = float(thresholds[threshold_name])
    label = threshold_label(threshold_name, value)
    models = summary.get("models", {})
    generators = [m for m in models if m not in (CONTROL, BASELINE)]
    base = summary.get("baseline") or {}
    parts = [f"**{summary.get('dataset', '?')}** ({summary.get('n_train', '?')} training images; "
             f"correlation on channels {', '.join(map(str, summary.get('channels', [])))}: "
             f"{measure_label(summary)}). "
             f"Threshold: {label}; the held-out real baseline used {(base or {}).get('n', '?')} test images."]
    rates = {}
    for model in generators:
        info = models[model]
        exc = (info.get("exceedances") or {}).get(threshold_name)
        if exc is None:
            parts.append(f"{display_name(model)}: no exceedance at this threshold in summary.json.")
            continue
        rates[model] = exc
        sentence = _exceedance_sentence(f"{display_name(model)} synthetic", info, exc, "it")
        leaked = (info.get("subjects_leaked") or {}).get(threshold_name)
        if leaked is not None:
            of = f" of {n_train_subjects}" if n_train_subjects else ""
            sentence += f"; {int(leaked)}{of} training subjects have at least one image matched above it"
        parts.append(sentence + ".")
    if len(rates) >= 2:
        (m1, e1), (m2, e2) = sorted(rates.items(), key=lambda kv: kv[1]["fraction"], reverse=True)[:2]
        if reported_interval(e1)[0] > reported_interval(e2)[1]:
            parts.append(f"{display_name(m1)} exceeds more often than {display_name(m2)} "
                         f"({_pct(e1['fraction'])} vs {_pct(e2['fraction'])}) and the 95 % intervals do not overlap.")
        else:
            parts.append(f"The 95 % intervals of {display_name(m1)} ({_pct(e1['fraction'])}) and "
                         f"{display_name(m2)} ({_pct(e2['fraction'])}) overlap: this run does not separate "
                         "the two models at this threshold.")
    control = summary.get(CONTROL) or models.get(CONTROL) or {}  # step 05 keeps it apart from the models
    if (control.get("exceedances") or {}).get(threshold_name):
        exc = control["exceedances"][threshold_name]
        n = int(control.get("n", 0))
        found = "every planted copy" if int(exc["n_above"]) == n else f"{int(exc['n_above'])} of {n} planted copies"
        parts.append(f"Positive control (planted copies of training images, not a generator): the audit finds {found} "
                     f"({_pct(exc['fraction'])}) above this threshold.")
    absent = [m for m in expected_models if m not in models]
    if absent:
        parts.append("No results for: " + ", ".join(display_name(m) for m in absent) + ".")
    return " ".join(parts)


def measures_table(summary: Mapping, threshold_name: str = "baseline_p99") -> pd.DataFrame:
    """Every measure (headline first) at ``threshold_name``: per generator,
    the held-out baseline and the control, images above it (count, %,
    reported 95 % interval in %) and the median and highest best correlation,
    so the channel choice can be judged at a glance."""
    names = summary["measures"] if "measures" in summary else [JOINT]
    rows = []
    for name in names:
        info = measure_summary(summary, name)
        value = (info.get("thresholds") or {}).get(threshold_name)
        groups = dict(info.get("models") or {})
        if info.get("baseline"):
            groups[BASELINE] = info["baseline"]
        if info.get(CONTROL):
            groups[CONTROL] = info[CONTROL]
        for model, g in groups.items():
            exc = (g.get("exceedances") or {}).get(threshold_name)
            q = g.get("quantiles") or {}
            lo, hi = reported_interval(exc) if exc else (np.nan, np.nan)
            rows.append({"measure": name, "kind": info.get("kind"), "headline": bool(info.get("headline")),
                         "group": model, "threshold": value, "n": g.get("n"), "constant": g.get("constant"),
                         "n_above": exc["n_above"] if exc else None,
                         "percent": 100 * exc["fraction"] if exc else np.nan,
                         "ci_low_percent": 100 * lo, "ci_high_percent": 100 * hi,
                         "median_r": q.get("p50"), "max_r": q.get("max")})
    frame = pd.DataFrame(rows, columns=["measure", "kind", "headline", "group", "threshold", "n", "constant", "n_above",
                                        "percent", "ci_low_percent", "ci_high_percent", "median_r", "max_r"])
    return frame.astype({"n": "Int64", "constant": "Int64", "n_above": "Int64"})


# --------------------------------------------------------------------------
# Figure 1: distributions of the maximum correlation
# --------------------------------------------------------------------------

def max_correlations(results_dir, models: Sequence[str], measure: str | None = None,
                     control: bool = False) -> pd.DataFrame:
    """Long table (group, model, correlation) of every non-constant image's
    best correlation on ``measure`` (None: the headline): the models'
    samples and the held-out real baseline (and the planted-copy control
    when ``control`` and step 05 made one)."""
    frames = []
    for model in models:
        m = load_matches(results_dir, model, measure)
        m = m[~m["constant"] & m["correlation"].notna()]
        frames.append(pd.DataFrame({"model": model, "correlation": m["correlation"].astype(float)}))
    b = load_baseline(results_dir, measure)
    b = b[~b["constant"] & b["correlation"].notna()]
    frames.append(pd.DataFrame({"model": BASELINE, "correlation": b["correlation"].astype(float)}))
    if control and (Path(results_dir) / measure_folder(results_dir, measure) / "control_matches.csv").is_file():
        c = load_control(results_dir, measure)
        c = c[~c["constant"] & c["correlation"].notna()]
        frames.append(pd.DataFrame({"model": CONTROL, "correlation": c["correlation"].astype(float)}))
    long = pd.concat(frames, ignore_index=True)
    long["group"] = long["model"].map(display_name)
    return long


def plot_max_correlation(results_dir, models: Sequence[str] = MODELS, bins: int = 40, measure: str | None = None):
    """Histogram (density) and ECDF of the maximum correlation with the
    training set on ``measure`` (None: the headline, the README figure), per
    model and for the held-out real baseline, with the fixed and
    baseline-calibrated thresholds marked."""
    import seaborn as sns

    long = max_correlations(results_dir, models, measure)
    thresholds = load_thresholds(results_dir, measure)
    info = measure_info(results_dir, measure)
    palette = {display_name(m): COLOURS.get(m, "k") for m in long["model"].unique()}
    lo = min(float(long["correlation"].min()), min(thresholds.values(), default=1.0)) if len(long) else 0.0
    lo = max(-1.0, math.floor(lo * 20) / 20)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    if long.empty:
        for ax in axes:
            ax.text(0.5, 0.5, "no image with a defined correlation\n(all constant)", ha="center", va="center",
                    transform=ax.transAxes)
        return fig
    sns.histplot(long, x="correlation", hue="group", palette=palette, stat="density", common_norm=False,
                 element="step", bins=bins, binrange=(lo, 1.0), ax=axes[0])
    sns.ecdfplot(long, x="correlation", hue="group", palette=palette, ax=axes[1], legend=False)
    fixed = {n: v for n, v in thresholds.items() if not n.startswith("baseline")}
    calibrated = {n: v for n, v in thresholds.items() if n.startswith("baseline")}
    for ax in axes:
        for value in fixed.values():
            ax.axvline(value, lw=1, color="0.5", ls=":")
        for value in calibrated.values():
            ax.axvline(value, lw=1, color="tab:red", ls="--")
        ax.set_xlim(lo, 1.0)
        ax.set_xlabel("maximum Pearson correlation with any training image")
    from matplotlib.lines import Line2D

    handles = []
    if fixed:
        handles.append(Line2D([], [], color="0.5", ls=":", label="fixed: " + ", ".join(f"{v:.2f}" for v in fixed.values())))
    if calibrated:
        handles.append(Line2D([], [], color="tab:red", ls="--", label="held-out " + ", ".join(
            f"{n.removeprefix('baseline_')} = {v:.3f}" for n, v in calibrated.items())))
    if handles:
        axes[1].legend(handles=handles, fontsize=7, loc="upper left", title="thresholds", title_fontsize=7)
    axes[1].set_ylabel("fraction of images ≤ r")
    counts = long.groupby("group", sort=False).size()
    axes[0].set_title("histogram (" + ", ".join(f"{g}: n={n}" for g, n in counts.items()) + ")", fontsize=8)
    axes[1].set_title("empirical CDF", fontsize=8)
    fig.suptitle(f"measure '{info['measure']}': {measure_label(info)}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_max_correlation_by_measure(results_dir, models: Sequence[str] = MODELS, bins: int = 40, cols: int = 3):
    """One histogram panel per measure (headline first) of the maximum
    correlation of each generator's images, the held-out real baseline and
    the planted-copy control (dashed), with that measure's thresholds."""
    names = measures(results_dir)
    cols = max(1, min(cols, len(names)))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, name in zip(axes.ravel(), names):
        info = measure_info(results_dir, name)
        long = max_correlations(results_dir, models, name, control=True)
        thresholds = load_thresholds(results_dir, name)
        lo = max(-1.0, math.floor(min([*long["correlation"], *thresholds.values(), 1.0]) * 10) / 10)
        for model, part in long.groupby("model", sort=False):
            ax.hist(part["correlation"], bins=bins, range=(lo, 1.0), histtype="step", density=True,
                    color=COLOURS.get(model), ls="--" if model == CONTROL else "-",
                    label=f"{display_name(model)} (n={len(part)})")
        for tname, value in thresholds.items():
            ax.axvline(value, lw=0.8, color="tab:red" if tname.startswith("baseline") else "0.5",
                       ls="--" if tname.startswith("baseline") else ":")
        head = " — headline" if info.get("headline") else ""
        ax.set_title(f"{name}{head} ({info.get('kind')})", fontsize=8)
        ax.set_xlabel("maximum Pearson r with any training image", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=6)
    for ax in axes.ravel()[len(names):]:
        ax.set_axis_off()
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------
# Figure 2: top (and typical) matches with context
# --------------------------------------------------------------------------

def _show(ax, image, title: str | None = None, note: str | None = None) -> None:
    """An image panel with ``note`` under it (or a grey panel saying ``note``)."""
    ax.set_xticks([])
    ax.set_yticks([])
    if image is None:
        ax.set_facecolor("0.92")
        ax.text(0.5, 0.5, note or "none", ha="center", va="center", fontsize=7, transform=ax.transAxes)
    else:
        ax.imshow(np.asarray(image), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        if note:
            ax.set_xlabel(note, fontsize=6, labelpad=2)
    if title:
        ax.set_title(title, fontsize=7)


def intensity_histogram(ax, train_image: np.ndarray, synth_image: np.ndarray, r_table: float | None,
                        bins: int = 64) -> float:
    """2-D histogram (log colour) of training vs synthetic pixel values on
    0–255 axes; prints the table's r and the r of this channel alone.
    Returns the channel's r (NaN when either image is constant)."""
    from matplotlib.colors import LogNorm

    x = np.asarray(train_image, dtype=np.float64).ravel()
    y = np.asarray(synth_image, dtype=np.float64).ravel()
    counts, _, _ = np.histogram2d(x, y, bins=bins, range=[[0, 256], [0, 256]])
    ax.imshow(np.ma.masked_equal(counts.T, 0), origin="lower", extent=(0, 255, 0, 255), cmap="viridis",
              norm=LogNorm(vmin=1, vmax=max(counts.max(), 1)), aspect="equal", interpolation="nearest")
    r_channel = float(np.corrcoef(x, y)[0, 1]) if x.std() > 0 and y.std() > 0 else float("nan")
    text = (f"r = {r_table:.3f}\n" if r_table is not None and not math.isnan(r_table) else "") + f"r(ch) = {r_channel:.3f}"
    ax.text(0.03, 0.97, text, transform=ax.transAxes, va="top", fontsize=7,
            bbox=dict(facecolor="white", alpha=0.8, lw=0, pad=1))
    ax.set_xticks([0, 128, 255])
    ax.set_yticks([0, 128, 255])
    ax.tick_params(labelsize=6)
    ax.set_xlabel("training", fontsize=6, labelpad=1)
    ax.set_ylabel("synthetic", fontsize=6, labelpad=1)
    return r_channel


def select_matches(matches: pd.DataFrame, n_top: int, n_typical: int) -> pd.DataFrame:
    """The ``n_top`` highest-correlation rows and the ``n_typical`` rows
    nearest the median, with their rank (1 = best) among non-constant images."""
    valid = matches[~matches["constant"] & matches["correlation"].notna()]
    valid = valid.sort_values("correlation", ascending=False, kind="stable").reset_index(drop=True)
    valid["rank"] = np.arange(1, len(valid) + 1)
    top = valid.head(n_top).assign(kind="top")
    rest = valid.iloc[len(top):]
    if len(rest) and n_typical:
        median = float(valid["correlation"].median())
        near = (rest["correlation"] - median).abs().sort_values(kind="stable").index[:n_typical]
        typical = rest.loc[sorted(near)].assign(kind="typical")
    else:
        typical = valid.iloc[:0].assign(kind="typical")
    return pd.concat([top, typical], ignore_index=True)


def plot_top_matches(results_dir, model: str, n_top: int = 4, n_typical: int = 2, channel: str | None = None,
                     bins: int = 64, measure: str | None = None):
    """The authors' figure, with context: per row training | synthetic |
    pixel-intensity 2-D histogram | previous | next slice of the same
    training subject (BraTS; rows with slice −1, chest x-rays, show the
    2nd- and 3rd-best training matches instead). Top rows are the best
    matches of ``measure`` (None: the headline), the last rows typical
    (median-correlation) ones. Shown: ``channel``, or ('' / None) the
    measure's own channel (see :func:`shown_channel`)."""
    meta = load_meta(results_dir)
    ch = shown_channel(results_dir, channel, measure)
    ch_name = str(meta["channels"][ch]) if meta.get("channels") else f"ch{ch}"
    train = load_images(results_dir, "train")
    index = load_index(results_dir, "train")
    samples = load_samples(results_dir, model)
    matches = load_matches(results_dir, model, measure)
    rows = select_matches(matches, n_top, n_typical)
    topk_path = Path(results_dir) / measure_folder(results_dir, measure) / f"topk_{model}.csv"
    topk = load_topk(results_dir, model, measure) if topk_path.is_file() else None
    neighbours = dict(zip((-1, 1), neighbour_slices(index)))  # the nearest kept slice below / above

    n_rows = max(len(rows), 1)
    fig, axes = plt.subplots(n_rows, 5, figsize=(9.5, 1.95 * n_rows), squeeze=False)
    if rows.empty:
        for ax in axes[0]:
            _show(ax, None, note="no non-constant samples")
    for r, row in rows.iterrows():
        ax = axes[r]
        syn_i, tr_i = int(row["synthetic_index"]), int(row["train_index"])
        t_img, s_img = train[tr_i, ch], samples[syn_i, ch]
        subject, z = str(row["subject"]), int(row["slice"])
        first = r == 0
        _show(ax[0], t_img, "training image" if first else None, note=f"train #{tr_i}")
        seed = f", seed {int(row['seed'])}" if "seed" in row and pd.notna(row.get("seed")) else ""
        _show(ax[1], s_img, "synthetic image" if first else None, note=f"synthetic #{syn_i}{seed}")
        intensity_histogram(ax[2], t_img, s_img, float(row["correlation"]), bins=bins)
        if first:
            ax[2].set_title("pixel intensities", fontsize=7)
        if z >= 0:
            for col, dz, key, head in ((3, -1, "prev_correlation", "previous slice"), (4, 1, "next_correlation", "next slice")):
                j = int(neighbours[dz][tr_i])
                rr = row.get(key)
                note = (f"z={int(index['slice'].iloc[j])}" + (f", r={rr:.3f}" if rr is not None and pd.notna(rr) else "")
                        if j >= 0 else f"no {'lower' if dz < 0 else 'higher'} slice of\n{subject} in training set")
                _show(ax[col], train[j, ch] if j >= 0 else None, head if first else None, note=note)
        else:
            others = (topk[(topk["synthetic_index"] == syn_i) & (topk["rank"] > 1)].sort_values("rank")
                      if topk is not None else pd.DataFrame(columns=["rank", "train_index", "correlation"]))
            for col, k in ((3, 2), (4, 3)):
                hit = others[others["rank"] == k]
                if hit.empty:
                    note = "no top-k file" if topk is None else f"no rank-{k} match"
                    _show(ax[col], None, f"{k}{'nd' if k == 2 else 'rd'}-best match" if first else None, note=note)
                else:
                    j = int(hit["train_index"].iloc[0])
                    _show(ax[col], train[j, ch], f"{k}{'nd' if k == 2 else 'rd'}-best match" if first else None,
                          note=f"{index['subject'].iloc[j]}, train #{j}, r={float(hit['correlation'].iloc[0]):.3f}")
        kind = f"rank {int(row['rank'])}" if row["kind"] == "top" else f"typical\n(rank {int(row['rank'])})"
        where = f"z={z}" if z >= 0 else "x-ray"
        ax[0].set_ylabel(f"{kind}\n{subject}\n{where}", fontsize=7)
    info = measure_info(results_dir, measure)
    used = ", ".join(map(str, info.get("channels", [])))
    fig.suptitle(f"{display_name(model)}, measure '{info['measure']}': top {min(n_top, len(rows))} and typical "
                 f"matches; shown: channel '{ch_name}'; r = correlation on channels [{used}], r(ch) = on "
                 f"'{ch_name}' alone", fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------
# Figure 4: random samples beside random training images
# --------------------------------------------------------------------------

def _grid(subfig, images: np.ndarray, indices: Sequence[int], ch: int, title: str) -> None:
    side = max(1, math.ceil(math.sqrt(len(indices))))
    axes = subfig.subplots(side, side, squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.set_axis_off()
        if k < len(indices):
            ax.imshow(np.asarray(images[indices[k], ch]), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    subfig.suptitle(title, fontsize=9)


def plot_sample_grids(results_dir, models: Sequence[str] = MODELS, n: int = 16, channel: str | None = None,
                      seed: int = 0):
    """Random training images beside random samples of each model (one
    channel: ``channel``, or the headline measure's), so a reader can judge
    realism and variety at a glance."""
    meta = load_meta(results_dir)
    ch = shown_channel(results_dir, channel)
    sources = [("training (random)", load_images(results_dir, "train"))]
    sources += [(f"{display_name(m)} samples (random)", load_samples(results_dir, m)) for m in models]
    rng = np.random.default_rng(seed)
    fig = plt.figure(figsize=(3.2 * len(sources), 3.4))
    subfigs = fig.subfigures(1, len(sources), squeeze=False)[0]
    for sub, (title, images) in zip(subfigs, sources):
        idx = np.sort(rng.choice(len(images), size=min(n, len(images)), replace=False))
        _grid(sub, images, idx, ch, title)
    name = meta["channels"][ch] if meta.get("channels") else ch
    fig.text(0.5, -0.02, f"channel '{name}'; random draw with seed {seed}", ha="center", fontsize=7)
    return fig


# --------------------------------------------------------------------------
# Figure 5: training curves
# --------------------------------------------------------------------------

LOSS_COLUMNS = {"stylegan": ("loss_G", "loss_D", "r1", "augment_p"), "diffusion": ("loss", "lr")}


def plot_training_curves(results_dir, models: Sequence[str] = MODELS, smooth: int = 5) -> dict:
    """One figure per model whose loss log exists (``{model: figure}``),
    against images seen when logged (comparable across models)."""
    out = {}
    for model in models:
        if not (Path(results_dir) / f"{model}/loss_log.csv").is_file():
            continue
        log = load_loss_log(results_dir, model)
        x = "images_seen" if "images_seen" in log.columns else "step"
        out[model] = plot_loss_log(log, LOSS_COLUMNS.get(model, [c for c in log.columns if c != x]), x=x,
                                   title=f"{display_name(model)} training", smooth=smooth)
    return out


# --------------------------------------------------------------------------
# Figure 6: memorization against training-set size
# --------------------------------------------------------------------------

_SIZE_SUFFIX = re.compile(r"^(?P<base>.+)_n(?P<k>\d+)$")


def _n_train_subjects(folder: Path) -> int | None:
    meta_path = folder / "data/meta.json"
    if meta_path.is_file():
        value = read_json(meta_path).get("n_train_subjects")
        if value is not None:
            return int(value)
    if (folder / "data/train.csv").is_file():
        return int(load_index(folder, "train")["subject"].nunique())
    match = _SIZE_SUFFIX.match(folder.name)
    return int(match["k"]) if match else None


def _summary_view(folder: Path, measure: str | None) -> dict | None:
    """One measure of a folder's summary.json (None: its headline); None
    when that folder did not compute the measure."""
    summary = load_summary(folder)
    try:
        return measure_summary(summary, measure)
    except ValueError:
        return None


def size_series(results_dir, measure: str | None = None) -> pd.DataFrame:
    """Memorization rates of the same dataset trained on different numbers
    of training subjects.

    Convention: runs of one dataset with a reduced training set live in
    sibling folders ``results/<dataset>_n<K>/`` (``./runall.sh <dataset>
    --name <dataset>_n<K> --set prepare_data.n_train_subjects=<K>``) next to
    the full run ``results/<dataset>/``. A folder's training-set size is
    ``data/meta.json``'s ``n_train_subjects`` when present, else the number
    of distinct subjects in ``data/train.csv``, else ``K``. Every such folder
    with a ``correlation/summary.json`` contributes one row per model and
    threshold (columns: folder, n_train_subjects, n_train, measure, model,
    threshold_name, n, n_above, fraction, ci_low, ci_high, wilson_low,
    wilson_high) on ``measure`` (None: each folder's headline; folders
    without that measure are left out).
    """
    results_dir = Path(results_dir)
    match = _SIZE_SUFFIX.match(results_dir.name)
    base = match["base"] if match else results_dir.name
    parent = results_dir.parent
    folders = [parent / base] + sorted(p for p in parent.glob(f"{base}_n*") if _SIZE_SUFFIX.match(p.name))
    rows = []
    for folder in folders:
        if not (folder / "correlation/summary.json").is_file():
            continue
        summary = _summary_view(folder, measure)
        if summary is None:
            continue
        size = _n_train_subjects(folder)
        for model, info in summary["models"].items():
            for name, exc in (info.get("exceedances") or {}).items():
                rows.append({"folder": folder.name, "n_train_subjects": size, "n_train": summary.get("n_train"),
                             "measure": summary["measure"], "model": model, "threshold_name": name, "n": info.get("n"),
                             "n_above": exc["n_above"], "fraction": exc["fraction"], "ci_low": exc["ci_low"],
                             "ci_high": exc["ci_high"], "wilson_low": exc.get("wilson_low", np.nan),
                             "wilson_high": exc.get("wilson_high", np.nan)})
    return pd.DataFrame(rows, columns=["folder", "n_train_subjects", "n_train", "measure", "model", "threshold_name",
                                       "n", "n_above", "fraction", "ci_low", "ci_high", "wilson_low", "wilson_high"])


def size_note(series: pd.DataFrame) -> str | None:
    """Why no size plot is drawn (None when one is)."""
    sizes = series["n_train_subjects"].dropna().unique() if len(series) else []
    if len(sizes) >= 2:
        return None
    have = f"only one training-set size ({int(sizes[0])} subjects)" if len(sizes) else "no sized results"
    return (f"Memorization against training-set size needs results for at least two sizes; there is {have}. "
            "Add runs as sibling folders `results/<dataset>_n<K>/`, e.g. `./runall.sh phantom --name phantom_n8 "
            "--set prepare_data.n_train_subjects=8`.")


def plot_memorization_vs_size(series: pd.DataFrame, threshold_name: str = "baseline_p99"):
    """Fraction of synthetic images above ``threshold_name`` (with 95 % CI)
    against the number of training subjects, one line per model. Returns
    None when fewer than two sizes exist (see :func:`size_note`)."""
    if size_note(series) is not None:
        return None
    data = series[(series["threshold_name"] == threshold_name) & (series["model"] != CONTROL)]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    groups = list(data.groupby("model", sort=False))
    for i, (model, group) in enumerate(groups):
        g = group.sort_values("n_train_subjects")
        y = 100 * g["fraction"].to_numpy(float)
        lo, hi = interval_columns(g)
        err = np.vstack([y - 100 * lo, 100 * hi - y])
        dodge = 1 + 0.04 * (i - (len(groups) - 1) / 2)  # side by side, so equal rates do not hide each other
        ax.errorbar(g["n_train_subjects"].to_numpy(float) * dodge, y, yerr=err, marker="o", capsize=3,
                    label=display_name(model), color=COLOURS.get(model), ls="--" if model == BASELINE else "-")
    ax.set_xscale("log")
    sizes = sorted(data["n_train_subjects"].dropna().unique())
    ax.set_xticks(sizes, [str(int(s)) for s in sizes])
    ax.minorticks_off()
    ax.set_ylim(bottom=0)
    ax.set_xlabel("training subjects")
    ax.set_ylabel(f"% images above {threshold_name}")
    ax.legend(fontsize=8)
    used = ", ".join(dict.fromkeys(data["measure"].astype(str))) if "measure" in data else JOINT
    ax.set_title(f"memorization vs training-set size (measure {used}; 95 % CI)", fontsize=9)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------
# Cross-dataset comparison
# --------------------------------------------------------------------------

def _kind(model: str) -> str:
    return {BASELINE: "baseline", CONTROL: "control"}.get(model, "generator")


_COMPARE_COLUMNS = ["dataset", "measure", "headline", "model", "kind", "threshold_name", "threshold", "n", "n_above",
                    "fraction", "ci_low", "ci_high", "wilson_low", "wilson_high", "subjects_leaked", "p99", "max"]


def collect_summaries(results_root, measure: str | None = None, all_measures: bool = False) -> pd.DataFrame:
    """Every ``<results_root>/<name>/correlation/summary.json`` (and every
    size run of a sweep, ``<name>/sizes/<run>/``, labelled ``<name>/<run>``) as a long
    table: one row per (folder, measure, model, threshold), with ``kind``
    generator / baseline / control. By default each folder's headline
    measure (``measure``: that one instead, folders without it left out;
    ``all_measures``: every measure, ``headline`` marking each folder's
    headline). The older layout's held-out baseline exceedances come from
    that folder's exceedances.csv (``real_test`` rows) when present."""
    rows = []
    root = Path(results_root)
    paths = sorted(root.glob("*/correlation/summary.json")) + sorted(root.glob("*/sizes/*/correlation/summary.json"))
    for path in paths:
        folder = path.parent.parent
        label = "/".join(folder.relative_to(root).parts).replace("/sizes/", "/")  # a sweep's run: dataset/n00016
        summary = load_summary(folder)
        names = (summary.get("measures") or [JOINT]) if all_measures else [measure]
        for name in names:
            view = _summary_view(folder, name)
            if view is not None:
                rows += [{**row, "dataset": label} for row in _summary_rows(folder, view)]
    return pd.DataFrame(rows, columns=_COMPARE_COLUMNS)


def _summary_rows(folder: Path, summary: Mapping) -> list[dict]:
    """The rows of :func:`collect_summaries` for one measure of one folder."""
    groups = {m: info for m, info in summary["models"].items()}
    if summary.get(CONTROL):  # step 05 keeps the positive control apart from the models
        groups[CONTROL] = summary[CONTROL]
    if summary.get("baseline") and summary["baseline"].get("exceedances"):
        groups[BASELINE] = summary["baseline"]
    exc_path = folder / "correlation/exceedances.csv"  # the older layout
    if BASELINE not in groups and exc_path.is_file() and summary.get("baseline"):
        exc = load_exceedances(folder, JOINT)
        exc = exc[exc["model"] == BASELINE]
        if len(exc):
            groups[BASELINE] = {
                "n": int(exc["n_images"].iloc[0]), "constant": summary["baseline"].get("constant", 0),
                "quantiles": summary["baseline"].get("quantiles", {}),
                "exceedances": {r.threshold_name: {"n_above": r.n_above, "fraction": r.fraction,
                                                   "ci_low": r.ci_low, "ci_high": r.ci_high,
                                                   "wilson_low": getattr(r, "wilson_low", np.nan),
                                                   "wilson_high": getattr(r, "wilson_high", np.nan)}
                                for r in exc.itertuples()}}
    rows = []
    for model, info in groups.items():
        q = info.get("quantiles") or {}
        for name, e in (info.get("exceedances") or {}).items():
            rows.append({"dataset": folder.name, "measure": summary["measure"], "headline": bool(summary["headline"]),
                         "model": model, "kind": _kind(model),
                         "threshold_name": name, "threshold": summary["thresholds"].get(name),
                         "n": info.get("n"), "n_above": e["n_above"], "fraction": e["fraction"],
                         "ci_low": e["ci_low"], "ci_high": e["ci_high"],
                         "wilson_low": e.get("wilson_low", np.nan), "wilson_high": e.get("wilson_high", np.nan),
                         "subjects_leaked": (info.get("subjects_leaked") or {}).get(name),
                         "p99": q.get("p99"), "max": q.get("max")})
    return rows


def one_measure(frame: pd.DataFrame, measure: str | None = None) -> pd.DataFrame:
    """The rows of one measure per dataset: ``measure``, or (None) each
    dataset's headline (frames without a ``measure`` column are returned as they are)."""
    if "measure" not in frame:
        return frame
    if measure is None:
        return frame[frame["headline"].astype(bool)] if "headline" in frame else frame
    return frame[frame["measure"] == str(measure).lower()]


def compare_table(frame: pd.DataFrame, threshold_names: Sequence[str], measure: str | None = None) -> pd.DataFrame:
    """Wide table, one row per (dataset, model) on one measure per dataset
    (None: its headline): the measure, n, p99, max and, per threshold,
    images above (count, %, 95 % CI in %)."""
    frame = one_measure(frame, measure)
    keys = ["dataset", "kind", "model"]
    extra = ["measure"] if "measure" in frame else []
    base = frame.drop_duplicates(keys)[keys + extra + ["n", "p99", "max"]].reset_index(drop=True)
    for name in threshold_names:
        part = frame[frame["threshold_name"] == name].set_index(keys)
        lo, hi = interval_columns(part)
        cols = pd.DataFrame({f"{name}_n_above": part["n_above"], f"{name}_percent": 100 * part["fraction"],
                             f"{name}_ci_low_percent": 100 * lo,
                             f"{name}_ci_high_percent": 100 * hi}, index=part.index).reset_index()
        base = base.merge(cols, on=keys, how="left")
    order = {"generator": 0, "baseline": 1, "control": 2}
    return base.sort_values(["dataset", "kind", "model"], key=lambda s: s.map(order) if s.name == "kind" else s,
                            kind="stable").reset_index(drop=True)


def plot_compare(frame: pd.DataFrame, threshold_name: str = "baseline_p99", measure: str | None = None):
    """Grouped bars: % synthetic images above ``threshold_name`` per
    dataset (x; its measure, by default the headline, under its name) and
    model (colour), 95 % CI as error bars; the held-out real baseline in
    grey for reference. The positive control is left out (it is not a
    generator; it is in the table)."""
    frame = one_measure(frame, measure)
    data = frame[(frame["threshold_name"] == threshold_name) & (frame["kind"] != "control")]
    datasets = list(dict.fromkeys(data["dataset"]))
    groups = [m for m in (*MODELS, BASELINE) if m in set(data["model"])]
    groups += sorted(set(data["model"]) - set(groups))
    fig, ax = plt.subplots(figsize=(max(4.5, 1.6 * len(datasets) + 2), 3.6))
    width = 0.8 / max(len(groups), 1)
    for g, model in enumerate(groups):
        part = data[data["model"] == model].set_index("dataset").reindex(datasets)
        y = 100 * part["fraction"].to_numpy(float)
        lo, hi = interval_columns(part)
        err = np.vstack([y - 100 * lo, 100 * hi - y])
        x = np.arange(len(datasets)) + (g - (len(groups) - 1) / 2) * width
        ax.bar(x, y, width, yerr=np.nan_to_num(err), capsize=3, label=display_name(model),
               color=COLOURS.get(model), hatch="//" if model == BASELINE else None, edgecolor="white")
    first = data.drop_duplicates("dataset").set_index("dataset")
    values = first["threshold"].reindex(datasets)
    used = first["measure"].reindex(datasets) if "measure" in first else pd.Series("", index=datasets)
    ax.set_xticks(np.arange(len(datasets)), [f"{d}\n{used[d]}" + (f" (r > {v:.3f})" if pd.notna(v) else "")
                                             for d, v in values.items()])
    ax.set_ylabel(f"% images above {threshold_name}")
    ax.set_title(f"images above {threshold_name} (95 % CI)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def compare_text(frame: pd.DataFrame, threshold_name: str = "baseline_p99", measure: str | None = None) -> str:
    """Markdown sentences, one per dataset (on its headline measure unless
    ``measure`` is given), computed from the table."""
    frame = one_measure(frame, measure)
    data = frame[frame["threshold_name"] == threshold_name]
    if data.empty:
        return f"No dataset has results at threshold {threshold_name}."
    lines = []
    for dataset, group in data.groupby("dataset", sort=True):
        gens = group[group["kind"] == "generator"].sort_values("fraction", ascending=False)
        lo, hi = interval_columns(gens)
        parts = [f"{display_name(r.model)} {r.n_above}/{r.n} ({_pct(r.fraction)}, CI {_pct(lo[i])}–{_pct(hi[i])})"
                 for i, r in enumerate(gens.itertuples())]
        base = group[group["kind"] == "baseline"]
        if len(base):
            parts.append(f"real held-out {_pct(base['fraction'].iloc[0])}")
        verdict = ""
        if len(gens) >= 2:
            verdict = (f"; {display_name(gens.iloc[0].model)} higher, intervals do not overlap" if lo[0] > hi[1]
                       else "; intervals overlap")
        used = f" ({group['measure'].iloc[0]})" if "measure" in group else ""
        lines.append(f"- **{dataset}**{used}: " + (", ".join(parts) or "no generator results") + verdict + ".")
    return f"Images above {threshold_name}:\n\n" + "\n".join(lines)


# --------------------------------------------------------------------------
# Report helpers
# --------------------------------------------------------------------------

def params_markdown(params: Mapping[str, Any]) -> str:
    """The parameters a notebook ran with, as a Markdown table."""
    frame = pd.DataFrame({"parameter": list(params), "value": [repr(v) for v in params.values()]})
    return markdown_table(frame)


def outputs_markdown(paths: Iterable[str | os.PathLike]) -> str:
    """A Markdown list of files written (with sizes), for a notebook's last cell."""
    lines = []
    for path in dict.fromkeys(Path(p) for p in paths):
        size = path.stat().st_size if path.is_file() else 0
        lines.append(f"- `{path}` ({size / 1024:.1f} KiB)" if path.is_file() else f"- `{path}` (missing!)")
    return "\n".join(lines) if lines else "No files written."


# --------------------------------------------------------------------------
# Older helpers (kept: other notebooks call them)
# --------------------------------------------------------------------------

def montage(
    images: np.ndarray,
    n: int = 16,
    channel_names: Sequence[str] | None = None,
    seed: int = 0,
    title: str | None = None,
    indices: Sequence[int] | None = None,
    cell_inches: float = 1.1,
):
    """A grid of ``n`` images (rows) × channels (columns) from an N×C×H×W
    (or N×H×W) uint8 array; random rows drawn with ``seed`` unless
    ``indices`` are given. Returns the matplotlib Figure."""
    images = np.asarray(images) if not isinstance(images, np.memmap) else images
    if images.ndim == 3:
        images = images[:, None]
    if len(images) == 0:
        raise ValueError("montage: no images to show")
    if indices is None:
        rng = np.random.default_rng(seed)
        indices = np.sort(rng.choice(len(images), size=min(n, len(images)), replace=False))
    indices = list(indices)
    channels = images.shape[1]
    names = list(channel_names) if channel_names else [f"ch{c}" for c in range(channels)]
    fig, axes = plt.subplots(
        len(indices), channels, figsize=(cell_inches * channels, cell_inches * len(indices)), squeeze=False
    )
    for row, idx in enumerate(indices):
        for col in range(channels):
            ax = axes[row, col]
            ax.imshow(np.asarray(images[idx, col]), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(names[col], fontsize=8)
            if col == 0:
                ax.set_ylabel(str(idx), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_loss_log(log: pd.DataFrame | str | Path, columns: Sequence[str], x: str = "step", title: str | None = None,
                  smooth: int = 1):
    """Training curves from a loss-log CSV: one panel per column, raw values
    faint and a running mean over ``smooth`` rows on top."""
    frame = pd.read_csv(log) if isinstance(log, (str, Path)) else log
    columns = [c for c in columns if c in frame.columns]
    fig, axes = plt.subplots(1, max(len(columns), 1), figsize=(4 * max(len(columns), 1), 3), squeeze=False)
    for ax, column in zip(axes[0], columns):
        ax.plot(frame[x], frame[column], alpha=0.3 if smooth > 1 else 1.0, lw=0.8)
        if smooth > 1:
            ax.plot(frame[x], frame[column].rolling(smooth, min_periods=1).mean(), lw=1.5)
        ax.set_xlabel(x)
        ax.set_title(column, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def save_figure(fig, out_dir: str | os.PathLike, name: str, pdf: bool = True) -> list[Path]:
    """Save ``fig`` as ``<name>.png`` (and ``.pdf``) under ``out_dir``,
    atomically (a half-written figure never replaces a good one)."""
    from .common import atomic_path

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png"] + ([out_dir / f"{name}.pdf"] if pdf else [])
    for path in paths:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=150, bbox_inches="tight", format=path.suffix[1:])
    return paths
