"""Resize operators: the matrix R that maps a kernel's taps to the resized kernel's taps.

Pure functions of (kernel size, scale, options) returning float64 numpy matrices
(DESIGN §3). Every method is linear on the spatial axes: per axis a matrix ``R`` of shape
``(k_out, k_in)``; a d-dimensional kernel is resized by ``R_1 ⊗ … ⊗ R_d``. Builders are cached,
so an operator is built once per distinct (size, scale, options) and reused for every tensor.

Conventions (DESIGN §2): tap ``t`` of a size-``k`` kernel sits at offset ``t - (k-1)/2`` from the
kernel centre, in input pixels; a scale ``s`` makes one input pixel ``s`` output pixels.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import numpy as np

from kernelscale.grid import GridLayout, grid_layout
from kernelscale.errors import InvalidOptionError
from kernelscale.method import (
    ALIGNS,
    METHODS,
    MODES,
    Coef,
    DisperseParams,
    Method,
    axis_scales,
    check_choice,
    method_of,
    number_text,
    validate_coef,
    validate_scale,
)

# Half-width of each interpolation kernel's support, in input pixels.
SUPPORT_RADIUS = {"nearest": 0.5, "linear": 1.0, "cubic": 2.0, "lanczos3": 3.0}

# Keys' cubic convolution parameter used by torch's and OpenCV's bicubic.
CUBIC_A = -0.75

# The longest axis a resize may produce. R alone is k_out × k float64 (a 256-tap STFT kernel to
# 65536 taps: 128 MiB) and the resized tensor grows with it; a scale past this is a typo (1e9 for
# 1.9), refused before anything is allocated.
MAX_TAPS = 65536

# The largest least-squares system method disperse builds, in float64 elements (512 MiB): the
# calibration holds probe^d · ((probe−1)s+1)^d rows by k'^d + k^d columns (DESIGN §3), which
# grows as s^(2d) — 5.7 TB at s = 100 — so it is bounded before anything is allocated.
MAX_DISPERSE_ELEMENTS = 2**26


def interpolation_kernel(mode: str) -> Callable[[np.ndarray], np.ndarray]:
    """Return φ for ``mode``: a vectorised function of the offset x in input pixels.

    nearest is the symmetric box (1 inside, ½ on the edges |x| = ½, so that φ sampled at step
    1/s sums to exactly s for integer s); linear is the triangle; cubic is Keys' kernel with
    a = -0.75; lanczos3 is sinc(x)·sinc(x/3) on |x| < 3, exactly 0 at non-zero integers.
    """
    check_choice("mode", mode, MODES)
    if mode == "nearest":
        return lambda x: np.where(np.abs(x) < 0.5, 1.0, np.where(np.abs(x) == 0.5, 0.5, 0.0))
    if mode == "linear":
        return lambda x: np.clip(1.0 - np.abs(x), 0.0, None)
    if mode == "cubic":
        return _keys_cubic
    return _lanczos3


def _keys_cubic(x: np.ndarray) -> np.ndarray:
    a = CUBIC_A
    ax = np.abs(np.asarray(x, dtype=np.float64))
    near = ((a + 2) * ax - (a + 3)) * ax * ax + 1
    far = ((a * ax - 5 * a) * ax + 8 * a) * ax - 4 * a
    return np.where(ax <= 1, near, np.where(ax < 2, far, 0.0))


def _lanczos3(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    value = np.sinc(x) * np.sinc(x / 3.0)
    integer = (x == np.round(x)) & (x != 0)
    return np.where((np.abs(x) < 3) & ~integer, value, np.where(x == 0, 1.0, 0.0))


def tap_offsets(k: int) -> np.ndarray:
    """Offsets of a size-k kernel's taps from its centre: ``-(k-1)/2 … (k-1)/2``."""
    return np.arange(k, dtype=np.float64) - (k - 1) / 2


