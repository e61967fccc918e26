"""Reparametrized weights: weight norm, and the refusal of spectral norm (DESIGN §8).

A conv under weight norm has no ``*weight`` tensor: it is stored as v and g (``x.weight_v`` /
``x.weight_g``, or ``x.parametrizations.weight.original1`` / ``original0``), w = g·v/‖v‖ with one
norm per index of the axis ``dim`` (g has v's size there and 1 elsewhere; a scalar g: one norm).
Spectral norm keeps the raw weight (``x.weight_orig`` or ``x.parametrizations.weight.original``)
and divides it by its largest singular value.

Each such layer is one strategy object (:class:`WeightNorm`, :class:`SpectralNorm`, one per form
by its tensor names): before planning it maps its tensors to the plain weight ``<layer>.weight``
the planner sees (:attr:`stand_in`; globs match the real names too, :attr:`aliases`), and after
planning it maps the decision for that plain weight back to its own tensors (:meth:`restore`):

- weight norm, resized: exact when g is constant along the axes the resize changes (``dim`` 0 or
  1, or one norm over all): c·R·w = g'·v'/‖v'‖ with v' = c·R·v (v gets the weight's ``resize``
  entry and record) and g' = g·‖v'‖/‖v‖ (g gets a ``renorm`` entry, its shape kept, that needs v).
  A g that varies along a resized axis, a missing g, or a shape that fits no ``dim`` is refused
  (WeightNormError) rather than left silently unresized; excluded, the pair is copied;
- spectral norm: geometry-only re-dilation keeps every byte (exact); any other change is refused
  (SpectralNormError), since no stored values make the normalised weight the resized one.

Execution is here too, so that the state-dict API, the stream, the nn adapter and verify see plain
tensors: :func:`rescaled_g` executes a ``renorm`` entry (g' from v and v' handed over block by
block of rows), :func:`plain_weight` gives verify the plain weight of a stored pair
(:func:`weight_norm_g_name`, :func:`norm_dim` and :func:`g_fits` find and check the pair from the
headers). The module side (which form a live ``nn.Module`` layer uses, which live layer a planned v
or raw weight patches, recomputing the hook form's weight) is here as well:
:func:`weight_norm_of`, :func:`spectral_norm_of`, :func:`reparametrized_by`, :func:`planned_weight`,
:func:`refresh_weight_norm`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, Iterable, Optional, Sequence, Union

import math

import torch
from torch import nn

from kernelscale.dtypes import RESIZABLE
from kernelscale.errors import GeometryError, InvalidOptionError, NonFiniteResultError, SpectralNormError, WeightNormError
from kernelscale.execute import TensorLike, as_torch, like_input, overflow_message
from kernelscale.manifest import Action, AttentionRecord, GridRecord, RenormRecord, SpectralNormLink, WeightNormLink

if TYPE_CHECKING:  # typing only: the planner imports this module
    from kernelscale.plan import TensorPlan, TensorSpec

Copy = Callable[["TensorSpec", str], "TensorPlan"]


def _shape_text(shape: Sequence[int]) -> str:
    return "×".join(map(str, shape)) or "scalar"


# (v, g) name suffixes of weight norm: torch.nn.utils.weight_norm, and its parametrization.
WEIGHT_NORM_SUFFIXES = (("weight_v", "weight_g"), ("parametrizations.weight.original1", "parametrizations.weight.original0"))


# The tensor spectral norm keeps the raw weight in: torch.nn.utils.spectral_norm, its parametrization.
SPECTRAL_NORM_SUFFIXES = ("weight_orig", "parametrizations.weight.original")


def spectral_norm_layer(name: str) -> Optional[str]:
    """The layer whose raw weight ``name`` is under spectral norm, else None."""
    for suffix in SPECTRAL_NORM_SUFFIXES:
        if name == suffix or name.endswith("." + suffix):
            return name[: -len(suffix) - 1] if name != suffix else ""
    return None


def spectral_layers(names: Iterable[str]) -> list[str]:
    """The layers under spectral norm, each once, in the order their raw weights come."""
    return list(dict.fromkeys(layer for layer in map(spectral_norm_layer, names) if layer is not None))


def weight_norm_parts(name: str) -> Optional[tuple[str, str, str]]:
    """``(layer, v name, g name)`` when ``name`` is weight norm's v or g tensor, else None."""
    for v_suffix, g_suffix in WEIGHT_NORM_SUFFIXES:
        for suffix in (v_suffix, g_suffix):
            if name == suffix or name.endswith("." + suffix):
                layer = name[: -len(suffix) - 1] if name != suffix else ""
                return layer, f"{layer}.{v_suffix}" if layer else v_suffix, f"{layer}.{g_suffix}" if layer else g_suffix
    return None


