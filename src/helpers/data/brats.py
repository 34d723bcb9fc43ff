"""BraTS: finding the subject folders, reading and checking their NIfTI
volumes, and turning one subject into its kept slices (rules in
:mod:`.slicing`).

* Subject folders are the folders beside those holding
  ``*_{t1,t1ce,t2,flair,seg}.nii[.gz]``; a channel's file ends in
  ``_<modality>.nii`` or ``.nii.gz`` (any case). A missing ``*_seg`` file is
  replaced by the one other NIfTI whose name contains "seg" (BraTS 2020's
  ``W39_1998.09.19_Segm.nii``), noted in ``meta.json``.
* Channel order: images are stacked T1, T2, T1ce, FLAIR, Seg. That order is
  this study's own choice. The authors' arrays stack T1, T2, FLAIR, T1ce,
  Seg (T1ce and FLAIR swapped). The order does not change the correlations,
  but if you compare channel by channel with their data, map the channels
  by name.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .base import DataError, DataLayoutError, PreparedUnit, ReaderPlan, Unit
from .raw import _IGNORED_DIRS, _describe_folder, _walk_dirs
from .slicing import (
    axial_slices,
    brain_fraction,
    kept_slice_indices,
    pad_center,
    resize_slices,
    round_to_uint8,
    scale_intensity,
    scale_modality,
    scale_segmentation,
)
from .splits import (
    _RUNALL_NAME,
    AUTHORS_SPLIT_FILES,
    _some,
    _train_first,
    authors_split_file,
    read_subject_order,
    split_subjects,
    split_subjects_by_list,
)

#: Output channel order of the BraTS images. This is our order. The authors'
#: arrays stack T1, T2, FLAIR, T1ce, Seg (T1ce and FLAIR the other way round).
BRATS_CHANNELS: tuple[str, ...] = ("T1", "T2", "T1ce", "FLAIR", "Seg")
#: File-name suffix of each BraTS channel (``<subject>_<suffix>.nii[.gz]``).
BRATS_SUFFIX: dict[str, str] = {"T1": "t1", "T2": "t2", "T1ce": "t1ce", "FLAIR": "flair", "Seg": "seg"}
NIFTI_SUFFIXES = (".nii", ".nii.gz")
_MODALITY_FILE = re.compile(r"_(t1|t1ce|t2|flair|seg)\.nii(\.gz)?$", re.IGNORECASE)
#: Table columns (contract: subject, slice, label, source; the rest help later steps).
BRATS_COLUMNS = ["index", "subject", "slice", "label", "source", "brain_fraction", "n_slices_kept",
                 "n_slices_total", "split_rank"]

def find_brats_subjects(raw_dir: str | os.PathLike, max_depth: int = 4) -> list[Path]:
    """The subject folders under ``raw_dir``: every folder beside the
    folders that hold ``*_{t1,t1ce,t2,flair,seg}.nii[.gz]`` files (so an
    empty or incomplete subject folder is reported, not silently dropped).
    ``raw_dir`` may be the folder of subject folders or a parent of it."""
    raw_dir = Path(raw_dir)
    holders = [folder for folder, _, files in _walk_dirs(raw_dir, max_depth)
               if any(_MODALITY_FILE.search(f) for f in files)]
    if not holders:
        raise DataLayoutError(raw_dir, "no BraTS subject folders found (no *_t1.nii / *_t1.nii.gz files up to "
                              f"{max_depth} levels down; {_describe_folder(raw_dir)}). Expected "
                              "DIR/<subject>/<subject>_{t1,t1ce,t2,flair,seg}.nii[.gz]")
    if raw_dir in holders:
        raise DataLayoutError(raw_dir, "NIfTI files lie directly in this folder; expected one folder per subject: "
                              "DIR/<subject>/<subject>_{t1,t1ce,t2,flair,seg}.nii[.gz]")
    parents = sorted({h.parent for h in holders})
    if len(parents) > 1:
        listing = "; ".join(f"{p} ({sum(h.parent == p for h in holders)} subjects)" for p in parents)
        raise DataLayoutError(raw_dir, f"subject folders found under several folders: {listing}. "
                              "Pass --data the one folder with the training subjects.")
    parent = parents[0]
    return sorted(p for p in parent.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and p.name not in _IGNORED_DIRS)


#: Subject folder names of each BraTS layout.
BRATS_NAME_PATTERNS: dict[str, str] = {"brats2020": r"BraTS20_Training_\d+", "brats2021": r"BraTS2021_\d+"}


def brats_layout(subject_dirs: Sequence[Path]) -> str:
    """``brats2020`` / ``brats2021`` from the subject folder names, else ``other``."""
    names = [Path(p).name for p in subject_dirs]
    for layout, pattern in BRATS_NAME_PATTERNS.items():
        if names and all(re.fullmatch(pattern, n) for n in names):
            return layout
    return "other"


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.name.lower().endswith(NIFTI_SUFFIXES))


def locate_modalities(folder: str | os.PathLike, channels: Sequence[str] = BRATS_CHANNELS) -> tuple[dict[str, Path], list[str]]:
    """The file of each channel in a subject folder, and notes on anything
    unusual. A channel's file is the one named ``*_<suffix>.nii`` or
    ``*_<suffix>.nii.gz`` (case-insensitive). When no ``*_seg`` file
    exists, one other NIfTI whose name contains "seg" (any case) is accepted
    as the segmentation — BraTS 2020 subject 355 ships
    ``W39_1998.09.19_Segm.nii`` — and noted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "subject folder does not exist")
    files = _nifti_files(folder)
    found: dict[str, Path] = {}
    notes: list[str] = []
    for name in channels:
        suffix = BRATS_SUFFIX[name]
        matches = [p for p in files if re.search(rf"_{suffix}\.nii(\.gz)?$", p.name, re.IGNORECASE)]
        if len(matches) > 1:
            raise DataError(folder, f"several files for {name}: {', '.join(p.name for p in matches)}; expected one")
        if matches:
            found[name] = matches[0]
            continue
        if name == "Seg":
            others = [p for p in files if not _MODALITY_FILE.search(p.name) and "seg" in p.name.lower()]
            if len(others) == 1:
                found[name] = others[0]
                notes.append(f"{folder.name}: segmentation read from {others[0].name} "
                             f"(expected {folder.name}_seg.nii[.gz])")
                continue
        present = ", ".join(p.name for p in files) or "no NIfTI files"
        raise DataError(folder / f"{folder.name}_{suffix}.nii.gz",
                        f"missing {name} file: expected {folder.name}_{suffix}.nii or .nii.gz in {folder} "
                        f"(found: {present})")
    return found, notes


