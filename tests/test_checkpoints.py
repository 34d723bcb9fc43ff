"""Training state round-trips through safetensors without pickle."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from helpers import checkpoints


def test_nested_state_round_trip_with_optimizer_and_rng(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "step": 7, "p": 0.25,
             "name": "x", "shape": (1, 2), "none": None, "arr": np.arange(3), "rng": checkpoints.rng_state()}
    back = checkpoints.load_state(checkpoints.save_state(tmp_path / "s.safetensors", state))
    assert back["step"] == 7 and back["p"] == 0.25 and back["name"] == "x" and back["none"] is None
    assert back["shape"] == (1, 2)
    np.testing.assert_array_equal(back["arr"], np.arange(3))
    for k, v in model.state_dict().items():
        torch.testing.assert_close(back["model"][k], v)
    assert set(back["opt"]["state"]) == set(opt.state_dict()["state"])  # int keys stay ints
    opt2 = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=1e-3)
    opt2.load_state_dict(back["opt"])
    assert opt2.state_dict()["param_groups"][0]["lr"] == 1e-3


def test_rng_state_restores_every_generator():
    state = checkpoints.rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    checkpoints.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_keep_checkpoints_and_latest(tmp_path):
    for step in (10, 20, 30, 40):
        checkpoints.save_checkpoint(tmp_path, step, {"w": torch.full((2,), float(step))}, keep_checkpoints=2)
    assert [s for s, _ in checkpoints.list_checkpoints(tmp_path)] == [30, 40]
    step, state = checkpoints.load_latest_checkpoint(tmp_path)
    assert step == 40 and state["w"][0].item() == 40.0


def test_truncated_newest_checkpoint_falls_back_to_previous(tmp_path, capsys):
    checkpoints.save_checkpoint(tmp_path, 1, {"w": torch.ones(4)})
    broken = checkpoints.save_checkpoint(tmp_path, 2, {"w": torch.ones(4)})
    broken.write_bytes(broken.read_bytes()[:20])
    step, _ = checkpoints.load_latest_checkpoint(tmp_path)
    assert step == 1
    assert "step_000000002" in capsys.readouterr().out


def test_foreign_safetensors_file_is_refused_with_its_name(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.ones(1)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="x.safetensors"):
        checkpoints.load_state(tmp_path / "x.safetensors")


def test_unsupported_objects_are_refused(tmp_path):
    with pytest.raises(TypeError, match="object"):
        checkpoints.save_state(tmp_path / "bad.safetensors", {"x": object()})


def test_a_checkpoint_killed_before_its_rename_leaves_the_one_before_to_resume_from(tmp_path):
    """SIGKILL with the new checkpoint whole but not yet renamed (the fault
    hook): the folder lists only the one before, which loads; the killed
    run's temporary goes when the next run takes the folder."""
    import os
    import signal
    import subprocess
    import sys

    from helpers import common

    checkpoints.save_checkpoint(tmp_path, 1, {"w": torch.ones(3), "step": 1})
    env = {**os.environ, "STUDY_FAULT": "publish:step_000000002.safetensors"}
    env.pop("STUDY_RUNNER_PID", None)
    code = (f"import torch; from helpers import checkpoints; checkpoints.save_checkpoint({str(tmp_path)!r}, 2, "
            "{'w': torch.zeros(3), 'step': 2}); print('saved')")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL and "saved" not in done.stdout
    assert [step for step, _ in checkpoints.list_checkpoints(tmp_path)] == [1]
    step, state = checkpoints.load_latest_checkpoint(tmp_path)
    assert step == 1 and state["step"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert [p.name.startswith("step_000000002.tmp") for p in common.remove_temporaries(tmp_path)] == [True]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000000001.safetensors"]


def test_the_tensor_digest_ignores_the_metadata_and_sees_the_weights(tmp_path):
    import torch

    from helpers.checkpoints import save_state, tensor_digest

    a = save_state(tmp_path / "a.safetensors", {"G_ema": {"w": torch.ones(3)}, "rng": torch.arange(3), "seconds": 1.5})
    b = save_state(tmp_path / "b.safetensors", {"G_ema": {"w": torch.ones(3)}, "rng": torch.arange(4), "seconds": 9.0})
    c = save_state(tmp_path / "c.safetensors", {"G_ema": {"w": torch.ones(3) * 2}, "rng": torch.arange(3), "seconds": 1.5})
    assert a.read_bytes() != b.read_bytes()                 # another time and generator state
    assert tensor_digest(a, "G_ema") == tensor_digest(b, "G_ema") != tensor_digest(c, "G_ema")
    assert tensor_digest(a) != tensor_digest(b)             # all tensors: the generator state counts
    with pytest.raises(ValueError, match="no tensor under 'ema'"):
        tensor_digest(a, "ema")
