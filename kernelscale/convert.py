"""The streaming converter: one safetensors file, a sharded checkpoint or a model folder (DESIGN §6).

:func:`plan_checkpoint` reads headers only: it finds the checkpoint's files, plans every tensor
(all files of a folder or shard set together, so a glob must match somewhere in the checkpoint,
not in each file) and computes every output header, hence the exact output size.
:func:`convert_checkpoint` then streams: per tensor either a raw byte copy or read → resize
(:func:`kernelscale.state_dict.apply_entry`, in blocks of rows) → write. A reader thread reads
blocks in order and hands them to single-threaded resize workers; the main thread writes the
results in order from a queue of depth 2 while the next blocks are read and resized, and writer
threads put the bytes on disk (O_DIRECT where possible). Peak memory is a few blocks, whatever
the checkpoint's size.

Safety: the input is only read; OUT that is IN (same device and inode) is refused; the output
is written to ``.OUT.kernelscale-tmp-<pid>`` beside OUT (a file, or a folder for multi-file
output), fsynced, reopened with the reference safetensors library and checked, then renamed
onto OUT and the directory fsynced. A temp entry left by a run that died (its pid no longer
alive) is removed by the next run for the same OUT.

Test hook: ``KERNELSCALE_TEST_SLOW_WRITE=<seconds>`` sleeps that long after writing each
tensor, so tests can interrupt a conversion mid-write.
"""

from __future__ import annotations

import json
import errno
import math
import mmap
import os
import queue
import re
import shutil
import sys
import threading
import time
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Union

import torch

from kernelscale.dtypes import RESIZABLE
from kernelscale.errors import BackendUnavailableError, InvalidCheckpointError, InvalidOptionError, KernelscaleError
from kernelscale.plan import FORMAT_VERSION, Plan, ResizeOptions, TensorPlan, TensorSpec, plan_tensors
from kernelscale.checkpoint import MANIFEST_KEY  # the metadata key of the manifest (docs/format.md)
from kernelscale.plan import attention_rule_for, matches_pattern  # the planner's own matching rules, for checks across files
from kernelscale.safetensors_io import (
    DTYPE_ITEMSIZE,
    SafetensorsReader,
    SafetensorsWriter,
    TensorInfo,
    encode_header,
    read_header,
    torch_dtype,
)
from kernelscale.state_dict import apply_entry

PathLike = Union[str, "os.PathLike[str]"]


TMP_TAG = "kernelscale-tmp"
OLD_TAG = "kernelscale-old"
SLOW_WRITE_ENV = "KERNELSCALE_TEST_SLOW_WRITE"

OUTPUT_DTYPES: dict[str, Optional[str]] = {"keep": None, "float16": "F16", "bfloat16": "BF16", "float32": "F32"}
"""``--dtype`` choices → safetensors dtype name of every floating (F64/F32/F16/BF16) output tensor."""

DEVICES = ("auto", "cpu", "cuda")

QUEUE_DEPTH = 2
"""Items waiting for the writer (raw chunks, or the future of a resized block). The reader blocks
when the queue is full, so at most QUEUE_DEPTH + 2 blocks are in memory at once (waiting, being
handed over, being written): with SD 1.5 at --scale 2, a peak RSS of 0.36 GB, torch included."""

BLOCK_BYTES = 8 << 20
"""Bytes per raw-copy chunk (and per group of cast chunks)."""

COMPUTE_BYTES = {"cpu": 16 << 20, "cuda": 64 << 20}
"""Output elements × 4 bytes per apply_entry call, i.e. 8 MiB of fp16 output on CPU: bounds the
memory of a block in flight (the torch path blocks its float32 intermediate itself); on CUDA
larger calls amortise the transfers."""

SPACE_MARGIN = 64 << 20
"""Free space required beyond the planned output size (filesystem metadata, other writers)."""

FOREIGN_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".msgpack", ".h5", ".onnx", ".gguf")
"""Weights in formats convert does not rewrite. They are left out of a converted folder (with a
note): copied unchanged, a loader could pick them up instead of the converted safetensors."""

_TMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<tag>kernelscale-tmp|kernelscale-old)-(?P<pid>\d+)$")


class OutputError(KernelscaleError):
    """OUT cannot be written: it exists, it is the input, the disk is too small, or the result failed its check."""


# --- the plan of a whole checkpoint --------------------------------------------------------------


@dataclass(frozen=True)
class FilePlan:
    """One safetensors file: where it comes from (``src``) and goes (``rel``, relative to the output
    root; ``""`` when the output is a single file), its input tensors in file order, the plan entry and
    output dtype of each, and the output's ``__metadata__`` (the input's plus the manifest)."""

    src: str
    rel: str
    tensors: tuple[TensorInfo, ...]
    entries: tuple[TensorPlan, ...]
    out_dtypes: tuple[str, ...]
    metadata: Mapping[str, str]
    header_size: int
    bytes_in: int
    bytes_out: int

    def specs(self) -> list[tuple[str, str, tuple[int, ...]]]:
        """The output header as (name, dtype, shape) in file order."""
        return [(e.name, d, tuple(e.new_shape)) for e, d in zip(self.entries, self.out_dtypes)]

    def operation(self, i: int) -> str:
        """What happens to tensor i: ``resize``, ``dilate`` (weights kept, geometry recorded),
        ``cast`` (values kept, dtype changed) or ``copy`` (byte for byte)."""
        entry = self.entries[i]
        if entry.action == "resize":
            return "resize"
        if entry.action == "geometry":
            return "dilate"
        return "cast" if self.out_dtypes[i] != entry.dtype else "copy"

    def counts(self) -> dict[str, int]:
        counts = {"resize": 0, "dilate": 0, "cast": 0, "copy": 0}
        for i in range(len(self.entries)):
            counts[self.operation(i)] += 1
        return counts


