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

Constant images (zero variance, e.g. blank slices) have no defined
correlation: synthetic ones get no match (index -1, NaN) and are flagged,
training ones are never matched; both are counted.

Memory: the synthetic set is processed in resident blocks sized from
``memory_budget``; the training set is streamed in chunks (it may be a
memory-mapped file larger than RAM). The full Ns x Nt matrix never exists.

This module imports neither torch nor (unless asked) CuPy.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DEFAULT_MEMORY_BUDGET = 2 * 1024**3
CHUNK_BYTES = 192 * 1024**2  # target size of one prepared training chunk
#: rounding unit of the working dtypes (2**-24 for float32, 2**-53 for float64)
_UNIT = {np.dtype(np.float32): 2.0**-24, np.dtype(np.float64): 2.0**-53}


# ==========================================================================
# Backends
# ==========================================================================

@dataclass
class Backend:
    """The array module in use: ``numpy`` (CPU/BLAS) or ``cupy`` (GPU)."""

    name: str
    xp: Any
    note: str = ""

    @property
    def is_gpu(self) -> bool:
        return self.name == "cupy"

    def to_host(self, a):
        return a.get() if self.is_gpu else np.asarray(a)

    def free(self) -> None:
        """Give CuPy's cached device memory back (it competes with PyTorch)."""
        if self.is_gpu:
            self.xp.get_default_memory_pool().free_all_blocks()
            self.xp.get_default_pinned_memory_pool().free_all_blocks()


def cupy_status() -> tuple[Any, str]:
    """``(cupy module or None, reason)``: CuPy is optional."""
    try:
        import cupy  # noqa: PLC0415  (optional dependency)
    except Exception as err:  # ImportError, or a broken CUDA install
        return None, f"CuPy is not available ({type(err).__name__}: {err})"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:
        return None, f"CuPy found no CUDA device ({type(err).__name__})"
    if n < 1:
        return None, "CuPy found no CUDA device"
    return cupy, f"CuPy {cupy.__version__} on {n} CUDA device(s)"


def get_backend(backend: str = "auto") -> Backend:
    """``"auto"`` (CuPy when a device exists, else NumPy), ``"cupy"`` or ``"numpy"``."""
    backend = (backend or "auto").lower()
    if backend not in ("auto", "numpy", "cupy"):
        raise ValueError(f"backend must be 'auto', 'numpy' or 'cupy', not {backend!r}")
    if backend == "numpy":
        return Backend("numpy", np, "NumPy/BLAS on the CPU (requested)")
    cupy, reason = cupy_status()
    if cupy is None:
        if backend == "cupy":
            raise RuntimeError(f"backend='cupy' requested but {reason}")
        log.info("correlation engine: NumPy/BLAS on the CPU (%s)", reason)
        return Backend("numpy", np, f"NumPy/BLAS on the CPU: {reason}")
    if os.environ.get("CUPY_TF32", "0") not in ("", "0"):
        raise RuntimeError(
            "CUPY_TF32 is set: float32 products would use TF32 (10-bit mantissa) and the "
            "candidate bound would not hold; unset CUPY_TF32"
        )
    return Backend("cupy", cupy, reason)


# ==========================================================================
# Image sources: arrays, .npy files (memory-mapped) and folders of images
# ==========================================================================

def _parse_channels(channels, n_channels: int, names: Sequence[str] | None) -> list[int] | None:
    """``None``/``"all"`` -> all channels (``None``); int, name or a list of them -> indices."""
    if channels is None or (isinstance(channels, str) and channels.lower() == "all"):
        return None
    if isinstance(channels, (int, np.integer, str)):
        channels = [channels]
    out = []
    for ch in channels:
        if isinstance(ch, str) and not ch.lstrip("-").isdigit():
            if not names or ch not in names:
                raise ValueError(f"unknown channel {ch!r}; channels are {list(names or range(n_channels))}")
            out.append(list(names).index(ch))
        else:
            idx = int(ch)
            if not -n_channels <= idx < n_channels:
                raise ValueError(f"channel {idx} out of range for {n_channels} channel(s)")
            out.append(idx % n_channels)
    if len(set(out)) != len(out):
        raise ValueError(f"channel selection {channels!r} repeats a channel")
    return None if out == list(range(n_channels)) else out