@dataclass(frozen=True)
class AxisResize:
    """The resize of one spatial axis: ``new_taps = matrix @ old_taps``.

    ``matrix`` has shape ``(k_out, k_in)``, float64, read-only, coefficient folded in.
    ``centre_offset`` is the sub-pixel part, in output pixels, of the padding a 'same' conv
    would need after this resize by the DESIGN §3 rule (0 for ``align="taps"``, ½ for cells
    with an even k_out from an odd k_in): the half-pixel shift that padding cannot express.
    """

    matrix: np.ndarray = field(repr=False, compare=False)  # a function of the other fields
    k_in: int
    k_out: int
    scale: float
    method: str
    mode: str
    align: str
    coef: Coef

    @property
    def centre_offset(self) -> float:
        # A 'same' conv (odd k, δ = 0) needs p' = (k'−1)/2; an even kernel's typical padding
        # has δ = ½, p' = (k'−1)/2 − s/2. The fractional part is what padding cannot express.
        delta = 0.0 if self.k_in % 2 == 1 else 0.5
        return float(((self.k_out - 1) / 2 - self.scale * delta) % 1.0)


def _is_integer(s: float) -> bool:
    return float(s).is_integer()


@functools.lru_cache(maxsize=1024)
def build_axis_resize(
    k: int,
    scale: float,
    method: str = "interp",
    mode: str = "linear",
    align: str = "taps",
    coef: Coef = "mass",
) -> AxisResize:
    """Build the resize matrix R ``(k_out, k)`` of one axis (DESIGN §3 table).

    - ``interp``/``taps``: R[u, t] = c·φ(u/s − t) over every new tap u (offset from the centre,
      in output pixels) where φ ≠ 0; for s < 1 the splat R[u, t] ∝ φ(u − s·t). Satisfies T2:
      for integer s, R equals dilation by s followed by the filter c·h_s, h_s[u] = φ(u/s).
    - ``interp``/``cells``: exactly ``F.interpolate(K, size=round(k·s), align_corners=False)``
      (nearest → 'nearest-exact'; s < 1 with antialiasing), times c.
    - ``dilate``: zero insertion R[s·t, t] = 1, integer s ≥ 1; exact by T1.
    - ``pinv``: R = pinv(Bᵀ) with B the cells upsampler matrix, so ⟨R w, B x⟩ = ⟨w, x⟩ (T6).
      The coefficient does not apply.

    ``coef``: ``"mass"`` normalises every column of R to sum 1 (T4: Σ K' = Σ K);
    ``"paper"`` multiplies by 1/s (for s ≥ 1; the splat of s < 1 already conserves mass);
    a float multiplies the unnormalised matrix. Size-1 axes and s = 1 give the identity.
    Raises InvalidOptionError for a bad method, mode, align, coef or scale.
    """
    scale = validate_scale(scale)
    check_choice("method", method, METHODS)
    check_choice("mode", mode, MODES)
    check_choice("align", align, ALIGNS)
    coef = validate_coef(coef)
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise InvalidOptionError(f"kernel size must be a positive integer, got {k!r}")
    k = int(k)

    if method == "disperse":
        raise InvalidOptionError("method 'disperse' is not separable: build it with build_kernel_resize")
    if k == 1 or scale == 1.0:
        matrix = np.eye(k)
    else:
        # Before building anything: a typo'd scale (1e9) would otherwise allocate gigabytes.
        check_taps(k, scale, axis_size(k, scale, method, mode, align))
        if method == "dilate":
            matrix = _dilate_matrix(k, scale)
        elif method == "pinv":
            matrix = np.linalg.pinv(cells_upsampler(k, _cells_size(k, scale), mode).T)
        elif align == "cells":
            matrix = _apply_coef(cells_upsampler(k, _cells_size(k, scale), mode), coef, k / _cells_size(k, scale))
        else:
            matrix = _apply_coef(_taps_matrix(k, scale, mode), coef, 1.0 / scale if scale > 1 else 1.0)
    matrix = np.ascontiguousarray(matrix, dtype=np.float64)
    matrix.flags.writeable = False
    return AxisResize(matrix, k, matrix.shape[0], scale, method, mode, align, coef)


def _apply_coef(raw: np.ndarray, coef: Coef, paper: float) -> np.ndarray:
    if coef == "mass":
        sums = raw.sum(axis=0, keepdims=True)
        if np.any(sums == 0):
            raise InvalidOptionError(f"coef 'mass': a tap has no weight after resizing ({raw.shape[1]} -> {raw.shape[0]} taps)")
        return raw / sums
    if coef == "paper":
        return raw * paper
    return raw * float(coef)


