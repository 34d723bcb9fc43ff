"""StyleGAN2-ADA: architecture, regularizers, ADA, exact resume and per-seed
sampling, on tiny CPU models (16²/32², a few channels)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from helpers import checkpoints, common, config
from helpers import stylegan as sg
from helpers.stylegan.augment import TRANSFORMS, AdaptiveAugment, parse_transforms
from helpers.stylegan.layers import _fir_kernel
from helpers.stylegan.trainer import ema_beta, real_batch, update_ema
from helpers.training import bf16_is_fast


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors run fastest on one thread, and a shared machine is not
    oversubscribed."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY = dict(z_dim=16, w_dim=16, mapping_layers=2, channel_base=128, channel_max=16)


def tiny_config(**overrides) -> config.TrainStyleGANSettings:
    base = dict(TINY, batch_size=4, mbstd_group=2, total_kimg=0.048, checkpoint_kimg=0.016, log_every=2,
                r1_gamma=1.0, r1_interval=2, pl_weight=2.0, pl_interval=3, ema_kimg=0.01, augment_p=0.2,
                ada_kimg=0.05, ada_interval=2, grid_seeds=2, keep_checkpoints=2)
    base.update(overrides)
    return config.TrainStyleGANSettings(**base)


def make_results(tmp_path, n=12, channels=2, size=16, seed=0):
    """A results folder with a small training set of smooth random blobs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = np.zeros((n, channels, size, size), dtype=np.uint8)
    for i in range(n):
        cy, cx, r = rng.uniform(size * 0.3, size * 0.7, 2).tolist() + [rng.uniform(size * 0.2, size * 0.4)]
        blob = ((yy - cy) ** 2 + (xx - cx) ** 2) < r**2
        for c in range(channels):
            images[i, c] = blob * rng.integers(80, 255)
    data = tmp_path / "data"
    data.mkdir(parents=True)
    np.save(data / "train.npy", images)
    common.write_json(data / "meta.json", {"channels": [f"m{c}" for c in range(channels)], "image_size": size,
                                          "n_train": n})
    return tmp_path


# --------------------------------------------------------------------------
# Architecture
# --------------------------------------------------------------------------

@pytest.mark.parametrize("resolution,channels", [(16, 1), (32, 5), (64, 3)])
def test_generator_and_discriminator_shapes(resolution, channels):
    G = sg.Generator(resolution, channels, **TINY)
    D = sg.Discriminator(resolution, channels, channel_base=128, channel_max=16, mbstd_group=2)
    z = torch.randn(4, 16)
    img = G(z)
    assert img.shape == (4, channels, resolution, resolution)
    assert G.num_ws == 2 * int(math.log2(resolution)) - 2  # one w per conv + the last toRGB
    logits = D(img)
    assert logits.shape == (4,)
    assert torch.isfinite(img).all() and torch.isfinite(logits).all()


def test_model_summary_counts_what_is_built():
    cfg = tiny_config()
    table = sg.model_summary(cfg, (3, 32, 32)).set_index("part")["value"]
    G = sg.Generator(32, 3, **TINY)
    D = sg.Discriminator(32, 3, channel_base=128, channel_max=16, mbstd_group=2)
    assert table["generator parameters"] == sg.count_parameters(G)
    assert table["discriminator parameters"] == sg.count_parameters(D)
    assert table["mapping parameters"] == 2 * (16 * 16 + 16)  # two 16→16 layers with bias
    assert table["width at 32²"] == 4 and table["width at 8²"] == 16  # min(128 / r, 16)


def test_truncation_psi_zero_gives_the_average_image():
    G = sg.Generator(16, 1, **TINY).eval()
    G.mapping.w_avg.normal_()
    a = G(torch.randn(3, 16), truncation_psi=0.0, noise_mode="const")
    assert torch.allclose(a[0], a[1], atol=1e-5) and torch.allclose(a[0], a[2], atol=1e-5)
    b = G(torch.randn(3, 16), truncation_psi=1.0, noise_mode="const")
    assert not torch.allclose(b[0], b[1], atol=1e-3)


