"""The cross-dataset comparison (``./runall.sh compare``): every results
folder's summary.json as one long table, a wide table, bars and sentences."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..audit import JOINT, measure_summary
from ..layout import Results, Run
from ..run_fit import not_fitted
from .results import load_summary
from .style import BASELINE, COLOURS, CONTROL, MODELS, _pct, display_name, interval_columns


def _kind(model: str) -> str:
    return {BASELINE: "baseline", CONTROL: "control"}.get(model, "generator")


_COMPARE_COLUMNS = ["dataset", "measure", "headline", "model", "kind", "threshold_name", "threshold", "n", "n_above",
                    "fraction", "wilson_low", "wilson_high", "subjects_leaked", "p99", "max", "fitted"]


def collect_summaries(results_root, measure: str | None = None, all_measures: bool = False) -> pd.DataFrame:
    """Every ``<results_root>/<name>/correlation/summary.json`` (and every
    size run of a sweep, ``<name>/sizes/<run>/``, labelled ``<name>/<run>``) as a long
    table: one row per (folder, measure, model, threshold), with ``kind``
    generator / baseline / control. By default each folder's headline
    measure (``measure``: that one instead, folders without it left out;
    ``all_measures``: every measure, ``headline`` marking each folder's
    headline)."""
    rows = []
    root = Path(results_root)
    every = Results("*")   # every results folder under root, and every size run of each
    paths = sorted(root.glob(every.summary.as_posix())) + sorted(root.glob(every.size_run("*").summary.as_posix()))
    for path in paths:
        folder = path.parent.parent
        parts = folder.relative_to(root).parts
        label = parts[0] if len(parts) == 1 else f"{parts[0]}/{parts[-1]}"  # a sweep's run: dataset/n00016
        summary = load_summary(folder)
        names = (summary.get("measures") or [JOINT]) if all_measures else [measure]
        for name in names:
            view = _summary_view(folder, name)
            if view is not None:
                fitted = _fit_verdicts(folder)
                rows += [{**row, "dataset": label, "fitted": fitted.get(row["model"])}
                         for row in _summary_rows(folder, view)]
    return pd.DataFrame(rows, columns=_COMPARE_COLUMNS)


def _fit_verdicts(folder: Path) -> dict[str, bool]:
    """``{model: fitted}`` of one run by step 05's reading rule (``fit/fit.csv``); empty before the fit."""
    path = Run(folder).fit.fit
    if not path.is_file():
        return {}
    table = pd.read_csv(path, keep_default_na=False, na_values=[""])
    return {str(m): bool(f) for m, f in zip(table["model"], table["fitted"])}


def _summary_view(folder: Path, measure: str | None) -> dict | None:
    """One measure of a folder's summary.json (None: its headline); None
    when that folder did not compute the measure."""
    try:
        return measure_summary(load_summary(folder), measure)
    except ValueError:
        return None


