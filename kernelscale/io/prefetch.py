"""Reading a command's input ahead: into the page cache while the process is still starting up
(:func:`prefetch`), and ahead of the converter's reader (:class:`Readahead`).

``kernelscale convert`` spends its first second importing torch, with the disk idle; the input is
read later, while the output is being written, and the two share the disk. :func:`prefetch` asks
the kernel (``posix_fadvise(WILLNEED)``, from a daemon thread) to read the input ahead during that
second. It is only a hint: it reads nothing into this process, takes no lock, and ignores every
error; anything that is not a regular file (a FIFO, a device) is never opened, and the bytes it
asks for are bounded (:data:`PREFETCH_BYTES`, and a quarter of the memory available), so the page
cache it fills stays reclaimable and small beside the machine.

Imports nothing heavy (no torch, no numpy): it runs before the command's own modules are imported.
"""

from __future__ import annotations

import itertools
import json
import os
import stat
import threading
from typing import Iterator, Optional

PREFETCH_BYTES = 2 << 30
"""At most this many bytes are asked for: about what the disk reads while torch is imported."""

ADVISE_CHUNK = 1 << 20
"""Bytes per ``posix_fadvise(WILLNEED)`` call. Linux reads at most max(read_ahead_kb,
max_sectors_kb) per call and silently drops the rest of the range (one call over 1 GiB read 8 MiB
on the benchmark VM); 1 MiB is below both on common disks, and a loop of calls queues the whole
range (1.72 GB in the page cache 0.9 s after the calls began there)."""


def advise_willneed(fd: int, start: int, length: int) -> None:
    """Ask the kernel to read bytes ``[start, start + length)`` of ``fd`` into the page cache, all
    of them (:data:`ADVISE_CHUNK` at a time). May block while the disk's queue is full; raises OSError."""
    end = start + length
    for offset in range(start, end, ADVISE_CHUNK):
        os.posix_fadvise(fd, offset, min(ADVISE_CHUNK, end - offset), os.POSIX_FADV_WILLNEED)

SUFFIXES = (".safetensors",)

MAX_FILES = 10_000
"""At most this many folder entries are looked at (a folder IN of millions of entries costs no more)."""

MAX_INDEX_BYTES = 64 << 20
"""A shard index larger than this is not read for the prefetch (the converter judges it)."""


def _available_memory() -> Optional[int]:
    try:
        with open("/proc/meminfo", "rb") as fh:
            for line in fh:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def input_files(path: str) -> Iterator[str]:
    """The safetensors files a conversion of ``path`` reads, as far as a cheap look tells: the file
    itself; for a shard index, the shards its ``weight_map`` names (an index over MAX_INDEX_BYTES or
    that does not parse: none); for a folder, its ``*.safetensors`` files (top level, then one level
    of subfolders, in name order), looking at MAX_FILES entries at most. Regular files only."""
    try:
        if _regular(path):
            if path.endswith(SUFFIXES):
                yield path
            elif path.endswith(".index.json"):
                yield from _shards(path)
            return
        if not os.path.isdir(path):
            return
        budget = [MAX_FILES]
        names = _names(path, budget)
        candidates = [os.path.join(path, n) for n in names]
        for sub in [c for c in candidates if os.path.isdir(c)]:
            candidates += [os.path.join(sub, n) for n in _names(sub, budget)]
        for candidate in candidates:
            if candidate.endswith(SUFFIXES) and _regular(candidate):
                yield candidate
    except (OSError, ValueError, RecursionError):
        return


def _shards(index: str) -> Iterator[str]:
    if os.path.getsize(index) > MAX_INDEX_BYTES:
        return
    with open(index, "rb") as fh:
        weight_map = json.loads(fh.read()).get("weight_map")
    folder = os.path.dirname(index) or "."
    if isinstance(weight_map, dict):
        for name in dict.fromkeys(v for v in weight_map.values() if isinstance(v, str)):
            shard = os.path.normpath(os.path.join(folder, name))
            if shard.endswith(SUFFIXES) and _regular(shard):
                yield shard


def _names(folder: str, budget: list[int]) -> list[str]:
    """Up to ``budget[0]`` entry names of ``folder``, sorted; the count is taken from the budget."""
    try:
        with os.scandir(folder) as entries:
            names = [entry.name for entry in itertools.islice(entries, max(0, budget[0]))]
    except OSError:
        return []
    budget[0] -= len(names)
    return sorted(names)


def _advise(paths: list[str], budget: int) -> None:
    for path in paths:
        if budget <= 0:
            return
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            continue
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            length = min(os.fstat(fd).st_size, budget)
            budget -= length
            advise_willneed(fd, 0, length)
        except OSError:
            pass
        finally:
            os.close(fd)


def _prefetch(path: str, budget: int) -> None:
    try:
        paths = list(input_files(path))
        if paths:
            _advise(paths, budget)
    except Exception:  # a hint only: whatever the filesystem does, the command itself reports it
        return


def prefetch(path: str, budget: int = PREFETCH_BYTES) -> Optional[threading.Thread]:
    """Ask the kernel to read the first ``budget`` bytes of ``path``'s input files
    (:func:`input_files`, at most MAX_FILES of them) into the page cache; finding them and asking
    both happen on a daemon thread, which is returned (None when there is nothing to do: no path,
    no budget, no posix_fadvise). Never raises, never blocks the caller."""
    if not hasattr(os, "posix_fadvise") or not isinstance(path, str) or not path:
        return None
    available = _available_memory()
    if available is not None:
        budget = min(budget, available // 4)
    if budget <= 0:
        return None
    thread = threading.Thread(target=_prefetch, args=(path, budget), name="kernelscale-prefetch", daemon=True)
    thread.start()
    return thread


class Readahead:
    """Has the kernel read a file ahead of the thread reading it (posix_fadvise
    WILLNEED over the next READAHEAD bytes, from a thread of its own, since the advice blocks while
    the disk's queue is full), so reading overlaps resizing instead of preceding it; the window
    keeps the page cache it fills bounded, whatever the checkpoint's size."""

    READAHEAD = 256 << 20

    def __init__(self, path: str) -> None:
        self._fd = -1
        self._advised = 0  # advice given up to here
        self._wanted = 0  # advice asked for up to here
        self._cond = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        if hasattr(os, "posix_fadvise"):
            try:
                self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError:
                self._fd = -1

    def before(self, start: int, end: int) -> None:
        """The reader reached bytes ``[start, end)`` of the file: keep READAHEAD bytes past ``end`` advised."""
        end += self.READAHEAD
        if self._fd < 0 or end <= self._wanted + self.READAHEAD // 4:
            return
        with self._cond:
            self._wanted = end
            if self._advised < start:
                self._advised = start  # what lies before was read already
            self._cond.notify()
        if self._thread is None:
            self._thread = threading.Thread(target=self._advise, name="kernelscale-readahead", daemon=True)
            self._thread.start()

    def _advise(self) -> None:
        while True:
            with self._cond:
                while self._fd >= 0 and self._advised >= self._wanted:
                    self._cond.wait()
                if self._fd < 0:
                    return
                start, end = self._advised, min(self._wanted, self._advised + (16 << 20))
                self._advised = end
                fd = self._fd
            try:
                advise_willneed(fd, start, end - start)
            except OSError:
                return

    def close(self) -> None:
        with self._cond:
            fd, self._fd = self._fd, -1
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
        if fd >= 0:
            os.close(fd)
