"""Sampling the trained diffusion model: one generator per image, so an
image depends on its seed only, written resumably to
``samples/diffusion.npy``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..common import progress as progress_bar
from ..common import read_json, write_json
from ..layout import Run
from ..sampling import finished_samples, sample_to_npy, samples_path, to_uint8
from .loop import MODEL_NAME, pipeline_dir


def seeded_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """Image ``seed``'s own generator: its starting noise and every
    ancestral step's noise come from it alone, so the image does not depend
    on the batch it is drawn in. On a GPU the generator lives there (no
    per-step host-to-device copies of noise); CPU and CUDA give different
    streams, so an image is reproducible on the same kind of device."""
    return torch.Generator(device=device).manual_seed(int(seed))


def load_pipeline(path: str | os.PathLike):
    """The saved ``DDPMPipeline`` (EMA weights), from disk only."""
    from diffusers import DDPMPipeline

    path = Path(path)
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(
            f"{path}: no diffusers pipeline (model_index.json); train the diffusion model (notebook 03) first"
        )
    return DDPMPipeline.from_pretrained(str(path), local_files_only=True)


def sampling_scheduler(scheduler, sampler: str = "ddpm", num_inference_steps: int | None = None):
    """The trained scheduler for ``sampler='ddpm'`` (ancestral; all
    ``num_train_timesteps`` steps unless fewer are asked for) or a
    ``DDIMScheduler`` of the same noise schedule (η = 0) for ``'ddim'``."""
    from diffusers import DDIMScheduler, DDPMScheduler

    if sampler == "ddpm":
        sched = DDPMScheduler.from_config(scheduler.config)
    elif sampler == "ddim":
        sched = DDIMScheduler.from_config(scheduler.config)
    else:
        raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")
    steps = num_inference_steps or sched.config.num_train_timesteps
    if sampler == "ddim" and num_inference_steps is None:
        steps = 50
    sched.set_timesteps(int(steps))
    return sched


@torch.no_grad()
def sample_images(unet, scheduler, seeds: Sequence[int], sampler: str = "ddpm", num_inference_steps: int | None = None,
                  device: str | torch.device | None = None, autocast: str | None = None, progress: bool = False,
                  channels_last: bool = False) -> torch.Tensor:
    """Images in [-1, 1] (float32, CPU) for ``seeds``, one per seed, each
    from its own :func:`seeded_generator` (the full ancestral loop by
    default; ``sampler="ddim"`` with ``num_inference_steps``, default 50, is
    deterministic after the starting noise)."""
    device = torch.device(device or next(unet.parameters()).device)
    sched = sampling_scheduler(scheduler, sampler, num_inference_steps)
    cfg = unet.config
    shape = (len(seeds), cfg.in_channels, cfg.sample_size, cfg.sample_size)
    generators = [seeded_generator(s, device) for s in seeds]
    x = torch.cat([torch.randn((1, *shape[1:]), generator=g, device=device) for g in generators])
    amp = (torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[autocast])
           if autocast and autocast != "no" else contextlib.nullcontext())
    for t in progress_bar(sched.timesteps, desc=f"{sampler} steps", leave=False, disable=not progress):
        model_in = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        t_batch = t.to(device).expand(len(seeds))
        with amp:
            eps = unet(model_in, t_batch, return_dict=False)[0]
        eps = eps.float()
        if sampler == "ddpm":
            x = sched.step(eps, t, x, generator=generators).prev_sample
        else:
            x = sched.step(eps, t, x, eta=0.0).prev_sample
    return x.float().cpu()


def make_generate(pipeline, sampler: str = "ddpm", num_inference_steps: int | None = None,
                  device: str | torch.device | None = None, autocast: str | None = "auto",
                  progress: bool = False, compile: bool = False,
                  num_threads: int = 0) -> Callable[[Sequence[int]], np.ndarray]:
    """``generate(seeds) -> uint8 (n, C, H, W)`` for :func:`helpers.sampling.sample_to_npy`.
    channels_last memory on every device (measured 1.1–1.3× faster on 2 CPU
    cores, see benchmarks/bench_diffusion.py); on CUDA bf16 autocast
    (``autocast="auto"``); ``compile`` wraps the UNet in ``torch.compile``.
    ``num_threads`` > 0 sets torch's CPU threads; 0 keeps torch's default."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    unet = pipeline.unet.to(device).eval()
    cuda = device.type == "cuda"
    if autocast == "auto":
        autocast = "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    unet.to(memory_format=torch.channels_last)
    if compile:
        unet = torch.compile(unet)
    if num_threads and num_threads > 0:
        torch.set_num_threads(int(num_threads))

    def generate(seeds: Sequence[int]) -> np.ndarray:
        images = sample_images(unet, pipeline.scheduler, list(seeds), sampler, num_inference_steps, device,
                               autocast=autocast, progress=progress, channels_last=True)
        return to_uint8(images)

    return generate


