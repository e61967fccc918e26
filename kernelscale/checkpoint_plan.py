"""The plan of a whole checkpoint, computed from its headers alone (DESIGN §6).

Given the files and validated headers that :func:`kernelscale.io.discovery.scan_checkpoint`
finds, :func:`plan_checkpoint` plans every tensor (all files of a folder or shard set
together, so a glob must match somewhere in the checkpoint, not in each file), computes every
output header, hence the exact output size, rewrites the shard index (and the config.json entries
stock diffusers can express) and notes how to load each changed model, what leaving out weights in
foreign formats means, and an --include that resizes nothing. Nothing here reads tensor
data or writes a file.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Optional, Sequence

from kernelscale.dtypes import RESIZABLE
from kernelscale.errors import InvalidCheckpointError, InvalidOptionError
from kernelscale.geometry import LOADER_CHANGES, loader_change
from kernelscale.manifest import Action, ConvRecord
from kernelscale.method import check_choice
from kernelscale.plan import Plan, TensorPlan, TensorSpec, describe_entries, plan_tensors, shape_text
from kernelscale.options import ResizeOptions
from kernelscale.io.checkpoint import MANIFEST_KEY  # the metadata key of the manifest (docs/format.md)
from kernelscale.io.discovery import CheckpointScan, ModelUnit, scan_checkpoint
from kernelscale.io.files import read_json_file
from kernelscale.pipeline_layout import (
    DENOISER_PREFIX, OTHER_PREFIXES, WEIGHTS_NAME, PipelineLayout, components_listing, config_record, denoiser_config_text,
    detect_layout,
)
from kernelscale.plan import attention_rule_for, matches_pattern  # the planner's own matching rules, for checks across files
from kernelscale.reparam import glob_names
from kernelscale.io.safetensors_io import DTYPE_ITEMSIZE, PathLike, TensorInfo, encode_header
from kernelscale.text import quoted_names

OUTPUT_DTYPES: dict[str, Optional[str]] = {"keep": None, "float16": "F16", "bfloat16": "BF16", "float32": "F32"}
"""``--dtype`` choices → safetensors dtype name of every floating (F64/F32/F16/BF16) output tensor."""


# --- the plan of a whole checkpoint --------------------------------------------------------------


OUTCOMES = ("resize", "rescale", "dilate", "factored", "cast", "copy")
"""The keys of FilePlan.counts and CheckpointPlan.counts, in summary order."""


@dataclass(frozen=True)
class WeightNormSource:
    """Where a renormed weight-norm g finds its v: the file (``path``), v's header entry there, and
    v's output dtype (g' is computed from the v' that file stores)."""

    path: str
    info: TensorInfo
    out_dtype: str


