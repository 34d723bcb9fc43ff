"""What training StyleGAN and the diffusion model have in common: the
training images, the seed of each step, the loss log and parameter counts.

Why one module: both models must be resumable bit for bit, and that rests
on the same three ideas. The images of step ``s`` are a fixed function of
``(seed, s)`` (consecutive slices of per-epoch permutations), every random
draw of step ``s`` comes from a generator seeded by :func:`step_seed`, and
the loss log is cut back to the checkpoint's step on resume so that the
re-run's rows follow without duplicates. Checkpoints themselves live in
:mod:`helpers.checkpoints` (``step_*.safetensors``, the newest
``keep_checkpoints`` kept).

Each model keeps its own random streams (StyleGAN shuffles with
``[seed, epoch]``, the diffusion model with ``[seed, epoch, 7]``), so that
runs made before this module existed are reproduced exactly.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .common import read_json, stable_hash, write_text
from .layout import DataFiles, Run


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@functools.cache
def _bf16_units(device_type: str) -> bool:
    if device_type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    return False


def bf16_is_fast(device: torch.device | str) -> bool:
    """Whether bfloat16 convolutions beat float32 ones on ``device``: on a
    GPU with bf16, and on a CPU whose cores have AMX or AVX-512 BF16
    (measured 3–5× float32 for StyleGAN's 32² convolutions, forward and
    backward, on one core; benchmarks/bench_stylegan.py). Elsewhere oneDNN
    emulates bf16 and is slower than float32."""
    return _bf16_units(torch.device(device).type)  # asked once per block call: the answer is cached


def step_seed(seed: int, step: int, *more: int) -> int:
    """A 63-bit seed for the random draws of training step ``step`` (and of
    whatever ``more`` names, e.g. the process rank): a resumed run draws
    exactly what an uninterrupted one would have drawn."""
    words = [int(seed), int(step), *(int(m) for m in more)]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0] >> 1)


# --------------------------------------------------------------------------
# Training images
# --------------------------------------------------------------------------

class TrainingImages:
    """``data/train.npy`` (uint8 N×C×H×W, memory-mapped) and its
    ``meta.json``, drawn in shuffled epochs.

    ``folder`` is the data folder or the results folder that holds
    ``data/``. The image stream is the concatenation of per-epoch
    permutations seeded by ``[seed, epoch, *shuffle_salt]``; step ``s``
    takes the next ``batch_size`` images of it, so a batch depends on
    ``(seed, s)`` only.
    """

    def __init__(self, folder: str | os.PathLike, seed: int = 0, shuffle_salt: Sequence[int] = ()) -> None:
        files = DataFiles(Path(folder))   # a data folder, or a run (its data/)
        if not files.train.exists() and Run(folder).data.folder.is_dir():
            files = Run(folder).data
        array_path, meta_path = files.train, files.meta
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
            raise ValueError(f"{meta_path}: 'channels' lists {n_channels} channels but {array_path} has "
                             f"{a.shape[1]} (the files disagree)")
        size = self.meta.get("image_size")
        if size is not None and int(size) != a.shape[2]:
            raise ValueError(f"{meta_path}: image_size {size} but {array_path} holds {a.shape[2]}×{a.shape[3]} "
                             "images (the files disagree)")
        self.path = array_path
        self.seed = int(seed)
        self.shuffle_salt = tuple(int(s) for s in shuffle_salt)
        self.channel_names = channels if isinstance(channels, list) else [f"ch{i}" for i in range(a.shape[1])]
        self._perms: dict[int, np.ndarray] = {}

    @property
    def images(self) -> np.ndarray:
        """The memory-mapped uint8 array (a name the notebooks use)."""
        return self.array

    def __len__(self) -> int:
        return len(self.array)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape[1:])

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

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}  # the stream only moves on
            rng = np.random.default_rng([self.seed, epoch, *self.shuffle_salt])
            self._perms[epoch] = rng.permutation(len(self))
        return self._perms[epoch]

    def batch_indices(self, step: int, batch_size: int, rank: int = 0, world: int = 1) -> np.ndarray:
        """Dataset indices of process ``rank``'s share of global batch ``step``."""
        per = batch_size // world
        first = step * batch_size + rank * per
        epochs, offsets = np.divmod(np.arange(first, first + per, dtype=np.int64), len(self))
        return np.array([self._permutation(int(e))[o] for e, o in zip(epochs, offsets)], dtype=np.int64)

    def uint8(self, indices: np.ndarray) -> np.ndarray:
        """The images at ``indices`` (uint8), read in sorted order, which is
        kinder to a memory map."""
        indices = np.asarray(indices)
        order = np.argsort(indices, kind="stable")
        out = np.empty((len(indices), *self.shape), dtype=np.uint8)
        out[order] = self.array[indices[order]]
        return out

    def scaled(self, indices: np.ndarray, flip: np.ndarray | None = None) -> torch.Tensor:
        """float32 images in [-1, 1]; ``flip`` mirrors the chosen ones left-right."""
        images = np.asarray(self.array[np.asarray(indices)], dtype=np.float32)
        if flip is not None and flip.any():
            images[flip] = images[flip][..., ::-1]
        return torch.from_numpy(images).div_(127.5).sub_(1.0)


