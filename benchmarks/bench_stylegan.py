"""Training speed of StyleGAN2-ADA (images/s) at a profile's settings.

    .venv/bin/python benchmarks/bench_stylegan.py --profile cpu --threads 2
    .venv/bin/python benchmarks/bench_stylegan.py --profile paper --device cuda
    .venv/bin/python benchmarks/bench_stylegan.py --profile reference --threads 1 \
        --set mixed_precision=false          # float32 against the profile's bf16

Builds the trainer of ``configs/profiles/<profile>.yaml`` (train_stylegan
section merged onto configs/phantom.yaml) on random uint8 images of the
profile's size in a temporary results folder, runs a few warm-up steps and
then times ``--steps`` full training steps (G, lazy PL, D, lazy R1, EMA,
ADA; R1/PL intervals included in proportion). Prints one JSON line: wall
and CPU seconds per step, images/s, parameter counts.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from helpers import common
from helpers import stylegan as sg
from helpers.config import resolve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--size", type=int, default=None, help="image size (default: the profile's)")
    parser.add_argument("--channels", type=int, default=5)
    parser.add_argument("--steps", type=int, default=32, help="timed steps (a multiple of 16 covers R1 evenly)")
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--augment-p", type=float, default=None, help="fix ADA's p (default: the profile's start)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override train_stylegan settings, e.g. mixed_precision=false")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {key: yaml.safe_load(value) for key, _, value in (item.partition("=") for item in args.set)}
    settings = resolve("phantom", args.profile, {"train_stylegan": overrides})
    config = settings["train_stylegan"]
    size = args.size or settings["prepare_data"].image_size  # the profile's images
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        images = np.random.default_rng(0).integers(0, 256, (256, args.channels, size, size), dtype=np.uint8)
        np.save(data_dir / "train.npy", images)
        common.write_json(data_dir / "meta.json", {"channels": args.channels, "image_size": size})
        data = sg.TrainingImages(tmp, seed=0)
        trainer = sg.StyleGANTrainer(config, data.shape, device=args.device)
        if args.augment_p is not None:
            trainer.augment.p, trainer.augment.target = args.augment_p, None
        for _ in range(args.warmup):
            trainer.step(data)
        sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
        sync()
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for _ in range(args.steps):
            trainer.step(data)
        sync()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    result = {
        "profile": args.profile, "image": [args.channels, size, size], "batch_size": config.batch_size,
        "device": str(trainer.device), "threads": torch.get_num_threads(),
        "augment_p": trainer.augment.p, "mixed_precision": config.mixed_precision, "steps": args.steps,
        "wall_s_per_step": round(wall / args.steps, 4), "cpu_s_per_step": round(cpu / args.steps, 4),
        "images_per_s": round(args.steps * config.batch_size / wall, 2),
        "G_params": sg.count_parameters(trainer.G), "D_params": sg.count_parameters(trainer.D),
        "gpu": torch.cuda.get_device_name(0) if trainer.device.type == "cuda" else None,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
