"""End to end: ./runall.sh on the phantom data with the tiny `smoke` profile,
through papermill, into a temporary results folder; then a second run that
must skip every step as up to date."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pandas as pd
import pytest

from helpers import common, pipeline, sweep

#: What each step promises to write in every run folder of the smoke profile's
#: size sweep (``sizes/n<K>/``; step 01 also writes the full split above them).
PROMISED = {
    "01_prepare_data": ["data/train.npy", "data/test.npy", "data/train.csv", "data/test.csv", "data/meta.json"],
    "02_train_stylegan": ["stylegan/loss_log.csv", "stylegan/params.yaml"],
    "03_train_diffusion": ["diffusion/loss_log.csv", "diffusion/pipeline/model_index.json", "diffusion/params.yaml"],
    "04_sample": ["samples/stylegan.npy", "samples/stylegan_seeds.csv", "samples/diffusion.npy",
                  "samples/diffusion_seeds.csv", "samples/optimal_denoiser.npy", "samples/params.yaml"],
    "05_correlate": ["correlation/summary.json", "correlation/t1ce/baseline.csv", "correlation/t1ce/thresholds.csv",
                     "correlation/t1ce/matches_stylegan.csv", "correlation/t1ce/matches_diffusion.csv",
                     "correlation/all/matches_diffusion.csv"],
}
SWEEP = {"01_prepare_data": ["data/sizes.json", "data/params.yaml"],
         "05_correlate": ["sweep/criteria.csv", "sweep/capacity.csv", "sweep/coverage.csv"],
         "06_figures": ["figures/sweep_whole_subjects.png", "figures/sweep_whole_subjects.md"]}


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
        ["t1ce: r > fixed_0.95", "l2: d1 < d2/3"]) & (criteria.n > 0)]
    assert len(control) >= 3 and (control.fraction >= 0.9).all(), control

    second = runall("phantom", "--profile", "smoke", results=tmp_path)
    assert second.returncode == 0, second.stderr[-4000:]
    assert second.stdout.count("up to date") == len(steps), second.stdout
