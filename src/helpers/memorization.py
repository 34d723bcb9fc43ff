"""Pre-declared memorization criteria, their counts, intervals and the
memorization capacity of a training-set-size series.

Two kinds of criterion are judged per synthetic (or held-out real) image:

* **Gu et al.'s ℓ2 ratio** ("On memorization in diffusion models", arXiv
  2310.02664): an image is memorized when its ℓ2 distance to the nearest
  training image is less than ``ratio`` (1/3) times its distance to the
  second nearest. :func:`nearest_l2` computes both distances exactly, with
  one change that 2D slices of 3D volumes need (the *neighbour exclusion*,
  see :func:`default_neighbour_slices`).
* **The paper's correlation criterion**: the best Pearson correlation with
  any training image exceeds a threshold, fixed (0.95, 0.99) or a
  percentile (p95, p99) of what held-out real images reach against the
  same training set. The correlation engine (:mod:`helpers.correlation`)
  computes the best correlations; here they are only compared.

A *flag array* holds one value per judged image: boolean, or float 1/0 with
NaN where the criterion cannot judge that image (a constant image has no
correlation; a one-image training set has no second neighbour). NaN images
count in neither n nor k.

Counts become a tidy table (:func:`criteria_table`: size, n_subjects,
group, criterion, n, k, fraction, Wilson 95 % interval); the training-set
coverage (:func:`coverage`) says how much of the training set leaks; and
:func:`memorization_capacity` reads the largest training-set size at which
a model still memorizes at least 90 % of its samples.

NumPy, SciPy and pandas only: no torch, no CuPy.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

#: Gu et al.'s threshold on d_nearest / d_second
GU_RATIO = 1.0 / 3.0
#: the BraTS geometry every dataset of the study is cut to: 240 mm slices
#: zero-padded to 256 pixels of 1 mm, resampled to ``image_size``, axial
#: slices 1 mm apart (BraTS volumes are resampled to 1 mm isotropic)
FIELD_OF_VIEW_MM = 256.0
SLICE_SPACING_MM = 1.0
FIXED_THRESHOLDS: tuple[float, ...] = (0.95, 0.99)
BASELINE_PERCENTILES: tuple[int, ...] = (95, 99)
TABLE_COLUMNS = ["size", "n_subjects", "group", "criterion", "n", "k", "fraction", "ci_low", "ci_high"]


# ==========================================================================
# Exact nearest neighbours in pixel space
# ==========================================================================

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


# ==========================================================================
# Criteria → flag arrays (1 memorized, 0 not, NaN cannot judge)
# ==========================================================================

def l2_ratio_flags(nearest_distance, second_distance, ratio: float = GU_RATIO) -> np.ndarray:
    """Gu et al.: memorized when ``d_nearest < ratio · d_second`` (strictly).
    NaN where the second distance is missing. Two training images at
    distance 0 from the sample (exact duplicates in the training set) give
    0 < 0: not memorized by this criterion."""
    d1 = np.asarray(nearest_distance, dtype=float)
    d2 = np.asarray(second_distance, dtype=float)
    ok = np.isfinite(d1) & np.isfinite(d2)
    out = np.full(d1.shape, np.nan)
    out[ok] = (d1[ok] < float(ratio) * d2[ok]).astype(float)
    return out


def exceedance_flags(best_correlation, threshold: float) -> np.ndarray:
    """The paper's criterion: the best Pearson correlation with any training
    image *exceeds* (strictly, as in ``helpers.correlate``) ``threshold``.
    NaN where the correlation is undefined (constant images)."""
    r = np.asarray(best_correlation, dtype=float)
    out = np.full(r.shape, np.nan)
    ok = np.isfinite(r)
    out[ok] = (r[ok] > float(threshold)).astype(float)
    return out


def correlation_thresholds(baseline_best=None, fixed: Sequence[float] = FIXED_THRESHOLDS,
                           percentiles: Sequence[int] = BASELINE_PERCENTILES) -> dict[str, float]:
    """``{"fixed_0.95": 0.95, ..., "baseline_p95": …}``: the fixed thresholds
    and the percentiles of the held-out real images' best correlations with
    the same training images (left out without a baseline)."""
    out = {f"fixed_{float(t):.2f}": float(t) for t in fixed}
    if baseline_best is not None:
        base = np.asarray(baseline_best, dtype=float)
        base = base[np.isfinite(base)]
        if len(base):
            for p in percentiles:
                out[f"baseline_p{int(p)}"] = float(np.percentile(base, p))
    return out


def correlation_flags(best_correlation, thresholds: Mapping[str, float]) -> dict[str, np.ndarray]:
    """``{"corr_" + threshold name: flags}`` for every threshold."""
    return {f"corr_{name}": exceedance_flags(best_correlation, t) for name, t in thresholds.items()}


def _flags(values) -> tuple[np.ndarray, np.ndarray]:
    """(flagged, judged) boolean arrays of a flag array."""
    a = np.asarray(values)
    if a.dtype == bool:
        return a.ravel(), np.ones(a.size, dtype=bool)
    a = a.astype(float).ravel()
    judged = np.isfinite(a)
    return judged & (np.where(judged, a, 0.0) != 0), judged


def count_flags(values) -> tuple[int, int]:
    """``(k, n)``: memorized and judged images of a flag array."""
    flagged, judged = _flags(values)
    return int(flagged.sum()), int(judged.sum())


# ==========================================================================
# Intervals, tables, coverage, capacity
# ==========================================================================

def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of k/n (``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``);
    (NaN, NaN) for n = 0. Unlike a bootstrap it is not [0, 0] at 0/n."""
    from scipy.stats import binomtest

    k, n = int(k), int(n)
    if n == 0:
        return math.nan, math.nan
    if not 0 <= k <= n:
        raise ValueError(f"need 0 ≤ k ≤ n, got k={k}, n={n}")
    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def criteria_table(flags: Mapping[str, Mapping[str, Any]], size: int, n_subjects: int | None = None,
                   confidence: float = 0.95) -> pd.DataFrame:
    """The tidy criteria table of one training set: for every ``group``
    (a model, ``optimal_denoiser``, the held-out real images …) and every
    ``criterion`` of ``flags[group]``, n (judged images), k (memorized),
    fraction and its Wilson interval. ``size`` is the number of training
    images, ``n_subjects`` the number of training subjects. Tables of
    several training-set sizes are simply concatenated (``pd.concat``)."""
    rows = []
    for group, by_criterion in flags.items():
        for criterion, values in by_criterion.items():
            k, n = count_flags(values)
            lo, hi = wilson_interval(k, n, confidence)
            rows.append({"size": int(size), "n_subjects": pd.NA if n_subjects is None else int(n_subjects),
                         "group": str(group), "criterion": str(criterion), "n": n, "k": k,
                         "fraction": k / n if n else math.nan, "ci_low": lo, "ci_high": hi})
    frame = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    frame["n_subjects"] = frame["n_subjects"].astype("Int64")
    return frame