class ImageSet:
    """A set of N images, read in row blocks as ``(n, D)`` arrays.

    Wraps an array (``N×C×H×W``, ``N×H×W`` or ``N×D``; in memory or
    memory-mapped) or a folder of image files. ``channels`` selects one or
    several channels, flattened together into one vector per image.
    """

    def __init__(self, array=None, *, files: Sequence[Path] | None = None, channels=None,
                 channel_names: Sequence[str] | None = None, grayscale: bool = True, label: str = "images"):
        self.label = label
        self.files = list(files) if files is not None else None
        self.grayscale = grayscale
        if self.files is not None:
            self._array = None
            self.n = len(self.files)
            self.dtype, shape = _probe_folder(self.files, grayscale)
        else:
            if not hasattr(array, "shape") or not hasattr(array, "dtype"):
                array = np.asarray(array)
            if array.ndim < 2:
                raise ValueError(f"{label}: expected an array of images N×C×H×W, N×H×W or N×D, got shape {array.shape}")
            self._array = array
            self.n = int(array.shape[0])
            self.dtype = np.dtype(array.dtype)
            shape = tuple(int(s) for s in array.shape[1:])
            if len(shape) == 2:  # N×H×W
                shape = (1, *shape)
            elif len(shape) == 1:  # N×D
                shape = (1, 1, shape[0])
            elif len(shape) > 3:
                raise ValueError(f"{label}: expected N×C×H×W, N×H×W or N×D, got shape {array.shape}")
        if self.dtype.kind not in "uifb":
            raise ValueError(f"{label}: images must be numeric, not {self.dtype}")
        self.image_shape = shape  # (C, H, W) before channel selection
        self.channel_names = list(channel_names) if channel_names is not None else None
        self.channels = _parse_channels(channels, shape[0], self.channel_names)
        n_sel = shape[0] if self.channels is None else len(self.channels)
        self.shape = (n_sel, *shape[1:])  # after channel selection
        self.dim = int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.n

    @property
    def names(self) -> list[str] | None:
        """File names for a folder, else ``None``."""
        return None if self.files is None else [f.name for f in self.files]

    def _select(self, block: np.ndarray) -> np.ndarray:
        n = block.shape[0]
        if block.ndim == 3:
            block = block[:, None]
        elif block.ndim == 2:
            block = block[:, None, None]
        if self.channels is not None:
            block = block[:, self.channels]
        return block.reshape(n, -1)  # a view when the rows are contiguous

    def read(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo:hi`` as ``(hi-lo, D)`` in the stored dtype (a view where possible)."""
        if self.files is not None:
            return self._select(np.stack([self._load(i) for i in range(lo, hi)]))
        return self._select(self._array[lo:hi])

    def take(self, indices) -> np.ndarray:
        """Rows at ``indices`` (any order, repeats allowed) as ``(m, D)``."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size == 0:
            return np.empty((0, self.dim), self.dtype)
        if self.files is not None:
            uniq, inverse = np.unique(indices, return_inverse=True)
            return self._select(np.stack([self._load(i) for i in uniq]))[inverse]
        uniq, inverse = np.unique(indices, return_inverse=True)  # sorted reads from a memmap
        return self._select(np.asarray(self._array[uniq]))[inverse]

    def _load(self, i: int) -> np.ndarray:
        return _read_image(self.files[i], self.image_shape, self.grayscale)

    def check_finite(self, block: np.ndarray, lo: int) -> None:
        if self.dtype.kind == "f" and not np.isfinite(block).all():
            bad = lo + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
            where = self.files[bad] if self.files is not None else f"{self.label}[{bad}]"
            raise ValueError(f"{where}: image contains NaN or infinite values")


def _image_mode(mode: str, grayscale: bool) -> str:
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return mode
    return "L" if grayscale else ("RGB" if mode not in ("L", "1") else "L")


def _probe_folder(files: Sequence[Path], grayscale: bool):
    """Check every file opens and all have one size and mode (headers only)."""
    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415

    first = None
    for path in files:
        try:
            with Image.open(path) as im:
                key = (im.size, _image_mode(im.mode, grayscale))
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"{path}: cannot be read as an image ({err})") from err
        if first is None:
            first, first_path = key, path
        elif key != first:
            raise ValueError(
                f"{path}: size {key[0][0]}×{key[0][1]} mode {key[1]} differs from {first_path.name} "
                f"({first[0][0]}×{first[0][1]} mode {first[1]}); all images in a set must match"
            )
    (w, h), mode = first
    channels = 3 if mode == "RGB" else 1
    dtype = {"L": np.uint8, "RGB": np.uint8, "I;16": np.uint16, "I;16B": np.uint16,
             "I;16L": np.uint16, "I": np.int32, "F": np.float32}[mode]
    return np.dtype(dtype), (channels, h, w)


