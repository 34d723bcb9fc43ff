"""No process outlives the runner: how the runner's kernels, side-by-side
workers and torchrun jobs stop when it dies, however it dies.

Why these three mechanisms together (Linux; elsewhere only the last applies):

- **A parent-death signal** (``prctl(PR_SET_PDEATHSIG, SIGKILL)``) in every
  child we start: the kernel (set between fork and exec by the runner's
  kernel manager), each side-by-side worker (its pool initializer), the
  torchrun agent (set between fork and exec) and each torchrun rank. The
  kernel delivers it even when the parent was SIGKILLed or OOM-killed, with
  no Python code left to run, so a chain runner → kernel → workers stops at
  once. Caveat: it fires when the parent *thread* that started the child
  ends; every child here is started from its parent's main thread (the
  runner's papermill loop, the notebook's cell, torchrun's agent loop).
- **A watchdog thread** in every such child: once a second it checks that
  its parent is still the process that started it (and that the runner is
  alive) and SIGKILLs itself otherwise. It covers what the signal cannot: a
  parent that died before the signal was armed, a launcher we do not
  control (torchrun's agent starts the ranks), a platform without prctl.
- **The runner as child subreaper** (``PR_SET_CHILD_SUBREAPER``): while it
  lives, a descendant whose own parent died is re-parented to the runner
  instead of init, so :func:`stop_descendants` finds and stops every
  process of the run after Ctrl-C, a ``kill`` or a failed step, including
  those in the process group of their own that Jupyter gives each kernel
  (which is why one process-group kill is not enough).

:func:`fault_point` is the test hook for the kill-and-resume test: with
``STUDY_FAULT`` set it SIGKILLs the runner and itself at a named point.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

RUNNER_PID = "STUDY_RUNNER_PID"      # the runner's pid, inherited by every process of a run
FAULT = "STUDY_FAULT"                # POINT[:NAME][@N]: die at the N-th (default 1st) such point
FAULT_COUNT = "STUDY_FAULT_COUNT"    # a file that counts the points reached across processes

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_POLL_S = 1.0

try:  # loaded once, in the parent: a preexec function must not load libraries after fork
    _prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
except (OSError, AttributeError):  # pragma: no cover - no libc prctl
    _prctl = None


def _set(option: int, value: int) -> bool:
    return _prctl is not None and _prctl(option, value, 0, 0, 0) == 0


# --------------------------------------------------------------------------
# In a child: die with the parent
# --------------------------------------------------------------------------

def die_with_parent() -> None:
    """Arm the parent-death signal (SIGKILL) in this process. Safe as a
    ``preexec_fn`` (runs between fork and exec; survives exec)."""
    _set(_PR_SET_PDEATHSIG, signal.SIGKILL)


def bind_to_parent(parent: int | None = None) -> None:
    """In a child process at its start: SIGKILL when its parent (``parent``,
    or the current one) or the runner is gone. Arms the parent-death signal,
    closes the race with a parent that died before that, and starts the
    watchdog thread."""
    parent = os.getppid() if parent is None else parent
    die_with_parent()
    runner = _runner()
    if os.getppid() != parent or not _alive(runner):
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(target=_watch, args=(parent, runner), name="die-with-parent", daemon=True).start()


def _watch(parent: int, runner: tuple[int, str] | None) -> None:  # pragma: no cover - kills its process
    while True:
        time.sleep(_POLL_S)
        if os.getppid() != parent or not _alive(runner):
            os.kill(os.getpid(), signal.SIGKILL)


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot), which tells a live
    process from a new one that was given a dead one's pid; None when gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
            return ""  # alive; no /proc to tell more
        except ProcessLookupError:
            return None
        except PermissionError:
            return ""


def _runner() -> tuple[int, str] | None:
    value = os.environ.get(RUNNER_PID, "")
    pid, _, start = value.partition(":")
    return (int(pid), start) if pid.isdigit() else None


def _alive(runner: tuple[int, str] | None) -> bool:
    if runner is None:
        return True
    start = _start_time(runner[0])
    return start is not None and (not runner[1] or not start or start == runner[1])


# --------------------------------------------------------------------------
# In the runner: own the run's processes
# --------------------------------------------------------------------------

def become_runner() -> None:
    """Mark this process as the runner: its children inherit
    ``STUDY_RUNNER_PID`` (pid and start time) and it becomes their child
    subreaper, so orphaned descendants stay findable while it lives."""
    os.environ[RUNNER_PID] = f"{os.getpid()}:{_start_time(os.getpid()) or ''}"
    _set(_PR_SET_CHILD_SUBREAPER, 1)


def descendants(pid: int | None = None) -> list[int]:
    """Every live process below ``pid`` (default: this one), parents first."""
    pid = os.getpid() if pid is None else pid
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:  # pragma: no cover - no /proc
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":  # a zombie is gone already; only its exit status is left
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop(0)
        found.append(child)
        todo.extend(children.get(child, []))
    return found


def stop_descendants(grace_s: float = 3.0) -> int:
    """SIGTERM every descendant, SIGKILL those still there after
    ``grace_s``, reap the ones that are our children; returns how many were
    stopped."""
    procs = descendants()
    for pid in procs:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _reap(procs):
        time.sleep(0.05)
    for pid in _reap(procs):
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and _reap(procs):
        time.sleep(0.05)
    _reap_zombies()
    return len(procs)


def _reap_zombies() -> None:
    """Collect the exit status of children that ended (as subreaper the
    runner inherits a kernel's orphans, which nobody else waits for)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _reap(pids: list[int]) -> list[int]:
    """Reap those of ``pids`` that are our exited children; return the live ones."""
    live = []
    for pid in pids:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                continue
        except ChildProcessError:
            pass  # not our child (a grandchild): alive while /proc says so
        state = _state(pid)
        if state is not None and state != "Z":
            live.append(pid)
    return live


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


# --------------------------------------------------------------------------
# The kill test's hook
# --------------------------------------------------------------------------

def fault_point(point: str, name: str = "") -> None:
    """With ``STUDY_FAULT=POINT[:NAME][@N]`` (NAME a substring of ``name``),
    SIGKILL the runner and this process the N-th time such a point is
    reached in the run: a kill at exactly this moment, for the test that
    checks a killed run resumes to the same result. A no-op otherwise."""
    spec = os.environ.get(FAULT)
    if not spec:
        return
    spec, _, nth = spec.partition("@")
    want, _, part = spec.partition(":")
    if want != point or part not in name:
        return
    if nth and _count() < int(nth):
        return
    runner = _runner()
    if runner is not None and runner[0] != os.getpid():
        _signal(runner[0], signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def _count() -> int:
    """How many matching points the run reached, this one included (a file
    of one byte per point, shared by every process of the run)."""
    path = os.environ.get(FAULT_COUNT)
    if not path:
        return 1
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, b".")
        return os.lseek(fd, 0, os.SEEK_CUR)  # O_APPEND: the end right after this byte, whatever others wrote
    finally:
        os.close(fd)