def coverage(nearest_index, flags, n_training: int, training_index: pd.DataFrame | None = None) -> dict:
    """How much of the training set leaks: the training images that are the
    nearest match of at least one flagged sample.

    Returns ``n_training``, ``n_samples`` (judged), ``n_flagged``,
    ``n_covered`` (distinct training images), ``fraction`` (n_covered /
    n_training) and, with ``training_index``, ``n_subjects``,
    ``n_subjects_covered`` and ``subject_fraction``. No interval: the
    training set is counted in full, not sampled; what is uncertain is how
    many samples it would take to reach the rest."""
    idx = np.asarray(nearest_index, dtype=np.int64).ravel()
    flagged, judged = _flags(flags)
    if len(idx) != len(flagged):
        raise ValueError(f"{len(idx)} nearest indices but {len(flagged)} flags")
    hit = idx[flagged & (idx >= 0)]
    if len(hit) and hit.max() >= n_training:
        raise ValueError(f"nearest index {hit.max()} is outside the {n_training} training images")
    covered = np.unique(hit)
    out = {"n_training": int(n_training), "n_samples": int(judged.sum()), "n_flagged": int(flagged.sum()),
           "n_covered": int(len(covered)), "fraction": len(covered) / n_training if n_training else math.nan}
    if training_index is not None:
        subjects = training_index["subject"].astype(str).to_numpy()
        n_sub = int(pd.unique(subjects).size)
        n_cov = int(pd.unique(subjects[covered]).size) if len(covered) else 0
        out |= {"n_subjects": n_sub, "n_subjects_covered": n_cov,
                "subject_fraction": n_cov / n_sub if n_sub else math.nan}
    return out


