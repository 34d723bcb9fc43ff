"""Training over two torch.distributed processes (gloo on the CPU): every
process holds the same networks, the loss is comparable with one process,
and a stopped run resumes exactly as an uninterrupted one with the same
number of processes. StyleGAN runs in processes spawned here; the diffusion
model goes through the real torchrun job the notebooks launch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp
from test_parallel import run_ranks
from test_stylegan import make_results, tiny_config

from helpers import checkpoints, common, config, diffusion, parallel, steps
from helpers import stylegan as sg
from helpers.diffusion.loop import weights_sha256


def _same_in_every_process(module: torch.nn.Module) -> None:
    digest = common.stable_hash([p.detach().numpy().tobytes().hex() for p in module.parameters()])
    digests = parallel.gather(digest)
    assert len(set(digests)) == 1, f"the processes hold different networks: {digests}"


def _train_stylegan(results, cfg, stop_after_steps=None, start=0):
    _, world = parallel.rank_world()
    assert world == 2
    summary = sg.train(results, cfg, seed=3, progress=False, stop_after_steps=stop_after_steps)
    assert summary["processes"] == 2
    assert (summary["resumed_from_step"], summary["steps_run"]) == (start, summary["steps_done"] - start)
    latest = checkpoints.load_latest_checkpoint(results / "stylegan" / "checkpoints")
    G = sg.Generator(**sg.StyleGANTrainer(cfg, (2, 16, 16), seed=3).G.kwargs)
    G.load_state_dict(latest[1]["G"])
    _same_in_every_process(G)


def _state(results):
    return checkpoints.load_latest_checkpoint(results / "stylegan" / "checkpoints")[1]


def test_stylegan_over_two_processes_resumes_exactly_and_learns_like_one(tmp_path):
    cfg = tiny_config(processes=2)  # batch 4 = 2 per process, mbstd group 2; R1, PL, ADA, mixing active
    straight, resumed, one = (make_results(tmp_path / name) for name in ("straight", "resumed", "one"))
    run_ranks(tmp_path, 2, _train_stylegan, straight, cfg)
    run_ranks(tmp_path, 2, _train_stylegan, resumed, cfg, 5)  # stops between checkpoints
    run_ranks(tmp_path, 2, _train_stylegan, resumed, cfg, None, 5)  # resumes at step 5

    a, b = _state(straight), _state(resumed)
    assert a["step"] == b["step"] == cfg.total_steps
    for name in ("G", "D", "G_ema"):
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), f"{name}.{key}"
    assert a["ada"] == b["ada"] and torch.equal(a["pl_mean"], b["pl_mean"])
    logs = [pd.read_csv(r / "stylegan" / "loss_log.csv") for r in (straight, resumed)]
    same = [c for c in logs[0].columns if c not in ("images_per_s", "time_s")]
    pd.testing.assert_frame_equal(logs[0][same], logs[1][same])

    # the same images and objective in one process: a comparable loss, not the same draws
    sg.train(one, tiny_config(), seed=3, progress=False)
    ours = pd.read_csv(one / "stylegan" / "loss_log.csv")
    for column in ("loss_G", "loss_D"):
        assert abs(logs[0][column].mean() - ours[column].mean()) < 0.25, column
    first = next(iter(a["G"]))
    assert not torch.equal(a["G"][first], _state(one)["G"][first]), "two processes draw their own latents"


def test_stylegan_resumed_with_another_number_of_processes_is_refused(tmp_path):
    results = make_results(tmp_path)
    sg.train(results, tiny_config(total_kimg=0.008), seed=3, progress=False)
    with pytest.raises(mp.ProcessRaisedException, match=r"trained with 1 process\(es\); resume it with --processes 1"):
        run_ranks(tmp_path, 2, _train_stylegan, results, tiny_config(processes=2))


def test_batches_the_processes_cannot_share_are_refused_before_anything_starts(tmp_path):
    with pytest.raises(ValueError, match="batch_size=4 over 4 processes gives 1 images per process"):
        sg.trainer.check_batch(tiny_config(), 4)
    # the schema refuses it when the settings are built, before any step (or job) starts
    with pytest.raises(config.ConfigError, match=r"train_stylegan\.batch_size = 6: a multiple of processes=4"):
        config.build("train_stylegan", {"batch_size": 6, "mbstd_group": 2, "processes": 4})


def test_diffusion_over_two_processes_through_torchrun_resumes_exactly(tmp_path):
    from test_diffusion import TINY
    from test_diffusion import make_results as diffusion_results

    def settings(steps, processes):
        return config.build("train_diffusion", {**TINY, "max_steps": steps, "checkpoint_every": 4,
                                                "processes": processes})

    straight, resumed, one = (diffusion_results(tmp_path / name) for name in ("straight", "resumed", "one"))
    summary = steps.train_every_run(straight, "train_diffusion", settings(10, 2))["all"]
    assert summary["processes"] == 2 and summary["step"] == 10
    assert (straight / "diffusion" / "pipeline" / "model_index.json").is_file()
    first = steps.train_every_run(resumed, "train_diffusion", settings(6, 2))["all"]
    second = steps.train_every_run(resumed, "train_diffusion", settings(10, 2))["all"]
    assert (first["resumed_from_step"], first["steps_run"]) == (0, 6)
    assert (second["resumed_from_step"], second["steps_run"], second["step"]) == (6, 4, 10)
    a, b = (checkpoints.load_latest_checkpoint(r / "diffusion" / "checkpoints") for r in (straight, resumed))
    assert a[0] == b[0] == 10
    for key in a[1]["model"]:
        assert torch.equal(a[1]["model"][key], b[1]["model"][key]), key
    # both processes ended with the same weights: the ones rank 0 saved
    unet = diffusion.build_unet(settings(10, 2), channels=2, image_size=16)
    unet.load_state_dict(a[1]["model"])
    assert summary["weights_sha256_by_process"] == [weights_sha256(unet.parameters())] * 2
    logs = [pd.read_csv(r / "diffusion" / "loss_log.csv").drop(columns="seconds") for r in (straight, resumed)]
    pd.testing.assert_frame_equal(logs[0], logs[1])

    alone = steps.train_every_run(one, "train_diffusion", settings(10, 1))["all"]
    assert alone["processes"] == 1 and len(alone["weights_sha256_by_process"]) == 1
    assert np.isclose(summary["final_loss"], alone["final_loss"], rtol=0.25), (summary, alone)


def _d_objective(D, fake, reals, gamma):
    """D's non-saturating loss and its R1 term (γ/2·‖∇ₓD(x)‖²) on fixed images."""
    x = reals.detach().requires_grad_(True)
    on_real = D(x)
    (grad_x,) = torch.autograd.grad(on_real.sum(), x, create_graph=True)
    r1 = grad_x.square().flatten(1).sum(1)
    return (torch.nn.functional.softplus(D(fake)).mean() + torch.nn.functional.softplus(-on_real).mean()
            + gamma / 2 * r1.mean())