def read_volume(path: str | os.PathLike) -> np.ndarray:
    """One NIfTI volume (X, Y, Z) in its stored dtype (scaled to float when
    the header has a slope); a clear :class:`DataError` for an unreadable or
    truncated file, a wrong number of dimensions, or NaN/Inf voxels. Opened
    read-only; the raw file is never touched."""
    import nibabel as nib

    path = Path(path)
    try:
        image = nib.load(str(path), mmap=False)
        volume = np.asanyarray(image.dataobj)
    except Exception as err:  # nibabel/gzip/zlib raise many kinds
        raise DataError(path, f"cannot read as NIfTI ({type(err).__name__}: {err}); "
                        "expected a complete .nii or .nii.gz volume") from err
    if volume.ndim == 4 and volume.shape[3] == 1:
        volume = volume[..., 0]
    if volume.ndim != 3 or volume.dtype.kind not in "biuf":
        raise DataError(path, f"expected a 3-D numeric volume, got shape {volume.shape} of {volume.dtype}")
    if volume.dtype.kind == "f" and not np.isfinite(volume).all():
        bad = int((~np.isfinite(volume)).sum())
        raise DataError(path, f"{bad} NaN/Inf voxels; expected finite intensities")
    return volume


@dataclass
class BratsVolumes:
    """One subject's volumes (X×Y×Z, stored dtype) by channel name, with
    the files they came from."""
    subject: str
    folder: Path
    volumes: dict[str, np.ndarray]
    files: dict[str, Path]
    notes: list[str] = field(default_factory=list)


