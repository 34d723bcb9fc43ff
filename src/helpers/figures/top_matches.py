"""Figure 2: the best (and typical) matches with context: the pixel
intensities and the neighbouring slices of the matched training subject."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..audit import neighbour_slices
from ..sampling import load_samples
from .results import (
    load_images,
    load_index,
    load_matches,
    load_meta,
    load_topk,
    measure_files,
    measure_info,
    shown_channel,
)
from .style import display_name


def image_panel(ax, image, title: str | None = None, note: str | None = None) -> None:
    """An image panel with ``note`` under it (or a grey panel saying ``note``)."""
    ax.set_xticks([])
    ax.set_yticks([])
    if image is None:
        ax.set_facecolor("0.92")
        ax.text(0.5, 0.5, note or "none", ha="center", va="center", fontsize=7, transform=ax.transAxes)
    else:
        ax.imshow(np.asarray(image), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        if note:
            ax.set_xlabel(note, fontsize=6, labelpad=2)
    if title:
        ax.set_title(title, fontsize=7)


def intensity_histogram(ax, train_image: np.ndarray, synth_image: np.ndarray, r_table: float | None,
                        bins: int = 64) -> float:
    """2-D histogram (log colour) of training vs synthetic pixel values on
    0–255 axes; prints the table's r and the r of this channel alone.
    Returns the channel's r (NaN when either image is constant)."""
    from matplotlib.colors import LogNorm

    x = np.asarray(train_image, dtype=np.float64).ravel()
    y = np.asarray(synth_image, dtype=np.float64).ravel()
    counts, _, _ = np.histogram2d(x, y, bins=bins, range=[[0, 256], [0, 256]])
    ax.imshow(np.ma.masked_equal(counts.T, 0), origin="lower", extent=(0, 255, 0, 255), cmap="viridis",
              norm=LogNorm(vmin=1, vmax=max(counts.max(), 1)), aspect="equal", interpolation="nearest")
    r_channel = float(np.corrcoef(x, y)[0, 1]) if x.std() > 0 and y.std() > 0 else float("nan")
    text = (f"r = {r_table:.3f}\n" if r_table is not None and not math.isnan(r_table) else "") + f"r(ch) = {r_channel:.3f}"
    ax.text(0.03, 0.97, text, transform=ax.transAxes, va="top", fontsize=7,
            bbox=dict(facecolor="white", alpha=0.8, lw=0, pad=1))
    ax.set_xticks([0, 128, 255])
    ax.set_yticks([0, 128, 255])
    ax.tick_params(labelsize=6)
    ax.set_xlabel("training", fontsize=6, labelpad=1)
    ax.set_ylabel("synthetic", fontsize=6, labelpad=1)
    return r_channel


def select_matches(matches: pd.DataFrame, n_top: int, n_typical: int) -> pd.DataFrame:
    """The ``n_top`` highest-correlation rows and the ``n_typical`` rows
    nearest the median, with their rank (1 = best) among non-constant images."""
    valid = matches[~matches["constant"] & matches["correlation"].notna()]
    valid = valid.sort_values("correlation", ascending=False, kind="stable").reset_index(drop=True)
    valid["rank"] = np.arange(1, len(valid) + 1)
    top = valid.head(n_top).assign(kind="top")
    rest = valid.iloc[len(top):]
    if len(rest) and n_typical:
        median = float(valid["correlation"].median())
        near = (rest["correlation"] - median).abs().sort_values(kind="stable").index[:n_typical]
        typical = rest.loc[sorted(near)].assign(kind="typical")
    else:
        typical = valid.iloc[:0].assign(kind="typical")
    return pd.concat([top, typical], ignore_index=True)


