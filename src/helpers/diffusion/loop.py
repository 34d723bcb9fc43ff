"""The diffusion training loop: resume from the newest checkpoint, log,
checkpoint, and save the EMA pipeline at the end."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import checkpoints as ckpt
from .. import config
from ..common import progress as progress_bar
from ..common import read_json, stable_hash, write_json
from ..config import TrainDiffusionSettings
from ..layout import Run
from ..training import LossLog, TrainingImages, count_parameters, require_finite, step_seed
from .trainer import TrainingSetup, setup_training, train_step

MODEL_NAME = "diffusion"
#: the diffusion model draws its epochs from [seed, epoch, 7] (kept from before the shared TrainingImages)
SHUFFLE_SALT = (7,)

LOG_COLUMNS = ("step", "images_seen", "epoch", "loss", "lr", "grad_norm", "seconds", "threads")


def output_dir(results_dir: str | os.PathLike) -> Path:
    return Path(results_dir) / MODEL_NAME


def pipeline_dir(results_dir: str | os.PathLike) -> Path:
    return output_dir(results_dir) / "pipeline"


def train(results_dir: str | os.PathLike, settings: TrainDiffusionSettings | Mapping[str, Any], *,
          progress: bool = True, stop_after: int | None = None, device: str | None = None) -> dict:
    """Train (or resume, or find finished) the diffusion model on
    ``results_dir/data/train.npy``; returns the summary (also written to
    ``diffusion/summary.json``).

    ``stop_after`` ends this call after that many steps *in total* (a
    checkpoint is written there): tests use it to simulate a killed run.
    The summary (and the early return) records the step this call started
    at (``resumed_from_step``) and how many it ran (``steps_run``). Over
    several processes, all must end with the same weights (checked).
    """
    if not isinstance(settings, TrainDiffusionSettings):
        settings = config.build("train_diffusion", dict(settings))
    results_dir = Path(results_dir)
    out = output_dir(results_dir)
    ckpt_dir = out / "checkpoints"
    data = TrainingImages(Run(results_dir).data.folder, settings.seed, shuffle_salt=SHUFFLE_SALT)
    identity = {**settings.identity(), "data": data.fingerprint()}
    identity_hash = stable_hash(identity)
    if settings.num_threads and settings.num_threads > 0:
        torch.set_num_threads(int(settings.num_threads))
    threads = torch.get_num_threads()

    found = ckpt.load_latest_checkpoint(ckpt_dir)
    if found is not None and found[1].get("identity_hash") != identity_hash:
        raise ValueError(
            f"{ckpt_dir}: checkpoints were made with other model/training parameters or other data "
            f"(theirs {found[1].get('identity_hash')}, now {identity_hash}); delete that folder or use "
            f"another results_dir to train from scratch"
        )
    start = found[0] if found else 0
    if start > settings.max_steps:
        raise ValueError(f"{ckpt_dir}: the newest checkpoint is at step {start}, beyond max_steps={settings.max_steps}; "
                         f"raise max_steps or delete the checkpoints to train a shorter run")
    summary_path = out / "summary.json"
    if found and start >= settings.max_steps and _pipeline_is(results_dir, start, identity_hash):
        stored = read_json(summary_path) if summary_path.exists() else {"step": start}
        return {**stored, "resumed_from_step": start, "steps_run": 0}  # this call ran nothing

    setup = setup_training(settings, data.channels, data.image_size, device=device,
                           resume_state=found[1] if found else None)
    acc = setup.accelerator
    if found:
        ckpt.set_rng_state(found[1]["rng"])
    elapsed = float(found[1].get("seconds", 0.0)) if found else 0.0
    world, rank = acc.num_processes, acc.process_index
    if settings.batch_size % world:
        raise ValueError(f"batch_size {settings.batch_size} must be divisible by the {world} processes")
    n_params = count_parameters(setup.unet)
    end = min(settings.max_steps, stop_after) if stop_after is not None else settings.max_steps
    if acc.is_main_process:
        print(f"diffusion UNet: {n_params:,} parameters; {len(data)} training images "
              f"{data.channels}×{data.image_size}²; {acc.device}, {acc.num_processes} process(es), "
              f"{threads} CPU thread(s), "
              f"options {setup.options}; "
              f"{'resuming at step ' + str(start) if start else 'starting'} → {settings.max_steps} steps "
              f"of {settings.batch_size} images")
    log = LossLog(out / "loss_log.csv", LOG_COLUMNS, start, enabled=acc.is_main_process)
    device_ = acc.device
    sum_loss = torch.zeros((), device=device_)
    sum_norm = torch.zeros((), device=device_)
    n_sum = 0
    t0 = time.perf_counter()
    bar = progress_bar(total=settings.max_steps, initial=start, unit="step", desc="train diffusion",
               disable=not (progress and acc.is_main_process))
    setup.unet.train()
    for step in range(start, end):
        seed = step_seed(settings.seed, step, rank)
        indices = data.batch_indices(step, settings.batch_size, rank, world)
        flip = np.random.default_rng(seed).random(len(indices)) < 0.5 if settings.horizontal_flip else None
        images = data.scaled(indices, flip).to(device_, non_blocking=True)
        generator = torch.Generator(device=device_).manual_seed(seed)
        loss, grad_norm = train_step(setup, images, generator)
        sum_loss += loss
        if grad_norm is not None:
            sum_norm += grad_norm.detach().float()
        n_sum += 1
        done = step + 1
        if done % settings.log_every == 0 or done == end:
            mean_loss = acc.reduce(sum_loss, reduction="mean").item() / n_sum
            mean_norm = acc.reduce(sum_norm, reduction="mean").item() / n_sum if settings.max_grad_norm else None
            seconds = elapsed + time.perf_counter() - t0
            log.append({"step": done, "images_seen": done * settings.batch_size,
                        "epoch": done * settings.batch_size / len(data), "loss": mean_loss,
                        "lr": float(setup.lr_scheduler.get_last_lr()[0]), "grad_norm": mean_norm,
                        "seconds": seconds, "threads": torch.get_num_threads()})
            rate = (done - start) / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{rate * settings.batch_size:.1f}", refresh=False)
            sum_loss.zero_()
            sum_norm.zero_()
            n_sum = 0
            require_finite("diffusion", done, ckpt_dir, losses={"loss": mean_loss})
        if done % settings.checkpoint_every == 0 or done == end:
            # the loss since the last log row (reduced over the processes) and the weights (every process's)
            require_finite("diffusion", done, ckpt_dir, losses={"loss": acc.reduce(sum_loss, reduction="mean").item()},
                           modules={"UNet": setup.unet}, optimizers={"the optimizer": setup.optimizer})
            _save_checkpoint(setup, ckpt_dir, done, identity_hash, elapsed + time.perf_counter() - t0)
        bar.update(1)
    bar.close()
    seconds = elapsed + time.perf_counter() - t0
    digests = _weight_digests(setup)
    if end < settings.max_steps:
        return {"step": end, "complete": False, "seconds": seconds, "resumed_from_step": start,
                "steps_run": end - start}
    if end == start and found is None:
        raise RuntimeError("no training step was run")
    summary = {"step": settings.max_steps, "resumed_from_step": start, "steps_run": end - start,
               "images_seen": settings.max_steps * settings.batch_size,
               "epochs": settings.max_steps * settings.batch_size / len(data), "n_params": n_params,
               "seconds": seconds, "final_loss": _final_loss(out / "loss_log.csv"),
               "device": str(device_), "processes": world,
               "threads": threads, "options": setup.options,
               "identity_hash": identity_hash, "pipeline": str(pipeline_dir(results_dir)),
               "weights_sha256_by_process": digests}
    if acc.is_main_process:
        save_pipeline(setup, pipeline_dir(results_dir), {"step": settings.max_steps, "identity_hash": identity_hash})
        write_json(summary_path, summary)
    acc.wait_for_everyone()
    return summary


def weights_sha256(parameters) -> str:
    """sha256 of the parameters' float32 bytes, in order."""
    import hashlib

    sha = hashlib.sha256()
    for p in parameters:
        sha.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return sha.hexdigest()


