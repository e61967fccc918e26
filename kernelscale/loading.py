"""Loading a checkpoint written by ``kernelscale convert`` into the original architecture
(:func:`load`, public as :func:`kernelscale.nn.load`): the files found as everywhere else
(:func:`kernelscale.io.discovery.model_files`), the file's names matched to the module's (a
prefix such as a Stable Diffusion single file's :data:`ORIGINAL_DENOISER_PREFIX`, or a renaming),
each record's shape checked against the module, the layers reshaped as the records say
(:mod:`kernelscale.module_patch`), factored records run as FactoredConv, then the tensors loaded.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from torch import nn

from kernelscale.errors import GeometryError, InvalidCheckpointError, InvalidOptionError
from kernelscale.geometry import LayerGeometry, Refit
from kernelscale.io.checkpoint import read_headers
from kernelscale.io.discovery import model_files
from kernelscale.io.safetensors_io import SafetensorsReader
from kernelscale.layers import factor_resize
from kernelscale.manifest import AttentionRecord, ConvRecord, FactoredRecord, GridRecord, Manifest, Record, RenormRecord
from kernelscale.method import check_choice
from kernelscale.module_geometry import CONVS, TRANSPOSED, Sides, sides_by_module
from kernelscale.module_patch import (PADDINGS, Pending, apply_pending, change_entry, check_layer, factored_note, is_lazy, locate,
                                      materialised_note, ordered_changes, owner, pool_changes, replace_data, require_module,
                                      unfactorable_layer)
from kernelscale.module_report import LayerChange, SupersampleReport
from kernelscale.options import ResizeOptions
from kernelscale.recipes import listing, load_recipe, refit_error
from kernelscale.reparam import refresh_weight_norm

def load(
    module: nn.Module,
    path: Union[str, os.PathLike],
    *,
    pools: bool = False,
    padding: str = "exact",
    allow_reflect: bool = False,
    prefix: Optional[str] = None,
    names: Optional[Mapping[str, str]] = None,
) -> SupersampleReport:
    """Load a checkpoint written by ``kernelscale convert`` into ``module`` (the original
    architecture), reshaping its layers as the manifest records; return the report.

    ``prefix``: the file's tensors for the module are named ``prefix + name`` (e.g.
    ``"model.diffusion_model."``, a Stable Diffusion single file's denoiser): only those are loaded,
    with the prefix stripped from them and from the manifest's records; the file's other tensors are
    ignored. Without it, when the module's tensors are missing and the file's are under
    ``model.diffusion_model.``, that prefix is taken when it makes the names match; otherwise the
    error names the prefix to give (or, for original-layout names that a diffusers UNet does not
    use, ``kernelscale.integrations.diffusers.load_denoiser``). ``names``: the file's name → the
    module's name of each tensor to load (e.g. a layout conversion's renaming), the records
    following their tensors; tensors it does not name are ignored. Not with ``prefix``.

    ``path``: a .safetensors file, a folder of them, or a ``*.safetensors.index.json`` shard index.
    For each record (DESIGN §5) the layer's kernel size, padding, stride and dilation come from
    :func:`kernelscale.geometry.record_geometry` applied to the layer's own geometry; Linear grids get the new
    ``in_features``. ``pools=True`` scales MaxPool/AvgPool windows by the manifest's options, as
    :func:`kernelscale.nn.supersample` does. A checkpoint without a manifest loads as it is.

    Strict: a module tensor missing from the files, a file tensor the module lacks, a shape other
    than the record's, a record for a layer whose kernel differs from the record's old shape, or a
    manifest of an unknown format version is an InvalidCheckpointError or GeometryError naming it.
    Everything is read and checked before the module is touched. A transposed conv the recorded
    resize cannot fit (``kernelscale convert`` cannot tell a transposed conv's weight from a conv's,
    so a default conversion of a vocoder's ``ConvTranspose1d(16, stride 8, padding 4)`` records a
    half-pixel padding) is refused with the plan file (``[[layers]]`` rules, align cells) and the
    convert command that fit it. A lazy layer loads the file's tensors unless the manifest records
    a resize of it (then: run one forward pass first). Training after loading: see
    :func:`kernelscale.nn.supersample`.
    """
    require_module(module, "load")
    check_choice("padding", padding, PADDINGS)
    files = model_files(path)
    manifest, where = read_headers(files)
    typed = Manifest.from_json(manifest, path) if manifest is not None else None  # checked once, here
    records = dict(typed.tensors) if typed is not None else {}
    state = module.state_dict(keep_vars=True)
    if prefix is not None and names is not None:
        raise InvalidOptionError("give prefix= or names=, not both")
    if prefix is None and names is None and any(n not in where for n in state):
        prefix = _found_prefix(path, state, where)
    if prefix:
        names = {n: n[len(prefix):] for n in where if n.startswith(prefix)}
        if not names:
            raise InvalidCheckpointError(f"{path}: no tensor named {prefix!r}…; prefix= is the start of the module's tensor "
                                         f"names in the file (e.g. {next(iter(where), '?')!r})")
    source = {n: n for n in where}  # the module's name -> the file's
    if names is not None:
        source = {new: old for old, new in names.items() if old in where}
        where = {new: where[old] for new, old in source.items()}
        records = {names[n]: _renamed(r, names) for n, r in records.items() if n in names}
        if manifest is not None:
            manifest = {**manifest, "tensors": {names[n]: r for n, r in manifest["tensors"].items() if n in names}}
    missing = [n for n in state if n not in where]
    unexpected = [n for n in where if n not in state]
    if missing:
        raise InvalidCheckpointError(f"{path}: missing tensors the module needs: {listing(missing)}")
    if unexpected:
        raise InvalidCheckpointError(f"{path}: unexpected tensors the module does not have: {listing(unexpected)}")
    stray = [n for n in records if n not in state]
    if stray:
        raise InvalidCheckpointError(f"{path}: the manifest records tensors the checkpoint does not hold: {listing(stray)}")

    layers = dict(module.named_modules())
    records = sides_by_module(records, module)
    pending: list[Pending] = []
    sides = Sides()
    reshaped: dict[str, tuple[int, ...]] = {}
    refits: list[Refit] = []
    for name, tensor in state.items():
        record = records.get(name)
        file_shape = where[name][1]
        if is_lazy(tensor):  # load_state_dict gives it the file's shape; a lazy conv's kernel is known
            if record is not None:
                raise GeometryError(f"{name}: the layer is lazy and its shape is not known yet; run one forward pass on a "
                                    "low-resolution input first, then load")
            holder, attr = owner(name)
            layer = layers.get(holder)
            if attr == "weight" and isinstance(layer, CONVS + TRANSPOSED) and tuple(file_shape[2:]) != tuple(layer.kernel_size):
                raise InvalidCheckpointError(f"{path}: {name!r} has kernel {file_shape[2:]} in the checkpoint but the lazy layer "
                                             f"{holder!r} was built with {tuple(layer.kernel_size)}")
            continue
        if record is None:
            if file_shape != tuple(tensor.shape):
                raise InvalidCheckpointError(
                    f"{path}: {name!r} has shape {file_shape} in the checkpoint but "
                    f"{tuple(tensor.shape)} in the module, and the manifest does not record a resize")
            continue
        layer_name, holder, _ = locate(name, layers)
        layer = layers.get(layer_name)
        if layer is None or holder is None:
            raise GeometryError(f"{name}: the manifest records it, but no layer named {layer_name!r} owns it")
        if isinstance(record, RenormRecord):  # g, rescaled for its resized v: loaded as it is
            if file_shape != tuple(tensor.shape) or record.v not in records:
                raise InvalidCheckpointError(f"{path}: {name!r} is recorded as weight norm's g of {record.v!r}, but has shape "
                                             f"{file_shape} against {tuple(tensor.shape)} in the module, or its v has no record")
            continue
        check_layer(layer_name, layer, name, allow_reflect, record.kind, holder)
        expected = _expected_shape(name, tuple(tensor.shape), record)
        if file_shape != expected:
            raise InvalidCheckpointError(f"{path}: {name!r} has shape {file_shape} but its record says {expected}")
        equal = record.materialised() if isinstance(record, FactoredRecord) else record
        try:
            change, geometry, in_features = change_entry(layer_name, layer, equal, padding, sides.take(record),
                                                          tuple(tensor.shape), expected)
        except Refit as refit:
            refits.append(refit)
            continue
        if isinstance(record, FactoredRecord):
            pending.append(_factored_load(path, name, layer_name, layer, holder, record, change, geometry))
            continue
        if isinstance(record, ConvRecord) and not record.dilation:
            change = replace(change, execution="materialised", execution_note=materialised_note(record))
        pending.append(Pending(layer, change, geometry, {}, in_features))
        reshaped[name] = expected
    if refits:
        raise refit_error(refits, load_recipe(refits, manifest))
    skipped: list[tuple[str, str]] = []
    if pools and typed is not None:
        opts = dict(typed.options)
        options = ResizeOptions(scale=opts["scale"], include=tuple(opts.get("include", ())), exclude=tuple(opts.get("exclude", ())),
                                layers=tuple(opts.get("layers", ())))
        pool_pending, skipped = pool_changes(module, options)
        pending += pool_pending

    tensors: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[str]] = {}
    for name, (file, _) in where.items():
        by_file.setdefault(file, []).append(name)
    for file, names in by_file.items():
        with SafetensorsReader(file) as reader:
            for name in names:
                tensors[name] = reader.read_tensor(source[name])

    apply_pending(pending, module)
    with torch.no_grad():
        for name, shape in reshaped.items():
            param = state[name]
            replace_data(param, torch.empty(shape, dtype=param.dtype, device=param.device))
        module.load_state_dict(tensors, strict=True)
    refresh_weight_norm(p.layer for p in pending if p.factored is None)
    return SupersampleReport(ordered_changes(pending, layers), tuple(skipped), manifest or {})


ORIGINAL_DENOISER_PREFIX = "model.diffusion_model."
"""Where a Stable Diffusion single file (A1111, ComfyUI) keeps its denoiser's tensors."""