@dataclass(frozen=True)
class ExtraFile:
    """A non-safetensors file of the output: copied from ``src``, or written from ``data`` (a
    rewritten index or config)."""

    rel: str
    src: Optional[str]
    size: int
    data: Optional[bytes] = field(default=None, repr=False)


@dataclass(frozen=True)
class CheckpointPlan:
    """Everything convert will do, computed from headers alone (``--dry-run`` and ``inspect`` print it)."""

    src: str
    layout: str
    options: ResizeOptions
    dtype: str
    files: tuple[FilePlan, ...]
    extras: tuple[ExtraFile, ...]
    skipped: tuple[str, ...]
    index_rel: Optional[str]
    notes: tuple[str, ...]
    loading: tuple[dict[str, Any], ...]

    @property
    def bytes_in(self) -> int:
        return sum(f.bytes_in for f in self.files) + sum(_size(x.src) for x in self.extras)

    @property
    def bytes_out(self) -> int:
        return sum(f.bytes_out for f in self.files) + sum(x.size for x in self.extras)

    def counts(self) -> dict[str, int]:
        total = {"resize": 0, "dilate": 0, "cast": 0, "copy": 0}
        for f in self.files:
            for k, v in f.counts().items():
                total[k] += v
        return total

    def describe(self) -> list[str]:
        """One line per tensor (name, dtype, shape, what happens and why), grouped by file."""
        lines: list[str] = []
        for fp in self.files:
            if self.layout != "file":
                lines.append(f"== {fp.rel} ==")
            lines.extend(describe_entries(fp.entries, fp.out_dtypes))
        for x in self.extras:
            lines.append(f"== {x.rel} == {'rewritten' if x.data is not None else 'copied'}")
        for rel in self.skipped:
            lines.append(f"== {rel} == left out (weights in a format convert does not rewrite)")
        return lines


def describe_entries(entries: Sequence[TensorPlan], out_dtypes: Optional[Sequence[str]] = None) -> list[str]:
    """``name  dtype  shape [-> new shape] [as dtype]  action: reason`` for each entry."""
    lines = []
    for i, e in enumerate(entries):
        out_dtype = out_dtypes[i] if out_dtypes is not None else e.dtype
        shape = shape_text(e.shape)
        cast = f" as {out_dtype}" if out_dtype != e.dtype else ""
        if e.changed:
            arrow = f" -> {shape_text(e.new_shape)}" if e.new_shape != e.shape else ""
            growth = f", FLOPs ×{e.flop_growth:.2f}" if e.kind == "conv" and e.action == "resize" else ""
            lines.append(f"{e.name}  {e.dtype}  {shape}{arrow}{cast}  {e.action}: {e.reason}{growth}")
        else:
            lines.append(f"{e.name}  {e.dtype}  {shape}{cast}  {'cast' if cast else 'copy'}: {e.reason}")
    return lines


def shape_text(shape: Sequence[int]) -> str:
    """``(8, 3, 7, 7)`` → ``8×3×7×7``; ``()`` → ``scalar``."""
    return "×".join(map(str, shape)) or "scalar"


def _size(path: Optional[str]) -> int:
    try:
        return os.stat(path).st_size if path else 0
    except OSError:
        return 0


# --- finding the checkpoint's files ----------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    path: str
    rel: str
    metadata: dict[str, str]
    tensors: tuple[TensorInfo, ...]


@dataclass(frozen=True)
class _Unit:
    """One model: a single safetensors file, or the shards of one index, planned together."""

    files: tuple[_Source, ...]
    index: Optional[tuple[str, str, dict[str, Any]]]  # (path, rel, parsed JSON)
    dir_rel: str  # folder of the unit, relative to the checkpoint root ("" at the root)


@dataclass(frozen=True)
class CheckpointScan:
    """The files of a checkpoint and their headers, before any planning."""

    src: str
    layout: str
    units: tuple[_Unit, ...]
    others: tuple[tuple[str, str], ...]  # (path, rel) of files to copy
    skipped: tuple[str, ...]

    @property
    def files(self) -> tuple[_Source, ...]:
        return tuple(f for u in self.units for f in u.files)


def scan_checkpoint(src: PathLike) -> CheckpointScan:
    """Find a checkpoint's safetensors files and read (and validate) their headers.

    ``src`` is a ``.safetensors`` file, a ``*.safetensors.index.json`` (its shards are read from
    the index's folder) or a folder (diffusers / Hugging Face layout: every ``*.safetensors`` file,
    grouped by index where there is one; other files to be copied; ``.git`` ignored).
    """
    path = os.path.abspath(os.fspath(src))
    if os.path.isdir(path):
        return _scan_folder(path)
    if not os.path.exists(path):
        raise InvalidCheckpointError(f"{path}: no such file or directory")
    if path.endswith(".index.json"):
        unit = _read_sharded(path, os.path.basename(path))
        return CheckpointScan(path, "sharded", (unit,), (), ())
    metadata, tensors = read_header(path)
    source = _Source(path, "", dict(metadata), tuple(tensors.values()))
    return CheckpointScan(path, "file", (_Unit((source,), None, ""),), (), ())


def _read_json(path: str, what: str) -> Any:
    try:
        with open(path, "rb") as fh:
            return json.loads(fh.read().decode("utf-8"))
    except OSError as exc:
        raise InvalidCheckpointError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise InvalidCheckpointError(f"{path}: {what} is not valid JSON: {exc}") from None


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


