"""The raw data folder: which sources exist, where a user gets the real
data (the program downloads nothing, BraTS needs a registration), finding
the folder or generating the phantom, and walking it."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from .base import DataLayoutError, DatasetNotFoundError

#: ``source`` values: which reader, and whether the phantom generator makes the raw data.
SOURCES: dict[str, str] = {"brats": "brats", "cxr": "cxr", "phantom_brats": "brats", "phantom_cxr": "cxr"}

_IGNORED_DIRS = {"__MACOSX"}

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
        from .. import phantom

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
