"""End to end: ./runall.sh on the phantom data with the tiny `smoke` profile,
through papermill, into a temporary results folder; then a second run that
must skip every step as up to date."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from helpers import common, pipeline, report_checks, sweep

#: What each step promises to write in every run folder of the smoke profile's
#: size sweep (``sizes/n<K>/``; step 01 also writes the full split above them).
PROMISED = {
    "01_prepare_data": ["data/train.npy", "data/test.npy", "data/train.csv", "data/test.csv", "data/meta.json"],
    "02_train_stylegan": ["stylegan/loss_log.csv", "stylegan/params.yaml"],
    "03_train_diffusion": ["diffusion/loss_log.csv", "diffusion/pipeline/model_index.json", "diffusion/params.yaml"],
    "04_sample": ["samples/stylegan.npy", "samples/stylegan_seeds.csv", "samples/diffusion.npy",
                  "samples/diffusion_seeds.csv", "samples/optimal_denoiser.npy", "samples/gaussian_control.npy",
                  "samples/checkpoints/stylegan/step_000000012.npy",
                  "samples/checkpoints/diffusion/step_000000020.npy", "samples/params.yaml"],
    "05_correlate": ["correlation/summary.json", "correlation/t1ce/baseline.csv", "correlation/t1ce/thresholds.csv",
                     "correlation/t1ce/matches_stylegan.csv", "correlation/t1ce/matches_diffusion.csv",
                     "correlation/all/matches_diffusion.csv", "fit/fit.csv", "fit/over_training.csv"],
}
SWEEP = {"01_prepare_data": ["data/sizes.json", "data/params.yaml"],
         "05_correlate": ["sweep/criteria.csv", "sweep/capacity.csv", "sweep/coverage.csv", "sweep/fit.csv",
                          "sweep/over_training.csv", "fit/fit_rule.json"],
         "06_figures": ["figures/sweep_whole_subjects.png", "figures/sweep_whole_subjects.md",
                        "figures/memorization_against_fit.png"]}


def runall(*args: str, results) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("STUDY_RESULTS", None)
    return subprocess.run(
        ["bash", str(common.repo_root() / "runall.sh"), *args, "--results", str(results)],
        capture_output=True, text=True, env=env, timeout=900, cwd=common.repo_root(),
    )


@pytest.mark.smoke
def test_runall_smoke_profile_end_to_end(tmp_path):
    steps, _ = pipeline.discover_steps(common.repo_root())
    first = runall("phantom", "--profile", "smoke", results=tmp_path)
    assert first.returncode == 0, f"runall failed:\n{first.stdout[-4000:]}\n{first.stderr[-4000:]}"
    results = tmp_path / "phantom"

    runs = sweep.run_dirs(results)
    assert list(runs) == ["n00004", "n00012"]
    for step in steps:
        assert (results / "notebooks" / f"{step.name}.ipynb").is_file(), step.name
        assert (results / "notebooks" / f"{step.name}.html").is_file(), step.name
        for rel in SWEEP.get(step.name, []):
            assert (results / rel).exists(), f"{step.name} did not write {rel}"
        for run in runs.values():
            for rel in PROMISED.get(step.name, []):
                assert (run / rel).exists(), f"{step.name} did not write {run.name}/{rel}"

    for run in runs.values():
        train = np.load(run / "data" / "train.npy", mmap_mode="r")
        assert train.dtype == np.uint8 and train.ndim == 4 and len(train) == len(pd.read_csv(run / "data" / "train.csv"))
        samples = np.load(run / "samples" / "diffusion.npy", mmap_mode="r")
        assert samples.shape[1:] == train.shape[1:] and samples.dtype == np.uint8

    # the control memorizes by construction: every criterion must flag it at every size
    criteria = pd.read_csv(results / "sweep" / "criteria.csv")
    control = criteria[(criteria.group == "optimal_denoiser") & criteria.criterion.isin(
        ["t1ce: r > fixed_0.95", "l2: d1 < d2/3"]) & (criteria.n_images > 0)]
    assert len(control) >= 3 and (control.fraction >= 0.9).all(), control
    # the fit: the underfitting control never fitted, the held-out images always; every checkpoint audited
    fit = pd.read_csv(results / "sweep" / "fit.csv")
    assert not fit[fit.model == "gaussian_control"].fitted.any() and fit[fit.model == "held_out"].fitted.all(), fit
    over = pd.read_csv(results / "sweep" / "over_training.csv")
    assert sorted(set(over[over.model == "diffusion"].images_seen)) == [80, 160], over

    # the pages read as a reviewer reads them: links resolve, the landing page's numbers are its
    # tables', and no page states a model, size, sample count or setting this run did not have
    problems = report_checks.check_results(results)
    assert problems == [], report_checks.format_problems(results, problems)

    second = runall("phantom", "--profile", "smoke", results=tmp_path)
    assert second.returncode == 0, second.stderr[-4000:]
    assert second.stdout.count("up to date") == len(steps), second.stdout

    # the same sampling and correlation over 2 torch.distributed processes (gloo):
    # the same samples and the same tables as one process
    two = tmp_path / "two"
    shutil.copytree(results, two / "phantom")
    for run in sweep.run_dirs(two / "phantom").values():  # made anew, not reused
        for made in [*(run / "samples").glob("*.npy"), run / "correlation"]:
            shutil.rmtree(made) if made.is_dir() else made.unlink()
    third = runall("phantom", "--profile", "smoke", "--processes", "2", "--from", "04", "--force", results=two)
    assert third.returncode == 0, f"--processes 2 failed:\n{third.stdout[-4000:]}\n{third.stderr[-4000:]}"
    assert (two / "phantom" / "logs" / "sample").is_dir() and (two / "phantom" / "logs" / "correlate").is_dir()
    for run in runs.values():
        other = two / "phantom" / run.relative_to(results)
        for model in ("stylegan", "diffusion", "optimal_denoiser", "gaussian_control",
                      "checkpoints/stylegan/step_000000006", "checkpoints/diffusion/step_000000010"):
            np.testing.assert_array_equal(np.load(run / "samples" / f"{model}.npy"),
                                          np.load(other / "samples" / f"{model}.npy"), err_msg=f"{run.name} {model}")
        for table in sorted((run / "correlation").rglob("*.csv")):
            pd.testing.assert_frame_equal(pd.read_csv(table), pd.read_csv(other / table.relative_to(run)),
                                          obj=str(table.relative_to(results)))
    for table in ("criteria.csv", "fit.csv", "over_training.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(results / "sweep" / table),
                                      pd.read_csv(two / "phantom" / "sweep" / table), obj=table)
