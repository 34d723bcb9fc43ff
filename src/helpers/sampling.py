"""Synthetic images, one seed per image, written resumably.

Every generator (StyleGAN, diffusion) is wrapped as a function that turns a
list of seeds into a uint8 batch ``(len(seeds), C, H, W)``; image ``i`` has
seed ``first_seed + i`` and depends on nothing else, so any image can be
regenerated alone and the result does not depend on the batch size.

:func:`sample_to_npy` fills ``samples/<model>.npy`` batch by batch through a
memory-mapped ``.partial.npy`` file and a small progress record; a re-run
continues where the last one stopped, and the final file appears (by an
atomic rename) only when every image is there.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .common import image_seeds, read_json, write_csv, write_json
from .common import progress as progress_bar

Generator = Callable[[Sequence[int]], np.ndarray]


def samples_path(results: str | os.PathLike, model: str) -> Path:
    return Path(results) / "samples" / f"{model}.npy"


def seeds_path(results: str | os.PathLike, model: str) -> Path:
    return Path(results) / "samples" / f"{model}_seeds.csv"


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
    seeds = image_seeds(n_images, first_seed)
    shape = (n_images, *image_shape)
    seeds_csv = out_path.with_name(out_path.stem + "_seeds.csv")
    partial = out_path.with_name(out_path.stem + ".partial.npy")
    record = out_path.with_name(out_path.stem + ".partial.json")
    wanted = {"n_images": n_images, "first_seed": first_seed, "shape": list(shape)}

    if out_path.exists() and seeds_csv.exists():
        done = np.load(out_path, mmap_mode="r")
        old = pd.read_csv(seeds_csv)
        if done.shape == shape and done.dtype == np.uint8 and np.array_equal(old["seed"].to_numpy(), seeds):
            return out_path

    start = 0
    if partial.exists() and record.exists():
        state = read_json(record)
        if {k: state.get(k) for k in wanted} == wanted:
            start = int(state["done"])
    if start == 0:
        np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape).flush()
        write_json(record, {**wanted, "done": 0})
    array = np.lib.format.open_memmap(partial, mode="r+")

    with progress_bar(total=n_images, initial=start, desc=desc or out_path.stem, unit="img", disable=not progress) as bar:
        for lo in range(start, n_images, batch_size):
            hi = min(lo + batch_size, n_images)
            batch = np.asarray(generate([int(s) for s in seeds[lo:hi]]))
            if batch.shape != (hi - lo, *image_shape) or batch.dtype != np.uint8:
                raise ValueError(
                    f"generator returned {batch.dtype} {batch.shape}, expected uint8 {(hi - lo, *image_shape)}"
                )
            array[lo:hi] = batch
            array.flush()
            write_json(record, {**wanted, "done": hi})
            bar.update(hi - lo)
    del array

    write_csv(seeds_csv, pd.DataFrame({"index": np.arange(n_images), "seed": seeds}))
    os.replace(partial, out_path)
    record.unlink(missing_ok=True)
    return out_path


def to_uint8(images) -> np.ndarray:
    """Model output in [-1, 1] (torch tensor or array) → uint8 0..255,
    clipped and rounded."""
    if hasattr(images, "detach"):
        images = images.detach().float().cpu().numpy()
    images = np.asarray(images, dtype=np.float32)
    return np.clip(np.rint((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def load_samples(results: str | os.PathLike, model: str) -> tuple[np.ndarray, pd.DataFrame]:
    """Memory-mapped samples of ``model`` and their seed table."""
    path = samples_path(results, model)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no samples of model '{model}' (run notebook 04 first)")
    return np.load(path, mmap_mode="r"), pd.read_csv(seeds_path(results, model))
