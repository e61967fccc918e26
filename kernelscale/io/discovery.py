"""What a path means as a checkpoint: the one discovery convert, inspect, verify and ``nn.load`` share.

A checkpoint is given as

- one ``.safetensors`` file (layout ``file``);
- a ``*.safetensors.index.json`` shard index: its shards, read from the index's folder
  (layout ``sharded``);
- a folder (layout ``folder``, diffusers or Hugging Face): walked with its subfolders, symlinked
  ones followed (a link back to a folder above it is refused); every ``*.safetensors`` file,
  grouped by the shard index that lists it, else a model of its own; files in the weight formats of
  :data:`FOREIGN_WEIGHTS` are listed as skipped, every other file as one to copy; ``.git`` and
  kernelscale's own temp entries (:func:`kernelscale.io.output.parse_temp_entry`) are ignored;
  anything that is not a regular file or folder (a FIFO, a device, a socket, a dangling link) is
  refused by name, never opened.

:func:`scan_checkpoint` finds the files and reads and validates every header (no tensor data is
read). A *model* (:class:`ModelUnit`) is one file, or the shards of one index: what one
``load_state_dict`` takes. :func:`model_files` is the discovery of a loader, which needs exactly
one model: a component folder of a diffusers pipeline (``unet/``) is one, the pipeline folder
holds several and is refused with their names.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Optional

from kernelscale.errors import InvalidCheckpointError
from kernelscale.io.files import kind_of, read_json_file
from kernelscale.io.output import parse_temp_entry
from kernelscale.io.safetensors_io import PathLike, TensorInfo, read_header
from kernelscale.text import quoted_names

FOREIGN_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".msgpack", ".h5", ".onnx", ".gguf")
"""Weights in formats convert does not rewrite. They are left out of a converted folder, not
copied (were they copied unchanged, a loader could pick them up instead of the converted
safetensors); a note says so, and warns when a folder has no safetensors weights to convert."""

LAYOUTS = ("file", "sharded", "folder")


@dataclass(frozen=True)
class SourceFile:
    """One safetensors file of a checkpoint: its absolute ``path``, its path ``rel``ative to the
    checkpoint root (``/``-separated; ``""`` for a lone file), its ``__metadata__`` and its tensors
    in file order, as the validated header gives them."""

    path: str
    rel: str
    metadata: dict[str, str]
    tensors: tuple[TensorInfo, ...]


class ShardIndex(NamedTuple):
    """A ``*.safetensors.index.json``: its absolute ``path``, ``rel`` path and parsed JSON ``data``."""

    path: str
    rel: str
    data: dict[str, Any]


@dataclass(frozen=True)
class ModelUnit:
    """One model: a single safetensors file, or the shards of one index in shard order, planned and
    loaded together. ``dir_rel``: its folder relative to the checkpoint root (``""`` at the root)."""

    files: tuple[SourceFile, ...]
    index: Optional[ShardIndex]
    dir_rel: str

    @property
    def label(self) -> str:
        """How messages name the model: its index's or file's relative path."""
        return self.index.rel if self.index is not None else self.files[0].rel


@dataclass(frozen=True)
class CheckpointScan:
    """The files of a checkpoint and their headers, before any planning. ``src`` is absolute;
    ``others``: (path, rel) of the files a folder conversion copies; ``skipped``: rel paths of
    weights in foreign formats."""

    src: str
    layout: str
    units: tuple[ModelUnit, ...]
    others: tuple[tuple[str, str], ...]
    skipped: tuple[str, ...]

    @property
    def files(self) -> tuple[SourceFile, ...]:
        return tuple(f for u in self.units for f in u.files)


def scan_checkpoint(src: PathLike) -> CheckpointScan:
    """Find a checkpoint's safetensors files and read (and validate) their headers.

    ``src`` is a ``.safetensors`` file, a ``*.safetensors.index.json`` or a folder (see the module
    docstring for what each means). Raises InvalidCheckpointError naming the path for a missing
    path, a broken header or index, an index that does not match its shards, a shard claimed by two
    indexes, a folder link that loops, or a folder with no safetensors file anywhere below it.
    """
    given = os.fspath(src)
    if not given:
        raise InvalidCheckpointError("the checkpoint path is empty; give a file, a shard index or a folder "
                                     "(the current folder is '.')")
    path = os.path.abspath(given)
    if os.path.isdir(path):
        return _scan_folder(path)
    if not os.path.exists(path):
        raise InvalidCheckpointError(f"{path}: no such file or folder")
    if path.endswith(".index.json"):
        unit = _read_sharded(path, os.path.basename(path))
        return CheckpointScan(path, "sharded", (unit,), (), ())
    metadata, tensors = read_header(path)
    source = SourceFile(path, "", dict(metadata), tuple(tensors.values()))
    return CheckpointScan(path, "file", (ModelUnit((source,), None, ""),), (), ())


def model_files(src: PathLike) -> list[Path]:
    """The safetensors files of the one model at ``src``, found as :func:`scan_checkpoint` finds
    them: a file, the shards of an index, or a folder holding one model (a diffusers component
    folder such as ``unet/``, its subfolders included). InvalidCheckpointError when the folder holds
    several models, naming them, and for a diffusers pipeline folder (``model_index.json``), naming
    the loader that builds the pipeline."""
    path = os.path.abspath(os.fspath(src))
    if os.path.isfile(os.path.join(path, "model_index.json")):
        raise InvalidCheckpointError(
            f"{path}: a diffusers pipeline folder: use kernelscale.integrations.diffusers.load_pipeline(path) "
            "(or load one component from its folder, e.g. unet/)")
    scan = scan_checkpoint(src)
    if len(scan.units) > 1:
        raise InvalidCheckpointError(
            f"{scan.src}: this folder holds {len(scan.units)} models ({quoted_names([u.label for u in scan.units])}); "
            "name the one to load (its folder, file or shard index)")
    return [Path(f.path) for f in scan.units[0].files]


MAX_INDEX_BYTES = 100_000_000
"""Largest shard index read, in bytes (as large as the largest safetensors header)."""


def _read_json(path: str, what: str) -> Any:
    return read_json_file(path, MAX_INDEX_BYTES, InvalidCheckpointError, what)


def _shard_names(index_path: str, data: Any) -> list[str]:
    if not isinstance(data, dict) or not isinstance(data.get("weight_map"), dict):
        raise InvalidCheckpointError(f"{index_path}: a shard index needs a 'weight_map' object of tensor name → shard file")
    if "metadata" in data and not isinstance(data["metadata"], dict):
        raise InvalidCheckpointError(f"{index_path}: 'metadata' must be an object")
    shards = set()
    for name, shard in data["weight_map"].items():
        if not isinstance(shard, str) or not shard:
            raise InvalidCheckpointError(f"{index_path}: weight_map gives {shard!r} as the shard of {name!r}")
        parts = shard.replace("\\", "/").split("/")
        if shard.startswith("/") or ".." in parts or not shard.endswith(".safetensors"):
            raise InvalidCheckpointError(f"{index_path}: shard {shard!r} must be a .safetensors file inside the index's folder")
        shards.add(shard)
    if not shards:
        raise InvalidCheckpointError(f"{index_path}: weight_map is empty")
    return sorted(shards)


def _read_sharded(index_path: str, index_rel: str) -> ModelUnit:
    data = _read_json(index_path, "shard index")
    folder = os.path.dirname(index_path)
    rel_dir = os.path.dirname(index_rel)
    files = []
    owner: dict[str, str] = {}
    shards = _shard_names(index_path, data)  # validates the index first
    weight_map = data["weight_map"]
    for shard in shards:
        if not os.path.isfile(os.path.join(folder, shard)):
            raise InvalidCheckpointError(f"{index_path}: shard {shard!r} is missing")
    for shard in shards:
        shard_path = os.path.join(folder, shard)
        metadata, tensors = read_header(shard_path)
        for name in tensors:
            if name in owner:
                raise InvalidCheckpointError(f"{index_path}: tensor {name!r} is in both {owner[name]} and {shard}")
            owner[name] = shard
        # the rewritten index keeps the weight_map: a tensor it does not list would be unreachable
        # in the output (and counted in total_size all the same)
        unlisted = [n for n in tensors if weight_map.get(n) != shard]
        if unlisted:
            raise InvalidCheckpointError(f"{index_path}: shard {shard} holds {len(unlisted)} tensor(s) the weight_map does not "
                                         f"put there ({quoted_names(unlisted)}); the index does not match its shards")
        # normalised (``./s1.safetensors`` is ``s1.safetensors``): a folder walk finds the file under that name
        files.append(SourceFile(shard_path, _join(rel_dir, posixpath.normpath(shard.replace("\\", "/"))), dict(metadata),
                                tuple(tensors.values())))
    absent: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        if owner.get(name) != shard:
            absent.setdefault(shard, []).append(name)
    if absent:
        shard, names = min(absent.items())
        raise InvalidCheckpointError(f"{index_path}: weight_map puts {len(names)} tensor(s) in {shard}, which has no such "
                                     f"tensor ({quoted_names(names)}); the index does not match its shards")
    return ModelUnit(tuple(files), ShardIndex(index_path, index_rel, data), rel_dir)


def _join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


def _walk(root: str) -> list[tuple[str, list[str]]]:
    """(rel folder, sorted file names) for ``root`` and every folder below it, in sorted order.
    Symlinked folders are followed like real ones; a link to a folder above it (a loop) is an
    InvalidCheckpointError, as walking it would never end."""
    found: list[tuple[str, list[str]]] = []

    def visit(folder: str, rel: str, above: frozenset[str]) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            raise InvalidCheckpointError(f"{folder}: cannot list the folder: {exc.strerror or exc}") from None
        real = os.path.realpath(folder)
        files, folders = [], []
        for entry in entries:
            if entry.name == ".git" or parse_temp_entry(entry.name) is not None:
                continue
            if entry.is_dir():  # follows links
                folders.append(entry)
            elif entry.is_file():
                files.append(entry.name)
            else:  # never opened: reading a FIFO would block, copying a device would not end
                try:
                    kind = kind_of(os.stat(entry.path).st_mode)
                except OSError:
                    kind = "a link to nothing"
                raise InvalidCheckpointError(f"{entry.path}: the checkpoint folder holds {kind}, not a regular file; "
                                             "move it out of the folder")
        found.append((rel, files))
        for entry in folders:
            target = os.path.realpath(entry.path)
            if target in above or target == real:
                raise InvalidCheckpointError(f"{entry.path}: a link back to {target}, a folder it lies in; "
                                             "the checkpoint folder would never end (remove or replace the link)")
            visit(entry.path, _join(rel, entry.name), above | {real})

    visit(root, "", frozenset())
    return found


def _scan_folder(root: str) -> CheckpointScan:
    indexes, weights, others, skipped = [], [], [], []
    for rel_dir, filenames in _walk(root):
        for name in filenames:
            rel = _join(rel_dir, name)
            if name.endswith(".safetensors.index.json"):
                indexes.append(rel)
            elif name.endswith(".safetensors"):
                weights.append(rel)
            elif name.endswith(FOREIGN_WEIGHTS) or name.endswith(tuple(s + ".index.json" for s in FOREIGN_WEIGHTS)):
                skipped.append(rel)
            else:
                others.append(rel)
    units = []
    claimed: set[str] = set()
    for rel in indexes:
        unit = _read_sharded(os.path.join(root, rel), rel)
        for f in unit.files:
            if f.rel in claimed:
                raise InvalidCheckpointError(f"{os.path.join(root, rel)}: shard {f.rel} is claimed by another index too")
            claimed.add(f.rel)
        units.append(unit)
    for rel in weights:
        if rel in claimed:
            continue
        path = os.path.join(root, rel)
        metadata, tensors = read_header(path)
        units.append(ModelUnit((SourceFile(path, rel, dict(metadata), tuple(tensors.values())),), None, os.path.dirname(rel)))
    if not units:
        raise InvalidCheckpointError(f"{root}: no .safetensors files in this folder or its subfolders")
    units.sort(key=lambda u: u.label)
    return CheckpointScan(root, "folder", tuple(units), tuple((os.path.join(root, r), r) for r in others), tuple(skipped))

