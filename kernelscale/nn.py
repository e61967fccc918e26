"""The nn.Module adapter: resize a live module in place, or load a converted checkpoint into one.

    report = kernelscale.nn.supersample(model, 2)                       # DESIGN §3 defaults
    report = kernelscale.nn.supersample(model, 2, method="dilate", geometry_only=True, pools=True)
    report = kernelscale.nn.load(model, "model_x2.safetensors")         # written by `kernelscale convert`
    print(report)                                                      # one line per changed layer

Execution (DESIGN §9): by default :func:`supersample` runs each conv whose resize factors
(interp, taps alignment, integer scales) as a :class:`~kernelscale.layers.FactoredConv` — its own
weight and bias Parameters at dilation s after a separable prefilter, the state dict unchanged —
and materialises the rest, saying why per layer; ``execution="materialised"`` writes every resized
kernel out. :func:`load` wraps the layers a factored record names (``convert --execution factored``).

Both run the plan of :mod:`kernelscale.plan` on the module's state-dict names, shapes and dtypes,
so the adapter and ``kernelscale convert`` make identical decisions and produce identical weights
(materialised execution);
the new layer geometry is derived from the module's own padding, stride and dilation plus the
per-tensor record (DESIGN §5) by one function, :func:`kernelscale.geometry.record_geometry`, shared by both paths.

Geometry (DESIGN §3): ``p' = (k'−1)·d'/2 − s·δ`` with ``δ = (k−1)·d/2 − p``; stride kept, except an
absorbing layer (stride·s, p' = s·p) and re-dilation (dilation·s, weights unchanged). A layer whose
new geometry cannot be expressed exactly is refused with a :class:`GeometryError` naming the layer
and the value, before anything is modified:

- a padding that is negative, or fractional (a half-pixel one is accepted with
  ``padding="asymmetric"``: the extra pixel goes on the side the record's ``pad_extra`` names
  (:func:`supersample` chooses it on the offset accumulated in input pixels through the module's
  strides and pools, :func:`kernelscale.plan.half_pixel_sides`, and :func:`load` re-chooses a
  converted file's sides, which alternate by name, the same way), applied by a forward pre-hook that ``F.pad``s the input while the
  conv's own padding is set to 0; the state-dict keys do not change);
- a layer that pads one side more (PyTorch's ``padding="same"`` for an even kernel pads (1, 2)):
  each side follows the rule on its own, which keeps its half-pixel offset scaled (T1-exact under
  ``dilate``), so the new pads differ too and need ``padding="asymmetric"`` as well;
- ``padding_mode="reflect"``: PyTorch mirrors about the edge sample's centre, which does not scale
  (zeros, replicate and circular padding of ``U x`` equal ``U`` of the padded ``x`` for nearest U);
  accepted with ``allow_reflect=True``;
- a strided layer whose output would not stay s× the original for inputs that are a multiple of
  its stride (the feature pyramid would change shape), e.g. a stride-2 conv with kernel 2 and
  padding 0 — absorb it instead; a strided transposed conv resized by zero insertion
  (``dilate``) with ``gcd(stride, s) > 1``, which leaves output phases empty;
- a transposed conv whose new padding would be half a pixel (it cannot crop one): the default
  taps resize of a vocoder's ``ConvTranspose1d(k=16, stride 8, padding 4)`` or ``(4, 2, 1)``.
  For these and the dilate case above the error names every such layer and the resize that fits
  it (``align="cells"`` there: k 16 → 32, padding 12, no offset): a
  ``layers=[LayerRule(name, align="cells")]`` for :func:`supersample`, a plan file's
  ``[[layers]]`` rules and the ``kernelscale convert`` command for :func:`load`;
- a tensor the plan resizes whose layer is not a Conv, ConvTranspose or Linear (a custom module),
  or a conv whose weight the state dict does not show (a parametrization other than weight norm
  or spectral norm);
- a spectral-normed conv the plan would resize (kernelscale.plan refuses it: spectral norm
  renormalises whatever weight it holds); geometry-only re-dilation of one is applied (the raw
  weight and the power-iteration vectors are kept, so the layer is T1-exact in eval mode);
- a lazy layer (``nn.LazyConv2d``, …) before its first forward, when the plan would change it; a
  lazy layer the plan leaves alone (excluded, a ``LazyLinear`` not named in ``grids``) is listed
  as unchanged.

Training goes on after a resize: the layers keep their Parameter objects, with new data, and the
next forward and backward use the new shapes; backpropagating through a graph built before the
resize is refused by PyTorch (see :func:`supersample`).

Weight norm (``torch.nn.utils.weight_norm`` or ``parametrizations.weight_norm``) is supported: the
plan resizes v and rescales g (kernelscale.plan), the adapter sets them in the layer (the Parameter
objects kept) with the geometry of v's record, and the layer's weight g·v/‖v‖ is the resized one
(the old form's ``weight`` attribute is recomputed at once, not only at the next forward).

Strided layers that are accepted carry a sub-pixel offset of ``(s−1)(σ−1)/2`` output-grid pixels
(DESIGN §4) when no integer padding reaches the ideal grid; the report lists it per layer. A
half-pixel padding on a *strided* conv goes on the side that puts its windows on the ideal grid
(a stride-2 conv resized 3 → 6 by cells is then exact), not on the record's alternating side.
A strided transposed conv's padding is fixed by its output size (:func:`kernelscale.geometry.record_geometry`); with
no output padding its windows then sit on the ideal grid (ConvTranspose k = 4, stride 2,
padding 1 resized by cells to k = 8 gets padding 3 and no offset).

Pools (``pools=True``): a MaxPool/AvgPool window keeps its scene extent and its centre: k·s or
(k−1)·s+1 wide, with the padding nearest the aligned one among those that keep the output s×
larger; stride-1 pools get the rule exactly, MaxPool2d(2) at s = 2 becomes (4, stride 2,
padding 1), exactly aligned.
"""

