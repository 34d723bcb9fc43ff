"""The landing page's story figure and method diagram (issue 19) on a small,
self-made results folder that follows the result contract."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from test_figures import make_results  # noqa: E402

from helpers import figures  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _texts(fig) -> str:
    parts = [t.get_text() for t in fig.findobj(matplotlib.text.Text)]
    return "\n".join(parts)


def test_most_copy_like_skips_constant_and_undefined_and_breaks_ties_by_index():
    matches = pd.DataFrame({"synthetic_index": [0, 1, 2, 3, 4],
                            "correlation": [0.5, np.nan, 0.9, 0.99, 0.9],
                            "constant": [False, False, False, True, False]})
    assert int(figures.most_copy_like(matches)["synthetic_index"]) == 2   # 0.99 is a constant image's; 2 before 4
    assert figures.most_copy_like(matches.assign(constant=True)) is None


def test_story_shows_each_models_best_match_with_its_r_and_fit(tmp_path):
    run = make_results(tmp_path / "phantom", channels=("t1",))
    matches = figures.load_matches(run, "diffusion")
    best = matches.loc[matches["correlation"].idxmax()]
    n_train = len(figures.load_images(run, "train"))
    text = _texts(figures.plot_story({"all": run}, ["stylegan", "diffusion"]))
    assert f"r = {best['correlation']:.3f}" in text
    assert "fit not judged" in text
    fit = pd.DataFrame({"size": [n_train, n_train], "model": ["stylegan", "diffusion"], "fitted": [False, True]})
    text = _texts(figures.plot_story({"all": run}, ["stylegan", "diffusion"], fit=fit))
    assert "NOT fitted" in text and "fitted;" in text
    threshold = figures.load_thresholds(run)["baseline_p99"]
    valid = matches[~matches["constant"] & matches["correlation"].notna()]
    assert f"{int((valid['correlation'] > threshold).sum())}/{len(valid)} above p99" in text


def test_story_says_when_a_model_has_no_audit(tmp_path):
    run = make_results(tmp_path / "phantom", models=("diffusion",), channels=("t1",))
    assert "no samples audited" in _texts(figures.plot_story({"all": run}, ["stylegan", "diffusion"]))


def test_method_diagram_carries_the_runs_numbers():
    text = _texts(figures.plot_method(sizes=[4, 16, 64], n_samples=48, n_held_out=123, percentile=99,
                                      headline="T1ce", image_size=32))
    for needle in ("4, 16, 64", "48 images per", "123 real slices", "99th percentile", "T1ce measure", "32²"):
        assert needle in text, needle
    xray = _texts(figures.plot_method(volumes=False))
    assert "slices" not in xray and "M images per" in xray


def test_method_of_a_results_folder_reads_its_own_numbers(tmp_path):
    run = make_results(tmp_path / "phantom", channels=("t1",), n_samples=24)
    meta = figures.load_meta(run)
    text = _texts(figures.plot_method_of(run, ["stylegan", "diffusion", "optimal_denoiser"]))
    assert "24 images per" in text and f"{meta['n_test']} real" in text
    assert "optimal" not in text.lower()   # controls are not trained models
