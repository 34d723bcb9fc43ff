"""The sharpness ratio, the reading rule and the fit table on hand-made
cases: a fresh draw and a copier fitted, the Gaussian control, blurred and
speckled copies unfitted — with the reason the rule gives."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter, laplace
from test_fit import _population

from helpers.fit import FitRule, fit_table, laplacian_energy, measure_check, sharpness_ratio

RULE = FitRule(sharpness_low=0.8, sharpness_high=1.25, nn_margin=0.05)


def test_laplacian_energy_is_scipys_laplacian_per_image():
    images = np.random.default_rng(0).integers(0, 255, (3, 2, 9, 7)).astype(np.uint8)
    expected = [np.mean([laplace(im[c].astype(float)) ** 2 for c in range(2)]) for im in images]
    np.testing.assert_allclose(laplacian_energy(images), expected)
    assert laplacian_energy(np.full((2, 1, 5, 5), 7, np.uint8)).tolist() == [0.0, 0.0]


def test_sharpness_ratio_reads_blur_below_and_noise_above_one():
    training = _population(48, 0)
    rng = np.random.default_rng(1)
    same = sharpness_ratio(training, training)
    assert same.ratio == pytest.approx(1.0) and same.ci_low < 1.0 < same.ci_high
    assert sharpness_ratio(training, _population(48, 1)).ratio == pytest.approx(1.0, abs=0.15)
    blur = gaussian_filter(training.astype(float), sigma=(0, 0, 1, 1))
    assert sharpness_ratio(training, blur).ratio < 0.3
    noisy = np.clip(training + rng.normal(0, 30, training.shape), 0, 255)   # this population is textured: σ 12 adds only 17 %
    assert sharpness_ratio(training, noisy).ratio > 1.5
    assert sharpness_ratio(training, np.full_like(training, 80)).ratio == 0.0


def test_sharpness_ratio_bad_input_names_it():
    training = _population(4, 0)
    with pytest.raises(ValueError, match="diffusion n00004: the images hold NaN or Inf"):
        sharpness_ratio(training, np.full((4, 2, 32, 32), np.nan), what="diffusion n00004")
    with pytest.raises(ValueError, match="training images: every one is constant"):
        sharpness_ratio(np.zeros((3, 1, 8, 8)), training[:, :1, :8, :8])
    with pytest.raises(ValueError, match="model z: expected images as N×C×H×W"):
        sharpness_ratio(training, np.zeros((4, 32, 32)), what="model z")


def test_rule_judges_both_conditions_and_says_why():
    held = {"nn_accuracy": 0.70}
    assert RULE.judge({"sharpness": 1.0, "nn_accuracy": 0.74}, held) == (True, "fitted")
    fitted, why = RULE.judge({"sharpness": 0.72, "nn_accuracy": 0.80}, held)
    assert not fitted and why == ("sharpness 0.72 < 0.8 (blurred); "
                                  "1-NN accuracy 0.80 > 0.75 (told apart from its training images)")
    assert RULE.judge({"sharpness": 2.2, "nn_accuracy": 0.3}, held) == (False, "sharpness 2.20 > 1.25 (noisy)")
    assert RULE.judge({"sharpness": math.nan, "nn_accuracy": 0.3}, held) == (False, "sharpness undefined")
    with pytest.raises(ValueError, match="sharpness_low < 1 < sharpness_high"):
        FitRule(sharpness_low=1.1, sharpness_high=1.25, nn_margin=0.05)


@pytest.fixture(scope="module")
def table():
    training, held_out, fresh = _population(32, 0), _population(40, 2), _population(64, 1)
    rng = np.random.default_rng(3)
    copies = training[rng.integers(0, 32, 64)]
    generated = {
        "fresh": fresh,
        "blur": gaussian_filter(copies.astype(float), sigma=(0, 0, 1, 1)).round().astype(np.uint8),
        "speckle": np.clip(copies + rng.normal(0, 30, copies.shape), 0, 255).round().astype(np.uint8),
    }
    real = np.concatenate([training, held_out])
    return fit_table(generated, training=training, held_out=held_out, real=real, rule=RULE)


def test_fit_table_verdicts_on_the_study_cases(table):
    rows = table.set_index("model")
    assert list(rows.index) == ["held_out", "fresh", "blur", "speckle", "gaussian_control", "copier"]
    assert rows.loc["gaussian_control", "role"] == "control" and rows.loc["copier", "role"] == "reference"
    fitted = rows["fitted"].to_dict()
    assert fitted == {"held_out": True, "fresh": True, "blur": False, "speckle": False,
                      "gaussian_control": False, "copier": True}, rows[["sharpness", "nn_accuracy", "why"]]
    assert "blurred" in rows.loc["blur", "why"] and "noisy" in rows.loc["speckle", "why"]
    assert rows.loc["copier", "nn_accuracy"] < 0.4          # fitted, and copying: the 1-NN test sees it
    for column in ("sharpness", "nn_accuracy", "texture_accuracy", "precision", "coverage", "copying"):
        assert table[column].notna().all(), column
    assert (table["sharpness_low"] <= table["sharpness"]).all() and (table["sharpness"] <= table["sharpness_high"]).all()


def test_measure_check_names_measures_that_miss_the_underfitting_control(table):
    check = measure_check(table)
    assert check["sharpness"] and check["nn_accuracy"]
    assert set(check) >= {"precision", "recall", "density", "coverage", "texture_accuracy", "copying"}
    assert all(isinstance(v, bool) for v in check.values())


def test_fit_table_refuses_degenerate_input():
    training = _population(8, 0)
    with pytest.raises(ValueError, match="stylegan: fit measures need at least 2 images"):
        fit_table({"stylegan": training[:1]}, training=training, held_out=training, real=training, rule=RULE)
    with pytest.raises(ValueError, match="diffusion: the images hold NaN or Inf"):
        fit_table({"diffusion": np.full((4, 2, 32, 32), np.inf)}, training=training, held_out=training,
                  real=training, rule=RULE)
