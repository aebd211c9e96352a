"""Primary-storage readers: where the host reads a volume's blocks for a base copy.

A reader is anything with `block_bytes`, `blocks` and `read(lba, count)`. `FileStorage` reads
a regular file or a block device (the virtual board's volume image is a file); a board that
keeps its storage on chip is read over the link by the device driver, behind the same three
names.
"""

import os
import stat
from pathlib import Path
from typing import Protocol


class StorageError(OSError):
    """The primary storage cannot be read as asked."""


class PrimaryStorageReader(Protocol):
    block_bytes: int
    blocks: int

    def read(self, lba: int, count: int) -> bytes: ...


class FileStorage:
    """A volume held in a file or block device, read with pread."""

    def __init__(self, path: Path, block_bytes: int):
        self.path = Path(path)
        self.block_bytes = block_bytes
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise StorageError(f"cannot open primary storage {self.path}: {exc.strerror} "
                               "(check the path, and that you may read it)") from exc
        info = os.fstat(self._fd)
        if not (stat.S_ISREG(info.st_mode) or stat.S_ISBLK(info.st_mode)):
            os.close(self._fd)
            raise StorageError(f"{self.path} is neither a file nor a block device: give the volume's "
                               "image file or its block device (e.g. /dev/sdb)")
        size = os.lseek(self._fd, 0, os.SEEK_END)
        if size % block_bytes:
            os.close(self._fd)
            raise StorageError(f"{self.path}: size {size} is not a whole number of {block_bytes}-byte "
                               "blocks: is it the volume this journal is for?")
        self.blocks = size // block_bytes

    def read(self, lba: int, count: int) -> bytes:
        if lba < 0 or count < 0 or lba + count > self.blocks:
            raise StorageError(f"{self.path}: blocks {lba}..{lba + count} are outside its {self.blocks}")
        data = os.pread(self._fd, count * self.block_bytes, lba * self.block_bytes)
        if len(data) != count * self.block_bytes:
            raise StorageError(f"{self.path}: short read at block {lba}")
        return data

    def read_into(self, lba: int, out) -> None:
        """Read `len(out) // block_bytes` blocks from `lba` straight into the writable buffer `out`."""
        view = memoryview(out).cast("B")
        count = len(view) // self.block_bytes
        if lba < 0 or lba + count > self.blocks:
            raise StorageError(f"{self.path}: blocks {lba}..{lba + count} are outside its {self.blocks}")
        if os.preadv(self._fd, [view], lba * self.block_bytes) != len(view):
            raise StorageError(f"{self.path}: short read at block {lba}")

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
