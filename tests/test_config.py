"""One typed schema per step; YAML layers and --set only override it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from helpers import common, config


def write_config(root: Path, dataset: dict, profile: dict, name: str = "toy", profile_name: str = "small") -> None:
    (root / "configs" / "profiles").mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text("")
    (root / "configs" / f"{name}.yaml").write_text(yaml.safe_dump(dataset))
    (root / "configs" / "profiles" / f"{profile_name}.yaml").write_text(yaml.safe_dump(profile))


def test_layers_override_in_order_and_say_where_each_value_came_from(tmp_path):
    write_config(
        tmp_path,
        {"common": {"seed": 1}, "prepare_data": {"image_size": 128, "source": "brats", "slice_stride": 2},
         "profiles": {"small": {"prepare_data": {"source": "cxr"}}}},
        {"prepare_data": {"image_size": 32, "source": "phantom_cxr"}},
    )
    resolved = config.resolve("toy", "small", {"sample": {"n_stylegan": 7}}, raw_dir=str(tmp_path), root=tmp_path)
    prep = resolved["prepare_data"]
    assert (prep.image_size, prep.source, prep.slice_stride, prep.pad_to) == (32, "cxr", 2, 256)
    assert prep.raw_dir == str(tmp_path.resolve())
    assert all(resolved[s].seed == 1 for s in ("prepare_data", "train_diffusion", "figures"))
    assert resolved["sample"].n_stylegan == 7
    where = resolved.sources["prepare_data"]
    assert where["image_size"] == "configs/profiles/small.yaml"
    assert where["source"] == "configs/toy.yaml profiles.small"
    assert where["slice_stride"] == "configs/toy.yaml"
    assert where["pad_to"] == "default" and where["raw_dir"] == "--data"
    assert where["seed"] == "configs/toy.yaml (common)"
    assert resolved.sources["sample"]["n_stylegan"] == "--set"
    text = resolved.describe()
    assert "image_size:" in text and "# configs/profiles/small.yaml" in text


def test_a_profile_based_on_another_inherits_its_settings_and_the_dataset_s_section_for_it(tmp_path):
    write_config(tmp_path, {"prepare_data": {"slice_stride": 2},
                            "profiles": {"small": {"prepare_data": {"n_test_subjects": 7}}}},
                 {"prepare_data": {"image_size": 32}, "train_diffusion": {"max_steps": 900, "batch_size": 16}})
    (tmp_path / "configs" / "profiles" / "long.yaml").write_text(
        yaml.safe_dump({"based_on": "small", "train_diffusion": {"max_steps": 4000}}))
    resolved = config.resolve("toy", "long", root=tmp_path)
    assert (resolved["prepare_data"].image_size, resolved["prepare_data"].n_test_subjects) == (32, 7)
    assert (resolved["train_diffusion"].max_steps, resolved["train_diffusion"].batch_size) == (4000, 16)
    where = resolved.sources
    assert where["train_diffusion"]["max_steps"] == "configs/profiles/long.yaml"
    assert where["train_diffusion"]["batch_size"] == "configs/profiles/small.yaml"
    assert where["prepare_data"]["n_test_subjects"] == "configs/toy.yaml profiles.small"
    (tmp_path / "configs" / "profiles" / "small.yaml").write_text(yaml.safe_dump({"based_on": "long"}))
    with pytest.raises(config.ConfigError, match=r"small.yaml: based_on: long makes a cycle \(long → small → long\)"):
        config.resolve("toy", "long", root=tmp_path)
    (tmp_path / "configs" / "profiles" / "long.yaml").write_text(yaml.safe_dump({"based_on": "gpuu"}))
    with pytest.raises(config.ConfigError, match=r"gpuu.yaml \(based_on in configs/profiles/long.yaml\)"):
        config.resolve("toy", "long", root=tmp_path)


def test_unknown_dataset_and_profile_name_the_choices(tmp_path):
    write_config(tmp_path, {}, {})
    with pytest.raises(config.ConfigError, match="known datasets: toy"):
        config.resolve("nope", "small", root=tmp_path)
    with pytest.raises(config.ConfigError, match="known profiles: small"):
        config.resolve("toy", "huge", root=tmp_path)


@pytest.mark.parametrize("where", ["dataset", "profile", "own_profile", "set"])
def test_an_unknown_key_names_the_key_its_file_and_the_allowed_keys(tmp_path, where):
    typo = {"train_diffusion": {"max_stepz": 3}}
    dataset = {"profiles": {"small": typo}} if where == "own_profile" else (typo if where == "dataset" else {})
    write_config(tmp_path, dataset, typo if where == "profile" else {})
    with pytest.raises(config.ConfigError) as err:
        config.resolve("toy", "small", typo if where == "set" else None, root=tmp_path)
    message = str(err.value)
    source = {"dataset": "configs/toy.yaml", "profile": "configs/profiles/small.yaml",
              "own_profile": "configs/toy.yaml profiles.small", "set": "--set"}[where]
    assert message.startswith(source + ":")
    assert "train_diffusion.max_stepz" in message and "max_steps" in message and "prediction_type" in message


def test_unknown_sections_and_profiles_are_errors_too(tmp_path):
    write_config(tmp_path, {"train_difusion": {"max_steps": 3}}, {})
    with pytest.raises(config.ConfigError, match="configs/toy.yaml: unknown section 'train_difusion'.*train_diffusion"):
        config.resolve("toy", "small", root=tmp_path)
    write_config(tmp_path, {"profiles": {"smal": {}}}, {})
    with pytest.raises(config.ConfigError, match="profiles.smal is not a profile"):
        config.resolve("toy", "small", root=tmp_path)
    write_config(tmp_path, {}, {"common": {"image_size": 3}})
    with pytest.raises(config.ConfigError, match="common.image_size.*seed"):
        config.resolve("toy", "small", root=tmp_path)


@pytest.mark.parametrize("section, key, value, expected", [
    ("train_diffusion", "max_steps", "many", "valid integer"),
    ("train_diffusion", "max_steps", 2.5, "valid integer"),
    ("train_diffusion", "prediction_type", "x0", "'epsilon' or 'v_prediction'"),
    ("train_diffusion", "block_out_channels", 64, "valid list"),
    ("prepare_data", "split", "random", "'seeded' or 'authors'"),
    ("train_stylegan", "mirror", "yes", "valid boolean"),
    ("sample", "models", ["stylegan", 3], "valid string"),
])
def test_a_wrongly_typed_value_is_an_error_naming_its_file(tmp_path, section, key, value, expected):
    write_config(tmp_path, {}, {section: {key: value}})
    with pytest.raises(config.ConfigError, match=expected) as err:
        config.resolve("toy", "small", root=tmp_path)
    assert str(err.value).startswith(f"configs/profiles/small.yaml: {section}.{key} = ")


def test_a_model_the_registry_lacks_is_an_error_naming_its_file(tmp_path):
    """The registry (helpers.models) sits above the schema: the runner checks the names before any step."""
    from helpers import pipeline

    write_config(tmp_path, {}, {"sample": {"models": ["stylegan", "vae"]}})
    resolved = config.resolve("toy", "small", root=tmp_path)
    with pytest.raises(config.ConfigError, match="unknown model.*'vae'.*registered.*stylegan, diffusion") as err:
        pipeline.check_model_names(resolved)
    assert str(err.value).startswith("configs/profiles/small.yaml: sample.models: ")


def test_schema_checks_beyond_types_are_reported_with_the_section(tmp_path):
    write_config(tmp_path, {}, {"train_diffusion": {"block_out_channels": [16, 24], "norm_num_groups": 16}})
    with pytest.raises(config.ConfigError, match="train_diffusion.*norm_num_groups=16 must divide every width"):
        config.resolve("toy", "small", root=tmp_path)


def test_overrides_parse_yaml_values():
    assert config.parse_overrides(["a.b=3", "a.c=[1, 2]", "d.e=null"]) == {"a": {"b": 3, "c": [1, 2]}, "d": {"e": None}}
    with pytest.raises(config.ConfigError, match="SECTION.KEY=VALUE"):
        config.parse_overrides(["nodot=3"])


def test_every_dataset_and_profile_resolves():
    root = common.repo_root()
    datasets, profiles = config.available_datasets(root), config.available_profiles(root)
    assert {"phantom", "phantom_cxr", "brats20", "brats21", "cxr"} <= set(datasets)
    assert {"smoke", "cpu", "gpu", "paper"} <= set(profiles)
    for dataset in datasets:
        for profile in profiles:
            resolved = config.resolve(dataset, profile, root=root)
            assert set(resolved.settings) == set(config.SCHEMAS) - {"compare"}
            for section, settings in resolved.settings.items():
                # what papermill injects rebuilds the same settings in the notebook
                assert config.step_settings(section, dataset, profile, config.as_dict(settings)) == settings


def test_the_paper_profile_is_the_authors_setting():
    """The values stated in the authors' code and README (see the README's
    deviations table for what differs and why)."""
    for dataset in ("brats20", "brats21"):
        resolved = config.resolve(dataset, "paper")
        prep = resolved["prepare_data"]
        assert (prep.image_size, prep.pad_to, prep.t1_threshold, prep.min_brain_fraction, prep.slice_stride) == (
            256, 256, 50, 0.15, 1)
        assert prep.split == "authors" and prep.channels is None and prep.n_train_subjects is None

        diffusion = resolved["train_diffusion"]
        assert diffusion.prediction_type == "epsilon"
        assert diffusion.num_train_timesteps == 4000 and diffusion.beta_schedule == "linear"
        assert diffusion.beta_start is None and diffusion.beta_end is None  # guided-diffusion's 1000/T scaling
        assert diffusion.variance_type == "fixed_large"  # no learned sigma
        assert diffusion.block_out_channels == [64, 64, 128, 128, 256, 256] and diffusion.layers_per_block == 3
        assert diffusion.attention_resolutions == [16, 8] and diffusion.attention_head_dim == 64
        assert (diffusion.batch_size, diffusion.max_steps, diffusion.learning_rate) == (32, 30000, 1e-4)
        assert diffusion.ema_decay == 0.9999 and not diffusion.ema_warmup
        assert diffusion.max_grad_norm is None and not diffusion.horizontal_flip and diffusion.dropout == 0.0

        gan = resolved["train_stylegan"]
        assert (gan.r1_gamma, gan.batch_size, gan.total_kimg) == (5.0, 32, 25000.0)
        assert not gan.mirror  # their --mirror=1 had no effect: the flip in their dataset is commented out
        assert gan.ada_target == 0.6 and gan.augment_p == 0.0
        assert (gan.channel_base, gan.channel_max, gan.ema_kimg) == (32768, 512, 10.0)

        sample = resolved["sample"]
        assert (sample.first_seed, sample.n_stylegan) == (2, 100001)  # seeds 2..100 002
        assert sample.truncation_psi == 1.0 and sample.diffusion_sampler == "ddpm"
        assert sample.diffusion_inference_steps is None  # the full 4000-step ancestral loop


def test_profiles_keep_their_own_diffusion_objective():
    assert config.resolve("phantom", "gpu")["train_diffusion"].prediction_type == "epsilon"
    assert config.resolve("phantom", "cpu")["train_diffusion"].prediction_type == "v_prediction"


def test_notebook_settings_by_hand_and_injected():
    by_hand = config.step_settings("correlate", "brats21", "paper")
    assert by_hand.headline_channel == "t1ce" and by_hand.memory_budget_gb == 32.0
    injected = config.step_settings("correlate", "x", "y", {**config.as_dict(by_hand), "top_k": 3})
    assert injected.top_k == 3
    with pytest.raises(config.ConfigError, match="top_kk"):
        config.step_settings("correlate", "x", "y", {"top_kk": 3})
    assert config.step_settings("compare", "", "") == config.CompareSettings()


def test_resume_identity_ignores_bookkeeping():
    # the seed is StyleGAN's trainer argument: its checkpoints guard it (test_stylegan.py)
    a = config.build("train_stylegan", {"batch_size": 8})
    b = dataclasses.replace(a, total_kimg=1.0, num_threads=1, keep_checkpoints=9)
    assert a.identity() == b.identity() and a.identity() != dataclasses.replace(a, lr_g=0.1).identity()
    d = config.build("train_diffusion", {})
    assert d.identity() == dataclasses.replace(d, max_steps=5, preview_images=1, num_threads=2).identity()
    assert d.identity() != dataclasses.replace(d, prediction_type="v_prediction").identity()


def test_a_notebook_opened_by_hand_resolves_what_runall_injects(tmp_path, monkeypatch):
    """JupyterLab starts the kernel in notebooks/: the defaults must still
    name the runner's profile and results folder, relative to the checkout."""
    root = common.repo_root()
    monkeypatch.chdir(root / "notebooks")
    monkeypatch.delenv("STUDY_RESULTS", raising=False)
    assert config.runall_defaults("phantom_cxr") == ("phantom_cxr", config.default_profile(), "results/phantom_cxr")
    assert Path.cwd() == root
    monkeypatch.setenv("STUDY_RESULTS", str(tmp_path))
    assert config.runall_defaults("phantom", "smoke", None) == ("phantom", "smoke", str(tmp_path / "phantom"))
    assert config.runall_defaults("phantom", "cpu", "elsewhere/x") == ("phantom", "cpu", "elsewhere/x")


