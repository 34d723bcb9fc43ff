"""helpers.figures on a small, self-made results folder that follows the
result contract (random images, correlations computed for real)."""

from __future__ import annotations

import json
import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from helpers import audit, common, figures, memorization, sampling  # noqa: E402

THRESHOLDS = ("fixed_0.90", "fixed_0.95", "fixed_0.99", "baseline_p95", "baseline_p99")


# --------------------------------------------------------------------------
# A fake results folder: well-formed, random, internally consistent
# --------------------------------------------------------------------------

def _best(queries: np.ndarray, train: np.ndarray, k: int = 3):
    """Top-k Pearson correlations of each query with every training image."""
    q = queries.reshape(len(queries), -1).astype(np.float64)
    t = train.reshape(len(train), -1).astype(np.float64)
    qs, ts = q.std(1), t.std(1)
    qz = (q - q.mean(1, keepdims=True)) / np.where(qs > 0, qs, 1)[:, None]
    tz = (t - t.mean(1, keepdims=True)) / ts[:, None]
    corr = qz @ tz.T / q.shape[1]
    order = np.argsort(-corr, axis=1)[:, :k]
    return corr, order, qs == 0


def _exceed(corr_max: np.ndarray, constant: np.ndarray, value: float, rng) -> dict:
    above = np.where(constant, False, corr_max > value)
    lo, hi = memorization.wilson_interval(int(above.sum()), len(above))
    return {"n_images": len(above), "n_above": int(above.sum()), "fraction": float(above.mean()),
            "wilson_low": lo, "wilson_high": hi}