def _found_prefix(path: Any, state: Mapping[str, Any], where: Mapping[str, Any]) -> Optional[str]:
    """The prefix to strip from the file's names when the module's names are missing from it:
    :data:`ORIGINAL_DENOISER_PREFIX` when stripping it makes every module name found; None when no
    prefix explains the mismatch (the caller reports the missing names). InvalidCheckpointError
    naming ``prefix=`` when another prefix would, and naming the diffusers loader when the file's
    denoiser is in the original layout that the module (a diffusers UNet) does not use."""
    found = {n[len(ORIGINAL_DENOISER_PREFIX):] for n in where if n.startswith(ORIGINAL_DENOISER_PREFIX)}
    if found and all(n in found for n in state):
        return ORIGINAL_DENOISER_PREFIX
    if found:
        raise InvalidCheckpointError(
            f"{path}: the module's tensors are missing, and the file holds a Stable Diffusion single file's denoiser under "
            f"{ORIGINAL_DENOISER_PREFIX!r} in the original (LDM) layout, whose names the module "
            "does not use even without the prefix; for a diffusers UNet: kernelscale.integrations.diffusers.load_denoiser(path, "
            f"config=...); for a module in the original layout: prefix={ORIGINAL_DENOISER_PREFIX!r}")
    first = next(iter(state), None)
    if first is None:
        return None
    candidates = sorted({f[: -len(first)] for f in where if f.endswith("." + first)})
    for candidate in candidates:
        if all(candidate + n in where for n in state):
            raise InvalidCheckpointError(f"{path}: the module's tensors are in the file under the prefix {candidate!r} "
                                         f"(e.g. {candidate + first!r}): kernelscale.nn.load(module, path, prefix={candidate!r})")
    return None


