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

from pydantic import BeforeValidator, ConfigDict, Field
from pydantic.dataclasses import dataclass

_STRICT = ConfigDict(extra="forbid", strict=True)
# ranges checked as the settings are read, before any step runs (one line per bad value)
Positive = Annotated[int, Field(ge=1)]
NonNegative = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
MODELS = ("stylegan", "diffusion")
#: the correlation engine's memory budget (GiB): resident synthetic block + chunk products; the one default
#: of step 05, the audit command and the engine (helpers.correlation.DEFAULT_MEMORY_BUDGET)
MEMORY_BUDGET_GB = 2.0
#: the threshold of the written finding (step 05's, step 06's, the landing page's); a shared key
FINDING_THRESHOLD = "baseline_p99"
#: a model or control of the registry (helpers.models: stylegan, diffusion, optimal_denoiser, …); the
#: registry sits above the settings, so the runner checks the names (helpers.pipeline, helpers.steps)
ModelName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


def _list(*values):
    return dataclasses.field(default_factory=lambda: list(values))


class ConfigError(ValueError):
    """A configuration the study cannot run with; the message says which
    file and key, and what is allowed."""


class SettingError(ValueError):
    """One setting out of its range (raised by a schema's checks that span
    several keys); :func:`helpers.config.build` names the file it came from."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key} = {value!r}: {allowed}")


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise SettingError(key, value, allowed)


def power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def _check_batch(settings) -> None:
    """A global batch the processes can share (each takes batch_size / processes)."""
    _require(settings.batch_size % settings.processes == 0, "batch_size", settings.batch_size,
             f"a multiple of processes={settings.processes} (each process takes batch_size / processes images)")


def _nested(cls):
    """A nested settings group given as a mapping in YAML (checked as strictly as a section)."""
    return BeforeValidator(lambda value: cls(**value) if isinstance(value, dict) else value)


# ==========================================================================
# The schemas
# ==========================================================================

@dataclass(config=_STRICT)
class PhantomBrainSizes:
    """The brain phantom's cohort (:func:`helpers.phantom.make_brats_cohort`)."""

    n_subjects: Annotated[int, Field(ge=2)] = 24  # training and held-out subjects together

    def kwargs(self) -> dict:
        """The generator's keyword arguments (what the phantom's cache hashes)."""
        return dataclasses.asdict(self)


