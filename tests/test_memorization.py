"""Memorization criteria on hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from helpers import memorization as mem


def smooth_images(rng, n, shape=(2, 8, 8)) -> np.ndarray:
    """Random images in [0, 1] that are not mirror-symmetric."""
    return rng.random((n, *shape))


def as_uint8(x) -> np.ndarray:
    return np.clip(np.rint(np.asarray(x) * 255), 0, 255).astype(np.uint8)


@pytest.fixture()
def volume_set():
    """Three subjects × slices 10..14; slice k+1 = slice k plus a small change
    (adjacent slices of a volume are near-duplicates)."""
    rng = np.random.default_rng(0)
    images, rows = [], []
    for subject in ("A", "B", "C"):
        img = rng.random((2, 8, 8)) * 0.6 + 0.2
        for k in range(10, 15):
            images.append(img.copy())
            rows.append({"subject": subject, "slice": k})
            img = np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1)
    return as_uint8(np.stack(images)), pd.DataFrame(rows)


def flags_of(table, ratio=mem.GU_RATIO):
    return mem.l2_ratio_flags(table["nearest_distance"], table["second_distance"], ratio)


def test_default_neighbour_window_from_the_geometry():
    assert [mem.default_neighbour_slices(s) for s in (32, 64, 128, 256, 512)] == [7, 3, 1, 1, 1]
    assert mem.default_neighbour_slices(64, field_of_view_mm=240.0) == 3      # 3.75 mm pixels: 1-3 mm away
    assert mem.default_neighbour_slices(64, slice_spacing_mm=2.0) == 1
    with pytest.raises(ValueError):
        mem.default_neighbour_slices(0)


def test_distinct_pictures_count_slices_less_than_a_pixel_apart_once():
    """The effective size of a training set by the neighbour-slice rule (±7 slices alike at 32²)."""
    window = mem.default_neighbour_slices(32)
    consecutive = pd.DataFrame({"subject": "S0", "slice": range(70, 86)})
    assert mem.distinct_pictures(consecutive, window) == 2              # 70 and 78
    spread = pd.DataFrame({"subject": [f"S{i}" for i in range(16)], "slice": 77})
    assert mem.distinct_pictures(spread, window) == 16
    every_8th = pd.DataFrame({"subject": "S0", "slice": [56, 64, 72, 80]})
    assert mem.distinct_pictures(every_8th, window) == 4                # 8 apart: different pictures
    assert mem.distinct_pictures(every_8th.assign(slice=[56, 63, 70, 77]), window) == 2
    xrays = pd.DataFrame({"subject": ["P0", "P0", "P1"], "slice": -1})
    assert mem.distinct_pictures(xrays, window) == 3                    # no slice number: one picture each
    with pytest.raises(ValueError, match="columns 'subject' and 'slice'"):
        mem.distinct_pictures(pd.DataFrame({"subject": ["S0"]}), window)


def test_exact_copy_is_memorized_by_every_criterion(volume_set):
    train, index = volume_set
    table = mem.nearest_l2(train[[7]], train, index, neighbour_slices=1)
    row = table.iloc[0]
    assert row.nearest_index == 7 and row.nearest_distance == 0.0 and row.ratio == 0.0
    assert row.nearest_subject == "B" and row.nearest_slice == 12
    assert row.n_excluded == 2 and row.second_index not in (6, 8)     # slices 11 and 13 left out
    assert (row.second_subject, row.second_slice) == ("B", 14)          # 2 slices away: a candidate
    assert flags_of(table).tolist() == [1.0]
    thresholds = mem.correlation_thresholds(np.array([0.5, 0.7, 0.8]))
    assert set(thresholds) == {"fixed_0.95", "fixed_0.99", "baseline_p95", "baseline_p99"}
    assert all(mem.exceedance_flags([1.0], t).tolist() == [1.0] for t in thresholds.values())


def test_mirror_image_is_not_memorized_unless_the_training_image_is_symmetric():
    rng = np.random.default_rng(1)
    train = as_uint8(smooth_images(rng, 8))
    mirror = train[[3]][..., ::-1]                                 # x-flip: as far as any other image
    table = mem.nearest_l2(mirror, train)
    assert flags_of(table).tolist() == [0.0] and table.ratio.iloc[0] > 0.5
    # a left-right symmetric training image: its mirror is an exact copy, so it counts as memorized
    symmetric = train.copy()
    symmetric[3] = np.concatenate([train[3][..., :4], train[3][..., :4][..., ::-1]], axis=-1)
    table = mem.nearest_l2(symmetric[[3]][..., ::-1], symmetric)
    assert table.nearest_index.iloc[0] == 3 and flags_of(table).tolist() == [1.0]


def test_blend_of_two_training_images_is_not_memorized(volume_set):
    train, index = volume_set
    blend = as_uint8((train[2].astype(float) + train[12].astype(float)) / 2 / 255)[None]   # subjects A and C
    table = mem.nearest_l2(blend, train, index, neighbour_slices=1)
    assert 0.9 < table.ratio.iloc[0] <= 1.0
    assert flags_of(table).tolist() == [0.0]


def test_held_out_image_is_not_memorized(volume_set):
    train, index = volume_set
    held_out = as_uint8(np.random.default_rng(5).random((3, 2, 8, 8)) * 0.6 + 0.2)
    table = mem.nearest_l2(held_out, train, index, neighbour_slices=1)
    assert np.all(flags_of(table) == 0.0)


def test_neighbour_exclusion_keeps_a_slice_copy_memorized():
    """Slice 11 differs from slice 10 by as much as the copy of slice 10 does:
    without the rule the copy's second neighbour is slice 11 (ratio ≈ 0.7)."""
    rng = np.random.default_rng(2)
    base = rng.random((2, 8, 8)) * 0.6 + 0.2
    step = rng.choice([-1, 1], size=base.shape) * 4 / 255          # 4 grey levels per pixel
    train = as_uint8(np.stack([base, base + step, *(rng.random((4, 2, 8, 8)) * 0.6 + 0.2)]))
    index = pd.DataFrame({"subject": ["A", "A", "B", "C", "D", "E"], "slice": [10, 11, 10, 20, 30, 40]})
    noise = rng.choice([-1, 1], size=base.shape) * 4 / 255
    copy = as_uint8(base + noise)[None]
    without = mem.nearest_l2(copy, train, index, neighbour_slices=0)
    assert without.nearest_index.iloc[0] == 0 and without.second_index.iloc[0] == 1
    assert 0.55 < without.ratio.iloc[0] < 0.85 and flags_of(without).tolist() == [0.0]
    with_rule = mem.nearest_l2(copy, train, index, neighbour_slices=1)
    assert with_rule.second_subject.iloc[0] != "A" and with_rule.n_excluded.iloc[0] == 1
    assert flags_of(with_rule).tolist() == [1.0]
    assert with_rule.attrs["neighbour_slices"] == 1
    # default window at 8×8 pixels (32 mm) is 31 slices: also covers slice 11
    assert mem.nearest_l2(copy, train, index).attrs["neighbour_slices"] == 31
    # 2D data (no slice numbers): nothing is excluded
    flat = index.assign(slice=-1)
    two_d = mem.nearest_l2(copy, train, flat, neighbour_slices=3)
    assert two_d.n_excluded.iloc[0] == 0 and two_d.second_index.iloc[0] == 1
    assert two_d.attrs["neighbour_slices"] == 0


