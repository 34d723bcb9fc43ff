"""Every setting range-checked before step 01: a bad value stops the runner
with one line naming the key, the value and what is allowed; no traceback,
nothing written. One case per kind of constraint."""

from __future__ import annotations

import pytest

from helpers import config, pipeline

CASES = [
    # a positive count or size (batch_size=0 was a ZeroDivisionError; n_diffusion=-5 was accepted)
    ("train_stylegan.batch_size=0", "train_stylegan.batch_size = 0", "greater than or equal to 1"),
    ("sample.n_diffusion=-5", "sample.n_diffusion = -5", "greater than or equal to 0"),
    ("sample.n_stylegan=0", "sample.n_stylegan = 0", "positive number of images"),
    ("train_diffusion.learning_rate=0.0", "train_diffusion.learning_rate = 0.0", "greater than 0"),
    # a probability
    ("train_stylegan.augment_p=1.5", "train_stylegan.augment_p = 1.5", "less than or equal to 1"),
    # a power of two where the networks need one (33 was caught only when step 02 started)
    ("prepare_data.image_size=33", "prepare_data.image_size = 33", "a power of two"),
    # the minibatch-std group, and the processes sharing a batch
    ("train_stylegan.batch_size=6", "train_stylegan.batch_size = 6", "multiple of mbstd_group 4"),
    ("common.processes=3", "train_stylegan.batch_size = 8", "multiple of processes=3"),
    # sizes the data can hold
    ("prepare_data.train_sizes=[4, 5000]", "prepare_data.train_sizes = [4, 5000]", "at most 117 training images"),
    ("prepare_data.n_test_subjects=4", "prepare_data.n_test_subjects = 4", "fewer than the phantom's 4 subjects"),
    # another step's settings: the UNet's levels and attention at this image size, the sampler's steps
    ("train_diffusion.attention_resolutions=[12]", "train_diffusion.attention_resolutions = [12]",
     "feature-map sizes of this UNet: [32, 16]"),
    ("train_diffusion.block_out_channels=[8, 8, 8, 8, 8, 8, 8]", "train_diffusion.block_out_channels",
     "at most 6 levels"),
    ("sample.diffusion_inference_steps=51", "sample.diffusion_inference_steps = 51",
     "at most train_diffusion.num_train_timesteps=50"),
]


@pytest.mark.parametrize("setting, names, allowed", CASES, ids=[c[0] for c in CASES])
def test_a_bad_value_stops_the_run_before_step_01_with_one_line(tmp_path, capsys, setting, names, allowed):
    code = pipeline.main(["phantom", "--profile", "smoke", "--results", str(tmp_path), "--set", setting])
    captured = capsys.readouterr()
    assert code == 1
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("study: error: ") and names in err and allowed in err, err
    assert "--set" in err or "smoke.yaml" in err  # where the value came from
    assert not any(tmp_path.iterdir()) and "running" not in captured.out


def test_every_shipped_dataset_and_profile_is_within_range():
    for dataset in config.available_datasets():
        for profile in config.available_profiles():
            config.resolve(dataset, profile)


def test_schema_defaults_are_within_range_and_cross_key_errors_name_their_key():
    for schema in config.SCHEMAS.values():
        schema()  # the defaults themselves
    with pytest.raises(config.ConfigError, match=r"^yaml: train_stylegan\.pl_batch_shrink = 16: at most the 8 images"):
        config.build("train_stylegan", {"batch_size": 8, "pl_batch_shrink": 16}, {"pl_batch_shrink": "yaml"})
    with pytest.raises(config.ConfigError, match=r"train_diffusion\.beta_end = 0\.001: greater than beta_start=0\.01"):
        config.build("train_diffusion", {"beta_start": 0.01, "beta_end": 0.001})
