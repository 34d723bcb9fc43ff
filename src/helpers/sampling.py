"""Synthetic images, one seed per image, written resumably.

Every generator (StyleGAN, diffusion) is wrapped as a function that turns a
list of seeds into a uint8 batch ``(len(seeds), C, H, W)``; image ``i`` has
seed ``first_seed + i`` and depends on nothing else, so any image can be
regenerated alone and the result does not depend on the batch size.

:func:`sample_to_npy` fills ``samples/<model>.npy`` batch by batch through a
memory-mapped ``.partial.npy`` file and one done-flag per batch; a re-run
continues where the last one stopped (with any number of processes), and the
final file appears (by an atomic rename) only when every image is there. In
a torch.distributed job (:mod:`helpers.parallel`) each process writes its
own batches into the same file, so the result is identical to one process's.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .common import fsync, image_seeds, read_json, write_csv, write_json
from .common import progress as progress_bar
from .layout import SAMPLES, WRITTEN_BY, Run, missing, seeds_of
from .lifetime import fault_point
from .parallel import barrier, rank_world

Generator = Callable[[Sequence[int]], np.ndarray]


def samples_path(results: str | os.PathLike, model: str) -> Path:
    return Run(results).samples(model)


def checkpoint_samples_path(results: str | os.PathLike, model: str, step: int) -> Path:
    """Samples of a model's training checkpoint ``step`` (the audits over training)."""
    return Run(results).checkpoint_samples(model, step)


def checkpoint_sample_files(results: str | os.PathLike, model: str) -> dict[int, Path]:
    """``{step: samples file}`` of every sampled checkpoint of ``model``, in step order."""
    folder = Run(results).checkpoint_samples_folder(model)
    found = {int(p.stem.split("_")[1]): p for p in folder.glob("step_*.npy") if p.stem.split("_")[1].isdigit()}
    return dict(sorted(found.items()))


def sample_checkpoint_to_npy(generate: Generator, checkpoint: str | os.PathLike, weights: str,
                             out_path: str | os.PathLike, n_images: int, first_seed: int,
                             image_shape: tuple[int, int, int], batch_size: int = 16, progress: bool = True,
                             desc: str | None = None) -> Path:
    """:func:`sample_to_npy` for a training checkpoint's samples, with the
    digest of the checkpoint's sampled weights (``weights``, e.g. ``"G_ema"``)
    kept beside them (``step_*.json``): samples of a checkpoint that has
    since been replaced (a training run again) are removed and drawn anew,
    never read as this checkpoint's."""
    from .checkpoints import tensor_digest
    from .common import read_json, write_json

    out_path = Path(out_path)
    record = out_path.with_suffix(".json")
    if rank_world()[0] == 0:   # one process checks and keeps the record; the others wait for it
        digest = tensor_digest(checkpoint, weights)   # the same weights give the same digest
        if record.is_file() and read_json(record).get("weights_sha256") != digest:
            print(f"{out_path}: drawn from an earlier checkpoint of that step; drawing it again")
            for stale in out_path.parent.glob(out_path.stem + "*"):
                stale.unlink(missing_ok=True)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        write_json(record, {"checkpoint": str(Path(checkpoint).name), "weights": weights,
                            "weights_sha256": digest})
    barrier()
    return sample_to_npy(generate, out_path, n_images, first_seed, image_shape, batch_size, progress, desc)


def seeds_path(results: str | os.PathLike, model: str) -> Path:
    return Run(results).seeds(model)


def finished_samples(out_path: str | os.PathLike, n_images: int, first_seed: int,
                     image_shape: Sequence[int]) -> bool:
    """Whether ``out_path`` (and its seed table) already holds exactly the
    ``n_images`` uint8 images of seeds ``first_seed``, ``first_seed + 1``, …"""
    out_path = Path(out_path)
    seeds_csv = seeds_of(out_path)
    if not (out_path.exists() and seeds_csv.exists()):
        return False
    done = np.load(out_path, mmap_mode="r")
    return done.shape == (n_images, *image_shape) and done.dtype == np.uint8 and np.array_equal(
        pd.read_csv(seeds_csv)["seed"].to_numpy(), image_seeds(n_images, first_seed))


