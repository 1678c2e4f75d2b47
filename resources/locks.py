"""The cross-process lock the embedded engines need: chdb and Qdrant local mode each refuse a second
process on their data folder, while Dagster runs the daemon, the code server and each run apart."""

from __future__ import annotations

import fcntl
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
