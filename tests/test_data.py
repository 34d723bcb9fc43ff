"""Data preparation (helpers.data): small BraTS cohorts and chest x-rays
written by the tests themselves, in the real on-disk layouts."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers import data, phantom

# Small volumes: X=20, Y=16 (non-square, to catch transposes), Z=10 slices.
SHAPE = (20, 16, 10)
PAD = 24                                  # pad_to for the small volumes
NEEDED = int(0.15 * PAD * PAD) + 1        # pixels above threshold needed to keep a slice (87 of 576)
#: Scaled value of the "brain" voxels per modality (each volume's max is 255 elsewhere).
LEVEL = {"t1": 200, "t2": 120, "t1ce": 90, "flair": 60}
#: Pixels above threshold per slice: kept slices are 2, 3, 4, 6 (slice 5 is one pixel short).
BRAIN_PIXELS = {2: NEEDED + 40, 3: NEEDED + 60, 4: NEEDED, 5: NEEDED - 1, 6: NEEDED + 10}
KEPT = [2, 3, 4, 6]


def brain_mask() -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=bool)
    for k, n in BRAIN_PIXELS.items():
        flat = np.zeros(SHAPE[0] * SHAPE[1], dtype=bool)
        flat[:n] = True
        mask[:, :, k] = flat.reshape(SHAPE[0], SHAPE[1])
    return mask


def subject_volumes(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Modality volumes whose scaled values are known: brain voxels at
    LEVEL[m], one voxel of 255 (the max) in slice 0 (which is dropped), a few
    voxels at exactly the threshold (50: not brain) in slice 1."""
    mask = brain_mask()
    out = {}
    for name, level in LEVEL.items():
        volume = np.zeros(SHAPE, dtype=np.float32)
        volume[mask] = level
        volume[0, 0, 0] = 255
        volume[:, :, 1] = 50          # every pixel exactly at the threshold: not brain
        out[name] = volume
    seg = np.zeros(SHAPE, dtype=np.int16)
    seg[mask] = rng.choice([0, 1, 2, 4], size=int(mask.sum()))
    out["seg"] = seg
    return out


def write_nifti(path: Path, volume: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(path))
    return path


def write_subject(folder: Path, name: str, ext: str = ".nii.gz", seed: int = 0, seg_name: str | None = None,
                  volumes: dict | None = None) -> Path:
    subject = folder / name
    subject.mkdir(parents=True)
    volumes = volumes or subject_volumes(np.random.default_rng(seed))
    for modality, volume in volumes.items():
        file = f"{name}_{modality}{ext}" if (modality != "seg" or seg_name is None) else seg_name
        write_nifti(subject / file, volume)
    return subject


def brats_cohort(root: Path, n: int = 5, year: int = 2021, ext: str | None = None) -> Path:
    """A cohort in the BraTS 2020 (``.nii``) or 2021 (``.nii.gz``) layout."""
    if year == 2020:
        top = root / "MICCAI_BraTS2020_TrainingData"
        for i in range(1, n + 1):
            write_subject(top, f"BraTS20_Training_{i:03d}", ext or ".nii", seed=i)
    else:
        top = root / "BraTS2021"
        for i in range(n):
            write_subject(top, f"BraTS2021_{i:05d}", ext or ".nii.gz", seed=i)
    return top


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def prepare(raw, results, source="brats", **kw):
    args = dict(image_size=PAD, pad_to=PAD, n_test_subjects=2, n_workers=0, progress=False, dataset="test")
    args.update(kw)
    return data.prepare_dataset(source, raw, results, **args)


# --------------------------------------------------------------------------
# Scaling, the slice rule, padding, resizing
# --------------------------------------------------------------------------

def test_scale_modality_maps_max_to_255_and_rounds():
    volume = np.array([0.0, 1.0, 2.0, 3.0, 4.0], dtype=np.float32)
    scaled = data.scale_modality(volume)
    assert scaled.dtype == np.uint8
    # 255/4 = 63.75 → 64 (rounded, not floored to 63); 191.25 → 191
    assert scaled.tolist() == [0, 64, 128, 191, 255]
    assert data.scale_modality(np.array([-3.0, 10.0])).tolist() == [0, 255]


def test_scale_segmentation_is_exact():
    assert data.scale_segmentation(np.array([0, 1, 2, 3, 4, 5])).tolist() == [0, 51, 102, 153, 204, 255]


def test_slice_rule_just_above_and_below():
    slices = np.zeros((4, 20, 16), dtype=np.uint8)
    slices[0].flat[:NEEDED] = 51          # above threshold, just enough pixels → kept
    slices[1].flat[:NEEDED - 1] = 51      # one pixel short → dropped
    slices[2].flat[:NEEDED + 5] = 50      # at (not above) the threshold → dropped
    slices[3].flat[:] = 255               # all brain
    fractions = data.brain_fraction(slices, threshold=50, pad_to=PAD)
    assert fractions[0] == pytest.approx(NEEDED / PAD**2)          # denominator is the padded slice
    assert fractions[3] == pytest.approx(20 * 16 / PAD**2)
    assert data.kept_slice_indices(fractions, 0.15).tolist() == [0, 3]
    assert data.keep_slice(fractions[0]) and not data.keep_slice(fractions[1])
    assert data.kept_slice_indices(fractions, 0.15, slice_stride=2).tolist() == [0]


