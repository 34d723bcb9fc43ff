"""Reports for reviewers: each executed notebook as a light HTML page, and one
landing page per run (``results/<name>/index.html``) that opens with the
finding and links every step's report, figure and table.

The HTML uses nbconvert's classic cell markup with a template of our own
(``report_template/study``): a few lines of CSS instead of the notebook
stylesheet, code folded under each cell, the parameters cells (ours and
papermill's injected copy) left out because every notebook shows its
resolved settings as a table, and alt text on every figure.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

from . import common
from .config import FINDING_THRESHOLD
from .layout import INDEX_FROM_NOTEBOOKS, Results, Run

TEMPLATE_DIR = Path(__file__).with_name("report_template")
#: the figures that answer the study's questions, shown full width on the landing page, with their captions
KEY_FIGURES = {
    "sweep_whole_subjects": "Memorization against training-set size, one panel per criterion (hollow: not fitted)",
    "memorization_against_fit": "Memorization against fit over training: one line per model and size "
                                "(filled: fitted), the references as points",
    "story": "At each size, each generator's most copy-like sample beside its nearest training slice",
}
#: the method diagram, shown with the glossary
METHOD_FIGURE = "method"
HIDDEN_TAGS = ("parameters", "injected-parameters")


def _figure_alt_text(nb) -> None:
    """Give every image output an alt text: the heading (or first line) of the
    markdown cell above it, so a screen reader says what the figure shows."""
    context = "figure"
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            lines = [ln.strip("# ").strip() for ln in cell.source.splitlines() if ln.strip()]
            if lines:
                context = lines[0]
            continue
        for output in cell.get("outputs", []):
            for mime in ("image/png", "image/jpeg", "image/svg+xml"):
                if mime in output.get("data", {}):
                    meta = output.setdefault("metadata", {}).setdefault(mime, {})
                    meta.setdefault("alt", f"Figure: {context}")


def _link_saved_figures(nb, html_dir: Path, root: Path) -> None:
    """A figure the notebook saved and showed (``figures.save_figure``) is
    linked from the HTML, not stored in it a second time; one whose file is
    gone stays embedded."""
    from .figures.output import SAVED_FIGURE_KEY

    for cell in nb.cells:
        for output in cell.get("outputs", []):
            saved = output.get("metadata", {}).get(SAVED_FIGURE_KEY)
            if not saved or "image/png" not in output.get("data", {}):
                continue
            path = Path(saved) if Path(saved).is_absolute() else root / saved
            if path.is_file():
                alt = output["metadata"].get("image/png", {}).get("alt", "Figure")
                src = Path(os.path.relpath(path, html_dir)).as_posix()
                output["data"] = {"text/html": f'<img src="{html.escape(src)}" alt="{html.escape(alt)}">'}


def render_html(notebook: str | os.PathLike, html_path: str | os.PathLike,
                index_href: str | None = INDEX_FROM_NOTEBOOKS, root: str | os.PathLike | None = None) -> Path:
    """Render an executed notebook to a reviewer's HTML page (see module doc);
    ``index_href`` links back to the run's landing page (None: no link);
    relative paths in the notebook are relative to ``root`` (the checkout,
    where papermill ran it)."""
    import nbformat
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor

    nb = nbformat.read(notebook, as_version=4)
    _figure_alt_text(nb)
    _link_saved_figures(nb, Path(html_path).resolve().parent, Path(root) if root else common.repo_root())
    exporter = HTMLExporter(template_name="study", extra_template_basedirs=[str(TEMPLATE_DIR)])
    exporter.register_preprocessor(TagRemovePreprocessor(remove_cell_tags=set(HIDDEN_TAGS)), enabled=True)
    resources = {"study_css": (TEMPLATE_DIR / "study" / "study.css").read_text(),
                 "metadata": {"name": Path(notebook).stem}, "index_href": index_href}
    body, _ = exporter.from_notebook_node(nb, resources=resources)
    return common.write_text(html_path, body)


# --------------------------------------------------------------------------
# The landing page of a run
# --------------------------------------------------------------------------

def _markdown(text: str) -> str:
    from nbconvert.filters import markdown2html

    return markdown2html(text)


def finding_markdown(results_dir: str | os.PathLike, threshold: str = FINDING_THRESHOLD) -> str:
    """What the run found, from its result files (never typed by hand): with
    a sweep, what ran and then, per size, each model's fit and memorization
    (:mod:`helpers.finding`, every number traced to its table); else the
    one-run finding of step 05's summary (at ``threshold``, the figures
    step's ``finding_threshold``) and the run's criteria."""
    from . import criteria, figures, finding, sweep_figures

    results = Path(results_dir)
    if sweep_figures.load_sweep(results) is not None:
        return finding.setup_markdown(results) + "\n\n" + finding.sweep_markdown(results)
    summary_path = Run(results).summary
    if summary_path.exists():
        text = figures.finding_text(common.read_json(summary_path), threshold)
        judged = criteria.headline_markdown(criteria.load_run_criteria(results))
        return text + (f"\n\n**The pre-declared criteria** (images memorized of those judged):\n\n{judged}"
                       if judged else "")
    return "No correlation results yet: run steps 01–05 (`./runall.sh`)."


def _link_list(paths: list[Path], root: Path) -> str:
    items = "".join(f'<li><a href="{html.escape(p.relative_to(root).as_posix())}">'
                    f"{html.escape(p.relative_to(root).as_posix())}</a></li>" for p in paths)
    return f"<ul>{items}</ul>" if items else "<p>none</p>"


def write_index(results_dir: str | os.PathLike, title: str | None = None,
                finding_threshold: str = FINDING_THRESHOLD) -> Path:
    """Write ``results/<name>/index.html``: the finding first, then the steps'
    reports, the figures (sweep figure shown), and the tables."""
    from . import finding

    files = Results(results_dir)
    results = files.folder
    title = title or f"Study results: {results.name}"
    notebooks = sorted(files.notebooks.glob("*.html"))
    figures_dir = files.figures
    pngs = sorted(figures_dir.glob("*.png")) if figures_dir.is_dir() else []
    tables = sorted([*files.sweep.folder.glob("*.csv"), *figures_dir.glob("*.csv")]) if figures_dir.is_dir() \
        else sorted(files.sweep.folder.glob("*.csv"))
    times = _step_times(results)
    key = [p for p in pngs if p.stem in KEY_FIGURES]
    key.sort(key=lambda p: list(KEY_FIGURES).index(p.stem))
    shown = [p for p in pngs if p.stem.startswith(("sweep_", "top_matches_n")) and p not in key][:6]
    lead = "".join(
        f'<figure class="key"><a href="{p.relative_to(results).as_posix()}"><img src="{p.relative_to(results).as_posix()}" '
        f'alt="{html.escape(KEY_FIGURES[p.stem])}"></a><figcaption>{html.escape(KEY_FIGURES[p.stem])}</figcaption></figure>'
        for p in key)
    gallery = "".join(
        f'<figure><a href="{p.relative_to(results).as_posix()}"><img src="{p.relative_to(results).as_posix()}" '
        f'alt="{html.escape(p.stem.replace("_", " "))}"></a><figcaption>{html.escape(p.stem)}</figcaption></figure>'
        for p in shown)
    method = "".join(
        f'<figure class="key"><a href="{p.relative_to(results).as_posix()}"><img src="{p.relative_to(results).as_posix()}" '
        f'alt="The method: train, sample, correlate, best r, compare with held-out patients, threshold, fit">'
        f'</a></figure>' for p in pngs if p.stem == METHOD_FIGURE)
    steps = "".join(
        f'<li><a href="{p.relative_to(results).as_posix()}">{html.escape(p.stem)}</a>'
        f'<span data-untraced="the step\'s run time">{html.escape(times.get(p.stem, ""))}</span></li>' for p in notebooks)
    css = (TEMPLATE_DIR / "study" / "study.css").read_text()
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>{html.escape(title)}</title><style>{css}</style></head>
<body><main>
<h1>{html.escape(title)}</h1>
<h2>The finding</h2>
{_markdown(finding_markdown(results, finding_threshold))}
{lead}
<h2>How the study works, and what the words mean</h2>
{method}
{_markdown(finding.glossary_markdown())}
<h2>The steps, as executed</h2>
<p>Each report shows prose, figures and tables first; the code is folded under each cell
(the executed <code>.ipynb</code> next to it holds everything).</p>
<ul>{steps or "<li>no step has run yet</li>"}</ul>
<h2>More figures</h2>
<div class="figures">{gallery}</div>
<details><summary>All figures ({len(pngs)})</summary>
{_link_list(pngs, results)}
</details>
<details><summary>All tables ({len(tables)})</summary>
{_link_list(tables, results)}
</details>
</main></body></html>
"""
    return common.write_text(files.index, page)


def _step_times(results: Path) -> dict[str, str]:
    """' (123 s)' per step that has a stamp from the runner."""
    out = {}
    for stamp in sorted(Results(results).stamps.glob("*.json")):
        seconds = common.read_json(stamp).get("seconds")
        if seconds is not None:
            out[stamp.stem] = f" ({seconds:.0f} s)"
    return out