def reparametrized_layer(name: str) -> Optional[str]:
    """The layer whose weight tensor ``name`` stands for: weight norm's v or g (either form), or
    spectral norm's raw weight; None for any other tensor."""
    parts = weight_norm_parts(name)
    return parts[0] if parts is not None else spectral_norm_layer(name)


def stand_in_name(layer: str) -> str:
    """The plain weight a reparametrized layer is planned as: ``<layer>.weight``."""
    return f"{layer}.weight" if layer else "weight"


def glob_names(names: Iterable[str]) -> set[str]:
    """The names a rule's glob may match: the tensors', and ``<layer>.weight`` of each layer whose
    weight weight norm holds as v and g (a glob or grid may name the conv weight it hides)."""
    names = set(names)
    spectral = set(spectral_layers(names))
    hidden = {stand_in_name(layer) for layer in spectral}
    for name in names:
        parts = weight_norm_parts(name)
        if parts is not None and parts[1] == name and parts[0] not in spectral:
            hidden.add(stand_in_name(parts[0]))
    return names | hidden


def weight_norm_dim(layer: str, v: TensorSpec, g: TensorSpec) -> Optional[int]:
    """The axis along which weight norm keeps one norm per index (its ``dim``), read from g's shape
    against v's: g has v's size on that axis and 1 on every other. None: one norm over the whole of
    v (g a scalar, or all ones: where v has size 1 on the axis, dim and None are the same norm).
    WeightNormError naming the pair when g's shape fits no axis."""
    if all(n == 1 for n in g.shape) and len(g.shape) in (0, len(v.shape)):
        return None
    axes = [a for a, n in enumerate(g.shape) if n != 1]
    if len(g.shape) == len(v.shape) and len(axes) == 1 and g.shape[axes[0]] == v.shape[axes[0]]:
        return axes[0]
    raise WeightNormError(
        f"{layer or v.name}: weight norm's g {g.name} has shape {_shape_text(g.shape)}, which is neither a scalar nor v's "
        f"size on one axis and 1 on the others (v {v.name} is {_shape_text(v.shape)}), so the norms it multiplies are "
        f"unknown; {remove_weight_norm_hint(layer, v.name)}")


def remove_weight_norm_hint(layer: str, v: str) -> str:
    return ("remove weight norm before converting: torch.nn.utils.remove_weight_norm(module) for weight_g/weight_v, "
            "torch.nn.utils.parametrize.remove_parametrizations(module, 'weight') for parametrizations.weight."
            f"original0/1; or exclude {layer or v!r}")


def renamed(message: str, stand_in: str, v: str) -> str:
    """An error about a weight-normed conv's stand-in ``<layer>.weight``, naming the real v instead."""
    return re.sub(rf"(?<![\w.]){re.escape(stand_in)}(?![\w.])", lambda _: v, message) if stand_in != "weight" else message


def _spectral_vector_names(layer: str, which: str) -> tuple[str, ...]:
    """The names spectral norm's power-iteration vector ``which`` (u or v) has in either form."""
    prefix = f"{layer}." if layer else ""
    return f"{prefix}weight_{which}", f"{prefix}parametrizations.weight.0._{which}"