def test_slice_rule_uses_unrounded_t1():
    """The authors compare the scaled T1 *before* rounding: 50.3 counts as
    above 50 (stored as 50), 49.6 does not (stored as 50 too)."""
    scaled = np.zeros((3, 20, 16))
    scaled[0].flat[:NEEDED] = 50.3
    scaled[1].flat[:NEEDED] = 49.6
    scaled[2].flat[:NEEDED] = 50.6
    kept = data.kept_slice_indices(data.brain_fraction(scaled, 50, PAD), 0.15)
    assert kept.tolist() == [0, 2]
    rounded = data.round_to_uint8(scaled)
    assert rounded[0].max() == 50 and rounded[1].max() == 50 and rounded[2].max() == 51
    assert data.kept_slice_indices(data.brain_fraction(rounded, 50, PAD), 0.15).tolist() == [2]  # would flip


def test_slice_rule_before_rounding_in_a_subject(tmp_path):
    volumes = subject_volumes(np.random.default_rng(0))
    volumes["t1"][:, :, 7].T.flat[:NEEDED] = 50.3         # scaled by max 255: 50.3, stored as 50
    volumes["t1"][:, :, 8].T.flat[:NEEDED] = 49.6         # 49.6 → 50, never above 50
    folder = write_subject(tmp_path, "BraTS2021_00000", volumes=volumes)
    unit = data.brats_subject_images(folder, image_size=PAD, pad_to=PAD)
    assert [r["slice"] for r in unit.rows] == sorted(KEPT + [7])
    t1_slice7 = unit.images[[r["slice"] for r in unit.rows].index(7), 0]
    assert set(np.unique(t1_slice7)) == {0, 50} and (t1_slice7 == 50).sum() == NEEDED
    fractions = {r["slice"]: r["brain_fraction"] for r in unit.fractions}
    assert fractions[7] == pytest.approx(NEEDED / PAD**2, abs=1e-6) and fractions[8] == 0
    # had the rule been applied to the stored (rounded) values, slice 7 would have been dropped
    t1 = nib.load(str(folder / "BraTS2021_00000_t1.nii.gz")).get_fdata()
    rounded = data.axial_slices(data.scale_modality(t1))
    assert data.brain_fraction(rounded[7:8], 50, PAD)[0] == 0


def test_pad_center_and_resize():
    slices = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4) + 1
    padded = data.pad_center(slices, 8)
    assert padded.shape == (2, 8, 8)
    assert np.array_equal(padded[:, 2:5, 2:6], slices)          # centred; odd margin goes after
    assert padded.sum() == slices.astype(int).sum()
    with pytest.raises(ValueError, match="pad_to must be"):
        data.pad_center(slices, 3)

    labels = data.scale_segmentation(np.random.default_rng(0).choice([0, 1, 2, 4], size=(3, 32, 32)))
    small = data.resize_slices(labels, 8, nearest=True)
    assert small.shape == (3, 8, 8) and set(np.unique(small)) <= {0, 51, 102, 204}

    checker = np.indices((32, 32)).sum(axis=0) % 2 * 255              # finest detail: must blur to grey
    smooth = data.resize_slices(checker[None].astype(np.uint8), 8)
    assert smooth.dtype == np.uint8 and np.all(np.abs(smooth.astype(int) - 128) <= 2)  # anti-aliased


# --------------------------------------------------------------------------
# Loading subjects (both layouts) and the full preparation
# --------------------------------------------------------------------------

@pytest.mark.parametrize("year,ext", [(2020, ".nii"), (2021, ".nii.gz"), (2021, ".nii")])
def test_prepare_both_layouts(tmp_path, year, ext):
    brats_cohort(tmp_path / "raw", n=5, year=year, ext=ext)
    before = listing(tmp_path / "raw")
    meta = prepare(tmp_path / "raw", tmp_path / "results", seed=3)
    assert listing(tmp_path / "raw") == before                          # raw data untouched

    assert meta["layout"] == f"brats{year}"
    assert meta["channels"] == ["T1", "T2", "T1ce", "FLAIR", "Seg"]
    out = tmp_path / "results" / "data"
    train = np.load(out / "train.npy", mmap_mode="r")
    test = np.load(out / "test.npy", mmap_mode="r")
    assert isinstance(train, np.memmap) and train.dtype == np.uint8
    assert train.shape == (3 * len(KEPT), 5, PAD, PAD) and test.shape == (2 * len(KEPT), 5, PAD, PAD)
    assert meta["n_train"] == len(train) and meta["n_test"] == len(test)

    table = pd.read_csv(out / "train.csv")
    assert {"index", "subject", "slice", "label", "source", "n_slices_kept"} <= set(table.columns)
    assert table["index"].tolist() == list(range(len(train)))
    assert table.groupby("subject")["slice"].apply(list).map(lambda s: s == KEPT).all()
    assert set(table.subject).isdisjoint(pd.read_csv(out / "test.csv").subject)

    # channel order T1, T2, T1ce, FLAIR and their scaled levels; Seg values exact
    for c, modality in enumerate(["t1", "t2", "t1ce", "flair"]):
        assert set(np.unique(train[:, c])) == {0, LEVEL[modality]}
    assert set(np.unique(train[:, 4])) <= {0, 51, 102, 204}

    # each row is the padded, transposed axial slice of its subject's volume
    row = table.iloc[5]
    subject = Path(meta["raw_dir"]) / row.source
    t1_file = next(subject.glob("*_t1.nii*"))
    seg_file = next(subject.glob("*_seg.nii*"))
    t1 = data.scale_modality(nib.load(str(t1_file)).get_fdata())[:, :, row.slice].T
    seg = data.scale_segmentation(nib.load(str(seg_file)).get_fdata())[:, :, row.slice].T
    assert np.array_equal(train[5, 0], data.pad_center(t1, PAD))
    assert np.array_equal(train[5, 4], data.pad_center(seg, PAD))

    for name in ("meta.json", "split.csv", "skipped.csv", "slice_fractions.csv"):
        assert (out / name).is_file()
    fractions = pd.read_csv(out / "slice_fractions.csv")
    assert len(fractions) == 5 * SHAPE[2] and fractions.kept.sum() == 5 * len(KEPT)


