"""The plan before a long run: measured times, disk sizes from the shapes,
and a refusal when the disk cannot hold the outputs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from helpers import common, config, models, plan


@pytest.fixture(scope="module")
def smoke():
    return config.resolve("phantom", "smoke", {})


def _prepared(folder, n_train=12, n_test=5, shape=(5, 32, 32)):
    data = folder / "data"
    data.mkdir(parents=True)
    np.save(data / "train.npy", np.zeros((n_train, *shape), np.uint8))
    np.save(data / "test.npy", np.zeros((n_test, *shape), np.uint8))
    common.write_json(data / "meta.json", {"channels": ["t1", "t2", "t1ce", "flair", "seg"], "image_size": 32})
    return folder


def test_a_plan_reads_the_prepared_data_and_measures_each_step(tmp_path, smoke):
    estimate = plan.make_plan(smoke, _prepared(tmp_path / "phantom"))
    assert estimate.runs == {"all": (12, 5)} and estimate.data_note == "from data/"
    assert [s.step[:2] for s in estimate.steps] == ["02", "03", "04", "05"]
    for step in estimate.steps:
        assert step.seconds is not None and step.seconds > 0, step
        assert step.disk_bytes > 0, step
    sample = estimate.steps[2]
    n = sum(models.sample_counts(smoke["sample"]).values())  # every model and control the profile samples
    assert n > smoke["sample"].n_stylegan
    # and the audits over training: every kept checkpoint of each trained model (2 each in smoke) sampled
    audited = 2 * 2 * smoke["sample"].n_checkpoint_samples
    assert audited > 0 and "images of its checkpoints per run" in sample.basis
    assert sample.disk_bytes == (n + audited) * (5 * 32 * 32 + 16), "samples are uint8 N×C×H×W (+ a seed row each)"
    assert "Gaussian control" in sample.basis and "not measured" not in sample.basis  # numpy, timed too
    text = estimate.text()
    assert "02 train StyleGAN" in text and "03 train diffusion" in text and "measured" in text and "free on" in text


def test_a_model_brings_its_own_training_estimate(tmp_path):
    """The plan times a model through its registry entry (one signature for all): the probe's
    random training folder is one the models' image loader reads, the estimate becomes its step's row."""
    from types import SimpleNamespace

    from helpers.plan.measure import estimate_training
    from helpers.training import TrainingImages

    seen = {}

    def time_training(probe):
        seen["images"] = len(TrainingImages(probe.random_training(3)))
        per_step = probe.timed(lambda: sum(range(1000)), repeats=1)
        return models.TrainingEstimate(per_step * 10 * len(probe.runs), f"10 steps of batch {probe.batch}",
                                       123, "one file")

    toy = models.Model("toy", "toy model", "k", lambda *a, **k: None, lambda *a, **k: {}, section="train_toy",
                       notebook="03_train_toy", time_training=time_training)
    cfg = SimpleNamespace(batch_size=4)
    row = estimate_training(toy, cfg, (1, 8, 8), {"n4": (4, 2), "n8": (8, 2)}, "cpu", 1)
    assert seen == {"images": 3} and row.step == "03 train toy model" and row.basis == "10 steps of batch 4"
    assert row.seconds > 0 and (row.disk_bytes, row.disk_what) == (123, "one file") and row.memory.startswith("RSS")
    untimed = estimate_training(models.Model("toy", "toy model", "k", toy.sample, toy.train, section="train_toy"),
                                cfg, (1, 8, 8), {"all": (4, 2)}, "cpu", 1)
    assert untimed.seconds is None and untimed.step == "train toy model" and "not measured" in untimed.basis


def test_without_data_the_counts_are_an_assumption_that_says_so(tmp_path):
    resolved = config.resolve("brats21", "smoke", {"prepare_data": {"train_sizes": None}})
    runs, shape, note = plan.run_sizes(resolved, tmp_path / "brats21")
    assert note.startswith("assumed") and "1195 training subjects" in note  # the authors' split
    assert shape == (5, resolved["prepare_data"].image_size, resolved["prepare_data"].image_size)
    (n_train, n_test), = runs.values()
    assert n_train > 0 and n_test > 0


def test_a_chest_xray_plan_before_step_01_knows_its_one_channel(tmp_path):
    """Step 01 has not run: the channels are the reader's (gray for chest
    x-rays, a chosen BraTS subset in the arrays' order), and the correlation
    estimate accepts the dataset's headline channel (it once refused 'gray')."""
    resolved = config.resolve("phantom_cxr", "smoke", {})
    runs, shape, _ = plan.run_sizes(resolved, tmp_path / "cxr")
    assert shape[0] == 1 and plan._channel_names(tmp_path / "cxr", resolved["prepare_data"]) == ["gray"]
    estimate = plan.make_plan(resolved, tmp_path / "cxr")
    assert estimate.steps[-1].step == "05 correlate" and estimate.steps[-1].seconds is not None
    subset = config.resolve("brats21", "smoke", {"prepare_data": {"channels": ["flair", "t1ce"]}})
    assert plan._channel_names(tmp_path / "b", subset["prepare_data"]) == ["T1ce", "FLAIR"]


def test_a_disk_too_small_is_refused_with_what_is_needed_and_where(tmp_path, smoke, monkeypatch, capsys):
    results = _prepared(tmp_path / "phantom")
    monkeypatch.setattr(plan, "free_disk", lambda path: 1000)
    with pytest.raises(plan.PlanError, match=r"will write about .* but .* has 1\.0 kB free; .*--force"):
        plan.check_before_run(smoke, results, ["02", "03", "04", "05"], force=False)
    assert (results / "plan.txt").is_file(), "the plan is kept beside the results"
    plan.check_before_run(smoke, results, ["04"], force=True)  # --force starts anyway, with a warning
    assert "starting anyway" in capsys.readouterr().out


def test_runall_plan_prints_and_runs_nothing(tmp_path):
    done = subprocess.run([sys.executable, "-m", "helpers.pipeline", "brats21", "--profile", "smoke", "--plan",
                           "--results", str(tmp_path)], capture_output=True, text=True, cwd=common.repo_root())
    assert done.returncode == 0, done.stderr
    assert "01 prepare data" in done.stdout and "05 correlate" in done.stdout and "assumed" in done.stdout
    assert not any(tmp_path.iterdir()), "--plan writes nothing"
