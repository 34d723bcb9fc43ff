"""The candidate search of one resident synthetic block against training
chunks: approximate float32 products, a tolerance band, exact re-scoring and
a running exact top-k (see :mod:`helpers.correlation.engine` for why the band
makes the result exact)."""

from __future__ import annotations

import math

import numpy as np

from .backend import Backend
from .exact import MAX_EXACT_DIM, _Block, _exact_pairs

#: rounding unit of the working dtypes (2**-24 for float32, 2**-53 for float64)
_UNIT = {np.dtype(np.float32): 2.0**-24, np.dtype(np.float64): 2.0**-53}


class _TopK:
    """Running exact top-k of one resident block: (value desc, index asc)."""

    def __init__(self, xp, n: int, k: int):
        self.xp = xp
        self.val = xp.full((n, k), -xp.inf, dtype=xp.float64)
        self.idx = xp.full((n, k), -1, dtype=xp.int64)

    @property
    def kth(self):
        return self.val[:, -1]

    def merge(self, val, idx) -> None:
        """Merge candidates whose indices all exceed the current ones; the
        columns of ``val``/``idx`` are in ascending index order per row, so
        argmax (first occurrence) resolves exact ties to the lower index."""
        xp = self.xp
        k = self.val.shape[1]
        allv = xp.concatenate([self.val, val], axis=1)
        alli = xp.concatenate([self.idx, idx], axis=1)
        rows = xp.arange(allv.shape[0])
        for r in range(k):
            j = allv.argmax(axis=1)
            self.val[:, r] = allv[rows, j]
            self.idx[:, r] = alli[rows, j]
            allv[rows, j] = -xp.inf
        self.idx[self.val == -xp.inf] = -1


class _Matcher:
    """The running exact top-k of one group for one resident synthetic block.

    Per training chunk (:meth:`update`): one GEMM of centred values;
    approximate correlations (G - s1 s1'/D) / (||x|| ||y||); the highest ones
    per row by repeated argmax (lowest index first on ties) while they can
    still reach the row's top-k; those re-scored exactly and merged into the
    running exact top-k."""

    def __init__(self, backend: Backend, A: _Block, rows: np.ndarray, k: int, delta: float, max_candidates: int,
                 stats: dict):
        xp = backend.xp
        self.backend, self.xp, self.A, self.rows, self.k = backend, xp, A, rows, k
        self.delta, self.max_candidates, self.stats = delta, max_candidates, stats
        self.top = _TopK(xp, A.n, k)
        self.overflow = xp.zeros(A.n, dtype=bool)
        self.batch = max(1, (32 * 1024**2) // (A.dim * A.centred.itemsize))
        self.a_s1 = (A.s1 / A.dim).astype(A.centred.dtype)

    def update(self, B: _Block, gbuf) -> None:
        xp, A, k, delta = self.xp, self.A, self.k, self.delta
        n, nb = A.n, B.n
        rows = xp.arange(n)
        g = gbuf[: n * nb].reshape(n, nb)
        xp.matmul(A.centred, B.centred.T, out=g)
        if A.exact_int:  # integer centres: remove D (m - c)(m' - c')
            g -= self.a_s1[:, None] * B.s1.astype(g.dtype)[None, :]
        g *= A.inv_norm[:, None]
        g *= B.inv_norm[None, :]
        if B.any_constant:
            g[:, B.constant] = -xp.inf
        picks_j, picks_v = [], []
        thr = None
        for it in range(self.max_candidates):
            j = g.argmax(axis=1)
            v = g[rows, j]
            if it >= k and not bool(((v >= thr) & (v > -xp.inf)).any()):
                break
            g[rows, j] = -xp.inf
            picks_j.append(j)
            picks_v.append(v)
            if it == k - 1:
                # a pair can enter the top-k only if its exact value reaches the
                # running k-th (approx >= kth - delta) and the chunk's own k-th
                # (approx >= chunk k-th approx - 2 delta)
                thr = xp.maximum(self.top.kth - delta, v.astype(xp.float64) - 2 * delta)
        else:
            nxt = g.max(axis=1)
            self.overflow |= (nxt >= thr) & (nxt > -xp.inf)
        J = xp.stack(picks_j, axis=1)
        V = xp.stack(picks_v, axis=1).astype(xp.float64)
        r_idx, p_idx = xp.nonzero((V >= thr[:, None]) & (V > -xp.inf))
        E = xp.full(V.shape, -xp.inf, dtype=xp.float64)
        n_pairs = int(r_idx.size)
        if n_pairs:
            cols = J[r_idx, p_idx]
            exact = xp.empty(n_pairs, dtype=xp.float64)
            for lo in range(0, n_pairs, self.batch):
                exact[lo:lo + self.batch] = _exact_pairs(xp, A, r_idx[lo:lo + self.batch], B,
                                                         cols[lo:lo + self.batch])
            E[r_idx, p_idx] = exact
            self.stats["rescored_pairs"] += n_pairs
        order = xp.argsort(J, axis=1)
        self.top.merge(xp.take_along_axis(E, order, axis=1), xp.take_along_axis(J, order, axis=1) + B.start)

    def result(self):
        """(values, indices, overflow) of the block's rows, on the host."""
        to_host = self.backend.to_host
        return to_host(self.top.val), to_host(self.top.idx), to_host(self.overflow)


def _tolerance(exact_uint8: bool, dim: int, work, tolerance_factor: float) -> float:
    """The band ``delta`` around the float32 (or float64) candidate values of
    ``dim``-long vectors. Measured candidate errors, in units of 2**-24 *
    sqrt(D): <= 0.1 for uint8 (integer-valued products), <= 11 for float
    input (near-constant images at 32²); non-uint8 input therefore gets a 4x
    wider band."""
    exact = exact_uint8 and dim <= MAX_EXACT_DIM
    return tolerance_factor * (1 if exact else 4) * _UNIT[np.dtype(work)] * math.sqrt(dim)


