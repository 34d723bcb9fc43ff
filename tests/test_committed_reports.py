"""The committed reference outputs read as a reviewer reads them: every
landing page, report and table of a regenerated results folder passes the
report checks (links and images resolve, quoted numbers equal their tables,
no page mentions a model, size or setting its run did not have). Fast: it
reads files only.

Every folder under results/ was made at a commit with these checks (see
results/README.md); a folder made before them would be left out until made
again.
"""

from __future__ import annotations

import pytest

from helpers import common, report_checks

RESULTS = common.repo_root() / "results"
REGENERATED = ["phantom", "phantom_reference", "phantom_reference_noaug", "phantom_cxr", "phantom_cxr_reference",
               "phantom_small", "phantom_2d3d"]


@pytest.mark.parametrize("name", REGENERATED + ["compare"])
def test_committed_pages_pass_the_report_checks(name: str):
    folder = RESULTS / name
    problems = report_checks.check_results(folder)
    assert problems == [], report_checks.format_problems(folder.relative_to(common.repo_root()), problems)


@pytest.mark.parametrize("name", REGENERATED)
def test_committed_landing_pages_trace_their_numbers(name: str):
    text = (RESULTS / name / "index.html").read_text()
    assert "data-table=" in text, f"{name}/index.html quotes no traced number"
