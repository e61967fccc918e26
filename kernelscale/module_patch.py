"""Changes to a live module's layers, checked before any is made and then applied: which layer
owns a planned tensor, whether the adapter can patch it, the :class:`LayerChange` and new geometry
a record gives it (:func:`change_entry`, by :func:`kernelscale.geometry.conv_change`), pools
(:func:`pool_changes`), whether a resized conv can run factored (:func:`unfactorable_layer`), and
:func:`apply_pending`, which gives the layers their new data and geometry keeping every Parameter
object (:func:`replace_data`). Shared by :func:`kernelscale.nn.supersample` and
:func:`kernelscale.nn.load`.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from kernelscale.errors import GeometryError, InvalidOptionError
from kernelscale.factored_plan import why_not_factored
from kernelscale.geometry import LayerGeometry, axes_text, conv_change, pool_change
from kernelscale.layers import FactoredConv, FactoredResize, conv_pads, state_geometry
from kernelscale.manifest import Action, AttentionRecord, ConvRecord, GridRecord, Record
from kernelscale.method import axis_scales
from kernelscale.module_geometry import (CONVS, POOLS, TRANSPOSED, layer_geometry, pool_ndim, set_conv_geometry,
                                         set_pool_geometry)
from kernelscale.module_report import LayerChange
from kernelscale.options import ResizeOptions
from kernelscale.reparam import planned_weight, reparametrized_layer

PADDINGS = ("exact", "asymmetric")


def require_module(module: Any, where: str) -> nn.Module:
    """``module`` if it is a torch ``nn.Module``; else InvalidOptionError naming its type, and for a
    diffusers pipeline (an object with ``components``) the integration's function that takes it."""
    if isinstance(module, nn.Module):
        return module
    kind = f"{type(module).__module__}.{type(module).__qualname__}"
    if hasattr(module, "components"):
        instead = "load_pipeline(path)" if where == "load" else "supersample_pipeline(pipe, scale)"
        raise InvalidOptionError(f"kernelscale.nn.{where} takes a torch nn.Module, got a {kind}, a pipeline: use "
                                 f"kernelscale.integrations.diffusers.{instead} (or pass one of its modules, e.g. pipe.unet)")
    raise InvalidOptionError(f"kernelscale.nn.{where} takes a torch nn.Module, got a {kind}")


def is_lazy(tensor: Any) -> bool:
    return isinstance(tensor, (nn.parameter.UninitializedParameter, nn.parameter.UninitializedBuffer))


def owner(tensor_name: str) -> tuple[str, str]:
    """``("a.b", "weight")`` for ``"a.b.weight"``; ``("", "weight")`` for a root module's own tensor."""
    layer, _, attr = tensor_name.rpartition(".")
    return layer, attr


def locate(tensor_name: str, layers: Mapping[str, nn.Module]) -> tuple[str, Optional[nn.Module], str]:
    """``(layer name, module holding the tensor, attribute)``. Weight norm's v and g belong to the
    layer they parametrize, held by it (weight_v/weight_g) or by its parametrization list
    (original1/original0); any other tensor to the module that holds it."""
    holder_name, attr = owner(tensor_name)
    layer_name = reparametrized_layer(tensor_name)
    return layer_name if layer_name in layers else holder_name, layers.get(holder_name), attr


@dataclass
class Pending:
    """A change computed and checked, not yet applied. ``tensors``: attribute of ``holder`` (default
    the layer; weight norm's parametrization list for its original0/1) → new data."""

    layer: nn.Module
    change: Optional[LayerChange]
    geometry: Optional[LayerGeometry] = None
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    in_features: Optional[int] = None
    holder: Optional[nn.Module] = None
    factored: Optional[FactoredResize] = None  # wrap the layer in a FactoredConv of this resize (geometry None)
    path: str = ""  # the layer's name in the module, for replacing it


def replace_data(tensor: torch.Tensor, data: torch.Tensor) -> None:
    """Give ``tensor`` (a Parameter) new data, of a new shape maybe, keeping the object, so that
    optimisers and hooks holding it keep working, and training goes on with the new shape.

    Autograd keeps one gradient accumulator per leaf for as long as any graph holds it, made for
    the leaf's shape at the time: a graph still alive (a ``loss`` in scope, or the weight that
    ``torch.nn.utils.weight_norm`` computes at registration) would hand the old-shape one to the
    next forward, whose backward then fails on the shape. Assigning data of another dtype makes
    PyTorch drop it (as ``module.half()`` does), so that the next forward makes a new one. The
    version counter is bumped, so that backward through a graph built before fails with PyTorch's
    "modified by an inplace operation" instead of mixing old and new weights; a ``.grad`` of the
    old shape is dropped (it cannot be added to the new one).
    """
    with torch.no_grad():
        if tuple(tensor.shape) != tuple(data.shape):
            other = torch.float32 if tensor.dtype == torch.float64 else torch.float64
            tensor.data = torch.empty(0, dtype=other, device=tensor.device)
            if tensor.grad is not None and tuple(tensor.grad.shape) != tuple(data.shape):
                tensor.grad = None
        tensor.data = data
        bump = getattr(torch.autograd.graph, "increment_version", None)
        if bump is not None:
            bump(tensor)
        else:  # pragma: no cover - torch < 2.1 lacks increment_version
            tensor.mul_(1)


