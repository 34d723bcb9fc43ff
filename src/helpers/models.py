"""The model registry: one entry per generator and per control, the one
place that knows which models exist.

An entry names the model (the key of ``models`` in the settings and of
``samples/<name>.npy``), how tables and figures call and colour it, the
settings section and notebook of its training step (none for a control
that needs no training), and two functions with one signature for all:

    train(run, settings, *, progress, parallel) -> summary dict
    sample(run, settings, *, progress, parallel) -> samples file, or None

and the plan's estimates (``--plan``), one signature each for all models:

    time_training(TrainingProbe) -> TrainingEstimate
    time_sampling(SamplingProbe) -> (seconds, how they were got)

``run`` is one run folder (a results folder, or a sweep's size folder);
``settings`` the step's resolved settings (:mod:`helpers.config.schema`);
``parallel`` says that runs go side by side (one thread each). The step
runner (:mod:`helpers.steps`), the sample counts of the plan, the figures'
names and colours, the sweep's legend and the loss curves all read this
table. Adding a model: its package, one :func:`register` call here (or in
its package, imported by a test), and its settings section.

Model code is imported inside the entry's functions: this module imports
no torch, so figures and reports may read names and colours anywhere.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TrainFn = Callable[..., dict]
SampleFn = Callable[..., Any]


@dataclass(frozen=True)
class TrainingProbe:
    """What a model's training-time estimate may use (the plan fills it in)."""

    settings: Any                           # the model's training settings (its section)
    shape: tuple[int, int, int]             # C, H, W
    runs: Mapping[str, tuple[int, int]]     # run label -> (training images, held-out images)
    device: str
    processes: int
    per_process: int                        # the batch of one process (on a CPU: the whole batch)
    batch: int                              # the batch timed (on a CPU at most a few MB of pixels)
    timed: Callable[..., float]             # seconds per call of a function (after a warm-up)
    random_training: Callable[[int], Path]  # a data folder of that many random images of ``shape``


@dataclass(frozen=True)
class TrainingEstimate:
    """A training step's estimate: seconds for all runs, how they were got, what it writes."""

    seconds: float
    basis: str
    disk_bytes: int
    disk_what: str


@dataclass(frozen=True)
class SamplingProbe:
    """What a model's sampling-time estimate may use (the plan, ``--plan``, fills it in)."""

    settings: Any                           # step 04's settings
    sections: Mapping[str, Any]             # every step's settings, by section
    shape: tuple[int, int, int]             # C, H, W
    runs: Mapping[str, tuple[int, int]]     # run label -> (training images, held-out images)
    device: str
    batch: int                              # images per timed network pass
    steps: int                              # network passes per image of the diffusion samplers
    timed: Callable[..., float]             # seconds per call of a function (after a warm-up)
    n_images: int                           # images this model samples per run


@dataclass(frozen=True)
class Model:
    """One generator or control (see the module docstring)."""

    name: str
    display: str                      # how tables and figures name it
    colour: str                       # matplotlib colour, the same in every figure
    sample: SampleFn                  # sample(run, settings, *, progress, parallel) -> Path | None
    train: TrainFn | None = None      # train(run, settings, *, progress, parallel) -> summary; None: nothing to train
    section: str | None = None        # settings section of its training step ("train_<name>")
    notebook: str | None = None       # the notebook of that step (named when a result is missing)
    loss_columns: tuple[str, ...] = ()  # the loss-log columns its training curves show
    marker: str = "o"                 # the sweep plot's marker
    legend: str | None = None         # the sweep plot's legend (default: display)
    control: bool = False             # a control: a memorizer or underfitter by construction, not a model studied
    n_samples: Callable[[Any], int] | None = None  # images to sample from the sample settings (default n_<name>)
    check_processes: Callable[[Any, int], None] | None = None  # refuses settings a multi-process training cannot
                                                               # share (default: batch_size divisible by processes)
    time_sampling: Callable[[SamplingProbe], tuple[float, str]] | None = None  # the plan's estimate: seconds
                                                               # for all runs on one device, and how they were got
    time_training: Callable[[TrainingProbe], TrainingEstimate] | None = None  # the plan's estimate of its training
    # the audits over training (issue 22): the kept checkpoints' steps, images seen at a step, and
    # sample_checkpoint(run, settings, step, *, progress, parallel) -> samples file
    checkpoint_steps: Callable[[Any], list[int]] | None = None
    checkpoints_planned: Callable[[Any], int] | None = None   # kept checkpoints its settings section will leave
    checkpoint_images_seen: Callable[[Any, int], int] | None = None
    sample_checkpoint: Callable[..., Any] | None = None
    # prepare_sampling(run, settings_of): before step 04 samples, with ``settings_of(section)`` the
    # resolved settings of another step (the optimal denoiser keeps the diffusion model's schedule)
    prepare_sampling: Callable[[Path, Callable[[str], Any]], Any] | None = None
    # training_note(params) -> a few words on how it trained, for the landing page's setup line
    # (params: its <run>/<name>/params.yaml's parameters)
    training_note: Callable[[Mapping], str] | None = None

    def samples_wanted(self, settings) -> int:
        """How many images step 04 samples from this model."""
        if self.n_samples is not None:
            return int(self.n_samples(settings))
        return int(getattr(settings, f"n_{self.name}", 0))

    @property
    def output(self) -> str:
        """Its training outputs' folder under a run (``<name>/``)."""
        return self.name

    def trained(self, run: str | Path) -> bool:
        """Whether this run holds its training's outputs (always, for a model with nothing to train)."""
        return self.train is None or (Path(run) / self.output).is_dir()


