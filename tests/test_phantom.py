"""The embedded phantom cohort: faithful on-disk formats, plausible anatomy
and contrasts, determinism, and the generate-once cache."""

from __future__ import annotations

import re
import time
from collections import defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from helpers import common, phantom

SMALL = (96, 96, 64)        # a miniature brain: fast, same code path


def _read(path: Path) -> np.ndarray:
    img = nib.load(path)
    assert img.get_data_dtype() == np.int16, f"{path}: stored as {img.get_data_dtype()}"
    return np.asanyarray(img.dataobj)


def _subject(folder: Path) -> dict[str, np.ndarray]:
    files = {f.name.split("_")[-1].split(".")[0]: f for f in folder.iterdir()}
    return {name: _read(files[name]) for name in phantom.BRATS_FILES}


@pytest.fixture(scope="module")
def brats21(tmp_path_factory) -> Path:
    return phantom.make_brats_cohort(tmp_path_factory.mktemp("b21"), 3, seed=0, shape=SMALL,
                                     progress=False)


@pytest.fixture(scope="module")
def cxr(tmp_path_factory) -> Path:
    return phantom.make_cxr_cohort(tmp_path_factory.mktemp("cxr"), n_normal=12, n_pneumonia=18,
                                   seed=0, progress=False)


# -------------------------------------------------------------------- BraTS

def test_brats2021_layout_and_format(brats21):
    subjects = sorted(p.name for p in brats21.iterdir() if p.is_dir())
    assert subjects == ["BraTS2021_00000", "BraTS2021_00001", "BraTS2021_00002"]
    for subject in subjects:
        names = sorted(p.name for p in (brats21 / subject).iterdir())
        assert names == sorted(f"{subject}_{m}.nii.gz" for m in phantom.BRATS_FILES)
        img = nib.load(brats21 / subject / f"{subject}_flair.nii.gz")
        assert img.shape == SMALL
        np.testing.assert_array_equal(img.affine, phantom.brats_affine(SMALL))
        assert np.allclose(img.header.get_zooms(), 1.0)
        volumes = _subject(brats21 / subject)
        for name in phantom.BRATS_MODALITIES:
            vol = volumes[name]
            assert vol.min() == 0 and vol[0, 0, 0] == 0 and vol.max() > 100
            brain = vol > 0
            assert 0.05 < brain.mean() < 0.6, "brain fills part of the grid, background is 0"


def test_brats2020_layout_uncompressed(tmp_path):
    root = phantom.make_brats_cohort(tmp_path, 2, layout="2020", shape=SMALL, progress=False)
    assert root == tmp_path / "MICCAI_BraTS2020_TrainingData"
    assert sorted(p.name for p in root.iterdir()) == ["BraTS20_Training_001", "BraTS20_Training_002"]
    for m in phantom.BRATS_FILES:
        path = root / "BraTS20_Training_001" / f"BraTS20_Training_001_{m}.nii"
        assert path.read_bytes()[:2] != b"\x1f\x8b", f"{path} must not be gzipped"
        assert _read(path).shape == SMALL


def test_default_shape_subject(tmp_path):
    root = phantom.make_brats_cohort(tmp_path, 1, progress=False)
    volumes = _subject(root / "BraTS2021_00000")
    maxima = []
    for name in phantom.BRATS_MODALITIES:
        vol = volumes[name]
        assert vol.shape == phantom.BRATS_SHAPE and vol.dtype == np.int16
        maxima.append(int(vol.max()))
        assert 100 < vol.max() < 8000, f"{name}: BraTS-like range, max {vol.max()}"
    assert len(set(maxima)) == len(maxima), "each modality has its own scale"
    # As the authors' slicing: enough axial slices with > 15 % of pixels T1 > 50 of 255.
    t1 = volumes["t1"] / volumes["t1"].max() * 255
    kept = ((t1 > 50).mean(axis=(0, 1)) > 0.15).sum()
    assert 40 < kept < 155
    assert set(np.unique(volumes["seg"])) == set(phantom.SEG_LABELS)


