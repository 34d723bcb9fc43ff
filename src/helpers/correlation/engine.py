"""Exact all-pairs Pearson correlation at matrix-multiply speed.

The study's central measurement: for every synthetic image, its Pearson
correlation with *every* training image, and the best match(es). The authors
called ``scipy.stats.pearsonr`` once per pair (about 320 pairs/s); this module
computes the same numbers as matrix products, streaming, on a CPU (NumPy/BLAS)
or a GPU (CuPy) through one array-module code path.

How it stays exact while running at float32 GEMM speed
------------------------------------------------------
1. Every image is centred once per pass. For uint8 input the centre ``c`` is
   the mean rounded to an integer, so ``x - c`` is an exact integer in
   [-255, 255]; sums of 256 products of such values stay below 2**24, so
   float32 partial sums over blocks of 256 are exact, and adding the blocks
   in float64 gives exact sums of squares and exact dot products.
2. Candidate search: one float32 matrix product per chunk; subtracting
   ``s1 s1' / D`` (the integer centre's offset) and scaling by the exact
   norms gives every correlation to within ``delta`` = ``tolerance_factor *
   2**-24 * sqrt(D)`` (a bound on the float32 accumulation error: measured
   <= 0.1 in these units for uint8 images and <= 11 for adversarial float
   images, which get a 4x wider band; the default factor is 32).
3. Exact re-scoring: within each training chunk, every pair that could still
   enter a row's top-k (approximate value >= running exact k-th - delta, and
   >= the chunk's k-th approximate value - 2 delta) is re-scored exactly;
   for uint8 ``D cov = D sum((x-c)(y-c')) - s1 s1'`` is an exact float64
   integer, so values are exact to the last rounding of one division and
   identical images give bitwise identical correlations. Other dtypes are
   re-scored from the raw values in float64.
4. The running top-k keeps exact values, ordered by (correlation desc,
   training index asc): ties go to the lowest training index.
5. A row whose band of near-equal candidates is wider than
   ``max_candidates`` is recomputed in a second pass with a float64 product
   (``delta`` ~ 1e-12); only more than ``8 * max_candidates`` training images
   tied within ~1e-12 (exact duplicates) can leave the tie rule unresolved,
   which is counted in ``stats["unresolved_rows"]`` and warned about.

The integer path (uint8 images; :mod:`.integer`, chosen in :mod:`.arithmetic`)
--------------------------------------------------------------------------------
Where a probe finds the CPU's (AMX/VNNI) or GPU's int8 units faster, uint8
images are centred at 128 to int8 and multiplied as int8 x int8 -> int32 in
pixel blocks that cannot overflow; the per-image sums are exact integers
too, so every pair's r is the exact value of step 3 directly: no band, no
re-scoring, no float64 pass, and ties are exact ties. Blocks, streaming,
memory budget, groups, tie rule and results are those of the float path.

Several measures in one pass (:func:`match_groups`)
----------------------------------------------------
The authors correlated one modality at a time. ``match_groups`` takes
channel groups (``{"t1": "T1", "flair": "FLAIR", "all": None}``) and streams
the training set once: every chunk is read and moved to the device once,
centred per group, and each group's product and top-k are computed from it.
Correlating C modalities separately thus costs the FLOPs of one joint pass
(C products of length D/C instead of one of length D); a joint group on top
costs one joint pass more. Every guarantee above holds per group: its own
tolerance band (from its length), exact re-scoring, tie rule, constant flags
and float64 fallback.

Constant images (zero variance, e.g. blank slices) have no defined
correlation: synthetic ones get no match (index -1, NaN) and are flagged,
training ones are never matched; both are counted.

Memory: the synthetic set is processed in resident blocks sized from
``memory_budget``; the training set is streamed in chunks (it may be a
memory-mapped file larger than RAM). The full Ns x Nt matrix never exists.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config.schema import MEMORY_BUDGET_GB
from ..parallel import gather, rank_world, share
from .arithmetic import Arithmetic, choose_arithmetic
from .backend import Backend, get_backend
from .exact import _exact_pairs, _prepare
from .integer import _IntMatcher, pixel_blocks, prepare_int
from .io import ImageSet, open_images
from .measures import _Group, _GroupOutput, _resolve_groups
from .result import MatchResult
from .search import _Matcher, _tolerance

DEFAULT_MEMORY_BUDGET = int(MEMORY_BUDGET_GB * 1024**3)  # bytes; the one default is the settings'
CHUNK_BYTES = 192 * 1024**2  # target size of one prepared training chunk


def plan_sizes(n_synthetic: int, n_train: int, dim: int, memory_budget: int, itemsize: int = 4,
               raw_itemsize: int = 0, chunk_size: int | None = None, block_size: int | None = None,
               chunk_bytes: int | None = CHUNK_BYTES, pair_bytes: int = 4) -> dict:
    """Block/chunk sizes from the memory budget.

    ``dim``: values per image over all groups of one engine call (a joint
    group and its per-channel groups count twice). One training chunk
    (``chunk_size`` rows, centred, plus its raw values) is set aside first;
    the resident synthetic block (centred values, plus raw values for
    non-uint8 input) and the chunk product fill the rest of the budget, so
    the engine's arrays stay within it (benchmarks/bench_step05_memory.py).
    GEMMs of at least a few hundred rows on each side keep BLAS near its peak.
    ``pair_bytes``: bytes per pair of one chunk's product (float32: 4; the
    integer path's int32, plus int64 sums over pixel blocks or float64
    values scored whole on a GPU).
    """
    row_bytes = dim * (itemsize + raw_itemsize)
    if chunk_size is None:
        # GEMMs of several hundred rows run at the speed of one big product;
        # on the CPU the chunk buffer is kept to ~192 MiB (>= 256 rows; and a
        # quarter of the budget) because first-touching fresh memory costs up
        # to ~3 ns/byte on some VMs; a multiple of 96 rows, as OpenBLAS was ~5 % slower on
        # power-of-two chunks (512, 1024) of 2^k-long rows
        cap = 4032 if chunk_bytes is None else max(256, chunk_bytes // row_bytes)
        chunk_size = int(max(64, min(4032, memory_budget // (4 * row_bytes), cap)))
        if chunk_size > 96:
            chunk_size -= chunk_size % 96
    chunk_size = int(max(1, min(chunk_size, max(n_train, 1))))
    # the streamed training chunk: centred values and the raw ones it is made from
    memory_budget = max(memory_budget - chunk_size * dim * (itemsize + max(raw_itemsize, 1)), memory_budget // 4)
    if block_size is None:
        block_size = int(memory_budget // (row_bytes + pair_bytes * chunk_size))
        if block_size < 1:
            raise ValueError(f"memory_budget {memory_budget} bytes is too small for one {dim}-value image")
    block_size = int(max(1, min(block_size, max(n_synthetic, 1))))
    n_blocks = max(1, math.ceil(n_synthetic / block_size))
    # several blocks: keep the prepared training set if it fits in half the
    # budget (each image is then centred once), else re-stream it per block
    cache_train = n_blocks > 1 and n_train * dim * itemsize <= memory_budget // 2
    if cache_train:
        block_size = int(max(1, min(block_size, (memory_budget // 2) // (row_bytes + pair_bytes * chunk_size))))
        n_blocks = max(1, math.ceil(n_synthetic / block_size))
    return {"chunk_size": chunk_size, "block_size": block_size, "n_blocks": n_blocks,
            "cache_train": bool(cache_train)}


def _training_chunks(backend, training: ImageSet, groups: Sequence[_Group], chunk_size: int, work_dtype,
                     cache: list | None):
    """Prepared training chunks (``{group name: _Block}``), streamed: each
    chunk is read (and moved to the device) once for all groups, and kept in
    ``cache`` when given."""
    if cache:
        yield from cache
        return
    xp = backend.xp
    buffers = None if cache is not None else {
        g.name: xp.empty((chunk_size, g.dim), dtype=work_dtype) for g in groups}
    for lo in range(0, training.n, chunk_size):
        hi = min(lo + chunk_size, training.n)
        raw3 = training.read_channels(lo, hi)
        training.check_finite(raw3.reshape(hi - lo, -1), lo)
        raw = xp.asarray(raw3)
        blocks = {g.name: _prepare(backend, g.rows(raw), lo, work_dtype, None if buffers is None else buffers[g.name])
                  for g in groups}
        if cache is not None:
            cache.append(blocks)
        yield blocks

def match_groups(synthetic, training, groups: Mapping[str, Any] | None = None, *, k: int = 1,
                 backend: str | Backend = "auto", memory_budget: int = DEFAULT_MEMORY_BUDGET,
                 chunk_size: int | None = None, block_size: int | None = None, tolerance_factor: float = 32.0,
                 max_candidates: int = 16, precision: str = "float32", progress: bool = True,
                 desc: str | None = None, arithmetic: str | Arithmetic | None = None,
                 pixel_block: int | None = None) -> dict[str, MatchResult]:
    """For every synthetic image, its ``k`` best training images by Pearson
    correlation, for several channel groups ("measures") in one pass.

    ``groups``: ``{name: channels}``, where ``channels`` is ``None``/``"all"``
    (all channels as one vector), a channel index/name, or a list of them;
    ``None`` means ``{"all": None}``. E.g. ``{"t1": "T1", "flair": "FLAIR",
    "all": None}`` correlates each modality alone and all jointly.

    The training set is streamed once: each chunk is read and moved to the
    device once, centred per group, and every group's product is computed
    from it, so one modality at a time costs the FLOPs of one joint pass of
    the same images (the groups' lengths add up to D). Each group keeps its
    own exact top-k, tolerance band, constant-image flags and float64
    fallback, with every guarantee of :func:`top_matches`.

    ``synthetic``/``training``: as in :func:`top_matches` (an
    :class:`ImageSet` keeps its channel selection; the groups then index
    its selected channels). Returns ``{name: MatchResult}`` in the order of
    ``groups``; ``seconds`` is the whole call's time (shared by the groups).

    ``arithmetic``: ``"auto"`` (default; ``$HELPERS_CORRELATION_ARITHMETIC``
    when ``None``) runs uint8 images on the integer path where a probe finds
    it faster (:mod:`.arithmetic`), ``"integer"``/``"float"`` force one; the
    results say which ran and why (``stats["arithmetic"]``,
    ``stats["arithmetic_reason"]``, ``backend_note``). ``pixel_block``: the
    integer path's widest pixel block (default the int32 bound, 131 071).
    """
    t0 = time.perf_counter()
    if k < 1:
        raise ValueError(f"k must be >= 1, not {k}")
    max_candidates = max(max_candidates, k + 1)
    syn = open_images(synthetic, label="synthetic")
    tra = open_images(training, label="training")
    if syn.shape != tra.shape:
        raise ValueError(
            f"synthetic images ({syn.label}) are {'×'.join(map(str, syn.shape))} but training images "
            f"({tra.label}) are {'×'.join(map(str, tra.shape))} after channel selection"
        )
    spec = _resolve_groups(groups, syn, tra)
    be = backend if isinstance(backend, Backend) else get_backend(backend)
    arith = choose_arithmetic(be, (syn.dtype, tra.dtype), max(g.dim for g in spec), precision, arithmetic)
    work = np.dtype(np.float64 if precision == "float64" else np.float32)
    out = {g.name: _GroupOutput(np.full((syn.n, k), -1, dtype=np.int64), np.full((syn.n, k), np.nan),
                                np.zeros(syn.n, dtype=bool), np.zeros(tra.n, dtype=bool),
                                {"rescored_pairs": 0, "fallback_rows": 0, "unresolved_rows": 0})
           for g in spec}
    pairs = syn.n * tra.n
    # in a torch.distributed job each process takes a contiguous share of the
    # synthetic images; every row's result depends on that row alone
    mine = np.arange(syn.n)[share(syn.n).start:share(syn.n).stop]

    from ..common import progress as progress_bar

    bar = progress_bar(total=mine.size * tra.n * len(spec), unit="pair", unit_scale=True,
                       desc=f"{desc or 'correlation'} [{be.name}{', int8' if arith.integer else ''}]",
                       disable=not progress)
    try:
        settings = _PassSettings(k=k, work=work, memory_budget=memory_budget, chunk_size=chunk_size,
                                 block_size=block_size, tolerance_factor=tolerance_factor,
                                 max_candidates=max_candidates)
        if arith.integer:  # exact values for every pair: no band, no fallback pass
            _run_integer_pass(arith, be, syn, tra, mine, spec, settings, pixel_block, out=out, bar=bar)
        overflow = {} if arith.integer else _run_pass(be, syn, tra, mine, spec, settings, out=out, bar=bar)
        for g in spec if overflow else ():
            rows = overflow[g.name]
            if not rows.size:
                continue
            out[g.name].stats["fallback_rows"] = int(rows.size)
            bar.total += int(rows.size) * tra.n
            fallback = dataclasses.replace(settings, work=np.dtype(np.float64), block_size=None,
                                           max_candidates=8 * max_candidates)
            still = _run_pass(be, syn, tra, rows, [g], fallback, out=out, bar=bar)[g.name]
            out[g.name].stats["unresolved_rows"] = int(still.size)
            if still.size:
                warnings.warn(
                    f"{g.name}: {still.size} synthetic image(s) have more than {8 * max_candidates} training "
                    "images tied within ~1e-12 (duplicates); their ties may not all go to the lowest index",
                    stacklevel=2,
                )
    finally:
        bar.close()
        be.free()
    if rank_world()[1] > 1:
        _merge_shares(out, mine)
    seconds = time.perf_counter() - t0
    exact = syn.dtype == np.uint8 and tra.dtype == np.uint8
    results = {}
    note = f"{be.note}; {arith.reason}"
    for g in spec:
        o = out[g.name]
        o.stats.update(n_synthetic_constant=int(o.constant.sum()), n_train_constant=int(o.train_constant.sum()),
                       tolerance=0.0 if arith.integer else _tolerance(exact, g.dim, work, tolerance_factor),
                       precision="int8 products, int32/int64 sums" if arith.integer else str(work),
                       groups=len(spec), arithmetic=arith.kind, arithmetic_reason=arith.reason)
        results[g.name] = MatchResult(o.index, o.correlation, o.constant, o.train_constant, be.name, note, pairs,
                                      seconds, o.stats)
    return results


def _merge_shares(out: dict[str, _GroupOutput], mine: np.ndarray) -> None:
    """Every process's rows (and counters) into every process's ``out``."""
    counters = ("rescored_pairs", "fallback_rows", "unresolved_rows")
    pieces = gather({name: (mine, o.index[mine], o.correlation[mine], o.constant[mine],
                            {c: o.stats[c] for c in counters}) for name, o in out.items()})
    for name, o in out.items():
        for c in counters:
            o.stats[c] = 0
        for piece in pieces:
            rows, index, corr, constant, stats = piece[name]
            o.index[rows], o.correlation[rows], o.constant[rows] = index, corr, constant
            for c in counters:
                o.stats[c] += stats[c]


def top_matches(synthetic, training, *, k: int = 1, channels=None, backend: str | Backend = "auto",
                memory_budget: int = DEFAULT_MEMORY_BUDGET, chunk_size: int | None = None,
                block_size: int | None = None, tolerance_factor: float = 32.0, max_candidates: int = 16,
                precision: str = "float32", progress: bool = True, desc: str | None = None,
                arithmetic: str | Arithmetic | None = None, pixel_block: int | None = None) -> MatchResult:
    """For every synthetic image, its ``k`` best training images by Pearson correlation.

    ``synthetic``/``training``: arrays (``N×C×H×W``, ``N×H×W``, ``N×D``; uint8
    or float; memory-mapped welcome), ``.npy`` paths, folders of images, or
    :class:`ImageSet`. ``channels``: ``None``/``"all"`` (all channels as one
    vector), an index/name, or a list. ``memory_budget`` (bytes) sizes the
    resident synthetic block and the training chunks. ``precision="float64"``
    runs the candidate product in float64 (slower, for checking);
    ``arithmetic`` and ``pixel_block``: as in :func:`match_groups`.
    Every reported correlation is exact (float64). Several channel
    selections at once: :func:`match_groups`.
    """
    syn = open_images(synthetic, channels, label="synthetic")
    tra = open_images(training, channels, label="training")
    return match_groups(syn, tra, {"selection": None}, k=k, backend=backend, memory_budget=memory_budget,
                        chunk_size=chunk_size, block_size=block_size, tolerance_factor=tolerance_factor,
                        max_candidates=max_candidates, precision=precision, progress=progress,
                        desc=desc, arithmetic=arithmetic, pixel_block=pixel_block)["selection"]


@dataclass(frozen=True)
class _PassSettings:
    """The sizes and tolerances of one engine pass (the float64 fallback
    pass is the first one with another ``work`` dtype and a wider band)."""

    k: int
    work: np.dtype
    memory_budget: int
    chunk_size: int | None
    block_size: int | None
    tolerance_factor: float
    max_candidates: int


def _run_pass(be: Backend, syn: ImageSet, tra: ImageSet, rows_wanted: np.ndarray, groups: Sequence[_Group],
              settings: _PassSettings, *, out: Mapping[str, _GroupOutput], bar) -> dict[str, np.ndarray]:
    """One pass of the engine over the synthetic rows ``rows_wanted`` for
    ``groups``; fills ``out`` and returns, per group, the rows whose
    candidate band overflowed."""
    k, work, max_candidates = settings.k, settings.work, settings.max_candidates
    xp = be.xp
    exact = syn.dtype == np.uint8 and tra.dtype == np.uint8
    for g in groups:
        g.delta = _tolerance(exact, g.dim, work, settings.tolerance_factor)
    raw_itemsize = 0 if syn.dtype == np.uint8 else syn.dtype.itemsize
    plan = plan_sizes(len(rows_wanted), tra.n, sum(g.dim for g in groups), settings.memory_budget, work.itemsize,
                      raw_itemsize, settings.chunk_size, settings.block_size, None if be.is_gpu else CHUNK_BYTES)
    for g in groups:
        out[g.name].stats.setdefault("plan", plan)
    cache = [] if plan["cache_train"] else None
    contiguous = rows_wanted.size and np.array_equal(rows_wanted, np.arange(rows_wanted[0], rows_wanted[-1] + 1))
    gbuf = xp.empty(plan["block_size"] * plan["chunk_size"], dtype=work)
    overflow = {g.name: [] for g in groups}
    train_tracked = False
    for lo in range(0, len(rows_wanted), plan["block_size"]):
        rows = rows_wanted[lo:lo + plan["block_size"]]
        raw3 = syn.read_channels(int(rows[0]), int(rows[-1]) + 1) if contiguous else syn.take_channels(rows)
        syn.check_finite(raw3.reshape(len(rows), -1), int(rows[0]))
        raw = xp.asarray(raw3)  # one transfer for all groups
        matchers = {}
        for g in groups:
            A = _prepare(be, g.rows(raw), 0, work)
            const = be.to_host(A.constant)
            out[g.name].constant[rows] = const
            valid = np.flatnonzero(~const)
            if const.any():  # constant synthetic images take no part in matching
                A = A.subset(xp.asarray(valid))
                bar.update(int(const.sum()) * tra.n)
            if valid.size:
                matchers[g.name] = _Matcher(be, A, rows[valid], k, g.delta, max_candidates, out[g.name].stats)
        del raw, raw3
        if not matchers and train_tracked:
            continue
        for chunk in _training_chunks(be, tra, groups, plan["chunk_size"], work, cache):
            for name, matcher in matchers.items():
                B = chunk[name]
                matcher.update(B, gbuf)
                bar.update(matcher.A.n * B.n)
            if not train_tracked:
                for name, B in chunk.items():
                    out[name].train_constant[B.start:B.start + B.n] = be.to_host(B.constant)
        train_tracked = True
        for name, matcher in matchers.items():
            val, idx, over = matcher.result()
            o = out[name]
            o.index[matcher.rows] = idx
            o.correlation[matcher.rows] = np.where(idx >= 0, val, np.nan)
            overflow[name].append(matcher.rows[over])
        # nothing of this block may outlive it (the loop variables hold its arrays too):
        # the next block is allocated at full size
        matchers = matcher = A = chunk = B = None
    return {name: np.concatenate(parts) if parts else np.empty(0, dtype=np.int64) for name, parts in overflow.items()}


def _run_integer_pass(arith: Arithmetic, be: Backend, syn: ImageSet, tra: ImageSet, rows_wanted: np.ndarray,
                      groups: Sequence[_Group], settings: _PassSettings, pixel_block: int | None, *,
                      out: Mapping[str, _GroupOutput], bar) -> None:
    """One pass of the integer path (:mod:`.integer`) over the synthetic
    rows ``rows_wanted`` for ``groups``: the same blocks, streaming, cache
    and top-k as :func:`_run_pass`, with exact values for every pair."""
    unit, k = arith.unit, settings.k
    blocks = {g.name: pixel_blocks(g.dim, pixel_block) for g in groups}
    split = any(len(b) > 1 for b in blocks.values())
    plan = plan_sizes(len(rows_wanted), tra.n, sum(g.dim for g in groups), settings.memory_budget, 1, 0,
                      settings.chunk_size, settings.block_size, None if be.is_gpu else CHUNK_BYTES,
                      pair_bytes=4 + 8 * split + 16 * unit.is_gpu)
    plan["pixel_blocks"] = {name: len(b) for name, b in blocks.items()}
    for g in groups:
        out[g.name].stats.setdefault("plan", plan)
    cache = [] if plan["cache_train"] else None
    buffers = None if cache is not None else {g.name: [] for g in groups}
    contiguous = rows_wanted.size and np.array_equal(rows_wanted, np.arange(rows_wanted[0], rows_wanted[-1] + 1))
    gbuf = unit.product_buffer(plan["block_size"], plan["chunk_size"])  # one product's int32, reused
    train_tracked = False
    for lo in range(0, len(rows_wanted), plan["block_size"]):
        rows = rows_wanted[lo:lo + plan["block_size"]]
        raw3 = syn.read_channels(int(rows[0]), int(rows[-1]) + 1) if contiguous else syn.take_channels(rows)
        matchers = {}
        for g in groups:
            A = prepare_int(unit, g.rows(raw3), 0, blocks[g.name])
            const = be.to_host(A.constant)
            out[g.name].constant[rows] = const
            bar.update(int(const.sum()) * tra.n)
            if not const.all():  # constant rows are scored too (r = 0) and never reported
                matchers[g.name] = _IntMatcher(unit, A, rows, k)
        del raw3
        if not matchers and train_tracked:
            continue
        for chunk in _integer_chunks(unit, tra, groups, blocks, plan["chunk_size"], cache, buffers):
            for name, matcher in matchers.items():
                B = chunk[name]
                matcher.update(B, gbuf)
                bar.update(int((~be.to_host(matcher.A.constant)).sum()) * B.n)
            if not train_tracked:
                for name, B in chunk.items():
                    out[name].train_constant[B.start:B.start + B.n] = be.to_host(B.constant)
        train_tracked = True
        for name, matcher in matchers.items():
            val, idx = matcher.result()
            keep = ~be.to_host(matcher.A.constant)
            o = out[name]
            o.index[matcher.rows[keep]] = idx[keep]
            o.correlation[matcher.rows[keep]] = np.where(idx[keep] >= 0, val[keep], np.nan)
        matchers = matcher = A = chunk = B = None


def _integer_chunks(unit, training: ImageSet, groups: Sequence[_Group], blocks, chunk_size: int,
                    cache: list | None, buffers: dict | None):
    """Training chunks as int8 blocks (``{group name: _IntBlock}``), each
    chunk read once for all groups; kept in ``cache`` when given."""
    if cache:
        yield from cache
        return
    for lo in range(0, training.n, chunk_size):
        hi = min(lo + chunk_size, training.n)
        raw3 = training.read_channels(lo, hi)
        chunk = {g.name: prepare_int(unit, g.rows(raw3), lo, blocks[g.name],
                                     None if buffers is None else buffers[g.name]) for g in groups}
        if cache is not None:
            cache.append(chunk)
        yield chunk


# ==========================================================================
# Exact correlation of given pairs (adjacent slices, checks)
# ==========================================================================

def pair_correlations(a, b, a_index, b_index, channels=None, batch: int = 256) -> np.ndarray:
    """Exact Pearson correlation of ``a[a_index[i]]`` with ``b[b_index[i]]``
    (NumPy, float64); NaN where an index is negative or an image is constant."""
    A = open_images(a, channels, label="a")
    B = open_images(b, channels, label="b")
    if A.shape != B.shape:
        raise ValueError(f"image shapes differ: {A.shape} vs {B.shape}")
    ia = np.asarray(a_index, dtype=np.int64).ravel()
    ib = np.asarray(b_index, dtype=np.int64).ravel()
    if ia.shape != ib.shape:
        raise ValueError("a_index and b_index must have the same length")
    out = np.full(ia.shape, np.nan)
    ok = np.flatnonzero((ia >= 0) & (ib >= 0))
    be = Backend("numpy", np)
    for lo in range(0, ok.size, batch):
        sel = ok[lo:lo + batch]
        PA = _prepare(be, A.take(ia[sel]), 0, np.float32)
        PB = _prepare(be, B.take(ib[sel]), 0, np.float32)
        r = np.arange(sel.size)
        with np.errstate(invalid="ignore", divide="ignore"):
            value = _exact_pairs(np, PA, r, PB, r)
        value[PA.constant | PB.constant] = np.nan
        out[sel] = value
    return out
