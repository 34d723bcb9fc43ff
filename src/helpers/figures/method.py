"""The method diagram: the study's steps as boxes and arrows, with this
run's numbers in them (sizes, samples, held-out slices, the threshold's
percentile), so a student can follow train → sample → correlate → best r →
compare with unseen patients → threshold, and where fit is judged."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch

#: box fill per kind of step: data, models, measurements, verdicts
_FILL = {"data": "#e8eef7", "model": "#fdebd3", "measure": "#e6f2e6", "verdict": "#f6e1e1"}


@dataclass(frozen=True)
class _Box:
    x: float
    y: float
    text: str
    kind: str
    w: float = 0.168
    h: float = 0.27


def _box(ax, box: _Box) -> None:
    ax.add_patch(FancyBboxPatch((box.x - box.w / 2, box.y - box.h / 2), box.w, box.h,
                                boxstyle="round,pad=0.008,rounding_size=0.015", fc=_FILL[box.kind], ec="0.35", lw=0.8))
    ax.text(box.x, box.y, box.text, ha="center", va="center", fontsize=7.2, wrap=False)


def _arrow(ax, a: _Box, b: _Box, label: str = "") -> None:
    """From ``a``'s edge to ``b``'s: horizontal when they share a row, else vertical."""
    if abs(a.y - b.y) < 1e-6:
        start, end = (a.x + a.w / 2, a.y), (b.x - b.w / 2, b.y)
    else:
        start, end = (a.x, a.y - a.h / 2 if b.y < a.y else a.y + a.h / 2), (b.x, b.y + b.h / 2 if b.y < a.y else b.y - b.h / 2)
    ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="-|>", color="0.25", lw=1.0))
    if label:
        ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.03, label, ha="center", fontsize=6.5,
                color="0.25")


def plot_method(*, sizes: Sequence[int] | None = None, models: Sequence[str] = ("StyleGAN", "diffusion"),
                n_samples: int | None = None, n_held_out: int | None = None, percentile: int = 99,
                headline: str | None = None, image_size: int | None = None, volumes: bool = True):
    """The diagram. Every argument left None is written in words instead of
    a number (the run's resolved settings fill them on the landing page).
    ``volumes``: 3D scans cut into slices (BraTS) rather than 2D images
    (chest x-rays)."""
    size_text = ", ".join(map(str, sizes)) if sizes else "each size"
    sample_text = f"{n_samples}" if n_samples else "M"
    res_text = f" at {image_size}²" if image_size else ""
    unit = "slices" if volumes else "images"
    held_text = f"{n_held_out} real {unit}" if n_held_out else f"real {unit}"
    source = f"3D volumes → 2D slices{res_text}" if volumes else f"2D x-rays, resized{res_text}"
    measure = f"{headline} " if headline else ""
    top = [
        _Box(0.10, 0.76, f"1 prepare\n{source};\nsubjects split into\ntraining sets "
                         f"({size_text})\nand held-out subjects", "data"),
        _Box(0.30, 0.76, "2 train\n" + "\n".join(models) + "\non each training set\n(same images seen)", "model"),
        _Box(0.50, 0.76, f"3 sample\n{sample_text} images per\nmodel and size,\none seed per image", "model"),
        _Box(0.70, 0.76, "4 correlate\nevery synthetic image\nwith every training image\n(Pearson r, "
                         "per modality)", "measure"),
        _Box(0.90, 0.76, f"5 best r\nper synthetic image:\nits most similar\ntraining image\n({measure}measure)",
             "measure"),
    ]
    bottom = [
        _Box(0.10, 0.24, f"held-out subjects\n(other patients):\n{held_text}\nnever seen in training", "data"),
        _Box(0.30, 0.24, "their best r against\nthe same training set:\nhow close an unseen\npatient comes", "measure"),
        _Box(0.50, 0.24, f"threshold = the\n{percentile}th percentile\nof those best r\n(about {100 - percentile} % of "
                         f"real\nunseen {unit} exceed it)", "measure"),
        _Box(0.70, 0.24, "memorized = best r\nabove the threshold;\nfraction of samples\nwith a 95 % interval", "verdict"),
        _Box(0.90, 0.24, "fit: sharp as real images\nand no easier to tell\nfrom them than held-out\nones? compare models\n"
                         "only where both fit", "verdict"),
    ]
    fig, ax = plt.subplots(figsize=(11.5, 3.6))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    for box in top + bottom:
        _box(ax, box)
    for a, b in zip(top, top[1:]):
        _arrow(ax, a, b)
    for a, b in zip(bottom[:3], bottom[1:4]):
        _arrow(ax, a, b)
    _arrow(ax, top[0], bottom[0])
    _arrow(ax, top[4], bottom[3], "compare")
    _arrow(ax, bottom[3], bottom[4])
    fig.tight_layout()
    return fig


def plot_method_of(results_dir, models: Sequence[str] = ("stylegan", "diffusion")):
    """:func:`plot_method` with this results folder's numbers: its sizes (or
    its one training set), the trained generators among ``models``, samples
    per model, held-out slices, image size and headline measure, all read
    from the step outputs."""
    from .. import models as registry
    from .. import sweep
    from .results import ResultMissing, load_matches, load_meta, measure_info
    from .style import display_name

    models = [m for m in models if m in registry.REGISTRY and not registry.REGISTRY[m].control]
    meta = load_meta(results_dir)
    table = sweep.sizes_table(results_dir)
    runs = sweep.run_dirs(results_dir)
    largest = list(runs.values())[-1]
    counts, headline = [], None
    try:
        headline = str(measure_info(largest).get("measure"))
        counts = [len(load_matches(largest, m)) for m in models]
    except (FileNotFoundError, ResultMissing):
        pass
    return plot_method(sizes=[int(s) for s in table["size"]] if table is not None else [int(meta["n_train"])],
                       models=[display_name(m) for m in models], n_samples=counts[0] if counts else None,
                       n_held_out=int(meta["n_test"]), headline=headline, image_size=int(meta["image_size"]),
                       volumes=meta.get("reader") == "brats")