def _read_image(path: Path, shape: tuple[int, int, int], grayscale: bool) -> np.ndarray:
    from PIL import Image  # noqa: PLC0415

    try:
        with Image.open(path) as im:
            mode = _image_mode(im.mode, grayscale)
            arr = np.asarray(im.convert(mode) if im.mode != mode else im)
    except OSError as err:
        raise ValueError(f"{path}: cannot be decoded ({err})") from err
    arr = arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)
    if arr.shape != shape:
        raise ValueError(f"{path}: decoded shape {arr.shape} differs from the expected {shape}")
    return arr


def list_image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files directly in ``folder`` (sorted by name)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    return files


def open_images(source, channels=None, *, channel_names: Sequence[str] | None = None,
                grayscale: bool = True, label: str | None = None) -> ImageSet:
    """An :class:`ImageSet` from an array, an ``.npy`` file (memory-mapped),
    a folder of PNG/JPEG files, or an existing ImageSet (re-selected)."""
    if isinstance(source, ImageSet):
        if channels is None and channel_names is None:
            return source
        if source.files is not None:
            return ImageSet(files=source.files, channels=channels, grayscale=source.grayscale,
                            channel_names=channel_names or source.channel_names, label=source.label)
        return ImageSet(source._array, channels=channels, label=source.label,
                        channel_names=channel_names or source.channel_names)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        label = label or str(path)
        if path.is_dir():
            return ImageSet(files=list_image_files(path), channels=channels, grayscale=grayscale,
                            channel_names=channel_names, label=label)
        if path.suffix.lower() == ".npy":
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no such file")
            try:
                array = np.load(path, mmap_mode="r")
            except (ValueError, OSError) as err:
                raise ValueError(f"{path}: not a readable .npy array ({err})") from err
            return ImageSet(array, channels=channels, channel_names=channel_names, label=label)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
        raise ValueError(f"{path}: expected a folder of images or an .npy file")
    return ImageSet(source, channels=channels, channel_names=channel_names, label=label or "images")


# ==========================================================================
# Preparation of one block of images on the backend
# ==========================================================================

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

    def subset(self, keep) -> "_Block":
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


_POOL = None


