"""One audit path for step 05 (:func:`audit_study`) and the command
(:func:`helpers.audit.cli.audit`): baseline and thresholds, the positive
control, every synthetic set's matches, exceedances, leakage and
summary.json, with one engine pass per image set for all measures."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .. import correlation
from ..common import read_json
from ..common import write_csv as _write_csv
from ..common import write_json as _write_json
from ..config import MEMORY_BUDGET_GB
from ..layout import SUMMARY, AuditFiles, Run
from ..parallel import rank_world
from .control import control_by_kind, control_summary, control_table, make_control, scored_control
from .measures import Measure, study_measures
from .result import StudyAudit
from .study_data import StudyData, load_study_data
from .tables import (
    BASELINE_NAME,
    CONTROL_NAME,
    MATCH_COLUMNS,
    add_adjacent_slices,
    baseline_table,
    comparison_groups,
    compute_thresholds,
    exceedance_table,
    group_summary,
    leakage_table,
    match_table,
    most_matched,
    thresholds_table,
    topk_table,
    valid_correlations,
)


def run_engine(synthetic, training, groups: Mapping[str, Any] | None = None, *, k: int = 1,
               backend: str = "auto", memory_budget_gb: float = MEMORY_BUDGET_GB, progress: bool = True,
               desc: str | None = None) -> dict[str, correlation.MatchResult]:
    """:func:`helpers.correlation.match_groups` (every measure in one pass)
    with a memory budget in GiB. In a torch.distributed job each process
    computes its share and every process receives all results."""
    return correlation.match_groups(synthetic, training, groups, k=k, backend=backend,
                                    memory_budget=int(memory_budget_gb * 1024**3), progress=progress, desc=desc)


class RunLog:
    """Correlations, engine seconds and backend over all engine runs of a step.
    ``image_pairs``: synthetic × training images; ``pairs``: correlations
    computed (image pairs × measures, all in one pass per run)."""

    def __init__(self):
        self.pairs = 0
        self.image_pairs = 0
        self.seconds = 0.0
        self.backend = None
        self.note = None
        self.runs: dict[str, dict] = {}

    def add(self, name: str, results: Mapping[str, correlation.MatchResult]) -> dict[str, correlation.MatchResult]:
        first = next(iter(results.values()))
        pairs = first.pairs * len(results)
        self.pairs += pairs
        self.image_pairs += first.pairs
        self.seconds += first.seconds  # one call for every measure
        self.backend, self.note = first.backend, first.backend_note
        self.runs[name] = {
            "image_pairs": first.pairs, "measures": list(results), "pairs": pairs,
            "seconds": round(first.seconds, 3), "pairs_per_second": pairs / first.seconds if first.seconds else None,
            "by_measure": {m: {k: v for k, v in r.stats.items() if k not in ("plan", "groups")}
                           for m, r in results.items()},
            "plan": first.stats.get("plan")}
        return dict(results)

    def as_dict(self) -> dict:
        return {"backend": self.backend, "backend_note": self.note, "pairs": self.pairs,
                "image_pairs": self.image_pairs, "seconds": round(self.seconds, 3),
                "pairs_per_second": self.pairs / self.seconds if self.seconds else None, "runs": self.runs}



#: the per-measure files (and per-model patterns) an audit writes; stale ones are removed
_MEASURE_FILES = tuple(getattr(AuditFiles(Path()), name).name for name in (
    "baseline", "thresholds", "exceedances", "leakage", "control_matches", "control_by_kind"))
_MODEL_PATTERNS = tuple(getattr(AuditFiles(Path()), name)("*").name for name in ("matches", "topk", "most_matched"))


def _previous_folders(out: Path) -> list[Path]:
    """The folders an earlier audit in ``out`` wrote tables to, from its
    summary.json: one per measure."""
    path = out / SUMMARY
    if not path.is_file():
        return []
    try:
        previous = read_json(path)
    except ValueError:
        return []
    return [out / str(m) for m in previous.get("measures", []) if str(m) and "/" not in str(m)]


def _remove_stale(out: Path, previous: Sequence[Path], measures: Sequence[str], written: Sequence[Path]) -> None:
    """Remove the tables of an earlier audit (``previous`` folders) that this
    run did not rewrite — measures or models no longer computed — so the folder holds what summary.json lists. Only this
    step's file names are touched, and a folder is removed only when empty."""
    keep = {Path(p).resolve() for p in written}
    for folder in dict.fromkeys([*previous, *(out / m for m in measures)]):
        if not folder.is_dir():
            continue
        stale = [folder / f for f in _MEASURE_FILES] + [p for pat in _MODEL_PATTERNS for p in folder.glob(pat)]
        for path in stale:
            if path.is_file() and path.resolve() not in keep:
                path.unlink()
        if folder != out and folder.name not in measures and not any(folder.iterdir()):
            folder.rmdir()


