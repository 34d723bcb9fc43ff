"""Raw BraTS volumes or chest x-rays (or the phantom look-alikes) → the
uint8 image arrays and index tables every later step reads.

Output (under ``results_dir/data/``, the pipeline contract):
``train.npy`` / ``test.npy`` (uint8 N×C×H×W), ``train.csv`` / ``test.csv``
(one row per image), ``split.csv`` (the subject order used — a seeded
permutation or the authors' list — each subject's role, and which split it
was), ``skipped.csv`` (inputs left out), ``slice_fractions.csv`` (BraTS: the
slice rule's measure for every slice looked at) and ``meta.json``. Nothing is
ever written into the raw data folder.

Channel order: BraTS images are stacked T1, T2, T1ce, FLAIR, Seg. That order
is this study's own choice. The authors' arrays stack T1, T2, FLAIR, T1ce,
Seg (T1ce and FLAIR swapped). The order does not change the correlations, but
if you compare channel by channel with their data, map the channels by name.

Subject splits (``split=``): ``"seeded"`` (default; phantom and x-ray
always) is a seeded permutation of the subjects found. ``"authors"`` (real
BraTS 2020/2021 only) uses the authors' published subject order, shipped in
``configs/authors_split/`` (from their repository ``muhamadusman/Assist``, MIT
licence): their 56 test subjects are held out, and the training subjects are
their ``train`` subjects in their order. The data folder must hold exactly the
subjects of that list; otherwise the run stops before it writes anything.

BraTS rules (the authors' public code, ``Preparation/split_volumes_to_slices.m`` in
``muhamadusman/Assist``; deviations noted):

* Each modality volume is scaled by its own maximum to 0–255
  (``volume / max * 255`` in float64, as the authors' MATLAB doubles) and,
  for storage, rounded to the nearest integer (halves up, as MATLAB's ``uint8``; a plain
  ``astype(uint8)`` would floor, at most one grey level apart). Negative
  voxels, if any, clip to 0.
* The segmentation is stored as ``label / 5 * 255`` (0, 51, 102, 153, 204 for
  labels 0–4): exact integers, never interpolated.
* Subject folders are the folders beside those holding
  ``*_{t1,t1ce,t2,flair,seg}.nii[.gz]``; a channel's file ends in
  ``_<modality>.nii`` or ``.nii.gz`` (any case). A missing ``*_seg`` file is
  replaced by the one other NIfTI whose name contains "seg" (BraTS 2020's
  ``W39_1998.09.19_Segm.nii``), noted in ``meta.json``.
* Axial slices are ``volume[:, :, k]``, transposed (rows = 2nd voxel axis)
  so that the usual BraTS storage shows the nose at the top.
* A slice is kept when more than ``min_brain_fraction`` of the pixels of
  the *zero-padded* ``pad_to``² T1 slice exceed ``t1_threshold`` on the
  0–255 scale (the authors measured on the 256² padded slice, so the
  fraction's denominator is ``pad_to``², not 240²). As in their code, this
  test uses the scaled T1 values *before* rounding: a voxel at 50.3 counts
  as above 50 even though it is stored as 50. T1 is always read for this
  rule, also when it is not among the output channels.
* Slices are zero-padded centrally to ``pad_to`` and then, when
  ``image_size < pad_to``, resized with Pillow's bilinear filter, which is
  anti-aliased when shrinking (its support widens with the scale factor);
  the segmentation is resized with nearest neighbour so its values stay
  exact.
* ``slice_stride`` > 1 looks at every n-th slice only (to keep tiny
  profiles fast); the paper keeps every slice (stride 1).

Bad input raises :class:`DataError` naming the file and what was expected:
a missing modality, an unreadable or truncated NIfTI/JPEG, modalities of
one subject on different grids, NaN/Inf voxels, an image volume without a
positive voxel (a segmentation may be all zero), segmentation values that
are not integer labels 0–5, an x-ray file name without a patient id. An
empty or wrongly laid-out dataset folder raises :class:`DataLayoutError`.
With ``on_bad_subject="skip"`` a bad subject (x-ray: file) is left out and
listed in ``skipped.csv``; layout errors always stop.

Chest x-ray rules: images are converted to 8-bit grayscale (Pillow ``L``:
ITU-R 601 luma for RGB files), centre-cropped to a square on the shorter
side, and resized (bilinear, anti-aliased) to ``image_size``. The patient
id comes from the file name; the original train/test/val folders are merged
and re-split patient-disjointly (see :func:`split_patients`).
"""

from __future__ import annotations

import io
import os
import re
import shlex
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import common

#: Output channel order of the BraTS images. This is our order. The authors'
#: arrays stack T1, T2, FLAIR, T1ce, Seg (T1ce and FLAIR the other way round).
BRATS_CHANNELS: tuple[str, ...] = ("T1", "T2", "T1ce", "FLAIR", "Seg")
#: File-name suffix of each BraTS channel (``<subject>_<suffix>.nii[.gz]``).
BRATS_SUFFIX: dict[str, str] = {"T1": "t1", "T2": "t2", "T1ce": "t1ce", "FLAIR": "flair", "Seg": "seg"}
#: The chest x-ray images have one channel.
CXR_CHANNELS: tuple[str, ...] = ("gray",)
CXR_CLASSES: tuple[str, ...] = ("NORMAL", "PNEUMONIA")
CXR_SPLIT_FOLDERS: tuple[str, ...] = ("train", "test", "val")
CXR_EXTENSIONS: tuple[str, ...] = (".jpeg", ".jpg", ".png")

#: ``source`` values: which reader, and whether the phantom generator makes the raw data.
SOURCES: dict[str, str] = {"brats": "brats", "cxr": "cxr", "phantom_brats": "brats", "phantom_cxr": "cxr"}

NIFTI_SUFFIXES = (".nii", ".nii.gz")
_MODALITY_FILE = re.compile(r"_(t1|t1ce|t2|flair|seg)\.nii(\.gz)?$", re.IGNORECASE)
_IGNORED_DIRS = {"__MACOSX"}

