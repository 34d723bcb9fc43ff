"""The audit command (python -m helpers.audit) on folders of PNGs, and
the study tables of notebook 05 on a tiny results folder made here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter
from scipy.stats import pearsonr

from helpers import audit, common, config, correlation, figures

RNG = np.random.default_rng(7)


def smooth(n, size=24, channels=1):
    field = gaussian_filter(RNG.random((n, channels, size, size)), sigma=(0, 0, 2, 2))
    lo = field.min(axis=(1, 2, 3), keepdims=True)
    hi = field.max(axis=(1, 2, 3), keepdims=True)
    return np.rint(255 * (field - lo) / (hi - lo)).astype(np.uint8)


def write_pngs(folder: Path, images: np.ndarray, prefix: str = "img") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, im in enumerate(images):
        path = folder / f"{prefix}_{i:03d}.png"
        Image.fromarray(im[0]).save(path)
        paths.append(path)
    return paths


@pytest.fixture()
def folders(tmp_path):
    train = smooth(30)
    test = smooth(8)
    synthetic = np.concatenate([train[[4, 21]], smooth(5)])
    synthetic[2] = 128  # a blank image
    return {
        "train": (tmp_path / "train", train, write_pngs(tmp_path / "train", train, "tr")),
        "test": (tmp_path / "test", test, write_pngs(tmp_path / "test", test, "te")),
        "synthetic": (tmp_path / "syn", synthetic, write_pngs(tmp_path / "syn", synthetic, "syn")),
    }


def test_audit_command_on_png_folders(folders, tmp_path, capsys):
    out = tmp_path / "audit"
    rc = audit.main(["--synthetic", str(folders["synthetic"][0]), "--training", str(folders["train"][0]),
                         "--test", str(folders["test"][0]), "--top-k", "3", "--out", str(out), "--quiet",
                         "--backend", "numpy"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "7 synthetic × 30 training images" in printed
    assert "Wilson 95 % CI" in printed
    assert (out / "summary.json").is_file()
    for name in ("matches_synthetic.csv", "topk_synthetic.csv", "baseline.csv", "thresholds.csv",
                 "exceedances.csv"):
        assert (out / "all" / name).is_file(), name
    m = pd.read_csv(out / "all" / "matches_synthetic.csv")
    assert m.loc[0, "train_file"] == "tr_004.png" and m.loc[1, "train_file"] == "tr_021.png"
    assert m.loc[0, "correlation"] == 1.0 and m.loc[0, "synthetic_file"] == "syn_000.png"
    assert bool(m.loc[2, "constant"]) and np.isnan(m.loc[2, "correlation"])
    syn = folders["synthetic"][1].reshape(7, -1).astype(float)
    tra = folders["train"][1].reshape(30, -1).astype(float)
    for i in (3, 4, 5, 6):
        ref = max(pearsonr(syn[i], t)[0] for t in tra)
        assert abs(m.loc[i, "correlation"] - ref) < 1e-5
    top = pd.read_csv(out / "all" / "topk_synthetic.csv")
    assert len(top) == 6 * 3
    th = pd.read_csv(out / "all" / "thresholds.csv")
    assert th["name"].tolist() == ["fixed_0.90", "fixed_0.95", "fixed_0.99", "baseline_p95", "baseline_p99"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["headline"] == "all" and summary["measures"] == ["all"]  # one grayscale channel
    info = audit.measure_summary(summary)
    assert summary["n_synthetic"] == 7 and summary["n_test"] == 8 and info["baseline"]["n"] == 8
    exc = info["models"]["synthetic"]["exceedances"]["fixed_0.99"]
    assert exc["n_above"] == 2
    wlo, whi = audit.wilson_interval(2, 6)  # 7 images, one constant (no correlation)
    assert exc["wilson_low"] == pytest.approx(wlo)
    assert exc["wilson_high"] == pytest.approx(whi)
    assert summary["backend"] == "numpy"


def test_audit_command_runs_as_a_module_on_npy(tmp_path):
    tra, syn = smooth(10), smooth(4)
    np.save(tmp_path / "t.npy", tra)
    np.save(tmp_path / "s.npy", syn)
    proc = subprocess.run([sys.executable, "-m", "helpers.audit", "--synthetic", str(tmp_path / "s.npy"),
                           "--training", str(tmp_path / "t.npy"), "--out", str(tmp_path / "o"), "--quiet"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(pd.read_csv(tmp_path / "o" / "all" / "matches_synthetic.csv")) == 4
    assert not (tmp_path / "o" / "all" / "baseline.csv").exists()


@pytest.mark.parametrize("problem", ["empty", "mixed", "unreadable", "missing", "mismatch"])
def test_audit_command_names_the_bad_input(problem, folders, tmp_path, capsys):
    syn_dir = folders["synthetic"][0]
    expect = None
    if problem == "empty":
        syn_dir = tmp_path / "empty"
        syn_dir.mkdir()
        expect = str(syn_dir)
    elif problem == "mixed":
        Image.fromarray(np.zeros((10, 12), np.uint8)).save(syn_dir / "zz_small.png")
        expect = "zz_small.png"
    elif problem == "unreadable":
        (syn_dir / "zz_broken.png").write_bytes(b"not a png at all")
        expect = "zz_broken.png"
    elif problem == "missing":
        syn_dir = tmp_path / "nowhere"
        expect = "nowhere"
    else:  # same files, different size from the training set
        syn_dir = tmp_path / "big"
        write_pngs(syn_dir, smooth(2, size=32))
        expect = "are 1×32×32 but training images"
    rc = audit.main(["--synthetic", str(syn_dir), "--training", str(folders["train"][0]), "--quiet",
                         "--out", str(tmp_path / "o")])
    assert rc == 2
    assert expect in capsys.readouterr().err


def test_folder_source_equals_array(folders):
    folder, array, _ = folders["train"]
    images = correlation.open_images(folder)
    assert images.n == 30 and images.shape == (1, 24, 24) and images.names[0] == "tr_000.png"
    np.testing.assert_array_equal(images.read(3, 9), array[3:9].reshape(6, -1))
    np.testing.assert_array_equal(images.take([9, 2, 9]), array[[9, 2, 9]].reshape(3, -1))


# --------------------------------------------------------------------------
# The study tables (notebook 05) on a tiny fake results folder
# --------------------------------------------------------------------------

def fake_results(root: Path, models=("stylegan",), channels=("t1", "flair")) -> Path:
    """BraTS-like: subjects with consecutive axial slices; channel "seg" (when
    asked for) is a label map that is all zero on most slices."""
    data = root / "data"
    data.mkdir(parents=True)
    (root / "samples").mkdir()
    c = len(channels)

    def cohort(n_subjects, prefix, slices=(20, 21, 22, 24, 25)):
        images, rows = [], []
        for s in range(n_subjects):
            vol = smooth(len(slices), size=16, channels=c)
            for z, im in zip(slices, vol):
                images.append(im)
                rows.append({"subject": f"{prefix}{s:02d}", "slice": z, "label": "", "source": f"{prefix}{s}.nii"})
        return np.stack(images), pd.DataFrame(rows)

    train, train_meta = cohort(6, "tr")
    test, test_meta = cohort(2, "te")
    if "seg" in channels:  # tumour labels on every third slice only
        k = list(channels).index("seg")
        for arr in (train, test):
            arr[:, k] = np.where(arr[:, k] > 200, 102, 0).astype(np.uint8)
            arr[np.arange(len(arr)) % 3 != 0, k] = 0
    train[7] = 0  # a blank slice
    np.save(data / "train.npy", train)
    np.save(data / "test.npy", test)
    train_meta.to_csv(data / "train.csv", index=False)
    test_meta.to_csv(data / "test.csv", index=False)
    (data / "meta.json").write_text(json.dumps({"dataset": "phantom", "channels": list(channels)}))
    for model in models:
        samples = smooth(9, size=16, channels=c)
        samples[0] = train[12]  # subject tr02, slice 22: neighbours 21 and 24
        samples[1] = 3
        np.save(root / "samples" / f"{model}.npy", samples)
        pd.DataFrame({"index": range(9), "seed": range(2, 11)}).to_csv(root / "samples" / f"{model}_seeds.csv",
                                                                       index=False)
    return root


def test_neighbour_slices():
    meta = pd.DataFrame({"subject": ["a", "a", "b", "a", "b", "c"], "slice": [5, 7, 1, 6, 2, -1]})
    prev, nxt = audit.neighbour_slices(meta)
    assert prev.tolist() == [-1, 3, -1, 0, 2, -1]
    assert nxt.tolist() == [3, -1, 4, 1, -1, -1]


def test_study_tables(tmp_path):
    root = fake_results(tmp_path / "phantom", models=("stylegan",))
    assert audit.available_models(root) == ["stylegan"]
    data = audit.load_study_data(root, ["stylegan", "diffusion"])
    assert data.channel_names == ["t1", "flair"] and data.train.shape == (2, 16, 16) and data.n_train_subjects == 6
    assert list(data.synthetic) == ["stylegan"]
    images, seeds = data.synthetic["stylegan"]
    groups = {"flair": ["flair"]}
    log = audit.RunLog()
    res = log.add("stylegan", audit.run_engine(images, data.train, groups, k=3, progress=False))["flair"]
    table = audit.add_adjacent_slices(audit.match_table(res, data.train_meta, seeds), images, data.train,
                                          data.train_meta, ["flair"])
    out = root / "correlation" / "flair"
    common.write_csv(out / "matches_stylegan.csv", table)
    common.write_csv(out / "topk_stylegan.csv", audit.topk_table(res))
    expected = ["synthetic_index", "seed", "train_index", "correlation", "subject", "slice",
                "prev_correlation", "next_correlation", "constant"]
    assert set(expected) <= set(pd.read_csv(out / "matches_stylegan.csv").columns)
    assert list(pd.read_csv(out / "topk_stylegan.csv").columns) == ["synthetic_index", "rank", "train_index",
                                                                    "correlation"]
    row = table.iloc[0]
    assert (row.train_index, row.subject, row.slice, row.seed, row.correlation) == (12, "tr02", 22, 2, 1.0)
    assert (row.prev_index, row.next_index, row.prev_slice, row.next_slice) == (11, 13, 21, 24)
    train = np.load(root / "data" / "train.npy")
    samples = np.load(root / "samples" / "stylegan.npy")
    ref = pearsonr(samples[0, 1].ravel().astype(float), train[11, 1].ravel().astype(float))[0]
    assert abs(row.prev_correlation - ref) < 1e-12
    assert bool(table.loc[1, "constant"]) and np.isnan(table.loc[1, "correlation"])
    assert np.isnan(table.loc[1, "prev_correlation"])

    baseline_res = log.add("baseline", audit.run_engine(data.test, data.train, groups, progress=False))["flair"]
    baseline = audit.baseline_table(baseline_res, data.test_meta, data.train_meta)
    assert list(baseline.columns[:6]) == ["test_index", "test_subject", "train_index", "correlation", "subject",
                                          "slice"]
    assert not set(baseline["test_subject"]) & set(data.train_meta["subject"])
    thresholds = audit.compute_thresholds(audit.valid_correlations(baseline))
    assert list(thresholds) == ["fixed_0.90", "fixed_0.95", "fixed_0.99", "baseline_p95", "baseline_p99"]
    assert thresholds["baseline_p95"] <= thresholds["baseline_p99"] <= baseline["correlation"].max()

    images_c, control = audit.make_control(data.train, 8, seed=0)
    control_set = data.images(images_c)
    control_res = log.add("control", audit.run_engine(control_set, data.train, groups, progress=False))["flair"]
    control_tab = audit.control_table(control_res, control, control_set, data.train, data.train_meta, ["flair"])
    assert control_tab["found"].all() and (control_tab["planted_correlation"] > 0.9).all()

    groups = {"stylegan": ("model", audit.valid_correlations(table)),
              "real_test": ("baseline", audit.valid_correlations(baseline)),
              "control": ("control", audit.valid_correlations(control_tab))}
    ex = audit.exceedance_table(groups, thresholds)
    assert list(ex.columns) == ["model", "threshold_name", "threshold", "n_images", "n_above", "fraction",
                                "wilson_low", "wilson_high", "kind"]
    assert set(ex.loc[ex["model"] == "real_test", "threshold_name"]) == {"fixed_0.90", "fixed_0.95", "fixed_0.99"}
    sg = ex[(ex["model"] == "stylegan") & (ex["threshold_name"] == "fixed_0.99")].iloc[0]
    assert sg.n_images == 8 and sg.n_above == 1 and sg.wilson_low <= sg.fraction <= sg.wilson_high
    assert (sg.wilson_low, sg.wilson_high) == pytest.approx(audit.wilson_interval(1, 8))

    leak = audit.leakage_table({"stylegan": ("model", table), "real_test": ("baseline", baseline)},
                                   thresholds, data.n_train_subjects)
    row = leak[(leak["model"] == "stylegan") & (leak["threshold_name"] == "fixed_0.99")].iloc[0]
    assert (row.n_subjects_leaked, row.n_train_subjects) == (1, 6)
    most = audit.most_matched(table)
    assert list(most.columns[:5]) == ["train_index", "subject", "slice", "n_matched", "max_correlation"]
    assert most["n_matched"].sum() == 8 and most.loc[most["train_index"] == 12, "n_matched_above"].item() == 1
    assert log.pairs == log.image_pairs > 0 and set(log.runs) == {"stylegan", "baseline", "control"}


# --------------------------------------------------------------------------
# Measures and the headline
# --------------------------------------------------------------------------

BRATS = ["T1", "T2", "T1ce", "FLAIR", "Seg"]


def test_measures_per_modality_joint_and_label_map():
    measures, head = audit.study_measures(BRATS)
    assert head == "t1"
    assert [m.name for m in measures] == ["t1", "t2", "t1ce", "flair", "all", "seg"]  # headline first, seg last
    kinds = {m.name: m.kind for m in measures}
    assert kinds["all"] == "joint" and kinds["seg"] == "label_map" and kinds["t2"] == "modality"
    assert measures[-1].label_map and not measures[0].label_map
    joint = next(m for m in measures if m.name == "all")
    assert joint.index == (0, 1, 2, 3, 4) and joint.description == audit.JOINT_DESCRIPTION
    assert "not the paper's" in joint.description

    measures, head = audit.study_measures(BRATS, headline="T1CE")  # any case
    assert head == "t1ce" and [m.name for m in measures][:2] == ["t1ce", "t1"]
    measures, head = audit.study_measures(BRATS, headline="all")
    assert head == "all" and measures[0].name == "all"
    measures, head = audit.study_measures(BRATS, joint=False)
    assert "all" not in [m.name for m in measures]
    measures, head = audit.study_measures(BRATS, ["flair", "t1"], headline=None)
    assert head == "t1" and [m.name for m in measures] == ["t1", "flair", "t1+flair"]
    assert measures[-1].index == (0, 3)
    measures, head = audit.study_measures(BRATS, ["Seg", "T2"])  # seg selected: never the default headline
    assert head == "t2"
    measures, head = audit.study_measures(BRATS, each=False)  # the joint measure alone (as before)
    assert head == "all" and [m.name for m in measures] == ["all"]


def test_single_channel_data_has_one_measure():
    measures, head = audit.study_measures(["gray"])
    assert head == "gray" and [m.name for m in measures] == ["gray"] and measures[0].kind == "modality"
    measures, head = audit.study_measures(["gray"], headline="gray", joint=True)
    assert len(measures) == 1
    measures, head = audit.study_measures(["gray"], each=False)
    assert head == "all" and len(measures) == 1


def test_headline_errors_name_the_allowed_channels():
    with pytest.raises(ValueError, match=r"'seg' is a label map.*choose one of: t1, t2, t1ce, flair, all"):
        audit.study_measures(BRATS, headline="seg")
    with pytest.raises(ValueError, match=r"'pd' is not one of the measures computed; choose one of: t1, t2, "
                                         r"t1ce, flair, all"):
        audit.study_measures(BRATS, headline="pd")
    with pytest.raises(ValueError, match=r"'t1' is not one of the measures computed; choose one of: t2$"):
        audit.study_measures(BRATS, ["t2"], headline="t1")
    with pytest.raises(ValueError, match="label maps are never the headline"):
        audit.study_measures(BRATS, ["seg"], joint=False)
    with pytest.raises(ValueError, match="not one of the data's channels: T1, T2"):
        audit.study_measures(BRATS, ["t3"])
    with pytest.raises(ValueError, match="repeats a channel"):
        audit.study_measures(BRATS, ["t1", "T1"])


# --------------------------------------------------------------------------
# audit_study: step 05 end to end on a tiny results folder
# --------------------------------------------------------------------------

def _cfg(**kw):
    values = dict(models=["stylegan", "diffusion"], channels=None, joint=True, headline_channel=None, top_k=3,
                  backend="numpy", memory_budget_gb=0.25, n_control=8, control_noise_sd=8.0, seed=0)
    values.update(kw)
    return config.CorrelateSettings(**values)


def _brute_best(queries: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best index and r by scipy.stats.pearsonr (ties: lowest index; constants: -1/NaN)."""
    q = queries.reshape(len(queries), -1).astype(float)
    t = train.reshape(len(train), -1).astype(float)
    idx, val = np.full(len(q), -1), np.full(len(q), np.nan)
    for i, a in enumerate(q):
        if np.ptp(a) == 0:
            continue
        r = np.array([pearsonr(a, b)[0] if np.ptp(b) > 0 else -np.inf for b in t])
        j = int(np.lexsort((np.arange(len(t)), -r))[0])
        if np.isfinite(r[j]):
            idx[i], val[i] = j, r[j]
    return idx, val


