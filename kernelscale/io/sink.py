"""The file object the streaming writer writes a converted file into (DESIGN §6: streams, bounded memory).

:class:`DirectFileSink` is write-only and sequential: :class:`kernelscale.io.safetensors_io.SafetensorsWriter`
calls ``write``; ``close`` (or leaving the ``with`` block) writes the rest and closes the file.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np


class DirectFileSink:
    """The write-only file SafetensorsWriter streams into: bytes are gathered into page-aligned
    blocks that background threads write at their offsets (so the disk works while the next block
    fills), with ``O_DIRECT`` where the filesystem allows it.

    Why, measured on the benchmark VM (6.5 GB): through the page cache the kernel spent 8–23 s of
    CPU (bookkeeping per 4 KiB page, on the core the resize needs); O_DIRECT took 0.6 s. One
    16 MiB O_DIRECT write at a time ran at 0.86 GB/s, two in flight at 1.40 GB/s, four at 1.12.
    flush() writes the partial last block padded to the alignment and truncates the file back to
    its length, keeping the tail so that later writes extend it. A filesystem that refuses
    O_DIRECT gets the same blocks as buffered writes, from the start or the first refused block on.
    """

    BUFFER = 16 << 20
    IO_DEPTH = 2

    def __init__(self, path: str) -> None:
        self.name = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        self._align = 4096
        self.direct = False
        self._lock = threading.Lock()
        try:
            self._align = max(self._align, os.fstatvfs(self._fd).f_bsize)
            if self.BUFFER % self._align == 0 and getattr(os, "O_DIRECT", 0):
                self._set_direct(True)
        except OSError:
            self.direct = False
        self._size = max(self.BUFFER, self._align)
        # one buffer filling while IO_DEPTH are written; round robin reuses only finished ones
        self._buffers = [mmap.mmap(-1, self._size) for _ in range(self.IO_DEPTH + 1)]  # page-aligned
        # numpy views of the buffers: copies into them run without the GIL (numpy releases it for
        # plain byte copies), so the resize workers and the reader keep running meanwhile
        self._arrays = [np.frombuffer(buffer, dtype=np.uint8) for buffer in self._buffers]
        self._current = 0
        self._fill = 0  # bytes gathered in the current buffer
        self._offset = 0  # file offset of the current buffer's first byte (aligned)
        self._dirty = False
        self._pending: list[Any] = []
        self._io = ThreadPoolExecutor(max_workers=self.IO_DEPTH, thread_name_prefix="kernelscale-writer")

    def _set_direct(self, on: bool) -> None:
        import fcntl

        with self._lock:
            flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
            flag = getattr(os, "O_DIRECT", 0)
            fcntl.fcntl(self._fd, fcntl.F_SETFL, (flags | flag) if on else (flags & ~flag))
            self.direct = on

    def fileno(self) -> int:
        return self._fd

    def write(self, data: Any) -> int:
        """Append the bytes of ``data`` (any buffer); returns their count. A full block goes to a
        writer thread; at most IO_DEPTH blocks are in flight, so memory stays at IO_DEPTH + 1 blocks."""
        view = memoryview(data).cast("B")
        source = np.frombuffer(view, dtype=np.uint8)
        done = 0
        while done < len(view):
            buffer = self._buffers[self._current]
            take = min(len(view) - done, self._size - self._fill)
            self._arrays[self._current][self._fill:self._fill + take] = source[done:done + take]
            self._fill += take
            done += take
            self._dirty = True
            if self._fill == self._size:
                if len(self._pending) >= self.IO_DEPTH:
                    self._pending.pop(0).result()
                self._pending.append(self._io.submit(self._write_block, buffer, self._size, self._offset))
                self._offset += self._size
                self._current = (self._current + 1) % len(self._buffers)
                self._fill = 0
                self._dirty = False
        return len(view)

    def _write_block(self, buffer: mmap.mmap, length: int, offset: int) -> None:
        block = memoryview(buffer)[:length]
        try:
            done = 0
            while done < length:
                direct = self.direct
                try:
                    done += os.pwrite(self._fd, block[done:], offset + done)
                except OSError as exc:
                    if exc.errno != errno.EINVAL or not direct:
                        raise
                    self._set_direct(False)  # refused: carry on through the page cache
        finally:
            block.release()

    def _wait(self) -> None:
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def flush(self) -> None:
        """Wait for the blocks in flight and write the partial block, so the file holds every byte written."""
        self._wait()
        if not self._dirty:
            return
        padded = -(-self._fill // self._align) * self._align
        buffer = self._buffers[self._current]
        buffer[self._fill:padded] = bytes(padded - self._fill)
        self._write_block(buffer, padded, self._offset)
        os.ftruncate(self._fd, self._offset + self._fill)
        self._dirty = False

    def close(self) -> None:
        """Flush, then close the file (a second call does nothing)."""
        if self._fd < 0:
            return
        try:
            self.flush()
        finally:
            self._io.shutdown(wait=True)
            os.close(self._fd)
            self._fd = -1
            self._arrays = []  # the views hold the buffers' exports: released before closing them
            for buffer in self._buffers:
                buffer.close()

    def __enter__(self) -> "DirectFileSink":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
