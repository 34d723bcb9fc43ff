"""Training and sampling speed of the diffusion model, per speed option.

Measures, for a profile's model (``configs/profiles/<profile>.yaml``,
section ``train_diffusion``) on random images of the profile's size:

- training images/s of the real training step (ε-MSE, clipping, AdamW,
  EMA; :func:`helpers.diffusion.train_step`) for the plain fp32 loop and
  for each speed option alone and combined;
- sampling images/s of the full ancestral loop (``num_train_timesteps``
  UNet evaluations per image), measured over a few denoising steps and
  scaled to the full loop.

Every speed-up is against the plain fp32 loop (torch's defaults, so cuDNN
may use TF32 for convolutions) measured in the same run. On
a shared machine each variant is timed in several round-robin rounds and
its best round kept (``--rounds``).
On CUDA the options are bf16 autocast, channels_last, fused AdamW and
torch.compile; on CPU fused AdamW, channels_last, the number of threads and
(with ``--compile``) torch.compile.

    python benchmarks/bench_diffusion.py --profile cpu
    python benchmarks/bench_diffusion.py --profile paper --device cuda --json bench_paper_h100.json
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import statistics
import sys
import time

import torch

from helpers import common, diffusion
from helpers.config import resolve


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def reset(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    torch._dynamo.reset()


def time_training(settings, channels, size, device, steps, warmup) -> dict:
    setup = diffusion.setup_training(settings, channels, size, device=device)
    images = torch.rand(settings.batch_size, channels, size, size, device=setup.accelerator.device) * 2 - 1
    generator = torch.Generator(device=setup.accelerator.device).manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(warmup):
        diffusion.train_step(setup, images, generator)
    sync(device)
    first = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        loss, _ = diffusion.train_step(setup, images, generator)
        sync(device)
        times.append(time.perf_counter() - t)
    assert torch.isfinite(loss)
    step = statistics.median(times)
    out = {"step_s": step, "images_per_s": settings.batch_size / step, "warmup_s": first,
           "n_params": diffusion.count_parameters(setup.unet), "options": setup.options}
    if device == "cuda":
        out["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
    del setup
    reset(device)
    return out


def time_sampling(settings, channels, size, device, batch, n_steps, autocast, channels_last, compile) -> dict:
    torch.manual_seed(0)
    unet = diffusion.build_unet(dataclasses.replace(settings, zero_init=False), channels, size).to(device).eval()
    if channels_last:
        unet.to(memory_format=torch.channels_last)
    model = torch.compile(unet) if compile else unet
    scheduler = diffusion.build_noise_scheduler(settings)
    seeds = list(range(batch))
    t0 = time.perf_counter()
    diffusion.sample_images(model, scheduler, seeds, "ddpm", 2, device, autocast, channels_last=channels_last)
    sync(device)
    first = time.perf_counter() - t0
    times = []
    for _ in range(3):
        t = time.perf_counter()
        diffusion.sample_images(model, scheduler, seeds, "ddpm", n_steps, device, autocast, channels_last=channels_last)
        sync(device)
        times.append((time.perf_counter() - t) / n_steps)
    per_step = statistics.median(times)
    T = settings.num_train_timesteps
    out = {"batch": batch, "denoise_step_s": per_step, "full_loop_s_per_image": per_step * T / batch,
           "images_per_s": batch / (per_step * T), "warmup_s": first, "num_train_timesteps": T}
    del model, unet
    reset(device)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="phantom")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--image-size", type=int, default=None, help="default: the profile's prepare_data.image_size")
    ap.add_argument("--channels", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=None, help="training batch; default: the profile's")
    ap.add_argument("--steps", type=int, default=None, help="timed training steps (default 20 on CUDA, 5 on CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5 on CUDA, 2 on CPU)")
    ap.add_argument("--sample-batch", type=int, default=None, help="sampling batch (default 64 on CUDA, 32 on CPU)")
    ap.add_argument("--sample-steps", type=int, default=None, help="timed denoising steps (default 20 CUDA, 5 CPU)")
    ap.add_argument("--threads", default="1,2", help="CPU: thread counts to compare (plain loop)")
    ap.add_argument("--compile", action="store_true", help="CPU: also measure torch.compile (slow to compile)")
    ap.add_argument("--skip-training", action="store_true")
    ap.add_argument("--skip-sampling", action="store_true")
    ap.add_argument("--rounds", type=int, default=None, help="round-robin repeats, best kept (default 1 CUDA, 3 CPU)")
    ap.add_argument("--json", default=None, help="write the figures to this JSON file")
    args = ap.parse_args(argv)

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    resolved = resolve(args.dataset, args.profile)
    size = args.image_size or resolved["prepare_data"].image_size
    base = resolved["train_diffusion"]
    if args.batch_size:
        base = dataclasses.replace(base, batch_size=args.batch_size)
    cuda = device == "cuda"
    steps = args.steps or (20 if cuda else 5)
    warmup = args.warmup or (5 if cuda else 2)
    sample_batch = args.sample_batch or (64 if cuda else 32)
    sample_steps = args.sample_steps or (20 if cuda else 5)
    args.rounds = args.rounds or (1 if cuda else 3)
    default_threads = torch.get_num_threads()

    plain = dict(mixed_precision="no", channels_last=False, fused_adamw=False, compile=False)
    if cuda:
        fast = dict(mixed_precision="bf16" if torch.cuda.is_bf16_supported() else "fp16")
        train_variants = {
            "plain fp32": {},
            "bf16 autocast": fast,
            "channels_last": dict(channels_last=True),
            "fused AdamW": dict(fused_adamw=True),
            "torch.compile": dict(compile=True),
            "bf16 + channels_last + fused": {**fast, "channels_last": True, "fused_adamw": True},
            "bf16 + channels_last + fused + compile": {**fast, "channels_last": True, "fused_adamw": True,
                                                       "compile": True},
        }
        sample_variants = {
            "plain fp32": ("no", False, False),
            "bf16 autocast": (fast["mixed_precision"], False, False),
            "bf16 + channels_last": (fast["mixed_precision"], True, False),
            "bf16 + channels_last + compile": (fast["mixed_precision"], True, True),
        }
    else:
        train_variants = {"plain fp32": {}, "fused AdamW": dict(fused_adamw=True),
                          "channels_last": dict(channels_last=True)}
        sample_variants = {"plain fp32": ("no", False, False), "channels_last": ("no", True, False)}
        if args.compile:
            train_variants["torch.compile"] = dict(compile=True)
            sample_variants["torch.compile"] = ("no", False, True)

    info = {"profile": args.profile, "device": torch.cuda.get_device_name(0) if cuda else "cpu",
            "torch": torch.__version__, "threads_default": default_threads, "image_size": size,
            "channels": args.channels, "batch_size": base.batch_size, "rounds": args.rounds, "model": {
                k: getattr(base, k) for k in ("block_out_channels", "layers_per_block", "attention_resolutions",
                                              "num_train_timesteps", "prediction_type")}}
    print(json.dumps(info), flush=True)
    results = {"info": info, "training": {}, "sampling": {}}

    # every variant is timed in each of `rounds` rounds (round-robin) and its best round kept:
    # on a shared machine the best round is the closest to the machine's own speed
    jobs = []
    if not args.skip_training:
        for name, over in train_variants.items():
            jobs.append(("training", name, None, lambda over=over: time_training(
                dataclasses.replace(base, **{**plain, **over}), args.channels, size, device, steps, warmup)))
        if not cuda:
            for n in (int(t) for t in args.threads.split(",") if t):
                jobs.append(("training", f"plain fp32, {n} thread(s)", n, lambda: time_training(
                    dataclasses.replace(base, **plain), args.channels, size, device, steps, warmup)))
    if not args.skip_sampling:
        for name, (amp, cl, comp) in sample_variants.items():
            jobs.append(("sampling", name, None, lambda amp=amp, cl=cl, comp=comp: time_sampling(
                base, args.channels, size, device, sample_batch, sample_steps, amp, cl, comp)))
        if not cuda:
            for n in (int(t) for t in args.threads.split(",") if t):
                jobs.append(("sampling", f"plain fp32, {n} thread(s)", n, lambda: time_sampling(
                    base, args.channels, size, device, sample_batch, sample_steps, "no", False, False)))
    for r in range(args.rounds):
        for kind, name, threads, job in jobs:
            torch.set_num_threads(threads or default_threads)
            try:
                out = job()
            except (torch.cuda.OutOfMemoryError, RuntimeError) as err:  # e.g. fp32 at 256² on a small GPU
                print(f"round {r + 1}: {kind} {name}: failed: {str(err).splitlines()[0]}", file=sys.stderr)
                results[kind].setdefault(name, {"error": str(err).splitlines()[0], "images_per_s": 0.0})
                reset(device)
                continue
            out["threads"] = torch.get_num_threads()
            best = results[kind].get(name)
            if best is None or out["images_per_s"] > best["images_per_s"]:
                out["rounds"] = r + 1
                results[kind][name] = out
            print(f"round {r + 1}: {kind:8s} {name:40s} {out['images_per_s']:9.2f} img/s", file=sys.stderr, flush=True)
    torch.set_num_threads(default_threads)

    for kind in ("training", "sampling"):
        ref = results[kind].get("plain fp32", {}).get("images_per_s")
        for name, out in results[kind].items():
            if "error" in out:
                print(f"{kind:8s} | {name:40s} | failed: {out['error']}")
                continue
            out["speedup_vs_plain_fp32"] = out["images_per_s"] / ref if ref else None
            extra = (f"{out['step_s'] * 1000:8.1f} ms/step" if kind == "training"
                     else f"{out['full_loop_s_per_image']:8.3f} s/image (full loop, batch {out['batch']})")
            speedup = f"×{out['speedup_vs_plain_fp32']:.2f}" if out["speedup_vs_plain_fp32"] else "-"
            print(f"{kind:8s} | {name:40s} | {out['images_per_s']:9.2f} img/s | {extra} | {speedup} | "
                  f"warm-up {out['warmup_s']:.1f} s", flush=True)

    if args.json:
        common.write_json(args.json, results)
        print("written", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