def test_audit_study_end_to_end(tmp_path):
    root = fake_results(tmp_path / "phantom", models=("stylegan", "diffusion"), channels=("t1", "flair", "seg"))
    out = root / "correlation"
    out.mkdir()  # files not the audit's stay
    for name in ("notes.csv", "mine/matches_x.csv"):
        (out / name).parent.mkdir(exist_ok=True)
        (out / name).write_text("x\n")
    study = audit.audit_study(root, _cfg(headline_channel="flair"), progress=False)
    assert study.headline == "flair" and study.names == ["flair", "t1", "all", "seg"]
    assert (out / "notes.csv").is_file() and (out / "mine/matches_x.csv").is_file()
    for m in study.names:
        for name in ("baseline.csv", "thresholds.csv", "exceedances.csv", "leakage.csv", "control_matches.csv",
                     "matches_stylegan.csv", "topk_diffusion.csv", "most_matched_diffusion.csv"):
            assert (out / m / name).is_file(), f"{m}/{name}"

    summary = json.loads((out / "summary.json").read_text())
    assert summary["headline"] == "flair" and summary["measures"] == ["flair", "t1", "all", "seg"]
    assert summary["channels"] == ["t1", "flair", "seg"] and summary["n_train_subjects"] == 6
    seg = summary["by_measure"]["seg"]
    assert seg["label_map"] and seg["kind"] == "label_map" and not seg["headline"]
    assert summary["by_measure"]["all"]["description"] == audit.JOINT_DESCRIPTION
    assert summary["by_measure"]["flair"]["headline"] and summary["by_measure"]["t1"]["channels"] == ["t1"]
    for m in study.names:
        info = audit.measure_summary(summary, m)
        assert set(info["thresholds"]) == {"fixed_0.90", "fixed_0.95", "fixed_0.99", "baseline_p95", "baseline_p99"}
        assert set(info["models"]) == {"stylegan", "diffusion"} and info["baseline"]["n"] == 10
        assert info["control"]["n_planted"] == 8 and "control" not in info["models"]
        assert info["control"]["n"] == 8 - info["control"]["n_undefined"]  # scored: a source to correlate with
        control = pd.read_csv(out / m / "control_matches.csv")  # a blank source (seg) cannot be found
        channels = {"t1": [0], "flair": [1], "seg": [2], "all": [0, 1, 2]}[m]
        sources = np.load(root / "data/train.npy")[control["planted_index"]][:, channels]
        blank = int((np.ptp(sources.reshape(len(sources), -1), axis=1) == 0).sum())
        assert info["control"]["n_undefined"] == blank and (blank > 0) == (m == "seg")
    # one engine pass per image set, for every measure
    assert set(summary["runs"]) == {"baseline", "control", "stylegan", "diffusion"}
    assert summary["runs"]["stylegan"]["measures"] == study.names
    assert summary["pairs"] == 4 * summary["image_pairs"] == 4 * 30 * (10 + 8 + 9 + 9)

    # every measure equals scipy's pearsonr on its own pixels
    train = np.load(root / "data/train.npy")
    test = np.load(root / "data/test.npy")
    samples = np.load(root / "samples/diffusion.npy")
    for m, channels in (("t1", [0]), ("flair", [1]), ("seg", [2]), ("all", [0, 1, 2])):
        matches = pd.read_csv(out / m / "matches_diffusion.csv")
        idx, val = _brute_best(samples[:, channels], train[:, channels])
        np.testing.assert_array_equal(matches["train_index"], idx)
        np.testing.assert_allclose(matches["correlation"], val, atol=1e-12, rtol=0)
        assert matches["constant"].tolist() == [bool(np.ptp(s) == 0) for s in samples[:, channels]]
        base = pd.read_csv(out / m / "baseline.csv")
        np.testing.assert_array_equal(base["train_index"], _brute_best(test[:, channels], train[:, channels])[0])
        ref = pearsonr(samples[0, channels].ravel().astype(float), train[11, channels].ravel().astype(float))[0] \
            if np.ptp(samples[0, channels]) and np.ptp(train[11, channels]) else np.nan
        np.testing.assert_allclose(matches.loc[0, "prev_correlation"], ref, atol=1e-12, equal_nan=True)
    # the planted copy (sample 0 = train 12) is found in every image measure; seg is constant there or found
    for m in ("t1", "flair", "all"):
        row = pd.read_csv(out / m / "matches_stylegan.csv").iloc[0]
        assert (row.train_index, row.correlation, row.prev_index) == (12, 1.0, 11)
        control = pd.read_csv(out / m / "control_matches.csv")
        assert control["found"].all() and not control["constant"].any()
    seg_matches = pd.read_csv(out / "seg/matches_stylegan.csv")
    stylegan_seg = np.load(root / "samples/stylegan.npy")[:, 2]
    assert seg_matches["constant"].tolist() == [bool(np.ptp(s) == 0) for s in stylegan_seg]
    assert seg_matches["constant"].sum() >= 1 and seg_matches.loc[seg_matches["constant"], "correlation"].isna().all()
    assert summary["by_measure"]["seg"]["models"]["stylegan"]["constant"] == int(seg_matches["constant"].sum())

    # the joint measure is what the engine gave before per-modality measures (all channels as one vector)
    joint = correlation.top_matches(samples, train, k=3, backend="numpy", progress=False)
    topk = pd.read_csv(out / "all" / "topk_diffusion.csv")
    np.testing.assert_array_equal(topk["correlation"], joint.topk_frame()["correlation"])
    np.testing.assert_array_equal(topk["train_index"], joint.topk_frame()["train_index"])

    # what the notebook displays
    assert list(study.thresholds_frame().index) == study.names
    overview = study.overview()
    assert set(overview["kind"]) == {"model", "baseline", "control"} and overview["measure"].iloc[0] == "flair"
    assert list(dict.fromkeys(study.exceedance_frame().index.get_level_values(0))) == study.names
    assert not study.leakage_frame().empty and not study.control_frame().empty
    assert study.top_matches(2)["measure"].iloc[0] == "flair"
    assert "flair (headline)" in study.describe()
    files = study.files_frame()
    assert files["file"].iloc[0] == "summary.json" and files["file"].iloc[1].startswith("flair/")
    # and figures reads it, headline by default
    assert figures.measures(root) == study.names
    assert figures.load_matches(root, "stylegan").equals(figures.load_matches(root, "stylegan", "flair"))
    text = figures.finding_text(summary)
    assert "correlation on channels flair: flair alone (the paper's measure" in text
    assert "correlation on channels t1, flair, seg: all channels as one vector" in figures.finding_text(summary,
                                                                                                       measure="all")
    seg_control = pd.read_csv(out / "seg" / "control_matches.csv")  # blank label maps have no source to find
    assert (seg_control["source_defined"] == seg_control["planted_correlation"].notna()).all()
    blank = np.ptp(train[seg_control["planted_index"], 2].reshape(8, -1), axis=1) == 0
    assert (~seg_control["source_defined"] == blank).all()
    assert summary["by_measure"]["seg"]["control"]["n_undefined"] == int((~seg_control["source_defined"]).sum()) > 0
    assert summary["by_measure"]["seg"]["control"]["found_fraction"] == seg_control.loc[
        seg_control["source_defined"], "found"].mean()