def axis_size(k: int, scale: float, method: str = "interp", mode: str = "linear", align: str = "taps") -> int:
    """k_out of :func:`build_axis_resize` for these arguments, computed without building R.

    Raises InvalidOptionError where build_axis_resize would (dilate by a non-integer scale, a
    cells size of 0). ``method="disperse"``: the default size (k−1)·s+1.
    """
    if k == 1 or scale == 1.0:
        return k
    if method in ("dilate", "disperse"):
        return (k - 1) * _dilate_factor(scale, method) + 1
    if method == "pinv" or align == "cells":
        return _cells_size(k, scale)
    return _taps_extent(k, scale, mode)[1]


def check_taps(k: int, scale: float, size: int) -> None:
    """InvalidOptionError when a resize would make a k-tap axis longer than MAX_TAPS."""
    if size > MAX_TAPS:
        raise InvalidOptionError(f"scale {number_text(scale)} would make a {k}-tap axis {size} taps long (limit {MAX_TAPS})")


def check_disperse_size(k: int, k_new: int, scale: int, probe: int, ndim: int) -> None:
    """InvalidOptionError when method disperse's calibration system (k → k_new taps per axis at
    integer ``scale``, ``probe``-pixel probes, ``ndim`` axes) would exceed MAX_DISPERSE_ELEMENTS."""
    rows = probe**ndim * (((probe - 1) * scale + 1) ** ndim + probe**ndim)
    elements = rows * (k_new**ndim + k**ndim)
    if elements > MAX_DISPERSE_ELEMENTS:
        raise InvalidOptionError(f"method 'disperse' at scale {scale} with probe {probe} ({k} -> {k_new} taps, {ndim}-D) needs a "
                                 f"calibration system of {elements} values (limit {MAX_DISPERSE_ELEMENTS}); use a smaller scale "
                                 "or probe, or another method")


def _cells_size(k: int, scale: float) -> int:
    size = math.floor(k * scale + 0.5)
    if size < 1:
        raise InvalidOptionError(f"scale {scale!r} empties a kernel of size {k} (round({k}·{scale}) = 0)")
    return size


def _taps_extent(k: int, scale: float, mode: str) -> tuple[float, int]:
    """First offset and number of the new taps of the interp/taps matrix, from k and s alone.

    The candidates are every offset |u| ≤ reach (integers when k is odd or s an even integer,
    half-integers otherwise, so the kernel stays centred), reach = s·((k−1)/2 + r) for s ≥ 1 and
    s·(k−1)/2 + r for the splat of s < 1, r the mode's support radius. All-zero rows are then
    dropped symmetrically from both ends; only those end rows are evaluated, so the size of a
    resize is known without allocating it.
    """
    radius = SUPPORT_RADIUS[mode]
    reach = scale * ((k - 1) / 2 + radius) if scale >= 1 else scale * (k - 1) / 2 + radius
    if k % 2 == 1 or (_is_integer(scale) and int(scale) % 2 == 0):
        n = math.floor(reach + 1e-9)
        first, count = float(-n), 2 * n + 1
    else:
        n = max(math.floor(reach - 0.5 + 1e-9), 0)
        first, count = -n - 0.5, 2 * n + 2
    t = tap_offsets(k)

    def zero_rows(start: float, step: float) -> int:
        zeros = 0
        while zeros < count // 2 and not np.any(_taps_rows(np.array([start + step * zeros]), t, scale, mode)):
            zeros += 1
        return zeros

    cut = min(zero_rows(first, 1.0), zero_rows(-first, -1.0))  # the offsets are symmetric: last = -first
    return first + cut, count - 2 * cut


def _taps_rows(u: np.ndarray, t: np.ndarray, scale: float, mode: str) -> np.ndarray:
    """Rows of the unnormalised taps matrix at new-tap offsets ``u``: φ(u/s − t), or φ(u − s·t) for s < 1."""
    phi = interpolation_kernel(mode)
    if scale >= 1:
        return phi((u[:, None] - scale * t[None, :]) / scale)
    return phi(u[:, None] - scale * t[None, :])


def _taps_matrix(k: int, scale: float, mode: str) -> np.ndarray:
    first, count = _taps_extent(k, scale, mode)
    return _taps_rows(first + np.arange(count, dtype=np.float64), tap_offsets(k), scale, mode)


