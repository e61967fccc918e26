"""The denoiser of a diffusers pipeline: supersample it, save it, load it (DESIGN §11).

Handled: ``UNet2DConditionModel`` (SD 1.x/2.x, SDXL) and ``UNet2DModel``. A transformer denoiser
(DiT, PixArt, SD3, Flux, …) is refused by its class name: its patch embedding and positional
embeddings, not conv kernels, carry the resolution.

What :func:`supersample_denoiser` does on top of :func:`kernelscale.nn.supersample`:

- **aligned downsamplers** (``align_downsamplers=True``): ``LayerRule('*downsamplers*',
  align='cells')`` with ``padding='asymmetric'``, so that the stride-2 3×3 convs become 6×6 with
  pads (3, 2), exactly on the supersampled grid (DESIGN §4: the default taps resize leaves them
  half a high-res pixel off). Only for ``method="interp"``; the other methods keep their own
  sizes (dilate is T1-exact, pinv and disperse are solved per size) and get ``padding='asymmetric'``;
- **attention temperature** (``attention="auto"``): for each self-attention (a diffusers
  ``Attention`` that is not cross-attention), an :class:`~kernelscale.plan.AttentionRule` on its
  ``to_q`` with n = the latent area at its UNet level, from the config's ``sample_size`` and the
  down-samplers above it; n′ = n·s²; the query is multiplied by √(log n′ / log n). Cross-attention
  keys are text tokens, whose count does not change: left alone;
- **sample_size** in the config is scaled, so ``pipe()`` defaults to the new size;
- the result is recorded on the module (manifest, trained ``sample_size``), and the module's
  ``save_pretrained`` writes the layout of :data:`WEIGHTS_NAME` (docs/diffusion.md).
"""

from __future__ import annotations

import json
import os
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import nn

import kernelscale.nn as knn
from kernelscale.io.checkpoint import MANIFEST_KEY, read_headers
from kernelscale.io.discovery import model_files
from kernelscale.io.files import read_json_file
from kernelscale.errors import (
    ExecutionUnavailableError, InvalidCheckpointError, InvalidOptionError, UnsupportedDenoiserError,
)
from kernelscale.manifest import ConvRecord, as_record
from kernelscale.pipeline_layout import (
    CONFIG_KEY, DENOISERS, MAX_JSON_BYTES, WEIGHTS_NAME, check_class, config_record, denoiser_config_text, scaled_sample_size,
    size_pair,
)
from kernelscale.method import EXECUTIONS, check_choice
from kernelscale.options import AttentionRule, LayerRule

__all__ = [
    "CONFIG_KEY", "DENOISERS", "EXECUTIONS", "WEIGHTS_NAME", "DenoiserReport", "ExecutionUnavailableError",
    "UnsupportedDenoiserError", "attention_rules", "convert_rules", "load_denoiser", "save_denoiser", "supersample_denoiser",
]

ALIGNED_DOWNSAMPLERS = LayerRule("*downsamplers*", align="cells")


@dataclass(frozen=True)
class DenoiserReport:
    """What :func:`supersample_denoiser` or :func:`load_denoiser` did.

    ``layers`` is kernelscale.nn's report (one line per changed layer; ``layers.manifest`` is the
    DESIGN §5 manifest); ``attention`` the rules applied (pattern, n, n′); ``sample_size`` the
    config's value before and after.
    """

    denoiser: str
    scale: Union[float, tuple[float, ...]]
    sample_size: tuple[Any, Any]
    attention: tuple[AttentionRule, ...]
    layers: knn.SupersampleReport = field(repr=False)

    @property
    def manifest(self) -> Mapping[str, Any]:
        return self.layers.manifest

    def __str__(self) -> str:
        convs = sum(1 for c in self.layers if c.action != "attention")
        lines = [f"{self.denoiser}: scale {self.scale}, sample_size {self.sample_size[0]} → {self.sample_size[1]}, "
                 f"{convs} conv layer(s) changed, {len(self.attention)} self-attention temperature(s)"]
        lines += [c.describe() for c in self.layers]
        return "\n".join(lines)