# --------------------------------------------------------------------------
# One home for every default (issue 18.4)
# --------------------------------------------------------------------------

def test_models_is_one_common_key_for_every_step_that_has_it(tmp_path):
    write_config(tmp_path, {}, {"common": {"models": ["diffusion", "optimal_denoiser"]}})
    resolved = config.resolve("toy", "small", root=tmp_path)
    for section in ("sample", "correlate", "figures"):
        assert resolved[section].models == ["diffusion", "optimal_denoiser"]
        assert resolved.sources[section]["models"] == "configs/profiles/small.yaml (common)"
    assert not hasattr(resolved["train_stylegan"], "models")  # a step without the key does not take it


def test_phantom_sizes_and_each_are_typed_fields(tmp_path):
    write_config(tmp_path, {}, {"prepare_data": {"source": "phantom_cxr",
                                                "phantom_cxr_sizes": {"n_normal": 8, "width_range": [128, 256]}}})
    prep = config.resolve("toy", "small", root=tmp_path)["prepare_data"]
    assert prep.phantom_cxr_sizes.n_images == 8 + 200
    assert prep.phantom_brats_sizes.kwargs() == {"n_subjects": 24}
    assert config.as_dict(prep)["phantom_cxr_sizes"] == {"n_normal": 8, "n_pneumonia": 200, "width_range": [128, 256]}
    assert config.step_settings("prepare_data", "toy", "small", config.as_dict(prep)) == prep  # papermill's round trip
    for bad, message in (({"n_subjects": 1}, "greater than or equal to 2"), ({"subjects": 4}, "Unexpected keyword")):
        write_config(tmp_path, {}, {"prepare_data": {"phantom_brats_sizes": bad}})
        with pytest.raises(config.ConfigError, match=f"prepare_data.phantom_brats_sizes.*{message}"):
            config.resolve("toy", "small", root=tmp_path)
    assert config.CorrelateSettings().each is True


