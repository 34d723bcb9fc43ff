"""Timing a few iterations of each heavy step, and the disk its outputs take.

See :mod:`helpers.plan` for what is measured and how it is scaled."""

from __future__ import annotations

import math
import resource
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..common import write_json
from ..layout import DataFiles
from ..models import SamplingProbe, TrainingProbe, sample_counts
from ..models import get as get_model

GIB = 2**30
#: most pixels (batch × C × H × W) timed in one step on a CPU; a larger
#: batch's time is scaled linearly from a smaller one (5×256²: 3 images)
CPU_TIMED_PIXELS = 2**20


@dataclass
class StepEstimate:
    step: str
    seconds: float | None
    basis: str
    memory: str
    disk_bytes: int
    disk_what: str



# --------------------------------------------------------------------------
# Measuring a few iterations
# --------------------------------------------------------------------------

def _timed(fn: Callable[[], object], repeats: int = 2) -> float:
    """Seconds per call of ``fn`` after one warm-up call (the fastest of
    ``repeats``; one when the warm-up took more than 5 s)."""
    import torch

    t0 = time.perf_counter()
    fn()
    best = math.inf
    for _ in range(repeats if time.perf_counter() - t0 < 5 else 1):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def _memory(device: str) -> str:
    import torch

    if device == "cuda":
        return f"GPU {torch.cuda.max_memory_allocated() / GIB:.1f} GiB"
    return f"RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB"


def _reset_memory(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _timed_batch(per_process: int, device: str, shape: Sequence[int], multiple: int = 1) -> int:
    """The batch to time: the real one on a GPU; on a CPU at most
    ``CPU_TIMED_PIXELS`` worth of images (a multiple of ``multiple``)."""
    if device == "cuda":
        return per_process
    cap = max(1, CPU_TIMED_PIXELS // int(np.prod(shape)))
    return max(multiple, min(per_process, cap) // multiple * multiple)


def _per_process_batch(batch: int, processes: int, device: str) -> int:
    """Processes on one CPU share its cores: there each counts as the whole batch."""
    return batch // processes if device == "cuda" else batch


def _random_training(folder: Path, n: int, shape: tuple[int, int, int]) -> Path:
    images = np.random.default_rng(0).integers(0, 256, (n, *shape), dtype=np.uint8)
    np.save(DataFiles(folder).train, images)
    write_json(DataFiles(folder).meta, {"channels": shape[0], "image_size": shape[1]})
    return folder


def estimate_training(model, cfg, shape, runs, device: str, processes: int) -> StepEstimate:
    """Step ``02``/``03``…: a model's own estimate (its registry entry's
    ``time_training``), timed here on random images of the data's shape."""
    label = (f"{model.notebook[:2]} " if model.notebook else "") + f"train {model.display}"
    if model.time_training is None:
        return StepEstimate(label, None, "not measured (its registry entry has no estimate)", "–", 0, "–")
    per = _per_process_batch(cfg.batch_size, processes, device)
    _reset_memory(device)
    with tempfile.TemporaryDirectory() as tmp:
        def random_training(n: int) -> Path:
            folder = Path(tmp) / f"random_{n}"
            folder.mkdir(exist_ok=True)
            return _random_training(folder, n, tuple(shape))

        probe = TrainingProbe(cfg, tuple(shape), runs, device, processes, per, _timed_batch(per, device, shape),
                              _timed, random_training)
        done = model.time_training(probe)
    return StepEstimate(label, done.seconds, done.basis, _memory(device), done.disk_bytes, done.disk_what)


def estimate_sampling(cfg, sections, shape, runs, device: str, processes: int) -> StepEstimate:
    """Step 04: each model's own estimate (its registry entry's
    ``time_sampling``, timed here), for the images ``cfg`` asks of it."""
    gpus = processes if device == "cuda" else 1
    counts = sample_counts(cfg)
    _reset_memory(device)
    diffusion_cfg = sections["train_diffusion"]
    steps = (diffusion_cfg.num_train_timesteps if cfg.diffusion_sampler == "ddpm"
             else cfg.diffusion_inference_steps or 50)
    b = _timed_batch(cfg.batch_size, device, shape)
    seconds, parts, audits = 0.0, [], 0
    for name, n in counts.items():
        model = get_model(name, "sample.models")
        if model.time_sampling is None:
            parts.append(f"{model.display}: not measured")
            continue
        probe = SamplingProbe(cfg, sections, tuple(shape), runs, device, b, steps, _timed, n)
        model_seconds, basis = model.time_sampling(probe)
        audited = (model.checkpoints_planned(sections[model.section]) * cfg.n_checkpoint_samples
                   if model.checkpoints_planned is not None and cfg.n_checkpoint_samples > 0 else 0)
        if audited:  # the audits over training sample every kept checkpoint the same way
            model_seconds *= 1 + audited / n
            audits += audited
            basis += f" (+ {audited:,} images of its checkpoints per run)"
        seconds += model_seconds / gpus
        parts.append(basis)
    image = int(np.prod(shape))
    disk = len(runs) * (sum(counts.values()) + audits) * (image + 16)
    basis = "; ".join(parts) + (f"; {gpus} GPUs share the seeds" if gpus > 1 else "")
    what = ", ".join(f"{n:,} {m}" for m, n in counts.items()) + " uint8 samples per run"
    return StepEstimate("04 sample", seconds, basis, _memory(device), disk, what)


def estimate_correlation(cfg, sample_cfg, channel_names, shape, runs, device: str, processes: int) -> StepEstimate:
    from .. import correlation
    from ..audit.measures import study_measures

    measures, _ = study_measures(channel_names, cfg.channels, each=True, joint=cfg.joint,
                                 headline=cfg.headline_channel)
    groups = {m.name: list(m.index) for m in measures}
    n_synthetic = sum(n for m, n in sample_counts(sample_cfg).items() if m in cfg.models)
    rng = np.random.default_rng(0)
    backend = cfg.backend if device == "cuda" else "numpy"
    # the arithmetic the run would use (the integer path where its probe is faster);
    # its products need more synthetic rows than the float path's to run at speed
    arith = correlation.choose_arithmetic(correlation.get_backend(backend), (np.uint8, np.uint8),
                                          int(np.prod(shape)))
    n_s, n_t = (256, 4096) if device == "cuda" else (128 if arith.integer else 64, 1024)
    synthetic = rng.integers(0, 256, (n_s, *shape), dtype=np.uint8)
    training = rng.integers(0, 256, (n_t, *shape), dtype=np.uint8)
    t = _timed(lambda: correlation.match_groups(synthetic, training, groups, k=cfg.top_k, backend=backend,
                                                progress=False, arithmetic=arith), repeats=1)
    rate = n_s * n_t / t
    pairs = sum((n_synthetic + n_test + cfg.n_control) * n_train for n_train, n_test in runs.values())
    gpus = processes if device == "cuda" else 1
    rows = sum(n_synthetic + n_test + cfg.n_control for _, n_test in runs.values())
    disk = rows * len(measures) * cfg.top_k * 40
    basis = (f"{pairs:.2g} pairs × {len(measures)} measures; {n_s}×{n_t} pairs measured "
             f"({rate:,.0f} pairs/s, all measures; {arith.reason})"
             + (f"; {gpus} GPUs share the synthetic images" if gpus > 1 else ""))
    return StepEstimate("05 correlate", pairs / rate / gpus, basis, f"≤ {cfg.memory_budget_gb:g} GiB + 1 (budget)",
                        disk, f"tables of the top {cfg.top_k} matches per image and measure")


