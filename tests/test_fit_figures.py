"""The memorization-against-fit figure: fitted points filled, unfitted ones
hollow, references as single points, and a clear error on a wrong table."""

from __future__ import annotations

import matplotlib
import pandas as pd
import pytest

from helpers.figures.fit import memorization_against_fit

matplotlib.use("Agg")


def _table():
    rows = []
    for model, n, path in [("diffusion", 4, [(5.0, 0.0, False), (1.1, 0.9, True)]),
                           ("stylegan", 4, [(0.4, 0.0, False), (0.7, 0.05, False)])]:
        for seen, (sharp, mem, fitted) in enumerate(path):
            rows.append(dict(model=model, role="model", n_train=n, images_seen=1000 * (seen + 1), sharpness=sharp,
                             nn_accuracy=0.5, memorized=mem, fitted=fitted))
    rows += [dict(model="held_out", role="reference", n_train=4, sharpness=1.0, nn_accuracy=0.75, memorized=0.01, fitted=True),
             dict(model="gaussian_control", role="control", n_train=4, sharpness=2.1, nn_accuracy=0.8, memorized=0.0,
                  fitted=False)]
    return pd.DataFrame(rows)


def test_fitted_points_are_filled_and_unfitted_hollow():
    fig = memorization_against_fit(_table(), sharpness_band=(0.8, 1.25), held_out_nn=0.8)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    filled = hollow = 0
    for collection in ax.collections:
        faces = collection.get_facecolors()
        offsets = collection.get_offsets()
        if len(offsets) and len(faces) == 0:
            hollow += len(offsets)
        elif len(offsets):
            filled += len(offsets)
    # model points: 1 fitted (filled), 3 not (hollow); references: 2 filled single points
    assert (filled, hollow) == (3, 3)
    labels = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert "StyleGAN" in labels and "4 training images" in labels
    assert any("hollow" in label for label in labels)


def test_two_subset_rules_at_one_size_are_two_trajectories():
    table = _table().assign(rule="whole_subjects")
    models = table[table.role == "model"]
    both = pd.concat([table, models.assign(rule="one_per_subject", sharpness=models["sharpness"] * 1.5)], ignore_index=True)
    fig = memorization_against_fit(both, sharpness_band=(0.8, 1.25))
    lines = [line for line in fig.axes[0].get_lines() if len(line.get_xdata()) > 1]
    assert len(lines) == 4                                         # 2 models × 2 rules, none merged
    labels = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert {"4 training images (whole_subjects)", "4 training images (one_per_subject)"} <= set(labels)


def test_missing_columns_are_named():
    with pytest.raises(ValueError, match=r"missing columns \['fitted'\]"):
        memorization_against_fit(_table().drop(columns=["fitted"]), sharpness_band=(0.8, 1.25))
