"""The manifest (DESIGN §5, docs/format.md): typed records, their JSON, the format version check,
and the one vocabulary of what happens to a tensor or a layer (:class:`Action`).

A converted checkpoint records, per changed tensor, what was done to it: a :class:`ConvRecord`
(a conv kernel, resized or re-dilated), a :class:`GridRecord` (a Linear over a flattened grid), an
:class:`AttentionRecord` (a baked attention temperature) or a :class:`RenormRecord` (weight norm's
g, rescaled for its resized v) or a :class:`FactoredRecord` (DESIGN §9: the kernel kept, a
dilation and a separable prefilter recorded instead of a materialised kernel).

Records are frozen; ``to_json`` gives the documented JSON object, ``from_json`` reads one (keys
a record does not know are ignored, as docs/format.md asks of loaders); ``record[key]`` reads the
documented key of the JSON form. :class:`Manifest` holds the whole object and checks the format
version. Pure: no torch, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any, ClassVar, Mapping, Optional, Union

from kernelscale.errors import InvalidCheckpointError, KernelscaleError
from kernelscale.grid import GridLayout

FORMAT_VERSION = 1


class Action(str, Enum):
    """What happens to a tensor (a plan entry, a file's tensor) or to a layer (the nn report).

    ``copy``: bytes kept; ``cast``: values kept, dtype changed; ``resize``: new values (a conv
    kernel, a grid, a scaled query projection); ``geometry``: values kept, the layer re-dilated;
    ``renorm``: weight norm's g, rescaled for its resized v; ``absorb``: a layer that takes the
    scale into its stride; ``grid``: a Linear whose input grid grew; ``attention``: a baked
    attention temperature; ``pool``: a pooling window scaled; ``factored``: values kept, the layer
    run as a dilated conv after a separable prefilter (DESIGN §9)."""

    COPY = "copy"
    CAST = "cast"
    RESIZE = "resize"
    GEOMETRY = "geometry"
    RENORM = "renorm"
    ABSORB = "absorb"
    GRID = "grid"
    ATTENTION = "attention"
    POOL = "pool"
    FACTORED = "factored"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


Coef = Union[str, float]


def _floats(values: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def _ints(values: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


@dataclass(frozen=True)
class WeightNormLink:
    """On weight norm's v record: its g tensor and weight norm's ``dim`` (None: one norm over all of v)."""

    g: str
    dim: Optional[int]

    def to_json(self) -> dict[str, Any]:
        return {"g": self.g, "dim": self.dim}


@dataclass(frozen=True)
class SpectralNormLink:
    """On a spectral-normed layer's raw weight record: the power iteration's u and v (None where absent)."""

    u: Optional[str]
    v: Optional[str]

    def to_json(self) -> dict[str, Any]:
        return {"u": self.u, "v": self.v}


@dataclass(frozen=True)
class DisperseFit:
    """On a ``disperse`` conv record: new size, probe size m, weight η and the calibration's relative loss."""

    size: int
    probe: int
    eta: float
    relative_loss: Optional[float] = None

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "probe": self.probe, "eta": self.eta, "relative_loss": self.relative_loss}


class _Record:
    """JSON behaviour shared by the records: ``KEYS`` are the JSON keys a record may write,
    ``REQUIRED`` those a manifest's record must hold to be read."""

    kind: ClassVar[str]
    REQUIRED: ClassVar[tuple[str, ...]]
    OPTIONAL_KEYS: ClassVar[tuple[str, ...]] = ()  # written only when set

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """Every JSON key this record may write, ``kind`` first."""
        return ("kind",) + tuple(f.name for f in fields(cls))  # type: ignore[arg-type]

    def __getitem__(self, key: str) -> Any:
        """The documented JSON value of ``key`` (docs/format.md): KeyError for a key not written."""
        return self.to_json()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_json().get(key, default)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.name in self.OPTIONAL_KEYS and value is None:
                continue
            if hasattr(value, "to_json"):
                value = value.to_json()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @property
    def half_pixel(self) -> bool:
        """Whether the layer's new padding has a half-pixel part (a ``centre_offset`` ≠ 0)."""
        return False