# --------------------------------------------------------------------------
# Loss log: a CSV appended to, cut back to the checkpoint on resume
# --------------------------------------------------------------------------

def shortest_float(value: float) -> str:
    """Full precision, empty for NaN (as pandas writes a float)."""
    return "" if math.isnan(value) else repr(value)


def six_digits(value: float) -> str:
    return f"{value:.6g}"


class LossLog:
    """A CSV with one row per logging interval. On opening, rows after
    ``resume_step`` (and torn lines) are dropped: they belong to steps the
    resumed run will redo. ``float_format`` turns a float into its text;
    ``None`` values are written empty."""

    def __init__(self, path: str | os.PathLike, columns: Sequence[str], resume_step: int,
                 float_format: Callable[[float], str] = six_digits, enabled: bool = True) -> None:
        self.path, self.columns = Path(path), tuple(columns)
        self.float_format, self.enabled = float_format, enabled
        if enabled:
            write_text(self.path, "\n".join([",".join(self.columns), *self._rows_up_to(resume_step)]) + "\n")

    def _rows_up_to(self, step: int) -> list[str]:
        if step <= 0 or not self.path.exists():
            return []
        kept = []
        for line in self.path.read_text().splitlines()[1:]:
            fields = line.split(",")
            if len(fields) == len(self.columns) and fields[0].isdigit() and int(fields[0]) <= step:
                kept.append(line)
        return kept

    def append(self, row: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        values = []
        for column in self.columns:
            v = row.get(column)
            values.append("" if v is None else (self.float_format(v) if isinstance(v, float) else str(v)))
        with open(self.path, "a") as handle:
            handle.write(",".join(values) + "\n")


# --------------------------------------------------------------------------
# Divergence
# --------------------------------------------------------------------------

class TrainingDiverged(RuntimeError):
    """A loss or a weight became NaN or infinite: the run stops before it
    writes a checkpoint of the diverged weights, so the newest checkpoint on
    disk is the last good one."""


def require_finite(model: str, step: int, checkpoint_folder: str | os.PathLike, *,
                   losses: Mapping[str, float | None] | None = None,
                   modules: Mapping[str, torch.nn.Module] | None = None,
                   optimizers: Mapping[str, torch.optim.Optimizer] | None = None) -> None:
    """Raise :class:`TrainingDiverged` naming the model, the step, what is not
    finite and the last good checkpoint, when any of ``losses``, of the
    weights of ``modules`` or of the moments of ``optimizers`` (an
    overflowing gradient shows there first) is NaN or infinite. Weights are the same in every
    process of a job (and losses are checked after the job's reduction), so
    every process stops at the same step."""
    bad = [name for name, value in (losses or {}).items() if value is not None and not math.isfinite(float(value))]
    for name, module in (modules or {}).items():
        if not all(bool(torch.isfinite(p).all()) for p in module.parameters()):
            bad.append(f"{name}'s weights")
    for name, optimizer in (optimizers or {}).items():
        moments = [t for state in optimizer.state.values() for t in state.values()
                   if isinstance(t, torch.Tensor) and t.is_floating_point()]
        if not all(bool(torch.isfinite(t).all()) for t in moments):
            bad.append(f"{name}'s moments")
    if not bad:
        return
    from .checkpoints import list_checkpoints

    kept = list_checkpoints(checkpoint_folder)
    where = (f"its last good checkpoint, step {kept[-1][0]} ({kept[-1][1]}), is kept" if kept
             else f"no checkpoint had been written yet ({checkpoint_folder})")
    raise TrainingDiverged(
        f"{model} training diverged at step {step}: {', '.join(bad)} not finite (NaN or inf). The run stopped; "
        f"{where}. The run is deterministic, so the same settings diverge again: lower the learning rate "
        f"and train anew in another results folder.")
