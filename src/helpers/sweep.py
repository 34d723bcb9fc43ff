"""The training-set-size sweep: nested training subsets and one results
folder per size.

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
one contributes a contiguous slab of slices around its middle slice. X-ray
sets are made of patients: one image per patient while patients last. Each
size therefore contains every smaller one, and held-out subjects stay
disjoint from all of them.

This module knows folders and subsets only: what runs a step on every run is
:mod:`helpers.steps`, what judges a run :mod:`helpers.criteria`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from . import common
from .data import load_split
from .layout import Results, Run
from .memorization import default_neighbour_slices, distinct_pictures

SIZES_FILE = Run("").data.sizes.name


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
    next slice of every subject, and so on.

    Images that are no slices of a volume (x-rays: slice -1) are separate
    pictures, and a patient is the unit of a training set: under either rule
    each size takes one image per patient while patients last (then every
    patient's second image, ...), so a size of n images is n patients."""
    if rule not in RULES:
        raise ValueError(f"subset rule must be one of {', '.join(RULES)}, got {rule!r}")
    rank_column = "split_rank" if "split_rank" in train_table else None
    subjects = (train_table.sort_values(rank_column, kind="stable") if rank_column else train_table)["subject"]
    per_subject = []
    for subject in dict.fromkeys(subjects):  # first appearance order
        rows = train_table[train_table["subject"] == subject].sort_values("slice", kind="stable")
        indices = rows["index"].to_numpy() if "index" in rows else rows.index.to_numpy()
        per_subject.append([int(indices[p]) for p in centre_out(indices)])
    if rule == "whole_subjects" and not is_planar(train_table):
        order = [i for block in per_subject for i in block]
    else:
        depth = max(map(len, per_subject))
        order = [block[d] for d in range(depth) for block in per_subject if d < len(block)]
    return np.asarray(order, dtype=np.int64)


def is_planar(train_table: pd.DataFrame) -> bool:
    """Whether the images are 2D pictures (x-rays: slice -1), not slices."""
    return "slice" in train_table and len(train_table) > 0 and bool((train_table["slice"] < 0).all())


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
    data = Run(results_dir).data
    meta = common.read_json(data.meta)
    alike = default_neighbour_slices(int(meta["image_size"]))
    rows = []
    for rule in rules:
        for n, indices in nested_subsets(table, sizes, rule).items():
            folder = Results(results_dir).size_run(size_label(n, rule)).folder
            own = Run(folder).data
            own.folder.mkdir(parents=True, exist_ok=True)
            with common.atomic_path(own.train) as tmp:
                np.save(tmp, np.ascontiguousarray(train[indices]))
            subset = table.iloc[indices].reset_index(drop=True)
            subset = subset.assign(index=np.arange(len(subset)), full_index=indices)
            common.write_csv(own.train_table, subset)
            for shared, copy in ((data.test, own.test), (data.test_table, own.test_table)):  # every size's held-out set
                _link_or_copy(shared, copy)
            subjects = int(subset["subject"].nunique())
            common.write_json(own.meta, {**meta, "n_train": int(n), "n_train_subjects": subjects,
                                         "sweep_size": int(n), "sweep_rule": rule})
            rows.append({"size": int(n), "rule": rule, "label": size_label(n, rule), "n_subjects": subjects,
                         "n_distinct": distinct_pictures(subset, alike), "folder": str(folder.relative_to(results_dir))})
    runs = pd.DataFrame(rows)
    common.write_json(data.sizes, {"sizes": rows})
    return runs


def prepare(results_dir: str | os.PathLike, sizes: Iterable[int] | None,
            rules: Sequence[str] = ("whole_subjects",)) -> pd.DataFrame | None:
    """Step 01's last part: the size folders of a sweep, or (without one)
    the removal of an earlier run's list, so later steps see one run."""
    if not sizes:
        Run(results_dir).data.sizes.unlink(missing_ok=True)
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
    """The sweep's sizes (size, rule, label, n_subjects, n_distinct: different
    pictures by the neighbour-slice rule, folder), or None without a sweep."""
    path = Run(results_dir).data.sizes
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
