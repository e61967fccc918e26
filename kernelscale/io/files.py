"""Opening the small files kernelscale reads whole (shard indexes, ``config.json``, plan files) and
the safetensors files it reads in place, without hanging or running out of memory on what a path
may name instead: a FIFO, a character device (``/dev/zero``), a socket, a file of gigabytes.

Every path is judged by name first (``os.stat``): anything but a regular file is refused without
being opened. The open itself is non-blocking and checked again on the open descriptor, so a file
swapped for a FIFO between the two cannot block either; small files are read up to their limit
plus one byte, never to their end.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any, Type

from kernelscale.errors import KernelscaleError

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def kind_of(mode: int) -> str:
    """What a non-regular file is, in words ("a FIFO (named pipe)", "a character device", …)."""
    for test, words in _KINDS:
        if test(mode):
            return words
    return "not a regular file"


def open_regular(path: str, error: Type[KernelscaleError], what: str) -> int:
    """A read-only descriptor of the regular file ``path`` (symlinks followed). ``error`` (naming
    ``path``, ``what`` it should be, and what it is instead) for a missing or unreadable path or one
    that is not a regular file; a FIFO or device is never opened for reading."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError) as exc:
        raise error(f"{path}: cannot read {what}: {getattr(exc, 'strerror', None) or exc}") from None
    if not stat.S_ISREG(mode):
        raise error(f"{path}: {what} must be a regular file, but this is {kind_of(mode)}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):  # replaced between the stat and the open
        os.close(fd)
        raise error(f"{path}: {what} must be a regular file, but this is {kind_of(mode)}")
    os.set_blocking(fd, True)
    return fd


def read_small_file(path: str, limit: int, error: Type[KernelscaleError], what: str) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them: ``error`` for a file
    larger than that (judged by its size before reading, and by reading at most ``limit + 1``
    bytes), and as :func:`open_regular` for anything that is not a regular file."""
    fd = open_regular(path, error, what)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise error(f"{path}: {what} is {size} bytes, above the {limit}-byte limit")
        parts, total = [], 0
        while total <= limit:
            part = os.read(fd, limit + 1 - total)
            if not part:
                break
            parts.append(part)
            total += len(part)
        if total > limit:
            raise error(f"{path}: {what} is larger than the {limit}-byte limit")
        return b"".join(parts)
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def read_json_file(path: str, limit: int, error: Type[KernelscaleError], what: str) -> Any:
    """The JSON value in the regular file ``path`` (UTF-8, at most ``limit`` bytes), read as
    :func:`read_small_file` does. ``error`` naming ``path`` and ``what`` for a file that cannot be
    read so, is not UTF-8, is not JSON, or nests deeper than the parser's recursion limit
    (100,000 nested lists raise RecursionError in ``json.loads``)."""
    raw = read_small_file(path, limit, error, what)
    try:
        return json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise error(f"{path}: {what} is JSON nested too deeply to parse") from None
    except ValueError as exc:  # UnicodeDecodeError and json.JSONDecodeError included
        raise error(f"{path}: {what} is not valid JSON: {exc}") from None