def test_resize_to_image_size_keeps_seg_exact(tmp_path):
    brats_cohort(tmp_path / "raw", n=3)
    meta = prepare(tmp_path / "raw", tmp_path / "results", image_size=12, n_test_subjects=1,
                   channels=["seg", "flair"])                      # any case and order → T1…Seg order
    train = np.load(tmp_path / "results" / "data" / "train.npy")
    assert meta["channels"] == ["FLAIR", "Seg"] and train.shape[1:] == (2, 12, 12)
    assert set(np.unique(train[:, 1])) <= {0, 51, 102, 204}
    assert train[:, 0].max() <= LEVEL["flair"] and len(np.unique(train[:, 0])) > 2   # smoothed edges


def test_misnamed_2020_segmentation_is_accepted(tmp_path):
    top = tmp_path / "raw" / "MICCAI_BraTS2020_TrainingData"
    for i in range(1, 4):
        write_subject(top, f"BraTS20_Training_{i:03d}", ".nii", seed=i,
                      seg_name="W39_1998.09.19_Segm.nii" if i == 2 else None)
    files, notes = data.locate_modalities(top / "BraTS20_Training_002")
    assert files["Seg"].name == "W39_1998.09.19_Segm.nii" and "W39_1998.09.19_Segm.nii" in notes[0]
    meta = prepare(tmp_path / "raw", tmp_path / "results", n_test_subjects=1)   # a parent folder of the subjects
    assert meta["n_subjects_found"] == 3 and any("W39" in n for n in meta["notes"])


def test_split_subjects_reproducible_disjoint_and_nested():
    ids = [f"s{i:02d}" for i in range(20)]
    a = data.split_subjects(ids, n_test=4, seed=1)
    assert a.equals(data.split_subjects(list(reversed(ids)), n_test=4, seed=1))   # order-independent
    assert not a.equals(data.split_subjects(ids, n_test=4, seed=2))
    test = set(a[a.role == "test"].subject)
    assert len(test) == 4 and test == set(a.subject[-4:])                        # the last n_test held out
    small = data.split_subjects(ids, n_test=4, n_train=5, seed=1)
    large = data.split_subjects(ids, n_test=4, n_train=9, seed=1)
    assert set(small[small.role == "test"].subject) == test                      # test set fixed
    assert set(small[small.role == "train"].subject) < set(large[large.role == "train"].subject)
    assert (small.role == "unused").sum() == 11
    with pytest.raises(ValueError, match="n_train_subjects"):
        data.split_subjects(ids, n_test=4, n_train=17)
    with pytest.raises(ValueError, match="n_test_subjects"):
        data.split_subjects(ids, n_test=20)


def test_n_train_subjects_limits_training_set(tmp_path):
    brats_cohort(tmp_path / "raw", n=6)
    meta = prepare(tmp_path / "raw", tmp_path / "results", n_test_subjects=2, n_train_subjects=2)
    split = pd.read_csv(tmp_path / "results" / "data" / "split.csv")
    assert meta["n_train_subjects"] == 2 and meta["n_unused_subjects"] == 2
    assert meta["n_train"] == 2 * len(KEPT)
    assert set(split[split.role == "unused"].status) == {"unused"}


# --------------------------------------------------------------------------
# The authors' subject split
# --------------------------------------------------------------------------

#: A small list in the shipped format: 4 train subjects (in this order), then 2 test subjects.
ORDER = ["BraTS2021_00003", "BraTS2021_00000", "BraTS2021_00005", "BraTS2021_00001",
         "BraTS2021_00004", "BraTS2021_00002"]


def write_order(path: Path, subjects=ORDER, n_test: int = 2) -> Path:
    pd.DataFrame({"position": range(1, len(subjects) + 1), "subject": subjects,
                  "split": ["train"] * (len(subjects) - n_test) + ["test"] * n_test}).to_csv(path, index=False)
    return path


