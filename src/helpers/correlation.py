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

This module imports neither torch nor (unless asked) CuPy.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
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

    @property
    def n_channels(self) -> int:
        """Channels after selection."""
        return int(self.shape[0])

    @property
    def selected_names(self) -> list[str]:
        """Names of the selected channels (``"0"``, ``"1"``, ... when unnamed)."""
        idx = range(self.image_shape[0]) if self.channels is None else self.channels
        return [self.channel_names[i] if self.channel_names else str(i) for i in idx]

    def _select(self, block: np.ndarray) -> np.ndarray:
        """``(n, C_selected, H*W)``: a view where the rows are contiguous."""
        n = block.shape[0]
        if block.ndim == 3:
            block = block[:, None]
        elif block.ndim == 2:
            block = block[:, None, None]
        if self.channels is not None:
            block = block[:, self.channels]
        return block.reshape(n, block.shape[1], -1)

    def read_channels(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo:hi`` as ``(hi-lo, C, H*W)`` in the stored dtype (a view where possible)."""
        if self.files is not None:
            return self._select(np.stack([self._load(i) for i in range(lo, hi)]))
        return self._select(self._array[lo:hi])

    def take_channels(self, indices) -> np.ndarray:
        """Rows at ``indices`` (any order, repeats allowed) as ``(m, C, H*W)``."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size == 0:
            return np.empty((0, self.n_channels, self.dim // self.n_channels), self.dtype)
        uniq, inverse = np.unique(indices, return_inverse=True)  # sorted reads from a memmap
        if self.files is not None:
            return self._select(np.stack([self._load(i) for i in uniq]))[inverse]
        return self._select(np.asarray(self._array[uniq]))[inverse]

    def read(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo:hi`` as ``(hi-lo, D)`` in the stored dtype (a view where possible)."""
        block = self.read_channels(lo, hi)
        return block.reshape(block.shape[0], -1)

    def take(self, indices) -> np.ndarray:
        """Rows at ``indices`` (any order, repeats allowed) as ``(m, D)``."""
        block = self.take_channels(indices)
        return block.reshape(block.shape[0], -1)

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

    ``dim``: values per image over all groups of one engine call (a joint
    group and its per-channel groups count twice). The resident synthetic
    block (centred values, plus raw values for non-uint8 input) and the
    chunk product fill the budget; one training chunk (``chunk_size`` rows,
    raw + centred) comes on top. GEMMs of at least a few hundred rows on
    each side keep BLAS near its peak.
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


@dataclass
class _Group:
    """One measure of an engine call: the channels (indices into the sets'
    selected channels; ``None`` = all of them) flattened into one vector."""

    name: str
    channels: list[int] | None
    dim: int
    delta: float = 0.0

    def rows(self, raw3):
        """``(n, C, P)`` -> this group's ``(n, D_g)`` (a view where possible)."""
        n = raw3.shape[0]
        ch = self.channels
        if ch is None:
            return raw3.reshape(n, -1)
        if len(ch) == 1:
            return raw3[:, ch[0]]
        if ch == list(range(ch[0], ch[0] + len(ch))):
            return raw3[:, ch[0]:ch[0] + len(ch)].reshape(n, -1)
        return raw3[:, ch].reshape(n, -1)


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


@dataclass
class _GroupOutput:
    """What one group of an engine call fills in (host arrays)."""

    index: np.ndarray
    correlation: np.ndarray
    constant: np.ndarray
    train_constant: np.ndarray
    stats: dict


def _resolve_groups(groups, syn: ImageSet, tra: ImageSet) -> list[_Group]:
    """``{name: channel selection}`` -> :class:`_Group` list (selections as in
    :func:`open_images`, relative to the sets' selected channels)."""
    if groups is None:
        groups = {"all": None}
    if not isinstance(groups, Mapping) or not groups:
        raise ValueError(f"groups must be a non-empty mapping of name -> channels, not {groups!r}")
    named = syn if syn.channel_names else tra
    names = named.selected_names if named.channel_names else None
    n_ch = syn.n_channels
    per_channel = syn.dim // n_ch
    out = []
    for name, selection in groups.items():
        if isinstance(selection, (list, tuple)) and len(selection) == 0:
            raise ValueError(f"group {name!r} selects no channel")
        idx = _parse_channels(selection, n_ch, names)
        out.append(_Group(str(name), idx, per_channel * (n_ch if idx is None else len(idx))))
    return out


def match_groups(synthetic, training, groups: Mapping[str, Any] | None = None, *, k: int = 1,
                 backend: str | Backend = "auto", memory_budget: int = DEFAULT_MEMORY_BUDGET,
                 chunk_size: int | None = None, block_size: int | None = None, tolerance_factor: float = 32.0,
                 max_candidates: int = 16, precision: str = "float32", progress: bool = True,
                 desc: str | None = None) -> dict[str, MatchResult]:
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
    work = np.dtype(np.float64 if precision == "float64" else np.float32)
    out = {g.name: _GroupOutput(np.full((syn.n, k), -1, dtype=np.int64), np.full((syn.n, k), np.nan),
                                np.zeros(syn.n, dtype=bool), np.zeros(tra.n, dtype=bool),
                                {"rescored_pairs": 0, "fallback_rows": 0, "unresolved_rows": 0})
           for g in spec}
    pairs = syn.n * tra.n

    from .common import progress as progress_bar

    bar = progress_bar(total=pairs * len(spec), unit="pair", unit_scale=True,
                       desc=f"{desc or 'correlation'} [{be.name}]", disable=not progress)
    try:
        overflow = _run_pass(be, syn, tra, np.arange(syn.n), spec, k, work, memory_budget, chunk_size,
                             block_size, tolerance_factor, max_candidates, out, bar)
        for g in spec:
            rows = overflow[g.name]
            if not rows.size:
                continue
            out[g.name].stats["fallback_rows"] = int(rows.size)
            bar.total += int(rows.size) * tra.n
            still = _run_pass(be, syn, tra, rows, [g], k, np.dtype(np.float64), memory_budget, chunk_size,
                              None, tolerance_factor, 8 * max_candidates, out, bar)[g.name]
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
    seconds = time.perf_counter() - t0
    exact = syn.dtype == np.uint8 and tra.dtype == np.uint8
    results = {}
    for g in spec:
        o = out[g.name]
        o.stats.update(n_synthetic_constant=int(o.constant.sum()), n_train_constant=int(o.train_constant.sum()),
                       tolerance=_tolerance(exact, g.dim, work, tolerance_factor), precision=str(work),
                       groups=len(spec))
        results[g.name] = MatchResult(o.index, o.correlation, o.constant, o.train_constant, be.name, be.note, pairs,
                                      seconds, o.stats)
    return results


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
    Every reported correlation is exact (float64). Several channel
    selections at once: :func:`match_groups`.
    """
    syn = open_images(synthetic, channels, label="synthetic")
    tra = open_images(training, channels, label="training")
    return match_groups(syn, tra, {"selection": None}, k=k, backend=backend, memory_budget=memory_budget,
                        chunk_size=chunk_size, block_size=block_size, tolerance_factor=tolerance_factor,
                        max_candidates=max_candidates, precision=precision, progress=progress,
                        desc=desc)["selection"]


def _run_pass(be, syn, tra, rows_wanted, groups, k, work, memory_budget, chunk_size, block_size, tolerance_factor,
              max_candidates, out, bar) -> dict[str, np.ndarray]:
    """One pass of the engine over the synthetic rows ``rows_wanted`` for
    ``groups``; fills ``out`` and returns, per group, the rows whose
    candidate band overflowed."""
    xp = be.xp
    exact = syn.dtype == np.uint8 and tra.dtype == np.uint8
    for g in groups:
        g.delta = _tolerance(exact, g.dim, work, tolerance_factor)
    raw_itemsize = 0 if syn.dtype == np.uint8 else syn.dtype.itemsize
    plan = plan_sizes(len(rows_wanted), tra.n, sum(g.dim for g in groups), memory_budget, work.itemsize,
                      raw_itemsize, chunk_size, block_size, None if be.is_gpu else CHUNK_BYTES)
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
        del matchers
    return {name: np.concatenate(parts) if parts else np.empty(0, dtype=np.int64) for name, parts in overflow.items()}


def _tolerance(exact_uint8: bool, dim: int, work, tolerance_factor: float) -> float:
    """The band ``delta`` around the float32 (or float64) candidate values of
    ``dim``-long vectors. Measured candidate errors, in units of 2**-24 *
    sqrt(D): <= 0.1 for uint8 (integer-valued products), <= 11 for float
    input (near-constant images at 32²); non-uint8 input therefore gets a 4x
    wider band."""
    exact = exact_uint8 and dim <= MAX_EXACT_DIM
    return tolerance_factor * (1 if exact else 4) * _UNIT[np.dtype(work)] * math.sqrt(dim)



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
