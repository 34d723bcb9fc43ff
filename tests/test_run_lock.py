"""One run per results folder: a second run is refused at once, naming the
holder; a lock whose holder died is taken over with a note; read-only
commands need none. Real processes and files."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from helpers import common, pipeline, runlock


def hold(folder) -> subprocess.Popen:
    """Another process holding ``folder``'s lock (as a runner would)."""
    proc = subprocess.Popen([sys.executable, "-c",
                             "import sys, time; from helpers import runlock; "
                             f"runlock.RunLock({str(folder)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_holder_is_refused_naming_the_first_and_a_dead_one_is_taken_over(tmp_path):
    other = hold(tmp_path)
    try:
        with pytest.raises(runlock.RunLockError) as err:
            runlock.RunLock(tmp_path).acquire()
        message = str(err.value)
        assert f"pid {other.pid} on host {socket.gethostname()}, started " in message
        assert "--results" in message and f"kill {other.pid}" in message and "\n" not in message
        assert runlock.holder(tmp_path)["pid"] == other.pid
    finally:
        other.kill()
        other.wait()
    assert runlock.holder(tmp_path) is None  # the kernel released it with the process
    lock = runlock.RunLock(tmp_path)
    note = lock.acquire()
    assert note and f"pid {other.pid}" in note and "taking it over" in note and "\n" not in note
    lock.release()
    assert (tmp_path / runlock.LOCK_NAME).read_text() == ""  # released normally: no holder named
    again = runlock.RunLock(tmp_path)
    assert again.acquire() is None
    again.release()


def test_locks_inherited_from_the_runner_are_not_taken_again(tmp_path, monkeypatch):
    with runlock.Locks() as locks:
        locks.take([tmp_path / "a", tmp_path / "b"])
        assert runlock.inherited() == {(tmp_path / "a").resolve(), (tmp_path / "b").resolve()}
        # what a kernel or worker of the runner does: no second lock on the runner's folders
        with runlock.for_runs([tmp_path / "a"]) as inner:
            assert inner.held == {}
    assert runlock.HELD not in os.environ
    other = hold(tmp_path / "a")
    try:  # a notebook run by hand beside a runner is refused
        with pytest.raises(runlock.RunLockError, match=f"pid {other.pid}"):
            with runlock.for_runs([tmp_path / "b", tmp_path / "a"]):
                pass
        assert runlock.holder(tmp_path / "b") is None  # all or none
    finally:
        other.kill()
        other.wait()


def test_the_runner_refuses_a_held_folder_or_size_folder_at_once(tmp_path, capsys):
    results = tmp_path / "phantom"
    common.write_json(results / "data" / "sizes.json", {"sizes": [{"folder": "sizes/n00004"}]})
    for held in (results, results / "sizes" / "n00004"):
        other = hold(held)
        try:
            start = time.monotonic()
            assert pipeline.main(["phantom", "--profile", "smoke", "--results", str(tmp_path), "--only", "01"]) == 1
            assert time.monotonic() - start < 30
            err = capsys.readouterr().err.strip()
            assert err.startswith(f"study: error: {held} is in use by another run: pid {other.pid}"), err
            assert len(err.splitlines()) == 1
            # read-only commands need no lock
            assert pipeline.main(["phantom", "--profile", "smoke", "--results", str(tmp_path), "--show-params"]) == 0
        finally:
            other.kill()
            other.wait()
    assert not (results / "notebooks").exists()  # nothing ran


@pytest.mark.smoke
def test_two_runners_on_one_folder_the_second_is_refused(tmp_path):
    """The issue's case: two ./runall.sh … --only NN started seconds apart
    on one folder both ran; now the second stops at once, naming the first."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("STUDY_RESULTS", None)
    command = ["bash", str(common.repo_root() / "runall.sh"), "phantom", "--profile", "smoke", "--only", "01",
               "--results", str(tmp_path)]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        lock = tmp_path / "phantom" / runlock.LOCK_NAME
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (lock.is_file() and lock.read_text().strip()):
            time.sleep(0.05)
        assert json.loads(lock.read_text())["pid"] == first.pid
        second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
        assert first.poll() is None, "the first run ended before the second was tried"
        assert second.returncode == 1 and f"in use by another run: pid {first.pid}" in second.stderr
        assert "running" not in second.stdout
        assert first.wait(300) == 0, first.stdout.read()[-3000:]
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGTERM)
            first.wait()
    assert (tmp_path / "phantom" / ".stamps" / "01_prepare_data.json").is_file()
