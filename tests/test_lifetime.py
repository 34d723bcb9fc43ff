"""No process outlives the runner: children bound to their parent die with
it (SIGKILL included), side-by-side workers too, and the runner stops every
descendant, orphaned ones included. Real processes, no mocks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from helpers import lifetime

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal and /proc: Linux")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pids, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and [p for p in pids if alive(p)]:
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def start(code: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True,
                            **kwargs)


def read_pids(proc: subprocess.Popen, n: int) -> list[int]:
    pids = []
    while len(pids) < n:
        line = proc.stdout.readline()
        assert line, "the parent ended before it printed its children"
        pids += [int(p) for p in line.split()]
    return pids


def test_a_bound_child_dies_with_its_parent_killed_by_sigkill():
    parent = start("""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c",
            "from helpers import lifetime; import time; lifetime.bind_to_parent(); print('bound', flush=True); "
            "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
        child.stdout.readline()
        print(child.pid, flush=True)
        time.sleep(60)
    """)
    (child,) = read_pids(parent, 1)
    assert alive(child)
    parent.kill()
    parent.wait()
    assert wait_gone([child], 3) == [], "the child outlived its parent"


def test_a_child_whose_parent_is_already_gone_does_not_start():
    child = start("from helpers import lifetime; import time; lifetime.bind_to_parent(1); print('ran'); time.sleep(30)")
    assert child.wait(10) == -signal.SIGKILL and child.stdout.read() == ""


def test_side_by_side_workers_die_with_a_killed_parent():
    """The issue's orphans: spawn workers in a process group of their own
    went on writing after their parent was killed."""
    parent = start("""
        import os, time
        from helpers import parallel
        print(os.getpid(), flush=True)
        parallel.run_side_by_side(time.sleep, [(60,), (60,)], workers=2)
    """, start_new_session=True)
    (pid,) = read_pids(parent, 1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until both workers exist (and have imported torch)
        workers = [p for p in lifetime.descendants(pid) if b"spawn_main" in open(f"/proc/{p}/cmdline", "rb").read()]
        if len(workers) == 2 and all(b"torch" in open(f"/proc/{p}/maps", "rb").read() for p in workers):
            break
        time.sleep(0.1)
    assert len(workers) == 2
    os.kill(pid, signal.SIGKILL)
    parent.wait()
    assert wait_gone(workers, 3) == [], "side-by-side workers outlived their parent"


def test_the_runner_stops_every_descendant_orphans_and_other_sessions_included():
    runner = start("""
        import subprocess, sys, time
        from helpers import lifetime
        lifetime.become_runner()
        # an orphan (its parent, the shell, exits at once) and a child in a session of its own (as a kernel is)
        subprocess.run(["sh", "-c", "sleep 60 & echo $!"], stdout=sys.stdout)
        own = subprocess.Popen(["sleep", "60"], start_new_session=True)
        print(own.pid, flush=True)
        time.sleep(0.3)
        found = lifetime.descendants()
        stopped = lifetime.stop_descendants(grace_s=1)
        print(stopped, len(lifetime.descendants()), flush=True)
    """)
    orphan, own = read_pids(runner, 2)
    stopped, left = read_pids(runner, 2)
    runner.wait(20)
    assert stopped >= 2 and left == 0
    assert wait_gone([orphan, own], 2) == []


def test_a_fault_point_kills_the_runner_and_itself_at_the_nth_time(tmp_path):
    env = {**os.environ, lifetime.FAULT: "publish:x.json@2", lifetime.FAULT_COUNT: str(tmp_path / "count")}
    env.pop(lifetime.RUNNER_PID, None)
    code = ("from helpers import common\n"
            "for i in range(3):\n"
            f"    common.write_json({str(tmp_path / 'x.json')!r}, {{'i': i}}); print(i, flush=True)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == -signal.SIGKILL and done.stdout.split() == ["0"]
    assert (tmp_path / "x.json").read_text().strip() == '{\n  "i": 0\n}'.strip()
    assert (tmp_path / "count").read_bytes() == b".."


@pytest.mark.smoke
def test_ctrl_c_during_a_step_stops_kernel_and_workers_within_seconds_and_says_what_was_kept(tmp_path):
    """A notebook whose kernel runs side-by-side workers, executed as the
    runner executes a step; Ctrl-C (SIGINT) to the runner."""
    runner = start(f"""
        import nbformat
        from pathlib import Path
        from helpers import lifetime, pipeline
        root = Path({str(tmp_path)!r})
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(
            "import time\\nfrom helpers import parallel\\nparallel.run_side_by_side(time.sleep, [(60,), (60,)], workers=2)")]
        nbformat.write(nb, root / "02_x.ipynb")
        lifetime.become_runner()
        try:
            pipeline.execute_step(pipeline.Step("02_x", root / "02_x.ipynb"), {{}}, root / "out", root,
                                  pipeline.ensure_kernel())
        except pipeline.Interrupted as err:
            print(err, flush=True)
    """)
    deadline = time.monotonic() + 120
    workers: list[int] = []
    while time.monotonic() < deadline and len(workers) < 2:
        time.sleep(0.2)
        workers = []
        for p in lifetime.descendants(runner.pid):
            try:
                with open(f"/proc/{p}/cmdline", "rb") as handle:
                    if b"spawn_main" in handle.read():
                        workers.append(p)
            except OSError:
                pass
    assert len(workers) == 2, "the notebook's workers did not start"
    every = lifetime.descendants(runner.pid)
    runner.send_signal(signal.SIGINT)
    start_stop = time.monotonic()
    out, _ = runner.communicate(timeout=30)
    assert time.monotonic() - start_stop < 8
    assert "interrupted during step 02_x; every process of the step is stopped" in out
    assert "Kept:" in out and "02_x.failed.ipynb" in out
    assert wait_gone(every, 1) == []
    assert (tmp_path / "out" / "02_x.failed.ipynb").is_file()