def _trim_zero_rows(raw: np.ndarray) -> np.ndarray:
    """Drop all-zero rows symmetrically from both ends, keeping the kernel centred."""
    nonzero = np.flatnonzero(np.any(raw != 0, axis=1))
    cut = min(nonzero[0], raw.shape[0] - 1 - nonzero[-1])
    return raw[cut : raw.shape[0] - cut]


def _dilate_factor(scale: float, method: str) -> int:
    if not _is_integer(scale) or scale < 1:
        raise InvalidOptionError(f"method {method!r} needs an integer scale >= 1, got {scale!r}")
    return int(scale)


def _dilate_matrix(k: int, scale: float) -> np.ndarray:
    s = _dilate_factor(scale, "dilate")
    matrix = np.zeros(((k - 1) * s + 1, k))
    matrix[np.arange(k) * s, np.arange(k)] = 1.0
    return matrix


@functools.lru_cache(maxsize=1024)
def cells_upsampler(n_in: int, n_out: int, mode: str) -> np.ndarray:
    """The matrix B ``(n_out, n_in)`` of ``F.interpolate(x, size=n_out, align_corners=False)``.

    nearest uses torch's 'nearest-exact' (cell centres, DESIGN §2; at a tie it takes the right
    neighbour) and, when n_out < n_in, the antialiased box (exact area overlaps) so no tap is
    dropped; linear and cubic are torch's (bi)linear/(bi)cubic with clamped edges, antialiased
    when n_out < n_in; lanczos3, which torch lacks, uses the same cell mapping with clamped
    edges and rows normalised to sum 1.
    Rows of B are the weights of each output sample. Read-only.
    """
    check_choice("mode", mode, MODES)
    if mode == "lanczos3":
        matrix = _lanczos_cells(n_in, n_out)
    elif mode == "nearest" and n_out < n_in:
        matrix = _area_cells(n_in, n_out)
    else:
        matrix = _torch_cells(n_in, n_out, mode)
    matrix.flags.writeable = False
    return matrix


def _torch_cells(n_in: int, n_out: int, mode: str) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    # The resized axis is the last one: torch's antialiased path mishandles a size-1 last axis.
    basis = torch.eye(n_in, dtype=torch.float64).reshape(n_in, 1, 1, n_in)
    torch_mode = {"nearest": "nearest-exact", "linear": "bilinear", "cubic": "bicubic"}[mode]
    kwargs = {} if mode == "nearest" else {"align_corners": False, "antialias": n_out < n_in}
    out = F.interpolate(basis, size=(1, n_out), mode=torch_mode, **kwargs)
    return out.reshape(n_in, n_out).T.numpy().copy()


