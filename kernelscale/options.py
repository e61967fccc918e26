"""What a resize job asks for: :class:`ResizeOptions`, and the per-layer and attention rules in it.

Validated once, where the options enter (the CLI, a plan file and the Python API all build a
``ResizeOptions``); :mod:`kernelscale.plan` turns them into a per-tensor plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Optional, Union

from kernelscale.errors import InvalidOptionError
from kernelscale.grid import GridLayout, grid_layout
from kernelscale.method import ALIGNS, EXECUTIONS, METHODS, MODES, Coef, DisperseParams, Method, Scale, check_choice, scale_value, whole_number


@dataclass(frozen=True)
class LayerRule:
    """Overrides for the tensors whose name (or module name, without ``.weight``) matches ``pattern``.

    ``scale`` 1 leaves the matching layers untouched. Fields left None keep the global option.
    """

    pattern: str
    scale: Optional[Scale] = None
    method: Optional[str] = None
    mode: Optional[str] = None
    align: Optional[str] = None
    coef: Optional[Coef] = None

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, str) or not self.pattern:
            raise InvalidOptionError(f"layer rule: pattern must be a non-empty glob, got {self.pattern!r}")
        where = f"layer rule {self.pattern!r}"
        if self.scale is not None:
            object.__setattr__(self, "scale", scale_value(self.scale, where))
        for what, choices in (("method", METHODS), ("mode", MODES), ("align", ALIGNS)):
            if getattr(self, what) is not None:
                check_choice(what, getattr(self, what), choices)
        if self.coef is not None:
            object.__setattr__(self, "coef", Method(coef=self.coef).coef)

    def method_for(self, base: Method) -> Method:
        """``base`` (the job's Method) with this rule's method, mode, align and coef where set."""
        return base.overridden(method=self.method, mode=self.mode, align=self.align, coef=self.coef)


MAX_TOKENS = 2**53
"""The largest token count an attention rule takes: a count a float still holds exactly."""


def _rule(cls: type, value: Any, what: str) -> Any:
    """``value`` as a ``cls`` (LayerRule or AttentionRule): itself, or built from a mapping of its
    fields; InvalidOptionError naming an unknown key or a value of the wrong kind."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise InvalidOptionError(f"{what} must be a {cls.__name__} or a mapping of its fields, got {value!r}")
    known = [f.name for f in fields(cls)]
    unknown = sorted(map(str, set(value) - set(known)))
    if unknown:
        raise InvalidOptionError(f"{what} {value.get('pattern', '')!r}: unknown key(s) {', '.join(map(repr, unknown))}; "
                                 f"expected some of {', '.join(known)}")
    if "pattern" not in value:
        raise InvalidOptionError(f"{what} {dict(value)!r} needs a pattern")
    return cls(**value)


@dataclass(frozen=True)
class AttentionRule:
    """Bake an attention temperature into query projections (ScaleCrafter and others).

    When a self-attention layer's token count grows from ``tokens`` to ``new_tokens`` (default
    ``tokens·s²``, an image level), its logits are scaled by √(log n' / log n). Multiplying the
    query projection's weight and bias (the tensors matching ``pattern``, e.g. ``*attn1.to_q``)
    by that factor carries the correction in the checkpoint for any loader.
    """

    pattern: str
    tokens: int
    new_tokens: Optional[int] = None

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, str) or not self.pattern:
            raise InvalidOptionError(f"attention rule: pattern must be a non-empty glob, got {self.pattern!r}")
        for what in ("tokens", "new_tokens"):
            value = getattr(self, what)
            if value is not None:
                object.__setattr__(self, what, whole_number(value, f"attention rule {self.pattern!r}: {what}", 2, MAX_TOKENS))

    def factor(self, scale: Scale) -> float:
        """√(log n' / log n), n' = new_tokens or tokens·∏s over two image axes."""
        if self.new_tokens is not None:
            new = self.new_tokens
        else:
            scales = scale if isinstance(scale, tuple) else (scale, scale)
            new = self.tokens * math.prod(scales[-2:])
        return math.sqrt(math.log(new) / math.log(self.tokens))