@dataclass
class EnginePass:
    """One engine call of an audit: ``images`` against the training set."""

    name: str                    # "baseline", the control's name or a model
    images: Any                  # an ImageSet
    k: int
    seeds: Any = None            # a model's seeds
    control: Any = None          # the control's table of planted copies


def engine_passes(data: StudyData, measures: Sequence[Measure], cfg) -> list[EnginePass]:
    """Every engine call of :func:`run_audit`, in its order: the held-out
    baseline, the planted-copy control (built from ``cfg``'s seed, so every
    process builds the same), each model's samples."""
    passes = [EnginePass("baseline", data.test, 1)] if data.test is not None else []
    n_control = cfg.n_control
    if n_control > 0:
        require = [list(m.index) for m in measures if not m.label_map] or None
        images, control = make_control(data.train, n_control, seed=cfg.seed,
                                       noise_sd=cfg.control_noise_sd, require=require)
        passes.append(EnginePass(CONTROL_NAME, data.images(images, CONTROL_NAME), 1, control=control))
    top_k = cfg.top_k
    for model, (images, seeds) in data.synthetic.items():
        passes.append(EnginePass(model, data.images(images, model), top_k, seeds=seeds))
    return passes


def _engine_settings(cfg, progress: bool) -> dict:
    return dict(backend=cfg.backend, progress=progress, memory_budget_gb=cfg.memory_budget_gb)


def _describe(name: str) -> str:
    return "test vs train" if name == "baseline" else f"{name} vs train"


def run_audit(data: StudyData, measures: Sequence[Measure], headline: str, out: str | Path, cfg,
              progress: bool = True, extra: Mapping | None = None) -> StudyAudit:
    """The audit of ``data`` for ``measures``: baseline and thresholds,
    planted-copy control, every synthetic set's matches (with adjacent
    slices where slices are known), exceedances with Wilson intervals,
    leakage and most-matched tables where subjects are known, and
    summary.json; one engine pass per image set for all measures. ``cfg``:
    a :class:`helpers.config.CorrelateSettings` (step 05's, or the audit
    command's: :func:`helpers.audit.cli.command_settings`). In a
    torch.distributed job every process runs it (the engine shares the
    work) and process 0 alone writes the files."""
    out = Path(out)
    first = rank_world()[0] == 0
    write_csv = _write_csv if first else (lambda path, frame: Path(path))
    write_json = _write_json if first else (lambda path, value: Path(path))
    t0 = time.perf_counter()
    top_k = cfg.top_k
    engine = _engine_settings(cfg, progress)
    groups = {m.name: list(m.index) for m in measures}
    passes = {p.name: p for p in engine_passes(data, measures, cfg)}

    def run(name: str) -> dict:
        p = passes[name]
        return log.add(name, run_engine(p.images, data.train, groups, k=p.k, desc=_describe(name), **engine))
    names = [m.name for m in measures]
    log = RunLog()
    audit = StudyAudit(out, {}, list(measures), headline)
    previous = _previous_folders(out)
    files = {m.name: AuditFiles(out / m.name) for m in measures}
    w = audit.written
    meta, test_meta = data.train_meta, data.test_meta
    subjects = meta is not None and "subject" in meta
    train_names = data.train.names

    # 1. the real-vs-real baseline and the thresholds
    res = run("baseline") if data.test is not None else {}
    for m in measures:
        base = None
        if data.test is not None:
            base = baseline_table(res[m.name], test_meta, meta, data.test.names, train_names)
            w.append(write_csv(files[m.name].baseline, base))
        audit.baseline[m.name] = base
        audit.thresholds[m.name] = compute_thresholds(None if base is None else valid_correlations(base))
        w.append(write_csv(files[m.name].thresholds, thresholds_table(audit.thresholds[m.name])))

    # 2. the planted-copy positive control (every image measure must find it)
    audit.control = {m.name: None for m in measures}
    if CONTROL_NAME in passes:
        res, control = run(CONTROL_NAME), passes[CONTROL_NAME]
        for m in measures:
            table = control_table(res[m.name], control.control, control.images, data.train, meta, list(m.index))
            audit.control[m.name] = table
            w.append(write_csv(files[m.name].control_matches, table))
            w.append(write_csv(files[m.name].control_by_kind, control_by_kind(table, audit.thresholds[m.name])))

    # 3. every synthetic set against the training set
    audit.matches = {m.name: {} for m in measures}
    for model in data.synthetic:
        res, images, seeds = run(model), passes[model].images, passes[model].seeds
        for m in measures:
            table = match_table(res[m.name], meta, seeds, images.names, train_names)
            if subjects and "slice" in meta:
                table = add_adjacent_slices(table, images, data.train, meta, list(m.index))
            table = table[[c for c in MATCH_COLUMNS if c in table] + [c for c in table if c not in MATCH_COLUMNS]]
            audit.matches[m.name][model] = table
            w.append(write_csv(files[m.name].matches(model), table))
            w.append(write_csv(files[m.name].topk(model), topk_table(res[m.name])))

    # 4. exceedances, leakage, most-matched and the summary, per measure
    by_measure = {}
    for m in measures:
        control = scored_control(audit.control[m.name])
        groups_m = comparison_groups(audit.matches[m.name], audit.baseline[m.name], control)
        exc = exceedance_table(groups_m, audit.thresholds[m.name])
        audit.exceedances[m.name] = exc
        w.append(write_csv(files[m.name].exceedances, exc))
        leak = None
        if subjects:
            leak = leakage_table(groups_m, audit.thresholds[m.name], data.n_train_subjects)
            audit.leakage[m.name] = leak
            w.append(write_csv(files[m.name].leakage, leak))
            for model, table in audit.matches[m.name].items():
                w.append(write_csv(files[m.name].most_matched(model), most_matched(table)))
        by_measure[m.name] = {
            **m.info(headline),
            "train_constant": max((r["by_measure"][m.name].get("n_train_constant", 0) for r in log.runs.values()),
                                  default=0),
            "thresholds": dict(audit.thresholds[m.name]),
            "baseline": None if audit.baseline[m.name] is None
            else group_summary(audit.baseline[m.name], exc, BASELINE_NAME, leak),
            "models": {model: group_summary(t, exc, model, leak) for model, t in audit.matches[m.name].items()},
            # the positive control: same shape as a model entry, plus found rates; never under "models"
            "control": None if control is None else {**group_summary(control, exc, CONTROL_NAME, leak),
                                                     **control_summary(audit.control[m.name])},
        }
    audit.summary = {
        "dataset": data.dataset, "channels": list(data.channel_names), "n_train": data.train.n,
        "n_test": 0 if data.test is None else data.test.n, "n_train_subjects": data.n_train_subjects,
        "top_k": top_k, **dict(extra or {}),
        "headline": headline, "measures": names, "by_measure": by_measure,
        **log.as_dict(), "wall_seconds": round(time.perf_counter() - t0, 3),
    }
    w.append(write_json(out / SUMMARY, audit.summary))
    if first:
        _remove_stale(out, previous, names, w)
    return audit