def brute_force(syn, train, index, window):
    s = syn.reshape(len(syn), -1).astype(float) / 255
    t = train.reshape(len(train), -1).astype(float) / 255
    d = np.sqrt(((s[:, None] - t[None]) ** 2).sum(-1))
    out = []
    for row in d:
        j = int(np.lexsort((np.arange(len(row)), row))[0])
        same = (index.subject.to_numpy() == index.subject[j]) & (np.abs(index.slice.to_numpy() - index.slice[j])
                                                                 <= window)
        rest = np.where(same, np.inf, row)
        out.append((j, row[j], int(np.argmin(rest)), rest.min()))
    return np.array(out)


@pytest.mark.parametrize("memory_mb", [0.001, 256.0])   # many tiny blocks / one block
def test_matches_brute_force(memory_mb):
    rng = np.random.default_rng(3)
    train = rng.integers(0, 256, (60, 3, 6, 6), dtype=np.uint8)
    train[30:45] = np.clip(train[30].astype(int) + rng.integers(-3, 4, (15, 3, 6, 6)), 0, 255)  # one long volume
    index = pd.DataFrame({"subject": np.repeat(["p", "q", "r", "s"], 15), "slice": np.tile(np.arange(15), 4)})
    syn = np.concatenate([train[[31, 40, 5]], rng.integers(0, 256, (20, 3, 6, 6), dtype=np.uint8),
                          np.clip(train[33:36].astype(int) + 2, 0, 255).astype(np.uint8)])
    table = mem.nearest_l2(syn, train, index, neighbour_slices=3, memory_mb=memory_mb)
    ref = brute_force(syn, train, index, 3)
    assert np.array_equal(table.nearest_index.to_numpy(), ref[:, 0].astype(int))
    np.testing.assert_allclose(table.nearest_distance, ref[:, 1], rtol=1e-12, atol=1e-12)
    assert np.array_equal(table.second_index.to_numpy(), ref[:, 2].astype(int))
    np.testing.assert_allclose(table.second_distance, ref[:, 3], rtol=1e-12, atol=1e-12)
    assert table.nearest_distance.iloc[0] == 0.0      # exact zero for a copy, not rounding noise