@dataclass(config=_STRICT)
class PhantomChestSizes:
    """The chest phantom's cohort (:func:`helpers.phantom.make_cxr_cohort`)."""

    n_normal: Positive = 100
    n_pneumonia: Positive = 200
    width_range: Annotated[list[Positive], Field(min_length=2, max_length=2)] | None = None  # px; None: 800-1600

    @property
    def n_images(self) -> int:
        return self.n_normal + self.n_pneumonia

    def kwargs(self) -> dict:
        """The generator's keyword arguments (unset ones left to its defaults)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(config=_STRICT)
class StepSettings:
    """What every step shares (the ``common`` section of a dataset file)."""

    seed: NonNegative = 0  # every random draw of a step derives from it
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
    image_size: int = 256                     # the authors: 256²; a power of two (the networks halve it)
    channels: Annotated[list[str], Field(min_length=1)] | None = None  # None: all (BraTS: t1, t2, t1ce, flair, seg; x-ray: gray)
    pad_to: Positive = 256                         # the authors pad 240² slices to 256²
    t1_threshold: float = 50.0                # keep a slice when > min_brain_fraction of the padded
    min_brain_fraction: Fraction = 0.15          # slice has (scaled, unrounded) T1 > t1_threshold
    slice_stride: Positive = 1                     # the authors keep every slice
    split: Literal["seeded", "authors"] = "seeded"  # authors: their published BraTS subject order
    n_test_subjects: Positive = 56                 # seeded split: held-out subjects (the authors: 56)
    n_train_subjects: Positive | None = None       # the first K training subjects (None: all)
    train_sizes: Annotated[list[Positive], Field(min_length=1)] | None = None
                                              # a size sweep: nested training sets of these many images
                                              # (whole subjects in split order); None: one run on all
    subset_rules: Annotated[list[Literal["whole_subjects", "one_per_subject"]], Field(min_length=1)] = \
        _list("whole_subjects")               # one_per_subject: as many slices, one per subject (2D-from-3D arm)
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1                # chest x-ray: share of each class's patients held out
    on_bad_subject: Literal["fail", "skip"] = "fail"
    n_workers: Positive = 2                        # threads reading volumes ahead of the writer
    phantom_kind: Literal["brats2021", "brats2020"] = "brats2021"
    phantom_seed: int = 0
    phantom_cache: str = "data/phantom"
    phantom_brats_sizes: Annotated[PhantomBrainSizes, _nested(PhantomBrainSizes)] = \
        dataclasses.field(default_factory=PhantomBrainSizes)
    phantom_cxr_sizes: Annotated[PhantomChestSizes, _nested(PhantomChestSizes)] = \
        dataclasses.field(default_factory=PhantomChestSizes)

    #: slices of a BraTS volume (and of the brain phantom's): the most one subject can give
    SLICES_PER_VOLUME: ClassVar[int] = 155

    def __post_init__(self) -> None:
        _require(power_of_two(self.image_size) and self.image_size >= 4, "image_size", self.image_size,
                 "a power of two ≥ 4 (4, 8, 16, 32, …, 256): the networks halve it down to 4×4")

    @property
    def phantom_sizes(self) -> dict:
        """The phantom generator's keyword arguments for this source."""
        sizes = self.phantom_cxr_sizes if self.source == "phantom_cxr" else self.phantom_brats_sizes
        return sizes.kwargs()

    def data_problems(self) -> list[tuple[str, str]]:
        """``(key, what is allowed)`` for every count the data cannot hold:
        held-out and training subjects of the brain phantom, and sweep sizes
        beyond what the training subjects' slices give. (Not a check at
        construction: the schema's defaults are the authors' BraTS counts,
        which a phantom dataset file overrides.)"""
        problems = []
        subjects = self.n_train_subjects
        if self.source == "phantom_brats":
            n = self.phantom_brats_sizes.n_subjects
            if self.n_test_subjects >= n:
                problems.append(("n_test_subjects", f"fewer than the phantom's {n} subjects "
                                                    f"(phantom_brats_sizes.n_subjects), so that some train"))
            available = max(0, n - self.n_test_subjects)
            if subjects is not None and subjects > available:
                problems.append(("n_train_subjects", f"at most the {available} subjects left after "
                                                     f"{self.n_test_subjects} held out (phantom_brats_sizes.n_subjects={n})"))
            subjects = min(available, subjects or available)
        if self.source in ("phantom_brats", "brats") and self.train_sizes and subjects:
            per = -(-self.SLICES_PER_VOLUME // self.slice_stride)
            if max(self.train_sizes) > subjects * per:
                problems.append(("train_sizes", f"sizes of at most {subjects * per} training images: {subjects} "
                                                f"training subject(s) × {per} slices (every {self.slice_stride}. of "
                                                f"{self.SLICES_PER_VOLUME}) cannot hold more"))
        return problems


@dataclass(config=_STRICT)
class TrainStyleGANSettings(StepSettings):
    """Step 02: one StyleGAN2-ADA training run. Defaults: StyleGAN2 config-f
    at the authors' flags (γ 5, batch 32, ADA, 25 000 kimg; their mirror flag
    had no effect, see ``mirror``)."""

    num_threads: NonNegative = 0              # torch CPU threads, 0: all cores
    time_limit_min: PositiveFloat | None = None       # stop (with a checkpoint) after this long; a re-run continues
    # generator / discriminator
    z_dim: Positive = 512
    w_dim: Positive = 512
    mapping_layers: Positive = 8
    mapping_lr_multiplier: PositiveFloat = 0.01
    channel_base: Positive = 32768                 # width at resolution r: min(channel_base / r, channel_max)
    channel_max: Positive = 512
    mbstd_group: Positive = 4
    mixed_precision: bool = False             # bf16 in the top num_fp16_res resolutions, where bf16 is
                                              # fast (GPU; CPU with AMX/AVX-512 BF16), else float32
    num_fp16_res: NonNegative = 4
    channels_last: bool = False               # NHWC activations in training (CPU: 1.25× fp32, 1.28× bf16
                                              # per step); a memory layout, so a run may resume without it
    conv_clamp: PositiveFloat | None = None
    # optimization
    batch_size: Positive = 32
    total_kimg: PositiveFloat = 25000.0               # thousands of real images shown to D
    lr_g: PositiveFloat = 0.002
    lr_d: PositiveFloat = 0.002
    beta1: Annotated[float, Field(ge=0, lt=1)] = 0.0
    beta2: Annotated[float, Field(ge=0, lt=1)] = 0.99
    r1_gamma: NonNegativeFloat = 5.0
    r1_interval: Positive = 16
    pl_weight: NonNegativeFloat = 2.0
    pl_interval: Positive = 4
    pl_batch_shrink: Positive = 2
    pl_decay: Fraction = 0.01
    style_mixing_prob: Fraction = 0.9
    ema_kimg: NonNegativeFloat = 10.0
    ema_rampup: NonNegativeFloat | None = 0.05
    # adaptive discriminator augmentation
    mirror: bool = False                      # x-flips; the authors pass --mirror=1, but the flip in their
                                              # dataset's __getitem__ is commented out: no flipped images
    augment: str = "xflip,rotate90,xint,scale,brightness,contrast"
    augment_p: Fraction = 0.0
    ada_target: Fraction | None = 0.6
    ada_interval: Positive = 4
    ada_kimg: PositiveFloat = 500.0
    # bookkeeping
    checkpoint_kimg: PositiveFloat = 200.0
    keep_checkpoints: NonNegative = 3         # the newest kept; 0: every one
    log_every: Positive = 100
    grid_seeds: Positive = 8

    #: fields that may change between a run and its resume
    RESUMABLE_CHANGES: ClassVar[tuple[str, ...]] = (
        "total_kimg", "checkpoint_kimg", "keep_checkpoints", "log_every", "grid_seeds",
        "num_threads", "time_limit_min", "channels_last")
    #: fields that are not StyleGAN's (the seed is the trainer's argument)
    NOT_IDENTITY: ClassVar[tuple[str, ...]] = ("seed", "parallel_runs")

    def __post_init__(self) -> None:
        _check_batch(self)
        per = self.batch_size // self.processes
        group = min(self.mbstd_group, self.batch_size)
        _require(per % group == 0, "batch_size", self.batch_size,
                 f"batch_size {self.batch_size} must be a multiple of mbstd_group {self.mbstd_group}"
                 + (f" in each of the {self.processes} processes ({per} images each)" if self.processes > 1 else "")
                 + " (the discriminator's minibatch-std groups)")
        _require(per // self.pl_batch_shrink >= 1, "pl_batch_shrink", self.pl_batch_shrink,
                 f"at most the {per} images each process takes per step (the path-length batch is their share)")

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
    layers_per_block: Positive = 3
    attention_resolutions: list[Positive] = _list(16, 8)  # feature-map sizes with attention
    attention_head_dim: Positive = 64
    norm_num_groups: Positive = 32
    scale_shift_norm: bool = True
    zero_init: bool = True
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    # noise schedule (DDPMScheduler)
    num_train_timesteps: Positive = 4000
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    beta_start: Annotated[float, Field(gt=0, lt=1)] | None = None           # None: guided-diffusion's 1000/T scaling
    beta_end: Annotated[float, Field(gt=0, lt=1)] | None = None
    variance_type: Literal["fixed_large", "fixed_small"] = "fixed_large"
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    # optimisation
    batch_size: Positive = 32                 # global (all processes together)
    max_steps: Positive = 30000                    # the authors sampled their 30 000-step checkpoint
    learning_rate: PositiveFloat = 1e-4
    lr_warmup_steps: NonNegative = 0
    weight_decay: NonNegativeFloat = 0.0
    max_grad_norm: PositiveFloat | None = None        # None: no clipping (guided-diffusion does not clip)
    ema_decay: Fraction = 0.9999
    ema_warmup: bool = False                  # True: diffusers' (1+s)/(10+s) ramp up to ema_decay
    horizontal_flip: bool = False
    # bookkeeping
    checkpoint_every: Positive = 5000
    keep_checkpoints: NonNegative = 3         # the newest kept; 0: every one
    log_every: Positive = 100
    # speed (None = chosen by device)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] | None = None
    channels_last: bool | None = None
    fused_adamw: bool | None = None
    compile: bool = False
    num_threads: NonNegative = 0              # CPU threads; 0: measured (the faster of 1 and all cores)
    # a first look at a few samples after training (notebook 03)
    preview_images: Positive = 4
    preview_sampler: Literal["ddpm", "ddim"] = "ddpm"
    preview_steps: Positive | None = None          # None: all T timesteps

    #: what may change between a run and its resume
    RESUMABLE_CHANGES: ClassVar[tuple[str, ...]] = (
        "max_steps", "checkpoint_every", "keep_checkpoints", "log_every", "mixed_precision", "channels_last",
        "fused_adamw", "compile", "num_threads", "preview_images", "preview_sampler", "preview_steps",
        "parallel_runs")

    def __post_init__(self) -> None:
        widths = list(self.block_out_channels)
        _require(bool(widths) and all(w > 0 for w in widths), "block_out_channels", widths,
                 "one positive width per level, e.g. [64, 128]")
        bad = [w for w in widths if w % self.norm_num_groups]
        _require(not bad, "norm_num_groups", self.norm_num_groups,
                 f"norm_num_groups={self.norm_num_groups} must divide every width of block_out_channels; {bad} do not")
        _require(self.beta_start is None or self.beta_end is None or self.beta_start < self.beta_end, "beta_end",
                 self.beta_end, f"greater than beta_start={self.beta_start}")
        _require(self.preview_steps is None or self.preview_steps <= self.num_train_timesteps, "preview_steps",
                 self.preview_steps, f"at most num_train_timesteps={self.num_train_timesteps}")
        _check_batch(self)

    def identity(self) -> dict:
        """What fixes the training trajectory; a checkpoint made with other
        values cannot be resumed. Length, logging and speed options may change."""
        skip = set(self.RESUMABLE_CHANGES) | _one_process(self)
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}


