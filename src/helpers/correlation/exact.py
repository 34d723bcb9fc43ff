"""Centring of image blocks and exact Pearson correlation of given pairs.

Why integer centres: for uint8 images the centre is the mean rounded to an
integer, so centred values are exact integers in [-255, 255] and float32
partial sums over 256 of their products stay exact; every sum of squares and
dot product of the engine is then an exact float64 integer (see
:mod:`helpers.correlation.engine`).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from .backend import Backend

#: uint8 images up to this many values per image use the exact integer path
#: (D * D * 255**2 < 2**53 keeps every intermediate an exact float64 integer)
MAX_EXACT_DIM = 370_000
_EXACT_BLOCK = 256  # 256 products of |values| <= 255 sum below 2**24: exact in float32


def _blocked_dot(xp, a, b, block: int = _EXACT_BLOCK):
    """Row-wise dot products as float32 sums over blocks of 256 values,
    added in float64. For integer-valued rows with |values| <= 255 every
    partial sum is an integer below 2**24, so the result is exact (and
    independent of summation order); otherwise it is accurate to ~1e-7
    relative, where a plain float32 sum over 65 536 values drifts ~1e-5."""
    n, d = a.shape
    q = d // block
    out = xp.zeros(n, dtype=xp.float64)
    if q:
        ha = a[:, : q * block].reshape(n, q, block)
        hb = b[:, : q * block].reshape(n, q, block)
        out += xp.einsum("ijk,ijk->ij", ha, hb).sum(axis=1, dtype=xp.float64)
    if d % block:
        out += xp.einsum("ij,ij->i", a[:, q * block:], b[:, q * block:]).astype(xp.float64)
    return out


def _rowdot64(xp, a, b):
    """Row-wise dot products accumulated in float64 (non-uint8 input)."""
    if xp is np:
        return np.einsum("ij,ij->i", a, b, dtype=np.float64)
    return xp.einsum("ij,ij->i", a.astype(xp.float64, copy=False), b.astype(xp.float64, copy=False))


@dataclass
class _Block:
    """Images ``start .. start+n`` centred on the backend.

    ``centred``: x - c in the working dtype, where for uint8 c is the mean
    rounded to an integer, so the values are exact integers in [-255, 255].
    ``s1`` = sum(x - c) and ``var_d`` = D * sum((x - mean)**2) are exact
    float64 integers for uint8 (``s1`` is 0 for other dtypes, whose exact
    values come from ``raw`` in float64). ``inv_norm`` = 1/||x - mean||
    (0 for a constant image) scales the approximate products.
    """

    start: int
    centred: Any
    s1: Any
    var_d: Any
    inv_norm: Any
    constant: Any
    mean: Any
    raw: Any
    exact_int: bool
    dim: int
    any_constant: bool = False

    @property
    def n(self) -> int:
        return int(self.centred.shape[0])

    def subset(self, keep) -> _Block:
        """The rows ``keep`` (a backend index array) as a new block."""
        pick = lambda a: None if a is None else a[keep]  # noqa: E731
        return _Block(self.start, self.centred[keep], self.s1[keep], self.var_d[keep], self.inv_norm[keep],
                      self.constant[keep], pick(self.mean), pick(self.raw), self.exact_int, self.dim,
                      bool(self.constant[keep].any()))

    def exact_rows(self, xp, rows):
        """Rows whose float64 products give exact centred sums (``s1`` applies)."""
        if self.exact_int:
            return xp.take(self.centred, rows, axis=0)
        return self.raw[rows].astype(xp.float64) - self.mean[rows, None]


def _centre_rows(xp, raw, centred, exact_int: bool):
    """Centre ``raw`` into ``centred``; returns (s1, var_d, constant, mean)."""
    n, dim = raw.shape
    if exact_int:
        sums = raw.sum(axis=1, dtype=xp.uint32 if dim < 2**32 // 255 else xp.uint64).astype(xp.float64)
        c = xp.floor(sums / dim + 0.5)
        xp.subtract(raw, c.astype(centred.dtype)[:, None], out=centred, dtype=centred.dtype)
        s1 = sums - dim * c
        var_d = dim * _blocked_dot(xp, centred, centred) - s1 * s1
        return s1, var_d, var_d <= 0, None  # exact integers: 0 only for a constant image
    mean = raw.mean(axis=1, dtype=xp.float64)
    xp.subtract(raw, mean.astype(centred.dtype)[:, None], out=centred, dtype=centred.dtype, casting="unsafe")
    var_d = xp.empty(n, dtype=xp.float64)
    step = max(1, (32 * 1024**2) // (8 * dim))
    for lo in range(0, n, step):
        d64 = raw[lo:lo + step].astype(xp.float64) - mean[lo:lo + step, None]
        var_d[lo:lo + step] = dim * xp.einsum("ij,ij->i", d64, d64)
    constant = raw.max(axis=1) == raw.min(axis=1)
    var_d[constant] = 0
    return xp.zeros(n, dtype=xp.float64), var_d, constant, mean


def _threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class _CentringPool:
    """One thread pool for centring, kept between calls (starting threads
    per block would cost more than centring a small block) and rebuilt when
    the number of usable cores changes."""

    def __init__(self):
        self.workers = 0
        self.executor: ThreadPoolExecutor | None = None

    def get(self, workers: int) -> ThreadPoolExecutor:
        if self.executor is None or self.workers != workers:
            if self.executor is not None:
                self.executor.shutdown(wait=False)
            self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="correlation")
            self.workers = workers
        return self.executor


_POOL = _CentringPool()


def _prepare(backend: Backend, raw_host: np.ndarray, start: int, work_dtype, buffer=None) -> _Block:
    """Centre a host block ``(n, D)`` on the backend: one pass to sum, one to
    centre into the working dtype, one for the sums of squares. On the CPU
    the rows are split over all cores (NumPy releases the GIL), since BLAS
    would otherwise be the only multi-threaded part."""
    xp = backend.xp
    n, dim = raw_host.shape
    raw = xp.asarray(raw_host)
    exact_int = raw.dtype == np.uint8 and dim <= MAX_EXACT_DIM
    if buffer is None or buffer.shape[0] < n or buffer.dtype != work_dtype:
        centred = xp.empty((n, dim), dtype=work_dtype)
    else:
        centred = buffer[:n]
    workers = _threads() if xp is np else 1
    if workers > 1 and n >= 2 * workers:
        cuts = np.linspace(0, n, workers + 1).astype(int)
        parts = list(_POOL.get(workers).map(
            lambda lo, hi: _centre_rows(xp, raw[lo:hi], centred[lo:hi], exact_int), cuts[:-1], cuts[1:]))
        s1, var_d, constant = (np.concatenate([p[i] for p in parts]) for i in range(3))
        mean = None if exact_int else np.concatenate([p[3] for p in parts])
    else:
        s1, var_d, constant, mean = _centre_rows(xp, raw, centred, exact_int)
    safe = xp.where(constant, 1.0, var_d / dim)
    inv_norm = xp.where(constant, 0.0, 1.0 / xp.sqrt(safe)).astype(work_dtype)
    return _Block(start, centred, s1, var_d, inv_norm, constant, mean, None if exact_int else raw,
                  bool(exact_int), dim, bool(constant.any()))


def _pair_dots_numpy(a, ra, b, rb) -> np.ndarray:
    """``a[ra[t]] . b[rb[t]]`` for integer-valued float32 rows with |values|
    <= 255, pair by pair on views of the rows (gathering copies costs more
    memory traffic than the dots): float32 dots over blocks of 256 values
    (exact, whatever the summation order) added in float64."""
    q, r = divmod(a.shape[1], _EXACT_BLOCK)
    m = q * _EXACT_BLOCK
    out = np.empty(len(ra), dtype=np.float64)
    vecdot = np.vecdot
    for t, (i, j) in enumerate(zip(ra.tolist(), rb.tolist())):
        x, y = a[i], b[j]
        s = vecdot(x[:m].reshape(q, _EXACT_BLOCK), y[:m].reshape(q, _EXACT_BLOCK)).sum(dtype=np.float64) if q else 0.0
        if r:
            s += float(vecdot(x[m:], y[m:]))
        out[t] = s
    return out


def _exact_pairs(xp, A: _Block, ra, B: _Block, rb):
    """Exact Pearson correlation of rows ``ra`` of A with rows ``rb`` of B.

    uint8 with uint8: D*cov = D*sum((x-c)(y-c')) - s1*s1' in exact float64
    integers, so identical images give bitwise identical values."""
    dim = A.dim
    if A.exact_int and B.exact_int:
        if xp is np:  # pair by pair on views: no gathered copies of the rows
            p = _pair_dots_numpy(A.centred, ra, B.centred, rb)
        else:
            p = _blocked_dot(xp, xp.take(A.centred, ra, axis=0), xp.take(B.centred, rb, axis=0))
    else:
        p = _rowdot64(xp, A.exact_rows(xp, ra), B.exact_rows(xp, rb))
    num = dim * p - A.s1[ra] * B.s1[rb]
    # sqrt(v * v) == v exactly in IEEE arithmetic, so a copy scores exactly 1.0
    return xp.clip(num / xp.sqrt(A.var_d[ra] * B.var_d[rb]), -1.0, 1.0)
