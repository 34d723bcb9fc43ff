"""The optimal denoiser (positive control): sampled through helpers.diffusion's
own loop, it reproduces training images."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import config, diffusion, memorization
from helpers import optimal_denoiser as od

T = 30
SEEDS = list(range(2, 14))


@pytest.fixture(scope="module")
def training() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(6, 2, 8, 8), dtype=np.uint8)


def scheduler(prediction_type: str = "epsilon", steps: int = T):
    """The study's scheduler (x̂₀-prediction, which the schema does not offer, by overriding its config)."""
    from diffusers import DDPMScheduler

    kind = prediction_type if prediction_type != "sample" else "epsilon"
    settings = config.build("train_diffusion", {"num_train_timesteps": steps, "prediction_type": kind})
    sched = diffusion.build_noise_scheduler(settings)
    return sched if kind == prediction_type else DDPMScheduler.from_config(sched.config, prediction_type="sample")


def unit(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).astype(np.float64)


@pytest.fixture(scope="module", params=["epsilon", "v_prediction"])
def samples(request, training):
    generate = od.make_generate(training, scheduler(request.param), device="cpu", num_threads=1)
    return request.param, generate, generate(SEEDS)


def test_every_sample_is_a_training_image(samples, training):
    _, _, images = samples
    assert images.dtype == np.uint8 and images.shape == (len(SEEDS), 2, 8, 8)
    diff = np.abs(images[:, None].astype(int) - training[None].astype(int)).reshape(len(SEEDS), len(training), -1)
    worst = diff.max(axis=2)                         # max |Δ| to each training image
    assert worst.min(axis=1).max() <= 2              # within 2 grey levels of one training image
    d = np.sqrt(((unit(images)[:, None] - unit(training)[None]) ** 2).sum(-1))
    d.sort(axis=1)
    assert np.all(d[:, 0] <= 0.01 * d[:, 1])         # nearest ≪ second nearest
    reached = np.unique(np.argmin(worst, axis=1))
    assert len(reached) >= 3                          # different seeds, different training images


def test_memorized_by_the_l2_criterion(samples, training):
    _, _, images = samples
    table = memorization.nearest_l2(images, training)
    assert np.all(memorization.l2_ratio_flags(table["nearest_distance"], table["second_distance"]) == 1)


def test_same_seed_same_image_whatever_the_batch(samples):
    _, generate, images = samples
    alone = generate([SEEDS[3]])
    assert np.array_equal(alone[0], images[3])
    pair = generate([SEEDS[7], SEEDS[1]])
    assert np.array_equal(pair, images[[7, 1]])


def test_starts_from_the_trained_models_noise(training):
    """The first network call sees exactly seed s's starting noise of helpers.diffusion."""
    pipe = od.as_pipeline(training, scheduler())
    seen = []
    forward = pipe.unet.forward

    def spy(sample, timestep, return_dict=True, **kw):
        seen.append(sample.detach().clone())
        return forward(sample, timestep, return_dict=return_dict, **kw)

    pipe.unet.forward = spy
    diffusion.sample_images(pipe.unet, pipe.scheduler, [5, 9], device="cpu")
    expected = torch.cat([torch.randn((1, 2, 8, 8), generator=diffusion.seeded_generator(s)) for s in (5, 9)])
    assert len(seen) == T
    assert torch.equal(seen[0], expected)


def test_ddim_sampler_also_returns_training_images(training):
    images = od.make_generate(training, scheduler(), sampler="ddim", num_inference_steps=10, device="cpu",
                              num_threads=1)(SEEDS[:4])
    diff = np.abs(images[:, None].astype(int) - training[None].astype(int)).reshape(4, len(training), -1).max(2)
    assert diff.min(axis=1).max() <= 2


def brute_force_mean(model: od.OptimalDenoiser, x: torch.Tensor, alpha_bar: float, training: np.ndarray):
    xi = torch.from_numpy(training.reshape(len(training), -1)).float().div(127.5).sub(1.0).double()
    xf = x.double().reshape(len(x), -1)
    d2 = ((xf[:, None] - alpha_bar ** 0.5 * xi[None]) ** 2).sum(-1)
    w = torch.softmax(-d2 / (2 * (1 - alpha_bar)), dim=1)
    return w @ xi, w