def _area_cells(n_in: int, n_out: int) -> np.ndarray:
    edges_out = np.arange(n_out + 1) * (n_in / n_out)
    lo = np.maximum(edges_out[:-1, None], np.arange(n_in)[None, :])
    hi = np.minimum(edges_out[1:, None], np.arange(n_in)[None, :] + 1)
    overlap = np.clip(hi - lo, 0.0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def _lanczos_cells(n_in: int, n_out: int) -> np.ndarray:
    ratio = n_in / n_out
    width = max(ratio, 1.0)
    centres = (np.arange(n_out) + 0.5) * ratio - 0.5
    matrix = np.zeros((n_out, n_in))
    reach = math.ceil(3 * width) + 1
    for j, c in enumerate(centres):
        for i in range(math.floor(c) - reach, math.floor(c) + reach + 1):
            matrix[j, min(max(i, 0), n_in - 1)] += _lanczos3(np.array((c - i) / width))
    return matrix / matrix.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class KernelResize:
    """The resize of a d-dimensional kernel: one AxisResize per spatial axis, or one dense
    non-separable matrix (method ``disperse``).

    ``dense()`` is ``R_1 ⊗ … ⊗ R_d`` of shape ``(prod k_out, prod k_in)`` (row-major tap order,
    matching ``weight.reshape(-1, prod k_in)``). ``relative_loss`` is the disperse calibration's.
    """

    axes: tuple[AxisResize, ...]
    matrix: Optional[np.ndarray] = field(default=None, repr=False)
    relative_loss: Optional[float] = None
    dense_shapes: Optional[tuple[tuple[int, ...], tuple[int, ...]]] = None

    @property
    def in_shape(self) -> tuple[int, ...]:
        return self.dense_shapes[0] if self.dense_shapes else tuple(a.k_in for a in self.axes)

    @property
    def out_shape(self) -> tuple[int, ...]:
        return self.dense_shapes[1] if self.dense_shapes else tuple(a.k_out for a in self.axes)

    @property
    def separable(self) -> bool:
        return self.matrix is None

    @property
    def is_identity(self) -> bool:
        if self.matrix is not None:
            return False
        return all(a.k_in == a.k_out and np.array_equal(a.matrix, np.eye(a.k_in)) for a in self.axes)

    def dense(self) -> np.ndarray:
        """The whole operator as one read-only matrix, computed once per operator."""
        if self.matrix is not None:
            return self.matrix
        return _dense_of(self.axes)


@dataclass(frozen=True)
class GridResize:
    """The resize of a Linear ``(out, cells)`` whose input is a flattened ``grid``
    (:class:`~kernelscale.grid.GridLayout`: its axis order and sizes; DESIGN §5): ``planes``, a
    separable resize of the spatial axes (canonical order D, H, W), applied to each channel of every
    row; the result is ``(out, cells')`` flattened in the same layout."""

    grid: GridLayout
    planes: KernelResize

    def __post_init__(self) -> None:
        if not isinstance(self.grid, GridLayout):  # (C, H, W) sizes: a plain flatten
            object.__setattr__(self, "grid", grid_layout(self.grid))

    @property
    def out_grid(self) -> GridLayout:
        return self.grid.with_spatial(self.planes.out_shape)

    @property
    def is_identity(self) -> bool:
        return self.planes.is_identity


@dataclass(frozen=True)
class ScaleFactor:
    """Multiplication of every value by ``factor`` (an attention temperature baked into a query
    projection, DESIGN §10): the 1×1 operator of a tensor that keeps its shape."""

    factor: float

    @property
    def is_identity(self) -> bool:
        return False  # applied even at 1.0: the entry is a resize, its result a new tensor


# A built operator of a plan entry: how its tensor's values change (kernelscale.execute applies it).
Operator = Union[KernelResize, GridResize, ScaleFactor]


@functools.lru_cache(maxsize=256)
def _dense_of(axes: tuple[AxisResize, ...]) -> np.ndarray:
    matrix = _kron_all(tuple(a.matrix for a in axes))
    matrix.flags.writeable = False
    return matrix


def _kron_all(matrices: tuple[np.ndarray, ...]) -> np.ndarray:
    out = np.ones((1, 1))
    for m in matrices:
        out = np.kron(out, m)
    return out


def build_kernel_resize(
    kernel_shape: Sequence[int],
    scale: Union[float, Sequence[float]],
    method: Union[str, Method, None] = None,
    mode: Optional[str] = None,
    align: Optional[str] = None,
    coef: Optional[Coef] = None,
    disperse: Optional[DisperseParams] = None,
) -> KernelResize:
    """Build the resize of a kernel with spatial shape ``kernel_shape`` (d = 1, 2 or 3 axes).

    ``scale`` is one number or one per axis. ``method`` is a :class:`~kernelscale.method.Method`,
    or its fields as arguments (defaults: interp, linear, taps, mass). A user float ``coef`` is the
    constant for the whole kernel and is folded into the first resized axis; ``"mass"``/``"paper"``
    act per axis. ``disperse`` (method ``"disperse"`` only): see :mod:`kernelscale.disperse`; the
    kernel must have equal odd sizes and equal integer scales on every axis.
    """
    resize = method_of(method, mode=mode, align=align, coef=coef, disperse=disperse)
    return kernel_resize(kernel_shape, axis_scales(scale, len(kernel_shape)), resize)


def kernel_resize(kernel_shape: Sequence[int], scales: Sequence[float], method: Method) -> KernelResize:
    """:func:`build_kernel_resize` for values already validated where they entered: ``scales`` one
    per axis (:func:`~kernelscale.method.axis_scales`), ``method`` a Method (align and coef left
    None take the kernel defaults, taps and mass). Cached per distinct arguments."""
    m = method.for_kernel()
    return _build_kernel_resize(tuple(int(k) for k in kernel_shape), tuple(float(s) for s in scales), m.method, m.mode, m.align,
                                m.coef, m.disperse)


def grid_resize(plane_shape: Sequence[int], scales: Sequence[float], method: Method) -> KernelResize:
    """The separable resize of the ``(H, W)`` planes of a Linear over a flattened grid (DESIGN §5):
    one :func:`build_axis_resize` per axis with the grid defaults (align cells, coef paper) for
    fields ``method`` leaves None."""
    m = method.for_grid()
    return KernelResize(tuple(build_axis_resize(int(n), float(s), m.method, m.mode, m.align, m.coef)
                              for n, s in zip(plane_shape, scales)))


@functools.lru_cache(maxsize=1024)
def _build_kernel_resize(kernel_shape: tuple[int, ...], scales: tuple[float, ...], method: str, mode: str, align: str,
                         coef: Coef, disperse: DisperseParams) -> KernelResize:
    if method == "disperse":
        return _disperse_resize(tuple(int(k) for k in kernel_shape), scales, disperse)
    per_axis_coef: Coef = coef if isinstance(coef, str) else 1.0
    axes = [build_axis_resize(int(k), s, method, mode, align, per_axis_coef) for k, s in zip(kernel_shape, scales)]
    if not isinstance(coef, str) and coef != 1.0 and method != "pinv":
        resized = [i for i, a in enumerate(axes) if a.k_in > 1 and a.scale != 1.0]
        if resized:
            i = resized[0]
            a = axes[i]
            matrix = a.matrix * coef
            matrix.flags.writeable = False
            axes[i] = AxisResize(matrix, a.k_in, a.k_out, a.scale, a.method, a.mode, a.align, coef)
    return KernelResize(tuple(axes))


def _disperse_resize(kernel_shape: tuple[int, ...], scales: tuple[float, ...], params: DisperseParams) -> KernelResize:
    from kernelscale.disperse import disperse_matrix

    if len(set(kernel_shape)) != 1 or len(set(scales)) != 1:
        raise InvalidOptionError(f"method 'disperse' needs a square kernel and one scale, got kernel {kernel_shape} and scales {scales}")
    k, s = kernel_shape[0], scales[0]
    if s == 1.0:
        return build_kernel_resize(kernel_shape, scales, "interp")
    if not float(s).is_integer():
        raise InvalidOptionError(f"method 'disperse' needs an integer scale >= 1, got {s!r}")
    size = params.size if params.size is not None else (k - 1) * int(s) + 1
    check_taps(k, s, int(size))
    check_disperse_size(k, int(size), int(s), int(params.probe), len(kernel_shape))
    matrix, loss = disperse_matrix(k, int(size), float(s), int(params.probe), float(params.eta), len(kernel_shape))
    return KernelResize((), matrix, loss, (kernel_shape, (int(size),) * len(kernel_shape)))


def filter_taps(mode: str, scale: int) -> np.ndarray:
    """h_s of T2: φ sampled at step 1/s on the output grid, h_s[u] = φ(u/s); sums to ≈ s."""
    phi = interpolation_kernel(mode)
    n = math.ceil(SUPPORT_RADIUS[mode] * scale)
    u = np.arange(-n, n + 1, dtype=np.float64)
    return _trim_zero_rows(phi(u / scale)[:, None])[:, 0]


def frequency_response(mode: str, scale: int, omega: np.ndarray, coef: Coef = "mass") -> np.ndarray:
    """c·ĥ_s(ω): the DTFT of the T2 filter at ω radians per output sample (real, h_s symmetric).

    c = 1/Σh_s for ``"mass"``, 1/s for ``"paper"``, or the given float. T3 bounds the relative
    error of interp by max |1 − c·ĥ_s(ω)| over the input's band, ω ≤ 2π·ν₀/s.
    """
    h = filter_taps(mode, scale)
    u = np.arange(h.size) - (h.size - 1) / 2
    c = 1.0 / h.sum() if coef == "mass" else (1.0 / scale if coef == "paper" else float(coef))
    omega = np.asarray(omega, dtype=np.float64)
    return c * np.cos(omega[..., None] * u).dot(h)
