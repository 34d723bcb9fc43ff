"""The size sweep: nested whole-subject subsets, size folders, runs side by side, and the criteria
table (criteria.csv) of hand-made run folders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import common, sweep


def train_table(slices_per_subject=(5, 7, 4), first_rank=0) -> pd.DataFrame:
    rows = []
    for rank, n in enumerate(slices_per_subject, start=first_rank):
        for k in range(n):
            rows.append({"subject": f"S{rank}", "slice": 40 + 2 * k, "split_rank": rank})
    table = pd.DataFrame(rows).sample(frac=1.0, random_state=0).reset_index(drop=True)  # any row order
    return table.assign(index=np.arange(len(table)))


def test_centre_out_prefixes_are_contiguous_blocks_around_the_middle():
    for n in range(1, 9):
        order = sweep.centre_out(range(n))
        assert sorted(order) == list(range(n))
        for m in range(1, n + 1):
            block = sorted(order[:m])
            assert block == list(range(block[0], block[0] + m))
            assert (n - 1) // 2 in block


def test_subsets_are_nested_whole_subjects_in_split_order():
    table = train_table()
    subsets = sweep.nested_subsets(table, [3, 5, 8, 16])
    assert [len(v) for v in subsets.values()] == [3, 5, 8, 16]
    sets = [set(v.tolist()) for v in subsets.values()]
    assert all(a < b for a, b in zip(sets, sets[1:]))  # each contains the smaller ones
    by_index = table.set_index("index")
    assert set(by_index.loc[subsets[5], "subject"]) == {"S0"}  # the first subject whole
    assert set(by_index.loc[subsets[8], "subject"]) == {"S0", "S1"}
    slab = by_index.loc[subsets[8]]
    s1 = sorted(slab[slab.subject == "S1"].slice)  # 3 contiguous slices around S1's middle (46)
    assert s1 == [44, 46, 48]
    with pytest.raises(ValueError, match="asks for 17 training images but the training split has 16"):
        sweep.nested_subsets(table, [17])
    with pytest.raises(ValueError, match="positive"):
        sweep.nested_subsets(table, [0, 3])


def test_one_slice_per_subject_takes_every_subject_s_middle_first():
    table = train_table()
    subsets = sweep.nested_subsets(table, [3, 6], rule="one_per_subject")
    by_index = table.set_index("index")
    first = by_index.loc[subsets[3]]
    assert sorted(first.subject) == ["S0", "S1", "S2"]  # one slice of each subject
    assert dict(zip(first.subject, first.slice)) == {"S0": 44, "S1": 46, "S2": 42}  # their middle slices
    assert set(subsets[3]) < set(subsets[6])
    with pytest.raises(ValueError, match="subset rule"):
        sweep.image_order(table, "random")


def make_results(tmp_path):
    results = tmp_path / "results" / "toy"
    data = results / "data"
    data.mkdir(parents=True)
    table = train_table()
    rng = np.random.default_rng(0)
    np.save(data / "train.npy", rng.integers(0, 256, (len(table), 2, 8, 8), dtype=np.uint8))
    common.write_csv(data / "train.csv", table)
    np.save(data / "test.npy", rng.integers(0, 256, (3, 2, 8, 8), dtype=np.uint8))
    common.write_csv(data / "test.csv", pd.DataFrame({"index": range(3), "subject": "T9", "slice": [1, 2, 3]}))
    common.write_json(data / "meta.json", {"channels": ["a", "b"], "image_size": 8, "n_train": len(table)})
    return results


def test_size_folders_hold_the_subset_and_the_shared_held_out_set(tmp_path):
    results = make_results(tmp_path)
    assert sweep.run_dirs(results) == {"all": results}
    sizes = sweep.prepare(results, [8, 3])
    assert sizes["size"].tolist() == [3, 8] and sizes["n_subjects"].tolist() == [1, 2]
    runs = sweep.run_dirs(results)
    assert list(runs) == ["n00003", "n00008"]
    full = np.load(results / "data" / "train.npy")
    test = np.load(results / "data" / "test.npy")
    for folder in runs.values():
        train = np.load(folder / "data" / "train.npy")
        index = pd.read_csv(folder / "data" / "train.csv")
        assert np.array_equal(train, full[index["full_index"]]) and index["index"].tolist() == list(range(len(train)))
        assert np.array_equal(np.load(folder / "data" / "test.npy"), test)
        assert set(index.subject).isdisjoint(pd.read_csv(folder / "data" / "test.csv").subject)
        meta = common.read_json(folder / "data" / "meta.json")
        assert meta["n_train"] == len(train) and meta["channels"] == ["a", "b"]
    both = sweep.prepare(results, [3], ["whole_subjects", "one_per_subject"])
    assert both["label"].tolist() == ["n00003", "n00003_one_per_subject"] and both["n_subjects"].tolist() == [1, 3]
    # without a sweep the one run is the results folder again
    assert sweep.prepare(results, None) is None and sweep.run_dirs(results) == {"all": results}


def _pid_and_threads(x):
    import torch

    return x, os.getpid(), torch.get_num_threads()


def test_runs_side_by_side_in_worker_processes_of_one_thread():
    out = sweep.run_side_by_side(_pid_and_threads, [(1,), (2,), (3,)], workers=2)
    assert [x for x, _, _ in out] == [1, 2, 3]
    assert all(pid != os.getpid() and threads == 1 for _, pid, threads in out)
    assert sweep.run_side_by_side(_pid_and_threads, [(1,)], workers=2)[0][1] == os.getpid()


def _fail_on_two(x):
    if x == 2:
        raise ValueError("run 2 broke")
    return x


def test_a_failed_run_is_raised_after_the_others_finished():
    with pytest.raises(ValueError, match="run 2 broke"):
        sweep.run_side_by_side(_fail_on_two, [(1,), (2,), (3,)], workers=2)


def test_capacity_table_keeps_its_columns_when_no_rule_has_two_sizes(tmp_path, monkeypatch):
    from helpers import memorization

    table = memorization.criteria_table({"diffusion": {"l2": [1.0, 0.0]}}, size=16, n_subjects=1)
    table = table.assign(headline="t1ce", rule="whole_subjects")
    monkeypatch.setattr(sweep, "run_dirs", lambda results_dir: {"n00016": tmp_path})
    monkeypatch.setattr(sweep, "run_criteria", lambda path, models: (table, pd.DataFrame({"rule": ["whole_subjects"]})))
    out = sweep.memorization_tables(tmp_path, ["diffusion"])
    assert out["capacity"].empty and {"rule", "group", "criterion", "status", "capacity", "above"} <= set(out["capacity"])


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
    from helpers.correlate import audit_study

    results = tmp_path / "results" / "toy"
    arrays = make_criteria_run(results)
    models = ["diffusion", "stylegan"]
    audit_study(results, config.CorrelateSettings(models=models, n_control=0, top_k=1, backend="numpy"),
                progress=False)
    sweep.memorization_tables(results, models)
    table = pd.read_csv(results / "sweep" / "criteria.csv")

    # the held-out images' best correlations fix the baseline percentiles of each measure
    channel = {"t1": slice(0, 1), "t2": slice(1, 2), "all": slice(0, 2)}
    baseline = {m: _best_r(arrays["test"][:, c], arrays["train"][:, c]) for m, c in channel.items()}
    assert (baseline["all"] < 0.5).all()  # random images: far below every fixed threshold

    def expected_r(group, measure):
        c = channel[measure]
        return baseline[measure] if group == sweep.REAL else _best_r(arrays[group][:, c], arrays["train"][:, c])

    # every (group, criterion): k of n, from the construction (see make_criteria_run)
    fixed = {"diffusion": {0.95: (5, 7), 0.99: (4, 7)}, "stylegan": {0.95: (1, 6), 0.99: (1, 6)},
             sweep.REAL: {0.95: (0, 10), 0.99: (0, 10)}}
    per_channel = {("stylegan", "t1"): {0.95: (2, 6), 0.99: (2, 6)},  # the copied t1 counts on t1 alone
                   ("stylegan", "t2"): {0.95: (1, 5), 0.99: (1, 5)}}  # the constant t2 cannot be judged
    # above the held-out images' 95th/99th percentiles (0.19-0.33 here): the five copies; for stylegan the
    # exact copy, the copied t1 (on t1 and, at r = 0.52, jointly) and nothing of the new images
    baseline_counts = {"diffusion": {"t1": (5, 7), "t2": (5, 7), "all": (5, 7)},
                       "stylegan": {"t1": (2, 6), "t2": (1, 5), "all": (3, 6)}}
    expected = {}
    for group in ("diffusion", "stylegan", sweep.REAL):
        for measure in ("t1", "t2", "all"):
            for t, kn in per_channel.get((group, measure), fixed[group]).items():
                expected[(group, f"{measure}: r > fixed_{t:.2f}")] = kn
            if group != sweep.REAL:  # the held-out images define the percentiles: judged by the fixed ones only
                for p in (95, 99):
                    expected[(group, f"{measure}: r > baseline_p{p}")] = baseline_counts[group][measure]
    # Gu et al.'s ℓ2 ratio: the three copies, the r = 0.97 copy and the near copy of slice 10 (its
    # neighbour slice 11, at 0.44 × the second distance otherwise, is excluded from the second match);
    # stylegan's exact copy only
    expected[("diffusion", sweep.L2_CRITERION)] = (5, 8)
    expected[("stylegan", sweep.L2_CRITERION)] = (1, 6)
    expected[(sweep.REAL, sweep.L2_CRITERION)] = (0, 10)
    # what fixes the baseline counts: the percentiles lie below the copies and above the rest
    for measure in channel:
        top = np.percentile(baseline[measure], 99)
        assert np.percentile(baseline[measure], 95) <= top < 0.35
        assert (expected_r("diffusion", measure)[[6, 7]] < np.percentile(baseline[measure], 95)).all()

    got = {(row.group, row.criterion): (row.k, row.n) for row in table.itertuples()}
    assert got == expected
    assert set(table["size"]) == {12} and set(table["n_subjects"]) == {11} and set(table["headline"]) == {"t1"}
    row = table[(table.group == "diffusion") & (table.criterion == "t1: r > fixed_0.95")].iloc[0]
    from scipy.stats import binomtest

    ci = binomtest(5, 7).proportion_ci(method="wilson")
    assert (row.fraction, row.ci_low, row.ci_high) == pytest.approx((5 / 7, ci.low, ci.high), rel=1e-12)
    # the r = 0.97 copy: above 0.95 and below 0.99 in every measure, as planted
    for measure in channel:
        assert 0.95 < expected_r("diffusion", measure)[3] < 0.99
