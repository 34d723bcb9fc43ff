"""Both models at paper shapes on one GPU, in bf16: a few training steps,
a few samples, images/s (part 3 of benchmarks/gpu_check.sh).

    .venv/bin/python benchmarks/gpu_models.py [--json out.json]
    .venv/bin/python benchmarks/gpu_models.py --small --device cpu   # the code paths, in seconds, on a CPU

Diffusion training is timed twice on the same model, batch and precision:
our loop (``helpers.diffusion.train_step``: EMA, clipping, LR schedule) and
a plain diffusers loop as in diffusers' ``train_unconditional`` example
(noise, ``add_noise``, UNet, MSE, AdamW) written here; the goal is ours ≥ 1.0×
of it. StyleGAN is the full training step (G, D, lazy R1/PL, EMA, ADA).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from helpers import common
from helpers import diffusion as dm
from helpers import stylegan as sg
from helpers.config import resolve


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _rate(step, batch: int, steps: int, warmup: int, device: str) -> float:
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * batch / (time.perf_counter() - start)


def diffusion_rates(settings, channels: int, size: int, device: str, steps: int, warmup: int) -> dict:
    setup = dm.setup_training(settings, channels, size, device=device)
    dev = setup.accelerator.device
    images = torch.rand(settings.batch_size, channels, size, size, device=dev) * 2 - 1
    generator = torch.Generator(device=dev).manual_seed(0)
    ours = _rate(lambda: dm.train_step(setup, images, generator), settings.batch_size, steps, warmup, device)
    setup = None  # free the first model before building the second

    # a plain diffusers loop, as in the train_unconditional example, same model, batch and precision
    unet = dm.build_unet(settings, channels, size).to(dev)
    scheduler = dm.build_noise_scheduler(settings)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=float(settings.learning_rate))
    amp = settings.mixed_precision in ("bf16", "fp16") and device == "cuda"
    dtype = torch.bfloat16 if settings.mixed_precision == "bf16" else torch.float16

    def plain_step():
        noise = torch.randn_like(images)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (images.shape[0],), device=dev)
        with torch.autocast(device_type=dev.type, dtype=dtype, enabled=amp):
            prediction = unet(scheduler.add_noise(images, noise, t), t, return_dict=False)[0]
        loss = F.mse_loss(prediction.float(), noise.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    plain = _rate(plain_step, settings.batch_size, steps, warmup, device)

    # sampling: images per second per 1000 denoising steps, batch of 16
    unet.eval()
    x = torch.randn(16, channels, size, size, device=dev)
    t = torch.full((16,), 10, device=dev)

    def denoise():
        with torch.no_grad(), torch.autocast(device_type=dev.type, dtype=dtype, enabled=amp):
            unet(x, t, return_dict=False)

    per_step = _rate(denoise, 16, max(3, steps // 2), 1, device)
    return {"parameters": dm.count_parameters(unet), "batch_size": settings.batch_size,
            "ours_images_per_s": round(ours, 2), "plain_diffusers_loop_images_per_s": round(plain, 2),
            "ours_vs_plain": round(ours / plain, 3), "sampling_images_per_s_per_1000_steps": round(per_step / 1000, 4)}


def stylegan_rates(settings, channels: int, size: int, device: str, steps: int, warmup: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "data").mkdir()
        np.save(Path(tmp) / "data" / "train.npy",
                np.random.default_rng(0).integers(0, 256, (64, channels, size, size), dtype=np.uint8))
        common.write_json(Path(tmp) / "data" / "meta.json", {"channels": channels, "image_size": size})
        data = sg.TrainingImages(tmp, seed=0)
        trainer = sg.StyleGANTrainer(settings, data.shape, device=device)
        train = _rate(lambda: trainer.step(data), settings.batch_size, steps, warmup, device)
        z = torch.randn(32, settings.z_dim, device=trainer.device)

        def generate():
            with torch.no_grad():
                trainer.G_ema(z)

        sample = _rate(generate, 32, max(3, steps // 2), 1, device)
        return {"G_parameters": sg.count_parameters(trainer.G), "batch_size": settings.batch_size,
                "training_images_per_s": round(train, 2), "sampling_images_per_s": round(sample, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="smoke shapes: check the code paths only")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_models: no CUDA device (use --device cpu --small to check the code paths)")
    resolved = resolve("phantom", "smoke" if args.small else "paper")
    size = resolved["prepare_data"].image_size if args.small else 256
    precision = "bf16" if args.device == "cuda" else "no"
    diffusion = dataclasses.replace(resolved["train_diffusion"], mixed_precision=precision)
    stylegan = dataclasses.replace(resolved["train_stylegan"], mixed_precision=args.device == "cuda")
    result = {"device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
              "torch": torch.__version__, "image": [5, size, size], "precision": precision}
    result["diffusion"] = diffusion_rates(diffusion, 5, size, args.device, args.steps, 3)
    print(json.dumps({"diffusion": result["diffusion"]}), flush=True)
    result["stylegan"] = stylegan_rates(stylegan, 5, size, args.device, args.steps, 3)
    print(json.dumps({"stylegan": result["stylegan"]}), flush=True)
    if args.device == "cuda":
        result["max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