@dataclass(frozen=True)
class FilePlan:
    """One safetensors file: where it comes from (``src``) and goes (``rel``, relative to the output
    root; ``""`` when the output is a single file), its input tensors in file order, the plan entry and
    output dtype of each, and the output's ``__metadata__`` (the input's plus the manifest).
    ``weight_norm_sources``: for each renormed weight-norm g, where its v is (this file or another
    shard of the same model)."""

    src: str
    rel: str
    tensors: tuple[TensorInfo, ...]
    entries: tuple[TensorPlan, ...]
    out_dtypes: tuple[str, ...]
    metadata: Mapping[str, str]
    header_size: int
    bytes_in: int
    bytes_out: int
    weight_norm_sources: Mapping[str, "WeightNormSource"] = field(default_factory=dict)

    def specs(self) -> list[tuple[str, str, tuple[int, ...]]]:
        """The output header as (name, dtype, shape) in file order."""
        return [(e.name, d, tuple(e.new_shape)) for e, d in zip(self.entries, self.out_dtypes)]

    def operation(self, i: int) -> Action:
        """What happens to tensor i (:class:`~kernelscale.manifest.Action`): ``resize``, ``renorm``
        (weight norm's g, rescaled for its resized v; counted as resized), ``geometry`` (weights
        kept, geometry recorded: counted as dilated), ``factored`` (weights kept, dilation and
        prefilter recorded), ``cast`` (values kept, dtype changed) or
        ``copy`` (byte for byte)."""
        entry = self.entries[i]
        if entry.action in (Action.RESIZE, Action.RENORM, Action.GEOMETRY, Action.FACTORED):
            return entry.action
        return Action.CAST if self.out_dtypes[i] != entry.dtype else Action.COPY

    def counts(self) -> dict[str, int]:
        """Tensors per outcome: ``resize`` (new kernels, weight norm's g with them), ``rescale``
        (values only: an attention temperature's query projection), ``dilate``, ``factored`` (bytes
        kept, a prefilter and dilation recorded), ``cast``, ``copy``."""
        counts = dict.fromkeys(OUTCOMES, 0)
        for i in range(len(self.entries)):
            op = self.operation(i)
            if op == Action.RESIZE and self.entries[i].kind == "attention":
                counts["rescale"] += 1
                continue
            counts[{Action.RENORM: "resize", Action.GEOMETRY: "dilate"}.get(op, op.value)] += 1
        return counts

    def work_bytes(self, i: int) -> int:
        """Output bytes tensor i's computation produces: a resized tensor's own; for a renormed g,
        its v' again (computed for its norms); 0 for the rest."""
        op = self.operation(i)
        if op == Action.RESIZE:
            return math.prod(self.entries[i].new_shape) * DTYPE_ITEMSIZE[self.out_dtypes[i]]
        if op == Action.RENORM:
            source = self.weight_norm_sources[self.entries[i].name]
            return math.prod(self.entries[i].partner.new_shape) * DTYPE_ITEMSIZE[source.out_dtype]
        return 0


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

    @property
    def bytes_resized(self) -> int:
        """Output bytes of the resized tensors: the work a device does (the rest is copied or cast).
        A renormed weight-norm g counts its v' (computed again for its norms)."""
        return sum(f.work_bytes(i) for f in self.files for i in range(len(f.entries)))

    def counts(self) -> dict[str, int]:
        total = dict.fromkeys(OUTCOMES, 0)
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
            why = ("another weight set of the diffusion denoiser" if rel.endswith((".safetensors", ".safetensors.index.json"))
                   else "weights in a format convert does not rewrite")
            lines.append(f"== {rel} == left out ({why})")
        return lines


def _size(path: Optional[str]) -> int:
    try:
        return os.stat(path).st_size if path else 0
    except OSError:
        return 0


# --- planning ------------------------------------------------------------------------------------


