"""Words computed from the numbers: the finding sentence is built from
summary.json alone, so it cannot go stale."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from .. import models as registry
from ..audit import measure_summary, reported_interval
from .style import BASELINE, CONTROL, MODELS, _pct, display_name, measure_label, threshold_label


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
    # the comparison is between the trained generators (the controls are references, not the question)
    trained = {m: e for m, e in rates.items() if not (m in registry.REGISTRY and registry.REGISTRY[m].control)}
    if len(trained) >= 2:
        (m1, e1), (m2, e2) = sorted(trained.items(), key=lambda kv: kv[1]["fraction"], reverse=True)[:2]
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
