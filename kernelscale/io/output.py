"""The output location: where a conversion's result goes and how it is committed (DESIGN §6).

:class:`AtomicOutput` refuses an OUT that is an input (same device and inode), lies inside the input
folder or holds it, exists without ``force``, is a folder holding files this conversion would not
write (``force`` replaces the whole folder, so they would be lost), or goes into a folder that takes no new file
(read-only, no permission; probed, so ``--dry-run`` sees it too); the result is built as
``.OUT.kernelscale-tmp-<pid>`` beside OUT (a file, or a folder for multi-file output), fsynced,
then renamed onto OUT (the output shard index last) and the directory fsynced, so an interrupted
run leaves no partial OUT. :func:`clean_stale` removes a temp entry left by a run that died (its
pid no longer alive) and puts back a previous OUT it had moved aside; :func:`check_free_space`
refuses a disk too small before anything is written. Filesystem work only: what goes into the
temp entry is :mod:`kernelscale.stream`'s job. This module owns the temp entries' names
(:func:`temp_entry_name`, :func:`parse_temp_entry`), which checkpoint discovery skips.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from typing import TYPE_CHECKING, NamedTuple, Optional

from kernelscale.errors import KernelscaleError
from kernelscale.io.safetensors_io import PathLike
from kernelscale.text import human_bytes

if TYPE_CHECKING:  # the plan is only read here; kernelscale.checkpoint_plan imports this package
    from kernelscale.checkpoint_plan import CheckpointPlan

TMP_TAG = "kernelscale-tmp"
"""Tag of the entry a conversion builds beside OUT: ``.OUT.kernelscale-tmp-<pid>``."""
OLD_TAG = "kernelscale-old"
"""Tag of the previous OUT moved aside while a ``--force`` run replaces it: ``.OUT.kernelscale-old-<pid>``."""
_TEMP_ENTRY = re.compile(rf"^\.(?P<name>.+)\.(?P<tag>{TMP_TAG}|{OLD_TAG})-(?P<pid>\d+)$")


class TempEntry(NamedTuple):
    """A temp entry's name taken apart: OUT's base ``name``, the ``tag`` and the writer's ``pid``."""

    name: str
    tag: str
    pid: int


def temp_entry_name(name: str, tag: str, pid: int) -> str:
    """The name of a temp entry beside OUT (``name`` is OUT's base name, ``tag`` TMP_TAG or OLD_TAG)."""
    return f".{name}.{tag}-{pid}"


def parse_temp_entry(entry: str) -> Optional[TempEntry]:
    """The parts of a temp entry's name (:func:`temp_entry_name`), or None for any other name."""
    match = _TEMP_ENTRY.match(entry)
    return TempEntry(match.group("name"), match.group("tag"), int(match.group("pid"))) if match else None


SPACE_MARGIN = 64_000_000
"""Free space required beyond the planned output size (filesystem metadata, other writers): 64 MB,
in the decimal units every size kernelscale prints is given in (docs/cli.md, Safety)."""


class OutputError(KernelscaleError):
    """OUT cannot be written: it exists, it is the input, the disk is too small, or the result failed its check."""


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _inside(child: str, parent: str) -> bool:
    """Whether ``child`` lies within ``parent`` (or is it), by file identity of each ancestor."""
    current = os.path.realpath(child)
    while True:
        if _same_file(current, parent):
            return True
        up = os.path.dirname(current)
        if up == current:
            return False
        current = up


