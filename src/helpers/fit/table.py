"""One size's fit table: every fit measure for every model's samples and for
the references, with intervals, the reading rule's verdict and, per
measure, whether it calls the underfitting control unfitted.

Rows are models (their role: ``model``, ``control`` or ``reference``);
the held-out images are the reference every verdict is read against.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .controls import GaussianControl
from .features import FeatureSpace
from .measures import classifier_two_sample, copying_statistic, nearest_neighbour_two_sample, prdc
from .reading import MEASURE_DIRECTIONS, FitRule, measure_verdict
from .sharpness import sharpness_ratio

HELD_OUT = "held_out"
UNDERFIT_CONTROL = "gaussian_control"
COPIER = "copier"


def reference_samples(training: np.ndarray, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The two references a fit table always has beside the held-out images:
    the Gaussian control and a copier (training images drawn with
    replacement, what a perfect memorizer emits), ``n`` images each."""
    rng = np.random.default_rng(seed)
    return {UNDERFIT_CONTROL: GaussianControl(training).sample(range(seed, seed + n)),
            COPIER: training[rng.integers(0, len(training), n)]}


def _check(images, what: str) -> np.ndarray:
    x = np.asarray(images)
    if x.ndim != 4 or len(x) < 2:
        raise ValueError(f"{what}: fit measures need at least 2 images as N×C×H×W, got shape {x.shape}")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise ValueError(f"{what}: the images hold NaN or Inf (a diverged model?)")
    return x


def score(samples, *, training, held_out, full: FeatureSpace, texture: FeatureSpace, seed: int = 0,
          what: str = "samples") -> dict[str, float]:
    """Every fit measure of one set of samples against the training subset
    (fidelity) and, for the copying test, the held-out images."""
    samples = _check(samples, what)
    f_train, f_fake, f_held = full.embed(training), full.embed(samples, what=what), full.embed(held_out)
    t_train, t_fake = texture.embed(training), texture.embed(samples, what=what)
    sharp = sharpness_ratio(training, samples, seed=seed, what=what)
    nearest = nearest_neighbour_two_sample(f_train, f_fake, seed=seed, what=what)
    logistic = classifier_two_sample(t_train, t_fake, seed=seed, what=what)
    k = max(1, min(5, len(training) - 1, len(samples) - 1))
    balls = prdc(t_train, t_fake, k=k, seed=seed, what=what)
    copying = copying_statistic(f_train, f_held, f_fake, seed=seed, what=what)
    return {
        "n": len(samples),
        "sharpness": sharp.ratio, "sharpness_low": sharp.ci_low, "sharpness_high": sharp.ci_high,
        "nn_accuracy": nearest.accuracy, "nn_low": nearest.ci_low, "nn_high": nearest.ci_high,
        "texture_accuracy": logistic.accuracy, "texture_low": logistic.ci_low, "texture_high": logistic.ci_high,
        **{name: balls[name] for name in ("precision", "recall", "density", "coverage")},
        "copying": copying.statistic,
    }


def fit_table(generated: Mapping[str, np.ndarray], *, training, held_out, real, rule: FitRule,
              roles: Mapping[str, str] | None = None, seed: int = 0,
              references: Sequence[str] = (UNDERFIT_CONTROL, COPIER)):
    """The table (pandas) for one training subset. ``generated`` maps a model
    name to its samples; ``roles`` names the controls among them (default:
    ``model``). The held-out images are scored as a reference row; the
    Gaussian control and a copier (those of ``references``) are added when
    ``generated`` lacks them."""
    import pandas as pd

    training, held_out = _check(training, "training images"), _check(held_out, "held-out images")
    real = _check(real, "real images")
    roles = dict(roles or {})
    n = max((len(s) for s in generated.values()), default=64)
    sets = dict(generated)
    for name, images in reference_samples(training, n, seed).items():
        if name in references and name not in sets:
            sets[name], roles[name] = images, "control" if name == UNDERFIT_CONTROL else "reference"
    full, texture = FeatureSpace.fit(real), FeatureSpace.fit(real, kind="texture")
    ref = score(held_out, training=training, held_out=held_out, full=full, texture=texture, seed=seed, what=HELD_OUT)
    rows = [{"model": HELD_OUT, "role": "reference", **ref}]
    for name, images in sets.items():
        rows.append({"model": name, "role": roles.get(name, "model"),
                     **score(images, training=training, held_out=held_out, full=full, texture=texture,
                             seed=seed, what=name)})
    for row in rows:
        row["fitted"], row["why"] = rule.judge(row, ref)
    table = pd.DataFrame(rows)
    table.attrs["n_training"] = len(training)
    return table


def measure_check(table) -> dict[str, bool]:
    """Per measure: does it, judged alone against the held-out images, call
    the Gaussian control unfitted? (``sharpness`` by the rule's bounds.)"""
    ref = table.set_index("model").loc[HELD_OUT]
    control = table.set_index("model").loc[UNDERFIT_CONTROL]
    out = {name: not measure_verdict(name, float(control[name]), float(ref[name])) for name in MEASURE_DIRECTIONS}
    out["sharpness"] = "sharpness" in str(control["why"])
    return out
