"""A diffusion "model" that memorizes by construction: the exact optimal
denoiser of the empirical training distribution (the positive control of
the memorization criteria).

For the N training images x_i (scaled to [-1, 1] exactly as
:meth:`helpers.training.TrainingImages.scaled` scales them for training)
and a noisy x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε, the minimiser of the diffusion
loss over *all* functions is the posterior mean

    E[x₀ | x_t] = Σ_i w_i x_i,   w = softmax_i(−‖x_t − √ᾱ_t x_i‖² / (2(1−ᾱ_t))).

A network trained to zero loss on the training set would be this function;
sampled with the DDPM loop it returns training images (Gu et al., "On
memorization in diffusion models", arXiv 2310.02664, use it the same way).

:class:`OptimalDenoiser` looks like a diffusers ``UNet2DModel`` to
:mod:`helpers.diffusion`: called as ``model(x, t)`` it returns ``.sample``
(or a tuple with ``return_dict=False``) holding ε, v or x̂₀ as the noise
scheduler's ``prediction_type`` asks, and it has ``config.in_channels`` and
``config.sample_size``. So :func:`helpers.diffusion.make_generate` and
:func:`helpers.diffusion.sample_images` drive it unchanged: the same
``DDPMScheduler`` (T, β, variance type, clipping), the same starting and
step noise of seed ``first_seed + i`` (:func:`helpers.diffusion.seeded_generator`),
the same uint8 conversion (:func:`helpers.sampling.to_uint8`) and the same
resumable writer (:func:`helpers.sampling.sample_to_npy`). :func:`sample`
writes ``samples/optimal_denoiser.npy`` and its seeds like any other model.

Numerics: distances, the softmax (a streamed log-sum-exp over chunks of
training images) and the weighted mean are float64, so the weights are
exactly one-hot at small noise and a distance of 0 gives weight 1, not
NaN. Autocast is switched off inside the model. Training images stay on
the device as uint8 and are converted one chunk at a time (``chunk_mb``),
so 5 000 images of 5×32² need ≈ 25 MB plus the chunk.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from . import config, diffusion
from .common import read_json, write_json, write_yaml
from .layout import Run
from .sampling import finished_samples, sample_to_npy, samples_path

MODEL_NAME = "optimal_denoiser"
#: below this noise variance the weights are computed as at this variance: a
#: limit (one-hot on the nearest image, exact ties shared) instead of 0/0.
#: DDPM never gets there (1 − ᾱ_0 = β_0 ≥ 1e-5 in every profile).
VARIANCE_FLOOR = 1e-20
#: the scheduler settings that must agree with the trained model's
SCHEDULE_KEYS = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "trained_betas",
                 "variance_type", "prediction_type", "clip_sample", "clip_sample_range", "thresholding",
                 "rescale_betas_zero_snr")


class OptimalDenoiser(torch.nn.Module):
    """The posterior mean of the training images as a denoiser network.

    ``training``: uint8 N×C×H×W (H = W). ``scheduler``: the noise scheduler
    it is sampled with (its ``alphas_cumprod`` and ``prediction_type`` are
    used, so the scheduler turns the output back into exactly x̂₀)."""

    def __init__(self, training: np.ndarray, scheduler, chunk_mb: float = 64.0):
        super().__init__()
        array = np.asarray(training)
        if array.dtype != np.uint8 or array.ndim != 4 or array.shape[2] != array.shape[3] or len(array) == 0:
            raise ValueError(f"expected non-empty uint8 N×C×H×W training images with H = W, "
                             f"got {array.dtype} {array.shape}")
        n, c, h, _ = array.shape
        self.dim = c * h * h
        self.n_images = n
        self.prediction_type = scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"unsupported prediction_type {self.prediction_type!r}")
        self.config = SimpleNamespace(in_channels=c, out_channels=c, sample_size=h,
                                      prediction_type=self.prediction_type,
                                      num_train_timesteps=int(scheduler.config.num_train_timesteps))
        self.chunk = int(max(1, min(n, chunk_mb * 2**20 // (8 * self.dim))))
        # an own in-memory copy (uint8: N·D bytes), also when ``training`` is a read-only memmap
        self.register_buffer("images", torch.from_numpy(np.array(array.reshape(n, -1), copy=True)),
                             persistent=False)
        norms = torch.empty(n, dtype=torch.float64)
        for lo in range(0, n, self.chunk):
            x = self._chunk(lo)
            norms[lo:lo + len(x)] = (x * x).sum(1)
        self.register_buffer("norms", norms, persistent=False)
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.detach().to(torch.float64).clone(),
                             persistent=False)
        # a parameter-free module has no device to report: helpers.diffusion reads next(parameters())
        self.anchor = torch.nn.Parameter(torch.zeros(0), requires_grad=False)

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def _chunk(self, lo: int) -> torch.Tensor:
        """Training images lo.. in [-1, 1]: float32 u/127.5 − 1 as in training, then float64."""
        u = self.images[lo:lo + self.chunk]
        return (u.to(torch.float32) / 127.5 - 1.0).to(torch.float64)

    def _alpha_bar(self, timestep, batch: int) -> torch.Tensor:
        t = torch.as_tensor(timestep, device=self.device).long().reshape(-1)
        return self.alphas_cumprod[t].expand(batch) if t.numel() == 1 else self.alphas_cumprod[t]

    def _logits(self, x: torch.Tensor, xx: torch.Tensor, root: torch.Tensor, var: torch.Tensor,
                lo: int, chunk: torch.Tensor) -> torch.Tensor:
        """−‖x − √ᾱ x_i‖² / (2(1−ᾱ)) for the images of ``chunk`` (float64)."""
        d2 = xx[:, None] - 2.0 * root[:, None] * (x @ chunk.T) \
            + (root * root)[:, None] * self.norms[None, lo:lo + len(chunk)]
        return -d2.clamp_min_(0.0) / (2.0 * var[:, None])

    @torch.no_grad()
    def weights(self, sample: torch.Tensor, alpha_bar) -> torch.Tensor:
        """The full B×N posterior weights (float64) at ``alpha_bar`` (scalar
        or per image); for checks on small training sets."""
        x, root, var, xx = self._prepare(sample, alpha_bar)
        logits = torch.cat([self._logits(x, xx, root, var, lo, self._chunk(lo))
                            for lo in range(0, self.n_images, self.chunk)], dim=1)
        return torch.softmax(logits, dim=1)

    def _prepare(self, sample: torch.Tensor, alpha_bar):
        x = sample.to(self.device, torch.float64).reshape(len(sample), -1)
        a = torch.as_tensor(alpha_bar, dtype=torch.float64, device=self.device).reshape(-1).expand(len(x))
        var = (1.0 - a).clamp_min(VARIANCE_FLOOR)
        return x, a.sqrt(), var, (x * x).sum(1)

    @torch.no_grad()
    def posterior_mean(self, sample: torch.Tensor, alpha_bar) -> torch.Tensor:
        """E[x₀ | x_t] (B×D, float64), streamed over chunks of training images
        with a running log-sum-exp."""
        x, root, var, xx = self._prepare(sample, alpha_bar)
        b = len(x)
        running_max = torch.full((b,), -math.inf, dtype=torch.float64, device=self.device)
        total = torch.zeros(b, dtype=torch.float64, device=self.device)
        acc = torch.zeros(b, self.dim, dtype=torch.float64, device=self.device)
        for lo in range(0, self.n_images, self.chunk):
            chunk = self._chunk(lo)
            logits = self._logits(x, xx, root, var, lo, chunk)
            new_max = torch.maximum(running_max, logits.max(dim=1).values)
            scale = torch.exp(running_max - new_max)        # 0 on the first chunk (exp(−inf))
            p = torch.exp(logits - new_max[:, None])
            total = total * scale + p.sum(dim=1)
            acc = acc * scale[:, None] + p @ chunk
            running_max = new_max
        return acc / total[:, None]

    @torch.no_grad()
    def forward(self, sample: torch.Tensor, timestep, return_dict: bool = True, **unused):
        """ε (or v, or x̂₀) for ``sample`` at ``timestep``, in ``sample``'s dtype."""
        with torch.autocast(device_type=sample.device.type, enabled=False):
            a = self._alpha_bar(timestep, len(sample))
            x0 = self.posterior_mean(sample, a)
            x = sample.to(torch.float64).reshape(len(sample), -1)
            root, sigma = a.sqrt()[:, None], (1.0 - a).clamp_min(0.0).sqrt()[:, None]
            if self.prediction_type == "sample":
                out = x0
            else:
                eps = torch.where(sigma > 0, (x - root * x0) / sigma.clamp_min(1e-300), torch.zeros_like(x))
                out = eps if self.prediction_type == "epsilon" else root * eps - sigma * x0
            out = out.reshape(sample.shape).to(sample.dtype if sample.is_floating_point() else torch.float32)
        if not return_dict:
            return (out,)
        return SimpleNamespace(sample=out)


