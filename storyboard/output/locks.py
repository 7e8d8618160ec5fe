"""Locks where two storyboard processes can meet: an output folder, and the panel cache.

In: a folder and whether the holder only adds to it (shared) or may remove from it
(exclusive). Out: a context manager that holds an ``fcntl.flock`` on a lock file in that folder
for as long as it runs, and calls ``on_wait`` once if it has to wait for another process first.

- An output folder: one build or reroll at a time (exclusive), so two builds into one folder
  never leave one story's page with the other's manifest; the second waits, then finds the
  first one's panels in the cache and renders nothing twice.
- The cache: builds and rerolls add entries (shared: many at once); `clean` removes them
  (exclusive), so it waits for running builds instead of deleting what they just rendered.

A lock goes with its holder's process: a killed build leaves nothing locked. Where the platform
has no ``fcntl`` (Windows), these are no-ops.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".storyboard.lock"


@contextmanager
def locked(folder: Path, *, shared: bool = False,
           on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold ``folder``'s lock (creating the folder and its lock file if needed)."""
    if fcntl is None:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)  # the umask applies
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock
