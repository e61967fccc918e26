"""A resize method: one frozen, validated description of how a tensor is resized (DESIGN §3).

This is where user choices enter and are checked, once: :class:`Method` (method, mode, align,
coef, disperse settings), the scale (:func:`scale_value` and :func:`axis_scales`, the one scale
normaliser) and :func:`check_choice` (the one check of a named choice). Everything downstream
(the plan, the operators of :mod:`kernelscale.transforms`, the executors) receives these values
typed and never re-parses them from strings.

Pure: no torch, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from kernelscale.errors import InvalidOptionError

METHODS = ("interp", "dilate", "pinv", "disperse")
MODES = ("nearest", "linear", "cubic", "lanczos3")
ALIGNS = ("taps", "cells")
COEF_MODES = ("mass", "paper")
# How a resized conv runs: its kernel materialised, or factored into a dilation and a prefilter (DESIGN §9).
EXECUTIONS = ("materialised", "factored")

Coef = Union[str, float]
# One number for every spatial axis, or one per axis (applied to the last axes of a kernel).
Scale = Union[float, tuple[float, ...]]

_NUMBER = (int, float, np.integer, np.floating)

MAX_SCALE = 65536.0
"""The largest scale (and 1/MAX_SCALE the smallest): past it every kernel axis of 2 or more taps
would exceed the tap limit (:data:`kernelscale.transforms.MAX_TAPS`, also 65536), so a larger
scale is a typo (1e9 for 1.9), refused where it enters rather than by each operator built from it."""

MAX_ETA = 1e6
"""The largest disperse weight η: past it the pixel term alone decides (the kernel zero-padded),
and η² overflows the least-squares system's float64 long before η reaches float's range."""


def _as_float(value: object) -> float:
    """``float(value)`` with an integer too large for a float (a 400-digit number) read as inf."""
    try:
        return float(value)  # type: ignore[arg-type]
    except OverflowError:
        return math.inf


def whole_number(value: object, what: str, minimum: int, maximum: Optional[int] = None) -> int:
    """``value`` as an int in ``[minimum, maximum]``: an int or an integral float (from JSON or
    TOML), not a bool, a string, NaN or ±inf. InvalidOptionError naming ``what`` and the value."""
    bound = f" (at most {maximum})" if maximum is not None else ""
    if not isinstance(value, bool) and isinstance(value, _NUMBER):
        number = _as_float(value)
        if math.isfinite(number) and number.is_integer():
            whole = int(value)  # type: ignore[arg-type]
            if whole >= minimum and (maximum is None or whole <= maximum):
                return whole
    raise InvalidOptionError(f"{what} must be an integer >= {minimum}, got {_short(value)}{bound}")


def check_choice(what: str, value: object, choices: Sequence[str]) -> None:
    """InvalidOptionError naming ``what``, the value and the choices unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise InvalidOptionError(f"unknown {what} {value!r}; expected one of {', '.join(choices)}")


def number_text(value: float) -> str:
    """A number as a user would type it: ``0``, ``-1``, ``1000000000``, ``0.25``, ``nan``."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def validate_scale(scale: object, *, name: str = "scale") -> float:
    """Return ``scale`` as a float, or raise InvalidOptionError naming it when not finite and > 0."""
    if isinstance(scale, bool) or not isinstance(scale, _NUMBER):
        raise InvalidOptionError(f"{name}: scale must be a number, got {scale!r}")
    value = _as_float(scale)
    if not math.isfinite(value) or value <= 0:
        raise InvalidOptionError(f"{name}: scale must be finite and > 0, got {_short(scale)}")
    if not 1 / MAX_SCALE <= value <= MAX_SCALE:
        raise InvalidOptionError(f"{name}: scale must be between 1/{MAX_SCALE:.0f} and {MAX_SCALE:.0f} "
                                 f"(limit {MAX_SCALE:.0f} taps per axis), got {number_text(value)}")
    return value


def _short(value: object) -> str:
    """A value for a message, a 400-digit number cut to its first and last digits."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:16]}…{text[-8:]} ({len(text)} characters)"