@pytest.mark.parametrize("chunk_mb", [1e-9, 64.0])   # one image per chunk, or all at once
def test_posterior_mean_matches_the_formula(training, chunk_mb):
    model = od.OptimalDenoiser(training, scheduler(), chunk_mb=chunk_mb)
    x = torch.randn((4, 2, 8, 8), generator=torch.Generator().manual_seed(1)) * 1.2
    for alpha_bar in (0.02, 0.5, 0.97):
        mean, w = brute_force_mean(model, x, alpha_bar, training)
        torch.testing.assert_close(model.posterior_mean(x, alpha_bar), mean, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(model.weights(x, alpha_bar), w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_the_scheduler_recovers_the_posterior_mean(training, prediction_type):
    sched = scheduler(prediction_type)
    model = od.OptimalDenoiser(training, sched)
    x = torch.randn((3, 2, 8, 8), generator=torch.Generator().manual_seed(2))
    t = 12
    out = model(x, torch.tensor(t).expand(3)).sample
    assert out.dtype == torch.float32 and out.shape == x.shape
    x0 = sched.step(out, t, x, generator=torch.Generator().manual_seed(0)).pred_original_sample
    mean = model.posterior_mean(x, sched.alphas_cumprod[t]).float().reshape(x.shape)
    torch.testing.assert_close(x0, mean, rtol=0, atol=1e-5)


def test_finite_at_large_t_and_far_inputs(training):
    model = od.OptimalDenoiser(training, scheduler())
    x = torch.randn((2, 2, 8, 8), generator=torch.Generator().manual_seed(3))
    for scale in (1.0, 1e3):
        eps = model(x * scale, T - 1, return_dict=False)[0]
        assert torch.isfinite(eps).all()
    eps0 = model(x * 1e3, 0).sample       # tiny noise, far from every image: still finite
    assert torch.isfinite(eps0).all()


def test_weights_are_one_hot_at_tiny_noise(training):
    model = od.OptimalDenoiser(training, scheduler())
    xi = torch.from_numpy(training).float().div(127.5).sub(1.0)
    # an exact training image at ᾱ = 1 (variance 0: the floor) and at 1 − ᾱ = 1e-12: distance 0, no NaN
    for alpha_bar in (1.0, 1.0 - 1e-12):
        w = model.weights(xi[[4, 1]], alpha_bar)
        assert torch.isfinite(w).all()
        assert torch.equal(w.argmax(1), torch.tensor([4, 1])) and torch.all(w.max(1).values == 1.0)
        assert torch.isfinite(model.posterior_mean(xi[[4]], alpha_bar)).all()
    # slightly off a training image, at the first DDPM step's noise level
    near = xi[[2]] + 0.01 * torch.randn((1, 2, 8, 8), generator=torch.Generator().manual_seed(4))
    a0 = float(scheduler().alphas_cumprod[0])
    w = model.weights(near * a0 ** 0.5, a0)
    assert int(w.argmax()) == 2 and float(w.max()) > 1 - 1e-12


def write_study(results, training):
    data = results / "data"
    data.mkdir(parents=True)
    np.save(data / "train.npy", training)
    (data / "meta.json").write_text(json.dumps({"channels": ["a", "b"], "image_size": 8}))


def test_sample_writes_one_more_model(tmp_path, training):
    write_study(tmp_path, training)
    settings = {"num_train_timesteps": 20, "prediction_type": "v_prediction"}
    out = od.sample(tmp_path, 5, first_seed=2, batch_size=2, device="cpu", progress=False, settings=settings,
                    num_threads=1)
    assert out == tmp_path / "samples" / "optimal_denoiser.npy"
    images = np.load(out)
    seeds = pd.read_csv(tmp_path / "samples" / "optimal_denoiser_seeds.csv")
    assert images.shape == (5, 2, 8, 8) and images.dtype == np.uint8
    assert seeds["seed"].tolist() == [2, 3, 4, 5, 6]
    exact = (images[:, None] == training[None]).reshape(5, len(training), -1).all(-1).any(1)
    assert exact.mean() >= 0.8
    # finished: returned as it is; the same images as a direct generate
    assert od.sample(tmp_path, 5, 2, 3, device="cpu", progress=False, settings=settings) == out
    direct = od.make_generate(training, scheduler("v_prediction", 20), device="cpu", num_threads=1)([4])
    assert np.array_equal(direct[0], images[2])
    # another schedule is refused instead of mixed in
    with pytest.raises(ValueError, match="were made with"):
        od.sample(tmp_path, 5, 2, 2, device="cpu", progress=False, settings={"num_train_timesteps": 25})


def test_scheduler_of_the_trained_model(tmp_path, training):
    with pytest.raises(FileNotFoundError, match="no trained diffusion scheduler"):
        od.noise_scheduler(tmp_path)
    trained = scheduler("v_prediction", 20)
    trained.save_pretrained(diffusion.pipeline_dir(tmp_path) / "scheduler")
    found = od.noise_scheduler(tmp_path)
    assert od._schedule(found) == od._schedule(trained)
    assert od._schedule(od.noise_scheduler(tmp_path, {"num_train_timesteps": 20,
                                                      "prediction_type": "v_prediction"})) == od._schedule(trained)
    with pytest.raises(ValueError, match="must be sampled like the trained model"):
        od.noise_scheduler(tmp_path, {"num_train_timesteps": 30, "prediction_type": "v_prediction"})


def test_rejects_what_it_cannot_use(training):
    with pytest.raises(ValueError, match="uint8"):
        od.OptimalDenoiser(training.astype(np.float32), scheduler())
    with pytest.raises(ValueError, match="H = W"):
        od.OptimalDenoiser(training[:, :, :, :4], scheduler())


def test_a_run_without_a_diffusion_model_samples_with_the_kept_schedule(tmp_path, training):
    """A StyleGAN-only arm (profile reference_noaug): step 04 keeps the
    train_diffusion settings beside the samples, and the optimal denoiser
    samples with them; a trained model's own scheduler wins over them."""
    write_study(tmp_path, training)
    assert not od.has_trained_schedule(tmp_path)
    settings = config.build("train_diffusion", {"num_train_timesteps": 20, "prediction_type": "v_prediction"})
    kept = od.write_schedule(tmp_path, settings)
    assert kept == od.schedule_file(tmp_path) and kept.is_file()
    assert od._schedule(od.noise_scheduler(tmp_path)) == od._schedule(scheduler("v_prediction", 20))
    out = od.sample(tmp_path, 3, first_seed=2, batch_size=3, device="cpu", progress=False, num_threads=1)
    direct = od.make_generate(training, scheduler("v_prediction", 20), device="cpu", num_threads=1)([2, 3, 4])
    assert np.array_equal(np.load(out), direct)
    scheduler("epsilon", 30).save_pretrained(diffusion.pipeline_dir(tmp_path) / "scheduler")
    assert od.has_trained_schedule(tmp_path)
    assert od._schedule(od.noise_scheduler(tmp_path)) == od._schedule(scheduler("epsilon", 30))
