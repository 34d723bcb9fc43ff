"""The driver: check the arguments, let the dataset's reader plan the work
(:func:`.brats.plan_brats` or :func:`.cxr.plan_cxr`), stream the images
into the arrays (:func:`.store.stream_units`), then write the tables and
``meta.json``. It knows no file format itself."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .. import common
from ..config.schema import PrepareDataSettings
from ..layout import Run
from .base import DatasetNotFoundError
from .brats import BRATS_CHANNELS, plan_brats
from .cxr import CXR_CHANNELS, plan_cxr
from .raw import SOURCES, missing_data_message
from .splits import SPLITS
from .store import stream_units

SKIPPED_COLUMNS = ["path", "reason", "subject", "role"]


def _validate(source, image_size, channels, pad_to, slice_stride, on_bad_subject, n_workers, split="seeded"):
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(repr(s) for s in SPLITS)}, got {split!r}")
    if split == "authors" and source != "brats":
        raise ValueError(f"split='authors' with source {source!r}: the authors' subject split exists only for "
                         "the real BraTS 2020/2021 data (source: brats); use split: seeded "
                         "(--set prepare_data.split=seeded)")
    if on_bad_subject not in ("fail", "skip"):
        raise ValueError(f"on_bad_subject must be 'fail' or 'skip', got {on_bad_subject!r}")
    if int(image_size) < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if int(slice_stride) < 1:
        raise ValueError(f"slice_stride must be ≥ 1, got {slice_stride}")
    if int(n_workers) < 0:
        raise ValueError(f"n_workers must be ≥ 0, got {n_workers}")
    if SOURCES[source] == "brats" and int(image_size) > int(pad_to):
        raise ValueError(f"image_size={image_size} is larger than pad_to={pad_to}; slices are padded to pad_to "
                         "and only shrunk")
    return chosen_channels(source, channels)


def chosen_channels(source: str, channels: Sequence[str] | None) -> list[str]:
    """The channels step 01 writes for ``source``, in the arrays' order:
    all of the reader's (``channels`` null) or the named subset, spelt as the
    reader spells them. The plan reads it too, before step 01 has run."""
    allowed = BRATS_CHANNELS if SOURCES[source] == "brats" else CXR_CHANNELS
    if channels is None:
        return list(allowed)
    by_lower = {c.lower(): c for c in allowed}
    chosen = [by_lower.get(str(c).lower()) for c in channels]
    if not channels or None in chosen or len(set(chosen)) != len(chosen):
        raise ValueError(f"channels {list(channels)}: expected distinct names from {list(allowed)} (or null for all)")
    return sorted(chosen, key=allowed.index)  # a subset keeps our order (BRATS_CHANNELS)


#: step 01's defaults: the schema's, the one home of every setting (the keyword defaults below read it)
_D = PrepareDataSettings()
#: the settings prepare_dataset reads (the rest of PrepareDataSettings is the phantom's and the sweep's)
READ_SETTINGS = ("image_size", "channels", "pad_to", "t1_threshold", "min_brain_fraction", "slice_stride",
                 "n_test_subjects", "n_train_subjects", "test_fraction", "split", "on_bad_subject", "seed",
                 "n_workers")


def prepare_from_settings(raw_dir: str | os.PathLike, results_dir: str | os.PathLike,
                          settings: PrepareDataSettings, *, dataset: str | None = None,
                          progress: bool = True) -> dict:
    """Step 01 from its settings, whole: :func:`prepare_dataset` with every
    value :data:`READ_SETTINGS` names taken from ``settings``."""
    return prepare_dataset(settings.source, raw_dir, results_dir, dataset=dataset, progress=progress,
                           **{name: getattr(settings, name) for name in READ_SETTINGS})


def prepare_dataset(
    source: str,
    raw_dir: str | os.PathLike,
    results_dir: str | os.PathLike,
    image_size: int = _D.image_size,
    channels: Sequence[str] | None = _D.channels,
    *,
    dataset: str | None = None,
    pad_to: int = _D.pad_to,
    t1_threshold: float = _D.t1_threshold,
    min_brain_fraction: float = _D.min_brain_fraction,
    slice_stride: int = _D.slice_stride,
    n_test_subjects: int = _D.n_test_subjects,
    n_train_subjects: int | None = _D.n_train_subjects,
    test_fraction: float = _D.test_fraction,
    split: str = _D.split,
    split_file: str | os.PathLike | None = None,
    on_bad_subject: str = _D.on_bad_subject,
    seed: int = _D.seed,
    n_workers: int = _D.n_workers,
    progress: bool = True,
) -> dict:
    """Read the raw data in ``raw_dir`` (BraTS subject folders or the
    chest x-ray folders; the rules are in :mod:`.brats`, :mod:`.slicing` and
    :mod:`.cxr`), split it by
    subject/patient and write ``results_dir/data/`` (train/test .npy and
    .csv, split.csv, skipped.csv, slice_fractions.csv for BraTS, meta.json).

    ``split`` chooses how subjects are divided:

    * ``"seeded"`` (default): a permutation of the subjects found, seeded
      with ``seed`` (:func:`split_subjects`). For BraTS, the last
      ``n_test_subjects`` are held out and the first ``n_train_subjects``
      of the rest (None = all) train. For chest x-ray, ``test_fraction`` of
      each class's patients are held out and ``n_train_subjects`` counts
      patients.
    * ``"authors"`` (source ``brats`` only; an error for the phantom and
      x-ray sources): the authors' published subject order
      (:func:`split_subjects_by_list`), from ``split_file``, or when that is
      None the shipped ``configs/authors_split/`` list of the detected
      layout (BraTS 2020 or 2021). The held-out subjects are exactly the
      list's ``test`` subjects (56). The training subjects are its
      ``train`` subjects in list order: ``n_train_subjects=K`` takes the
      first K, so smaller training sets are nested prefixes.
      ``n_test_subjects`` and ``seed`` are not used. If the data folder does
      not hold exactly the list's subjects, :class:`DataLayoutError` names
      the subjects that differ, and nothing is written. ``split_file`` is
      ignored with ``split="seeded"``.

    For chest x-ray, ``pad_to`` and the slice-rule parameters do not apply.
    ``on_bad_subject="skip"`` leaves out a subject (x-ray: a file) with bad
    input and lists it in skipped.csv (status ``skipped`` in split.csv). The
    split is made over all subjects found (with the authors' split: all
    listed subjects), so a skipped subject is not replaced and every other
    subject keeps its role. With ``n_train_subjects=K``, a skipped training
    subject leaves K − 1.

    meta.json records ``split``, ``split_file`` and ``split_file_sha256``
    (None for the seeded split). split.csv has one row per subject with its
    ``rank`` in the order used (the seeded permutation, or the 0-based
    position in the authors' list), ``role`` (train/test/unused), ``split``,
    ``n_images`` and ``status``. Returns the summary that is also written as
    ``meta.json``."""
    started = time.perf_counter()
    channels = _validate(source, image_size, channels, pad_to, slice_stride, on_bad_subject, n_workers, split)
    reader = SOURCES[source]
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise DatasetNotFoundError(missing_data_message(dataset, source, raw_dir))
    files = Run(results_dir).data
    out_dir = files.folder
    if out_dir.resolve().is_relative_to(raw_dir.resolve()):
        raise ValueError(f"results folder {out_dir} lies inside the raw data folder {raw_dir}; "
                         "nothing may be written there")
    size = int(image_size)
    if reader == "brats":
        plan = plan_brats(raw_dir, channels=channels, image_size=size, pad_to=pad_to, t1_threshold=t1_threshold,
                          min_brain_fraction=min_brain_fraction, slice_stride=slice_stride, split=split,
                          split_file=split_file, n_test_subjects=n_test_subjects,
                          n_train_subjects=n_train_subjects, seed=seed, dataset=dataset)
    else:
        plan = plan_cxr(raw_dir, image_size=size, test_fraction=test_fraction,
                        n_train_subjects=n_train_subjects, seed=seed, on_bad_subject=on_bad_subject)

    row_shape = (len(channels), size, size)
    out = stream_units(out_dir, plan, row_shape, n_workers=n_workers, on_bad_subject=on_bad_subject,
                       desc=f"prepare {dataset or source}", progress=progress)
    skipped, split_table, split_path = plan.skipped, plan.split_table, plan.split_path
    skipped_subjects = {s["subject"] for s in skipped if s["subject"]}
    split_table = split_table.assign(
        split=split,
        n_images=split_table.subject.map(out.done).fillna(0).astype(int),
        status=[("unused" if r == "unused" else "skipped" if s in skipped_subjects and s not in out.done else "ok")
                for s, r in zip(split_table.subject, split_table.role)])
    written = []
    for role in ("train", "test"):  # sources relative to raw_dir: results carry no machine's paths
        table = pd.DataFrame(out.rows[role], columns=plan.columns)
        table["source"] = [os.path.relpath(path, raw_dir) for path in table["source"]]
        written.append(common.write_csv(files.table(role), table))
    written.append(common.write_csv(files.split, split_table))
    written.append(common.write_csv(files.skipped, pd.DataFrame(skipped, columns=SKIPPED_COLUMNS)))
    if plan.writes_fractions:
        written.append(common.write_csv(files.slice_fractions, pd.DataFrame(
            out.fractions, columns=["subject", "slice", "brain_fraction", "kept", "role"])))
    else:
        files.slice_fractions.unlink(missing_ok=True)  # stale from an earlier brain-MRI run
    subjects_with_images = {role: sorted({r["subject"] for r in out.rows[role]}) for role in out.rows}
    meta = {
        "dataset": dataset or source,
        "source": source,
        "reader": reader,
        "layout": plan.layout,
        "raw_dir": common.display_path(raw_dir),  # `source` columns are relative to it
        "channels": list(channels),
        "image_size": size,
        "n_train": out.n_train,
        "n_test": out.n_test,
        "n_train_subjects": len(subjects_with_images["train"]),
        "n_test_subjects": len(subjects_with_images["test"]),
        "n_subjects_found": int(len(split_table)),
        "n_unused_subjects": int((split_table.role == "unused").sum()),
        "n_skipped": len(skipped),
        "shape_train": [out.n_train, *row_shape],
        "shape_test": [out.n_test, *row_shape],
        "dtype": "uint8",
        "split": split,
        "split_file": None if split_path is None else common.display_path(split_path),
        "split_file_sha256": None if split_path is None else common.file_sha256(split_path),
        "split_rule": plan.split_rule,
        "seed": int(seed),
        "on_bad_subject": on_bad_subject,
        "notes": plan.notes,
        "files": [str(p.relative_to(out_dir.parent)) for p in [files.train, files.test, *written, files.meta]],
        "seconds": round(time.perf_counter() - started, 2),
        "n_workers": int(n_workers),
        **plan.meta,
    }
    common.write_json(files.meta, meta)
    return meta