from __future__ import annotations

import fnmatch
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from kernelscale.errors import GeometryError, InvalidCheckpointError, InvalidOptionError, UnsupportedTensorError
from kernelscale.geometry import LayerGeometry, Padding, Refit, axes_text, conv_change, pool_change
from kernelscale.io.checkpoint import read_headers, read_manifest
from kernelscale.io.discovery import model_files
from kernelscale.io.safetensors_io import SafetensorsReader
from kernelscale.manifest import Action, AttentionRecord, ConvRecord, FactoredRecord, GridRecord, Manifest, Record, RenormRecord
from kernelscale.factored_plan import factor_entry, factored_resize_of, why_not_factored
from kernelscale.layers import FactoredConv, FactoredResize, conv_pads, factor_resize, state_geometry
from kernelscale.method import EXECUTIONS, axis_scales, check_choice
from kernelscale.recipes import listing, load_recipe, refit_error, supersample_recipe
from kernelscale.plan import (Plan, ResizeOptions, TensorSpec, half_pixel_sides, module_name, natural_key, plan_tensors, resize_options,
                              with_half_pixel_sides)
from kernelscale.reparam import (refresh_weight_norm, reparametrized_layer, spectral_norm_layer, spectral_norm_of, weight_norm_of,
                                 weight_norm_parts)
from kernelscale.state_dict import apply_entry, apply_renorm

__all__ = ["LayerChange", "SupersampleReport", "load", "plan_module", "read_manifest", "supersample"]

PADDINGS = ("exact", "asymmetric")

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
_POOL_NDIM = {1: (nn.MaxPool1d, nn.AvgPool1d), 2: (nn.MaxPool2d, nn.AvgPool2d), 3: (nn.MaxPool3d, nn.AvgPool3d)}
_PAD_MODES = {"zeros": "constant", "circular": "circular", "replicate": "replicate", "reflect": "reflect"}



# ---------------------------------------------------------------------------------------------
# Report


@dataclass(frozen=True)
class LayerChange:
    """What happened to one layer; ``action`` one of :class:`~kernelscale.manifest.Action` (resize, absorb,
    geometry, grid, attention, pool).

    ``kernel_size``/``stride``/``dilation`` are per spatial axis. ``padding`` is per axis too: an
    int, or a ``(before, after)`` pair when the layer pads asymmetrically. For a Linear over a grid
    the kernel fields hold the grid ``(C, H, W)`` and the others are empty. ``offset`` is, per
    axis, how far the layer's window centres sit from the ideal high-res grid, in pixels of the
    grid its padding is counted on (positive: further along the axis): 0 when exact, ±½ for a
    stride-1 layer padded half a pixel asymmetrically, ``(s−1)(σ−1)/2`` for a kept stride σ whose
    alignment no integer padding reaches (DESIGN §4).

    ``execution`` (resized convs): ``"factored"`` — the layer was replaced by a
    :class:`~kernelscale.layers.FactoredConv` holding the same weight and bias Parameters, run as
    the original kernel at dilation ``d·s`` after a separable prefilter; the kernel, padding and
    dilation fields then describe the equal materialised conv (T2), ``execution_note`` the
    factored form — or ``"materialised"``, with ``execution_note`` saying why it did not factor
    when factored execution was asked for. Empty for other changes.
    """

    name: str
    layer: str
    action: Action
    method: str
    old_kernel_size: tuple[int, ...]
    new_kernel_size: tuple[int, ...]
    old_padding: tuple[Padding, ...] = ()
    new_padding: tuple[Padding, ...] = ()
    old_stride: tuple[int, ...] = ()
    new_stride: tuple[int, ...] = ()
    old_dilation: tuple[int, ...] = ()
    new_dilation: tuple[int, ...] = ()
    old_weight_shape: Optional[tuple[int, ...]] = None
    new_weight_shape: Optional[tuple[int, ...]] = None
    offset: tuple[float, ...] = ()
    execution: str = ""
    execution_note: str = ""

    def describe(self) -> str:
        """One line: ``name (Layer) action method: k a→b, p a→b, stride a→b, dilation a→b``."""
        def arrow(old, new, what):
            return f"{what} {axes_text(old)}" if old == new else f"{what} {axes_text(old)}→{axes_text(new)}"

        if self.action == Action.ATTENTION:
            return f"{self.name} ({self.layer}) attention {self.method}"
        parts = [arrow(self.old_kernel_size, self.new_kernel_size, "grid" if self.action == Action.GRID else "k")]
        if self.action != Action.GRID:
            parts += [arrow(self.old_padding, self.new_padding, "p"), arrow(self.old_stride, self.new_stride, "stride"),
                      arrow(self.old_dilation, self.new_dilation, "dilation")]
        if any(self.offset):
            parts.append(f"offset {axes_text(tuple(round(o, 3) for o in self.offset))} px")
        if self.execution:
            parts.append(self.execution + (f" ({self.execution_note})" if self.execution_note else ""))
        return f"{self.name} ({self.layer}) {self.action} {self.method}: " + ", ".join(parts)


