"""A diverged training (a loss or a weight NaN/inf) stops the run with a
message naming the model, the step and the last good checkpoint, and no
checkpoint of diverged weights is written (issue 22, bad input)."""

from __future__ import annotations

import math

import pytest
import torch
from test_diffusion import make_results as diffusion_results
from test_diffusion import settings as diffusion_settings
from test_stylegan import make_results as stylegan_results
from test_stylegan import tiny_config

from helpers import checkpoints, diffusion, stylegan
from helpers.training import TrainingDiverged, require_finite


def _all_finite(state) -> bool:
    if isinstance(state, torch.Tensor):
        return not state.is_floating_point() or bool(torch.isfinite(state).all())
    if isinstance(state, dict):
        return all(_all_finite(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return all(_all_finite(v) for v in state)
    return not (isinstance(state, float) and not math.isfinite(state))


def test_require_finite_names_what_diverged_and_the_last_checkpoint(tmp_path):
    require_finite("m", 3, tmp_path, losses={"loss": 0.5, "unset": None}, modules={"net": torch.nn.Linear(2, 2)})
    checkpoints.save_checkpoint(tmp_path, 2, {"w": torch.zeros(1)})
    with pytest.raises(TrainingDiverged, match=r"m training diverged at step 3: loss not finite.*step 2"):
        require_finite("m", 3, tmp_path, losses={"loss": float("nan")})
    net = torch.nn.Linear(2, 2)
    with torch.no_grad():
        net.weight[0, 0] = float("inf")
    with pytest.raises(TrainingDiverged, match="net's weights"):
        require_finite("m", 3, tmp_path / "none", modules={"net": net})
    with pytest.raises(TrainingDiverged, match="no checkpoint had been written yet"):
        require_finite("m", 3, tmp_path / "none", modules={"net": net})


def _checkpoints_are_good(folder) -> list[int]:
    kept = checkpoints.list_checkpoints(folder)
    for _, path in kept:
        assert _all_finite(checkpoints.load_state(path)), path
    return [step for step, _ in kept]


def test_a_diverging_diffusion_run_stops_and_keeps_its_last_good_checkpoint(tmp_path):
    results = diffusion_results(tmp_path)
    # a real divergence: the warm-up's first step has learning rate 0 (checkpoint 1 is good), then 1e27 and up
    cfg = diffusion_settings(max_steps=20, learning_rate=1e30, lr_warmup_steps=1000, checkpoint_every=1,
                             keep_checkpoints=0, max_grad_norm=1.0)
    with pytest.raises(TrainingDiverged, match=r"diffusion training diverged at step (\d+)") as caught:
        diffusion.train(results, cfg, progress=False)
    diverged = int(caught.value.args[0].split("at step ")[1].split(":")[0])
    kept = _checkpoints_are_good(results / "diffusion" / "checkpoints")
    assert kept and max(kept) < diverged
    assert f"step {max(kept)}" in str(caught.value)


def test_a_diverging_stylegan_run_stops_and_keeps_its_last_good_checkpoint(tmp_path):
    results = stylegan_results(tmp_path)
    cfg = tiny_config(lr_g=10.0, lr_d=10.0, checkpoint_kimg=0.004, keep_checkpoints=0, log_every=1,
                      total_kimg=0.08)  # measured: diverges at step 3, after two good checkpoints
    with pytest.raises(TrainingDiverged, match=r"StyleGAN training diverged at step (\d+)") as caught:
        stylegan.train(results, cfg, seed=0, device="cpu", progress=False)
    diverged = int(caught.value.args[0].split("at step ")[1].split(":")[0])
    kept = _checkpoints_are_good(results / "stylegan" / "checkpoints")
    assert kept and max(kept) < diverged
    assert f"step {max(kept)}" in str(caught.value)