def test_the_audit_command_builds_step_05_s_settings_with_one_memory_budget():
    from helpers import audit, correlation

    cfg = audit.command_settings(channels=[0, 2], memory_budget_gb=0.5)
    assert isinstance(cfg, config.CorrelateSettings)
    assert (cfg.each, cfg.top_k, cfg.n_control, cfg.memory_budget_gb) == (False, 1, 0, 0.5)
    default = audit.command_settings()
    assert default.memory_budget_gb == config.CorrelateSettings().memory_budget_gb == config.MEMORY_BUDGET_GB
    assert correlation.DEFAULT_MEMORY_BUDGET == int(config.MEMORY_BUDGET_GB * 1024**3)
    with pytest.raises(config.ConfigError, match="the audit command: correlate.top_k = 0"):
        audit.command_settings(top_k=0)


def test_prepare_dataset_s_defaults_are_the_schema_s():
    import inspect

    from helpers.data import prepare

    defaults = config.PrepareDataSettings()
    signature = inspect.signature(prepare.prepare_dataset)
    for name in prepare.READ_SETTINGS:
        assert signature.parameters[name].default == getattr(defaults, name), name


def test_the_table_of_the_trainings_clashing_keys_names_real_keys():
    for what, (stylegan_key, _), (diffusion_key, _) in config.schema.TRAINING_KEYS:
        assert stylegan_key in config.field_names("train_stylegan"), what
        assert diffusion_key in config.field_names("train_diffusion"), what