def make_results(folder, models=("stylegan", "diffusion"), xray=False, n_subjects=6, n_slices=5, channels=("t1", "t2"),
                 size=16, n_samples=24, control=True, seed=0, headline=None):
    """Write a results folder following the contract (step 05's per-measure
    layout: one measure per channel, plus ``all`` for several channels;
    headline: ``headline`` or the first channel); returns it."""
    rng = np.random.default_rng(seed)
    c = len(channels)
    n_test_subjects = 2

    def images(n):
        return rng.integers(0, 256, size=(n, c, size, size), dtype=np.uint8)

    def index(subjects, prefix):
        if xray:
            return pd.DataFrame({"subject": [f"{prefix}{i}" for i in range(subjects)], "slice": -1,
                                 "label": "NORMAL", "source": [f"raw/{prefix}{i}.jpeg" for i in range(subjects)]})
        rows = [(f"{prefix}{s}", 40 + z) for s in range(subjects) for z in range(n_slices)]
        return pd.DataFrame({"subject": [r[0] for r in rows], "slice": [r[1] for r in rows], "label": "",
                             "source": [f"raw/{r[0]}_t1.nii" for r in rows]})

    per = n_slices if xray else 1  # x-ray: one image per subject, as many images as the BraTS-like case
    train_csv, test_csv = index(n_subjects * per, "S"), index(n_test_subjects * per, "T")
    n_train_subjects = train_csv["subject"].nunique()
    train, test = images(len(train_csv)), images(len(test_csv))
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for name, arr, csv in (("train", train, train_csv), ("test", test, test_csv)):
        np.save(folder / f"data/{name}.npy", arr)
        common.write_csv(folder / f"data/{name}.csv", csv)
    common.write_json(folder / "data/meta.json", {"dataset": folder.name, "channels": list(channels),
                                                  "image_size": size, "n_train": len(train), "n_test": len(test)})

    # the generators' samples (and the control's images): about a third noisy copies, the rest noise
    groups = list(models) + (["control"] if control else [])
    synthetic = {}
    for g, model in enumerate(groups):
        synth = images(n_samples)
        copies = rng.choice(len(train), size=min(n_samples // 3 + g, len(train)), replace=False)
        noise = rng.normal(0, 10 if model != "control" else 1, size=(len(copies), c, size, size))
        synth[: len(copies)] = np.clip(train[copies] + noise, 0, 255).astype(np.uint8)
        synth[-1] = 7  # a constant image
        synthetic[model] = synth
        if model != "control":
            (folder / "samples").mkdir(exist_ok=True)
            np.save(folder / f"samples/{model}.npy", synth)
            common.write_csv(folder / f"samples/{model}_seeds.csv",
                             pd.DataFrame({"index": np.arange(n_samples), "seed": np.arange(2, 2 + n_samples)}))

    measures = [(ch.lower(), [i]) for i, ch in enumerate(channels)] + ([("all", list(range(c)))] if c > 1 else [])
    head = headline or measures[0][0]
    measures.sort(key=lambda m: m[0] != head)
    by_measure = {name: _write_measure(folder, name, index_, channels, head, train, test, train_csv, test_csv,
                                       synthetic, n_train_subjects, rng)
                  for name, index_ in measures}
    common.write_json(folder / "correlation/summary.json", {
        "dataset": folder.name, "channels": list(channels), "n_train": len(train), "n_test": len(test),
        "n_train_subjects": int(n_train_subjects), "top_k": 3, "headline": head,
        "measures": [m[0] for m in measures], "by_measure": by_measure, "backend": "numpy", "pairs": 0,
        "seconds": 0.0})

    steps = 10
    if "stylegan" in models:
        common.write_csv(folder / "stylegan/loss_log.csv", pd.DataFrame({
            "step": np.arange(steps), "images_seen": 8 * np.arange(steps), "loss_G": rng.random(steps),
            "loss_D": rng.random(steps), "r1": rng.random(steps), "augment_p": np.linspace(0, 0.2, steps)}))
    if "diffusion" in models:
        common.write_csv(folder / "diffusion/loss_log.csv", pd.DataFrame({
            "step": np.arange(steps), "images_seen": 8 * np.arange(steps), "loss": rng.random(steps),
            "lr": np.full(steps, 1e-4)}))
    return folder


def _write_measure(folder, name, index_, channels, head, train, test, train_csv, test_csv, synthetic,
                   n_train_subjects, rng) -> dict:
    """One measure's files under correlation/<name>/; returns its summary entry."""
    corr_dir = folder / "correlation" / name
    b_corr, b_order, b_const = _best(test[:, index_], train[:, index_])
    b_best = b_corr[np.arange(len(test)), b_order[:, 0]]
    common.write_csv(corr_dir / "baseline.csv", pd.DataFrame({
        "test_index": np.arange(len(test)), "test_subject": test_csv["subject"], "train_index": b_order[:, 0],
        "correlation": b_best, "subject": train_csv["subject"].to_numpy()[b_order[:, 0]],
        "slice": train_csv["slice"].to_numpy()[b_order[:, 0]], "constant": b_const}))
    thresholds = {"fixed_0.90": 0.90, "fixed_0.95": 0.95, "fixed_0.99": 0.99,
                  "baseline_p95": float(np.quantile(b_best, 0.95)), "baseline_p99": float(np.quantile(b_best, 0.99))}
    common.write_csv(corr_dir / "thresholds.csv", pd.DataFrame({"name": list(thresholds), "value": list(thresholds.values())}))

    lookup = {(s, z): i for i, (s, z) in enumerate(zip(train_csv["subject"], train_csv["slice"]))}
    exc_rows, leak_rows = [], []
    summary_models = {}
    for model, synth in synthetic.items():
        n_samples = len(synth)
        corr, order, const = _best(synth[:, index_], train[:, index_])
        best = np.where(const, np.nan, corr[np.arange(len(synth)), order[:, 0]])
        subj = train_csv["subject"].to_numpy()[order[:, 0]]
        zs = train_csv["slice"].to_numpy()[order[:, 0]]
        neigh = {d: [corr[i, lookup[(s, z + d)]] if (s, z + d) in lookup and not const[i] else np.nan
                     for i, (s, z) in enumerate(zip(subj, zs))] for d in (-1, 1)}
        seeds = np.arange(2, 2 + n_samples)
        if model == "control":
            common.write_csv(corr_dir / "control_matches.csv", pd.DataFrame({
                "control_index": np.arange(n_samples), "control_kind": "copy", "planted_index": order[:, 0],
                "train_index": order[:, 0], "correlation": best, "subject": subj, "slice": zs, "constant": const,
                "found": ~const}))
        else:
            common.write_csv(corr_dir / f"topk_{model}.csv", pd.DataFrame({
                "synthetic_index": np.repeat(np.arange(n_samples), 3), "rank": np.tile([1, 2, 3], n_samples),
                "train_index": order.ravel(), "correlation": np.take_along_axis(corr, order, 1).ravel()}))
            matches = pd.DataFrame({"synthetic_index": np.arange(n_samples), "seed": seeds, "train_index": order[:, 0],
                                    "correlation": best, "subject": subj, "slice": zs,
                                    "prev_correlation": neigh[-1], "next_correlation": neigh[1], "constant": const})
            common.write_csv(corr_dir / f"matches_{model}.csv", matches)
            most = (matches[~const].groupby(["train_index", "subject", "slice"], as_index=False)
                    .agg(n_matched=("synthetic_index", "size"), max_correlation=("correlation", "max")))
            common.write_csv(corr_dir / f"most_matched_{model}.csv",
                             most.sort_values("n_matched", ascending=False))
        info = {"n": n_samples, "constant": int(const.sum()),
                "quantiles": {q: float(np.nanquantile(best, p)) for q, p in
                              (("p50", .5), ("p95", .95), ("p99", .99), ("max", 1.0))},
                "exceedances": {}, "subjects_leaked": {}}
        for tname, value in thresholds.items():
            e = _exceed(np.nan_to_num(best), const, value, rng)
            exc_rows.append({"model": model, "threshold_name": tname, "threshold": value, **e})
            info["exceedances"][tname] = {k: e[k] for k in ("n_above", "fraction", "wilson_low", "wilson_high")}
            leaked = len(set(subj[(~const) & (np.nan_to_num(best) > value)]))
            info["subjects_leaked"][tname] = leaked
            leak_rows.append({"model": model, "threshold_name": tname, "threshold": value, "n_subjects_leaked": leaked,
                              "n_train_subjects": n_train_subjects,
                              "fraction_subjects": leaked / n_train_subjects})
        summary_models[model] = info
    base_info = {"n": len(test), "constant": int(b_const.sum()),
                 "quantiles": {q: float(np.quantile(b_best, p)) for q, p in
                               (("p50", .5), ("p95", .95), ("p99", .99), ("max", 1.0))}, "exceedances": {}}
    for tname, value in thresholds.items():
        e = _exceed(b_best, b_const, value, rng)
        exc_rows.append({"model": "real_test", "threshold_name": tname, "threshold": value, **e})
        base_info["exceedances"][tname] = {k: e[k] for k in ("n_above", "fraction", "wilson_low", "wilson_high")}
    common.write_csv(corr_dir / "exceedances.csv", pd.DataFrame(exc_rows))
    common.write_csv(corr_dir / "leakage.csv", pd.DataFrame(leak_rows))
    kind = "joint" if len(index_) > 1 else ("label_map" if name == "seg" else "modality")
    return {"measure": name, "channels": [channels[i] for i in index_], "channel_index": list(index_), "kind": kind,
            "label_map": kind == "label_map", "headline": name == head,
            "description": f"{name} test measure", "train_constant": 0, "thresholds": thresholds,
            "baseline": base_info, "models": {m: v for m, v in summary_models.items() if m != "control"},
            **({"control": summary_models["control"]} if "control" in summary_models else {})}  # as step 05


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return make_results(tmp_path_factory.mktemp("results") / "phantom")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# --------------------------------------------------------------------------
# Loaders and status
# --------------------------------------------------------------------------

@pytest.mark.parametrize("loader, args, file, step", [
    (figures.load_matches, ("diffusion", "t1"), "correlation/t1/matches_diffusion.csv", "05_correlate"),
    (figures.load_matches, ("diffusion",), "correlation/summary.json", "05_correlate"),  # the headline is unknown
    (figures.load_images, ("train",), "data/train.npy", "01_prepare_data"),
    (sampling.load_samples, ("stylegan",), "samples/stylegan.npy", "04_sample"),  # the one sample loader
    (figures.load_loss_log, ("diffusion",), "diffusion/loss_log.csv", "03_train_diffusion"),
    (figures.load_summary, (), "correlation/summary.json", "05_correlate"),
])
def test_missing_file_names_file_and_step(tmp_path, loader, args, file, step):
    with pytest.raises(figures.ResultMissing) as err:
        loader(tmp_path, *args)
    assert file in str(err.value) and step in str(err.value)


def test_missing_column_is_named(tmp_path):
    common.write_csv(tmp_path / "correlation/t1/thresholds.csv", pd.DataFrame({"name": ["fixed_0.90"]}))
    with pytest.raises(ValueError, match="t1/thresholds.csv: expected columns value"):
        figures.load_thresholds(tmp_path, "t1")


def test_status_reports_a_missing_model(tmp_path):
    folder = make_results(tmp_path / "phantom", models=("stylegan",))
    present, status = figures.model_status(folder, ("stylegan", "diffusion"))
    assert present == ["stylegan"]
    assert figures.available(status, "samples") == ["stylegan"]
    text = figures.missing_text(status)
    assert "samples/diffusion.npy" in text and "04_sample" in text
    assert "StyleGAN**: all result files present" in text
    # figures still work with what exists
    fig = figures.plot_max_correlation(folder, present)
    assert figures.save_figure(fig, folder / "figures", "dist", pdf=False)[0].is_file()
    assert set(figures.plot_training_curves(folder, ("stylegan", "diffusion"))) == {"stylegan"}
    assert "No results for: diffusion" in figures.finding_text(figures.load_summary(folder))


def test_loaded_constant_is_bool(results):
    matches = figures.load_matches(results, "stylegan")
    assert matches["constant"].dtype == bool and matches["constant"].sum() == 1
    assert matches.loc[matches["constant"], "correlation"].isna().all()


# --------------------------------------------------------------------------
# Figures write files
# --------------------------------------------------------------------------

def test_distribution_figure(results, tmp_path):
    long = figures.max_correlations(results, figures.MODELS)
    # constants dropped: one per model
    assert (long["model"] == "stylegan").sum() == len(figures.load_matches(results, "stylegan")) - 1
    assert (long["model"] == "real_test").sum() == len(figures.load_baseline(results))
    paths = figures.save_figure(figures.plot_max_correlation(results), tmp_path, "dist", pdf=True)
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 1000 for p in paths)


def test_all_constant_samples_do_not_crash(tmp_path):
    folder = make_results(tmp_path / "phantom", models=("stylegan",), n_samples=6, size=8)
    matches = pd.read_csv(folder / "correlation/t1/matches_stylegan.csv").assign(constant=True, correlation=np.nan)
    common.write_csv(folder / "correlation/t1/matches_stylegan.csv", matches)
    assert (figures.max_correlations(folder, ["stylegan"])["model"] == "stylegan").sum() == 0
    assert figures.select_matches(figures.load_matches(folder, "stylegan"), 4, 2).empty
    for fig in (figures.plot_max_correlation(folder, ["stylegan"]), figures.plot_top_matches(folder, "stylegan")):
        assert figures.save_figure(fig, tmp_path / "figs", "x", pdf=False)[0].is_file()


def test_select_matches_top_and_typical(results):
    matches = figures.load_matches(results, "diffusion")
    rows = figures.select_matches(matches, n_top=3, n_typical=2)
    valid = matches[~matches["constant"]]
    assert list(rows["kind"]) == ["top"] * 3 + ["typical"] * 2
    assert rows["correlation"].iloc[0] == valid["correlation"].max()
    assert list(rows["rank"].iloc[:3]) == [1, 2, 3]
    median = valid["correlation"].median()
    rest = valid.drop(valid["correlation"].nlargest(3).index)
    nearest = np.sort(np.abs(rest["correlation"] - median))[:2]
    assert np.allclose(np.sort(np.abs(rows["correlation"].iloc[3:] - median)), nearest)


@pytest.mark.parametrize("xray", [False, True])
def test_top_matches_figure(tmp_path, xray):
    folder = make_results(tmp_path / ("cxr" if xray else "phantom"), xray=xray, channels=("xray",) if xray else ("t1", "t2"))
    fig = figures.plot_top_matches(folder, "diffusion", n_top=2, n_typical=1, channel="" if xray else "t2")
    assert len(fig.axes) >= 15
    titles = " ".join(ax.get_title() for ax in fig.axes)
    assert ("2nd-best match" in titles) if xray else ("previous slice" in titles)
    assert "t2" in fig._suptitle.get_text() or xray
    paths = figures.save_figure(fig, tmp_path / "figs", "top", pdf=False)
    assert paths[0].stat().st_size > 1000


def test_unknown_channel_is_refused(results):
    with pytest.raises(ValueError, match="flair"):
        figures.plot_top_matches(results, "stylegan", channel="flair")


def test_intensity_histogram_prints_channel_r():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (8, 8)).astype(np.uint8)
    fig, ax = plt.subplots()
    r = figures.intensity_histogram(ax, a, a, 0.5)
    assert r == pytest.approx(1.0)
    assert "r = 0.500" in ax.texts[0].get_text() and "r(ch) = 1.000" in ax.texts[0].get_text()
    assert np.isnan(figures.intensity_histogram(ax, a, np.zeros_like(a), None))