def test_shipped_authors_lists_parse():
    folder = data.authors_split_dir()
    assert folder == Path(data.__file__).resolve().parents[3] / "configs" / "authors_split"
    readme = (folder / "README.md").read_text()
    assert "muhamadusman/Assist" in readme and "MIT" in readme and "Muhammad Usman Akbar" in readme
    for layout, n, pattern in [("brats2020", 369, r"BraTS20_Training_\d{3}"), ("brats2021", 1251, r"BraTS2021_\d{5}")]:
        path = data.authors_split_file(layout)
        assert path.parent == folder
        order = data.read_subject_order(path)
        assert len(order) == n and order.subject.is_unique and order.position.tolist() == list(range(1, n + 1))
        assert order.subject.str.fullmatch(pattern).all()
        assert (order["split"] == "test").sum() == 56
        assert (order["split"].iloc[-56:] == "test").all() and (order["split"].iloc[:-56] == "train").all()
        raw = pd.read_csv(path)
        assert list(raw.columns) == ["position", "subject", "split"]
    with pytest.raises(ValueError, match="only for BraTS 2020/2021"):
        data.authors_split_file("other")


#: the shipped lists, pinned: sha256 of the file and (position, subject, split) at the first position,
#: the train/test boundary of each year (313/314 for 2020, 1195/1196 for 2021) and the last one; the
#: values were read from the authors' .mat files (muhamadusman/Assist, Preparation/) once and agree with
#: the copy beside STUDY.md
PINNED_SPLITS = {
    "brats2020": ("73b1e8254d147c829d3ac7b7e4e332db69c679e8624802072fac8989f6d9290c", [
        (1, "BraTS20_Training_123", "train"), (313, "BraTS20_Training_071", "train"),
        (314, "BraTS20_Training_215", "test"), (369, "BraTS20_Training_359", "test")]),
    "brats2021": ("865167cd85800763e1048980b941664e343d00723dffcff3a521bba0b0661b34", [
        (1, "BraTS2021_00649", "train"), (313, "BraTS2021_00797", "train"), (314, "BraTS2021_01054", "train"),
        (1195, "BraTS2021_01091", "train"), (1196, "BraTS2021_01566", "test"), (1251, "BraTS2021_00006", "test")]),
}


@pytest.mark.parametrize("layout", sorted(PINNED_SPLITS))
def test_shipped_authors_lists_are_pinned(layout):
    import hashlib

    digest, pinned = PINNED_SPLITS[layout]
    path = data.authors_split_file(layout)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, f"{path} changed"
    order = data.read_subject_order(path).set_index("position")
    for position, subject, split in pinned:
        assert (order.loc[position, "subject"], order.loc[position, "split"]) == (subject, split), position


def test_read_subject_order_rejects_bad_lists(tmp_path):
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"position": [1, 2, 2], "subject": ["a", "b", "c"], "split": ["train", "train", "test"]}
                 ).to_csv(bad, index=False)
    with pytest.raises(data.DataError, match="position must hold 1..3"):
        data.read_subject_order(bad)
    pd.DataFrame({"position": [1, 2, 3], "subject": ["a", "b", "a"], "split": ["train", "train", "test"]}
                 ).to_csv(bad, index=False)
    with pytest.raises(data.DataError, match="more than once: a"):
        data.read_subject_order(bad)
    pd.DataFrame({"position": [1, 2], "subject": ["a", "b"], "split": ["train", "val"]}).to_csv(bad, index=False)
    with pytest.raises(data.DataError, match="val"):
        data.read_subject_order(bad)
    pd.DataFrame({"pos": [1], "subject": ["a"]}).to_csv(bad, index=False)
    with pytest.raises(data.DataError, match="position, split"):
        data.read_subject_order(bad)
    with pytest.raises(data.DataError, match="not found"):
        data.read_subject_order(tmp_path / "nowhere.csv")


def test_split_subjects_by_list_nested_prefixes():
    order = pd.DataFrame({"position": range(1, 7), "subject": ORDER, "split": ["train"] * 4 + ["test"] * 2})
    full = data.split_subjects_by_list(reversed(ORDER), order)
    assert full.subject.tolist() == ORDER and full["rank"].tolist() == list(range(6))
    assert full.role.tolist() == ["train"] * 4 + ["test"] * 2
    two = data.split_subjects_by_list(ORDER, order, n_train=2)
    assert two.role.tolist() == ["train", "train", "unused", "unused", "test", "test"]
    three = data.split_subjects_by_list(ORDER, order, n_train=3)
    assert set(two.subject[two.role == "train"]) < set(three.subject[three.role == "train"])
    with pytest.raises(ValueError, match="n_train_subjects=5: the authors' split has 4"):
        data.split_subjects_by_list(ORDER, order, n_train=5)