def test_labels_nested_and_inside_brain(brats21):
    ball = ndimage.generate_binary_structure(3, 1)
    for folder in sorted(p for p in brats21.iterdir() if p.is_dir()):
        vol = _subject(folder)
        seg = vol["seg"]
        assert set(np.unique(seg)) == {0, 1, 2, 4}, folder.name
        necrotic, core, whole = seg == 1, np.isin(seg, (1, 4)), seg > 0
        assert not (ndimage.binary_dilation(necrotic, ball) & ~core).any(), "necrosis inside the rim"
        assert not (ndimage.binary_dilation(core, ball) & ~whole).any(), "core inside the oedema"
        assert not (whole & (vol["t1"] == 0)).any(), "tumour inside the brain"


def test_tumours_vary_in_side_position_and_size():
    centres, sizes = [], []
    for i in range(8):
        seg = phantom.brain._brats_subject(i, 0, "2021", SMALL)["seg"]
        centres.append(np.argwhere(seg > 0).mean(0))
        sizes.append((seg > 0).sum())
    mid = (SMALL[0] - 1) / 2
    sides = {bool(c[0] < mid) for c in centres}
    assert sides == {True, False}, "tumours in both hemispheres"
    assert min(abs(c[0] - mid) for c in centres) > 2, "off the midline"
    assert np.std(sizes) > 0.2 * np.mean(sizes)
    assert np.ptp(np.array(centres)[:, 2]) > 3


def test_modalities_have_brats_contrasts(brats21):
    vol = _subject(brats21 / "BraTS2021_00000")
    seg = vol["seg"]
    healthy = (vol["t1"] > 0) & (seg == 0)
    rel = {m: vol[m][healthy] / np.median(vol[m][healthy]) for m in phantom.BRATS_MODALITIES}
    csf = rel["t2"] > np.quantile(rel["t2"], 0.95)          # brightest on T2: CSF
    assert rel["t1"][csf].mean() < 0.75 and rel["flair"][csf].mean() < 0.75
    wm = rel["t1"] > np.quantile(rel["t1"], 0.8)             # brightest on T1: white matter
    assert rel["t2"][wm].mean() < 1.0
    assert np.corrcoef(rel["t1"], rel["t2"])[0, 1] < 0
    assert np.corrcoef(rel["t1"], rel["t1ce"])[0, 1] > 0.5
    med = {m: np.median(vol[m][healthy]) for m in phantom.BRATS_MODALITIES}
    assert vol["t1ce"][seg == 4].mean() > 1.3 * med["t1ce"], "enhancing rim bright on T1ce"
    assert vol["flair"][seg == 2].mean() > 1.3 * med["flair"], "oedema bright on FLAIR"
    assert vol["t1ce"][seg == 1].mean() < vol["t1ce"][seg == 4].mean(), "necrosis dark inside the rim"


def test_brats_deterministic_and_subjects_differ(brats21, tmp_path):
    again = phantom.make_brats_cohort(tmp_path / "again", 2, seed=0, shape=SMALL, progress=False)
    other = phantom.make_brats_cohort(tmp_path / "other", 1, seed=1, shape=SMALL, progress=False)
    first = _subject(brats21 / "BraTS2021_00000")
    same = _subject(again / "BraTS2021_00000")
    for name in phantom.BRATS_FILES:
        assert first[name].tobytes() == same[name].tobytes(), name
    assert _subject(brats21 / "BraTS2021_00001")["t1"].tobytes() == \
        _subject(again / "BraTS2021_00001")["t1"].tobytes()
    different = _subject(other / "BraTS2021_00000")
    second = _subject(brats21 / "BraTS2021_00001")
    for vol in (different, second):
        assert not np.array_equal(vol["seg"], first["seg"])
        both = (vol["t1"] > 0) & (first["t1"] > 0)
        assert (vol["t1"] > 0).sum() != (first["t1"] > 0).sum()
        assert np.corrcoef(vol["t1"][both], first["t1"][both])[0, 1] < 0.99


def test_brats_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="layout"):
        phantom.make_brats_cohort(tmp_path, 1, layout="2019")
    with pytest.raises(ValueError, match="shape"):
        phantom.make_brats_cohort(tmp_path, 1, shape=(8, 8))