#: Table columns (contract: subject, slice, label, source; the rest help later steps).
BRATS_COLUMNS = ["index", "subject", "slice", "label", "source", "brain_fraction", "n_slices_kept",
                 "n_slices_total", "split_rank"]
CXR_COLUMNS = ["index", "subject", "slice", "label", "source", "original_split", "orig_width", "orig_height",
               "split_rank"]
SKIPPED_COLUMNS = ["path", "reason", "subject", "role"]


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------

class DataError(ValueError):
    """A raw input that is not what the study expects: names the file (or
    folder) and says what was expected. ``on_bad_subject="skip"`` leaves
    the subject/image out instead of stopping."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class DataLayoutError(DataError):
    """The dataset folder as a whole is empty or laid out wrongly (never skipped)."""


class DatasetNotFoundError(FileNotFoundError):
    """The raw dataset folder is not given or does not exist; the message
    says where to get the data, the layout, and the command to run."""


# --------------------------------------------------------------------------
# Where to get the data
# --------------------------------------------------------------------------

_GET_DATA = {
    "brats20": dict(
        name="BraTS 2020",
        where="registration at https://www.med.upenn.edu/cbica/brats2020/registration.html "
              "(data description: https://www.med.upenn.edu/cbica/brats2020/data.html)",
        layout="DIR/BraTS20_Training_001/BraTS20_Training_001_{t1,t1ce,t2,flair,seg}.nii (or .nii.gz), one folder "
               "per subject; DIR is usually MICCAI_BraTS2020_TrainingData (369 subjects). The subject whose "
               "segmentation is misnamed (W39_1998.09.19_Segm.nii) is accepted as it is.",
        example="DIR/BraTS20_Training_001/BraTS20_Training_001_t1.nii",
    ),
    "brats21": dict(
        name="BraTS 2021",
        where="registration on Synapse: https://www.synapse.org/#!Synapse:syn25829067 "
              "(challenge: http://braintumorsegmentation.org/)",
        layout="DIR/BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz (or .nii), one folder per "
               "subject; DIR is where BraTS2021_Training_Data.tar was unpacked (1251 subjects).",
        example="DIR/BraTS2021_00000/BraTS2021_00000_t1.nii.gz",
    ),
    "cxr": dict(
        name="the Kermany chest x-ray set ('Chest X-Ray Images (Pneumonia)')",
        where="Mendeley Data https://data.mendeley.com/datasets/rscbjbr9sj/2 (doi:10.17632/rscbjbr9sj.2, "
              "ChestXRay2017.zip) or Kaggle https://www.kaggle.com/datasets/paultimothymooney/chest-xray-pneumonia",
        layout="DIR/{train,test,val}/{NORMAL,PNEUMONIA}/*.jpeg; DIR is the chest_xray folder (val may be "
               "missing; __MACOSX copies are ignored).",
        example="DIR/train/NORMAL/IM-0115-0001.jpeg",
    ),
}


def missing_data_message(dataset: str | None, source: str, raw_dir: str | os.PathLike | None) -> str:
    """What to tell a user whose dataset folder is missing: where to get the
    data, the layout expected, and the exact command. The last line says it
    all on its own (the runner shows only an error's last line)."""
    key = dataset if dataset in _GET_DATA else ("cxr" if SOURCES.get(source) == "cxr" else None)
    keys = [key] if key else ["brats20", "brats21"]
    name = dataset or "DATASET"
    problem = "no raw data folder given" if raw_dir is None else f"the raw data folder {raw_dir} does not exist"
    lines = [f"{name}: {problem}. The program does not download data"
             + (" (BraTS needs a registration)." if "cxr" not in keys else ".")]
    for k in keys:
        info = _GET_DATA[k]
        lines += [f"Get {info['name']}: {info['where']}", f"Expected layout: {info['layout']}",
                  "(DIR may also be a parent of that folder, up to 4 levels up.)"]
    where = " or ".join(f"{_GET_DATA[k]['name']} ({_GET_DATA[k]['where'].split(' (')[0]})" for k in keys)
    example = " or ".join(_GET_DATA[k]["example"] for k in keys)
    lines.append(f"{name}: {problem}; get {where}, unpack it so that {example} exists, then run: "
                 f"./runall.sh {name} --data DIR  (or set prepare_data.raw_dir in configs/{name}.yaml)")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Locating the raw data (or generating the phantom)
# --------------------------------------------------------------------------

def locate_raw_data(
    source: str,
    raw_dir: str | os.PathLike | None,
    dataset: str | None = None,
    phantom_kind: str = "brats2021",
    phantom_sizes: dict | None = None,
    phantom_seed: int = 0,
    phantom_cache: str | os.PathLike = "data/phantom",
) -> Path:
    """The folder to read: ``raw_dir`` for real data (checked to exist, else
    :class:`DatasetNotFoundError` with instructions); for ``phantom_*``
    sources ``raw_dir`` if given, else the phantom generator's cached cohort
    (made on first use)."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    if source.startswith("phantom_") and raw_dir is None:
        from . import phantom

        kind = "cxr" if source == "phantom_cxr" else phantom_kind
        return Path(phantom.ensure_phantom(kind, cache_root=phantom_cache, seed=phantom_seed,
                                           **(phantom_sizes or {})))
    if raw_dir is None or not Path(raw_dir).is_dir():
        raise DatasetNotFoundError(missing_data_message(dataset, source, raw_dir))
    return Path(raw_dir)


def _walk_dirs(root: Path, max_depth: int) -> Iterator[tuple[Path, int, list[str]]]:
    """Breadth-first (folder, depth, file names) under ``root``, skipping
    hidden folders and macOS archive debris."""
    queue = deque([(root, 0)])
    while queue:
        folder, depth = queue.popleft()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as err:
            raise DataLayoutError(folder, f"cannot list folder ({err})") from err
        files = [e.name for e in entries if e.is_file() and not e.name.startswith(".")]
        yield folder, depth, files
        if depth < max_depth:
            queue.extend((Path(e.path), depth + 1) for e in entries
                         if e.is_dir() and not e.name.startswith(".") and e.name not in _IGNORED_DIRS)


def _describe_folder(folder: Path, limit: int = 8) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    if not names:
        return "it is empty"
    more = f" … ({len(names)} entries)" if len(names) > limit else ""
    return "it holds: " + ", ".join(names[:limit]) + more


# --------------------------------------------------------------------------
# BraTS: finding subjects and their files
# --------------------------------------------------------------------------

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
    except Exception as err:  # noqa: BLE001 - nibabel/gzip/zlib raise many kinds
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


# --------------------------------------------------------------------------
# BraTS: intensities, the slice rule, padding, resizing
# --------------------------------------------------------------------------

def scale_intensity(volume: np.ndarray, peak: float | None = None) -> np.ndarray:
    """``volume / max * 255`` in float64, *not* rounded or clipped. This is
    the authors' scaling: every modality volume is scaled by its own maximum,
    computed in MATLAB doubles as ``volume / max(volume(:)) * 255``. The
    slice rule is applied to these values. ``peak`` is the whole volume's
    maximum when ``volume`` holds only some of its slices."""
    peak = float(np.max(volume)) if peak is None else float(peak)
    if peak <= 0:
        raise ValueError("cannot scale a volume without positive voxels")
    scaled = np.divide(volume, peak, dtype=np.float64)
    scaled *= 255.0
    return scaled


def round_to_uint8(scaled: np.ndarray) -> np.ndarray:
    """Scaled intensities → uint8 for storage: clipped to 0–255 and rounded
    to the nearest integer, halves away from zero as MATLAB's ``uint8()``
    that the authors used (``np.rint`` would round halves to even)."""
    out = np.floor(np.asarray(scaled, dtype=np.float64) + 0.5)
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


def scale_modality(volume: np.ndarray, peak: float | None = None) -> np.ndarray:
    """``volume / max * 255`` rounded to the nearest integer, as uint8
    (:func:`scale_intensity`, then :func:`round_to_uint8`)."""
    return round_to_uint8(scale_intensity(volume, peak))


def scale_segmentation(labels: np.ndarray) -> np.ndarray:
    """``label / 5 * 255`` as uint8: labels 0–5 → 0, 51, 102, 153, 204, 255
    exactly (51 = 255 / 5)."""
    labels = np.asarray(labels)
    return (np.rint(labels).astype(np.int32) * 51).clip(0, 255).astype(np.uint8)


def axial_slices(volume: np.ndarray) -> np.ndarray:
    """(X, Y, Z) volume → (Z, Y, X) stack: slice ``k`` is ``volume[:, :, k].T``."""
    return np.ascontiguousarray(np.transpose(volume, (2, 1, 0)))


def brain_fraction(t1_slices: np.ndarray, threshold: float = 50, pad_to: int | None = 256) -> np.ndarray:
    """Per slice (first axis), the fraction of pixels of the slice
    *zero-padded to* ``pad_to``² whose scaled T1 value exceeds
    ``threshold``. Padding adds only zeros, so this is the count above the
    threshold divided by ``pad_to``² (``pad_to=None``: divided by the
    slice's own pixel count). Pass the *unrounded* scaled T1
    (:func:`scale_intensity`), as the authors did. After rounding, a value
    in (50, 50.5] becomes 50 and would no longer count as above 50."""
    t1_slices = np.asarray(t1_slices)
    height, width = t1_slices.shape[-2:]
    pixels = (pad_to * pad_to) if pad_to else (height * width)
    if pad_to and (height > pad_to or width > pad_to):
        raise ValueError(f"slice {height}×{width} is larger than pad_to={pad_to}")
    return (t1_slices > threshold).reshape(len(t1_slices), -1).sum(axis=1) / pixels


def keep_slice(fraction: float, min_brain_fraction: float = 0.15) -> bool:
    """The authors' rule: keep a slice when *more than* ``min_brain_fraction``
    of its (padded) pixels are brain (T1 above threshold)."""
    return bool(fraction > min_brain_fraction)


def kept_slice_indices(fractions: np.ndarray, min_brain_fraction: float = 0.15, slice_stride: int = 1) -> np.ndarray:
    """Indices of the slices kept: every ``slice_stride``-th slice (from 0)
    that passes :func:`keep_slice`."""
    fractions = np.asarray(fractions)
    candidates = np.arange(0, len(fractions), max(int(slice_stride), 1))
    return candidates[fractions[candidates] > min_brain_fraction]


def pad_center(slices: np.ndarray, pad_to: int) -> np.ndarray:
    """Zero-pad (…, H, W) centrally to (…, pad_to, pad_to); an odd margin
    puts the extra row/column after the image."""
    height, width = slices.shape[-2:]
    if height > pad_to or width > pad_to:
        raise ValueError(f"cannot pad a {height}×{width} slice to pad_to={pad_to}: pad_to must be ≥ the slice size")
    top, left = (pad_to - height) // 2, (pad_to - width) // 2
    widths = [(0, 0)] * (slices.ndim - 2) + [(top, pad_to - height - top), (left, pad_to - width - left)]
    return np.pad(slices, widths)


def resize_slices(slices: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    """(K, H, W) uint8 → (K, size, size) uint8 with Pillow: bilinear (anti-
    aliased when shrinking: the filter support grows with the scale factor)
    or nearest neighbour for label images, whose values must stay exact."""
    from PIL import Image

    slices = np.asarray(slices, dtype=np.uint8)
    if slices.shape[-2:] == (size, size):
        return slices.copy()
    method = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    out = np.empty((len(slices), size, size), dtype=np.uint8)
    for i, image in enumerate(slices):
        out[i] = np.asarray(Image.fromarray(image).resize((size, size), method))
    return out


@dataclass
class PreparedUnit:
    """What one subject (BraTS) or one file (x-ray) contributes: images
    (K×C×H×W uint8) with one table row each, and extra per-slice records."""
    images: np.ndarray
    rows: list[dict]
    fractions: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


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
    image_size) uint8, following the module's BraTS rules."""
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


# --------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------

def _permutation(ids: Iterable[str], seed: int) -> list[str]:
    ordered = sorted(set(ids))
    order = np.random.default_rng(seed).permutation(len(ordered))
    return [ordered[i] for i in order]


def split_subjects(subjects: Iterable[str], n_test: int, n_train: int | None = None, seed: int = 0) -> pd.DataFrame:
    """The seeded split (``split="seeded"``). It follows the authors'
    procedure with our own seed: a seeded permutation of the (sorted) subject
    ids, whose last ``n_test`` are held out. The authors' actual permutation
    is :func:`split_subjects_by_list`. Of the rest, in permutation order, the
    first ``n_train`` train (all when None) and the others are ``unused``,
    so growing ``n_train`` only adds subjects. Columns: subject, rank, role."""
    order = _permutation(subjects, seed)
    n_test = int(n_test)
    if not 1 <= n_test < len(order):
        raise ValueError(f"n_test_subjects={n_test}: need at least 1 test subject and 1 training subject "
                         f"({len(order)} subjects found)")
    n_avail = len(order) - n_test
    if n_train is not None and not 1 <= int(n_train) <= n_avail:
        raise ValueError(f"n_train_subjects={n_train}: only {n_avail} subjects remain after holding out {n_test}")
    n_train = n_avail if n_train is None else int(n_train)
    roles = ["train"] * n_train + ["unused"] * (n_avail - n_train) + ["test"] * n_test
    return pd.DataFrame({"subject": order, "rank": range(len(order)), "role": roles})


def split_patients(patients: pd.DataFrame, test_fraction: float = 0.1, n_train: int | None = None,
                   seed: int = 0) -> pd.DataFrame:
    """A patient-disjoint split of the x-ray patients (``patients`` has one
    row per patient: subject, label): one seeded permutation of all patient
    ids; per class, the last ``round(test_fraction × n_class)`` patients (at
    least one when the class has two or more) are held out, so both classes
    are in the test set. Of the rest, in permutation order, the first
    ``n_train`` train (all when None). Columns: subject, label, rank, role."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    labels = dict(zip(patients["subject"], patients["label"]))
    order = _permutation(labels, seed)
    test: set[str] = set()
    for label in sorted(set(labels.values())):
        members = [s for s in order if labels[s] == label]
        n = int(round(test_fraction * len(members)))
        n = max(n, 1) if len(members) >= 2 else 0
        test.update(members[len(members) - n:] if n else [])
    train_order = [s for s in order if s not in test]
    if not test or not train_order:
        raise ValueError(f"test_fraction={test_fraction} leaves an empty split ({len(order)} patients)")
    if n_train is not None and not 1 <= int(n_train) <= len(train_order):
        raise ValueError(f"n_train_subjects={n_train}: only {len(train_order)} training patients available")
    chosen = set(train_order[: len(train_order) if n_train is None else int(n_train)])
    roles = ["test" if s in test else ("train" if s in chosen else "unused") for s in order]
    return pd.DataFrame({"subject": order, "label": [labels[s] for s in order], "rank": range(len(order)),
                         "role": roles})


# --------------------------------------------------------------------------
# The authors' subject split (BraTS 2020 / 2021)
# --------------------------------------------------------------------------

#: ``split`` values of :func:`prepare_dataset`.
SPLITS: tuple[str, ...] = ("seeded", "authors")
#: The authors' subject order per BraTS layout, in ``configs/authors_split/``. It comes from
#: muhamadusman/Assist, Preparation/subjectPermutation_BRATS20{20,21}.mat (MIT licence,
#: Copyright (c) 2023 Muhammad Usman Akbar); see the README there.
AUTHORS_SPLIT_FILES: dict[str, str] = {"brats2020": "brats2020_subject_order.csv",
                                       "brats2021": "brats2021_subject_order.csv"}
SUBJECT_ORDER_COLUMNS = ["position", "subject", "split"]
#: ``./runall.sh`` dataset name of each BraTS layout (for messages).
_RUNALL_NAME = {"brats2020": "brats20", "brats2021": "brats21"}


def authors_split_dir() -> Path:
    """``configs/authors_split/`` of this checkout."""
    here = Path(__file__).resolve().parents[2] / "configs" / "authors_split"
    return here if here.is_dir() else common.repo_root() / "configs" / "authors_split"


def authors_split_file(layout: str) -> Path:
    """The shipped list of the authors' subject order for ``layout``
    (``brats2020`` or ``brats2021``)."""
    if layout not in AUTHORS_SPLIT_FILES:
        raise ValueError(f"the authors' split exists only for BraTS 2020/2021 (layouts "
                         f"{', '.join(AUTHORS_SPLIT_FILES)}), not for {layout!r}")
    return authors_split_dir() / AUTHORS_SPLIT_FILES[layout]


def read_subject_order(path: str | os.PathLike) -> pd.DataFrame:
    """A subject list (CSV with columns position, subject, split) sorted by
    position, after checks: positions 1..N, unique non-empty subject names,
    ``split`` values ``train`` or ``test`` with at least one of each. A
    list that fails a check raises :class:`DataError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "subject list not found; expected a CSV with columns position, subject, split "
                        f"(the shipped lists are in {authors_split_dir()})")
    try:
        table = pd.read_csv(path, dtype={"subject": str, "split": str}, keep_default_na=False)
    except Exception as err:  # noqa: BLE001 - pandas raises several kinds
        raise DataError(path, f"cannot read as CSV ({type(err).__name__}: {err})") from err
    missing = [c for c in SUBJECT_ORDER_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(path, f"missing column(s) {', '.join(missing)}; expected columns position, subject, split")
    table = table[SUBJECT_ORDER_COLUMNS]
    position = pd.to_numeric(table.position, errors="coerce")
    if position.isna().any() or sorted(position.tolist()) != list(range(1, len(table) + 1)):
        raise DataError(path, f"column position must hold 1..{len(table)}, each once")
    table = table.assign(position=position.astype(int), subject=table.subject.str.strip(),
                         split=table["split"].str.strip().str.lower()).sort_values("position", ignore_index=True)
    if (table.subject == "").any():
        raise DataError(path, "empty subject name(s)")
    doubles = table.subject[table.subject.duplicated()].unique().tolist()
    if doubles:
        raise DataError(path, f"subject(s) listed more than once: {_some(doubles)}")
    bad = sorted(set(table["split"]) - {"train", "test"})
    if bad:
        raise DataError(path, f"split values {bad}; expected train or test")
    if not {"train", "test"} <= set(table["split"]):
        raise DataError(path, "expected at least one train and one test subject")
    return table


def _some(names: Sequence[str], limit: int = 8, shown: int = 5) -> str:
    """All names when there are at most ``limit``, else the first ``shown`` and a count."""
    names = list(names)
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:shown]) + f", … ({len(names)} in all)"


def _subjects_word(n: int) -> str:
    return f"{n} subject" + ("" if n == 1 else "s")


def split_subjects_by_list(
    subjects: Iterable[str],
    order: pd.DataFrame,
    n_train: int | None = None,
    *,
    list_file: str | os.PathLike = "the subject list",
    data_dir: str | os.PathLike = "the data folder",
    fallback: str = "./runall.sh brats20 --data DIR --set prepare_data.split=seeded",
) -> pd.DataFrame:
    """The authors' split (``split="authors"``) from a subject list
    (:func:`read_subject_order`). The held-out subjects are the list's
    ``test`` subjects. The list's ``train`` subjects, in list order, train:
    the first ``n_train`` of them (all when None), and the rest are
    ``unused``, so smaller training sets are prefixes of larger ones. The
    subjects found (``subjects``) must be exactly those of the list.
    Otherwise :class:`DataLayoutError` names the subjects that differ
    (missing ones in list order, extra ones sorted), the list file and the
    data folder, and gives the ``fallback`` command. Columns: subject, rank
    (0-based position in the list), role."""
    found = set(subjects)
    listed = order.subject.tolist()
    missing = [s for s in listed if s not in found]
    extra = sorted(found - set(listed))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{_subjects_word(len(missing))} of the list missing from the data folder: {_some(missing)}")
        if extra:
            parts.append(f"{_subjects_word(len(extra))} in the data folder not in the list: {_some(extra)}")
        raise DataLayoutError(data_dir, f"the subjects in this data folder do not match the authors' subject "
                              f"list {list_file} "
                              f"({'; '.join(parts)}). The authors' split (split: authors) needs exactly the "
                              f"{len(listed)} subjects of that list. To split the subjects found with the "
                              f"seeded split instead, run: {fallback}")
    n_avail = int((order["split"] == "train").sum())
    if n_train is not None and not 1 <= int(n_train) <= n_avail:
        raise ValueError(f"n_train_subjects={n_train}: the authors' split has {n_avail} training subjects "
                         f"({list_file})")
    n_train = n_avail if n_train is None else int(n_train)
    train_rank = order["split"].eq("train").cumsum()          # 1-based rank among the list's train subjects
    roles = np.where(order["split"] == "test", "test", np.where(train_rank <= n_train, "train", "unused"))
    return pd.DataFrame({"subject": listed, "rank": range(len(listed)), "role": roles})


def _authors_layout(names: Sequence[str]) -> str | None:
    """The BraTS year most subject folder names follow (None when none does):
    which shipped list to compare a folder with, even when some names stray."""
    counts = {layout: sum(bool(re.fullmatch(pattern, n)) for n in names)
              for layout, pattern in BRATS_NAME_PATTERNS.items()}
    best = max(counts, key=counts.get)
    return best if counts[best] else None


def _display_path(path: Path) -> str:
    """``path`` relative to the checkout when inside it (as recorded in meta.json), else absolute."""
    path = path.resolve()
    try:
        return str(path.relative_to(Path(__file__).resolve().parents[2]))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------
# Chest x-ray
# --------------------------------------------------------------------------

_PNEUMONIA_NAME = re.compile(r"^(person\d+)_(?:bacteria|virus)", re.IGNORECASE)
_NORMAL_NAME = re.compile(r"^((?:NORMAL\d*-)?IM-\d+)-\d+", re.IGNORECASE)


def parse_cxr_patient(filename: str | os.PathLike) -> str:
    """The patient id in a Kermany file name: ``person12_bacteria_3.jpeg`` /
    ``person12_virus_7.jpeg`` → ``person12``; ``IM-0115-0001.jpeg`` →
    ``IM-0115``; ``NORMAL2-IM-1427-0001.jpeg`` → ``NORMAL2-IM-1427`` (the
    prefix is kept: its numbers are a separate series)."""
    name = Path(filename).name
    for pattern in (_PNEUMONIA_NAME, _NORMAL_NAME):
        match = pattern.match(name)
        if match:
            return match.group(1)
    raise DataError(filename, "cannot tell the patient from the file name; expected person<N>_bacteria_<k>.jpeg, "
                    "person<N>_virus_<k>.jpeg, IM-<XXXX>-<YYYY>.jpeg or NORMAL2-IM-<XXXX>-<YYYY>.jpeg")


def find_cxr_root(raw_dir: str | os.PathLike, max_depth: int = 4) -> Path:
    """The folder holding ``{train,test,val}/{NORMAL,PNEUMONIA}``: ``raw_dir``
    itself or the shallowest such folder below it (the Kaggle archive's
    nested ``chest_xray/chest_xray`` copy and ``__MACOSX`` are not used)."""
    raw_dir = Path(raw_dir)

    def is_root(folder: Path) -> bool:
        return any((folder / split / cls).is_dir() for split in CXR_SPLIT_FOLDERS for cls in CXR_CLASSES)

    for folder, _, _ in _walk_dirs(raw_dir, max_depth):
        if is_root(folder):
            return folder
    raise DataLayoutError(raw_dir, f"no chest x-ray folders found ({_describe_folder(raw_dir)}); expected "
                          "DIR/{train,test,val}/{NORMAL,PNEUMONIA}/*.jpeg")


def list_cxr_images(raw_dir: str | os.PathLike) -> tuple[pd.DataFrame, list[dict]]:
    """All x-ray files (columns: path, file, label, original_split, subject)
    and the files whose patient cannot be parsed (path, reason). Hidden
    files and non-image files are ignored."""
    root = find_cxr_root(raw_dir)
    rows, bad = [], []
    for split in CXR_SPLIT_FOLDERS:
        for label in CXR_CLASSES:
            folder = root / split / label
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                if path.name.startswith(".") or not path.is_file() or path.suffix.lower() not in CXR_EXTENSIONS:
                    continue
                try:
                    rows.append({"path": str(path), "file": path.name, "label": label, "original_split": split,
                                 "subject": parse_cxr_patient(path.name)})
                except DataError as err:
                    bad.append({"path": str(path), "reason": err.reason, "subject": "", "role": ""})
    if not rows and not bad:
        raise DataLayoutError(root, "no .jpeg/.jpg/.png files in {train,test,val}/{NORMAL,PNEUMONIA}")
    return pd.DataFrame(rows, columns=["path", "file", "label", "original_split", "subject"]), bad


def load_cxr_image(path: str | os.PathLike, image_size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """One x-ray as (image_size, image_size) uint8 and its original
    (width, height): grayscale (RGB → ITU-R 601 luma; 16-bit scaled by its
    maximum), centre-cropped to a square, resized bilinearly (anti-aliased)."""
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            width, height = image.size
            if image.mode in ("I", "I;16", "I;16B", "F"):
                values = np.asarray(image, dtype=np.float32)
                peak = float(values.max()) or 1.0
                gray = Image.fromarray(np.clip(np.rint(values * (255.0 / peak)), 0, 255).astype(np.uint8))
            else:
                gray = image.convert("L")
    except Exception as err:  # noqa: BLE001 - Pillow raises several kinds
        raise DataError(path, f"cannot read as an image ({type(err).__name__}: {err}); expected a "
                        "complete JPEG/PNG file") from err
    side = min(width, height)
    if side < 1:
        raise DataError(path, f"image is {width}×{height}; expected a non-empty image")
    left, top = (width - side) // 2, (height - side) // 2
    gray = gray.crop((left, top, left + side, top + side))
    if side != image_size:
        gray = gray.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(gray, dtype=np.uint8), (width, height)


def cxr_file_images(row: dict, image_size: int) -> PreparedUnit:
    image, (width, height) = load_cxr_image(row["path"], image_size)
    out = {"subject": row["subject"], "slice": -1, "label": row["label"], "source": row["path"],
           "original_split": row["original_split"], "orig_width": width, "orig_height": height}
    return PreparedUnit(image[None, None], [out])


# --------------------------------------------------------------------------
# Writing N×C×H×W uint8 arrays without holding them in memory
# --------------------------------------------------------------------------

class NpyAppender:
    """Append blocks of rows to a ``.npy`` file on disk, then publish it
    atomically.

    The final row count is not known before every subject is read (the
    slice rule decides), so instead of a second pass over all volumes the
    file gets a header for N=0 and rows are written sequentially; at the
    end the header is rewritten in place with the real N (NumPy pads
    headers so the first axis can grow to 21 digits without changing the
    header length) and the temporary file is renamed onto ``path``. Memory
    stays at one block; the result loads with ``np.load(..., mmap_mode="r")``."""

    def __init__(self, path: str | os.PathLike, row_shape: Sequence[int], dtype=np.uint8):
        self.path = Path(path)
        self.row_shape = tuple(int(s) for s in row_shape)
        self.dtype = np.dtype(dtype)
        self.n = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=self.path.stem + ".tmp", suffix=self.path.suffix, dir=self.path.parent)
        self.tmp = Path(tmp)
        self._handle = os.fdopen(fd, "wb")
        self._header_len = len(self._header(0))
        self._handle.write(self._header(0))

    def _header(self, n: int) -> bytes:
        buffer = io.BytesIO()
        np.lib.format.write_array_header_1_0(buffer, {
            "descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
            "shape": (n, *self.row_shape)})
        return buffer.getvalue()

    def append(self, block: np.ndarray) -> tuple[int, int]:
        """Write ``block`` (K × row_shape); returns its (first, end) row indices."""
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.row_shape:
            raise ValueError(f"block of shape {block.shape} does not fit rows of shape {self.row_shape}")
        if block.size:
            self._handle.write(memoryview(block.reshape(-1)))
        start, self.n = self.n, self.n + len(block)
        return start, self.n

    def commit(self) -> Path:
        header = self._header(self.n)
        if len(header) != self._header_len:  # cannot happen with NumPy's padded headers
            raise RuntimeError(f"{self.path}: .npy header length changed ({self._header_len} → {len(header)})")
        self._handle.seek(0)
        self._handle.write(header)
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        if not self._handle.closed:
            self._handle.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> NpyAppender:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self._handle.closed:
            self.abort()


# --------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------

@dataclass
class _Unit:
    key: str          # subject id, or file path for x-ray
    subject: str
    role: str         # train | test
    rank: int
    path: str
    args: Any


def _ordered_results(work: Callable[[_Unit], PreparedUnit], units: Sequence[_Unit], n_workers: int
                     ) -> Iterator[tuple[_Unit, PreparedUnit | DataError]]:
    """``work(unit)`` for every unit, yielded in order; :class:`DataError`
    is returned as a value (other errors propagate). With ``n_workers`` > 1
    a thread pool reads ahead (NIfTI/JPEG decoding, zlib and NumPy release
    the GIL), at most 2 × n_workers units in flight."""

    def safe(unit: _Unit) -> PreparedUnit | DataError:
        try:
            return work(unit)
        except DataError as err:
            return err

    if n_workers <= 1:
        for unit in units:
            yield unit, safe(unit)
        return
    with ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="prepare") as pool:
        pending: deque = deque()
        it = iter(units)
        try:
            for unit in it:
                pending.append((unit, pool.submit(safe, unit)))
                if len(pending) >= 2 * n_workers:
                    head, future = pending.popleft()
                    yield head, future.result()
            while pending:
                head, future = pending.popleft()
                yield head, future.result()
        finally:
            for _, future in pending:
                future.cancel()


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
    reader = SOURCES[source]
    allowed = BRATS_CHANNELS if reader == "brats" else CXR_CHANNELS
    if channels is None:
        return list(allowed)
    by_lower = {c.lower(): c for c in allowed}
    chosen = [by_lower.get(str(c).lower()) for c in channels]
    if not channels or None in chosen or len(set(chosen)) != len(chosen):
        raise ValueError(f"channels {list(channels)}: expected distinct names from {list(allowed)} (or null for all)")
    chosen = sorted(chosen, key=allowed.index)  # a subset keeps our order (BRATS_CHANNELS)
    if reader == "brats" and int(image_size) > int(pad_to):
        raise ValueError(f"image_size={image_size} is larger than pad_to={pad_to}; slices are padded to pad_to "
                         "and only shrunk")
    return chosen


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def prepare_dataset(
    source: str,
    raw_dir: str | os.PathLike,
    results_dir: str | os.PathLike,
    image_size: int = 256,
    channels: Sequence[str] | None = None,
    *,
    dataset: str | None = None,
    pad_to: int = 256,
    t1_threshold: float = 50,
    min_brain_fraction: float = 0.15,
    slice_stride: int = 1,
    n_test_subjects: int = 56,
    n_train_subjects: int | None = None,
    test_fraction: float = 0.1,
    split: str = "seeded",
    split_file: str | os.PathLike | None = None,
    on_bad_subject: str = "fail",
    seed: int = 0,
    n_workers: int = 2,
    progress: bool = True,
) -> dict:
    """Read the raw data in ``raw_dir`` (BraTS subject folders or the
    chest x-ray folders; see the module doc for the rules), split it by
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
    out_dir = Path(results_dir) / "data"
    if _inside(out_dir, raw_dir):
        raise ValueError(f"results folder {out_dir} lies inside the raw data folder {raw_dir}; "
                         "nothing may be written there")
    size = int(image_size)
    skipped: list[dict] = []
    notes: list[str] = []

    split_path: Path | None = None
    if reader == "brats":
        subject_dirs = find_brats_subjects(raw_dir)
        layout = brats_layout(subject_dirs)
        names = [p.name for p in subject_dirs]
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
        else:
            split_table = split_subjects(names, n_test_subjects, n_train_subjects, seed)
        folders = {p.name: p for p in subject_dirs}
        args = dict(channels=channels, image_size=size, pad_to=int(pad_to), t1_threshold=t1_threshold,
                    min_brain_fraction=min_brain_fraction, slice_stride=int(slice_stride))
        used = split_table[split_table.role != "unused"].sort_values(["role", "rank"], key=_train_first)
        units = [_Unit(s, s, r, int(k), str(folders[s]), args)
                 for s, r, k in used[["subject", "role", "rank"]].itertuples(index=False)]

        def work(unit: _Unit) -> PreparedUnit:
            return brats_subject_images(unit.path, **unit.args)
        columns, bar_unit = BRATS_COLUMNS, "subject"
    else:
        files, bad_names = list_cxr_images(raw_dir)
        layout = "kermany_cxr"
        if bad_names and on_bad_subject == "fail":
            raise DataError(bad_names[0]["path"], bad_names[0]["reason"])
        skipped.extend(bad_names)
        patients = files.drop_duplicates("subject")[["subject", "label"]]
        split_table = split_patients(patients, test_fraction, n_train_subjects, seed)
        roles = dict(zip(split_table.subject, split_table.role))
        ranks = dict(zip(split_table.subject, split_table["rank"]))
        files = files.assign(role=files.subject.map(roles), rank=files.subject.map(ranks))
        files = files[files.role != "unused"].sort_values(["role", "rank", "file"], key=_train_first)
        units = [_Unit(r["path"], r["subject"], r["role"], int(r["rank"]), r["path"], r)
                 for r in files.to_dict("records")]

        def work(unit: _Unit) -> PreparedUnit:
            return cxr_file_images(unit.args, size)
        columns, bar_unit = CXR_COLUMNS, "image"

    rows: dict[str, list[dict]] = {"train": [], "test": []}
    fractions: list[dict] = []
    done: dict[str, int] = {}
    row_shape = (len(channels), size, size)
    out_dir.mkdir(parents=True, exist_ok=True)
    with NpyAppender(out_dir / "train.npy", row_shape) as train_npy, \
            NpyAppender(out_dir / "test.npy", row_shape) as test_npy:
        writers = {"train": train_npy, "test": test_npy}
        bar = common.progress(total=len(units), unit=bar_unit, desc=f"prepare {dataset or source}", disable=not progress)
        for unit, outcome in _ordered_results(work, units, int(n_workers)):
            bar.update(1)
            if isinstance(outcome, DataError):
                if on_bad_subject == "fail" or isinstance(outcome, DataLayoutError):
                    bar.close()
                    raise outcome
                skipped.append({"path": outcome.path, "reason": outcome.reason, "subject": unit.subject,
                                "role": unit.role})
                continue
            start, _ = writers[unit.role].append(outcome.images)
            for i, row in enumerate(outcome.rows):
                rows[unit.role].append({"index": start + i, **row, "split_rank": unit.rank})
            fractions.extend({**rec, "role": unit.role} for rec in outcome.fractions)
            notes.extend(outcome.notes)
            done[unit.subject] = done.get(unit.subject, 0) + len(outcome.images)
            bar.set_postfix(train=train_npy.n, test=test_npy.n, skipped=len(skipped), refresh=False)
        bar.close()
        for role in ("train", "test"):
            if writers[role].n == 0:
                raise ValueError(f"no {role} images: {len(skipped)} inputs skipped"
                                 + (f" (first: {skipped[0]['path']}: {skipped[0]['reason']})" if skipped else "")
                                 + ("" if reader != "brats" else
                                    f"; or no slice has more than {min_brain_fraction:.0%} of its pixels with "
                                    f"T1 > {t1_threshold}"))
        n_train, n_test = train_npy.n, test_npy.n
        train_npy.commit()
        test_npy.commit()

    skipped_subjects = {s["subject"] for s in skipped if s["subject"]}
    split_table = split_table.assign(
        split=split,
        n_images=split_table.subject.map(done).fillna(0).astype(int),
        status=[("unused" if r == "unused" else "skipped" if s in skipped_subjects and s not in done else "ok")
                for s, r in zip(split_table.subject, split_table.role)])
    written = []
    for role in ("train", "test"):  # sources relative to raw_dir: results carry no machine's paths
        table = pd.DataFrame(rows[role], columns=columns)
        table["source"] = [os.path.relpath(path, raw_dir) for path in table["source"]]
        written.append(common.write_csv(out_dir / f"{role}.csv", table))
    written.append(common.write_csv(out_dir / "split.csv", split_table))
    written.append(common.write_csv(out_dir / "skipped.csv", pd.DataFrame(skipped, columns=SKIPPED_COLUMNS)))
    if reader == "brats":
        written.append(common.write_csv(out_dir / "slice_fractions.csv", pd.DataFrame(
            fractions, columns=["subject", "slice", "brain_fraction", "kept", "role"])))
    else:
        (out_dir / "slice_fractions.csv").unlink(missing_ok=True)  # stale from an earlier brain-MRI run
    subjects_with_images = {role: sorted({r["subject"] for r in rows[role]}) for role in rows}
    meta = {
        "dataset": dataset or source,
        "source": source,
        "reader": reader,
        "layout": layout,
        "raw_dir": common.display_path(raw_dir),  # `source` columns are relative to it
        "channels": list(channels),
        "image_size": size,
        "n_train": n_train,
        "n_test": n_test,
        "n_train_subjects": len(subjects_with_images["train"]),
        "n_test_subjects": len(subjects_with_images["test"]),
        "n_subjects_found": int(len(split_table)),
        "n_unused_subjects": int((split_table.role == "unused").sum()),
        "n_skipped": len(skipped),
        "shape_train": [n_train, *row_shape],
        "shape_test": [n_test, *row_shape],
        "dtype": "uint8",
        "split": split,
        "split_file": None if split_path is None else _display_path(split_path),
        "split_file_sha256": None if split_path is None else common.file_sha256(split_path),
        "split_rule": (f"the authors' subject list {split_path.name}: test = its 'test' subjects; train = the first "
                       f"{int((split_table.role == 'train').sum())} of its 'train' subjects in list order"
                       if split_path is not None else
                       "seeded permutation of the sorted subject ids (seed); last n_test_subjects held out, first "
                       "n_train_subjects of the rest train" if reader == "brats" else
                       "seeded permutation of the patient ids (seed); per class the last test_fraction held out, "
                       "first n_train_subjects of the rest train"),
        "seed": int(seed),
        "on_bad_subject": on_bad_subject,
        "notes": notes,
        "files": [str(p.relative_to(out_dir.parent)) for p in
                  [out_dir / "train.npy", out_dir / "test.npy", *written]] + ["data/meta.json"],
        "seconds": round(time.perf_counter() - started, 2),
        "n_workers": int(n_workers),
    }
    if reader == "brats":
        meta.update(pad_to=int(pad_to), t1_threshold=t1_threshold, min_brain_fraction=min_brain_fraction,
                    slice_stride=int(slice_stride), rules={
                        "intensity": "each modality volume / its max * 255 (float64), rounded to nearest "
                                     "(np.rint), clipped 0..255",
                        "segmentation": "label / 5 * 255 (labels 0,1,2,4 -> 0,51,102,204), exact",
                        "slice": "volume[:, :, k].T",
                        "keep": f"fraction of the {pad_to}x{pad_to} zero-padded slice with scaled, unrounded "
                                f"T1 > {t1_threshold} is > {min_brain_fraction}",
                        "resize": "none" if size == int(pad_to) else
                                  f"pad to {pad_to}, then Pillow bilinear (anti-aliased) to {size}; Seg nearest",
                    })
    else:
        meta.update(test_fraction=test_fraction, rules={
            "gray": "Pillow convert('L') (RGB -> ITU-R 601 luma)",
            "geometry": f"centre-crop to a square on the shorter side, Pillow bilinear (anti-aliased) to {size}",
            "split": "original train/test/val merged; patient-disjoint re-split, test_fraction per class",
        })
    common.write_json(out_dir / "meta.json", meta)
    return meta


def _train_first(column: pd.Series) -> pd.Series:
    """Sort key: train rows before test rows, other columns unchanged."""
    if column.name == "role":
        return column.map({"train": 0, "test": 1})
    return column


def split_counts(results_dir: str | os.PathLike) -> pd.DataFrame:
    """Images and subjects per split (and per label for the x-rays), from
    the written tables: what the notebook shows as the counts table."""
    folder = Path(results_dir) / "data"
    frames = []
    for role in ("train", "test"):
        table = pd.read_csv(folder / f"{role}.csv", keep_default_na=False)
        by = table.groupby("label") if table["label"].astype(str).str.len().any() else [("", table)]
        for label, part in by:
            frames.append({"split": role, "label": label, "images": len(part),
                           "subjects": part["subject"].nunique()})
    return pd.DataFrame(frames)


def load_split(results_dir: str | os.PathLike, role: str = "train", mmap: bool = True) -> tuple[np.ndarray, pd.DataFrame]:
    """``data/<role>.npy`` (memory-mapped) and its table, checked to match."""
    folder = Path(results_dir) / "data"
    images = np.load(folder / f"{role}.npy", mmap_mode="r" if mmap else None)
    table = pd.read_csv(folder / f"{role}.csv", keep_default_na=False)
    if len(images) != len(table):
        raise ValueError(f"{folder}: {role}.npy has {len(images)} images but {role}.csv {len(table)} rows")
    return images, table
