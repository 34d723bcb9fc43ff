"""The integer path of the engine: uint8 images on the integer units
(int8 x int8 -> int32 products through ``torch._int_mm``: oneDNN with AMX or
VNNI on the CPU, cuBLASLt int8 on a CUDA GPU).

Why it is exact without a tolerance band
----------------------------------------
For uint8 pixels, ``x' = x - 128`` is an exact int8 (``x ^ 0x80`` read as
int8). One product of a pixel block of ``w`` values sums ``|x'y'| <= 128**2``
terms, so it is an exact int32 as long as ``w * 2**14 <= 2**31 - 1``
(``w <= PIXEL_BLOCK_MAX`` = 131 071, checked in :func:`pixel_blocks`); larger
images are split along the pixel axis and the blocks added in int64. The
per-image sums ``s = sum x'`` and ``q = sum x'**2`` come from the same unit
(a small product of each row tile with itself and a row of ones) and are
exact too. Then ``D cov = D sum x'y' - s s'`` and ``D var = D q - s**2`` are
the exact integers the float path re-scores with (translation invariance:
any centre gives the same ones), and ``r = D cov / sqrt(D var D var')`` is
computed for every pair in float64 by the same expression as
:func:`helpers.correlation.exact._exact_pairs`: the values are bit for bit
the float path's exact ones, the top-k needs no candidate band, no re-scoring
and no float64 fallback pass, and equal values are exact ties (lowest training
index first, as everywhere in the engine).

Torch is imported only when an integer unit is asked for (the NumPy float
path runs without it); the GPU branch (CuPy arrays over DLPack, padding to
cuBLASLt's shapes) is written for ``torch._int_mm`` on CUDA and untested
where no GPU was lent (benchmarks/gpu_check.sh runs it).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .exact import _POOL, _threads
from .search import _TopK

#: the widest pixel block whose int8 products cannot overflow int32:
#: w * 128**2 <= 2**31 - 1 (all-black images reach +w * 2**14 exactly)
PIXEL_BLOCK_MAX = (2**31 - 1) // 128**2
#: D * q <= D**2 * 2**14 must stay below 2**63 (exact int64 variances)
MAX_INTEGER_DIM = 2**24
_ROW_TILE = 32  # rows scored at a time on the CPU (a tile of float64 values stays in L2)
_GRAM_TILE = 64  # rows per product of the per-image sums (wider wastes work, narrower runs slowly)


def pixel_blocks(dim: int, block: int | None = None) -> list[tuple[int, int]]:
    """Split ``dim`` pixels into near-equal blocks of at most ``block`` values
    (default :data:`PIXEL_BLOCK_MAX`), each of whose int8 products fits int32."""
    block = PIXEL_BLOCK_MAX if block is None else int(block)
    if block < 1 or block * 128**2 > 2**31 - 1:
        raise ValueError(f"pixel block of {block} values: int8 products over it could overflow int32 "
                         f"(at most {PIXEL_BLOCK_MAX} values, since {PIXEL_BLOCK_MAX} * 128**2 < 2**31)")
    if dim > MAX_INTEGER_DIM:
        raise ValueError(f"images of {dim} values are too large for the integer path (at most {MAX_INTEGER_DIM}: "
                         "D * sum (x-128)**2 must stay an exact int64); use arithmetic='float'")
    n = max(1, math.ceil(dim / block))
    cuts = np.linspace(0, dim, n + 1).astype(np.int64)
    return [(int(lo), int(hi)) for lo, hi in zip(cuts[:-1], cuts[1:])]


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@dataclass
class IntegerUnit:
    """Where the int8 products run: torch's device and the array module
    (NumPy or CuPy) that scores them. cuBLASLt wants more than 16 rows and
    widths in multiples of 8, so on CUDA blocks are padded with zero rows
    and columns (zeros add nothing to any sum); tests pad on the CPU too."""

    name: str
    torch: Any
    device: Any
    xp: Any
    row_multiple: int = 1
    col_multiple: int = 1

    @property
    def is_gpu(self) -> bool:
        return self.device.type == "cuda"

    def host_buffer(self, shape: tuple[int, int]) -> np.ndarray:
        """A fresh uint8 host array from torch's allocator: on the VMs here a
        first touch of NumPy's fresh memory cost ~8 ns/byte (1.5 s for one
        3 000-image block of 256²), torch's ~0.4 ns/byte (measured)."""
        return self.torch.empty(shape, dtype=self.torch.uint8).numpy()

    def upload(self, host: np.ndarray):
        t = self.torch.from_numpy(host)
        return t if not self.is_gpu else t.to(self.device)

    def to_xp(self, t):
        return t.numpy() if not self.is_gpu else self.xp.from_dlpack(t)

    def mm(self, a, b, out=None):
        """``a @ b.T`` of int8 rows as exact int32 (``b.T`` is a column-major
        view), into ``out`` when given (reused memory: fresh pages cost)."""
        if out is None:
            return self.torch._int_mm(a, b.T)
        return self.torch._int_mm(a, b.T, out=out)

    def product_buffer(self, rows: int, cols: int):
        """A flat int32 buffer for products of up to ``rows`` x ``cols`` images (padded)."""
        size = _round_up(max(rows, 1), self.row_multiple) * _round_up(max(cols, 1), self.row_multiple)
        return self.torch.empty(size, dtype=self.torch.int32, device=self.device)

    def sync(self) -> None:
        if self.is_gpu:
            self.torch.cuda.synchronize(self.device)


