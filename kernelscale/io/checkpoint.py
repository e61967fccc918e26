"""Reading converted checkpoints: their headers and manifest (DESIGN §5, docs/format.md).

Which files make up a checkpoint is :mod:`kernelscale.io.discovery`'s answer. A converted one
carries the manifest as JSON under the metadata key ``kernelscale``; shards each carry the records
of their own tensors, merged here.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from kernelscale.errors import InvalidCheckpointError
from kernelscale.io.discovery import model_files
from kernelscale.io.safetensors_io import SafetensorsReader
from kernelscale.plan import FORMAT_VERSION

MANIFEST_KEY = "kernelscale"
"""The ``__metadata__`` key holding the manifest (compact JSON, sorted keys; docs/format.md)."""
# The fields a loader needs from each kind of manifest record (docs/format.md).
_RECORD_FIELDS = {
    "conv": ("scale", "old_spatial", "new_spatial"),
    "grid": ("scale", "grid", "old_spatial", "new_spatial"),
    "attention": ("factor",),
    "weight_norm": ("v", "dim"),
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _ints(value: Any) -> bool:
    return isinstance(value, list) and all(_is_int(v) and v >= 0 for v in value)


def _numbers(value: Any) -> bool:
    return isinstance(value, list) and all(_is_number(v) for v in value)


# The type of every record field a reader uses (docs/format.md); None is allowed where noted.
_FIELD_TYPES: dict[str, tuple[Any, str, bool]] = {
    "kind": (lambda v: isinstance(v, str), "a string", False),
    "scale": (lambda v: _numbers(v) and len(v) > 0 and all(s > 0 for s in v), "a list of positive numbers", False),
    "old_spatial": (lambda v: _ints(v) and all(d > 0 for d in v), "a list of positive integers", False),
    "new_spatial": (lambda v: _ints(v) and all(d > 0 for d in v), "a list of positive integers", False),
    "grid": (lambda v: _ints(v) and len(v) == 3 and min(v) > 0, "[C, H, W] of positive integers", False),
    "factor": (_is_number, "a finite number", False),
    "v": (lambda v: isinstance(v, str), "a tensor name", False),
    "dim": (_is_int, "an integer or null", True),
    "dilation": (lambda v: _ints(v) and all(d > 0 for d in v), "a list of positive integers or null", True),
    "centre_offset": (_numbers, "a list of numbers or null", True),
    "method": (lambda v: isinstance(v, str), "a string or null", True),
    "mode": (lambda v: isinstance(v, str), "a string or null", True),
    "align": (lambda v: isinstance(v, str), "a string or null", True),
    "pad_extra": (lambda v: isinstance(v, str), "a string or null", True),
    "absorb": (lambda v: isinstance(v, bool), "true, false or null", True),
}


def check_records(manifest: Any, where: Union[str, Path]) -> dict[str, Any]:
    """``manifest`` (parsed JSON) checked as a kernelscale manifest, whatever its format version:
    an object with a ``tensors`` object of records, each an object of a known kind with that
    kind's fields, every field a reader uses of its type (:data:`_FIELD_TYPES`).
    InvalidCheckpointError naming ``where``, the tensor and the field otherwise."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("tensors"), dict):
        raise InvalidCheckpointError(f"{where}: the {MANIFEST_KEY!r} metadata is not a kernelscale manifest (no 'tensors' table)")
    for key in ("options",):
        if key in manifest and not isinstance(manifest[key], dict):
            raise InvalidCheckpointError(f"{where}: the manifest's {key!r} is a {type(manifest[key]).__name__}, not an object")
    for tensor, record in manifest["tensors"].items():
        kind = record.get("kind") if isinstance(record, dict) else None
        if not isinstance(kind, str) or kind not in _RECORD_FIELDS:
            raise InvalidCheckpointError(f"{where}: manifest record of {tensor!r} has unknown kind {kind!r} "
                                         f"(this kernelscale reads {', '.join(_RECORD_FIELDS)})")
        lacking = [k for k in _RECORD_FIELDS[kind] if k not in record]
        if lacking:
            raise InvalidCheckpointError(f"{where}: manifest record of {tensor!r} lacks {', '.join(lacking)}")
        for field, (valid, expected, nullable) in _FIELD_TYPES.items():
            if field not in record or (nullable and record[field] is None):
                continue
            if not valid(record[field]):
                raise InvalidCheckpointError(f"{where}: manifest record of {tensor!r}: {field} must be {expected}, "
                                             f"got {record[field]!r}")
    return manifest


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
    """The manifest JSON ``text`` read from file ``where``, checked: a ``tensors`` table, this
    kernelscale's format version, a known kind, its fields and their types in every record
    (docs/format.md, :func:`check_records`)."""
    manifest = load_manifest_json(text, where)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("tensors"), dict):
        raise InvalidCheckpointError(f"{where}: the {MANIFEST_KEY!r} metadata is not a kernelscale manifest (no 'tensors' table)")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise InvalidCheckpointError(
            f"{where}: manifest format version {version!r} is not one this kernelscale reads ({FORMAT_VERSION}); "
            "convert the checkpoint again or upgrade kernelscale")
    return check_records(manifest, where)


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