class AtomicOutput:
    """Where the result goes and how it is committed.

    ``file``: one file, written as ``.OUT.kernelscale-tmp-<pid>`` and renamed. ``dir``: a folder
    built as ``.OUT.kernelscale-tmp-<pid>/`` and renamed last (an existing OUT, with --force, is
    first moved to ``.OUT.kernelscale-old-<pid>`` and removed after). ``index``: OUT names the
    output shard index; the shards are built in the temp folder, moved beside OUT, and the index
    renamed last, so OUT appears only when everything else is in place.
    """

    def __init__(self, plan: "CheckpointPlan", dst: str, force: bool) -> None:
        self.plan = plan
        self.dst = dst
        self.parent = os.path.dirname(dst)
        self.name = os.path.basename(dst)
        if not self.name:
            raise OutputError(f"{dst}: give a file or folder name for the output")
        if plan.layout == "file":
            self.mode = "file"
        elif plan.layout == "sharded" and dst.endswith(".json"):
            self.mode = "index"
        else:
            self.mode = "dir"
        self.staging = os.path.join(self.parent, temp_entry_name(self.name, TMP_TAG, os.getpid()))
        self.old = os.path.join(self.parent, temp_entry_name(self.name, OLD_TAG, os.getpid()))
        self._check(force)

    def _check(self, force: bool) -> None:
        plan, dst = self.plan, self.dst
        if not os.path.isdir(self.parent):
            raise OutputError(f"{dst}: the folder {self.parent} does not exist")
        inputs = [fp.src for fp in plan.files] + [x.src for x in plan.extras if x.src]
        if plan.layout != "file":
            inputs.append(plan.src)
        for path in inputs:
            if _same_file(path, dst):
                raise OutputError(f"{dst} is the input itself ({path}); write the result to another path")
        if self.mode == "file":
            if os.path.isdir(dst):
                raise OutputError(f"{dst} is a folder; give the output file's name")
        elif self.mode == "dir":
            if os.path.exists(dst) and not os.path.isdir(dst):
                raise OutputError(f"{dst} exists and is not a folder; a {plan.layout} checkpoint converts to a folder")
            src_root = plan.src if plan.layout == "folder" else os.path.dirname(plan.src)
            if _inside(dst, src_root) and plan.layout == "folder":
                raise OutputError(f"{dst} is inside the input folder {src_root}; write the result elsewhere")
            if os.path.exists(dst) and _inside(src_root, dst):
                raise OutputError(f"the input {plan.src} is inside {dst}; replacing {dst} would delete it")
        else:
            for fp in plan.files:
                target = os.path.join(self.parent, fp.rel)
                if _same_file(target, fp.src) or any(_same_file(target, other.src) for other in plan.files):
                    raise OutputError(f"{target} would overwrite an input shard; write the result to another folder")
                if os.path.lexists(target) and not force:
                    raise OutputError(f"{target} exists (a shard of the output); add --force to overwrite it")
        if os.path.lexists(dst) and not force:
            raise OutputError(f"{dst} exists; add --force to overwrite it")
        if self.mode == "dir":
            self._check_replaceable()
        self._check_writable()

    def written(self) -> set[str]:
        """The paths, relative to OUT, that this conversion writes: its files and their folders."""
        files = {fp.rel for fp in self.plan.files} | {x.rel for x in self.plan.extras}
        folders = {parent for rel in files for parent in _parents(rel)}
        return files | {f"{d}/" for d in folders}

    def _check_replaceable(self) -> None:
        """OutputError unless an existing OUT folder holds nothing but what this conversion writes (a
        previous conversion's files, or some of them): --force replaces the whole folder, and anything
        else in it would be lost with it."""
        if not os.path.isdir(self.dst) or os.path.islink(self.dst):
            return
        foreign = _foreign_entries(self.dst, self.written())
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise OutputError(f"OUT {self.dst} holds {len(foreign)} file(s) or folder(s) this conversion would not write "
                              f"({shown}); --force replaces the whole folder, so move them or choose another OUT")

    def _check_writable(self) -> None:
        """OutputError naming OUT unless its folder takes new entries: the temp entry, the rename
        onto OUT (and, with --force, moving the old OUT aside) all happen there. A real probe
        (:func:`_probe_folder`) rather than os.access: it tells a read-only mount (EROFS) from
        missing permission (EACCES), and sees what root may not do despite the bits."""
        try:
            _probe_folder(self.parent, self.staging)
        except OSError as exc:
            raise OutputError(f"cannot write {self.dst}: {exc.strerror or exc}") from None

    def path_for(self, rel: str) -> str:
        if self.mode == "file":
            return self.staging
        if self.mode == "index" and rel == self.plan.index_rel:
            return os.path.join(self.staging, self.name)
        return os.path.join(self.staging, rel)

    def begin(self) -> None:
        if self.mode != "file":
            os.mkdir(self.staging, 0o777)  # permissions from the umask

    def commit(self, force: bool) -> None:
        if os.path.lexists(self.dst) and not force:
            raise OutputError(f"{self.dst} appeared while converting; add --force to overwrite it")
        if self.mode == "file":
            os.replace(self.staging, self.dst)
        elif self.mode == "dir":
            _fsync_tree(self.staging)
            self._check_replaceable()  # again: something may have been put there while converting
            moved = False
            if os.path.lexists(self.dst):
                os.rename(self.dst, self.old)
                moved = True
            try:
                os.rename(self.staging, self.dst)
            except BaseException:
                if moved:
                    os.rename(self.old, self.dst)
                raise
            fsync_path(self.parent)
            if moved:
                _remove(self.old)
        else:
            for fp in self.plan.files:
                target = os.path.join(self.parent, fp.rel)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.replace(os.path.join(self.staging, fp.rel), target)
                fsync_path(os.path.dirname(target))
            os.replace(os.path.join(self.staging, self.name), self.dst)
            _remove(self.staging)
        fsync_path(self.parent)

    def abort(self) -> None:
        """Remove the temp entry, if any. Never raises: it runs while an error is on its way out,
        and a temp entry it cannot remove is removed by the next run (clean_stale)."""
        try:
            _remove(self.staging)
        except OSError:
            pass