def validate_coef(coef: object) -> Coef:
    """Return ``coef`` normalised: ``"mass"``, ``"paper"`` or a finite float > 0.

    The coefficient scales the resized kernel (≈ 1/∏s): 0 would zero every kernel and a negative
    one flip its sign, so both are refused (InvalidOptionError), as are nan and ±inf.
    """
    if isinstance(coef, str):
        check_choice("coef", coef, COEF_MODES)
        return coef
    if isinstance(coef, bool) or not isinstance(coef, _NUMBER):
        raise InvalidOptionError(f"coef must be 'mass', 'paper' or a number, got {coef!r}")
    value = _as_float(coef)
    if not math.isfinite(value) or value <= 0:
        raise InvalidOptionError(f"coef must be a finite number > 0, got {number_text(value) if math.isfinite(value) or value != value else _short(coef)}")
    return value


def scale_value(scale: Any, where: str = "scale") -> Scale:
    """The scale as it enters (a number, 1 to 3 numbers, or text ``"2"`` / ``"2,1.5"`` from a command
    line), validated: a float, or a tuple of 1 to 3 floats, each finite and > 0.
    InvalidOptionError naming ``where`` and the value otherwise."""
    if isinstance(scale, str):
        try:
            values = tuple(float(p.strip()) for p in scale.split(","))
        except ValueError:
            raise InvalidOptionError(f"{where} {scale!r}: expected a number or comma-separated numbers, e.g. 2 or 2,1.5") from None
        scale = values[0] if len(values) == 1 else values
    if isinstance(scale, (list, tuple, np.ndarray)):
        if not 1 <= len(scale) <= 3:
            raise InvalidOptionError(f"{where}: give 1 to 3 scales, got {tuple(scale)!r}")
        return tuple(validate_scale(s, name=where) for s in scale)
    return validate_scale(scale, name=where)


def axis_scales(scale: Any, ndim: int, *, name: str = "scale", trailing: bool = False) -> tuple[float, ...]:
    """One scale per spatial axis of a ``ndim``-axis kernel (or grid): a number is repeated; a
    sequence must have ``ndim`` entries, or, with ``trailing`` (a job's scale applied to every
    kernel: DESIGN §5), at least ``ndim``, of which the last ``ndim`` apply. A one-entry sequence
    counts as a number. InvalidOptionError naming ``name`` otherwise."""
    if isinstance(scale, (list, tuple, np.ndarray)):
        values = tuple(validate_scale(s, name=name) for s in scale)
        if len(values) == 1:
            return values * ndim
        if len(values) == ndim or (trailing and len(values) > ndim):
            return values[len(values) - ndim:]
        layer = "a kernel with " if trailing else ""
        raise InvalidOptionError(f"{name}: {len(values)} scales given for {layer}{ndim} spatial axes: {values!r}")
    return (validate_scale(scale, name=name),) * ndim


@dataclass(frozen=True)
class DisperseParams:
    """Settings of method ``disperse``: new kernel size (default (k−1)s+1), probe size m, weight η."""

    size: Optional[int] = None
    probe: int = 7
    eta: float = 0.05

    def __post_init__(self) -> None:
        if self.size is not None:
            object.__setattr__(self, "size", whole_number(self.size, "disperse size", 1, int(MAX_SCALE)))
        object.__setattr__(self, "probe", whole_number(self.probe, "disperse probe", 2, int(MAX_SCALE)))
        eta = self.eta
        if isinstance(eta, bool) or not isinstance(eta, _NUMBER) or not 0 <= _as_float(eta) <= MAX_ETA:
            raise InvalidOptionError(f"disperse eta must be a number >= 0 and <= {MAX_ETA:g}, got {_short(eta)}")