def test_audit_study_without_samples_single_channel_and_rerun(tmp_path):
    root = fake_results(tmp_path / "cxr", models=(), channels=("gray",))
    study = audit.audit_study(root, _cfg(joint=True), progress=False)
    assert study.names == ["gray"] and study.models == []
    summary = json.loads((root / "correlation/summary.json").read_text())
    assert summary["measures"] == ["gray"] and summary["by_measure"]["gray"]["models"] == {}
    assert summary["by_measure"]["gray"]["control"]["found_fraction"] == 1.0
    assert set(summary["runs"]) == {"baseline", "control"}
    # a re-run with fewer measures leaves no stale measure folders
    root2 = fake_results(tmp_path / "phantom", channels=("t1", "flair"))
    audit.audit_study(root2, _cfg(), progress=False)
    assert sorted(p.name for p in (root2 / "correlation").iterdir() if p.is_dir()) == ["all", "flair", "t1"]
    audit.audit_study(root2, _cfg(channels=["t1"], joint=False), progress=False)
    assert sorted(p.name for p in (root2 / "correlation").iterdir() if p.is_dir()) == ["t1"]
    with pytest.raises(ValueError, match="headline_channel 'seg'"):
        audit.audit_study(root2, _cfg(headline_channel="seg"), progress=False)


