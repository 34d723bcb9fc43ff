"""One run per results folder: a lock that a second run is refused by.

Why ``fcntl.flock`` on a lock file: the kernel releases it when its holder
dies, however it dies (SIGKILL, OOM killer, a closed terminal), so there is
never a stale lock to break by hand and no race between "is the holder
alive?" and "take it over". The file also holds a line of JSON about the
holder (pid, host, start time, command), for the refusal's message; the
holder clears it when it ends normally, so a lock file that still names a
holder when the lock is free was left by a run that was killed, which the
next run says in one line when it takes the folder over.

The runner holds the lock of its results folder and, for a sweep, of each
size folder; a notebook opened by hand (no runner) takes those of the run
folders it trains, samples or audits (:func:`for_runs`). Processes the
runner starts inherit ``STUDY_LOCKED`` and take no lock the runner holds.
Read-only commands (``--show-params``, ``--plan``, the audit of other
folders) take none.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

LOCK_NAME = ".study.lock"
HELD = "STUDY_LOCKED"  # os.pathsep-separated folders whose locks a parent process holds


class RunLockError(RuntimeError):
    """Another run holds the folder; the message says who and what to do."""


def _describe(info: dict) -> str:
    when = info.get("started", "?")
    command = info.get("command")
    return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, started {when}"
            + (f" ({command})" if command else ""))


class RunLock:
    """The lock of one folder: :meth:`acquire` or refuse at once, :meth:`release`."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder).resolve()
        self.path = self.folder / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> str | None:
        """Take the lock; returns a one-line note when it was taken over from
        a run that died holding it. Raises :class:`RunLockError` naming the
        live holder when another run holds it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            previous = _read(fd)
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise RunLockError(
                f"{self.folder} is in use by another run: {_describe(previous) if previous else 'a process'}; "
                f"wait for it to finish, stop it (kill {previous.get('pid', 'PID')} on its host), "
                f"or give this run another folder (--results DIR or --name NAME)") from None
        previous = _read(fd)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.now(UTC).astimezone().isoformat(timespec="seconds"),
                "command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:])[:200]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        os.fsync(fd)
        self.fd = fd
        if previous:
            return (f"study: {self.folder}: the run that held it ({_describe(previous)}) ended without "
                    f"releasing it (killed?); taking it over")
        return None

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)  # a free lock with no holder named: the last run ended normally
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _read(fd: int) -> dict:
    try:
        text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        info = json.loads(text) if text else {}
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def holder(folder: str | os.PathLike) -> dict | None:
    """Who holds ``folder``'s lock now (pid, host, started, command), or None."""
    path = Path(folder) / LOCK_NAME
    if not path.is_file():
        return None
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _read(fd) or {}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class Locks:
    """The locks one process holds, released together; the folders are
    published in ``STUDY_LOCKED`` for the processes it starts."""

    def __init__(self) -> None:
        self.held: dict[Path, RunLock] = {}

    def take(self, folders: Iterable[str | os.PathLike], say=print) -> None:
        """Lock each folder not already held (in sorted order, all or none)."""
        new = sorted({Path(f).resolve() for f in folders} - set(self.held) - inherited())
        taken = []
        try:
            for folder in new:
                lock = RunLock(folder)
                note = lock.acquire()
                taken.append(lock)
                if note:
                    say(note)
        except BaseException:
            for lock in taken:
                lock.release()
            raise
        self.held.update((lock.folder, lock) for lock in taken)
        os.environ[HELD] = os.pathsep.join(str(f) for f in sorted(inherited() | set(self.held)))

    def release(self) -> None:
        for lock in self.held.values():
            lock.release()
        mine = {str(f) for f in self.held}
        left = [f for f in os.environ.get(HELD, "").split(os.pathsep) if f and f not in mine]
        if left:
            os.environ[HELD] = os.pathsep.join(left)
        else:
            os.environ.pop(HELD, None)
        self.held.clear()

    def __enter__(self) -> Locks:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def inherited() -> set[Path]:
    """The folders whose locks a parent process (the runner) holds for us."""
    return {Path(f) for f in os.environ.get(HELD, "").split(os.pathsep) if f}


@contextlib.contextmanager
def for_runs(folders: Iterable[str | os.PathLike]) -> Iterator[Locks]:
    """Hold the locks of run folders for a block (a notebook run by hand);
    those the runner holds are not taken again."""
    with Locks() as locks:
        locks.take(folders)
        yield locks
