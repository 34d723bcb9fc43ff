"""What an audit computed, per measure, with the tables a notebook displays."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .control import scored_control
from .measures import Measure
from .tables import MATCH_COLUMNS, comparison_groups, quantiles, valid_correlations


@dataclass
class StudyAudit:
    """What :func:`audit_study` computed: per measure (headline first) the
    thresholds, baseline, control and match tables, exceedances and leakage;
    ``summary`` is summary.json. The methods return tables to display."""

    out: Path
    summary: dict
    measures: list[Measure]
    headline: str
    thresholds: dict[str, dict] = field(default_factory=dict)
    baseline: dict[str, pd.DataFrame | None] = field(default_factory=dict)
    control: dict[str, pd.DataFrame | None] = field(default_factory=dict)
    matches: dict[str, dict[str, pd.DataFrame]] = field(default_factory=dict)
    exceedances: dict[str, pd.DataFrame] = field(default_factory=dict)
    leakage: dict[str, pd.DataFrame] = field(default_factory=dict)
    written: list[Path] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        """Measure names, headline first."""
        return [m.name for m in self.measures]

    @property
    def models(self) -> list[str]:
        return list(next(iter(self.matches.values()), {}))

    def describe(self) -> str:
        """Markdown: the data, the measures and the engine run."""
        s = self.summary
        lines = [f"**{s['dataset']}**: {s['n_train']} training images"
                 + (f" from {s['n_train_subjects']} subjects" if s.get("n_train_subjects") else "")
                 + f", {s.get('n_test') or 0} held-out test images; channels {', '.join(map(str, s['channels']))}; "
                 f"audited: {', '.join(self.models) or 'no generator yet (baseline and control only)'}.", "",
                 "| measure | channels | kind | |", "|---|---|---|---|"]
        for m in self.measures:
            lines.append(f"| {m.name}{' (headline)' if m.name == self.headline else ''} | {', '.join(m.channels)} "
                         f"| {m.kind} | {m.description} |")
        lines += ["", f"{s['pairs']:,} correlations ({s['image_pairs']:,} image pairs × measures, one pass per "
                      f"image set) in {s['seconds']:.1f} s on {s['backend']}: {s['backend_note']}"]
        return "\n".join(lines)

    def thresholds_frame(self) -> pd.DataFrame:
        """Thresholds per measure (rows, headline first)."""
        frame = pd.DataFrame.from_dict(self.thresholds, orient="index")
        frame.index.name = "measure"
        return frame

    def overview(self) -> pd.DataFrame:
        """Per measure and group (models, real held-out, control): images,
        constant ones, median / p99 / max of the best correlation."""
        rows = []
        for m in self.names:
            groups = comparison_groups(self.matches[m], self.baseline[m], scored_control(self.control[m]))
            for model, (kind, table) in groups.items():
                q = quantiles(valid_correlations(table))
                rows.append({"measure": m, "kind": kind, "model": model, "n": len(table),
                             "constant": int(table["constant"].astype(bool).sum()), "median": q["p50"],
                             "p99": q["p99"], "max": q["max"]})
        return pd.DataFrame(rows, columns=["measure", "kind", "model", "n", "constant", "median", "p99", "max"])

    def _pivot(self, frames: Mapping[str, pd.DataFrame], values: str) -> pd.DataFrame:
        parts = [f.assign(measure=m) for m, f in frames.items() if f is not None and len(f)]
        if not parts:
            return pd.DataFrame()
        return pd.concat(parts).pivot_table(index=["measure", "kind", "model"], columns="threshold_name",
                                            values=values, sort=False)

    def exceedance_frame(self, values: str = "fraction") -> pd.DataFrame:
        """Images above each threshold (``fraction`` or ``n_above``) per measure, kind and model."""
        return self._pivot(self.exceedances, values)

    def leakage_frame(self) -> pd.DataFrame:
        """Training subjects with an image matched above each threshold."""
        return self._pivot(self.leakage, "n_subjects_leaked")

    def control_frame(self) -> pd.DataFrame:
        """The positive control per measure and kind of planted copy."""
        parts = []
        for m in self.names:
            table = self.control.get(m)
            if table is None or table.empty:
                continue
            by_kind = table.groupby("control_kind", sort=False)
            agg = scored_control(table).groupby("control_kind", sort=False).agg(
                found=("found", "mean"), same_subject=("same_subject", "mean"),
                min_correlation=("correlation", "min"), median_correlation=("correlation", "median"))
            agg = agg.reindex(list(by_kind.groups))
            agg.insert(0, "undefined", by_kind["source_defined"].apply(lambda d: int((~d.astype(bool)).sum())))
            agg.insert(0, "n", by_kind.size())
            parts.append(agg.reset_index().assign(measure=m))
        if not parts:
            return pd.DataFrame()
        return pd.concat(parts).set_index(["measure", "control_kind"])

    def top_matches(self, n: int = 5) -> pd.DataFrame:
        """The ``n`` best matches of each model, per measure."""
        parts = [t.sort_values("correlation", ascending=False).head(n).assign(measure=m, model=model)
                 for m in self.names for model, t in self.matches[m].items()]
        if not parts:
            return pd.DataFrame()
        cols = ["measure", "model"] + [c for c in MATCH_COLUMNS if c in parts[0]]
        return pd.concat(parts)[cols].reset_index(drop=True)

    def files_frame(self) -> pd.DataFrame:
        """Every file written, with its size."""
        rank = {name: i for i, name in enumerate(self.names)}
        paths = sorted(set(self.written), key=lambda p: (rank.get(p.parent.name, -1), p.name))
        return pd.DataFrame({"file": [str(p.relative_to(self.out)) if p.is_relative_to(self.out) else str(p)
                                      for p in paths],
                             "bytes": [p.stat().st_size if p.is_file() else None for p in paths]})

