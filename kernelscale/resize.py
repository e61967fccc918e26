"""The single-tensor API: resize a conv weight, a grid Linear or scale a tensor; :func:`resize_conv`
adds the layer's new geometry (from :mod:`kernelscale.geometry`).

Accepts torch tensors on any device and numpy arrays and returns the same kind. float16 and
bfloat16 are computed in float32 and rounded once; float64 stays float64 (DESIGN §2, §7).
Each call validates its options into a :class:`~kernelscale.method.Method`, builds the operator
(:mod:`kernelscale.transforms`) and applies it with :func:`kernelscale.execute.execute`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch

from kernelscale.errors import InvalidOptionError, UnsupportedTensorError
from kernelscale.execute import TensorLike, as_torch, execute
from kernelscale.geometry import ConvGeometry, PaddingSpec, as_tuple, conv_padding, integer_factor, resized_geometry
from kernelscale.grid import GridLayout, grid_layout
from kernelscale.method import Coef, DisperseParams, Method, axis_scales, method_of
from kernelscale.transforms import GridResize, KernelResize, ScaleFactor, grid_resize, kernel_resize

IntOrTuple = Union[int, Sequence[int]]


@dataclass(frozen=True)
class ResizedConv:
    """A resized conv weight (same kind and dtype as the input) and the layer's new geometry."""

    weight: TensorLike
    geometry: ConvGeometry
    operator: Optional[KernelResize]


def resize_kernel(
    weight: TensorLike,
    scale: Union[float, Sequence[float]],
    *,
    method: Union[str, Method, None] = None,
    mode: Optional[str] = None,
    align: Optional[str] = None,
    coef: Optional[Coef] = None,
    name: str = "weight",
    out_dtype: Optional[torch.dtype] = None,
    backend: Optional[str] = None,
    disperse: Optional[DisperseParams] = None,
) -> TensorLike:
    """Resize a conv weight ``(C_out, C_in/groups, *k)`` (or transposed ``(C_in, C_out/groups, *k)``).

    The last ``d = weight.ndim - 2`` axes (d = 1, 2, 3) are spatial; ``scale`` is one number or
    one per spatial axis. ``method`` is a :class:`~kernelscale.method.Method`, or its fields as
    keywords (``method="interp", mode="linear", align="taps", coef="mass"`` by default).
    Returns ``(…, *k')`` of the same kind (torch/numpy), device and dtype.
    Satisfies T1 (dilate), T2/T3 (interp taps), T4 (mass), T5 (s = 1 returns ``weight`` itself).

    A finite weight whose result would overflow the output dtype (a huge ``coef``, float16 values
    near its limit) raises NonFiniteResultError naming it (:func:`kernelscale.execute.execute`).
    """
    x = as_torch(weight, name)
    if not 3 <= x.ndim <= 5:
        raise UnsupportedTensorError(f"{name}: a conv weight has 3 to 5 dims (C, C, *k), got shape {tuple(x.shape)}")
    resize = _method(name, method, mode=mode, align=align, coef=coef, disperse=disperse)
    operator = _operator(x.shape[2:], axis_scales(scale, x.ndim - 2, name=name), resize, name)
    return execute(operator, weight, name=name, out_dtype=out_dtype, backend=backend)


def _method(name: str, method: Union[str, Method, None], **fields: object) -> Method:
    """The Method of a public call (:func:`~kernelscale.method.method_of`), errors naming the tensor."""
    try:
        return method_of(method, **fields)  # type: ignore[arg-type]
    except InvalidOptionError as exc:
        raise InvalidOptionError(f"{name}: {exc}") from None


def _operator(spatial: Sequence[int], scales: Sequence[float], method: Method, name: str) -> KernelResize:
    try:
        return kernel_resize(tuple(int(k) for k in spatial), scales, method)
    except InvalidOptionError as exc:
        raise InvalidOptionError(f"{name} (kernel {tuple(spatial)}): {exc}") from None