def _threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _prepare(backend: Backend, raw_host: np.ndarray, start: int, work_dtype, buffer=None) -> _Block:
    """Centre a host block ``(n, D)`` on the backend: one pass to sum, one to
    centre into the working dtype, one for the sums of squares. On the CPU
    the rows are split over all cores (NumPy releases the GIL), since BLAS
    would otherwise be the only multi-threaded part."""
    global _POOL
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
        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

        if _POOL is None or _POOL._max_workers != workers:
            _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="correlation")
        cuts = np.linspace(0, n, workers + 1).astype(int)
        parts = list(_POOL.map(lambda lo, hi: _centre_rows(xp, raw[lo:hi], centred[lo:hi], exact_int),
                               cuts[:-1], cuts[1:]))
        s1, var_d, constant = (np.concatenate([p[i] for p in parts]) for i in range(3))
        mean = None if exact_int else np.concatenate([p[3] for p in parts])
    else:
        s1, var_d, constant, mean = _centre_rows(xp, raw, centred, exact_int)
    safe = xp.where(constant, 1.0, var_d / dim)
    inv_norm = xp.where(constant, 0.0, 1.0 / xp.sqrt(safe)).astype(work_dtype)
    return _Block(start, centred, s1, var_d, inv_norm, constant, mean, None if exact_int else raw,
                  bool(exact_int), dim, bool(constant.any()))


def _exact_pairs(xp, A: _Block, ra, B: _Block, rb):
    """Exact Pearson correlation of rows ``ra`` of A with rows ``rb`` of B.

    uint8 with uint8: D*cov = D*sum((x-c)(y-c')) - s1*s1' in exact float64
    integers, so identical images give bitwise identical values."""
    dim = A.dim
    if A.exact_int and B.exact_int:
        if xp is np:  # pair by pair on views: no gathered copies of the rows
            p = np.fromiter((_blocked_dot(np, A.centred[i:i + 1], B.centred[j:j + 1])[0]
                             for i, j in zip(ra.tolist(), rb.tolist())), dtype=np.float64, count=len(ra))
        else:
            p = _blocked_dot(xp, xp.take(A.centred, ra, axis=0), xp.take(B.centred, rb, axis=0))
    else:
        p = _rowdot64(xp, A.exact_rows(xp, ra), B.exact_rows(xp, rb))
    num = dim * p - A.s1[ra] * B.s1[rb]
    # sqrt(v * v) == v exactly in IEEE arithmetic, so a copy scores exactly 1.0
    return xp.clip(num / xp.sqrt(A.var_d[ra] * B.var_d[rb]), -1.0, 1.0)


# ==========================================================================
# The engine
# ==========================================================================

@dataclass
class MatchResult:
    """Top-k training matches of every synthetic image.

    ``index[i, r]``/``correlation[i, r]``: the rank-``r+1`` training image of
    synthetic image ``i`` and its exact Pearson correlation (-1/NaN where
    there is none: a constant synthetic image, or fewer valid training images
    than k). ``constant``: synthetic images with zero variance;
    ``train_constant``: training images with zero variance (never matched).
    """

    index: np.ndarray
    correlation: np.ndarray
    constant: np.ndarray
    train_constant: np.ndarray
    backend: str
    backend_note: str
    pairs: int
    seconds: float
    stats: dict = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.index.shape[1])

    @property
    def best_index(self) -> np.ndarray:
        return self.index[:, 0]

    @property
    def best_correlation(self) -> np.ndarray:
        return self.correlation[:, 0]

    @property
    def pairs_per_second(self) -> float:
        return self.pairs / self.seconds if self.seconds > 0 else float("nan")

    def best_frame(self) -> pd.DataFrame:
        """One row per synthetic image: its best training match."""
        return pd.DataFrame({
            "synthetic_index": np.arange(len(self.index)),
            "train_index": self.best_index,
            "correlation": self.best_correlation,
            "constant": self.constant,
        })

    def topk_frame(self) -> pd.DataFrame:
        """One row per (synthetic image, rank) with a match; rank 1 = best."""
        n, k = self.index.shape
        frame = pd.DataFrame({
            "synthetic_index": np.repeat(np.arange(n), k),
            "rank": np.tile(np.arange(1, k + 1), n),
            "train_index": self.index.ravel(),
            "correlation": self.correlation.ravel(),
        })
        return frame[frame["train_index"] >= 0].reset_index(drop=True)


