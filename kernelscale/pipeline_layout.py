"""What a diffusion checkpoint means to the converter (DESIGN §11), from its files and headers alone.

Two layouts hold a whole diffusion pipeline:

- a **diffusers pipeline folder** (``model_index.json`` at its root, naming a denoiser): one folder per component;
  the denoiser is ``unet/`` (a ``transformer`` is refused by name: its patch and position
  embeddings carry the resolution). By default only the denoiser is resized; every other
  component is copied byte for byte. The converted denoiser is written as :data:`WEIGHTS_NAME`
  (sharded: ``kernelscale_model-0000i-of-0000N.safetensors`` and
  ``kernelscale_model.safetensors.index.json``), never as ``diffusion_pytorch_model.*``, and its
  ``config.json`` gets ``sample_size`` × s and the :data:`CONFIG_KEY` record
  (:func:`denoiser_config_text`, the one writer ``save_pretrained`` of a supersampled denoiser
  uses too). Stock ``from_pretrained`` then finds no weights and fails loudly instead of running
  kernels at the wrong geometry; ``kernelscale.integrations.diffusers.load_pipeline`` reads it;
- a **single file in the original layout** (``model.diffusion_model.*`` for the denoiser,
  ``first_stage_model.*`` for the VAE, ``cond_stage_model.*`` / ``conditioner.*`` for the text
  encoders, as A1111 and ComfyUI share them): by default only ``model.diffusion_model.*`` is
  resized.

An ``include`` glob given by the user replaces those defaults (every component is then planned by
the globs); ``exclude`` globs apply on top of either. Nothing here imports torch or diffusers.
"""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union

from kernelscale.errors import InvalidCheckpointError, InvalidOptionError, UnsupportedDenoiserError
from kernelscale.io.discovery import CheckpointScan, ModelUnit
from kernelscale.io.files import read_json_file
from kernelscale.text import quoted_names

__all__ = [
    "CONFIG_KEY", "DENOISERS", "DENOISER_COMPONENTS", "DENOISER_PREFIX", "OTHER_PREFIXES", "STOCK_WEIGHTS_STEM", "WEIGHTS_NAME",
    "PipelineLayout", "check_class", "config_record", "denoiser_config_text", "detect_layout", "pipeline_denoiser",
    "scaled_sample_size",
]

WEIGHTS_NAME = "kernelscale_model.safetensors"
"""The denoiser's weights file in a saved or converted pipeline folder (sharded:
``kernelscale_model.safetensors.index.json`` and its shards). Stock diffusers looks for
``diffusion_pytorch_model.*`` and fails loudly on a folder that has none, instead of loading kernels
it would run at the wrong geometry."""

STOCK_WEIGHTS_STEM = "diffusion_pytorch_model"
"""The stem of the weights diffusers' ``from_pretrained`` reads in a model folder."""

CONFIG_KEY = "_kernelscale"
"""The denoiser config.json key recording the surgery: ``{"format_version": 1, "weights":
WEIGHTS_NAME, "scale": s, "trained_sample_size": n, "padding": "asymmetric"}``. Private keys
(leading underscore) are ignored by diffusers' ``from_config``."""

DENOISERS = ("UNet2DConditionModel", "UNet2DModel")
"""The denoiser classes kernelscale supersamples."""

DENOISER_COMPONENTS = ("unet", "transformer", "prior", "decoder")
"""The pipeline components that denoise, in the order they are looked for."""

DENOISER_PREFIX = "model.diffusion_model."
OTHER_PREFIXES = ("first_stage_model.", "cond_stage_model.", "conditioner.")
"""The VAE's and the text encoders' keys in the original layout."""

_TRANSFORMER_HINT = ("its patch embedding and positional embeddings, not conv kernels, carry the resolution; "
                     "kernelscale supersamples UNet denoisers (" + ", ".join(DENOISERS) + ")")


def check_class(name: str, where: str = "the denoiser") -> str:
    """``name`` if kernelscale handles that denoiser class; else UnsupportedDenoiserError naming it."""
    if name in DENOISERS:
        return name
    if "Transformer" in name or "DiT" in name:
        raise UnsupportedDenoiserError(f"{where} is a {name}, a transformer: {_TRANSFORMER_HINT}")
    raise UnsupportedDenoiserError(f"{where} is a {name}: kernelscale supersamples {', '.join(DENOISERS)} only")


def _scale_pair(scale: Any) -> tuple[float, float]:
    if isinstance(scale, (list, tuple)):
        if len(scale) != 2:
            raise InvalidOptionError(f"scale: a 2-D denoiser takes one number or two (height, width), got {scale!r}")
        return float(scale[0]), float(scale[1])
    return float(scale), float(scale)


def size_pair(sample_size: Any) -> tuple[int, int]:
    """A diffusers ``sample_size`` (an int or ``[h, w]``, latent cells) as (height, width)."""
    if isinstance(sample_size, (list, tuple)):
        return int(sample_size[0]), int(sample_size[1])
    return int(sample_size), int(sample_size)