def resize_conv(
    weight: TensorLike,
    scale: Union[float, Sequence[float]],
    *,
    padding: PaddingSpec = 0,
    stride: IntOrTuple = 1,
    dilation: IntOrTuple = 1,
    method: Union[str, Method, None] = None,
    mode: Optional[str] = None,
    align: Optional[str] = None,
    coef: Optional[Coef] = None,
    absorb: bool = False,
    geometry_only: bool = False,
    name: str = "weight",
    out_dtype: Optional[torch.dtype] = None,
    backend: Optional[str] = None,
    disperse: Optional[DisperseParams] = None,
) -> ResizedConv:
    """Resize a conv weight and derive the layer's new geometry (DESIGN §3, §5).

    ``method``: a :class:`~kernelscale.method.Method` or its fields as keywords, as for :func:`resize_kernel`.

    - default: the weight via :func:`resize_kernel`; stride kept; padding by :func:`new_padding`.
    - ``geometry_only`` (implies ``method="dilate"``; another method is refused): weights unchanged, ``dilation *= s``; equal to
      the zero-inserted kernel by construction (T1), at the original kernel's cost.
    - ``absorb``: the layer takes the scale in its stride (stride' = stride·s, k' = k·s, cells
      alignment, p' = s·p), so every layer downstream is untouched.

    ``padding`` is the layer's: ``"same"``, ``"valid"``, or numbers as :func:`kernelscale.geometry.conv_padding` takes.
    Padding is returned exact; ``geometry.integer_padding()`` refuses a fractional one (e.g. a
    "same" layer whose new kernel has an even extent).
    """
    x = as_torch(weight, name)
    ndim = x.ndim - 2
    if not 1 <= ndim <= 3:
        raise UnsupportedTensorError(f"{name}: a conv weight has 3 to 5 dims, got shape {tuple(x.shape)}")
    scales = axis_scales(scale, ndim, name=name)
    if geometry_only and method is None:  # geometry-only surgery is re-dilation
        method = "dilate"
    resize = _method(name, method, mode=mode, align=align, coef=coef, disperse=disperse).for_kernel()
    kernel = tuple(int(k) for k in x.shape[2:])
    stride_t = as_tuple(stride, ndim, "stride", name)
    dil = as_tuple(dilation, ndim, "dilation", name)
    pad = conv_padding(padding, kernel, dil, stride_t, name)

    if geometry_only:
        if resize.method != "dilate":
            raise InvalidOptionError(f"{name}: geometry_only=True is re-dilation, which implies method 'dilate'; got "
                                     f"{resize.method!r}: leave method out (or give 'dilate')")
        factors = tuple(f if k > 1 else 1 for f, k in zip([integer_factor(s, name, "dilation") for s in scales], kernel))
        geometry = resized_geometry(name, "conv", kernel, kernel, scales, pad, stride_t, dil, redilate=factors)
        return ResizedConv(weight, ConvGeometry(*geometry), None)

    if absorb:
        if resize.align != "cells" or resize.method not in ("interp", "pinv"):
            raise InvalidOptionError(f"{name}: an absorbing layer is resized with align='cells' and method interp or pinv")
        for s in scales:
            integer_factor(s, name, "stride")
    operator = _operator(kernel, scales, resize, name)
    resized = resize_kernel(weight, scales, method=resize, name=name, out_dtype=out_dtype, backend=backend)
    geometry = resized_geometry(name, "conv", kernel, operator.out_shape, scales, pad, stride_t, dil, absorb=absorb)
    return ResizedConv(resized, ConvGeometry(*geometry), operator)


def resize_grid_linear(
    weight: TensorLike,
    grid: Union[Sequence[int], str, GridLayout],
    scale: Union[float, Sequence[float]],
    *,
    method: Union[str, Method, None] = None,
    mode: Optional[str] = None,
    align: Optional[str] = None,
    coef: Optional[Coef] = None,
    name: str = "weight",
    out_dtype: Optional[torch.dtype] = None,
    backend: Optional[str] = None,
) -> TensorLike:
    """Resize a Linear weight ``(out, cells)`` whose input is a flattened grid.

    ``grid``: ``(C, H, W)`` for a plain ``flatten`` of an ``(N, C, H, W)`` map, or the axis order of
    the flattened features and their sizes (:func:`kernelscale.grid.grid_layout`): ``"H,W,C:4,4,32"``
    for a model that permutes to channels-last before flattening, 1-D (``"C,L:64,10"``) and 3-D
    (``"C,D,H,W:…"``) grids too. Rows are reshaped to the grid, each channel's map resized (cells by
    default, coefficient ∏n/∏n'; or ``method="pinv"``; ``method`` a Method or its fields, align
    and coef left None taking the grid defaults cells and paper), and flattened back in the same
    layout: ``(out, cells')``. T6: with pinv, ``W' · flatten(U x) = W · flatten(x)`` exactly for U
    the cells upsampler of ``mode``. ``scale``: one number or one per spatial axis (order D, H, W).
    Overflow: as :func:`resize_kernel` (NonFiniteResultError).
    """
    x = as_torch(weight, name)
    if isinstance(grid, (tuple, list)) and len(grid) == 3 and not all(
            isinstance(g, (int, np.integer)) and not isinstance(g, bool) and g >= 1 for g in grid):
        raise InvalidOptionError(f"{name}: a grid is (C, H, W), three positive integers, got {grid!r}")
    layout = grid_layout(grid, f"{name}: grid")
    if x.ndim != 2 or x.shape[1] != layout.cells:
        shown = repr(tuple(grid)) if isinstance(grid, (tuple, list)) else layout.text
        raise InvalidOptionError(f"{name}: grid {shown} has {layout.cells} cells but the weight has shape {tuple(x.shape)}")
    scales = axis_scales(scale, len(layout.spatial), name=name)
    resize = _method(name, method, mode=mode, align=align, coef=coef)
    try:
        operator = GridResize(layout, grid_resize(layout.spatial, scales, resize))
    except InvalidOptionError as exc:
        raise InvalidOptionError(f"{name} (grid {layout.text}): {exc}") from None
    return execute(operator, weight, name=name, out_dtype=out_dtype, backend=backend)


def scale_tensor(tensor: TensorLike, factor: float, out_dtype: Optional[torch.dtype] = None, name: str = "weight") -> TensorLike:
    """``factor · tensor`` computed in float32 (float64 for float64) and rounded once; same kind.
    Overflow: as :func:`resize_kernel` (NonFiniteResultError)."""
    return execute(ScaleFactor(float(factor)), tensor, name=name, out_dtype=out_dtype)
