"""The common base: atomic writes, seeds, parameters."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from helpers import common


def test_atomic_path_keeps_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with common.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]


def test_image_seeds_one_per_image():
    assert common.image_seeds(3, 2).tolist() == [2, 3, 4]


def test_save_params_records_values_and_provenance(tmp_path):
    path = common.save_params({"n": np.int64(3), "channels": ("t1", "t2")}, tmp_path)
    data = yaml.safe_load(path.read_text())
    assert data["parameters"] == {"n": 3, "channels": ["t1", "t2"]}
    assert data["provenance"]["python"]


def test_stable_hash_ignores_key_order():
    assert common.stable_hash({"a": 1, "b": [1, 2]}) == common.stable_hash({"b": [1, 2], "a": 1})
    assert common.stable_hash({"a": 1}) != common.stable_hash({"a": 2})


def test_step_sections():
    assert [common.step_section(s) for s in common.STEPS] == [
        "prepare_data", "train_stylegan", "train_diffusion", "sample", "correlate", "figures"]


def test_progress_outside_a_terminal_is_silent_for_short_work(capsys):
    import tqdm.auto

    from helpers import common

    for _ in common.progress(range(5), desc="short"):
        pass
    assert "short" not in capsys.readouterr().err
    assert tqdm.auto.tqdm is common.TextBar, "libraries' tqdm.auto bars must be the study's text bar"


def test_a_publish_killed_before_its_rename_keeps_the_old_file_and_the_next_run_removes_the_temporary(tmp_path):
    """SIGKILL between a whole temporary file and its rename (the fault
    hook): readers see the old file; the temporary is recognisable and goes."""
    import os
    import signal
    import subprocess
    import sys

    target = tmp_path / "sub" / "table.json"
    common.write_json(target, {"v": "old"})
    env = {**os.environ, "STUDY_FAULT": "publish:table.json"}
    env.pop("STUDY_RUNNER_PID", None)
    done = subprocess.run([sys.executable, "-c", f"from helpers import common; common.write_json({str(target)!r}, "
                           "{'v': 'new'}); print('published')"], env=env, capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL and "published" not in done.stdout
    assert common.read_json(target) == {"v": "old"}
    (left,) = [p for p in target.parent.iterdir() if p != target]
    assert common.TEMP_NAME.match(left.name) and common.read_json(left) == {"v": "new"}  # whole, fsynced
    (tmp_path / "x.partial.npy").write_bytes(b"resumable state, not a temporary")
    assert common.remove_temporaries(tmp_path) == [left]
    assert sorted(p.name for p in target.parent.iterdir()) == ["table.json"] and (tmp_path / "x.partial.npy").exists()


def test_the_temporary_a_killed_safetensors_save_leaves_is_removed(tmp_path):
    """safetensors (Rust's tempfile crate) writes ``.tmp<6 characters>`` beside the file it saves and
    renames it; the kill test found one left by a kill in between. Other names stay."""
    left = tmp_path / ".tmpT6m7Fl"
    left.write_bytes(b"half a checkpoint")
    kept = [tmp_path / n for n in (".tmpnotes.txt", ".tmp12345", "a.tmp.csv", "model.safetensors")]
    for path in kept:
        path.write_text("kept")
    assert common.remove_temporaries(tmp_path) == [left]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in kept)
