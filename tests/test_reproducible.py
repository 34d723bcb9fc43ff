"""Re-running reproduces: two tiny smoke runs of ./runall.sh with the same
settings on the same CPU threads write the same tables, number for number
(helpers.verify); and a fresh run's pages pass the report checks."""

from __future__ import annotations

import os
import subprocess

import pytest

from helpers import common, report_checks, verify

#: the smoke profile cut to one training-set size and steps 01-05 (every table of the audit)
TINY = ("phantom", "--profile", "smoke", "--set", "prepare_data.train_sizes=[4]", "--to", "05")


def _runall(results, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("STUDY_RESULTS", None)
    return subprocess.run(["bash", str(common.repo_root() / "runall.sh"), *TINY, "--results", str(results), *extra],
                          capture_output=True, text=True, env=env, timeout=600, cwd=common.repo_root())


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproducible")
    first = _runall(root / "a")
    assert first.returncode == 0, f"runall failed:\n{first.stdout[-3000:]}\n{first.stderr[-3000:]}"
    second = _runall(root / "b", "--compare-with", str(root / "a" / "phantom"))
    return root / "a" / "phantom", root / "b" / "phantom", second


@pytest.mark.smoke
def test_two_runs_write_the_same_tables(two_runs):
    a, b, second = two_runs
    result = verify.compare(b, a)
    assert result.ok, verify.format_report(result)
    # every kind of table was compared, samples and correlation tables included
    compared = set(result.equal)
    for rel in ("sweep/criteria.csv", "sizes/n00004/correlation/summary.json", "sizes/n00004/diffusion/loss_log.csv",
                "sizes/n00004/stylegan/loss_log.csv", "sizes/n00004/samples/diffusion.npy",
                "sizes/n00004/correlation/t1ce/matches_diffusion.csv"):
        assert rel in compared, rel
    # --compare-with ran the same comparison at the end of the second run
    assert second.returncode == 0, f"{second.stdout[-3000:]}\n{second.stderr[-3000:]}"
    assert "result: the same" in second.stdout


@pytest.mark.smoke
def test_a_fresh_runs_links_and_landing_page_numbers_check_out(two_runs):
    """Links and images resolve and the landing page's numbers equal the
    sweep's tables (the facts check on fresh runs: /tmp/notes/test_committed_reports.py)."""
    a, _, _ = two_runs
    problems = [p for p in report_checks.check_results(a) if p.check in ("links", "numbers")]
    assert problems == [], report_checks.format_problems(a, problems)
