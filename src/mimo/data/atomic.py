"""Files that are never seen half-written: every file mimo keeps (checkpoints, latents, manifests, cached
weights, results) goes through `write_atomically`, so a reader, a resumed job or a process killed
mid-write finds the old file or the whole new one."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

TEMPORARY_SUFFIX = ".tmp"  # a file being written; never read


def fsync_directory(path: Path) -> None:
    """Make a rename inside `path` durable."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_atomically(path: str | Path, write: Callable[[Path], object]) -> None:
    """`write(temporary)` writes the content; it is fsynced and renamed over `path`, then the rename synced."""
    path = Path(path)
    temporary = path.with_name(path.name + TEMPORARY_SUFFIX)
    write(temporary)
    with open(temporary, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    fsync_directory(path.parent)
