"""Reading converted checkpoints: their files, headers and manifest (DESIGN §5, docs/format.md).

A checkpoint is one ``.safetensors`` file, a ``*.safetensors.index.json`` with its shards, or a
folder of safetensors files. A converted one carries the manifest as JSON under the metadata key
``kernelscale``; shards each carry the records of their own tensors, merged here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from kernelscale.errors import InvalidCheckpointError
from kernelscale.manifest import check_manifest
from kernelscale.safetensors_io import SafetensorsReader

MANIFEST_KEY = "kernelscale"
"""The ``__metadata__`` key holding the manifest (compact JSON, sorted keys; docs/format.md)."""
# The fields a loader needs from each kind of manifest record (docs/format.md).
def checkpoint_files(path: Union[str, os.PathLike]) -> list[Path]:
    """The safetensors files of a checkpoint: one file, the shards of an index, or a folder's files."""
    path = Path(path)
    if path.is_dir():
        indexes = sorted(path.glob("*.safetensors.index.json"))
        if len(indexes) > 1:
            raise InvalidCheckpointError(f"{path}: several shard indexes ({', '.join(p.name for p in indexes)}); name one")
        if indexes:
            return checkpoint_files(indexes[0])
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise InvalidCheckpointError(f"{path}: no .safetensors file in this folder")
        return files
    if path.name.endswith(".json"):
        try:
            index = json.loads(path.read_text(encoding="utf-8"))
            weight_map = index["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidCheckpointError(f"{path}: not a shard index with a weight_map ({exc})") from None
        return [path.parent / shard for shard in shards]
    if not path.exists():
        raise InvalidCheckpointError(f"{path}: no such file or folder")
    return [path]


def parse_manifest(text: str, where: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(text)
    except ValueError as exc:
        raise InvalidCheckpointError(f"{where}: the {MANIFEST_KEY!r} metadata is not JSON ({exc})") from None
    check_manifest(manifest, where, MANIFEST_KEY)
    return manifest


def open_file(path: Path) -> "SafetensorsReader":
    """A validated reader of one safetensors file (kernelscale.safetensors_io)."""
    return SafetensorsReader(path)


def read_headers(files: Sequence[Path]) -> tuple[Optional[dict[str, Any]], dict[str, tuple[Path, tuple[int, ...]]]]:
    """(merged manifest or None, tensor name → (file, shape)). Errors name the file and the conflict."""
    manifest: Optional[dict[str, Any]] = None
    where: dict[str, tuple[Path, tuple[int, ...]]] = {}
    for path in files:
        with open_file(path) as reader:
            for name, info in reader.tensors.items():
                if name in where:
                    raise InvalidCheckpointError(f"{path}: tensor {name!r} is also in {where[name][0]}")
                where[name] = (path, tuple(info.shape))
            text = reader.metadata.get(MANIFEST_KEY)
        if text is None:
            continue
        part = parse_manifest(text, path)
        if manifest is None:
            manifest = {**part, "tensors": dict(part["tensors"])}
            continue
        if part.get("options") != manifest.get("options"):
            raise InvalidCheckpointError(f"{path}: its manifest's options differ from the other shards'")
        for tensor, record in part["tensors"].items():
            if manifest["tensors"].setdefault(tensor, record) != record:
                raise InvalidCheckpointError(f"{path}: its manifest record of {tensor!r} differs from another shard's")
    return manifest, where


def read_manifest(path: Union[str, os.PathLike]) -> Optional[dict[str, Any]]:
    """The kernelscale manifest of a converted checkpoint (file, folder or shard index), merged
    over its files; None for a checkpoint that carries none. Raises InvalidCheckpointError for a
    malformed manifest or an unknown format version."""
    return read_headers(checkpoint_files(path))[0]
