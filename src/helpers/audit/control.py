"""The planted-copy positive control: training images planted as exact,
noisy, brightened and shifted copies that every image measure must rank
first, so a "no copies found" result can be trusted."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .. import correlation
from .tables import _lookup, match_table, valid_correlations

CONTROL_KINDS: tuple[str, ...] = ("copy", "noise", "brightness", "shift")


def make_control(train: correlation.ImageSet, n: int, seed: int = 0, noise_sd: float = 8.0,
                 kinds: Sequence[str] = CONTROL_KINDS,
                 require: Sequence[Sequence[int]] | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """Synthetic-looking copies of ``n`` random (non-constant) training images — exact,
    with Gaussian noise (``noise_sd`` grey levels), with a brightness/contrast
    change (×0.85 + 20) and shifted by one pixel — that the engine must rank
    first. ``require``: channel groups (indices) in each of which a picked
    image must be non-constant (default: the whole vector), e.g. every image
    measure, so that the control tests each of them. Returns (uint8 images
    n×C×H×W of all channels, table with ``control_index, control_kind,
    planted_index``)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(train.n)
    picked: list[np.ndarray] = []
    for lo in range(0, train.n, 1024):  # skip constant (blank) images: they have no correlation
        idx = order[lo:lo + 1024]
        rows = train.take_channels(idx)
        ok = np.ones(len(idx), dtype=bool)
        for group in ([None] if not require else require):
            sel = rows.reshape(len(idx), -1) if group is None else rows[:, list(group)].reshape(len(idx), -1)
            ok &= sel.max(axis=1) != sel.min(axis=1)
        picked.append(idx[ok])
        if sum(map(len, picked)) >= n:
            break
    planted = np.sort(np.concatenate(picked)[:n]) if picked else np.empty(0, dtype=np.int64)
    n = len(planted)
    full = correlation.open_images(train, "all") if train.channels is not None else train
    raw = full.take(planted).reshape(n, *full.image_shape)
    if raw.dtype != np.uint8:
        raise ValueError(f"the planted-copy control expects uint8 training images, not {raw.dtype}")
    images = raw.copy()
    kind = np.array([kinds[i % len(kinds)] for i in range(n)])
    x = raw.astype(np.float64)
    for i in range(n):
        if kind[i] == "noise":
            images[i] = np.clip(np.rint(x[i] + rng.normal(0, noise_sd, x[i].shape)), 0, 255)
        elif kind[i] == "brightness":
            images[i] = np.clip(np.rint(x[i] * 0.85 + 20), 0, 255)
        elif kind[i] == "shift":  # one pixel to the right, first column repeated
            images[i][..., 1:] = raw[i][..., :-1]
            images[i][..., 0] = raw[i][..., 0]
    return images, pd.DataFrame({"control_index": np.arange(n), "control_kind": kind, "planted_index": planted})


def control_table(result: correlation.MatchResult, control: pd.DataFrame, images, train,
                  train_meta: pd.DataFrame | None, channels=None) -> pd.DataFrame:
    """The control's matches: ``found`` = the planted source is the best
    match; ``same_subject`` = the best match is a slice of the source's
    subject; ``planted_correlation`` = exact correlation with the source
    (on ``channels``, the measure's); ``source_defined`` = that correlation
    exists (False where the source or the planted image is constant in this
    measure, e.g. the blank label map of a slice without tumour, to which
    the noisy copy adds nothing but noise). Found rates and the control's
    exceedances count only rows with ``source_defined``."""
    table = match_table(result, train_meta)
    table = table.drop(columns=["seed"]).rename(columns={"synthetic_index": "control_index"})
    table.insert(1, "control_kind", control["control_kind"].to_numpy())
    table.insert(2, "planted_index", control["planted_index"].to_numpy())
    table["found"] = table["train_index"].to_numpy() == control["planted_index"].to_numpy()
    # a miss that lands on the same subject is usually the adjacent slice
    planted_subject = _lookup(train_meta, control["planted_index"].to_numpy(), "subject", "")
    table["same_subject"] = (table["subject"].astype(str).to_numpy() == np.asarray(planted_subject, dtype=str)) \
        & (table["train_index"].to_numpy() >= 0)
    table["planted_correlation"] = correlation.pair_correlations(
        images, train, np.arange(len(control)), control["planted_index"].to_numpy(), channels)
    table["source_defined"] = np.isfinite(table["planted_correlation"].to_numpy(dtype=float))
    return table


def scored_control(table: pd.DataFrame | None) -> pd.DataFrame | None:
    """The control rows that test the measure (``source_defined``)."""
    if table is None or "source_defined" not in table:
        return table
    return table[table["source_defined"].astype(bool)].reset_index(drop=True)


def control_summary(table: pd.DataFrame) -> dict:
    """Found rates of the control, over its images with a defined correlation
    to their source (``source_defined``; a planted image can be blank in one
    measure, e.g. the label map of a slice without tumour)."""
    defined = table["source_defined"].astype(bool) if "source_defined" in table else ~table["constant"].astype(bool)
    table = table.assign(_ok=defined.to_numpy())
    by_kind = {}
    for kind, sub in table.groupby("control_kind", sort=False):
        ok = sub[sub["_ok"]]
        values = valid_correlations(ok)
        by_kind[kind] = {"n": int(len(sub)), "undefined": int((~sub["_ok"]).sum()),
                         "found_fraction": float(ok["found"].mean()) if len(ok) else None,
                         "same_subject_fraction": float(ok["same_subject"].mean()) if len(ok) else None,
                         "min_correlation": float(values.min()) if len(values) else None,
                         "median_correlation": float(np.median(values)) if len(values) else None}
    ok = table[table["_ok"]]
    return {"n_planted": int(len(table)), "n_undefined": int((~table["_ok"]).sum()),
            "found_fraction": float(ok["found"].mean()) if len(ok) else None, "by_kind": by_kind,
            "note": "positive control: training images planted as copies (exact, noise, brightness, 1-pixel "
                    "shift); not a model; found rates and exceedances over planted images with a defined "
                    "correlation to their source in this measure"}



def control_by_kind(table: pd.DataFrame, thresholds: dict[str, float]) -> pd.DataFrame:
    """Per kind of planted copy (exact, noise, brightness, shift) and
    threshold: how many planted images exceed it (strictly) and how many
    found their own source — the control read per kind, since one kind can
    fail where the others pass (one-pixel shifts of 32² slices reach only
    r 0.93–0.97, below a held-out p99 near 0.98). Over planted images with a
    defined correlation to their source."""
    scored = scored_control(table)
    rows = []
    for kind, part in scored.groupby("control_kind", sort=False):
        r = valid_correlations(part)
        for name, value in thresholds.items():
            rows.append({"control_kind": kind, "threshold_name": name, "threshold": value, "n_images": int(len(part)),
                         "n_above": int((r > value).sum()), "fraction": float((r > value).mean()) if len(r) else np.nan,
                         "found_fraction": float(part["found"].mean()) if len(part) else np.nan,
                         "min_correlation": float(r.min()) if len(r) else np.nan})
    return pd.DataFrame(rows, columns=["control_kind", "threshold_name", "threshold", "n_images", "n_above", "fraction",
                                       "found_fraction", "min_correlation"])
