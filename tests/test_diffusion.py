"""The diffusion model: training, exact resume, saving, per-seed sampling.

A tiny UNet on a tiny fixed set (16 images, 2×16×16) made here, so every
test runs in seconds on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import checkpoints, config, diffusion
from helpers.training import bf16_is_fast

TINY = dict(
    block_out_channels=[8, 16],
    layers_per_block=1,
    attention_resolutions=[8],
    attention_head_dim=8,
    norm_num_groups=4,
    num_train_timesteps=20,
    batch_size=4,
    learning_rate=2e-3,
    lr_warmup_steps=2,
    max_grad_norm=1.0,
    ema_decay=0.9,
    ema_warmup=True,
    checkpoint_every=4,
    keep_checkpoints=2,
    log_every=1,
    num_threads=1,
    seed=3,
)


def make_results(root: Path, n: int = 16, channels: int = 2, size: int = 16, seed: int = 0) -> Path:
    """A results folder with data/train.npy (discs of varying radius and
    brightness per channel) and data/meta.json, as notebook 01 writes them."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    images = np.zeros((n, channels, size, size), np.uint8)
    for i in range(n):
        radius = rng.uniform(3, size / 2 - 1)
        for c in range(channels):
            images[i, c] = np.where(xx**2 + yy**2 < radius**2, rng.integers(120, 255), 0)
    results = root / "results" / "phantom"
    (results / "data").mkdir(parents=True)
    np.save(results / "data" / "train.npy", images)
    meta = {"dataset": "phantom", "channels": [f"c{c}" for c in range(channels)], "image_size": size,
            "n_train": n, "n_test": 0}
    (results / "data" / "meta.json").write_text(json.dumps(meta))
    return results


