"""The pixel-space diffusion model of the study: an unconditional DDPM built
from HuggingFace diffusers parts, trained with HF accelerate, sampled one
seed per image.

Why these parts: the authors trained OpenAI's guided-diffusion UNet; diffusers'
``UNet2DModel`` with scale-shift normalisation, attention at chosen feature-map
sizes and conv down/up-sampling is the same network (see ``DIFFERENCES``), and
``DDPMScheduler`` with guided-diffusion's scaled linear β schedule and
``variance_type="fixed_large"`` is the same forward process and ancestral
sampler. accelerate lets one loop run on CPU, one GPU (bf16 autocast) or
several (``accelerate launch``).

Training is resumable *exactly*: the images of step ``s`` and its noise and
timesteps are drawn from generators seeded with ``(seed, s, process)``, and a
checkpoint holds model, EMA, optimizer, LR schedule, step and RNG states, so a
run killed after k steps and re-run ends with the same weights as one that
never stopped (on CPU, bit for bit).

Results (``results_dir/diffusion/``): ``checkpoints/step_*.safetensors``,
``loss_log.csv`` (step, images_seen, epoch, loss, lr, grad_norm, seconds, threads),
``pipeline/`` (``DDPMPipeline.save_pretrained`` with the EMA weights,
safetensors; loads offline), ``summary.json`` and the notebook's
``params.yaml``. Sampling writes ``samples/diffusion.npy`` (+ seeds) through
:func:`helpers.sampling.sample_to_npy`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import checkpoints as ckpt
from . import config
from .config import TrainDiffusionSettings
from .common import progress as progress_bar
from .common import image_seeds, read_json, stable_hash, write_json
from .sampling import sample_to_npy, samples_path, to_uint8

MODEL_NAME = "diffusion"

#: How the ``paper`` profile differs from the authors' guided-diffusion run
#: (shown by notebook 03 and kept next to the code that causes it).
DIFFERENCES: tuple[str, ...] = (
    "Network: diffusers UNet2DModel instead of guided-diffusion's UNetModel. With widths "
    "64·(1,1,2,2,4,4), 3 res-blocks per level, scale-shift norm, conv down/up-sampling, "
    "attention at 16×16 and 8×8 (4 heads of 64 channels) and in the middle block it has the "
    "same layers; guided-diffusion's q/k/v are 1×1 convolutions where diffusers uses linear "
    "layers (the same maps).",
    "Initialisation: guided-diffusion zero-initialises the last conv of every res-block, the "
    "attention output projection and the output conv; `zero_init: true` does the same to the "
    "diffusers modules. Other layers keep PyTorch/diffusers' default init.",
    "Variance: the authors' flags (their README) set no --learn_sigma, so guided-diffusion's "
    "default applies: fixed variance β_t and the plain ε-MSE loss, which is exactly "
    "DDPMScheduler(variance_type='fixed_large') here. Had they used --learn_sigma True (hybrid "
    "L_simple + λ·L_vlb loss, 2C output channels), diffusers has no hybrid loss: its scheduler "
    "could sample with 'learned_range' but the VLB term would have to be hand-written.",
    "Noise schedule: guided-diffusion scales the linear schedule with T (β from 0.0001·1000/T "
    "to 0.02·1000/T: 2.5e-5..0.005 for T = 4000); `beta_start/beta_end: null` computes the "
    "same values (diffusers would otherwise use 1e-4..0.02 for every T). diffusers keeps "
    "ᾱ_t in float32 where guided-diffusion uses float64.",
    "EMA: diffusers' EMAModel with min_decay = decay = 0.9999 (`ema_warmup: false`) is "
    "guided-diffusion's constant rate, except that its first update copies the weights after "
    "step 1 where guided-diffusion starts from the initial weights.",
    "Precision: on a GPU the default is bf16 autocast (accelerate mixed_precision) with "
    "fp32 master weights; guided-diffusion's default (use_fp16 False) is fp32. Set "
    "`mixed_precision: 'no'` for fp32.",
    "Optimiser: AdamW(lr 1e-4, weight decay 0, betas 0.9/0.999), constant LR as in "
    "guided-diffusion; gradient clipping is available but off in `paper` (guided-diffusion "
    "does not clip).",
    "Data: batches are drawn as consecutive slices of per-epoch permutations seeded by "
    "(seed, epoch), like a shuffled DataLoader; no flips, as the authors (their loader takes a "
    "random_flip argument but never applies it).",
    "Length: guided-diffusion trains until stopped; the authors' sampling instructions load "
    "their 30 000-step checkpoint (model030000.pt), so `max_steps` is 30 000 (longer runs: "
    "--set train_diffusion.max_steps=N).",
)


#: Why each size profile is what it is (configs/profiles/*.yaml, section
#: train_diffusion); notebook 03 shows the one in use.
PROFILE_NOTES: dict[str, str] = {
    "smoke": "Seconds: a 0.19 M-parameter UNet (widths 16-32, attention at 16×16), T = 50, 20 steps of 8 "
             "images at 32², one CPU thread (for tensors this small a second thread only adds waiting). "
             "It checks that the step runs end to end; its samples are noise.",
    "cpu": "The size sweep on 2 cores: a 1.13 M-parameter UNet (widths 16-32-64-64, 32² down to 4², one "
           "res-block per level, attention at 8×8 and in the middle), T = 200 with guided-diffusion's 1000/T-scaled "
           "linear schedule, batch 16 × 900 steps = 14 400 images per training-set size, AdamW lr 1e-3 after 50 "
           "warm-up steps, clipping at 1, EMA ramping (1+s)/(10+s) up to 0.999. Two deviations from the authors, "
           "both measured on 16 phantom slices at this budget (16 samples each, seeds 100-115; background = pixels "
           "that are 0 in every training image, speckle = std of the Laplacian inside the brain, training images "
           "56): ε-prediction gives grey backgrounds (mean 99.8 grey levels, std 28.4): at high noise an "
           "ε-model's x̂₀ = (x_t - √(1-ᾱ)ε̂)/√ᾱ multiplies its error by 1/√ᾱ_t (about 150 at t = T) and clipping "
           "x̂₀ to [-1, 1] turns that into a bias (without clipping: mean 139.6, std 119); v-prediction trained "
           "alike gives a dark background (mean 4.9, std 5.3, speckle 67.9), so the profile uses it. fixed_small "
           "(σ² = the posterior variance) instead of fixed_large (σ² = β_t) lowers the last steps' noise: "
           "background std 4.1, speckle 62.1; DDIM (deterministic, 50 steps) was worse (mean 9.5, speckle 71.5). "
           "The speckle that remains we take for undertraining (not measured further; the former 64² default "
           "with 12 800 images, 36 passes per slice, looked noisier by eye).",
    "gpu": "One modern GPU, hours: the paper's UNet (base width 64, 3 res-blocks, attention at 16×16 and "
           "8×8) with guided-diffusion's 128² channel multipliers (1,1,2,3,4), 31 M parameters; T = 1000 "
           "(ε-prediction, fixed-large variance) so that sampling thousands of images with the full "
           "ancestral loop takes hours, not days; batch 32 × 100 000 steps, lr 1e-4, EMA 0.9999 with the "
           "(1+s)/(10+s) ramp, bf16 autocast.",
    "paper": "The authors' guided-diffusion setting (256², 5 channels, base width 64, 3 res-blocks, 4000 "
             "steps, linear β, lr 1e-4, batch 32, EMA 0.9999, ε-prediction): 41.1 M parameters. The "
             "differences that remain are listed below.",
}


# --------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------

# The settings of a run: helpers.config.TrainDiffusionSettings (one schema, torch-free).


def attention_levels(image_size: int, n_levels: int, resolutions: Sequence[int]) -> list[int]:
    """Level indices whose feature maps have one of ``resolutions`` (level i
    works at ``image_size / 2**i``), as guided-diffusion's
    ``attention_resolutions``."""
    sizes = [image_size // 2**i for i in range(n_levels)]
    levels = []
    for res in resolutions:
        if int(res) not in sizes:
            raise ValueError(
                f"attention resolution {res} is not a feature-map size of this UNet "
                f"(image {image_size}, {n_levels} levels: {sizes})"
            )
        levels.append(sizes.index(int(res)))
    return sorted(set(levels))


def guided_diffusion_betas(num_train_timesteps: int) -> tuple[float, float]:
    """guided-diffusion's linear schedule endpoints: 1e-4 and 0.02 scaled by
    1000/T, so that any T gives the same overall amount of noise."""
    scale = 1000.0 / num_train_timesteps
    return scale * 1e-4, scale * 0.02


# --------------------------------------------------------------------------
# Model and noise schedule
# --------------------------------------------------------------------------

def build_unet(settings: TrainDiffusionSettings, channels: int, image_size: int):
    """A ``UNet2DModel`` predicting ε (or v) for ``channels``-channel square images."""
    from diffusers import UNet2DModel

    widths = tuple(int(w) for w in settings.block_out_channels)
    if image_size % 2 ** (len(widths) - 1):
        raise ValueError(f"image_size {image_size} is not divisible by 2**{len(widths) - 1} ({len(widths)} UNet levels)")
    attn = attention_levels(image_size, len(widths), settings.attention_resolutions)
    bad = [widths[i] for i in attn if widths[i] % settings.attention_head_dim]
    if bad:
        raise ValueError(f"attention_head_dim={settings.attention_head_dim} must divide widths {bad}")
    down = tuple("AttnDownBlock2D" if i in attn else "DownBlock2D" for i in range(len(widths)))
    up = tuple("AttnUpBlock2D" if i in attn else "UpBlock2D" for i in reversed(range(len(widths))))
    unet = UNet2DModel(
        sample_size=image_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=widths,
        layers_per_block=int(settings.layers_per_block),
        down_block_types=down,
        up_block_types=up,
        attention_head_dim=int(settings.attention_head_dim),
        norm_num_groups=int(settings.norm_num_groups),
        resnet_time_scale_shift="scale_shift" if settings.scale_shift_norm else "default",
        dropout=float(settings.dropout),
        flip_sin_to_cos=True,   # guided-diffusion's [cos, sin] timestep embedding
        freq_shift=0,
    )
    if settings.zero_init:
        zero_init_residual_outputs(unet)
    return unet


@torch.no_grad()
def zero_init_residual_outputs(unet) -> None:
    """Zero the layers guided-diffusion zero-initialises: the second conv of
    every res-block, every attention output projection and the output conv,
    so each residual branch starts as the identity."""
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D

    for module in unet.modules():
        if isinstance(module, ResnetBlock2D):
            torch.nn.init.zeros_(module.conv2.weight)
            torch.nn.init.zeros_(module.conv2.bias)
        elif isinstance(module, Attention):
            torch.nn.init.zeros_(module.to_out[0].weight)
            torch.nn.init.zeros_(module.to_out[0].bias)
    torch.nn.init.zeros_(unet.conv_out.weight)
    torch.nn.init.zeros_(unet.conv_out.bias)


def build_noise_scheduler(settings: TrainDiffusionSettings):
    """The DDPM forward process and ancestral sampler (clipping x̂₀ to
    [-1, 1] as guided-diffusion's ``clip_denoised``)."""
    from diffusers import DDPMScheduler

    start, end = guided_diffusion_betas(settings.num_train_timesteps)
    return DDPMScheduler(
        num_train_timesteps=int(settings.num_train_timesteps),
        beta_schedule=settings.beta_schedule,
        beta_start=float(settings.beta_start if settings.beta_start is not None else start),
        beta_end=float(settings.beta_end if settings.beta_end is not None else end),
        variance_type=settings.variance_type,
        prediction_type=settings.prediction_type,
        clip_sample=True,
        clip_sample_range=1.0,
    )


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------
# Speed options
# --------------------------------------------------------------------------

#: torch's own choice at import (the number of physical cores)
DEFAULT_THREADS = torch.get_num_threads()


def configure_threads(num_threads: int) -> int:
    """Set torch's intra-op threads to ``num_threads`` (0: leave as is);
    returns the number in use."""
    if num_threads and num_threads > 0:
        torch.set_num_threads(int(num_threads))
    return torch.get_num_threads()


def fastest_threads(work: Callable[[], Any], candidates: Sequence[int] | None = None) -> int:
    """Run ``work`` under each thread count (1 and all cores by default),
    twice, alternating; keep the fastest. Why: on a 2-core machine two
    threads are ~1.7× faster when it is idle but several times *slower*
    when other processes compete for the cores (threads wait on each other
    at every operation), so the choice is measured, not assumed."""
    candidates = sorted(set(candidates or (1, DEFAULT_THREADS)))
    if len(candidates) == 1:
        torch.set_num_threads(candidates[0])
        return candidates[0]
    best: dict[int, float] = {}
    for _ in range(2):
        for n in candidates:
            torch.set_num_threads(n)
            t0 = time.perf_counter()
            work()
            best[n] = min(best.get(n, math.inf), time.perf_counter() - t0)
    chosen = min(best, key=best.get)
    torch.set_num_threads(chosen)
    return chosen


class ThreadTuner:
    """Keeps a CPU loop on the faster of 1 thread and all cores while the
    machine's load changes: measures (:func:`fastest_threads`) at the start,
    when asked (:meth:`request`), and as soon as the median of the last 3
    steps is twice the time the steps took right after the last measurement
    (another process started: two threads can then be 10× slower)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and DEFAULT_THREADS > 1
        self.due = True
        self.times: list[float] = []
        self.baseline: float | None = None
        self._t0 = 0.0

    def request(self) -> None:
        self.due = True

    def before(self, probe: Callable[[], Any]) -> None:
        """Call before a step with a closure that runs a representative pass."""
        if self.enabled and self.due:
            fastest_threads(probe)
            self.due, self.times, self.baseline = False, [], None
        self._t0 = time.perf_counter()

    def after(self) -> None:
        if not self.enabled:
            return
        self.times.append(time.perf_counter() - self._t0)
        recent = sorted(self.times[-3:])[len(self.times[-3:]) // 2]
        if self.baseline is None:
            if len(self.times) == 3:
                self.baseline = recent
        elif recent > 2 * self.baseline:
            self.due = True


def resolve_speed_options(settings: TrainDiffusionSettings, device: torch.device | str) -> dict:
    """Fill the device-dependent defaults: on CUDA bf16 autocast (fp16 where
    bf16 is missing), channels_last and fused AdamW; on CPU plain fp32,
    contiguous memory and the foreach AdamW (fused AdamW and channels_last
    measured 1.07× and 1.09× for training on 2 cores, within the machine's
    noise; benchmarks/bench_diffusion.py). ``compile`` stays as given."""
    cuda = torch.device(device).type == "cuda"
    mp = settings.mixed_precision
    if mp in (None, "auto"):
        mp = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "no"
    if not cuda and mp != "no":
        raise ValueError(f"mixed_precision={mp!r} needs a CUDA device; use 'no' on CPU")
    return {
        "mixed_precision": mp,
        "channels_last": bool(cuda if settings.channels_last is None else settings.channels_last),
        "fused_adamw": bool(cuda if settings.fused_adamw is None else settings.fused_adamw),
        "compile": bool(settings.compile),
    }


def make_accelerator(mixed_precision: str, cpu: bool):
    """An ``accelerate.Accelerator``. In a single process (no ``accelerate
    launch``) its shared state is reset first so that one Python session can
    train with different precisions one after the other (tests, benchmark)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    state = PartialState()
    if state.num_processes == 1 and AcceleratorState._shared_state:
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu)