def coverage_table(groups: Mapping[str, tuple[Any, Mapping[str, Any]]], n_training: int, size: int | None = None,
                   training_index: pd.DataFrame | None = None) -> pd.DataFrame:
    """:func:`coverage` for every ``group -> (nearest_index, {criterion: flags})``, one row each."""
    rows = []
    for group, (nearest_index, by_criterion) in groups.items():
        for criterion, values in by_criterion.items():
            rows.append({"size": int(size if size is not None else n_training), "group": str(group),
                         "criterion": str(criterion),
                         **coverage(nearest_index, values, n_training, training_index)})
    return pd.DataFrame(rows)


@dataclasses.dataclass
class Capacity:
    """The memorization capacity of one group under one criterion."""

    group: str
    criterion: str
    target: float                 # the fraction of samples that must be memorized
    status: str                   # "bracketed", "reached at every size", "reached at the largest size"
                                  # (missed at a smaller one) or "not reached at any size"
    capacity: int | None          # largest size at which fraction ≥ target
    above: int | None             # smallest size tested above the capacity (target missed there)
    below: int | None             # largest size tested below the capacity
    monotone: bool                # reached exactly at the sizes up to the capacity
    exceptions: list[int]         # sizes below the capacity where the target was missed
    conservative: int | None      # largest size up to which the target is reached at every size
    sizes: list[int]
    fractions: list[float]

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def message(self) -> str:
        pct = f"{100 * self.target:g} %"
        who = f"{self.group} ({self.criterion})"
        if self.status == "not reached at any size":
            return (f"{who}: fewer than {pct} of samples memorized at every size tested "
                    f"(smallest {self.sizes[0]}): capacity below {self.sizes[0]} images, if any")
        if self.status in ("reached at every size", "reached at the largest size"):
            every = "every size tested" if self.status == "reached at every size" else "the largest size tested"
            text = (f"{who}: at least {pct} of samples memorized at {every}: capacity ≥ "
                    f"{self.capacity} images (the largest size tested)")
        else:
            text = (f"{who}: at least {pct} memorized up to {self.capacity} training images, not at "
                    f"{self.above}: capacity between {self.capacity} and {self.above}")
        if not self.monotone:
            text += (f"; not monotone: the target was missed at smaller sizes {self.exceptions} "
                     f"(reached at every size only up to {self.conservative})")
        return text


def memorization_capacity(table: pd.DataFrame, criterion: str, group: str, fraction: float = 0.9) -> Capacity:
    """The largest training-set size at which at least ``fraction`` of the
    group's samples are memorized under ``criterion``, from a (concatenated)
    :func:`criteria_table`. Sizes where nothing was judged (n = 0) are
    skipped. Reports the bracketing sizes (``below`` the capacity and
    ``above`` it, where the target is missed), whether the series is
    monotone and, when it is not, the sizes below the capacity that miss
    the target and the ``conservative`` capacity (up to which every size
    reaches it)."""
    rows = table[(table["group"] == group) & (table["criterion"] == criterion)]
    rows = rows[rows["n"] > 0]
    if rows.empty:
        raise ValueError(f"no rows with n > 0 for group {group!r} and criterion {criterion!r}")
    if rows["size"].duplicated().any():
        dup = sorted(rows.loc[rows["size"].duplicated(), "size"].unique().tolist())
        raise ValueError(f"group {group!r}, criterion {criterion!r}: several rows for size(s) {dup}")
    rows = rows.sort_values("size")
    sizes = [int(s) for s in rows["size"]]
    fracs = [float(f) for f in rows["fraction"]]
    reached = [f >= fraction for f in fracs]
    base = dict(group=group, criterion=criterion, target=float(fraction), sizes=sizes, fractions=fracs)
    if not any(reached):
        return Capacity(status="not reached at any size", capacity=None, above=sizes[0], below=None,
                        monotone=True, exceptions=[], conservative=None, **base)
    last = max(i for i, r in enumerate(reached) if r)
    exceptions = [s for s, r in zip(sizes[:last], reached[:last]) if not r]
    first_miss = next((i for i, r in enumerate(reached) if not r), len(sizes))
    conservative = sizes[first_miss - 1] if first_miss > 0 else None
    if all(reached):
        status = "reached at every size"
    elif last == len(sizes) - 1:
        status = "reached at the largest size"
    else:
        status = "bracketed"
    return Capacity(status=status, capacity=sizes[last], above=sizes[last + 1] if last + 1 < len(sizes) else None,
                    below=sizes[last - 1] if last > 0 else None, monotone=not exceptions, exceptions=exceptions,
                    conservative=conservative, **base)
