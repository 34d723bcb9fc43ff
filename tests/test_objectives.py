"""The training objectives against their formulas, written out here on fixed
random draws and tiny networks: the diffusion loss for ε- and v-prediction
(the noise schedule computed here from the betas, not by the scheduler under
test), one AdamW step and the EMA; StyleGAN's non-saturating losses, R1
(γ/2·‖∇ₓD(x)‖²) and path-length terms, seen in the weights the trainer's
phases leave behind, and its EMA.

Why through the updated weights: a penalty multiplied by 0 still reports
its value in the statistics; only the weights show whether it was applied,
and with how much weight. The StyleGAN phases are run with plain SGD in
place of the (lazy) Adam, so a weight change is the gradient itself; Adam's
lazy settings are checked on their own.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import common, config, diffusion
from helpers import stylegan as sg
from helpers.diffusion.trainer import setup_training, train_step
from helpers.stylegan.trainer import _requires_grad, ema_beta, input_gradient_norm2, lazy_adam, path_lengths


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------
# Diffusion
# --------------------------------------------------------------------------

DIFFUSION = dict(block_out_channels=[8, 16], layers_per_block=1, attention_resolutions=[8], attention_head_dim=8,
                 norm_num_groups=4, num_train_timesteps=20, batch_size=4, learning_rate=2e-3, lr_warmup_steps=0,
                 max_grad_norm=None, ema_decay=0.9, ema_warmup=False, zero_init=False, seed=3, num_threads=1)


def _alphas_cumprod(T: int) -> np.ndarray:
    """guided-diffusion's linear schedule, 1e-4 → 0.02 scaled by 1000/T, in float64."""
    betas = np.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T, dtype=np.float64)
    return np.cumprod(1.0 - betas)


def _images(seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).uniform(-1, 1, (4, 2, 16, 16)).astype(np.float32))


def _hand_diffusion_loss(unet, images, generator_seed: int, prediction_type: str, T: int) -> torch.Tensor:
    """The loss of one step written out: ε ~ N(0, I) and t ~ U{0..T-1} drawn
    in the trainer's order from a generator of the step's seed,
    x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε, target ε or v = √ᾱ_t·ε − √(1−ᾱ_t)·x₀."""
    g = torch.Generator().manual_seed(generator_seed)
    noise = torch.randn(images.shape, generator=g)
    t = torch.randint(0, T, (images.shape[0],), generator=g)
    ab = torch.from_numpy(_alphas_cumprod(T))[t].view(-1, 1, 1, 1)
    x0, eps = images.double(), noise.double()
    noisy = (ab.sqrt() * x0 + (1 - ab).sqrt() * eps).float()
    target = eps if prediction_type == "epsilon" else ab.sqrt() * eps - (1 - ab).sqrt() * x0
    prediction = unet(noisy, t).sample
    return (prediction.double() - target).square().mean()


@pytest.mark.parametrize("prediction_type,clip", [("epsilon", None), ("v_prediction", 0.05)])
def test_diffusion_step_minimises_the_written_out_loss(prediction_type, clip):
    s = config.build("train_diffusion", {**DIFFUSION, "prediction_type": prediction_type, "max_grad_norm": clip})
    setup = setup_training(s, channels=2, image_size=16, device="cpu")
    reference = copy.deepcopy(setup.unet)
    images = _images()
    loss, grad_norm = train_step(setup, images, torch.Generator().manual_seed(11))

    expected = _hand_diffusion_loss(reference, images, 11, prediction_type, s.num_train_timesteps)
    assert float(loss) == pytest.approx(float(expected.detach()), rel=2e-6)
    # the other target gives another loss: the comparison can tell them apart
    other = "epsilon" if prediction_type == "v_prediction" else "v_prediction"
    assert float(_hand_diffusion_loss(reference, images, 11, other, s.num_train_timesteps).detach()) != pytest.approx(
        float(expected.detach()), rel=1e-3)

    # the weights moved by one AdamW step on the gradient of that loss (clipped to max_grad_norm)
    expected.float().backward()
    if clip:
        norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), clip)
        assert float(grad_norm) == pytest.approx(float(norm), rel=1e-5) and float(norm) > clip
    adamw = torch.optim.AdamW(reference.parameters(), lr=s.learning_rate, weight_decay=s.weight_decay,
                              betas=(0.9, 0.999), eps=1e-8)
    adamw.step()
    # Adam's first step is lr·g/|g|: where a gradient is rounding noise (the keys' bias of an attention
    # layer, which softmax cannot see) its sign is arbitrary, so those entries are left out
    checked = 0
    for (name, got), want in zip(setup.unet.named_parameters(), reference.parameters(), strict=True):
        real = want.grad.abs() > 1e-6 * float(loss)
        assert torch.allclose(got[real], want[real], rtol=0, atol=1e-3 * s.learning_rate), name
        checked += int(real.sum())
    assert checked > 0.9 * sum(p.numel() for p in reference.parameters())