@pytest.mark.parametrize("mode", ["each", "all", "each all"])
def test_audit_command_channels_each_and_all(tmp_path, mode, capsys):
    tra = smooth(20, size=12, channels=3)
    syn = np.concatenate([tra[[5]], smooth(4, size=12, channels=3)])
    syn[1, 2] = 9  # constant in channel 2 only
    tst = smooth(6, size=12, channels=3)
    for name, arr in (("t", tra), ("s", syn), ("x", tst)):
        np.save(tmp_path / f"{name}.npy", arr)
    out = tmp_path / "o"
    rc = audit.main(["--synthetic", str(tmp_path / "s.npy"), "--training", str(tmp_path / "t.npy"),
                         "--test", str(tmp_path / "x.npy"), "--channels", *mode.split(), "--out", str(out), "--quiet",
                         "--backend", "numpy", "--control", "4"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    expected = {"each": ["ch0", "ch1", "ch2"], "all": ["all"], "each all": ["ch0", "ch1", "ch2", "all"]}[mode]
    assert summary["measures"] == expected and summary["headline"] == expected[0]
    assert set(summary["by_measure"]) == set(expected) and summary["n_synthetic"] == 5
    printed = capsys.readouterr().out
    assert f"[{expected[0]}, headline]" in printed
    for m in expected:
        channels = [int(m[2:])] if m != "all" else [0, 1, 2]
        table = pd.read_csv(out / m / "matches_synthetic.csv")
        idx, val = _brute_best(syn[:, channels], tra[:, channels])
        np.testing.assert_array_equal(table["train_index"], idx)
        np.testing.assert_allclose(table["correlation"], val, atol=1e-12, rtol=0)
        assert table["constant"].tolist() == [m == "ch2" and i == 1 for i in range(5)]
        assert summary["by_measure"][m]["control"]["found_fraction"] == 1.0
        assert (out / m / "control_matches.csv").is_file() and not (out / m / "leakage.csv").exists()
    rc = audit.main(["--synthetic", str(tmp_path / "s.npy"), "--training", str(tmp_path / "t.npy"),
                         "--channels", "each", "--headline", "ch1", "--out", str(out), "--quiet"])
    assert rc == 0 and json.loads((out / "summary.json").read_text())["measures"][0] == "ch1"
    assert not (out / "all").exists() and not (out / "ch0" / "baseline.csv").exists()  # stale files removed
    assert audit.channels_arg(["0", "2"]) == ([0, 2], False, True)
    assert audit.channels_arg(["each", "t1"]) == (["t1"], True, False)


def test_wilson_interval_is_not_empty_at_zero():
    wlo, whi = audit.wilson_interval(0, 50)
    assert wlo == 0.0 and 0.05 < whi < 0.09