def plan_sizes(n_synthetic: int, n_train: int, dim: int, memory_budget: int, itemsize: int = 4,
               raw_itemsize: int = 0, chunk_size: int | None = None, block_size: int | None = None,
               chunk_bytes: int | None = CHUNK_BYTES) -> dict:
    """Block/chunk sizes from the memory budget.

    The resident synthetic block (centred values, plus raw values for non-uint8
    input) and the chunk product fill the budget; one training chunk
    (``chunk_size`` rows, raw + centred) comes on top. GEMMs of at least a few
    hundred rows on each side keep BLAS near its peak.
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
    if block_size is None:
        block_size = int(memory_budget // (row_bytes + 4 * chunk_size))
        if block_size < 1:
            raise ValueError(f"memory_budget {memory_budget} bytes is too small for one {dim}-value image")
    block_size = int(max(1, min(block_size, max(n_synthetic, 1))))
    n_blocks = max(1, math.ceil(n_synthetic / block_size))
    # several blocks: keep the prepared training set if it fits in half the
    # budget (each image is then centred once), else re-stream it per block
    cache_train = n_blocks > 1 and n_train * dim * itemsize <= memory_budget // 2
    if cache_train:
        block_size = int(max(1, min(block_size, (memory_budget // 2) // (row_bytes + 4 * chunk_size))))
        n_blocks = max(1, math.ceil(n_synthetic / block_size))
    return {"chunk_size": chunk_size, "block_size": block_size, "n_blocks": n_blocks,
            "cache_train": bool(cache_train)}


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


def _match_block(backend: Backend, A: _Block, chunks, k: int, delta: float, max_candidates: int, gbuf,
                 progress, stats: dict):
    """All training chunks against one resident synthetic block.

    Per chunk: one GEMM of centred values; approximate correlations
    (G - s1 s1'/D) / (||x|| ||y||); the highest ones per row by repeated
    argmax (lowest index first on ties) while they can still reach the
    row's top-k; those re-scored exactly and merged into the running exact
    top-k. Returns (values, indices, overflow) for the block's rows."""
    xp = backend.xp
    n, dim = A.n, A.dim
    top = _TopK(xp, n, k)
    overflow = xp.zeros(n, dtype=bool)
    rows = xp.arange(n)
    batch = max(1, (32 * 1024**2) // (dim * A.centred.itemsize))
    a_s1 = (A.s1 / dim).astype(A.centred.dtype)
    for B in chunks:
        nb = B.n
        g = gbuf[: n * nb].reshape(n, nb)
        xp.matmul(A.centred, B.centred.T, out=g)
        if A.exact_int:  # integer centres: remove D (m - c)(m' - c')
            g -= a_s1[:, None] * B.s1.astype(g.dtype)[None, :]
        g *= A.inv_norm[:, None]
        g *= B.inv_norm[None, :]
        if B.any_constant:
            g[:, B.constant] = -xp.inf
        picks_j, picks_v = [], []
        thr = None
        for it in range(max_candidates):
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
                thr = xp.maximum(top.kth - delta, v.astype(xp.float64) - 2 * delta)
        else:
            nxt = g.max(axis=1)
            overflow |= (nxt >= thr) & (nxt > -xp.inf)
        J = xp.stack(picks_j, axis=1)
        V = xp.stack(picks_v, axis=1).astype(xp.float64)
        r_idx, p_idx = xp.nonzero((V >= thr[:, None]) & (V > -xp.inf))
        E = xp.full(V.shape, -xp.inf, dtype=xp.float64)
        n_pairs = int(r_idx.size)
        if n_pairs:
            cols = J[r_idx, p_idx]
            exact = xp.empty(n_pairs, dtype=xp.float64)
            for lo in range(0, n_pairs, batch):
                exact[lo:lo + batch] = _exact_pairs(xp, A, r_idx[lo:lo + batch], B, cols[lo:lo + batch])
            E[r_idx, p_idx] = exact
            stats["rescored_pairs"] += n_pairs
        order = xp.argsort(J, axis=1)
        top.merge(xp.take_along_axis(E, order, axis=1), xp.take_along_axis(J, order, axis=1) + B.start)
        if progress is not None:
            progress.update(n * nb)
    return top.val, top.idx, overflow


def _training_chunks(backend, training: ImageSet, chunk_size: int, work_dtype, cache: list | None):
    """Prepared training chunks, streamed (and kept in ``cache`` when given)."""
    if cache:
        yield from cache
        return
    buffer = None if cache is not None else backend.xp.empty((chunk_size, training.dim), dtype=work_dtype)
    for lo in range(0, training.n, chunk_size):
        hi = min(lo + chunk_size, training.n)
        raw = training.read(lo, hi)
        training.check_finite(raw, lo)
        block = _prepare(backend, raw, lo, work_dtype, buffer)
        if cache is not None:
            cache.append(block)
        yield block


def top_matches(synthetic, training, *, k: int = 1, channels=None, backend: str | Backend = "auto",
                memory_budget: int = DEFAULT_MEMORY_BUDGET, chunk_size: int | None = None,
                block_size: int | None = None, tolerance_factor: float = 32.0, max_candidates: int = 16,
                precision: str = "float32", progress: bool = True, desc: str | None = None) -> MatchResult:
    """For every synthetic image, its ``k`` best training images by Pearson correlation.

    ``synthetic``/``training``: arrays (``N×C×H×W``, ``N×H×W``, ``N×D``; uint8
    or float; memory-mapped welcome), ``.npy`` paths, folders of images, or
    :class:`ImageSet`. ``channels``: ``None``/``"all"`` (all channels as one
    vector), an index/name, or a list. ``memory_budget`` (bytes) sizes the
    resident synthetic block and the training chunks. ``precision="float64"``
    runs the candidate product in float64 (slower, for checking).
    Every reported correlation is exact (float64).
    """
    t0 = time.perf_counter()
    if k < 1:
        raise ValueError(f"k must be >= 1, not {k}")
    if max_candidates < k + 1:
        max_candidates = k + 1
    syn = open_images(synthetic, channels, label="synthetic")
    tra = open_images(training, channels, label="training")
    if syn.shape != tra.shape:
        raise ValueError(
            f"synthetic images ({syn.label}) are {'×'.join(map(str, syn.shape))} but training images "
            f"({tra.label}) are {'×'.join(map(str, tra.shape))} after channel selection"
        )
    be = backend if isinstance(backend, Backend) else get_backend(backend)
    xp = be.xp
    dim = syn.dim
    work = np.dtype(np.float64 if precision == "float64" else np.float32)
    stats = {"rescored_pairs": 0, "fallback_rows": 0, "unresolved_rows": 0}
    index = np.full((syn.n, k), -1, dtype=np.int64)
    corr = np.full((syn.n, k), np.nan, dtype=np.float64)
    syn_constant = np.zeros(syn.n, dtype=bool)
    train_constant = np.zeros(tra.n, dtype=bool)
    pairs = syn.n * tra.n

    from tqdm.auto import tqdm  # noqa: PLC0415

    bar = tqdm(total=pairs, unit="pair", unit_scale=True, desc=f"{desc or 'correlation'} [{be.name}]",
               disable=not progress, mininterval=1.0)
    try:
        overflow_rows = _run_pass(be, syn, tra, np.arange(syn.n), k, work, memory_budget, chunk_size,
                                  block_size, tolerance_factor, max_candidates, index, corr,
                                  syn_constant, train_constant, bar, stats)
        if overflow_rows.size:
            stats["fallback_rows"] = int(overflow_rows.size)
            bar.total += int(overflow_rows.size) * tra.n
            still = _run_pass(be, syn, tra, overflow_rows, k, np.dtype(np.float64), memory_budget, chunk_size,
                              None, tolerance_factor, 8 * max_candidates, index, corr,
                              syn_constant, train_constant, bar, stats)
            stats["unresolved_rows"] = int(still.size)
            if still.size:
                warnings.warn(
                    f"{still.size} synthetic image(s) have more than {8 * max_candidates} training images "
                    "tied within ~1e-12 (duplicates); their ties may not all go to the lowest index",
                    stacklevel=2,
                )
    finally:
        bar.close()
        be.free()
    stats["n_synthetic_constant"] = int(syn_constant.sum())
    stats["n_train_constant"] = int(train_constant.sum())
    stats["tolerance"] = _tolerance(syn, tra, work, tolerance_factor)
    stats["precision"] = str(work)
    return MatchResult(index, corr, syn_constant, train_constant, be.name, be.note, pairs,
                       time.perf_counter() - t0, stats)


def _run_pass(be, syn, tra, rows_wanted, k, work, memory_budget, chunk_size, block_size, tolerance_factor,
              max_candidates, index, corr, syn_constant, train_constant, bar, stats):
    """One pass of the engine over the synthetic rows ``rows_wanted``;
    returns the rows whose candidate band overflowed."""
    xp = be.xp
    dim = syn.dim
    delta = _tolerance(syn, tra, work, tolerance_factor)
    raw_itemsize = 0 if syn.dtype == np.uint8 else syn.dtype.itemsize
    plan = plan_sizes(len(rows_wanted), tra.n, dim, memory_budget, work.itemsize, raw_itemsize,
                      chunk_size, block_size, None if be.is_gpu else CHUNK_BYTES)
    stats.setdefault("plan", plan)
    cache = [] if plan["cache_train"] else None
    contiguous = rows_wanted.size and np.array_equal(rows_wanted, np.arange(rows_wanted[0], rows_wanted[-1] + 1))
    gbuf = xp.empty(plan["block_size"] * plan["chunk_size"], dtype=work)
    overflow_rows = []
    first_block = True
    for lo in range(0, len(rows_wanted), plan["block_size"]):
        rows = rows_wanted[lo:lo + plan["block_size"]]
        raw = syn.read(int(rows[0]), int(rows[-1]) + 1) if contiguous else syn.take(rows)
        syn.check_finite(raw, int(rows[0]))
        A = _prepare(be, raw, 0, work)
        const = be.to_host(A.constant)
        syn_constant[rows] = const
        valid = np.flatnonzero(~const)
        if const.any():  # constant synthetic images take no part in matching
            A = A.subset(be.xp.asarray(valid))
            bar.update(int(const.sum()) * tra.n)
        if valid.size == 0:
            continue
        chunks = _training_chunks(be, tra, plan["chunk_size"], work, cache)
        if first_block:
            chunks = _track_train_constant(be, chunks, train_constant)
            first_block = False
        val, idx, over = _match_block(be, A, chunks, k, delta, max_candidates, gbuf, bar, stats)
        val, idx, over = be.to_host(val), be.to_host(idx), be.to_host(over)
        target = rows[valid]
        index[target] = idx
        corr[target] = np.where(idx >= 0, val, np.nan)
        overflow_rows.append(target[over])
        del A
    return np.concatenate(overflow_rows) if overflow_rows else np.empty(0, dtype=np.int64)


def _tolerance(syn: ImageSet, tra: ImageSet, work, tolerance_factor: float) -> float:
    """The band ``delta`` around the float32 (or float64) candidate values.
    Measured candidate errors, in units of 2**-24 * sqrt(D): <= 0.1 for uint8
    (integer-valued products), <= 11 for float input (near-constant images at
    32²); non-uint8 input therefore gets a 4x wider band."""
    exact = syn.dtype == np.uint8 and tra.dtype == np.uint8 and syn.dim <= MAX_EXACT_DIM
    return tolerance_factor * (1 if exact else 4) * _UNIT[np.dtype(work)] * math.sqrt(syn.dim)


def _track_train_constant(be, chunks, train_constant):
    for B in chunks:
        train_constant[B.start:B.start + B.n] = be.to_host(B.constant)
        yield B


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
