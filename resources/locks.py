"""The cross-process locks the embedded engines need: chdb and Qdrant local mode each refuse a second
process on their data folder, while Dagster runs the daemon, the code server and each run apart.

:func:`exclusive_folder_lock` is held for one operation. :class:`HandoverLock` may be kept between
operations by a process that would rather not close its engine (chdb leaks threads each time it does),
and tells it when another process is waiting, so that it hands the folder over instead of holding it.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def lock_path_for(folder: Path) -> Path:
    """The lock file beside a data folder (``<folder>.lock``)."""
    return folder.parent / f"{folder.name}.lock"


@contextmanager
def exclusive_folder_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path``; blocks until the process holding it lets go."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class HandoverLock:
    """An exclusive ``flock`` on ``lock_path`` whose holder can ask whether another process waits for it.

    A process that wants the lock first takes a shared lock on ``<lock_path>.want`` and keeps it until it
    holds ``lock_path``; the holder probes the want file with a non-blocking exclusive lock, which fails
    exactly while someone waits. Both locks belong to open file descriptions, so they go with the process.
    """

    def __init__(self, lock_path: Path) -> None:
        self.lock_path = lock_path
        self.want_path = lock_path.with_name(lock_path.name + ".want")
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock, blocking until the process holding it hands it over."""
        if self._fd is not None:
            raise RuntimeError(f"{self.lock_path} is already held by this lock")
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        want = os.open(self.want_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(want, fcntl.LOCK_SH)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
        finally:
            os.close(want)  # drops the shared lock: this process no longer waits
        self._fd = fd

    def wanted(self) -> bool:
        """Whether another process is waiting for the lock."""
        want = os.open(self.want_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(want, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(want)
        return False

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def forget(self) -> None:
        """Drop the descriptor without unlocking: in a forked child, whose copy must not free the parent's
        lock (the parent still unlocks it through its own descriptor)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
