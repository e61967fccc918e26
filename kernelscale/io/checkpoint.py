"""Reading converted checkpoints: their headers and manifest (DESIGN §5, docs/format.md).

Which files make up a checkpoint is :mod:`kernelscale.io.discovery`'s answer. A converted one
carries the manifest as JSON under the metadata key ``kernelscale``; shards each carry the records
of their own tensors, merged here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from kernelscale.errors import InvalidCheckpointError
from kernelscale.io.discovery import model_files
from kernelscale.io.safetensors_io import SafetensorsReader
from kernelscale.manifest import check_manifest

MANIFEST_KEY = "kernelscale"
"""The ``__metadata__`` key holding the manifest (compact JSON, sorted keys; docs/format.md)."""


def load_manifest_json(text: str, where: Union[str, Path]) -> Any:
    """The manifest's JSON text parsed; InvalidCheckpointError naming ``where`` when it does not
    parse or nests too deeply for the parser."""
    try:
        return json.loads(text)
    except RecursionError:
        raise InvalidCheckpointError(f"{where}: the {MANIFEST_KEY!r} metadata is JSON nested too deeply") from None
    except ValueError as exc:
        raise InvalidCheckpointError(f"{where}: the {MANIFEST_KEY!r} metadata is not valid JSON ({exc})") from None


def parse_manifest(text: str, where: Path) -> dict[str, Any]:
    """The manifest JSON ``text`` read from file ``where``, checked by
    :func:`kernelscale.manifest.check_manifest`: a ``tensors`` table, this kernelscale's format
    version, a known kind and its fields in every record (docs/format.md)."""
    manifest = load_manifest_json(text, where)
    check_manifest(manifest, where, MANIFEST_KEY)
    return manifest


def read_headers(files: Sequence[Path]) -> tuple[Optional[dict[str, Any]], dict[str, tuple[Path, tuple[int, ...]]]]:
    """(merged manifest or None, tensor name → (file, shape)). Errors name the file and the conflict."""
    manifest: Optional[dict[str, Any]] = None
    where: dict[str, tuple[Path, tuple[int, ...]]] = {}
    for path in files:
        with SafetensorsReader(path) as reader:
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
    """The kernelscale manifest of a converted model (file, shard index, or a folder holding one
    model: :func:`kernelscale.io.discovery.model_files`), merged over its files; None for a
    checkpoint that carries none. Raises InvalidCheckpointError for a malformed manifest or an
    unknown format version."""
    return read_headers(model_files(path))[0]
