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
from test_distributed import run_ranks
from test_stylegan import make_results, tiny_config

from helpers import checkpoints, common, config, distributed
from helpers import stylegan as sg


def _same_in_every_process(module: torch.nn.Module) -> None:
    digest = common.stable_hash([p.detach().numpy().tobytes().hex() for p in module.parameters()])
    digests = distributed.gather(digest)
    assert len(set(digests)) == 1, f"the processes hold different networks: {digests}"


def _train_stylegan(results, cfg, stop_after_steps=None):
    _, world = distributed.rank_world()
    assert world == 2
    summary = sg.train(results, cfg, seed=3, progress=False, stop_after_steps=stop_after_steps)
    assert summary["processes"] == 2
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
    run_ranks(tmp_path, 2, _train_stylegan, resumed, cfg)

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
    cfg = config.build("train_stylegan", {"batch_size": 6, "mbstd_group": 2, "processes": 4})
    with pytest.raises(ValueError, match="batch_size=6 is not divisible by processes=4"):
        distributed.train_every_run(make_results(tmp_path), "train_stylegan", cfg)
    assert not (tmp_path / "logs").exists(), "refused before any job was launched"


def test_diffusion_over_two_processes_through_torchrun_resumes_exactly(tmp_path):
    from test_diffusion import TINY
    from test_diffusion import make_results as diffusion_results

    def settings(steps, processes):
        return config.build("train_diffusion", {**TINY, "max_steps": steps, "checkpoint_every": 4,
                                                "processes": processes})

    straight, resumed, one = (diffusion_results(tmp_path / name) for name in ("straight", "resumed", "one"))
    summary = distributed.train_every_run(straight, "train_diffusion", settings(10, 2))["all"]
    assert summary["processes"] == 2 and summary["step"] == 10
    assert (straight / "diffusion" / "pipeline" / "model_index.json").is_file()
    distributed.train_every_run(resumed, "train_diffusion", settings(6, 2))
    distributed.train_every_run(resumed, "train_diffusion", settings(10, 2))  # resumes at 6
    a, b = (checkpoints.load_latest_checkpoint(r / "diffusion" / "checkpoints") for r in (straight, resumed))
    assert a[0] == b[0] == 10
    for key in a[1]["model"]:
        assert torch.equal(a[1]["model"][key], b[1]["model"][key]), key
    logs = [pd.read_csv(r / "diffusion" / "loss_log.csv").drop(columns="seconds") for r in (straight, resumed)]
    pd.testing.assert_frame_equal(logs[0], logs[1])

    alone = distributed.train_every_run(one, "train_diffusion", settings(10, 1))["all"]
    assert alone["processes"] == 1
    assert np.isclose(summary["final_loss"], alone["final_loss"], rtol=0.25), (summary, alone)