def load_brats_subject(folder: str | os.PathLike, channels: Sequence[str] = BRATS_CHANNELS) -> BratsVolumes:
    """Read a subject's volumes for ``channels`` plus T1 (the slice rule
    needs it) and check them: same shape for all, no all-zero image volume,
    segmentation labels integers in 0–5."""
    folder = Path(folder)
    needed = list(dict.fromkeys(["T1", *channels]))
    files, notes = locate_modalities(folder, needed)
    volumes: dict[str, np.ndarray] = {}
    for name in needed:
        volume = read_volume(files[name])
        first = next(iter(volumes), None)
        if first is not None and volume.shape != volumes[first].shape:
            raise DataError(files[name], f"shape {volume.shape} differs from {files[first].name} "
                            f"{volumes[first].shape}; expected all modalities of a subject on one grid")
        if name == "Seg":
            if volume.min() < 0 or volume.max() > 5 or (
                    volume.dtype.kind == "f" and not np.array_equal(volume, np.round(volume))):
                values = np.unique(volume)[:10]
                raise DataError(files[name], f"segmentation values {values.tolist()} …; expected integer "
                                "labels 0–5 (BraTS: 0, 1, 2, 4)")
        elif volume.max() <= 0:
            what = "all voxels are zero" if not volume.any() else "no voxel is positive"
            raise DataError(files[name], f"{what}; expected an MRI volume with signal")
        volumes[name] = volume
    return BratsVolumes(folder.name, folder, volumes, files, notes)


def brats_subject_images(
    folder: str | os.PathLike,
    channels: Sequence[str] = BRATS_CHANNELS,
    image_size: int = 256,
    pad_to: int = 256,
    t1_threshold: float = 50,
    min_brain_fraction: float = 0.15,
    slice_stride: int = 1,
) -> PreparedUnit:
    """All kept slices of one subject as (K, len(channels), image_size,
    image_size) uint8, following the BraTS rules of :mod:`.slicing`."""
    subject = load_brats_subject(folder, channels)
    shape = next(iter(subject.volumes.values())).shape
    if shape[0] > pad_to or shape[1] > pad_to:
        raise DataError(subject.files["T1"], f"slice size {shape[0]}×{shape[1]} is larger than pad_to={pad_to}; "
                        "expected slices no larger than pad_to (BraTS: 240×240, pad_to 256)")
    t1_scaled = scale_intensity(subject.volumes["T1"])         # X×Y×Z float64, unrounded
    # the rule counts pixels per axial slice: a transposed view is enough (no copy)
    fractions = brain_fraction(np.transpose(t1_scaled, (2, 1, 0)), t1_threshold, pad_to)
    keep = kept_slice_indices(fractions, min_brain_fraction, slice_stride)
    images = np.empty((len(keep), len(channels), image_size, image_size), dtype=np.uint8)
    for c, name in enumerate(channels):
        if name == "T1":
            stack = round_to_uint8(axial_slices(t1_scaled[:, :, keep]))
        elif name == "Seg":
            stack = scale_segmentation(axial_slices(subject.volumes[name][:, :, keep]))
        else:  # scale only the kept slices, by the whole volume's maximum
            volume = subject.volumes[name]
            stack = scale_modality(axial_slices(volume[:, :, keep]), peak=volume.max())
        images[:, c] = resize_slices(pad_center(stack, pad_to), image_size, nearest=(name == "Seg"))
    considered = np.arange(0, len(fractions), max(int(slice_stride), 1))
    kept = set(keep.tolist())
    rows = [{"subject": subject.subject, "slice": int(k), "label": "", "source": str(subject.folder),
             "brain_fraction": round(float(fractions[k]), 6), "n_slices_kept": len(keep),
             "n_slices_total": len(fractions)} for k in keep]
    records = [{"subject": subject.subject, "slice": int(k), "brain_fraction": round(float(fractions[k]), 6),
                "kept": k in kept} for k in considered]
    return PreparedUnit(images, rows, records, subject.notes)


def _authors_layout(names: Sequence[str]) -> str | None:
    """The BraTS year most subject folder names follow (None when none does):
    which shipped list to compare a folder with, even when some names stray."""
    counts = {layout: sum(bool(re.fullmatch(pattern, n)) for n in names)
              for layout, pattern in BRATS_NAME_PATTERNS.items()}
    best = max(counts, key=counts.get)
    return best if counts[best] else None