@dataclass(frozen=True)
class Method:
    """How a tensor is resized (DESIGN §3): ``method`` (interp, dilate, pinv, disperse), ``mode``
    (the interpolation kernel), ``align`` (taps or cells), ``coef`` (mass, paper or a float > 0)
    and the ``disperse`` settings. Validated on construction (InvalidOptionError naming the bad
    value); frozen, hashable, so operators built from it are cached.

    ``align`` and ``coef`` left None mean "the default for what is resized": taps and mass for a
    conv kernel, cells and paper (HW/(H'W')) for a Linear over a grid (DESIGN §5);
    :meth:`for_kernel` and :meth:`for_grid` resolve them.
    """

    method: str = "interp"
    mode: str = "linear"
    align: Optional[str] = None
    coef: Optional[Coef] = None
    disperse: DisperseParams = DisperseParams()

    def __post_init__(self) -> None:
        check_choice("method", self.method, METHODS)
        check_choice("mode", self.mode, MODES)
        if self.align is not None:
            check_choice("align", self.align, ALIGNS)
        if self.coef is not None:
            object.__setattr__(self, "coef", validate_coef(self.coef))
        if isinstance(self.disperse, Mapping):
            unknown = sorted(set(self.disperse) - {"size", "probe", "eta"})
            if unknown:
                raise InvalidOptionError(f"disperse: unknown key(s) {', '.join(map(repr, unknown))}; expected some of size, probe, eta")
            object.__setattr__(self, "disperse", DisperseParams(**self.disperse))
        elif not isinstance(self.disperse, DisperseParams):
            raise InvalidOptionError(f"disperse must be DisperseParams or a mapping of its fields, got {self.disperse!r}")

    def for_kernel(self) -> "Method":
        """This method with the conv-kernel defaults filled in (align taps, coef mass)."""
        return replace(self, align=self.align or "taps", coef="mass" if self.coef is None else self.coef)

    def for_grid(self) -> "Method":
        """This method with the grid defaults filled in (align cells, coef paper)."""
        return replace(self, align=self.align or "cells", coef="paper" if self.coef is None else self.coef)

    def overridden(self, **fields: Any) -> "Method":
        """A copy with the fields given and not None replaced (a layer rule's overrides)."""
        fields = {k: v for k, v in fields.items() if v is not None}
        return replace(self, **fields) if fields else self

    @property
    def label(self) -> str:
        """``method/mode/align`` as the plan describes it: the fields the resize applies (:meth:`applied`)."""
        return self.applied().label

    def applied(self) -> "AppliedResize":
        """What a resize by this method really applies, field by field (DESIGN §3), as its record
        states it (docs/format.md); ``align`` and ``coef`` left None take the conv-kernel defaults.

        - ``interp``: mode, align and coef as given.
        - ``dilate``: zero insertion R[s·t, t] = 1: no interpolation kernel (mode None), the taps
          centred (align ``taps``, whatever was asked), no coefficient (coef None) unless a number
          was given, which is folded into the kernel (coef that number).
        - ``pinv``: R = pinv(Bᵀ), B the cells upsampler of ``mode``: mode kept, align ``cells``
          (k′ = round(k·s)), no coefficient (coef None: ⟨R w, B x⟩ = ⟨w, x⟩ fixes the scale).
        - ``disperse``: a least-squares fit: mode None, align ``taps`` (a centred kernel), coef None.
        """
        align = self.align or "taps"
        coef: Optional[Coef] = "mass" if self.coef is None else self.coef
        if self.method == "dilate":
            return AppliedResize("dilate", None, "taps", None if isinstance(coef, str) else coef)
        if self.method == "pinv":
            return AppliedResize("pinv", self.mode, "cells", None)
        if self.method == "disperse":
            return AppliedResize("disperse", None, "taps", None)
        return AppliedResize(self.method, self.mode, align, coef)


@dataclass(frozen=True)
class AppliedResize:
    """The fields of a resize as it is applied and recorded (:meth:`Method.applied`): ``mode`` None
    where no interpolation kernel enters (dilate, disperse), ``coef`` None where no coefficient
    is folded into the weights (dilate without a number, pinv, disperse)."""

    method: str
    mode: Optional[str]
    align: str
    coef: Optional[Coef]

    @property
    def label(self) -> str:
        """``method/mode/align`` without the fields that do not apply: ``interp/linear/taps``, ``dilate/taps``."""
        return "/".join(v for v in (self.method, self.mode, self.align) if v)


def method_of(method: Union[str, Method, None] = None, *, mode: Any = None, align: Any = None, coef: Any = None,
              disperse: Any = None) -> Method:
    """The :class:`Method` a public function was called with: ``method`` itself when it is one (then
    none of the other keywords may be given), else a Method built from the keywords (the convenience
    form ``method="interp", mode="cubic"``). None keywords take the Method's defaults."""
    if isinstance(method, Method):
        given = [k for k, v in (("mode", mode), ("align", align), ("coef", coef), ("disperse", disperse)) if v is not None]
        if given:
            raise InvalidOptionError(f"give either method=Method(...) or the keywords {', '.join(given)}, not both")
        return method
    fields = {k: v for k, v in (("method", method), ("mode", mode), ("align", align), ("coef", coef), ("disperse", disperse))
              if v is not None}
    return Method(**fields)
