"""End to end: ./runall.sh on the phantom data with the tiny `smoke` profile,
through papermill, into a temporary results folder; then a second run that
must skip every step as up to date."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from helpers import common, pipeline

#: What each step promises to write (relative to results/<dataset>/).
PROMISED = {
    "01_prepare_data": ["data/train.npy", "data/test.npy", "data/train.csv", "data/test.csv",
                        "data/meta.json", "data/params.yaml"],
    "02_train_stylegan": ["stylegan/loss_log.csv", "stylegan/params.yaml"],
    "03_train_diffusion": ["diffusion/loss_log.csv", "diffusion/pipeline/model_index.json", "diffusion/params.yaml"],
    "04_sample": ["samples/stylegan.npy", "samples/stylegan_seeds.csv", "samples/diffusion.npy",
                  "samples/diffusion_seeds.csv", "samples/params.yaml"],
    "05_correlate": ["correlation/summary.json", "correlation/baseline.csv", "correlation/thresholds.csv",
                     "correlation/matches_stylegan.csv", "correlation/matches_diffusion.csv"],
    "06_figures": [],
}


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

    for step in steps:
        assert (results / "notebooks" / f"{step.name}.ipynb").is_file(), step.name
        assert (results / "notebooks" / f"{step.name}.html").is_file(), step.name
        for rel in PROMISED.get(step.name, []):
            assert (results / rel).exists(), f"{step.name} did not write {rel}"

    train = np.load(results / "data" / "train.npy", mmap_mode="r")
    assert train.dtype == np.uint8 and train.ndim == 4 and len(train) == len(pd.read_csv(results / "data" / "train.csv"))
    if (results / "samples" / "diffusion.npy").exists():
        samples = np.load(results / "samples" / "diffusion.npy", mmap_mode="r")
        assert samples.shape[1:] == train.shape[1:] and samples.dtype == np.uint8

    second = runall("phantom", "--profile", "smoke", results=tmp_path)
    assert second.returncode == 0, second.stderr[-4000:]
    assert second.stdout.count("up to date") == len(steps), second.stdout