def _g_objective(G, D, z):
    img = G.synthesis(G.mapping(z, update_w_avg=False), noise_mode="const")
    return torch.nn.functional.softplus(-D(img)).mean()


def _averaged_gradients_equal_one_process(cfg):
    """Each process takes its half of one fixed batch and averages its
    gradients with the other's; one process on the whole batch must get the
    same gradient. The whole batch is ordered a0 b0 a1 b1 so that D's
    minibatch-std groups (images j, j + N/2) are the processes' pairs."""
    rank, world = parallel.rank_world()
    rng = np.random.default_rng(0)
    fake = torch.from_numpy(rng.uniform(-1, 1, (4, 2, 16, 16)).astype(np.float32))
    reals = torch.from_numpy(rng.uniform(-1, 1, (4, 2, 16, 16)).astype(np.float32))
    z = torch.from_numpy(rng.standard_normal((4, cfg.z_dim)).astype(np.float32))
    mine = slice(2 * rank, 2 * rank + 2)
    one_process_order = [0, 2, 1, 3]

    ours = sg.StyleGANTrainer(cfg, (2, 16, 16), seed=3)
    alone = sg.StyleGANTrainer(cfg, (2, 16, 16), seed=3)
    checks = []
    for name in ("D", "G"):
        for t in (ours, alone):
            sg.trainer._requires_grad(getattr(t, name), True)
        if name == "D":
            _d_objective(ours.D, fake[mine], reals[mine], cfg.r1_gamma).backward()
            _d_objective(alone.D, fake[one_process_order], reals[one_process_order], cfg.r1_gamma).backward()
        else:
            _g_objective(ours.G, ours.D, z[mine]).backward()
            _g_objective(alone.G, alone.D, z[one_process_order]).backward()
        parallel.average_gradients(getattr(ours, name))
        for (key, a), b in zip(getattr(ours, name).named_parameters(), getattr(alone, name).parameters()):
            assert a.grad is not None, f"{name}.{key} got no gradient"
            assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-7), (name, key, float((a.grad - b.grad).abs().max()))
            checks.append(key)
        for t in (ours, alone):
            sg.trainer._requires_grad(getattr(t, name), False)
            getattr(t, name).zero_grad(set_to_none=True)
    assert len(checks) == sum(1 for _ in ours.D.parameters()) + sum(1 for _ in ours.G.parameters())


def test_two_processes_average_to_the_one_process_gradient(tmp_path):
    run_ranks(tmp_path, 2, _averaged_gradients_equal_one_process, tiny_config(processes=2))