def settings(**overrides) -> config.TrainDiffusionSettings:
    return config.build("train_diffusion", {**TINY, **overrides})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished tiny training run (12 steps), shared by the sampling tests."""
    results = make_results(tmp_path_factory.mktemp("trained"))
    summary = diffusion.train(results, settings(max_steps=12), progress=False)
    return results, summary


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_loss_goes_down_on_a_fixed_tiny_set(tmp_path, prediction_type):
    results = make_results(tmp_path)
    diffusion.train(results, settings(max_steps=40, learning_rate=3e-3, prediction_type=prediction_type),
                    progress=False)
    log = diffusion.read_loss_log(results)
    assert list(log["step"]) == list(range(1, 41))
    first, last = log["loss"].head(5).mean(), log["loss"].tail(5).mean()
    assert last < 0.7 * first, (first, last)


def test_finished_run_writes_contract_files(trained):
    results, summary = trained
    out = results / "diffusion"
    assert (out / "pipeline" / "model_index.json").is_file()
    assert list((out / "pipeline" / "unet").glob("*.safetensors"))
    assert not list((out / "pipeline").rglob("*.bin"))
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == [
        "step_000000008.safetensors", "step_000000012.safetensors"]
    log = pd.read_csv(out / "loss_log.csv")
    assert {"step", "images_seen", "loss", "lr"} <= set(log.columns)
    assert log["images_seen"].iloc[-1] == 12 * TINY["batch_size"]
    assert summary["step"] == 12 and summary["n_params"] > 0 and np.isfinite(summary["final_loss"])
    assert (summary["resumed_from_step"], summary["steps_run"], summary["processes"]) == (0, 12, 1)
    weights = checkpoints.load_latest_checkpoint(out / "checkpoints")[1]["model"]
    unet = diffusion.build_unet(settings(max_steps=12), channels=2, image_size=16)
    unet.load_state_dict(weights)
    assert summary["weights_sha256_by_process"] == [diffusion.loop.weights_sha256(unet.parameters())]


def test_rerun_of_a_finished_run_does_nothing(trained):
    results, summary = trained
    weights = results / "diffusion" / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors"
    before = weights.stat().st_mtime_ns
    again = diffusion.train(results, settings(max_steps=12), progress=False)
    assert again == {**summary, "resumed_from_step": 12, "steps_run": 0}
    assert weights.stat().st_mtime_ns == before


def test_interrupted_and_resumed_run_equals_uninterrupted_run(tmp_path):
    straight = make_results(tmp_path / "a")
    diffusion.train(straight, settings(max_steps=10), progress=False)

    resumed = make_results(tmp_path / "b")
    partial = diffusion.train(resumed, settings(max_steps=10), progress=False, stop_after=6)
    assert partial == {"step": 6, "complete": False, "seconds": pytest.approx(partial["seconds"]),
                       "resumed_from_step": 0, "steps_run": 6}
    # a kill after step 6 would lose the steps since the last periodic checkpoint (4)
    checkpoints.checkpoint_path(resumed / "diffusion" / "checkpoints", 6).unlink()
    summary = diffusion.train(resumed, settings(max_steps=10), progress=False)
    assert (summary["resumed_from_step"], summary["steps_run"], summary["step"]) == (4, 6, 10)

    a = checkpoints.load_latest_checkpoint(straight / "diffusion" / "checkpoints")
    b = checkpoints.load_latest_checkpoint(resumed / "diffusion" / "checkpoints")
    assert a[0] == b[0] == 10
    for key in a[1]["model"]:
        assert torch.equal(a[1]["model"][key], b[1]["model"][key]), key
    for x, y in zip(a[1]["ema"]["shadow_params"], b[1]["ema"]["shadow_params"]):
        assert torch.equal(x, y)
    log_a = diffusion.read_loss_log(straight).drop(columns="seconds")
    log_b = diffusion.read_loss_log(resumed).drop(columns="seconds")
    assert list(log_b["step"]) == list(range(1, 11))  # no duplicated or missing steps
    pd.testing.assert_frame_equal(log_a, log_b)


def test_a_resumed_run_starts_from_the_checkpoint_s_weights(tmp_path):
    """Resuming is seen to resume: the weights of a tampered checkpoint show
    in the next logged loss and in the final weights (a run that silently
    started again from step 0 would end as the untouched one)."""
    straight = make_results(tmp_path / "a")
    diffusion.train(straight, settings(max_steps=6), progress=False)
    tampered = make_results(tmp_path / "b")
    diffusion.train(tampered, settings(max_steps=6), progress=False, stop_after=4)
    path = checkpoints.checkpoint_path(tampered / "diffusion" / "checkpoints", 4)
    state = checkpoints.load_state(path)
    name = "conv_in.weight"
    state["model"][name] = state["model"][name] * 1.5
    checkpoints.save_state(path, state)
    summary = diffusion.train(tampered, settings(max_steps=6), progress=False)
    assert (summary["resumed_from_step"], summary["steps_run"]) == (4, 2)

    a, b = (checkpoints.load_latest_checkpoint(r / "diffusion" / "checkpoints")[1]["model"] for r in (straight, tampered))
    assert not torch.equal(a[name], b[name])
    # the first four steps are the same rows, the fifth was taken from the tampered weights
    log_a, log_b = (diffusion.read_loss_log(r).set_index("step")["loss"] for r in (straight, tampered))
    assert log_a.loc[1:4].tolist() == log_b.loc[1:4].tolist()
    assert log_a.loc[5] != log_b.loc[5]


def test_checkpoints_of_other_parameters_are_not_resumed(trained, tmp_path):
    results, _ = trained
    with pytest.raises(ValueError, match="other model/training parameters"):
        diffusion.train(results, settings(max_steps=14, learning_rate=1e-3), progress=False)
    with pytest.raises(ValueError, match="other model/training parameters"):
        diffusion.train(results, settings(max_steps=14, seed=4), progress=False)


def test_pipeline_round_trip_gives_identical_outputs(trained):
    results, _ = trained
    step, state = checkpoints.load_latest_checkpoint(results / "diffusion" / "checkpoints")
    s = settings(max_steps=12)
    unet = diffusion.build_unet(s, channels=2, image_size=16)
    for param, shadow in zip(unet.parameters(), state["ema"]["shadow_params"]):
        param.data.copy_(shadow)
    loaded = diffusion.load_pipeline(diffusion.pipeline_dir(results))
    for (name, a), b in zip(loaded.unet.state_dict().items(), unet.state_dict().values()):
        assert torch.equal(a, b), name
    seeds = [11, 12]
    x = diffusion.sample_images(unet.eval(), diffusion.build_noise_scheduler(s), seeds, "ddim", 5)
    y = diffusion.sample_images(loaded.unet.eval(), loaded.scheduler, seeds, "ddim", 5)
    assert torch.equal(x, y)


def test_pipeline_loads_with_the_network_switched_off(trained):
    results, _ = trained
    code = ("import sys; from diffusers import DDPMPipeline; "
            "p = DDPMPipeline.from_pretrained(sys.argv[1]); print(type(p.scheduler).__name__, p.unet.config.in_channels)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(results / "no_hf_home")}
    done = subprocess.run([sys.executable, "-c", code, str(diffusion.pipeline_dir(results))],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["DDPMScheduler", "2"]


def test_a_seed_alone_and_inside_a_batch_gives_the_same_image(trained):
    results, _ = trained
    generate = diffusion.make_generate(diffusion.load_pipeline(diffusion.pipeline_dir(results)), "ddpm", device="cpu")
    batch = generate([40, 41, 42, 43])
    alone = generate([42])
    assert np.array_equal(batch[2:3], alone)
    assert not np.array_equal(batch[0], batch[1])  # different seeds, different images


def test_sample_writes_uint8_samples_and_seeds(trained):
    results, _ = trained
    path = diffusion.sample(results, n_images=5, first_seed=2, batch_size=2, progress=False)
    images = np.load(path)
    assert path == results / "samples" / "diffusion.npy"
    assert images.dtype == np.uint8 and images.shape == (5, 2, 16, 16)
    assert images.std() > 0
    seeds = pd.read_csv(results / "samples" / "diffusion_seeds.csv")
    assert list(seeds["seed"]) == [2, 3, 4, 5, 6]
    # the full ancestral loop by default: image i is the one its seed gives alone
    generate = diffusion.make_generate(diffusion.load_pipeline(diffusion.pipeline_dir(results)), device="cpu")
    assert np.array_equal(images[3:4], generate([5]))
    # a re-run finds the finished file and leaves it as it is
    before = path.stat().st_mtime_ns
    assert diffusion.sample(results, n_images=5, first_seed=2, batch_size=3, progress=False) == path
    assert path.stat().st_mtime_ns == before
    # samples made with another sampler are not mixed in silently
    with pytest.raises(ValueError, match="remove"):
        diffusion.sample(results, n_images=5, first_seed=2, batch_size=2, sampler="ddim", num_inference_steps=4,
                         progress=False)


def test_ddim_sampling_with_fewer_steps(trained):
    results, _ = trained
    generate = diffusion.make_generate(diffusion.load_pipeline(diffusion.pipeline_dir(results)), "ddim", 4, device="cpu")
    out = generate([1, 2, 3])
    assert out.dtype == np.uint8 and out.shape == (3, 2, 16, 16)


def test_command_line_trains_with_a_profile(tmp_path, capsys):
    """What `accelerate launch -m helpers.diffusion` runs on several GPUs."""
    results = make_results(tmp_path)
    assert diffusion.main(["--profile", "smoke", "--results-dir", str(results),
                           "--set", "train_diffusion.max_steps=3", "--set", "train_diffusion.num_threads=1"]) == 0
    assert (results / "diffusion" / "pipeline" / "model_index.json").is_file()
    assert list(diffusion.read_loss_log(results)["step"])[-1] == 3


def test_missing_or_inconsistent_data_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="train.npy"):
        diffusion.train(tmp_path / "nothing", settings(max_steps=2), progress=False)
    results = make_results(tmp_path)
    (results / "data" / "meta.json").write_text(json.dumps({"channels": ["a", "b", "c"], "image_size": 16}))
    with pytest.raises(ValueError, match="meta.json.*3 channels"):
        diffusion.train(results, settings(max_steps=2), progress=False)


def test_guided_diffusion_schedule_and_attention_levels():
    assert diffusion.guided_diffusion_betas(4000) == pytest.approx((2.5e-5, 0.005))
    assert diffusion.guided_diffusion_betas(1000) == pytest.approx((1e-4, 0.02))
    # guided-diffusion's attention_resolutions "16,8" at 256² = the last two of six levels
    assert diffusion.attention_levels(256, 6, [16, 8]) == [4, 5]
    with pytest.raises(ValueError, match="not a feature-map size"):
        diffusion.attention_levels(64, 3, [8])
    sched = diffusion.build_noise_scheduler(settings(num_train_timesteps=4000))
    assert float(sched.betas[0]) == pytest.approx(2.5e-5) and float(sched.betas[-1]) == pytest.approx(0.005)
    assert sched.config.variance_type == "fixed_large"


def test_zero_init_starts_every_residual_branch_at_identity():
    """Not only the output conv: every res-block returns its shortcut and
    every attention block its input, as guided-diffusion's zero_module."""
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D

    unet = diffusion.build_unet(settings(), channels=2, image_size=16)
    seen = {"resnet": 0, "attention": 0}

    def resnet_hook(block, args, output):
        x = args[0]
        shortcut = block.conv_shortcut(x) if block.conv_shortcut is not None else x
        assert torch.allclose(output, shortcut / block.output_scale_factor, rtol=0, atol=1e-6)
        seen["resnet"] += 1

    def attention_hook(block, args, output):
        assert torch.allclose(output, args[0], rtol=0, atol=1e-6)
        seen["attention"] += 1

    for module in unet.modules():
        if isinstance(module, ResnetBlock2D):
            module.register_forward_hook(resnet_hook)
        elif isinstance(module, Attention):
            module.register_forward_hook(attention_hook)
    out = unet(torch.randn(2, 2, 16, 16), torch.tensor([3, 7])).sample
    assert torch.count_nonzero(out) == 0
    # 2 levels × 1 down block + 2 × 2 up blocks + the 2 middle blocks; attention at 8²: 1 + 2 + the middle one
    assert seen == {"resnet": 8, "attention": 4}
    assert torch.count_nonzero(diffusion.build_unet(settings(zero_init=False), 2, 16)(
        torch.randn(1, 2, 16, 16), torch.tensor([3])).sample) > 0


