"""Apply resize operators to weight tensors; :func:`resize_conv` adds the layer's new geometry
(from :mod:`kernelscale.geometry`).

Accepts torch tensors on any device and numpy arrays and returns the same kind. float16 and
bfloat16 are computed in float32 and rounded once; float64 stays float64 (DESIGN §2, §7).
The operator matrices come from :mod:`kernelscale.transforms`; the arithmetic is dispatched to
the torch reference or the Triton kernels by :mod:`kernelscale.dispatch`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from kernelscale import dispatch
from kernelscale.errors import InvalidOptionError, NonFiniteResultError, UnsupportedTensorError
from kernelscale.geometry import ConvGeometry, PaddingSpec, as_tuple, conv_padding, integer_factor, resized_geometry
from kernelscale.method import Coef, DisperseParams, Method, axis_scales, method_of
from kernelscale.transforms import KernelResize, grid_resize, kernel_resize

TensorLike = Union[torch.Tensor, np.ndarray]
IntOrTuple = Union[int, Sequence[int]]

# The Triton dense kernel keeps R in registers: up to 64 input and 256 output taps.
DENSE_MAX_IN = 64
DENSE_MAX_OUT = 256


# A computed |y| within this fraction of a dtype's largest finite value counts as "may overflow":
# float32 accumulation may land a little above the exact bound (k·eps relative, k ≤ a few hundred).
_BOUND_MARGIN = 1e-3


def operator_gains(matrices: Sequence[np.ndarray]) -> tuple[float, float]:
    """How much the matrices applied one after the other can grow magnitudes: ``(gain, peak)``.

    ``gain`` = ∏ max_row Σ|R| (the ∞-norm; for R_1⊗…⊗R_d the product is the Kronecker product's own),
    so max|y| ≤ gain·max|x|. ``peak`` = ∏ max(1, ·) bounds every partial product as well (any axis
    order, each entry of R), hence every intermediate value and every entry of R in the compute dtype.
    The coefficient is part of R."""
    gains = [float(np.abs(m).sum(axis=1).max()) if m.size else 0.0 for m in matrices]
    return math.prod(gains), math.prod(max(1.0, g) for g in gains)


def kernel_gains(operator: KernelResize) -> tuple[float, float]:
    """:func:`operator_gains` of a kernel resize (its one dense matrix, or its axes)."""
    return operator_gains([operator.matrix] if not operator.separable else [a.matrix for a in operator.axes])


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _dtype_text(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def overflow_check_needed(x: torch.Tensor, gains: tuple[float, float], out_dtype: torch.dtype) -> Optional[float]:
    """max|x| when resizing ``x`` by an operator of ``gains`` (:func:`operator_gains`) may overflow
    ``out_dtype`` or the compute dtype, so the result needs checking; None when it cannot (the a-priori
    bound max|x|·gain stays below the largest finite value) or when ``x`` already holds inf or NaN
    (garbage in, garbage out: such a tensor is resized as it is). One pass over ``x`` (``aminmax``,
    about 1 % of a resize on CPU); nothing over the output."""
    if x.numel() == 0:
        return None
    low, high = torch.aminmax(x)
    low, high = float(low), float(high)  # aminmax propagates NaN to both
    if not (math.isfinite(low) and math.isfinite(high)):
        return None
    magnitude = max(-low, high)
    gain, peak = gains
    out_limit = torch.finfo(out_dtype).max * (1 - _BOUND_MARGIN)
    compute_limit = torch.finfo(_compute_dtype(x.dtype)).max * (1 - _BOUND_MARGIN)
    safe = magnitude * gain <= out_limit and magnitude * peak <= compute_limit and peak <= compute_limit  # NaN: not safe
    return None if safe else magnitude


def require_finite(y: torch.Tensor, name: str, in_dtype: torch.dtype, out_dtype: torch.dtype, magnitude: float, gain: float,
                   largest: Callable[[], float]) -> None:
    """NonFiniteResultError naming ``name`` unless every value of ``y`` is finite. ``magnitude``:
    the finite input's max|x|; ``largest()``: the exact result's largest magnitude (recomputed in
    float64, called on failure only). The check is one ``aminmax`` pass (NaN propagates to both
    ends): an order of magnitude faster than ``isfinite(y).all()`` on CPU half precision."""
    if y.numel() == 0:
        return
    low, high = torch.aminmax(y)
    if math.isfinite(float(low)) and math.isfinite(float(high)):
        return
    raise NonFiniteResultError(overflow_message(name, in_dtype, out_dtype, magnitude, gain, largest()))


def overflow_message(name: str, in_dtype: torch.dtype, out_dtype: torch.dtype, magnitude: float, gain: float, largest: float) -> str:
    """The message of a NonFiniteResultError: the tensor, the exact result's largest magnitude, the
    largest finite value of the dtype it overflows, and where the growth comes from."""
    compute = _compute_dtype(in_dtype)
    out_max, compute_max = torch.finfo(out_dtype).max, torch.finfo(compute).max
    if math.isfinite(largest) and largest <= out_max and largest <= compute_max:
        reach = (f"its {_dtype_text(compute)} computation overflows (the exact result reaches |w| = {largest:.4g}, "
                 f"but a partial sum passes {compute_max:.6g})")
    else:
        limit = (f"{_dtype_text(out_dtype)}'s largest finite value {out_max:.6g}" if out_max <= compute_max else
                 f"the largest finite value {compute_max:.6g} of {_dtype_text(compute)}, in which it is computed")
        size = f"= {largest:.4g}" if math.isfinite(largest) else "> 1.798e+308 (not even float64 holds them)"
        reach = f"the resized values reach |w| {size}, beyond {limit}"
    return (f"{name}: {reach}, so it would be stored as inf/NaN; the input is finite (max |w| = {magnitude:.4g}) and the "
            f"resize multiplies magnitudes by up to {gain:.4g}: use a smaller coef, or a wider output dtype")


def _largest_magnitude(rows: torch.Tensor, apply64: Callable[[torch.Tensor], torch.Tensor], out_row: int) -> float:
    """max|apply64(block)| over blocks of leading-axis rows of ``rows`` (in float64, on the torch
    backend, about 2²² output values at a time): the exact result's largest magnitude, for an error
    message."""
    step = max(1, (1 << 22) // max(1, out_row))
    largest = 0.0
    for start in range(0, rows.shape[0], step):
        y = apply64(rows[start:start + step].to(torch.float64))
        if y.numel():
            largest = max(largest, nan_as_inf(float(y.abs().max())))
    return largest


def _checked(x: torch.Tensor, gains: tuple[float, float], out_dtype: torch.dtype, name: str, check_finite: bool,
             compute: Callable[[], torch.Tensor], largest: Callable[[], float]) -> torch.Tensor:
    """``compute()``, the resize of the finite or not ``x`` by an operator of ``gains``, refused with
    NonFiniteResultError when it overflows ``out_dtype`` (the exact check only where the a-priori
    bound allows it: :func:`overflow_check_needed`); ``largest()`` gives the message its figure."""
    magnitude = overflow_check_needed(x, gains, out_dtype) if check_finite else None
    out = compute()
    if magnitude is not None:
        require_finite(out, name, x.dtype, out_dtype, magnitude, gains[0], largest)
    return out


def nan_as_inf(value: float) -> float:
    """A magnitude that came out NaN (inf − inf: beyond even float64) counts as inf."""
    return math.inf if math.isnan(value) else value


@dataclass(frozen=True)
class ResizedConv:
    """A resized conv weight (same kind and dtype as the input) and the layer's new geometry."""

    weight: TensorLike
    geometry: ConvGeometry
    operator: Optional[KernelResize]


def _to_torch(weight: TensorLike, name: str) -> torch.Tensor:
    """A torch view of ``weight`` for reading: detached (a Parameter's result carries no autograd
    history), native byte order (a big-endian array is converted: torch has no such dtype)."""
    if isinstance(weight, np.ndarray):
        if weight.dtype.kind != "f" or weight.dtype.itemsize not in (2, 4, 8):
            raise UnsupportedTensorError(f"{name}: cannot resize a tensor of dtype {weight.dtype}; only float16/float32/float64")
        array = np.ascontiguousarray(weight, dtype=weight.dtype.newbyteorder("="))
        if array.flags.writeable:
            return torch.from_numpy(array)
        # A read-only array (a memmap, a safetensors numpy load) is shared, not copied: kernelscale
        # only reads its input (every result is a new tensor), so torch's warning that writing
        # through the tensor is undefined does not apply, and copying would double the memory of
        # a large checkpoint tensor.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
            return torch.from_numpy(array)
    if isinstance(weight, torch.Tensor):
        if not weight.is_floating_point() or weight.dtype.itemsize == 1:
            raise UnsupportedTensorError(f"{name}: cannot resize a tensor of dtype {weight.dtype}; only float16/bfloat16/float32/float64")
        return weight.detach()
    raise UnsupportedTensorError(f"{name}: expected a torch tensor or numpy array, got {type(weight).__name__}")


def _like_input(result: torch.Tensor, original: TensorLike) -> TensorLike:
    """``result`` as the input's kind: numpy (native byte order) for numpy, else a plain tensor."""
    return result.numpy() if isinstance(original, np.ndarray) else result


def _torch_matrix(matrix: np.ndarray, x: torch.Tensor) -> torch.Tensor:
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return torch.tensor(matrix, dtype=dtype, device=x.device)


def apply_kernel_resize(
    slices: torch.Tensor,
    operator: KernelResize,
    out_dtype: Optional[torch.dtype] = None,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Apply ``operator`` to a batch of kernel slices ``(N, *k_in)`` → ``(N, *k_out)``.

    Dense (one product with R_1⊗…⊗R_d) when the kernel has ≤ 64 input and ≤ 256 output taps;
    otherwise separable, one axis at a time. Accumulation in float32 (float64 for float64 input),
    one rounding to ``out_dtype`` (default: the input's dtype).
    """
    out_dtype = out_dtype or slices.dtype
    n = slices.shape[0]
    k_in, k_out = operator.in_shape, operator.out_shape
    n_in, n_out = int(np.prod(k_in)), int(np.prod(k_out))
    if n_in <= DENSE_MAX_IN and n_out <= DENSE_MAX_OUT:
        out = dispatch.apply_dense(slices.reshape(n, n_in), _torch_matrix(operator.dense(), slices), out_dtype, backend=backend)
        return out.reshape(n, *k_out)
    if not operator.separable:  # a dense operator beyond the fused kernel's register budget
        out = dispatch.apply_dense(slices.reshape(n, n_in), _torch_matrix(operator.dense(), slices), out_dtype, backend="torch")
        return out.reshape(n, *k_out)
    if len(k_in) <= 2:
        rows = operator.axes[0].matrix if len(k_in) == 2 else np.ones((1, 1))
        cols = operator.axes[-1].matrix
        x3 = slices.reshape(n, k_in[0] if len(k_in) == 2 else 1, k_in[-1])
        out = dispatch.apply_separable(x3, _torch_matrix(rows, slices), _torch_matrix(cols, slices), out_dtype, backend=backend)
        return out.reshape(n, *k_out)
    compute = torch.float64 if slices.dtype == torch.float64 else torch.float32
    out = slices.to(compute)
    for axis, a in enumerate(operator.axes):
        out = torch.movedim(torch.tensordot(out, _torch_matrix(a.matrix, out), dims=([axis + 1], [1])), -1, axis + 1)
    return out.to(out_dtype)


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
    check_finite: bool = True,
) -> TensorLike:
    """Resize a conv weight ``(C_out, C_in/groups, *k)`` (or transposed ``(C_in, C_out/groups, *k)``).

    The last ``d = weight.ndim - 2`` axes (d = 1, 2, 3) are spatial; ``scale`` is one number or
    one per spatial axis. ``method`` is a :class:`~kernelscale.method.Method`, or its fields as
    keywords (``method="interp", mode="linear", align="taps", coef="mass"`` by default).
    Returns ``(…, *k')`` of the same kind (torch/numpy), device and dtype.
    Satisfies T1 (dilate), T2/T3 (interp taps), T4 (mass), T5 (s = 1 returns ``weight`` itself).

    A finite weight whose result would overflow the output dtype (a huge ``coef``, float16 values
    near its limit) raises NonFiniteResultError naming it (:func:`overflow_check_needed`; the exact
    check runs only when the a-priori bound allows an overflow). ``check_finite=False`` leaves the
    check to the caller (the streaming converter does it on the host after a GPU resize).
    """
    x = _to_torch(weight, name)
    if not 3 <= x.ndim <= 5:
        raise UnsupportedTensorError(f"{name}: a conv weight has 3 to 5 dims (C, C, *k), got shape {tuple(x.shape)}")
    resize = _method(name, method, mode=mode, align=align, coef=coef, disperse=disperse)
    operator = _operator(x.shape[2:], axis_scales(scale, x.ndim - 2, name=name), resize, name)
    if operator.is_identity and (out_dtype is None or out_dtype == x.dtype):
        return weight
    lead = x.shape[:2]
    slices = x.reshape(-1, *x.shape[2:])
    out = _checked(slices, kernel_gains(operator), out_dtype or x.dtype, name, check_finite,
                   lambda: apply_kernel_resize(slices, operator, out_dtype, backend),
                   lambda: _largest_magnitude(slices, lambda b: apply_kernel_resize(b, operator, torch.float64, "torch"),
                                              math.prod(operator.out_shape)))
    return _like_input(out.reshape(*lead, *operator.out_shape), weight)


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
    - ``geometry_only`` (``method="dilate"`` only): weights unchanged, ``dilation *= s``; equal to
      the zero-inserted kernel by construction (T1), at the original kernel's cost.
    - ``absorb``: the layer takes the scale in its stride (stride' = stride·s, k' = k·s, cells
      alignment, p' = s·p), so every layer downstream is untouched.

    ``padding`` is the layer's: ``"same"``, ``"valid"``, or numbers as :func:`kernelscale.geometry.conv_padding` takes.
    Padding is returned exact; ``geometry.integer_padding()`` refuses a fractional one (e.g. a
    "same" layer whose new kernel has an even extent).
    """
    x = _to_torch(weight, name)
    ndim = x.ndim - 2
    if not 1 <= ndim <= 3:
        raise UnsupportedTensorError(f"{name}: a conv weight has 3 to 5 dims, got shape {tuple(x.shape)}")
    scales = axis_scales(scale, ndim, name=name)
    resize = _method(name, method, mode=mode, align=align, coef=coef, disperse=disperse).for_kernel()
    kernel = tuple(int(k) for k in x.shape[2:])
    stride_t = as_tuple(stride, ndim, "stride", name)
    dil = as_tuple(dilation, ndim, "dilation", name)
    pad = conv_padding(padding, kernel, dil, stride_t, name)

    if geometry_only:
        if resize.method != "dilate":
            raise InvalidOptionError(f"{name}: geometry-only surgery is re-dilation; method must be 'dilate', got {resize.method!r}")
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
    grid: Sequence[int],
    scale: Union[float, Sequence[float]],
    *,
    method: Union[str, Method, None] = None,
    mode: Optional[str] = None,
    align: Optional[str] = None,
    coef: Optional[Coef] = None,
    name: str = "weight",
    out_dtype: Optional[torch.dtype] = None,
    backend: Optional[str] = None,
    check_finite: bool = True,
) -> TensorLike:
    """Resize a Linear weight ``(out, C·H·W)`` whose input is a flattened ``(C, H, W)`` grid.

    Rows are reshaped to the grid, each ``(H, W)`` plane resized (cells by default, coefficient
    HW/(H'W'); or ``method="pinv"``; ``method`` a Method or its fields, align and coef left None
    taking the grid defaults cells and paper), and flattened back: ``(out, C·H'·W')``. T6: with pinv,
    ``W' · flatten(U x) = W · flatten(x)`` exactly for U the cells upsampler of ``mode``.
    Overflow: as :func:`resize_kernel` (NonFiniteResultError; ``check_finite``).
    """
    x = _to_torch(weight, name)
    grid = tuple(int(g) for g in grid)
    if len(grid) != 3 or min(grid) < 1:
        raise InvalidOptionError(f"{name}: a grid is (C, H, W) with positive sizes, got {grid!r}")
    c, h, w = grid
    if x.ndim != 2 or x.shape[1] != c * h * w:
        raise InvalidOptionError(f"{name}: grid {grid!r} has {c * h * w} cells but the weight has shape {tuple(x.shape)}")
    scales = axis_scales(scale, 2, name=name)
    resize = _method(name, method, mode=mode, align=align, coef=coef)
    try:
        operator = grid_resize((h, w), scales, resize)
    except InvalidOptionError as exc:
        raise InvalidOptionError(f"{name} (grid {grid!r}): {exc}") from None
    axes = operator.axes
    if operator.is_identity and (out_dtype is None or out_dtype == x.dtype):
        return weight
    planes = x.reshape(x.shape[0] * c, h, w)

    def exact_largest() -> float:
        rows, cols = (torch.tensor(a.matrix, dtype=torch.float64, device=x.device) for a in axes)
        return _largest_magnitude(planes, lambda b: dispatch.apply_separable(b, rows, cols, torch.float64, backend="torch"),
                                  axes[0].k_out * axes[1].k_out)

    out = _checked(planes, operator_gains([a.matrix for a in axes]), out_dtype or x.dtype, name, check_finite,
                   lambda: dispatch.apply_separable(planes, _torch_matrix(axes[0].matrix, x), _torch_matrix(axes[1].matrix, x),
                                                    out_dtype or x.dtype, backend=backend),
                   exact_largest)
    return _like_input(out.reshape(x.shape[0], c * axes[0].k_out * axes[1].k_out), weight)


def scale_tensor(tensor: TensorLike, factor: float, out_dtype: Optional[torch.dtype] = None, name: str = "weight",
                 check_finite: bool = True) -> TensorLike:
    """``factor · tensor`` computed in float32 (float64 for float64) and rounded once; same kind.
    Overflow: as :func:`resize_kernel` (NonFiniteResultError; ``check_finite``)."""
    x = _to_torch(tensor, name)
    out = _checked(x, operator_gains([np.array([[abs(float(factor))]])]), out_dtype or x.dtype, name, check_finite,
                   lambda: (x.to(_compute_dtype(x.dtype)) * factor).to(out_dtype or x.dtype),
                   lambda: float(x.to(torch.float64).abs().max()) * abs(float(factor)))
    return _like_input(out, tensor)


def weight_norm_squares(v: TensorLike, dim: Optional[int], name: str = "weight_v") -> torch.Tensor:
    """Σ v² over every axis of ``v`` but ``dim``, in float64: shape ``(v.shape[dim],)``, or ``()``
    for ``dim=None`` (one norm over all of v) — the squared norms of weight norm's w = g·v/‖v‖.
    Sums of squares add over blocks of v: over blocks of rows, concatenate (dim 0) or add (others)."""
    x = _to_torch(v, name).to(torch.float64)
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
    x = _to_torch(g, name)
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
    return _like_input(result, g)
