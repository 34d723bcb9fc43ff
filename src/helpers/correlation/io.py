"""Image sources of the correlation engine: arrays, ``.npy`` files
(memory-mapped, so a training set may exceed RAM) and folders of image files,
all read as row blocks of flattened images with an optional channel selection.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


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
    from PIL import Image, UnidentifiedImageError

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
    from PIL import Image

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
