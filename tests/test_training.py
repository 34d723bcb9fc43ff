"""The training base shared by StyleGAN and the diffusion model."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import diffusion, stylegan, training
from helpers.diffusion.loop import SHUFFLE_SALT


def make_data(root, n=10, channels=2, size=8):
    images = np.random.default_rng(0).integers(0, 256, (n, channels, size, size), dtype=np.uint8)
    (root / "data").mkdir(parents=True)
    np.save(root / "data" / "train.npy", images)
    (root / "data" / "meta.json").write_text(f'{{"channels": ["a", "b"], "image_size": {size}}}')
    return root


def test_both_models_use_the_same_training_base():
    assert stylegan.TrainingImages is diffusion.TrainingImages is training.TrainingImages
    assert stylegan.count_parameters is diffusion.count_parameters is training.count_parameters
    assert diffusion.step_seed is training.step_seed


def test_training_images_from_results_or_data_folder_and_epochs(tmp_path):
    root = make_data(tmp_path)
    a, b = training.TrainingImages(root, seed=1), training.TrainingImages(root / "data", seed=1)
    assert np.array_equal(a.batch_indices(3, 4), b.batch_indices(3, 4))
    epoch = np.concatenate([a.batch_indices(s, 5) for s in range(2)])
    assert sorted(epoch) == list(range(10))  # every image once per epoch
    # the two processes of a 2-GPU run share one global batch
    halves = np.concatenate([a.batch_indices(3, 4, rank=r, world=2) for r in range(2)])
    assert np.array_equal(halves, a.batch_indices(3, 4))
    salted = training.TrainingImages(root, seed=1, shuffle_salt=SHUFFLE_SALT)
    assert not np.array_equal(salted.batch_indices(0, 10), a.batch_indices(0, 10))
    assert np.array_equal(a.uint8(a.batch_indices(0, 3)), a.images[a.batch_indices(0, 3)])
    scaled = a.scaled([0], flip=np.array([True]))
    assert scaled.min() >= -1 and scaled.max() <= 1
    assert np.allclose(scaled[0].numpy(), (a.images[0][..., ::-1] / 127.5 - 1.0), atol=1e-6)


def test_step_seed_depends_on_every_word():
    assert training.step_seed(0, 5) == training.step_seed(0, 5)
    assert len({training.step_seed(0, 5), training.step_seed(0, 6), training.step_seed(1, 5),
                training.step_seed(0, 5, 1)}) == 4
    assert 0 <= training.step_seed(2**40, 2**40, 3) < 2**63


@pytest.mark.parametrize("float_format", [training.shortest_float, training.six_digits])
def test_loss_log_is_cut_back_to_the_checkpoint_on_resume(tmp_path, float_format):
    path = tmp_path / "loss_log.csv"
    log = training.LossLog(path, ("step", "loss", "note"), resume_step=0, float_format=float_format)
    for step in (2, 4, 6):
        log.append({"step": step, "loss": 1.0 / step, "note": None})
    with open(path, "a") as handle:
        handle.write("8,0.1")  # a torn last line
    training.LossLog(path, ("step", "loss", "note"), resume_step=4, float_format=float_format)
    lines = path.read_text().splitlines()
    assert lines[0] == "step,loss,note" and [line.split(",")[0] for line in lines[1:]] == ["2", "4"]
    assert lines[1] == f"2,{float_format(0.5)},"
    training.LossLog(path, ("step", "loss", "note"), resume_step=0)  # a fresh start keeps only the header
    assert path.read_text() == "step,loss,note\n"
