"""Which fit measure tells fitted from unfitted on *this* data? Run before any
model is judged by the measures: every measure on generators whose fit is
known by construction, at every training-set size of a prepared run.

    .venv/bin/python benchmarks/probe_fit_measures.py results/phantom [--samples 64]

Known generators (no model is trained): ``copier`` (training images drawn
with replacement: fitted, copying), ``held_out`` (the held-out subjects' real
slices: what a generator that learnt the population and copies nothing
would give), ``unseen`` (training-pool slices of subjects outside this
size's subset), the Gaussian control (``gaussian``, independent pixels) and
the full-covariance Gaussian (``gauss_full``, a model of the training images,
not a control), ``blur`` (copies blurred by σ = 1
pixel), ``speckle`` (copies plus Gaussian noise of σ 12 grey levels) and
``mean_blob`` (the smoothed mean training image, every sample alike: the
featureless oval of an untrained generator). A measure fit for purpose
calls the Gaussian control, blur, speckle and mean blob unfitted at every size.

Columns, in the ``full`` feature space: precision/recall/density/coverage
against the training subset (``T``) and against the held-out images
(``H``); the logistic two-sample accuracy against T and H (``lr``: near 1 =
told apart) and the 1-NN one against T (``nn``: well below 0.5 = copies);
Meehan et al.'s C_T (≪ 0 copying, ≫ 0 underfitting). In the ``texture``
space: the logistic two-sample accuracy against the whole training pool
(``P``) and against T.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from helpers.fit import (
    FeatureSpace,
    GaussianControl,
    classifier_two_sample,
    copying_statistic,
    nearest_neighbour_two_sample,
    prdc,
)


def known_generators(train: np.ndarray, pool: np.ndarray, held_out: np.ndarray, n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    copies = train[rng.integers(0, len(train), n)]
    unseen = pool[len(train):][:n]          # the size folders hold the pool's first images, in split order
    smooth_mean = gaussian_filter(train.mean(axis=0), sigma=(0, 2, 2))
    return {
        "copier": copies,
        "held_out": held_out,
        "unseen": unseen if len(unseen) >= 2 else held_out,
        "gaussian": GaussianControl(train).sample(range(n)),
        "gauss_full": GaussianControl(train, covariance="full").sample(range(n)),
        "blur": np.clip(gaussian_filter(copies.astype(float), sigma=(0, 0, 1, 1)), 0, 255).round().astype(np.uint8),
        "speckle": np.clip(copies + rng.normal(0, 12, copies.shape), 0, 255).round().astype(np.uint8),
        "mean_blob": np.repeat(np.clip(smooth_mean, 0, 255).round().astype(np.uint8)[None], n, axis=0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a prepared results folder with sizes/ (step 01 done)")
    parser.add_argument("--samples", type=int, default=64)
    args = parser.parse_args()
    pool = np.load(args.run / "data" / "train.npy")
    held_out = np.load(args.run / "data" / "test.npy")
    real = np.concatenate([pool, held_out])
    space, texture = FeatureSpace.fit(real), FeatureSpace.fit(real, kind="texture")
    f_held = space.embed(held_out, what="held-out images")
    t_pool = texture.embed(pool, what="training pool")
    for folder in sorted((args.run / "sizes").glob("n*")):
        train = np.load(folder / "data" / "train.npy")
        f_train = space.embed(train, what=f"{folder.name} training images")
        t_train = texture.embed(train, what=f"{folder.name} training images")
        print(f"== {folder.name}: {len(train)} training images, {len(held_out)} held out")
        for name, images in known_generators(train, pool, held_out, args.samples).items():
            f = space.embed(images, what=name)
            p_t, p_h = prdc(f_train, f, what=name), prdc(f_held, f, what=name)
            lr_t, lr_h = classifier_two_sample(f_train, f, what=name), classifier_two_sample(f_held, f, what=name)
            nn_t = nearest_neighbour_two_sample(f_train, f, what=name)
            ct = copying_statistic(f_train, f_held, f, what=name)
            t = texture.embed(images, what=name)
            tex_p, tex_t = classifier_two_sample(t_pool, t, what=name), classifier_two_sample(t_train, t, what=name)
            print(f"{name:10s} T: P {p_t['precision']:.2f} R {p_t['recall']:.2f} D {p_t['density']:.2f} "
                  f"C {p_t['coverage']:.2f} (k {p_t['k_used']}) | H: P {p_h['precision']:.2f} R {p_h['recall']:.2f} "
                  f"D {p_h['density']:.2f} C {p_h['coverage']:.2f} | lr T {lr_t.accuracy:.2f} H {lr_h.accuracy:.2f} "
                  f"nn T {nn_t.accuracy:.2f} | C_T {ct.statistic:6.2f} ({ct.n_cells_used}/{ct.n_cells} cells) | "
                  f"texture lr P {tex_p.accuracy:.2f} T {tex_t.accuracy:.2f}")


if __name__ == "__main__":
    main()
