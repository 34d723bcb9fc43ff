"""Exact ℓ2 nearest and second-nearest training images (Gu et al.'s
criterion needs both), with the neighbour-slice exclusion that 2D slices of
3D volumes need."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

#: the BraTS geometry every dataset of the study is cut to: 240 mm slices
#: zero-padded to 256 pixels of 1 mm, resampled to ``image_size``, axial
#: slices 1 mm apart (BraTS volumes are resampled to 1 mm isotropic)
FIELD_OF_VIEW_MM = 256.0
SLICE_SPACING_MM = 1.0


def default_neighbour_slices(image_size: int, field_of_view_mm: float = FIELD_OF_VIEW_MM,
                             slice_spacing_mm: float = SLICE_SPACING_MM) -> int:
    """How many slice numbers on either side of a training slice count as
    its near-duplicates: the slices *less than one pixel width* away,
    ``ceil(pixel size / slice spacing) - 1``, at least 1.

    Why: an image of ``image_size`` pixels across a ``field_of_view_mm``
    field has pixels ``field_of_view_mm / image_size`` mm wide (BraTS: 256
    mm, so 4 mm at 64², 8 mm at 32², 1 mm at 256²; ±3, ±7 and ±1 slices). Anatomy varies about
    equally fast in every direction, so moving the cut by less than one
    pixel width along z changes the image by no more than shifting it by
    less than a pixel in-plane: a detail the resampled image does not
    resolve. Those slices are the same picture at this resolution, so they
    cannot serve as the "second, different" training image that tells a
    copy from a look-alike. At least one neighbour on each side is always
    excluded: even at 1 mm pixels adjacent 1 mm slices of an MRI volume
    share most of their signal (thicker acquired slices were interpolated
    to 1 mm). Chosen from the geometry alone, before any result was seen.
    """
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    pixel_mm = float(field_of_view_mm) / int(image_size)
    return max(1, int(math.ceil(pixel_mm / float(slice_spacing_mm) - 1e-9)) - 1)


def distinct_pictures(table: pd.DataFrame, neighbour_slices: int) -> int:
    """How many different pictures a training set holds at this resolution
    (its *effective size*): per subject, the most slices that are pairwise
    more than ``neighbour_slices`` apart — the rule above that calls nearer
    slices the same picture — counted greedily along z (which finds the
    most for points on a line); an image without a slice number (an x-ray,
    slice -1) is one picture. 16 consecutive slices of one subject at 32²
    (±7 slices alike) are 2 pictures; one slice of each of 16 subjects, 16."""
    if "subject" not in table or "slice" not in table:
        raise ValueError(f"training table needs the columns 'subject' and 'slice', has {list(table.columns)}")
    if neighbour_slices < 0:
        raise ValueError(f"neighbour_slices must be ≥ 0, got {neighbour_slices}")
    slices = pd.to_numeric(table["slice"], errors="coerce")
    on_z = (slices >= 0).to_numpy()
    count = int((~on_z).sum())
    for _, values in slices[on_z].groupby(table.loc[on_z, "subject"].astype(str)):
        last = None
        for value in np.sort(values.to_numpy(dtype=float)):
            if last is None or value - last > neighbour_slices:
                count, last = count + 1, value
    return count


def _flat(images) -> np.ndarray:
    a = np.asarray(images)  # a memmap stays a view: nothing is read yet
    if a.ndim < 2:
        raise ValueError(f"expected images N×C×H×W, N×H×W or N×D, got shape {a.shape}")
    return a.reshape(len(a), -1)


def _as_unit(block: np.ndarray) -> np.ndarray:
    """float64 in [0, 1]: uint8 is divided by 255, float is taken as given."""
    if block.dtype == np.uint8:
        return block.astype(np.float64) / 255.0
    return block.astype(np.float64, copy=False)


def _exclusion_lists(training_index: pd.DataFrame | None, n: int, window: int) -> list[np.ndarray] | None:
    """Per training image j, the other training images of the same subject
    whose slice number is within ±window of j's (none without slices)."""
    if training_index is None or window <= 0:
        return None
    if len(training_index) != n:
        raise ValueError(f"training_index has {len(training_index)} rows for {n} training images")
    if "subject" not in training_index or "slice" not in training_index:
        raise ValueError("training_index needs the columns 'subject' and 'slice'")
    subject = training_index["subject"].astype(str).to_numpy()
    slices = pd.to_numeric(training_index["slice"], errors="coerce").to_numpy(dtype=float)
    valid = np.isfinite(slices) & (slices >= 0)
    if not valid.any():
        return None
    out: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * n
    frame = pd.DataFrame({"subject": subject[valid], "slice": slices[valid], "i": np.flatnonzero(valid)})
    for _, group in frame.groupby("subject", sort=False):
        group = group.sort_values(["slice", "i"])
        s, idx = group["slice"].to_numpy(), group["i"].to_numpy()
        lo = np.searchsorted(s, s - window, side="left")
        hi = np.searchsorted(s, s + window, side="right")
        for pos, j in enumerate(idx):
            members = idx[lo[pos]:hi[pos]]
            out[j] = members[members != j]
    return out