@dataclass(frozen=True)
class SupersampleReport:
    """The layers :func:`supersample` or :func:`load` changed, in module order, and the ones it left.

    Iterates, indexes (by position or layer name) and prints as one line per changed layer.
    ``skipped`` holds ``(layer name, reason)`` for every conv, Linear (and, with ``pools=True``,
    pool) layer left as it was. ``manifest`` is the DESIGN §5 manifest of the change.
    """

    layers: tuple[LayerChange, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    manifest: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __iter__(self) -> Iterator[LayerChange]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, key: Union[int, str]) -> LayerChange:
        if isinstance(key, str):
            for change in self.layers:
                if change.name == key:
                    return change
            raise KeyError(key)
        return self.layers[key]

    def names(self) -> list[str]:
        return [c.name for c in self.layers]

    def __str__(self) -> str:
        lines = [c.describe() for c in self.layers]
        lines.append(f"{len(self.layers)} layers changed, {len(self.skipped)} left unchanged")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Geometry


def _tuple(value: Any, ndim: int) -> tuple[int, ...]:
    if isinstance(value, (int, float)):
        return (int(value),) * ndim
    value = tuple(int(v) for v in value)
    return value * ndim if len(value) == 1 and ndim > 1 else value


def _layer_geometry(layer: nn.Module) -> LayerGeometry:
    """The geometry a conv, transposed conv or pool layer has now, pre-hook padding included."""
    if isinstance(layer, _POOLS):
        ndim = _pool_ndim(layer)
        kernel = _tuple(layer.kernel_size, ndim)
        stride = _tuple(layer.stride if layer.stride is not None else layer.kernel_size, ndim)
        pad = _tuple(layer.padding, ndim)
        dilation = _tuple(getattr(layer, "dilation", 1), ndim)
        return LayerGeometry(kernel, tuple((p, p) for p in pad), stride, dilation)
    ndim = layer.weight.ndim - 2
    kernel = tuple(int(k) for k in layer.weight.shape[2:])
    dilation = _tuple(layer.dilation, ndim)
    hook_pad = getattr(layer, "kernelscale_pad", None)
    if hook_pad:
        pads = tuple((hook_pad[2 * (ndim - 1 - i)], hook_pad[2 * (ndim - 1 - i) + 1]) for i in range(ndim))
    elif layer.padding == "valid":
        pads = ((0, 0),) * ndim
    elif layer.padding == "same":
        totals = [d * (k - 1) for d, k in zip(dilation, kernel)]
        pads = tuple((t // 2, t - t // 2) for t in totals)
    else:
        pads = tuple((p, p) for p in _tuple(layer.padding, ndim))
    output_padding = _tuple(layer.output_padding, ndim) if isinstance(layer, _TRANSPOSED) else ()
    return LayerGeometry(kernel, pads, _tuple(layer.stride, ndim), dilation, output_padding)


def _pool_ndim(layer: nn.Module) -> int:
    return next(d for d, kinds in _POOL_NDIM.items() if isinstance(layer, kinds))


# ---------------------------------------------------------------------------------------------
# Patching layers


def _asymmetric_pad_hook(layer: nn.Module, args: tuple) -> Optional[tuple]:
    """Forward pre-hook of a conv with asymmetric padding: F.pad the input by ``layer.kernelscale_pad``
    (F.pad order: last axis first, (before, after) per axis) in the layer's padding mode."""
    pad = getattr(layer, "kernelscale_pad", None)
    if not pad:
        return None
    return (F.pad(args[0], pad, mode=_PAD_MODES[layer.padding_mode]), *args[1:])


def _set_conv_geometry(layer: nn.Module, g: LayerGeometry) -> None:
    from torch.nn.modules.utils import _reverse_repeat_tuple

    layer.kernel_size = g.kernel
    layer.stride = g.stride
    layer.dilation = g.dilation
    if all(b == a for b, a in g.pads):
        layer.padding = tuple(b for b, _ in g.pads)
        if hasattr(layer, "kernelscale_pad"):
            layer.kernelscale_pad = None
    else:
        layer.padding = (0,) * len(g.pads)
        if not hasattr(layer, "kernelscale_pad"):
            layer.register_forward_pre_hook(_asymmetric_pad_hook)
        layer.kernelscale_pad = tuple(v for b, a in reversed(g.pads) for v in (b, a))
    layer._reversed_padding_repeated_twice = _reverse_repeat_tuple(layer.padding, 2)


def _set_pool_geometry(layer: nn.Module, g: LayerGeometry) -> None:
    layer.kernel_size = g.kernel
    layer.padding = tuple(b for b, _ in g.pads)
    layer.stride = g.stride


@dataclass
class _Pending:
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


def _replace_data(tensor: torch.Tensor, data: torch.Tensor) -> None:
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


def _apply(pending: Sequence[_Pending], module: Optional[nn.Module] = None) -> None:
    for p in pending:
        if p.factored is not None:  # the same weight and bias Parameters, in a FactoredConv at the layer's place
            parent_name, _, child = p.path.rpartition(".")
            setattr(module.get_submodule(parent_name), child, FactoredConv(p.layer, p.factored))
            continue
        for attr, data in p.tensors.items():
            _replace_data(getattr(p.holder if p.holder is not None else p.layer, attr), data)
        if isinstance(p.layer, _POOLS):
            _set_pool_geometry(p.layer, p.geometry)
        elif p.geometry is not None:
            _set_conv_geometry(p.layer, p.geometry)
        if p.in_features is not None:
            p.layer.in_features = p.in_features


def _check_layer(name: str, layer: nn.Module, tensor_name: str, allow_reflect: bool, kind: str = "conv",
                 holder: Optional[nn.Module] = None) -> str:
    """``"conv"``, ``"transposed"`` or ``"linear"`` for a layer whose planned tensor the adapter can
    patch; GeometryError naming it otherwise. Attention records (a scaled query projection) may
    name any tensor of the layer (``holder``: the module holding it, default the layer); conv and
    grid records only its ``weight``, or the v of the weight norm it is under."""
    attr = _owner(tensor_name)[1]
    if kind == AttentionRecord.kind:
        if not isinstance(getattr(holder if holder is not None else layer, attr, None), torch.Tensor):
            raise GeometryError(f"{tensor_name}: the plan scales it, but {name!r} has no tensor attribute {attr!r}")
        return "attention"
    if spectral_norm_layer(tensor_name) is not None:
        # The planner lets only geometry-only re-dilation through (the weight is kept, so is σ).
        if spectral_norm_of(layer) is None:
            raise GeometryError(f"{tensor_name}: named as spectral norm's raw weight, but {name!r} has no spectral norm "
                                "on its weight, so kernelscale.nn cannot patch it; exclude it or patch it yourself")
        attr = "weight"
    parts = weight_norm_parts(tensor_name)
    if parts is not None and parts[1] == tensor_name:
        if weight_norm_of(layer) is None:
            raise GeometryError(f"{tensor_name}: named as weight norm's v, but {name!r} has no weight norm (torch.nn.utils."
                                "weight_norm or parametrizations.weight_norm alone on its weight), so kernelscale.nn cannot "
                                "patch it; exclude it or patch it yourself")
        attr = "weight"
    if attr != "weight" or not isinstance(layer, _CONVS + _TRANSPOSED + (nn.Linear,)):
        raise GeometryError(
            f"{tensor_name}: the plan resizes it, but it belongs to a {type(layer).__name__} "
            f"(attribute {attr!r}), which kernelscale.nn cannot patch; exclude it or patch it yourself")
    if isinstance(layer, nn.Linear):
        return "linear"
    if getattr(layer, "padding_mode", "zeros") == "reflect" and not allow_reflect:
        raise GeometryError(
            f"{name}: padding_mode='reflect' mirrors about the edge sample, which does not scale with the "
            "input; pass allow_reflect=True to accept the border error")
    return "transposed" if isinstance(layer, _TRANSPOSED) else "conv"


def _change_entry(name: str, layer: nn.Module, record: Record, padding: str, side_fallback: str,
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
    kind = "transposed" if isinstance(layer, _TRANSPOSED) else "conv"
    old, new, offset = conv_change(name, kind, _layer_geometry(layer), record, padding, side_fallback)
    action = Action.ABSORB if record.absorb else (Action.GEOMETRY if record.dilation else Action.RESIZE)
    change = LayerChange(name, type(layer).__name__, action, _method_label(record), old.kernel, new.kernel,
                         old.padding_report(), new.padding_report(), old.stride, new.stride, old.dilation, new.dilation,
                         old_shape, new_shape, offset)
    return change, new, None


def _method_label(record: Union[ConvRecord, GridRecord]) -> str:
    if record.dilation:
        return "dilate (geometry only)"
    if record.method in ("dilate", "disperse"):
        return record.method
    return f"{record.method}/{record.mode}/{record.align}"


def _input_jumps(module: nn.Module) -> dict[str, float]:
    """Per conv of ``module``, the input pixels per pixel at its input (the product of the strides
    of the convs and pools registered before it; a transposed conv divides), for choosing the sides
    of half-pixel paddings (:func:`kernelscale.plan.half_pixel_sides`). Registration order stands for
    the forward's order. A strided conv gets 0: its half-pixel side is chosen by alignment
    (:func:`kernelscale.geometry.conv_change`), not to cancel shifts."""
    jumps: dict[str, float] = {}
    jump = 1.0
    for name, layer in module.named_modules():
        if isinstance(layer, _CONVS + _TRANSPOSED + _POOLS):
            stride = layer.stride if layer.stride is not None else layer.kernel_size
            step = float(stride[-1] if isinstance(stride, (tuple, list)) else stride)
            if isinstance(layer, _CONVS + _TRANSPOSED):
                jumps[name] = jump if step == 1 else 0.0
            jump = jump / step if isinstance(layer, _TRANSPOSED) else jump * step
    return jumps


def _sides_by_module(records: Mapping[str, Record], module: nn.Module) -> dict[str, Record]:
    """``records`` with each half-pixel conv's ``pad_extra`` re-chosen as :func:`supersample` chooses
    it, on the offset accumulated in input pixels through ``module``'s strides and pools (a file's
    records alternate by name: the converter sees no strides), so that loading a converted file
    and supersampling the module give the same layers."""
    jumps = _input_jumps(module)
    half = sorted((n for n, r in records.items() if isinstance(r, ConvRecord) and r.half_pixel), key=natural_key)
    chosen = half_pixel_sides([(n, float(jumps.get(module_name(n), 1.0))) for n in half])
    return {n: replace(r, pad_extra=chosen[n]) if n in chosen else r for n, r in records.items()}


class _Sides:
    """Alternates the half-pixel side for records that carry no ``pad_extra``."""

    def __init__(self) -> None:
        self.side = "after"

    def take(self, record: Record) -> str:
        if not record.half_pixel or record.pad_extra:
            return self.side
        side, self.side = self.side, ("before" if self.side == "after" else "after")
        return side


# ---------------------------------------------------------------------------------------------
# Pools


def _matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern)


def _pool_changes(module: nn.Module, options: ResizeOptions) -> tuple[list[_Pending], list[tuple[str, str]]]:
    """Scale every MaxPool/AvgPool matched by the options (include/exclude/layer rules by layer name)."""
    pending, skipped = [], []
    for name, layer in module.named_modules():
        if not isinstance(layer, _POOLS):
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
        ndim = _pool_ndim(layer)
        result = pool_change(name, type(layer).__name__, _layer_geometry(layer), axis_scales(scale, ndim, name=name, trailing=True),
                             bool(getattr(layer, "ceil_mode", False)), getattr(layer, "divisor_override", None))
        if result is None:
            skipped.append((name, "scale 1"))
            continue
        old, new, offset = result
        change = LayerChange(name, type(layer).__name__, Action.POOL, "window", old.kernel, new.kernel, old.padding_report(),
                             new.padding_report(), old.stride, new.stride, old.dilation, new.dilation, offset=offset)
        pending.append(_Pending(layer, change, new))
    return pending, skipped


def _check_hidden_weights(module: nn.Module, state: Mapping[str, Any], options: ResizeOptions) -> None:
    """Refuse a conv whose weight the state dict does not show (a parametrization other than weight
    norm, spectral_norm, … stores it as other tensors): the plan cannot see it, so it would
    silently stay unscaled. Weight norm's v and g are planned (kernelscale.plan)."""
    for name, layer in module.named_modules():
        if not isinstance(layer, _CONVS + _TRANSPOSED) or (f"{name}.weight" if name else "weight") in state:
            continue
        if weight_norm_of(layer) is not None or spectral_norm_of(layer) is not None:
            continue  # planned: kernelscale.plan resizes weight norm and refuses spectral norm unless geometry-only
        if all(k == 1 for k in _tuple(layer.kernel_size, 1)):  # not layer.weight: computing it may update state (spectral_norm)
            continue
        if any(_matches(name, p) for p in options.exclude) or (options.include and not any(_matches(name, p) for p in options.include)):
            continue
        raise GeometryError(f"{name}: its weight is not in the state dict (a parametrization other than weight norm, or "
                            "spectral_norm?), so the plan cannot resize it; remove it first (torch.nn.utils.parametrize."
                            "remove_parametrizations(module, 'weight'), torch.nn.utils.remove_spectral_norm(module)), "
                            "or exclude the layer")


def _locate(tensor_name: str, layers: Mapping[str, nn.Module]) -> tuple[str, Optional[nn.Module], str]:
    """``(layer name, module holding the tensor, attribute)``. Weight norm's v and g belong to the
    layer they parametrize, held by it (weight_v/weight_g) or by its parametrization list
    (original1/original0); any other tensor to the module that holds it."""
    holder_name, attr = _owner(tensor_name)
    layer_name = reparametrized_layer(tensor_name)
    return layer_name if layer_name in layers else holder_name, layers.get(holder_name), attr


def _one_change_per_layer(pending: Sequence[_Pending]) -> None:
    """Keep the report to one line per layer (an attention rule scales a weight and its bias)."""
    seen: set[str] = set()
    for p in pending:
        if p.change is not None:
            if p.change.name in seen:
                p.change = None
            else:
                seen.add(p.change.name)


# ---------------------------------------------------------------------------------------------
# supersample


def _owner(tensor_name: str) -> tuple[str, str]:
    """``("a.b", "weight")`` for ``"a.b.weight"``; ``("", "weight")`` for a root module's own tensor."""
    layer, _, attr = tensor_name.rpartition(".")
    return layer, attr


def _is_lazy(tensor: Any) -> bool:
    return isinstance(tensor, (nn.parameter.UninitializedParameter, nn.parameter.UninitializedBuffer))


def _spec(name: str, tensor: torch.Tensor) -> TensorSpec:
    from kernelscale.dtypes import dtype_name

    try:
        dtype = dtype_name(tensor.dtype)
    except (UnsupportedTensorError, KeyError):
        dtype = str(tensor.dtype)
    return TensorSpec(name, dtype, tuple(int(d) for d in tensor.shape))


def _lazy_spec(name: str, tensor: torch.Tensor, layers: Mapping[str, nn.Module], options: ResizeOptions) -> TensorSpec:
    """A stand-in for a tensor of a lazy layer, whose shape is not known until its first forward:
    what the plan decides depends on the name, the dtype and, for a conv, the kernel size the
    layer was built with (known); unknown sizes are 1, and a Linear named in ``grids`` gets the
    grid's width so that the plan takes it as declared (and :func:`plan_module` refuses it)."""
    holder, attr = _owner(name)
    layer = layers.get(holder)
    shape: tuple[int, ...] = (1,)
    if attr == "weight" and isinstance(layer, _CONVS + _TRANSPOSED):
        shape = (1, 1, *(int(k) for k in layer.kernel_size))
    elif attr == "weight" and isinstance(layer, nn.Linear):
        grids = dict(options.grids)
        grid = grids.get(holder) or grids.get(name)
        shape = (1, grid.cells if grid else 1)
    return TensorSpec(name, _spec(name, torch.empty(0, dtype=tensor.dtype)).dtype, shape)


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


def plan_module(module: nn.Module, options: ResizeOptions) -> Plan:
    """The plan ``kernelscale convert`` would make for a checkpoint of ``module`` (its state dict).

    A lazy layer (``nn.LazyConv2d``, ``nn.LazyLinear``, … before its first forward) is planned by
    its name and kernel size: left alone (its entries say so, with stand-in shapes), or, when the
    plan would change it (a lazy conv not excluded, a LazyLinear named in ``grids``), refused with
    a GeometryError asking for one forward pass first.
    """
    state = require_module(module, "plan_module").state_dict(keep_vars=True)
    lazy = {n for n, t in state.items() if _is_lazy(t)}
    layers = dict(module.named_modules()) if lazy else {}
    plan = plan_tensors((_lazy_spec(n, t, layers, options) if n in lazy else _spec(n, t) for n, t in state.items()), options)
    if not lazy:
        return plan
    for entry in plan:
        if entry.name in lazy and entry.changed:
            raise GeometryError(f"{entry.name}: the layer is lazy and its shape is not known yet; run one forward pass on a "
                                "low-resolution input first, then supersample (or exclude the layer)")
    entries = tuple(replace(e, reason=f"lazy, shape not known yet: {e.reason}") if e.name in lazy else e for e in plan.entries)
    return replace(plan, entries=entries)


def supersample(
    module: nn.Module,
    scale: Union[float, Sequence[float]],
    *,
    pools: bool = False,
    padding: str = "exact",
    allow_reflect: bool = False,
    backend: Optional[str] = None,
    execution: str = "factored",
    **plan_options: Any,
) -> SupersampleReport:
    """Resize ``module`` in place to run on inputs sampled ``scale``× more finely; return the report.

    ``plan_options`` are :class:`~kernelscale.plan.ResizeOptions`' fields (method, mode, align,
    coef, include, exclude, absorb, grids, layers, geometry_only, disperse). The plan is made on the
    module's state dict exactly as ``kernelscale convert`` makes it on a checkpoint of the module,
    and weights are produced by the same :func:`~kernelscale.state_dict.apply_entry`, so the two
    agree bit for bit. Conv1d/2d/3d and ConvTranspose1d/2d/3d get the resized weight and the
    geometry of :func:`kernelscale.geometry.record_geometry`; a Linear named in ``grids`` gets its resized weight and
    ``in_features``; with ``pools=True`` every MaxPool/AvgPool window is scaled (module
    docstring). ``padding="asymmetric"`` accepts half-pixel paddings (align="cells" even
    kernels); ``allow_reflect`` accepts ``padding_mode="reflect"``. ``backend`` picks where R is
    applied (kernelscale.dispatch).

    ``execution="factored"`` (the default): each conv whose resize factors (interp with taps
    alignment, or dilate, at integer scales: T2, DESIGN §9) is replaced by a
    :class:`~kernelscale.layers.FactoredConv` that holds its own weight and bias Parameters
    unchanged (state-dict keys and bytes kept) and runs them at dilation d·s after a separable
    prefilter — equal to the materialised kernel up to rounding, at about the cost of the
    original conv (docs/benchmarks.md). Every other resized layer is materialised and its report
    line says why: pinv, disperse, cells alignment, fractional or subsampling scales, transposed
    convs, absorbing, weight-normed or half-pixel-padded layers, and a layer whose materialised
    geometry is not the factored one. ``"materialised"``: every resized kernel is written out
    (the manifest and weights are then those ``kernelscale convert`` writes by default).

    Everything is planned and checked before the first layer is touched: on an error (GeometryError
    naming the layer, InvalidOptionError for bad options) the module is unchanged. A transposed
    conv the resize cannot fit (a half-pixel padding, or dilate with ``gcd(stride, s) > 1``) is
    refused with the ``layers=[LayerRule(name, align="cells")]`` (or other) rule that fits it.
    Guarantees are the methods': exact for stride-1 layers under T1 (dilate) and T6 (pinv grids),
    bounded by T3 for interp; strided layers carry the offset listed in the report.

    Training or fine-tuning the resized module works as usual: each resized Parameter stays the
    same object with new data, so a forward, backward and optimiser step on the supersampled input
    follow (weight norm of either form included). Caveats: a graph built before ``supersample``
    (a ``loss`` still in scope) cannot be backpropagated through afterwards (PyTorch raises "modified
    by an inplace operation"), a ``.grad`` of the old shape is dropped, and an optimiser's state
    per parameter (Adam's moments, SGD's momentum) keeps the old shapes: make the optimiser after
    ``supersample``, or clear its ``state``. The same holds for :func:`load`.
    """
    require_module(module, "supersample")
    check_choice("padding", padding, PADDINGS)
    check_choice("execution", execution, EXECUTIONS)
    options = resize_options(scale=scale, **plan_options)
    plan = plan_module(module, options)
    # the half-pixel sides cancel in input pixels through the module's strides and pools
    jumps = _input_jumps(module)
    plan = with_half_pixel_sides(plan, {e.name: jumps[module_name(e.name)] for e in plan.entries if module_name(e.name) in jumps})
    entries: dict[str, Any] = {}  # the entries as run: factored ones replaced, for the manifest
    state = module.state_dict(keep_vars=True)
    _check_hidden_weights(module, state, options)
    layers = dict(module.named_modules())
    pending: list[_Pending] = []
    skipped: list[tuple[str, str]] = []
    seen: set[int] = set()
    sides = _Sides()
    resized: dict[str, torch.Tensor] = {}
    renorms = []
    refits: list[Refit] = []
    listed: set[str] = set()
    for entry in plan:
        name, holder, attr = _locate(entry.name, layers)
        layer = layers.get(name)
        if not entry.changed:
            kept = _kept_layer(entry.name, name, attr, layers)
            if kept is not None and kept not in listed:  # spectral_norm's raw weight and its weight_v name one layer
                listed.add(kept)
                skipped.append((kept, entry.reason))
            continue
        if layer is None or holder is None:
            raise GeometryError(f"{entry.name}: the plan resizes it, but no layer named {name!r} owns it; exclude it")
        if entry.action == Action.RENORM:  # weight norm's g: once its v is resized
            renorms.append((entry, layer, holder, attr))
            continue
        _check_layer(name, layer, entry.name, allow_reflect, entry.kind, holder)
        tensor = state[entry.name]
        if id(tensor) in seen:
            raise GeometryError(f"{entry.name}: this tensor is shared with another layer; untie it before resizing")
        seen.add(id(tensor))
        try:
            change, geometry, in_features = _change_entry(name, layer, entry.record, padding, sides.take(entry.record),
                                                          entry.shape, entry.new_shape)
        except Refit as refit:
            refits.append(refit)
            continue
        if execution == "factored" and entry.action == Action.RESIZE and isinstance(entry.record, ConvRecord):
            factored, why = factor_entry(entry)
            if factored.action == Action.FACTORED:
                resize = factored_resize_of(entry.record)
                why = _unfactorable_layer(name, layer, holder, attr, geometry, resize)
            if why is None:
                entries[entry.name] = factored
                pending.append(_Pending(layer, replace(change, execution="factored", execution_note=_factored_note(resize)),
                                        factored=resize, path=name))
                continue
            change = replace(change, execution="materialised", execution_note=why)
        elif entry.action == Action.RESIZE and isinstance(entry.record, ConvRecord):
            change = replace(change, execution="materialised", execution_note=_materialised_note(entry.record))
        tensors = {}
        if entry.action == Action.RESIZE:
            tensors[attr] = resized[entry.name] = apply_entry(entry, tensor.detach(), backend=backend)
        pending.append(_Pending(layer, change, geometry, tensors, in_features, holder))
    if refits:
        raise refit_error(refits, supersample_recipe(refits))
    for entry, layer, holder, attr in renorms:
        v = entry.partner.name
        g = apply_renorm(entry, state[entry.name].detach(), state[v].detach(), resized.get(v), backend=backend)
        pending.append(_Pending(layer, None, tensors={attr: g}, holder=holder))
    if pools:
        pool_pending, pool_skipped = _pool_changes(module, options)
        pending += pool_pending
        skipped += pool_skipped
    _apply(pending, module)
    refresh_weight_norm(p.layer for p in pending if p.factored is None)
    ran = Plan(tuple(entries.get(e.name, e) for e in plan.entries), replace(options, execution=execution))
    return SupersampleReport(_ordered_changes(pending, layers), tuple(skipped), ran.manifest())


def _unfactorable_layer(path: str, layer: nn.Module, holder: Optional[nn.Module], attr: str, geometry: Optional[LayerGeometry],
                        resize: FactoredResize) -> Optional[str]:
    """Why a layer whose resize factors cannot run as a FactoredConv (it is materialised
    instead), or None: it must be a plain Conv1d/2d/3d holding its weight Parameter, without the
    adapter's asymmetric-padding hook, and the factored geometry (padding s·p + d·(L−1)/2 per
    side, the conv's own stride and dilation) must be the materialised layer's, so that both run
    the same conv (T2); ``path`` is its name in the module ("" for the module itself, which
    cannot be replaced in place)."""
    if not path:
        return "the module itself is the conv and cannot be replaced in place (wrap it in a container)"
    if isinstance(layer, _TRANSPOSED):
        return "a transposed conv does not factor"
    if not isinstance(layer, _CONVS) or holder is not layer or attr != "weight" or not isinstance(layer.weight, nn.Parameter):
        return "its weight is not a plain Parameter of a Conv1d/2d/3d"
    if getattr(layer, "kernelscale_pad", None) or geometry is None:
        return "an asymmetric padding does not factor"
    old = _layer_geometry(layer)
    pads, _ = state_geometry(resize, conv_pads(layer.padding, old.kernel, old.dilation, old.stride), old.dilation, "interpolated")
    if tuple(geometry.pads) != tuple(pads) or tuple(geometry.stride) != tuple(old.stride) or tuple(geometry.dilation) != tuple(old.dilation):
        return (f"its materialised geometry (padding {geometry.pads}, stride {geometry.stride}) is not the factored one "
                f"(padding {pads}, stride {old.stride})")
    return None


def _materialised_note(record: ConvRecord) -> str:
    """Why a resize of this record cannot run factored ("" when it could: it was materialised as asked)."""
    return why_not_factored(record) or ""


def _factored_note(resize: FactoredResize) -> str:
    taps = "×".join(str(h.size) for h in resize.prefilters)
    return f"the {'×'.join(map(str, resize.kernel_shape))} kernel kept, at dilation ×{axes_text(resize.dilations)} after a {taps} prefilter"


def _kept_layer(tensor_name: str, layer_name: str, attr: str, layers: Mapping[str, nn.Module]) -> Optional[str]:
    """The conv or Linear whose weight ``tensor_name`` is (itself, weight norm's v, or spectral
    norm's raw weight), for the report's list of layers left unchanged; None for other tensors."""
    spectral = spectral_norm_layer(tensor_name)
    parts = weight_norm_parts(tensor_name)
    if spectral is not None:
        layer_name = spectral
    elif not (attr == "weight" or (parts is not None and parts[1] == tensor_name)):
        return None
    return layer_name if isinstance(layers.get(layer_name), _CONVS + _TRANSPOSED + (nn.Linear,)) else None


def _ordered_changes(pending: Sequence[_Pending], layers: Mapping[str, nn.Module]) -> tuple[LayerChange, ...]:
    _one_change_per_layer(pending)
    order = {name: i for i, name in enumerate(layers)}
    changes = [p.change for p in pending if p.change is not None]
    return tuple(sorted(changes, key=lambda c: order[c.name]))


# ---------------------------------------------------------------------------------------------
# load


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
    :func:`supersample` does. A checkpoint without a manifest loads as it is.

    Strict: a module tensor missing from the files, a file tensor the module lacks, a shape other
    than the record's, a record for a layer whose kernel differs from the record's old shape, or a
    manifest of an unknown format version is an InvalidCheckpointError or GeometryError naming it.
    Everything is read and checked before the module is touched. A transposed conv the recorded
    resize cannot fit (``kernelscale convert`` cannot tell a transposed conv's weight from a conv's,
    so a default conversion of a vocoder's ``ConvTranspose1d(16, stride 8, padding 4)`` records a
    half-pixel padding) is refused with the plan file (``[[layers]]`` rules, align cells) and the
    convert command that fit it. A lazy layer loads the file's tensors unless the manifest records
    a resize of it (then: run one forward pass first). Training after loading: see
    :func:`supersample`.
    """
    require_module(module, "load")
    check_choice("padding", padding, PADDINGS)
    files = model_files(path)
    manifest, where = read_headers(files)
    records = Manifest.from_json(manifest, path).tensors if manifest is not None else {}
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
    records = _sides_by_module(records, module)
    pending: list[_Pending] = []
    sides = _Sides()
    reshaped: dict[str, tuple[int, ...]] = {}
    refits: list[Refit] = []
    for name, tensor in state.items():
        record = records.get(name)
        file_shape = where[name][1]
        if _is_lazy(tensor):  # load_state_dict gives it the file's shape; a lazy conv's kernel is known
            if record is not None:
                raise GeometryError(f"{name}: the layer is lazy and its shape is not known yet; run one forward pass on a "
                                    "low-resolution input first, then load")
            holder, attr = _owner(name)
            layer = layers.get(holder)
            if attr == "weight" and isinstance(layer, _CONVS + _TRANSPOSED) and tuple(file_shape[2:]) != tuple(layer.kernel_size):
                raise InvalidCheckpointError(f"{path}: {name!r} has kernel {file_shape[2:]} in the checkpoint but the lazy layer "
                                             f"{holder!r} was built with {tuple(layer.kernel_size)}")
            continue
        if record is None:
            if file_shape != tuple(tensor.shape):
                raise InvalidCheckpointError(
                    f"{path}: {name!r} has shape {file_shape} in the checkpoint but "
                    f"{tuple(tensor.shape)} in the module, and the manifest does not record a resize")
            continue
        layer_name, holder, _ = _locate(name, layers)
        layer = layers.get(layer_name)
        if layer is None or holder is None:
            raise GeometryError(f"{name}: the manifest records it, but no layer named {layer_name!r} owns it")
        if isinstance(record, RenormRecord):  # g, rescaled for its resized v: loaded as it is
            if file_shape != tuple(tensor.shape) or record.v not in records:
                raise InvalidCheckpointError(f"{path}: {name!r} is recorded as weight norm's g of {record.v!r}, but has shape "
                                             f"{file_shape} against {tuple(tensor.shape)} in the module, or its v has no record")
            continue
        _check_layer(layer_name, layer, name, allow_reflect, record.kind, holder)
        expected = _expected_shape(name, tuple(tensor.shape), record)
        if file_shape != expected:
            raise InvalidCheckpointError(f"{path}: {name!r} has shape {file_shape} but its record says {expected}")
        equal = record.materialised() if isinstance(record, FactoredRecord) else record
        try:
            change, geometry, in_features = _change_entry(layer_name, layer, equal, padding, sides.take(record),
                                                          tuple(tensor.shape), expected)
        except Refit as refit:
            refits.append(refit)
            continue
        if isinstance(record, FactoredRecord):
            pending.append(_factored_load(path, name, layer_name, layer, holder, record, change, geometry))
            continue
        if isinstance(record, ConvRecord) and not record.dilation:
            change = replace(change, execution="materialised", execution_note=_materialised_note(record))
        pending.append(_Pending(layer, change, geometry, {}, in_features))
        reshaped[name] = expected
    if refits:
        raise refit_error(refits, load_recipe(refits, manifest))
    skipped: list[tuple[str, str]] = []
    if pools and manifest is not None:
        opts = dict(manifest["options"])
        options = ResizeOptions(scale=opts["scale"], include=tuple(opts.get("include", ())), exclude=tuple(opts.get("exclude", ())),
                                layers=tuple(opts.get("layers", ())))
        pool_pending, skipped = _pool_changes(module, options)
        pending += pool_pending

    tensors: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[str]] = {}
    for name, (file, _) in where.items():
        by_file.setdefault(file, []).append(name)
    for file, names in by_file.items():
        with SafetensorsReader(file) as reader:
            for name in names:
                tensors[name] = reader.read_tensor(source[name])

    _apply(pending, module)
    with torch.no_grad():
        for name, shape in reshaped.items():
            param = state[name]
            _replace_data(param, torch.empty(shape, dtype=param.dtype, device=param.device))
        module.load_state_dict(tensors, strict=True)
    refresh_weight_norm(p.layer for p in pending if p.factored is None)
    return SupersampleReport(_ordered_changes(pending, layers), tuple(skipped), manifest or {})


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
                   change: LayerChange, geometry: Optional[LayerGeometry]) -> _Pending:
    """The pending FactoredConv wrap of a layer a factored record names; GeometryError where the
    layer cannot run it (a transposed conv, a parametrized weight) or where its factored geometry
    would not be the materialised conv's (both are checked as :func:`supersample` checks them)."""
    try:
        resize = factor_resize(**record.prefilter.options())
    except InvalidOptionError as exc:
        raise InvalidCheckpointError(f"{path}: {name!r}: its factored record's prefilter does not rebuild: {exc}") from None
    why = _unfactorable_layer(layer_name, layer, holder, _owner(name)[1], geometry, resize)
    if why is not None:
        raise GeometryError(f"{path}: {name!r} is recorded as factored, but layer {layer_name!r} cannot run it: {why}; "
                            "convert the checkpoint with --execution materialised (or exclude the layer)")
    if resize.dilations != record.dilation:
        raise InvalidCheckpointError(f"{path}: {name!r}: the recorded dilation {list(record.dilation)} is not its prefilter's "
                                     f"{list(resize.dilations)}")
    return _Pending(layer, replace(change, execution="factored", execution_note=_factored_note(resize)), factored=resize,
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