def plan_checkpoint(src: PathLike, options: ResizeOptions, *, dtype: str = "keep", dst: Optional[PathLike] = None,
                    scan: Optional[CheckpointScan] = None) -> CheckpointPlan:
    """Plan the conversion of a checkpoint from its headers alone; nothing is written.

    Raises InvalidCheckpointError for a broken input, InvalidOptionError for options that do not
    fit it (a glob matching no tensor anywhere in the checkpoint, a grid for a missing tensor, a
    bad scale for a kernel, an input converted before). ``dst`` only shapes the loading notes.
    """
    check_choice("dtype", dtype, tuple(OUTPUT_DTYPES))
    scan = scan if scan is not None else scan_checkpoint(src)
    for f in scan.files:
        if MANIFEST_KEY in f.metadata:
            raise InvalidOptionError(f"{f.path} was already converted by kernelscale (its metadata holds a manifest); "
                                     "convert the original checkpoint with the combined scale instead")
    layout = detect_layout(scan)
    scan, options, diffusion = _diffusion_defaults(scan, options, layout)
    unit_specs = [[TensorSpec(t.name, t.dtype, t.shape) for f in u.files for t in f.tensors] for u in scan.units]
    plans = _plan_units(unit_specs, options, scan.src)
    diffusion = _settle_denoiser(diffusion, scan, plans)
    target = OUTPUT_DTYPES[dtype]

    files: list[FilePlan] = []
    extras: list[ExtraFile] = []
    index_rel = None
    for unit, plan in zip(scan.units, plans):
        entries = iter(plan.entries)
        per_file = []
        located: dict[str, WeightNormSource] = {}  # every tensor of the model: a g's v may sit in another shard
        for src_file in unit.files:
            file_entries = tuple(next(entries) for _ in src_file.tensors)
            out_dtypes = tuple(target if target is not None and e.dtype in RESIZABLE else e.dtype for e in file_entries)
            per_file.append((src_file, file_entries, out_dtypes))
            located.update((t.name, WeightNormSource(src_file.path, t, d)) for t, d in zip(src_file.tensors, out_dtypes))
        unit_files = []
        for src_file, file_entries, out_dtypes in per_file:
            sources = {e.name: located[e.partner.name] for e in file_entries if e.action == "renorm"}
            manifest = Plan(file_entries, options).manifest()
            metadata = {**src_file.metadata, MANIFEST_KEY: json.dumps(manifest, sort_keys=True, separators=(",", ":"))}
            specs = [(e.name, d, tuple(e.new_shape)) for e, d in zip(file_entries, out_dtypes)]
            head, infos = encode_header(specs, metadata)
            rel = diffusion.renames.get(src_file.rel, src_file.rel) if scan.layout != "file" else ""
            unit_files.append(FilePlan(src_file.path, rel, src_file.tensors, file_entries, out_dtypes, metadata, len(head),
                                       _size(src_file.path), len(head) + sum(i.nbytes for i in infos), sources))
        files.extend(unit_files)
        if unit.index is not None:
            index_path, rel, data = unit.index
            total = sum(math.prod(e.new_shape) * DTYPE_ITEMSIZE[d] for fp in unit_files for e, d in zip(fp.entries, fp.out_dtypes))
            if rel in diffusion.renames:  # the denoiser's index, pointing at its renamed shards
                data = diffusion.layout.renamed_index(unit)
            new = {**data, "metadata": {**(data.get("metadata") or {}), "total_size": total}}
            text = (json.dumps(new, indent=2, sort_keys=True) + "\n").encode("utf-8")  # as transformers writes it
            extras.append(ExtraFile(diffusion.renames.get(rel, rel), index_path, len(text), text))
            if scan.layout == "sharded":
                index_rel = rel

    notes, loading, rewritten = _loading_notes(scan, plans, dst, diffusion)
    notes[:0] = diffusion.notes + _include_notes(options, plans) + _unresizable_conv_notes(options, plans)
    rewritten.update(diffusion.rewritten)
    for path, rel in scan.others:
        if rel in rewritten:
            data = rewritten[rel]
            extras.append(ExtraFile(rel, path, len(data), data))
        else:
            extras.append(ExtraFile(rel, path, _size(path)))
    notes.extend(_skipped_notes(scan))
    extras.sort(key=lambda x: x.rel)
    return CheckpointPlan(scan.src, scan.layout, options, dtype, tuple(files), tuple(extras), scan.skipped + diffusion.left_out,
                          index_rel, tuple(notes), tuple(loading))


@dataclass(frozen=True)
class _Diffusion:
    """What the diffusion layout (kernelscale.pipeline_layout) changes in a plan: output renames of
    the denoiser's files, rewritten files (its config.json), weight sets left out, notes."""

    layout: Optional[PipelineLayout] = None
    denoiser: Optional[ModelUnit] = None
    renames: Mapping[str, str] = field(default_factory=dict)
    rewritten: Mapping[str, bytes] = field(default_factory=dict)
    left_out: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)


