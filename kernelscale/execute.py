"""Apply a planned operator to a tensor: the overflow check once, then the backend (DESIGN §7).

One path for the state-dict API (:func:`kernelscale.state_dict.apply_entry`), the streaming
converter (:mod:`kernelscale.stream`, which may split the check around a GPU launch:
:func:`overflow_check` before, :func:`check_result` after, :func:`apply` between) and the nn
adapter. Operators come built from :mod:`kernelscale.transforms` (a :class:`KernelResize` for a conv
kernel, a :class:`GridResize` for a Linear over a grid, a :class:`ScaleFactor` for an attention
temperature); the arithmetic goes to the torch reference or the Triton kernels through
:mod:`kernelscale.dispatch`.

Tensors: torch tensors on any device, or numpy arrays (the result is of the same kind). float16
and bfloat16 are computed in float32 and rounded once; float64 stays float64.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from kernelscale import dispatch
from kernelscale.apply_torch import check_out
from kernelscale.errors import InvalidOptionError, NonFiniteResultError, UnsupportedTensorError
from kernelscale.transforms import GridResize, KernelResize, Operator, ScaleFactor

TensorLike = Union[torch.Tensor, np.ndarray]

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


def nan_as_inf(value: float) -> float:
    """A magnitude that came out NaN (inf − inf: beyond even float64) counts as inf."""
    return math.inf if math.isnan(value) else value


def as_torch(weight: TensorLike, name: str) -> torch.Tensor:
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
        if weight.is_meta:
            raise UnsupportedTensorError(f"{name}: a meta tensor holds no values to resize (load the weights first)")
        if weight.layout != torch.strided:
            raise UnsupportedTensorError(f"{name}: cannot resize a {weight.layout} tensor; pass a dense one (.to_dense())")
        return weight.detach()
    raise UnsupportedTensorError(f"{name}: expected a torch tensor or numpy array, got {type(weight).__name__}")


OUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
"""The dtypes a resized tensor may be stored in (``out_dtype``)."""


def check_out_dtype(out_dtype: object, name: str) -> Optional[torch.dtype]:
    """``out_dtype`` when None or one of OUT_DTYPES; InvalidOptionError naming it and ``name`` otherwise."""
    if out_dtype is None or (isinstance(out_dtype, torch.dtype) and out_dtype in OUT_DTYPES):
        return out_dtype  # type: ignore[return-value]
    raise InvalidOptionError(f"{name}: out_dtype must be one of {', '.join(map(str, OUT_DTYPES))} (or None), got {out_dtype!r}")


def like_input(result: torch.Tensor, original: TensorLike) -> TensorLike:
    """``result`` as the input's kind: numpy (native byte order) for numpy, else a plain tensor."""
    return result.numpy() if isinstance(original, np.ndarray) else result


def _into(result: torch.Tensor, out: Optional[torch.Tensor]) -> torch.Tensor:
    """``result``, or ``out`` holding it (one rounding: the cast happens in the copy)."""
    return result if out is None else out.copy_(result)


def _torch_matrix(matrix: np.ndarray, x: torch.Tensor) -> torch.Tensor:
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return torch.tensor(matrix, dtype=dtype, device=x.device)