def apply_pending(pending: Sequence[Pending], module: Optional[nn.Module] = None) -> None:
    for p in pending:
        if p.factored is not None:  # the same weight and bias Parameters, in a FactoredConv at the layer's place
            parent_name, _, child = p.path.rpartition(".")
            setattr(module.get_submodule(parent_name), child, FactoredConv(p.layer, p.factored))
            continue
        for attr, data in p.tensors.items():
            replace_data(getattr(p.holder if p.holder is not None else p.layer, attr), data)
        if isinstance(p.layer, POOLS):
            set_pool_geometry(p.layer, p.geometry)
        elif p.geometry is not None:
            set_conv_geometry(p.layer, p.geometry)
        if p.in_features is not None:
            p.layer.in_features = p.in_features


def check_layer(name: str, layer: nn.Module, tensor_name: str, allow_reflect: bool, kind: str = "conv",
                 holder: Optional[nn.Module] = None) -> str:
    """``"conv"``, ``"transposed"`` or ``"linear"`` for a layer whose planned tensor the adapter can
    patch; GeometryError naming it otherwise. Attention records (a scaled query projection) may
    name any tensor of the layer (``holder``: the module holding it, default the layer); conv and
    grid records only its ``weight``, or the v of the weight norm it is under."""
    attr = owner(tensor_name)[1]
    if kind == AttentionRecord.kind:
        if not isinstance(getattr(holder if holder is not None else layer, attr, None), torch.Tensor):
            raise GeometryError(f"{tensor_name}: the plan scales it, but {name!r} has no tensor attribute {attr!r}")
        return "attention"
    if planned_weight(name, layer, tensor_name) is not None:  # weight norm's v, spectral norm's raw weight
        attr = "weight"
    if attr != "weight" or not isinstance(layer, CONVS + TRANSPOSED + (nn.Linear,)):
        raise GeometryError(
            f"{tensor_name}: the plan resizes it, but it belongs to a {type(layer).__name__} "
            f"(attribute {attr!r}), which kernelscale.nn cannot patch; exclude it or patch it yourself")
    if isinstance(layer, nn.Linear):
        return "linear"
    if getattr(layer, "padding_mode", "zeros") == "reflect" and not allow_reflect:
        raise GeometryError(
            f"{name}: padding_mode='reflect' mirrors about the edge sample, which does not scale with the "
            "input; pass allow_reflect=True to accept the border error")
    return "transposed" if isinstance(layer, TRANSPOSED) else "conv"


def change_entry(name: str, layer: nn.Module, record: Record, padding: str, side_fallback: str,
                  old_shape: tuple[int, ...], new_shape: tuple[int, ...]) -> tuple[LayerChange, Optional[LayerGeometry], Optional[int]]:
    """The LayerChange (and new geometry or in_features) of one planned or recorded tensor."""
    if isinstance(record, AttentionRecord):
        change = LayerChange(name, type(layer).__name__, Action.ATTENTION, f"temperature ×{record.factor:.4f}", (), (),
                             old_weight_shape=old_shape, new_weight_shape=new_shape)
        return change, None, None
    if isinstance(record, GridRecord):
        grid, new_grid = record.grid_layout, record.new_grid_layout
        if layer.in_features != grid.cells:
            raise GeometryError(f"{name}: in_features {layer.in_features} is not the grid {grid.text}")
        change = LayerChange(name, type(layer).__name__, Action.GRID, _method_label(record), grid.canonical, new_grid.canonical,
                             old_weight_shape=old_shape, new_weight_shape=new_shape)
        return change, None, new_grid.cells
    kind = "transposed" if isinstance(layer, TRANSPOSED) else "conv"
    old, new, offset = conv_change(name, kind, layer_geometry(layer), record, padding, side_fallback)
    action = Action.ABSORB if record.absorb else (Action.GEOMETRY if record.dilation else Action.RESIZE)
    change = LayerChange(name, type(layer).__name__, action, _method_label(record), old.kernel, new.kernel,
                         old.padding_report(), new.padding_report(), old.stride, new.stride, old.dilation, new.dilation,
                         old_shape, new_shape, offset)
    return change, new, None


