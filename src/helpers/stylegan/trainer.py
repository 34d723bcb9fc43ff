"""One StyleGAN2-ADA training step: G, D, the EMA generator, their Adam
optimizers, the regularizers and the ADA controller, with the state a
bit-exact resume needs."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import checkpoints
from ..common import stable_hash
from ..config import TrainStyleGANSettings
from ..parallel import average, average_gradients, check_processes, rank_world
from ..training import TrainingImages, step_seed
from .augment import AdaptiveAugment
from .networks import Discriminator, Generator, use_channels_last


def _requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


def real_batch(data: TrainingImages, step: int, batch_size: int, mirror: bool,
               rank: int = 0, world: int = 1) -> np.ndarray:
    """uint8 reals of training step ``step`` (process ``rank``'s share of the
    global batch), x-flipped at random when ``mirror`` (the authors'
    --mirror=1); a function of ``(seed, step)``: the processes together see
    the same images, flipped the same way, as one process would."""
    images = data.uint8(data.batch_indices(step, batch_size, rank, world))
    if mirror:
        per = batch_size // world
        flip = (np.random.default_rng([data.seed, step, 1]).random(batch_size) < 0.5)[rank * per:(rank + 1) * per]
        images[flip] = images[flip][..., ::-1]
    return images


def lazy_adam(params, lr: float, betas: tuple[float, float], reg_every: int) -> torch.optim.Adam:
    """Adam for a network whose regularizer runs every ``reg_every`` steps
    as a separate update: lr and betas are raised to the power
    k/(k + 1), so k + 1 updates move as far as k would (StyleGAN2, lazy
    regularization). ``reg_every=0``: no regularizer, plain Adam."""
    power = reg_every / (reg_every + 1) if reg_every else 1.0
    return torch.optim.Adam(params, lr=lr * power, betas=(betas[0] ** power, betas[1] ** power), eps=1e-8)


def mix_styles(ws: torch.Tensor, other_ws: Callable[[], torch.Tensor], probability: float) -> torch.Tensor:
    """With ``probability``, the ws from a random layer on come from a
    second latent (``other_ws()``): why, the generator cannot rely on
    neighbouring layers sharing a style. The draws are made in a fixed
    order (layer, coin, second latent) whatever the outcome."""
    n_ws = ws.shape[1]
    first_mixed = torch.randint(1, n_ws, [], device=ws.device)
    heads = torch.rand([], device=ws.device) < probability
    first_mixed = torch.where(heads, first_mixed, torch.full_like(first_mixed, n_ws))  # n_ws: none mixed
    replaced = (torch.arange(n_ws, device=ws.device) >= first_mixed)[None, :, None]
    return torch.where(replaced, other_ws(), ws)


def path_lengths(images: torch.Tensor, ws: torch.Tensor) -> torch.Tensor:
    """‖J_wᵀ y‖ per image for a random image-space direction y (scaled so
    the value does not grow with the resolution); J_w is ∂image/∂w."""
    direction = torch.randn_like(images) / math.sqrt(images.shape[2] * images.shape[3])
    (jt_y,) = torch.autograd.grad((images * direction).sum(), ws, create_graph=True)
    return jt_y.square().sum(2).mean(1).sqrt()


def input_gradient_norm2(logits: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """‖∂D/∂x‖² per image (the R1 penalty before its γ/2)."""
    (grad,) = torch.autograd.grad(logits.sum(), inputs, create_graph=True)
    return grad.square().sum(dim=[1, 2, 3])


def _touching(per_image: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """``per_image + 0·output``: every parameter behind ``output`` receives a
    (zero) gradient, so the regularization update steps Adam for all of
    them, not only for those the penalty reaches."""
    return per_image + output * 0


def ema_beta(batch_size: int, images_before: int, half_life_kimg: float, rampup: float | None) -> float:
    """Per-step weight of the old average for an EMA whose half-life is
    ``half_life_kimg`` thousand images; with ``rampup`` the half-life is at
    most ``rampup`` × the images seen so far, so early weights fade fast."""
    half_life = half_life_kimg * 1000
    if rampup:
        half_life = min(half_life, images_before * rampup)
    return 0.5 ** (batch_size / max(half_life, 1e-8))


@torch.no_grad()
def update_ema(average: nn.Module, model: nn.Module, beta: float) -> None:
    """average ← beta·average + (1 − beta)·model for parameters (computed
    as lerp from the model's value); buffers (noise constants, w_avg) are
    copied, not averaged."""
    current = dict(model.named_parameters())
    for name, kept in average.named_parameters():
        kept.copy_(torch.lerp(current[name], kept, beta))
    current_buffers = dict(model.named_buffers())
    for name, kept in average.named_buffers():
        kept.copy_(current_buffers[name])


def check_batch(config: TrainStyleGANSettings, processes: int) -> None:
    """Refuse a batch that ``processes`` cannot share: each process takes
    ``batch_size / processes`` images, a multiple of the minibatch-std group."""
    check_processes(processes, config.batch_size, "train_stylegan.")
    b = config.batch_size
    per, group = b // processes, min(config.mbstd_group, b)
    if group and per % group:  # D's minibatch statistic must see groups of the same size as in one process
        raise ValueError(f"train_stylegan.batch_size={b} over {processes} processes gives {per} images per "
                         f"process, not a multiple of mbstd_group={group}")


def _averaged(stats: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The step's statistics averaged over the processes (one all-reduce)."""
    keys = sorted(stats)
    values = average(torch.stack([stats[k].float() for k in keys]))
    return dict(zip(keys, values.unbind()))


class StyleGANTrainer:
    """G, D, G_ema, their Adam optimizers, the ADA pipeline and the
    per-step logic. :func:`helpers.stylegan.train` drives it; tests call
    :meth:`step` directly.

    Inside a torch.distributed job (``./runall.sh --processes N``) each
    process takes ``batch_size / N`` images of every global batch, draws its
    own latents and augmentations (seeded by step and rank), and the
    gradients of every phase (G, path length, D, R1) are averaged over the
    processes before the optimizer steps, so all processes hold the same
    networks. ADA's sign statistic, the path-length mean, G's tracked w
    average and the logged statistics are averaged too. Two differences from
    a single process of the whole batch remain: the small gradient that
    flows through the path-length running mean (weight ``pl_decay``) is the
    process's own; and D's minibatch-std groups are formed within each
    process's share (images {0,1},{2,3} of the global batch over 2 processes
    of 2, where one process groups {0,2},{1,3}), so D sees the same group
    size but other groupings (the 2-process gradient test reorders the batch
    to match).
    """

    def __init__(self, config: TrainStyleGANSettings, image_shape: tuple[int, int, int], seed: int = 0,
                 device: str | torch.device | None = None, data_fingerprint: str | None = None) -> None:
        self.cfg, self.seed = config, int(seed)
        self.data_fingerprint = data_fingerprint
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        channels, res, res_w = image_shape
        if res != res_w:
            raise ValueError(f"StyleGAN needs square images, got {image_shape}")
        c = config
        self.rank, self.world = rank_world()
        check_batch(c, self.world)
        torch.manual_seed(self.seed)  # initial weights depend on the seed only (the same in every process)
        fp16 = c.num_fp16_res if c.mixed_precision else 0
        self.G = Generator(res, channels, c.z_dim, c.w_dim, c.mapping_layers, c.mapping_lr_multiplier,
                           c.channel_base, c.channel_max, fp16, c.conv_clamp).to(self.device)
        self.D = Discriminator(res, channels, c.channel_base, c.channel_max, c.mbstd_group, fp16,
                               c.conv_clamp).to(self.device)
        if c.channels_last:
            use_channels_last(self.G)
            use_channels_last(self.D)
        self.G_ema = Generator(**self.G.kwargs).to(self.device).eval()
        self.G_ema.load_state_dict(self.G.state_dict())
        _requires_grad(self.G_ema, False)
        self.G.train()
        self.D.train()
        _requires_grad(self.G, False)
        _requires_grad(self.D, False)
        betas = (c.beta1, c.beta2)
        self.opt_G = lazy_adam(self.G.parameters(), c.lr_g, betas, c.pl_interval if c.pl_weight > 0 else 0)
        self.opt_D = lazy_adam(self.D.parameters(), c.lr_d, betas, c.r1_interval if c.r1_gamma > 0 else 0)
        self.augment = AdaptiveAugment(c.augment, p=c.augment_p, target=c.ada_target, speed_kimg=c.ada_kimg)
        self.pl_mean = torch.zeros([], device=self.device)
        self.step_count = 0
        self.time_s = 0.0

    # ------------------------------------------------------------------
    def run_G(self, z: torch.Tensor, update_w_avg: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and their ws, with style mixing (``style_mixing_prob``)."""
        ws = self.G.mapping(z, update_w_avg=update_w_avg)
        if self.cfg.style_mixing_prob > 0:
            ws = mix_styles(ws, lambda: self.G.mapping(torch.randn_like(z)), self.cfg.style_mixing_prob)
        return self.G.synthesis(ws, noise_mode="random"), ws

    def run_D(self, img: torch.Tensor) -> torch.Tensor:
        return self.D(self.augment(img))

    def _latents(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.cfg.z_dim, device=self.device)

    def step(self, data: TrainingImages) -> dict[str, torch.Tensor]:
        """One iteration: G's adversarial update, its path-length update
        (every ``pl_interval`` steps), D's adversarial update, its R1 update
        (every ``r1_interval`` steps), then the EMA and ADA. Every random
        draw comes from a seed of ``(seed, step)``. Returns detached stats."""
        c, s, b = self.cfg, self.step_count, self.cfg.batch_size
        rank_words = (self.rank,) if self.world > 1 else ()  # one process: the seeds runs always had
        torch.manual_seed(step_seed(self.seed, s, *rank_words))  # z, noise, augmentation of this step
        reals = real_batch(data, s, b, c.mirror, self.rank, self.world)
        reals = torch.from_numpy(reals).to(self.device, non_blocking=True).float() / 127.5 - 1.0
        stats: dict[str, torch.Tensor] = {}

        _requires_grad(self.G, True)
        stats.update(self._generator_updates(len(reals), regularize=c.pl_weight > 0 and s % c.pl_interval == 0))
        _requires_grad(self.G, False)
        _requires_grad(self.D, True)
        stats.update(self._discriminator_updates(reals, regularize=c.r1_gamma > 0 and s % c.r1_interval == 0))
        _requires_grad(self.D, False)

        if self.world > 1:
            for name, buffer in self.G.named_buffers():
                if name.endswith("w_avg"):
                    average(buffer)
            stats = _averaged(stats)
        update_ema(self.G_ema, self.G, ema_beta(b, s * b, c.ema_kimg, c.ema_rampup))
        self.step_count += 1
        if self.step_count % c.ada_interval == 0:  # ADA: move p from sign(D(real)) of the last interval
            self.augment.adjust(b * c.ada_interval)
        return stats

    def _generator_updates(self, b: int, regularize: bool) -> dict[str, torch.Tensor]:
        c, stats = self.cfg, {}
        # non-saturating loss softplus(-D(G(z)))
        self.opt_G.zero_grad(set_to_none=True)
        fake, _ = self.run_G(self._latents(b))
        loss = F.softplus(-self.run_D(fake)).mean()
        loss.backward()
        average_gradients(self.G)
        self.opt_G.step()
        stats["loss_G"] = loss.detach()
        if regularize:  # path lengths pulled towards their running mean
            self.opt_G.zero_grad(set_to_none=True)
            fake, ws = self.run_G(self._latents(max(b // c.pl_batch_shrink, 1)))
            lengths = path_lengths(fake, ws)
            mean = lengths.mean()
            if self.world > 1:  # the mean of all processes, with this process's gradient
                mean = mean + (average(mean.detach().clone()) - mean.detach())
            running = torch.lerp(self.pl_mean, mean, c.pl_decay)
            self.pl_mean.copy_(running.detach())
            penalty = (lengths - running).square()
            _touching(penalty * c.pl_weight, fake[:, 0, 0, 0]).mean().mul(c.pl_interval).backward()
            average_gradients(self.G)
            self.opt_G.step()
            stats["pl"] = penalty.mean().detach()
        return stats

    def _discriminator_updates(self, reals: torch.Tensor, regularize: bool) -> dict[str, torch.Tensor]:
        c = self.cfg
        # softplus(D(fake)) + softplus(-D(real))
        self.opt_D.zero_grad(set_to_none=True)
        with torch.no_grad():
            fake, _ = self.run_G(self._latents(len(reals)))
        on_fake, on_real = self.run_D(fake), self.run_D(reals)
        self.augment.accumulate(on_real)
        loss = F.softplus(on_fake).mean() + F.softplus(-on_real).mean()
        loss.backward()
        average_gradients(self.D)
        self.opt_D.step()
        stats = {"loss_D": loss.detach(), "D_real": on_real.detach().mean(), "D_fake": on_fake.detach().mean(),
                 "real_sign": on_real.detach().sign().mean()}
        if regularize:  # R1 = γ/2 ‖∇_x D(x)‖² on the reals (before augmentation)
            self.opt_D.zero_grad(set_to_none=True)
            inputs = reals.detach().requires_grad_(True)
            on_real = self.run_D(inputs)
            self.augment.accumulate(on_real)
            r1 = input_gradient_norm2(on_real, inputs)
            _touching(r1 * (c.r1_gamma / 2), on_real).mean().mul(c.r1_interval).backward()
            average_gradients(self.D)
            self.opt_D.step()
            stats["r1"] = r1.mean().detach()
        return stats

    # ------------------------------------------------------------------
    def state(self) -> dict:
        """Everything a bit-exact resume needs, for helpers.checkpoints."""
        return {
            "step": self.step_count,
            "images_seen": self.step_count * self.cfg.batch_size,
            "time_s": self.time_s,
            "config": self.identity(),
            "config_hash": stable_hash(self.identity()),
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict(),
            "opt_G": self.opt_G.state_dict(),
            "opt_D": self.opt_D.state_dict(),
            "pl_mean": self.pl_mean,
            "ada": self.augment.controller_state(),
            "rng": checkpoints.rng_state(),
        }

    def identity(self) -> dict:
        """What fixes the run's result: the settings (:meth:`TrainStyleGANSettings.identity`),
        the seed and, where known, the training data's fingerprint. A
        checkpoint of another identity is not resumed."""
        out = {**self.cfg.identity(), "seed": self.seed}
        if self.data_fingerprint is not None:
            out["data"] = self.data_fingerprint
        return out

    def load_state(self, state: Mapping[str, Any], source: str = "checkpoint") -> None:
        new = self.identity()
        if state.get("config_hash") != stable_hash(new):
            old = dict(state.get("config", {}))
            # checkpoints written before the seed and the data were part of the identity cannot say
            # which they had: those keys are taken as equal, and the resume says so
            unknown = sorted(k for k in ("seed", "data") if k in new and k not in old)
            diff = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
                    if k not in unknown and old.get(k) != new.get(k)}
            if set(diff) == {"processes"}:
                raise ValueError(f"{source}: this run was trained with {old.get('processes') or 1} process(es); "
                                 f"resume it with --processes {old.get('processes') or 1} (every step's random "
                                 "draws depend on it), or delete that folder to start afresh")
            if diff:
                raise ValueError(
                    f"{source}: written by a run with other settings {diff} (old, new); set them back to the "
                    "checkpoint's values to resume, or delete that stylegan/checkpoints folder or use another "
                    "results_dir to start afresh"
                )
            print(f"{source}: the checkpoint predates the {' and '.join(unknown)} check; resuming on the "
                  f"assumption that they are the same")
        for name in ("G", "D", "G_ema"):
            getattr(self, name).load_state_dict(state[name])
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        self.pl_mean.copy_(state["pl_mean"])
        self.augment.load_controller_state(state["ada"])
        self.step_count = int(state["step"])
        self.time_s = float(state["time_s"])
        checkpoints.set_rng_state(state["rng"])