def _diffusion_defaults(scan: CheckpointScan, options: ResizeOptions,
                        layout: Optional[PipelineLayout]) -> tuple[CheckpointScan, ResizeOptions, _Diffusion]:
    """Apply a diffusion checkpoint's defaults (kernelscale.pipeline_layout): without --include,
    only the denoiser is resized — the other components of a pipeline folder are copied byte for
    byte as files, a single file's other tensors as tensors; in a pipeline folder the denoiser is
    written as WEIGHTS_NAME with its config.json recording the surgery, other weight sets of it
    (variants) left out."""
    if layout is None:
        return scan, options, _Diffusion()
    default = not options.include
    if default:
        layout.check_default()
    notes: list[str] = []
    why = ("a diffusion pipeline resizes its denoiser only (DESIGN §11: the VAE maps latent cells to pixels at a fixed ratio, "
           "the text encoders see tokens); --include GLOB chooses otherwise")
    if layout.kind == "file":
        if default:
            options = replace(options, include=(DENOISER_PREFIX + "*",))
            others = sorted({p for f in scan.files for t in f.tensors for p in OTHER_PREFIXES if t.name.startswith(p)})
            if others:
                notes.append(f"resizing the denoiser ({DENOISER_PREFIX}*) only; {', '.join(p + '*' for p in others)} copied byte "
                             f"for byte: {why}")
        notes += _alignment_notes(options, "give --config FOLDER, a diffusers folder of the same architecture")
        return scan, options, _Diffusion(layout, notes=notes)
    if layout.denoiser is None:  # no UNet to rename (a generic folder conversion under explicit --include)
        return scan, options, _Diffusion(layout)
    denoiser = scan.units[layout.denoiser]
    variants = {f.rel for u in scan.units if u.dir_rel == layout.component and u is not denoiser for f in u.files}
    kept = [u for u in scan.units if u is denoiser or (not default and not any(f.rel in variants for f in u.files))]
    copied = [u for u in scan.units if u not in kept and not any(f.rel in variants for f in u.files)]
    others = scan.others + tuple((f.path, f.rel) for u in copied for f in u.files)
    others += tuple((u.index.path, u.index.rel) for u in copied if u.index is not None)
    scan = replace(scan, units=tuple(kept), others=tuple(sorted(others, key=lambda o: o[1])))
    if copied:
        rels = [f.rel for u in copied for f in u.files]
        notes.append(f"resizing the denoiser ({layout.component}/) only; {components_listing(rels)} copied byte for byte: {why}")
    if layout.left_out:
        notes.append(f"left out {quoted_names(list(layout.left_out), 3)}: other weight sets of the denoiser; OUT holds the "
                     f"converted {WEIGHTS_NAME} only (convert with --dtype float16 for half precision)")
    config = dict(layout.config or {})
    if "sample_size" not in config:
        raise InvalidOptionError(f"{os.path.join(scan.src, layout.config_rel)}: no sample_size in the denoiser's config")
    record = config_record(options.to_json()["scale"], config["sample_size"])
    text = denoiser_config_text(config, record).encode("utf-8")
    notes += _alignment_notes(options, "kernelscale convert applies them by default")
    return scan, options, _Diffusion(layout, denoiser, layout.weights_rels(denoiser), {layout.config_rel: text},
                                     layout.left_out, notes)


def _settle_denoiser(diffusion: _Diffusion, scan: CheckpointScan, plans: Sequence[Plan]) -> _Diffusion:
    """Keep the denoiser's stock file names and config when nothing in it changed, or when every
    change is one stock diffusers reads from config.json (conv_in/conv_out kernel sizes: then it
    loads correctly through from_pretrained, see _loading_notes)."""
    if diffusion.denoiser is None:
        return diffusion
    plan = plans[scan.units.index(diffusion.denoiser)]
    changed = [e for e in plan.entries if e.changed]
    structural = [e for e in changed if e.kind not in ("attention", "weight_norm")]
    stock = (structural and all(e.new_shape != e.shape for e in structural)
             and _stock_kernel_keys(structural, diffusion.layout.config or {}) is not None)
    if changed and not stock:
        return diffusion
    return replace(diffusion, denoiser=None, renames={}, rewritten={})


def _alignment_notes(options: ResizeOptions, where: str) -> list[str]:
    """Said when interp resizes a diffusion denoiser without the aligned downsampler rule."""
    if options.method != "interp" or options.align == "cells" or any("downsamplers" in r.pattern or r.align == "cells"
                                                                      for r in options.layers):
        return []
    return [f"the denoiser's strided downsamplers are resized like its other convs, half a high-res pixel off (DESIGN §4); "
            f"the aligned rule and the attention temperature come from its config: {where} (in Python: "
            "kernelscale.integrations.diffusers.pipeline_options)"]


