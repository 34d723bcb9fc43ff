"""The fit measures, on feature arrays (rows are images).

* :func:`prdc` — precision and recall (Kynkäänniemi et al., NeurIPS 2019),
  density and coverage (Naeem et al., ICML 2020) from k-nearest-neighbour
  balls. Written here rather than taken from the ``prdc`` package because
  that package compares distances strictly (``<``): a sample that *is* a
  training image sits at distance 0 from it, and a ball of radius 0 (a
  training image with duplicates, or a generator's repeated copies) then
  contains nothing — a perfect copier would score recall 0. Here a point
  on the ball's surface is inside (``≤``), as in the papers' definitions.
  Equal numbers of real and generated points (recall and coverage inflate
  otherwise): the larger set is cut into chunks of the smaller's size and
  the measures averaged over the chunks.
* :func:`classifier_two_sample` — the classifier two-sample test (Lopez-Paz
  & Oquab, ICLR 2017): out-of-fold balanced accuracy of a logistic
  regression telling generated from real (near 1: unfitted); and
  :func:`nearest_neighbour_two_sample`, its leave-one-out 1-NN form, which
  reads copying (well below 0.5).
* :func:`copying_statistic` — Meehan, Chaudhuri & Dasgupta's data-copying
  test C_T (AISTATS 2020): per cell of a k-means partition of the training
  set, the Mann–Whitney z-score of generated vs held-out distances to the
  training set, averaged with the held-out images' cell weights. C_T ≪ 0:
  samples sit closer to the training images than unseen real images do
  (copying); C_T ≫ 0: farther (underfitting).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats
from scipy.spatial.distance import cdist

PRDC_NAMES = ("precision", "recall", "density", "coverage")


def _features(array, what: str) -> np.ndarray:
    x = np.asarray(array, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D feature array (images × features), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{what}: features hold NaN or Inf (a diverged model?)")
    return x


def _kth_neighbour_radius(x: np.ndarray, k: int) -> np.ndarray:
    """Distance of every row to its k-th nearest *other* row."""
    d = cdist(x, x)
    np.fill_diagonal(d, np.inf)
    return np.partition(d, k - 1, axis=1)[:, k - 1]


def _prdc_once(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    real_radius = _kth_neighbour_radius(real, k)
    fake_radius = _kth_neighbour_radius(fake, k)
    d = cdist(real, fake)                                # real × fake
    inside_real = d <= real_radius[:, None]              # fake j inside real i's ball
    return {
        "precision": float(inside_real.any(axis=0).mean()),
        "recall": float((d <= fake_radius[None, :]).any(axis=1).mean()),
        "density": float(inside_real.sum(axis=0).mean() / k),
        "coverage": float((d.min(axis=1) <= real_radius).mean()),
    }


def _chunks(n_large: int, n_small: int, rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(n_large)
    return [order[i:i + n_small] for i in range(0, n_large - n_small + 1, n_small)]


def _balanced_pairs(real: np.ndarray, fake: np.ndarray, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    n = min(len(real), len(fake))
    rng = np.random.default_rng(seed)
    if len(fake) >= len(real):
        return [(real, fake[idx]) for idx in _chunks(len(fake), n, rng)]
    return [(real[idx], fake) for idx in _chunks(len(real), n, rng)]


def _two_sets(real, fake, what: str, measure: str = "the two-sample test") -> tuple[np.ndarray, np.ndarray]:
    """Both feature arrays checked; at least 2 images in each (a measure of one image means nothing)."""
    real = _features(real, "real images")
    fake = _features(fake, what)
    if min(len(real), len(fake)) < 2:
        raise ValueError(f"{what}: too few images for {measure}: at least 2 real and 2 generated are needed, "
                         f"got {len(real)} real and {len(fake)} generated")
    return real, fake


def prdc(real, fake, k: int = 5, *, seed: int = 0, what: str = "samples") -> dict[str, float]:
    """Precision, recall, density and coverage of ``fake`` against ``real``
    at equal set sizes (averaged over chunks of the larger set), with
    ``k_used = min(k, n - 1)`` for sets smaller than k + 1 (reported)."""
    real, fake = _two_sets(real, fake, what, "precision/recall")
    n = min(len(real), len(fake))
    k_used = min(int(k), n - 1)
    values = [_prdc_once(r, f, k_used) for r, f in _balanced_pairs(real, fake, seed)]
    out = {name: float(np.mean([v[name] for v in values])) for name in PRDC_NAMES}
    out.update(k_used=k_used, n_per_set=n, n_chunks=len(values))
    return out


@dataclass(frozen=True)
class TwoSampleResult:
    accuracy: float          # balanced accuracy, out of fold (logistic) or leave-one-out (1-NN)
    ci_low: float
    ci_high: float
    n_real: int
    n_fake: int


def classifier_two_sample(real, fake, *, folds: int = 5, seed: int = 0, what: str = "samples") -> TwoSampleResult:
    """Out-of-fold balanced accuracy of an L2-regularized logistic regression
    separating ``fake`` from ``real`` (classes weighted to balance), with a
    normal-approximation 95 % interval from the two per-class accuracies.

    Read it one way only: near 1, the samples are told apart from the real
    images (unfitted). At or below 0.5 they are not — and on two draws of one
    distribution cross-validation scores *below* 0.5 (0.33 on 40 + 40
    Gaussian points: leaving points out shifts each class's training mean
    away from them), so values under 0.5 carry no further meaning."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    real, fake = _two_sets(real, fake, what)
    x = np.concatenate([real, fake])
    y = np.r_[np.zeros(len(real), int), np.ones(len(fake), int)]
    n_folds = min(int(folds), len(real), len(fake))
    model = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # convergence chatter on separable data: the accuracy is what counts
        predicted = cross_val_predict(model, x, y, cv=StratifiedKFold(n_folds, shuffle=True, random_state=seed))
    tnr = float((predicted[y == 0] == 0).mean())
    tpr = float((predicted[y == 1] == 1).mean())
    accuracy = (tnr + tpr) / 2
    se = 0.5 * math.sqrt(max(tnr * (1 - tnr), 0.25 / len(real)) / len(real)
                         + max(tpr * (1 - tpr), 0.25 / len(fake)) / len(fake))
    return TwoSampleResult(accuracy, max(0.0, accuracy - 1.96 * se), min(1.0, accuracy + 1.96 * se),
                           len(real), len(fake))


