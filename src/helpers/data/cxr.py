"""Chest x-rays (the Kermany set, "Chest X-Ray Images (Pneumonia)"): file
names → patient ids, finding the folders, reading one JPEG/PNG.

Images are converted to 8-bit grayscale (Pillow ``L``: ITU-R 601 luma for
RGB files), centre-cropped to a square on the shorter side, and resized
(bilinear, anti-aliased) to ``image_size``. The patient id comes from the
file name; the original train/test/val folders are merged and re-split
patient-disjointly (:func:`.splits.split_patients`), since the published
folders do not keep a patient's images together.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .base import DataError, DataLayoutError, PreparedUnit, ReaderPlan, Unit
from .raw import _describe_folder, _walk_dirs
from .splits import _train_first, split_patients

#: The chest x-ray images have one channel.
CXR_CHANNELS: tuple[str, ...] = ("gray",)
CXR_CLASSES: tuple[str, ...] = ("NORMAL", "PNEUMONIA")
CXR_SPLIT_FOLDERS: tuple[str, ...] = ("train", "test", "val")
CXR_EXTENSIONS: tuple[str, ...] = (".jpeg", ".jpg", ".png")
#: Table columns (contract: subject, slice, label, source; the rest help later steps).
CXR_COLUMNS = ["index", "subject", "slice", "label", "source", "original_split", "orig_width", "orig_height",
               "split_rank"]

# The one parser of Kermany file names, used by the reader and by the phantom
# generator (helpers.phantom writes names it must accept). Matched at the start
# of the name, in any case, whatever the extension.
_PNEUMONIA_NAME = re.compile(r"^(person\d+)_(?:bacteria|virus)", re.IGNORECASE)
_NORMAL_NAME = re.compile(r"^((?:NORMAL\d*-)?IM-\d+)-\d+", re.IGNORECASE)


def parse_cxr_patient(filename: str | os.PathLike) -> str:
    """The patient id in a Kermany file name: ``person12_bacteria_3.jpeg`` /
    ``person12_virus_7.jpeg`` → ``person12``; ``IM-0115-0001.jpeg`` →
    ``IM-0115``; ``NORMAL2-IM-1427-0001.jpeg`` → ``NORMAL2-IM-1427`` (the
    prefix is kept: its numbers are a separate series). The split must keep
    a patient's images together, and the name is the only place the patient
    is recorded. Any folder part is ignored; another name raises
    :class:`DataError` (a :class:`ValueError`) naming the file."""
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
    except Exception as err:  # Pillow raises several kinds
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


def plan_cxr(raw_dir: Path, *, image_size: int, test_fraction: float, n_train_subjects: int | None,
             seed: int, on_bad_subject: str) -> ReaderPlan:
    """List the x-ray files, split their patients (:func:`.splits.split_patients`)
    and list one unit per file of a used patient, training files first. A
    file name without a patient id stops the run here with
    ``on_bad_subject="fail"``; with ``"skip"`` it is listed in skipped.csv."""
    files, bad_names = list_cxr_images(raw_dir)
    if bad_names and on_bad_subject == "fail":
        raise DataError(bad_names[0]["path"], bad_names[0]["reason"])
    patients = files.drop_duplicates("subject")[["subject", "label"]]
    split_table = split_patients(patients, test_fraction, n_train_subjects, seed)
    roles = dict(zip(split_table.subject, split_table.role))
    ranks = dict(zip(split_table.subject, split_table["rank"]))
    files = files.assign(role=files.subject.map(roles), rank=files.subject.map(ranks))
    files = files[files.role != "unused"].sort_values(["role", "rank", "file"], key=_train_first)
    units = [Unit(r["path"], r["subject"], r["role"], int(r["rank"]), r["path"], r)
             for r in files.to_dict("records")]

    def work(unit: Unit) -> PreparedUnit:
        return cxr_file_images(unit.args, image_size)

    meta = dict(test_fraction=test_fraction, rules={
        "gray": "Pillow convert('L') (RGB -> ITU-R 601 luma)",
        "geometry": f"centre-crop to a square on the shorter side, Pillow bilinear (anti-aliased) to {image_size}",
        "split": "original train/test/val merged; patient-disjoint re-split, test_fraction per class",
    })
    return ReaderPlan(
        layout="kermany_cxr", split_table=split_table, units=units, work=work, columns=CXR_COLUMNS,
        bar_unit="image", meta=meta, skipped=list(bad_names),
        split_rule=("seeded permutation of the patient ids (seed); per class the last test_fraction held out, "
                    "first n_train_subjects of the rest train"))