def test_prepare_with_authors_split(tmp_path):
    brats_cohort(tmp_path / "raw", n=6)
    order_file = write_order(tmp_path / "order.csv")
    meta = prepare(tmp_path / "raw", tmp_path / "results", split="authors", split_file=order_file,
                   n_test_subjects=1, n_train_subjects=3)                     # n_test_subjects is not used
    out = tmp_path / "results" / "data"
    train, test = pd.read_csv(out / "train.csv"), pd.read_csv(out / "test.csv")
    assert train.subject.drop_duplicates().tolist() == ORDER[:3]              # list order, first K
    assert test.subject.drop_duplicates().tolist() == ORDER[4:]               # exactly the list's test subjects
    assert train.split_rank.drop_duplicates().tolist() == [0, 1, 2]
    split = pd.read_csv(out / "split.csv")
    assert split.subject.tolist() == ORDER and split["rank"].tolist() == list(range(6))
    assert split.role.tolist() == ["train"] * 3 + ["unused"] + ["test"] * 2
    assert (split["split"] == "authors").all() and split.status.tolist() == ["ok"] * 3 + ["unused"] + ["ok"] * 2
    assert meta["split"] == "authors" and meta["split_file"] == str(order_file.resolve())
    assert meta["split_file_sha256"] == hashlib.sha256(order_file.read_bytes()).hexdigest()
    assert meta["n_train_subjects"] == 3 and meta["n_test_subjects"] == 2
    assert any("n_test_subjects=1 not used" in n for n in meta["notes"])
    assert data.load_split(tmp_path / "results", "train")[0].shape[0] == 3 * len(KEPT)

    seeded = prepare(tmp_path / "raw", tmp_path / "seeded", n_test_subjects=2)
    assert seeded["split"] == "seeded" and seeded["split_file"] is None and seeded["split_file_sha256"] is None
    assert (pd.read_csv(tmp_path / "seeded" / "data" / "split.csv")["split"] == "seeded").all()


def test_authors_split_keeps_roles_when_a_subject_is_skipped(tmp_path):
    top = brats_cohort(tmp_path / "raw", n=6)
    bad = _break(top / "BraTS2021_00000", "truncated")                        # 2nd training subject of the list
    meta = prepare(tmp_path / "raw", tmp_path / "results", split="authors", split_file=write_order(tmp_path / "o.csv"),
                   n_train_subjects=3, on_bad_subject="skip")
    out = tmp_path / "results" / "data"
    split = pd.read_csv(out / "split.csv").set_index("subject")
    assert split.loc[ORDER, "role"].tolist() == ["train"] * 3 + ["unused"] + ["test"] * 2   # not replaced
    assert split.status["BraTS2021_00000"] == "skipped" and split.n_images["BraTS2021_00000"] == 0
    assert pd.read_csv(out / "skipped.csv").path.tolist() == [str(bad)]
    assert pd.read_csv(out / "train.csv").subject.drop_duplicates().tolist() == [ORDER[0], ORDER[2]]
    assert meta["n_train_subjects"] == 2 and meta["n_skipped"] == 1


@pytest.mark.parametrize("case", ["missing", "extra"])
def test_authors_split_mismatch_names_subjects_and_writes_nothing(tmp_path, case):
    top = brats_cohort(tmp_path / "raw", n=6)
    if case == "missing":
        subjects = ORDER + ["BraTS2021_00042"]
        expected = "1 subject of the list missing from the data folder: BraTS2021_00042"
    else:
        write_subject(top, "BraTS2021_00077", seed=7)
        subjects, expected = ORDER, "1 subject in the data folder not in the list: BraTS2021_00077"
    order_file = write_order(tmp_path / "order.csv", subjects)
    with pytest.raises(data.DataError) as info:
        prepare(tmp_path / "raw", tmp_path / "results", split="authors", split_file=order_file)
    message = str(info.value)
    assert expected in message
    assert str(order_file) in message and str(top) in message                 # the list and the data folder
    assert f"./runall.sh brats21 --data {tmp_path / 'raw'} --set prepare_data.split=seeded" in message
    assert not (tmp_path / "results").exists()                                # nothing written


def test_authors_split_default_list_and_long_mismatch(tmp_path):
    """Without split_file the shipped list of the detected layout is used; a
    long list of differences shows the first few and a count."""
    top = brats_cohort(tmp_path / "raw", n=3, year=2020)
    write_subject(top, "BraTS20_Training_999", ".nii", seed=9)               # not in the authors' 369
    with pytest.raises(data.DataError) as info:
        prepare(tmp_path / "raw", tmp_path / "results", split="authors")
    message = str(info.value)
    shipped = data.authors_split_file("brats2020")
    assert str(shipped) in message and "366 subjects of the list missing from the data folder" in message
    assert "(366 in all)" in message and "BraTS20_Training_123" in message     # first of the authors' order
    assert "1 subject in the data folder not in the list: BraTS20_Training_999" in message
    assert "exactly the 369 subjects" in message and "./runall.sh brats20 --data" in message
    assert not (tmp_path / "results").exists()


def test_split_argument_checked(tmp_path):
    brats_cohort(tmp_path / "raw", n=3)
    with pytest.raises(ValueError, match="split must be one of 'seeded', 'authors', got 'paper'"):
        prepare(tmp_path / "raw", tmp_path / "results", split="paper")
    with pytest.raises(ValueError, match=r"only for the real BraTS 2020/2021 .*use split: seeded"):
        prepare(tmp_path / "raw", tmp_path / "results", source="phantom_brats", split="authors")
    cxr_cohort(tmp_path / "xray")
    with pytest.raises(ValueError, match=r"only for the real BraTS 2020/2021 .*use split: seeded"):
        data.prepare_dataset("cxr", tmp_path / "xray", tmp_path / "results", image_size=8, split="authors",
                             progress=False)
    assert not (tmp_path / "results").exists()


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------

