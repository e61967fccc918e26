"""The plan: which tensors change, how, and what the manifest records (DESIGN §5).

A plan is frozen data computed from names, shapes and dtypes alone, so it can be built from a
safetensors header before any tensor is read; ``inspect``/``--dry-run`` print it and both the
streaming converter and :func:`kernelscale.resize_state_dict` execute it.

Default rule on a bare state dict: a floating tensor named ``*weight`` with 3–5 dims and some
spatial size > 1 is a conv kernel; everything else is copied byte for byte. A tensor is resized
when it is a default-rule candidate or named by a grid or absorb rule, matches an include glob
(when any are given), and matches no exclude glob. Layer rules refine scale and method.

A layer under weight norm or spectral norm is planned as its plain weight ``<layer>.weight``
would be, and the decision mapped back to its own tensors by :mod:`kernelscale.reparam`.
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping, Optional, Sequence

from kernelscale.dtypes import RESIZABLE
from kernelscale.grid import GridLayout
from kernelscale.errors import InvalidOptionError, KernelscaleError
from kernelscale.method import Coef, Method, Scale, axis_scales
from kernelscale.options import AttentionRule, LayerRule, ResizeOptions
from kernelscale.manifest import Action, AttentionRecord, ConvRecord, DisperseFit, GridRecord, Manifest, Record
from kernelscale.reparam import find_reparametrized, glob_names, weight_norm_parts
from kernelscale.transforms import GridResize, Operator, ScaleFactor, grid_resize, kernel_resize


@dataclass(frozen=True)
class TensorSpec:
    """What the planner knows of a tensor: its name, safetensors dtype name and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class TensorPlan:
    """The decision for one tensor.

    ``action`` (:class:`~kernelscale.manifest.Action`): ``copy`` (byte for byte), ``resize`` (new
    weight), ``geometry`` (weight bytes unchanged, the loader dilates) or ``renorm`` (weight norm's
    g, rescaled for its resized v: ``partner`` is v's resize entry, the record names v and ``dim``;
    executed by :func:`kernelscale.state_dict.apply_renorm`, which needs v). ``method`` is the
    validated Method it is resized by; ``record`` the typed manifest record (:mod:`kernelscale.manifest`;
    None for copies), which holds its scales; ``operator`` the built operator a ``resize`` entry
    is executed with (:mod:`kernelscale.execute`): a KernelResize, GridResize or ScaleFactor.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    action: Action
    reason: str
    new_shape: tuple[int, ...]
    method: Optional[Method] = None
    record: Optional[Record] = field(default=None, compare=False)
    partner: Optional["TensorPlan"] = None
    operator: Optional[Operator] = field(default=None, compare=False, repr=False)

    @property
    def kind(self) -> str:
        """What the tensor is, as its record says: ``conv``, ``grid``, ``attention``, ``weight_norm``
        (weight norm's g); ``other`` for a tensor without a record (a copy)."""
        return self.record.kind if self.record is not None else "other"

    @property
    def coef(self) -> Coef:
        """The coefficient the entry's Method resolved to (``""`` without a Method)."""
        return self.method.coef if self.method is not None and self.method.coef is not None else ""

    @property
    def changed(self) -> bool:
        return self.action != Action.COPY

    @property
    def flop_growth(self) -> float:
        """Multiply-adds per output sample, new over old (the spatial taps ratio)."""
        if self.action != Action.RESIZE or self.kind != ConvRecord.kind:
            return 1.0
        return math.prod(self.new_shape[2:]) / math.prod(self.shape[2:])


@dataclass(frozen=True)
class Plan:
    """The decisions for every tensor, in input order, and the options that produced them."""

    entries: tuple[TensorPlan, ...]
    options: ResizeOptions

    def __iter__(self):
        return iter(self.entries)

    def __getitem__(self, name: str) -> TensorPlan:
        for entry in self.entries:
            if entry.name == name:
                return entry
        raise KeyError(name)

    @property
    def changed(self) -> tuple[TensorPlan, ...]:
        return tuple(e for e in self.entries if e.changed)

    def manifest(self) -> dict[str, Any]:
        """The manifest of DESIGN §5: format version, tool version, options, changed tensors."""
        from kernelscale.version import __version__

        tensors = {e.name: e.record for e in self.entries if e.record is not None}
        return Manifest(self.options.to_json(), tensors, __version__).to_json()

    def describe(self) -> list[str]:
        """One line per tensor: name, dtype, shape, and what happens and why."""
        return describe_entries(self.entries)


def describe_entries(entries: Sequence[TensorPlan], out_dtypes: Optional[Sequence[str]] = None) -> list[str]:
    """``name  dtype  shape [-> new shape] [as dtype]  action: reason`` for each entry."""
    lines = []
    for i, e in enumerate(entries):
        out_dtype = out_dtypes[i] if out_dtypes is not None else e.dtype
        shape = shape_text(e.shape)
        cast = f" as {out_dtype}" if out_dtype != e.dtype else ""
        if e.changed:
            arrow = f" -> {shape_text(e.new_shape)}" if e.new_shape != e.shape else ""
            growth = f", FLOPs ×{e.flop_growth:.2f}" if e.kind == ConvRecord.kind and e.action == Action.RESIZE else ""
            lines.append(f"{e.name}  {e.dtype}  {shape}{arrow}{cast}  {e.action}: {e.reason}{growth}")
        else:
            lines.append(f"{e.name}  {e.dtype}  {shape}{cast}  {'cast' if cast else 'copy'}: {e.reason}")
    return lines


def shape_text(shape: Sequence[int]) -> str:
    """``(8, 3, 7, 7)`` → ``8×3×7×7``; ``()`` → ``scalar``."""
    return "×".join(map(str, shape)) or "scalar"


def module_name(name: str) -> str:
    """The layer a tensor belongs to: ``a.b.weight`` → ``a.b``; weight norm's ``a.b.weight_v``,
    ``a.b.weight_g`` and ``a.b.parametrizations.weight.original0/1`` → ``a.b`` too."""
    parts = weight_norm_parts(name)
    if parts is not None and parts[0]:
        return parts[0]
    return name[: -len(".weight")] if name.endswith(".weight") else name


def matches_pattern(name: str, pattern: str) -> bool:
    """Whether a glob matches a tensor name or its module name (without ``.weight``)."""
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(module_name(name), pattern)


def _first_match(names: Sequence[str], patterns: Iterable[str]) -> Optional[str]:
    """The first pattern matching any of ``names`` (a tensor's name and its aliases)."""
    return next((p for p in patterns if any(matches_pattern(n, p) for n in names)), None)


def is_conv_candidate(spec: TensorSpec) -> tuple[bool, str]:
    """The default rule of DESIGN §5, with the reason for the decision."""
    if spec.dtype not in RESIZABLE:
        return False, f"not a floating tensor ({spec.dtype})"
    if not spec.name.endswith("weight"):
        return False, "not a weight"
    if not 3 <= len(spec.shape) <= 5:
        return False, f"{len(spec.shape)}-D: not a conv kernel" + (" (declare a grid to resize a Linear)" if len(spec.shape) == 2 else "")
    if all(k == 1 for k in spec.shape[2:]):
        return False, "1×1 kernel: commutes with any upsampler"
    return True, "conv kernel"


def plan_tensors(specs: Iterable[TensorSpec], options: ResizeOptions) -> Plan:
    """Decide what happens to every tensor; raise InvalidOptionError for rules that match nothing.

    Include, absorb and layer-rule globs and grid names must each match at least one tensor
    (a typo would otherwise silently do nothing); exclude globs need not.
    """
    specs = list(specs)
    names = {s.name for s in specs}
    reparametrized = find_reparametrized(specs)
    rule_names = glob_names(names)  # a glob or grid may name a weight-normed layer's hidden weight
    grids = dict(options.grids)
    # a layer held by weight norm (v, g) or spectral norm (its raw weight) is planned under its
    # stand-in <layer>.weight: a grid naming a real tensor of it applies to the stand-in
    stand_in_of = {name: layer.stand_in.name for layer in reparametrized for name in layer.aliases}
    grid_tensor: dict[str, GridLayout] = {}
    grid_source: dict[str, str] = {}
    for grid_name in grids:
        tensor = grid_name if grid_name in rule_names else f"{grid_name}.weight"
        if tensor not in rule_names:
            raise InvalidOptionError(f"grid {grid_name!r}: no tensor named {grid_name!r} or {grid_name + '.weight'!r}")
        tensor = stand_in_of.get(tensor, tensor)
        if tensor in grid_tensor and grid_tensor[tensor] != grids[grid_name]:
            raise InvalidOptionError(f"grids {grid_source[tensor]!r} ({grid_tensor[tensor].text}) and {grid_name!r} "
                                     f"({grids[grid_name].text}) name the same weight {tensor}; give one")
        grid_tensor[tensor], grid_source[tensor] = grids[grid_name], grid_name
    for what, patterns in (("--include", options.include), ("--absorb", options.absorb), ("layer rule", [r.pattern for r in options.layers]),
                           ("attention rule", [r.pattern for r in options.attention])):
        for pattern in patterns:
            if not any(matches_pattern(n, pattern) for n in rule_names):
                raise InvalidOptionError(f"{what} {pattern!r} matches no tensor")

    restored: dict[str, TensorPlan] = {}
    for layer in reparametrized:  # planned as their plain weight, the decision mapped back to their tensors
        try:
            decision = _plan_one(layer.stand_in, options, grid_tensor.get(layer.stand_in.name), aliases=layer.aliases)
        except KernelscaleError as exc:
            raise type(exc)(layer.renamed(str(exc))) from None
        restored.update(layer.restore(decision, _copy))
    entries = [restored.get(spec.name) or _plan_one(spec, options, grid_tensor.get(spec.name)) for spec in specs]
    # A state dict has no topology or strides: every half-pixel layer counts as one input pixel per
    # pixel, in natural name order (conv2 before conv10), so the sides alternate; the nn adapter,
    # which sees the module's strides and pools, re-chooses them (with_half_pixel_sides).
    plan = with_half_pixel_sides(Plan(tuple(entries), options), {})
    if options.execution != "factored":
        return plan
    from kernelscale.factored_plan import factor_entry

    entries = [factor_entry(e)[0] for e in plan.entries]
    final = {e.name: e for e in entries}
    entries = [replace(e, partner=final[e.partner.name]) if e.partner is not None else e for e in entries]
    return replace(plan, entries=tuple(entries))


def half_pixel_sides(jumps: Sequence[tuple[str, float]]) -> dict[str, str]:
    """The side (``"after"``: +½, ``"before"``: −½ of the layer's own pixel) of the extra padding
    pixel of each half-pixel layer, chosen so that the shifts cancel in input pixels.

    ``jumps``: ``(name, J)`` in network order, J the input pixels per pixel at the layer (the
    product of the strides of the convs and pools before it), so a layer's shift is ±J/2 input
    pixels. Chosen greedily from the largest J down (ties in the given order), each against the
    sum so far: where every J divides the larger ones (strides 2, 2, …), the net shift is at most
    half the smallest J — half a fine input pixel when some layer sits at J = 1. All J equal gives
    plain alternation, after first.
    """
    order = sorted(range(len(jumps)), key=lambda i: -jumps[i][1])
    total, sides = 0.0, {}
    for i in order:
        name, jump = jumps[i]
        side = "before" if total > 0 else "after"
        total += jump / 2 if side == "after" else -jump / 2
        sides[name] = side
    return sides


def with_half_pixel_sides(plan: Plan, jumps: Mapping[str, float]) -> Plan:
    """``plan`` with every half-pixel record's ``pad_extra`` chosen by :func:`half_pixel_sides`:
    layers in natural name order, ``jumps[name]`` (default 1) input pixels per pixel at each."""
    entries = list(plan.entries)
    half_pixel = sorted((i for i, e in enumerate(entries) if e.record is not None and e.record.half_pixel),
                        key=lambda i: natural_key(entries[i].name))
    sides = half_pixel_sides([(entries[i].name, float(jumps.get(entries[i].name, 1.0))) for i in half_pixel])
    for i in half_pixel:
        entries[i] = replace(entries[i], record=replace(entries[i].record, pad_extra=sides[entries[i].name]))
    final = {e.name: e for e in entries}
    entries = [replace(e, partner=final[e.partner.name]) if e.partner is not None else e for e in entries]
    return replace(plan, entries=tuple(entries))


def natural_key(name: str) -> tuple:
    """Sort key reading digit runs as numbers: ``down.2.conv`` before ``down.10.conv``."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def _copy(spec: TensorSpec, reason: str) -> TensorPlan:
    return TensorPlan(spec.name, spec.dtype, spec.shape, Action.COPY, reason, spec.shape)


def attention_rule_for(name: str, rules: Sequence[AttentionRule]) -> Optional[AttentionRule]:
    """The rule matching a query projection's weight or bias (``x.to_q.weight`` / ``x.to_q.bias``)."""
    layer = name.rsplit(".", 1)[0] if name.endswith((".weight", ".bias")) else name
    return next((r for r in rules if fnmatch.fnmatchcase(name, r.pattern) or fnmatch.fnmatchcase(layer, r.pattern)), None)


def _plan_attention(spec: TensorSpec, rule: AttentionRule, scale: Scale) -> TensorPlan:
    if spec.dtype not in RESIZABLE:
        raise InvalidOptionError(f"attention rule {rule.pattern!r} matches {spec.name}, a {spec.dtype} tensor")
    factor = rule.factor(scale)
    record = AttentionRecord(factor, rule.tokens, rule.new_tokens, scale if isinstance(scale, tuple) else (scale,))
    return TensorPlan(spec.name, spec.dtype, spec.shape, Action.RESIZE, f"attention temperature ×{factor:.4f} (rule {rule.pattern!r})",
                      spec.shape, record=record, operator=ScaleFactor(factor))


def _plan_one(spec: TensorSpec, options: ResizeOptions, grid: Optional[GridLayout],
              aliases: tuple[str, ...] = ()) -> TensorPlan:
    """The decision for one tensor; globs match its name or any of ``aliases``."""
    names = (spec.name, *aliases)
    attention = attention_rule_for(spec.name, options.attention)
    if attention is not None:
        return _plan_attention(spec, attention, options.scale)
    absorb = _first_match(names, options.absorb) is not None
    if grid is not None:
        if spec.dtype not in RESIZABLE:
            raise InvalidOptionError(f"grid for {spec.name}: cannot resize a {spec.dtype} tensor")
        if len(spec.shape) != 2 or spec.shape[1] != grid.cells:
            raise InvalidOptionError(f"grid {grid.text} for {spec.name}: {grid.cells} cells, but the tensor has shape {spec.shape}")
        why = "declared grid"
    else:
        candidate, why = is_conv_candidate(spec)
        if absorb and not candidate:
            raise InvalidOptionError(f"--absorb matches {spec.name}, which is not a conv kernel: {why}")
        if not candidate:
            return _copy(spec, why)
    included = _first_match(names, options.include) is not None
    if options.include and not included:
        return _copy(spec, "not matched by --include")
    if options.absorb_only and grid is None and not absorb and not included:
        return _copy(spec, "after an absorbing layer: sees the original resolution (--include to resize it)")
    excluded = _first_match(names, options.exclude)
    if excluded is not None:
        return _copy(spec, f"excluded by {excluded!r}")

    rule = next((r for r in options.layers if any(matches_pattern(n, r.pattern) for n in names)), None)
    resize = rule.method_for(options.resize_method) if rule is not None else options.resize_method
    scale = rule.scale if rule is not None and rule.scale is not None else options.scale
    source = f"layer rule {rule.pattern!r}" if rule is not None else why

    if grid is not None:
        return _plan_grid(spec, grid, scale, resize, source, rule, options.fallback)
    spatial = spec.shape[2:]
    scales = axis_scales(scale, len(spatial), name=spec.name, trailing=True)
    if all(s == 1.0 for s in scales):
        return _copy(spec, f"scale 1 ({source})")
    if absorb:
        if resize.method == "dilate":  # zero insertion has no cells form: its kernel is aligned by taps
            return _plan_conv(spec, scales, replace(resize, align="taps"), f"absorbs the scale ({source}); dilate zero-inserts, "
                              "aligned by taps", absorb=True)
        return _plan_conv(spec, scales, replace(resize, align="cells"), f"absorbs the scale ({source})", absorb=True)
    if resize.method == "dilate" and options.geometry_only:
        return _plan_geometry(spec, scales, source)
    return _plan_conv(spec, scales, resize, source, fallback=options.fallback)


def _named(name: str, build, *args):
    try:
        return build(*args)
    except InvalidOptionError as exc:
        raise InvalidOptionError(f"{name}: {exc}") from None


def _plan_conv(spec: TensorSpec, scales: tuple[float, ...], resize: Method, reason: str, absorb: bool = False,
               fallback: Optional[str] = None) -> TensorPlan:
    spatial = tuple(spec.shape[2:])
    resize = resize.for_kernel()
    asked = None
    try:
        operator = _named(spec.name, kernel_resize, spatial, scales, resize)
    except InvalidOptionError as exc:
        if fallback is None or fallback == resize.method:
            if resize.method in FALLIBLE and fallback is None:
                raise InvalidOptionError(f"{exc}; --fallback METHOD (plan file: fallback = \"interp\") resizes such layers "
                                         "by another method") from None
            raise
        asked, resize = resize.method, replace(resize, method=fallback)
        try:
            operator = _named(spec.name, kernel_resize, spatial, scales, resize)
        except InvalidOptionError as again:
            raise InvalidOptionError(f"{exc}; the fallback {fallback} cannot resize it either: {again}") from None
        reason = f"{reason}; fallback: {asked} cannot resize it ({_cause(exc, spec.name)})"
    if absorb and any(not float(s).is_integer() for s in scales):
        raise InvalidOptionError(f"{spec.name}: an absorbing layer needs integer scales, got {scales!r}")
    new_shape = tuple(spec.shape[:2]) + operator.out_shape
    centre_offset = tuple(a.centre_offset if not absorb else 0.0 for a in operator.axes) or (0.0,) * len(spatial)
    done = resize.applied()  # the record says what the operator applies, not what was asked (docs/format.md)
    record = ConvRecord(done.method, done.mode, done.align, done.coef, tuple(scales), spatial, operator.out_shape,
                        centre_offset, absorb, fallback=asked)
    label = done.label
    if resize.method == "disperse":
        disperse = resize.disperse
        record = replace(record, disperse=DisperseFit(operator.out_shape[0], disperse.probe, disperse.eta, operator.relative_loss))
        label = f"disperse k'={operator.out_shape[0]} m={disperse.probe} eta={disperse.eta}"
    return TensorPlan(spec.name, spec.dtype, spec.shape, Action.RESIZE, f"{label} ({reason})", new_shape, resize, record,
                      operator=operator)


FALLIBLE = ("dilate", "pinv", "disperse")
"""Methods that refuse some kernels (an even size, a non-integer scale): their refusal names --fallback."""


def _cause(exc: Exception, name: str) -> str:
    """An error's message without the tensor name it starts with."""
    text = str(exc)
    return text[len(name) + 2:] if text.startswith(f"{name}: ") else text


def _plan_geometry(spec: TensorSpec, scales, reason: str) -> TensorPlan:
    factors = []
    for s in scales:
        if not float(s).is_integer():
            raise InvalidOptionError(f"{spec.name}: re-dilation needs integer scales, got {scales!r}")
        factors.append(int(s))
    spatial = tuple(spec.shape[2:])
    dilation = tuple(f if k > 1 else 1 for f, k in zip(factors, spatial))
    record = ConvRecord("dilate", None, "taps", None, tuple(scales), spatial, spatial, (0.0,) * len(spatial), False, dilation)
    return TensorPlan(spec.name, spec.dtype, spec.shape, Action.GEOMETRY, f"re-dilation, weights unchanged ({reason})", spec.shape,
                      Method("dilate", align="taps"), record)


GRID_METHODS = ("interp", "pinv")
"""The methods that resize a Linear over a grid (DESIGN §5): dilate and disperse act on conv taps."""


def _plan_grid(spec: TensorSpec, grid: GridLayout, scale: Scale, resize: Method, source: str, rule: Optional[LayerRule],
               fallback: Optional[str] = None) -> TensorPlan:
    """A declared grid's entry. A method that does not apply to a grid (dilate, disperse) falls back
    to ``fallback`` when given (refused unless it is one of :data:`GRID_METHODS`), else to interp —
    unless a layer rule named that method for this grid, which is refused without a fallback; the
    record's ``fallback`` and the reason name the method asked for either way."""
    spatial = grid.spatial
    scales = axis_scales(scale, len(spatial), name=spec.name, trailing=True)
    asked = None
    if resize.method not in GRID_METHODS:
        asked = resize.method
        cause = f"a grid is resized by {' or '.join(GRID_METHODS)}, not {asked}"
        if fallback is None and rule is not None and rule.method == asked:
            raise InvalidOptionError(f"{spec.name}: {cause}; --fallback METHOD (plan file: fallback = \"interp\") resizes "
                                     "such layers by another method")
        if fallback is not None and fallback not in GRID_METHODS:
            raise InvalidOptionError(f"{spec.name}: {cause}; the fallback {fallback} cannot resize it either")
        chosen = fallback or "interp"
        resize = replace(resize, method=chosen)
        source = f"{source}; fallback: {cause}" + ("" if fallback else " (no --fallback given: interp)")
    resize = replace(resize, align="cells").for_grid()
    operator = GridResize(grid, _named(spec.name, grid_resize, spatial, scales, resize))
    out_grid = operator.out_grid
    new_shape = (spec.shape[0], out_grid.cells)
    done = resize.applied()
    record = GridRecord(done.method, done.mode, done.align, done.coef, tuple(scales), grid.canonical, spatial, out_grid.spatial,
                        centre_offset=(0.0,) * len(spatial), layout=None if grid.is_canonical else grid.layout, fallback=asked)
    layout = "" if grid.is_canonical else f", layout {','.join(grid.layout)}"
    return TensorPlan(spec.name, spec.dtype, spec.shape, Action.RESIZE,
                      f"grid {'×'.join(map(str, grid.canonical))}{layout} {done.label} ({source})", new_shape, resize, record,
                      operator=operator)
