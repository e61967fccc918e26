"""Which planned conv resizes run factored (DESIGN §9), and the records that say so.

A plan entry that resizes a conv kernel by ``interp`` with ``align="taps"`` and integer scales
(T2) can keep its weight byte for byte and record the dilation and the prefilter instead
(:class:`~kernelscale.manifest.FactoredRecord`); :func:`factor_entry` turns it into such an entry
(action ``factored``) or says why it stays materialised. ``kernelscale convert --execution
factored`` (through :class:`~kernelscale.plan.ResizeOptions`) and :func:`kernelscale.nn.supersample`
both decide here.

Torch is imported only when an entry is factored (:mod:`kernelscale.layers` builds the prefilter
from the same R the materialised path applies).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Optional

from kernelscale.manifest import Action, ConvRecord, FactoredRecord, Prefilter

if TYPE_CHECKING:  # pragma: no cover
    from kernelscale.layers import FactoredResize
    from kernelscale.plan import TensorPlan


def why_not_factored(record: Optional[object]) -> Optional[str]:
    """None when a record's resize factors; otherwise why it is materialised (one phrase). A
    record that is not a resized conv kernel (a grid, an attention factor, weight norm's g, a
    geometry-only re-dilation) is not a candidate at all: ``"not a resized conv kernel"``."""
    if not isinstance(record, ConvRecord) or record.dilation:
        return "not a resized conv kernel"
    from kernelscale.layers import NotFactorableError

    try:
        factored_resize_of(record)
    except NotFactorableError as exc:
        return str(exc).split(":")[0]
    if record.method == "dilate":  # zero insertion asked for explicitly; geometry_only is its kept-weights form
        return "method 'dilate' asks for zero insertion (geometry_only keeps the weights)"
    if record.absorb:
        return "an absorbing layer (stride·s) does not factor"
    if record.weight_norm is not None or record.spectral_norm is not None:
        return "weight norm's v does not factor"
    if record.half_pixel:
        return "a half-pixel padding does not factor"
    return None


def factored_resize_of(record: ConvRecord) -> "FactoredResize":
    """The :class:`~kernelscale.layers.FactoredResize` of a conv record that factors."""
    from kernelscale.layers import factor_resize

    return factor_resize(record.old_spatial, record.scale, method=record.method, mode=record.mode, align=record.align,
                         coef=record.coef)


def factored_record(record: ConvRecord) -> FactoredRecord:
    """The factored record equal to the conv record ``record`` (which :func:`why_not_factored` accepts)."""
    resize = factored_resize_of(record)
    prefilter = Prefilter(resize.method, resize.mode, resize.align, resize.coef, resize.scales, resize.kernel_shape,
                          tuple(h.size for h in resize.prefilters))
    return FactoredRecord(record.scale, record.old_spatial, record.old_spatial, resize.resized_shape, resize.dilations, prefilter)


def factor_entry(entry: "TensorPlan") -> tuple["TensorPlan", Optional[str]]:
    """``(factored entry, None)`` for a conv resize that factors: action ``factored``, the shape
    kept, no operator (the bytes are copied), a :class:`FactoredRecord`; otherwise ``(entry, why)``
    with ``why`` None for an entry that is not a resized conv kernel at all."""
    if entry.action != Action.RESIZE:
        return entry, None
    why = why_not_factored(entry.record)
    if why == "not a resized conv kernel":
        return entry, None
    if why is not None:
        return replace(entry, reason=f"{entry.reason}; materialised: {why}"), why
    record = factored_record(entry.record)
    taps = "×".join(map(str, record.prefilter.taps))
    reason = f"dilation {'×'.join(map(str, record.dilation))} + {taps} prefilter = k' {'×'.join(map(str, record.resized_spatial))}; {entry.reason}"
    return replace(entry, action=Action.FACTORED, reason=reason, new_shape=entry.shape, record=record, operator=None), None