def test_sample_grids_and_training_curves(results, tmp_path):
    fig = figures.plot_sample_grids(results, figures.MODELS, n=4, channel="t1", seed=3)
    assert len(fig.subfigs) == 3
    assert figures.save_figure(fig, tmp_path, "grids", pdf=False)[0].is_file()
    curves = figures.plot_training_curves(results)
    assert set(curves) == {"stylegan", "diffusion"}
    assert [ax.get_title() for ax in curves["diffusion"].axes] == ["loss", "lr"]
    assert curves["stylegan"].axes[0].get_xlabel() == "images_seen"


# --------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------

def test_memorization_table_matches_csv(results, tmp_path):
    exc = pd.read_csv(results / "correlation/t1/exceedances.csv")  # t1: the headline
    leak = pd.read_csv(results / "correlation/t1/leakage.csv")
    for model in ("stylegan", "diffusion", "real_test", "control"):
        table = figures.memorization_table(results, model)
        assert list(table["threshold_name"]) == list(THRESHOLDS)
        ref = exc[exc["model"] == model].set_index("threshold_name").loc[list(THRESHOLDS)]
        assert np.array_equal(table["n_above"], ref["n_above"])
        assert np.allclose(table["percent"], 100 * ref["fraction"])
        assert np.allclose(table["wilson_low_percent"], 100 * ref["wilson_low"])
        assert np.allclose(table["wilson_high_percent"], 100 * ref["wilson_high"])
        assert "ci_low_percent" not in table  # no percentile bootstrap any more
        if model == "real_test":
            assert "n_subjects_leaked" not in table
        else:
            lref = leak[leak["model"] == model].set_index("threshold_name").loc[list(THRESHOLDS)]
            assert np.array_equal(table["n_subjects_leaked"].astype(int), lref["n_subjects_leaked"])
        csv, md = figures.save_table(table, tmp_path, f"memorization_{model}")
        assert pd.read_csv(csv)["n_above"].tolist() == ref["n_above"].tolist()
        lines = md.read_text().splitlines()
        assert len(lines) == 2 + len(THRESHOLDS)
        assert lines[2].split("|")[4].strip() == str(ref["n_above"].iloc[0])
    assert figures.table_groups(results, ["diffusion", "stylegan"]) == ["diffusion", "stylegan", "real_test", "control"]
    assert "NOT a generator" in figures.table_title("control")