@dataclass(config=_STRICT)
class SampleSettings(StepSettings):
    """Step 04: image i of a model has seed first_seed + i."""

    models: list[ModelName] = _list(*MODELS)
    n_stylegan: NonNegative = 100001                  # the authors: seeds 2..100002
    n_diffusion: NonNegative = 100000                 # not stated by the authors: as many as StyleGAN's, rounded
    n_optimal_denoiser: NonNegative = 0               # the positive control (when in models)
    n_gaussian_control: NonNegative = 0               # the underfitting control (when in models)
    n_checkpoint_samples: NonNegative = 0             # per kept training checkpoint, for the audits over training
    first_seed: NonNegative = 2
    batch_size: Positive = 64
    truncation_psi: float = 1.0               # StyleGAN; 1 = no truncation, as the authors
    diffusion_sampler: Literal["ddpm", "ddim"] = "ddpm"   # full ancestral loop, as the authors
    diffusion_inference_steps: Positive | None = None     # DDIM only

    def __post_init__(self) -> None:
        for model in ("stylegan", "diffusion"):
            key = f"n_{model}"
            _require(model not in self.models or getattr(self, key) > 0, key, getattr(self, key),
                     f"a positive number of images ({model} is in models; leave it out of models to sample none)")


@dataclass(config=_STRICT)
class CorrelateSettings(StepSettings):
    """Step 05: every synthetic image against every training image, one
    modality at a time as the authors (and all channels jointly, ours)."""

    models: list[ModelName] = _list(*MODELS)  # audited when samples/<model>.npy exists
    channels: Annotated[list[str | int], Field(min_length=1)] | None = None  # channels measured (names, or
                                              # indices in the audit command); None: every channel
    each: bool = True                         # every channel alone (the paper's measure)
    joint: bool = True                        # also all channels as one vector (this study's measure)
    headline_channel: str | None = None       # the paper's figure modality; None: the first image channel
    top_k: Positive = 5                            # training matches kept per synthetic image
    backend: Literal["auto", "numpy", "cupy"] = "auto"
    memory_budget_gb: PositiveFloat = MEMORY_BUDGET_GB  # engine: resident synthetic block + chunk products
    n_control: NonNegative = 64                       # planted-copy positive control
    control_noise_sd: NonNegativeFloat = 8.0             # grey levels of noise in the planted "noise" copies
    finding_threshold: str = FINDING_THRESHOLD  # threshold of the written finding
    # the fit of every model (helpers.fit): the reading rule, declared before any result (issue 22).
    # Fitted: sharpness ratio within [low, high] and 1-NN accuracy ≤ the held-out images' + margin.
    fit: bool = True                          # judge every model's fit beside its memorization
    fit_sharpness_low: Annotated[float, Field(gt=0, lt=1)] = 0.8     # real held-out phantom slices: 0.88–1.08
    fit_sharpness_high: Annotated[float, Field(gt=1)] = 1.25
    fit_nn_margin: Annotated[float, Field(ge=0, lt=0.5)] = 0.05
    fit_samples: Positive = 1000                      # the first n samples of each model are scored
    fit_seed: NonNegative = 0                         # bootstrap, folds and chunks of the fit measures


