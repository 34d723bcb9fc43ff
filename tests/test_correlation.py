"""The all-pairs correlation engine (helpers.correlation) against
scipy.stats.pearsonr, on small sets the tests make themselves. The exactness
tests run on both arithmetics of uint8 images: the float path (float32
products, exact re-score) and the integer path (int8 products)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from scipy.stats import pearsonr

from helpers import audit, correlation

RNG = np.random.default_rng(20250101)


def random_set(n, shape=(3, 8, 8), dtype=np.uint8, rng=RNG):
    if np.dtype(dtype) == np.uint8:
        return rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    return (rng.standard_normal((n, *shape)) * 40 + 100).astype(dtype)


def smooth_set(n, size=32, channels=1, rng=RNG):
    """Image-like uint8 sets: smooth fields, so a one-pixel shift keeps them alike."""
    field = gaussian_filter(rng.random((n, channels, size, size)), sigma=(0, 0, 2.5, 2.5))
    lo = field.min(axis=(1, 2, 3), keepdims=True)
    hi = field.max(axis=(1, 2, 3), keepdims=True)
    return np.rint(255 * (field - lo) / (hi - lo)).astype(np.uint8)


def flat(images, channels=None):
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[:, None]
    if channels is not None:
        x = x[:, np.atleast_1d(channels)]
    return x.reshape(len(x), -1).astype(np.float64)


def brute_force(synthetic, training, k, channels=None):
    """Top-k by scipy.stats.pearsonr, ties to the lowest index; -1/NaN for constants."""
    s, t = flat(synthetic, channels), flat(training, channels)
    idx = np.full((len(s), k), -1)
    val = np.full((len(s), k), np.nan)
    for i, a in enumerate(s):
        if np.ptp(a) == 0:
            continue
        row = np.array([pearsonr(a, b)[0] if np.ptp(b) > 0 else -np.inf for b in t])
        order = np.lexsort((np.arange(len(t)), -row))[:k]
        order = order[np.isfinite(row[order])]
        idx[i, : len(order)] = order
        val[i, : len(order)] = row[order]
    return idx, val


#: both arithmetics (uint8 images); float inputs always take the float path
ARITH = pytest.mark.parametrize("arith", ["float", "integer"])
DTYPE_ARITH = [(np.uint8, "float"), (np.uint8, "integer"), (np.float32, "float"), (np.float64, "float")]


def _is_uint8(images) -> bool:
    return correlation.open_images(images).dtype == np.uint8


def matches(synthetic, training, groups=None, arith="float", **kw):
    """The engine on the CPU; ``arith`` = the arithmetic of uint8 inputs."""
    kw.setdefault("progress", False)
    kw.setdefault("backend", "numpy")
    kw.setdefault("arithmetic", arith if _is_uint8(synthetic) and _is_uint8(training) else "float")
    if groups is not None:
        return correlation.match_groups(synthetic, training, groups, **kw)
    return correlation.top_matches(synthetic, training, **kw)


# --------------------------------------------------------------------------
# Exactness against scipy
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype, arith", DTYPE_ARITH)
@pytest.mark.parametrize("channels", [None, 1, [0, 2]])
@pytest.mark.parametrize("chunk", [None, 7, 41])
def test_top_k_equals_pearsonr(dtype, arith, channels, chunk):
    syn, tra = random_set(23, dtype=dtype), random_set(41, dtype=dtype)
    k = 3
    res = matches(syn, tra, k=k, channels=channels, chunk_size=chunk, block_size=None if chunk is None else 5,
                  arith=arith)
    assert res.stats["arithmetic"] == arith
    idx, val = brute_force(syn, tra, k, channels)
    np.testing.assert_array_equal(res.index, idx)
    np.testing.assert_allclose(res.correlation, val, atol=1e-5, rtol=0)
    assert np.nanmax(np.abs(res.correlation - val)) < 1e-12  # in fact exact to float64 rounding


@ARITH
def test_image_shapes_n_h_w_and_flattened(arith):
    syn, tra = random_set(9, shape=(6, 5)), random_set(17, shape=(6, 5))
    a = matches(syn, tra, k=2, arith=arith)
    b = matches(syn.reshape(9, -1), tra.reshape(17, -1), k=2, arith=arith)
    idx, val = brute_force(syn, tra, 2)
    np.testing.assert_array_equal(a.index, idx)
    np.testing.assert_array_equal(b.index, idx)
    np.testing.assert_allclose(a.correlation, val, atol=1e-12, rtol=0)


@ARITH
def test_large_images_exact(arith):
    """At 256×256 the float32 products alone drift by ~1e-5; re-scoring is
    exact, and so are the integer path's int8 products."""
    syn = smooth_set(4, size=256)
    tra = np.concatenate([smooth_set(12, size=256), syn[:1]])
    res = matches(syn, tra, k=2, arith=arith)
    idx, val = brute_force(syn, tra, 2)
    np.testing.assert_array_equal(res.index, idx)
    assert np.abs(res.correlation - val).max() < 1e-12
    assert res.best_index[0] == 12 and res.best_correlation[0] == 1.0