@dataclass(frozen=True)
class WeightNorm:
    """A layer whose weight weight norm holds as ``v`` and ``g`` (None: missing, refused when the
    layer changes), in either of torch's forms (the names say which)."""

    layer: str
    v: "TensorSpec"
    g: Optional["TensorSpec"]

    @property
    def stand_in(self) -> "TensorSpec":
        """The plain weight the planner sees: v's dtype and shape under ``<layer>.weight``."""
        return replace(self.v, name=stand_in_name(self.layer))

    @property
    def aliases(self) -> tuple[str, ...]:
        return (self.v.name, self.g.name if self.g is not None else weight_norm_parts(self.v.name)[2])

    def renamed(self, message: str) -> str:
        """A planner's message about the stand-in, naming v instead."""
        return renamed(message, self.stand_in.name, self.v.name)

    def restore(self, decision: "TensorPlan", copy: Copy) -> dict[str, "TensorPlan"]:
        """The entries of v and g for the planner's ``decision`` on the stand-in (module docstring);
        WeightNormError naming the pair where resizing it cannot be exact."""
        layer, v, g = self.layer, self.v, self.g
        who = f"weight norm of {layer or 'the root module'}"
        if not decision.changed:
            out = {v.name: copy(v, f"{who}: {decision.reason}")}
            if g is not None:
                out[g.name] = copy(g, f"{who}: {decision.reason}")
            return out
        if g is None:
            g_name = self.aliases[1]
            raise WeightNormError(f"{layer or v.name}: {v.name} is weight norm's v, but there is no {g_name} (g), without which "
                                  f"the weight g·v/‖v‖ is unknown; {remove_weight_norm_hint(layer, v.name)}")
        if g.dtype not in RESIZABLE:
            raise WeightNormError(f"{layer or v.name}: weight norm's g {g.name} is a {g.dtype} tensor, not a float one; "
                                  f"{remove_weight_norm_hint(layer, v.name)}")
        if decision.kind == AttentionRecord.kind:  # w = g·v/‖v‖ is linear in g and scale-free in v: the factor goes on g
            return {v.name: copy(v, f"{who}: v is kept, the attention factor goes on g"),
                    g.name: replace(decision, name=g.name, dtype=g.dtype, shape=g.shape, new_shape=g.shape,
                                    reason=f"{who}: {decision.reason}")}
        if decision.action == Action.GEOMETRY:  # the weight is kept, so are v and g
            return {v.name: replace(decision, name=v.name, reason=f"{who}: {decision.reason}"),
                    g.name: copy(g, f"{who}: re-dilation keeps v, so g is kept")}
        dim = weight_norm_dim(layer, v, g)
        resized_axes = (1,) if decision.kind == GridRecord.kind else tuple(range(2, len(v.shape)))
        if dim in resized_axes:
            raise WeightNormError(
                f"{layer or v.name}: its weight is held by weight norm as {g.name} (g, {_shape_text(g.shape)}) and {v.name} "
                f"(v, {_shape_text(v.shape)}) with one norm per index of axis {dim}, which the resize changes, so no "
                f"rescaled g of that shape keeps w = g·v/‖v‖; {remove_weight_norm_hint(layer, v.name)}")
        v_entry = replace(decision, name=v.name, reason=f"{who}: {decision.reason}",
                          record=replace(decision.record, weight_norm=WeightNormLink(g.name, dim)))
        norms = norms_text(dim)
        g_entry = replace(decision, name=g.name, dtype=g.dtype, shape=g.shape, action=Action.RENORM,
                          reason=f"{who}: rescaled for the resized {v.name}, g·‖v′‖/‖v‖ ({norms})", new_shape=g.shape,
                          method=None, record=RenormRecord(v.name, dim), partner=v_entry, operator=None)
        return {v.name: v_entry, g.name: g_entry}