def test_modulated_conv_with_demodulation_keeps_unit_variance():
    torch.manual_seed(0)
    x = torch.randn(32, 64, 24, 24)
    weight = torch.randn(48, 64, 3, 3) * 5.0  # any scale: demodulation removes it
    styles = torch.rand(32, 64) * 3 + 0.1
    f = _fir_kernel()
    y = sg.modulated_conv2d(x, weight, styles, f, demodulate=True)[:, :, 1:-1, 1:-1]  # interior: no zero padding
    std_per_channel = y.std(dim=(0, 2, 3))
    assert abs(float(y.std()) - 1.0) < 0.05
    assert float((std_per_channel - 1).abs().max()) < 0.1
    undemod = sg.modulated_conv2d(x, weight, styles, f, demodulate=False)[:, :, 1:-1, 1:-1]
    assert float(undemod.std()) > 5  # without demodulation the scale leaks through


def test_demodulation_is_the_norm_of_each_image_s_modulated_weight():
    """The [B, I]·[I, O] form equals NVlabs' per-image weights w_oik·s_i."""
    torch.manual_seed(3)
    weight, styles = torch.randn(24, 16, 3, 3), torch.rand(5, 16) * 3 + 0.1
    per_image = weight.unsqueeze(0) * styles[:, None, :, None, None]
    expected = (per_image.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()
    torch.testing.assert_close(sg.layers.demodulation(weight, styles), expected, rtol=1e-6, atol=0)


needs_fast_bf16 = pytest.mark.skipif(not bf16_is_fast("cpu"), reason="this CPU has no AMX or AVX-512 BF16")


@needs_fast_bf16
def test_cpu_downsampling_of_bf16_filters_in_float32():
    """oneDNN's strided depthwise bf16 convolution is slow on a CPU: the
    filter runs in float32 and the result is rounded once to bf16."""
    x = torch.randn(2, 3, 8, 8).bfloat16()
    y = sg.layers.downsample2d(x, _fir_kernel())
    assert y.dtype == torch.bfloat16 and y.shape == (2, 3, 4, 4)
    assert torch.equal(y, sg.layers.downsample2d(x.float(), _fir_kernel()).bfloat16())


@needs_fast_bf16
def test_mixed_precision_on_a_cpu_with_bf16_units(tmp_path):
    """The top resolutions compute in bf16 on such a CPU; training steps stay
    finite and the bf16 generator draws the float32 generator's images
    (same weights) up to bf16 rounding."""
    data = sg.TrainingImages(make_results(tmp_path, size=32), seed=0)
    trainer = sg.StyleGANTrainer(tiny_config(mixed_precision=True, num_fp16_res=2), data.shape, device="cpu")
    assert trainer.G.blocks[-1].use_bf16 and not trainer.G.blocks[0].use_bf16
    for _ in range(3):
        stats = trainer.step(data)
    assert all(torch.isfinite(v) for v in stats.values())
    fp32 = sg.Generator(**{**trainer.G_ema.kwargs, "num_fp16_res": 0}).eval()
    fp32.load_state_dict(trainer.G_ema.state_dict())
    z = torch.randn(4, trainer.cfg.z_dim)
    with torch.no_grad():
        a, b = trainer.G_ema(z, noise_mode="const"), fp32(z, noise_mode="const")
    assert a.dtype == torch.float32
    assert float((a - b).abs().max()) < 0.05 * float(b.std())
    assert not torch.equal(a, b)  # bf16 did run


def test_channels_last_changes_the_layout_not_the_numbers(tmp_path):
    torch.manual_seed(4)
    G, D = sg.Generator(32, 2, **TINY).eval(), sg.Discriminator(32, 2, channel_base=128, channel_max=16, mbstd_group=2)
    z = torch.randn(4, 16)
    img = G(z, noise_mode="const")
    logits = D(img)
    sg.networks.use_channels_last(G), sg.networks.use_channels_last(D)
    torch.testing.assert_close(G(z, noise_mode="const"), img, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(D(img), logits, rtol=1e-5, atol=1e-5)
    data = sg.TrainingImages(make_results(tmp_path, size=32), seed=0)
    trainer = sg.StyleGANTrainer(tiny_config(channels_last=True), data.shape, device="cpu")
    assert trainer.D.blocks[0].channels_last and not trainer.G_ema.blocks[0].channels_last
    assert all(torch.isfinite(v) for v in trainer.step(data).values())


def test_fir_resampling_matches_its_definition():
    """×2 up: zero insertion, pad (2, 1), [1,3,3,1]² filter with gain 4;
    ×½ down: pad 1, filter, every second pixel (StyleGAN2's upfirdn2d)."""
    torch.manual_seed(1)
    x = torch.randn(2, 3, 8, 8)
    f = _fir_kernel()
    w = f[None, None].repeat(3, 1, 1, 1)
    z = torch.zeros(2, 3, 16, 16)
    z[:, :, ::2, ::2] = x
    up_ref = F.conv2d(F.pad(z, [2, 1, 2, 1]), w * 4, groups=3)
    assert torch.allclose(sg.upsample2d(x, f), up_ref, atol=1e-5)
    down_ref = F.conv2d(F.pad(x, [1, 1, 1, 1]), w, groups=3)[:, :, ::2, ::2]
    assert torch.allclose(sg.downsample2d(x, f), down_ref, atol=1e-5)
    # a constant image stays constant away from the borders
    const = torch.ones(1, 1, 8, 8)
    assert torch.allclose(sg.upsample2d(const, f)[..., 2:-2, 2:-2], torch.ones(1, 1, 12, 12))


def test_minibatch_std_needs_a_divisible_batch():
    layer = sg.MinibatchStd(group_size=4)
    assert layer(torch.randn(8, 3, 4, 4)).shape == (8, 4, 4, 4)
    with pytest.raises(ValueError, match="group size"):
        layer(torch.randn(6, 3, 4, 4))


# --------------------------------------------------------------------------
# ADA
# --------------------------------------------------------------------------

def test_ada_controller_moves_p_toward_the_target():
    aug = AdaptiveAugment(p=0.5, target=0.6, speed_kimg=1.0)
    aug.accumulate(torch.full((16,), 3.0))  # D sure that reals are real: overfitting
    assert aug.adjust(100) == pytest.approx(0.6)
    aug.accumulate(torch.tensor([1.0, 1.0, -1.0, -1.0]))  # r_t = 0 < 0.6
    assert aug.adjust(100) == pytest.approx(0.5)
    for _ in range(10):
        aug.accumulate(-torch.ones(4))
        aug.adjust(100)
    assert aug.p == 0.0  # clamped
    fixed = AdaptiveAugment(p=0.3, target=None)
    fixed.accumulate(torch.ones(4))
    assert fixed.adjust(1000) == 0.3


@pytest.mark.parametrize("bias,direction", [(10.0, 1), (-10.0, -1)])
def test_ada_p_follows_the_discriminator_during_training(tmp_path, bias, direction):
    """p rises while D calls every real 'real' (overfitting) and falls when it does not."""
    data = sg.TrainingImages(make_results(tmp_path), seed=0)
    trainer = sg.StyleGANTrainer(tiny_config(augment_p=0.5, ada_interval=2, ada_kimg=1.0, r1_gamma=0.0,
                                             pl_weight=0.0), data.shape)
    with torch.no_grad():
        trainer.D.out.bias.fill_(bias / trainer.D.out.bias_gain)
    for _ in range(4):
        trainer.step(data)
    expected = 0.5 + direction * 2 * (4 * 2) / 1000
    assert trainer.augment.p == pytest.approx(expected)


def test_augmentations_are_differentiable_and_gated_by_p():
    torch.manual_seed(0)
    x = torch.rand(8, 3, 16, 16) * 2 - 1
    assert AdaptiveAugment(p=0.0)(x) is x
    for name in TRANSFORMS:
        aug = AdaptiveAugment([name], p=1.0, target=None)
        inp = x.clone().requires_grad_(True)
        out = aug(inp)
        assert out.shape == x.shape
        out.square().sum().backward()
        assert inp.grad is not None and inp.grad.abs().sum() > 0, name
    assert not torch.equal(AdaptiveAugment(p=1.0)(x), x)
    with pytest.raises(ValueError, match="unknown augmentation"):
        parse_transforms("xflip,hue")


def test_integer_translation_moves_whole_pixels():
    torch.manual_seed(3)
    x = torch.rand(16, 1, 16, 16)
    out = AdaptiveAugment(["xint"], p=1.0, target=None)(x)
    for i in range(len(x)):
        values = set(np.round(x[i].numpy().ravel(), 5))
        assert set(np.round(out[i].detach().numpy().ravel(), 5)) <= values  # no interpolated values


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------

def test_one_step_changes_weights_and_gives_finite_losses(tmp_path):
    data = sg.TrainingImages(make_results(tmp_path), seed=0)
    trainer = sg.StyleGANTrainer(tiny_config(), data.shape)
    before_G = {k: v.clone() for k, v in trainer.G.named_parameters()}
    before_D = {k: v.clone() for k, v in trainer.D.named_parameters()}
    stats = trainer.step(data)
    for key in ("loss_G", "loss_D", "r1", "pl"):
        assert torch.isfinite(stats[key]), key
    unchanged_G = [k for k, v in trainer.G.named_parameters() if torch.equal(v, before_G[k])]
    unchanged_D = [k for k, v in trainer.D.named_parameters() if torch.equal(v, before_D[k])]
    assert not unchanged_G and not unchanged_D, (unchanged_G, unchanged_D)


def test_training_data_batches_depend_only_on_seed_and_step(tmp_path):
    results = make_results(tmp_path, n=10)
    a, b = sg.TrainingImages(results, seed=0), sg.TrainingImages(results, seed=0)
    assert np.array_equal(real_batch(a, 7, 4, mirror=True), real_batch(b, 7, 4, mirror=True))
    # one epoch shows every image exactly once (without mirroring)
    seen = np.concatenate([real_batch(a, s, 5, mirror=False) for s in range(2)])
    assert sorted(map(bytes, seen)) == sorted(map(bytes, a.images[:]))


def test_ema_has_the_configured_half_life_and_copies_buffers():
    # half-life 1 kimg: after 1000 images of batch 10 the old average weighs ½
    beta = ema_beta(10, 10**6, half_life_kimg=1.0, rampup=None)
    assert beta**100 == pytest.approx(0.5)
    assert ema_beta(10, 0, half_life_kimg=1.0, rampup=0.05) == 0.0  # ramp-up: the first update copies
    G, G_ema = sg.Generator(16, 1, **TINY), sg.Generator(16, 1, **TINY)
    with torch.no_grad():
        G.mapping.w_avg.fill_(3.0)
    before = G_ema.mapping.layers[0].weight.detach().clone()
    update_ema(G_ema, G, beta)
    assert torch.equal(G_ema.mapping.layers[0].weight, torch.lerp(G.mapping.layers[0].weight, before, beta))
    assert torch.equal(G_ema.mapping.w_avg, G.mapping.w_avg)  # buffers are copied, not averaged


def _final_state(results):
    latest = checkpoints.load_latest_checkpoint(results / "stylegan" / "checkpoints")
    return latest[1]


def test_resume_equals_uninterrupted_training(tmp_path):
    cfg = tiny_config()  # 12 steps, checkpoint every 4, log every 2, R1/PL/ADA/mixing all active
    straight = make_results(tmp_path / "a")
    sg.train(straight, cfg, seed=3, progress=False)
    resumed = make_results(tmp_path / "b")
    first = sg.train(resumed, cfg, seed=3, progress=False, stop_after_steps=5)  # stops between checkpoints
    assert (first["steps_done"], first["resumed_from_step"], first["steps_run"]) == (5, 0, 5)
    assert not first["complete"]
    second = sg.train(resumed, cfg, seed=3, progress=False)
    assert (second["resumed_from_step"], second["steps_run"], second["steps_done"]) == (5, 7, 12)
    assert second["complete"]

    a, b = _final_state(straight), _final_state(resumed)
    assert a["step"] == b["step"] == 12
    for name in ("G", "D", "G_ema"):
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), f"{name}.{key}"
    for name in ("opt_G", "opt_D"):
        for idx, st in a[name]["state"].items():
            for key, value in st.items():
                assert torch.equal(value, b[name]["state"][idx][key]), f"{name}[{idx}].{key}"
    assert a["ada"] == b["ada"] and a["ada"]["p"] > 0
    assert torch.equal(a["pl_mean"], b["pl_mean"])

    log_a = pd.read_csv(straight / "stylegan" / "loss_log.csv")
    log_b = pd.read_csv(resumed / "stylegan" / "loss_log.csv")
    assert log_b["step"].is_unique
    same = [c for c in log_a.columns if c not in ("images_per_s", "time_s")]
    pd.testing.assert_frame_equal(log_a[same], log_b[same])
    assert {"step", "images_seen", "loss_G", "loss_D", "r1", "augment_p"} <= set(log_a.columns)


def test_training_outputs_and_rerun_is_a_no_op(tmp_path):
    results = make_results(tmp_path, channels=3)
    cfg = tiny_config(keep_checkpoints=2)
    summary = sg.train(results, cfg, seed=0, progress=False)
    out = results / "stylegan"
    assert summary["complete"] and summary["steps_done"] == cfg.total_steps == 12
    assert [s for s, _ in checkpoints.list_checkpoints(out / "checkpoints")] == [8, 12]
    assert sorted(p.name for p in (out / "grids").glob("*.png")) == [
        "step_000000004.png", "step_000000008.png", "step_000000012.png"]
    meta = json.loads((out / "generator.json").read_text())
    assert meta["complete"] and meta["generator"]["img_channels"] == 3
    G = sg.load_generator(results, device="cpu")
    assert G.resolution == 16
    again = sg.train(results, cfg, seed=0, progress=False)
    assert (again["resumed_from_step"], again["steps_run"], again["steps_done"]) == (12, 0, 12)
    assert len(pd.read_csv(out / "loss_log.csv")) == 6


def test_resume_with_other_settings_seed_or_data_is_refused(tmp_path):
    """Whatever changes the result refuses a resume and names the key; a
    longer run of the same identity continues."""
    results = make_results(tmp_path)
    sg.train(results, tiny_config(), seed=0, progress=False, stop_after_steps=4)
    with pytest.raises(ValueError, match=r"other settings \{'lr_g': \(0.002, 0.01\)\}"):
        sg.train(results, tiny_config(lr_g=0.01), seed=0, progress=False)
    with pytest.raises(ValueError, match=r"other settings \{'seed': \(0, 1\)\}.*checkpoint's values to resume"):
        sg.train(results, tiny_config(), seed=1, progress=False)
    images = np.load(results / "data" / "train.npy")
    np.save(results / "data" / "train.npy", images[::-1].copy())
    with pytest.raises(ValueError, match=r"other settings \{'data': "):
        sg.train(results, tiny_config(), seed=0, progress=False)
    np.save(results / "data" / "train.npy", images)
    longer = sg.train(results, tiny_config(total_kimg=0.064), seed=0, progress=False, stop_after_steps=1)
    assert (longer["resumed_from_step"], longer["steps_run"]) == (4, 1)


def test_a_checkpoint_from_before_the_seed_check_is_resumed_saying_so(tmp_path, capsys):
    results = make_results(tmp_path)
    sg.train(results, tiny_config(), seed=0, progress=False, stop_after_steps=4)
    path = checkpoints.checkpoint_path(results / "stylegan" / "checkpoints", 4)
    state = checkpoints.load_state(path)
    state["config"] = {k: v for k, v in state["config"].items() if k not in ("seed", "data")}
    state["config_hash"] = common.stable_hash(state["config"])
    checkpoints.save_state(path, state)
    summary = sg.train(results, tiny_config(), seed=0, progress=False, stop_after_steps=1)
    assert summary["resumed_from_step"] == 4
    assert "predates the data and seed check" in capsys.readouterr().out


def test_a_resumed_run_starts_from_the_checkpoint_s_weights(tmp_path):
    """The weights of a tampered checkpoint show in the next logged losses
    and the final weights: a run that ignored the checkpoint and trained
    from step 0 again would end as the untouched one."""
    cfg = tiny_config(total_kimg=0.032, log_every=1)  # 8 steps, checkpoint every 4
    straight, tampered = make_results(tmp_path / "a"), make_results(tmp_path / "b")
    sg.train(straight, cfg, seed=3, progress=False)
    sg.train(tampered, cfg, seed=3, progress=False, stop_after_steps=4)
    path = checkpoints.checkpoint_path(tampered / "stylegan" / "checkpoints", 4)
    state = checkpoints.load_state(path)
    name = next(k for k in state["D"] if k.endswith("weight"))
    state["D"][name] = state["D"][name] * 1.5
    checkpoints.save_state(path, state)
    summary = sg.train(tampered, cfg, seed=3, progress=False)
    assert (summary["resumed_from_step"], summary["steps_run"], summary["steps_done"]) == (4, 4, 8)
    a, b = _final_state(straight), _final_state(tampered)
    assert not torch.equal(a["D"][name], b["D"][name])
    log_a, log_b = (pd.read_csv(r / "stylegan" / "loss_log.csv").set_index("step") for r in (straight, tampered))
    assert log_a.loc[1:4, "loss_D"].tolist() == log_b.loc[1:4, "loss_D"].tolist()
    assert log_a.loc[5, "loss_D"] != log_b.loc[5, "loss_D"]


def test_bad_training_data_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="train.npy"):
        sg.TrainingImages(tmp_path, seed=0)
    results = make_results(tmp_path)
    common.write_json(results / "data" / "meta.json", {"channels": ["a"], "image_size": 16})
    with pytest.raises(ValueError, match="disagree"):
        sg.TrainingImages(results, seed=0)