@dataclass(frozen=True)
class ConvRecord(_Record):
    """A conv kernel ``(C_out, C_in/groups, *k)`` resized (``dilation`` None) or re-dilated
    (``dilation``: per-axis factor, weights kept); per spatial axis ``scale``, ``old_spatial``,
    ``new_spatial`` and ``centre_offset`` (0 or 0.5 output pixels, the half-pixel part of the
    padding); ``pad_extra`` the side of the extra pixel where an offset is non-zero; ``absorb`` a
    layer that takes the scale into its stride; ``fallback`` the method the plan asked for where it
    could not handle this layer (``method`` is then the fallback that ran) (docs/format.md, "kind: conv")."""

    kind: ClassVar[str] = "conv"
    REQUIRED: ClassVar[tuple[str, ...]] = ("scale", "old_spatial", "new_spatial")
    OPTIONAL_KEYS: ClassVar[tuple[str, ...]] = ("pad_extra", "disperse", "weight_norm", "spectral_norm", "fallback")

    method: Optional[str]
    mode: Optional[str]
    align: Optional[str]
    coef: Optional[Coef]
    scale: tuple[float, ...]
    old_spatial: tuple[int, ...]
    new_spatial: tuple[int, ...]
    centre_offset: tuple[float, ...]
    absorb: bool = False
    dilation: Optional[tuple[int, ...]] = None
    pad_extra: Optional[str] = None
    disperse: Optional[DisperseFit] = None
    weight_norm: Optional[WeightNormLink] = None
    spectral_norm: Optional[SpectralNormLink] = None
    fallback: Optional[str] = None

    @property
    def half_pixel(self) -> bool:
        return any(self.centre_offset)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "ConvRecord":
        old = _ints(data["old_spatial"])
        wn, sn, dp = data.get("weight_norm"), data.get("spectral_norm"), data.get("disperse")
        return cls(
            method=data.get("method"), mode=data.get("mode"), align=data.get("align"), coef=data.get("coef"),
            scale=_floats(data["scale"]), old_spatial=old, new_spatial=_ints(data["new_spatial"]),
            centre_offset=_floats(data.get("centre_offset") or [0.0] * len(old)), absorb=bool(data.get("absorb")),
            dilation=_ints(data["dilation"]) if data.get("dilation") else None, pad_extra=data.get("pad_extra"),
            disperse=DisperseFit(**{k: dp.get(k) for k in ("size", "probe", "eta", "relative_loss")}) if dp else None,
            weight_norm=WeightNormLink(wn["g"], wn.get("dim")) if wn else None,
            spectral_norm=SpectralNormLink(sn.get("u"), sn.get("v")) if sn else None,
            fallback=data.get("fallback"),
        )