def integer_unit(backend, pad: bool = False) -> tuple[IntegerUnit | None, str]:
    """``(unit, why)`` for an engine backend (NumPy -> CPU, CuPy -> its CUDA
    device), or ``(None, why not)``. A tiny product is checked against
    NumPy, so a torch without a working ``_int_mm`` is found here."""
    try:
        import torch  # lazily: the float path runs without torch
    except Exception as err:
        return None, f"torch is not available ({type(err).__name__}: {err})"
    if not hasattr(torch, "_int_mm"):
        return None, f"torch {torch.__version__} has no _int_mm"
    if backend.is_gpu:
        if not torch.cuda.is_available():
            return None, f"torch {torch.__version__} has no CUDA device"
        device = torch.device("cuda", backend.xp.cuda.Device().id)
        unit = IntegerUnit(f"torch {torch.__version__} _int_mm on {device}", torch, device, backend.xp, 32, 8)
    else:
        unit = IntegerUnit(f"torch {torch.__version__} _int_mm on the CPU", torch, torch.device("cpu"), np,
                           32 if pad else 1, 8 if pad else 1)
    rng = np.random.default_rng(0)
    a, b = (rng.integers(-128, 128, (32, 24), dtype=np.int8) for _ in range(2))
    try:
        got = unit.to_xp(unit.mm(unit.upload(a), unit.upload(b)))
        ok = np.array_equal(np.asarray(got.get() if unit.is_gpu else got), a.astype(np.int64) @ b.T.astype(np.int64))
    except Exception as err:  # a build without int8 kernels for this device
        return None, f"torch._int_mm failed on {device if backend.is_gpu else 'the CPU'} ({type(err).__name__}: {err})"
    if not ok:
        return None, "torch._int_mm gave a wrong product in its self-check"
    return unit, unit.name


@dataclass
class _IntBlock:
    """Images ``start .. start+n`` as int8 blocks on the unit.

    ``parts``: one ``(n_pad, w_pad)`` int8 tensor per pixel block; ``s1`` =
    sum(x - 128) and ``var_d`` = D * sum((x - mean)**2) as float64 (exact
    integers up to 2**53) and as int64 (``s1_int``, for images too large for
    float64's exact integers); ``den`` = ``var_d`` with 1 for constant images."""

    start: int
    n: int
    parts: list
    s1: Any
    var_d: Any
    s1_int: Any
    constant: Any
    den: Any
    dim: int
    any_constant: bool