def test_config_rejects_unknown_keys_and_odd_batches():
    with pytest.raises(config.ConfigError, match="lr"):
        config.build("train_stylegan", {"batch_size": 8, "lr": 1.0})
    with pytest.raises(config.ConfigError, match="multiple of mbstd_group"):
        config.build("train_stylegan", {"batch_size": 6, "mbstd_group": 4})


# --------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------

@pytest.fixture()
def trained(tmp_path):
    results = make_results(tmp_path, channels=2)
    sg.train(results, tiny_config(total_kimg=0.016), seed=0, progress=False)
    return results


def test_sampling_is_per_seed_and_batch_independent(trained, tmp_path):
    path = sg.sample(trained, n_images=7, first_seed=2, batch_size=3, progress=False)
    images = np.load(path)
    assert images.shape == (7, 2, 16, 16) and images.dtype == np.uint8
    seeds = pd.read_csv(path.with_name("stylegan_seeds.csv"))
    assert seeds["seed"].tolist() == list(range(2, 9))
    G = sg.load_generator(trained, device="cpu")
    assert np.array_equal(sg.generate_images(G, list(range(2, 9))), images)  # one call of 7
    assert np.array_equal(sg.generate_images(G, [6]), images[4:5])  # image 4 alone
    batched = sg.generate_images(G, list(range(2, 9)), batch_invariant=False)
    assert np.abs(batched.astype(int) - images).max() <= 1  # batched: rounding differences only
    assert len({images[i].tobytes() for i in range(7)}) == 7
    # per-image seeded noise is batch independent as well
    noisy_all = sg.generate_images(G, [5, 6, 7], noise_mode="random")
    noisy_one = sg.generate_images(G, [6], noise_mode="random")
    assert np.array_equal(noisy_all[1:2], noisy_one)
    # finished output is kept, a re-run returns it unchanged
    assert sg.sample(trained, n_images=7, first_seed=2, batch_size=5, progress=False) == path
    assert np.array_equal(np.load(path), images)