@dataclass(frozen=True)
class GridRecord(_Record):
    """A Linear ``(out, cells)`` over a flattened ``grid`` (C, *spatial; sizes in that order): each
    channel's map resized by cells (or pinv) to ``new_spatial``. ``layout``: the axis order of the
    flattened features where it is not C then the spatial axes (e.g. ``"HWC"``, channels-last;
    docs/format.md, "kind: grid"); ``fallback``: the method the plan asked for where it does not
    apply to a grid (dilate, disperse; ``method`` is then the one that ran)."""

    kind: ClassVar[str] = "grid"
    REQUIRED: ClassVar[tuple[str, ...]] = ("scale", "grid", "old_spatial", "new_spatial")
    OPTIONAL_KEYS: ClassVar[tuple[str, ...]] = ("weight_norm", "layout", "fallback")

    method: Optional[str]
    mode: Optional[str]
    align: Optional[str]
    coef: Optional[Coef]
    scale: tuple[float, ...]
    grid: tuple[int, ...]
    old_spatial: tuple[int, ...]
    new_spatial: tuple[int, ...]
    centre_offset: tuple[float, ...] = (0.0, 0.0)
    absorb: bool = False
    dilation: None = None
    weight_norm: Optional[WeightNormLink] = None
    layout: Optional[str] = None
    fallback: Optional[str] = None

    @property
    def grid_layout(self) -> GridLayout:
        """The declared grid in flattened order (:class:`~kernelscale.grid.GridLayout`)."""
        if self.layout:
            if set(self.layout) - set("CDHWL"):
                raise InvalidCheckpointError(f"grid layout {self.layout!r}: letters C, D, H, W or L only")
            letters = "C" + "".join(sorted(self.layout.replace("C", ""), key="DHWL".index))
        else:
            letters = {2: "CL", 3: "CHW", 4: "CDHW"}.get(len(self.grid), "C")
        sizes = dict(zip(letters, self.grid))
        layout = self.layout or letters
        if len(letters) != len(self.grid) or set(layout) != set(letters):
            raise InvalidCheckpointError(f"grid record: layout {self.layout!r} does not fit grid {list(self.grid)}")
        return GridLayout(layout, tuple(sizes[a] for a in layout))

    @property
    def new_grid_layout(self) -> "GridLayout":
        """The grid after the resize, in the same layout."""
        return self.grid_layout.with_spatial(self.new_spatial)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "GridRecord":
        wn = data.get("weight_norm")
        return cls(method=data.get("method"), mode=data.get("mode"), align=data.get("align"), coef=data.get("coef"),
                   scale=_floats(data["scale"]), grid=_ints(data["grid"]),  # type: ignore[arg-type]
                   old_spatial=_ints(data["old_spatial"]), new_spatial=_ints(data["new_spatial"]),
                   centre_offset=(0.0,) * len(data["old_spatial"]),
                   weight_norm=WeightNormLink(wn["g"], wn.get("dim")) if wn else None, layout=data.get("layout"),
                   fallback=data.get("fallback"))


@dataclass(frozen=True)
class AttentionRecord(_Record):
    """A query projection's weight or bias multiplied by ``factor`` = √(log n′ / log n), n =
    ``tokens``, n′ = ``new_tokens`` (None: n·s_H·s_W) (docs/format.md, "kind: attention")."""

    kind: ClassVar[str] = "attention"
    REQUIRED: ClassVar[tuple[str, ...]] = ("factor",)

    factor: float
    tokens: Optional[int] = None
    new_tokens: Optional[int] = None
    scale: tuple[float, ...] = ()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "AttentionRecord":
        return cls(float(data["factor"]), data.get("tokens"), data.get("new_tokens"), _floats(data.get("scale") or ()))


@dataclass(frozen=True)
class RenormRecord(_Record):
    """Weight norm's g, rescaled for its resized ``v`` (norms over every axis of v but ``dim``;
    None: one norm over all of v); its shape is kept (docs/format.md, "kind: weight_norm")."""

    kind: ClassVar[str] = "weight_norm"
    REQUIRED: ClassVar[tuple[str, ...]] = ("v", "dim")

    v: str
    dim: Optional[int]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "RenormRecord":
        return cls(str(data["v"]), data["dim"])