def _break(subject: Path, how: str) -> Path:
    """Damage one subject in place (test data only); returns the file named in the error."""
    t1 = next(subject.glob("*_t1.nii*"))
    if how == "missing":
        target = next(subject.glob("*_flair.nii*"))
        target.unlink()
        return target.parent
    if how == "truncated":
        blob = t1.read_bytes()
        t1.write_bytes(blob[: len(blob) // 2])
        return t1
    if how == "garbage":
        t1.write_bytes(b"this is not a NIfTI file" * 10)
        return t1
    if how == "shape":
        target = next(subject.glob("*_t2.nii*"))
        write_nifti(target, np.ones((SHAPE[0], SHAPE[1], SHAPE[2] + 1), dtype=np.float32))
        return target
    if how == "nan":
        volume = nib.load(str(t1)).get_fdata().astype(np.float32)
        volume[3, 3, 3] = np.nan
        write_nifti(t1, volume)
        return t1
    if how == "zero":
        target = next(subject.glob("*_t1ce.nii*"))
        write_nifti(target, np.zeros(SHAPE, dtype=np.float32))
        return target
    if how == "labels":
        target = next(subject.glob("*_seg.nii*"))
        write_nifti(target, np.full(SHAPE, 7, dtype=np.int16))
        return target
    raise AssertionError(how)


@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
@pytest.mark.parametrize("how,expected", [
    ("missing", "missing FLAIR"), ("truncated", "cannot read"), ("garbage", "cannot read"),
    ("shape", "differs"), ("nan", "NaN"), ("zero", "zero"), ("labels", "labels"),
])
def test_bad_subject_fails_naming_the_file(tmp_path, ext, how, expected):
    top = brats_cohort(tmp_path / "raw", n=3, ext=ext)
    named = _break(top / "BraTS2021_00001", how)
    with pytest.raises(data.DataError, match=expected) as info:
        prepare(tmp_path / "raw", tmp_path / "results", n_test_subjects=1)
    assert str(named) in str(info.value) or named.name in str(info.value)
    assert not list((tmp_path / "results" / "data").glob("*.npy"))      # nothing half-written left


def test_bad_subject_skipped_and_listed(tmp_path):
    top = brats_cohort(tmp_path / "raw", n=4)
    bad = _break(top / "BraTS2021_00002", "nan")
    meta = prepare(tmp_path / "raw", tmp_path / "results", n_test_subjects=1, on_bad_subject="skip", n_workers=2)
    skipped = pd.read_csv(tmp_path / "results" / "data" / "skipped.csv")
    assert skipped.path.tolist() == [str(bad)] and "NaN" in skipped.reason[0]
    assert meta["n_skipped"] == 1 and meta["n_train"] + meta["n_test"] == 3 * len(KEPT)
    split = pd.read_csv(tmp_path / "results" / "data" / "split.csv")
    assert split.set_index("subject").status["BraTS2021_00002"] == "skipped"


def test_empty_and_wrongly_laid_out_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DataLayoutError, match="empty"):
        prepare(tmp_path / "empty", tmp_path / "results")
    flat = tmp_path / "flat"
    flat.mkdir()
    for name, volume in subject_volumes(np.random.default_rng(0)).items():
        write_nifti(flat / f"BraTS2021_00000_{name}.nii.gz", volume)
    with pytest.raises(data.DataLayoutError, match="directly in this folder"):
        prepare(flat, tmp_path / "results")
    top = brats_cohort(tmp_path / "raw", n=3)
    (top / "BraTS2021_00009").mkdir()                                # an empty subject folder
    with pytest.raises(data.DataError, match="BraTS2021_00009"):
        prepare(tmp_path / "raw", tmp_path / "results", n_test_subjects=1)


def test_missing_dataset_tells_where_to_get_it(tmp_path):
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.locate_raw_data("brats", None, dataset="brats20")
    message = str(info.value)
    assert "./runall.sh brats20 --data" in message and "BraTS20_Training_001" in message
    assert "registration" in message
    with pytest.raises(data.DatasetNotFoundError, match="rscbjbr9sj"):
        data.locate_raw_data("cxr", tmp_path / "nowhere", dataset="cxr")
    with pytest.raises(data.DatasetNotFoundError, match="does not exist"):
        data.prepare_dataset("brats", tmp_path / "nowhere", tmp_path / "results", dataset="brats21")


def test_results_inside_raw_folder_refused(tmp_path):
    brats_cohort(tmp_path / "raw", n=3)
    with pytest.raises(ValueError, match="inside the raw data folder"):
        prepare(tmp_path / "raw", tmp_path / "raw" / "results", n_test_subjects=1)


# --------------------------------------------------------------------------
# Chest x-ray
# --------------------------------------------------------------------------

CXR_FILES = {
    ("train", "PNEUMONIA"): ["person1_bacteria_1.jpeg", "person1_virus_6.jpeg", "person2_bacteria_3.jpeg",
                             "person3_virus_9.jpeg", "person4_bacteria_10.jpeg"],
    ("test", "PNEUMONIA"): ["person5_bacteria_11.jpeg", "person2_bacteria_4.jpeg"],
    ("train", "NORMAL"): ["IM-0115-0001.jpeg", "IM-0115-0002.jpeg", "IM-0117-0001.jpeg",
                          "NORMAL2-IM-0115-0001.jpeg", "IM-0120-0001.jpeg"],
    ("val", "NORMAL"): ["NORMAL2-IM-1427-0001.jpeg", "IM-0122-0001.jpeg"],
}


def cxr_cohort(root: Path) -> Path:
    top = root / "chest_xray"
    rng = np.random.default_rng(0)
    for i, ((split, label), names) in enumerate(CXR_FILES.items()):
        folder = top / split / label
        folder.mkdir(parents=True)
        for j, name in enumerate(names):
            pixels = rng.integers(0, 256, size=(30 + 3 * j, 40), dtype=np.uint8)  # landscape, odd sizes
            image = Image.fromarray(pixels)
            if (i + j) % 2:
                image = Image.merge("RGB", (image, image, image))                  # some stored as RGB
            image.save(folder / name, quality=95)
    (top / "train" / "NORMAL" / ".DS_Store").write_bytes(b"\0")
    return top


def test_parse_cxr_patient():
    assert data.parse_cxr_patient("person1_bacteria_1.jpeg") == "person1"
    assert data.parse_cxr_patient("person1_virus_6.jpeg") == "person1"
    assert data.parse_cxr_patient("person1000_bacteria_2931.jpeg") == "person1000"
    assert data.parse_cxr_patient("IM-0115-0001.jpeg") == "IM-0115"
    assert data.parse_cxr_patient("NORMAL2-IM-1427-0001.jpeg") == "NORMAL2-IM-1427"
    assert data.parse_cxr_patient("/x/y/IM-0115-0002.jpeg") == "IM-0115"
    with pytest.raises(data.DataError, match="scan_7.jpeg"):
        data.parse_cxr_patient("scan_7.jpeg")


@pytest.mark.parametrize("name, patient", [
    ("person1_bacteria_1.jpeg", "person1"),
    ("person1_virus_6.jpeg", "person1"),
    ("person1946_bacteria_4874.jpeg", "person1946"),
    ("IM-0115-0001.jpeg", "IM-0115"),
    ("NORMAL2-IM-0012-0001.jpeg", "NORMAL2-IM-0012"),
    ("train/NORMAL/IM-0001-0001.jpeg", "IM-0001"),
    ("im-0115-0001.JPG", "im-0115"),                  # any case, any image extension
    ("person7_virus_12.png", "person7"),
])
def test_one_cxr_patient_parser(name, patient):
    """The reader and the phantom generator share one parser of Kermany names."""
    from helpers import phantom

    assert phantom.cxr_patient_id is data.parse_cxr_patient
    assert data.parse_cxr_patient(name) == patient


@pytest.mark.parametrize("name", ["scan_7.jpeg", "IM-0115.jpeg", "person3.jpeg", "xperson3_virus_1.jpeg"])
def test_cxr_patient_parser_names_the_file(name):
    with pytest.raises(data.DataError, match=name.replace(".", r"\.")) as err:
        data.parse_cxr_patient(f"/raw/train/NORMAL/{name}")
    assert err.value.path == f"/raw/train/NORMAL/{name}" and "expected person<N>_bacteria_<k>.jpeg" in err.value.reason


def test_load_cxr_image_rgb_and_crop(tmp_path):
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, 10:30] = (255, 0, 0)                         # the centre square is pure red
    Image.fromarray(pixels).save(tmp_path / "a.png")
    image, size = data.load_cxr_image(tmp_path / "a.png", 20)
    assert size == (40, 20) and image.shape == (20, 20) and image.dtype == np.uint8
    assert np.all(image == 76)                             # luma of red: 255 * 299/1000 → 76
    small, _ = data.load_cxr_image(tmp_path / "a.png", 5)
    assert small.shape == (5, 5)