@dataclass(frozen=True)
class SpectralNorm:
    """A layer whose raw weight spectral norm holds (``raw``), with the rest of its tensors (the
    power iteration's u and v) in ``tensors``, in either of torch's forms."""

    layer: str
    raw: "TensorSpec"
    tensors: tuple["TensorSpec", ...]

    @property
    def stand_in(self) -> "TensorSpec":
        return replace(self.raw, name=stand_in_name(self.layer))

    @property
    def aliases(self) -> tuple[str, ...]:
        return (self.raw.name,)

    def renamed(self, message: str) -> str:
        return message

    def restore(self, decision: "TensorPlan", copy: Copy) -> dict[str, "TensorPlan"]:
        """Copies, with the reason, when no rule changes the layer; geometry-only re-dilation
        (weights kept byte for byte, so the normalised weight is unchanged and the dilated conv
        exact) as a ``geometry`` entry on the raw weight, its record naming u and v
        (``spectral_norm``), which are copied; SpectralNormError naming the layer otherwise."""
        layer, raw = self.layer, self.raw
        who = f"spectral norm of {layer or 'the root module'}"
        if decision.action == Action.GEOMETRY:  # the weight is kept: so are its largest singular value, u and v
            names = {s.name for s in self.tensors}
            u, v = (next((n for n in _spectral_vector_names(layer, which) if n in names), None) for which in ("u", "v"))
            out = {raw.name: replace(decision, name=raw.name, reason=f"{who}: {decision.reason}",
                                     record=replace(decision.record, spectral_norm=SpectralNormLink(u, v)))}
            for spec in self.tensors:
                if spec.name != raw.name:
                    out[spec.name] = copy(spec, f"{who}: re-dilation keeps the weight, so its power iteration's vectors are kept")
            return out
        if decision.changed:
            raise SpectralNormError(
                f"{layer or raw.name}: its weight is held by spectral norm ({raw.name}), which divides whatever weight the "
                "layer holds by that weight's own largest singular value, so no stored values make it the resized weight; "
                "remove spectral norm before converting (torch.nn.utils.remove_spectral_norm(module), or "
                "torch.nn.utils.parametrize.remove_parametrizations(module, 'weight') for the parametrization), "
                f"or exclude {layer or raw.name!r}")
        return {spec.name: copy(spec, f"{who}: {decision.reason}") for spec in self.tensors}


# A reparametrized layer: .stand_in, .aliases, .renamed(message), .restore(decision, copy).
Reparametrized = Union[WeightNorm, SpectralNorm]


def find_reparametrized(specs: Sequence["TensorSpec"]) -> list[Reparametrized]:
    """Every weight-normed layer (in the order of its v), then every spectral-normed one (in the
    order of its raw weight). Spectral norm's own ``weight_v`` (its power iteration's vector) is
    no weight norm."""
    spectral = spectral_layers(spec.name for spec in specs)
    by_name = {spec.name: spec for spec in specs}
    found: list[Reparametrized] = []
    for spec in specs:
        parts = weight_norm_parts(spec.name)
        if parts is not None and parts[1] == spec.name and parts[0] not in set(spectral):
            found.append(WeightNorm(parts[0], spec, by_name.get(parts[2])))
    for layer in spectral:
        prefix = f"{layer}." if layer else ""
        tensors = tuple(s for s in specs if s.name.startswith(prefix + "weight_") or s.name.startswith(prefix + "parametrizations.weight."))
        raw = next(s for s in tensors if spectral_norm_layer(s.name) == layer)
        found.append(SpectralNorm(layer, raw, tensors))
    return found


# --- tensors: {v, g} to the plain weight and back -------------------------------------------------


def effective_weight(v: torch.Tensor, g: torch.Tensor, dim: Optional[int], name: str = "weight_v") -> torch.Tensor:
    """Weight norm's w = g·v/‖v‖ in float64, the norm over every axis of ``v`` but ``dim`` (all of
    them for None). Where ‖v‖ = 0, w = 0 (torch gives 0/0; convert keeps g there, v′ being 0 too);
    non-finite values propagate. InvalidOptionError when g's shape does not fit ``dim``."""
    v, g = v.double(), g.double()
    if dim is None:
        if g.numel() != 1:
            raise InvalidOptionError(f"{name}: weight norm's g has shape {tuple(g.shape)}, not one value (dim None)")
        norm, g = v.norm(), g.reshape(())
    else:
        if not 0 <= dim < v.ndim or g.numel() != v.shape[dim]:
            raise InvalidOptionError(f"{name}: weight norm's g has shape {tuple(g.shape)}, not v's {tuple(v.shape)} "
                                     f"size along dim {dim}")
        axes = [a for a in range(v.ndim) if a != dim]
        norm = torch.linalg.vector_norm(v, dim=axes, keepdim=True) if axes else v.abs()
        g = g.reshape([-1 if a == dim else 1 for a in range(v.ndim)])
    scale = torch.where(norm == 0, torch.zeros_like(norm), g / torch.where(norm == 0, torch.ones_like(norm), norm))
    return v * scale