@ARITH
def test_chunking_invariance(arith):
    syn, tra = random_set(31, shape=(2, 6, 6)), random_set(57, shape=(2, 6, 6))
    tra[40] = tra[3]  # a tie across chunks
    ref = matches(syn, tra, k=4, arith=arith)
    for chunk, block in [(1, 1), (5, 3), (57, 31), (13, 8), (56, 30)]:
        res = matches(syn, tra, k=4, chunk_size=chunk, block_size=block, arith=arith)
        np.testing.assert_array_equal(res.index, ref.index)
        np.testing.assert_array_equal(res.correlation, ref.correlation)  # bitwise


@ARITH
def test_memory_budget_plans_blocks_and_keeps_results(arith):
    syn, tra = random_set(40, shape=(1, 16, 16)), random_set(50, shape=(1, 16, 16))
    ref = matches(syn, tra, k=2, arith=arith)
    small = matches(syn, tra, k=2, memory_budget=16 * 1024, arith=arith)  # forces several blocks
    assert small.stats["plan"]["n_blocks"] > 1
    np.testing.assert_array_equal(small.index, ref.index)
    np.testing.assert_array_equal(small.correlation, ref.correlation)
    plan = correlation.plan_sizes(10**5, 10**5, 65536, 2 * 1024**3)
    resident = plan["block_size"] * (65536 * 4 + 4 * plan["chunk_size"])
    assert resident <= 2 * 1024**3 and plan["chunk_size"] >= 256


@ARITH
def test_float64_precision_mode_agrees(arith):
    syn, tra = random_set(12), random_set(30)
    a = matches(syn, tra, k=3, arith=arith)
    b = matches(syn, tra, k=3, precision="float64")
    np.testing.assert_array_equal(a.index, b.index)
    np.testing.assert_allclose(a.correlation, b.correlation, atol=1e-12, rtol=0)


# --------------------------------------------------------------------------
# Copies, ties and constants
# --------------------------------------------------------------------------

@ARITH
def test_planted_exact_copies_found_with_correlation_one(arith):
    tra = smooth_set(60)
    planted = np.array([3, 17, 42, 59])
    syn = np.concatenate([tra[planted], smooth_set(5)])
    res = matches(syn, tra, chunk_size=16, arith=arith)
    np.testing.assert_array_equal(res.best_index[:4], planted)
    assert np.all(res.best_correlation[:4] == 1.0)
    assert np.all(res.best_correlation[4:] < 1.0)