def _read_sharded(index_path: str, index_rel: str) -> _Unit:
    data = _read_json(index_path, "shard index")
    folder = os.path.dirname(index_path)
    rel_dir = os.path.dirname(index_rel)
    files = []
    owner: dict[str, str] = {}
    for shard in _shard_names(index_path, data):
        shard_path = os.path.join(folder, shard)
        if not os.path.isfile(shard_path):
            raise InvalidCheckpointError(f"{index_path}: shard {shard!r} is missing")
        metadata, tensors = read_header(shard_path)
        for name in tensors:
            if name in owner:
                raise InvalidCheckpointError(f"{index_path}: tensor {name!r} is in both {owner[name]} and {shard}")
            owner[name] = shard
        files.append(_Source(shard_path, _join(rel_dir, shard), dict(metadata), tuple(tensors.values())))
    for name, shard in data["weight_map"].items():
        if owner.get(name) != shard:
            raise InvalidCheckpointError(f"{index_path}: weight_map puts {name!r} in {shard}, which has no such tensor")
    return _Unit(tuple(files), (index_path, index_rel, data), rel_dir)


def _join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


def _scan_folder(root: str) -> CheckpointScan:
    indexes, weights, others, skipped = [], [], [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != ".git" and not _TMP_NAME.match(d))
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        rel_dir = "" if rel_dir == "." else rel_dir
        for name in sorted(filenames):
            rel = _join(rel_dir, name)
            if _TMP_NAME.match(name):
                continue
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
        units.append(_Unit((_Source(path, rel, dict(metadata), tuple(tensors.values())),), None, os.path.dirname(rel)))
    if not units:
        raise InvalidCheckpointError(f"{root}: no .safetensors files in this folder")
    units.sort(key=lambda u: u.files[0].rel if u.index is None else u.index[1])
    return CheckpointScan(root, "folder", tuple(units), tuple((os.path.join(root, r), r) for r in others), tuple(skipped))


# --- planning ------------------------------------------------------------------------------------


def plan_checkpoint(src: PathLike, options: ResizeOptions, *, dtype: str = "keep", dst: Optional[PathLike] = None,
                    scan: Optional[CheckpointScan] = None) -> CheckpointPlan:
    """Plan the conversion of a checkpoint from its headers alone; nothing is written.

    Raises InvalidCheckpointError for a broken input, InvalidOptionError for options that do not
    fit it (a glob matching no tensor anywhere in the checkpoint, a grid for a missing tensor, a
    bad scale for a kernel, an input converted before). ``dst`` only shapes the loading notes.
    """
    if dtype not in OUTPUT_DTYPES:
        raise InvalidOptionError(f"unknown dtype {dtype!r}; expected one of {', '.join(OUTPUT_DTYPES)}")
    scan = scan if scan is not None else scan_checkpoint(src)
    for f in scan.files:
        if MANIFEST_KEY in f.metadata:
            raise InvalidOptionError(f"{f.path} was already converted by kernelscale (its metadata holds a manifest); "
                                     "convert the original checkpoint with the combined scale instead")
    unit_specs = [[TensorSpec(t.name, t.dtype, t.shape) for f in u.files for t in f.tensors] for u in scan.units]
    plans = _plan_units(unit_specs, options, scan.src)
    target = OUTPUT_DTYPES[dtype]

    files: list[FilePlan] = []
    extras: list[ExtraFile] = []
    index_rel = None
    for unit, plan in zip(scan.units, plans):
        entries = iter(plan.entries)
        unit_files = []
        for src_file in unit.files:
            file_entries = tuple(next(entries) for _ in src_file.tensors)
            out_dtypes = tuple(target if target is not None and e.dtype in RESIZABLE else e.dtype for e in file_entries)
            manifest = Plan(file_entries, options).manifest()
            metadata = {**src_file.metadata, MANIFEST_KEY: json.dumps(manifest, sort_keys=True, separators=(",", ":"))}
            specs = [(e.name, d, tuple(e.new_shape)) for e, d in zip(file_entries, out_dtypes)]
            head, infos = encode_header(specs, metadata)
            rel = src_file.rel if scan.layout != "file" else ""
            unit_files.append(FilePlan(src_file.path, rel, src_file.tensors, file_entries, out_dtypes, metadata, len(head),
                                       _size(src_file.path), len(head) + sum(i.nbytes for i in infos)))
        files.extend(unit_files)
        if unit.index is not None:
            index_path, rel, data = unit.index
            total = sum(math.prod(e.new_shape) * DTYPE_ITEMSIZE[d] for fp in unit_files for e, d in zip(fp.entries, fp.out_dtypes))
            new = {**data, "metadata": {**(data.get("metadata") or {}), "total_size": total}}
            text = (json.dumps(new, indent=2, sort_keys=True) + "\n").encode("utf-8")  # as transformers writes it
            extras.append(ExtraFile(rel, index_path, len(text), text))
            if scan.layout == "sharded":
                index_rel = rel

    notes, loading, rewritten = _loading_notes(scan, plans, dst)
    for path, rel in scan.others:
        if rel in rewritten:
            data = rewritten[rel]
            extras.append(ExtraFile(rel, path, len(data), data))
        else:
            extras.append(ExtraFile(rel, path, _size(path)))
    if scan.skipped:
        notes.append(f"left out {len(scan.skipped)} file(s) holding weights in a format convert does not rewrite "
                     f"({', '.join(scan.skipped[:3])}{' …' if len(scan.skipped) > 3 else ''}): copied as they are, a loader "
                     "could pick them up instead of the converted safetensors; if they are the model's weights, save them "
                     "as safetensors and convert again")
    extras.sort(key=lambda x: x.rel)
    return CheckpointPlan(scan.src, scan.layout, options, dtype, tuple(files), tuple(extras), scan.skipped, index_rel,
                          tuple(notes), tuple(loading))