def test_cpu_precision_is_float32_unless_bf16_is_asked_for():
    from helpers.diffusion.trainer import resolve_speed_options

    assert resolve_speed_options(settings(), "cpu")["mixed_precision"] == "no"
    with pytest.raises(ValueError, match="fp16.*CUDA"):
        resolve_speed_options(settings(mixed_precision="fp16"), "cpu")
    asked = resolve_speed_options(settings(mixed_precision="bf16"), "cpu")["mixed_precision"]
    assert asked == ("bf16" if bf16_is_fast("cpu") else "no")  # float32 where bf16 would be slower


@pytest.mark.skipif(not bf16_is_fast("cpu"), reason="this CPU has no bf16 units")
def test_cpu_bf16_training_steps_lower_the_loss(tmp_path):
    results = make_results(tmp_path)
    summary = diffusion.train(results, settings(max_steps=40, learning_rate=3e-3, mixed_precision="bf16"),
                              progress=False, device="cpu")
    assert summary["options"]["mixed_precision"] == "bf16"
    log = diffusion.read_loss_log(results)
    assert np.isfinite(log["loss"]).all()
    assert log["loss"].tail(5).mean() < 0.7 * log["loss"].head(5).mean()


@pytest.mark.gpu
def test_gpu_bf16_training_step_and_sampling_batch(tmp_path):
    results = make_results(tmp_path)
    summary = diffusion.train(results, settings(max_steps=2, mixed_precision="bf16"), progress=False, device="cuda")
    assert summary["options"]["mixed_precision"] == "bf16" and summary["device"].startswith("cuda")
    assert np.isfinite(summary["final_loss"])
    generate = diffusion.make_generate(diffusion.load_pipeline(diffusion.pipeline_dir(results)), "ddpm", device="cuda")
    out = generate([1, 2, 3])
    assert out.dtype == np.uint8 and out.shape == (3, 2, 16, 16)


def test_a_checkpoint_s_pipeline_holds_that_checkpoint_s_ema_weights(trained):
    """The audits over training sample each kept checkpoint: the last one is the saved pipeline itself."""
    results, summary = trained
    steps = diffusion.checkpoint_steps(results)
    assert steps == [8, 12]
    final = diffusion.load_pipeline(diffusion.pipeline_dir(results)).unet.state_dict()
    last = diffusion.checkpoint_pipeline(results, 12).unet.state_dict()
    earlier = diffusion.checkpoint_pipeline(results, 8).unet.state_dict()
    assert all(torch.equal(final[k], last[k]) for k in final)
    assert not all(torch.equal(final[k], earlier[k]) for k in final)
    with pytest.raises(FileNotFoundError, match=r"no diffusion checkpoint at step 5 \(kept: \[8, 12\]\)"):
        diffusion.checkpoint_pipeline(results, 5)
