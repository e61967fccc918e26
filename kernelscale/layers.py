"""Factored execution of an interpolated conv (DESIGN §9): the paper's kernel at the cost of re-dilation.

T2 says the taps-aligned interpolation of a kernel is its dilation followed by a fixed filter,
``interp_taps(K) = dilate_s(K) ⊛ (c·h_s)`` per axis, so a resized conv need not be materialised:

    conv(pad(x, p'), K')  =  conv_valid( prefilter_valid( pad(x, p'), c·h_s ), K, dilation = s )

with ``K`` the original weight and ``c·h_s`` one 1-D depthwise filter per spatial axis. Padding
once by the big kernel's ``p'`` and running both 'valid' makes the two sides equal everywhere,
borders and padding modes included, and strided layers too (the prefilter runs at stride 1, the
stride goes to the dilated conv).

The prefilter is read off the resize matrix R that :mod:`kernelscale.transforms` builds for the
materialised path (column 0 of R, coefficient folded in), after checking that every column of R
is that filter shifted by s taps: factored and materialised share one definition of the maths.

- :func:`factor_resize` — the factorisation of one kernel's resize (a frozen
  :class:`FactoredResize`), or :class:`NotFactorableError` where T2 does not hold.
- :func:`factored_conv` — the pure function: the original conv's arguments plus a FactoredResize.
- :class:`FactoredConv` — the module wrapping a Conv1d/2d/3d's own weight and bias Parameters,
  switchable at run time between ``"original"``, ``"dilated"`` and ``"interpolated"``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kernelscale.errors import GeometryError, InvalidOptionError, UnsupportedTensorError
from kernelscale.geometry import as_tuple
from kernelscale.method import Coef, Method, axis_scales, method_of
from kernelscale.transforms import build_kernel_resize

STATES = ("original", "dilated", "interpolated")
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")

Pads = tuple[tuple[int, int], ...]  # per spatial axis: (before, after), in input pixels of that state
IntOrTuple = Union[int, Sequence[int]]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class NotFactorableError(InvalidOptionError):
    """A resize that is not a dilation followed by a filter (T2 does not hold), so it cannot run
    factored: cells alignment, pinv, disperse, subsampling (s < 1), a fractional scale on a
    resized axis. The conv must be materialised instead (kernelscale.resize.resize_conv)."""


@dataclass(frozen=True)
class FactoredResize:
    """The factorisation of one kernel's resize: per spatial axis an integer dilation factor and
    a 1-D prefilter (float64, odd length, coefficient folded in, read-only; ``[1.0]`` on an axis
    that is not resized: size 1 or scale 1).

    ``R_axis[u, t] = prefilters[axis][u − dilations[axis]·t]`` for every tap, so the materialised
    kernel ``(R_1 ⊗ … ⊗ R_d) K`` equals ``dilate(K) ⊛ (h_1 ⊗ … ⊗ h_d)`` (T2). ``resize`` is the
    validated :class:`~kernelscale.method.Method` it factors (align and coef resolved: taps, and
    mass unless given); ``method``, ``mode``, ``align`` and ``coef`` read its fields.
    ``options()`` gives the arguments that rebuild it with :func:`factor_resize`; nothing else is needed.
    """

    kernel_shape: tuple[int, ...]
    scales: tuple[float, ...]
    dilations: tuple[int, ...]
    prefilters: tuple[np.ndarray, ...] = field(repr=False, compare=False)  # a function of the other fields
    resize: Method = Method("interp", "linear", "taps", "mass")

    @property
    def method(self) -> str:
        return self.resize.method

    @property
    def mode(self) -> str:
        return self.resize.mode

    @property
    def align(self) -> str:
        return self.resize.align or "taps"

    @property
    def coef(self) -> Coef:
        return self.resize.coef if self.resize.coef is not None else "mass"

    @property
    def ndim(self) -> int:
        return len(self.kernel_shape)

    @property
    def half_widths(self) -> tuple[int, ...]:
        """(L − 1)/2 per axis, L the prefilter's length: the extra padding the prefilter needs."""
        return tuple((h.size - 1) // 2 for h in self.prefilters)

    @property
    def resized_shape(self) -> tuple[int, ...]:
        """The materialised kernel's spatial shape k' = (k − 1)·s + L per axis."""
        return tuple((k - 1) * s + h.size for k, s, h in zip(self.kernel_shape, self.dilations, self.prefilters))

    def options(self) -> dict[str, Any]:
        """JSON-ready keyword arguments of :func:`factor_resize` that rebuild this factorisation:
        ``kernel_shape``, ``scale`` (per axis), ``method``, ``mode``, ``align``, ``coef``."""
        return {"kernel_shape": list(self.kernel_shape), "scale": list(self.scales), "method": self.method,
                "mode": self.mode, "align": self.align, "coef": self.coef}


def factor_resize(
    kernel_shape: Sequence[int],
    scale: Union[float, Sequence[float]],
    *,
    method: Union[str, Method] = "interp",
    mode: Optional[str] = None,
    align: Optional[str] = None,
    coef: Optional[Coef] = None,
) -> FactoredResize:
    """Factor the resize of a kernel of spatial shape ``kernel_shape`` (d = 1, 2, 3 axes) into a
    dilation and a separable prefilter (T2), from the same R the materialised path applies.
    ``method`` is a :class:`~kernelscale.method.Method` or its name with ``mode`` (default linear),
    ``align`` (default taps) and ``coef`` (default mass) beside it (:func:`kernelscale.method.method_of`).

    T2 holds for ``method="interp"``, ``align="taps"`` (every mode, every coefficient) and for
    ``method="dilate"`` (prefilter ``[1]``), on every axis whose scale is an integer ≥ 1 or whose
    kernel size is 1. Nowhere else: the dilated taps s·t of a fractional s fall between the new
    taps (k odd: t = 1 lands on s; k even: t = ½ on s/2), cells alignment clamps its edges, pinv and
    disperse are not convolutions, and a subsampling splat (s < 1) merges taps. Those raise
    :class:`NotFactorableError` naming the value; other bad options raise InvalidOptionError.
    """
    shape = tuple(int(k) for k in kernel_shape)
    if not 1 <= len(shape) <= 3 or min(shape) < 1:
        raise InvalidOptionError(f"kernel_shape must have 1 to 3 positive sizes, got {tuple(kernel_shape)!r}")
    scales = axis_scales(scale, len(shape))
    return _factor_resize(shape, scales, method_of(method, mode=mode, align=align, coef=coef).for_kernel())


@functools.lru_cache(maxsize=1024)
def _factor_resize(shape: tuple[int, ...], scales: tuple[float, ...], resize: Method) -> FactoredResize:
    method, mode, align, coef = resize.method, resize.mode, resize.align, resize.coef
    if method not in ("interp", "dilate"):
        raise NotFactorableError(f"method {method!r} does not factor into dilation + prefilter (only 'interp' with "
                                 "align='taps', and 'dilate', do): materialise it")
    if method == "interp" and align != "taps":
        raise NotFactorableError(f"align {align!r} does not factor: F.interpolate's clamped edges make R a "
                                 "non-convolution at the border taps; use align='taps' or materialise it")
    for axis, (k, s) in enumerate(zip(shape, scales)):
        if k > 1 and s != 1.0 and (s < 1 or not float(s).is_integer()):
            raise NotFactorableError(
                f"scale {s!r} on axis {axis} (kernel {shape}) does not factor: T2 needs an integer scale >= 1 on "
                "every resized axis (the dilated taps s·t must land on the new taps); materialise it")
    operator = build_kernel_resize(shape, scales, method, mode, align, coef)
    dilations, prefilters = [], []
    for axis, a in enumerate(operator.axes):
        if a.k_in == 1 or a.scale == 1.0:
            dilations.append(1)
            prefilters.append(_read_only(np.ones(1)))
            continue
        s = int(a.scale)
        h = _prefilter_of(a.matrix, s, axis, shape)
        dilations.append(s)
        prefilters.append(h)
    return FactoredResize(shape, scales, tuple(dilations), tuple(prefilters), resize)


def _prefilter_of(matrix: np.ndarray, s: int, axis: int, shape: tuple[int, ...]) -> np.ndarray:
    """Column 0 of R, after checking R[u, t] = h[u − s·t] for every (u, t) to float64 rounding."""
    k_out, k_in = matrix.shape
    length = k_out - (k_in - 1) * s
    if length < 1 or length % 2 == 0:
        raise NotFactorableError(f"axis {axis} (kernel {shape}): a {k_in}→{k_out} resize at scale {s} is not a "
                                 "centred dilation + filter")
    h = matrix[:length, 0]
    rebuilt = np.zeros_like(matrix)
    for t in range(k_in):
        rebuilt[t * s:t * s + length, t] = h
    # mass normalisation divides every column by its own sum: equal sums, to float64 rounding
    if not np.allclose(rebuilt, matrix, rtol=0.0, atol=8 * np.finfo(np.float64).eps * float(np.abs(matrix).max())):
        raise NotFactorableError(f"axis {axis} (kernel {shape}): R is not dilation by {s} followed by one filter")
    return _read_only(h.copy())


def _read_only(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array, dtype=np.float64)
    array.flags.writeable = False
    return array


def conv_pads(padding: Union[str, IntOrTuple], kernel_shape: Sequence[int], dilation: Sequence[int],
              stride: Sequence[int]) -> Pads:
    """A conv's padding as PyTorch applies it, per axis ``(before, after)``: a number or one per
    axis (symmetric), ``"valid"`` (0), or ``"same"`` (stride 1; total d·(k−1), ⌊total/2⌋ before,
    as ``nn.ConvNd``'s ``_reversed_padding_repeated_twice``)."""
    ndim = len(kernel_shape)
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * ndim
        if padding == "same":
            if any(st != 1 for st in stride):
                raise InvalidOptionError(f"padding='same' needs stride 1, got stride {tuple(stride)!r}")
            totals = [d * (k - 1) for k, d in zip(kernel_shape, dilation)]
            return tuple((t // 2, t - t // 2) for t in totals)
        raise InvalidOptionError(f"padding must be 'same', 'valid' or integers, got {padding!r}")
    pads = as_tuple(padding, ndim, "padding", "factored_conv")
    if min(pads) < 0:
        raise InvalidOptionError(f"factored_conv: padding must be >= 0 on every axis, got {padding!r}")
    return tuple((p, p) for p in pads)


def state_geometry(factored: FactoredResize, pads: Pads, dilation: Sequence[int], state: str) -> tuple[Pads, tuple[int, ...]]:
    """The padding ``(before, after)`` per axis and the conv dilation of the original weight in
    ``state``, for a layer of padding ``pads`` and dilation ``dilation``.

    - ``"original"``: the layer as it was.
    - ``"dilated"`` (T1, geometry-only): dilation d·s, padding s·p on each side — the DESIGN §3
      rule (window-centre offset scaled), also for the asymmetric padding of an even 'same' kernel
      and on a size-1 axis (any s there; GeometryError when s·p is not an integer).
    - ``"interpolated"``: as dilated, plus d·(L − 1)/2 on each side for the prefilter: the padding
      p' of the materialised k' kernel, applied once.
    """
    _check_state(state)
    if state == "original":
        return tuple(pads), tuple(dilation)
    grown = tuple(d * s for d, s in zip(dilation, factored.dilations))
    extra = factored.half_widths if state == "interpolated" else (0,) * factored.ndim
    new = []
    for axis, ((before, after), s, d, e) in enumerate(zip(pads, factored.scales, dilation, extra)):
        # the padding ring is in input pixels: it scales on every axis, a size-1 kernel's included
        if not (s * before).is_integer() or not (s * after).is_integer():
            raise GeometryError(f"axis {axis}: padding ({before}, {after}) at scale {s!r} would be "
                                f"({s * before!r}, {s * after!r}); a conv padding must be an integer")
        new.append((int(s * before) + d * e, int(s * after) + d * e))
    return tuple(new), grown


def _check_state(state: str) -> None:
    if state not in STATES:
        raise InvalidOptionError(f"unknown state {state!r}; expected one of {', '.join(STATES)}")


def prefilter(x: torch.Tensor, filters: Sequence[Optional[torch.Tensor]], dilation: Sequence[int] = (),
              padding: Sequence[int] = ()) -> torch.Tensor:
    """Filter the last d axes of ``x`` ``(N, C, *n)`` with one 1-D filter per axis, 'valid':
    ``(N, C, *(n − dilation·(L − 1)))``. Cross-correlation, the same filter on every channel;
    ``None`` skips an axis. ``filters[i]``: 1-D, x's dtype and device. ``padding``: zeros added on
    every axis before the first pass (symmetric, per axis), as if x had been zero-padded first.

    One depthwise conv per axis, with a ``(C, 1, …, L, …)`` weight, in x's own memory layout (a
    channels-last model gets channels-last passes). Measured on 2 shared CPU cores, one thread,
    320 channels, 138² → 132², cubic ×2 (7 taps): 98 ms (minimum of 9) in NCHW, 70 ms on a
    channels-last input, 108–165 ms as sums of shifted slices, 3.3 s as one single-channel conv
    over channels folded into the batch; the dilated 3×3 conv that follows costs about 1 s there.
    ``benchmarks/bench_execution.py`` measures the forms again.
    """
    ndim = x.ndim - 2
    dilation = tuple(dilation) or (1,) * ndim
    pad = tuple(padding) or (0,) * ndim
    channels = x.shape[1]
    conv = _CONV[ndim]
    for axis, h in enumerate(filters):
        if h is None:
            continue
        shape = [1] * ndim
        shape[axis] = h.numel()
        weight = h.reshape(1, 1, *shape).expand(channels, 1, *shape)
        dil = [1] * ndim
        dil[axis] = dilation[axis]
        x = conv(x, weight, None, 1, pad, dil, channels)
        pad = (0,) * ndim
    return x


def _is_unit(h: np.ndarray) -> bool:
    return h.size == 1 and h[0] == 1.0


def _pad(x: torch.Tensor, pads: Pads, padding_mode: str) -> torch.Tensor:
    flat = [p for pair in reversed(pads) for p in pair]  # F.pad lists the last axis first
    if not any(flat):
        return x
    if padding_mode == "zeros":
        return F.pad(x, flat)
    return F.pad(x, flat, mode=padding_mode)


def factored_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    factored: FactoredResize,
    *,
    stride: IntOrTuple = 1,
    padding: Union[str, IntOrTuple] = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    state: str = "interpolated",
    filters: Optional[Sequence[Optional[torch.Tensor]]] = None,
) -> torch.Tensor:
    """The conv ``(weight, bias, stride, padding, dilation, groups, padding_mode)`` — the original
    layer's own arguments, PyTorch's meaning — run on input supersampled by ``factored.scales``.

    ``x``: ``(N, C_in, *n)``; ``weight``: ``(C_out, C_in/groups, *factored.kernel_shape)``, the
    ORIGINAL taps. ``state="interpolated"``: pad x once by the materialised kernel's p' (in
    ``padding_mode``), prefilter (stride 1), then the conv 'valid' with dilation d·s and the
    layer's stride; equal to the materialised resized conv (T2) up to rounding, borders included.
    A stride-1 layer with fewer output than input channels runs the conv first and prefilters its
    output (the two commute), which is cheaper.
    ``"dilated"``: the geometry-only re-dilation (T1); ``"original"``: the layer unchanged.
    ``filters``: the prefilter taps as tensors of x's dtype and device (a module's cached buffers);
    default: built from ``factored``.
    """
    ndim = x.ndim - 2
    if ndim != factored.ndim or weight.ndim != ndim + 2 or tuple(weight.shape[2:]) != factored.kernel_shape:
        raise InvalidOptionError(f"factored_conv: input {tuple(x.shape)} and weight {tuple(weight.shape)} do not fit a "
                                 f"factored resize of a {factored.kernel_shape} kernel")
    if padding_mode not in PADDING_MODES:
        raise InvalidOptionError(f"padding_mode must be one of {', '.join(PADDING_MODES)}, got {padding_mode!r}")
    stride_t = as_tuple(stride, ndim, "stride", "factored_conv")
    dil = as_tuple(dilation, ndim, "dilation", "factored_conv")
    pads, conv_dilation = state_geometry(factored, conv_pads(padding, factored.kernel_shape, dil, stride_t), dil, state)
    if state == "interpolated" and filters is None:
        filters = [None if _is_unit(h) else torch.tensor(h, dtype=x.dtype, device=x.device) for h in factored.prefilters]
    if state != "interpolated" or all(h is None for h in filters):
        filters = None
    # Zero padding, symmetric: the first conv pads (every axis; the later passes are 'valid' on
    # theirs), which saves F.pad's copy of the input. Otherwise pad once, explicitly.
    inline = padding_mode == "zeros" and all(b == a for b, a in pads)
    symmetric = tuple(b for b, _ in pads) if inline else (0,) * ndim
    if not inline:
        x = _pad(x, pads, padding_mode)
    conv = _CONV[ndim]
    if filters is None:
        return conv(x, weight, bias, stride_t, symmetric, conv_dilation, groups)
    if all(st == 1 for st in stride_t) and weight.shape[0] < x.shape[1]:
        # Both are 'valid' shift-invariant maps and the prefilter is the same on every channel, so
        # they commute at stride 1: filter the side with fewer channels (an up-block's 960 → 320
        # conv filters 320 channels, not 960). The bias goes after the prefilter, which scales it.
        y = prefilter(conv(x, weight, None, 1, symmetric, conv_dilation, groups), filters, dil)
        return y if bias is None else y + bias.reshape(-1, *(1,) * ndim)
    x = prefilter(x, filters, dil, padding=symmetric)
    return conv(x, weight, bias, stride_t, 0, conv_dilation, groups)


class FactoredConv(nn.Module):
    """A Conv1d/2d/3d run on s×-supersampled input without materialising its resized kernel (DESIGN §9).

    Holds the conv's OWN ``weight`` and ``bias`` Parameters (the same objects, not copies: training
    this module trains the original taps) and its stride, padding, dilation, groups and padding
    mode. ``state`` switches at run time, weights untouched: ``"original"`` (the conv as it was,
    1×), ``"dilated"`` (geometry-only re-dilation, T1) or ``"interpolated"`` (prefilter + dilated
    conv, equal to the materialised interp kernel by T2).

    The prefilter taps are buffers kept out of the state dict (``persistent=False``): they are a
    function of ``resize.options()`` (kernel shape, scales, method, mode, align, coef), which a
    manifest record carries, so a factored checkpoint is the original weights byte for byte plus that
    record, and the module's state dict has exactly the original conv's keys.
    """

    def __init__(self, conv: nn.Module, resize: FactoredResize, state: str = "interpolated") -> None:
        super().__init__()
        ndim = _conv_ndim(conv)
        if not isinstance(conv.weight, nn.Parameter):
            raise UnsupportedTensorError(f"{type(conv).__name__}: its weight is computed (weight or spectral norm, a "
                                         "parametrization): FactoredConv needs a plain weight Parameter")
        if tuple(conv.kernel_size) != resize.kernel_shape:
            raise InvalidOptionError(f"a factored resize of a {resize.kernel_shape} kernel given for a conv of kernel "
                                     f"{tuple(conv.kernel_size)}")
        self.ndim = ndim
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size = tuple(conv.kernel_size)
        self.stride = tuple(conv.stride)
        self.padding = conv.padding
        self.dilation = tuple(conv.dilation)
        self.groups = conv.groups
        self.padding_mode = conv.padding_mode
        self.weight = conv.weight
        self.bias = conv.bias
        self._pads = conv_pads(conv.padding, self.kernel_size, self.dilation, self.stride)
        self._state = "original"
        self.configure(resize)
        self.state = state

    @classmethod
    def from_conv(
        cls,
        conv: nn.Module,
        scale: Union[float, Sequence[float]],
        *,
        method: Union[str, Method] = "interp",
        mode: Optional[str] = None,
        align: Optional[str] = None,
        coef: Optional[Coef] = None,
        state: str = "interpolated",
    ) -> "FactoredConv":
        """Wrap ``conv`` (nn.Conv1d/2d/3d) for input supersampled by ``scale`` (one or per axis),
        resized as :func:`kernelscale.resize.resize_conv` would with these options (a Method, or
        its fields as :func:`factor_resize` takes them).
        NotFactorableError where the resize does not factor (:func:`factor_resize`)."""
        _conv_ndim(conv)
        resize = factor_resize(tuple(conv.kernel_size), scale, method=method, mode=mode, align=align, coef=coef)
        return cls(conv, resize, state)

    @property
    def resize(self) -> FactoredResize:
        """The factorisation in use (its ``options()`` is what a manifest records)."""
        return self._resize

    @property
    def state(self) -> str:
        """``"original"``, ``"dilated"`` or ``"interpolated"``: settable at any time, e.g. per diffusion step."""
        return self._state

    @state.setter
    def state(self, value: str) -> None:
        _check_state(value)
        self._state = value

    def configure(self, resize: FactoredResize) -> None:
        """Use another factorisation (another scale or mode) from now on; weights untouched, the
        prefilter buffers replaced (in the weight's dtype and device)."""
        if resize.kernel_shape != self.kernel_size:
            raise InvalidOptionError(f"a factored resize of a {resize.kernel_shape} kernel given for a conv of kernel "
                                     f"{self.kernel_size}")
        # checked here, where the geometry enters: an oversized 'reflect' padding fails in F.pad otherwise
        state_geometry(resize, self._pads, self.dilation, "interpolated")
        self._resize = resize
        for axis, h in enumerate(resize.prefilters):
            self.register_buffer(f"prefilter{axis}", torch.tensor(h, dtype=self.weight.dtype, device=self.weight.device),
                                 persistent=False)

    def filters(self, dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
        """The prefilter taps per axis, in ``dtype`` on ``device`` (the buffers, cast when needed);
        None on an axis the resize leaves alone."""
        return [None if _is_unit(h) else getattr(self, f"prefilter{axis}").to(dtype=dtype, device=device)
                for axis, h in enumerate(self._resize.prefilters)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        filters = self.filters(x.dtype, x.device) if self._state == "interpolated" else None
        return factored_conv(x, self.weight, self.bias, self._resize, stride=self.stride, padding=self.padding,
                             dilation=self.dilation, groups=self.groups, padding_mode=self.padding_mode,
                             state=self._state, filters=filters)

    def padding_for(self, state: Optional[str] = None) -> Pads:
        """The padding ``(before, after)`` per axis applied in ``state`` (default: the current one)."""
        return state_geometry(self._resize, self._pads, self.dilation, state or self._state)[0]

    def extra_repr(self) -> str:
        r = self._resize
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"state={self._state!r}, scale={r.scales}, method={r.method!r}, mode={r.mode!r}, coef={r.coef!r}")


def _conv_ndim(conv: nn.Module) -> int:
    for ndim, kind in ((1, nn.Conv1d), (2, nn.Conv2d), (3, nn.Conv3d)):
        if isinstance(conv, kind):
            return ndim
    raise UnsupportedTensorError(f"FactoredConv wraps nn.Conv1d/2d/3d, got {type(conv).__name__}")