def _unresizable_conv_notes(options: ResizeOptions, plans: Sequence[Plan]) -> list[str]:
    """Conv-shaped weights copied only because of their dtype (float8, integer: quantised layers)
    leave those layers at the old resolution while the rest grows: said, with the names, unless an
    --exclude glob names them."""
    kept = [e for plan in plans for e in plan.entries
            if e.action == "copy" and e.name.endswith("weight") and 3 <= len(e.shape) <= 5
            and any(k > 1 for k in e.shape[2:]) and e.dtype not in RESIZABLE and e.reason.startswith("not a floating tensor")
            and not any(matches_pattern(e.name, pattern) for pattern in options.exclude)]
    if not kept:
        return []
    names = ", ".join(f"{e.name} ({e.dtype})" for e in kept[:3]) + (", …" if len(kept) > 3 else "")
    return [f"{len(kept)} conv-shaped weight(s) copied unresized because of their dtype: {names}; kernelscale resizes "
            "float16/bfloat16/float32/float64 only, so those layers stay at the old resolution (dequantise them first, "
            "or --exclude their layers to make that explicit)"]


def _include_notes(options: ResizeOptions, plans: Sequence[Plan]) -> list[str]:
    """An --include glob that matches only tensors left as they are (a Linear without a grid, a
    bias, a 1×1 conv, an excluded layer) does nothing, like one that matches no tensor (an error,
    raised by the planner); it is noted rather than refused, as an --exclude or a scale-1 layer rule
    may leave it so on purpose. The reasons are the plan's own."""
    notes = []
    for pattern in options.include:
        matched = [e for plan in plans for e in plan.entries if matches_pattern(e.name, pattern)]
        if matched and not any(e.changed for e in matched):
            why = "; ".join(f"{e.name}: {e.reason}" for e in matched[:3]) + ("; …" if len(matched) > 3 else "")
            notes.append(f"--include {pattern!r} matched only tensors that are not resized ({why})")
    return notes


def _skipped_notes(scan: CheckpointScan) -> list[str]:
    """What leaving out the weights in foreign formats means: nothing lost where converted
    safetensors sit in the same folder; where none do, OUT lacks that model's weights."""
    converted = {os.path.dirname(f.rel) for f in scan.files}
    alone = [rel for rel in scan.skipped if os.path.dirname(rel) not in converted]
    beside = [rel for rel in scan.skipped if os.path.dirname(rel) in converted]
    what = "weights in a format convert does not rewrite"
    notes = []
    if alone:
        folders = sorted({(os.path.dirname(rel) or ".") + "/" for rel in alone})
        one = len(folders) == 1
        notes.append(f"left out {len(alone)} file(s) of {what} ({quoted_names(alone, 3)}): they are not copied, and "
                     f"{', '.join(folders)} {'holds' if one else 'hold'} no safetensors weights, so "
                     f"{'that model has' if one else 'those models have'} no weights in OUT and loading "
                     f"{'it' if one else 'them'} from there fails; save them as safetensors "
                     "(safetensors.torch.save_file) and convert again")
    if beside:
        notes.append(f"left out {len(beside)} file(s) of {what} ({quoted_names(beside, 3)}): they are not copied, so OUT holds "
                     "only the converted safetensors beside them and a loader cannot pick up the unconverted weights instead")
    return notes


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
    all_names = sorted(glob_names(s.name for specs in unit_specs for s in specs))
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
        names = sorted(glob_names(s.name for s in specs))
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
            entries = tuple(e if not e.changed else TensorPlan(e.name, e.dtype, e.shape, Action.COPY, "not matched by --include", e.shape)
                            for e in entries)
        plans.append(Plan(entries, options))
    return plans


MAX_CONFIG_BYTES = 16_000_000
"""Largest config.json read beside a model."""