def apply_kernel_resize(
    slices: torch.Tensor,
    operator: KernelResize,
    out_dtype: Optional[torch.dtype] = None,
    backend: Optional[str] = None,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Apply ``operator`` to a batch of kernel slices ``(N, *k_in)`` → ``(N, *k_out)``.

    Dense (one product with R_1⊗…⊗R_d) when the kernel has ≤ 64 input and ≤ 256 output taps;
    otherwise separable, one axis at a time. Accumulation in float32 (float64 for float64 input),
    one rounding to ``out_dtype`` (default: the input's dtype). ``out``: a contiguous ``(N, *k_out)``
    tensor of ``out_dtype`` the result is written into (the dense product computes straight into it),
    as :func:`apply` has checked it.
    """
    out_dtype = out_dtype or slices.dtype
    n = slices.shape[0]
    k_in, k_out = operator.in_shape, operator.out_shape
    n_in, n_out = int(np.prod(k_in)), int(np.prod(k_out))
    fits = n_in <= DENSE_MAX_IN and n_out <= DENSE_MAX_OUT
    if fits or not operator.separable:  # not fitting: a dense operator beyond the fused kernel's registers, on torch
        flat = None if out is None else out.view(n, n_out)
        result = dispatch.apply_dense(slices.reshape(n, n_in), _torch_matrix(operator.dense(), slices), out_dtype,
                                      backend=backend if fits else "torch", out=flat)
        return result.reshape(n, *k_out) if out is None else out
    return _into(_separable_kernel_resize(slices, operator, out_dtype, backend), out)


def _separable_kernel_resize(slices: torch.Tensor, operator: KernelResize, out_dtype: torch.dtype,
                             backend: Optional[str]) -> torch.Tensor:
    n, k_in, k_out = slices.shape[0], operator.in_shape, operator.out_shape
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


def gains(operator: Operator) -> tuple[float, float]:
    """:func:`operator_gains` of a built operator: max|result| ≤ gain·max|input|."""
    if isinstance(operator, ScaleFactor):
        return operator_gains([np.array([[abs(float(operator.factor))]])])
    if isinstance(operator, GridResize):
        return kernel_gains(operator.planes)
    return kernel_gains(operator)


def out_shape(operator: Operator, shape: Sequence[int]) -> tuple[int, ...]:
    """The shape :func:`apply` gives a tensor of ``shape``."""
    if isinstance(operator, ScaleFactor):
        return tuple(shape)
    if isinstance(operator, GridResize):
        return (shape[0], operator.out_grid.cells)
    return (*shape[:2], *operator.out_shape)


def apply(operator: Operator, x: torch.Tensor, out_dtype: torch.dtype, backend: Optional[str] = None,
          out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``operator`` applied to ``x`` without the overflow check, rounded once to ``out_dtype``:
    a conv weight ``(A, B, *k)`` → ``(A, B, *k')``; a grid Linear ``(N, C·H·W)`` → ``(N, C·H'·W')``;
    any tensor times a :class:`ScaleFactor`. ``backend``: :mod:`kernelscale.dispatch`'s choice.
    ``out``: a contiguous tensor of the result's shape (:func:`out_shape`) and ``out_dtype`` to write
    the result into (a conv kernel's dense product is computed straight into it); returned."""
    if out is not None:
        check_out(out, out_shape(operator, x.shape), out_dtype, x.device, "apply")
    return _apply(operator, x, out_dtype, backend, out)


def _apply(operator: Operator, x: torch.Tensor, out_dtype: torch.dtype, backend: Optional[str],
           out: Optional[torch.Tensor]) -> torch.Tensor:
    """:func:`apply` with ``out`` already checked."""
    if isinstance(operator, ScaleFactor):
        return _into((x.to(_compute_dtype(x.dtype)) * operator.factor).to(out_dtype), out)
    if isinstance(operator, GridResize):
        return _into(_apply_grid(operator, x, out_dtype, backend), out)
    slices = x.reshape(-1, *x.shape[2:])
    flat = None if out is None else out.view(-1, *operator.out_shape)
    result = apply_kernel_resize(slices, operator, out_dtype, backend, out=flat)
    return result.reshape(*x.shape[:2], *operator.out_shape) if out is None else out


def _apply_grid(operator: GridResize, x: torch.Tensor, out_dtype: torch.dtype, backend: Optional[str]) -> torch.Tensor:
    """A grid Linear's rows ``(N, cells)`` resized as the images they flatten, in their layout."""
    grid, n = operator.grid, x.shape[0]
    # the layout's axes to (C, *spatial), each channel's map resized, and back to the layout
    canonical = x.reshape(n, *grid.sizes).permute(0, *(1 + a for a in grid.to_canonical))
    planes = canonical.reshape(n * grid.channels, *grid.spatial)
    if len(grid.spatial) == 2:
        rows, cols = (_torch_matrix(a.matrix, x) for a in operator.planes.axes)
        out = dispatch.apply_separable(planes.contiguous(), rows, cols, out_dtype, backend=backend)
    else:
        out = apply_kernel_resize(planes.contiguous(), operator.planes, out_dtype, backend)
    out_grid = operator.out_grid
    out = out.reshape(n, *out_grid.canonical)
    back = [0] * len(grid.layout)
    for i, a in enumerate(grid.to_canonical):
        back[a] = i
    return out.permute(0, *(1 + b for b in back)).reshape(n, out_grid.cells)


def overflow_check(operator: Operator, x: torch.Tensor, out_dtype: torch.dtype) -> Optional[float]:
    """max|x| when ``operator`` applied to the finite ``x`` may overflow ``out_dtype`` (so the
    result needs :func:`check_result`), else None: :func:`overflow_check_needed` with the operator's gains."""
    return overflow_check_needed(x, gains(operator), out_dtype)


def check_result(operator: Operator, x: torch.Tensor, y: torch.Tensor, out_dtype: torch.dtype, magnitude: float, name: str) -> None:
    """NonFiniteResultError naming ``name`` unless ``y`` (= :func:`apply` of ``operator`` to ``x``)
    is finite everywhere; the message's largest magnitude is recomputed exactly, in float64 on the
    CPU with the torch backend, in blocks of rows (only on failure)."""
    def largest() -> float:
        rows = x.detach().to("cpu").reshape(1) if x.ndim == 0 else x.detach().to("cpu")
        per_row = math.prod(out_shape(operator, rows.shape)[1:])
        return _largest_magnitude(rows, lambda b: apply(operator, b, torch.float64, "torch"), per_row)

    require_finite(y, name, x.dtype, out_dtype, magnitude, gains(operator)[0], largest)


def execute(operator: Operator, tensor: TensorLike, *, name: str = "weight", out_dtype: Optional[torch.dtype] = None,
            backend: Optional[str] = None, out: Optional[torch.Tensor] = None) -> TensorLike:
    """``operator`` applied to ``tensor`` (torch or numpy; same kind back, plain tensor without
    autograd history), rounded once to ``out_dtype`` (default: its dtype). An identity resize with
    the dtype kept returns ``tensor`` itself. A finite tensor whose result would overflow raises
    NonFiniteResultError naming ``name`` (the exact check runs only where the a-priori bound
    max|x|·gain allows an overflow); a tensor already holding inf or NaN is resized as it is.
    ``out``: a contiguous torch tensor of the result's shape and dtype to write the result into,
    with the same values (returned; the streaming converter computes into its output blocks so)."""
    x = as_torch(tensor, name)
    out_dtype = check_out_dtype(out_dtype, name) or x.dtype
    if out is not None:
        check_out(out, out_shape(operator, x.shape), out_dtype, x.device, name)
    if operator.is_identity and out_dtype == x.dtype:
        return tensor if out is None else out.copy_(x)
    magnitude = overflow_check(operator, x, out_dtype)
    y = _apply(operator, x, out_dtype, backend, out)
    if magnitude is not None:
        check_result(operator, x, y, out_dtype, magnitude, name)
    return y if out is not None else like_input(y, tensor)