def test_most_copied_table(results):
    raw = pd.read_csv(results / "correlation/t1/most_matched_stylegan.csv")
    table = figures.most_copied_table(results, "stylegan", n=3)
    assert len(table) == 3 and table["n_matched"].iloc[0] == raw["n_matched"].max()
    assert table["n_matched"].is_monotonic_decreasing


def test_markdown_table_format():
    frame = pd.DataFrame({"name": ["a|b", "c"], "n": [3, 4], "percent": [12.345, np.nan], "r": [0.98765, 1.0],
                          "flag": [True, False]})
    md = figures.markdown_table(frame)
    lines = md.splitlines()
    assert lines[0] == "| name | n | percent | r | flag |"
    assert lines[1] == "|---|---:|---:|---:|---|"
    assert lines[2] == "| a\\|b | 3 | 12.3 | 0.988 | yes |"
    assert lines[3] == "| c | 4 | – | 1.000 | no |"


# --------------------------------------------------------------------------
# Words from numbers
# --------------------------------------------------------------------------

def test_finding_text_uses_summary_numbers(results):
    summary = figures.load_summary(results)
    text = figures.finding_text(summary, "baseline_p99", n_train_subjects=6)
    headline = summary["by_measure"]["t1"]  # the headline by default
    value = headline["thresholds"]["baseline_p99"]
    assert f"r > {value:.3f}" in text and "correlation on channels t1" in text
    for model, name in (("stylegan", "StyleGAN"), ("diffusion", "diffusion")):
        info = headline["models"][model]
        e = info["exceedances"]["baseline_p99"]
        assert (f"Of {info['n']} {name} synthetic images, {e['n_above']} ({100 * e['fraction']:.1f} %, "
                f"95 % CI {100 * e['wilson_low']:.1f} %–{100 * e['wilson_high']:.1f} %)") in text
        assert f"{info['subjects_leaked']['baseline_p99']} of 6 training subjects" in text
        assert f"r = {info['quantiles']['max']:.3f}" in text
    assert "Positive control" in text and "not a generator" in text