@dataclass(frozen=True)
class ResizeOptions:
    """Every option of a resize job; one object serves the CLI and the Python API.

    ``scale``: one number or one per spatial axis (applied to the last axes of each kernel).
    ``method``: the method's name, with ``mode``, ``align``, ``coef`` and ``disperse`` beside it,
    or a :class:`~kernelscale.method.Method` (whose fields then replace those five); either way
    they are validated once, here, into :attr:`resize_method`.
    ``coef``: None (the default) means ``"mass"`` for conv kernels and ``"paper"`` — HW/(H'W'),
    DESIGN §5 — for grids.
    ``grids``: ``(name, grid)`` pairs (or a ``{name: grid}`` mapping) declaring Linear weights over a
    flattened grid; a grid is ``(C, H, W)`` (a plain flatten), a :class:`~kernelscale.grid.GridLayout`
    or its text ``"H,W,C:4,4,32"`` (the axis order of the flattened features; :func:`~kernelscale.grid.grid_layout`).
    ``absorb``: globs of layers that take the scale into their stride (DESIGN §5). Everything
    downstream of them sees the original resolution, so when absorb globs are given only the
    absorbing layers, declared grids and tensors matching an include glob change
    (``absorb_only``, resolved to ``bool(absorb)`` unless set).
    ``geometry_only``: re-dilation that keeps the weights and records ``dilation *= s``; it implies
    ``method="dilate"`` (the default ``method`` is ``"dilate"`` then, ``"interp"`` otherwise), and
    another method given with it is refused.
    ``fallback``: a method for the conv kernels the chosen one cannot handle (disperse on an even
    or non-square kernel, dilate or disperse at a non-integer scale): such a layer is resized by
    it, and its plan line and record (``fallback``: the method asked for) say so. None: refused.
    A declared grid under dilate or disperse (which act on conv taps) falls back the same way, to
    interp when None; a fallback that is not interp or pinv is refused for it.
    ``execution``: ``"materialised"`` (the default: resized kernels written out, loadable by any
    framework that sets the recorded geometry) or ``"factored"``: every conv resize that factors
    (interp/taps at integer scales: :mod:`kernelscale.factored_plan`) keeps its weight and
    records a dilation and a prefilter (DESIGN §9); the others are materialised, their reason says why.
    """

    scale: Scale
    method: Union[str, Method, None] = None
    mode: str = "linear"
    align: str = "taps"
    coef: Optional[Coef] = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    absorb: tuple[str, ...] = ()
    grids: tuple[tuple[str, GridLayout], ...] = ()
    layers: tuple[LayerRule, ...] = ()
    geometry_only: bool = False
    disperse: DisperseParams = DisperseParams()
    attention: tuple[AttentionRule, ...] = ()
    absorb_only: Optional[bool] = None
    execution: str = "materialised"
    fallback: Optional[str] = None
    resize_method: Method = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", scale_value(self.scale, "scale"))
        if self.method is None:
            object.__setattr__(self, "method", "dilate" if self.geometry_only else "interp")
        named = self.method.method if isinstance(self.method, Method) else self.method
        if self.geometry_only and named != "dilate":
            raise InvalidOptionError(f"geometry_only=True is re-dilation, which implies method 'dilate'; got method={named!r}: "
                                     "leave method out (or give 'dilate'), or drop geometry_only for a resize by that method")
        if isinstance(self.method, Method):
            given = self.method
            for what in ("method", "mode", "disperse"):
                object.__setattr__(self, what, getattr(given, what))
            object.__setattr__(self, "align", given.align or "taps")
            object.__setattr__(self, "coef", given.coef)
        resize = Method(self.method, self.mode, self.align, self.coef, self.disperse)
        object.__setattr__(self, "resize_method", resize)
        object.__setattr__(self, "disperse", resize.disperse)
        object.__setattr__(self, "coef", resize.coef)
        for what in ("include", "exclude", "absorb"):
            value = getattr(self, what)
            if isinstance(value, str):
                value = (value,)
            object.__setattr__(self, what, tuple(value))
        if self.absorb_only is None:
            object.__setattr__(self, "absorb_only", bool(self.absorb))
        grids = dict(self.grids) if not isinstance(self.grids, Mapping) else self.grids
        object.__setattr__(self, "grids", tuple((str(k), grid_layout(v, f"grid {k!r}")) for k, v in dict(grids).items()))
        layers = tuple(_rule(LayerRule, r, "layer rule") for r in self.layers)
        object.__setattr__(self, "layers", layers)
        attention = tuple(_rule(AttentionRule, r, "attention rule") for r in self.attention)
        object.__setattr__(self, "attention", attention)
        check_choice("execution", self.execution, EXECUTIONS)
        if self.fallback is not None:
            check_choice("fallback", self.fallback, METHODS)

    def to_json(self) -> dict[str, Any]:
        """The options as JSON-able data, for the manifest."""
        return {
            "scale": list(self.scale) if isinstance(self.scale, tuple) else self.scale,
            "method": self.method,
            "mode": self.mode,
            "align": self.align,
            "coef": self.coef,
            "include": list(self.include),
            "exclude": list(self.exclude),
            "absorb": list(self.absorb),
            "grids": {name: grid.to_json() for name, grid in self.grids},
            "layers": [{k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(r).items() if v is not None} for r in self.layers],
            "geometry_only": self.geometry_only,
            "absorb_only": self.absorb_only,
            "fallback": self.fallback,
            "disperse": vars(self.disperse).copy(),
            "attention": [{k: v for k, v in vars(r).items() if v is not None} for r in self.attention],
            "execution": self.execution,
        }


def resize_options(**given: Any) -> ResizeOptions:
    """ResizeOptions from keyword arguments, as the Python API's ``**options`` pass them: a key that
    is not one of its fields raises InvalidOptionError naming it (not Python's TypeError)."""
    known = [f.name for f in fields(ResizeOptions) if f.init]
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise InvalidOptionError(f"unknown option(s) {', '.join(map(repr, unknown))}; expected some of {', '.join(known)}")
    return ResizeOptions(**given)