def sample(results_dir: str | os.PathLike, n_images: int, first_seed: int, batch_size: int, sampler: str = "ddpm",
           num_inference_steps: int | None = None, device: str | None = None, progress: bool = True, *,
           autocast: str | None = "auto", num_threads: int = 0, compile: bool = False) -> Path:
    """``samples/diffusion.npy`` (uint8 N×C×H×W) and ``diffusion_seeds.csv``
    from the EMA pipeline in ``results_dir/diffusion/pipeline``; image i has
    seed ``first_seed + i``. Resumable (batch by batch).

    What the samples are (sampler, steps, which trained model, device kind
    and precision) is kept in ``samples/diffusion_sampler.json``: samples
    of another model or sampler are never mixed in or overwritten silently,
    and a partial run is only continued on the same kind of device (CPU and
    CUDA noise streams differ)."""
    results_dir = Path(results_dir)
    path = pipeline_dir(results_dir)
    pipeline = load_pipeline(path)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if autocast == "auto":
        autocast = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "no"
    out = samples_path(results_dir, MODEL_NAME)
    partial = out.with_name(out.stem + ".partial.npy")
    record_path = out.with_name(f"{MODEL_NAME}_sampler.json")
    trained = read_json(path / "training.json") if (path / "training.json").exists() else None
    what = {"sampler": sampler, "num_inference_steps": num_inference_steps, "model": trained}
    how = {"device": device.type, "autocast": autocast or "no"}
    cfg = pipeline.unet.config
    shape = (cfg.in_channels, cfg.sample_size, cfg.sample_size)
    old = read_json(record_path) if record_path.exists() else None
    if old is not None and (out.exists() or partial.exists()):
        finished = finished_samples(out, n_images, first_seed, shape)
        if {k: old.get(k) for k in what} != what or (not finished and {k: old.get(k) for k in how} != how):
            raise ValueError(
                f"{record_path}: the existing diffusion samples were made with {old}, not {what | how}; "
                f"remove {out.name} and {partial.name} in {out.parent} to sample again"
            )
        if finished:
            return out  # done, on whichever device it was made
    write_json(record_path, what | how)
    generate = make_generate(pipeline, sampler, num_inference_steps, device, autocast, compile=compile,
                             num_threads=num_threads)
    return sample_to_npy(generate, out, n_images, first_seed, shape, batch_size=batch_size, progress=progress,
                         desc=f"diffusion ({sampler})")


def preview(results_dir: str | os.PathLike, seeds: Sequence[int], sampler: str = "ddpm",
            num_inference_steps: int | None = None, device: str | None = None) -> np.ndarray:
    """A few uint8 samples from the saved pipeline (for a look in notebook 03)."""
    generate = make_generate(load_pipeline(pipeline_dir(results_dir)), sampler, num_inference_steps, device,
                             progress=True)
    return generate(list(seeds))



def checkpoint_steps(results_dir: str | os.PathLike) -> list[int]:
    """The steps of the kept training checkpoints (``diffusion/checkpoints``)."""
    from ..checkpoints import list_checkpoints

    return [step for step, _ in list_checkpoints(Path(results_dir) / MODEL_NAME / "checkpoints")]


def checkpoint_pipeline(results_dir: str | os.PathLike, step: int):
    """A ``DDPMPipeline`` (on the CPU) holding the EMA weights of training
    checkpoint ``step``, with the saved pipeline's UNet configuration and
    noise schedule: the audits over training sample it as the final one."""
    from diffusers import DDPMPipeline, UNet2DModel
    from diffusers.training_utils import EMAModel

    from ..checkpoints import checkpoint_path, load_state

    path = checkpoint_path(Path(results_dir) / MODEL_NAME / "checkpoints", step)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no diffusion checkpoint at step {step} (kept: {checkpoint_steps(results_dir)})")
    final = load_pipeline(pipeline_dir(results_dir))
    unet = UNet2DModel.from_config(final.unet.config)
    ema = EMAModel(unet.parameters(), model_cls=UNet2DModel, model_config=unet.config)
    ema.load_state_dict(load_state(path)["ema"])
    ema.copy_to(unet.parameters())
    return DDPMPipeline(unet=unet.eval(), scheduler=final.scheduler)


def checkpoint_images_seen(results_dir: str | os.PathLike, step: int) -> int:
    """Images seen by training checkpoint ``step`` (the run's batch from its summary)."""
    summary = read_json(Run(results_dir).training_summary(MODEL_NAME))
    return int(step) * int(summary["images_seen"]) // int(summary["step"])


def sample_checkpoint(results_dir: str | os.PathLike, step: int, n_images: int, first_seed: int, batch_size: int,
                      sampler: str = "ddpm", num_inference_steps: int | None = None, progress: bool = True,
                      num_threads: int = 0) -> Path:
    """``n_images`` images of training checkpoint ``step`` (seeds and
    sampler as :func:`sample`) into ``samples/checkpoints/diffusion/step_*.npy``."""
    from ..checkpoints import checkpoint_path
    from ..sampling import checkpoint_samples_path, sample_checkpoint_to_npy

    pipeline = checkpoint_pipeline(results_dir, step)
    cfg = pipeline.unet.config
    generate = make_generate(pipeline, sampler, num_inference_steps, num_threads=num_threads)
    return sample_checkpoint_to_npy(
        generate, checkpoint_path(Path(results_dir) / MODEL_NAME / "checkpoints", step), "ema",
        checkpoint_samples_path(results_dir, MODEL_NAME, step), n_images, first_seed,
        (cfg.in_channels, cfg.sample_size, cfg.sample_size), batch_size, progress=progress,
        desc=f"diffusion step {step}")