def test_diffusion_ema_follows_its_decay():
    """diffusers' EMAModel as configured (``ema_warmup: false``): the first
    update copies the weights (its decay is 0 at step 1; guided-diffusion
    would keep 0.9999 of the initial weights), every later one keeps
    ``ema_decay`` of the average."""
    s = config.build("train_diffusion", DIFFUSION)
    setup = setup_training(s, channels=2, image_size=16, device="cpu")
    train_step(setup, _images(0), torch.Generator().manual_seed(1))
    first = [p.detach().clone() for p in setup.unet.parameters()]
    for shadow, w in zip(setup.ema.shadow_params, first):
        assert torch.equal(shadow, w)
    train_step(setup, _images(1), torch.Generator().manual_seed(2))
    d = s.ema_decay
    for shadow, w1, w2 in zip(setup.ema.shadow_params, first, setup.unet.parameters()):
        assert torch.allclose(shadow, d * w1 + (1 - d) * w2, rtol=0, atol=4e-7)  # a few float32 ulps at 1
        assert not torch.equal(w1, w2)


def test_scheduler_noise_matches_the_written_out_schedule():
    s = config.build("train_diffusion", DIFFUSION)
    sched = diffusion.build_noise_scheduler(s)
    assert np.allclose(sched.alphas_cumprod.double().numpy(), _alphas_cumprod(s.num_train_timesteps), rtol=1e-6)


# --------------------------------------------------------------------------
# StyleGAN
# --------------------------------------------------------------------------

STYLEGAN = dict(z_dim=16, w_dim=16, mapping_layers=2, channel_base=128, channel_max=16, batch_size=4,
                mbstd_group=2, r1_gamma=3.0, r1_interval=4, pl_weight=2.0, pl_interval=3, pl_batch_shrink=2,
                pl_decay=0.01, augment_p=0.0, style_mixing_prob=0.9, ema_kimg=0.01, ema_rampup=None)
LR = 0.05


def _trainers(**overrides):
    """The trainer under test (plain SGD of rate LR in place of Adam) and an
    identical reference copy for the hand computation."""
    cfg = config.TrainStyleGANSettings(**{**STYLEGAN, **overrides})
    trainer = sg.StyleGANTrainer(cfg, (2, 16, 16), seed=5, device="cpu")
    reference = copy.deepcopy(trainer)
    trainer.opt_G = torch.optim.SGD(trainer.G.parameters(), lr=LR)
    trainer.opt_D = torch.optim.SGD(trainer.D.parameters(), lr=LR)
    return cfg, trainer, reference


def _reals(n: int = 4) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(7).uniform(-1, 1, (n, 2, 16, 16)).astype(np.float32))


