"""Who trains and who is held out: the seeded split, the x-ray patients'
split and the authors' published BraTS subject order. Splits are by subject
(patient), never by image, so no subject's slices are on both sides.

``split="seeded"`` (default; phantom and x-ray always) is a seeded
permutation of the subjects found. ``split="authors"`` (real BraTS
2020/2021 only) uses the authors' published subject order, shipped in
``configs/authors_split/`` (from their repository ``muhamadusman/Assist``,
MIT licence): their 56 test subjects are held out, and the training
subjects are their ``train`` subjects in their order. The data folder must
hold exactly the subjects of that list; otherwise the run stops before it
writes anything.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .. import common
from .base import DataError, DataLayoutError

#: The checkout this file lies in (src/helpers/data/splits.py → three folders up).
_CHECKOUT = Path(__file__).resolve().parents[3]

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
    here = _CHECKOUT / "configs" / "authors_split"
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
    except Exception as err:  # pandas raises several kinds
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


def _train_first(column: pd.Series) -> pd.Series:
    """Sort key: train rows before test rows, other columns unchanged."""
    if column.name == "role":
        return column.map({"train": 0, "test": 1})
    return column