def _any_match(names: Sequence[str], pattern: str) -> bool:
    return any(matches_pattern(n, pattern) for n in names)


def _plan_units(unit_specs: list[list[TensorSpec]], options: ResizeOptions, where: str) -> list[Plan]:
    """Plan each model of a checkpoint; rules are checked against the whole checkpoint.

    One unit (a file, or all shards of one index, in shard order) is planned by plan_tensors as
    it stands. Several units (a folder: unet, vae, text encoder …, whose tensor names may repeat)
    are planned one by one with the rules that match in each, after checking that every include,
    absorb, layer and attention pattern and every grid matches somewhere in the checkpoint.
    """
    if len(unit_specs) == 1:
        return [plan_tensors(unit_specs[0], options)]
    all_names = sorted({s.name for specs in unit_specs for s in specs})
    for grid_name, _ in options.grids:
        if grid_name not in all_names and f"{grid_name}.weight" not in all_names:
            raise InvalidOptionError(f"grid {grid_name!r}: no tensor named {grid_name!r} or {grid_name + '.weight'!r} in {where}")
    for what, patterns in (("--include", options.include), ("--absorb", options.absorb),
                           ("layer rule", [r.pattern for r in options.layers])):
        for pattern in patterns:
            if not _any_match(all_names, pattern):
                raise InvalidOptionError(f"{what} {pattern!r} matches no tensor in {where}")
    for rule in options.attention:
        if not any(attention_rule_for(n, [rule]) for n in all_names):
            raise InvalidOptionError(f"attention rule {rule.pattern!r} matches no tensor in {where}")

    plans = []
    for specs in unit_specs:
        names = [s.name for s in specs]
        present = set(names)
        local = replace(
            options,
            include=tuple(p for p in options.include if _any_match(names, p)),
            absorb=tuple(p for p in options.absorb if _any_match(names, p)),
            layers=tuple(r for r in options.layers if _any_match(names, r.pattern)),
            attention=tuple(r for r in options.attention if any(attention_rule_for(n, [r]) for n in names)),
            grids=tuple((g, s) for g, s in options.grids if g in present or f"{g}.weight" in present),
        )
        plan = plan_tensors(specs, local)
        entries = plan.entries
        if options.include and not local.include:  # nothing in this model is included
            entries = tuple(e if not e.changed else TensorPlan(e.name, e.dtype, e.shape, "copy", "not matched by --include", e.shape)
                            for e in entries)
        plans.append(Plan(entries, options))
    return plans