def test_distances_are_in_unit_pixel_space():
    train = np.zeros((2, 1, 4, 4), dtype=np.uint8)
    train[1] = 255
    syn = train[[0]].copy()
    syn[0, 0, 0, 0] = 255                               # one pixel fully off
    table = mem.nearest_l2(syn, train)
    assert table.nearest_distance.iloc[0] == pytest.approx(1.0)
    assert table.second_distance.iloc[0] == pytest.approx(math.sqrt(15))
    single = mem.nearest_l2(syn, train[:1])             # no second image: ratio and flag undefined
    assert single.second_index.iloc[0] == -1 and math.isnan(single.ratio.iloc[0])
    assert math.isnan(flags_of(single)[0])


def test_ratio_and_exceedance_flags():
    assert mem.l2_ratio_flags([1.0, 1.0, 0.0, 1.0], [3.01, 3.0, 0.0, np.nan]).tolist()[:3] == [1.0, 0.0, 0.0]
    assert math.isnan(mem.l2_ratio_flags([1.0], [np.nan])[0])
    assert mem.l2_ratio_flags([1.0], [2.1], ratio=0.5).tolist() == [1.0]
    f = mem.exceedance_flags([0.95, 0.951, np.nan], 0.95)                 # strictly greater
    assert f[:2].tolist() == [0.0, 1.0] and math.isnan(f[2])
    th = mem.correlation_thresholds(np.r_[np.linspace(0, 1, 101), np.nan])
    assert th["baseline_p95"] == pytest.approx(0.95) and th["baseline_p99"] == pytest.approx(0.99)
    assert set(mem.correlation_thresholds(None)) == {"fixed_0.95", "fixed_0.99"}


def test_wilson_interval_edges():
    lo, hi = mem.wilson_interval(0, 64)
    assert lo == 0.0 and hi == pytest.approx(0.0566, abs=5e-4)
    lo, hi = mem.wilson_interval(64, 64)
    assert hi == 1.0 and lo == pytest.approx(1 - 0.0566, abs=5e-4)
    z = 1.959963984540054                                     # the closed form at 7/20
    p, n = 7 / 20, 20
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert mem.wilson_interval(7, 20) == pytest.approx((centre - half, centre + half), abs=1e-9)
    assert all(math.isnan(v) for v in mem.wilson_interval(0, 0))
    with pytest.raises(ValueError, match="0 ≤ k ≤ n"):
        mem.wilson_interval(5, 4)