def _gram_sums(unit: IntegerUnit, part, n_pad: int):
    """Exact ``sum x'`` and ``sum x'**2`` of every row of one pixel block on
    the integer unit: the rows times 8 rows of ones, and the diagonal of
    each tile of rows times itself (no copies; cheaper than a NumPy pass
    over the pixels, whose int8 -> wider conversions cost more). On the CPU
    the tiles are spread over the cores and each small product runs on one
    torch thread (torch's thread count is set to 1 meanwhile): split inside
    torch, every small product waits for its slowest thread, several times
    slower on a busy machine."""
    torch = unit.torch
    s = unit.mm(part, torch.ones((8, part.shape[1]), dtype=torch.int8, device=unit.device))[:, 0]
    q = torch.empty(n_pad, dtype=torch.int32, device=unit.device)

    def tiles(lo: int, hi: int) -> None:
        for t in range(lo, hi, _GRAM_TILE):
            x = part[t:min(t + _GRAM_TILE, hi)]
            q[t:t + x.shape[0]] = torch.diagonal(unit.mm(x, x))

    workers = 1 if unit.is_gpu else _threads()
    if workers > 1 and n_pad >= 2 * _GRAM_TILE:
        cuts = np.linspace(0, n_pad // _GRAM_TILE, workers + 1).astype(int) * _GRAM_TILE
        cuts[-1] = n_pad
        with _one_torch_thread(torch):
            list(_POOL.get(workers).map(tiles, cuts[:-1], cuts[1:]))
    else:
        tiles(0, n_pad)
    return s.to(torch.int64), q.to(torch.int64)


@contextlib.contextmanager
def _one_torch_thread(torch):
    """torch's intra-op threads set to 1 for a while (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def prepare_int(unit: IntegerUnit, raw: np.ndarray, start: int, blocks: list[tuple[int, int]],
                buffers: list | None = None) -> _IntBlock:
    """Centre a host uint8 block ``(n, D)`` to int8 (``x ^ 0x80``) per pixel
    block, move it to the unit, and take its exact sums. ``buffers``: host
    arrays reused between training chunks (fresh memory costs first touches)."""
    xp = unit.xp
    n, dim = raw.shape
    n_pad = _round_up(max(n, 1), unit.row_multiple)
    parts, s_int, q_int = [], None, None
    for b, (lo, hi) in enumerate(blocks):
        w_pad = _round_up(hi - lo, unit.col_multiple)
        buf = buffers[b] if buffers is not None and b < len(buffers) else None
        if buf is None or buf.shape[0] < n_pad or buf.shape[1] != w_pad:
            buf = unit.host_buffer((n_pad, w_pad))
            if buffers is not None:
                buffers[b:b + 1] = [buf]
        buf = buf[:n_pad]
        _xor_rows(raw[:, lo:hi], buf)
        part = unit.upload(buf.view(np.int8))
        parts.append(part)
        s, q = _gram_sums(unit, part, n_pad)
        s_int = s if s_int is None else s_int + s
        q_int = q if q_int is None else q_int + q
    s_int = unit.to_xp(s_int[:n].clone() if unit.is_gpu else s_int[:n])
    q_int = unit.to_xp(q_int[:n].clone() if unit.is_gpu else q_int[:n])
    var_int = dim * q_int - s_int * s_int  # exact: D * q <= D**2 * 2**14 < 2**63
    constant = var_int == 0  # exact integers: zero only for a constant image
    var_d = var_int.astype(xp.float64)
    return _IntBlock(start, n, parts, s_int.astype(xp.float64), var_d, s_int, constant,
                     xp.where(constant, 1.0, var_d), dim, bool(constant.any()))


def _xor_rows(src: np.ndarray, buf: np.ndarray) -> None:
    """``buf[:n, :w] = src ^ 0x80`` (x - 128 as int8 bits), zero padding
    elsewhere; rows split over the cores (NumPy releases the GIL)."""
    n, w = src.shape
    if buf.shape[1] > w:
        buf[:n, w:] = 0
    if buf.shape[0] > n:
        buf[n:] = 0
    workers = _threads()
    if workers > 1 and n >= 4 * workers:
        cuts = np.linspace(0, n, workers + 1).astype(int)
        list(_POOL.get(workers).map(lambda lo, hi: np.bitwise_xor(src[lo:hi], 0x80, out=buf[lo:hi, :w]),
                                    cuts[:-1], cuts[1:]))
    else:
        np.bitwise_xor(src, 0x80, out=buf[:n, :w])


def _product(unit: IntegerUnit, A: _IntBlock, B: _IntBlock, buffer):
    """``sum x'y'`` of every pair as an exact xp array ``(A.n_pad, B.n_pad)``:
    int32 for one pixel block (in ``buffer``, a flat int32 tensor), int64
    over several."""
    m, n = A.parts[0].shape[0], B.parts[0].shape[0]
    out = buffer[: m * n].view(m, n) if buffer is not None and buffer.numel() >= m * n else None
    acc = None
    for pa, pb in zip(A.parts, B.parts):
        g = unit.to_xp(unit.mm(pa, pb, out))
        if len(A.parts) == 1:
            return g
        if acc is None:
            acc = g.astype(unit.xp.int64)
        else:
            acc += g
    return acc


def _exact_r(xp, g, A: _IntBlock, lo: int, hi: int, B: _IntBlock, f64_exact: bool):
    """Exact Pearson r of rows ``lo:hi`` of A with every image of B, from the
    exact product sums ``g``; the float path's re-score expression."""
    if f64_exact:  # every term is an integer below 2**53
        num = g.astype(xp.float64)
        num *= A.dim
        num -= A.s1[lo:hi, None] * B.s1[None, :]
    else:
        num = (g.astype(xp.int64) * A.dim - A.s1_int[lo:hi, None] * B.s1_int[None, :]).astype(xp.float64)
    num /= xp.sqrt(A.den[lo:hi, None] * B.den[None, :])
    xp.clip(num, -1.0, 1.0, out=num)
    if B.any_constant:
        num[:, B.constant] = -xp.inf
    return num


def _best_k(xp, r, k: int, kth):
    """The k best columns of every row by (value desc, column asc), as
    ``(columns, values)``, by repeated argmax (first occurrence = lowest
    column); stops early once no row's pick can beat its running ``kth``."""
    n = r.shape[0]
    rows = xp.arange(n)
    cols = xp.full((n, k), -1, dtype=xp.int64)
    vals = xp.full((n, k), -xp.inf)
    for it in range(k):
        j = r.argmax(axis=1)
        v = r[rows, j]
        cols[:, it], vals[:, it] = j, v
        if it == k - 1 or not bool((v > kth).any()):
            break
        r[rows, j] = -xp.inf
    return cols, vals


class _IntMatcher:
    """The running exact top-k of one group for one resident synthetic block
    on the integer path (the counterpart of :class:`.search._Matcher`)."""

    def __init__(self, unit: IntegerUnit, A: _IntBlock, rows: np.ndarray, k: int):
        self.unit, self.xp, self.A, self.rows, self.k = unit, unit.xp, A, rows, k
        self.top = _TopK(self.xp, A.n, k)
        self.f64_exact = A.dim * A.dim * 2**14 < 2**53
        self.workers = 1 if unit.is_gpu else _threads()

    def update(self, B: _IntBlock, buffer=None) -> None:
        """Merge training block ``B`` into the running top-k; ``buffer``: see
        :meth:`IntegerUnit.product_buffer`."""
        xp, A, k = self.xp, self.A, self.k
        g = _product(self.unit, A, B, buffer)
        cols = xp.empty((A.n, k), dtype=xp.int64)
        vals = xp.empty((A.n, k))
        kth = self.top.kth

        def score(lo: int, hi: int) -> None:
            step = hi - lo if self.unit.is_gpu else _ROW_TILE
            for t in range(lo, hi, step):
                u = min(t + step, hi)
                r = _exact_r(xp, g[t:u, :B.n], A, t, u, B, self.f64_exact)
                cols[t:u], vals[t:u] = _best_k(xp, r, k, kth[t:u])

        if self.workers > 1 and A.n >= 2 * _ROW_TILE:
            cuts = np.linspace(0, A.n, self.workers + 1).astype(int)
            list(_POOL.get(self.workers).map(score, cuts[:-1], cuts[1:]))
        else:
            score(0, A.n)
        order = xp.argsort(cols, axis=1)
        self.top.merge(xp.take_along_axis(vals, order, axis=1), xp.take_along_axis(cols, order, axis=1) + B.start)

    def result(self):
        """(values, indices) of the block's rows, on the host."""
        if self.unit.is_gpu:
            return self.top.val.get(), self.top.idx.get()
        return self.top.val, self.top.idx
