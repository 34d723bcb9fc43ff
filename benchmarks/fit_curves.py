"""Fit and memorization against images seen, for the recipe search (issue 22):
train one model on one size folder of a prepared run keeping every
checkpoint, then score each checkpoint's EMA weights beside the references
with the study's fit table (``helpers.fit.fit_table``, the pre-declared
reading rule) and the paper's criterion.

    .venv/bin/python benchmarks/fit_curves.py stylegan results/phantom sizes/n00016 /tmp/sg16 \\
        --set total_kimg=80 checkpoint_kimg=8 [--samples 64] [--eval-only] [--every 2]
    .venv/bin/python benchmarks/fit_curves.py diffusion results/phantom sizes/n00016 /tmp/dm16 \\
        --set max_steps=3000 checkpoint_every=500

Training settings start from the ``cpu`` profile (StyleGAN with StyleGAN2-ADA's
small-image choices: no style mixing, ``ada_kimg`` 10); ``--set KEY=VALUE``
overrides any field of the model's settings. One line per checkpoint:
images seen, the sharpness ratio, 1-NN and texture two-sample accuracy
against the training subset, coverage, C_T, the rule's verdict, and the
paper's criterion on the headline channel (best r above the held-out images'
99th percentile) with the median best r. A CSV of the same lands in OUT.
Look at the grids too (``OUT/stylegan/grids``).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import torch
import yaml

from helpers import config, run_fit
from helpers.correlation import top_matches
from helpers.fit import fit_table

CPU_PROFILE = Path(__file__).resolve().parents[1] / "configs" / "profiles" / "cpu.yaml"
STYLEGAN_START = dict(style_mixing_prob=0.0, ada_kimg=10, checkpoint_kimg=8, keep_checkpoints=0, log_every=50,
                      total_kimg=80, num_threads=1)
DIFFUSION_START = dict(checkpoint_every=500, keep_checkpoints=0, max_steps=3000, num_threads=1)
RULE = run_fit.rule_from(config.build("correlate", {}))   # step 05's declared rule, from the schema


def settings_for(model: str, overrides: list[str]):
    section = "train_stylegan" if model == "stylegan" else "train_diffusion"
    values = dict(yaml.safe_load(CPU_PROFILE.read_text())[section])
    values.update(STYLEGAN_START if model == "stylegan" else DIFFUSION_START)
    for item in overrides:
        key, _, value = item.partition("=")
        values[key] = yaml.safe_load(value)
    return config.build(section, values)


def stylegan_checkpoints(out: Path, cfg, n: int):
    from helpers.stylegan import checkpoint_generator, checkpoint_steps, generate_images

    for step in checkpoint_steps(out):
        yield step * cfg.batch_size, generate_images(checkpoint_generator(out, step, "cpu"), list(range(n)))


def diffusion_checkpoints(out: Path, cfg, n: int):
    from helpers.diffusion import checkpoint_pipeline, checkpoint_steps, make_generate

    for step in checkpoint_steps(out):
        yield step * cfg.batch_size, make_generate(checkpoint_pipeline(out, step), device="cpu")(list(range(n)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=["stylegan", "diffusion"])
    parser.add_argument("run", type=Path, help="a prepared results folder (step 01 done)")
    parser.add_argument("size", help="the size folder inside it, e.g. sizes/n00016")
    parser.add_argument("out", type=Path, help="where to train (its data/ is copied from the size folder)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--channel", type=int, default=2, help="the headline channel (2: T1ce in the phantom)")
    parser.add_argument("--every", type=int, default=1, help="score every k-th checkpoint")
    parser.add_argument("--eval-only", action="store_true")
    args = parser.parse_args()

    cfg = settings_for(args.model, args.set)
    torch.set_num_threads(max(1, int(cfg.num_threads or 1)))  # before training: two probes side by side
    if not args.eval_only:                                     # with 2 threads each run ~7× slower
        (args.out / "data").mkdir(parents=True, exist_ok=True)
        for name in ("train.npy", "train.csv", "meta.json"):
            shutil.copy2(args.run / args.size / "data" / name, args.out / "data" / name)
        if args.model == "stylegan":
            from helpers.stylegan import train
            print(train(args.out, cfg, seed=0, progress=True))
        else:
            from helpers.diffusion import train
            print(train(args.out, cfg, progress=True, device="cpu"))

    subset = np.load(args.out / "data" / "train.npy")
    pool, held_out = np.load(args.run / "data" / "train.npy"), np.load(args.run / "data" / "test.npy")
    real = np.concatenate([pool, held_out])
    baseline = top_matches(held_out, subset, channels=args.channel, progress=False).correlation[:, 0]
    p99 = float(np.percentile(baseline, 99))
    print(f"{len(subset)} training images; held-out p99 of channel {args.channel}: {p99:.4f}")

    if args.model == "stylegan":
        series = stylegan_checkpoints(args.out, cfg, args.samples)
    else:
        series = diffusion_checkpoints(args.out, cfg, args.samples)
    rows, first = [], True
    for i, (seen, images) in enumerate(series):
        if i % args.every:
            continue
        table = fit_table({"model": images}, training=subset, held_out=held_out, real=real, rule=RULE)
        r = top_matches(images, subset, channels=args.channel, progress=False).correlation[:, 0]
        table["above_p99"] = np.nan
        table.loc[table.model == "model", "above_p99"] = float(np.mean(r > p99))
        table.loc[table.model == "model", "median_r"] = float(np.median(r))
        table["images_seen"] = seen
        show = table if first else table[table.model == "model"]
        for _, row in show.iterrows():
            label = f"{seen / 1000:.1f} kimg" if row.model == "model" else row.model
            print(f"{label:17s} sharp {row.sharpness:.2f} nn {row.nn_accuracy:.2f} tex {row.texture_accuracy:.2f} "
                  f"cov {row.coverage:.2f} C_T {row.copying:6.2f} | {'FITTED' if row.fitted else 'not fitted'}"
                  + (f" | r>p99 {row.above_p99:.2f} median r {row.median_r:.3f}" if row.model == "model" else "")
                  + ("" if row.fitted else f"  ({row.why})"), flush=True)
        rows.append(table)
        first = False
    import pandas as pd
    pd.concat(rows).to_csv(args.out / "fit_curve.csv", index=False)


if __name__ == "__main__":
    main()