def scaled_sample_size(sample_size: Any, scale: Any) -> Any:
    """``sample_size`` (an int or ``[h, w]``, latent cells) times ``scale`` (one number or
    (height, width)); an int when the result is square and the input was one. InvalidOptionError
    for a result that is not whole latent cells."""
    sh, sw = _scale_pair(scale)
    h, w = size_pair(sample_size)
    new = (h * sh, w * sw)
    if any(abs(v - round(v)) > 1e-9 for v in new):
        raise InvalidOptionError(f"scale {scale!r}: sample_size {sample_size!r} × scale = {new}, not whole latent cells; "
                                 "pick a scale that gives an integer size")
    new = (int(round(new[0])), int(round(new[1])))
    if isinstance(sample_size, (list, tuple)) or new[0] != new[1]:
        return list(new)
    return new[0]


def config_record(scale: Any, trained_sample_size: Any) -> dict[str, Any]:
    """The :data:`CONFIG_KEY` record of a denoiser supersampled by ``scale`` (the manifest's
    ``options.scale``: a number or a list) from ``trained_sample_size``."""
    return {"format_version": 1, "weights": WEIGHTS_NAME, "scale": scale, "trained_sample_size": trained_sample_size,
            "padding": "asymmetric"}


def denoiser_config_text(config: Mapping[str, Any], record: Mapping[str, Any]) -> str:
    """The supersampled denoiser's config.json: ``config`` with ``sample_size`` = the record's
    trained size × its scale and the :data:`CONFIG_KEY` record, as JSON (sorted keys, indent 2,
    final newline). The one writer for ``save_pretrained`` and ``kernelscale convert``."""
    new = {**config, "sample_size": scaled_sample_size(record["trained_sample_size"], record["scale"]), CONFIG_KEY: dict(record)}
    return json.dumps(new, indent=2, sort_keys=True) + "\n"


def pipeline_denoiser(path: Union[str, os.PathLike]) -> Optional[str]:
    """The denoiser component (``unet``, ``transformer``, …) that the ``model_index.json`` of the
    folder ``path`` names; None when ``path`` is not a diffusers pipeline folder or names none."""
    index = _read_json(os.path.join(os.fspath(path), "model_index.json"), _INDEX_USE) if os.path.isdir(path) else None
    if index is None:
        return None
    named = [n for n in DENOISER_COMPONENTS if isinstance(index.get(n), list) and len(index[n]) == 2 and index[n][1]]
    return named[0] if named else None


@dataclass(frozen=True)
class PipelineLayout:
    """A diffusion checkpoint as the converter sees it.

    ``kind``: ``"folder"`` (a diffusers pipeline folder) or ``"file"`` (the original layout).
    ``component``: the denoiser's folder (``unet``) or key prefix (:data:`DENOISER_PREFIX`).
    ``class_name``: the denoiser's class (from model_index.json; None for a file). ``config``: the
    denoiser's diffusers config when the checkpoint holds it (``unet/config.json``), else None.
    ``denoiser``: the index in ``scan.units`` of the denoiser's weights (folder; None for a file).
    ``left_out``: rel paths of other weight sets of the denoiser (variants) that are not converted.
    ``refusal``: why the default (denoiser only) cannot apply, raised when it is asked for.
    """

    kind: str
    component: str
    class_name: Optional[str] = None
    config: Optional[Mapping[str, Any]] = None
    config_rel: Optional[str] = None
    denoiser: Optional[int] = None
    left_out: tuple[str, ...] = ()
    refusal: Optional[Exception] = None

    def check_default(self) -> None:
        """Raise the refusal (a transformer denoiser, no denoiser weights) if there is one."""
        if self.refusal is not None:
            raise self.refusal

    def weights_rels(self, unit: ModelUnit) -> dict[str, str]:
        """Input rel → output rel of the denoiser's files and shard index: :data:`WEIGHTS_NAME`, or
        ``kernelscale_model-0000i-of-0000N.safetensors`` in shard order and its index."""
        folder = unit.dir_rel
        if unit.index is None:
            return {unit.files[0].rel: posixpath.join(folder, WEIGHTS_NAME)}
        n = len(unit.files)
        stem = WEIGHTS_NAME[: -len(".safetensors")]
        names = {f.rel: posixpath.join(folder, f"{stem}-{i:05d}-of-{n:05d}.safetensors") for i, f in enumerate(unit.files, 1)}
        names[unit.index.rel] = posixpath.join(folder, WEIGHTS_NAME + ".index.json")
        return names

    def renamed_index(self, unit: ModelUnit) -> dict[str, Any]:
        """The denoiser's shard index with its weight_map pointing at the renamed shards."""
        names = self.weights_rels(unit)
        base = {posixpath.relpath(f.rel, unit.dir_rel or "."): posixpath.basename(names[f.rel]) for f in unit.files}
        data = dict(unit.index.data)
        data["weight_map"] = {k: base.get(v.replace("\\", "/"), v) for k, v in data["weight_map"].items()}
        return data