def _summary_rows(folder: Path, summary: Mapping) -> list[dict]:
    """The rows of :func:`collect_summaries` for one measure of one folder."""
    groups = {m: info for m, info in summary["models"].items()}
    if summary.get(CONTROL):  # step 05 keeps the positive control apart from the models
        groups[CONTROL] = summary[CONTROL]
    if summary.get("baseline") and summary["baseline"].get("exceedances"):
        groups[BASELINE] = summary["baseline"]
    rows = []
    for model, info in groups.items():
        q = info.get("quantiles") or {}
        for name, e in (info.get("exceedances") or {}).items():
            rows.append({"dataset": folder.name, "measure": summary["measure"], "headline": bool(summary["headline"]),
                         "model": model, "kind": _kind(model),
                         "threshold_name": name, "threshold": summary["thresholds"].get(name),
                         "n": info.get("n"), "n_above": e["n_above"], "fraction": e["fraction"],
                         "wilson_low": e["wilson_low"], "wilson_high": e["wilson_high"],
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


def compact_table(frame: pd.DataFrame, threshold_names: Sequence[str], measure: str | None = None) -> pd.DataFrame:
    """The table a reader scans: one row per run and group, per threshold
    'k/n (lo–hi %)', and whether the generator learnt its data ("not
    fitted" where step 05's reading rule says it did not; blank where the
    run predates the fit). The full numbers are in :func:`compare_table`."""
    frame = one_measure(frame, measure)
    keys = ["dataset", "kind", "model"]
    base = frame.drop_duplicates(keys)[keys + (["measure"] if "measure" in frame else [])].reset_index(drop=True)
    fitted = frame.drop_duplicates(keys).set_index(keys)["fitted"] if "fitted" in frame else None
    for name in threshold_names:
        part = frame[frame["threshold_name"] == name].set_index(keys)
        lo, hi = interval_columns(part)
        cells = [f"{int(k)}/{int(n)}\u00a0({100 * a:.0f}–{100 * b:.0f}\u00a0%)" if pd.notna(n) and n else "–"
                 for k, n, a, b in zip(part["n_above"], part["n"], lo, hi)]
        base = base.merge(pd.DataFrame({name: cells}, index=part.index).reset_index(), on=keys, how="left")
    if fitted is not None:
        verdicts = [fitted.get(tuple(k)) for k in base[keys].itertuples(index=False)]
        base["fit"] = [("not fitted" if not_fitted(v) else "fitted") if kind == "generator" and v is not None
                       and not pd.isna(v) else ""
                       for v, kind in zip(verdicts, base["kind"])]
    order = {"generator": 0, "baseline": 1, "control": 2}
    models = {m: i for i, m in enumerate(MODELS)}
    base = base.sort_values(["dataset", "kind", "model"], kind="stable",
                            key=lambda c: c.map(order) if c.name == "kind" else c.map(models) if c.name == "model" else c)
    short = {BASELINE: "real held-out", CONTROL: "planted copies"}
    base = base.assign(model=[short.get(m, display_name(m)) for m in base["model"]])
    if "measure" in base:   # one column less: the run's measure beside its name
        base = base.assign(dataset=base["dataset"] + " (" + base["measure"].astype(str) + ")").drop(columns="measure")
    return base.drop(columns="kind").rename(columns={"dataset": "run (measure)"}).reset_index(drop=True)


def plot_compare(frame: pd.DataFrame, threshold_name: str = "baseline_p99", measure: str | None = None):
    """% of images above ``threshold_name``, one line per run (its
    measure and threshold under its name), one marker per model (colour),
    the 95 % interval as a bar; the held-out real images in grey for
    reference; a hollow marker where the reading rule says the generator did
    not learn its data. Horizontal, so that many runs stay readable. The
    positive control is left out (it is not a generator; it is in the table)."""
    frame = one_measure(frame, measure)
    data = frame[(frame["threshold_name"] == threshold_name) & (frame["kind"] != "control")]
    datasets = list(dict.fromkeys(data["dataset"]))
    groups = [m for m in (*MODELS, BASELINE) if m in set(data["model"])]
    groups += sorted(set(data["model"]) - set(groups))
    fig, ax = plt.subplots(figsize=(9.5, 0.42 * len(datasets) + 1.6))
    step = 0.8 / max(len(groups), 1)
    for g, model in enumerate(groups):
        part = data[data["model"] == model].set_index("dataset").reindex(datasets)
        x = 100 * part["fraction"].to_numpy(float)
        lo, hi = interval_columns(part)
        y = np.arange(len(datasets)) + (g - (len(groups) - 1) / 2) * step
        colour = COLOURS.get(model)
        ax.errorbar(x, y, xerr=np.nan_to_num(np.vstack([x - 100 * lo, 100 * hi - x])), fmt="none", ecolor=colour,
                    elinewidth=1, capsize=2)
        fitted = part["fitted"] if "fitted" in part else pd.Series(None, index=part.index)
        hollow = np.array([not_fitted(f) for f in fitted], dtype=bool)
        ax.scatter(x[~hollow], y[~hollow], color=colour, s=22, zorder=3, label=display_name(model),
                   marker="D" if model == BASELINE else "o")
        if hollow.any():
            ax.scatter(x[hollow], y[hollow], facecolors="white", edgecolors=colour, s=22, zorder=3)
    first = data.drop_duplicates("dataset").set_index("dataset")
    values = first["threshold"].reindex(datasets)
    used = first["measure"].reindex(datasets) if "measure" in first else pd.Series("", index=datasets)
    ax.set_yticks(np.arange(len(datasets)), [f"{d} ({used[d]}" + (f", r > {v:.3f})" if pd.notna(v) else ")")
                                             for d, v in values.items()], fontsize=8)
    folders = [d.split("/")[0] for d in datasets]
    for i in range(1, len(folders)):
        if folders[i] != folders[i - 1]:   # a line between results folders
            ax.axhline(i - 0.5, color="0.7", lw=0.8)
    ax.invert_yaxis()
    ax.set_xlim(-3, 103)
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel(f"% of images above {threshold_name} (95 % interval; hollow: generator not fitted)")
    ax.set_title(f"Images above {threshold_name}, per run", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
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
                 + (" — not fitted" if not_fitted(getattr(r, "fitted", None)) else "")
                 for i, r in enumerate(gens.itertuples())]
        base = group[group["kind"] == "baseline"]
        if len(base):
            parts.append(f"real held-out {_pct(base['fraction'].iloc[0])}")
        verdict = _pair_verdict(gens)
        used = f" ({group['measure'].iloc[0]})" if "measure" in group else ""
        lines.append(f"- **{dataset}**{used}: " + (", ".join(parts) or "no generator results") + verdict + ".")
    return f"Images above {threshold_name}:\n\n" + "\n".join(lines)


def _pair_verdict(gens: pd.DataFrame) -> str:
    """The diffusion model against StyleGAN, named (never whichever pair is on
    top): a difference only where their Wilson intervals do not overlap, and
    no comparison where either did not learn its data."""
    by = gens.set_index("model")
    if not {"diffusion", "stylegan"} <= set(by.index):
        return ""
    unfitted = [display_name(m) for m in ("diffusion", "stylegan") if not_fitted(by.loc[m].get("fitted"))]
    if unfitted:
        return f"; diffusion vs StyleGAN: no comparison of fitted models ({' and '.join(unfitted)} not fitted)"
    (dl,), (dh,) = interval_columns(by.loc[["diffusion"]])
    (gl,), (gh,) = interval_columns(by.loc[["stylegan"]])
    if dl > gh:
        return "; diffusion vs StyleGAN: diffusion higher, intervals do not overlap"
    if gl > dh:
        return "; diffusion vs StyleGAN: StyleGAN higher, intervals do not overlap"
    return "; diffusion vs StyleGAN: intervals overlap"