def _tiny_summary(a, b):
    def model(k, lo, hi):
        return {"n": 100, "constant": 0, "quantiles": {"max": 0.9},
                "exceedances": {"baseline_p99": {"n_above": k, "fraction": k / 100, "wilson_low": lo,
                                                 "wilson_high": hi}}}
    joint = {"measure": "all", "kind": "joint", "label_map": False, "headline": True, "channels": ["t1"],
             "description": "all channels as one vector", "thresholds": {"baseline_p99": 0.8},
             "baseline": {"n": 5}, "models": {"stylegan": model(*a), "diffusion": model(*b)}}
    return {"dataset": "x", "channels": ["t1"], "n_train": 10, "headline": "all", "measures": ["all"],
            "by_measure": {"all": joint}}


def test_finding_text_verdict_follows_intervals():
    separated = figures.finding_text(_tiny_summary((2, 0.0, 0.05), (30, 0.21, 0.39)))
    assert "diffusion exceeds more often than StyleGAN (30.0 % vs 2.0 %) and the 95 % intervals do not overlap" in separated
    reversed_ = figures.finding_text(_tiny_summary((30, 0.21, 0.39), (2, 0.0, 0.05)))
    assert "StyleGAN exceeds more often than diffusion" in reversed_
    overlapping = figures.finding_text(_tiny_summary((10, 0.05, 0.16), (14, 0.08, 0.21)))
    assert "overlap: this run does not separate" in overlapping
    with pytest.raises(ValueError, match="fixed_0.5"):
        figures.finding_text(_tiny_summary((1, 0, 0.1), (1, 0, 0.1)), "fixed_0.5")
    # the controls are references: the sentence compares the two trained generators, never a control with one
    summary = _tiny_summary((2, 0.0, 0.05), (30, 0.21, 0.39))
    models = summary["by_measure"]["all"]["models"]
    models["optimal_denoiser"] = {**models["diffusion"], "exceedances": {"baseline_p99": {
        "n_above": 100, "fraction": 1.0, "wilson_low": 0.96, "wilson_high": 1.0}}}
    text = figures.finding_text(summary)
    assert "diffusion exceeds more often than StyleGAN (30.0 % vs 2.0 %)" in text
    assert "optimal denoiser exceeds more often" not in text


