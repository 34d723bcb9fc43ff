"""How to spend a CPU's cores on the size sweep: training images/s of each
model at a profile's settings, three ways, measured in one run.

    .venv/bin/python benchmarks/bench_side_by_side.py --profile cpu --seconds 60

- ``1 training, 1 thread``: one process, ``torch.set_num_threads(1)``;
- ``1 training, N threads``: one process using every core;
- ``N trainings side by side``: N processes of one thread each (what the
  sweep does with ``parallel_runs: N``, through ``helpers.parallel.run_side_by_side``),
  reported as the sum of their images/s.

Each measurement trains the real model (StyleGAN2-ADA: G, D, lazy R1/PL,
EMA, ADA; diffusion: one UNet step with EMA) on random uint8 images of the
profile's shape, for a fixed wall time after a warm-up. Prints one JSON
line per model and a table; not a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def _images_per_s(model: str, profile: str, seconds: float, threads: int) -> float:
    """Train ``model`` for ``seconds`` after a warm-up; images per second."""
    import torch

    from helpers import common
    from helpers import diffusion as dm
    from helpers import stylegan as sg
    from helpers.config import resolve

    torch.set_num_threads(threads)
    resolved = resolve("phantom", profile)
    size, channels = resolved["prepare_data"].image_size, 5
    if model == "stylegan":
        settings = resolved["train_stylegan"]
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "data").mkdir()
            images = np.random.default_rng(0).integers(0, 256, (256, channels, size, size), dtype=np.uint8)
            np.save(Path(tmp) / "data" / "train.npy", images)
            common.write_json(Path(tmp) / "data" / "meta.json", {"channels": channels, "image_size": size})
            data = sg.TrainingImages(tmp, seed=0)
            trainer = sg.StyleGANTrainer(settings, data.shape, device="cpu")
            step = lambda: trainer.step(data)  # noqa: E731
            batch = settings.batch_size
            return _time(step, batch, seconds)
    settings = dataclasses.replace(resolved["train_diffusion"], mixed_precision="no", compile=False)
    setup = dm.setup_training(settings, channels, size, device="cpu")
    images = torch.rand(settings.batch_size, channels, size, size) * 2 - 1
    generator = torch.Generator().manual_seed(0)
    return _time(lambda: dm.train_step(setup, images, generator), settings.batch_size, seconds)


def _time(step, batch: int, seconds: float) -> float:
    for _ in range(3):
        step()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        n += 1
    return n * batch / (time.perf_counter() - start)


def main() -> None:
    from helpers import parallel

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--models", default="stylegan,diffusion")
    parser.add_argument("--seconds", type=float, default=60.0, help="timed wall seconds per measurement")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    rows = []
    for model in args.models.split(","):
        one = parallel.run_side_by_side(_images_per_s, [(model, args.profile, args.seconds, 1)])[0]
        many = parallel.run_side_by_side(_images_per_s, [(model, args.profile, args.seconds, args.cores)])[0]
        side = parallel.run_side_by_side(_images_per_s, [(model, args.profile, args.seconds, 1)] * args.cores,
                                      workers=args.cores, threads_per_worker=1)
        result = {"model": model, "profile": args.profile, "cores": args.cores,
                  "one_thread": round(one, 1), f"one_training_{args.cores}_threads": round(many, 1),
                  f"{args.cores}_side_by_side": [round(v, 1) for v in side], "side_by_side_total": round(sum(side), 1),
                  "side_by_side_vs_threads": round(sum(side) / many, 2)}
        print(json.dumps(result), flush=True)
        rows.append(result)
    print(f"\n{'model':10s} {'1 thread':>10s} {'1×' + str(args.cores) + ' threads':>14s} "
          f"{str(args.cores) + ' side by side':>16s} {'ratio':>7s}   (training images/s, {os.cpu_count()} cores)")
    for r in rows:
        print(f"{r['model']:10s} {r['one_thread']:10.1f} {r[f'one_training_{args.cores}_threads']:14.1f} "
              f"{r['side_by_side_total']:16.1f} {r['side_by_side_vs_threads']:7.2f}")


if __name__ == "__main__":
    main()