@dataclass(config=_STRICT)
class FiguresSettings(StepSettings):
    """Step 06: figures and tables from the result files."""

    models: list[ModelName] = _list(*MODELS)  # missing ones are listed, not fatal
    figure_channel: str = ""                  # channel of the image figures; empty: the headline
    n_top: Positive = 4
    n_typical: NonNegative = 2
    n_montage: Positive = 16
    n_most_copied: Positive = 10
    finding_threshold: str = FINDING_THRESHOLD  # threshold of the written finding
    hist_bins: Positive = 40
    loss_smooth: Positive = 5
    pdf: bool = True


@dataclass(config=_STRICT)
class CompareSettings(StepSettings):
    """``./runall.sh compare``: every dataset's results side by side."""

    threshold_names: Annotated[list[str], Field(min_length=1)] = _list("fixed_0.95", "baseline_p95", "baseline_p99")
    pdf: bool = True


#: the keys the two trainings spell differently for one idea, or alike for two: (what, StyleGAN's key and
#: meaning, diffusion's key and meaning). One table instead of renames, which would change the identity
#: of every checkpoint written so far (a resume would be refused).
TRAINING_KEYS: tuple[tuple[str, tuple[str, str], tuple[str, str]], ...] = (
    ("length", ("total_kimg", "thousands of real images shown"), ("max_steps", "optimizer steps")),
    ("checkpoints", ("checkpoint_kimg", "every so many thousand images"), ("checkpoint_every", "every so many steps")),
    ("mixed precision", ("mixed_precision", "bool: bf16 in the top num_fp16_res resolutions (GPU; CPU with AMX/AVX-512 BF16)"),
     ("mixed_precision", "None (by device), 'auto', 'no', 'bf16' or 'fp16'")),
    ("memory format", ("channels_last", "bool, False: contiguous"), ("channels_last", "None (by device) or bool")),
    ("CPU threads", ("num_threads", "0: all cores"), ("num_threads", "0: measured, the faster of 1 and all cores")),
)

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
#: keys several steps share, given once under ``common`` (each step that has the key takes it)
SHARED_KEYS = ("models", "finding_threshold")
COMMON_KEYS = (*(f.name for f in dataclasses.fields(StepSettings)), *SHARED_KEYS)


def field_names(section: str) -> list[str]:
    return [f.name for f in dataclasses.fields(SCHEMAS[section])]


def as_dict(settings) -> dict:
    """A schema instance as plain values (what papermill injects)."""
    return dataclasses.asdict(settings)