def check_denoiser(model: Any, where: str = "the denoiser") -> str:
    """The class name of ``model`` if kernelscale handles it; else UnsupportedDenoiserError."""
    return check_class(type(model).__name__, where)


def _levels(model: nn.Module) -> dict[str, int]:
    """Block prefix (``down_blocks.i``, ``mid_block``, ``up_blocks.j``) → its level: how many
    ×2 down-samplings lie between the input and the block's feature map."""
    levels: dict[str, int] = {}
    level = 0
    for i, block in enumerate(model.down_blocks):
        levels[f"down_blocks.{i}"] = level
        if getattr(block, "downsamplers", None) is not None:
            level += 1
    if getattr(model, "mid_block", None) is not None:
        levels["mid_block"] = level
    for j, block in enumerate(model.up_blocks):
        levels[f"up_blocks.{j}"] = level
        if getattr(block, "upsamplers", None) is not None:
            level -= 1
    return levels


def attention_rules(model: nn.Module, sample_size: Any = None) -> tuple[AttentionRule, ...]:
    """One AttentionRule per self-attention layer's query projection, with n = its level's latent
    area: ⌈h/2^L⌉·⌈w/2^L⌉ for the config's ``sample_size`` (h, w) (or the one given) at level L
    (the ×2 down-samplers above it). Cross-attention is left out (its key count is the text's)."""
    h, w = size_pair(sample_size if sample_size is not None else model.config.sample_size)
    levels = _levels(model)
    rules = []
    for name, layer in model.named_modules():
        if not hasattr(layer, "to_q") or getattr(layer, "is_cross_attention", True):
            continue
        prefix = ".".join(name.split(".")[:2]) if name.startswith(("down_blocks.", "up_blocks.")) else name.split(".")[0]
        if prefix not in levels:
            raise UnsupportedDenoiserError(f"{name}: a self-attention outside the UNet's blocks; its token count is unknown")
        f = 2 ** levels[prefix]
        tokens = -(-h // f) * -(-w // f)
        if tokens >= 2:
            rules.append(AttentionRule(f"{name}.to_q", tokens))
    return tuple(rules)


def _rules_from(attention: Any, model: nn.Module) -> tuple[AttentionRule, ...]:
    if attention == "auto":
        return attention_rules(model)
    if attention is None or attention is False:
        return ()
    if isinstance(attention, str):
        raise InvalidOptionError(f"attention: 'auto', None or a list of AttentionRule, got {attention!r}")
    return tuple(r if isinstance(r, AttentionRule) else AttentionRule(**r) for r in attention)


def supersample_denoiser(
    model: nn.Module,
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
    """Resize a UNet denoiser in place for latents ``scale``× larger per axis; return the report.

    ``method``: ``interp`` (default, linear taps), ``dilate``, ``pinv``, ``disperse`` (DESIGN §3);
    ``geometry_only=True`` implies ``dilate`` (weights kept, dilation × s). ``attention``:
    ``"auto"`` (the module docstring), None, or a list of AttentionRule. ``align_downsamplers``:
    the aligned rule for the strided downsamplers (interp only). ``layers`` are extra LayerRules
    (matched after the aligned rule, so a user rule for ``*downsamplers*`` needs
    ``align_downsamplers=False``); ``plan_options`` other ResizeOptions fields (mode, coef,
    include, exclude, …). ``execution``: ``materialised`` (default) or ``factored`` — each conv whose
    resize factors runs as a :class:`~kernelscale.layers.FactoredConv` (same outputs to rounding,
    about the original conv's cost; the aligned downsamplers, cells, stay materialised), and the
    saved denoiser keeps those weights byte for byte with factored records (:func:`save_denoiser`,
    :func:`load_denoiser`). Everything is checked before the module is touched.
    """
    name = check_denoiser(model)
    check_choice("execution", execution, EXECUTIONS)
    if getattr(model, CONFIG_ATTR, None) is not None:
        raise InvalidOptionError(f"this {name} was supersampled already (scale {getattr(model, CONFIG_ATTR)['scale']}); "
                                 "supersample the original with the combined scale instead")
    if geometry_only:
        if method not in ("interp", "dilate"):
            raise InvalidOptionError(f"geometry_only=True is re-dilation (method 'dilate'), got method={method!r}")
        method = "dilate"
    rules = tuple(layers)
    if align_downsamplers and method == "interp":
        rules = (ALIGNED_DOWNSAMPLERS,) + rules
    attention_rules_ = _rules_from(attention, model)
    old_size = model.config.sample_size
    new_size = scaled_sample_size(old_size, scale)
    report = knn.supersample(model, scale, method=method, geometry_only=geometry_only, layers=rules,
                             attention=attention_rules_, padding="asymmetric", execution=execution, **plan_options)
    _set_sample_size(model, new_size)
    mark(model, report.manifest, old_size)
    return DenoiserReport(name, _plain_scale(scale), (old_size, new_size), attention_rules_, report)


def _plain_scale(scale: Any) -> Union[float, tuple[float, ...]]:
    return tuple(float(s) for s in scale) if isinstance(scale, (list, tuple)) else float(scale)


def _set_sample_size(model: nn.Module, size: Any) -> None:
    model.register_to_config(sample_size=size)
    if hasattr(model, "sample_size"):
        model.sample_size = size


CONFIG_ATTR = "_kernelscale"


def mark(model: nn.Module, manifest: Mapping[str, Any], trained_sample_size: Any) -> None:
    """Record the surgery on ``model`` and make its ``save_pretrained`` write :func:`save_denoiser`'s
    layout (so that ``pipe.save_pretrained`` saves the denoiser with its manifest)."""
    setattr(model, CONFIG_ATTR, config_record(manifest["options"]["scale"], trained_sample_size))
    model._kernelscale_manifest = dict(manifest)
    model.save_pretrained = types.MethodType(_save_pretrained, model)  # a bound method: deepcopy rebinds it


def _save_pretrained(model: nn.Module, save_directory: Union[str, os.PathLike], safe_serialization: bool = True,
                     variant: Optional[str] = None, **ignored: Any) -> None:
    """``save_pretrained`` of a supersampled denoiser (what ``pipe.save_pretrained`` calls)."""
    if not safe_serialization:
        raise InvalidOptionError("a supersampled denoiser is saved as safetensors only (its manifest lives in the "
                                 "safetensors metadata); drop safe_serialization=False")
    if variant is not None:
        raise InvalidOptionError(f"variant={variant!r}: a supersampled denoiser is saved as {WEIGHTS_NAME} only")
    save_denoiser(model, save_directory)


def save_denoiser(model: nn.Module, folder: Union[str, os.PathLike]) -> Path:
    """Write a supersampled denoiser to ``folder``: config.json (sample_size scaled, the
    :data:`CONFIG_KEY` record) and :data:`WEIGHTS_NAME` with the manifest in its metadata. Stock
    ``from_pretrained`` finds no ``diffusion_pytorch_model.*`` there and fails; :func:`load_denoiser`
    reads it back. Returns the weights file's path."""
    from safetensors.torch import save_file

    record = getattr(model, CONFIG_ATTR, None)
    if record is None:
        raise InvalidOptionError(f"this {type(model).__name__} was not supersampled by kernelscale; save it with "
                                 "save_pretrained")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in list(folder.glob("diffusion_pytorch_model*")):  # a stock copy must not shadow the manifest
        stale.unlink()
    model.save_config(folder)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config_path.write_text(denoiser_config_text(config, record), encoding="utf-8")
    manifest = json.dumps(model._kernelscale_manifest, sort_keys=True, separators=(",", ":"))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    path = folder / WEIGHTS_NAME
    tmp = folder / (WEIGHTS_NAME + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt", MANIFEST_KEY: manifest})
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------
# Loading


STOCK_WEIGHTS = ("diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.safetensors")


def _weights_in(folder: Path, config: Mapping[str, Any]) -> Path:
    """The converted denoiser's weights: :data:`WEIGHTS_NAME` (or its shard index), else the stock
    name ``kernelscale convert`` keeps; the file must carry a manifest."""
    record = config.get(CONFIG_KEY) or {}
    names = (record.get("weights", WEIGHTS_NAME) + ".index.json", record.get("weights", WEIGHTS_NAME)) + STOCK_WEIGHTS
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise InvalidCheckpointError(f"{folder}: no {WEIGHTS_NAME} and no diffusion_pytorch_model.safetensors; convert the "
                                 "pipeline with `kernelscale convert` or save a supersampled one with pipe.save_pretrained")


def _undo_stock_kernel_keys(config: dict[str, Any], records: Mapping[str, Any]) -> None:
    """``kernelscale convert`` may write a resized conv_in/conv_out size into config.json
    (``conv_in_kernel``/``conv_out_kernel``) for stock loaders; the module must be built at the
    trained size, which the record's ``old_spatial`` holds."""
    for key, tensor in (("conv_in_kernel", "conv_in.weight"), ("conv_out_kernel", "conv_out.weight")):
        record = records.get(tensor)
        if key in config and record is not None and isinstance(record := as_record(record, tensor), ConvRecord):
            old = record.old_spatial
            if len(set(old)) == 1:
                config[key] = int(old[0])


def build_denoiser(class_name: str, config: Mapping[str, Any]) -> nn.Module:
    """``diffusers.<class_name>.from_config(config)``, for the classes kernelscale handles."""
    import diffusers

    check_class(class_name)
    return getattr(diffusers, class_name).from_config(config).eval()


def load_denoiser(
    path: Union[str, os.PathLike],
    *,
    config: Optional[Union[str, os.PathLike, Mapping[str, Any]]] = None,
    dtype: Optional[torch.dtype] = None,
) -> nn.Module:
    """A runnable supersampled denoiser from a converted or saved model folder (``unet/`` of a
    pipeline: config.json and :data:`WEIGHTS_NAME` or ``diffusion_pytorch_model.safetensors`` with
    a manifest), or from a converted single file in the original layout (``model.diffusion_model.*``
    keys; ``config``: the denoiser's diffusers config, a folder holding it — a pipeline folder or
    its ``unet/`` — or a dict; kernelscale.integrations.diffusers.single_file).

    The module is built at the trained size from its config, then :func:`kernelscale.nn.load`
    gives it the weights and the geometry the manifest records (``padding='asymmetric'``);
    ``sample_size`` is the trained one × the manifest's scale. ``dtype`` casts the result.
    """
    path = Path(path)
    if path.is_file():
        from kernelscale.integrations.diffusers.single_file import load_single_file_denoiser

        model = load_single_file_denoiser(path, config)
    else:
        if config is not None:
            raise InvalidOptionError(f"{path}: a folder carries its own config.json; config= is for single files")
        model = _load_folder(path)
    return model.to(dtype) if dtype is not None else model


def read_config(folder: Path) -> dict[str, Any]:
    """The JSON object of ``folder``'s config.json; InvalidCheckpointError naming the folder and the
    cause for one that is missing, not a regular file, too large, not JSON, nested too deeply or
    not an object."""
    return _json_object(folder, "config.json", "no readable config.json")


def read_model_index(folder: Path) -> dict[str, Any]:
    """The JSON object of ``folder``'s model_index.json, refused as :func:`read_config` refuses."""
    return _json_object(folder, "model_index.json", "not a diffusers pipeline folder")


def _json_object(folder: Path, name: str, refusal: str) -> dict[str, Any]:
    try:
        data = read_json_file(os.fspath(Path(folder) / name), MAX_JSON_BYTES, InvalidCheckpointError, name)
        if not isinstance(data, dict):
            raise InvalidCheckpointError(f"{name} holds a JSON {type(data).__name__}, not an object")
    except InvalidCheckpointError as exc:
        raise InvalidCheckpointError(f"{folder}: {refusal} ({exc})") from None
    return data


def _load_folder(folder: Path) -> nn.Module:
    config = read_config(folder)
    class_name = check_class(str(config.get("_class_name", "?")), f"{folder}'s denoiser")
    weights = _weights_in(folder, config)
    manifest, _ = read_headers(model_files(weights))
    if manifest is None:
        raise InvalidCheckpointError(f"{weights}: no kernelscale manifest, so this is not a supersampled denoiser; load "
                                     "the pipeline with from_pretrained and call supersample_pipeline(pipe, scale)")
    return build_and_load(class_name, config, weights, manifest)


def build_and_load(class_name: str, config: Mapping[str, Any], weights: Path, manifest: Mapping[str, Any],
                   trained_sample_size: Any = None, names: Optional[Mapping[str, str]] = None) -> nn.Module:
    """Build ``class_name`` at the trained size from ``config``, load ``weights`` with nn.load
    (``names``: the file's name → the module's, for a file in another layout; ``manifest`` then in
    the module's names), scale ``sample_size``, mark it (its save_pretrained then keeps the manifest)."""
    config = dict(config)
    record = config.get(CONFIG_KEY) or {}
    trained = trained_sample_size if trained_sample_size is not None else record.get("trained_sample_size", config.get("sample_size"))
    config["sample_size"] = trained
    _undo_stock_kernel_keys(config, manifest["tensors"])
    model = build_denoiser(class_name, config)
    report = knn.load(model, weights, padding="asymmetric", names=names)
    _set_sample_size(model, scaled_sample_size(trained, manifest["options"]["scale"]))
    mark(model, report.manifest, trained)
    return model


# ---------------------------------------------------------------------------------------------
# Rules for the converter


def convert_rules(
    config: Mapping[str, Any],
    tensor_names: Optional[Sequence[str]] = None,
    *,
    attention: bool = True,
    align_downsamplers: bool = True,
) -> dict[str, tuple]:
    """The ``layers`` and ``attention`` ResizeOptions fields that make ``kernelscale convert`` of a
    denoiser checkpoint match :func:`supersample_denoiser`'s defaults (interp): the aligned
    downsampler rule and one AttentionRule per self-attention, from the denoiser's diffusers
    ``config`` (the model is built on the meta device: no memory, no weights).

    ``tensor_names``: the checkpoint's names, when they are in the original layout
    (``model.diffusion_model.*``): the rules are then written in those names, mapped by diffusers'
    key conversion. Returns ``{"layers": (...), "attention": (...)}``.
    """
    class_name = check_class(str(config.get("_class_name", "UNet2DConditionModel")))
    import diffusers

    with torch.device("meta"):
        model = getattr(diffusers, class_name).from_config(dict(config))
    rules = attention_rules(model) if attention else ()
    downsamplers = [n for n, _ in model.named_modules() if ".downsamplers." in n and n.endswith(".conv")]
    if tensor_names is None or not any(n.startswith("model.diffusion_model.") for n in tensor_names):
        layers = (ALIGNED_DOWNSAMPLERS,) if align_downsamplers and downsamplers else ()
        return {"layers": layers, "attention": rules}
    from kernelscale.integrations.diffusers.single_file import to_diffusers_names

    prefixed = [n for n in tensor_names if n.startswith("model.diffusion_model.")]
    original = {new: old for old, new in to_diffusers_names({n: object() for n in prefixed}, config).items()}

    def renamed(layer: str) -> str:
        weight = original.get(layer + ".weight")
        if weight is None:
            raise InvalidCheckpointError(f"{layer}.weight: not in the checkpoint; is the config this file's architecture?")
        return weight[: -len(".weight")]

    layers = tuple(LayerRule(renamed(n), align="cells") for n in downsamplers) if align_downsamplers else ()
    rules = tuple(AttentionRule(renamed(r.pattern), r.tokens, r.new_tokens) for r in rules)
    return {"layers": layers, "attention": rules}


def dtype_keyword() -> str:
    """diffusers' name for the dtype argument of ``from_pretrained``: ``dtype`` where it has
    replaced ``torch_dtype`` (which then warns), ``torch_dtype`` in older versions."""
    from diffusers.utils import deprecation_utils

    return "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"