def _weight_digests(setup: TrainingSetup) -> list[str]:
    """Every process's weights digest (rank order). All must be equal (the
    gradients are averaged, the updates identical): compared at the end
    instead of assumed, and recorded in the summary."""
    from ..parallel import gather

    digests = gather(weights_sha256(setup.unet.parameters()))
    if len(set(digests)) > 1:
        raise RuntimeError(f"the {len(digests)} training processes ended with different weights "
                           f"(digests {digests}); the run cannot be trusted")
    return digests


def _save_checkpoint(setup: TrainingSetup, folder: Path, step: int, identity_hash: str, seconds: float) -> None:
    acc = setup.accelerator
    if acc.is_main_process:
        state = {
            "step": step,
            "identity_hash": identity_hash,
            "seconds": seconds,
            "model": setup.unet.state_dict(),
            "ema": setup.ema.state_dict(),
            "optimizer": setup.optimizer.state_dict(),
            "lr_scheduler": setup.lr_scheduler.state_dict(),
            "rng": ckpt.rng_state(),
        }
        ckpt.save_checkpoint(folder, step, state, keep_checkpoints=setup.settings.keep_checkpoints)
    acc.wait_for_everyone()


def _final_loss(log_path: Path, last: int = 5) -> float | None:
    """Mean of the last few logged losses (a smoother end point than one row)."""
    import pandas as pd

    if not log_path.exists():
        return None
    frame = pd.read_csv(log_path)
    return float(frame["loss"].tail(last).mean()) if len(frame) else None


def save_pipeline(setup: TrainingSetup, path: str | os.PathLike, info: Mapping[str, Any]) -> Path:
    """Write a ``DDPMPipeline`` holding the EMA weights with
    ``save_pretrained`` (safetensors), atomically: built in a temporary
    folder, then swapped in."""
    from diffusers import DDPMPipeline, UNet2DModel

    path = Path(path)
    ema_unet = UNet2DModel.from_config(setup.unet.config)
    setup.ema.copy_to(ema_unet.parameters())
    ema_unet.to("cpu", memory_format=torch.contiguous_format)
    pipeline = DDPMPipeline(unet=ema_unet, scheduler=setup.noise_scheduler)
    tmp = path.with_name(path.name + ".tmp")
    old = path.with_name(path.name + ".old")
    for p in (tmp, old):
        shutil.rmtree(p, ignore_errors=True)
    pipeline.save_pretrained(tmp, safe_serialization=True)
    write_json(tmp / "training.json", info)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def _pipeline_is(results_dir: Path, step: int, identity_hash: str) -> bool:
    info = pipeline_dir(results_dir) / "training.json"
    return info.exists() and read_json(info) == {"step": step, "identity_hash": identity_hash}


def read_loss_log(results_dir: str | os.PathLike):
    import pandas as pd

    path = output_dir(results_dir) / "loss_log.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no loss log (train the diffusion model first)")
    return pd.read_csv(path)

