"""The fit measures on hand-made cases: exact values where they can be
computed by hand, and on a parametric image population the cases the study
leans on — a fresh real draw and a copier fitted, the Gaussian control, a
blur and a constant image not."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from helpers.fit import (
    FeatureSpace,
    GaussianControl,
    classifier_two_sample,
    copying_statistic,
    nearest_neighbour_two_sample,
    prdc,
)

# --- exact values -------------------------------------------------------------------------------

def test_prdc_by_hand():
    real = np.array([[0.0], [1.0], [3.0]])       # k=1 radii: 1, 1, 2
    fake = np.array([[0.5], [2.9], [10.0]])      # k=1 radii: 2.4, 2.4, 7.1
    out = prdc(real, fake, k=1)
    # precision: 0.5 in balls of 0 and 1, 2.9 in the ball of 3, 10 in none → 2/3
    assert out["precision"] == pytest.approx(2 / 3)
    # recall: every real point within 2.4 of 0.5 or 2.9 (0: 0.5, 1: 0.5, 3: 0.1) → 1
    assert out["recall"] == pytest.approx(1.0)
    # density: fake 0.5 in 2 balls, 2.9 in 1, 10 in 0 → (2+1+0)/3 / k
    assert out["density"] == pytest.approx(1.0)
    # coverage: nearest fake of 0 is 0.5 (≤ 1), of 1 is 0.5 (≤ 1), of 3 is 2.9 (≤ 2) → 1
    assert out["coverage"] == pytest.approx(1.0)
    assert (out["k_used"], out["n_per_set"], out["n_chunks"]) == (1, 3, 1)


def test_prdc_counts_exact_copies_inside_their_ball():
    """A ball of radius 0 (duplicated images) still holds the point itself: copies score 1."""
    real = np.repeat(np.eye(3), 4, axis=0)           # 3 distinct points, 4 copies each
    out = prdc(real, real.copy(), k=3)
    assert out == {"precision": 1.0, "recall": 1.0, "density": 4 / 3, "coverage": 1.0,
                   "k_used": 3, "n_per_set": 12, "n_chunks": 1}


def test_prdc_equal_sizes_and_small_sets():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(4, 3)), rng.normal(size=(13, 3))
    out = prdc(real, fake, k=5)
    assert (out["k_used"], out["n_per_set"], out["n_chunks"]) == (3, 4, 3)   # 3 chunks of 4; one fake image left out
    with pytest.raises(ValueError,
                       match="model x: too few images for precision/recall: at least 2 real and 2 generated are needed"):
        prdc(real, fake[:1], what="model x")


def test_copying_statistic_by_hand():
    training = np.array([[0.0], [100.0]])
    held_out = np.array([[5.0], [6.0], [7.0], [95.0]])
    near = np.array([[1.0], [2.0], [99.0]])          # every sample nearer its cell's training point than any held-out one
    result = copying_statistic(training, held_out, near, n_cells=1, min_fraction=0.0)
    m, n = 3, 4                                       # U = 0: z = -mn/2 / sqrt(mn(m+n+1)/12)
    assert result.statistic == pytest.approx(-(m * n / 2) / math.sqrt(m * n * (m + n + 1) / 12))
    far = np.array([[20.0], [30.0], [60.0]])         # every sample farther: U = mn
    assert copying_statistic(training, held_out, far, n_cells=1).statistic == pytest.approx(
        (m * n / 2) / math.sqrt(m * n * (m + n + 1) / 12))


def test_copying_statistic_weights_cells_by_held_out_share():
    training = np.array([[0.0], [1.0], [100.0], [101.0]])
    held_out = np.array([[3.0], [4.0], [5.0], [97.0]])        # 3/4 of the held-out images in the first cell
    fake = np.array([[0.5], [0.6], [99.0], [98.5]])            # closer than held-out in both cells
    result = copying_statistic(training, held_out, fake, n_cells=2, min_fraction=0.0)
    z1 = -(2 * 3 / 2) / math.sqrt(2 * 3 * 6 / 12)
    z2 = -(2 * 1 / 2) / math.sqrt(2 * 1 * 4 / 12)
    assert (result.n_cells, result.n_cells_used) == (2, 2)
    assert result.statistic == pytest.approx(0.75 * z1 + 0.25 * z2)


def test_copying_statistic_without_usable_cells_says_so():
    training = np.array([[0.0], [1.0], [100.0], [101.0]])
    result = copying_statistic(training, np.array([[2.0], [3.0]]), np.array([[99.0], [98.0]]), n_cells=2)
    assert math.isnan(result.statistic) and result.n_cells_used == 0 and "no cell" in result.note


def test_two_sample_test_separable_and_identical():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(40, 5))
    separable = classifier_two_sample(a, a + 10.0)
    assert separable.accuracy == 1.0 and separable.ci_high == 1.0 and separable.ci_low > 0.9
    other = rng.normal(size=(40, 5))
    assert classifier_two_sample(a, other).accuracy < 0.6          # not told apart (biased low at the null: docstring)
    same = nearest_neighbour_two_sample(a, other)
    assert 0.35 < same.accuracy < 0.65 and same.ci_low < 0.5 < same.ci_high
    assert nearest_neighbour_two_sample(a, a[::-1].copy()).accuracy == 0.0   # every point's nearest is its twin
    assert nearest_neighbour_two_sample(a, a + 10.0).accuracy == 1.0


def test_two_sample_test_balances_the_classes():
    rng = np.random.default_rng(4)
    real, fake = rng.normal(size=(4, 3)), rng.normal(size=(13, 3))
    # 3 chunks of 4 samples, each pooled with the 4 real points: 24 leave-one-out predictions
    assert nearest_neighbour_two_sample(real, fake + 5).accuracy == 1.0
    out = nearest_neighbour_two_sample(real, fake)
    assert (out.n_real, out.n_fake) == (4, 13) and 0.0 <= out.ci_low <= out.accuracy <= out.ci_high <= 1.0


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_measures_name_the_model_on_bad_features(bad):
    real = np.zeros((5, 2))
    fake = np.ones((5, 2))
    fake[2, 1] = bad
    for call in (lambda: prdc(real, fake, what="diffusion n00004"),
                 lambda: nearest_neighbour_two_sample(real, fake, what="diffusion n00004"),
                 lambda: classifier_two_sample(real, fake, what="diffusion n00004"),
                 lambda: copying_statistic(real, real, fake, what="diffusion n00004")):
        with pytest.raises(ValueError, match="diffusion n00004: features hold NaN or Inf"):
            call()


# --- the Gaussian control -----------------------------------------------------------------------

@pytest.mark.parametrize("covariance", ["pixel", "full"])
def test_gaussian_control_one_seed_per_image_and_moments(covariance):
    rng = np.random.default_rng(2)
    training = rng.integers(100, 150, size=(6, 2, 8, 8), dtype=np.uint8)   # far from 0 and 255: no clipping
    control = GaussianControl(training, covariance=covariance)
    both = control.sample([11, 12])
    assert both.dtype == np.uint8 and both.shape == (2, 2, 8, 8)
    np.testing.assert_array_equal(control.sample([12])[0], both[1])
    many = control.sample(range(4000)).reshape(4000, -1).astype(float)
    flat = training.reshape(6, -1).astype(float)
    sd = flat.std(axis=0, ddof=1)
    np.testing.assert_allclose(many.mean(axis=0), flat.mean(axis=0), atol=4 * sd.max() / np.sqrt(4000))
    # pixel: each pixel's variance, pixels independent; full: the training images' covariance (rank 5);
    # up to sampling error and rounding
    expected = np.diag(sd ** 2) if covariance == "pixel" else np.cov(flat.T)
    np.testing.assert_allclose(np.cov(many.T), expected, atol=0.1 * expected.max())
    assert not any((s == training.reshape(6, -1)).all(axis=1).any() for s in many.astype(np.uint8))


def test_gaussian_control_of_one_image_is_that_image():
    image = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(1, 2, 8, 8)
    np.testing.assert_array_equal(GaussianControl(image).sample([0, 1]), np.repeat(image, 2, axis=0))
    np.testing.assert_array_equal(GaussianControl(image, "full").sample([0]), image)
    with pytest.raises(ValueError, match="N×C×H×W"):
        GaussianControl(image[0])
    with pytest.raises(ValueError, match="covariance must be 'pixel' or 'full', not 'diag'"):
        GaussianControl(image, covariance="diag")


# --- the feature space and the study's cases, on a parametric population ------------------------

def _population(n: int, seed: int) -> np.ndarray:
    """Images of one family: a bright disc with a dark inner ring and texture, random place and size."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32]
    out = np.empty((n, 2, 32, 32), dtype=np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(11, 21, size=2)
        radius = rng.uniform(7, 12)
        rr = np.hypot(yy - cy, xx - cx)
        disc = (rr < radius) * rng.uniform(120, 200)
        ring = ((rr > radius * 0.4) & (rr < radius * 0.55)) * rng.uniform(40, 90)
        texture = gaussian_filter(rng.normal(0, 25, (32, 32)), 0.7) * (rr < radius)
        first = np.clip(disc - ring + texture, 0, 255)
        out[i, 0] = first
        out[i, 1] = np.clip(255 - first * rng.uniform(0.6, 0.9), 0, 255) * (rr < radius)
    return out


@pytest.fixture(scope="module")
def population():
    training, fresh, held_out = _population(64, 0), _population(64, 1), _population(64, 2)
    space = FeatureSpace.fit(np.concatenate([training, held_out]))
    rng = np.random.default_rng(3)
    copies = training[rng.integers(0, 64, 64)]
    cases = {
        "fresh real": fresh,                       # a generator that learnt the population and copies nothing
        "copier": copies,                          # the optimal denoiser's kind: training images, drawn with replacement
        "gaussian control": GaussianControl(training).sample(range(64)),
        "blur": gaussian_filter(copies.astype(float), sigma=(0, 0, 1.0, 1.0)).round().astype(np.uint8),
        "speckle": np.clip(copies + rng.normal(0, 12, copies.shape), 0, 255).astype(np.uint8),
        "constant": np.full_like(copies, 90),
    }
    return space, space.embed(training), space.embed(held_out), {k: space.embed(v) for k, v in cases.items()}


def test_feature_space_is_fixed_and_checks_its_input(population):
    space = population[0]
    images = _population(3, 9)
    refit = FeatureSpace.fit(np.concatenate([_population(64, 0), _population(64, 2)]))
    np.testing.assert_array_equal(space.embed(images), refit.embed(images))
    with pytest.raises(ValueError, match="model y: 1 of 3 images hold NaN or Inf"):
        space.embed(np.where(np.arange(3)[:, None, None, None] == 1, np.nan, images.astype(float)), what="model y")
    with pytest.raises(ValueError, match="too small"):
        space.embed(np.zeros((2, 1, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="kind must be one of"):
        FeatureSpace.fit(images, kind="layout")


def test_texture_two_sample_test_tells_blur_and_noise_not_a_fresh_draw():
    """In the texture embedding a fresh draw of the population mixes with the training images;
    blurred and noised copies and the Gaussian control do not."""
    training, fresh = _population(64, 0), _population(64, 1)
    texture = FeatureSpace.fit(np.concatenate([training, fresh]), kind="texture")
    f_train = texture.embed(training)
    rng = np.random.default_rng(6)
    cases = {
        "fresh real": fresh,
        "gaussian control": GaussianControl(training).sample(range(64)),
        "blur": gaussian_filter(training.astype(float), sigma=(0, 0, 1.0, 1.0)).round(),
        "speckle": np.clip(training + rng.normal(0, 12, training.shape), 0, 255).round(),
    }
    accuracy = {k: classifier_two_sample(f_train, texture.embed(v), what=k).accuracy for k, v in cases.items()}
    assert accuracy["fresh real"] < 0.7, accuracy
    assert min(accuracy["gaussian control"], accuracy["blur"], accuracy["speckle"]) > 0.8, accuracy


def test_two_sample_tests_on_the_study_cases(population):
    """The logistic test reads quality: every unfitted case (the Gaussian control, blurred and speckled
    copies, a constant image) is told apart, a fresh draw and copies are not. The 1-NN test reads copying."""
    _, training, _, cases = population
    quality = {name: classifier_two_sample(training, f, what=name).accuracy for name, f in cases.items()}
    assert quality["fresh real"] < 0.6 and quality["copier"] < 0.6, quality
    for unfitted in ("gaussian control", "blur", "speckle", "constant"):
        assert quality[unfitted] > 0.9, (unfitted, quality)
    nearest = {name: nearest_neighbour_two_sample(training, f, what=name).accuracy for name, f in cases.items()}
    assert 0.35 < nearest["fresh real"] < 0.65, nearest
    assert nearest["copier"] < 0.35 and nearest["constant"] == 1.0, nearest


def test_precision_recall_on_the_study_cases(population):
    """Precision and density call the Gaussian control and a constant image unfitted; near copies
    (blur, speckle) stay inside the training images' balls, so these measures cannot see their quality."""
    _, training, _, cases = population
    scores = {name: prdc(training, f) for name, f in cases.items()}
    assert scores["copier"]["precision"] == 1.0 and scores["copier"]["recall"] == 1.0
    assert scores["fresh real"]["precision"] > 0.8 and scores["fresh real"]["recall"] > 0.8
    assert scores["constant"] == {**scores["constant"], "precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    assert scores["gaussian control"]["precision"] < scores["fresh real"]["precision"] - 0.3
    assert scores["gaussian control"]["density"] < 0.5 < scores["fresh real"]["density"]


def test_copying_test_on_the_study_cases(population):
    """C_T: copies, noised or not, sit nearer the training images than unseen images do (≪ 0);
    a fresh draw sits as near (≈ 0); the Gaussian control and a constant image farther (≫ 0)."""
    _, training, held_out, cases = population
    ct = {name: copying_statistic(training, held_out, f).statistic for name, f in cases.items()}
    assert ct["copier"] < -3.0 and ct["speckle"] < -3.0, ct
    assert abs(ct["fresh real"]) < 1.0, ct
    assert ct["gaussian control"] > 2.0 and ct["constant"] > 3.0, ct
