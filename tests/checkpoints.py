"""Tiny checkpoints for the converter's tests (one file, shards with an index, a model folder) and byte-level helpers."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import safetensors.torch
import torch

from kernelscale import ResizeOptions
from kernelscale.io.safetensors_io import SafetensorsReader


def mixed_state_dict() -> dict[str, torch.Tensor]:
    """Every kind of tensor convert meets: convs in four float dtypes (1-D, 2-D, depthwise), a
    1×1 conv, a Linear over a grid, a float8 conv-shaped tensor, ints, bools, an empty kernel."""
    g = torch.Generator().manual_seed(0)
    return {
        "stem.weight": torch.randn(8, 3, 3, 3, generator=g),
        "stem.bias": torch.randn(8, generator=g),
        "block.conv.weight": torch.randn(8, 8, 3, 3, generator=g).half(),
        "block.dw.weight": torch.randn(8, 1, 5, 5, generator=g).bfloat16(),
        "block.pointwise.weight": torch.randn(8, 8, 1, 1, generator=g),
        "audio.weight": torch.randn(4, 1, 9, generator=g).double(),
        "head.weight": torch.randn(10, 8 * 2 * 2, generator=g).bfloat16(),
        "quant.weight": torch.randn(4, 4, 3, 3, generator=g).to(torch.float8_e4m3fn),
        "steps": torch.tensor([3, 1 << 40]),
        "mask": torch.tensor([True, False, True]),
        "empty.weight": torch.zeros(0, 4, 3, 3),
    }


def save(sd: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> Path:
    safetensors.torch.save_file(sd, str(path), metadata=metadata)
    return path


def save_sharded(sd: dict[str, torch.Tensor], folder: Path, shards: int = 2, stem: str = "model") -> Path:
    """Split ``sd`` (in order) into ``shards`` files plus a Hugging Face style index."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(sd)
    per = -(-len(names) // shards)
    weight_map = {}
    for i in range(shards):
        shard = f"{stem}-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: sd[n] for n in names[i * per:(i + 1) * per]}
        save(part, folder / shard, {"format": "pt"})
        weight_map.update({n: shard for n in part})
    total = sum(t.numel() * t.element_size() for t in sd.values())
    index = folder / f"{stem}.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": total, "note": "kept"}, "weight_map": weight_map}, indent=2))
    return index


def mixed_checkpoint(folder: Path) -> Path:
    """:func:`mixed_state_dict` saved as ``folder/in.safetensors`` with some metadata of its own
    (the converter tests' ``checkpoint`` fixture)."""
    return save(mixed_state_dict(), folder / "in.safetensors", {"author": "tests", "format": "pt"})


def make_folder(root: Path) -> Path:
    g = torch.Generator().manual_seed(1)
    (root / "model_a").mkdir(parents=True)
    (root / "model_b").mkdir()
    (root / ".git").mkdir()
    save({"conv.weight": torch.randn(4, 2, 3, 3, generator=g), "conv.bias": torch.zeros(4)}, root / "model_a" / "model.safetensors")
    save_sharded({"conv.weight": torch.randn(2, 2, 5, 5, generator=g), "only_b.weight": torch.randn(2, 2, 3, 3, generator=g)},
                 root / "model_b", shards=2, stem="weights")
    (root / "model_a" / "config.json").write_text('{"architectures": ["Tiny"]}\n')
    (root / "README.md").write_text("# tiny\n")
    (root / "model_a" / "pytorch_model.bin").write_bytes(b"pickled weights")
    (root / ".git" / "HEAD").write_text("ref: main\n")
    return root


def raw_safetensors(header: bytes | dict, data: bytes = b"", *, length: int | None = None, pad: bool = False) -> bytes:
    """A safetensors file's bytes, valid or not: the 8-byte little-endian header length (``length``,
    or the header's own), the header (a dict as JSON; ``pad``: spaces up to a multiple of 8), ``data``."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    if pad:
        raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def header_file(path: Path, header: bytes | dict, data: bytes = b"", *, length: int | None = None, pad: bool = False) -> Path:
    """:func:`raw_safetensors` written to ``path``; returns ``path``."""
    path.write_bytes(raw_safetensors(header, data, length=length, pad=pad))
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def raw_bytes(path: Path, name: str) -> bytes:
    with SafetensorsReader(path) as reader:
        return reader.read_bytes(name)


def as_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if "kernelscale-" in p.name)


OPTIONS = ResizeOptions(scale=2, grids={"head": (8, 2, 2)})
