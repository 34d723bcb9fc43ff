"""The reviewer's reports: light HTML per step, a landing page per run."""

import base64
import shutil
from pathlib import Path

import nbformat
import pytest

from helpers import report

ROOT = Path(__file__).resolve().parents[1]
PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000100e221bc330000000049454e44ae426082")).decode()


def _executed_notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('dataset = "phantom"  # our parameters cell')
    params.metadata["tags"] = ["parameters"]
    injected = nbformat.v4.new_code_cell('dataset = "injected-value"')
    injected.metadata["tags"] = ["injected-parameters"]
    plot = nbformat.v4.new_code_cell("fig = plot_things()")
    plot.outputs = [nbformat.v4.new_output("display_data", data={"image/png": PNG, "text/plain": "<Figure>"})]
    nb.cells = [nbformat.v4.new_markdown_cell("# 06 · Figures"), params, injected,
                nbformat.v4.new_markdown_cell("## The sweep figure\nMore words."), plot]
    nbformat.write(nb, path)
    return path


def test_report_hides_parameters_folds_code_and_gives_alt_text(tmp_path):
    html = report.render_html(_executed_notebook(tmp_path / "06_figures.ipynb"), tmp_path / "06.html").read_text()
    assert "injected-value" not in html and "our parameters cell" not in html
    assert '<details class="input"><summary>code</summary>' in html
    assert 'alt="Figure: The sweep figure"' in html
    assert 'href="../index.html"' in html
    assert len(html) < 40_000, "the 260 KB notebook stylesheet must not be embedded"
    bare = report.render_html(tmp_path / "06_figures.ipynb", tmp_path / "bare.html", index_href=None).read_text()
    assert "index.html" not in bare


@pytest.mark.skipif(not (ROOT / "results/phantom/sweep/capacity.csv").exists(), reason="no reference sweep")
def test_index_opens_with_the_computed_finding_and_links_every_report(tmp_path):
    run = tmp_path / "phantom"
    shutil.copytree(ROOT / "results/phantom/sweep", run / "sweep")
    (run / "data").mkdir()
    for name in ("meta.json", "sizes.json"):
        shutil.copy(ROOT / "results/phantom/data" / name, run / "data" / name)
    (run / "figures").mkdir()
    (run / "figures/sweep_whole_subjects.png").write_bytes(base64.b64decode(PNG))
    (run / "notebooks").mkdir()
    (run / "notebooks/01_prepare_data.html").write_text("<html></html>")
    (run / ".stamps").mkdir()
    (run / ".stamps/01_prepare_data.json").write_text('{"seconds": 42.4}')
    page = report.write_index(run, "Study results: phantom").read_text()
    finding = page.index("The finding")
    assert finding < page.index("The steps")
    told = page[finding:page.index("The steps")]
    # per size: the fit first, then memorization by both criteria
    assert "What ran." in told and "4</span> training images." in told and "not fitted" in told
    assert "Memorized by t1ce above the held-out p99: diffusion" in told and "ℓ2 ratio" in told
    assert "fixed_0.95" not in told   # the fixed threshold is left to the reports (most real slices exceed it)
    assert 'href="notebooks/01_prepare_data.html"' in page and "(42 s)" in page
    assert 'src="figures/sweep_whole_subjects.png"' in page


def test_index_without_results_says_what_to_run(tmp_path):
    page = report.write_index(tmp_path / "empty").read_text()
    assert "run steps 01" in page


def test_a_saved_figure_is_linked_not_stored_twice(tmp_path):
    from helpers.figures.output import SAVED_FIGURE_KEY

    run = tmp_path / "results" / "phantom"
    (run / "figures").mkdir(parents=True)
    (run / "figures" / "sweep.png").write_bytes(base64.b64decode(PNG))
    nb = nbformat.read(_executed_notebook(tmp_path / "06.ipynb"), as_version=4)
    nb.cells[-1].outputs[0].metadata[SAVED_FIGURE_KEY] = "results/phantom/figures/sweep.png"
    gone = nbformat.v4.new_output("display_data", data={"image/png": PNG},
                                  metadata={SAVED_FIGURE_KEY: "results/phantom/figures/deleted.png"})
    nb.cells[-1].outputs.append(gone)
    nbformat.write(nb, tmp_path / "06.ipynb")
    page = report.render_html(tmp_path / "06.ipynb", run / "notebooks" / "06.html", root=tmp_path).read_text()
    assert '<img alt="Figure: The sweep figure" src="../figures/sweep.png"/>' in page \
        or '<img src="../figures/sweep.png" alt="Figure: The sweep figure">' in page
    assert page.count("data:image/png;base64") == 1  # only the figure whose file is gone stays embedded
