"""Writing figures and tables (CSV + Markdown; tabulate is not a
dependency), atomically, and the Markdown a notebook shows about its run."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..common import atomic_path, write_csv, write_text

#: display metadata naming the file a shown figure was saved to (read by helpers.report)
SAVED_FIGURE_KEY = "study_saved_figure"
#: colours of the copy of a saved figure a notebook shows: a palette PNG is about
#: 2.5× smaller than matplotlib's RGBA one (the 06 notebooks were 5-7 MB), at full
#: size; the HTML report links the saved file itself, which lies beside it
PREVIEW_COLOURS = 256


def _format_cell(value: Any, fmt: str | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return format(float(value), fmt or ".3f")
    return str(value).replace("|", "\\|").replace("\n", " ")


def _is_number_column(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def markdown_table(frame: pd.DataFrame, formats: Mapping[str, str] | None = None) -> str:
    """A GitHub-style Markdown table. Floats: ``.1f`` in columns whose name
    contains 'percent', ``.3f`` elsewhere, unless ``formats`` says otherwise."""
    formats = dict(formats or {})
    columns = [str(c) for c in frame.columns]
    fmts = [formats.get(c, ".1f" if "percent" in c else ".3f") for c in columns]
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---:" if _is_number_column(frame[c]) else "---" for c in frame.columns) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_format_cell(v, f) for v, f in zip(row, fmts)) + " |")
    return "\n".join(lines) + "\n"


def save_table(frame: pd.DataFrame, out_dir: str | os.PathLike, name: str) -> list[Path]:
    """Write ``<name>.csv`` and ``<name>.md`` under ``out_dir`` (atomically)."""
    out_dir = Path(out_dir)
    return [write_csv(out_dir / f"{name}.csv", frame), write_text(out_dir / f"{name}.md", markdown_table(frame))]


def measure_names(name: str, measure: str, headline_measure: str | None) -> list[str]:
    """File stems of a per-measure output: ``<name>_<measure>``, and for the
    headline measure also ``<name>`` (the name the README and older runs use)."""
    return [f"{name}_{measure}"] + ([name] if measure == headline_measure else [])


def save_measure_table(frame: pd.DataFrame, out_dir, name: str, measure: str,
                       headline_measure: str | None) -> list[Path]:
    """:func:`save_table` under :func:`measure_names`."""
    return [p for stem in measure_names(name, measure, headline_measure) for p in save_table(frame, out_dir, stem)]


def save_measure_figure(fig, out_dir, name: str, measure: str, pdf: bool = True, show: bool = True) -> list[Path]:
    """:func:`save_figure` as ``<name>_<measure>`` (unlike tables, figures are
    not written a second time under the headline's plain name)."""
    return save_figure(fig, out_dir, f"{name}_{measure}", pdf, show)


def save_figure(fig, out_dir: str | os.PathLike, name: str, pdf: bool = True, show: bool = True) -> list[Path]:
    """Save ``fig`` as ``<name>.png`` (and ``.pdf``) under ``out_dir``,
    atomically (a half-written figure never replaces a good one). In a
    notebook the saved PNG is what is shown (unless ``show`` is False: a
    report leads with the figures that answer its question and links the
    rest, :func:`links_markdown`), tagged with its file so that the HTML
    report links the file instead of storing the figure a second time, and
    ``fig`` is closed."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png"] + ([out_dir / f"{name}.pdf"] if pdf else [])
    for path in paths:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=150, bbox_inches="tight", format=path.suffix[1:])
    if show:
        _show_saved(fig, paths[0])
    else:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return paths


def folded(title: str, markdown: str) -> str:
    """``markdown`` (a long table) folded under ``title``: open to read.
    The title's Markdown bold becomes HTML (a summary is not read as Markdown)."""
    title = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", title)
    return f"<details><summary>{title}</summary>\n\n{markdown}\n\n</details>"


def links_markdown(paths: Iterable[str | os.PathLike], start: str | os.PathLike, label: str = "Also written") -> str:
    """A line of links to ``paths`` (their PNGs), relative to ``start`` (the
    folder of the HTML report that shows the line)."""
    pngs = [Path(p) for p in paths if Path(p).suffix == ".png"]
    if not pngs:
        return ""
    links = [f"[{p.stem}]({Path(os.path.relpath(p, start)).as_posix()})" for p in pngs]
    return f"{label}: " + ", ".join(links) + "."


def _show_saved(fig, png: Path) -> None:
    """Display the saved PNG in a notebook kernel (nothing elsewhere)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None or type(shell).__name__ != "ZMQInteractiveShell":
        return
    import matplotlib.pyplot as plt
    from IPython.display import Image, display

    display(Image(data=preview_png(png), format="png"), metadata={SAVED_FIGURE_KEY: str(png)})
    plt.close(fig)


def preview_png(png: str | os.PathLike) -> bytes:
    """The saved PNG with a palette of :data:`PREVIEW_COLOURS` colours (exact
    when the figure has no more; no dithering), as PNG bytes."""
    import io

    from PIL import Image

    with Image.open(png) as image:
        palette = image.convert("RGB").quantize(PREVIEW_COLOURS, dither=Image.Dither.NONE)
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def params_markdown(params: Mapping[str, Any]) -> str:
    """The parameters a notebook ran with, as a Markdown table."""
    frame = pd.DataFrame({"parameter": list(params), "value": [repr(v) for v in params.values()]})
    return markdown_table(frame)


def settings_markdown(settings: Mapping[str, Any], dataset: str | None = None, profile: str | None = None) -> str:
    """A step's resolved settings as one folded table (shown once per report:
    the parameters cells themselves are left out of the HTML)."""
    run = ", ".join(f"{k} {v}" for k, v in (("dataset", dataset), ("profile", profile)) if v)
    summary = f"<b>Settings of this step</b> ({run + '; ' if run else ''}{len(settings)} values; open to read)"
    return f"<details><summary>{summary}</summary>\n\n{params_markdown(settings)}\n\n</details>"


def outputs_markdown(paths: Iterable[str | os.PathLike]) -> str:
    """A Markdown list of files written (with sizes), for a notebook's last cell."""
    lines = []
    for path in dict.fromkeys(Path(p) for p in paths):
        size = path.stat().st_size if path.is_file() else 0
        lines.append(f"- `{path}` ({size / 1024:.1f} KiB)" if path.is_file() else f"- `{path}` (missing!)")
    return "\n".join(lines) if lines else "No files written."



OUTPUTS_MANIFEST = ".outputs.json"


def remove_stale_outputs(folder: str | os.PathLike, written: Iterable[str | os.PathLike]) -> list[Path]:
    """Remove what this step wrote into ``folder`` last time and did not
    write again this time (a figure or table of a model, size or section
    that no longer exists would otherwise outlive its run), then record
    this time's outputs (``folder/.outputs.json``). Only files the step
    itself listed are ever removed; returns them."""
    from ..common import read_json, write_json

    folder = Path(folder)
    manifest = folder / OUTPUTS_MANIFEST
    now = {Path(p).resolve().relative_to(folder.resolve()).as_posix() for p in written
           if Path(p).resolve().is_relative_to(folder.resolve())}
    before = set(read_json(manifest).get("files", [])) if manifest.is_file() else set()
    removed = []
    for rel in sorted(before - now):
        path = folder / rel
        if path.is_file() and path.resolve().is_relative_to(folder.resolve()):
            path.unlink()
            removed.append(path)
    write_json(manifest, {"files": sorted(now)})
    return removed