@ARITH
def test_ties_go_to_the_lowest_training_index(arith):
    tra = smooth_set(50)
    tra[9] = tra[33]  # duplicates in different chunks
    tra[34] = tra[33]
    syn = tra[[33]].copy()
    res = matches(syn, tra, k=3, chunk_size=10, arith=arith)
    np.testing.assert_array_equal(res.index[0], [9, 33, 34])
    assert np.all(res.correlation[0] == 1.0)
    # an exact affine intensity change (y = x/2 + 10 of even x) is a perfect
    # correlation too (r == 1.0 exactly): it ties with the copies, and ranks first by index
    even = (tra[33] // 2) * 2
    tra2 = tra.copy()
    tra2[[9, 33, 34]] = even
    tra2[2] = even // 2 + 10
    res2 = matches(even[None], tra2, k=3, chunk_size=10, arith=arith)
    np.testing.assert_array_equal(res2.index[0], [2, 9, 33])
    assert np.all(res2.correlation[0] == 1.0)


@ARITH
@pytest.mark.parametrize("kind", audit.CONTROL_KINDS)
def test_perturbed_copies_ranked_first(kind, arith):
    tra = smooth_set(80, size=32, channels=2)
    images, table = audit.make_control(correlation.open_images(tra), 12, seed=1, noise_sd=10.0,
                                           kinds=(kind,))
    res = matches(images, tra, k=2, arith=arith)
    np.testing.assert_array_equal(res.best_index, table["planted_index"].to_numpy())
    if kind == "copy":
        assert np.all(res.best_correlation == 1.0)
    else:
        assert np.all(res.best_correlation < 1.0)
        assert np.all(res.best_correlation > res.correlation[:, 1])


@ARITH
def test_constant_images_are_excluded_and_counted(arith):
    syn, tra = random_set(10), random_set(20)
    syn[2] = 0
    syn[7] = 200
    tra[5] = 17
    tra[11] = 255
    with np.errstate(all="raise"):  # no silent NaN arithmetic either
        res = matches(syn, tra, k=20, arith=arith)
    assert res.constant.tolist() == [i in (2, 7) for i in range(10)]
    assert np.all(res.index[[2, 7]] == -1) and np.all(np.isnan(res.correlation[[2, 7]]))
    assert res.train_constant.sum() == 2 and res.stats["n_train_constant"] == 2
    assert res.stats["n_synthetic_constant"] == 2
    ok = ~res.constant
    assert not np.isin(res.index[ok], [5, 11]).any()
    assert np.all(res.index[ok][:, :18] >= 0) and np.all(res.index[ok][:, 18:] == -1)  # 18 valid images
    idx, val = brute_force(syn, tra, 20)
    np.testing.assert_array_equal(res.index, idx)
    np.testing.assert_allclose(res.correlation, val, atol=1e-12, rtol=0)
    table = res.best_frame()
    assert table["constant"].sum() == 2 and table["correlation"].isna().sum() == 2


def test_constant_float_images_and_all_constant_training():
    syn = random_set(4, dtype=np.float32)
    syn[1] = 0.3
    tra = np.full((6, 3, 8, 8), 0.5, np.float32)
    res = matches(syn, tra)
    assert res.constant.tolist() == [False, True, False, False]
    assert np.all(res.best_index == -1) and np.all(np.isnan(res.best_correlation))
    assert res.train_constant.all()


@pytest.mark.parametrize("dtype, arith", DTYPE_ARITH[:3])
def test_near_constant_images_keep_the_right_order(dtype, arith):
    """Bright images with a few varying pixels: the hardest case for float32
    products (large mean, tiny variance); the order must still be exact."""
    n, size = 40, 32
    images = np.full((n, 1, size, size), 250, np.uint8)
    images[:, 0, :3, :3] = RNG.integers(0, 256, (n, 3, 3))
    images[:, 0, 5, 7] = RNG.integers(200, 256, n)
    syn, tra = images[:10].astype(dtype), images[10:].astype(dtype)
    if dtype != np.uint8:
        syn, tra = syn / np.float32(255), tra / np.float32(255)
    res = matches(syn, tra, k=3, arith=arith)
    idx, val = brute_force(syn, tra, 3)
    np.testing.assert_array_equal(res.index, idx)
    np.testing.assert_allclose(res.correlation, val, atol=1e-12, rtol=0)


@ARITH
def test_band_overflow_falls_back_to_float64_and_stays_exact(arith):
    """Many near-identical training images: more candidates within the
    float32 tolerance than max_candidates -> second pass in float64 (the
    integer path has exact values and no band: no second pass)."""
    base = smooth_set(1, size=32)[0]
    tra = np.repeat(base[None], 30, axis=0)
    for i in range(30):  # change one pixel by a tiny amount each
        tra[i, 0, i % 32, (3 * i) % 32] = np.clip(int(base[0, i % 32, (3 * i) % 32]) + (1 if i % 2 else -1), 0, 255)
    syn = base[None].copy()
    res = matches(syn, tra, k=2, max_candidates=3, arith=arith)
    assert res.stats["fallback_rows"] == (1 if arith == "float" else 0)
    idx, val = brute_force(syn, tra, 2)
    np.testing.assert_array_equal(res.index, idx)
    np.testing.assert_allclose(res.correlation, val, atol=1e-12, rtol=0)


# --------------------------------------------------------------------------
# Several measures in one pass (match_groups)
# --------------------------------------------------------------------------

GROUPS = {"c0": 0, "c1": [1], "c2": 2, "all": None, "c02": [0, 2]}
GROUP_CHANNELS = {"c0": [0], "c1": [1], "c2": [2], "all": [0, 1, 2], "c02": [0, 2]}


@pytest.mark.parametrize("dtype, arith", DTYPE_ARITH[:3])
@pytest.mark.parametrize("chunk, block", [(None, None), (7, 5), (41, 23)])
def test_groups_equal_pearsonr_per_channel(dtype, arith, chunk, block):
    """Each group equals brute-force pearsonr on its own channels, with ties
    and with images constant in one channel only."""
    syn, tra = random_set(23, dtype=dtype), random_set(41, dtype=dtype)
    tra[30] = tra[4]  # a tie in every group
    tra[35, 1] = tra[9, 1]  # a tie in channel 1 only
    syn[6] = tra[4]
    syn[7, 1] = tra[9, 1]
    syn[3, 2] = 17  # constant in channel 2 only
    syn[8] = 40  # constant everywhere
    tra[12, 0] = 99  # a training image constant in channel 0 only
    res = matches(syn, tra, k=3, chunk_size=chunk, block_size=block, groups=GROUPS, arith=arith)
    assert list(res) == list(GROUPS)
    for name, channels in GROUP_CHANNELS.items():
        idx, val = brute_force(syn, tra, 3, channels)
        np.testing.assert_array_equal(res[name].index, idx, err_msg=name)
        np.testing.assert_allclose(res[name].correlation, val, atol=1e-12, rtol=0, err_msg=name)
    assert res["c2"].constant[3] and not res["c0"].constant[3] and not res["all"].constant[3]
    assert all(res[n].constant[8] for n in GROUPS)
    assert res["c0"].train_constant[12] and res["c0"].stats["n_train_constant"] == 1
    assert not res["c1"].train_constant[12] and not res["all"].train_constant.any()
    assert not np.isin(res["c0"].index, [12]).any()  # never matched where it is constant
    assert res["c0"].index[6, 0] == 4 and res["c0"].index[6, 1] == 30  # ties to the lowest index
    assert res["c1"].index[7, 0] == 9 and res["c1"].index[7, 1] == 35
    if dtype == np.uint8:
        assert res["all"].correlation[6, 0] == 1.0 and res["c1"].correlation[7, 0] == 1.0


def matches_groups(synthetic, training, groups, arith="float", **kw):
    return matches(synthetic, training, groups, arith, **kw)


@ARITH
def test_joint_group_and_single_groups_equal_separate_runs_bitwise(arith):
    syn, tra = smooth_set(12, size=24, channels=3), smooth_set(40, size=24, channels=3)
    syn[2] = tra[17]
    # names resolve through the training set's channel names
    names = ["a", "b", "c"]
    res = matches_groups(syn, correlation.open_images(tra, channel_names=names), {"t1": "a", "all": "all", "c": "c"},
                         k=4, chunk_size=16, arith=arith)
    joint = matches(syn, tra, k=4, chunk_size=16, arith=arith)
    single = matches(syn, tra, k=4, chunk_size=16, channels=2, arith=arith)
    np.testing.assert_array_equal(res["all"].index, joint.index)
    np.testing.assert_array_equal(res["all"].correlation, joint.correlation)  # bitwise: the joint measure is unchanged
    np.testing.assert_array_equal(res["c"].index, single.index)
    np.testing.assert_array_equal(res["c"].correlation, single.correlation)
    assert res["all"].best_correlation[2] == 1.0 and res["t1"].best_index[2] == 17
    assert res["all"].pairs == 12 * 40 and res["all"].stats["groups"] == 3
    assert res["all"].seconds == res["t1"].seconds  # one call


@ARITH
def test_groups_stream_the_training_set_once(monkeypatch, arith):
    syn, tra = random_set(10, shape=(5, 8, 8)), random_set(50, shape=(5, 8, 8))
    reads = []
    original = correlation.ImageSet.read_channels

    def counting(self, lo, hi):
        if self.label == "training":
            reads.append((lo, hi))
        return original(self, lo, hi)

    monkeypatch.setattr(correlation.ImageSet, "read_channels", counting)
    res = matches_groups(syn, tra, {f"c{i}": i for i in range(5)} | {"all": None}, k=2, chunk_size=12, arith=arith)
    assert reads == [(0, 12), (12, 24), (24, 36), (36, 48), (48, 50)]  # each chunk once, for all six groups
    assert len(res) == 6


@ARITH
def test_group_overflow_falls_back_per_group(arith):
    base = smooth_set(1, size=32, channels=2)[0]
    tra = np.repeat(base[None], 30, axis=0)
    for i in range(30):  # channel 0: near-duplicates (band overflow); channel 1 untouched copies
        y, x = i % 32, (3 * i) % 32
        tra[i, 0, y, x] = np.clip(int(base[0, y, x]) + (1 if i % 2 else -1), 0, 255)
    tra[:, 1] = smooth_set(30, size=32)[:, 0]
    syn = base[None].copy()
    res = matches_groups(syn, tra, {"c0": 0, "c1": 1}, k=2, max_candidates=3, arith=arith)
    assert res["c0"].stats["fallback_rows"] == (arith == "float") and res["c1"].stats["fallback_rows"] == 0
    for name, ch in (("c0", [0]), ("c1", [1])):
        idx, val = brute_force(syn, tra, 2, ch)
        np.testing.assert_array_equal(res[name].index, idx)
        np.testing.assert_allclose(res[name].correlation, val, atol=1e-12, rtol=0)


def test_bad_groups_are_refused():
    syn, tra = random_set(3), random_set(4)
    with pytest.raises(ValueError, match="selects no channel"):
        matches_groups(syn, tra, {"x": []})
    with pytest.raises(ValueError, match="unknown channel"):
        matches_groups(syn, correlation.open_images(tra, channel_names=["a", "b", "c"]), {"x": "t1"})
    with pytest.raises(ValueError, match="non-empty mapping"):
        matches_groups(syn, tra, [0, 1])


# --------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------

@ARITH
def test_memory_mapped_input(tmp_path, arith):
    syn, tra = random_set(11), random_set(29)
    np.save(tmp_path / "s.npy", syn)
    np.save(tmp_path / "t.npy", tra)
    ref = matches(syn, tra, k=2, arith=arith)
    by_path = matches(tmp_path / "s.npy", tmp_path / "t.npy", k=2, chunk_size=8, arith=arith)
    mm = np.load(tmp_path / "t.npy", mmap_mode="r")
    by_mmap = matches(syn, mm, k=2, chunk_size=8, arith=arith)
    for res in (by_path, by_mmap):
        np.testing.assert_array_equal(res.index, ref.index)
        np.testing.assert_array_equal(res.correlation, ref.correlation)


def test_channel_names_and_bad_selections():
    tra = random_set(5)
    s = correlation.open_images(tra, ["c", "a"], channel_names=["a", "b", "c"])
    assert s.channels == [2, 0] and s.shape == (2, 8, 8)
    np.testing.assert_array_equal(s.read(1, 3), tra[1:3][:, [2, 0]].reshape(2, -1))
    np.testing.assert_array_equal(s.take([4, 0, 4]), tra[[4, 0, 4]][:, [2, 0]].reshape(3, -1))
    assert correlation.open_images(tra, "all").channels is None
    with pytest.raises(ValueError, match="unknown channel"):
        correlation.open_images(tra, "t1", channel_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="out of range"):
        correlation.open_images(tra, 3)
    with pytest.raises(ValueError, match="are 1×8×8 but training images"):
        matches(random_set(3, shape=(1, 8, 8)), tra)


def test_nan_input_is_refused_with_its_index():
    syn = random_set(3, dtype=np.float32)
    syn[2, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"synthetic\[2\].*NaN"):
        matches(syn, random_set(4, dtype=np.float32))


def test_pair_correlations():
    a, b = random_set(6), random_set(7)
    b[3] = 9
    ia, ib = np.array([0, 1, 5, 2, 4]), np.array([6, 3, 0, -1, 4])
    out = correlation.pair_correlations(a, b, ia, ib)
    assert np.isnan(out[1]) and np.isnan(out[3])
    for i in (0, 2, 4):
        assert abs(out[i] - pearsonr(flat(a)[ia[i]], flat(b)[ib[i]])[0]) < 1e-12


def test_result_frames():
    res = matches(random_set(5), random_set(9), k=3)
    top = res.topk_frame()
    assert list(top.columns) == ["synthetic_index", "rank", "train_index", "correlation"]
    assert len(top) == 15 and top.groupby("synthetic_index")["rank"].apply(list).iloc[0] == [1, 2, 3]
    assert res.pairs == 45 and res.pairs_per_second > 0


# --------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------

def test_backend_selection_without_cupy(monkeypatch):
    monkeypatch.setattr(correlation, "cupy_status", lambda: (None, "CuPy is not available (test)"))
    be = correlation.get_backend("auto")
    assert be.name == "numpy" and "not available" in be.note
    with pytest.raises(RuntimeError, match="backend='cupy'"):
        correlation.get_backend("cupy")
    with pytest.raises(ValueError):
        correlation.get_backend("torch")
    res = correlation.top_matches(random_set(2), random_set(3), progress=False)
    assert res.backend == "numpy" and "CuPy" in res.backend_note


class _ArrayModule:
    """NumPy behind another name: runs the engine's generic (CuPy-style)
    branches, which otherwise only a GPU would reach."""

    def __getattr__(self, name):
        return getattr(np, name)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_generic_array_module_path_equals_numpy(dtype):
    syn, tra = random_set(14, dtype=dtype), random_set(37, dtype=dtype)
    syn[3] = tra[20]
    syn[5] = 1
    tra[30] = tra[20]
    ref = matches(syn, tra, k=3, chunk_size=16)
    generic = correlation.Backend("numpy-as-generic", _ArrayModule(), "test")
    res = correlation.top_matches(syn, tra, k=3, chunk_size=16, backend=generic, progress=False, arithmetic="float")
    assert res.backend == "numpy-as-generic"
    np.testing.assert_array_equal(res.index, ref.index)
    np.testing.assert_allclose(res.correlation, ref.correlation, atol=1e-12, rtol=0)
    assert res.best_index[3] == 20
    syn[6, 1] = 3  # constant in one channel
    ref = matches(syn, tra, k=3, chunk_size=16, groups=GROUPS)
    res = correlation.match_groups(syn, tra, GROUPS, k=3, chunk_size=16, backend=generic, progress=False,
                                   arithmetic="float")
    for name in GROUPS:
        np.testing.assert_array_equal(res[name].index, ref[name].index)
        np.testing.assert_allclose(res[name].correlation, ref[name].correlation, atol=1e-12, rtol=0)
        np.testing.assert_array_equal(res[name].constant, ref[name].constant)


@pytest.mark.gpu
def test_cupy_equals_numpy():
    pytest.importorskip("cupy")
    syn = np.concatenate([smooth_set(40, size=64), random_set(5, shape=(1, 64, 64))])
    tra = smooth_set(300, size=64)
    syn[3] = tra[123]
    tra[200] = tra[10]
    syn[4] = tra[10]
    syn[5] = 0
    ref = matches(syn, tra, k=3, chunk_size=64)
    for precision in ("float32", "float64"):
        gpu = correlation.top_matches(syn, tra, k=3, backend="cupy", chunk_size=64, progress=False,
                                      precision=precision)
        assert gpu.backend == "cupy"
        np.testing.assert_array_equal(gpu.index, ref.index)
        np.testing.assert_allclose(gpu.correlation, ref.correlation, atol=1e-12, rtol=0)
    assert ref.best_index[3] == 123 and ref.best_index[4] == 10 and ref.constant[5]
    # several measures in one pass on the GPU
    syn3, tra3 = smooth_set(30, size=64, channels=3), smooth_set(200, size=64, channels=3)
    syn3[1] = tra3[50]
    syn3[2, 1] = 0
    ref = matches(syn3, tra3, k=3, chunk_size=64, groups=GROUPS)
    gpu = correlation.match_groups(syn3, tra3, GROUPS, k=3, backend="cupy", chunk_size=64, progress=False)
    for name in GROUPS:
        np.testing.assert_array_equal(gpu[name].index, ref[name].index)
        np.testing.assert_allclose(gpu[name].correlation, ref[name].correlation, atol=1e-12, rtol=0)
        np.testing.assert_array_equal(gpu[name].constant, ref[name].constant)
    assert gpu["all"].best_index[1] == 50 and gpu["c1"].constant[2] and not gpu["c0"].constant[2]
