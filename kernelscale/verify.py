"""Per-layer certificates: how well a resized kernel keeps the layer's function (DESIGN §4).

All three measures are computed exactly in the frequency domain for periodic inputs and the
ideal upsampler U (which maps a low-res frequency ν, in cycles per low-res pixel, to ν/s per
high-res pixel), so no boundary effects or interpolation error of a practical U blur them:

- ``structure_error``: rel‖conv(U x, K') − U conv(x, K)‖ over seeded random probes x,
  band-limited to |ν| ≤ ``band`` on every axis. With H(ω) the (C_out × C_in) frequency response,
  the error of a probe with spectrum X(ν) is Σ_ν ‖(H'(2πν/s)·e^{iφ} − H(2πν))·X(ν)‖², φ the
  half-pixel phase of an even kernel's padding. Dilation: 0 (T1); interp taps: ≤ max|1 − c·ĥ_s| (T3).
- ``alias_gain``: RMS response of K' at high-res frequencies above the low-res Nyquist
  (|ω| > π/s on some axis), relative to the RMS response of K over its whole band: how much
  detail the supersampled input has that the original network never saw gets through.
- ``dc_gain_ratio``: ⟨H'(0), H(0)⟩ / ‖H(0)‖² — 1 when the DC gain is kept (T4); None (JSON
  null) when it is undefined: ORIG's kernel sums to zero on every (output, input) channel
  measured (a Sobel or Laplacian filter: H(0) = 0, so the ratio is 0/0; the structure error
  still measures a DC response the converted kernel gained, DC being in every probe's band).

A weight-normed layer (v and g, w = g·v/‖v‖; docs/format.md) is measured on its effective weight
w, computed in float64 on both sides from the stored v and g, so that a broken g shows.

Non-finite values: a certificate counts the inf/NaN values of the CONVERTED and ORIG tensors it
read (``nonfinite``, ``nonfinite_original``); measures computed from them are NaN or inf, never
hidden. :meth:`LayerCertificate.fails` counts a layer whose CONVERTED tensors hold non-finite
values where ORIG's are all finite as a failure whatever the tolerance, and, under a tolerance,
any measure that is not a finite number. ``to_json`` writes null for a measure that is not a
finite number (strict JSON has no NaN).

Output channels are subsampled (seeded) to at most ``max_channels`` to bound the cost.
"""

from __future__ import annotations

import contextlib
import math
import os
import posixpath
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from kernelscale.errors import InvalidCheckpointError, InvalidOptionError, WeightNormError
from kernelscale.geometry import window_shift
from kernelscale.manifest import (AttentionRecord, ConvRecord, FactoredRecord, GridRecord, Manifest, Record, RenormRecord,
                                  WeightNormLink, as_record)
from kernelscale.reparam import g_fits, norm_dim, norms_text, plain_weight, weight_norm_g_name

DEFAULT_BAND = 0.25
DEFAULT_PROBES = 4
DEFAULT_SEED = 0
MAX_PROBES = 1000
"""The most probes per layer. Time grows linearly with the probes (measured, 2 shared cores: 64 ms
per probe for the three layers of examples/digits_cnn, 0.4–1.9 s for one Stable Diffusion sized
layer), while the sampling noise of the structure error falls as 1/√N: at 1000 it is ≤ 0.2 % of
the value even on a small 1-D layer (8×4×7: 5.5 % at N = 1), far below any useful tolerance."""


def check_band(band: float) -> float:
    """``band`` if 0 < band ≤ ½ (cycles per low-res pixel: ½ is the Nyquist frequency), else InvalidOptionError."""
    if not 0 < band <= 0.5:
        raise InvalidOptionError(f"band must be in (0, 0.5] cycles per pixel, got {band!r}")
    return band


def check_probes(probes: int) -> int:
    """``probes`` if it is an integer in [1, :data:`MAX_PROBES`], else InvalidOptionError."""
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
        raise InvalidOptionError(f"probes must be an integer >= 1, got {probes!r}")
    if probes > MAX_PROBES:
        raise InvalidOptionError(f"probes must be at most {MAX_PROBES}, got {probes!r} (the time grows linearly with the "
                                 f"probes: ~64 ms per probe for examples/digits_cnn; past {MAX_PROBES} the structure error's "
                                 "sampling noise, under 0.2 %, no longer changes anything)")
    return probes


