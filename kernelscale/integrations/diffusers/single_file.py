"""Converted single files in the original (LDM) layout: ``model.diffusion_model.*`` (the denoiser),
``first_stage_model.*`` (the VAE), ``cond_stage_model.*`` / ``conditioner.*`` (text encoders), as
A1111 and ComfyUI users share Stable Diffusion checkpoints.

The denoiser's keys are mapped to diffusers names by diffusers' own key conversion
(``diffusers.loaders.single_file_utils.convert_ldm_unet_checkpoint``, a renaming given the UNet's
config, done on the names alone), the manifest's records follow their tensors, and
:func:`kernelscale.nn.load` (``names=`` that renaming) loads the denoiser's tensors from the file
into the UNet built from that config; the file's other tensors are not read.

The config comes from ``config``: a local diffusers folder of the same architecture — a pipeline
folder (model_index.json, its ``unet/config.json`` is used) or a model folder (config.json) — or a
dict. A single file does not say which architecture it holds precisely enough to build it offline.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from torch import nn

from kernelscale.io.checkpoint import MANIFEST_KEY, parse_manifest
from kernelscale.errors import InvalidCheckpointError, InvalidOptionError
from kernelscale.integrations.diffusers.denoiser import build_and_load, dtype_keyword, read_config, read_model_index
from kernelscale.pipeline_layout import CONFIG_KEY, DENOISER_PREFIX, OTHER_PREFIXES, check_class

__all__ = ["DENOISER_PREFIX", "OTHER_PREFIXES", "load_single_file_denoiser", "load_single_file_pipeline"]

ConfigSource = Optional[Union[str, os.PathLike, Mapping[str, Any]]]


def denoiser_config(config: ConfigSource, path: Path) -> dict[str, Any]:
    """The denoiser's diffusers config from ``config`` (a pipeline folder, a model folder or a dict)
    for the single file ``path``; InvalidOptionError naming what to pass when it is None."""
    if config is None:
        raise InvalidOptionError(
            f"{path}: a single file does not carry the denoiser's config; pass config= a local diffusers folder of the same "
            "architecture (the pipeline the file was fine-tuned from, e.g. a folder saved by save_pretrained) or a dict")
    if isinstance(config, Mapping):
        return dict(config)
    folder = Path(config)
    if (folder / "model_index.json").is_file():
        folder = folder / "unet"
    return read_config(folder)


def _header(path: Path) -> tuple[list[str], Optional[dict[str, Any]]]:
    """(the file's tensor names, its manifest or None), from the header alone."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            keys = list(f.keys())
    except (OSError, ValueError, RuntimeError) as exc:  # safetensors' own errors for a bad file
        raise InvalidCheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    text = metadata.get(MANIFEST_KEY)
    return keys, (parse_manifest(text, path) if text is not None else None)


def _refuse_other_resized(path: Path, manifest: Mapping[str, Any]) -> None:
    resized = sorted(n for n in manifest["tensors"] if n.startswith(OTHER_PREFIXES))
    if resized:
        scale = manifest.get("options", {}).get("scale", "S")
        raise InvalidCheckpointError(
            f"{path}: the VAE or text encoder was resized too ({len(resized)} tensor(s), e.g. {resized[0]}); a diffusion "
            "pipeline resizes only its denoiser (the VAE maps latent cells to pixels at a fixed ratio, the text encoder "
            f"sees tokens). Convert the original file again without --include, which resizes the denoiser ({DENOISER_PREFIX}*) "
            f"only: kernelscale convert ORIGINAL OUT --scale {scale} --config FOLDER")


def to_diffusers_names(tensors: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, str]:
    """Original-layout name → diffusers name for the denoiser's tensors, by diffusers' own
    conversion (a renaming: each converted value is the same object as its source, so any distinct
    placeholders do). Tensors already in diffusers' layout (no ``model.diffusion_model.`` prefix)
    keep their names."""
    if not any(k.startswith(DENOISER_PREFIX) for k in tensors):
        return {k: k for k in tensors}
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    converted = convert_ldm_unet_checkpoint(tensors, dict(config))
    source = {id(t): name for name, t in tensors.items()}
    names: dict[str, str] = {}
    for new, tensor in converted.items():
        old = source.get(id(tensor))
        if old is None:
            raise InvalidCheckpointError(f"diffusers' conversion made a new tensor for {new!r}; kernelscale cannot follow "
                                         "its manifest record")
        names[old] = new
    left = sorted(set(tensors) - set(names))
    if left:
        raise InvalidCheckpointError(f"{len(left)} denoiser tensor(s) have no diffusers name for this config (e.g. {left[0]}); "
                                     "is config= the architecture of this file?")
    return names


def load_single_file_denoiser(path: Path, config: ConfigSource) -> nn.Module:
    """The supersampled denoiser of a converted single file (module docstring)."""
    unet_config = denoiser_config(config, path)
    class_name = check_class(str(unet_config.get("_class_name", "UNet2DConditionModel")), f"{path}'s denoiser")
    keys, manifest = _header(path)
    if manifest is None:
        raise InvalidCheckpointError(f"{path}: no kernelscale manifest, so it was not converted; convert it first: "
                                     f"kernelscale convert {path.name} OUT.safetensors --scale S --config FOLDER")
    _refuse_other_resized(path, manifest)
    prefixed = [k for k in keys if k.startswith(DENOISER_PREFIX)]
    mine = prefixed if prefixed else [k for k in keys if not k.startswith(OTHER_PREFIXES)]
    names = to_diffusers_names({k: object() for k in mine}, unet_config)  # a renaming: no tensor is read for it
    renamed = {**manifest, "tensors": {names[n]: r for n, r in manifest["tensors"].items() if n in names}}
    trained = (unet_config.get(CONFIG_KEY) or {}).get("trained_sample_size", unet_config.get("sample_size"))
    return build_and_load(class_name, unet_config, path, renamed, trained_sample_size=trained, names=names)


def load_single_file_pipeline(path: Path, config: ConfigSource, *, dtype: Optional[torch.dtype] = None,
                              **from_pretrained: Any) -> Any:
    """A runnable pipeline from a converted single file: the denoiser from the file; the VAE and
    text encoders from the file when it holds them (diffusers' ``from_single_file`` with ``config``
    as its local config folder), else from the ``config`` pipeline folder."""
    import diffusers

    if config is None or isinstance(config, Mapping) or not (Path(config) / "model_index.json").is_file():
        raise InvalidOptionError(f"{path}: load_pipeline of a single file needs config= a local diffusers pipeline folder of "
                                 "the same architecture (model_index.json, the tokenizers and configs); got "
                                 f"{config!r}. For the denoiser alone: load_denoiser(file, config=...)")
    folder = Path(config)
    index = read_model_index(folder)
    denoiser = load_single_file_denoiser(path, folder)
    if dtype is not None:
        denoiser = denoiser.to(dtype)
        from_pretrained[dtype_keyword()] = dtype
    if any(k.startswith(OTHER_PREFIXES) for k in _keys(path)):
        cls = getattr(diffusers, str(index.get("_class_name")), None)
        if cls is None or not hasattr(cls, "from_single_file"):
            raise InvalidOptionError(f"{folder}: its pipeline class {index.get('_class_name')!r} cannot load single files")
        return cls.from_single_file(str(path), config=str(folder), unet=denoiser, **from_pretrained)
    return diffusers.DiffusionPipeline.from_pretrained(folder, unet=denoiser, **from_pretrained)


def _keys(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())
