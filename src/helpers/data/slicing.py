"""BraTS slices: intensity scaling and rounding, the slice rule, padding
and resizing. These follow the authors' public code
(``Preparation/split_volumes_to_slices.m`` in ``muhamadusman/Assist``), so
that our arrays match theirs; deviations are noted.

* Each modality volume is scaled by its own maximum to 0–255
  (``volume / max * 255`` in float64, as the authors' MATLAB doubles) and,
  for storage, rounded to the nearest integer (halves up, as MATLAB's ``uint8``; a plain
  ``astype(uint8)`` would floor, at most one grey level apart). Negative
  voxels, if any, clip to 0.
* The segmentation is stored as ``label / 5 * 255`` (0, 51, 102, 153, 204 for
  labels 0–4): exact integers, never interpolated.
* Axial slices are ``volume[:, :, k]``, transposed (rows = 2nd voxel axis)
  so that the usual BraTS storage shows the nose at the top.
* A slice is kept when more than ``min_brain_fraction`` of the pixels of
  the *zero-padded* ``pad_to``² T1 slice exceed ``t1_threshold`` on the
  0–255 scale (the authors measured on the 256² padded slice, so the
  fraction's denominator is ``pad_to``², not 240²). As in their code, this
  test uses the scaled T1 values *before* rounding: a voxel at 50.3 counts
  as above 50 even though it is stored as 50. T1 is always read for this
  rule, also when it is not among the output channels.
* Slices are zero-padded centrally to ``pad_to`` and then, when
  ``image_size < pad_to``, resized with Pillow's bilinear filter, which is
  anti-aliased when shrinking (its support widens with the scale factor);
  the segmentation is resized with nearest neighbour so its values stay
  exact.
* ``slice_stride`` > 1 looks at every n-th slice only (to keep tiny
  profiles fast); the paper keeps every slice (stride 1).
"""

from __future__ import annotations

import numpy as np


def scale_intensity(volume: np.ndarray, peak: float | None = None) -> np.ndarray:
    """``volume / max * 255`` in float64, *not* rounded or clipped. This is
    the authors' scaling: every modality volume is scaled by its own maximum,
    computed in MATLAB doubles as ``volume / max(volume(:)) * 255``. The
    slice rule is applied to these values. ``peak`` is the whole volume's
    maximum when ``volume`` holds only some of its slices."""
    peak = float(np.max(volume)) if peak is None else float(peak)
    if peak <= 0:
        raise ValueError("cannot scale a volume without positive voxels")
    scaled = np.divide(volume, peak, dtype=np.float64)
    scaled *= 255.0
    return scaled


def round_to_uint8(scaled: np.ndarray) -> np.ndarray:
    """Scaled intensities → uint8 for storage: clipped to 0–255 and rounded
    to the nearest integer, halves away from zero as MATLAB's ``uint8()``
    that the authors used (``np.rint`` would round halves to even)."""
    out = np.floor(np.asarray(scaled, dtype=np.float64) + 0.5)
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


def scale_modality(volume: np.ndarray, peak: float | None = None) -> np.ndarray:
    """``volume / max * 255`` rounded to the nearest integer, as uint8
    (:func:`scale_intensity`, then :func:`round_to_uint8`)."""
    return round_to_uint8(scale_intensity(volume, peak))


def scale_segmentation(labels: np.ndarray) -> np.ndarray:
    """``label / 5 * 255`` as uint8: labels 0–5 → 0, 51, 102, 153, 204, 255
    exactly (51 = 255 / 5)."""
    labels = np.asarray(labels)
    return (np.rint(labels).astype(np.int32) * 51).clip(0, 255).astype(np.uint8)


def axial_slices(volume: np.ndarray) -> np.ndarray:
    """(X, Y, Z) volume → (Z, Y, X) stack: slice ``k`` is ``volume[:, :, k].T``."""
    return np.ascontiguousarray(np.transpose(volume, (2, 1, 0)))


def brain_fraction(t1_slices: np.ndarray, threshold: float = 50, pad_to: int | None = 256) -> np.ndarray:
    """Per slice (first axis), the fraction of pixels of the slice
    *zero-padded to* ``pad_to``² whose scaled T1 value exceeds
    ``threshold``. Padding adds only zeros, so this is the count above the
    threshold divided by ``pad_to``² (``pad_to=None``: divided by the
    slice's own pixel count). Pass the *unrounded* scaled T1
    (:func:`scale_intensity`), as the authors did. After rounding, a value
    in (50, 50.5] becomes 50 and would no longer count as above 50."""
    t1_slices = np.asarray(t1_slices)
    height, width = t1_slices.shape[-2:]
    pixels = (pad_to * pad_to) if pad_to else (height * width)
    if pad_to and (height > pad_to or width > pad_to):
        raise ValueError(f"slice {height}×{width} is larger than pad_to={pad_to}")
    return (t1_slices > threshold).reshape(len(t1_slices), -1).sum(axis=1) / pixels


def keep_slice(fraction: float, min_brain_fraction: float = 0.15) -> bool:
    """The authors' rule: keep a slice when *more than* ``min_brain_fraction``
    of its (padded) pixels are brain (T1 above threshold)."""
    return bool(fraction > min_brain_fraction)


def kept_slice_indices(fractions: np.ndarray, min_brain_fraction: float = 0.15, slice_stride: int = 1) -> np.ndarray:
    """Indices of the slices kept: every ``slice_stride``-th slice (from 0)
    that passes :func:`keep_slice`."""
    fractions = np.asarray(fractions)
    candidates = np.arange(0, len(fractions), max(int(slice_stride), 1))
    return candidates[fractions[candidates] > min_brain_fraction]


def pad_center(slices: np.ndarray, pad_to: int) -> np.ndarray:
    """Zero-pad (…, H, W) centrally to (…, pad_to, pad_to); an odd margin
    puts the extra row/column after the image."""
    height, width = slices.shape[-2:]
    if height > pad_to or width > pad_to:
        raise ValueError(f"cannot pad a {height}×{width} slice to pad_to={pad_to}: pad_to must be ≥ the slice size")
    top, left = (pad_to - height) // 2, (pad_to - width) // 2
    widths = [(0, 0)] * (slices.ndim - 2) + [(top, pad_to - height - top), (left, pad_to - width - left)]
    return np.pad(slices, widths)


def resize_slices(slices: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    """(K, H, W) uint8 → (K, size, size) uint8 with Pillow: bilinear (anti-
    aliased when shrinking: the filter support grows with the scale factor)
    or nearest neighbour for label images, whose values must stay exact."""
    from PIL import Image

    slices = np.asarray(slices, dtype=np.uint8)
    if slices.shape[-2:] == (size, size):
        return slices.copy()
    method = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    out = np.empty((len(slices), size, size), dtype=np.uint8)
    for i, image in enumerate(slices):
        out[i] = np.asarray(Image.fromarray(image).resize((size, size), method))
    return out