def weight_norm_squares(v: TensorLike, dim: Optional[int], name: str = "weight_v") -> torch.Tensor:
    """Σ v² over every axis of ``v`` but ``dim``, in float64: shape ``(v.shape[dim],)``, or ``()``
    for ``dim=None`` (one norm over all of v) — the squared norms of weight norm's w = g·v/‖v‖.
    Sums of squares add over blocks of v: over blocks of rows, concatenate (dim 0) or add (others)."""
    x = as_torch(v, name).to(torch.float64)
    if dim is None:
        return (x * x).sum()
    axes = [a for a in range(x.ndim) if a != dim]
    return (x * x).sum(dim=axes) if axes else x * x


def rescale_weight_norm_g(g: TensorLike, squares: torch.Tensor, new_squares: torch.Tensor, out_dtype: Optional[torch.dtype] = None,
                          name: str = "weight_g") -> TensorLike:
    """Weight norm's g for a resized v: g' = g·‖v'‖/‖v‖, so that g'·v'/‖v'‖ = c·R·(g·v/‖v‖) exactly
    when v' = c·R·v and g is constant along the axes R changes.

    ``squares``/``new_squares``: :func:`weight_norm_squares` of v and v' (shape ``(n,)`` for g with
    n entries along its one non-1 axis, or ``()``). Computed in float64 and rounded once to
    ``out_dtype`` (default g's dtype); same kind as ``g``. Where ‖v‖ = 0 (then v' = 0 too, R being
    linear) g is kept: the weight is g·0/0 either way, as before.
    """
    x = as_torch(g, name)
    old = squares.to(device=x.device, dtype=torch.float64)
    new = new_squares.to(device=x.device, dtype=torch.float64)
    if old.numel() != 1 and old.numel() != x.numel():
        raise InvalidOptionError(f"{name}: {old.numel()} norms of v for a g of shape {tuple(x.shape)}")
    ratio = torch.where(old > 0, torch.sqrt(new / torch.where(old > 0, old, 1.0)), 1.0)
    out = x.to(torch.float64) * ratio.reshape(x.shape if old.numel() == x.numel() else ())
    result = out.to(out_dtype or x.dtype)
    # g is small (one value per norm): check it exactly, whenever g and the norms are finite
    inputs_finite = all(bool(torch.isfinite(t).all()) for t in (x, old, new)) if x.numel() else False
    if inputs_finite and not bool(torch.isfinite(result).all()):
        magnitude = float(x.abs().max())
        largest = float(out.abs().max()) if bool(torch.isfinite(out).all()) else math.inf
        gain = float(ratio.max()) if ratio.numel() else 1.0
        raise NonFiniteResultError(overflow_message(name, torch.float64, out_dtype or x.dtype, magnitude, gain, largest))
    return like_input(result, g)

# --- executing: the entry points the state-dict API, the stream, nn and verify call --------------


