"""One diffusion training step and what it needs: model, EMA, optimizer
and LR schedule on the accelerator's device, with the device-dependent
speed options."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from ..config import TrainDiffusionSettings
from ..training import bf16_is_fast
from .model import build_noise_scheduler, build_unet


def resolve_speed_options(settings: TrainDiffusionSettings, device: torch.device | str) -> dict:
    """Fill the device-dependent defaults: on CUDA bf16 autocast (fp16 where
    bf16 is missing), channels_last and fused AdamW; on CPU plain fp32,
    contiguous memory and the foreach AdamW (fused AdamW and channels_last
    measured 1.07× and 1.09× for training on 2 cores, within the machine's
    noise; benchmarks/bench_diffusion.py). On a CPU with bf16 units
    (:func:`helpers.training.bf16_is_fast`) ``mixed_precision: bf16`` is
    used when asked for, never chosen by default (its effect on the fit is
    measured per profile); on other CPUs it falls back to float32, as
    StyleGAN's does. ``compile`` stays as given."""
    cuda = torch.device(device).type == "cuda"
    mp = settings.mixed_precision
    if mp in (None, "auto"):
        mp = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "no"
    if not cuda and mp not in ("no", "bf16"):
        raise ValueError(f"train_diffusion.mixed_precision={mp!r} needs a CUDA device; use 'no' or 'bf16' on a CPU")
    if not cuda and mp == "bf16" and not bf16_is_fast("cpu"):
        print("train_diffusion.mixed_precision='bf16': this CPU has no bf16 units (AMX or AVX-512 BF16), where "
              "bf16 is slower than float32; training in float32")
        mp = "no"
    return {
        "mixed_precision": mp,
        "channels_last": bool(cuda if settings.channels_last is None else settings.channels_last),
        "fused_adamw": bool(cuda if settings.fused_adamw is None else settings.fused_adamw),
        "compile": bool(settings.compile),
    }


def make_accelerator(mixed_precision: str, cpu: bool):
    """An ``accelerate.Accelerator``. In a single process (no ``torchrun`` or
    ``accelerate launch``) its shared state is reset first so that one Python
    session can train with different precisions one after the other (tests,
    benchmark); in a job it joins the job's processes (gloo on a CPU)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu)


# --------------------------------------------------------------------------
# One training step (shared by the training loop and the benchmark)
# --------------------------------------------------------------------------

@dataclasses.dataclass
class TrainingSetup:
    accelerator: Any
    unet: Any               # the plain module (weights, EMA, saving)
    model: Any              # what is called: prepared (autocast/DDP) and maybe compiled
    optimizer: Any
    lr_scheduler: Any
    ema: Any
    noise_scheduler: Any
    options: dict
    settings: TrainDiffusionSettings


def setup_training(settings: TrainDiffusionSettings, channels: int, image_size: int,
                   device: str | None = None, resume_state: Mapping | None = None) -> TrainingSetup:
    """Model, EMA, optimizer and LR schedule on the accelerator's device,
    optionally loaded from a checkpoint's state."""
    from diffusers import UNet2DModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    cpu = device == "cpu" or (device is None and not torch.cuda.is_available())
    options = resolve_speed_options(settings, "cpu" if cpu else "cuda")
    accelerator = make_accelerator(options["mixed_precision"], cpu=cpu)
    torch.manual_seed(settings.seed)  # the initial weights
    unet = build_unet(settings, channels, image_size)
    if resume_state is not None:
        unet.load_state_dict(resume_state["model"])
    # on the device (and in its memory format) before the optimizer and EMA see the parameters
    unet.to(accelerator.device)
    if options["channels_last"]:
        unet.to(memory_format=torch.channels_last)
    ema = EMAModel(
        unet.parameters(),
        decay=float(settings.ema_decay),
        # guided-diffusion's constant rate: the ramp (1+s)/(10+s) is floored at the decay itself
        min_decay=0.0 if settings.ema_warmup else float(settings.ema_decay),
        foreach=True,
        model_cls=UNet2DModel,
        model_config=unet.config,
    )
    fused = options["fused_adamw"]
    optimizer = torch.optim.AdamW(
        unet.parameters(), lr=float(settings.learning_rate), weight_decay=float(settings.weight_decay),
        betas=(0.9, 0.999), eps=1e-8, fused=True if fused else None, foreach=None if fused else True,
    )
    lr_scheduler = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=int(settings.lr_warmup_steps))
    if resume_state is not None:
        ema.load_state_dict(resume_state["ema"])
        optimizer.load_state_dict(resume_state["optimizer"])   # moves its state to the parameters' device
        lr_scheduler.load_state_dict(resume_state["lr_scheduler"])
    ema.to(accelerator.device)
    model = torch.compile(unet) if options["compile"] else unet
    model, optimizer = accelerator.prepare(model, optimizer)
    return TrainingSetup(accelerator, unet, model, optimizer, lr_scheduler, ema, build_noise_scheduler(settings),
                         options, settings)


def train_step(setup: TrainingSetup, images: torch.Tensor,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One optimisation step on ``images`` (already on the device, in
    [-1, 1]): ε-MSE at uniformly drawn timesteps, clipping, AdamW, LR
    schedule, EMA. Returns the loss and the gradient norm (device tensors,
    so a GPU is not synchronised every step)."""
    s = setup.settings
    if setup.options["channels_last"]:
        images = images.contiguous(memory_format=torch.channels_last)
    noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    timesteps = torch.randint(0, s.num_train_timesteps, (images.shape[0],), generator=generator, device=images.device)
    noisy = setup.noise_scheduler.add_noise(images, noise, timesteps)
    prediction = setup.model(noisy, timesteps, return_dict=False)[0]
    if s.prediction_type == "epsilon":
        target = noise
    else:  # v = sqrt(ᾱ)·ε − sqrt(1−ᾱ)·x₀
        target = setup.noise_scheduler.get_velocity(images, noise, timesteps)
    loss = F.mse_loss(prediction.float(), target.float())
    setup.accelerator.backward(loss)
    grad_norm = None
    if s.max_grad_norm:
        grad_norm = setup.accelerator.clip_grad_norm_(setup.unet.parameters(), float(s.max_grad_norm))
    setup.optimizer.step()
    setup.lr_scheduler.step()
    setup.optimizer.zero_grad(set_to_none=True)
    setup.ema.step(setup.unet.parameters())
    return loss.detach(), grad_norm