# --------------------------------------------------------------------------
# Training-set size and cross-dataset comparison
# --------------------------------------------------------------------------

def test_compare_datasets(tmp_path):
    make_results(tmp_path / "brats20", seed=4)
    make_results(tmp_path / "cxr", xray=True, channels=("xray",), models=("stylegan",), seed=5)
    (tmp_path / "compare").mkdir()
    frame = figures.collect_summaries(tmp_path)
    assert sorted(frame["dataset"].unique()) == ["brats20", "cxr"]
    assert set(frame[frame["dataset"] == "cxr"]["model"]) == {"stylegan", "control", "real_test"}
    assert set(frame["kind"]) == {"generator", "baseline", "control"}
    table = figures.compare_table(frame, ["baseline_p99"])
    assert len(table) == 3 + 2 + 2 - 0  # brats20: 2 models + baseline + control; cxr: 1 + baseline + control
    summary = json.loads((tmp_path / "brats20/correlation/summary.json").read_text())
    row = table[(table["dataset"] == "brats20") & (table["model"] == "diffusion")].iloc[0]
    headline = summary["by_measure"][summary["headline"]]
    assert row["measure"] == "t1"
    assert row["baseline_p99_n_above"] == headline["models"]["diffusion"]["exceedances"]["baseline_p99"]["n_above"]
    fig = figures.plot_compare(frame, "baseline_p99")
    labels = {t.get_text() for t in fig.axes[0].get_legend().get_texts()}
    assert labels == {"StyleGAN", "diffusion", "real held-out (baseline)"}  # no control among the bars
    assert figures.save_figure(fig, tmp_path / "compare", "bars", pdf=False)[0].is_file()
    text = figures.compare_text(frame, "baseline_p99")
    assert re.search(r"\*\*cxr\*\* \(xray\): StyleGAN \d+/24", text)
    brats = next(line for line in text.splitlines() if line.startswith("- **brats20**"))
    assert "; diffusion vs StyleGAN: " in brats and "not fitted" not in brats     # the pair is named; no fit judged
    compact = figures.compact_table(frame, ["baseline_p99"])
    assert list(compact.columns) == ["run (measure)", "model", "baseline_p99", "fit"]
    assert set(compact["fit"]) == {""}
    # step 05's fit: StyleGAN not fitted, so no comparison of fitted models, and the tables say so
    (tmp_path / "brats20" / "fit").mkdir(exist_ok=True)
    pd.DataFrame({"size": 10, "model": ["stylegan", "diffusion"], "fitted": [False, True]}).to_csv(
        tmp_path / "brats20" / "fit" / "fit.csv", index=False)
    frame = figures.collect_summaries(tmp_path)
    brats = next(line for line in figures.compare_text(frame, "baseline_p99").splitlines() if "**brats20**" in line)
    assert brats.endswith("diffusion vs StyleGAN: no comparison of fitted models (StyleGAN not fitted).")
    compact = figures.compact_table(frame, ["baseline_p99"]).set_index(["run (measure)", "model"])
    assert compact.loc[("brats20 (t1)", "StyleGAN"), "fit"] == "not fitted"
    assert compact.loc[("brats20 (t1)", "diffusion"), "fit"] == "fitted"
    assert compact.loc[("cxr (xray)", "StyleGAN"), "fit"] == ""