def nearest_neighbour_two_sample(real, fake, *, seed: int = 0, what: str = "samples") -> TwoSampleResult:
    """The leave-one-out 1-nearest-neighbour two-sample test (Xu et al. 2018,
    "An empirical study on evaluation metrics of GANs") at equal class sizes
    (the larger set cut into chunks of the smaller's size, pooled): 0.5 the
    sets mix; near 1 they lie apart; well below 0.5 every sample's nearest
    image is a real one and vice versa — copies. A blurred or noised copy
    still has its original as nearest neighbour, so this test reads copying,
    not quality: :func:`classifier_two_sample` reads quality. Interval:
    Wilson 95 % over the pooled predictions (not independent: a rough guide)."""
    from ..memorization import wilson_interval

    real, fake = _two_sets(real, fake, what)
    correct = total = 0.0
    for r, f in _balanced_pairs(real, fake, seed):
        pooled = np.concatenate([r, f])
        label = np.r_[np.zeros(len(r), int), np.ones(len(f), int)]
        d = cdist(pooled, pooled)
        np.fill_diagonal(d, np.inf)
        tied = d == d.min(axis=1, keepdims=True)   # equally near images of both classes count by their share
        correct += float(((tied & (label[None, :] == label[:, None])).sum(axis=1) / tied.sum(axis=1)).sum())
        total += len(pooled)
    accuracy = correct / total
    low, high = wilson_interval(int(round(correct)), int(total))
    return TwoSampleResult(accuracy, low, high, len(real), len(fake))


@dataclass(frozen=True)
class CopyingResult:
    statistic: float         # C_T: ≪ 0 copying, ≫ 0 underfitting, NaN when no cell qualifies
    n_cells: int
    n_cells_used: int
    note: str = ""


def _nearest_distance(x: np.ndarray, training: np.ndarray) -> np.ndarray:
    return cdist(x, training).min(axis=1)


def copying_statistic(training, held_out, fake, *, n_cells: int = 5, min_fraction: float = 0.05,
                      seed: int = 0, what: str = "samples") -> CopyingResult:
    """Meehan et al.'s C_T. The training set is cut into ``n_cells`` k-means
    cells (fewer when it is small: at least 2 training images a cell); every
    held-out and generated image falls into the cell of its nearest centre.
    Cells holding fewer than ``min_fraction`` of the generated images (or no
    held-out image) are left out, as in the paper."""
    from sklearn.cluster import KMeans

    training = _features(training, "training images")
    held_out = _features(held_out, "held-out images")
    fake = _features(fake, what)
    if len(held_out) < 2 or len(fake) < 2:
        raise ValueError(f"{what}: the copying test needs at least 2 held-out and 2 generated images")
    cells = max(1, min(int(n_cells), len(training) // 2))
    if cells > 1:
        kmeans = KMeans(n_clusters=cells, n_init=10, random_state=seed).fit(training)
        cell_of_test, cell_of_fake = kmeans.predict(held_out), kmeans.predict(fake)
    else:
        cell_of_test, cell_of_fake = np.zeros(len(held_out), int), np.zeros(len(fake), int)
    d_test = _nearest_distance(held_out, training)
    d_fake = _nearest_distance(fake, training)
    z_sum = weight_sum = 0.0
    used = 0
    for c in range(cells):
        t, f = d_test[cell_of_test == c], d_fake[cell_of_fake == c]
        if len(t) == 0 or len(f) < max(1, math.ceil(min_fraction * len(fake))):
            continue
        u = stats.mannwhitneyu(f, t, alternative="two-sided").statistic   # pairs with fake farther than test
        m, n = len(f), len(t)
        z = (u - m * n / 2) / math.sqrt(m * n * (m + n + 1) / 12)
        weight = len(t) / len(held_out)
        z_sum += weight * z
        weight_sum += weight
        used += 1
    if used == 0:
        return CopyingResult(float("nan"), cells, 0, "no cell holds enough generated and held-out images")
    return CopyingResult(z_sum / weight_sum, cells, used)
