"""The criteria registry: every criterion judged on every run (sweep or
not) into one tidy table, on hand-made run folders through the real audit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import common, criteria, memorization


def test_capacity_table_keeps_its_columns_when_no_rule_has_two_sizes():
    table = memorization.criteria_table({"diffusion": {"l2": [1.0, 0.0]}}, size=16, n_subjects=1)
    table = table.assign(headline="t1ce", rule="whole_subjects")
    capacity = criteria.capacity_table(table)
    assert capacity.empty and {"rule", "group", "criterion", "status", "capacity", "above"} <= set(capacity)


# --------------------------------------------------------------------------
# criteria.csv on hand-made run folders: planted copies, near copies,
# constant images and held-out images, through the real audit (step 05)
# --------------------------------------------------------------------------

def _orthogonal_near_copy(x: np.ndarray, r: float, rng) -> np.ndarray:
    """x + c·u with u ⟂ (x − mean), zero mean and c chosen so that the
    Pearson correlation with x is ``r`` (before rounding to uint8)."""
    xc = x - x.mean()
    u = rng.standard_normal(x.shape)
    u -= u.mean()
    u -= (u * xc).sum() / (xc * xc).sum() * xc
    c = np.sqrt((xc * xc).sum() * (1 / r**2 - 1) / (u * u).sum())
    return x + c * u


def make_criteria_run(run: Path) -> dict:
    """A run folder as steps 01 and 04 leave it, 2 channels of 8×8:

    * training: 12 images of values 40-215, one subject each, except that
      images 0 and 1 are neighbouring slices (10, 11) of subject S0 and
      image 1 is image 0 plus a little noise (a near-duplicate slice);
    * held-out: 10 random images (subjects T0-T9);
    * diffusion (8): exact copies of training images 2, 3, 4; a copy of 5
      at r = 0.97 in each channel (above 0.95, below 0.99); a near copy of
      training image 0 (its neighbour slice 1 is almost as close and must
      not count as the second match); a constant image; copies of held-out
      images 0 and 1;
    * stylegan (6): channel t1 copied from training image 6 with channel
      t2 new; an exact copy of training image 7; a constant channel t2;
      three new random images.
    """
    run = Path(run)
    rng = np.random.default_rng(12)
    train = rng.integers(40, 216, (12, 2, 8, 8)).astype(float)
    train[1] = train[0] + rng.normal(0, 4, (2, 8, 8))
    test = rng.integers(40, 216, (10, 2, 8, 8)).astype(float)
    diffusion = np.stack([train[2], train[3], train[4],
                          np.stack([_orthogonal_near_copy(train[5, c], 0.97, rng) for c in range(2)]),
                          train[0] + rng.normal(0, 2, (2, 8, 8)), np.full((2, 8, 8), 128.0), test[0], test[1]])
    stylegan = np.stack([np.stack([train[6, 0], rng.integers(40, 216, (8, 8))]), train[7],
                         np.stack([rng.integers(40, 216, (8, 8)), np.full((8, 8), 90)]),
                         *rng.integers(40, 216, (3, 2, 8, 8))])
    arrays = {name: np.clip(np.rint(a), 0, 255).astype(np.uint8)
              for name, a in (("train", train), ("test", test), ("diffusion", diffusion), ("stylegan", stylegan))}
    data = run / "data"
    data.mkdir(parents=True)
    np.save(data / "train.npy", arrays["train"])
    np.save(data / "test.npy", arrays["test"])
    subjects = ["S0", "S0"] + [f"S{i}" for i in range(2, 12)]
    common.write_csv(data / "train.csv", pd.DataFrame({"index": range(12), "subject": subjects,
                                                       "slice": [10, 11] + [50] * 10}))
    common.write_csv(data / "test.csv", pd.DataFrame({"index": range(10), "subject": [f"T{i}" for i in range(10)],
                                                      "slice": 50}))
    common.write_json(data / "meta.json", {"dataset": "toy", "channels": ["t1", "t2"], "image_size": 8,
                                           "n_train": 12})
    (run / "samples").mkdir()
    for model in ("diffusion", "stylegan"):
        np.save(run / "samples" / f"{model}.npy", arrays[model])
    return arrays


def _best_r(samples: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Brute force: the largest Pearson r of each sample with any training
    image (NaN for a constant sample), in float64."""
    s = samples.reshape(len(samples), -1).astype(float)
    t = train.reshape(len(train), -1).astype(float)
    s, t = s - s.mean(1, keepdims=True), t - t.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (s @ t.T) / np.outer(np.linalg.norm(s, axis=1), np.linalg.norm(t, axis=1))
    return np.where(np.linalg.norm(s, axis=1) > 0, r.max(1), np.nan)