def _renamed(record: Record, names: Mapping[str, str]) -> Record:
    """A record whose own tensor reference (weight norm's v) is renamed like the tensors are."""
    if isinstance(record, RenormRecord) and record.v in names:
        return replace(record, v=names[record.v])
    return record


def _factored_load(path: Any, name: str, layer_name: str, layer: nn.Module, holder: Optional[nn.Module], record: FactoredRecord,
                   change: LayerChange, geometry: Optional[LayerGeometry]) -> Pending:
    """The pending FactoredConv wrap of a layer a factored record names; GeometryError where the
    layer cannot run it (a transposed conv, a parametrized weight) or where its factored geometry
    would not be the materialised conv's (both are checked as :func:`kernelscale.nn.supersample` checks them)."""
    try:
        resize = factor_resize(**record.prefilter.options())
    except InvalidOptionError as exc:
        raise InvalidCheckpointError(f"{path}: {name!r}: its factored record's prefilter does not rebuild: {exc}") from None
    why = unfactorable_layer(layer_name, layer, holder, owner(name)[1], geometry, resize)
    if why is not None:
        raise GeometryError(f"{path}: {name!r} is recorded as factored, but layer {layer_name!r} cannot run it: {why}; "
                            "convert the checkpoint with --execution materialised (or exclude the layer)")
    if resize.dilations != record.dilation:
        raise InvalidCheckpointError(f"{path}: {name!r}: the recorded dilation {list(record.dilation)} is not its prefilter's "
                                     f"{list(resize.dilations)}")
    return Pending(layer, replace(change, execution="factored", execution_note=factored_note(resize)), factored=resize,
                    path=layer_name)


def _expected_shape(name: str, shape: tuple[int, ...], record: Record) -> tuple[int, ...]:
    if isinstance(record, AttentionRecord):
        return shape
    if isinstance(record, GridRecord):
        grid = record.grid_layout
        if len(shape) != 2 or shape[1] != grid.cells:
            raise GeometryError(f"{name}: the module's weight {shape} is not over the recorded grid {grid.text}")
        return (shape[0], record.new_grid_layout.cells)
    old = record.old_spatial
    if tuple(shape[2:]) != old:
        raise GeometryError(f"{name}: the module's kernel is {shape[2:]} but the record was made for {old}")
    return tuple(shape[:2]) + record.new_spatial