def sample_to_npy(
    generate: Generator,
    out_path: str | os.PathLike,
    n_images: int,
    first_seed: int,
    image_shape: tuple[int, int, int],
    batch_size: int = 16,
    progress: bool = True,
    desc: str | None = None,
) -> Path:
    """Generate ``n_images`` with seeds ``first_seed..`` into ``out_path``.

    Writes ``<out>.npy`` (uint8, N×C×H×W) and ``<out>_seeds.csv`` (index,
    seed). Resumes an interrupted run when its seeds and shape match; a
    finished file with the same seeds and shape is left as it is.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    rank, world = rank_world()
    seeds = image_seeds(n_images, first_seed)
    shape = (n_images, *image_shape)
    seeds_csv = seeds_of(out_path)
    partial = out_path.with_name(out_path.stem + ".partial.npy")
    flags_path = out_path.with_name(out_path.stem + ".partial.done.npy")
    record = out_path.with_name(out_path.stem + ".partial.json")
    if finished_samples(out_path, n_images, first_seed, image_shape):
        barrier()  # every rank has looked before rank 0 tidies up what a kill after the rename left
        if rank == 0:
            for leftover in (record, flags_path):
                leftover.unlink(missing_ok=True)
        return out_path
    wanted = {"n_images": n_images, "first_seed": first_seed, "shape": list(shape), "batch_size": batch_size}
    n_batches = -(-n_images // batch_size)

    if rank == 0:
        # the record is published last and removed first: a state that a kill
        # interrupted while it was being made is never taken for a resumable one
        resumable = (record.exists() and partial.exists() and flags_path.exists()
                     and {k: read_json(record).get(k) for k in wanted} == wanted)
        if not resumable:
            record.unlink(missing_ok=True)
            np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape).flush()
            np.lib.format.open_memmap(flags_path, mode="w+", dtype=np.uint8, shape=(n_batches,)).flush()
            fsync(partial)
            fsync(flags_path)
            write_json(record, wanted)
    barrier()
    array = np.lib.format.open_memmap(partial, mode="r+")
    flags = np.lib.format.open_memmap(flags_path, mode="r+")
    # batch b (images b·batch_size …) belongs to rank b mod world: the batches,
    # and so the images, are the same whatever the number of processes
    mine = [b for b in range(rank, n_batches, world) if not flags[b]]
    todo = sum(min(batch_size, n_images - b * batch_size) for b in mine)
    with progress_bar(total=todo, desc=desc or out_path.stem, unit="img", disable=not progress) as bar:
        for b in mine:
            lo, hi = b * batch_size, min((b + 1) * batch_size, n_images)
            batch = np.asarray(generate([int(s) for s in seeds[lo:hi]]))
            if batch.shape != (hi - lo, *image_shape) or batch.dtype != np.uint8:
                raise ValueError(
                    f"generator returned {batch.dtype} {batch.shape}, expected uint8 {(hi - lo, *image_shape)}"
                )
            array[lo:hi] = batch
            array.flush()  # the images on disk before the flag that says they are there
            flags[b] = 1
            flags.flush()
            fault_point("sample-batch", out_path.name)
            bar.update(hi - lo)
    del array
    barrier()
    if rank == 0:
        missing = int(n_batches - np.count_nonzero(flags))
        if missing:
            raise RuntimeError(f"{partial}: {missing} of {n_batches} batches were not written; re-run to resume")
        del flags
        write_csv(seeds_csv, pd.DataFrame({"index": np.arange(n_images), "seed": seeds}))
        fault_point("sample-publish", out_path.name)  # the kill test: every batch written, not yet renamed
        os.replace(partial, out_path)
        fsync(out_path.parent)
        record.unlink(missing_ok=True)
        flags_path.unlink(missing_ok=True)
    barrier()
    return out_path


def to_uint8(images) -> np.ndarray:
    """Model output in [-1, 1] (torch tensor or array) → uint8 0..255,
    clipped and rounded."""
    if hasattr(images, "detach"):
        images = images.detach().float().cpu().numpy()
    images = np.asarray(images, dtype=np.float32)
    return np.clip(np.rint((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def load_samples(results: str | os.PathLike, model: str) -> tuple[np.ndarray, pd.DataFrame | None]:
    """Step 04's samples of ``model`` (memory-mapped uint8 N×C×H×W) and
    their seed table in image order, the one loader of every reader (the
    audit, the criteria, the fit, the figures). The table is None where it
    is missing or is not one seed per image: the audit still runs on such
    samples. No samples file: :class:`helpers.layout.ResultMissing` naming
    the step that writes it."""
    run = Run(results)
    path = run.samples(model)
    if not path.is_file():
        raise missing(path, WRITTEN_BY[SAMPLES])
    images = np.load(path, mmap_mode="r")
    seeds = None
    if run.seeds(model).is_file():
        frame = pd.read_csv(run.seeds(model))
        if len(frame) == len(images) and "seed" in frame:
            seeds = frame.sort_values("index").reset_index(drop=True) if "index" in frame else frame
    return images, seeds