def test_prepare_cxr_patient_disjoint(tmp_path):
    cxr_cohort(tmp_path / "raw")
    before = listing(tmp_path / "raw")
    meta = data.prepare_dataset("cxr", tmp_path / "raw", tmp_path / "results", image_size=16, test_fraction=0.3,
                                seed=1, n_workers=2, progress=False, dataset="cxr")
    assert listing(tmp_path / "raw") == before
    out = tmp_path / "results" / "data"
    train, test = np.load(out / "train.npy", mmap_mode="r"), np.load(out / "test.npy", mmap_mode="r")
    assert train.shape[1:] == (1, 16, 16) and meta["channels"] == ["gray"]
    n_files = sum(len(v) for v in CXR_FILES.values())
    assert len(train) + len(test) == n_files
    tables = {r: pd.read_csv(out / f"{r}.csv", keep_default_na=False) for r in ("train", "test")}
    assert set(tables["train"].subject).isdisjoint(tables["test"].subject)
    assert set(tables["test"].label) == {"NORMAL", "PNEUMONIA"}                     # both classes held out
    assert (tables["train"].slice == -1).all() and tables["train"]["index"].tolist() == list(range(len(train)))
    person1 = tables["train"].subject.eq("person1").sum() + tables["test"].subject.eq("person1").sum()
    assert person1 == 2                                    # both images of one patient on the same side
    row = tables["test"].iloc[0]
    expected, _ = data.load_cxr_image(Path(meta["raw_dir"]) / row.source, 16)
    assert np.array_equal(test[0, 0], expected)

    again = data.prepare_dataset("cxr", tmp_path / "raw", tmp_path / "again", image_size=16, test_fraction=0.3,
                                 seed=1, n_workers=0, progress=False)
    assert again["n_test"] == meta["n_test"]
    assert np.array_equal(np.load(tmp_path / "again" / "data" / "test.npy"), np.asarray(test))


