"""The audit command (python -m helpers.correlate) on folders of PNGs, and
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

from helpers import correlate, correlation

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
    rc = correlate.main(["--synthetic", str(folders["synthetic"][0]), "--training", str(folders["train"][0]),
                         "--test", str(folders["test"][0]), "--top-k", "3", "--out", str(out), "--quiet",
                         "--backend", "numpy"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "7 synthetic × 30 training images" in printed
    assert "Wilson 95 % CI" in printed
    for name in ("matches.csv", "topk.csv", "baseline.csv", "thresholds.csv", "exceedances.csv", "summary.json"):
        assert (out / name).is_file(), name
    m = pd.read_csv(out / "matches.csv")
    assert m.loc[0, "train_file"] == "tr_004.png" and m.loc[1, "train_file"] == "tr_021.png"
    assert m.loc[0, "correlation"] == 1.0 and m.loc[0, "synthetic_file"] == "syn_000.png"
    assert bool(m.loc[2, "constant"]) and np.isnan(m.loc[2, "correlation"])
    syn = folders["synthetic"][1].reshape(7, -1).astype(float)
    tra = folders["train"][1].reshape(30, -1).astype(float)
    for i in (3, 4, 5, 6):
        ref = max(pearsonr(syn[i], t)[0] for t in tra)
        assert abs(m.loc[i, "correlation"] - ref) < 1e-5
    top = pd.read_csv(out / "topk.csv")
    assert len(top) == 6 * 3
    th = pd.read_csv(out / "thresholds.csv")
    assert th["name"].tolist() == ["fixed_0.90", "fixed_0.95", "fixed_0.99", "baseline_p95", "baseline_p99"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_synthetic"] == 7 and summary["n_test"] == 8 and summary["baseline"]["n"] == 8
    assert summary["synthetic_images"]["exceedances"]["fixed_0.99"]["n_above"] == 2
    wlo, whi = correlate.wilson_interval(2, 6)  # 7 images, one constant (no correlation)
    assert summary["synthetic_images"]["exceedances"]["fixed_0.99"]["wilson_low"] == pytest.approx(wlo)
    assert summary["synthetic_images"]["exceedances"]["fixed_0.99"]["wilson_high"] == pytest.approx(whi)
    assert summary["backend"] == "numpy"


def test_audit_command_runs_as_a_module_on_npy(tmp_path):
    tra, syn = smooth(10), smooth(4)
    np.save(tmp_path / "t.npy", tra)
    np.save(tmp_path / "s.npy", syn)
    proc = subprocess.run([sys.executable, "-m", "helpers.correlate", "--synthetic", str(tmp_path / "s.npy"),
                           "--training", str(tmp_path / "t.npy"), "--out", str(tmp_path / "o"), "--quiet"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(pd.read_csv(tmp_path / "o" / "matches.csv")) == 4
    assert not (tmp_path / "o" / "baseline.csv").exists()


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
    rc = correlate.main(["--synthetic", str(syn_dir), "--training", str(folders["train"][0]), "--quiet",
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

def fake_results(root: Path, models=("stylegan",)) -> Path:
    """BraTS-like: subjects with consecutive axial slices, 2 channels."""
    data = root / "data"
    data.mkdir(parents=True)
    (root / "samples").mkdir()

    def cohort(n_subjects, prefix, slices=(20, 21, 22, 24, 25)):
        images, rows = [], []
        for s in range(n_subjects):
            vol = smooth(len(slices), size=16, channels=2)
            for z, im in zip(slices, vol):
                images.append(im)
                rows.append({"subject": f"{prefix}{s:02d}", "slice": z, "label": "", "source": f"{prefix}{s}.nii"})
        return np.stack(images), pd.DataFrame(rows)

    train, train_meta = cohort(6, "tr")
    test, test_meta = cohort(2, "te")
    train[7] = 0  # a blank slice
    np.save(data / "train.npy", train)
    np.save(data / "test.npy", test)
    train_meta.to_csv(data / "train.csv", index=False)
    test_meta.to_csv(data / "test.csv", index=False)
    (data / "meta.json").write_text(json.dumps({"dataset": "phantom", "channels": ["t1", "flair"]}))
    for model in models:
        samples = smooth(9, size=16, channels=2)
        samples[0] = train[12]  # subject tr02, slice 22: neighbours 21 and 24
        samples[1] = 3
        np.save(root / "samples" / f"{model}.npy", samples)
        pd.DataFrame({"index": range(9), "seed": range(2, 11)}).to_csv(root / "samples" / f"{model}_seeds.csv",
                                                                       index=False)
    return root


def test_neighbour_slices():
    meta = pd.DataFrame({"subject": ["a", "a", "b", "a", "b", "c"], "slice": [5, 7, 1, 6, 2, -1]})
    prev, nxt = correlate.neighbour_slices(meta)
    assert prev.tolist() == [-1, 3, -1, 0, 2, -1]
    assert nxt.tolist() == [3, -1, 4, 1, -1, -1]


def test_study_tables(tmp_path):
    root = fake_results(tmp_path / "phantom", models=("stylegan",))
    assert correlate.available_models(root) == ["stylegan"]
    data = correlate.load_study_data(root, ["flair"])
    assert data.channels == ["flair"] and data.train.shape == (1, 16, 16) and data.n_train_subjects == 6
    log = correlate.RunLog()
    out = root / "correlation"
    table = correlate.audit_model(data, "stylegan", out, log, k=3, progress=False)
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

    baseline_res = log.add("baseline", correlate.run_engine(data.test, data.train, progress=False))
    baseline = correlate.baseline_table(baseline_res, data.test_meta, data.train_meta)
    assert list(baseline.columns[:6]) == ["test_index", "test_subject", "train_index", "correlation", "subject",
                                          "slice"]
    assert not set(baseline["test_subject"]) & set(data.train_meta["subject"])
    thresholds = correlate.compute_thresholds(correlate.valid_correlations(baseline))
    assert list(thresholds) == ["fixed_0.90", "fixed_0.95", "fixed_0.99", "baseline_p95", "baseline_p99"]
    assert thresholds["baseline_p95"] <= thresholds["baseline_p99"] <= baseline["correlation"].max()

    images, control = correlate.make_control(data.train, 8, seed=0)
    control_res = log.add("control", correlate.run_engine(data.images(images), data.train, progress=False))
    control_tab = correlate.control_table(control_res, control, data.images(images), data.train, data.train_meta)
    assert control_tab["found"].all() and (control_tab["planted_correlation"] > 0.9).all()

    groups = {"stylegan": ("model", correlate.valid_correlations(table)),
              "real_test": ("baseline", correlate.valid_correlations(baseline)),
              "control": ("control", correlate.valid_correlations(control_tab))}
    ex = correlate.exceedance_table(groups, thresholds, n_boot=500, seed=0)
    assert list(ex.columns[:8]) == ["model", "threshold_name", "threshold", "n_images", "n_above", "fraction",
                                    "ci_low", "ci_high"]
    assert set(ex.loc[ex["model"] == "real_test", "threshold_name"]) == {"fixed_0.90", "fixed_0.95", "fixed_0.99"}
    sg = ex[(ex["model"] == "stylegan") & (ex["threshold_name"] == "fixed_0.99")].iloc[0]
    assert sg.n_images == 8 and sg.n_above == 1 and sg.ci_low <= sg.fraction <= sg.ci_high

    leak = correlate.leakage_table({"stylegan": ("model", table), "real_test": ("baseline", baseline)},
                                   thresholds, data.n_train_subjects)
    row = leak[(leak["model"] == "stylegan") & (leak["threshold_name"] == "fixed_0.99")].iloc[0]
    assert (row.n_subjects_leaked, row.n_train_subjects) == (1, 6)
    most = correlate.most_matched(table)
    assert list(most.columns[:5]) == ["train_index", "subject", "slice", "n_matched", "max_correlation"]
    assert most["n_matched"].sum() == 8 and most.loc[most["train_index"] == 12, "n_matched_above"].item() == 1

    summary = correlate.study_summary(data, thresholds, baseline, {"stylegan": table}, ex, leak, log, control_tab, 3)
    assert summary["models"]["stylegan"]["constant"] == 1
    assert summary["models"]["stylegan"]["subjects_leaked"]["fixed_0.99"] == 1
    assert set(summary["models"]["stylegan"]["quantiles"]) == {"p50", "p95", "p99", "max"}
    assert summary["control"]["found_fraction"] == 1.0 and summary["pairs"] == log.pairs > 0
    assert summary["control"]["exceedances"]["fixed_0.90"]["n_above"] == 8 and "control" not in summary["models"]


def test_bootstrap_interval():
    rng = np.random.default_rng(0)
    lo, hi = correlate.bootstrap_fraction(30, 200, 4000, rng)
    assert lo < 0.15 < hi and 0.09 < lo and hi < 0.21
    assert correlate.bootstrap_fraction(0, 50, 100, rng) == (0.0, 0.0)
    wlo, whi = correlate.wilson_interval(0, 50)
    assert wlo == 0.0 and 0.05 < whi < 0.09