# --------------------------------------------------------------------------
# The scheduler of the trained diffusion model
# --------------------------------------------------------------------------

def _schedule(scheduler) -> dict:
    return {k: scheduler.config.get(k) for k in SCHEDULE_KEYS}


def _same_schedule(a: Mapping, b: Mapping) -> bool:
    for key in SCHEDULE_KEYS:
        x, y = a.get(key), b.get(key)
        if isinstance(x, float) or isinstance(y, float):
            if x is None or y is None or not math.isclose(float(x), float(y), rel_tol=1e-9, abs_tol=0.0):
                return False
        elif x != y:
            return False
    return True


def schedule_file(results_dir: str | os.PathLike) -> Path:
    """Where a run without a trained diffusion model keeps the
    ``train_diffusion`` settings its optimal denoiser samples with
    (:func:`write_schedule`; ``samples/optimal_denoiser_schedule.yaml``)."""
    return samples_path(results_dir, MODEL_NAME).with_name(f"{MODEL_NAME}_schedule.yaml")


def has_trained_schedule(results_dir: str | os.PathLike) -> bool:
    """Whether this run holds a trained diffusion model's scheduler."""
    return (diffusion.pipeline_dir(results_dir) / "scheduler" / "scheduler_config.json").is_file()


def write_schedule(results_dir: str | os.PathLike, settings) -> Path:
    """Keep ``settings`` (the resolved ``train_diffusion`` settings) as this
    run's optimal-denoiser schedule, for a run without a trained diffusion
    model (a profile that samples no diffusion model, e.g. a StyleGAN-only
    arm); a trained model's own scheduler wins over it (:func:`noise_scheduler`)."""
    if not isinstance(settings, config.TrainDiffusionSettings):
        settings = config.build("train_diffusion", dict(settings))
    path = schedule_file(results_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_yaml(path, config.as_dict(settings))
    return path


def noise_scheduler(results_dir: str | os.PathLike, settings=None):
    """The ``DDPMScheduler`` to sample with: built from ``settings`` (the
    ``train_diffusion`` settings, a schema instance or mapping) when given,
    else the trained pipeline's own (``results_dir/diffusion/pipeline/scheduler``),
    else the settings kept by :func:`write_schedule`. Given both a trained
    pipeline and settings, they must describe the same schedule."""
    from diffusers import DDPMScheduler

    trained_dir = diffusion.pipeline_dir(results_dir) / "scheduler"
    trained = None
    if has_trained_schedule(results_dir):
        trained = DDPMScheduler.from_pretrained(str(trained_dir.parent), subfolder="scheduler",
                                                local_files_only=True)
    if settings is None and trained is None and schedule_file(results_dir).is_file():
        settings = config.read_yaml(schedule_file(results_dir))
    if settings is None:
        if trained is None:
            raise FileNotFoundError(f"{trained_dir}: no trained diffusion scheduler; train the diffusion model "
                                    f"(notebook 03) first, or pass its train_diffusion settings, or keep them "
                                    f"in {schedule_file(results_dir)} (helpers.optimal_denoiser.write_schedule)")
        return trained
    if not isinstance(settings, config.TrainDiffusionSettings):
        settings = config.build("train_diffusion", dict(settings))
    built = diffusion.build_noise_scheduler(settings)
    if trained is not None and not _same_schedule(_schedule(built), _schedule(trained)):
        raise ValueError(f"the train_diffusion settings give the schedule {_schedule(built)}, but the trained "
                         f"model in {trained_dir.parent} used {_schedule(trained)}; the optimal denoiser must "
                         f"be sampled like the trained model")
    return built


# --------------------------------------------------------------------------
# Sampling: helpers.diffusion's own loop, helpers.sampling's own writer
# --------------------------------------------------------------------------

def as_pipeline(training: np.ndarray, scheduler, chunk_mb: float = 64.0) -> SimpleNamespace:
    """What :func:`helpers.diffusion.make_generate` needs of a ``DDPMPipeline``:
    ``.unet`` and ``.scheduler``."""
    return SimpleNamespace(unet=OptimalDenoiser(training, scheduler, chunk_mb=chunk_mb), scheduler=scheduler)


def make_generate(training: np.ndarray, scheduler, sampler: str = "ddpm", num_inference_steps: int | None = None,
                  device: str | torch.device | None = None, progress: bool = False, num_threads: int = 0,
                  chunk_mb: float = 64.0) -> Callable[[Sequence[int]], np.ndarray]:
    """``generate(seeds) -> uint8 (n, C, H, W)``: :func:`helpers.diffusion.make_generate`
    on the optimal denoiser (fp32 state, no autocast: the model computes in float64)."""
    return diffusion.make_generate(as_pipeline(training, scheduler, chunk_mb), sampler, num_inference_steps,
                                   device, autocast="no", progress=progress, compile=False,
                                   num_threads=num_threads)


def sample(results_dir: str | os.PathLike, n_images: int, first_seed: int, batch_size: int, sampler: str = "ddpm",
           num_inference_steps: int | None = None, device: str | None = None, progress: bool = True, *,
           settings: Any = None, num_threads: int = 0, chunk_mb: float = 64.0) -> Path:
    """``samples/optimal_denoiser.npy`` (uint8 N×C×H×W) and
    ``optimal_denoiser_seeds.csv``: image i has seed ``first_seed + i`` and
    is drawn with the trained diffusion model's scheduler (see
    :func:`noise_scheduler`) from ``results_dir/data/train.npy``.
    Resumable batch by batch; what the samples are (sampler, steps,
    schedule, training data) is kept in ``samples/optimal_denoiser_sampler.json``
    and samples made otherwise are never mixed in or overwritten silently."""
    results_dir = Path(results_dir)
    data = diffusion.TrainingImages(Run(results_dir).data.folder)
    scheduler = noise_scheduler(results_dir, settings)
    device_ = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = samples_path(results_dir, MODEL_NAME)
    partial = out.with_name(out.stem + ".partial.npy")
    record_path = out.with_name(f"{MODEL_NAME}_sampler.json")
    what = {"sampler": sampler, "num_inference_steps": num_inference_steps, "schedule": _schedule(scheduler),
            "data": data.fingerprint(), "n_training": len(data)}
    how = {"device": device_.type}
    shape = (data.channels, data.image_size, data.image_size)
    old = read_json(record_path) if record_path.exists() else None
    if old is not None and (out.exists() or partial.exists()):
        finished = finished_samples(out, n_images, first_seed, shape)
        if {k: old.get(k) for k in what} != what or (not finished and {k: old.get(k) for k in how} != how):
            raise ValueError(f"{record_path}: the existing optimal-denoiser samples were made with {old}, not "
                             f"{what | how}; remove {out.name} and {partial.name} in {out.parent} to sample again")
        if finished:
            return out
    write_json(record_path, what | how)
    generate = make_generate(np.asarray(data.array), scheduler, sampler, num_inference_steps, device_,
                             num_threads=num_threads, chunk_mb=chunk_mb)
    return sample_to_npy(generate, out, n_images, first_seed, shape, batch_size=batch_size, progress=progress,
                         desc=f"optimal denoiser ({sampler})")