def _parents(rel: str) -> list[str]:
    """The folders above a relative path: ``a/b/c`` → ``["a", "a/b"]``."""
    parts = rel.split("/")[:-1]
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _foreign_entries(root: str, written: set[str]) -> list[str]:
    """What ``root`` holds beyond ``written`` (relative paths, folders with a trailing ``/``): every
    file, link or other entry not written, and every empty folder not written, sorted; links are not
    followed. A folder the conversion does not write is listed by its files."""
    foreign: list[str] = []

    def walk(folder: str, rel: str) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            foreign.append(f"{rel}/" if rel else ".")
            return
        if not entries and rel and f"{rel}/" not in written:
            foreign.append(f"{rel}/")
        for entry in entries:
            path = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_dir(follow_symlinks=False):
                walk(entry.path, path)
            elif path not in written:
                foreign.append(path)

    walk(root, "")
    return foreign


def _probe_folder(folder: str, fallback: str) -> None:
    """Create a file in ``folder`` and remove it, leaving nothing behind: an unnamed ``O_TMPFILE``
    file where the filesystem has them, else ``fallback`` (a temp entry's name, which clean_stale
    removes should this process die in between). OSError when the folder takes no new file."""
    cloexec = getattr(os, "O_CLOEXEC", 0)
    tmpfile = getattr(os, "O_TMPFILE", 0)
    if tmpfile:
        try:
            os.close(os.open(folder, tmpfile | os.O_WRONLY | cloexec, 0o600))
            return
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):  # no O_TMPFILE here
                raise
    try:
        fd = os.open(fallback, os.O_WRONLY | os.O_CREAT | os.O_EXCL | cloexec, 0o600)
    except FileExistsError:
        return  # this process's temp entry is there already: the folder takes files
    os.close(fd)
    os.unlink(fallback)


def _remove(path: str) -> None:
    if not os.path.lexists(path):  # unlink reports EROFS, not ENOENT, on a read-only mount
        return
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass


def fsync_path(path: str) -> None:
    """fsync a file or a folder by name (a folder: so that entries renamed into it are durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: str) -> None:
    for dirpath, _dirnames, _files in os.walk(root, topdown=False):
        fsync_path(dirpath)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError, OSError):
        return False
    try:  # a killed child not yet reaped by its parent is a zombie: dead for our purposes
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def clean_stale(dst: PathLike) -> list[str]:
    """Remove temp files and folders that an interrupted run left beside ``dst`` (``.NAME.kernelscale-tmp-<pid>``
    whose pid is no longer alive). A ``.NAME.kernelscale-old-<pid>`` (the previous OUT, moved aside
    while a --force run replaced it) is put back when OUT is missing, else removed. Returns the paths."""
    dst = os.path.abspath(os.fspath(dst))
    parent, name = os.path.dirname(dst), os.path.basename(dst)
    cleaned = []
    try:
        entries = sorted(os.listdir(parent))
    except OSError:
        return cleaned
    for entry in entries:
        temp = parse_temp_entry(entry)
        if temp is None or temp.name != name or _pid_alive(temp.pid):
            continue
        path = os.path.join(parent, entry)
        if temp.tag == OLD_TAG and not os.path.lexists(dst):
            os.rename(path, dst)
        else:
            _remove(path)
        cleaned.append(path)
    return cleaned


def check_free_space(folder: str, needed: int) -> None:
    """OutputError unless ``folder``'s filesystem has ``needed`` bytes plus SPACE_MARGIN free."""
    free = shutil.disk_usage(folder).free
    if free < needed + SPACE_MARGIN:
        raise OutputError(f"not enough free space in {folder}: the output needs {human_bytes(needed)} "
                          f"(+ {human_bytes(SPACE_MARGIN)} margin) but only {human_bytes(free)} is free")
