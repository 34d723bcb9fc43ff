"""Killed at any moment, resumed to the same result: the smoke run (steps
01-05) is SIGKILLed at named points of every step (the ``STUDY_FAULT`` hook
kills the runner and the process at the point, as ``kill -9`` or the OOM
killer would), re-run each time, and must end with the same data, weights,
samples and tables as an uninterrupted run, no temporary file, and no
process of a killed run left alive.

Cost (2 shared cores): one uninterrupted run of steps 01-05 and one resumed
sequence, each killed invocation resuming where the one before died."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load_file

from helpers import common, lifetime

pytestmark = [pytest.mark.smoke, pytest.mark.slow]

#: (where, STUDY_FAULT) in run order: each killed invocation resumes the one before
KILLS = [
    ("01: the split's arrays and tables written, its meta.json whole but not renamed", "publish:meta.json"),
    ("01: the sweep's first size folder half written", "publish:train.csv@2"),
    ("02: a StyleGAN checkpoint whole but not renamed, two runs training side by side",
     "publish:step_000000006.safetensors"),
    ("02: the first run's generator published, its summary not", "publish:summary.json"),
    ("03: a diffusion checkpoint whole but not renamed (mid-training)", "publish:step_000000010.safetensors"),
    ("03: the diffusion pipeline folder built, not yet swapped in", "publish:training.json"),
    ("04: a batch of StyleGAN samples written and flagged", "sample-batch:stylegan.npy"),
    ("04: every diffusion batch written, diffusion.partial.npy not yet renamed", "sample-publish:diffusion.npy"),
    ("05: a correlation table whole but not renamed", "publish:matches_diffusion.csv"),
    ("05: the step's notebook finished, its stamp not yet written", "publish:05_correlate.json"),
]
TAG = "STUDY_KILL_TEST_RUN"
#: how long things took, and how a training got there (resumed or not): not results
TIMING = {"seconds", "time_s", "images_per_s", "train_time_s", "time_utc", "wall_seconds", "pairs_per_second",
          "steps_run", "resumed_from_step"}


def runall(results: Path, *args: str, fault: str | None = None, tag: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", TAG: tag}
    for name in ("STUDY_RESULTS", lifetime.FAULT, lifetime.FAULT_COUNT, lifetime.RUNNER_PID):
        env.pop(name, None)
    if fault:
        env[lifetime.FAULT] = fault
        env[lifetime.FAULT_COUNT] = str(results / f"{tag}.count")
    return subprocess.run(["bash", str(common.repo_root() / "runall.sh"), "phantom", "--profile", "smoke",
                           "--to", "05", "--results", str(results), *args],
                          capture_output=True, text=True, env=env, timeout=900, cwd=common.repo_root())


def processes_tagged(tag: str) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as handle:
                    if f"{TAG}={tag}".encode() in handle.read().split(b"\0"):
                        with open(f"/proc/{entry}/cmdline", "rb") as handle:
                            command = handle.read().replace(b"\0", b" ")[:120].decode(errors="replace")
                        found.append(f"{entry}: {command}")
            except OSError:
                pass
    return found


def result_files(folder: Path) -> dict[str, Path]:
    """Every result file of a run, without the runner's own (executed
    notebooks, stamps, locks), logs and parameter files (provenance: times)."""
    out = {}
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if path.is_file() and rel.parts[0] not in {"notebooks", ".stamps", "logs"} and \
                path.name != ".study.lock" and path.suffix not in {".yaml", ".png", ".txt", ".html"}:
            out[str(rel)] = path
    return out


def without_timing(obj):
    if isinstance(obj, dict):
        return {k: without_timing(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [without_timing(v) for v in obj]
    return obj


def assert_same_results(reference: Path, resumed: Path) -> None:
    ref, got = result_files(reference), result_files(resumed)
    assert sorted(got) == sorted(ref), (f"missing: {sorted(set(ref) - set(got))}; "
                                        f"extra (a killed run's leftovers?): {sorted(set(got) - set(ref))}")
    for rel, path in ref.items():
        other = got[rel]
        if path.suffix == ".npy":
            np.testing.assert_array_equal(np.load(path), np.load(other), err_msg=rel)
        elif path.suffix == ".csv":
            a, b = pd.read_csv(path), pd.read_csv(other)
            keep = [c for c in a.columns if c not in TIMING]
            pd.testing.assert_frame_equal(a[keep], b[[c for c in keep if c in b]], obj=rel)
        elif path.suffix == ".safetensors":
            a, b = load_file(str(path)), load_file(str(other))
            assert sorted(a) == sorted(b), rel
            for key in a:  # the global NumPy generator's state in a checkpoint depends on the process's history
                if not key.startswith("rng.numpy"):
                    np.testing.assert_array_equal(a[key], b[key], err_msg=f"{rel}: {key}")
        elif path.suffix == ".json":  # paths inside name each run's own folder
            assert without_timing(json.loads(path.read_text().replace(str(reference), "RUN"))) == \
                without_timing(json.loads(other.read_text().replace(str(resumed), "RUN"))), rel
        else:
            assert path.read_bytes() == other.read_bytes(), rel


def test_a_run_killed_at_any_step_resumes_to_the_results_of_an_uninterrupted_one(tmp_path):
    start = time.monotonic()
    reference = runall(tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]
    print(f"uninterrupted run of steps 01-05: {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)

    resumed = tmp_path / "resumed"
    log = []
    for where, fault in KILLS:
        tag = uuid.uuid4().hex
        start = time.monotonic()
        killed = runall(resumed, fault=fault, tag=tag)
        assert killed.returncode == -signal.SIGKILL, (
            f"{where}: the run was not killed at {fault} (rc {killed.returncode}):\n{killed.stdout[-2000:]}"
            f"\n{killed.stderr[-2000:]}")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and processes_tagged(tag):
            time.sleep(0.1)
        assert processes_tagged(tag) == [], f"{where}: processes of the killed run still alive"
        log.append(f"{where}: killed after {time.monotonic() - start:.0f} s")
        print(log[-1], file=sys.stderr, flush=True)
    final = runall(resumed, tag="final")
    assert final.returncode == 0, final.stderr[-3000:]
    assert "taking it over" in final.stdout  # the killed runner's lock, named in one line
    # steps finished by resumed runs are done for good: only step 05 (killed before its stamp) runs again
    assert final.stdout.count("up to date, skipped") == 4 and "[05] 05_correlate: running" in final.stdout, \
        final.stdout
    assert_same_results(tmp_path / "reference" / "phantom", resumed / "phantom")
    print("\n".join(log))
