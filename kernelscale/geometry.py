"""Layer geometry: how a conv's or pool's kernel size, padding, stride and dilation change when
the layer runs on input supersampled by s (DESIGN §3 geometry rule, §4 strided and transposed
layers, §5 records).

Pure: integers and floats in, integers and floats out; no torch modules and no tensors. This is the
one home of the geometry rule p' = (k'−1)·d'/2 − s·((k−1)·d/2 − p) and of what follows from it:
asymmetric (before, after) pads, strided and transposed convs, absorbing layers, re-dilation,
pooling windows, and the output-size check (out'(s·L) = s·out(L)). :func:`kernelscale.resize.resize_conv`,
the nn adapter (:mod:`kernelscale.nn`), the converter's loading notes and ``verify`` all use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from kernelscale.errors import GeometryError, InvalidOptionError
from kernelscale.manifest import ConvRecord, FactoredRecord, Record
from kernelscale.method import axis_scales
from kernelscale.transforms import axis_size

IntOrTuple = Union[int, Sequence[int]]
# A layer's padding as a user gives it: "same", "valid", one number, or one per axis.
PaddingSpec = Union[str, float, Sequence[float]]
# A reported padding of one axis: an int, or (before, after) when the layer pads asymmetrically.
Padding = Union[int, tuple[int, int]]

# Input lengths L = σ·m on which a layer's output size is checked (out'(s·L) = s·out(L)): for such
# L the output is m plus a constant once the window fits, so a few m suffice; m where the window
# does not fit yet are skipped.
_SIZE_CHECK_MULTIPLES = range(4, 12)


@dataclass(frozen=True)
class ConvGeometry:
    """Per spatial axis: kernel size, padding (exact, possibly fractional), stride, dilation."""

    kernel_size: tuple[int, ...]
    padding: tuple[float, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]

    def integer_padding(self, name: str = "layer") -> tuple[int, ...]:
        """The padding as integers; GeometryError naming the layer when one is fractional or < 0."""
        out = []
        for p in self.padding:
            if p < 0 or abs(p - round(p)) > 1e-9:
                raise GeometryError(
                    f"{name}: the new padding would be {self.padding!r}; a conv padding must be a "
                    "non-negative integer (choose align='taps', another scale, or round explicitly)"
                )
            out.append(int(round(p)))
        return tuple(out)


def as_tuple(value: IntOrTuple, ndim: int, what: str, name: str) -> tuple[int, ...]:
    """``value`` (one int or one per axis) as ``ndim`` ints; InvalidOptionError naming ``name`` otherwise."""
    given = value
    values = (value,) * ndim if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else value
    if not isinstance(values, (tuple, list)) or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        raise InvalidOptionError(f"{name}: {what} must be an integer or one integer per axis, got {given!r}")
    values = tuple(int(v) for v in values)
    if len(values) != ndim:
        raise InvalidOptionError(f"{name}: {what} {values!r} does not have {ndim} entries")
    if what in ("stride", "dilation") and min(values) < 1:
        raise InvalidOptionError(f"{name}: {what} must be >= 1 on every axis, got {given!r}")
    return values


def conv_padding(padding: PaddingSpec, kernel: Sequence[int], dilation: Sequence[int], stride: Sequence[int],
                   name: str) -> tuple[float, ...]:
    """Per-axis padding as PyTorch's conv takes it: ``"valid"`` (0), ``"same"`` (stride 1 only;
    d·(k−1)/2 per axis), a number, or one number per axis.

    ``"same"`` with an odd extent d·(k−1) (an even kernel) is refused: PyTorch pads it
    asymmetrically, ⌊d(k−1)/2⌋ before, so its windows sit half an input pixel off centre, and
    that offset must scale with the layer (before' = (k'−1)d/2 − s/2, after' = d(k'−1) −
    before'); a symmetric padding cannot say so, and the mean d(k−1)/2 would drop the offset:
    s/2 output pixels of shift (measured: a 4-tap conv at s = 2 on a smooth signal is off by 0.044
    with the mean, 0.0006 with the asymmetric pads).
    """
    ndim = len(kernel)
    if isinstance(padding, str):
        if padding == "valid":
            return (0.0,) * ndim
        if padding == "same":
            if any(st != 1 for st in stride):
                raise InvalidOptionError(f"{name}: padding='same' needs stride 1 (as in PyTorch), got stride {tuple(stride)!r}")
            odd = [(k, d) for k, d in zip(kernel, dilation) if d * (k - 1) % 2 == 1]
            if odd:
                k, d = odd[0]
                raise GeometryError(
                    f"{name}: padding='same' on a {k}-tap axis (dilation {d}) pads {d * (k - 1) // 2} before and "
                    f"{d * (k - 1) - d * (k - 1) // 2} after, half a pixel off centre, which a symmetric padding cannot "
                    "express; resize the weight with resize_kernel and pad the input yourself")
            return tuple(d * (k - 1) / 2 for k, d in zip(kernel, dilation))
        raise InvalidOptionError(f"{name}: padding must be 'same', 'valid', a number or one per axis, got {padding!r}")
    number = (int, float, np.integer, np.floating)
    values = (padding,) * ndim if isinstance(padding, number) else tuple(padding) if isinstance(padding, Sequence) else ()
    if len(values) != ndim or any(isinstance(p, bool) or not isinstance(p, number) or not math.isfinite(p) or p < 0 for p in values):
        raise InvalidOptionError(f"{name}: padding must be 'same', 'valid' or {ndim} non-negative number(s), got {padding!r}")
    return tuple(float(p) for p in values)


def new_padding(k: int, k_new: int, scale: float, padding: float, dilation: int = 1, dilation_new: int = 1) -> float:
    """DESIGN §3 geometry rule for one axis: keep the window-centre offset, scaled.

    δ = (k−1)·d/2 − p in input pixels; p' = (k'−1)·d'/2 − s·δ in output pixels. Also right for
    a stride-1 transposed conv (its equivalent conv has padding (k−1)d − p, and the rule is
    symmetric under that map). "Same" convs (δ = 0) stay "same".
    """
    delta = (k - 1) * dilation / 2 - padding
    return (k_new - 1) * dilation_new / 2 - scale * delta


def integer_factor(s: float, name: str, what: str) -> int:
    """``s`` as an int; InvalidOptionError naming the layer and what grows by it otherwise."""
    if not float(s).is_integer():
        raise InvalidOptionError(f"{name}: {what} can only grow by an integer scale, got {s!r}")
    return int(s)


def record_geometry(name: str, layer_kind: str, record: ConvRecord, old_kernel: Sequence[int],
                    padding: Sequence[float], stride: Sequence[int], dilation: Sequence[int],
                    output_padding: Sequence[int] = ()
                    ) -> tuple[tuple[int, ...], tuple[float, ...], tuple[int, ...], tuple[int, ...]]:
    """New ``(kernel_size, exact padding, stride, dilation)`` of a conv from its own geometry and a
    manifest record (DESIGN §3 geometry rule, §5 record); the reference for any loader.

    ``layer_kind`` is ``"conv"`` or ``"transposed"``; ``padding`` may be a half-integer (an
    asymmetric layer's mean). Re-dilation (``record.dilation`` set): dilation·f, weights
    unchanged, p' by the rule with the new dilation (= s·p). Absorb: stride·s, p' = s·p.
    Otherwise k' from the record, stride and dilation kept, p' = (k'−1)·d/2 − s·((k−1)·d/2 − p);
    a transposed conv with stride σ and output padding a (``output_padding``, default 0) adds
    (s−1)(σ−1−a)/2, the one padding under which its output is s× the original's (docs/format.md).
    Raises GeometryError for an absorbing transposed conv (its output, not its input, would grow).
    """
    scales = axis_scales(record.scale, len(old_kernel), name=name, trailing=True)
    return resized_geometry(name, layer_kind, old_kernel, record.new_spatial, scales, padding, stride, dilation, output_padding,
                            redilate=record.dilation, absorb=record.absorb)


def resized_geometry(name: str, layer_kind: str, old_kernel: Sequence[int], new_kernel: Sequence[int], scales: Sequence[float],
                     padding: Sequence[float], stride: Sequence[int], dilation: Sequence[int], output_padding: Sequence[int] = (),
                     *, redilate: Optional[Sequence[int]] = None, absorb: bool = False
                     ) -> tuple[tuple[int, ...], tuple[float, ...], tuple[int, ...], tuple[int, ...]]:
    """New ``(kernel_size, exact padding, stride, dilation)`` of a layer whose kernel goes from
    ``old_kernel`` to ``new_kernel`` at per-axis ``scales`` (the body of :func:`record_geometry`).

    ``redilate``: per-axis dilation factors (re-dilation; the kernel is kept, p' = s·p). ``absorb``:
    stride·s, p' = s·p, integer scales only. Otherwise :func:`new_padding` per axis, plus the
    (s−1)(σ−1−a)/2 of a transposed conv (``layer_kind="transposed"``). GeometryError naming
    ``name`` for an absorbing transposed conv or a non-integer absorbing scale.
    """
    if redilate is not None:
        new_dil = tuple(d * int(f) for d, f in zip(dilation, redilate))
        pads = tuple(new_padding(k, k, s, p, d, nd) for k, s, p, d, nd in zip(old_kernel, scales, padding, dilation, new_dil))
        return tuple(old_kernel), pads, tuple(stride), new_dil
    if absorb:
        if layer_kind == "transposed":
            raise GeometryError(f"{name}: a transposed conv cannot absorb the scale (its output, not its input, "
                                "would grow); drop it from absorb")
        bad = [s for s in scales if not float(s).is_integer()]
        if bad:
            raise GeometryError(f"{name}: an absorbing layer's stride grows by the scale, which must be an integer, got {tuple(scales)!r}")
        new_stride = tuple(int(st * s) for st, s in zip(stride, scales))
        return tuple(new_kernel), tuple(float(s * p) for s, p in zip(scales, padding)), new_stride, tuple(dilation)
    pads = tuple(new_padding(k, kn, s, p, d, d) for k, kn, s, p, d in zip(old_kernel, new_kernel, scales, padding, dilation))
    if layer_kind == "transposed":
        # out = (n−1)σ − 2p + d(k−1) + a + 1 must become s·out at s·n: that fixes p' alone. For a = 0
        # it is also where the windows line up with the supersampled output grid (no offset).
        extra = tuple(output_padding) or (0,) * len(pads)
        pads = tuple(p + (s - 1) * (st - 1 - a) / 2 for p, s, st, a in zip(pads, scales, stride, extra))
    return tuple(new_kernel), pads, tuple(stride), tuple(dilation)


@dataclass(frozen=True)
class LayerGeometry:
    """A layer's geometry per spatial axis; ``pads`` are integer (before, after) pairs,
    ``output_padding`` a transposed conv's (empty for other layers)."""

    kernel: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    output_padding: tuple[int, ...] = ()

    @property
    def padding(self) -> tuple[float, ...]:
        """The mean padding per axis (a half-integer where the sides differ by one)."""
        return tuple((b + a) / 2 for b, a in self.pads)

    def padding_report(self) -> tuple[Padding, ...]:
        """Per axis the padding, or (before, after) where the sides differ."""
        return tuple(b if b == a else (b, a) for b, a in self.pads)


def axes_text(values: tuple) -> str:
    """Per-axis values as the reports print them: ``3`` when all equal, ``(3,5)``, ``1+2`` for a (before, after) pad."""
    if not values:
        return "-"
    text = [f"{v[0]}+{v[1]}" if isinstance(v, tuple) else (f"{v:g}" if isinstance(v, float) else str(v)) for v in values]
    return text[0] if len(set(text)) == 1 else "(" + ",".join(text) + ")"


def out_len(kind: str, n: int, g: LayerGeometry, axis: int, ceil_mode: bool = False) -> int:
    """Output length of one axis for input length ``n`` (PyTorch's formulas)."""
    k, (b, a), st, d = g.kernel[axis], g.pads[axis], g.stride[axis], g.dilation[axis]
    if kind == "transposed":
        return (n - 1) * st - b - a + d * (k - 1) + g.output_padding[axis] + 1
    span = n + b + a - d * (k - 1) - 1
    if not ceil_mode:
        return span // st + 1
    out = -(-span // st) + 1
    return out - 1 if (out - 1) * st >= n + b else out


def sizes_consistent(kind: str, old: LayerGeometry, new: LayerGeometry, axis: int, scale: float, ratio: float,
                      ceil_mode: bool = False) -> Optional[tuple[int, int, int]]:
    """None when the new layer maps s·L samples to ratio·out(L) for every tested L (a multiple of
    the old stride); else the first counter-example ``(L, expected, got)``."""
    step = old.stride[axis]
    for m in _SIZE_CHECK_MULTIPLES:
        n = step * m
        n_new = n * scale
        if not float(n_new).is_integer() or out_len(kind, n, old, axis, ceil_mode) < 1:
            continue
        expected = out_len(kind, n, old, axis, ceil_mode) * ratio
        got = out_len(kind, int(n_new), new, axis, ceil_mode)
        if got != expected:
            return n, expected, got
    return None


def pads_from(name: str, before: tuple[float, ...], totals: tuple[float, ...], sides: Sequence[str],
               allow_half: bool) -> tuple[tuple[int, int], ...]:
    """Integer (before, after) pads per axis from the exact padding ``before`` the input and the
    exact ``totals`` of both sides. A half-integer one puts its extra pixel on that axis's side, and
    sides that differ by whole pixels (a layer that pads asymmetrically already) are kept, both
    through the pre-hook that ``allow_half`` (``padding="asymmetric"``) permits. GeometryError
    naming the layer otherwise."""
    means = tuple(t / 2 for t in totals)
    pads = []
    for b, total, side in zip(before, totals, sides):
        if b < -1e-9 or total - b < -1e-9:
            raise GeometryError(f"{name}: the geometry rule gives a negative padding {axes_text(means)}; the layer cannot be resized this way")
        if abs(total - round(total)) > 1e-9:
            raise GeometryError(f"{name}: the new padding would be {axes_text(means)}, which no integer padding expresses")
        total = int(round(total))
        if abs(b - round(b)) < 1e-9:
            b = int(round(b))
            if b != total - b and not allow_half:
                raise GeometryError(
                    f"{name}: the new padding would be {b} before and {total - b} after (the layer pads one side more, "
                    "as PyTorch's 'same' does for an even kernel); pass padding='asymmetric' to keep that with a pre-hook"
                )
            pads.append((b, total - b))
        elif abs(b - math.floor(b) - 0.5) < 1e-9 and allow_half:
            low = int(math.floor(b))
            pads.append((low, total - low) if side == "after" else (low + 1, total - low - 1))
        elif abs(b - math.floor(b) - 0.5) < 1e-9:
            raise GeometryError(
                f"{name}: the new padding would be {axes_text(means)}, half a pixel off the grid; "
                "pass padding='asymmetric' to put the extra pixel on one side, or use align='taps'"
            )
        else:
            raise GeometryError(f"{name}: the new padding would be {axes_text(means)}, which no integer padding expresses")
    return tuple(pads)


def conv_change(name: str, kind: str, old: LayerGeometry, record: ConvRecord, padding_opt: str, side_fallback: str
                ) -> tuple[LayerGeometry, LayerGeometry, tuple[float, ...]]:
    """(old geometry, new geometry, offset) of a conv (``kind`` ``"conv"``) or transposed conv
    (``"transposed"``) of geometry ``old`` under ``record``: integer pads by :func:`pads_from`
    (``padding_opt`` ``"asymmetric"`` allows a half-pixel one, its extra pixel on the record's
    ``pad_extra`` side, else ``side_fallback``), the output size checked by :func:`sizes_consistent`,
    and per axis the window centres' offset from the ideal grid. GeometryError naming the layer, or
    :class:`Refit` for a transposed conv another resize would fit."""
    transposed = kind == "transposed"
    old_spatial = record.old_spatial
    if old.kernel != old_spatial:
        raise GeometryError(f"{name}: the layer's kernel is {axes_text(old.kernel)} but the record was made for {axes_text(old_spatial)}")
    kernel, exact, stride, dilation = record_geometry(name, kind, record, old.kernel, old.padding, old.stride, old.dilation,
                                                      old.output_padding)
    scales = axis_scales(record.scale, len(kernel), name=name, trailing=True)
    is_dilate = record.method == "dilate"
    if transposed and any(b != a for b, a in old.pads):
        raise GeometryError(f"{name}: asymmetric padding on a transposed conv is not supported")
    if transposed and is_dilate:
        for s, st in zip(scales, old.stride):
            if st > 1 and math.gcd(st, int(s)) > 1:
                raise Refit(name, f"a stride-{st} transposed conv re-dilated by {s:g} leaves output phases empty "
                                   f"(gcd({st}, {s:g}) > 1; dilate suits a strided transposed conv only when the stride and "
                                   "the scale share no factor)", fitting_resize(name, record, old))
    if transposed and any(abs(p - round(p)) > 1e-9 for p in exact):
        raise Refit(name, f"the new padding of this transposed conv would be {axes_text(exact)}, and a transposed conv cannot "
                           "crop half a pixel", fitting_resize(name, record, old))
    absorb = record.absorb
    # Where the window centres would sit on the ideal output grid: a kept stride σ adds (s−1)(σ−1)/2
    # to a conv's padding (DESIGN §4); a transposed conv's already holds (s−1)(σ−1−a)/2 of it, which
    # leaves (s−1)·a/2 for an output padding a; an absorbing layer's patches are exact.
    # Every rule is p' = C + s·p, so each side follows it on its own: a layer padded asymmetrically
    # (PyTorch's "same" for an even kernel pads (1, 2)) keeps its half-pixel offset, scaled by s.
    before = tuple(p - s * (a - b) / 2 for p, s, (b, a) in zip(exact, scales, old.pads))
    if transposed:
        aligned = tuple(p + (s - 1) * a / 2 for p, s, a in zip(before, scales, old.output_padding))
    else:
        aligned = tuple(p if absorb else p + (s - 1) * (st - 1) / 2 for p, s, st in zip(before, scales, old.stride))
    side = record.pad_extra or side_fallback
    # A half-pixel padding on a strided layer: the side that puts the window centres on the ideal
    # grid (e.g. a stride-2 conv resized 3 → 6 at s = 2 is aligned exactly with pads (3, 2)) beats
    # alternation, which only cancels the shifts of stride-1 layers.
    sides = tuple(_aligned_side(p, a, side) if st > 1 else side for p, a, st in zip(before, aligned, old.stride))
    pads = pads_from(name, before, tuple(2 * p for p in exact), sides, allow_half=padding_opt == "asymmetric")
    new = LayerGeometry(kernel, pads, stride, dilation, old.output_padding)
    for axis, (s, st) in enumerate(zip(scales, old.stride)):
        bad = sizes_consistent(kind, old, new, axis, s, 1 if absorb else s)
        if bad is not None:
            n, expected, got = bad
            raise GeometryError(
                f"{name}: stride {st}, kernel {old.kernel[axis]}, padding {axes_text(old.padding_report()[axis:axis + 1])}: "
                f"with the new kernel {kernel[axis]} and padding {axes_text(new.padding_report()[axis:axis + 1])} an input of "
                f"{int(n * s)} gives {got} outputs, not {expected:g} (the feature pyramid would change shape); "
                "absorb the scale in this layer or exclude it")
    offset = tuple(a - b for a, (b, _) in zip(aligned, pads))
    return old, new, offset


def _aligned_side(exact: float, aligned: float, default: str) -> str:
    low, high = math.floor(exact), math.ceil(exact)
    if low == high or abs(aligned - low) == abs(aligned - high):
        return default
    return "before" if abs(aligned - high) < abs(aligned - low) else "after"


class Refit(GeometryError):
    """A transposed conv whose record's resize gives it no exact geometry, though a resize by
    interp may (``fix``: the LayerRule fields of one that does, or None). The nn adapter's
    supersample and load collect them and raise one GeometryError with the recipe for all of them
    (:mod:`kernelscale.recipes`)."""

    def __init__(self, name: str, problem: str, fix: Optional[dict[str, str]]) -> None:
        hint = f"resize it with {rule_fields(fix)} instead" if fix else "no resize by interp fits it: exclude it"
        super().__init__(f"{name}: {problem}; {hint}")
        self.name, self.problem, self.fix = name, problem, fix


def fitting_resize(name: str, record: ConvRecord, old: LayerGeometry) -> Optional[dict[str, str]]:
    """The LayerRule fields (``align``, and ``method`` unless the record's is interp) of a resize by
    interp, align cells first, then taps, in the record's mode, under which a transposed conv
    gets an integer padding and an output s× the original; None when neither does."""
    scales = axis_scales(record.scale, len(old.kernel), name=name, trailing=True)
    for align in ("cells", "taps"):
        try:
            sizes = [axis_size(k, s, "interp", record.mode or "linear", align) for k, s in zip(old.kernel, scales)]
        except (InvalidOptionError, ValueError):
            continue
        trial = replace(record, method="interp", align=align, new_spatial=tuple(sizes), dilation=None, absorb=False)
        _, exact, _, _ = record_geometry(name, "transposed", trial, old.kernel, old.padding, old.stride, old.dilation,
                                         old.output_padding)
        if any(abs(p - round(p)) > 1e-9 or p < -1e-9 for p in exact):
            continue
        new = LayerGeometry(tuple(sizes), tuple((int(round(p)),) * 2 for p in exact), old.stride, old.dilation, old.output_padding)
        if all(sizes_consistent("transposed", old, new, axis, s, s) is None for axis, s in enumerate(scales)):
            return ({} if record.method == "interp" else {"method": "interp"}) | {"align": align}
    return None


def rule_fields(fix: Mapping[str, str]) -> str:
    """LayerRule fields as keywords: ``method='interp', align='cells'``."""
    return ", ".join(f"{k}={v!r}" for k, v in fix.items())


def pool_change(name: str, layer_type: str, old: LayerGeometry, scales: Sequence[float], ceil_mode: bool = False,
                divisor_override: Optional[int] = None) -> Optional[tuple[LayerGeometry, LayerGeometry, tuple[float, ...]]]:
    """New window of a MaxPool/AvgPool: the same scene extent, centred by the geometry rule.

    Per axis, among the footprints k·s ("cells", the same scene extent) and (k−1)·s+1 ("taps",
    the extent between the outer window centres), and the integer paddings nearest the aligned
    p* = (k'−1)/2 − s·δ + (s−1)(σ−1)/2, keep those whose output stays s× the original (for inputs
    a multiple of the stride; exactly, for stride 1) and pick the one nearest p*, cells first.
    Stride-1 windows get the rule exactly ((k−1)s+1, p' = s·p); MaxPool2d(2) at s = 2 becomes
    window 4, stride 2, padding 1, exactly aligned. None when nothing changes. ``layer_type``
    (``"MaxPool2d"``) names the layer in messages; ``ceil_mode`` and ``divisor_override`` are the
    pool's. GeometryError naming the layer for a dilated pool, a divisor override, or a window
    that no integer size and padding keep s× larger.
    """
    if any(d != 1 for d in old.dilation):
        raise GeometryError(f"{name}: a dilated pool ({axes_text(old.dilation)}) is not supported")
    if divisor_override:
        raise GeometryError(f"{name}: divisor_override={divisor_override} would have to grow with the window; not supported")
    kernel, pads, offsets = [], [], []
    for axis, s in enumerate(scales):
        k, p, st = old.kernel[axis], old.padding[axis], old.stride[axis]
        if s == 1.0:
            kernel.append(k)
            pads.append((int(p), int(p)))
            offsets.append(0.0)
            continue
        best = None
        for rank, size in enumerate((k * s, (k - 1) * s + 1)):
            if not float(size).is_integer() or size < 1:
                continue
            size = int(size)
            aligned = (size - 1) / 2 - s * ((k - 1) / 2 - p) + (s - 1) * (st - 1) / 2
            for pad in sorted({math.floor(aligned + 1e-9), math.ceil(aligned - 1e-9)}):
                if pad < 0 or pad > size // 2:
                    continue
                trial_old = LayerGeometry((k,), ((int(p), int(p)),), (st,), (1,))
                trial_new = LayerGeometry((size,), ((pad, pad),), (st,), (1,))
                if sizes_consistent("pool", trial_old, trial_new, 0, s, s, ceil_mode) is not None:
                    continue
                key = (abs(pad - aligned), rank, pad)
                if best is None or key < best[0]:
                    best = (key, size, pad, aligned - pad)
        if best is None:
            raise GeometryError(f"{name}: no window of a {layer_type} with kernel {k}, stride {st}, padding {int(p)} "
                                f"keeps its output {s:g}× larger at scale {s:g}")
        _, size, pad, offset = best
        kernel.append(size)
        pads.append((pad, pad))
        offsets.append(offset)
    new = LayerGeometry(tuple(kernel), tuple(pads), old.stride, old.dilation)
    if new == old:
        return None
    return old, new, tuple(offsets)


# What a loader must change for a resized tensor, most visible first (:func:`loader_change`).
LOADER_CHANGES = ("shape", "dilation", "prefilter", "stride", "padding")


def loader_change(record: Optional[Record], shape: Sequence[int], new_shape: Sequence[int]) -> str:
    """What a loader must change for a tensor resized from ``shape`` to ``new_shape`` under its
    manifest ``record`` (docs/format.md): ``shape``; for a kernel that keeps its shape,
    ``dilation`` (re-dilation), ``prefilter`` (factored execution: a dilation and a prefilter), ``stride`` (an absorbing layer) or ``padding`` (a half-pixel centre
    offset, which moves the padding by the geometry rule); else ``none`` (by the rule
    p' = (k−1)·d/2 − s·((k−1)·d/2 − p), the padding of a kept kernel stays where p = (k−1)·d/2)."""
    if tuple(new_shape) != tuple(shape):
        return "shape"
    if isinstance(record, FactoredRecord):
        return "prefilter"
    if not isinstance(record, ConvRecord):
        return "none"
    if record.dilation:
        return "dilation"
    if record.absorb:
        return "stride"
    if record.half_pixel:
        return "padding"
    return "none"


def window_shift(record: ConvRecord, ndim: int) -> tuple[float, ...]:
    """Per axis, the half-pixel offset (in output pixels) that the padding of a conv resized under
    ``record`` imposes on its window centres: the record's ``centre_offset``, positive when the
    extra pixel is padded after (``pad_extra``), negative when before; zeros when it has none."""
    offsets = record.centre_offset or (0.0,) * ndim
    sign = -1.0 if record.pad_extra == "before" else 1.0
    return tuple(sign * float(o) for o in offsets)
