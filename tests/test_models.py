"""The model registry: a third model is one package (here: a few functions)
and one entry, and every registry-driven path takes it — sampling on every
run, the figures' names and colours, the sweep's legend, the sample counts,
the audit and the criteria."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import common, config, criteria, models, sampling, steps, sweep_figures
from helpers.figures import COLOURS, display_name, producer

# --------------------------------------------------------------------------
# The toy model: "trains" by storing the training set's mean image, samples
# that mean plus a little seeded noise (a model that learns one image)
# --------------------------------------------------------------------------

def train_mean(run, settings, *, progress: bool = True, parallel: bool = False) -> dict:
    train = np.load(Path(run) / "data" / "train.npy").astype(np.float64)
    out = Path(run) / "mean_image"
    out.mkdir(exist_ok=True)
    np.save(out / "mean.npy", train.mean(axis=0))
    summary = {"n_train": len(train), "complete": True}
    common.write_json(out / "summary.json", summary)
    return summary


def sample_mean(run, settings, *, progress: bool = True, parallel: bool = False) -> Path:
    mean = np.load(Path(run) / "mean_image" / "mean.npy")

    def generate(seeds):
        noise = np.stack([np.random.default_rng(s).normal(0, 2.0, mean.shape) for s in seeds])
        return np.clip(np.rint(mean + noise), 0, 255).astype(np.uint8)

    return sampling.sample_to_npy(generate, sampling.samples_path(run, "mean_image"), 3, settings.first_seed,
                                  mean.shape, batch_size=2, progress=progress)


@pytest.fixture
def toy_model():
    entry = models.register(models.Model(
        "mean_image", "mean image", "tab:purple", sample_mean, train_mean, section="train_mean_image",
        notebook="03_train_mean_image", loss_columns=("loss",), n_samples=lambda settings: 3))
    yield entry
    models.unregister("mean_image")


def make_run(run: Path, n_train: int = 6, n_test: int = 5) -> None:
    rng = np.random.default_rng(0)
    data = run / "data"
    data.mkdir(parents=True)
    np.save(data / "train.npy", rng.integers(0, 256, (n_train, 1, 8, 8), dtype=np.uint8))
    np.save(data / "test.npy", rng.integers(0, 256, (n_test, 1, 8, 8), dtype=np.uint8))
    for split, n in (("train", n_train), ("test", n_test)):
        common.write_csv(data / f"{split}.csv", pd.DataFrame({"index": range(n), "subject": [f"S{i}" for i in range(n)],
                                                                "slice": [0] * n}))
    common.write_json(data / "meta.json", {"dataset": "toy", "channels": ["gray"], "image_size": 8,
                                           "n_train": n_train, "n_test": n_test})


def test_the_built_in_entries():
    assert models.names() == ["stylegan", "diffusion", "optimal_denoiser", "gaussian_control"]
    assert models.names(controls=False) == ["stylegan", "diffusion"]
    assert [m.section for m in models.trainable()] == ["train_stylegan", "train_diffusion"]
    assert models.by_section("train_stylegan").name == "stylegan"
    assert steps.jobs() == ("train_stylegan", "train_diffusion", "sample", "correlate")
    # the names and colours every figure shares are the registry's, the optimal denoiser's included
    assert display_name("optimal_denoiser") == "optimal denoiser" and COLOURS["optimal_denoiser"] == "tab:red"
    assert producer("stylegan/summary.json") == "02_train_stylegan"
    cfg = config.SampleSettings(models=["stylegan", "diffusion", "optimal_denoiser"], n_stylegan=4, n_diffusion=2)
    assert models.sample_counts(cfg) == {"stylegan": 4, "diffusion": 2}  # no optimal-denoiser images asked


def test_bad_entries_and_unknown_names_are_refused():
    with pytest.raises(ValueError, match="registered already"):
        models.register(models.Model("stylegan", "x", "k", sample_mean))
    with pytest.raises(ValueError, match="names no settings section"):
        models.register(models.Model("untrained", "x", "k", sample_mean, train_mean))
    with pytest.raises(KeyError, match="sample.models: unknown model 'gan3'"):
        steps.sample_run("/nowhere", _settings(["gan3"]))


def _settings(names):
    return config.SampleSettings(models=list(names), n_stylegan=1)


def test_a_third_model_is_one_entry_through_the_registry_driven_paths(tmp_path, toy_model):
    run = tmp_path / "toy"
    make_run(run)
    cfg = _settings(["mean_image", "stylegan"])
    assert steps.sample_run(run, cfg) == {}  # not trained yet: nothing to sample (stylegan neither)
    # its training step: the runner's, on every run (settings: any step's, here the common ones)
    summaries = steps.for_every_run(run, steps.train_run("train_mean_image"), config.StepSettings())
    assert summaries == {"all": {"n_train": 6, "complete": True}}
    assert "train_mean_image" in steps.jobs() and producer("mean_image/summary.json") == "03_train_mean_image"
    written = steps.sample_every_run(run, cfg)
    assert written == {"all": {"mean_image": str(run / "samples" / "mean_image.npy")}}
    images, seeds = sampling.load_samples(run, "mean_image")
    train = np.load(run / "data" / "train.npy")
    assert images.shape == (3, 1, 8, 8) and list(seeds["seed"]) == [cfg.first_seed + i for i in range(3)]
    assert np.abs(images.astype(float) - train.mean(0)).max() < 12  # the mean image, a little noise
    # names, colours, the sweep legend and the loss curves read the same entry
    assert display_name("mean_image") == "mean image" and COLOURS["mean_image"] == "tab:purple"
    assert sweep_figures.groups()["mean_image"] == ("mean image", "tab:purple", "o")
    assert models.sample_counts(cfg) == {"mean_image": 3, "stylegan": 1}
    # step 05 and the criteria take it as any model
    from helpers.audit import audit_study

    audit_study(run, config.CorrelateSettings(models=["mean_image"], n_control=0, top_k=1, backend="numpy"),
                progress=False)
    table, _ = criteria.run_criteria(run, ["mean_image"])
    l2 = table[(table.group == "mean_image") & (table.criterion == criteria.L2_CRITERION)].iloc[0]
    assert l2.n_images == 3 and l2.n_above == 0  # the mean is near no training image in particular


def test_a_training_step_runs_only_for_a_sampled_model():
    assert models.not_sampled("train_diffusion", ["stylegan", "optimal_denoiser"]).name == "diffusion"
    assert models.not_sampled("train_diffusion", ["stylegan", "diffusion"]) is None
    assert models.not_sampled("sample", ["stylegan"]) is None  # not a training step


def test_the_arm_without_augmentation_is_the_reference_without_augmentation():
    """Profile reference_noaug: the reference's settings everywhere but StyleGAN's augmentation,
    and no diffusion model (its step is not run; the optimal denoiser keeps the schedule)."""
    ref, noaug = config.resolve("phantom", "reference"), config.resolve("phantom", "reference_noaug")
    assert (noaug["train_stylegan"].augment_p, noaug["train_stylegan"].ada_target) == (0.0, None)
    for section in config.SCHEMAS.keys() - {"compare"}:
        a, b = config.as_dict(ref[section]), config.as_dict(noaug[section])
        differ = {k for k in a if a[k] != b[k]}
        assert differ <= {"ada_target", "augment_p", "models"}, (section, differ)
    assert noaug["sample"].models == ["stylegan", "optimal_denoiser", "gaussian_control"]
    assert models.not_sampled("train_diffusion", noaug["sample"].models) is not None


def test_the_landing_page_says_how_stylegan_was_augmented():
    note = models.get("stylegan").training_note
    assert note({"augment_p": 0.0, "ada_target": None}) == "no augmentation"
    assert note({"augment_p": 0.2, "ada_target": None}) == "augmentation at a fixed probability"
    assert note({"augment_p": 0.0, "ada_target": 0.6}) == "adaptive augmentation"
    assert models.get("diffusion").training_note is None