def _config_of(scan: CheckpointScan, unit: ModelUnit) -> Optional[dict[str, Any]]:
    """The config.json object of a model whose shapes or geometry change; None where there is none.

    Inside a folder IN the config is part of the output, and kernelscale reads it to name the
    model's class in the loading recipe and to rewrite the kernel sizes stock loaders read from it
    (conv_in/conv_out): one that is there but cannot be read as a JSON object (not a regular file,
    too large, not UTF-8, not JSON, nested too deeply, not an object) raises InvalidCheckpointError
    naming it and the cause, rather than being copied as if it did not matter. Beside a lone file
    or shard index IN it is not part of the output and only names the class: it is then skipped.
    """
    root = scan.src if scan.layout == "folder" else os.path.dirname(scan.src)
    path = os.path.join(root, unit.dir_rel, "config.json")
    if not os.path.exists(path):
        return None
    try:
        data = read_json_file(path, MAX_CONFIG_BYTES, InvalidCheckpointError, "config.json")
        if not isinstance(data, dict):
            raise InvalidCheckpointError(f"{path}: config.json holds a JSON {type(data).__name__}, not an object")
    except InvalidCheckpointError as exc:
        if scan.layout != "folder":
            return None
        raise InvalidCheckpointError(f"{exc}; kernelscale reads the config.json of a model it resizes (to say how to load it and "
                                     "to update the kernel sizes stock loaders read): repair it, or move it out of the folder") from None
    return data


def _stock_kernel_keys(entries: Sequence[TensorPlan], config: Mapping[str, Any]) -> Optional[dict[str, int]]:
    """``{"conv_in_kernel": k', …}`` when every shape or geometry change is one diffusers reads from
    config.json (conv_in/conv_out resized to an odd, square, centred kernel); None otherwise."""
    updates = {}
    for e in entries:
        layer = e.name[: -len(".weight")] if e.name.endswith(".weight") else e.name
        key = f"{layer}_kernel"
        ks = set(e.new_shape[2:])
        if (e.action != Action.RESIZE or not isinstance(e.record, ConvRecord) or layer not in ("conv_in", "conv_out") or key not in config
                or len(ks) != 1 or min(ks) % 2 == 0 or e.record.absorb or e.record.half_pixel):
            return None
        updates[key] = ks.pop()
    return updates


def _loading_notes(scan: CheckpointScan, plans: Sequence[Plan], dst: Optional[PathLike],
                   diffusion: "_Diffusion") -> tuple[list[str], list[dict], dict[str, bytes]]:
    """How to load each model whose shapes or geometry changed, and config.json rewrites for the
    changes stock diffusers can express (conv_in/conv_out kernel sizes). A diffusion pipeline's
    denoiser (kernelscale.pipeline_layout) loads through the diffusers integration's load_pipeline."""
    out_root = os.fspath(dst) if dst is not None else "OUT"
    notes: list[str] = []
    loading: list[dict[str, Any]] = []
    rewritten: dict[str, bytes] = {}
    for unit, plan in zip(scan.units, plans):
        structural = [e for e in plan.entries if e.changed and e.kind not in ("attention", "weight_norm")]  # no geometry of their own
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
        if diffusion.layout is not None and (unit is diffusion.denoiser or diffusion.layout.kind == "file"):
            notes.append(_pipeline_note(diffusion.layout, out_root, structural))
            record.update(stock_loadable=False, load=_pipeline_recipe(diffusion.layout, out_root))
            loading.append(record)
            continue
        reshaped = any(e.new_shape != e.shape for e in structural)  # else nothing for config.json to say
        updates = _stock_kernel_keys(structural, config) if (config and cls and scan.layout == "folder" and reshaped) else None
        if updates is not None:
            config_rel = posixpath.join(unit.dir_rel, "config.json")
            new_config = {**config, **updates}
            rewritten[config_rel] = (json.dumps(new_config, indent=2, sort_keys=True) + "\n").encode("utf-8")
            changes = ", ".join(f"{k} {config[k]} → {v}" for k, v in sorted(updates.items()))
            notes.append(f"{config_rel}: {changes}, so that diffusers' {cls}.from_pretrained loads the resized kernels")
            record.update(stock_loadable=True, config_updates=updates, load=f"{cls}.from_pretrained({os.path.dirname(out_path)!r})")
            loading.append(record)
            continue
        asymmetric = any(isinstance(e.record, ConvRecord) and e.record.half_pixel for e in structural)  # cells, pinv: even sizes
        load = f"kernelscale.nn.load(model, {out_path!r}" + (", padding='asymmetric')" if asymmetric else ")")
        how = (f"model = {cls}.from_config({cls}.load_config({config_dir!r})); {load}" if cls
               else f"build the original model, then {load}")
        groups: dict[str, list[TensorPlan]] = {}
        for e in structural:
            groups.setdefault(loader_change(e.record, e.shape, e.new_shape), []).append(e)
        if set(groups) == {"none"}:  # weights resized in place: same shapes, same recorded geometry
            notes.append(_in_place_note(label, groups["none"], how))
            stock = (f"{cls}.from_pretrained({os.path.dirname(out_path)!r})" if cls and scan.layout == "folder"
                     else f"model.load_state_dict(safetensors.torch.load_file({out_path!r}))")
            record.update(stock_loadable=True, load=stock)
            loading.append(record)
            continue
        what = []
        for change in LOADER_CHANGES:
            if change not in groups:
                continue
            e = groups[change][0]
            if change == "shape":
                what.append(f"{len(groups[change])} tensor(s) changed shape (e.g. {e.name} {shape_text(e.shape[2:] or e.shape)} → "
                            f"{shape_text(e.new_shape[2:] or e.new_shape)})")
            else:
                what.append(f"{len(groups[change])} conv(s) keep their shape but need a new {change} (e.g. {e.name})")
        ignored = " and ".join(c for c in LOADER_CHANGES[1:] if c in groups)
        if cls:
            stock = (f"diffusers' {cls} hard-codes its resnet and sampler convs at 3×3, so from_pretrained would "
                     + ("fail with a size mismatch" if "shape" in groups else f"load them but ignore the new {ignored}"))
        else:
            stock = ("a stock loader expects the original shapes and geometry" if "shape" in groups
                     else f"a stock loader would load them but ignore the new {ignored}")
        notes.append(f"{label}: {' and '.join(what)}; {stock}. Load it with the nn adapter: {how}")
        record.update(stock_loadable=False, load=how)
        loading.append(record)
    return notes, loading, rewritten


