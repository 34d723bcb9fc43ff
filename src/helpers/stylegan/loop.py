"""The StyleGAN training driver: resume, log, checkpoint, export."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd
import torch

from .. import checkpoints
from ..common import progress as progress_bar
from ..common import write_json
from ..config import TrainStyleGANSettings
from ..parallel import average, barrier
from ..training import LossLog, TrainingImages, count_parameters, require_finite, shortest_float
from .sampling import export_generator, export_is_current, generate_images, save_grid
from .trainer import StyleGANTrainer

LOG_COLUMNS = ("step", "images_seen", "kimg", "loss_G", "loss_D", "r1", "pl", "augment_p", "real_sign",
               "D_real", "D_fake", "images_per_s", "time_s")



def train(results_dir: str | os.PathLike, config: TrainStyleGANSettings, seed: int = 0,
          device: str | torch.device | None = None, progress: bool = True,
          stop_after_steps: int | None = None, time_limit_min: float | None = None) -> dict:
    """Train (or resume) StyleGAN2-ADA on ``results_dir/data/train.npy``.

    Resumes from the newest checkpoint in ``stylegan/checkpoints`` when its
    settings, seed and data match (``total_kimg`` may grow); otherwise it
    refuses, naming what differs. The summary records where this call
    started (``resumed_from_step``) and how many steps it ran
    (``steps_run``). Checkpoints (every
    ``checkpoint_kimg``, the last ``keep_checkpoints`` kept) hold G, D, G_ema, both
    optimizers, pl_mean, ADA's p and statistic, the step, RNG states and the
    loss statistics not yet logged; at each one a fixed-seed grid of G_ema
    is saved and the EMA generator exported. ``stop_after_steps`` /
    ``time_limit_min`` end this call early (with a checkpoint); a re-run
    continues exactly as if never stopped. Returns a summary dict.

    Inside a torch.distributed job every process runs this function on its
    share of each batch (see :class:`StyleGANTrainer`); process 0 writes the
    log, checkpoints, grids and the exported generator. A run resumed with
    the same number of processes continues exactly.
    """
    out = Path(results_dir) / "stylegan"
    ckpt_dir, grid_dir = out / "checkpoints", out / "grids"
    data = TrainingImages(results_dir, seed)
    out.mkdir(parents=True, exist_ok=True)
    trainer = StyleGANTrainer(config, data.shape, seed=seed, device=device, data_fingerprint=data.fingerprint())
    cfg = trainer.cfg
    pending: dict[str, list[torch.Tensor]] = {}

    if trainer.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    latest = checkpoints.load_latest_checkpoint(ckpt_dir, device="cpu")  # RNG states must stay on the CPU
    if latest is not None:
        trainer.load_state(latest[1], source=str(ckpt_dir))
        pending = {k: list(v.unbind()) for k, v in latest[1].get("log_pending", {}).items()}
    start = trainer.step_count
    main_process = trainer.rank == 0
    log = LossLog(out / "loss_log.csv", LOG_COLUMNS, start, float_format=shortest_float, enabled=main_process)

    total = cfg.total_steps
    grid_seeds = list(range(cfg.grid_seeds))
    deadline = time.monotonic() + 60 * time_limit_min if time_limit_min else None
    last_stop = total if stop_after_steps is None else min(total, start + int(stop_after_steps))
    interval_t0, interval_images = time.monotonic(), 0

    def write_log_row() -> None:
        nonlocal pending, interval_t0, interval_images
        elapsed = time.monotonic() - interval_t0
        row = {"step": trainer.step_count, "images_seen": trainer.step_count * cfg.batch_size,
               "kimg": trainer.step_count * cfg.batch_size / 1000, "augment_p": trainer.augment.p,
               "images_per_s": interval_images / elapsed if elapsed > 0 and interval_images else float("nan"),
               "time_s": trainer.time_s}
        for key in ("loss_G", "loss_D", "r1", "pl", "real_sign", "D_real", "D_fake"):
            row[key] = float(torch.stack(pending[key]).mean()) if pending.get(key) else float("nan")
        log.append(row)
        pending, interval_t0, interval_images = {}, time.monotonic(), 0
        guard()

    def guard() -> None:  # stop before a diverged state is checkpointed (the weights are every process's)
        require_finite("StyleGAN", trainer.step_count, ckpt_dir, modules={"G": trainer.G, "D": trainer.D,
                                                                                    "G_ema": trainer.G_ema},
                       optimizers={"G's optimizer": trainer.opt_G, "D's optimizer": trainer.opt_D})

    def checkpoint() -> None:
        guard()
        state = trainer.state()  # every process: the ADA statistic is pooled here
        if main_process:
            state["log_pending"] = {k: torch.stack(v) for k, v in pending.items() if v}
            checkpoints.save_checkpoint(ckpt_dir, trainer.step_count, state, keep_checkpoints=cfg.keep_checkpoints)
            save_grid(generate_images(trainer.G_ema, grid_seeds, batch_invariant=False),
                      grid_dir / f"step_{trainer.step_count:09d}.png")
            export_generator(trainer, out, complete=trainer.step_count >= total)
        barrier()

    def past_deadline() -> bool:  # all processes stop at the same step
        late = deadline is not None and time.monotonic() > deadline
        if deadline is not None and trainer.world > 1:
            late = bool(average(torch.tensor([float(late)])) > 0)
        return late

    with progress_bar(total=total * cfg.batch_size, initial=start * cfg.batch_size, unit="img", desc="StyleGAN",
              disable=not (progress and main_process), smoothing=0.1) as bar:
        while trainer.step_count < last_stop:
            t0 = time.monotonic()
            stats = trainer.step(data)
            trainer.time_s += time.monotonic() - t0
            interval_images += cfg.batch_size
            for key, value in stats.items():
                pending.setdefault(key, []).append(value)
            bar.update(cfg.batch_size)
            step = trainer.step_count
            at_checkpoint = step % cfg.checkpoint_every == 0 or step == total
            out_of_time = past_deadline()
            if step % cfg.log_every == 0 or at_checkpoint:
                bar.set_postfix(G=f"{float(stats['loss_G']):.3f}", D=f"{float(stats['loss_D']):.3f}",
                                p=f"{trainer.augment.p:.3f}")
                write_log_row()
            if at_checkpoint or out_of_time or step == last_stop:
                checkpoint()
            if out_of_time:
                break
    if trainer.step_count == start:  # nothing left to train, but sampling needs the generator of this step
        stale = not export_is_current(out, trainer.step_count)  # a kill between its two files leaves it stale
        barrier()  # every process has looked before process 0 may write it
        if stale and main_process:
            export_generator(trainer, out, complete=trainer.step_count >= total)
        barrier()

    rows = pd.read_csv(log.path)
    last = rows.iloc[-1].to_dict() if len(rows) else {}
    summary = {
        "steps_done": trainer.step_count,
        "steps_total": total,
        "images_seen": trainer.step_count * cfg.batch_size,
        "complete": trainer.step_count >= total,
        "resumed_from_step": start,
        "steps_run": trainer.step_count - start,  # by this call: 0 for a finished run found again
        "train_time_s": round(trainer.time_s, 1),
        "augment_p": trainer.augment.p,
        "loss_G": last.get("loss_G"),
        "loss_D": last.get("loss_D"),
        "G_params": count_parameters(trainer.G),
        "D_params": count_parameters(trainer.D),
        "device": str(trainer.device),
        "processes": trainer.world,
    }
    if main_process:
        write_json(out / "summary.json", summary)
    return summary