# --------------------------------------------------------------- chest x-ray

def _cxr_files(root: Path) -> list[Path]:
    return sorted(root.glob("*/*/*.jpeg"))


def test_cxr_layout_and_names(cxr):
    assert cxr.name == "chest_xray"
    files = _cxr_files(cxr)
    assert len(files) == 30
    assert {f.parent.parent.name for f in files} == {"train", "test"}
    normal = re.compile(r"^(NORMAL2-)?IM-\d{4}-\d{4}\.jpeg$")
    pneumonia = re.compile(r"^person\d+_(bacteria|virus)_\d+\.jpeg$")
    counts = defaultdict(int)
    for f in files:
        cls = f.parent.name
        counts[cls] += 1
        assert (normal if cls == "NORMAL" else pneumonia).match(f.name), f
    assert counts == {"NORMAL": 12, "PNEUMONIA": 18}
    for split in ("train", "test"):
        assert len(list((cxr / split).glob("*/*.jpeg"))) > 0


def test_cxr_patient_ids():
    assert phantom.cxr_patient_id("IM-0115-0001.jpeg") == "IM-0115"
    assert phantom.cxr_patient_id("x/NORMAL2-IM-1427-0001.jpeg") == "NORMAL2-IM-1427"
    assert phantom.cxr_patient_id("person1_bacteria_1.jpeg") == "person1"
    assert phantom.cxr_patient_id("person1_virus_6.jpeg") == "person1"
    with pytest.raises(ValueError, match="cannot tell the patient"):
        phantom.cxr_patient_id("scan_7.jpeg")


def test_cxr_patient_parser_is_the_readers_and_reads_every_phantom_name():
    """One parser for generator and reader: every name the phantom can write
    gives back the patient it was written for."""
    from helpers import data

    assert phantom.cxr_patient_id is data.parse_cxr_patient
    for cls in phantom.CXR_CLASSES:
        for seed in range(3):
            patients = phantom.chest._cxr_patients(np.random.default_rng(seed), cls, 200)
            for images in patients:
                for image in images:
                    assert data.parse_cxr_patient(image.name) == image.patient, image.name


def test_cxr_patients_stay_in_one_split(cxr):
    splits_of = defaultdict(set)
    for f in _cxr_files(cxr):
        splits_of[phantom.cxr_patient_id(f)].add(f.parent.parent.name)
    assert all(len(s) == 1 for s in splits_of.values())
    patients = phantom.chest._cxr_patients(np.random.default_rng(0), "PNEUMONIA", 60)
    assert sum(len(p) for p in patients) == 60
    assert max(len(p) for p in patients) > 1, "some patients have several images"
    assert all({phantom.cxr_patient_id(i.name) for i in p} == {p[0].patient} for p in patients)
    splits = phantom.chest._assign_splits(np.random.default_rng(0), patients, [0.8, 0.2])
    sizes = [sum(len(p) for p in s) for s in splits]
    assert sizes[0] > sizes[1] > 0


def test_cxr_modes_and_sizes(cxr):
    modes, sizes = defaultdict(int), set()
    for f in _cxr_files(cxr):
        with Image.open(f) as img:
            assert img.format == "JPEG"
            modes[img.mode] += 1
            sizes.add(img.size)
            assert 800 <= img.size[0] <= 1600
    assert set(modes) == {"L", "RGB"} and modes["L"] > modes["RGB"] >= 1
    assert len(sizes) > 20
    assert len({round(w / h, 1) for w, h in sizes}) > 2, "different aspect ratios"