def _pipeline_recipe(layout: PipelineLayout, out_root: str) -> str:
    """The Python line that loads a converted diffusion checkpoint as a runnable pipeline."""
    if layout.kind == "file":
        return f"kernelscale.integrations.diffusers.load_pipeline({out_root!r}, config='FOLDER')"
    return f"kernelscale.integrations.diffusers.load_pipeline({out_root!r})"


def _pipeline_note(layout: PipelineLayout, out_root: str, structural: Sequence[TensorPlan]) -> str:
    recipe = _pipeline_recipe(layout, out_root)
    geometry = "re-dilated" if all(loader_change(e.record, e.shape, e.new_shape) == "dilation" for e in structural) else "resized"
    if layout.kind == "file":
        return (f"{os.path.basename(out_root)}: {len(structural)} denoiser tensor(s) {geometry}; stock diffusers cannot load them. "
                f"Load the pipeline with {recipe}, FOLDER being a local diffusers pipeline folder of the same architecture "
                "(its configs and tokenizers); the denoiser alone: kernelscale.integrations.diffusers.load_denoiser("
                f"{out_root!r}, config='FOLDER')")
    return (f"{layout.component}/: {len(structural)} tensor(s) {geometry}, written as {WEIGHTS_NAME} with sample_size and the "
            f"surgery in its config.json, so stock from_pretrained refuses the folder rather than run the wrong geometry. "
            f"Load the pipeline with {recipe}; the denoiser alone: kernelscale.integrations.diffusers.load_denoiser("
            f"{posixpath.join(out_root, layout.component)!r})")


def _in_place_note(label: str, entries: Sequence[TensorPlan], how: str) -> str:
    """Kernels whose weights changed but not their shape (e.g. 3×3 at --scale 0.3). By the geometry
    rule p' = (k−1)·d/2 − s·((k−1)·d/2 − p) the padding stays only where p = (k−1)·d/2."""
    e = entries[0]
    note = (f"{label}: {len(entries)} tensor(s) resized in place (e.g. {e.name}, {shape_text(e.shape[2:] or e.shape)} kept); "
            "a stock loader loads them as they are")
    if any(x.kind == "conv" for x in entries):
        note += (", keeping each conv's padding: right for convs padded (k−1)·d/2 (\"same\", as most are); a conv with "
                 f"other padding needs a new one, which the nn adapter applies: {how}")
    return note