def rescaled_g(entry: "TensorPlan", g: TensorLike, v_rows: Iterable[tuple[TensorLike, TensorLike]],
               out_dtype: Optional[torch.dtype] = None) -> TensorLike:
    """Execute a ``renorm`` entry (weight norm's g, partner: its v's entry): g' = g·‖v'‖/‖v‖,
    norms over every axis of v but the record's ``dim``, so that g'·v'/‖v'‖ = c·R·(g·v/‖v‖).

    ``v_rows``: v and the v' stored beside g', as matching ``(v rows, v' rows)`` blocks of
    leading-axis rows in order (one pair: the whole tensors). Norms are taken of v' as given,
    rounded values included. The squared norms are summed in float64 block by block (per row for
    ``dim`` 0: concatenated; otherwise added), so only one block is held at a time and blocks give
    the same g' as the whole v up to float64 rounding. No block at all (an empty v): g in
    ``out_dtype``. Computed in float64, rounded once to ``out_dtype`` (default g's dtype); same
    kind as ``g``. InvalidOptionError for an entry that is not a renorm entry."""
    if entry.action != Action.RENORM or entry.partner is None or not isinstance(entry.record, RenormRecord):
        raise InvalidOptionError(f"{entry.name}: rescaled_g executes weight norm's renorm entries, not {str(entry.action)!r} ones")
    dim, v_name = entry.record.dim, entry.partner.name
    per_row, old, new = [], None, None
    for v, v_resized in v_rows:
        squares, new_squares = weight_norm_squares(v, dim, v_name), weight_norm_squares(v_resized, dim, v_name)
        if dim == 0:  # one norm per row: the blocks' norms line up
            per_row.append((squares, new_squares))
        else:  # every norm spans all rows: the blocks' sums add up
            old, new = (squares, new_squares) if old is None else (old + squares, new + new_squares)
    if per_row:
        old, new = torch.cat([o for o, _ in per_row]), torch.cat([n for _, n in per_row])
    if old is None:  # an empty v (no channels): no norms to follow
        x = as_torch(g, entry.name)
        return like_input(x.to(out_dtype or x.dtype), g)
    return rescale_weight_norm_g(g, old, new, out_dtype, name=entry.name)


def plain_weight(v: torch.Tensor, g: torch.Tensor, link: WeightNormLink, name: str = "weight_v") -> torch.Tensor:
    """The plain weight a weight-normed layer computes from its stored ``v`` and ``g`` (``link``:
    g's name and weight norm's ``dim``, as v's record has it): :func:`effective_weight`, in float64."""
    return effective_weight(v, g, link.dim, name)


def g_fits(g_shape: Sequence[int], v_shape: Sequence[int], dim: Optional[int]) -> bool:
    """Whether a g of shape ``g_shape`` is weight norm's g of a v of shape ``v_shape`` with norm axis
    ``dim`` (None: one norm over all of v, g a scalar or all ones)."""
    if dim is None:
        return all(n == 1 for n in g_shape) and len(g_shape) in (0, len(v_shape))
    return len(g_shape) == len(v_shape) and all(n == (v_shape[a] if a == dim else 1) for a, n in enumerate(g_shape))


def weight_norm_g_name(v: str) -> Optional[str]:
    """The name weight norm's g has beside ``v`` when ``v`` is weight norm's v (``<layer>.weight_g``
    for ``<layer>.weight_v``, …original0 for …original1), else None."""
    parts = weight_norm_parts(v)
    return parts[2] if parts is not None and parts[1] == v else None


def norm_dim(g: str, g_shape: Sequence[int], v: str, v_shape: Sequence[int]) -> Optional[int]:
    """Weight norm's ``dim`` read from the shapes of its ``g`` and ``v`` (the first that
    :func:`g_fits`: None, one norm over all of v, before any axis); WeightNormError naming g when its
    shape fits none."""
    g_shape, v_shape = tuple(g_shape), tuple(v_shape)
    for dim in (None, *range(len(v_shape))):
        if g_fits(g_shape, v_shape, dim):
            return dim
    raise WeightNormError(f"{g} is {_shape_text(g_shape)}, which is neither a scalar nor v's size on one axis and 1 on "
                          f"the others (v {v} is {_shape_text(v_shape)}), so it is no weight norm's g")


def norms_text(dim: Optional[int]) -> str:
    """How weight norm with this ``dim`` norms v, in words."""
    return "one norm over all of v" if dim is None else f"one norm per index of axis {dim}"


# --- modules: which form a live layer uses ------------------------------------------------------


def weight_norm_of(layer: nn.Module) -> Optional[str]:
    """``"hook"`` when ``layer.weight`` is under torch.nn.utils.weight_norm (weight_g/weight_v),
    ``"parametrization"`` under torch.nn.utils.parametrizations.weight_norm alone
    (parametrizations.weight.original0/1), None otherwise."""
    from torch.nn.utils.weight_norm import WeightNorm

    return _weight_reparametrized_by(layer, WeightNorm, "_WeightNorm")


