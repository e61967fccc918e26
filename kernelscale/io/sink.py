"""The file the streaming writer writes a converted file into (DESIGN §6: streams, bounded memory).

:class:`DirectFileSink` is write-only and sequential in file order, but filled in parallel: the one
thread that lays the file out calls :meth:`~DirectFileSink.reserve` for the next bytes and gets
views straight into the page-aligned blocks that go to disk; whichever thread computes those bytes
writes them there and calls :meth:`Reservation.release`. ``write`` is reserve + copy + release.
``close`` (or leaving the ``with`` block) writes the rest and closes the file.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np


@dataclass
class _Block:
    """One BUFFER-sized block of the file, held in buffer ``slot`` while it fills."""

    slot: int
    offset: int  # file offset of its first byte
    holds: int = 0  # reservations not yet released
    end: Optional[int] = None  # bytes laid out in it, once no further reservation reaches it


@dataclass
class Reservation:
    """Bytes ``[offset, offset + nbytes)`` of the file: ``views`` are writable uint8 arrays, in
    file order, straight into the blocks that go to disk (several when the range crosses a block
    boundary). Fill them, then :meth:`release` exactly once (also on failure): the blocks it
    touches are written once every reservation in them is released."""

    offset: int
    nbytes: int
    views: list[np.ndarray]
    _sink: "DirectFileSink"
    _blocks: list[_Block] = field(repr=False)
    _released: bool = False

    def fill(self, data: Any) -> None:
        """Copy the bytes of ``data`` (any buffer, exactly :attr:`nbytes` of them) into the views;
        ValueError for another length. The copies run without the GIL (numpy byte copies)."""
        view = memoryview(data).cast("B")
        if len(view) != self.nbytes:
            raise ValueError(f"{len(view)} bytes given for a reservation of {self.nbytes}")
        source = np.frombuffer(view, dtype=np.uint8) if len(view) else np.empty(0, np.uint8)
        at = 0
        for target in self.views:
            target[:] = source[at:at + len(target)]
            at += len(target)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._sink._release(self._blocks)


class DirectFileSink:
    """The write-only file the converter streams into: page-aligned blocks that background threads
    write at their offsets (so the disk works while later blocks fill), with ``O_DIRECT`` where the
    filesystem allows it. Results are computed straight into the blocks (:meth:`reserve`), so no
    thread copies them again.

    Why, measured on the benchmark VM (6.5 GB): through the page cache the kernel spent 8–23 s of
    CPU (bookkeeping per 4 KiB page, on the core the resize needs); O_DIRECT took 0.6 s. One
    16 MiB O_DIRECT write at a time ran at 0.86 GB/s, two in flight at 1.40 GB/s, four at 1.12.
    Copying every result into the blocks on one thread took 3.2 s of that thread's time for 6.5 GB,
    the longest serial step of a conversion; reserving moved it into the resize itself.
    flush() writes the partial last block padded to the alignment and truncates the file back to
    its length, keeping the tail so that later writes extend it. A filesystem that refuses
    O_DIRECT gets the same blocks as buffered writes, from the start or the first refused block on.

    Memory: SLOTS blocks of BUFFER bytes. :meth:`reserve` waits for a free one, so the caller can
    run at most SLOTS blocks ahead of the disk; one reservation holds at most :attr:`largest_reservation`
    bytes ((SLOTS - 1) blocks' worth, so at most SLOTS blocks when it starts inside one).
    """

    BUFFER = 16 << 20
    IO_DEPTH = 2
    SLOTS = 6

    def __init__(self, path: str) -> None:
        self.name = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        self._align = 4096
        self.direct = False
        self._flag_lock = threading.Lock()
        try:
            self._align = max(self._align, os.fstatvfs(self._fd).f_bsize)
            if self.BUFFER % self._align == 0 and getattr(os, "O_DIRECT", 0):
                self._set_direct(True)
        except OSError:
            self.direct = False
        self._size = max(self.BUFFER, self._align)
        self._buffers = [mmap.mmap(-1, self._size) for _ in range(self.SLOTS)]  # page-aligned
        # numpy views of the buffers: copies into them run without the GIL (numpy releases it for
        # plain byte copies), and torch can compute into them (torch.from_numpy)
        self._arrays = [np.frombuffer(buffer, dtype=np.uint8) for buffer in self._buffers]
        self._free = list(range(self.SLOTS))
        self._blocks: dict[int, _Block] = {}  # by block index, while held or being written
        self._position = 0  # file offset of the next reserved byte
        self._length = 0  # file length so far (the truncation point of the tail)
        self._cond = threading.Condition()
        self._error: Optional[BaseException] = None
        self._writes: list[Future] = []
        self._io = ThreadPoolExecutor(max_workers=self.IO_DEPTH, thread_name_prefix="kernelscale-writer")

    def _set_direct(self, on: bool) -> None:
        import fcntl

        with self._flag_lock:
            flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
            flag = getattr(os, "O_DIRECT", 0)
            fcntl.fcntl(self._fd, fcntl.F_SETFL, (flags | flag) if on else (flags & ~flag))
            self.direct = on

    def fileno(self) -> int:
        return self._fd

    @property
    def largest_reservation(self) -> int:
        """The most bytes one :meth:`reserve` may ask for."""
        return (self.SLOTS - 1) * self._size

    @property
    def position(self) -> int:
        """File offset of the next byte :meth:`reserve` or :meth:`write` lays out."""
        return self._position

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _block(self, index: int) -> _Block:
        """Block ``index``, taking a free buffer for it (waiting for a write to finish) if new."""
        block = self._blocks.get(index)
        if block is None:
            while not self._free:
                self._raise_error()
                self._cond.wait()
            self._raise_error()
            block = self._blocks[index] = _Block(self._free.pop(), index * self._size)
        return block

    def reserve(self, nbytes: int) -> Reservation:
        """The next ``nbytes`` of the file as writable views (see :class:`Reservation`). Called from
        one thread, in file order; waits while every buffer is held or being written. Raises the
        error of a failed disk write."""
        if nbytes < 0:
            raise ValueError(f"a reservation of {nbytes} bytes: the count of bytes cannot be negative")
        if nbytes > self.largest_reservation:
            raise ValueError(f"a reservation of {nbytes} bytes exceeds the sink's {self.largest_reservation}")
        views: list[np.ndarray] = []
        blocks: list[_Block] = []
        with self._cond:
            self._raise_error()
            start = position = self._position
            end = start + nbytes
            while position < end:
                index, within = divmod(position, self._size)
                block = self._block(index)
                take = min(end - position, self._size - within)
                views.append(self._arrays[block.slot][within:within + take])
                block.holds += 1
                blocks.append(block)
                position += take
            self._position = self._length = end
            # every block before the one the position is now in is laid out to its end
            for block in blocks:
                if block.offset + self._size <= end:
                    block.end = self._size
        return Reservation(start, nbytes, views, self, blocks)

    def _release(self, blocks: list[_Block]) -> None:
        with self._cond:
            for block in blocks:
                block.holds -= 1
                if block.holds == 0 and block.end == self._size:
                    self._submit(block, self._size)

    def _submit(self, block: _Block, length: int) -> None:
        block.end = -1  # being written: never again
        future = self._io.submit(self._write_block, self._buffers[block.slot], length, block.offset)
        self._writes.append(future)
        future.add_done_callback(lambda f, b=block: self._written(b, f))

    def _written(self, block: _Block, future: Future) -> None:
        with self._cond:
            # a cancelled write (abandon drops the queued ones) failed nothing: its content no longer matters
            if not future.cancelled() and future.exception() is not None and self._error is None:
                self._error = future.exception()
            self._blocks.pop(block.offset // self._size, None)
            self._free.append(block.slot)
            self._writes.remove(future)
            self._cond.notify_all()

    def write(self, data: Any) -> int:
        """Append the bytes of ``data`` (any buffer) by copying them into reserved blocks; returns
        their count."""
        view = memoryview(data).cast("B")
        for done in range(0, len(view), self._size):
            chunk = view[done:done + self._size]
            reservation = self.reserve(len(chunk))
            try:
                reservation.fill(chunk)
            finally:
                reservation.release()
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

    def _wait_writes(self) -> None:
        with self._cond:
            while self._writes:
                self._cond.wait()
            self._raise_error()

    def flush(self) -> None:
        """Wait until every released byte is on its way and written, writing the partial last block
        padded to the alignment (then truncating the file back), so the file holds every byte laid
        out. Every reservation must have been released."""
        with self._cond:
            if any(block.holds for block in self._blocks.values()):
                raise RuntimeError(f"{self.name}: flushed with reservations not released")
            for block in list(self._blocks.values()):
                if block.end == self._size:
                    self._submit(block, self._size)
        self._wait_writes()
        with self._cond:
            tail = self._blocks.get(self._length // self._size)
        if tail is None:
            return
        fill = self._length - tail.offset
        padded = -(-fill // self._align) * self._align
        self._arrays[tail.slot][fill:padded] = 0
        self._write_block(self._buffers[tail.slot], padded, tail.offset)
        os.ftruncate(self._fd, self._length)
        # the tail block stays held, filled to ``fill``: later writes extend it and it is written again

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
            self._arrays = []  # the buffers go with the last view a caller still holds

    def abandon(self) -> None:
        """Close the file without flushing, after a failure (its content no longer matters): waits
        only for the writes already in flight."""
        if self._fd < 0:
            return
        self._io.shutdown(wait=True, cancel_futures=True)
        os.close(self._fd)
        self._fd = -1
        self._arrays = []

    def __enter__(self) -> "DirectFileSink":
        return self

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abandon()