# --------------------------------------------------------------------------
# Training data: the memory-mapped uint8 array, batches fixed by (seed, step)
# --------------------------------------------------------------------------

class TrainingImages:
    """``data/train.npy`` (uint8 N×C×H×W, memory-mapped) with its
    ``meta.json``. Batch ``s`` is a fixed function of ``(seed, s)``: the
    stream of images is the concatenation of per-epoch permutations, each
    seeded by ``(seed, epoch)``, and step ``s`` takes the next
    ``batch_size`` of them. So a resumed run sees the same images."""

    def __init__(self, data_dir: str | os.PathLike):
        data_dir = Path(data_dir)
        array_path, meta_path = data_dir / "train.npy", data_dir / "meta.json"
        for path in (array_path, meta_path):
            if not path.is_file():
                raise FileNotFoundError(f"{path}: missing; run notebook 01 (prepare data) first")
        self.meta = read_json(meta_path)
        try:
            self.array = np.load(array_path, mmap_mode="r")
        except ValueError as err:
            raise ValueError(f"{array_path}: not a readable .npy array ({err})") from err
        a = self.array
        if a.dtype != np.uint8 or a.ndim != 4 or a.shape[2] != a.shape[3] or len(a) == 0:
            raise ValueError(f"{array_path}: expected a non-empty uint8 N×C×H×W array with H = W, got {a.dtype} {a.shape}")
        channels = self.meta.get("channels")
        n_channels = len(channels) if isinstance(channels, list) else channels
        if n_channels is not None and int(n_channels) != a.shape[1]:
            raise ValueError(f"{meta_path}: 'channels' lists {n_channels} channels but {array_path} has {a.shape[1]}")
        size = self.meta.get("image_size")
        if size is not None and int(size) != a.shape[2]:
            raise ValueError(f"{meta_path}: image_size {size} but {array_path} holds {a.shape[2]}×{a.shape[3]} images")
        self.path = array_path
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.array)

    @property
    def channels(self) -> int:
        return int(self.array.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.array.shape[2])

    def fingerprint(self) -> str:
        """Shape and first/last image: enough to notice other data under a
        checkpoint without hashing gigabytes."""
        return stable_hash({"shape": list(self.array.shape),
                            "first": np.asarray(self.array[0]).tobytes().hex()[:4096],
                            "last": np.asarray(self.array[-1]).tobytes().hex()[:4096]})

    def _permutation(self, seed: int, epoch: int) -> np.ndarray:
        key = (seed, epoch)
        if key not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            self._perms[key] = np.random.default_rng([seed, epoch, 7]).permutation(len(self))
        return self._perms[key]

    def batch_indices(self, seed: int, step: int, batch_size: int, rank: int = 0, world: int = 1) -> np.ndarray:
        """Dataset indices of process ``rank``'s share of global batch ``step``."""
        per = batch_size // world
        start = step * batch_size + rank * per
        positions = np.arange(start, start + per, dtype=np.int64)
        epochs, offsets = np.divmod(positions, len(self))
        return np.array([self._permutation(seed, int(e))[o] for e, o in zip(epochs, offsets)], dtype=np.int64)

    def batch(self, indices: np.ndarray, flip: np.ndarray | None = None) -> torch.Tensor:
        """float32 images in [-1, 1]; ``flip`` mirrors the chosen ones left-right."""
        images = np.asarray(self.array[np.asarray(indices)], dtype=np.float32)
        if flip is not None and flip.any():
            images[flip] = images[flip][..., ::-1]
        return torch.from_numpy(images).div_(127.5).sub_(1.0)


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """The seed of step ``step``'s noise, timesteps and flips on process ``rank``."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


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
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from diffusers import UNet2DModel

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


# --------------------------------------------------------------------------
# Loss log: a CSV appended to, cut back to the checkpoint on resume
# --------------------------------------------------------------------------

LOG_COLUMNS = ("step", "images_seen", "epoch", "loss", "lr", "grad_norm", "seconds", "threads")


class LossLog:
    """``loss_log.csv``: one row per ``log_every`` steps. On resume, rows
    after the checkpoint's step (and a torn last line) are dropped, so the
    re-run's rows follow without duplicates."""

    def __init__(self, path: str | os.PathLike, resume_step: int, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        if not enabled:
            return
        header = ",".join(LOG_COLUMNS)
        kept = [header]
        if self.path.exists() and resume_step > 0:
            for line in self.path.read_text().splitlines()[1:]:
                fields = line.split(",")
                if len(fields) == len(LOG_COLUMNS) and fields[0].isdigit() and int(fields[0]) <= resume_step:
                    kept.append(line)
        from .common import write_text
        write_text(self.path, "\n".join(kept) + "\n")

    def append(self, row: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        values = []
        for c in LOG_COLUMNS:
            v = row.get(c)
            values.append("" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v)))
        with open(self.path, "a") as handle:
            handle.write(",".join(values) + "\n")


