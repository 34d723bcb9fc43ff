"""The training-set-size sweep: nested training subsets, one results folder
per size, and model runs side by side.

The paper's claim is about small training sets, so the study trains each
model on several nested subsets of the training data at one budget (images
seen) and measures at which size the copying stops. Each size gets a folder
``results/<dataset>/sizes/n<K>/`` shaped like a whole results folder
(``data/``, ``stylegan/``, ``diffusion/``, ``samples/``, ``correlation/``),
so every step's code runs on it unchanged; ``data/sizes.json`` lists them.
Without a sweep (``train_sizes: null``) the one run is the results folder
itself.

A subset is made of **whole subjects, as the paper's training sets are**:
subjects are taken in the split's order with all their slices, and the last
one contributes a contiguous slab of slices around its middle slice. Each
size therefore contains every smaller one, and held-out subjects stay
disjoint from all of them.

This module imports no torch: workers import the model code themselves.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import common, lifetime, runlock
from .correlate.tables import BASELINE_NAME
from .data import load_split
from .sampling import samples_path

SIZES_FILE = "sizes.json"
DATA_FILES = ("test.npy", "test.csv")  # shared by every size: the held-out subjects


def centre_out(slices: Sequence[int]) -> list[int]:
    """Positions 0..len-1 ordered from the middle outwards (middle, next,
    previous, ...): every prefix is a contiguous block around the middle."""
    n = len(slices)
    mid = (n - 1) // 2
    order = [mid]
    for step in range(1, n):
        for pos in (mid + step, mid - step):
            if 0 <= pos < n and len(order) < n:
                order.append(pos)
    return order


RULES = ("whole_subjects", "one_per_subject")


def image_order(train_table: pd.DataFrame, rule: str = "whole_subjects") -> np.ndarray:
    """Training-image indices in the order the sweep adds them.

    ``whole_subjects`` (the paper's kind of training set): subject by subject
    in the split's order, each subject's slices from its middle slice
    outwards. ``one_per_subject`` (to test the 2D-from-3D effect at the same
    number of slices): the middle slice of every subject first, then the
    next slice of every subject, and so on."""
    if rule not in RULES:
        raise ValueError(f"subset rule must be one of {', '.join(RULES)}, got {rule!r}")
    rank_column = "split_rank" if "split_rank" in train_table else None
    subjects = (train_table.sort_values(rank_column, kind="stable") if rank_column else train_table)["subject"]
    per_subject = []
    for subject in dict.fromkeys(subjects):  # first appearance order
        rows = train_table[train_table["subject"] == subject].sort_values("slice", kind="stable")
        indices = rows["index"].to_numpy() if "index" in rows else rows.index.to_numpy()
        per_subject.append([int(indices[p]) for p in centre_out(indices)])
    if rule == "whole_subjects":
        order = [i for block in per_subject for i in block]
    else:
        depth = max(map(len, per_subject))
        order = [block[d] for d in range(depth) for block in per_subject if d < len(block)]
    return np.asarray(order, dtype=np.int64)


def nested_subsets(train_table: pd.DataFrame, sizes: Iterable[int], rule: str = "whole_subjects") -> dict[int, np.ndarray]:
    """``{size: training-image indices}``, each the first ``size`` images of
    :func:`image_order` (so each contains the smaller ones), sorted."""
    order = image_order(train_table, rule)
    sizes = sorted({int(s) for s in sizes})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"train_sizes must be positive numbers of training images, got {sizes}")
    if sizes[-1] > len(order):
        raise ValueError(
            f"train_sizes asks for {sizes[-1]} training images but the training split has {len(order)} "
            f"(from {train_table['subject'].nunique()} subjects): lower the largest size or train on more "
            f"subjects (prepare_data.n_train_subjects, or more phantom subjects)")
    return {n: np.sort(order[:n]) for n in sizes}


def size_label(n_images: int, rule: str = "whole_subjects") -> str:
    return f"n{n_images:05d}" + ("" if rule == "whole_subjects" else f"_{rule}")


def write_size_folders(results_dir: str | os.PathLike, sizes: Iterable[int],
                       rules: Sequence[str] = ("whole_subjects",)) -> pd.DataFrame:
    """One results-shaped folder per size (and subset rule) with its training
    subset (arrays copied: a few MB at the sweep's sizes) and the shared
    held-out set; ``data/sizes.json`` lists them. Returns the table of runs."""
    results_dir = Path(results_dir)
    train, table = load_split(results_dir, "train")
    meta = common.read_json(results_dir / "data" / "meta.json")
    rows = []
    for rule in rules:
        for n, indices in nested_subsets(table, sizes, rule).items():
            folder = results_dir / "sizes" / size_label(n, rule)
            data_dir = folder / "data"
            data_dir.mkdir(parents=True, exist_ok=True)
            with common.atomic_path(data_dir / "train.npy") as tmp:
                np.save(tmp, np.ascontiguousarray(train[indices]))
            subset = table.iloc[indices].reset_index(drop=True)
            subset = subset.assign(index=np.arange(len(subset)), full_index=indices)
            common.write_csv(data_dir / "train.csv", subset)
            for name in DATA_FILES:
                _link_or_copy(results_dir / "data" / name, data_dir / name)
            subjects = int(subset["subject"].nunique())
            common.write_json(data_dir / "meta.json", {**meta, "n_train": int(n), "n_train_subjects": subjects,
                                                       "sweep_size": int(n), "sweep_rule": rule})
            rows.append({"size": int(n), "rule": rule, "label": size_label(n, rule), "n_subjects": subjects,
                         "folder": str(folder.relative_to(results_dir))})
    runs = pd.DataFrame(rows)
    common.write_json(results_dir / "data" / SIZES_FILE, {"sizes": rows})
    return runs


def prepare(results_dir: str | os.PathLike, sizes: Iterable[int] | None,
            rules: Sequence[str] = ("whole_subjects",)) -> pd.DataFrame | None:
    """Step 01's last part: the size folders of a sweep, or (without one)
    the removal of an earlier run's list, so later steps see one run."""
    if not sizes:
        (Path(results_dir) / "data" / SIZES_FILE).unlink(missing_ok=True)
        return None
    return write_size_folders(results_dir, sizes, rules)


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where the file system allows (no second copy of the
    held-out set), a copy otherwise."""
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        with common.atomic_path(dst) as tmp:
            tmp.write_bytes(src.read_bytes())


def sizes_table(results_dir: str | os.PathLike) -> pd.DataFrame | None:
    """The sweep's sizes (size, label, n_subjects, folder), or None without a sweep."""
    path = Path(results_dir) / "data" / SIZES_FILE
    if not path.is_file():
        return None
    return pd.DataFrame(common.read_json(path)["sizes"])


def run_dirs(results_dir: str | os.PathLike) -> dict[str, Path]:
    """``{label: folder}`` of every run of this results folder: the sweep's
    size folders, or ``{"all": results_dir}`` without a sweep."""
    results_dir = Path(results_dir)
    table = sizes_table(results_dir)
    if table is None:
        return {"all": results_dir}
    return {row.label: results_dir / row.folder for row in table.itertuples()}


# --------------------------------------------------------------------------
# Runs side by side
# --------------------------------------------------------------------------

def _one_thread_worker(threads: int, parent: int) -> None:  # pragma: no cover - runs in the worker
    """A side-by-side worker's start: it dies with the process that started
    it (and with the runner), so no worker of a killed run writes on."""
    lifetime.bind_to_parent(parent)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def run_side_by_side(function: Callable[..., Any], jobs: Sequence[tuple], workers: int = 1,
                     threads_per_worker: int = 1) -> list[Any]:
    """``[function(*job) for job in jobs]``, in ``workers`` processes of
    ``threads_per_worker`` torch threads each when ``workers`` > 1 (two
    trainings of one thread each use two cores better than one training with
    two threads, whose threads wait on each other). Results in job order;
    the first failure is raised after the other jobs finished (their
    outputs, e.g. checkpoints, are kept). The workers die with this process
    (:func:`helpers.lifetime.bind_to_parent`); an interrupt (Ctrl-C, or the
    runner stopping the kernel) stops them before it is raised."""
    if workers <= 1 or len(jobs) <= 1:
        return [function(*job) for job in jobs]
    context = get_context("spawn")  # no forked torch/OpenMP state
    pool = ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context,
                               initializer=_one_thread_worker, initargs=(threads_per_worker, os.getpid()))
    try:
        futures = [pool.submit(function, *job) for job in jobs]
        errors = [f.exception() for f in futures]
    except BaseException:  # KeyboardInterrupt: no worker goes on writing after the notebook stopped
        for process in list(getattr(pool, "_processes", {}).values()):
            process.kill()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    for error in errors:
        if error is not None:
            raise error
    return [f.result() for f in futures]


# --------------------------------------------------------------------------
# The jobs of steps 02-04 for one run folder (torch is imported in the worker)
# --------------------------------------------------------------------------

def _settings_for_worker(settings, parallel: bool):
    """One thread per worker when runs go side by side."""
    import dataclasses

    return dataclasses.replace(settings, num_threads=1) if parallel and hasattr(settings, "num_threads") else settings


def train_stylegan_run(run_dir: str | os.PathLike, settings, parallel: bool = False) -> dict:
    from . import stylegan

    settings = _settings_for_worker(settings, parallel)
    return stylegan.train(run_dir, settings, seed=settings.seed, time_limit_min=settings.time_limit_min,
                          progress=not parallel)


def train_diffusion_run(run_dir: str | os.PathLike, settings, parallel: bool = False) -> dict:
    from . import diffusion

    return diffusion.train(run_dir, _settings_for_worker(settings, parallel), progress=not parallel)


def sample_run(run_dir: str | os.PathLike, settings, parallel: bool = False) -> dict[str, str]:
    """Every model of ``settings.models`` that this run trained (the
    optimal denoiser needs none), ``first_seed + i`` for image i."""
    run_dir = Path(run_dir)
    written: dict[str, str] = {}
    quiet = not parallel
    if "stylegan" in settings.models and (run_dir / "stylegan").is_dir():
        from . import stylegan

        written["stylegan"] = str(stylegan.sample(run_dir, settings.n_stylegan, settings.first_seed,
                                                  settings.batch_size, truncation_psi=settings.truncation_psi,
                                                  progress=quiet))
    if "diffusion" in settings.models and (run_dir / "diffusion").is_dir():
        from . import diffusion

        written["diffusion"] = str(diffusion.sample(
            run_dir, settings.n_diffusion, settings.first_seed, settings.batch_size,
            sampler=settings.diffusion_sampler, num_inference_steps=settings.diffusion_inference_steps,
            progress=quiet, num_threads=1 if parallel else 0))
    if "optimal_denoiser" in settings.models and settings.n_optimal_denoiser > 0:
        from . import optimal_denoiser

        written["optimal_denoiser"] = str(optimal_denoiser.sample(
            run_dir, settings.n_optimal_denoiser, settings.first_seed, settings.batch_size,
            sampler=settings.diffusion_sampler, num_inference_steps=settings.diffusion_inference_steps,
            progress=quiet, num_threads=1 if parallel else 0))
    return written


def for_every_run(results_dir: str | os.PathLike, job: Callable, settings) -> dict[str, Any]:
    """``job(run_dir, settings, parallel)`` for every run of the results
    folder, ``settings.parallel_runs`` of them side by side; ``{label: result}``."""
    runs = run_dirs(results_dir)
    parallel = settings.parallel_runs > 1 and len(runs) > 1
    with runlock.for_runs(runs.values()):  # a notebook run by hand; under ./runall.sh the runner holds them
        results = run_side_by_side(job, [(str(path), settings, parallel) for path in runs.values()],
                                   workers=settings.parallel_runs if parallel else 1)
    return dict(zip(runs, results))


# --------------------------------------------------------------------------
# The memorization criteria of every run, and each model's capacity
# --------------------------------------------------------------------------

REAL = BASELINE_NAME        # held-out real images: the negative reference
L2_CRITERION = "l2: d1 < d2/3"
CAPACITY_FRACTION = 0.9     # Gu et al.: "most samples memorized"


def correlation_criterion(measure: str, threshold_name: str) -> str:
    return f"{measure}: r > {threshold_name}"


def _samples(run_dir: Path, model: str) -> np.ndarray | None:
    path = samples_path(run_dir, model)
    return np.load(path, mmap_mode="r") if path.is_file() else None


def run_criteria(run_dir: str | os.PathLike, models: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The pre-declared criteria for every model with samples and for the
    held-out real images, on one run: the paper's (best Pearson r on each
    image modality above 0.95 / 0.99 and above the 95th / 99th percentile
    of held-out real images against *this* training set; the real images
    only against the fixed ones, since they define the percentiles) and
    Gu et al.'s ℓ2 ratio. Returns the criteria table and the training-set
    coverage (by the ℓ2 criterion and the headline's p99 criterion)."""
    from . import memorization

    run_dir = Path(run_dir)
    summary = common.read_json(run_dir / "correlation" / "summary.json")
    measures = [m for m in summary["measures"] if not summary["by_measure"][m].get("label_map")]
    headline = summary["headline"]
    train, table = load_split(run_dir, "train")
    meta = common.read_json(run_dir / "data" / "meta.json")
    sets = {m: s for m in models if (s := _samples(run_dir, m)) is not None}
    sets[REAL] = np.load(run_dir / "data" / "test.npy", mmap_mode="r")
    flags: dict[str, dict[str, np.ndarray]] = {group: {} for group in sets}
    for measure in measures:
        folder = run_dir / "correlation" / measure
        base = pd.read_csv(folder / "baseline.csv")
        base_r = base["correlation"].where(~base["constant"].astype(bool)).to_numpy(float)
        thresholds = memorization.correlation_thresholds(base_r)
        for group in sets:
            if group == REAL:
                r, usable = base_r, {k: v for k, v in thresholds.items() if k.startswith("fixed")}
            else:
                matches = pd.read_csv(folder / f"matches_{group}.csv")
                r, usable = matches["correlation"].where(~matches["constant"].astype(bool)).to_numpy(float), thresholds
            for name, value in usable.items():
                flags[group][correlation_criterion(measure, name)] = memorization.exceedance_flags(r, value)
    nearest = {}
    for group, images in sets.items():
        nearest[group] = memorization.nearest_l2(images, train, table, image_size=int(meta["image_size"]))
        flags[group][L2_CRITERION] = memorization.l2_ratio_flags(nearest[group]["nearest_distance"],
                                                                nearest[group]["second_distance"])
    size, n_subjects = len(train), int(table["subject"].nunique())
    criteria = memorization.criteria_table(flags, size, n_subjects)
    criteria.insert(0, "headline", headline)
    criteria.insert(1, "rule", meta.get("sweep_rule", "whole_subjects"))
    coverage_keys = (L2_CRITERION, correlation_criterion(headline, "baseline_p99"))
    coverage = memorization.coverage_table(
        {g: (nearest[g]["nearest_index"], {c: flags[g][c] for c in coverage_keys if c in flags[g]})
         for g in sets if g != REAL}, len(train), size, table)
    coverage.insert(0, "rule", meta.get("sweep_rule", "whole_subjects"))
    return criteria, coverage


def memorization_tables(results_dir: str | os.PathLike, models: Sequence[str]) -> dict[str, pd.DataFrame]:
    """The criteria of every run of a sweep, one tidy table (``criteria``),
    the training-set ``coverage``, and each group's ``capacity``: the
    largest size at which at least 90 % of its samples are memorized, with
    the bracketing sizes, per criterion. Written under
    ``results_dir/sweep/``."""
    from . import memorization

    results_dir = Path(results_dir)
    parts = [run_criteria(path, models) for path in run_dirs(results_dir).values()]
    criteria = pd.concat([p[0] for p in parts], ignore_index=True)
    coverage = pd.concat([p[1] for p in parts], ignore_index=True)
    rows = []
    for (rule, group, criterion), part in criteria.groupby(["rule", "group", "criterion"], sort=False):
        if group == REAL or part["size"].nunique() < 2:
            continue
        cap = memorization.memorization_capacity(part, criterion, group, CAPACITY_FRACTION)
        rows.append({"rule": rule, "group": group, "criterion": criterion, "target": cap.target, "status": cap.status,
                     "capacity": cap.capacity, "below": cap.below, "above": cap.above,
                     "monotone": cap.monotone, "message": cap.message})
    capacity = pd.DataFrame(rows, columns=["rule", "group", "criterion", "target", "status", "capacity",
                                           "below", "above", "monotone", "message"])  # empty: no rule has 2 sizes
    out = results_dir / "sweep"
    for name, frame in (("criteria", criteria), ("coverage", coverage), ("capacity", capacity)):
        common.write_csv(out / f"{name}.csv", frame)
    return {"criteria": criteria, "coverage": coverage, "capacity": capacity}
