"""The output location: where a conversion's result goes and how it is committed (DESIGN §6).

:class:`AtomicOutput` refuses an OUT that is an input (same device and inode), lies inside the input
folder or holds it, exists without ``force``, is a folder holding files this conversion would not
write (``force`` replaces the whole folder, so they would be lost), or goes into a folder that takes no new file
(read-only, no permission; probed, so ``--dry-run`` sees it too); the result is built as
``.OUT.kernelscale-tmp-<pid>`` beside OUT (a file, or a folder for multi-file output), fsynced,
then renamed onto OUT (the output shard index last, its moves journaled so that the next run
undoes a half-done one: :func:`roll_back`) and the directory fsynced, so an interrupted run leaves
no partial OUT. :func:`clean_stale` removes a temp entry left by a run that died (its pid no longer
alive) and puts back a previous OUT it had moved aside; :func:`resolve_output` says what an OUT
as typed means (a folder for a file IN means "into it"); :func:`check_free_space`
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


NAME_MAX = 255
"""Longest file name, in bytes, on the filesystems kernelscale writes to (ext4, xfs, btrfs, tmpfs)."""
_PID_DIGITS = 10
_HASH_CHARS = 12


def entry_base(name: str) -> str:
    """The part of OUT's base ``name`` its temp entries carry: ``name`` itself when
    ``.name.kernelscale-tmp-<pid>`` fits NAME_MAX for any pid, else a prefix of it plus ``~`` and
    12 hex digits of its SHA-256, so a valid OUT name of up to NAME_MAX bytes still gets a temp entry."""
    budget = NAME_MAX - len(f"..{TMP_TAG}-") - _PID_DIGITS
    raw = os.fsencode(name)
    if len(raw) <= budget:
        return name
    import hashlib

    digest = hashlib.sha256(raw).hexdigest()[:_HASH_CHARS]
    prefix = raw[: budget - 1 - _HASH_CHARS].decode("utf-8", "ignore") if _is_utf8(raw) else os.fsdecode(raw[: budget - 1 - _HASH_CHARS])
    return f"{prefix}~{digest}"


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def temp_entry_name(name: str, tag: str, pid: int) -> str:
    """The name of a temp entry beside OUT (``name`` is OUT's base name, ``tag`` TMP_TAG or OLD_TAG);
    a long ``name`` is shortened (:func:`entry_base`) so the entry fits NAME_MAX."""
    return f".{entry_base(name)}.{tag}-{pid}"


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


def resolve_output(src: str, given: str) -> str:
    """The absolute OUT path that ``given`` (as typed) means for the checkpoint at ``src`` (absolute).

    For a single ``.safetensors`` IN, an OUT ending in ``/`` or naming an existing folder means
    "into this folder": the result is that folder joined with IN's file name. A folder or shard
    index IN converts to a folder (or an index path), so an OUT whose name ends in ``.safetensors``
    is refused (OutputError): it would be a folder that looks like a file."""
    layout = "folder" if os.path.isdir(src) else "sharded" if src.endswith(".index.json") else "file"
    dst = os.path.abspath(given)
    if layout == "file":
        if given.endswith(("/", os.sep)) or os.path.isdir(dst):
            return os.path.join(dst, os.path.basename(src))
        return dst
    if given.rstrip("/" + os.sep).lower().endswith(".safetensors"):
        what = "a folder" if layout == "folder" else "a shard index"
        raise OutputError(f"OUT {given} looks like a file name, but IN {src} is {what}, which converts to a folder "
                          "of files (a shard index also to an index path, *.safetensors.index.json); give a folder name")
    return dst


class AtomicOutput:
    """Where the result goes and how it is committed.

    ``file``: one file, written as ``.OUT.kernelscale-tmp-<pid>`` and renamed. ``dir``: a folder
    built as ``.OUT.kernelscale-tmp-<pid>/`` and renamed last (an existing OUT, with --force, is
    first moved to ``.OUT.kernelscale-old-<pid>`` and removed after). ``index``: OUT names the
    output shard index; the shards are built in the temp folder, moved beside OUT, and the index
    renamed last, so OUT appears only when everything else is in place; the moves are journaled
    and a run that dies among them is undone by the next (:func:`roll_back`): the previous index
    and shards come back.
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
            self._commit_index()
        fsync_path(self.parent)

    def _commit_index(self) -> None:
        """Move the shards beside OUT and rename the index onto OUT, journaled so that a run that
        dies half-way is undone by the next (:func:`roll_back`): first the list of files goes into
        the temp folder (:data:`JOURNAL`); then the old index, and each old shard just before its
        new one takes its place, go aside into the temp folder's :data:`REPLACED`; the new index is
        renamed onto OUT last. Until that rename no index is at OUT, so none ever names a mix of
        old and new shards; after it, the temp folder (with the old files) is removed."""
        rels = [fp.rel for fp in self.plan.files]
        _write_journal(self.staging, rels)
        replaced = os.path.join(self.staging, REPLACED)
        if os.path.lexists(self.dst):
            _move_aside(self.dst, os.path.join(replaced, self.name))
            fsync_path(self.parent)
        for rel in rels:
            target = os.path.join(self.parent, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if os.path.lexists(target):
                _move_aside(target, os.path.join(replaced, rel))
            os.replace(os.path.join(self.staging, rel), target)
            fsync_path(os.path.dirname(target))
        os.replace(os.path.join(self.staging, self.name), self.dst)
        fsync_path(self.parent)
        _remove(self.staging)

    def abort(self) -> None:
        """Undo a half-done index commit (:func:`roll_back`) and remove the temp entry, if any.
        Never raises: it runs while an error is on its way out, and a temp entry it cannot remove
        is removed by the next run (clean_stale)."""
        try:
            if self.mode == "index":
                roll_back(self.staging, self.dst)
            _remove(self.staging)
        except OSError:
            pass


JOURNAL = ".kernelscale-commit"
"""In an index commit's temp folder: the shards' relative paths, one per line, written (and
fsynced) before the first file moves."""
REPLACED = ".kernelscale-replaced"
"""In an index commit's temp folder: the previous index and shards, moved aside as the new ones
take their place."""


def _write_journal(staging: str, rels: list[str]) -> None:
    path = os.path.join(staging, JOURNAL)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("".join(f"{rel}\n" for rel in rels))
        fh.flush()
        os.fsync(fh.fileno())
    fsync_path(staging)


def _read_journal(staging: str) -> Optional[list[str]]:
    """The shard paths of a journal (:data:`JOURNAL`), None without one; a path that could point
    outside OUT's folder (absolute, with ``..``, not a ``.safetensors`` file) ends the list."""
    try:
        with open(os.path.join(staging, JOURNAL), "rb") as fh:
            lines = fh.read(1 << 20).decode("utf-8", "replace").splitlines()
    except FileNotFoundError:
        return None
    rels = []
    for rel in lines:
        if rel.startswith("/") or ".." in rel.split("/") or not rel.endswith(".safetensors"):
            break
        rels.append(rel)
    return rels


def _move_aside(path: str, aside: str) -> None:
    os.makedirs(os.path.dirname(aside), exist_ok=True)
    os.replace(path, aside)


def roll_back(staging: str, dst: str) -> bool:
    """Undo the index commit whose temp folder is ``staging`` (OUT = ``dst``), if it began and did
    not finish: every shard it moved beside OUT is removed, or replaced by the previous one it had
    moved aside, and the previous index is put back. Nothing happens without a journal (the commit
    had not begun) or once the new index is at OUT (the commit is done). Returns whether it undid
    anything."""
    rels = _read_journal(staging)
    name = os.path.basename(dst)
    if rels is None or not os.path.lexists(os.path.join(staging, name)):
        return False
    parent = os.path.dirname(dst)
    replaced = os.path.join(staging, REPLACED)
    for rel in rels:
        target, old = os.path.join(parent, rel), os.path.join(replaced, rel)
        if os.path.lexists(old):
            os.replace(old, target)
        elif not os.path.lexists(os.path.join(staging, rel)) and os.path.lexists(target):
            os.unlink(target)  # the new shard, moved in: it had no predecessor
    old_index = os.path.join(replaced, name)
    if os.path.lexists(old_index):
        os.replace(old_index, dst)
    fsync_path(parent)
    return True


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
    whose pid is no longer alive), first undoing a shard-index commit it had begun (:func:`roll_back`).
    A ``.NAME.kernelscale-old-<pid>`` (the previous OUT, moved aside
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
        if temp is None or temp.name != entry_base(name) or _pid_alive(temp.pid):
            continue
        path = os.path.join(parent, entry)
        if temp.tag == TMP_TAG and os.path.isdir(path) and not os.path.islink(path):
            roll_back(path, dst)
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