def test_criteria_csv_counts_the_planted_cases(tmp_path):
    from helpers import config
    from helpers.audit import audit_study

    results = tmp_path / "results" / "toy"
    arrays = make_criteria_run(results)
    models = ["diffusion", "stylegan"]
    audit_study(results, config.CorrelateSettings(models=models, n_control=0, top_k=1, backend="numpy"),
                progress=False)
    criteria.judge_every_run(results, models)  # no sweep: the one run is judged all the same
    table = pd.read_csv(results / "correlation" / "criteria.csv")
    assert not (results / "sweep").exists()

    # the held-out images' best correlations fix the baseline percentiles of each measure
    channel = {"t1": slice(0, 1), "t2": slice(1, 2), "all": slice(0, 2)}
    baseline = {m: _best_r(arrays["test"][:, c], arrays["train"][:, c]) for m, c in channel.items()}
    assert (baseline["all"] < 0.5).all()  # random images: far below every fixed threshold

    def expected_r(group, measure):
        c = channel[measure]
        return baseline[measure] if group == criteria.REAL else _best_r(arrays[group][:, c], arrays["train"][:, c])

    # every (group, criterion): k of n, from the construction (see make_criteria_run)
    fixed = {"diffusion": {0.95: (5, 7), 0.99: (4, 7)}, "stylegan": {0.95: (1, 6), 0.99: (1, 6)},
             criteria.REAL: {0.95: (0, 10), 0.99: (0, 10)}}
    per_channel = {("stylegan", "t1"): {0.95: (2, 6), 0.99: (2, 6)},  # the copied t1 counts on t1 alone
                   ("stylegan", "t2"): {0.95: (1, 5), 0.99: (1, 5)}}  # the constant t2 cannot be judged
    # above the held-out images' 95th/99th percentiles (0.19-0.33 here): the five copies; for stylegan the
    # exact copy, the copied t1 (on t1 and, at r = 0.52, jointly) and nothing of the new images
    baseline_counts = {"diffusion": {"t1": (5, 7), "t2": (5, 7), "all": (5, 7)},
                       "stylegan": {"t1": (2, 6), "t2": (1, 5), "all": (3, 6)}}
    expected = {}
    for group in ("diffusion", "stylegan", criteria.REAL):
        for measure in ("t1", "t2", "all"):
            for t, kn in per_channel.get((group, measure), fixed[group]).items():
                expected[(group, f"{measure}: r > fixed_{t:.2f}")] = kn
            if group != criteria.REAL:  # the held-out images define the percentiles: judged by the fixed ones only
                for p in (95, 99):
                    expected[(group, f"{measure}: r > baseline_p{p}")] = baseline_counts[group][measure]
    # Gu et al.'s ℓ2 ratio: the three copies, the r = 0.97 copy and the near copy of slice 10 (its
    # neighbour slice 11, at 0.44 × the second distance otherwise, is excluded from the second match);
    # stylegan's exact copy only
    expected[("diffusion", criteria.L2_CRITERION)] = (5, 8)
    expected[("stylegan", criteria.L2_CRITERION)] = (1, 6)
    expected[(criteria.REAL, criteria.L2_CRITERION)] = (0, 10)
    # what fixes the baseline counts: the percentiles lie below the copies and above the rest
    for measure in channel:
        top = np.percentile(baseline[measure], 99)
        assert np.percentile(baseline[measure], 95) <= top < 0.35
        assert (expected_r("diffusion", measure)[[6, 7]] < np.percentile(baseline[measure], 95)).all()

    got = {(row.group, row.criterion): (row.n_above, row.n_images) for row in table.itertuples()}
    assert got == expected
    assert set(table["size"]) == {12} and set(table["n_subjects"]) == {11} and set(table["headline"]) == {"t1"}
    row = table[(table.group == "diffusion") & (table.criterion == "t1: r > fixed_0.95")].iloc[0]
    from scipy.stats import binomtest

    ci = binomtest(5, 7).proportion_ci(method="wilson")
    assert (row.fraction, row.wilson_low, row.wilson_high) == pytest.approx((5 / 7, ci.low, ci.high), rel=1e-12)
    # the r = 0.97 copy: above 0.95 and below 0.99 in every measure, as planted
    for measure in channel:
        assert 0.95 < expected_r("diffusion", measure)[3] < 0.99


def test_a_new_criterion_is_one_decorated_function_judged_on_every_run(tmp_path):
    from helpers import config
    from helpers.audit import audit_study

    results = tmp_path / "results" / "toy"
    arrays = make_criteria_run(results)
    audit_study(results, config.CorrelateSettings(models=["diffusion"], n_control=0, top_k=1, backend="numpy"),
                progress=False)

    @criteria.criterion("bright")
    def bright(run: criteria.RunData):
        """Toy: an image is 'memorized' when its mean grey level is above the training set's."""
        level = float(np.mean(run.train))
        return {group: {"bright: mean > training mean": (images.reshape(len(images), -1).mean(1) > level)}
                for group, images in run.groups.items()}

    try:
        table, _ = criteria.judge_run(results, ["diffusion"])
    finally:
        criteria.unregister("bright")
    rows = table[table["criterion"] == "bright: mean > training mean"].set_index("group")
    level = arrays["train"].mean()
    expected = {"diffusion": int((arrays["diffusion"].reshape(8, -1).mean(1) > level).sum()),
                criteria.REAL: int((arrays["test"].reshape(10, -1).mean(1) > level).sum())}
    assert rows["n_above"].to_dict() == expected and rows["n_images"].to_dict() == {"diffusion": 8, criteria.REAL: 10}
    # the same rows in the run's criteria.csv and its summary.json, and the built-in ones beside them
    written = pd.read_csv(results / "correlation" / "criteria.csv")
    pd.testing.assert_frame_equal(written, table, check_dtype=False)
    summary = common.read_json(results / "correlation" / "summary.json")
    assert {r["criterion"] for r in summary["criteria"]} == set(table["criterion"])
    assert criteria.L2_CRITERION in set(table["criterion"]) and "bright" not in criteria.CRITERIA