# --------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------

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
    """
    if not isinstance(settings, TrainDiffusionSettings):
        settings = config.build("train_diffusion", dict(settings))
    results_dir = Path(results_dir)
    out = output_dir(results_dir)
    ckpt_dir = out / "checkpoints"
    data = TrainingImages(results_dir / "data")
    identity = {**settings.identity(), "data": data.fingerprint()}
    identity_hash = stable_hash(identity)
    threads = configure_threads(settings.num_threads)

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
        return read_json(summary_path) if summary_path.exists() else {"step": start}

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
    # CPU threads: measured at the start and after every checkpoint unless fixed by num_threads
    probe_threads = acc.device.type == "cpu" and settings.num_threads == 0 and DEFAULT_THREADS > 1 and world == 1
    tuner = ThreadTuner(probe_threads)
    if acc.is_main_process:
        print(f"diffusion UNet: {n_params:,} parameters; {len(data)} training images "
              f"{data.channels}×{data.image_size}²; {acc.device}, {acc.num_processes} process(es), "
              f"{'1..' + str(DEFAULT_THREADS) + ' (measured)' if probe_threads else threads} CPU thread(s), "
              f"options {setup.options}; "
              f"{'resuming at step ' + str(start) if start else 'starting'} → {settings.max_steps} steps "
              f"of {settings.batch_size} images")
    log = LossLog(out / "loss_log.csv", start, enabled=acc.is_main_process)
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
        indices = data.batch_indices(settings.seed, step, settings.batch_size, rank, world)
        flip = np.random.default_rng(seed).random(len(indices)) < 0.5 if settings.horizontal_flip else None
        images = data.batch(indices, flip).to(device_, non_blocking=True)
        tuner.before(lambda: _forward_pass(setup, images))
        generator = torch.Generator(device=device_).manual_seed(seed)
        loss, grad_norm = train_step(setup, images, generator)
        tuner.after()
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
        if done % settings.checkpoint_every == 0 or done == end:
            _save_checkpoint(setup, ckpt_dir, done, identity_hash, elapsed + time.perf_counter() - t0)
            tuner.request()
        bar.update(1)
    bar.close()
    seconds = elapsed + time.perf_counter() - t0
    if end < settings.max_steps:
        return {"step": end, "finished": False, "seconds": seconds}
    if end == start and found is None:
        raise RuntimeError("no training step was run")
    summary = {"step": settings.max_steps, "images_seen": settings.max_steps * settings.batch_size,
               "epochs": settings.max_steps * settings.batch_size / len(data), "n_params": n_params,
               "seconds": seconds, "final_loss": _final_loss(out / "loss_log.csv"),
               "device": str(device_), "processes": world,
               "threads": "measured (1 or all cores)" if probe_threads else threads, "options": setup.options,
               "identity_hash": identity_hash, "pipeline": str(pipeline_dir(results_dir))}
    if acc.is_main_process:
        save_pipeline(setup, pipeline_dir(results_dir), {"step": settings.max_steps, "identity_hash": identity_hash})
        write_json(summary_path, summary)
    acc.wait_for_everyone()
    return summary


def _forward_pass(setup: TrainingSetup, images: torch.Tensor) -> None:
    """A representative pass for choosing threads: forward only, no
    gradients, so weights, optimizer and RNG states are untouched."""
    timesteps = torch.full((len(images),), setup.settings.num_train_timesteps // 2, device=images.device)
    with torch.no_grad():
        setup.model(images, timesteps, return_dict=False)


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
        ckpt.save_checkpoint(folder, step, state, keep_last=setup.settings.keep_checkpoints)
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


# --------------------------------------------------------------------------
# Sampling: one generator per image
# --------------------------------------------------------------------------

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
                  channels_last: bool = False, tune_threads: bool = False) -> torch.Tensor:
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
    tuner = ThreadTuner(tune_threads and device.type == "cpu")
    for i, t in enumerate(progress_bar(sched.timesteps, desc=f"{sampler} steps", leave=False, disable=not progress)):
        model_in = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        t_batch = t.to(device).expand(len(seeds))
        if i % 100 == 0:
            tuner.request()  # also notice when the machine became free again
        tuner.before(lambda: unet(model_in, t_batch))
        with amp:
            eps = unet(model_in, t_batch, return_dict=False)[0]
        tuner.after()
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
    On CPU with ``num_threads=0`` the thread count is kept on the faster
    choice by a :class:`ThreadTuner`."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    unet = pipeline.unet.to(device).eval()
    cuda = device.type == "cuda"
    if autocast == "auto":
        autocast = "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    unet.to(memory_format=torch.channels_last)
    if compile:
        unet = torch.compile(unet)
    configure_threads(num_threads)

    def generate(seeds: Sequence[int]) -> np.ndarray:
        images = sample_images(unet, pipeline.scheduler, list(seeds), sampler, num_inference_steps, device,
                               autocast=autocast, progress=progress, channels_last=True,
                               tune_threads=not num_threads)
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
        finished = _finished_samples(out, n_images, first_seed, shape)
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


def _finished_samples(out: Path, n_images: int, first_seed: int, shape: tuple[int, int, int]) -> bool:
    """Whether ``out`` already holds exactly these images (as sample_to_npy checks)."""
    import pandas as pd

    seeds_csv = out.with_name(out.stem + "_seeds.csv")
    if not (out.exists() and seeds_csv.exists()):
        return False
    done = np.load(out, mmap_mode="r")
    seeds = pd.read_csv(seeds_csv)["seed"].to_numpy()
    return done.shape == (n_images, *shape) and done.dtype == np.uint8 and np.array_equal(
        seeds, image_seeds(n_images, first_seed))


def preview(results_dir: str | os.PathLike, seeds: Sequence[int], sampler: str = "ddpm",
            num_inference_steps: int | None = None, device: str | None = None) -> np.ndarray:
    """A few uint8 samples from the saved pipeline (for a look in notebook 03)."""
    generate = make_generate(load_pipeline(pipeline_dir(results_dir)), sampler, num_inference_steps, device,
                             progress=True)
    return generate(list(seeds))


# --------------------------------------------------------------------------
# Command line: several GPUs train through `accelerate launch`
# --------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    """``accelerate launch -m helpers.diffusion --dataset brats20 --profile paper``
    trains with the step's configuration on every visible GPU (notebook 03
    then finds the run finished and only plots it)."""
    import argparse

    from .common import results_dir as default_results_dir, save_params

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--dataset", default="phantom")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--results-dir", default=None, help="default: results/<dataset>")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a setting, as ./runall.sh --set (e.g. train_diffusion.max_steps=100)")
    args = parser.parse_args(argv)

    settings = config.resolve(args.dataset, args.profile, config.parse_overrides(args.set))["train_diffusion"]
    results = Path(args.results_dir) if args.results_dir else default_results_dir(args.dataset)
    summary = train(results, settings)
    if int(os.environ.get("RANK", "0")) == 0:
        save_params(config.as_dict(settings), output_dir(results), name="params_cli.yaml")
        print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
