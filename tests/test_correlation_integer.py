"""The engine's integer path (uint8 images, int8 products through
torch._int_mm): exact order where float32 products are not, the int32
bound and the pixel split, the padding a GPU needs, and the choice of the
arithmetic (by a probe, forced, or refused). The exactness tests against
scipy for both paths are in test_correlation.py."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import pearsonr

from helpers import correlation
from helpers.correlation import arithmetic as arith_mod
from helpers.correlation import integer

RNG = np.random.default_rng(20260101)


def run(syn, tra, arithmetic="integer", **kw):
    kw.setdefault("progress", False)
    kw.setdefault("backend", "numpy")
    return correlation.top_matches(syn, tra, arithmetic=arithmetic, **kw)


def exact_sums(x: np.ndarray, y: np.ndarray) -> tuple[int, int]:
    """D cov(x, y) and D var(y) as exact Python integers."""
    x = x.ravel().astype(np.int64)
    y = y.ravel().astype(np.int64)
    d = x.size
    cov = d * int(x @ y) - int(x.sum()) * int(y.sum())
    var = d * int(y @ y) - int(y.sum()) ** 2
    return cov, var


def exactly_greater(x, y1, y2) -> bool:
    """r(x, y1) > r(x, y2), decided in exact integer arithmetic (both positive)."""
    c1, v1 = exact_sums(x, y1)
    c2, v2 = exact_sums(x, y2)
    assert c1 > 0 and c2 > 0
    return c1 * c1 * v2 > c2 * c2 * v1


def test_near_ties_float32_misorders_and_the_integer_path_does_not():
    """Pairs of training images one grey level apart from a synthetic image
    at 128² (r differ by ~1e-9, below float32's resolution): a plain float32
    product of the normalised images (the BLAS/FAISS way) ranks some of them
    wrongly; the integer path ranks every one as exact integer arithmetic does."""
    size, n = 128, 40
    x = RNG.integers(0, 256, (n, 1, size, size), dtype=np.uint8)
    tra = np.empty((2 * n, 1, size, size), np.uint8)
    truth = np.empty(n, dtype=np.int64)
    for i in range(n):
        p, q = RNG.choice(size * size, 2, replace=False)
        y1, y2 = x[i].copy().ravel(), x[i].copy().ravel()
        y1[p] = y1[p] + 1 if y1[p] < 255 else y1[p] - 1
        y2[q] = y2[q] + 1 if y2[q] < 255 else y2[q] - 1
        tra[2 * i], tra[2 * i + 1] = y1.reshape(1, size, size), y2.reshape(1, size, size)
        truth[i] = 2 * i if exactly_greater(x[i], y1, y2) else 2 * i + 1
    # the row's best is always one of its own two near-copies; which one is the near-tie
    res = run(x, tra, k=2)
    np.testing.assert_array_equal(res.best_index, truth)
    assert res.arithmetic == "integer" and res.stats["tolerance"] == 0.0

    def normalised(a):
        a = a.reshape(len(a), -1).astype(np.float32)
        a -= a.mean(axis=1, keepdims=True)
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    plain = (normalised(x) @ normalised(tra).T).argmax(axis=1)
    assert (plain != truth).sum() >= 3, "float32 products should mis-order some near-ties"


def test_integer_values_are_the_float_paths_exact_values_bitwise():
    syn = RNG.integers(0, 256, (17, 2, 12, 10), dtype=np.uint8)
    tra = RNG.integers(0, 256, (53, 2, 12, 10), dtype=np.uint8)
    syn[4] = tra[9]
    groups = {"a": 0, "b": 1, "all": None}
    f = correlation.match_groups(syn, tra, groups, k=4, backend="numpy", arithmetic="float", progress=False)
    i = correlation.match_groups(syn, tra, groups, k=4, backend="numpy", arithmetic="integer", progress=False)
    for name in groups:
        np.testing.assert_array_equal(i[name].index, f[name].index)
        np.testing.assert_array_equal(i[name].correlation, f[name].correlation)
        assert i[name].stats["rescored_pairs"] == 0 and i[name].stats["fallback_rows"] == 0
    assert i["all"].correlation[4, 0] == 1.0


def test_the_int32_bound_is_checked_and_holds_at_its_limit():
    """The widest block: all-black images (x - 128 = -128 everywhere) reach
    the largest product, which still fits int32; one value more would not."""
    import torch

    assert integer.PIXEL_BLOCK_MAX * 128**2 <= 2**31 - 1 < (integer.PIXEL_BLOCK_MAX + 1) * 128**2
    black = torch.full((2, integer.PIXEL_BLOCK_MAX), -128, dtype=torch.int8)
    assert int(torch._int_mm(black, black.T)[0, 1]) == integer.PIXEL_BLOCK_MAX * 128**2
    with pytest.raises(ValueError, match="overflow int32"):
        integer.pixel_blocks(1000, integer.PIXEL_BLOCK_MAX + 1)
    with pytest.raises(ValueError, match="too large for the integer path"):
        integer.pixel_blocks(integer.MAX_INTEGER_DIM + 1)
    assert integer.pixel_blocks(10, 4) == [(0, 3), (3, 6), (6, 10)]
    assert integer.pixel_blocks(integer.PIXEL_BLOCK_MAX) == [(0, integer.PIXEL_BLOCK_MAX)]
    with pytest.raises(ValueError, match="overflow int32"):
        run(RNG.integers(0, 256, (2, 64), dtype=np.uint8), RNG.integers(0, 256, (3, 64), dtype=np.uint8),
            pixel_block=2**20)


@pytest.mark.parametrize("block", [7, 50, 64])
def test_pixel_split_with_a_small_block_bound_stays_exact(block):
    syn = RNG.integers(0, 256, (9, 3, 8, 8), dtype=np.uint8)
    tra = RNG.integers(0, 256, (31, 3, 8, 8), dtype=np.uint8)
    syn[2] = tra[30]
    tra[5] = 0  # a constant training image
    ref = run(syn, tra, k=3, arithmetic="float")
    res = run(syn, tra, k=3, pixel_block=block, chunk_size=8, block_size=4)
    assert res.stats["plan"]["pixel_blocks"] == {"selection": -(-192 // block)}
    np.testing.assert_array_equal(res.index, ref.index)
    np.testing.assert_array_equal(res.correlation, ref.correlation)


def test_images_over_the_int32_bound_are_split_by_default():
    """400² = 160 000 values per image: near-black images whose products
    exceed 2**31 in one block; the default split keeps every value exact."""
    d = 400 * 400
    syn = np.zeros((3, 1, 400, 400), np.uint8)
    tra = np.zeros((5, 1, 400, 400), np.uint8)
    for img in (*syn, *tra):
        img.reshape(-1)[RNG.choice(d, 200, replace=False)] = RNG.integers(1, 256, 200)
    tra[3] = syn[1]
    res = run(syn, tra, k=2)
    assert res.stats["plan"]["pixel_blocks"] == {"selection": 2}
    for i in range(3):
        row = np.array([pearsonr(syn[i].ravel().astype(float), t.ravel().astype(float))[0] for t in tra])
        order = np.lexsort((np.arange(5), -row))[:2]
        np.testing.assert_array_equal(res.index[i], order)
        np.testing.assert_allclose(res.correlation[i], row[order], atol=1e-12, rtol=0)
    assert res.best_index[1] == 3 and res.best_correlation[1] == 1.0


def test_very_large_images_keep_exact_integers_in_int64():
    """Beyond ~741 000 values D * sum x'y' leaves float64's exact integers:
    the numerators are formed in int64 (six pixel blocks here)."""
    d = 760_000
    syn = RNG.integers(0, 256, (3, d), dtype=np.uint8)
    tra = RNG.integers(0, 256, (4, d), dtype=np.uint8)
    tra[2] = syn[0]
    tra[3, : d // 2] = syn[1, : d // 2]  # r ~ 0.5
    res = run(syn, tra, k=2)
    assert res.stats["plan"]["pixel_blocks"] == {"selection": 6}
    assert res.best_index[0] == 2 and res.best_correlation[0] == 1.0
    for i in range(3):
        row = np.array([pearsonr(syn[i].astype(float), t.astype(float))[0] for t in tra])
        order = np.lexsort((np.arange(4), -row))[:2]
        np.testing.assert_array_equal(res.index[i], order)
        np.testing.assert_allclose(res.correlation[i], row[order], atol=1e-12, rtol=0)


def _padded():
    """The integer path with the padding a CUDA GPU needs (rows to 32,
    widths to 8), run on the CPU."""
    unit, why = integer.integer_unit(correlation.get_backend("numpy"), pad=True)
    assert unit is not None, why
    return correlation.Arithmetic("integer", "test: padded as on CUDA", unit)


@pytest.mark.parametrize("n_syn, n_train, shape", [(3, 13, (1, 7, 5)), (1, 1, (1, 1, 3)), (40, 70, (2, 9, 3))])
def test_odd_shapes_padded_as_on_a_gpu_equal_the_float_path(n_syn, n_train, shape):
    syn = RNG.integers(0, 256, (n_syn, *shape), dtype=np.uint8)
    tra = RNG.integers(0, 256, (n_train, *shape), dtype=np.uint8)
    syn[0] = tra[-1]
    k = min(3, n_train)
    groups = {"all": None} if shape[0] == 1 else {"all": None, "c1": 1}
    ref = correlation.match_groups(syn, tra, groups, k=k, backend="numpy", arithmetic="float", progress=False,
                                   chunk_size=11)
    res = correlation.match_groups(syn, tra, groups, k=k, backend="numpy", arithmetic=_padded(), progress=False,
                                   chunk_size=11, pixel_block=16)
    for name in groups:
        np.testing.assert_array_equal(res[name].index, ref[name].index)
        np.testing.assert_array_equal(res[name].correlation, ref[name].correlation)
    assert res["all"].best_correlation[0] == 1.0 and res["all"].best_index[0] == n_train - 1


def test_constant_uint8_images_keep_the_undefined_handling():
    syn = RNG.integers(0, 256, (5, 1, 6, 6), dtype=np.uint8)
    syn[1] = 0
    syn[3] = 255
    tra = np.full((4, 1, 6, 6), 9, np.uint8)
    with np.errstate(all="raise"):
        res = run(syn, tra, k=2)
    assert res.constant.tolist() == [False, True, False, True, False]
    assert res.train_constant.all() and res.stats["n_train_constant"] == 4
    assert np.all(res.index == -1) and np.all(np.isnan(res.correlation))
    tra[2, 0, 0, 0] = 10  # one valid training image: every valid synthetic image matches it, once
    res = run(syn, tra, k=2)
    assert np.all(res.index[~res.constant] == [2, -1]) and np.all(res.index[res.constant] == -1)


# --------------------------------------------------------------------------
# The choice of the arithmetic
# --------------------------------------------------------------------------

def test_float_inputs_keep_the_float_path_and_integer_is_refused_for_them():
    syn = RNG.standard_normal((4, 16)).astype(np.float32)
    tra = RNG.standard_normal((6, 16)).astype(np.float32)
    res = run(syn, tra, arithmetic="auto")
    assert res.stats["arithmetic"] == "float" and "not uint8" in res.stats["arithmetic_reason"]
    assert "not uint8" in res.backend_note
    with pytest.raises(ValueError, match="arithmetic='integer' cannot run: the images are float32, not uint8"):
        run(syn, tra)
    u8 = RNG.integers(0, 256, (4, 16), dtype=np.uint8)
    assert run(u8, u8, arithmetic="auto", precision="float64").stats["arithmetic"] == "float"
    with pytest.raises(ValueError, match="must be one of auto, integer, float"):
        run(u8, u8, arithmetic="int8")


def test_the_environment_variable_forces_and_is_checked(monkeypatch):
    u8 = RNG.integers(0, 256, (4, 16), dtype=np.uint8)
    monkeypatch.setenv(correlation.ARITHMETIC_ENV, "float")
    assert run(u8, u8, arithmetic=None).stats["arithmetic"] == "float"
    monkeypatch.setenv(correlation.ARITHMETIC_ENV, "integer")
    res = run(u8, u8, arithmetic=None)
    assert res.stats["arithmetic"] == "integer" and "requested" in res.stats["arithmetic_reason"]
    monkeypatch.setenv(correlation.ARITHMETIC_ENV, "fast")
    with pytest.raises(ValueError, match=r"\$HELPERS_CORRELATION_ARITHMETIC must be one of"):
        run(u8, u8, arithmetic=None)


def test_auto_measures_once_and_keeps_the_probe_per_machine(tmp_path, monkeypatch):
    cache = tmp_path / "probe.json"
    monkeypatch.setenv(arith_mod.PROBE_CACHE_ENV, str(cache))
    monkeypatch.setattr(arith_mod, "_PROBES", {})
    u8 = RNG.integers(0, 256, (6, 1, 8, 8), dtype=np.uint8)
    res = run(u8, u8, arithmetic="auto")
    kind, reason = res.stats["arithmetic"], res.stats["arithmetic_reason"]
    assert kind in ("integer", "float") and "probe of 128×512 pairs" in reason and "× the float path" in reason
    (t_int, t_float), = arith_mod._PROBES.values()
    assert (t_int < t_float) == (kind == "integer")
    if max(t_int / t_float, t_float / t_int) < arith_mod.DECISIVE:
        assert not cache.exists()  # a close call is measured again by the next process
        return
    stored = json.loads(cache.read_text())
    assert [v[:2] for v in stored.values()] == [[t_int, t_float]]
    # a new process (here: an empty per-process cache) reads the machine's probe instead of measuring
    monkeypatch.setattr(arith_mod, "_PROBES", {})
    monkeypatch.setattr(arith_mod, "_measure", lambda *a: pytest.fail("measured again"))
    assert run(u8, u8, arithmetic="auto").stats["arithmetic_reason"] == reason


def test_the_faster_path_of_a_probe_is_chosen():
    unit, _ = integer.integer_unit(correlation.get_backend("numpy"))
    fast = arith_mod.decide(0.01, 0.09, unit)
    assert fast.integer and fast.reason.startswith("integer: 9.0× the float path")
    slow = arith_mod.decide(0.03, 0.02, unit)
    assert not slow.integer and "0.67× the float path" in slow.reason and "no faster int8 units" in slow.reason


def test_the_float_path_runs_without_importing_torch():
    code = ("import sys, numpy as np; from helpers import correlation; "
            "x = np.random.default_rng(0).random((5, 20)).astype(np.float32); "
            "r = correlation.top_matches(x, x, progress=False, backend='numpy'); "
            "u = np.random.default_rng(0).integers(0, 256, (5, 20), dtype=np.uint8); "
            "correlation.top_matches(u, u, progress=False, backend='numpy', arithmetic='float'); "
            "print(r.stats['arithmetic'], 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-800:]
    assert done.stdout.split() == ["float", "False"]


@pytest.mark.gpu
def test_integer_path_on_the_gpu_equals_the_cpu():
    pytest.importorskip("cupy")
    syn = RNG.integers(0, 256, (45, 3, 24, 24), dtype=np.uint8)
    tra = RNG.integers(0, 256, (301, 3, 24, 24), dtype=np.uint8)
    syn[3] = tra[123]
    tra[200] = tra[10]
    syn[4] = tra[10]
    syn[5] = 0
    groups = {"all": None, "c1": 1, "c02": [0, 2]}
    ref = correlation.match_groups(syn, tra, groups, k=3, backend="numpy", arithmetic="float", progress=False)
    gpu = correlation.match_groups(syn, tra, groups, k=3, backend="cupy", arithmetic="integer", progress=False,
                                   chunk_size=64, pixel_block=500)
    for name in groups:
        assert gpu[name].backend == "cupy" and gpu[name].stats["arithmetic"] == "integer"
        np.testing.assert_array_equal(gpu[name].index, ref[name].index)
        np.testing.assert_array_equal(gpu[name].correlation, ref[name].correlation)
        np.testing.assert_array_equal(gpu[name].constant, ref[name].constant)
