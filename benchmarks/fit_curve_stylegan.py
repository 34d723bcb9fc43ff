"""Fit and memorization of StyleGAN against images seen, for the recipe search
(issue 22): train on one size folder of a prepared run keeping every
checkpoint, then score each checkpoint's EMA generator beside the references.

    .venv/bin/python benchmarks/fit_curve_stylegan.py results/phantom sizes/n00016 /tmp/sg16 \\
        --set total_kimg=80 checkpoint_kimg=8 [--samples 64] [--eval-only]

The training settings start from the ``cpu`` profile's StyleGAN with
StyleGAN2-ADA's small-image choices (no style mixing, 2 mapping layers, lr
0.0025, small R1 γ, no path length) and ADA that reacts within the run
(``ada_kimg`` 10); ``--set KEY=VALUE`` overrides any field of
``TrainStyleGANSettings``. Columns per checkpoint: recall against the training
subset (full features), the texture two-sample accuracy against the whole
training pool and against the subset, the 1-NN two-sample accuracy against
the subset (see ``benchmarks/probe_fit_measures.py``), and the paper's
criterion on T1ce (best r above the held-out images' 99th percentile) with
the median best r. Look at the grids under ``OUT/stylegan/grids`` too: the
measures are not yet a declared reading rule.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import yaml

from helpers import checkpoints
from helpers.common import read_json
from helpers.config.schema import TrainStyleGANSettings
from helpers.correlation import top_matches
from helpers.fit import FeatureSpace, GaussianControl, classifier_two_sample, nearest_neighbour_two_sample, prdc
from helpers.stylegan import Generator, generate_images, train

START = dict(num_threads=1, z_dim=64, w_dim=64, mapping_layers=2, channel_base=1024, channel_max=64, batch_size=16,
             lr_g=0.0025, lr_d=0.0025, r1_gamma=0.0128, pl_weight=0.0, style_mixing_prob=0.0, ema_kimg=2.0,
             ada_kimg=10, checkpoint_kimg=8, keep_checkpoints=0, log_every=50, grid_seeds=8, total_kimg=80)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a prepared results folder (step 01 done)")
    parser.add_argument("size", help="the size folder inside it, e.g. sizes/n00016")
    parser.add_argument("out", type=Path, help="where to train (its data/ is copied from the size folder)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--channel", type=int, default=2, help="the headline channel (2: T1ce in the phantom)")
    parser.add_argument("--eval-only", action="store_true")
    args = parser.parse_args()

    settings = dict(START)
    for item in args.set:
        key, _, value = item.partition("=")
        settings[key] = yaml.safe_load(value)
    cfg = TrainStyleGANSettings(**settings)
    if not args.eval_only:
        (args.out / "data").mkdir(parents=True, exist_ok=True)
        for name in ("train.npy", "train.csv", "meta.json"):
            shutil.copy2(args.run / args.size / "data" / name, args.out / "data" / name)
        print(train(args.out, cfg, seed=0, progress=True))

    subset = np.load(args.out / "data" / "train.npy")
    pool, held_out = np.load(args.run / "data" / "train.npy"), np.load(args.run / "data" / "test.npy")
    real = np.concatenate([pool, held_out])
    full, texture = FeatureSpace.fit(real), FeatureSpace.fit(real, kind="texture")
    f_subset, t_pool, t_subset = full.embed(subset), texture.embed(pool), texture.embed(subset)
    baseline = top_matches(held_out, subset, channels=args.channel, progress=False).correlation[:, 0]
    p99 = float(np.percentile(baseline, 99))

    def scores(name: str, images: np.ndarray) -> str:
        f, t = full.embed(images, what=name), texture.embed(images, what=name)
        r = top_matches(images, subset, channels=args.channel, progress=False).correlation[:, 0]
        tex_pool, tex_subset = classifier_two_sample(t_pool, t), classifier_two_sample(t_subset, t)
        nearest = nearest_neighbour_two_sample(f_subset, f)
        return (f"{name:14s} recall {prdc(f_subset, f)['recall']:.2f}  texture pool {tex_pool.accuracy:.2f}"
                f"  subset {tex_subset.accuracy:.2f}  1-NN {nearest.accuracy:.2f}"
                f"  | r > p99 {np.mean(r > p99):.2f}  median r {np.median(r):.3f}")

    print(f"{len(subset)} training images; held-out p99 of channel {args.channel}: {p99:.4f}")
    rng = np.random.default_rng(0)
    print(scores("held-out", held_out))
    print(scores("copier", subset[rng.integers(0, len(subset), args.samples)]))
    print(scores("gaussian", GaussianControl(subset).sample(range(args.samples))))
    generator_kwargs = read_json(args.out / "stylegan" / "generator.json")["generator"]
    for path in sorted((args.out / "stylegan" / "checkpoints").glob("step_*.safetensors")):
        G = Generator(**generator_kwargs)
        G.load_state_dict(checkpoints.load_state(path)["G_ema"])
        step = int(path.stem.split("_")[1])
        images = generate_images(G.eval().requires_grad_(False), list(range(args.samples)))
        print(scores(f"{step * cfg.batch_size / 1000:.0f} kimg", images), flush=True)


if __name__ == "__main__":
    main()