def spectral_norm_of(layer: nn.Module) -> Optional[str]:
    """``"hook"`` when ``layer.weight`` is under torch.nn.utils.spectral_norm (weight_orig),
    ``"parametrization"`` under torch.nn.utils.parametrizations.spectral_norm alone
    (parametrizations.weight.original), None otherwise."""
    from torch.nn.utils.spectral_norm import SpectralNorm

    return _weight_reparametrized_by(layer, SpectralNorm, "_SpectralNorm")


def _weight_reparametrized_by(layer: nn.Module, hook_type: type, parametrization: str) -> Optional[str]:
    """``"hook"`` when a forward pre-hook of ``hook_type`` computes ``layer.weight``,
    ``"parametrization"`` when the parametrization class named ``parametrization`` (private in
    torch, hence by name) alone does, None otherwise."""
    if any(isinstance(h, hook_type) and h.name == "weight" for h in layer._forward_pre_hooks.values()):
        return "hook"
    chains = getattr(layer, "parametrizations", None)
    if isinstance(chains, nn.ModuleDict) and "weight" in chains:
        chain = chains["weight"]
        if len(chain) == 1 and type(chain[0]).__name__ == parametrization:
            return "parametrization"
    return None


def reparametrized_by(layer: nn.Module) -> Optional[str]:
    """``"weight norm"`` or ``"spectral norm"`` when a live layer's weight is computed by one of
    them (either of torch's forms: :func:`weight_norm_of`, :func:`spectral_norm_of`), else None."""
    if weight_norm_of(layer) is not None:
        return "weight norm"
    return "spectral norm" if spectral_norm_of(layer) is not None else None


def weight_layer(tensor_name: str) -> Optional[str]:
    """The layer whose weight ``tensor_name`` stands for in the plan (weight norm's v, spectral
    norm's raw weight), else None (g, the power iteration's vectors and plain tensors)."""
    spectral = spectral_norm_layer(tensor_name)
    if spectral is not None:
        return spectral
    parts = weight_norm_parts(tensor_name)
    return parts[0] if parts is not None and parts[1] == tensor_name else None


def planned_weight(name: str, layer: nn.Module, tensor_name: str) -> Optional[str]:
    """``"weight"`` when ``tensor_name`` is the tensor a reparametrized layer's weight is planned as
    (:func:`weight_layer`) and the live ``layer`` (named ``name``) has that reparametrization on its
    weight, so the adapter patches it as the layer's weight; None for any other tensor.
    GeometryError naming both when the layer lacks it."""
    if spectral_norm_layer(tensor_name) is not None:
        # The planner lets only geometry-only re-dilation through (the weight is kept, so is σ).
        if spectral_norm_of(layer) is None:
            raise GeometryError(f"{tensor_name}: named as spectral norm's raw weight, but {name!r} has no spectral norm "
                                "on its weight, so kernelscale.nn cannot patch it; exclude it or patch it yourself")
        return "weight"
    if weight_layer(tensor_name) is not None:
        if weight_norm_of(layer) is None:
            raise GeometryError(f"{tensor_name}: named as weight norm's v, but {name!r} has no weight norm (torch.nn.utils."
                                "weight_norm or parametrizations.weight_norm alone on its weight), so kernelscale.nn cannot "
                                "patch it; exclude it or patch it yourself")
        return "weight"
    return None


def refresh_weight_norm(layers: Iterable[nn.Module]) -> None:
    """Recompute ``weight`` of the layers under torch.nn.utils.weight_norm, a plain attribute its
    forward pre-hook sets from g and v, so that it shows the new ones (and the new kernel size)
    before the next forward; the parametrization computes it on each access."""
    from torch.nn.utils.weight_norm import WeightNorm

    for layer in {id(m): m for m in layers}.values():
        for hook in list(layer._forward_pre_hooks.values()):
            if isinstance(hook, WeightNorm):
                hook(layer, None)
