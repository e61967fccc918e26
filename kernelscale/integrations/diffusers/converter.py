"""The rules ``kernelscale convert`` adds for a diffusion checkpoint, so that its output matches
:func:`~kernelscale.integrations.diffusers.supersample_pipeline`'s defaults (DESIGN §11).

    options = pipeline_options("sd15", ResizeOptions(scale=2))             # a pipeline folder
    options = pipeline_options("model.safetensors", ResizeOptions(scale=2), config="sd15")   # a single file
    convert_checkpoint(src, dst, options)

The aligned downsampler rule and one attention temperature per self-attention come from
:func:`~kernelscale.integrations.diffusers.convert_rules` on the denoiser's config: a pipeline
folder's ``unet/config.json``, or for a single file in the original layout ``config``, a local
diffusers folder of the same architecture (the rules are then written in the file's names).
Which files are resized and how the denoiser is written is the plan's business
(:mod:`kernelscale.pipeline_layout`), the same with or without these rules.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from kernelscale.errors import InvalidOptionError
from kernelscale.integrations.diffusers.denoiser import convert_rules
from kernelscale.io.discovery import scan_checkpoint
from kernelscale.pipeline_layout import DENOISER_PREFIX, detect_layout
from kernelscale.options import AttentionRule, ResizeOptions

__all__ = ["pipeline_options"]

ConfigSource = Optional[Union[str, os.PathLike, Mapping[str, Any]]]


def pipeline_options(
    src: Union[str, os.PathLike],
    options: ResizeOptions,
    *,
    attention: Any = "auto",
    align_downsamplers: bool = True,
    config: ConfigSource = None,
) -> ResizeOptions:
    """``options`` with the rules of :func:`supersample_pipeline`'s defaults for the diffusion
    checkpoint ``src``: a diffusers pipeline folder (model_index.json) or a single file in the
    original layout (``model.diffusion_model.*`` keys, with ``config`` a local diffusers folder of
    the same architecture, a pipeline folder or its ``unet/``, or the config dict).

    ``align_downsamplers``: ``LayerRule`` aligning the strided downsamplers (cells, asymmetric
    padding), put before ``options.layers``; only for ``method="interp"``. ``attention``:
    ``"auto"`` — one :class:`AttentionRule` per self-attention from the config's token counts,
    unless ``options.attention`` already holds rules (those are kept); None to add none; or a list
    of AttentionRule (replacing ``options.attention``). InvalidOptionError for another checkpoint,
    for a single file without ``config``, or for ``config`` given with a folder;
    UnsupportedDenoiserError for a transformer denoiser.
    """
    if isinstance(attention, str) and attention != "auto":
        raise InvalidOptionError(f"attention: 'auto', None or a list of AttentionRule, got {attention!r}")
    scan = scan_checkpoint(src)
    layout = detect_layout(scan)
    where = os.fspath(src)
    if layout is None:
        raise InvalidOptionError(
            f"{where}: neither a diffusers pipeline folder (model_index.json) nor a single file in the original layout "
            f"({DENOISER_PREFIX}* keys); the attention temperature and aligned downsamplers need the denoiser's config "
            "(explicit rules: --attention GLOB=TOKENS)")
    names = None
    if layout.kind == "folder":
        if config is not None:
            raise InvalidOptionError(f"{where}: a pipeline folder carries its denoiser's config; --config (config=) is for "
                                     "single files")
        layout.check_default()
        denoiser_config = dict(layout.config or {})
    else:
        if config is None:
            raise InvalidOptionError(
                f"{where}: a single file does not carry the denoiser's config; the attention temperature and aligned "
                "downsamplers need --config FOLDER (config= in Python), a local diffusers folder of the same architecture")
        from kernelscale.integrations.diffusers.single_file import denoiser_config as read_denoiser_config

        denoiser_config = read_denoiser_config(config, Path(where))
        names = [t.name for f in scan.files for t in f.tensors]
    auto = attention == "auto" and not options.attention
    rules = convert_rules(denoiser_config, names, attention=auto,
                          align_downsamplers=align_downsamplers and options.method == "interp")
    if auto:
        chosen = rules["attention"]
    elif attention is None or attention == "auto":
        chosen = options.attention
    else:
        chosen = tuple(r if isinstance(r, AttentionRule) else AttentionRule(**r) for r in attention)
    return replace(options, layers=tuple(rules["layers"]) + tuple(options.layers), attention=tuple(chosen))
