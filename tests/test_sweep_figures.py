"""Figures and sentences of the size sweep, from hand-made criteria tables."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from helpers import common, memorization, sweep_figures
from helpers import criteria as judged  # noqa: E402

L2 = judged.L2_CRITERION


def criteria() -> pd.DataFrame:
    k = {"stylegan": [8, 2, 0, 0], "diffusion": [32, 31, 4, 0], "optimal_denoiser": [32] * 4, judged.REAL: [0] * 4}
    frames = []
    for j, size in enumerate((4, 16, 64, 256)):
        flags = {g: {c: [1.0] * k[g][j] + [0.0] * (32 - k[g][j])
                     for c in (L2, "t1ce: r > fixed_0.95", "t1ce: r > baseline_p99")} for g in k}
        table = memorization.criteria_table(flags, size, n_subjects=max(1, size // 9))
        frames.append(table.assign(headline="t1ce", rule="whole_subjects"))
    return pd.concat(frames, ignore_index=True)


def test_capacity_and_comparison_sentences_follow_the_numbers():
    table = criteria()
    caps = [memorization.memorization_capacity(table, L2, g, 0.9) for g in ("stylegan", "diffusion", "optimal_denoiser")]
    assert [c.capacity for c in caps] == [None, 16, 256]
    capacity = pd.DataFrame([{"group": c.group, "criterion": c.criterion, "message": c.message} for c in caps])
    text = sweep_figures.capacity_text(capacity, table)
    assert "diffusion (l2: d1 < d2/3): at least 90 % memorized up to 16 training images, not at 64" in text
    words = sweep_figures.comparison_text(table)
    assert "16 training images: diffusion 97 %" in words and "diffusion memorizes more" in words
    assert "256 training images: diffusion 0 %" in words and "no difference the intervals can show" in words


def test_sweep_figure_and_table(tmp_path):
    table = criteria()
    fig = sweep_figures.plot_sweep(table)
    assert [ax.get_title() for ax in fig.axes] == ["t1ce: r > fixed_0.95", "t1ce: r > baseline_p99", L2]
    rows = sweep_figures.sweep_table(table)
    assert list(rows.columns[-3:]) == sweep_figures.headline_criteria(table)
    assert rows.iloc[0]["group"] == "stylegan" and rows.iloc[0][L2].startswith("8/32 (25 %")
    for name in ("demo", "chest"):
        common.write_csv(tmp_path / name / "sweep" / "criteria.csv", table)
    both = sweep_figures.collect_sweeps(tmp_path)
    assert set(both["dataset"]) == {"demo", "chest"}
    fig = sweep_figures.plot_compare_sweeps(both, "baseline_p99")
    assert [ax.get_title() for ax in fig.axes] == ["chest: t1ce: r > baseline_p99", "demo: t1ce: r > baseline_p99"]


def test_comparison_with_two_subset_rules_at_one_size_names_each_rule():
    """The 2D-from-3D arm: the same size under two subset rules."""
    table = criteria()
    both = pd.concat([table, table[table["size"] == 16].assign(rule="one_per_subject")], ignore_index=True)
    words = sweep_figures.comparison_text(both)
    assert "16 training images (whole_subjects): diffusion 97 %" in words
    assert "16 training images (one_per_subject): diffusion 97 %" in words
    assert "4 training images (whole_subjects)" in words


def test_fit_verdicts_are_read_per_subset_rule_where_two_rules_share_a_size():
    """StyleGAN fitted on the one-slice-per-subject set of 16 but not on the
    16 slices of whole subjects: each comparison and table row reads its own."""
    table = criteria()
    both = pd.concat([table, table[table["size"] == 16].assign(rule="one_per_subject")], ignore_index=True)
    fit = pd.DataFrame([{"size": s, "rule": r, "model": m, "fitted": not (m == "stylegan" and r == "whole_subjects"),
                         "why": "blurred" if (m == "stylegan" and r == "whole_subjects") else "fitted"}
                        for s in (4, 16, 64, 256) for r in ("whole_subjects", "one_per_subject")
                        for m in ("stylegan", "diffusion")])
    words = sweep_figures.comparison_text(both, fit=fit).splitlines()
    whole = next(w for w in words if "16 training images (whole_subjects)" in w)
    spread = next(w for w in words if "16 training images (one_per_subject)" in w)
    assert "no comparison of fitted models: StyleGAN not fitted (blurred)" in whole
    assert "no comparison" not in spread and "diffusion memorizes more" in spread
    rows = sweep_figures.sweep_table(both[both["rule"] == "one_per_subject"], fit=fit)
    assert not rows[L2].str.contains("not fitted").any()
    rows = sweep_figures.sweep_table(both[both["rule"] == "whole_subjects"], fit=fit)
    assert rows.loc[rows["group"] == "stylegan", L2].str.endswith("not fitted").all()
    with pytest.raises(ValueError, match="one subset rule per sweep figure"):
        sweep_figures.sweep_table(both, fit=fit)