def audit_study(results_dir: str | Path, cfg, *, progress: bool = True) -> StudyAudit:
    """Step 05: every measure of ``results_dir``'s samples against its
    training set, written under ``results_dir/correlation/`` (see
    :mod:`helpers.audit` for the layout and
    :func:`helpers.audit.measures.measure_summary` for summary.json).

    ``cfg``: step 05's :class:`helpers.config.CorrelateSettings`. Models without samples are skipped (the baseline and
    control still run). What it wrote is read back by :func:`load_audit`."""
    data, measures, headline = _study(results_dir, cfg)
    return run_audit(data, measures, headline, Run(results_dir).correlation, cfg, progress=progress)


def _study(results_dir, cfg) -> tuple[StudyData, list[Measure], str]:
    data = load_study_data(results_dir, list(cfg.models))
    measures, headline = study_measures(data.channel_names, cfg.channels, each=cfg.each, joint=cfg.joint,
                                        headline=cfg.headline_channel)
    return data, measures, headline


def load_audit(results_dir: str | Path) -> StudyAudit:
    """The audit step 05 wrote under ``results_dir/correlation/`` (by this
    process or by a multi-process job), read back: the same tables
    :func:`audit_study` returns, from its files."""
    out = Run(results_dir).correlation
    summary = read_json(out / SUMMARY)
    infos = [summary["by_measure"][name] for name in summary["measures"]]
    measures = [Measure(i["measure"], tuple(i["channels"]), tuple(i["channel_index"]), i["kind"], i["description"])
                for i in infos]
    audit = StudyAudit(out, summary, measures, summary["headline"])

    def table(path: Path) -> pd.DataFrame | None:
        return pd.read_csv(path) if path.is_file() else None

    for m, info in zip(measures, infos):
        folder = AuditFiles(out / m.name)
        audit.thresholds[m.name] = {str(k): float(v) for k, v in table(folder.thresholds).itertuples(index=False)}
        audit.baseline[m.name] = table(folder.baseline)
        audit.control[m.name] = table(folder.control_matches)
        audit.matches[m.name] = {model: table(folder.matches(model)) for model in info["models"]}
        audit.exceedances[m.name] = table(folder.exceedances)
        leakage = table(folder.leakage)
        if leakage is not None:
            audit.leakage[m.name] = leakage
    audit.written = [*sorted(p for m in measures for p in (out / m.name).glob("*.csv")), out / SUMMARY]
    return audit