def _sgd(module: torch.nn.Module, loss: torch.Tensor) -> None:
    params = [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    with torch.no_grad():
        for p, g in zip(params, grads):
            if g is not None:
                p.sub_(LR * g)


def _assert_same_weights(got: torch.nn.Module, want: torch.nn.Module, atol: float = 1e-6) -> None:
    moved = 0
    for (name, a), b in zip(got.named_parameters(), want.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=atol), (name, float((a - b).abs().max()))
        moved += 1
    assert moved


def test_discriminator_phase_is_the_non_saturating_loss_then_r1():
    cfg, trainer, ref = _trainers()
    reals = _reals()
    _requires_grad(trainer.D, True)
    torch.manual_seed(21)
    stats = trainer._discriminator_updates(reals, regularize=True)

    # by hand: -log σ(-D(G(z))) - log σ(D(x)), then R1 = γ/2 ‖∇ₓD(x)‖² (× the lazy interval)
    _requires_grad(ref.D, True)
    torch.manual_seed(21)
    with torch.no_grad():
        fake, _ = ref.run_G(torch.randn(len(reals), cfg.z_dim))
    on_fake, on_real = ref.D(fake), ref.D(reals)
    loss = -F.logsigmoid(-on_fake).mean() - F.logsigmoid(on_real).mean()
    assert float(stats["loss_D"]) == pytest.approx(float(loss.detach()), rel=1e-6)
    _sgd(ref.D, loss)
    x = reals.clone().requires_grad_(True)
    (grad_x,) = torch.autograd.grad(ref.D(x).sum(), x, create_graph=True)
    r1 = grad_x.square().flatten(1).sum(1)
    _sgd(ref.D, cfg.r1_gamma / 2 * r1.mean() * cfg.r1_interval)
    assert float(stats["r1"]) == pytest.approx(float(r1.mean().detach()), rel=1e-5)
    _assert_same_weights(trainer.D, ref.D)

    # without the R1 update the weights are elsewhere: the comparison sees the penalty
    _, plain, _ = _trainers()
    _requires_grad(plain.D, True)
    torch.manual_seed(21)
    plain._discriminator_updates(reals, regularize=False)
    gap = max(float((a - b).detach().abs().max()) for a, b in zip(plain.D.parameters(), ref.D.parameters()))
    assert gap > 1e-4


def test_generator_phase_is_the_non_saturating_loss_then_path_length():
    cfg, trainer, ref = _trainers()
    _requires_grad(trainer.G, True)
    torch.manual_seed(33)
    stats = trainer._generator_updates(cfg.batch_size, regularize=True)

    _requires_grad(ref.G, True)
    torch.manual_seed(33)
    fake, _ = ref.run_G(torch.randn(cfg.batch_size, cfg.z_dim))
    loss = -F.logsigmoid(ref.D(fake)).mean()  # -log σ(D(G(z)))
    assert float(stats["loss_G"]) == pytest.approx(float(loss.detach()), rel=1e-6)
    _sgd(ref.G, loss)
    # path length: a = ‖J_wᵀ y‖ with y ~ N(0, I)/√(HW), pulled towards its running mean
    fake, ws = ref.run_G(torch.randn(cfg.batch_size // cfg.pl_batch_shrink, cfg.z_dim))
    y = torch.randn_like(fake) / math.sqrt(fake.shape[2] * fake.shape[3])
    (jt_y,) = torch.autograd.grad((fake * y).sum(), ws, create_graph=True)
    lengths = jt_y.square().sum(dim=2).mean(dim=1).sqrt()
    running = 0.0 + cfg.pl_decay * (lengths.mean() - 0.0)  # pl_mean starts at 0
    penalty = (lengths - running).square()
    _sgd(ref.G, cfg.pl_weight * penalty.mean() * cfg.pl_interval)
    assert float(stats["pl"]) == pytest.approx(float(penalty.mean().detach()), rel=1e-5)
    assert float(trainer.pl_mean) == pytest.approx(float(running.detach()), rel=1e-6)
    _assert_same_weights(trainer.G, ref.G)


def test_path_length_of_a_linear_map_is_its_transpose_applied():
    """images = A·w (per layer): J_wᵀ y = Aᵀ y exactly."""
    torch.manual_seed(0)
    A = torch.randn(3, 5, 2, 4, 4)  # [ws, w_dim, C, H, W]
    ws = torch.randn(6, 3, 5, requires_grad=True)
    images = torch.einsum("nlk,lkchw->nchw", ws, A)
    torch.manual_seed(9)
    got = path_lengths(images, ws)
    torch.manual_seed(9)
    y = torch.randn(6, 2, 4, 4) / 4.0  # √(H·W) = 4
    jt_y = torch.einsum("lkchw,nchw->nlk", A, y)
    want = jt_y.square().sum(2).mean(1).sqrt()
    assert torch.allclose(got, want, rtol=1e-5, atol=0)


def test_r1_norm_of_a_quadratic_discriminator():
    """D(x) = Σ b·x²: ∇ₓD = 2·b·x, so ‖∇ₓD‖² = Σ 4·b²·x² per image."""
    torch.manual_seed(1)
    b = torch.rand(2, 4, 4)
    x = torch.randn(3, 2, 4, 4, requires_grad=True)
    got = input_gradient_norm2((b * x.square()).sum(dim=[1, 2, 3]), x)
    want = (4 * b.square() * x.detach().square()).sum(dim=[1, 2, 3])
    assert torch.allclose(got, want, rtol=1e-6, atol=0)


def test_lazy_regularization_scales_adam():
    """StyleGAN2's lazy regularization: k/(k+1) applied to lr and to both betas."""
    w = [torch.zeros(2, requires_grad=True)]
    opt = lazy_adam(w, 0.002, (0.0, 0.99), reg_every=16)
    group = opt.param_groups[0]
    assert group["lr"] == pytest.approx(0.002 * 16 / 17) and group["betas"] == pytest.approx((0.0, 0.99 ** (16 / 17)))
    plain = lazy_adam(w, 0.002, (0.5, 0.99), reg_every=0).param_groups[0]
    assert plain["lr"] == 0.002 and plain["betas"] == (0.5, 0.99)


def test_stylegan_ema_after_a_step_is_the_weighted_average(tmp_path):
    """G_ema ← β·G_ema + (1−β)·G with β = ½^(batch / half-life) (no ramp-up);
    buffers copied."""
    cfg = config.TrainStyleGANSettings(**{**STYLEGAN, "ema_kimg": 0.02})
    trainer = sg.StyleGANTrainer(cfg, (2, 16, 16), seed=5, device="cpu")
    (tmp_path / "data").mkdir()
    np.save(tmp_path / "data" / "train.npy", np.random.default_rng(0).integers(0, 256, (8, 2, 16, 16), np.uint8))
    common.write_json(tmp_path / "data" / "meta.json", {"channels": ["a", "b"], "image_size": 16})
    data = sg.TrainingImages(tmp_path, seed=5)
    trainer.step(data)
    old = {k: v.clone() for k, v in trainer.G_ema.named_parameters()}
    trainer.step(data)
    beta = 0.5 ** (cfg.batch_size / (cfg.ema_kimg * 1000))
    assert ema_beta(cfg.batch_size, cfg.batch_size, cfg.ema_kimg, None) == pytest.approx(beta, rel=1e-12)
    current = dict(trainer.G.named_parameters())
    for name, avg in trainer.G_ema.named_parameters():
        assert torch.allclose(avg, beta * old[name] + (1 - beta) * current[name], rtol=1e-6, atol=1e-6), name
    for (name, a), b in zip(trainer.G_ema.named_buffers(), trainer.G.buffers()):
        assert torch.equal(a, b), name
    # with ramp-up, half-life ≤ rampup × images seen: 400 images at 0.05 → 20 images
    assert ema_beta(4, 400, 10.0, 0.05) == pytest.approx(0.5 ** (4 / 20), rel=1e-12)