REGISTRY: dict[str, Model] = {}


def register(model: Model, *, replace: bool = False) -> Model:
    """Add ``model`` to the registry (``replace``: over an entry of that name)."""
    if not model.name.isidentifier():
        raise ValueError(f"model name {model.name!r}: a Python identifier (it names files and settings keys)")
    if model.name in REGISTRY and not replace:
        raise ValueError(f"model {model.name!r} is registered already")
    if model.train is not None and model.section is None:
        raise ValueError(f"model {model.name!r} trains but names no settings section")
    REGISTRY[model.name] = model
    return model


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def get(name: str, key: str = "models") -> Model:
    """The entry of ``name``; an unknown name is an error naming ``key``."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"{key}: unknown model {name!r}; registered: {', '.join(REGISTRY)}") from None


def check_names(names: Sequence[str], key: str = "models") -> None:
    for name in names:
        get(name, key)


def names(*, controls: bool = True) -> list[str]:
    return [m.name for m in REGISTRY.values() if controls or not m.control]


def trainable() -> list[Model]:
    return [m for m in REGISTRY.values() if m.train is not None]


def not_sampled(section: str, sampled: Sequence[str]) -> Model | None:
    """The model trained in settings section ``section`` when ``sampled``
    (step 04's ``models``) leaves it out: nothing would use its training, so
    its step is not run (a profile with one model arm, e.g. StyleGAN without
    augmentation). None for any other section."""
    for model in trainable():
        if model.section == section and model.name not in sampled:
            return model
    return None


def by_section(section: str) -> Model:
    """The model trained by the step of settings section ``section``."""
    for model in REGISTRY.values():
        if model.section == section:
            return model
    raise KeyError(f"no registered model trains in section {section!r}; "
                   f"sections: {', '.join(m.section for m in trainable())}")


def display_name(name: str) -> str:
    return REGISTRY[name].display if name in REGISTRY else name


def sample_counts(settings) -> dict[str, int]:
    """``{model: images}`` of step 04's ``settings`` (models with none left out)."""
    counts = {name: get(name, "sample.models").samples_wanted(settings) for name in settings.models}
    return {name: n for name, n in counts.items() if n > 0}


def one_thread(settings, parallel: bool):
    """``settings`` with one torch thread when runs go side by side."""
    if parallel and hasattr(settings, "num_threads"):
        return dataclasses.replace(settings, num_threads=1)
    return settings


# --------------------------------------------------------------------------
# The entries: StyleGAN2-ADA, DDPM, and two controls: the optimal denoiser
# (a perfect memorizer) and the Gaussian control (learns nothing: issue 22)
# --------------------------------------------------------------------------

def _train_stylegan(run, settings, *, progress: bool = True, parallel: bool = False) -> dict:
    from . import stylegan

    settings = one_thread(settings, parallel)
    return stylegan.train(run, settings, seed=settings.seed, time_limit_min=settings.time_limit_min,
                          progress=progress)


def _check_stylegan(settings, processes: int) -> None:
    from .stylegan.trainer import check_batch

    check_batch(settings, processes)  # also the minibatch-std group of each process's share


def _sample_stylegan(run, settings, *, progress: bool = True, parallel: bool = False) -> Path:
    from . import stylegan

    return stylegan.sample(run, settings.n_stylegan, settings.first_seed, settings.batch_size,
                           truncation_psi=settings.truncation_psi, progress=progress)


def _sample_stylegan_checkpoint(run, settings, step: int, *, progress: bool = True, parallel: bool = False) -> Path:
    from . import stylegan

    return stylegan.sample_checkpoint(run, step, settings.n_checkpoint_samples, settings.first_seed,
                                      settings.batch_size, truncation_psi=settings.truncation_psi, progress=progress)


def _stylegan_checkpoints(run) -> list[int]:
    from . import stylegan

    return stylegan.checkpoint_steps(run)


def _stylegan_images_seen(run, step: int) -> int:
    from . import stylegan

    return stylegan.checkpoint_images_seen(run, step)


def _stylegan_checkpoints_planned(settings) -> int:
    n = int(settings.total_kimg // settings.checkpoint_kimg) or 1
    return min(n, settings.keep_checkpoints) if settings.keep_checkpoints else n


def _stylegan_note(params: Mapping) -> str:
    """Whether the discriminator saw augmented images (the arm without augmentation says so).
    Words only: a number on the landing page must be traced to a table (helpers.report_checks)."""
    if float(params.get("augment_p", 0)) == 0 and params.get("ada_target") is None:
        return "no augmentation"
    if params.get("ada_target") is None:
        return "augmentation at a fixed probability"
    return "adaptive augmentation"


def _train_diffusion(run, settings, *, progress: bool = True, parallel: bool = False) -> dict:
    from . import diffusion

    return diffusion.train(run, one_thread(settings, parallel), progress=progress)


def _sample_diffusion(run, settings, *, progress: bool = True, parallel: bool = False) -> Path:
    from . import diffusion

    return diffusion.sample(run, settings.n_diffusion, settings.first_seed, settings.batch_size,
                            sampler=settings.diffusion_sampler, num_inference_steps=settings.diffusion_inference_steps,
                            progress=progress, num_threads=1 if parallel else 0)


def _sample_diffusion_checkpoint(run, settings, step: int, *, progress: bool = True, parallel: bool = False) -> Path:
    from . import diffusion

    return diffusion.sample_checkpoint(run, step, settings.n_checkpoint_samples, settings.first_seed,
                                       settings.batch_size, sampler=settings.diffusion_sampler,
                                       num_inference_steps=settings.diffusion_inference_steps, progress=progress,
                                       num_threads=1 if parallel else 0)


def _diffusion_checkpoints(run) -> list[int]:
    from . import diffusion

    return diffusion.checkpoint_steps(run)


def _diffusion_images_seen(run, step: int) -> int:
    from . import diffusion

    return diffusion.checkpoint_images_seen(run, step)


def _diffusion_checkpoints_planned(settings) -> int:
    n = int(settings.max_steps // settings.checkpoint_every) or 1
    return min(n, settings.keep_checkpoints) if settings.keep_checkpoints else n


def _sample_optimal_denoiser(run, settings, *, progress: bool = True, parallel: bool = False) -> Path:
    from . import optimal_denoiser

    return optimal_denoiser.sample(run, settings.n_optimal_denoiser, settings.first_seed, settings.batch_size,
                                   sampler=settings.diffusion_sampler,
                                   num_inference_steps=settings.diffusion_inference_steps,
                                   progress=progress, num_threads=1 if parallel else 0)


def _prepare_optimal_denoiser(run, settings_of) -> None:
    """Keep the ``train_diffusion`` schedule where no diffusion model is trained (a StyleGAN-only arm)."""
    from . import optimal_denoiser

    if not optimal_denoiser.has_trained_schedule(run):
        optimal_denoiser.write_schedule(run, settings_of("train_diffusion"))


def _sample_gaussian_control(run, settings, *, progress: bool = True, parallel: bool = False) -> Path:
    from .fit import controls

    return controls.sample(run, settings.n_gaussian_control, settings.first_seed, settings.batch_size, progress=progress)


# --------------------------------------------------------------------------
# Their training times, for the plan (--plan): a few steps timed
# --------------------------------------------------------------------------

def _side_by_side(settings) -> str:
    return f", runs {settings.parallel_runs} side by side" if settings.parallel_runs > 1 else ""


def _time_train_stylegan(p: TrainingProbe) -> TrainingEstimate:
    import dataclasses

    from .stylegan.trainer import StyleGANTrainer
    from .training import TrainingImages, count_parameters

    cfg, b, per = p.settings, p.batch, p.per_process
    small = dataclasses.replace(cfg, batch_size=b, processes=1, mbstd_group=min(cfg.mbstd_group, b))
    trainer = StyleGANTrainer(small, p.shape, seed=0, device=p.device)
    data = TrainingImages(p.random_training(2 * b))
    intervals = [i for i, on in ((cfg.pl_interval, cfg.pl_weight > 0), (cfg.r1_interval, cfg.r1_gamma > 0)) if on]

    def plain():
        trainer.step_count = 1  # a step without regularization (1 is no multiple of an interval > 1)
        trainer.step(data)

    def regularized():
        trainer.step_count = 0  # both regularizers run at step 0
        trainer.step(data)

    t_plain = p.timed(plain)
    t_reg = p.timed(regularized, repeats=1) if intervals and min(intervals) > 1 else t_plain
    g, d = count_parameters(trainer.G), count_parameters(trainer.D)
    scale = per / b
    per_step = (t_plain + (t_reg - t_plain) / min(intervals or [1])) * scale
    seconds = per_step * cfg.total_steps * len(p.runs) / cfg.parallel_runs
    basis = (f"{cfg.total_steps:,} steps × {len(p.runs)} run(s); a step of batch {b} measured "
             f"({t_plain:.2f} s, with regularization {t_reg:.2f} s)" + (f", ×{scale:g} for batch {per}" if scale != 1 else "")
             + _side_by_side(cfg))
    params = 4 * g + 3 * d  # G, G_ema and G's two Adam moments; D and its two
    kept = _stylegan_checkpoints_planned(cfg)  # keep_checkpoints 0 keeps every one
    disk = len(p.runs) * 4 * (kept * params + g)
    what = f"{kept} checkpoints + generator per run (G {g / 1e6:.1f} M, D {d / 1e6:.1f} M parameters)"
    return TrainingEstimate(seconds, basis, disk, what)


def _time_train_diffusion(p: TrainingProbe) -> TrainingEstimate:
    import dataclasses

    import torch

    from .diffusion.trainer import setup_training, train_step
    from .training import count_parameters

    settings, b, per = p.settings, p.batch, p.per_process
    setup = setup_training(dataclasses.replace(settings, batch_size=b, processes=1), p.shape[0], p.shape[1],
                           device=p.device)
    images = torch.rand(b, *p.shape, device=setup.accelerator.device) * 2 - 1
    generator = torch.Generator(device=setup.accelerator.device).manual_seed(0)
    t_step = p.timed(lambda: train_step(setup, images, generator))
    n = count_parameters(setup.unet)
    scale = per / b
    seconds = t_step * scale * settings.max_steps * len(p.runs) / settings.parallel_runs
    basis = (f"{settings.max_steps:,} steps × {len(p.runs)} run(s); a step of batch {b} measured ({t_step:.2f} s)"
             + (f", ×{scale:g} for batch {per}" if scale != 1 else "") + _side_by_side(settings))
    kept = _diffusion_checkpoints_planned(settings)  # keep_checkpoints 0 keeps every one
    disk = len(p.runs) * 4 * n * (4 * kept + 1)  # model, EMA, two Adam moments; the pipeline
    return TrainingEstimate(seconds, basis, disk, f"{kept} checkpoints + pipeline per run ({n / 1e6:.1f} M parameters)")


# --------------------------------------------------------------------------
# Their sampling times, for the plan (--plan): a few passes timed
# --------------------------------------------------------------------------

def _time_stylegan(p: SamplingProbe) -> tuple[float, str]:
    from .stylegan.networks import Generator
    from .stylegan.sampling import generate_images

    c = p.sections["train_stylegan"]
    G = Generator(p.shape[1], p.shape[0], c.z_dim, c.w_dim, c.mapping_layers, c.mapping_lr_multiplier,
                  c.channel_base, c.channel_max, 0, c.conv_clamp).to(p.device).eval()
    t = p.timed(lambda: generate_images(G, [0]), repeats=2)  # one image at a time (batch-invariant)
    return t * p.n_images * len(p.runs), f"StyleGAN {t:.3f} s/image"


def _time_diffusion(p: SamplingProbe) -> tuple[float, str]:
    import torch

    from .diffusion.model import build_unet

    unet = build_unet(p.sections["train_diffusion"], p.shape[0], p.shape[1]).to(p.device).eval()
    x = torch.randn(p.batch, *p.shape, device=p.device)
    with torch.no_grad():
        t = p.timed(lambda: unet(x, torch.full((p.batch,), 10, device=p.device), return_dict=False))
    return (t / p.batch * p.steps * p.n_images * len(p.runs),
            f"diffusion {p.steps} network passes/image, a pass of batch {p.batch} {t:.3f} s")


def _time_optimal_denoiser(p: SamplingProbe) -> tuple[float, str]:
    import numpy as np
    import torch

    from .diffusion.model import build_noise_scheduler
    from .optimal_denoiser import OptimalDenoiser

    n_train = max(n for n, _ in p.runs.values())
    measured = min(n_train, 1024)
    training = np.random.default_rng(0).integers(0, 256, (measured, *p.shape), dtype=np.uint8)
    model = OptimalDenoiser(training, build_noise_scheduler(p.sections["train_diffusion"])).to(p.device)
    x = torch.randn(p.batch, *p.shape, device=p.device)
    t = p.timed(lambda: model(x, 10, return_dict=False))
    per_image = t / p.batch * p.steps * sum(n for n, _ in p.runs.values()) / measured
    return (per_image * p.n_images, f"optimal denoiser: a pass of batch {p.batch} over {measured} training images "
                                    f"{t:.3f} s, scaled by each run's training set")


def _time_gaussian_control(p: SamplingProbe) -> tuple[float, str]:
    """numpy on the CPU whatever the device: a draw costs one normal vector
    per image (its fit, a mean and a spread per pixel, costs nothing beside)."""
    import numpy as np

    from .fit.controls import GaussianControl

    control = GaussianControl(np.random.default_rng(0).integers(0, 256, (8, *p.shape), dtype=np.uint8))
    seeds = list(range(p.batch))
    t = p.timed(lambda: control.sample(seeds)) / p.batch
    return t * p.n_images * len(p.runs), f"Gaussian control {t:.2g} s/image (numpy)"


register(Model("stylegan", "StyleGAN", "tab:blue", _sample_stylegan, _train_stylegan, section="train_stylegan",
               notebook="02_train_stylegan", loss_columns=("loss_G", "loss_D", "r1", "augment_p"), marker="o",
               check_processes=_check_stylegan, time_sampling=_time_stylegan, time_training=_time_train_stylegan,
               checkpoint_steps=_stylegan_checkpoints,
               checkpoints_planned=_stylegan_checkpoints_planned,
               checkpoint_images_seen=_stylegan_images_seen, sample_checkpoint=_sample_stylegan_checkpoint,
               training_note=_stylegan_note))
register(Model("diffusion", "diffusion", "tab:orange", _sample_diffusion, _train_diffusion, section="train_diffusion",
               notebook="03_train_diffusion", loss_columns=("loss", "lr"), marker="s", time_sampling=_time_diffusion,
               time_training=_time_train_diffusion,
               checkpoints_planned=_diffusion_checkpoints_planned,
               checkpoint_steps=_diffusion_checkpoints, checkpoint_images_seen=_diffusion_images_seen,
               sample_checkpoint=_sample_diffusion_checkpoint))
register(Model("optimal_denoiser", "optimal denoiser", "tab:red", _sample_optimal_denoiser, marker="^",
               legend="optimal denoiser (memorizes by construction)", control=True,
               time_sampling=_time_optimal_denoiser, prepare_sampling=_prepare_optimal_denoiser))
register(Model("gaussian_control", "Gaussian control", "tab:purple", _sample_gaussian_control, marker="X",
               legend="Gaussian control (learns only each pixel's mean and spread)", control=True,
               time_sampling=_time_gaussian_control))