def test_cxr_images_look_like_chests():
    rng = np.random.default_rng(3)
    img = np.asarray(phantom.chest._cxr_image(rng, "normal", (800, 800)), np.float32)
    h, w = img.shape
    lungs = img[int(0.35 * h):int(0.55 * h), int(0.2 * w):int(0.35 * w)].mean()
    spine = img[int(0.35 * h):int(0.55 * h), int(0.47 * w):int(0.53 * w)].mean()
    corner = img[: h // 10, : w // 10].mean()
    assert lungs < spine, "lung fields darker than the mediastinum"
    assert corner < spine
    assert img.std() > 20


def test_cxr_deterministic(tmp_path):
    def make(name, seed):
        return phantom.make_cxr_cohort(tmp_path / name, n_normal=3, n_pneumonia=4, seed=seed,
                                       width_range=(300, 400), progress=False)

    first, again, other = make("a", 0), make("b", 0), make("c", 1)
    names = [f.relative_to(first) for f in _cxr_files(first)]
    assert [f.relative_to(again) for f in _cxr_files(again)] == names
    for rel in names:
        with Image.open(first / rel) as a, Image.open(again / rel) as b:
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    assert [f.relative_to(other) for f in _cxr_files(other)] != names


# -------------------------------------------------------------------- cache

def test_ensure_phantom_caches_and_regenerates(tmp_path, capsys, monkeypatch):
    path = phantom.ensure_phantom("brats2021", cache_root=tmp_path, n_subjects=1, shape=SMALL,
                                  progress=False)
    assert "generated" in capsys.readouterr().out
    folder = path
    assert folder.parent == tmp_path and folder.name.startswith("brats2021-")
    marker = common.read_json(folder / phantom.MARKER)
    assert marker["params"]["n_subjects"] == 1 and marker["params"]["shape"] == list(SMALL)
    stamp = (folder / "BraTS2021_00000" / "BraTS2021_00000_t1.nii.gz").stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("regenerated")

    monkeypatch.setattr(phantom.brain, "_brats_subject", fail)
    start = time.perf_counter()
    assert phantom.ensure_phantom("brats2021", cache_root=tmp_path, n_subjects=1, shape=SMALL) == path
    assert time.perf_counter() - start < 1.0
    assert "reused" in capsys.readouterr().out
    assert (folder / "BraTS2021_00000" / "BraTS2021_00000_t1.nii.gz").stat().st_mtime_ns == stamp
    monkeypatch.undo()

    other = phantom.ensure_phantom("brats2021", cache_root=tmp_path, n_subjects=2, shape=SMALL,
                                   progress=False)
    assert other != path and (other / "BraTS2021_00001").is_dir()
    seeded = phantom.ensure_phantom("brats2021", cache_root=tmp_path, seed=5, n_subjects=1,
                                    shape=SMALL, progress=False)
    assert seeded not in (path, other)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (path, other, seeded))


def test_ensure_phantom_layouts_and_relative_root(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "repo_root", lambda: tmp_path)
    b20 = phantom.ensure_phantom("brats2020", cache_root="cache", n_subjects=1, shape=SMALL,
                                 progress=False)
    assert b20.name == "MICCAI_BraTS2020_TrainingData"
    assert b20.parent.parent == tmp_path / "cache"
    assert (b20.parent / phantom.MARKER).is_file()
    chest = phantom.ensure_phantom("cxr", cache_root="cache", n_normal=2, n_pneumonia=3,
                                   progress=False)
    assert chest.name == "chest_xray" and len(_cxr_files(chest)) == 5


def test_ensure_phantom_is_atomic(tmp_path, monkeypatch):
    real = phantom.brain._brats_subject

    def crash(index, *args):
        if index == 1:
            raise RuntimeError("disk full")
        return real(index, *args)

    monkeypatch.setattr(phantom.brain, "_brats_subject", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        phantom.ensure_phantom("brats2021", cache_root=tmp_path, n_subjects=2, shape=SMALL,
                               progress=False)
    assert list(tmp_path.iterdir()) == [], "no half-made cohort, no temporary folder left"


def test_ensure_phantom_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown phantom kind"):
        phantom.ensure_phantom("brats2019", cache_root=tmp_path)
    with pytest.raises(TypeError, match="n_subjects"):
        phantom.ensure_phantom("cxr", cache_root=tmp_path, n_subjects=3)
    with pytest.raises(TypeError, match="layout"):
        phantom.ensure_phantom("brats2021", cache_root=tmp_path, layout="2020")