def _config_of(scan: CheckpointScan, unit: _Unit) -> Optional[dict[str, Any]]:
    root = scan.src if scan.layout == "folder" else os.path.dirname(scan.src)
    path = os.path.join(root, unit.dir_rel, "config.json")
    try:
        with open(path, "rb") as fh:
            data = json.loads(fh.read().decode("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _stock_kernel_keys(entries: Sequence[TensorPlan], config: Mapping[str, Any]) -> Optional[dict[str, int]]:
    """``{"conv_in_kernel": k', …}`` when every shape or geometry change is one diffusers reads from
    config.json (conv_in/conv_out resized to an odd, square, centred kernel); None otherwise."""
    updates = {}
    for e in entries:
        layer = e.name[: -len(".weight")] if e.name.endswith(".weight") else e.name
        key = f"{layer}_kernel"
        ks = set(e.new_shape[2:])
        record = e.record or {}
        if (e.action != "resize" or e.kind != "conv" or layer not in ("conv_in", "conv_out") or key not in config
                or len(ks) != 1 or min(ks) % 2 == 0 or record.get("absorb") or any(record.get("centre_offset") or ())):
            return None
        updates[key] = ks.pop()
    return updates


def _loading_notes(scan: CheckpointScan, plans: Sequence[Plan], dst: Optional[PathLike]) -> tuple[list[str], list[dict], dict[str, bytes]]:
    """How to load each model whose shapes or geometry changed, and config.json rewrites for the
    changes stock diffusers can express (conv_in/conv_out kernel sizes)."""
    out_root = os.fspath(dst) if dst is not None else "OUT"
    notes: list[str] = []
    loading: list[dict[str, Any]] = []
    rewritten: dict[str, bytes] = {}
    for unit, plan in zip(scan.units, plans):
        structural = [e for e in plan.entries if e.changed and e.kind != "attention"]
        if not structural:
            continue
        if scan.layout == "file" or (scan.layout == "sharded" and out_root.endswith(".json")):
            out_path = out_root
        else:
            out_path = os.path.join(out_root, unit.index[1] if unit.index else unit.files[0].rel)
        # diffusers reads the model's config from the output folder, or beside the input for a lone file
        config_dir = os.path.dirname(out_path) if scan.layout == "folder" else os.path.join(os.path.dirname(scan.src), unit.dir_rel)
        config = _config_of(scan, unit)
        cls = config.get("_class_name") if config else None
        label = unit.dir_rel or (os.path.basename(unit.files[0].rel) if scan.layout == "folder" else os.path.basename(scan.src))
        record: dict[str, Any] = {"model": label, "class": cls, "path": out_path, "tensors": [e.name for e in structural]}
        updates = _stock_kernel_keys(structural, config) if (config and cls and scan.layout == "folder") else None
        if updates is not None:
            config_rel = _join(unit.dir_rel, "config.json")
            new_config = {**config, **updates}
            rewritten[config_rel] = (json.dumps(new_config, indent=2, sort_keys=True) + "\n").encode("utf-8")
            changes = ", ".join(f"{k} {config[k]} → {v}" for k, v in sorted(updates.items()))
            notes.append(f"{config_rel}: {changes}, so that diffusers' {cls}.from_pretrained loads the resized kernels")
            record.update(stock_loadable=True, config_updates=updates, load=f"{cls}.from_pretrained({os.path.dirname(out_path)!r})")
            loading.append(record)
            continue
        resized = [e for e in structural if e.new_shape != e.shape]
        dilated = [e for e in structural if e.new_shape == e.shape]
        what = []
        if resized:
            e = resized[0]
            what.append(f"{len(resized)} tensor(s) changed shape (e.g. {e.name} {shape_text(e.shape[2:] or e.shape)} → "
                        f"{shape_text(e.new_shape[2:] or e.new_shape)})")
        if dilated:
            what.append(f"{len(dilated)} conv(s) need a new dilation (e.g. {dilated[0].name})")
        load = f"kernelscale.nn.load(model, {out_path!r})"
        if cls:
            stock = (f"diffusers' {cls} hard-codes its resnet and sampler convs at 3×3, so from_pretrained would "
                     + ("fail with a size mismatch" if resized else "load them but ignore the dilation"))
            how = f"model = {cls}.from_config({cls}.load_config({config_dir!r})); {load}"
        else:
            stock = "a stock loader expects the original shapes and geometry" if resized else "a stock loader ignores the recorded dilation"
            how = f"build the original model, then {load}"
        notes.append(f"{label}: {' and '.join(what)}; {stock}. Load it with the nn adapter: {how}")
        record.update(stock_loadable=False, load=how)
        loading.append(record)
    return notes, loading, rewritten


# --- the summary -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvertSummary:
    """What a conversion did (or, with ``dry_run``, would do)."""

    src: str
    dst: str
    layout: str
    dry_run: bool
    device: str
    dtype: str
    tensors_resized: int
    tensors_dilated: int
    tensors_cast: int
    tensors_copied: int
    bytes_in: int
    bytes_out: int
    seconds: float
    files: tuple[dict[str, Any], ...] = ()
    copied_files: tuple[str, ...] = ()
    rewritten_files: tuple[str, ...] = ()
    skipped_files: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    loading: tuple[dict[str, Any], ...] = ()
    cleaned: tuple[str, ...] = ()
    plan: Optional[CheckpointPlan] = field(default=None, repr=False, compare=False)

    @property
    def mb_per_s(self) -> float:
        """Output megabytes (10⁶ bytes) written per second of the whole run."""
        return self.bytes_out / 1e6 / self.seconds if self.seconds > 0 and not self.dry_run else 0.0

    def to_json(self) -> dict[str, Any]:
        data = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self).items() if k != "plan"}
        data["seconds"] = round(self.seconds, 3)
        data["mb_per_s"] = round(self.mb_per_s, 1)
        return data

    def describe(self) -> str:
        """The closing one-line summary."""
        parts = [f"{self.tensors_resized} resized"]
        if self.tensors_dilated:
            parts.append(f"{self.tensors_dilated} re-dilated")
        if self.tensors_cast:
            parts.append(f"{self.tensors_cast} cast")
        parts.append(f"{self.tensors_copied} copied")
        files = len(self.files) + len(self.copied_files) + len(self.rewritten_files)
        where = f"{self.src} -> {self.dst}"
        if self.dry_run:
            return (f"dry run: {where}: would write {files} file(s), {_human(self.bytes_out)}; tensors: {', '.join(parts)}; "
                    f"{_human(self.bytes_in)} in")
        return (f"{where}: {files} file(s); tensors: {', '.join(parts)}; {_human(self.bytes_in)} in, {_human(self.bytes_out)} out "
                f"in {self.seconds:.1f} s ({self.mb_per_s:.0f} MB/s)")


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


def _summary(plan: CheckpointPlan, dst: str, device: str, seconds: float, dry_run: bool, cleaned: Sequence[str] = ()) -> ConvertSummary:
    counts = plan.counts()
    files = tuple({"input": fp.src, "output": fp.rel or dst, **{k: v for k, v in fp.counts().items()},
                   "bytes_in": fp.bytes_in, "bytes_out": fp.bytes_out} for fp in plan.files)
    return ConvertSummary(
        src=plan.src, dst=dst, layout=plan.layout, dry_run=dry_run, device=device, dtype=plan.dtype,
        tensors_resized=counts["resize"], tensors_dilated=counts["dilate"], tensors_cast=counts["cast"], tensors_copied=counts["copy"],
        bytes_in=plan.bytes_in, bytes_out=plan.bytes_out, seconds=seconds, files=files,
        copied_files=tuple(x.rel for x in plan.extras if x.data is None),
        rewritten_files=tuple(x.rel for x in plan.extras if x.data is not None),
        skipped_files=plan.skipped, notes=plan.notes, loading=plan.loading, cleaned=tuple(cleaned), plan=plan,
    )


# --- the output location -----------------------------------------------------------------------


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if device not in DEVICES:
        raise InvalidOptionError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise BackendUnavailableError(f"--device cuda: torch {torch.__version__} sees no CUDA device here")
    return torch.device("cuda")


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


class _Output:
    """Where the result goes and how it is committed.

    ``file``: one file, written as ``.OUT.kernelscale-tmp-<pid>`` and renamed. ``dir``: a folder
    built as ``.OUT.kernelscale-tmp-<pid>/`` and renamed last (an existing OUT, with --force, is
    first moved to ``.OUT.kernelscale-old-<pid>`` and removed after). ``index``: OUT names the
    output shard index; the shards are built in the temp folder, moved beside OUT, and the index
    renamed last, so OUT appears only when everything else is in place.
    """

    def __init__(self, plan: CheckpointPlan, dst: str, force: bool) -> None:
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
        self.staging = os.path.join(self.parent, f".{self.name}.{TMP_TAG}-{os.getpid()}")
        self.old = os.path.join(self.parent, f".{self.name}.{OLD_TAG}-{os.getpid()}")
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
            _fsync_dir(self.parent)
            if moved:
                _remove(self.old)
        else:
            for fp in self.plan.files:
                target = os.path.join(self.parent, fp.rel)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.replace(os.path.join(self.staging, fp.rel), target)
                _fsync_dir(os.path.dirname(target))
            os.replace(os.path.join(self.staging, self.name), self.dst)
            _remove(self.staging)
        _fsync_dir(self.parent)

    def abort(self) -> None:
        _remove(self.staging)


