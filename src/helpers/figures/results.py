"""Loaders: one per result file, with errors that name the step to run.

Every file goes through a small loader that names the missing file and the
notebook that writes it, so a reader knows what to run; a model whose
results are absent is reported, not fatal (:func:`model_status`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .. import models as registry
from ..audit import is_label_channel, measure_summary
from ..common import read_json
from ..layout import AUDIT, WRITTEN_BY, AuditFiles, ResultMissing, Run, missing
from .style import MODELS, display_name

#: a run's files relative to its folder (how the tables of expected files show them)
RELATIVE = Run("")


def producer(relpath: str | os.PathLike) -> str:
    """The notebook that writes ``relpath`` (relative to results_dir)."""
    top = Path(relpath).parts[0]
    model = registry.REGISTRY.get(top)
    if model is not None and model.notebook:
        return model.notebook
    return WRITTEN_BY.get(top, "an earlier step")


def result_file(results_dir: str | os.PathLike, relpath: str | os.PathLike) -> Path:
    """``results_dir/relpath``, or :class:`ResultMissing` naming the step to run."""
    path = Path(results_dir) / relpath
    if not path.is_file():
        raise missing(path, producer(relpath))
    return path


def _read_csv(results_dir, relpath: str | os.PathLike, columns: Iterable[str]) -> pd.DataFrame:
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
    return read_json(result_file(results_dir, RELATIVE.data.meta))


def load_index(results_dir, split: str = "train") -> pd.DataFrame:
    """``data/<split>.csv``: one row per image, row i ↔ image i of the array."""
    frame = _read_csv(results_dir, RELATIVE.data.table(split), ("subject", "slice"))
    frame["subject"] = frame["subject"].astype(str)
    return frame


def load_images(results_dir, split: str = "train") -> np.ndarray:
    """``data/<split>.npy`` memory-mapped (uint8 N×C×H×W)."""
    return np.load(result_file(results_dir, RELATIVE.data.images(split)), mmap_mode="r")


def load_loss_log(results_dir, model: str) -> pd.DataFrame:
    return _read_csv(results_dir, RELATIVE.loss_log(model), ("step",))


def load_summary(results_dir) -> dict:
    """``correlation/summary.json`` (all measures; :func:`helpers.audit.measure_summary`
    gives one measure's flat view)."""
    path = result_file(results_dir, RELATIVE.summary)
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
    """Step 05's measures, headline first."""
    return list(load_summary(results_dir)["measures"])


def headline(results_dir) -> str:
    """The headline measure of step 05."""
    return measures(results_dir)[0]


def measure_info(results_dir, measure: str | None = None) -> dict:
    """One measure of summary.json, flat (``measure``, ``channels``, ``kind``,
    ``description``, ``thresholds``, ``models``, ...); None: the headline."""
    return measure_summary(load_summary(results_dir), measure)


def measure_folder(results_dir, measure: str | None = None) -> str:
    """``correlation/<measure>`` (relative to results_dir). ``None``: the
    headline of summary.json."""
    if measure is None:
        measure = load_summary(results_dir)["headline"]
    return str(RELATIVE.audit(str(measure).lower()).folder)


def _audit(results_dir, measure: str | None) -> AuditFiles:
    """Step 05's files of ``measure`` (None: the headline), relative to results_dir."""
    return AuditFiles(Path(measure_folder(results_dir, measure)))


def measure_files(results_dir, measure: str | None = None) -> AuditFiles:
    """Step 05's files of ``measure`` (None: the headline) under results_dir."""
    return AuditFiles(Path(results_dir) / measure_folder(results_dir, measure))


def load_matches(results_dir, model: str, measure: str | None = None) -> pd.DataFrame:
    """Best training match of every synthetic image (``constant`` as bool)."""
    frame = _read_csv(
        results_dir, _audit(results_dir, measure).matches(model),
        ("synthetic_index", "train_index", "correlation", "subject", "slice", "constant"),
    )
    frame["constant"] = _as_bool(frame["constant"])
    frame["subject"] = frame["subject"].astype(str)
    return frame


def load_topk(results_dir, model: str, measure: str | None = None) -> pd.DataFrame:
    return _read_csv(results_dir, _audit(results_dir, measure).topk(model),
                     ("synthetic_index", "rank", "train_index", "correlation"))


def load_baseline(results_dir, measure: str | None = None) -> pd.DataFrame:
    """Best training match of every held-out real test image."""
    frame = _read_csv(results_dir, _audit(results_dir, measure).baseline,
                      ("test_index", "train_index", "correlation", "constant"))
    frame["constant"] = _as_bool(frame["constant"])
    return frame


def load_control(results_dir, measure: str | None = None) -> pd.DataFrame:
    """The planted-copy positive control's matches."""
    frame = _read_csv(results_dir, _audit(results_dir, measure).control_matches,
                      ("control_index", "control_kind", "train_index", "correlation", "constant", "found"))
    frame["constant"] = _as_bool(frame["constant"])
    return frame


def load_thresholds(results_dir, measure: str | None = None) -> dict[str, float]:
    frame = _read_csv(results_dir, _audit(results_dir, measure).thresholds, ("name", "value"))
    return {str(n): float(v) for n, v in zip(frame["name"], frame["value"])}


def load_exceedances(results_dir, measure: str | None = None) -> pd.DataFrame:
    return _read_csv(
        results_dir, _audit(results_dir, measure).exceedances,
        ("model", "threshold_name", "threshold", "n_images", "n_above", "fraction", "wilson_low",
         "wilson_high"),
    )


def load_leakage(results_dir, measure: str | None = None) -> pd.DataFrame:
    return _read_csv(
        results_dir, _audit(results_dir, measure).leakage,
        ("model", "threshold_name", "threshold", "n_subjects_leaked", "n_train_subjects", "fraction_subjects"),
    )


def load_most_matched(results_dir, model: str, measure: str | None = None) -> pd.DataFrame:
    return _read_csv(results_dir, _audit(results_dir, measure).most_matched(model),
                     ("train_index", "subject", "slice", "n_matched", "max_correlation"))


def model_files(model: str, folder: str = AUDIT) -> dict[str, str]:
    """The result files of one generator, by what they hold (step 05's under
    ``folder``), relative to results_dir; a control that trains nothing (the
    registry's) has no training log."""
    trains = model not in registry.REGISTRY or registry.REGISTRY[model].train is not None
    audit = AuditFiles(Path(folder))
    files = {"training log": RELATIVE.loss_log(model)} if trains else {}
    files.update({"samples": RELATIVE.samples(model), "seeds": RELATIVE.seeds(model),
                  "best matches": audit.matches(model), "top-k matches": audit.topk(model),
                  "most-matched training images": audit.most_matched(model)})
    return {what: str(path) for what, path in files.items()}


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
        folder = str(RELATIVE.audit("<measure>").folder)
    rows = []
    for model in models:
        for what, rel in model_files(model, folder).items():
            rows.append({"model": model, "file": rel, "holds": what, "present": (Path(results_dir) / rel).is_file(),
                         "written by": producer(rel)})
    status = pd.DataFrame(rows, columns=["model", "file", "holds", "present", "written by"])
    present = [m for m in models if (Path(results_dir) / AuditFiles(Path(folder)).matches(m)).is_file()]
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
    if not Run(results_dir).summary.is_file():
        return 0
    info = measure_info(results_dir, measure)
    chans = [str(c) for c in info.get("channels", [])]
    if info.get("kind") == "joint":  # a joint measure: its first image channel
        chans = [c for c in chans if not is_label_channel(c)] or chans
    return channel_index(names, chans[0]) if chans and names else 0