def test_headline_and_other_measures(tmp_path):
    folder = make_results(tmp_path / "phantom", models=("stylegan",), headline="t2", seed=7)
    assert figures.measures(folder) == ["t2", "t1", "all"] and figures.headline(folder) == "t2"
    assert figures.load_matches(folder, "stylegan").equals(figures.load_matches(folder, "stylegan", "t2"))
    assert not figures.load_matches(folder, "stylegan", "all").equals(figures.load_matches(folder, "stylegan", "t2"))
    assert figures.shown_channel(folder) == 1 and figures.shown_channel(folder, measure="t1") == 0
    assert figures.shown_channel(folder, "T1", measure="t2") == 0  # figure_channel wins, any case
    assert "correlation on channels t2" in figures.finding_text(figures.load_summary(folder))
    assert "correlation on channels t1, t2" in figures.finding_text(figures.load_summary(folder), measure="all")
    table = figures.measures_table(figures.load_summary(folder), "fixed_0.95")
    assert list(dict.fromkeys(table["measure"])) == ["t2", "t1", "all"] and table["headline"].iloc[0]
    assert set(table["group"]) == {"stylegan", "real_test", "control"}
    assert list(figures.thresholds_by_measure(folder)["measure"]) == ["t2", "t1", "all"]
    tables = figures.memorization_tables(folder, ["stylegan"])
    assert [(m, g) for m, g, _ in tables][:3] == [("t2", "stylegan"), ("t2", "real_test"), ("t2", "control")]
    assert figures.measure_names("max_correlation", "t2", "t2") == ["max_correlation_t2", "max_correlation"]
    assert figures.measure_names("max_correlation", "all", "t2") == ["max_correlation_all"]
    with pytest.raises(ValueError, match="no measure 'flair'; measures: t2, t1, all"):
        figures.finding_text(figures.load_summary(folder), measure="flair")
    fig = figures.plot_max_correlation_by_measure(folder, ["stylegan"], bins=10)
    assert [ax.get_title() for ax in fig.axes[:3]] == ["t2 — headline (modality)", "t1 (modality)", "all (joint)"]
    frame = figures.collect_summaries(tmp_path, all_measures=True)
    assert set(frame["measure"]) == {"t1", "t2", "all"} and set(frame.loc[frame["headline"], "measure"]) == {"t2"}
    assert set(figures.compare_table(frame, ["fixed_0.95"])["measure"]) == {"t2"}
    assert set(figures.compare_table(frame, ["fixed_0.95"], measure="all")["measure"]) == {"all"}


def test_outputs_and_params_markdown(tmp_path):
    path = common.write_text(tmp_path / "a.txt", "x" * 2048)
    text = figures.outputs_markdown([path, tmp_path / "gone.png"])
    assert "a.txt` (2.0 KiB)" in text and "gone.png` (missing!)" in text
    assert "| seed | 0 |" in figures.params_markdown({"seed": 0})


# --------------------------------------------------------------------------
# The notebooks, end to end on the fake folder
# --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["05_correlate", "06_figures", "compare_datasets"])
def test_every_parameter_is_declared(name):
    """papermill skips a parameter line it cannot parse (e.g. an '=' in its
    comment); the runner would then reject that config key."""
    papermill = pytest.importorskip("papermill")
    import nbformat

    path = common.repo_root() / f"notebooks/{name}.ipynb"
    cell = next(c for c in nbformat.read(path, as_version=4).cells if "parameters" in c.metadata.get("tags", []))
    assigned = re.findall(r"^(\w+)\s*=", cell.source, flags=re.M)
    assert list(papermill.inspect_notebook(str(path))) == assigned
    assert "settings" in assigned  # every setting comes in the one settings dict (helpers.config)
    assert {"dataset", "profile", "results_dir"} <= set(assigned) or name == "compare_datasets"