def plot_top_matches(results_dir, model: str, n_top: int = 4, n_typical: int = 2, channel: str | None = None,
                     bins: int = 64, measure: str | None = None):
    """The authors' figure, with context: per row training | synthetic |
    pixel-intensity 2-D histogram | previous | next slice of the same
    training subject (BraTS; rows with slice −1, chest x-rays, show the
    2nd- and 3rd-best training matches instead). Top rows are the best
    matches of ``measure`` (None: the headline), the last rows typical
    (median-correlation) ones. Shown: ``channel``, or ('' / None) the
    measure's own channel (see :func:`shown_channel`)."""
    meta = load_meta(results_dir)
    ch = shown_channel(results_dir, channel, measure)
    ch_name = str(meta["channels"][ch]) if meta.get("channels") else f"ch{ch}"
    train = load_images(results_dir, "train")
    index = load_index(results_dir, "train")
    samples = load_samples(results_dir, model)[0]
    matches = load_matches(results_dir, model, measure)
    rows = select_matches(matches, n_top, n_typical)
    topk_path = measure_files(results_dir, measure).topk(model)
    topk = load_topk(results_dir, model, measure) if topk_path.is_file() else None
    neighbours = dict(zip((-1, 1), neighbour_slices(index)))  # the nearest kept slice below / above
    phantom = str(meta.get("source", "")).startswith("phantom")  # say so: its subject ids read like patients'

    n_rows = max(len(rows), 1)
    fig, axes = plt.subplots(n_rows, 5, figsize=(9.5, 1.95 * n_rows), squeeze=False)
    if rows.empty:
        for ax in axes[0]:
            image_panel(ax, None, note="no non-constant samples")
    for r, row in rows.iterrows():
        ax = axes[r]
        syn_i, tr_i = int(row["synthetic_index"]), int(row["train_index"])
        t_img, s_img = train[tr_i, ch], samples[syn_i, ch]
        subject, z = ("phantom " if phantom else "") + str(row["subject"]), int(row["slice"])
        first = r == 0
        image_panel(ax[0], t_img, "training image" if first else None, note=f"train #{tr_i}")
        seed = f", seed {int(row['seed'])}" if "seed" in row and pd.notna(row.get("seed")) else ""
        image_panel(ax[1], s_img, "synthetic image" if first else None, note=f"synthetic #{syn_i}{seed}")
        intensity_histogram(ax[2], t_img, s_img, float(row["correlation"]), bins=bins)
        if first:
            ax[2].set_title("pixel intensities", fontsize=7)
        if z >= 0:
            for col, dz, key, head in ((3, -1, "prev_correlation", "previous slice"), (4, 1, "next_correlation", "next slice")):
                j = int(neighbours[dz][tr_i])
                rr = row.get(key)
                note = (f"z={int(index['slice'].iloc[j])}" + (f", r={rr:.3f}" if rr is not None and pd.notna(rr) else "")
                        if j >= 0 else f"no {'lower' if dz < 0 else 'higher'} slice of\n{subject} in training set")
                image_panel(ax[col], train[j, ch] if j >= 0 else None, head if first else None, note=note)
        else:
            others = (topk[(topk["synthetic_index"] == syn_i) & (topk["rank"] > 1)].sort_values("rank")
                      if topk is not None else pd.DataFrame(columns=["rank", "train_index", "correlation"]))
            for col, k in ((3, 2), (4, 3)):
                hit = others[others["rank"] == k]
                if hit.empty:
                    note = "no top-k file" if topk is None else f"no rank-{k} match"
                    image_panel(ax[col], None, f"{k}{'nd' if k == 2 else 'rd'}-best match" if first else None, note=note)
                else:
                    j = int(hit["train_index"].iloc[0])
                    who = ("phantom " if phantom else "") + str(index["subject"].iloc[j])
                    image_panel(ax[col], train[j, ch], f"{k}{'nd' if k == 2 else 'rd'}-best match" if first else None,
                          note=f"{who}, train #{j}, r={float(hit['correlation'].iloc[0]):.3f}")
        kind = f"rank {int(row['rank'])}" if row["kind"] == "top" else f"typical\n(rank {int(row['rank'])})"
        where = f"z={z}" if z >= 0 else "x-ray"
        ax[0].set_ylabel(f"{kind}\n{subject}\n{where}", fontsize=7)
    info = measure_info(results_dir, measure)
    used = ", ".join(map(str, info.get("channels", [])))
    fig.suptitle(f"{display_name(model)}, measure '{info['measure']}': top {min(n_top, len(rows))} and typical "
                 f"matches; shown: channel '{ch_name}'; r = correlation on channels [{used}], r(ch) = on "
                 f"'{ch_name}' alone", fontsize=8)
    fig.tight_layout()
    return fig