def test_sampling_without_a_trained_model_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="notebook 02"):
        sg.sample(tmp_path, n_images=2, first_seed=0, batch_size=2, progress=False)


# --------------------------------------------------------------------------
# GPU
# --------------------------------------------------------------------------

@pytest.mark.gpu
def test_gpu_step_with_mixed_precision(tmp_path):
    data = sg.TrainingImages(make_results(tmp_path, size=32), seed=0)
    trainer = sg.StyleGANTrainer(tiny_config(mixed_precision=True, num_fp16_res=2, conv_clamp=256),
                                 data.shape, device="cuda")
    for _ in range(3):
        stats = trainer.step(data)
    assert all(torch.isfinite(v) for v in stats.values())
    G = trainer.G_ema
    assert sg.generate_images(G, [0, 1]).shape == (2, 2, 32, 32)


def test_a_checkpoint_s_generator_is_the_ema_generator_of_that_step(tmp_path):
    """The audits over training sample each kept checkpoint: the last one is the exported generator."""
    results = make_results(tmp_path, channels=2)
    sg.train(results, tiny_config(total_kimg=0.032, keep_checkpoints=0), seed=0, progress=False)
    steps = sg.checkpoint_steps(results)
    assert steps == [4, 8]
    final = sg.load_generator(results, "cpu").state_dict()
    last = sg.checkpoint_generator(results, 8, "cpu").state_dict()
    first = sg.checkpoint_generator(results, 4, "cpu").state_dict()
    assert all(torch.equal(final[k], last[k]) for k in final)
    assert not all(torch.equal(final[k], first[k]) for k in final)
    with pytest.raises(FileNotFoundError, match=r"no StyleGAN checkpoint at step 3 \(kept: \[4, 8\]\)"):
        sg.checkpoint_generator(results, 3)


@pytest.mark.parametrize("damage", ["older config", "torn config", "no config"])
def test_a_finished_run_found_again_re_exports_a_stale_generator(tmp_path, damage):
    """A kill between the exported generator's weights and its config leaves
    weights of the last step beside the config of an earlier one (or none):
    the run found finished again exports both anew (the kill test met this)."""
    results = make_results(tmp_path)
    cfg = tiny_config()
    sg.train(results, cfg, seed=0, device="cpu", progress=False)
    exported = results / "stylegan" / "generator.json"
    final = json.loads(exported.read_text())
    if damage == "older config":
        exported.write_text(json.dumps({**final, "step": final["step"] // 2, "complete": False}))
    elif damage == "torn config":
        exported.write_text(exported.read_text()[:20])
    else:
        exported.unlink()
    summary = sg.train(results, cfg, seed=0, device="cpu", progress=False)
    assert summary["steps_run"] == 0
    again = json.loads(exported.read_text())
    assert again["step"] == final["step"] and again["complete"]
