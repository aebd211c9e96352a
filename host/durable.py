"""Small file-system steps that survive a crash: a rename and the folder entry it changes."""

import os
from pathlib import Path


def fsync_dir(folder: Path) -> None:
    """Make the folder's entries (a file created, renamed or removed in it) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace(tmp: Path, target: Path) -> None:
    """Rename an fsynced `tmp` over `target` durably: a crash leaves the old or the new file."""
    os.replace(tmp, target)
    fsync_dir(Path(target).parent)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves the old or the new content."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    replace(tmp, path)
