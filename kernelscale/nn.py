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

from dataclasses import replace
from fnmatch import fnmatchcase
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from kernelscale.errors import GeometryError, UnsupportedTensorError
from kernelscale.factored_plan import factor_entry, factored_resize_of
from kernelscale.geometry import Refit
from kernelscale.io.checkpoint import read_manifest
from kernelscale.loading import load
from kernelscale.manifest import Action, ConvRecord
from kernelscale.method import EXECUTIONS, check_choice
from kernelscale.module_geometry import CONVS, TRANSPOSED, Sides, input_jumps, int_tuple
from kernelscale.module_patch import (PADDINGS, Pending, apply_pending, change_entry, check_layer, factored_note, is_lazy, locate,
                                      materialised_note, ordered_changes, owner, pool_changes, require_module, unfactorable_layer)
from kernelscale.module_report import LayerChange, SupersampleReport
from kernelscale.plan import Plan, TensorSpec, module_name, plan_tensors, with_half_pixel_sides
from kernelscale.options import ResizeOptions, resize_options
from kernelscale.recipes import refit_error, supersample_recipe
from kernelscale.reparam import refresh_weight_norm, reparametrized_by, weight_layer
from kernelscale.state_dict import apply_entry, apply_renorm

__all__ = ["LayerChange", "SupersampleReport", "load", "plan_module", "read_manifest", "supersample"]


def _check_hidden_weights(module: nn.Module, state: Mapping[str, Any], options: ResizeOptions) -> None:
    """Refuse a conv whose weight the state dict does not show (a parametrization other than weight
    norm, spectral_norm, … stores it as other tensors): the plan cannot see it, so it would
    silently stay unscaled. Weight norm's v and g are planned (kernelscale.plan)."""
    for name, layer in module.named_modules():
        if not isinstance(layer, CONVS + TRANSPOSED) or (f"{name}.weight" if name else "weight") in state:
            continue
        if reparametrized_by(layer) is not None:
            continue  # planned: kernelscale.plan resizes weight norm and refuses spectral norm unless geometry-only
        if all(k == 1 for k in int_tuple(layer.kernel_size, 1)):  # not layer.weight: computing it may update state (spectral_norm)
            continue
        if any(fnmatchcase(name, p) for p in options.exclude) or (options.include and not any(fnmatchcase(name, p) for p in options.include)):
            continue
        raise GeometryError(f"{name}: its weight is not in the state dict (a parametrization other than weight norm, or "
                            "spectral_norm?), so the plan cannot resize it; remove it first (torch.nn.utils.parametrize."
                            "remove_parametrizations(module, 'weight'), torch.nn.utils.remove_spectral_norm(module)), "
                            "or exclude the layer")


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
    holder, attr = owner(name)
    layer = layers.get(holder)
    shape: tuple[int, ...] = (1,)
    if attr == "weight" and isinstance(layer, CONVS + TRANSPOSED):
        shape = (1, 1, *(int(k) for k in layer.kernel_size))
    elif attr == "weight" and isinstance(layer, nn.Linear):
        grids = dict(options.grids)
        grid = grids.get(holder) or grids.get(name)
        shape = (1, grid.cells if grid else 1)
    return TensorSpec(name, _spec(name, torch.empty(0, dtype=tensor.dtype)).dtype, shape)


def plan_module(module: nn.Module, options: ResizeOptions) -> Plan:
    """The plan ``kernelscale convert`` would make for a checkpoint of ``module`` (its state dict).

    A lazy layer (``nn.LazyConv2d``, ``nn.LazyLinear``, … before its first forward) is planned by
    its name and kernel size: left alone (its entries say so, with stand-in shapes), or, when the
    plan would change it (a lazy conv not excluded, a LazyLinear named in ``grids``), refused with
    a GeometryError asking for one forward pass first.
    """
    state = require_module(module, "plan_module").state_dict(keep_vars=True)
    lazy = {n for n, t in state.items() if is_lazy(t)}
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
    jumps = input_jumps(module)
    plan = with_half_pixel_sides(plan, {e.name: jumps[module_name(e.name)] for e in plan.entries if module_name(e.name) in jumps})
    entries: dict[str, Any] = {}  # the entries as run: factored ones replaced, for the manifest
    state = module.state_dict(keep_vars=True)
    _check_hidden_weights(module, state, options)
    layers = dict(module.named_modules())
    pending: list[Pending] = []
    skipped: list[tuple[str, str]] = []
    seen: set[int] = set()
    sides = Sides()
    resized: dict[str, torch.Tensor] = {}
    renorms = []
    refits: list[Refit] = []
    listed: set[str] = set()
    for entry in plan:
        name, holder, attr = locate(entry.name, layers)
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
        check_layer(name, layer, entry.name, allow_reflect, entry.kind, holder)
        tensor = state[entry.name]
        if id(tensor) in seen:
            raise GeometryError(f"{entry.name}: this tensor is shared with another layer; untie it before resizing")
        seen.add(id(tensor))
        try:
            change, geometry, in_features = change_entry(name, layer, entry.record, padding, sides.take(entry.record),
                                                          entry.shape, entry.new_shape)
        except Refit as refit:
            refits.append(refit)
            continue
        if execution == "factored" and entry.action == Action.RESIZE and isinstance(entry.record, ConvRecord):
            factored, why = factor_entry(entry)
            if factored.action == Action.FACTORED:
                resize = factored_resize_of(entry.record)
                why = unfactorable_layer(name, layer, holder, attr, geometry, resize)
            if why is None:
                entries[entry.name] = factored
                pending.append(Pending(layer, replace(change, execution="factored", execution_note=factored_note(resize)),
                                        factored=resize, path=name))
                continue
            change = replace(change, execution="materialised", execution_note=why)
        elif entry.action == Action.RESIZE and isinstance(entry.record, ConvRecord):
            change = replace(change, execution="materialised", execution_note=materialised_note(entry.record))
        tensors = {}
        if entry.action == Action.RESIZE:
            tensors[attr] = resized[entry.name] = apply_entry(entry, tensor.detach(), backend=backend)
        pending.append(Pending(layer, change, geometry, tensors, in_features, holder))
    if refits:
        raise refit_error(refits, supersample_recipe(refits))
    for entry, layer, holder, attr in renorms:
        v = entry.partner.name
        g = apply_renorm(entry, state[entry.name].detach(), state[v].detach(), resized.get(v), backend=backend)
        pending.append(Pending(layer, None, tensors={attr: g}, holder=holder))
    if pools:
        pool_pending, pool_skipped = pool_changes(module, options)
        pending += pool_pending
        skipped += pool_skipped
    apply_pending(pending, module)
    refresh_weight_norm(p.layer for p in pending if p.factored is None)
    ran = Plan(tuple(entries.get(e.name, e) for e in plan.entries), replace(options, execution=execution))
    return SupersampleReport(ordered_changes(pending, layers), tuple(skipped), ran.manifest())


def _kept_layer(tensor_name: str, layer_name: str, attr: str, layers: Mapping[str, nn.Module]) -> Optional[str]:
    """The conv or Linear whose weight ``tensor_name`` is (itself, weight norm's v, or spectral
    norm's raw weight), for the report's list of layers left unchanged; None for other tensors."""
    reparametrized = weight_layer(tensor_name)
    if reparametrized is not None:
        layer_name = reparametrized
    elif attr != "weight":
        return None
    return layer_name if isinstance(layers.get(layer_name), CONVS + TRANSPOSED + (nn.Linear,)) else None