def test_cxr_bad_jpeg_fails_or_is_skipped(tmp_path):
    top = cxr_cohort(tmp_path / "raw")
    broken = top / "train" / "NORMAL" / "IM-0117-0001.jpeg"
    broken.write_bytes(broken.read_bytes()[:200])           # truncated JPEG
    with pytest.raises(data.DataError, match="IM-0117-0001.jpeg"):
        data.prepare_dataset("cxr", tmp_path / "raw", tmp_path / "results", image_size=8, test_fraction=0.3,
                             progress=False, n_workers=0)
    meta = data.prepare_dataset("cxr", tmp_path / "raw", tmp_path / "results", image_size=8, test_fraction=0.3,
                                progress=False, n_workers=0, on_bad_subject="skip")
    skipped = pd.read_csv(tmp_path / "results" / "data" / "skipped.csv")
    assert skipped.path.tolist() == [str(broken)] and meta["n_train"] + meta["n_test"] == 13


def test_cxr_wrong_layout(tmp_path):
    (tmp_path / "raw" / "images").mkdir(parents=True)
    with pytest.raises(data.DataLayoutError, match="NORMAL,PNEUMONIA"):
        data.prepare_dataset("cxr", tmp_path / "raw", tmp_path / "results", image_size=8, progress=False)


# --------------------------------------------------------------------------
# The .npy writer
# --------------------------------------------------------------------------

def test_npy_appender_publishes_atomically(tmp_path):
    target = tmp_path / "x.npy"
    blocks = [np.full((n, 2, 3, 3), n, dtype=np.uint8) for n in (3, 0, 5)]
    with data.NpyAppender(target, (2, 3, 3)) as writer:
        for block in blocks:
            writer.append(block)
        assert not target.exists()                          # only the temporary file so far
        writer.commit()
    loaded = np.load(target, mmap_mode="r")
    assert np.array_equal(loaded, np.concatenate(blocks)) and os.listdir(tmp_path) == ["x.npy"]
    with pytest.raises(RuntimeError):
        with data.NpyAppender(tmp_path / "y.npy", (1,)) as writer:
            writer.append(np.zeros((2, 1), np.uint8))
            raise RuntimeError("crash")
    assert os.listdir(tmp_path) == ["x.npy"]                # the aborted file is gone


# --------------------------------------------------------------------------
# End to end on the phantom cohorts (helpers.phantom writes the real formats)
# --------------------------------------------------------------------------

def test_end_to_end_on_brain_phantom(tmp_path):
    raw = phantom.locate_raw_data("phantom_brats", None, phantom_kind="brats2020", phantom_cache=tmp_path / "cache",
                               phantom_sizes={"n_subjects": 3, "shape": [40, 40, 28]})
    assert raw.name == "MICCAI_BraTS2020_TrainingData"
    before = listing(raw)
    meta = data.prepare_dataset("phantom_brats", raw, tmp_path / "results", image_size=16, pad_to=48,
                                n_test_subjects=1, progress=False, dataset="phantom")
    assert listing(raw) == before
    assert meta["layout"] == "brats2020" and meta["n_train_subjects"] == 2 and meta["n_test_subjects"] == 1
    train, table = data.load_split(tmp_path / "results", "train")
    assert train.shape == (meta["n_train"], 5, 16, 16) and 0 < meta["n_train"] < 2 * 28
    fractions = pd.read_csv(tmp_path / "results" / "data" / "slice_fractions.csv")
    kept = fractions[fractions.kept]
    assert (kept.brain_fraction > 0.15).all() and (fractions[~fractions.kept].brain_fraction <= 0.15).all()
    assert set(np.unique(train[:, 4])) <= {0, 51, 102, 204}
    counts = data.split_counts(tmp_path / "results")
    assert counts.set_index("split").images.to_dict() == {"train": meta["n_train"], "test": meta["n_test"]}


def test_end_to_end_on_xray_phantom(tmp_path):
    raw = phantom.locate_raw_data("phantom_cxr", None, phantom_cache=tmp_path / "cache",
                               phantom_sizes={"n_normal": 8, "n_pneumonia": 8, "width_range": [64, 96]})
    meta = data.prepare_dataset("phantom_cxr", raw, tmp_path / "results", image_size=32, test_fraction=0.25,
                                progress=False)
    assert meta["n_train"] + meta["n_test"] == 16 and meta["channels"] == ["gray"]
    tables = {r: data.load_split(tmp_path / "results", r)[1] for r in ("train", "test")}
    assert set(tables["train"].subject).isdisjoint(tables["test"].subject)
    counts = data.split_counts(tmp_path / "results")
    assert set(counts.label) == {"NORMAL", "PNEUMONIA"} and counts.images.sum() == 16


def test_image_size_above_pad_to_is_refused_with_every_channel_choice(tmp_path):
    brats_cohort(tmp_path / "raw", n=3)
    for channels in (None, ["T1", "T2"]):
        with pytest.raises(ValueError, match=f"image_size={PAD + 1} is larger than pad_to={PAD}"):
            prepare(tmp_path / "raw", tmp_path / "results", image_size=PAD + 1, channels=channels)
    assert not (tmp_path / "results").exists()