@dataclass(frozen=True)
class Prefilter:
    """The separable prefilter c·h_s of a factored layer (DESIGN §9), as the arguments of
    :func:`kernelscale.layers.factor_resize` that rebuild it: the resize ``method`` (``interp``),
    the interpolation kernel's ``mode``, ``align`` (``taps``), ``coef``, ``scale`` per spatial
    axis and the original ``kernel_shape``; ``taps`` is the filter's length per axis (1 where the
    axis is not resized), for the reader's information."""

    method: str
    mode: str
    align: str
    coef: Coef
    scale: tuple[float, ...]
    kernel_shape: tuple[int, ...]
    taps: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "mode": self.mode, "align": self.align, "coef": self.coef, "scale": list(self.scale),
                "kernel_shape": list(self.kernel_shape), "taps": list(self.taps)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Prefilter":
        return cls(str(data["method"]), str(data["mode"]), str(data["align"]), data["coef"], _floats(data["scale"]),
                   _ints(data["kernel_shape"]), _ints(data.get("taps") or ()))

    def options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`kernelscale.layers.factor_resize`."""
        return {"kernel_shape": self.kernel_shape, "scale": self.scale, "method": self.method, "mode": self.mode,
                "align": self.align, "coef": self.coef}


@dataclass(frozen=True)
class FactoredRecord(_Record):
    """DESIGN §9: a conv kernel kept byte for byte (``old_spatial`` = ``new_spatial``, the stored
    shape), run on input supersampled by ``scale`` as the depthwise ``prefilter`` followed by the
    conv at its dilation times ``dilation`` (per axis); equal (T2) to the interp/taps resize of
    the kernel to ``resized_spatial`` (docs/format.md, "kind: factored").
    :meth:`materialised` is the conv record of that equivalent resize."""

    kind: ClassVar[str] = "factored"
    REQUIRED: ClassVar[tuple[str, ...]] = ("scale", "old_spatial", "new_spatial", "resized_spatial", "dilation", "prefilter")

    scale: tuple[float, ...]
    old_spatial: tuple[int, ...]
    new_spatial: tuple[int, ...]
    resized_spatial: tuple[int, ...]
    dilation: tuple[int, ...]
    prefilter: Prefilter

    # what generic readers of conv records ask of any record with a kernel
    absorb: ClassVar[bool] = False
    pad_extra: ClassVar[None] = None

    @property
    def method(self) -> str:
        return self.prefilter.method

    @property
    def mode(self) -> str:
        return self.prefilter.mode

    @property
    def align(self) -> str:
        return self.prefilter.align

    @property
    def coef(self) -> Coef:
        return self.prefilter.coef

    @property
    def centre_offset(self) -> tuple[float, ...]:
        return (0.0,) * len(self.old_spatial)

    def materialised(self) -> ConvRecord:
        """The record of the materialised resize this layer equals (``new_spatial`` = ``resized_spatial``)."""
        p = self.prefilter
        return ConvRecord(p.method, p.mode, p.align, p.coef, self.scale, self.old_spatial, self.resized_spatial,
                          self.centre_offset)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "FactoredRecord":
        return cls(_floats(data["scale"]), _ints(data["old_spatial"]), _ints(data["new_spatial"]),
                   _ints(data["resized_spatial"]), _ints(data["dilation"]), Prefilter.from_json(data["prefilter"]))


Record = Union[ConvRecord, GridRecord, AttentionRecord, RenormRecord, FactoredRecord]

def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _nonneg_ints(value: Any) -> bool:
    return isinstance(value, list) and all(_is_int(v) and v >= 0 for v in value)


def _numbers(value: Any) -> bool:
    return isinstance(value, list) and all(_is_number(v) for v in value)


# The type of every record field a reader uses (docs/format.md); None is allowed where noted.
FIELD_TYPES: dict[str, tuple[Any, str, bool]] = {
    "kind": (lambda v: isinstance(v, str), "a string", False),
    "scale": (lambda v: _numbers(v) and len(v) > 0 and all(s > 0 for s in v), "a list of positive numbers", False),
    "old_spatial": (lambda v: _nonneg_ints(v) and all(d > 0 for d in v), "a list of positive integers", False),
    "new_spatial": (lambda v: _nonneg_ints(v) and all(d > 0 for d in v), "a list of positive integers", False),
    "grid": (lambda v: _nonneg_ints(v) and 2 <= len(v) <= 4 and min(v) > 0, "[C, *spatial] of 2 to 4 positive integers", False),
    "layout": (lambda v: isinstance(v, str), "a string or null", True),
    "factor": (_is_number, "a finite number", False),
    "v": (lambda v: isinstance(v, str), "a tensor name", False),
    "dim": (_is_int, "an integer or null", True),
    "dilation": (lambda v: _nonneg_ints(v) and all(d > 0 for d in v), "a list of positive integers or null", True),
    "centre_offset": (_numbers, "a list of numbers or null", True),
    "method": (lambda v: isinstance(v, str), "a string or null", True),
    "mode": (lambda v: isinstance(v, str), "a string or null", True),
    "align": (lambda v: isinstance(v, str), "a string or null", True),
    "pad_extra": (lambda v: isinstance(v, str), "a string or null", True),
    "fallback": (lambda v: isinstance(v, str), "a string or null", True),
    "absorb": (lambda v: isinstance(v, bool), "true, false or null", True),
    "weight_norm": (lambda v: isinstance(v, dict) and isinstance(v.get("g"), str) and (v.get("dim") is None or _is_int(v["dim"])),
                    "an object {\"g\": g's name, \"dim\": an axis of v or null}, or null", True),
    "resized_spatial": (lambda v: _nonneg_ints(v) and all(d > 0 for d in v), "a list of positive integers", False),
    "prefilter": (lambda v: _prefilter_ok(v), "an object {method, mode, align, coef, scale, kernel_shape, taps} "
                  "(strings, a coefficient, positive scales, positive kernel sizes)", False),
}


def _prefilter_ok(value: Any) -> bool:
    if not isinstance(value, dict) or any(k not in value for k in ("method", "mode", "align", "coef", "scale", "kernel_shape")):
        return False
    coef = value["coef"]
    return (all(isinstance(value[k], str) for k in ("method", "mode", "align"))
            and (isinstance(coef, str) or (_is_number(coef) and coef > 0))
            and _numbers(value["scale"]) and len(value["scale"]) > 0 and all(s > 0 for s in value["scale"])
            and _nonneg_ints(value["kernel_shape"]) and len(value["kernel_shape"]) > 0 and min(value["kernel_shape"]) > 0
            and (value.get("taps") is None or _nonneg_ints(value["taps"])))


# The kinds a manifest read from a file may hold (format version 1; ``factored`` came within it:
# a reader that predates it refuses the unknown kind, which is what it must do — docs/format.md).
READ_KINDS: dict[str, Any] = {r.kind: r for r in (ConvRecord, GridRecord, AttentionRecord, RenormRecord, FactoredRecord)}


def record_from_json(data: Mapping[str, Any]) -> Record:
    """The typed record of one JSON record (its ``kind`` one of :data:`READ_KINDS`)."""
    return READ_KINDS[data["kind"]].from_json(data)


def as_record(record: Union[Record, Mapping[str, Any]], name: str = "record") -> Record:
    """``record`` itself when typed; a JSON record (docs/format.md) read into its class, after
    :func:`check_record` (InvalidCheckpointError naming ``name`` for an unknown kind or a missing key)."""
    if isinstance(record, _Record):
        return record  # type: ignore[return-value]
    check_record(name, record, "record")
    return record_from_json(record)


def check_record(tensor: str, data: Any, where: object) -> None:
    """InvalidCheckpointError naming ``where`` and the tensor unless ``data`` is a record this
    kernelscale reads: a known ``kind`` with every required key, each field a reader uses of the
    type :data:`FIELD_TYPES` gives it."""
    kind = data.get("kind") if isinstance(data, dict) else None
    if not isinstance(kind, str) or kind not in READ_KINDS:
        raise InvalidCheckpointError(f"{where}: manifest record of {tensor!r} has unknown kind {kind!r} "
                                     f"(this kernelscale reads {', '.join(READ_KINDS)})")
    lacking = [k for k in READ_KINDS[kind].REQUIRED if k not in data]
    if lacking:
        raise InvalidCheckpointError(f"{where}: manifest record of {tensor!r} lacks {', '.join(lacking)}")
    for key, (valid, expected, nullable) in FIELD_TYPES.items():
        if key not in data or (nullable and data[key] is None):
            continue
        if not valid(data[key]):
            raise InvalidCheckpointError(f"{where}: manifest record of {tensor!r}: {key} must be {expected}, got {data[key]!r}")
    if kind == GridRecord.kind:
        spatial = len(data["old_spatial"])
        if len(data["grid"]) != spatial + 1 or len(data["new_spatial"]) != spatial:
            raise InvalidCheckpointError(f"{where}: manifest record of {tensor!r}: grid must be [C, *spatial] with one size per "
                                         f"axis of old_spatial {data['old_spatial']!r}, got {data['grid']!r}")
        try:
            GridRecord.from_json(data).grid_layout
        except KernelscaleError as exc:
            raise InvalidCheckpointError(f"{where}: manifest record of {tensor!r}: {exc}") from None


def check_records(data: Any, where: object, key: str = "kernelscale") -> None:
    """InvalidCheckpointError naming ``where`` unless ``data`` (the parsed JSON of metadata ``key``)
    has a ``tensors`` table of records :func:`check_record` accepts, whatever its format version
    (what ``inspect`` needs to show a manifest)."""
    if not isinstance(data, dict) or not isinstance(data.get("tensors"), dict):
        raise InvalidCheckpointError(f"{where}: the {key!r} metadata is not a kernelscale manifest (no 'tensors' table)")
    if "options" in data and not isinstance(data["options"], dict):
        raise InvalidCheckpointError(f"{where}: the manifest's 'options' is a {type(data['options']).__name__}, not an object")
    for tensor, record in data["tensors"].items():
        check_record(tensor, record, where)


def check_manifest(data: Any, where: object, key: str = "kernelscale") -> None:
    """InvalidCheckpointError naming ``where`` unless ``data`` (the parsed JSON of metadata
    ``key``) is a manifest this kernelscale reads: format version :data:`FORMAT_VERSION` and
    records :func:`check_records` accepts."""
    if isinstance(data, dict) and isinstance(data.get("tensors"), dict):
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise InvalidCheckpointError(
                f"{where}: manifest format version {version!r} is not one this kernelscale reads ({FORMAT_VERSION}); "
                "convert the checkpoint again or upgrade kernelscale")
    check_records(data, where, key)


@dataclass(frozen=True)
class Manifest:
    """A converted checkpoint's manifest: ``options`` (the run's, as JSON: for the record, not
    needed to load), ``tensors`` (name → record of every changed tensor), the writing tool's
    version, and the format version (docs/format.md, "Top level")."""

    options: Mapping[str, Any]
    tensors: Mapping[str, Record]
    tool_version: str
    format_version: int = FORMAT_VERSION
    tool: str = "kernelscale"

    TOP_KEYS: ClassVar[tuple[str, ...]] = ("format_version", "tool", "tool_version", "options", "tensors")

    def to_json(self) -> dict[str, Any]:
        return {"format_version": self.format_version, "tool": self.tool, "tool_version": self.tool_version,
                "options": dict(self.options), "tensors": {name: r.to_json() for name, r in self.tensors.items()}}

    @classmethod
    def from_json(cls, data: Any, where: object = "manifest") -> "Manifest":
        """The typed manifest of parsed JSON; InvalidCheckpointError naming ``where`` for what
        :func:`check_manifest` refuses."""
        check_manifest(data, where)
        tensors = {name: record_from_json(r) for name, r in data["tensors"].items()}
        return cls(dict(data.get("options") or {}), tensors, str(data.get("tool_version", "")), data["format_version"],
                   str(data.get("tool", "kernelscale")))


__all__ = [
    "Action", "AttentionRecord", "ConvRecord", "DisperseFit", "FORMAT_VERSION", "FactoredRecord", "GridRecord", "Manifest",
    "Prefilter", "READ_KINDS", "Record", "RenormRecord", "SpectralNormLink", "WeightNormLink", "as_record", "check_manifest", "check_records",
    "check_record", "record_from_json",
]