MAX_JSON_BYTES = 16_000_000
"""Largest model_index.json or denoiser config.json read; a larger one is refused (no pipeline's is)."""

_INDEX_USE = "to find a diffusers pipeline's denoiser (without it the folder would be converted as plain models)"


def _read_json(path: str, needed_for: str) -> Optional[dict[str, Any]]:
    """The JSON object in the file ``path``; None when no file is there. A file that is there but
    cannot be read as a JSON object (not a regular file, above :data:`MAX_JSON_BYTES`, not UTF-8,
    not JSON, nested too deeply, not an object) raises InvalidCheckpointError naming it, the cause
    and what kernelscale reads it for (``needed_for``): model_index.json decides whether a folder is
    a pipeline and the denoiser's config.json how it is converted, so neither is read as absent."""
    if not os.path.exists(path):
        return None
    name = os.path.basename(path)
    try:
        data = read_json_file(path, MAX_JSON_BYTES, InvalidCheckpointError, name)
        if not isinstance(data, dict):
            raise InvalidCheckpointError(f"{path}: {name} holds a JSON {type(data).__name__}, not an object")
    except InvalidCheckpointError as exc:
        raise InvalidCheckpointError(f"{exc}; kernelscale reads it {needed_for}: repair it (or move it out of the folder)") from None
    return data


def detect_layout(scan: CheckpointScan) -> Optional[PipelineLayout]:
    """The diffusion layout of a scanned checkpoint, or None for any other checkpoint."""
    component = pipeline_denoiser(scan.src) if scan.layout == "folder" else None
    if component is not None:
        return _folder_layout(scan, component)
    if scan.layout == "file" and any(t.name.startswith(DENOISER_PREFIX) for f in scan.files for t in f.tensors):
        return PipelineLayout("file", DENOISER_PREFIX)
    return None


def _folder_layout(scan: CheckpointScan, component: str) -> PipelineLayout:
    index = _read_json(os.path.join(scan.src, "model_index.json"), _INDEX_USE) or {}
    class_name = str(index[component][1])
    try:
        check_class(class_name, f"the pipeline's {component!r}")
    except UnsupportedDenoiserError as exc:
        return PipelineLayout("folder", component, class_name, refusal=exc)
    units = [i for i, u in enumerate(scan.units) if u.dir_rel == component]
    if not units:
        refusal = InvalidCheckpointError(
            f"{os.path.join(scan.src, component)}: no safetensors weights for the denoiser; save the pipeline with "
            "save_pretrained(..., safe_serialization=True) and convert that folder")
        return PipelineLayout("folder", component, class_name, refusal=refusal)
    chosen = units[0]
    if len(units) > 1:
        stock = [i for i in units if posixpath.basename(scan.units[i].label) in
                 (STOCK_WEIGHTS_STEM + ".safetensors", STOCK_WEIGHTS_STEM + ".safetensors.index.json")]
        if len(stock) != 1:
            labels = [scan.units[i].label for i in units]
            refusal = InvalidCheckpointError(
                f"{os.path.join(scan.src, component)} holds {len(units)} weight sets ({quoted_names(labels)}) and none is "
                f"{STOCK_WEIGHTS_STEM}.safetensors; kernelscale converts one denoiser: keep one (for half precision, "
                "convert the float32 weights with --dtype float16)")
            return PipelineLayout("folder", component, class_name, refusal=refusal)
        chosen = stock[0]
    left_out = tuple(f.rel for i in units if i != chosen for f in scan.units[i].files)
    left_out += tuple(scan.units[i].index.rel for i in units if i != chosen and scan.units[i].index is not None)
    config_rel = posixpath.join(component, "config.json")
    try:
        config = _read_json(os.path.join(scan.src, config_rel), "for the denoiser's sample_size and architecture")
    except InvalidCheckpointError as exc:
        return PipelineLayout("folder", component, class_name, refusal=exc)
    if config is None:
        refusal = InvalidCheckpointError(f"{os.path.join(scan.src, config_rel)}: no readable config.json for the denoiser")
        return PipelineLayout("folder", component, class_name, refusal=refusal)
    return PipelineLayout("folder", component, class_name, config, config_rel, chosen, left_out)


def component_of(rel: str) -> str:
    """The pipeline component a rel path belongs to (its first folder; ``.`` at the root)."""
    return rel.split("/", 1)[0] if "/" in rel else "."


def components_listing(rels: Sequence[str]) -> str:
    """``vae, text_encoder, tokenizer`` for the rel paths of copied files (root files left out)."""
    seen: list[str] = []
    for rel in rels:
        c = component_of(rel)
        if c != "." and c not in seen:
            seen.append(c)
    return ", ".join(seen)
