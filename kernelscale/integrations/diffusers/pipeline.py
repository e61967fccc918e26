"""Pipelines in, runnable pipelines out (DESIGN §11).

    pipe = StableDiffusionPipeline.from_pretrained("sd15")
    report = supersample_pipeline(pipe, 2)          # the denoiser only; sample_size × 2
    pipe("a cat").images[0]                         # 1024² by default
    pipe.save_pretrained("sd15_x2")                 # the denoiser with its manifest
    pipe = load_pipeline("sd15_x2")                 # or a `kernelscale convert` output, or a single file

Only the denoiser is resized. The VAE maps latent cells to pixels at a fixed ratio and is fully
convolutional: resized, it would expect supersampled latents. The text encoder sees tokens, not
pixels. Both are left alone, and a converted folder whose VAE or text encoder was resized is
refused with the command that converts the denoiser only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

from kernelscale.io.checkpoint import read_headers
from kernelscale.errors import InvalidCheckpointError, InvalidOptionError
from kernelscale.integrations.diffusers.denoiser import (
    DenoiserReport, _load_folder, check_class, check_denoiser, dtype_keyword, read_model_index, supersample_denoiser,
)
from kernelscale.options import LayerRule

__all__ = ["denoiser_name", "load_pipeline", "supersample_pipeline"]

_DENOISER_COMPONENTS = ("unet", "transformer", "prior", "decoder")


def denoiser_name(components: Any) -> str:
    """The pipeline component that denoises: ``unet`` (or ``transformer``, refused later by class)."""
    names = [n for n in _DENOISER_COMPONENTS if n in components and components[n] is not None]
    if not names:
        raise InvalidOptionError(f"no denoiser among the pipeline's components ({', '.join(sorted(components))}); "
                                 "supersample_pipeline takes a diffusers pipeline with a 'unet'")
    return names[0]


def supersample_pipeline(
    pipe: Any,
    scale: Union[float, Sequence[float]],
    *,
    method: str = "interp",
    execution: str = "materialised",
    attention: Any = "auto",
    align_downsamplers: bool = True,
    geometry_only: bool = False,
    layers: Sequence[LayerRule] = (),
    **plan_options: Any,
) -> DenoiserReport:
    """Patch ``pipe``'s denoiser in place so that ``pipe(prompt)`` generates ``scale``× larger
    images by default; return the report. The VAE and text encoders are not touched.

    Options as :func:`~kernelscale.integrations.diffusers.denoiser.supersample_denoiser`: ``method``
    (``interp``, ``dilate``, ``pinv``, ``disperse``), ``execution`` (``materialised``, the default, or
    ``factored``: kernelscale.nn.supersample's, DESIGN §9), ``attention`` (``"auto"``: the temperature
    from the config's token count at each UNet level; None to leave attention alone),
    ``align_downsamplers`` (the downsamplers resized by cells, padded asymmetrically, exactly on the
    supersampled grid), ``geometry_only`` (implies ``dilate``). A transformer denoiser (DiT, SD3,
    Flux) is refused by name (UnsupportedDenoiserError); nothing is modified on an error.
    ``pipe.save_pretrained(folder)`` then writes the denoiser with its manifest (docs/diffusion.md).
    """
    components = getattr(pipe, "components", None)
    if components is None:
        raise InvalidOptionError(f"expected a diffusers pipeline, got a {type(pipe).__name__}; for a denoiser alone use "
                                 "supersample_denoiser(model, scale)")
    name = denoiser_name(components)
    check_denoiser(components[name], f"the pipeline's {name!r}")
    report = supersample_denoiser(components[name], scale, method=method, execution=execution, attention=attention,
                                  align_downsamplers=align_downsamplers, geometry_only=geometry_only, layers=layers,
                                  **plan_options)
    if getattr(pipe, "default_sample_size", None) is not None:  # SDXL-style pipelines read it once, at construction
        pipe.default_sample_size = report.sample_size[1]
    return report


def _refuse_resized_components(folder: Path, index: dict[str, Any], denoiser: str) -> None:
    """A converted pipeline whose VAE or text encoder was resized too cannot generate: they must
    keep their trained geometry (module docstring). Refused with the command that fits."""
    for name, spec in index.items():
        if name.startswith("_") or name == denoiser or not (folder / name).is_dir():
            continue
        files = sorted((folder / name).glob("*.safetensors"))
        if not files:
            continue
        manifest, _ = read_headers(files)
        if manifest is None or not manifest.get("tensors"):
            continue
        tensors = sorted(manifest["tensors"])
        scale = manifest.get("options", {}).get("scale", "S")
        raise InvalidCheckpointError(
            f"{folder / name}: the {name} ({spec[1] if isinstance(spec, list) else spec}) was resized too ({len(tensors)} "
            f"tensor(s), e.g. {tensors[0]}); a diffusion pipeline resizes only its denoiser (the VAE maps latent cells to "
            f"pixels at a fixed ratio, the text encoder sees tokens). Convert the original folder again without --include, "
            f"which resizes the denoiser only: kernelscale convert ORIGINAL OUT --scale {scale}")


def load_pipeline(
    path: Union[str, os.PathLike],
    *,
    config: Optional[Union[str, os.PathLike]] = None,
    dtype: Optional[torch.dtype] = None,
    **from_pretrained: Any,
) -> Any:
    """A runnable diffusers pipeline, generating at the new size by default, from:

    - a pipeline folder (model_index.json) written by ``pipe.save_pretrained`` after
      :func:`supersample_pipeline`, or by ``kernelscale convert`` of a diffusers pipeline folder
      with the denoiser resized (its weights under ``kernelscale_model.safetensors`` or the stock
      name, with the manifest); a VAE or text encoder resized too is refused with the fix;
    - a converted single file in the original layout (``model.diffusion_model.*``, as A1111 and
      ComfyUI share them): ``config`` is then a local diffusers pipeline folder of the same
      architecture, which supplies the configs and tokenizers; the denoiser comes from the file,
      the VAE and text encoders from the file when it holds them (diffusers' ``from_single_file``),
      else from ``config``.

    ``dtype`` and ``from_pretrained`` keywords go to diffusers' loader for the other
    components; the denoiser is built from its config and given its weights and geometry by
    :func:`kernelscale.nn.load`, then cast to ``dtype``.
    """
    path = Path(path)
    if path.is_file():
        from kernelscale.integrations.diffusers.single_file import load_single_file_pipeline

        return load_single_file_pipeline(path, config, dtype=dtype, **from_pretrained)
    if config is not None:
        raise InvalidOptionError(f"{path}: a pipeline folder carries its own configs; config= is for single files")
    from diffusers import DiffusionPipeline

    index = read_model_index(path)
    names = [n for n in _DENOISER_COMPONENTS if isinstance(index.get(n), list) and index[n][1] is not None]
    if not names:
        raise InvalidCheckpointError(f"{path}: model_index.json names no denoiser ('unet' or 'transformer')")
    name = names[0]
    check_class(str(index[name][1]), f"{path}'s {name!r}")
    _refuse_resized_components(path, index, name)
    denoiser = _load_folder(path / name)
    if dtype is not None:
        denoiser = denoiser.to(dtype)
        from_pretrained[dtype_keyword()] = dtype
    return DiffusionPipeline.from_pretrained(path, **{name: denoiser}, **from_pretrained)