@pytest.mark.smoke
def test_notebooks_run(tmp_path):
    papermill = pytest.importorskip("papermill")
    root = common.repo_root()
    folder = make_results(tmp_path / "phantom", models=("stylegan",), seed=6)  # diffusion missing on purpose
    papermill.execute_notebook(
        str(root / "notebooks/06_figures.ipynb"), str(tmp_path / "06.ipynb"), kernel_name="python3",
        parameters={"results_dir": str(folder),
                    "settings": {"n_top": 2, "n_typical": 1, "n_montage": 4, "pdf": False}},
        cwd=str(root), progress_bar=False)
    written = {p.name for p in (folder / "figures").iterdir()}
    assert {"max_correlation_t1.png", "top_matches_stylegan_t1.png", "memorization_stylegan.csv",
            "memorization_stylegan.md", "memorization_control.md", "samples.png", "training_stylegan.png",
            "params.yaml", "measures.csv"} <= written
    assert "max_correlation.png" not in written  # a figure is written once; the headline's tables twice
    for measure in ("t1", "t2", "all"):  # every measure; the headline (t1) tables also under the plain names
        assert {f"max_correlation_{measure}.png", f"top_matches_stylegan_{measure}.png",
                f"memorization_stylegan_{measure}.md", f"most_copied_stylegan_{measure}.md"} <= written
    assert not any("diffusion" in name for name in written)
    out = tmp_path / "compare"
    papermill.execute_notebook(
        str(root / "notebooks/compare_datasets.ipynb"), str(tmp_path / "cmp.ipynb"), kernel_name="python3",
        parameters={"results_root": str(tmp_path), "out_dir": str(out), "settings": {"pdf": False}}, cwd=str(root),
        progress_bar=False)
    assert (out / "compare_datasets.csv").is_file() and (out / "compare_baseline_p99.png").is_file()


def test_words_use_wilson_intervals():
    # 0 of 64 above: Wilson's interval is 0–5.7 %, not the certainty 0–0 % a percentile bootstrap claims
    lo, hi = memorization.wilson_interval(0, 64)
    summary = _tiny_summary((0, lo, hi), (5, 0.0215, 0.1111))
    summary["by_measure"]["all"]["models"]["stylegan"]["n"] = 64
    text = figures.finding_text(summary)
    assert "Of 64 StyleGAN synthetic images, 0 (0.0 %, 95 % CI 0.0 %–5.7 %)" in text
    assert "overlap: this run does not separate" in text
    assert audit.reported_interval({"wilson_low": 0.0, "wilson_high": 0.057}) == (0.0, 0.057)
    frame = pd.DataFrame({"wilson_low": [0.0, 0.1], "wilson_high": [0.057, 0.3]})
    lo, hi = figures.interval_columns(frame)
    assert lo.tolist() == [0.0, 0.1] and hi.tolist() == [0.057, 0.3]


def test_a_notebook_shows_a_saved_figure_as_a_smaller_palette_png_of_the_same_size(tmp_path):
    import io

    import matplotlib.pyplot as plt
    from PIL import Image

    from helpers.figures import output

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1], [1, 0])
    png, = output.save_figure(fig, tmp_path, "line", pdf=False)
    with Image.open(png) as full, Image.open(io.BytesIO(output.preview_png(png))) as preview:
        assert preview.size == full.size and preview.mode == "P"
        difference = np.abs(np.asarray(preview.convert("RGB"), float) - np.asarray(full.convert("RGB"), float))
        assert difference.mean() < 1.0, "a palette copy, not another picture"
    assert len(output.preview_png(png)) < png.stat().st_size
    assert output.preview_png(png) == output.preview_png(png), "the same file gives the same bytes"


def test_a_step_removes_what_it_wrote_last_time_and_not_this_time(tmp_path):
    """Stale outputs: a table of a section that no longer exists does not outlive its run;
    files the step never listed (and files outside its folder) are left alone."""
    from helpers.figures import remove_stale_outputs

    folder = tmp_path / "figures"
    folder.mkdir()
    for name in ("a.csv", "old.csv", "user_notes.txt"):
        (folder / name).write_text("x")
    (tmp_path / "outside.csv").write_text("x")
    assert remove_stale_outputs(folder, [folder / "a.csv", folder / "old.csv", tmp_path / "outside.csv"]) == []
    removed = remove_stale_outputs(folder, [folder / "a.csv"])
    assert removed == [folder / "old.csv"] and not (folder / "old.csv").exists()
    assert (folder / "a.csv").exists() and (folder / "user_notes.txt").exists() and (tmp_path / "outside.csv").exists()


def test_reports_fold_long_tables_and_link_the_figures_they_do_not_show(tmp_path):
    fig = plt.figure()
    paths = figures.save_measure_figure(fig, tmp_path / "figures", "max_correlation", "t1", pdf=False, show=False)
    assert [p.name for p in paths] == ["max_correlation_t1.png"] and paths[0].is_file()
    assert not plt.fignum_exists(fig.number)                      # closed, not shown
    line = figures.links_markdown(paths, tmp_path / "notebooks", "The other measures")
    assert line == "The other measures: [max_correlation_t1](../figures/max_correlation_t1.png)."
    assert figures.links_markdown([], tmp_path) == ""
    text = figures.folded("**t1 — diffusion** (open to read)", "| a |\n|---|\n| 1 |")
    assert text.startswith("<details><summary><b>t1 — diffusion</b> (open to read)</summary>\n\n| a |")