def _method_label(record: Union[ConvRecord, GridRecord]) -> str:
    """What was applied, as the record says it: ``interp/cubic/taps``; a method the plan asked for and
    replaced by a fallback for this layer is named, ``interp/linear/taps (fallback for disperse)``."""
    if getattr(record, "dilation", None):
        return "dilate (geometry only)"
    label = "/".join(str(part) for part in (record.method, record.mode, record.align) if part is not None)
    return f"{label} (fallback for {record.fallback})" if record.fallback else label


def _matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern)


def pool_changes(module: nn.Module, options: ResizeOptions) -> tuple[list[Pending], list[tuple[str, str]]]:
    """Scale every MaxPool/AvgPool matched by the options (include/exclude/layer rules by layer name)."""
    pending, skipped = [], []
    for name, layer in module.named_modules():
        if not isinstance(layer, POOLS):
            continue
        if options.include and not any(_matches(name, p) for p in options.include):
            skipped.append((name, "not matched by include"))
            continue
        excluded = next((p for p in options.exclude if _matches(name, p)), None)
        if excluded is not None:
            skipped.append((name, f"excluded by {excluded!r}"))
            continue
        rule = next((r for r in options.layers if _matches(name, r.pattern)), None)
        scale = rule.scale if rule is not None and rule.scale is not None else options.scale
        ndim = pool_ndim(layer)
        result = pool_change(name, type(layer).__name__, layer_geometry(layer), axis_scales(scale, ndim, name=name, trailing=True),
                             bool(getattr(layer, "ceil_mode", False)), getattr(layer, "divisor_override", None))
        if result is None:
            skipped.append((name, "scale 1"))
            continue
        old, new, offset = result
        change = LayerChange(name, type(layer).__name__, Action.POOL, "window", old.kernel, new.kernel, old.padding_report(),
                             new.padding_report(), old.stride, new.stride, old.dilation, new.dilation, offset=offset)
        pending.append(Pending(layer, change, new))
    return pending, skipped


def unfactorable_layer(path: str, layer: nn.Module, holder: Optional[nn.Module], attr: str, geometry: Optional[LayerGeometry],
                        resize: FactoredResize) -> Optional[str]:
    """Why a layer whose resize factors cannot run as a FactoredConv (it is materialised
    instead), or None: it must be a plain Conv1d/2d/3d holding its weight Parameter, without the
    adapter's asymmetric-padding hook, and the factored geometry (padding s·p + d·(L−1)/2 per
    side, the conv's own stride and dilation) must be the materialised layer's, so that both run
    the same conv (T2); ``path`` is its name in the module ("" for the module itself, which
    cannot be replaced in place)."""
    if not path:
        return "the module itself is the conv and cannot be replaced in place (wrap it in a container)"
    if isinstance(layer, TRANSPOSED):
        return "a transposed conv does not factor"
    if not isinstance(layer, CONVS) or holder is not layer or attr != "weight" or not isinstance(layer.weight, nn.Parameter):
        return "its weight is not a plain Parameter of a Conv1d/2d/3d"
    if getattr(layer, "kernelscale_pad", None) or geometry is None:
        return "an asymmetric padding does not factor"
    old = layer_geometry(layer)
    pads, _ = state_geometry(resize, conv_pads(layer.padding, old.kernel, old.dilation, old.stride), old.dilation, "interpolated")
    if tuple(geometry.pads) != tuple(pads) or tuple(geometry.stride) != tuple(old.stride) or tuple(geometry.dilation) != tuple(old.dilation):
        return (f"its materialised geometry (padding {geometry.pads}, stride {geometry.stride}) is not the factored one "
                f"(padding {pads}, stride {old.stride})")
    return None


def materialised_note(record: ConvRecord) -> str:
    """Why a resize of this record cannot run factored ("" when it could: it was materialised as asked)."""
    return why_not_factored(record) or ""


def factored_note(resize: FactoredResize) -> str:
    taps = "×".join(str(h.size) for h in resize.prefilters)
    return f"the {'×'.join(map(str, resize.kernel_shape))} kernel kept, at dilation ×{axes_text(resize.dilations)} after a {taps} prefilter"


def _one_change_per_layer(pending: Sequence[Pending]) -> None:
    """Keep the report to one line per layer (an attention rule scales a weight and its bias)."""
    seen: set[str] = set()
    for p in pending:
        if p.change is not None:
            if p.change.name in seen:
                p.change = None
            else:
                seen.add(p.change.name)


def ordered_changes(pending: Sequence[Pending], layers: Mapping[str, nn.Module]) -> tuple[LayerChange, ...]:
    _one_change_per_layer(pending)
    order = {name: i for i, name in enumerate(layers)}
    changes = [p.change for p in pending if p.change is not None]
    return tuple(sorted(changes, key=lambda c: order[c.name]))