def test_wilson_interval_is_bit_for_bit_scipy_s():
    """Written out for speed (no scipy.stats import), so it must equal scipy's exactly."""
    from scipy.stats import binomtest

    for confidence in (0.95, 0.9):
        for n in (*range(1, 70), 361, 2828, 100001):
            for k in sorted({0, 1, n // 3, n // 2, n - 1, n} & set(range(n + 1))):
                ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
                assert mem.wilson_interval(k, n, confidence) == (float(ci.low), float(ci.high)), (k, n, confidence)


def test_coverage_counts():
    index = pd.DataFrame({"subject": ["a", "a", "b", "c", "c"], "slice": [1, 2, 1, 1, 2]})
    nearest = [0, 0, 1, 3, 4, 4]
    flags = np.array([1.0, 1.0, 0.0, 1.0, np.nan, 0.0])
    out = mem.coverage(nearest, flags, 5, index)
    assert out == {"n_training": 5, "n_samples": 5, "n_flagged": 3, "n_covered": 2, "fraction": 0.4,
                   "n_subjects": 3, "n_subjects_covered": 2, "subject_fraction": 2 / 3}
    assert mem.coverage(nearest, np.zeros(6, bool), 5)["n_covered"] == 0
    table = mem.coverage_table({"m": (nearest, {"l2": flags, "none": np.zeros(6, bool)})}, 5, size=5)
    assert table[["group", "criterion", "n_covered"]].values.tolist() == [["m", "l2", 2], ["m", "none", 0]]
    with pytest.raises(ValueError):
        mem.coverage([0, 9], [True, True], 5)


def test_criteria_table():
    flags = {"diffusion": {"l2_ratio": np.array([1.0, 0.0, np.nan, 1.0]), "corr": np.array([True, False, False, True])},
             "real_test": {"l2_ratio": np.zeros(5, bool)}}
    table = mem.criteria_table(flags, size=120, n_subjects=3)
    assert list(table.columns) == mem.TABLE_COLUMNS
    first = table.iloc[0]
    assert (first["size"], first.n_subjects, first.group, first.criterion, first.n_images, first.n_above) == \
        (120, 3, "diffusion", "l2_ratio", 3, 2)
    assert first.fraction == pytest.approx(2 / 3)
    assert (first.wilson_low, first.wilson_high) == pytest.approx(mem.wilson_interval(2, 3))
    assert table.iloc[2].n_above == 0 and table.iloc[2].wilson_low == 0.0
    empty = mem.criteria_table({"g": {"c": np.array([np.nan])}}, size=1)
    assert empty.n_images.iloc[0] == 0 and math.isnan(empty.fraction.iloc[0]) and empty.n_subjects.isna().all()


def series(fractions, sizes=(100, 200, 400, 800), n=20, group="diffusion", criterion="l2_ratio"):
    tables = []
    for size, f in zip(sizes, fractions):
        k = round(f * n)
        tables.append(mem.criteria_table({group: {criterion: np.r_[np.ones(k), np.zeros(n - k)]}}, size))
    return pd.concat(tables, ignore_index=True)


def test_capacity_monotone():
    cap = mem.memorization_capacity(series([1.0, 0.95, 0.5, 0.1]), "l2_ratio", "diffusion")
    assert (cap.status, cap.capacity, cap.below, cap.above, cap.monotone) == ("bracketed", 200, 100, 400, True)
    assert cap.conservative == 200 and "between 200 and 400" in cap.message
    every = mem.memorization_capacity(series([1.0, 1.0, 0.95, 0.9]), "l2_ratio", "diffusion")
    assert (every.status, every.capacity, every.above, every.below) == ("reached at every size", 800, None, 400)
    assert "every size" in every.message
    never = mem.memorization_capacity(series([0.85, 0.5, 0.2, 0.0]), "l2_ratio", "diffusion")
    assert (never.status, never.capacity, never.above, never.conservative) == ("not reached at any size", None, 100,
                                                                                None)
    assert "below 100" in never.message
    assert mem.memorization_capacity(series([0.85, 0.5, 0.2, 0.0]), "l2_ratio", "diffusion",
                                     fraction=0.8).capacity == 100


def test_capacity_not_monotone():
    cap = mem.memorization_capacity(series([0.95, 0.5, 0.95, 0.1]), "l2_ratio", "diffusion")
    assert (cap.status, cap.capacity, cap.below, cap.above) == ("bracketed", 400, 200, 800)
    assert (cap.monotone, cap.exceptions, cap.conservative) == (False, [200], 100)
    assert "not monotone" in cap.message
    top = mem.memorization_capacity(series([0.5, 0.95, 0.2, 0.95]), "l2_ratio", "diffusion")
    assert (top.status, top.capacity, top.exceptions, top.conservative) == \
        ("reached at the largest size", 800, [100, 400], None)
    assert cap.as_dict()["sizes"] == [100, 200, 400, 800]


def test_capacity_errors_and_skips():
    table = series([1.0, 0.95, 0.5, 0.1])
    with pytest.raises(ValueError, match="no rows"):
        mem.memorization_capacity(table, "corr", "diffusion")
    with pytest.raises(ValueError, match="several rows"):
        mem.memorization_capacity(pd.concat([table, table]), "l2_ratio", "diffusion")
    unjudged = pd.concat([table, mem.criteria_table({"diffusion": {"l2_ratio": np.array([np.nan])}}, 1600)])
    assert mem.memorization_capacity(unjudged, "l2_ratio", "diffusion").sizes == [100, 200, 400, 800]