def check_seed(seed: int) -> int:
    """``seed`` if it is an integer ≥ 0 (numpy's generators take no negative seed), else InvalidOptionError."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InvalidOptionError(f"seed must be an integer >= 0, got {seed!r}")
    return seed


def check_tol(tol: Optional[float]) -> Optional[float]:
    """``tol`` if it is None or a number ≥ 0, else InvalidOptionError."""
    if tol is not None and not tol >= 0:
        raise InvalidOptionError(f"tol must be a number >= 0, got {tol!r}")
    return tol


def _finite(value: Optional[float]) -> bool:
    """A measure that is a finite number, or None (undefined, not broken)."""
    return value is None or math.isfinite(value)


def _json_number(value: Optional[float]) -> Optional[float]:
    """``value``, or None for a measure that is not a finite number (strict JSON has no NaN or Infinity)."""
    return value if value is not None and math.isfinite(value) else None


def _count_nonfinite(*tensors: Optional[torch.Tensor]) -> int:
    return sum(int((~torch.isfinite(t)).sum()) for t in tensors if t is not None and t.is_floating_point())


@dataclass(frozen=True)
class LayerCertificate:
    """The three measures of one changed layer, with what produced them.

    ``dc_gain_ratio`` is None when undefined (ORIG's kernel sums to zero: 0/0). ``nonfinite``,
    ``nonfinite_original``: inf/NaN values in the CONVERTED and ORIG tensors measured (v and g of a
    weight-normed layer). ``weight_norm_g``: g's name when ``name`` is weight norm's v and the
    measures are of the effective weight g·v/‖v‖.
    """

    name: str
    method: str
    old_shape: tuple[int, ...]
    new_shape: tuple[int, ...]
    structure_error: float
    alias_gain: float
    dc_gain_ratio: Optional[float]
    file: str = ""  # the converted file holding the tensor, relative to CONVERTED ("" for a single file)
    nonfinite: int = 0
    nonfinite_original: int = 0
    weight_norm_g: Optional[str] = None

    @property
    def label(self) -> str:
        """``name``, or ``file: name`` in a checkpoint of several files."""
        return f"{self.file}: {self.name}" if self.file else self.name

    @property
    def name_shown(self) -> str:
        """``name``, with `` (weight norm)`` when the effective weight g·v/‖v‖ was measured."""
        return self.name + (" (weight norm)" if self.weight_norm_g else "")

    @property
    def shown(self) -> str:
        """``name_shown``, after ``file: `` in a checkpoint of several files."""
        return f"{self.file}: {self.name_shown}" if self.file else self.name_shown

    @property
    def broken(self) -> bool:
        """CONVERTED holds non-finite values where ORIG's are all finite."""
        return self.nonfinite > 0 and self.nonfinite_original == 0

    @property
    def finite(self) -> bool:
        """Every measure is a finite number (an undefined DC gain ratio counts as finite)."""
        return all(_finite(v) for v in (self.structure_error, self.alias_gain, self.dc_gain_ratio))

    def fails(self, tol: Optional[float]) -> bool:
        """:attr:`broken`, whatever ``tol``; under a ``tol``, also a structure error above it or any
        measure that is not a finite number (NaN > tol being false, NaN must not pass)."""
        if self.broken:
            return True
        return tol is not None and (not self.structure_error <= tol or not self.finite)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["old_shape"], data["new_shape"] = list(self.old_shape), list(self.new_shape)
        for key in ("structure_error", "alias_gain", "dc_gain_ratio"):
            data[key] = _json_number(data[key])
        return data


# Input channels per block of the structure measure: its responses hold (grid points/2)·C_out·block
# complex128 values, 545·64·256·16 B = 143 MB for a 2-D layer at the defaults, whatever C_in is.
_CHANNEL_BLOCK = 256


def _phases(omega: np.ndarray, k: int, d: int, shift: float) -> np.ndarray:
    """e^{−iω·(d·t + shift)}: ``(len(omega), k)``, t the tap offsets from the kernel centre."""
    t = (np.arange(k) - (k - 1) / 2) * d + shift
    return np.exp(-1j * np.outer(omega, t))


def _responses(kernel: torch.Tensor, omegas: Sequence[np.ndarray], dilation: Sequence[int], shift: Sequence[float],
               points: Optional[int] = None) -> torch.Tensor:
    """H(ω) = Σ_t K[t]·e^{−i ω·(d·t + shift)} on the grid ``omegas`` (one 1-D array per axis), at its
    first ``points`` points (default all) in row-major order.

    kernel ``(C_out, C_in, *k)``, real → ``(points, C_out, C_in)`` complex128; tap offsets t are
    measured from the kernel centre. One axis at a time, each a matrix product (the first in real
    arithmetic), the grid axes leading so that no product needs a transposed copy.
    """
    o, i, *ks = kernel.shape
    sizes = [len(w) for w in omegas]
    total = math.prod(sizes)
    points = total if points is None else points
    first = -(-points // (total // sizes[0]))  # the rows of the first grid axis that hold them
    out = kernel.reshape(o * i, *ks).movedim(0, -1)  # (k_1, …, k_d, C_out·C_in)
    batch = 1
    for axis, (omega, d, sh) in enumerate(zip(omegas, dilation, shift)):
        phase = _phases(omega[:first] if axis == 0 else omega, ks[axis], d, sh)
        view = out.reshape(batch, ks[axis], -1)
        if axis == 0:
            out = torch.complex(torch.matmul(torch.from_numpy(phase.real.copy()), view),
                                torch.matmul(torch.from_numpy(phase.imag.copy()), view))
        else:
            out = torch.matmul(torch.from_numpy(phase), view)
        batch *= phase.shape[0]
    return out.reshape(batch, o, i)[:points]


def _power(kernel: torch.Tensor, omegas: Sequence[np.ndarray], dilation: Sequence[int]) -> torch.Tensor:
    """Σ_{o,i} |H(ω)|² on the grid ``omegas`` → ``(len(omegas[0]), …)`` float64, as the transform of
    the taps' autocorrelation summed over the channels, R[δ] = Σ_{o,i,t} K[t]·K[t+δ] (|H|² = H·H̄,
    whose shift phase cancels): no response per channel pair is formed."""
    o, i, *ks = kernel.shape
    flat = kernel.reshape(o * i, -1)
    gram = flat.T @ flat  # (T, T): Σ_{o,i} K[t]·K[t′]
    taps = np.indices(ks).reshape(len(ks), -1)
    lags = taps[:, None, :] - taps[:, :, None] + (np.array(ks) - 1)[:, None, None]  # t′ − t, from 0
    size = [2 * k - 1 for k in ks]
    index = torch.from_numpy(np.ravel_multi_index(tuple(lags), size).reshape(-1))
    r = torch.zeros(math.prod(size), dtype=kernel.dtype).index_add_(0, index, gram.reshape(-1)).reshape(size)
    power = _responses(r[None, None], omegas, dilation, [0.0] * len(omegas))[:, 0, 0].real
    return power.reshape([len(w) for w in omegas])


def _structure_sums(kernel: torch.Tensor, new_kernel: torch.Tensor, low_omegas: Sequence[np.ndarray],
                    high_omegas: Sequence[np.ndarray], dilation: Sequence[int], shift: Sequence[float],
                    spectra: np.ndarray) -> tuple[float, float]:
    """(Σ |Σ_i (H′ − H)·X|², Σ |Σ_i H·X|²) over the probes, the output channels and the grid, for
    the probe spectra ``spectra (P, C_in, *G)``, H the old kernel's response on ``low_omegas``, H′
    the new one's on ``high_omegas``. The grids are symmetric and the kernels real, so H(−ω) =
    conj H(ω): only half the points are computed, and the mirrored point −ω contributes
    |conj(H)·X|² = |H·conj(X)|², as more probe columns of the same product."""
    probes, i = spectra.shape[:2]
    points = spectra[0, 0].size
    half = points // 2 + 1  # the grid is odd-sized: its middle point is ω = 0
    x = np.moveaxis(spectra, (0, 1), (-1, -2)).reshape(points, i, probes)  # (G, C_in, P)
    mirrored = np.conj(x[::-1][:half])
    mirrored[half - 1] = 0  # ω = 0 is its own mirror: counted once
    x = torch.from_numpy(np.ascontiguousarray(np.concatenate([x[:half], mirrored], axis=-1)))
    y_low = y_high = torch.zeros((), dtype=torch.complex128)
    for start in range(0, i, _CHANNEL_BLOCK):
        block = slice(start, start + _CHANNEL_BLOCK)
        low = _responses(kernel[:, block], low_omegas, [1] * len(low_omegas), [0.0] * len(low_omegas), half)
        high = _responses(new_kernel[:, block], high_omegas, dilation, shift, half)
        y_low = y_low + torch.matmul(low, x[:, block])
        y_high = y_high + torch.matmul(high, x[:, block])
    return float(torch.view_as_real(y_high - y_low).pow(2).sum()), float(torch.view_as_real(y_low).pow(2).sum())


def materialise_factored(name: str, kernel: torch.Tensor, record: FactoredRecord) -> tuple[torch.Tensor, ConvRecord]:
    """The kernel a factored layer runs as (T2: the interp/taps resize of its kept ``kernel``, by
    the same operator and arithmetic ``kernelscale convert`` materialises with, in the kernel's
    dtype) and the conv record of that resize, so that a factored checkpoint is certified exactly
    as the materialised one. InvalidCheckpointError naming ``name`` where the record does not
    describe a resize of this kernel."""
    from kernelscale.execute import execute
    from kernelscale.method import Method
    from kernelscale.transforms import kernel_resize

    p = record.prefilter
    if tuple(kernel.shape[2:]) != record.old_spatial or p.kernel_shape != record.old_spatial:
        raise InvalidCheckpointError(f"manifest record of {name!r}: a factored record of a {list(p.kernel_shape)} kernel "
                                     f"for a tensor of shape {tuple(kernel.shape)}")
    try:
        operator = kernel_resize(record.old_spatial, record.scale, Method(p.method, p.mode, p.align, p.coef))
    except InvalidOptionError as exc:
        raise InvalidCheckpointError(f"manifest record of {name!r}: its prefilter does not describe a resize: {exc}") from None
    if tuple(operator.out_shape) != record.resized_spatial:
        raise InvalidCheckpointError(f"manifest record of {name!r}: resized_spatial {list(record.resized_spatial)} is not "
                                     f"the {list(operator.out_shape)} its prefilter gives")
    return execute(operator, kernel, name=name), record.materialised()


@np.errstate(all="ignore")  # non-finite weights give NaN measures, reported as such: no warnings
def certify_conv(
    name: str,
    kernel: torch.Tensor,
    new_kernel: torch.Tensor,
    scales: Sequence[float],
    *,
    dilation: Optional[Sequence[int]] = None,
    shift: Optional[Sequence[float]] = None,
    method: str = "",
    band: float = 0.25,
    probes: int = 4,
    grid: int = 16,
    max_channels: int = 64,
    seed: int = 0,
) -> LayerCertificate:
    """Certificate of a conv layer ``kernel (C_out, C_in, *k)`` → ``new_kernel (…, *k')``.

    ``dilation``: the new layer's dilation (geometry-only re-dilation keeps ``new_kernel`` = the
    old weights); ``shift``: the half-pixel offset, in output pixels, its padding imposes on an
    even kernel (+½ when the extra pixel is padded after). ``band`` in cycles per low-res pixel
    (≤ ½); ``grid`` frequency samples per axis and unit band.
    """
    check_band(band)
    ndim = kernel.ndim - 2
    scales = [float(s) for s in scales]
    dilation = list(dilation or [1] * ndim)
    shift = list(shift or [0.0] * ndim)
    rng = np.random.default_rng(seed)
    counts = {"nonfinite": _count_nonfinite(new_kernel), "nonfinite_original": _count_nonfinite(kernel)}
    if kernel.shape[0] > max_channels:
        keep = torch.tensor(np.sort(rng.choice(kernel.shape[0], max_channels, replace=False)))
        kernel, new_kernel = kernel[keep], new_kernel[keep]
    kernel, new_kernel = kernel.double(), new_kernel.double()

    nu = np.linspace(-band, band, 2 * grid + 1)  # low-res cycles per pixel
    shape = (kernel.shape[1],) + (nu.size,) * ndim
    spectra = np.stack([rng.standard_normal(shape) + 1j * rng.standard_normal(shape) for _ in range(probes)])
    total_err, total_ref = _structure_sums(kernel, new_kernel, [2 * np.pi * nu] * ndim,
                                           [2 * np.pi * nu / s for s in scales], dilation, shift, spectra)
    structure = _ratio(total_err, total_ref)

    full = np.linspace(-0.5, 0.5, 4 * grid + 1)
    power_ref = _power(kernel, [2 * np.pi * full] * ndim, [1] * ndim).numpy()
    power_new = _power(new_kernel, [2 * np.pi * full] * ndim, dilation).numpy()  # every high-res frequency
    above = np.zeros([full.size] * ndim, dtype=bool)
    for axis, s in enumerate(scales):
        index = [None] * ndim
        index[axis] = slice(None)
        above |= (np.abs(full) > 0.5 / s)[tuple(index)]
    alias = _ratio(float(power_new[above].mean()), float(power_ref.mean())) if above.any() else 0.0

    dc_old = kernel.sum(dim=tuple(range(2, 2 + ndim)))
    dc_new = new_kernel.sum(dim=tuple(range(2, 2 + ndim)))
    dc = _dc_ratio((dc_new * dc_old).sum().item(), (dc_old * dc_old).sum().item())
    return LayerCertificate(name, method, tuple(kernel.shape), tuple(new_kernel.shape), structure, alias, dc, **counts)


def _ratio(error: float, reference: float) -> float:
    """√(error/reference): 0 for 0/0 (a zero kernel kept zero), inf for x/0 (a zero kernel that is
    not zero any more); NaN in, NaN out."""
    if reference == 0 and not math.isnan(error):
        return 0.0 if error == 0 else math.inf
    return math.sqrt(error / reference)


def _dc_ratio(inner: float, reference: float) -> Optional[float]:
    """⟨ΣK′, ΣK⟩/‖ΣK‖², None (undefined) when ORIG's DC response is exactly zero; NaN in, NaN out."""
    return None if reference == 0 else inner / reference


@dataclass(frozen=True)
class WeightNorm:
    """Weight norm's g of a v being certified: ``link`` (g's name and weight norm's ``dim``, as v's
    record names them) and g's ORIG and CONVERTED values."""

    link: WeightNormLink
    original: torch.Tensor
    converted: torch.Tensor


def certify_record(
    name: str,
    original: torch.Tensor,
    converted: torch.Tensor,
    record: Union[ConvRecord, GridRecord, Mapping[str, Any]],
    *,
    weight_norm: Optional[WeightNorm] = None,
    **options: Any,
) -> LayerCertificate:
    """Certificate of one changed tensor from its manifest record (DESIGN §5).

    ``weight_norm``: when ``name`` is weight norm's v, its g; the layer is then measured on the
    plain weight :func:`kernelscale.reparam.plain_weight` gives on both sides (float64), and the
    non-finite counts are of v and g."""
    if weight_norm is not None:
        counts = {"nonfinite": _count_nonfinite(converted, weight_norm.converted),
                  "nonfinite_original": _count_nonfinite(original, weight_norm.original)}
        original = plain_weight(original, weight_norm.original, weight_norm.link, name)
        converted = plain_weight(converted, weight_norm.converted, weight_norm.link, name)
        cert = certify_record(name, original, converted, record, **options)
        return replace(cert, weight_norm_g=weight_norm.link.g, **counts)
    record = as_record(record, name)
    if isinstance(record, FactoredRecord):
        converted, record = materialise_factored(name, converted, record)
    if isinstance(record, GridRecord):
        return certify_grid(name, original, converted, record, **options)
    return certify_conv(
        name, original, converted, record.scale, dilation=record.dilation, shift=list(window_shift(record, original.ndim - 2)),
        method=record.method or "", **options,
    )


@np.errstate(all="ignore")
def certify_grid(
    name: str,
    original: torch.Tensor,
    converted: torch.Tensor,
    record: Union[GridRecord, Mapping[str, Any]],
    *,
    band: float = 0.25,
    probes: int = 4,
    seed: int = 0,
    **_: Any,
) -> LayerCertificate:
    """Certificate of a Linear over a grid: rel‖W'·U x − W·x‖ for DCT-band-limited probes x,
    U the record's cells upsampler; alias gain is not defined for a grid (reported 0)."""
    from kernelscale.transforms import cells_upsampler

    record = as_record(record, name)
    grid, new_grid = record.grid_layout, record.new_grid_layout
    mode = record.mode or "linear"
    ups = [cells_upsampler(n, m, mode) for n, m in zip(grid.spatial, new_grid.spatial)]
    rng = np.random.default_rng(seed)

    def dct(n: int) -> np.ndarray:
        count = max(1, int(round(2 * band * n)))
        i = np.arange(n) + 0.5
        return np.stack([np.cos(np.pi * f * i / n) for f in range(count)], axis=1)

    def along(matrices: Sequence[np.ndarray], x: np.ndarray) -> np.ndarray:
        """Each matrix applied along its spatial axis of ``x`` (C, *spatial)."""
        for axis, m in enumerate(matrices, start=1):
            x = np.moveaxis(np.tensordot(m, x, axes=(1, axis)), 0, axis)
        return x

    def canonical(weight: torch.Tensor, layout: Any) -> np.ndarray:
        """The weight's rows as (out, C, *spatial) maps, whatever the layout of the flattened features."""
        rows = weight.double().numpy().reshape(-1, *layout.sizes)
        return rows.transpose(0, *(1 + a for a in layout.to_canonical))

    bases = [dct(n) for n in grid.spatial]
    w_old, w_new_ = canonical(original, grid), canonical(converted, new_grid)
    spatial_axes = tuple(range(1, 2 + len(grid.spatial)))
    err = ref = 0.0
    for _ in range(probes):
        x = along(bases, rng.standard_normal((grid.channels, *(b.shape[1] for b in bases))))
        up = along(ups, x)
        y_old = np.tensordot(w_old, x, axes=(spatial_axes, tuple(a - 1 for a in spatial_axes)))
        y_new = np.tensordot(w_new_, up, axes=(spatial_axes, tuple(a - 1 for a in spatial_axes)))
        err += float(((y_new - y_old) ** 2).sum())
        ref += float((y_old**2).sum())
    # A flat input upsamples to a flat input, so the DC gain is each row's sum over all cells.
    dc_old, dc_new = w_old.sum(axis=spatial_axes), w_new_.sum(axis=spatial_axes)
    dc = _dc_ratio(float((dc_new * dc_old).sum()), float((dc_old**2).sum()))
    return LayerCertificate(name, record.method or "", tuple(original.shape), tuple(converted.shape),
                            _ratio(err, ref), 0.0, dc, nonfinite=_count_nonfinite(converted),
                            nonfinite_original=_count_nonfinite(original))


@dataclass(frozen=True)
class VerifiedFile:
    """One converted file and the original file(s) it was measured against.

    ``rel``: the converted file relative to CONVERTED (``""`` for a single file); ``converted``: its
    path as given on the command line joined with its own; ``original``: likewise, the ORIG file at
    the same path (or the ORIG model's shard index, when the shards were renamed); ``layers``: how
    many of the report's certificates come from it.
    """

    rel: str
    original: str
    converted: str
    layers: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class VerifyReport:
    """Certificates of every changed layer of a converted checkpoint, per file, and a summary."""

    layers: tuple[LayerCertificate, ...]
    band: float
    files: tuple[VerifiedFile, ...] = ()

    @property
    def worst(self) -> Optional[LayerCertificate]:
        """The layer of the largest structure error, a NaN counting as the largest."""
        return max(self.layers, key=lambda c: c.structure_error if not math.isnan(c.structure_error) else math.inf,
                   default=None)

    def failures(self, tol: Optional[float]) -> tuple[LayerCertificate, ...]:
        """Layers that fail (:meth:`LayerCertificate.fails`): CONVERTED holds non-finite values where
        ORIG's are finite, whatever ``tol``; under ``tol``, also a structure error above it or a
        measure that is not a finite number."""
        return tuple(c for c in self.layers if c.fails(tol))

    def table(self) -> list[str]:
        """One line per layer (under a ``== file ==`` line per converted file when there are
        several), then the summary. A measure that is not a number shows as ``NaN`` or ``inf``, an
        undefined DC gain ratio as ``undef``, and a layer whose CONVERTED tensors hold non-finite
        values says how many at the end of its line."""
        width = max((len(c.name_shown) for c in self.layers), default=5)
        lines = [f"{'layer':<{width}}  {'method':<8}  {'shape':>21}  structure  alias  dc gain"]
        grouped = any(f.rel for f in self.files) or any(c.file for c in self.layers)
        files = [f.rel for f in self.files] or list(dict.fromkeys(c.file for c in self.layers))
        for rel in files:
            layers = [c for c in self.layers if c.file == rel]
            if grouped:
                lines.append(f"== {rel} ==" + ("" if layers else "  no changed layer"))
            for c in layers:
                shapes = f"{'×'.join(map(str, c.old_shape[2:] or c.old_shape))}→{'×'.join(map(str, c.new_shape[2:] or c.new_shape))}"
                dc = "undef" if c.dc_gain_ratio is None else format_measure(c.dc_gain_ratio, ".4f")
                note = f"  CONVERTED holds {c.nonfinite} non-finite value{'s' if c.nonfinite != 1 else ''}" if c.nonfinite else ""
                lines.append(f"{c.name_shown:<{width}}  {c.method:<8}  {shapes:>21}  {format_measure(c.structure_error, '.2e'):>9}  "
                             f"{format_measure(c.alias_gain, '.3f'):>5}  {dc:>7}{note}")
        worst = self.worst
        if worst is not None:
            mean = sum(c.structure_error for c in self.layers) / len(self.layers)
            where = f" in {len(files)} files" if len(files) > 1 else ""
            broken = sum(1 for c in self.layers if c.nonfinite)
            lines.append(f"{len(self.layers)} changed layers{where}; structure error (band ν₀ = {self.band}): mean "
                         f"{format_measure(mean, '.2e')}, worst {format_measure(worst.structure_error, '.2e')} ({worst.shown})"
                         + (f"; {broken} with non-finite values in CONVERTED" if broken else ""))
        else:
            lines.append("no changed layer to verify")
        return lines

    def to_json(self) -> dict[str, Any]:
        """The report as plain data: a measure that is not a finite number is None (JSON null)."""
        worst = self.worst
        return {"band": self.band, "layers": [c.to_json() for c in self.layers],
                "worst": worst.to_json() if worst is not None else None, "files": [f.to_json() for f in self.files]}


def format_measure(value: float, spec: str) -> str:
    """``value`` formatted, or ``NaN`` / ``inf`` / ``-inf`` plainly."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return format(value, spec)


# --- pairing the files of ORIG and CONVERTED ---------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    """One recorded tensor to certify: where it is on each side, and its record."""

    name: str
    record: Record
    original: str  # path of the ORIG file holding it
    converted: str  # path of the CONVERTED file holding it
    rel: str  # the converted file, relative to CONVERTED
    g: Optional[tuple[WeightNormLink, str, str]] = None  # weight norm's g (its link), ORIG and CONVERTED file


def _shown(arg: Any, scan: Any, rel: str) -> str:
    """A file of a scanned checkpoint as the user would spell it: the argument joined with its path."""
    arg = os.fspath(arg)
    if scan.layout == "folder":
        return os.path.join(arg, rel)
    if scan.layout == "sharded":
        return os.path.join(os.path.dirname(arg), rel)
    return arg


def _unit_key(unit: Any) -> str:
    """A model's path in its checkpoint: its shard index's, or its one file's."""
    return unit.index[1] if unit.index is not None else unit.files[0].rel


def _pair_units(original: Any, o_scan: Any, converted: Any, c_scan: Any) -> list[tuple[Any, Any]]:
    """ORIG's and CONVERTED's models, paired by their path (one each: paired as they are, so that a
    file, a shard index and the folder convert wrote it to all pair)."""
    if len(o_scan.units) == 1 and len(c_scan.units) == 1:
        return [(o_scan.units[0], c_scan.units[0])]
    o_units = {_unit_key(u): u for u in o_scan.units}
    c_units = {_unit_key(u): u for u in c_scan.units}
    # a model renamed in its folder (a diffusion pipeline's denoiser: kernelscale_model.safetensors) pairs
    # with the folder's one model on the other side
    for key in [k for k in c_units if k not in o_units]:
        folder = posixpath.dirname(key)
        o_here = [k for k in o_units if posixpath.dirname(k) == folder]
        c_here = [k for k in c_units if posixpath.dirname(k) == folder]
        if len(o_here) == 1 and len(c_here) == 1 and o_here[0] not in c_units:
            c_units[o_here[0]] = c_units.pop(key)
    for units, other, arg, other_arg in ((c_units, o_units, converted, original), (o_units, c_units, original, converted)):
        lone = [k for k in units if k not in other]
        if lone:
            raise InvalidOptionError(
                f"{os.fspath(arg)}: {_listing(lone)} {'has' if len(lone) == 1 else 'have'} no counterpart in {os.fspath(other_arg)} "
                f"(verify pairs files by their path in the folder; give the checkpoint convert read and the one it wrote)")
    return [(o_units[k], c_units[k]) for k in sorted(c_units)]


def _listing(names: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _dims(values: Sequence[Any]) -> str:
    return "×".join(str(v) for v in values) or "scalar"


def _check_shapes(name: str, record: Union[ConvRecord, GridRecord, FactoredRecord], old: tuple[int, ...], new: tuple[int, ...],
                  orig_file: str, conv_file: str) -> None:
    """Refuse a recorded tensor whose ORIG or CONVERTED shape is not the one its record describes.

    Conv records: ``(C_out, C_in/groups, *old_spatial)`` → ``(…same channels, *new_spatial)``;
    grid records: ``(out, C·H·W)`` → ``(out, C·H'·W')``.
    """
    from kernelscale.plan import shape_text

    hint_orig = "(is ORIG the checkpoint that was converted?)"
    hint_conv = "(was it changed after it was converted?)"
    old_spatial, new_spatial = record.old_spatial, record.new_spatial  # positive integers (check_record)
    if isinstance(record, GridRecord):
        grid = record.grid
        if len(grid) != 3 or len(new_spatial) != 2:
            raise InvalidCheckpointError(f"{conv_file}: manifest record of {name!r}: a grid record needs grid [C, H, W] "
                                         f"and new_spatial [H', W'], got {list(grid)!r} and {list(new_spatial)!r}")
        c, h, w = grid
        if len(old) != 2 or old[1] != c * h * w:
            raise InvalidOptionError(f"{orig_file}: ORIG {name} is {shape_text(old)} but the manifest of {conv_file} records "
                                     f"a Linear over a {c}×{h}×{w} grid ({c * h * w} inputs) {hint_orig}")
        expected = (old[0], c * new_spatial[0] * new_spatial[1])
        if new != expected:
            raise InvalidOptionError(f"{conv_file}: CONVERTED {name} is {shape_text(new)} but its manifest records "
                                     f"{shape_text(expected)} (a {c}×{_dims(new_spatial)} grid) {hint_conv}")
        return
    k = len(old_spatial)
    if len(new_spatial) != k:
        raise InvalidCheckpointError(f"{conv_file}: manifest record of {name!r}: old_spatial {list(old_spatial)} and "
                                     f"new_spatial {list(new_spatial)} have different lengths")
    if len(old) != k + 2 or old[2:] != old_spatial:
        shown = _dims(old[2:]) if len(old) == k + 2 else f"{shape_text(old)}, not a {k}-D kernel,"
        raise InvalidOptionError(f"{orig_file}: ORIG {name} is {shown} but the manifest of {conv_file} records {_dims(old_spatial)} "
                                 f"{hint_orig}")
    if len(new) != k + 2 or new[2:] != new_spatial:
        shown = _dims(new[2:]) if len(new) == k + 2 else f"{shape_text(new)}, not a {k}-D kernel,"
        raise InvalidOptionError(f"{conv_file}: CONVERTED {name} is {shown} but its manifest records {_dims(new_spatial)} {hint_conv}")
    if new[:2] != old[:2]:
        raise InvalidOptionError(f"{conv_file}: CONVERTED {name} is {shape_text(new)} but ORIG's is {shape_text(old)}: "
                                 f"the channel axes differ {hint_orig}")


def _weight_norm_job(name: str, record: Record, v_old: tuple[int, ...], o_tensors: Mapping[str, Any],
                     c_tensors: Mapping[str, Any], orig_file: str, conv_file: str, shown: Callable[[Any, str], str]
                     ) -> Optional[tuple[WeightNormLink, str, str]]:
    """Weight norm's g of the recorded tensor ``name``, checked from the headers: ``(link, ORIG
    file, CONVERTED file)``, or None when ``name`` is no weight-normed v.

    Resized pairs name g in v's record (``weight_norm: {g, dim}``); geometry-only ones (v and g kept)
    do not, and g is then found by name (:func:`kernelscale.reparam.weight_norm_g_name`) when ORIG
    holds it, with dim read from its shape (:func:`kernelscale.reparam.norm_dim`). ORIG's g must fit v
    and dim (:func:`kernelscale.reparam.g_fits`), CONVERTED's g must have ORIG's shape (weight norm's
    g never changes shape)."""
    from kernelscale.plan import shape_text

    link = getattr(record, "weight_norm", None)
    if link is not None:
        if link.dim is not None and not 0 <= link.dim < len(v_old):
            raise InvalidCheckpointError(f"{conv_file}: manifest record of {name!r}: weight_norm must be {{\"g\": g's name, "
                                         f"\"dim\": an axis of v or null}}, got {link.to_json()!r}")
        if link.g not in o_tensors:
            raise InvalidOptionError(f"{orig_file}: has no tensor {link.g!r}, which the manifest of {conv_file} records as weight "
                                     f"norm's g of {name} (is ORIG the checkpoint that was converted?)")
    else:
        g = weight_norm_g_name(name)
        if g is None or g not in o_tensors:
            return None
        try:
            link = WeightNormLink(g, norm_dim(g, tuple(o_tensors[g][1].shape), name, v_old))
        except WeightNormError as exc:
            raise InvalidOptionError(f"{shown(o_tensors[g][0], 'ORIG')}: ORIG {exc}") from None
    g = link.g
    o_src, o_info = o_tensors[g]
    g_orig_file = shown(o_src, "ORIG")
    g_old = tuple(o_info.shape)
    if not g_fits(g_old, v_old, link.dim):
        raise InvalidOptionError(f"{g_orig_file}: ORIG {g} is {shape_text(g_old)}, but the manifest of {conv_file} records it "
                                 f"as weight norm's g of {name} ({shape_text(v_old)}) with {norms_text(link.dim)} "
                                 "(is ORIG the checkpoint that was converted?)")
    if g not in c_tensors:
        raise InvalidCheckpointError(f"{conv_file}: the manifest records {g!r} as weight norm's g of {name}, but the "
                                     "converted checkpoint does not hold it")
    c_src, c_info = c_tensors[g]
    g_conv_file = shown(c_src, "CONVERTED")
    if tuple(c_info.shape) != g_old:
        raise InvalidOptionError(f"{g_conv_file}: CONVERTED {g} is {shape_text(tuple(c_info.shape))} but ORIG's is "
                                 f"{shape_text(g_old)}: weight norm's g keeps its shape (was it changed after it was converted?)")
    return link, o_src.path, c_src.path


def _plan_jobs(original: Any, converted: Any) -> tuple[list[_Job], list[tuple[str, str, str]]]:
    """Every recorded tensor to certify, checked from the headers alone, and each converted file
    as (rel, ORIG file(s), CONVERTED file), in CONVERTED's order."""
    from kernelscale.io.checkpoint import MANIFEST_KEY, load_manifest_json
    from kernelscale.io.discovery import scan_checkpoint

    c_scan = scan_checkpoint(converted)
    if not any(MANIFEST_KEY in f.metadata for f in c_scan.files):
        raise InvalidOptionError(f"{os.fspath(converted)}: no kernelscale manifest; is it a converted checkpoint?")
    o_scan = scan_checkpoint(original)
    jobs: list[_Job] = []
    files: list[tuple[str, str, str]] = []
    def shown(src: Any, side: str) -> str:
        return _shown(original, o_scan, src.rel) if side == "ORIG" else _shown(converted, c_scan, src.rel)

    pipeline = c_scan.layout == "folder" and os.path.isfile(os.path.join(c_scan.src, "model_index.json"))
    for o_unit, c_unit in _pair_units(original, o_scan, converted, c_scan):
        if pipeline and not any(MANIFEST_KEY in src.metadata for src in c_unit.files):
            continue  # a pipeline component convert copied byte for byte (only the denoiser is resized)
        o_tensors = {t.name: (src, t) for src in o_unit.files for t in src.tensors}
        c_unit_tensors = {t.name: (src, t) for src in c_unit.files for t in src.tensors}  # g may sit in another shard
        o_model = _shown(original, o_scan, _unit_key(o_unit))
        o_files = {src.rel: src for src in o_unit.files}
        o_names = {os.path.basename(src.rel): src for src in o_unit.files}
        for src in c_unit.files:
            conv_file = _shown(converted, c_scan, src.rel)
            rel = src.rel if c_scan.layout != "file" else ""
            # its counterpart: the ORIG file at the same path (or of the same name: a shard index converted
            # to a folder), else the ORIG model (a lone file, or shards that were renamed)
            twin = o_files.get(src.rel) or o_names.get(os.path.basename(src.rel))
            if twin is None and len(o_unit.files) == 1:
                twin = o_unit.files[0]
            files.append((rel, _shown(original, o_scan, twin.rel) if twin is not None else o_model, conv_file))
            text = src.metadata.get(MANIFEST_KEY)
            if text is None:
                raise InvalidOptionError(f"{conv_file}: no kernelscale manifest, though other files of "
                                         f"{os.fspath(converted)} have one; is it a converted file?")
            manifest = Manifest.from_json(load_manifest_json(text, conv_file), conv_file)  # typed here, read typed below
            c_tensors = {t.name: t for t in src.tensors}
            for name, record in manifest.tensors.items():
                if isinstance(record, (AttentionRecord, RenormRecord)):  # values rescaled, shape kept: nothing to certify (a g's v is)
                    continue
                if name not in c_tensors:
                    raise InvalidCheckpointError(f"{conv_file}: the manifest records {name!r}, which the file does not hold")
                if name not in o_tensors:
                    raise InvalidOptionError(f"{o_model}: has no tensor {name!r}, which {conv_file} records as resized "
                                             "(is ORIG the checkpoint that was converted?)")
                o_src, o_info = o_tensors[name]
                orig_file = _shown(original, o_scan, o_src.rel)
                _check_shapes(name, record, tuple(o_info.shape), tuple(c_tensors[name].shape), orig_file, conv_file)
                g = _weight_norm_job(name, record, tuple(o_info.shape), o_tensors, c_unit_tensors, orig_file, conv_file, shown)
                jobs.append(_Job(name, record, o_src.path, src.path, rel, g))
    return jobs, files


def verify_checkpoints(
    original: Any,
    converted: Any,
    *,
    band: float = DEFAULT_BAND,
    probes: int = DEFAULT_PROBES,
    seed: int = DEFAULT_SEED,
    max_channels: int = 64,
) -> VerifyReport:
    """Certify every tensor the converted checkpoint's manifests record against the original.

    Both are what convert reads and writes (kernelscale.checkpoint_plan.scan_checkpoint): a
    .safetensors file, a shard index, or a folder (diffusers / Hugging Face layout, any depth, one
    model per file or per shard index, variants such as ``*.fp16.safetensors`` apart). Models are
    paired by their path in the folder; a lone model on each side is paired as it is. Each
    converted file is certified from its own manifest; geometry-only records with their dilation;
    attention records and weight norm's g records (no spatial change) are skipped, a weight-normed
    conv being certified on its effective weight g·v/‖v‖ (its g named by v's record, or, for a
    geometry-only pair, found by name), so that a g changed after conversion shows.

    Everything is checked from the headers before any tensor is read: InvalidOptionError for a bad
    option, a file or model with no counterpart on the other side, a recorded tensor that ORIG
    lacks, a tensor whose ORIG (CONVERTED) shape is not its record's ``old_spatial``
    (``new_spatial``), or weight norm's g whose ORIG shape does not fit v and the recorded dim or
    whose CONVERTED shape is not ORIG's; InvalidCheckpointError for a malformed checkpoint or manifest.
    """
    check_band(band)
    check_probes(probes)
    check_seed(seed)
    if isinstance(max_channels, bool) or not isinstance(max_channels, int) or max_channels < 1:
        raise InvalidOptionError(f"max_channels must be an integer >= 1, got {max_channels!r}")
    from kernelscale.io.safetensors_io import SafetensorsReader

    jobs, files = _plan_jobs(original, converted)
    certificates = []
    with contextlib.ExitStack() as stack:
        readers: dict[str, Any] = {}

        def read(path: str, name: str) -> torch.Tensor:
            if path not in readers:
                readers[path] = stack.enter_context(SafetensorsReader(path))
            return readers[path].read_tensor(name)

        for job in jobs:
            weight_norm = None
            if job.g is not None:
                link, g_orig, g_conv = job.g
                weight_norm = WeightNorm(link, read(g_orig, link.g), read(g_conv, link.g))
            original_t, converted_t = read(job.original, job.name), read(job.converted, job.name)
            if original_t.numel() == 0 or converted_t.numel() == 0:
                # a layer with no weights (a zero-size axis; the others may be huge): nothing to measure,
                # and the responses would be arrays over those other axes
                cert = LayerCertificate(job.name, getattr(job.record, "method", None) or "", tuple(original_t.shape),
                                        tuple(converted_t.shape), 0.0, 0.0, None)
            else:
                cert = certify_record(job.name, original_t, converted_t, job.record, weight_norm=weight_norm, band=band,
                                      probes=probes, seed=seed, max_channels=max_channels)
            certificates.append(replace(cert, file=job.rel))
    counts = {rel: sum(1 for c in certificates if c.file == rel) for rel, _, _ in files}
    verified = tuple(VerifiedFile(rel, orig, conv, counts[rel]) for rel, orig, conv in files)
    return VerifyReport(tuple(certificates), band, verified)
