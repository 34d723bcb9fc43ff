"""The typed settings of every step, each with its one default (the
authors' settings where the paper or their code states them). How the YAML
files override them is :mod:`helpers.config.layers`.

Why pydantic: strict type checks of nested values (lists of ints, literals,
optionals) with precise messages, from plain dataclasses that the model code
uses as they are.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass

_STRICT = ConfigDict(extra="forbid", strict=True)
Positive = Annotated[int, Field(ge=1)]
MODELS = ("stylegan", "diffusion")
ModelName = Literal["stylegan", "diffusion", "optimal_denoiser"]  # the last: a memorizer by construction


def _list(*values):
    return dataclasses.field(default_factory=lambda: list(values))


def _dict(**values):
    return dataclasses.field(default_factory=lambda: dict(values))


class ConfigError(ValueError):
    """A configuration the study cannot run with; the message says which
    file and key, and what is allowed."""


# ==========================================================================
# The schemas
# ==========================================================================

@dataclass(config=_STRICT)
class StepSettings:
    """What every step shares (the ``common`` section of a dataset file)."""

    seed: int = 0  # every random draw of a step derives from it
    parallel_runs: Positive = 1  # a sweep's runs side by side, one process (of one thread) each
    processes: Positive = 1  # torch.distributed processes for training, sampling and correlation (one per
                             # GPU); > 1: runs go one after another, each over all processes (--processes N)


def _one_process(settings: StepSettings) -> set[str]:
    """The number of processes belongs to a training run's identity (it
    changes the random draws of every step), but a one-process run keeps the
    identity it had before there were several."""
    return {"processes"} if settings.processes == 1 else set()


@dataclass(config=_STRICT)
class PrepareDataSettings(StepSettings):
    """Step 01: raw files → uint8 slice arrays and the subject split."""

    source: Literal["phantom_brats", "phantom_cxr", "brats", "cxr"] = "phantom_brats"
    raw_dir: str | None = None                # --data; None: the phantoms are generated and cached
    image_size: int = 256                     # the authors: 256²
    channels: list[str] | None = None         # None: all (BraTS: t1, t2, t1ce, flair, seg; x-ray: gray)
    pad_to: int = 256                         # the authors pad 240² slices to 256²
    t1_threshold: float = 50.0                # keep a slice when > min_brain_fraction of the padded
    min_brain_fraction: float = 0.15          # slice has (scaled, unrounded) T1 > t1_threshold
    slice_stride: int = 1                     # the authors keep every slice
    split: Literal["seeded", "authors"] = "seeded"  # authors: their published BraTS subject order
    n_test_subjects: int = 56                 # seeded split: held-out subjects (the authors: 56)
    n_train_subjects: int | None = None       # the first K training subjects (None: all)
    train_sizes: list[int] | None = None      # a size sweep: nested training sets of these many images
                                              # (whole subjects in split order); None: one run on all
    subset_rules: list[Literal["whole_subjects", "one_per_subject"]] = _list("whole_subjects")
                                              # one_per_subject: as many slices, one per subject (2D-from-3D arm)
    test_fraction: float = 0.1                # chest x-ray: share of each class's patients held out
    on_bad_subject: Literal["fail", "skip"] = "fail"
    n_workers: int = 2                        # threads reading volumes ahead of the writer
    phantom_kind: Literal["brats2021", "brats2020"] = "brats2021"
    phantom_seed: int = 0
    phantom_cache: str = "data/phantom"
    phantom_brats_sizes: dict[str, Any] = _dict(n_subjects=24)
    phantom_cxr_sizes: dict[str, Any] = _dict(n_normal=100, n_pneumonia=200)


@dataclass(config=_STRICT)
class TrainStyleGANSettings(StepSettings):
    """Step 02: one StyleGAN2-ADA training run. Defaults: StyleGAN2 config-f
    at the authors' flags (γ 5, batch 32, ADA, 25 000 kimg; their mirror flag
    had no effect, see ``mirror``)."""

    num_threads: int = 0                      # torch CPU threads, 0: all cores
    time_limit_min: float | None = None       # stop (with a checkpoint) after this long; a re-run continues
    # generator / discriminator
    z_dim: int = 512
    w_dim: int = 512
    mapping_layers: int = 8
    mapping_lr_multiplier: float = 0.01
    channel_base: int = 32768                 # width at resolution r: min(channel_base / r, channel_max)
    channel_max: int = 512
    mbstd_group: int = 4
    mixed_precision: bool = False             # bf16 in the top num_fp16_res resolutions, CUDA only
    num_fp16_res: int = 4
    conv_clamp: float | None = None
    # optimization
    batch_size: int = 32
    total_kimg: float = 25000.0               # thousands of real images shown to D
    lr_g: float = 0.002
    lr_d: float = 0.002
    beta1: float = 0.0
    beta2: float = 0.99
    r1_gamma: float = 5.0
    r1_interval: int = 16
    pl_weight: float = 2.0
    pl_interval: int = 4
    pl_batch_shrink: int = 2
    pl_decay: float = 0.01
    style_mixing_prob: float = 0.9
    ema_kimg: float = 10.0
    ema_rampup: float | None = 0.05
    # adaptive discriminator augmentation
    mirror: bool = False                      # x-flips; the authors pass --mirror=1, but the flip in their
                                              # dataset's __getitem__ is commented out: no flipped images
    augment: str = "xflip,rotate90,xint,scale,brightness,contrast"
    augment_p: float = 0.0
    ada_target: float | None = 0.6
    ada_interval: int = 4
    ada_kimg: float = 500.0
    # bookkeeping
    checkpoint_kimg: float = 200.0
    keep_checkpoints: int = 3
    log_every: int = 100
    grid_seeds: int = 8

    #: fields that may change between a run and its resume
    RESUMABLE_CHANGES: ClassVar[tuple[str, ...]] = (
        "total_kimg", "checkpoint_kimg", "keep_checkpoints", "log_every", "grid_seeds",
        "num_threads", "time_limit_min")
    #: fields that are not StyleGAN's (the seed is the trainer's argument)
    NOT_IDENTITY: ClassVar[tuple[str, ...]] = ("seed", "parallel_runs")

    def __post_init__(self) -> None:
        if self.batch_size % min(self.mbstd_group, self.batch_size):
            raise ValueError(f"batch_size {self.batch_size} must be a multiple of mbstd_group {self.mbstd_group}")

    @property
    def total_steps(self) -> int:
        return max(1, math.ceil(self.total_kimg * 1000 / self.batch_size))

    @property
    def checkpoint_every(self) -> int:
        return max(1, round(self.checkpoint_kimg * 1000 / self.batch_size))

    def identity(self) -> dict:
        """The settings that define the run (a resume must match them)."""
        skip = set(self.RESUMABLE_CHANGES) | set(self.NOT_IDENTITY) | _one_process(self)
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}


@dataclass(config=_STRICT)
class TrainDiffusionSettings(StepSettings):
    """Step 03: one diffusion training run. Defaults: the authors'
    guided-diffusion run (256², 64 base channels, 3 res-blocks, T = 4000,
    linear β, ε-prediction, lr 1e-4, batch 32, EMA 0.9999, 30 000 steps)."""

    # model (UNet2DModel)
    block_out_channels: list[int] = _list(64, 64, 128, 128, 256, 256)  # 64·(1,1,2,2,4,4) at 256²
    layers_per_block: int = 3
    attention_resolutions: list[int] = _list(16, 8)  # feature-map sizes with attention
    attention_head_dim: int = 64
    norm_num_groups: int = 32
    scale_shift_norm: bool = True
    zero_init: bool = True
    dropout: float = 0.0
    # noise schedule (DDPMScheduler)
    num_train_timesteps: int = 4000
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    beta_start: float | None = None           # None: guided-diffusion's 1000/T scaling
    beta_end: float | None = None
    variance_type: Literal["fixed_large", "fixed_small"] = "fixed_large"
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    # optimisation
    batch_size: int = 32                      # global (all processes together)
    max_steps: int = 30000                    # the authors sampled their 30 000-step checkpoint
    learning_rate: float = 1e-4
    lr_warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float | None = None        # None: no clipping (guided-diffusion does not clip)
    ema_decay: float = 0.9999
    ema_warmup: bool = False                  # True: diffusers' (1+s)/(10+s) ramp up to ema_decay
    horizontal_flip: bool = False
    # bookkeeping
    checkpoint_every: int = 5000
    keep_checkpoints: int = 3
    log_every: int = 100
    # speed (None = chosen by device)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] | None = None
    channels_last: bool | None = None
    fused_adamw: bool | None = None
    compile: bool = False
    num_threads: int = 0                      # CPU threads; 0: measured (the faster of 1 and all cores)
    # a first look at a few samples after training (notebook 03)
    preview_images: int = 4
    preview_sampler: Literal["ddpm", "ddim"] = "ddpm"
    preview_steps: int | None = None          # None: all T timesteps

    #: what may change between a run and its resume
    RESUMABLE_CHANGES: ClassVar[tuple[str, ...]] = (
        "max_steps", "checkpoint_every", "keep_checkpoints", "log_every", "mixed_precision", "channels_last",
        "fused_adamw", "compile", "num_threads", "preview_images", "preview_sampler", "preview_steps",
        "parallel_runs")

    def __post_init__(self) -> None:
        widths = list(self.block_out_channels)
        if not widths or any(w <= 0 for w in widths):
            raise ValueError(f"block_out_channels must be positive widths, got {widths}")
        bad = [w for w in widths if w % self.norm_num_groups]
        if bad:
            raise ValueError(f"norm_num_groups={self.norm_num_groups} must divide every width; {bad} do not")
        for name in ("batch_size", "max_steps", "checkpoint_every", "log_every", "num_train_timesteps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    def identity(self) -> dict:
        """What fixes the training trajectory; a checkpoint made with other
        values cannot be resumed. Length, logging and speed options may change."""
        skip = set(self.RESUMABLE_CHANGES) | _one_process(self)
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}


@dataclass(config=_STRICT)
class SampleSettings(StepSettings):
    """Step 04: image i of a model has seed first_seed + i."""

    models: list[ModelName] = _list(*MODELS)
    n_stylegan: int = 100001                  # the authors: seeds 2..100002
    n_diffusion: int = 100000                 # not stated by the authors: as many as StyleGAN's, rounded
    n_optimal_denoiser: int = 0               # the positive control (when in models)
    first_seed: int = 2
    batch_size: int = 64
    truncation_psi: float = 1.0               # StyleGAN; 1 = no truncation, as the authors
    diffusion_sampler: Literal["ddpm", "ddim"] = "ddpm"   # full ancestral loop, as the authors
    diffusion_inference_steps: int | None = None          # DDIM only


@dataclass(config=_STRICT)
class CorrelateSettings(StepSettings):
    """Step 05: every synthetic image against every training image, one
    modality at a time as the authors (and all channels jointly, ours)."""

    models: list[ModelName] = _list(*MODELS)  # audited when samples/<model>.npy exists
    channels: list[str] | None = None         # modalities correlated one at a time; None: every channel
    joint: bool = True                        # also all channels as one vector (this study's measure)
    headline_channel: str | None = None       # the paper's figure modality; None: the first image channel
    top_k: int = 5                            # training matches kept per synthetic image
    backend: Literal["auto", "numpy", "cupy"] = "auto"
    memory_budget_gb: float = 2.0             # engine: resident synthetic block + chunk products
    n_control: int = 64                       # planted-copy positive control
    control_noise_sd: float = 8.0             # grey levels of noise in the planted "noise" copies


@dataclass(config=_STRICT)
class FiguresSettings(StepSettings):
    """Step 06: figures and tables from the result files."""

    models: list[ModelName] = _list(*MODELS)  # missing ones are listed, not fatal
    figure_channel: str = ""                  # channel of the image figures; empty: the headline
    n_top: int = 4
    n_typical: int = 2
    n_montage: int = 16
    n_most_copied: int = 10
    finding_threshold: str = "baseline_p99"   # threshold of the written finding and the size plot
    hist_bins: int = 40
    loss_smooth: int = 5
    pdf: bool = True


@dataclass(config=_STRICT)
class CompareSettings(StepSettings):
    """``./runall.sh compare``: every dataset's results side by side."""

    threshold_names: list[str] = _list("fixed_0.95", "baseline_p95", "baseline_p99")
    pdf: bool = True


#: config section → schema, in step order (the notebook ``NN_<section>``)
SCHEMAS: dict[str, type] = {
    "prepare_data": PrepareDataSettings,
    "train_stylegan": TrainStyleGANSettings,
    "train_diffusion": TrainDiffusionSettings,
    "sample": SampleSettings,
    "correlate": CorrelateSettings,
    "figures": FiguresSettings,
    "compare": CompareSettings,
}
COMMON = "common"  # a section whose keys go to every step
COMMON_KEYS = tuple(f.name for f in dataclasses.fields(StepSettings))


def field_names(section: str) -> list[str]:
    return [f.name for f in dataclasses.fields(SCHEMAS[section])]


def as_dict(settings) -> dict:
    """A schema instance as plain values (what papermill injects)."""
    return dataclasses.asdict(settings)