def _remove(path: str) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: str) -> None:
    for dirpath, _dirnames, _files in os.walk(root, topdown=False):
        _fsync_dir(dirpath)


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
        match = _TMP_NAME.match(entry)
        if not match or match.group("name") != name or _pid_alive(int(match.group("pid"))):
            continue
        path = os.path.join(parent, entry)
        if match.group("tag") == OLD_TAG and not os.path.lexists(dst):
            os.rename(path, dst)
        else:
            _remove(path)
        cleaned.append(path)
    return cleaned


def check_free_space(folder: str, needed: int) -> None:
    """OutputError unless ``folder``'s filesystem has ``needed`` bytes plus SPACE_MARGIN free."""
    free = shutil.disk_usage(folder).free
    if free < needed + SPACE_MARGIN:
        raise OutputError(f"not enough free space in {folder}: the output needs {_human(needed)} "
                          f"(+ {_human(SPACE_MARGIN)} margin) but only {_human(free)} is free")


# --- streaming ---------------------------------------------------------------------------------


class _End:
    """Marks the end of one tensor's blocks in the queue."""


@dataclass
class _Failed:
    error: BaseException


def _put(items: "queue.Queue[Any]", item: Any, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            items.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _as_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def _gather(buffers: Iterator[memoryview]) -> Iterator[list[memoryview]]:
    block: list[memoryview] = []
    size = 0
    for buf in buffers:
        block.append(buf)
        size += buf.nbytes
        if size >= BLOCK_BYTES:
            yield block
            block, size = [], 0
    if block:
        yield block


def _resized(reader: SafetensorsReader, info: TensorInfo, entry: TensorPlan, out_dtype: str, device: torch.device,
             pool: Executor) -> Iterator[Future]:
    """The resized tensor as raw bytes, one future per block of leading-axis rows (rows of a conv
    weight are independent slices, rows of a grid Linear independent outputs): the blocks are read
    here, in order, and resized by the pool's workers side by side."""
    if info.nbytes == 0:
        return
    in_dtype, dst_dtype = torch_dtype(info.dtype), torch_dtype(out_dtype)
    row_shape = info.shape[1:] if info.shape else ()
    row_bytes = info.nbytes // (info.shape[0] if info.shape else 1)
    for raw in reader.iter_chunks(info.name, _rows_per_call(info, entry, device) * row_bytes):
        x = torch.frombuffer(bytearray(raw), dtype=in_dtype)
        x = x.reshape(-1, *row_shape) if info.shape else x.reshape(())
        yield pool.submit(_resize_block, entry, x, dst_dtype, device)


def _resize_block(entry: TensorPlan, x: torch.Tensor, dst_dtype: torch.dtype, device: torch.device) -> memoryview:
    if device.type != "cpu":
        x = x.to(device)
    return _as_bytes(apply_entry(entry, x, out_dtype=dst_dtype))


def _rows_per_call(info: TensorInfo, entry: TensorPlan, device: torch.device) -> int:
    """Leading-axis rows per apply_entry call: about COMPUTE_BYTES of output. The operator is the
    same for every block; only the BLAS summation order may differ from a whole-tensor call (it can
    depend on the row count), so results agree with resize_state_dict's to float32 rounding."""
    rows = info.shape[0] if info.shape else 1
    out_row = math.prod(entry.new_shape[1:]) if entry.new_shape else 1
    return max(1, min(rows, COMPUTE_BYTES[device.type] // max(1, out_row * 4)))


def _cast(reader: SafetensorsReader, info: TensorInfo, out_dtype: str) -> Iterator[memoryview]:
    """The tensor's values in another dtype (one rounding), as raw bytes, a block at a time."""
    in_dtype, dst_dtype = torch_dtype(info.dtype), torch_dtype(out_dtype)
    itemsize = torch.empty((), dtype=in_dtype).element_size()
    for raw in reader.iter_chunks(info.name, max(1, BLOCK_BYTES // 4) * itemsize):
        yield _as_bytes(torch.frombuffer(bytearray(raw), dtype=in_dtype).to(dst_dtype))


def _blocks(reader: SafetensorsReader, fp: FilePlan, i: int, device: torch.device, pool: Executor) -> Iterator[Any]:
    """Tensor i's output as queue items: a list of raw buffers, or a future of one."""
    info, entry, out_dtype = fp.tensors[i], fp.entries[i], fp.out_dtypes[i]
    op = fp.operation(i)
    if op == "resize":
        return _resized(reader, info, entry, out_dtype, device, pool)
    if op == "cast" or (op == "dilate" and out_dtype != info.dtype):
        return _gather(_cast(reader, info, out_dtype))
    return ([chunk] for chunk in reader.iter_chunks(info.name, BLOCK_BYTES))


def compute_workers(device: torch.device) -> int:
    """Resize workers: on CPU one single-threaded worker per usable core (at most QUEUE_DEPTH + 1,
    the blocks that can be in flight), on CUDA one.

    Why single-threaded workers rather than torch's own threads: OpenMP threads spin-wait between
    products, stealing the cores the writer and the kernel need. On 2 cores, SD 1.5 at --scale 2
    took 63 s wall / 47 s user time with 2 OpenMP threads against 28 s / 7 s with 1 (and up to
    49 s when other jobs shared the machine)."""
    if device.type != "cpu":
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, QUEUE_DEPTH + 1))


def _single_threaded() -> None:
    torch.set_num_threads(1)  # per thread (OpenMP): the caller's own setting is untouched


class _Readahead:
    """Asks the kernel to read the input ahead of the producer (posix_fadvise WILLNEED over the
    next READAHEAD bytes), so reading overlaps resizing instead of preceding it; the window keeps
    the page cache it fills bounded, whatever the checkpoint's size."""

    READAHEAD = 256 << 20

    def __init__(self, path: str) -> None:
        self._fd = -1
        self._advised = 0
        if hasattr(os, "posix_fadvise"):
            try:
                self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError:
                self._fd = -1

    def before(self, info: TensorInfo) -> None:
        end = info.end + self.READAHEAD
        if self._fd < 0 or end <= self._advised + self.READAHEAD // 4:
            return
        start = max(info.start, self._advised)
        try:
            os.posix_fadvise(self._fd, start, end - start, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        self._advised = end

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _produce(reader: SafetensorsReader, fp: FilePlan, device: torch.device, items: "queue.Queue[Any]", stop: threading.Event,
             pool: Executor) -> None:
    readahead = _Readahead(fp.src)
    try:
        for i in range(len(fp.tensors)):
            readahead.before(fp.tensors[i])
            for block in _blocks(reader, fp, i, device, pool):
                if not _put(items, block, stop):
                    return
            if not _put(items, _End, stop):
                return
    except BaseException as exc:  # handed to the writer thread, which raises it
        _put(items, _Failed(exc), stop)
    finally:
        readahead.close()


def _drain(items: "queue.Queue[Any]", tick: Callable[[int], None]) -> Iterator[memoryview]:
    while True:
        item = items.get()
        if item is _End:
            return
        if isinstance(item, _Failed):
            raise item.error
        for buf in ([item.result()] if isinstance(item, Future) else item):
            yield buf
            tick(len(memoryview(buf).cast("B")))


def _slow_write_delay() -> float:
    value = os.environ.get(SLOW_WRITE_ENV, "").strip()
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:
        return 0.0


class _OutputFile:
    """The write-only file SafetensorsWriter streams into: bytes are gathered into page-aligned
    blocks that background threads write at their offsets (so the disk works while the next block
    fills), with ``O_DIRECT`` where the filesystem allows it.

    Why, measured on the benchmark VM (6.5 GB): through the page cache the kernel spent 8–23 s of
    CPU (bookkeeping per 4 KiB page, on the core the resize needs); O_DIRECT took 0.6 s. One
    16 MiB O_DIRECT write at a time ran at 0.86 GB/s, two in flight at 1.40 GB/s, four at 1.12.
    flush() writes the partial last block padded to the alignment and truncates the file back to
    its length, keeping the tail so that later writes extend it. A filesystem that refuses
    O_DIRECT gets the same blocks as buffered writes, from the start or the first refused block on.
    """

    BUFFER = 16 << 20
    IO_DEPTH = 2

    def __init__(self, path: str) -> None:
        self.name = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        self._align = 4096
        self.direct = False
        self._lock = threading.Lock()
        try:
            self._align = max(self._align, os.fstatvfs(self._fd).f_bsize)
            if self.BUFFER % self._align == 0 and getattr(os, "O_DIRECT", 0):
                self._set_direct(True)
        except OSError:
            self.direct = False
        self._size = max(self.BUFFER, self._align)
        # one buffer filling while IO_DEPTH are written; round robin reuses only finished ones
        self._buffers = [mmap.mmap(-1, self._size) for _ in range(self.IO_DEPTH + 1)]  # page-aligned
        self._current = 0
        self._fill = 0  # bytes gathered in the current buffer
        self._offset = 0  # file offset of the current buffer's first byte (aligned)
        self._dirty = False
        self._pending: list[Any] = []
        self._io = ThreadPoolExecutor(max_workers=self.IO_DEPTH, thread_name_prefix="kernelscale-writer")

    def _set_direct(self, on: bool) -> None:
        import fcntl

        with self._lock:
            flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
            flag = getattr(os, "O_DIRECT", 0)
            fcntl.fcntl(self._fd, fcntl.F_SETFL, (flags | flag) if on else (flags & ~flag))
            self.direct = on

    def fileno(self) -> int:
        return self._fd

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            buffer = self._buffers[self._current]
            take = min(len(view) - done, self._size - self._fill)
            buffer[self._fill:self._fill + take] = view[done:done + take]
            self._fill += take
            done += take
            self._dirty = True
            if self._fill == self._size:
                if len(self._pending) >= self.IO_DEPTH:
                    self._pending.pop(0).result()
                self._pending.append(self._io.submit(self._write_block, buffer, self._size, self._offset))
                self._offset += self._size
                self._current = (self._current + 1) % len(self._buffers)
                self._fill = 0
                self._dirty = False
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

    def _wait(self) -> None:
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def flush(self) -> None:
        self._wait()
        if not self._dirty:
            return
        padded = -(-self._fill // self._align) * self._align
        buffer = self._buffers[self._current]
        buffer[self._fill:padded] = bytes(padded - self._fill)
        self._write_block(buffer, padded, self._offset)
        os.ftruncate(self._fd, self._offset + self._fill)
        self._dirty = False

    def close(self) -> None:
        if self._fd < 0:
            return
        try:
            self.flush()
        finally:
            self._io.shutdown(wait=True)
            os.close(self._fd)
            self._fd = -1
            for buffer in self._buffers:
                buffer.close()

    def __enter__(self) -> "_OutputFile":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _write_safetensors(fp: FilePlan, out_path: str, device: torch.device, tick: Callable[[int], None]) -> None:
    """Stream one output file: header first, then each tensor, a producer thread computing ahead."""
    delay = _slow_write_delay()
    with SafetensorsReader(fp.src) as reader:
        if tuple(reader.tensors.values()) != fp.tensors:
            raise InvalidCheckpointError(f"{fp.src}: the file changed since it was planned")
        with _OutputFile(out_path) as fh:
            writer = SafetensorsWriter(fh, fp.specs(), dict(fp.metadata))
            tick(fp.header_size)
            items: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_DEPTH)
            stop = threading.Event()
            pool = ThreadPoolExecutor(max_workers=compute_workers(device), thread_name_prefix="kernelscale-resize",
                                      initializer=_single_threaded if device.type == "cpu" else None)
            producer = threading.Thread(target=_produce, args=(reader, fp, device, items, stop, pool), name="kernelscale-reader",
                                        daemon=True)
            producer.start()
            try:
                for info in fp.tensors:
                    writer.write_raw(info.name, _drain(items, tick))
                    if delay:
                        time.sleep(delay)
            finally:
                stop.set()
                producer.join()
                pool.shutdown(wait=True, cancel_futures=True)
            writer.fsync()
            writer.close()


def _write_extra(extra: ExtraFile, out_path: str) -> None:
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    if extra.data is not None:
        fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        with os.fdopen(fd, "wb") as fh:
            fh.write(extra.data)
            fh.flush()
            os.fsync(fh.fileno())
        return
    shutil.copyfile(extra.src, out_path)  # type: ignore[arg-type]
    fd = os.open(out_path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def verify_output(path: PathLike, fp: FilePlan) -> None:
    """Reopen a written file with the reference safetensors library and check it against the plan:
    names, shapes, dtypes, size, and a manifest that parses. OutputError on any difference."""
    from safetensors import safe_open

    path = os.fspath(path)
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            found = {}
            for name in f.keys():
                view = f.get_slice(name)
                found[name] = (view.get_dtype(), tuple(view.get_shape()))
    except Exception as exc:  # the reference library's own error types
        raise OutputError(f"{path}: the written file does not reopen with safetensors: {exc}") from None
    expected = {name: (dtype, tuple(shape)) for name, dtype, shape in fp.specs()}
    if found != expected:
        bad = sorted(set(found) ^ set(expected)) or sorted(n for n in expected if found[n] != expected[n])
        raise OutputError(f"{path}: the written file does not match its plan (first difference: {bad[0]!r})")
    if os.stat(path).st_size != fp.bytes_out:
        raise OutputError(f"{path}: written {os.stat(path).st_size} bytes, planned {fp.bytes_out}")
    try:
        manifest = json.loads(metadata[MANIFEST_KEY])
    except (KeyError, ValueError):
        raise OutputError(f"{path}: the manifest is missing or does not parse") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise OutputError(f"{path}: the manifest has format_version {manifest.get('format_version')!r}")


def convert_checkpoint(
    src: PathLike,
    dst: PathLike,
    options: ResizeOptions,
    *,
    dtype: str = "keep",
    device: str = "auto",
    force: bool = False,
    progress: Optional[bool] = None,
    dry_run: bool = False,
) -> ConvertSummary:
    """Convert a checkpoint (file, ``*.safetensors.index.json`` or folder) from ``src`` to ``dst``.

    ``dtype``: ``keep``, or ``float16``/``bfloat16``/``float32`` for every floating tensor (resized
    ones are computed in float32 and rounded once to it; other floating tensors are cast; integer,
    bool and float8 tensors stay byte-exact). ``device``: where resizing runs (``auto`` = CUDA when
    available). ``force``: replace an existing ``dst``. ``progress``: a tqdm bar on stderr (None =
    only when stderr is a terminal). ``dry_run``: plan and check everything, write nothing.

    Raises KernelscaleError subclasses for bad input or options and OutputError when ``dst`` cannot
    be written; on any failure or interruption no ``dst`` is left behind and temp files are removed.
    """
    started = time.perf_counter()
    src = os.path.abspath(os.fspath(src))
    dst = os.path.abspath(os.fspath(dst))
    torch_device = resolve_device(device)
    plan = plan_checkpoint(src, options, dtype=dtype, dst=dst)
    # before the checks: a dead run's leftovers may include the previous OUT, moved aside
    cleaned = clean_stale(dst) if not dry_run else []
    output = _Output(plan, dst, force)
    check_free_space(output.parent, plan.bytes_out)
    if dry_run:
        return _summary(plan, dst, torch_device.type, time.perf_counter() - started, True)

    bar = _progress_bar(progress, plan.bytes_out)
    tick = bar.update if bar is not None else (lambda n: None)
    committed = False
    try:
        output.begin()
        for fp in plan.files:
            path = output.path_for(fp.rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            _write_safetensors(fp, path, torch_device, tick)
            verify_output(path, fp)
        for extra in plan.extras:
            _write_extra(extra, output.path_for(extra.rel))
            tick(extra.size)
        output.commit(force)
        committed = True
    except OSError as exc:
        raise OutputError(f"cannot write {dst}: {exc.strerror or exc}"
                          + (f" ({exc.filename})" if getattr(exc, "filename", None) else "")) from exc
    finally:
        if bar is not None:
            bar.close()
        if not committed:
            output.abort()
    return _summary(plan, dst, torch_device.type, time.perf_counter() - started, False, cleaned)


def _progress_bar(progress: Optional[bool], total: int):
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1000, file=sys.stderr, desc="kernelscale", leave=False,
                dynamic_ncols=True)