def nearest_l2(synthetic, training, training_index: pd.DataFrame | None = None,
               neighbour_slices: int | None = None, *, image_size: int | None = None,
               memory_mb: float = 256.0) -> pd.DataFrame:
    """Exact ℓ2 nearest and second-nearest training images of every synthetic image.

    Images (uint8, divided by 255; float arrays are taken as already in
    [0, 1]) are compared as one vector over all channels, in float64.
    Returns one row per synthetic image: ``synthetic_index``,
    ``nearest_index``, ``nearest_distance``, ``second_index``,
    ``second_distance``, ``ratio`` (nearest / second; NaN when the second
    is missing or both are 0), ``n_excluded`` (training images left out of
    the second-nearest search) and, with ``training_index``, the subject and
    slice of both matches.

    **Neighbour exclusion.** The second nearest is searched among the
    training images that are *not near-duplicates of the nearest*: those of
    the nearest's subject whose slice number is within ±``neighbour_slices``
    of its slice (the nearest itself is always excluded). Without this
    rule a copy of slice k would have slice k±1 as its second neighbour,
    almost as close, and no copy of a 3D-volume slice would ever pass the
    1/3 ratio. ``neighbour_slices=None`` takes
    :func:`default_neighbour_slices` of the image size (4 at 64², 8 at
    32²); 0 switches the rule off. Rows of ``training_index`` (aligned with
    ``training``) without a slice number (slice < 0 or missing, e.g. chest
    x-rays) exclude nothing.

    **Exactness.** Squared distances are ranked by chunked float64 matrix
    products ‖s‖² + ‖t‖² − 2 s·t; the best candidates of each row (enough to
    hold the largest exclusion window and more) are then recomputed from
    the pixel differences. A row is certified when its second distance is
    below the smallest ranked distance outside the candidates minus a
    rounding bound; any other row is recomputed against every training
    image. Working memory stays near ``memory_mb`` (blocks of synthetic
    images, chunks of training images and the block's ranked distances are
    sized from it); 10⁴ × 10⁴ images of 5×32² take about a minute on two
    cores. ``image_size`` is needed only for flattened (N×D) input with
    slice numbers and no ``neighbour_slices``.
    """
    syn = _flat(synthetic)
    train = _flat(training)
    n_s, n_t = len(syn), len(train)
    if syn.shape[1] != train.shape[1]:
        raise ValueError(f"synthetic images have {syn.shape[1]} values each, training images {train.shape[1]}")
    if n_t == 0:
        raise ValueError("no training images")
    dim = train.shape[1]
    if neighbour_slices is None:
        size = image_size or (np.shape(training)[-1] if np.ndim(training) >= 3 else None)
        if size:
            neighbour_slices = default_neighbour_slices(int(size))
        elif training_index is None:
            neighbour_slices = 0
        else:
            raise ValueError("flattened training images: pass image_size (or neighbour_slices) for the "
                             "neighbour-slice rule")
    neighbour_slices = int(neighbour_slices)
    if neighbour_slices < 0:
        raise ValueError(f"neighbour_slices must be ≥ 0, got {neighbour_slices}")
    exclusions = _exclusion_lists(training_index, n_t, neighbour_slices)
    max_excluded = max((len(e) for e in exclusions), default=0) if exclusions is not None else 0
    n_cand = min(n_t, max_excluded + 2 + 6)
    budget = float(memory_mb) * 2**20 / 8 / 4        # float64 numbers per quarter of the budget
    chunk_size = int(max(1, min(4096, budget // dim)))
    block_size = int(max(1, min(2048, budget // dim, budget // n_t)))
    rows_per = int(max(1, min(64, budget // (n_cand * dim))))

    t_norm = np.empty(n_t, dtype=np.float64)
    for lo in range(0, n_t, chunk_size):
        chunk = _as_unit(train[lo:lo + chunk_size])
        t_norm[lo:lo + len(chunk)] = np.einsum("ij,ij->i", chunk, chunk)
    t_norm_max = float(t_norm.max())
    eps = np.finfo(np.float64).eps

    nearest = np.full(n_s, -1, dtype=np.int64)
    second = np.full(n_s, -1, dtype=np.int64)
    d1 = np.full(n_s, np.nan)
    d2 = np.full(n_s, np.nan)
    n_excl = np.zeros(n_s, dtype=np.int64)

    def excluded_of(j: int) -> np.ndarray:
        return exclusions[j] if exclusions is not None else np.zeros(0, dtype=np.int64)

    def choose(cand: np.ndarray, dist2: np.ndarray) -> tuple[int, float, int, float, int]:
        """Nearest and second nearest (outside the nearest's window) among ``cand``."""
        order = np.lexsort((cand, dist2))  # by distance, ties by the lower index
        cand, dist2 = cand[order], dist2[order]
        j = int(cand[0])
        skip = excluded_of(j)
        keep = ~np.isin(cand, skip)
        keep[0] = False
        if keep.any():
            k = int(np.flatnonzero(keep)[0])
            return j, float(dist2[0]), int(cand[k]), float(dist2[k]), len(skip)
        return j, float(dist2[0]), -1, math.nan, len(skip)

    def exact_row(s: np.ndarray) -> tuple[int, float, int, float, int]:
        """One synthetic image against every training image, from differences."""
        dist2 = np.empty(n_t)
        for lo in range(0, n_t, chunk_size):
            diff = _as_unit(train[lo:lo + chunk_size]) - s
            dist2[lo:lo + len(diff)] = np.einsum("ij,ij->i", diff, diff)
        return choose(np.arange(n_t), dist2)

    for b0 in range(0, n_s, block_size):
        s_block = _as_unit(syn[b0:b0 + block_size])
        b = len(s_block)
        s_norm = np.einsum("ij,ij->i", s_block, s_block)
        approx = np.empty((b, n_t))
        for lo in range(0, n_t, chunk_size):
            chunk = _as_unit(train[lo:lo + chunk_size])
            hi = lo + len(chunk)
            np.matmul(s_block, chunk.T, out=approx[:, lo:hi])
            approx[:, lo:hi] *= -2.0
            approx[:, lo:hi] += s_norm[:, None]
            approx[:, lo:hi] += t_norm[None, lo:hi]
        if n_cand < n_t:
            part = np.argpartition(approx, n_cand, axis=1)
            cands = part[:, :n_cand]
            bound = approx[np.arange(b), part[:, n_cand]]  # smallest ranked distance outside the candidates
        else:
            cands = np.broadcast_to(np.arange(n_t), (b, n_t))
            bound = np.full(b, np.inf)
        # rounding of the expanded form: |error| ≤ ~2·D·eps·(‖s‖² + ‖t‖²); a generous multiple
        tol = 8.0 * dim * eps * (s_norm + t_norm_max) + 1e-300
        del approx
        for r0 in range(0, b, rows_per):
            rows = np.arange(r0, min(r0 + rows_per, b))
            c = cands[rows]
            diff = _as_unit(train[c.ravel()]).reshape(len(rows), c.shape[1], dim) - s_block[rows, None, :]
            exact = np.einsum("rkd,rkd->rk", diff, diff)
            for local, r in enumerate(rows):
                j, dj, k, dk, ne = choose(np.asarray(c[local]), exact[local])
                if k < 0 or not dk <= bound[r] - tol[r]:
                    if n_cand < n_t:
                        j, dj, k, dk, ne = exact_row(s_block[r])
                i = b0 + r
                nearest[i], d1[i], second[i], d2[i], n_excl[i] = j, dj, k, dk, ne

    d1 = np.sqrt(d1)
    d2 = np.sqrt(d2)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(np.isfinite(d2) & (d2 > 0), d1 / np.where(d2 > 0, d2, 1.0), np.nan)
    frame = pd.DataFrame({"synthetic_index": np.arange(n_s), "nearest_index": nearest, "nearest_distance": d1,
                          "second_index": second, "second_distance": d2, "ratio": ratio, "n_excluded": n_excl})
    if training_index is not None:
        subj = training_index["subject"].astype(str).to_numpy()
        sl = pd.to_numeric(training_index["slice"], errors="coerce").to_numpy(dtype=float)
        integral = bool(np.all(~np.isfinite(sl) | (sl == np.round(sl))))
        for name, idx in (("nearest", nearest), ("second", second)):
            ok = idx >= 0
            frame[f"{name}_subject"] = np.where(ok, subj[np.clip(idx, 0, n_t - 1)], "")
            values = pd.Series(np.where(ok, sl[np.clip(idx, 0, n_t - 1)], np.nan))
            frame[f"{name}_slice"] = values.astype("Int64") if integral else values
    frame.attrs["neighbour_slices"] = neighbour_slices if exclusions is not None else 0
    frame.attrs["dimension"] = dim
    return frame

