"""The finding's sentences about the 2D-from-3D arm, from hand-made tables:
runs of equal slice count and of equal distinct pictures compared, and which
of the two the difference follows."""

from __future__ import annotations

import html
import re

import pandas as pd

from helpers import common, finding, memorization
from helpers import criteria as judged
from helpers.layout import Results, Run

P99 = judged.correlation_criterion("t1ce", "baseline_p99")
#: (rule, slices, distinct pictures, diffusion's copies of 64)
RUNS = [("whole_subjects", 16, 2, 64), ("one_per_subject", 2, 2, 62), ("one_per_subject", 16, 16, 3)]


def make_results(folder, fitted=True):
    frames, fit, sizes = [], [], []
    for rule, n, distinct, k in RUNS:
        flags = {g: {c: [1.0] * kk + [0.0] * (64 - kk) for c in (P99, judged.L2_CRITERION)}
                 for g, kk in (("diffusion", k), ("stylegan", 0))}
        frames.append(memorization.criteria_table(flags, n, n_subjects=1 if rule == "whole_subjects" else n)
                      .assign(headline="t1ce", rule=rule))
        fit += [{"size": n, "rule": rule, "model": m, "role": "model", "fitted": fitted, "why": "fitted" if fitted
                 else "blurred", "sharpness": 1.0, "nn_accuracy": 0.6} for m in ("diffusion", "stylegan")]
        sizes.append({"size": n, "rule": rule, "label": f"n{n:05d}_{rule}", "n_subjects": 1, "n_distinct": distinct,
                      "folder": f"sizes/n{n:05d}_{rule}"})
    criteria = pd.concat(frames, ignore_index=True)
    common.write_csv(Results(folder).sweep.criteria, criteria[["headline", "rule"] + [c for c in criteria
                                                                                    if c not in ("headline", "rule")]])
    common.write_csv(Results(folder).sweep.fit, pd.DataFrame(fit))
    common.write_json(Run(folder).data.sizes, {"sizes": sizes})
    return folder


def _text(folder) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", finding.sweep_markdown(folder)))


def test_equal_slices_differ_equal_pictures_do_not_so_the_pictures_drive_it(tmp_path):
    text = _text(make_results(tmp_path))
    line = next(x for x in text.splitlines() if x.startswith("- **Slices or distinct pictures? diffusion"))
    assert ("at 16 slices: whole subjects, 16 slices (2 distinct pictures): 64/64 (100 %, 94–100) vs one slice per "
            "subject, 16 slices (16 distinct pictures): 3/64") in line
    assert "more copied from whole subjects; at 2 distinct pictures" in line
    assert "2 slices (2 distinct pictures): 62/64 (97 %, 89–99): no difference the intervals can show" in line
    assert line.endswith("The difference follows the distinct pictures, not the slice count.")
    assert "16 (whole subjects, 2 distinct pictures) training images." in text


def test_unfitted_runs_are_compared_but_say_so(tmp_path):
    text = _text(make_results(tmp_path, fitted=False))
    line = next(x for x in text.splitlines() if x.startswith("- **Slices or distinct pictures? diffusion"))
    assert "— not fitted" in line and "(between runs not both fitted: the budget's numbers, not fitted models')" in line
    assert line.endswith("Between runs not all fitted, the difference follows the distinct pictures, not the slice count.")


def test_one_rule_has_no_subset_comparison(tmp_path):
    folder = make_results(tmp_path)
    sizes = common.read_json(Run(folder).data.sizes)["sizes"]
    common.write_json(Run(folder).data.sizes, {"sizes": [s for s in sizes if s["rule"] == "one_per_subject"]})
    criteria = pd.read_csv(Results(folder).sweep.criteria)
    common.write_csv(Results(folder).sweep.criteria, criteria[criteria["rule"] == "one_per_subject"])
    assert "Slices or distinct pictures" not in _text(folder)