def plan_brats(
    raw_dir: Path,
    *,
    channels: Sequence[str],
    image_size: int,
    pad_to: int,
    t1_threshold: float,
    min_brain_fraction: float,
    slice_stride: int,
    split: str,
    split_file: str | os.PathLike | None,
    n_test_subjects: int,
    n_train_subjects: int | None,
    seed: int,
    dataset: str | None,
) -> ReaderPlan:
    """Find the subjects, split them (seeded, or the authors' list; see
    :func:`.prepare.prepare_dataset`) and list one unit per used subject,
    training subjects first. Everything that can stop the run on the layout
    or the list stops it here, before anything is written."""
    subject_dirs = find_brats_subjects(raw_dir)
    layout = brats_layout(subject_dirs)
    names = [p.name for p in subject_dirs]
    notes: list[str] = []
    split_path: Path | None = None
    if split == "authors":
        year = layout if layout in AUTHORS_SPLIT_FILES else _authors_layout(names)
        if split_file is not None:
            split_path = Path(split_file)
        elif year is None:
            raise DataLayoutError(subject_dirs[0].parent, "the subject folder names (e.g. "
                                  f"{_some(names[:3])}) are neither BraTS 2020 (BraTS20_Training_NNN) nor "
                                  "BraTS 2021 (BraTS2021_NNNNN) names, so the authors' split cannot be "
                                  "applied. To use the seeded split instead, run: ./runall.sh "
                                  f"{dataset or 'brats20'} --data {shlex.quote(str(raw_dir))} "
                                  "--set prepare_data.split=seeded")
        else:
            split_path = authors_split_file(year)
        order = read_subject_order(split_path)
        fallback = (f"./runall.sh {_RUNALL_NAME.get(year, dataset or 'brats20')} --data "
                    f"{shlex.quote(str(raw_dir))} --set prepare_data.split=seeded")
        split_table = split_subjects_by_list(names, order, n_train_subjects, list_file=split_path,
                                             data_dir=subject_dirs[0].parent, fallback=fallback)
        n_listed_test = int((order["split"] == "test").sum())
        if int(n_test_subjects) != n_listed_test:
            notes.append(f"n_test_subjects={n_test_subjects} not used: the authors' split holds out the "
                         f"{n_listed_test} test subjects of {split_path.name}")
        split_rule = (f"the authors' subject list {split_path.name}: test = its 'test' subjects; train = the "
                      f"first {int((split_table.role == 'train').sum())} of its 'train' subjects in list order")
    else:
        split_table = split_subjects(names, n_test_subjects, n_train_subjects, seed)
        split_rule = ("seeded permutation of the sorted subject ids (seed); last n_test_subjects held out, first "
                      "n_train_subjects of the rest train")
    folders = {p.name: p for p in subject_dirs}
    args = dict(channels=channels, image_size=image_size, pad_to=int(pad_to), t1_threshold=t1_threshold,
                min_brain_fraction=min_brain_fraction, slice_stride=int(slice_stride))
    used = split_table[split_table.role != "unused"].sort_values(["role", "rank"], key=_train_first)
    units = [Unit(s, s, r, int(k), str(folders[s]), args)
             for s, r, k in used[["subject", "role", "rank"]].itertuples(index=False)]
    meta = dict(pad_to=int(pad_to), t1_threshold=t1_threshold, min_brain_fraction=min_brain_fraction,
                slice_stride=int(slice_stride), rules={
                    "intensity": "each modality volume / its max * 255 (float64), rounded half up "
                                 "(as MATLAB's uint8), clipped 0..255",
                    "segmentation": "label / 5 * 255 (labels 0,1,2,4 -> 0,51,102,204), exact",
                    "slice": "volume[:, :, k].T",
                    "keep": f"fraction of the {pad_to}x{pad_to} zero-padded slice with scaled, unrounded "
                            f"T1 > {t1_threshold} is > {min_brain_fraction}",
                    "resize": "none" if image_size == int(pad_to) else
                              f"pad to {pad_to}, then Pillow bilinear (anti-aliased) to {image_size}; Seg nearest",
                })
    return ReaderPlan(
        layout=layout, split_table=split_table, units=units, work=_read_subject, columns=BRATS_COLUMNS,
        bar_unit="subject", split_rule=split_rule, meta=meta, split_path=split_path, notes=notes,
        empty_hint=(f"; or no slice has more than {min_brain_fraction:.0%} of its pixels with "
                    f"T1 > {t1_threshold}"),
        writes_fractions=True)


def _read_subject(unit: Unit) -> PreparedUnit:
    return brats_subject_images(unit.path, **unit.args)
