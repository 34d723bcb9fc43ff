"""Per-seed, resumable sample files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helpers import sampling


def fake_generator(calls):
    """A deterministic 'model': image content is a function of its seed only."""
    def generate(seeds):
        calls.append(list(seeds))
        return np.stack([np.random.default_rng(s).integers(0, 256, (2, 4, 4), dtype=np.uint8) for s in seeds])
    return generate


def test_writes_images_and_seeds(tmp_path):
    calls = []
    out = sampling.sample_to_npy(fake_generator(calls), tmp_path / "m.npy", 10, 2, (2, 4, 4), batch_size=4,
                                 progress=False)
    images = np.load(out)
    assert images.shape == (10, 2, 4, 4) and images.dtype == np.uint8
    seeds = pd.read_csv(tmp_path / "m_seeds.csv")
    assert seeds["seed"].tolist() == list(range(2, 12))
    np.testing.assert_array_equal(images[3], np.random.default_rng(5).integers(0, 256, (2, 4, 4), dtype=np.uint8))
    assert [len(c) for c in calls] == [4, 4, 2]
    assert not (tmp_path / "m.partial.npy").exists()


def test_resumes_after_interruption_and_result_is_batch_independent(tmp_path):
    calls = []
    gen = fake_generator(calls)

    def dies_on_third(seeds):
        if len(calls) == 2:
            raise KeyboardInterrupt
        return gen(seeds)

    with pytest.raises(KeyboardInterrupt):
        sampling.sample_to_npy(dies_on_third, tmp_path / "m.npy", 10, 0, (2, 4, 4), batch_size=3, progress=False)
    assert not (tmp_path / "m.npy").exists()
    calls.clear()
    out = sampling.sample_to_npy(gen, tmp_path / "m.npy", 10, 0, (2, 4, 4), batch_size=3, progress=False)
    assert calls[0][0] == 6  # continued after the two finished batches
    reference = sampling.sample_to_npy(fake_generator([]), tmp_path / "r.npy", 10, 0, (2, 4, 4), batch_size=10,
                                       progress=False)
    np.testing.assert_array_equal(np.load(out), np.load(reference))


def test_finished_file_is_reused_and_changed_request_regenerates(tmp_path):
    calls = []
    sampling.sample_to_npy(fake_generator(calls), tmp_path / "m.npy", 4, 0, (2, 4, 4), progress=False)
    calls.clear()
    sampling.sample_to_npy(fake_generator(calls), tmp_path / "m.npy", 4, 0, (2, 4, 4), progress=False)
    assert calls == []
    sampling.sample_to_npy(fake_generator(calls), tmp_path / "m.npy", 4, 100, (2, 4, 4), progress=False)
    assert calls and calls[0][0] == 100


def test_wrong_generator_output_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="expected uint8"):
        sampling.sample_to_npy(lambda s: np.zeros((len(s), 2, 4, 4), np.float32), tmp_path / "m.npy", 2, 0,
                               (2, 4, 4), progress=False)


def test_to_uint8_clips_and_rounds():
    np.testing.assert_array_equal(sampling.to_uint8(np.array([-2.0, -1.0, 0.0, 1.0, 3.0])), [0, 0, 128, 255, 255])


def test_killed_between_the_last_batch_and_the_rename_resumes_to_the_same_file(tmp_path):
    """The rename of ``.partial.npy`` onto the result is where the issue's
    re-run raced orphaned workers; a kill there (SIGKILL, the fault hook)
    resumes without generating anything again."""
    import os
    import signal
    import subprocess
    import sys

    code = ("import numpy as np; from helpers import sampling\n"
            "gen = lambda seeds: np.stack([np.random.default_rng(s).integers(0, 256, (2, 4, 4), dtype=np.uint8) "
            "for s in seeds])\n"
            f"sampling.sample_to_npy(gen, {str(tmp_path / 'm.npy')!r}, 10, 0, (2, 4, 4), batch_size=3, progress=False)\n")
    env = {**os.environ, "STUDY_FAULT": "sample-publish:m.npy"}
    env.pop("STUDY_RUNNER_PID", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert (tmp_path / "m.partial.npy").exists() and not (tmp_path / "m.npy").exists()
    calls = []
    out = sampling.sample_to_npy(fake_generator(calls), tmp_path / "m.npy", 10, 0, (2, 4, 4), batch_size=3,
                                 progress=False)
    assert calls == []  # every batch was kept
    reference = sampling.sample_to_npy(fake_generator([]), tmp_path / "r.npy", 10, 0, (2, 4, 4), progress=False)
    np.testing.assert_array_equal(np.load(out), np.load(reference))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npy", "m_seeds.csv", "r.npy", "r_seeds.csv"]


def _killed_sampling(tmp_path, n_images: int, fault: str) -> None:
    """``sample_to_npy`` of ``n_images`` in another process, SIGKILLed at ``fault``."""
    import os
    import signal
    import subprocess
    import sys

    code = ("import numpy as np; from helpers import sampling\n"
            "gen = lambda seeds: np.stack([np.random.default_rng(s).integers(0, 256, (2, 4, 4), dtype=np.uint8) "
            "for s in seeds])\n"
            f"sampling.sample_to_npy(gen, {str(tmp_path / 'm.npy')!r}, {n_images}, 0, (2, 4, 4), batch_size=3, "
            "progress=False)\n")
    env = {**os.environ, "STUDY_FAULT": fault}
    env.pop("STUDY_RUNNER_PID", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]


def test_a_partial_state_killed_while_being_made_is_not_resumed(tmp_path):
    """A first run (10 images) is killed after a batch; a second, asking for
    20, is killed after making its partial files but before publishing their
    record. The first run's record must not pass for theirs: a resumed
    10-image run then wrote the 20-image file."""
    _killed_sampling(tmp_path, 10, "sample-batch:m.npy")
    _killed_sampling(tmp_path, 20, "publish:m.partial.json")
    out = sampling.sample_to_npy(fake_generator([]), tmp_path / "m.npy", 10, 0, (2, 4, 4), batch_size=3,
                                 progress=False)
    reference = sampling.sample_to_npy(fake_generator([]), tmp_path / "r.npy", 10, 0, (2, 4, 4), progress=False)
    np.testing.assert_array_equal(np.load(out), np.load(reference))
