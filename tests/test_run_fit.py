"""The fit of every run (step 05): the Gaussian control sampled like a
model, and each run's fit table written with its verdicts, on a hand-made
run folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.ndimage import gaussian_filter
from test_fit import _population

from helpers import common, config, models, run_fit
from helpers.fit import GaussianControl
from helpers.sampling import samples_path


def make_run(run: Path, n_train: int = 24, n_test: int = 30) -> np.ndarray:
    data = run / "data"
    data.mkdir(parents=True)
    train, test = _population(n_train, 0), _population(n_test, 2)
    np.save(data / "train.npy", train)
    np.save(data / "test.npy", test)
    for split, n in (("train", n_train), ("test", n_test)):
        common.write_csv(data / f"{split}.csv", pd.DataFrame({"index": range(n), "subject": [f"S{i}" for i in range(n)],
                                                                "slice": [0] * n}))
    common.write_json(data / "meta.json", {"dataset": "toy", "channels": ["a", "b"], "image_size": 32,
                                           "n_train": n_train, "n_test": n_test})
    return train


def test_the_gaussian_control_is_sampled_like_a_model_one_seed_per_image(tmp_path):
    train = make_run(tmp_path)
    settings = config.SampleSettings(models=["gaussian_control"], n_gaussian_control=6, first_seed=5, batch_size=4)
    path = models.get("gaussian_control").sample(tmp_path, settings, progress=False)
    images = np.load(path)
    assert images.shape == (6, 2, 32, 32) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[2:3], GaussianControl(train).sample([7]))   # image i: seed first_seed + i
    assert models.sample_counts(settings) == {"gaussian_control": 6}
    # other training data under finished samples: refused, naming the file
    np.save(tmp_path / "data" / "train.npy", _population(24, 9))
    with pytest.raises(ValueError, match="gaussian_control_sampler.json: the existing Gaussian-control samples"):
        models.get("gaussian_control").sample(tmp_path, settings, progress=False)


def test_a_run_s_fit_table_has_the_references_and_the_verdicts(tmp_path):
    train = make_run(tmp_path)
    rng = np.random.default_rng(1)
    (tmp_path / "samples").mkdir()
    copies = train[rng.integers(0, len(train), 40)]
    np.save(samples_path(tmp_path, "diffusion"), _population(40, 5))                  # a fresh draw: fitted
    np.save(samples_path(tmp_path, "stylegan"),                                          # blurred copies: not
            gaussian_filter(copies.astype(float), sigma=(0, 0, 1, 1)).round().astype(np.uint8))
    np.save(samples_path(tmp_path, "optimal_denoiser"), copies)                         # a copier: fitted
    settings = config.CorrelateSettings()
    table = run_fit.judge_run(tmp_path, ["stylegan", "diffusion", "optimal_denoiser"], run_fit.rule_from(settings),
                              real_pool=train, n_samples=32)
    written = pd.read_csv(tmp_path / "fit" / "fit.csv")
    assert list(written["model"]) == ["held_out", "stylegan", "diffusion", "optimal_denoiser", "gaussian_control"]
    assert dict(zip(written["model"], written["role"])) == {
        "held_out": "reference", "stylegan": "model", "diffusion": "model", "optimal_denoiser": "reference",
        "gaussian_control": "control"}
    assert dict(zip(table["model"], table["fitted"])) == {
        "held_out": True, "stylegan": False, "diffusion": True, "optimal_denoiser": True, "gaussian_control": False}
    assert set(written["size"]) == {24} and set(written["n_scored"]) == {30, 32}      # held-out: all 30; samples: first 32
    assert run_fit.fitted(written, "stylegan", 24) is False and run_fit.fitted(written, "stylegan", 99) is None
    checks = run_fit.measure_checks(written)
    assert bool(checks.loc[0, "sharpness"]) and list(checks["size"]) == [24]
    assert "sharpness ratio between 0.8 and 1.25" in run_fit.rule_markdown(settings)


def test_fit_tables_name_the_subset_rule_so_two_runs_of_one_size_stay_apart(tmp_path):
    """The 2D-from-3D arm trains two runs of 16 slices; each verdict is read for its own rule."""
    make_run(tmp_path)
    meta = common.read_json(tmp_path / "data" / "meta.json")
    common.write_json(tmp_path / "data" / "meta.json", {**meta, "sweep_rule": "one_per_subject"})
    (tmp_path / "samples").mkdir()
    np.save(samples_path(tmp_path, "diffusion"), _population(40, 5))
    table = run_fit.judge_run(tmp_path, ["diffusion"], run_fit.rule_from(config.CorrelateSettings()),
                              real_pool=_population(24, 0), n_samples=32)
    assert set(table["rule"]) == {"one_per_subject"}
    other = table.assign(rule="whole_subjects", fitted=False, why="blurred (sharpness below the band)")
    both = pd.concat([table, other], ignore_index=True)
    assert run_fit.fitted(both, "diffusion", 24, "one_per_subject") is True
    assert run_fit.fitted(both, "diffusion", 24, "whole_subjects") is False
    assert run_fit.fitted(both.drop(columns="rule").iloc[:len(table)], "diffusion", 24) is True   # older tables: one rule
    text = run_fit.fit_summary_markdown(both)
    assert "- 24 (one_per_subject) training images: diffusion fitted" in text
    assert "- 24 (whole_subjects) training images: diffusion **not fitted**" in text
    assert len(run_fit.measure_checks(both)) == 2

