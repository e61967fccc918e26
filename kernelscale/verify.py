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
- ``dc_gain_ratio``: ⟨H'(0), H(0)⟩ / ‖H(0)‖² — 1 when the DC gain is kept (T4).

Output channels are subsampled (seeded) to at most ``max_channels`` to bound the cost.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from kernelscale.errors import InvalidOptionError


@dataclass(frozen=True)
class LayerCertificate:
    """The three measures of one changed layer, with what produced them."""

    name: str
    method: str
    old_shape: tuple[int, ...]
    new_shape: tuple[int, ...]
    structure_error: float
    alias_gain: float
    dc_gain_ratio: float

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["old_shape"], data["new_shape"] = list(self.old_shape), list(self.new_shape)
        return data


def _response(kernel: torch.Tensor, omegas: Sequence[np.ndarray], dilation: Sequence[int], shift: Sequence[float]) -> torch.Tensor:
    """H(ω) = Σ_t K[t]·e^{−i ω·(d·t + shift)} on the grid ``omegas`` (one 1-D array per axis).

    kernel ``(C_out, C_in, *k)`` → ``(C_out, C_in, *len(omegas_i))`` complex128; tap offsets t
    are measured from the kernel centre.
    """
    out = kernel.to(torch.complex128)
    for axis, (omega, d, sh) in enumerate(zip(omegas, dilation, shift)):
        k = kernel.shape[2 + axis]
        t = (np.arange(k) - (k - 1) / 2) * d + sh
        phase = torch.tensor(np.exp(-1j * np.outer(t, omega)))  # (k, G)
        out = torch.movedim(torch.tensordot(out, phase, dims=([2 + axis], [0])), -1, 2 + axis)
    return out


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
    if not 0 < band <= 0.5:
        raise InvalidOptionError(f"band must be in (0, 0.5] cycles per pixel, got {band!r}")
    ndim = kernel.ndim - 2
    scales = [float(s) for s in scales]
    dilation = list(dilation or [1] * ndim)
    shift = list(shift or [0.0] * ndim)
    rng = np.random.default_rng(seed)
    if kernel.shape[0] > max_channels:
        keep = torch.tensor(np.sort(rng.choice(kernel.shape[0], max_channels, replace=False)))
        kernel, new_kernel = kernel[keep], new_kernel[keep]
    kernel, new_kernel = kernel.double(), new_kernel.double()

    nu = np.linspace(-band, band, 2 * grid + 1)  # low-res cycles per pixel
    low = _response(kernel, [2 * np.pi * nu] * ndim, [1] * ndim, [0.0] * ndim)
    high = _response(new_kernel, [2 * np.pi * nu / s for s in scales], dilation, shift)
    shape = (kernel.shape[1],) + low.shape[2:]
    total_err = total_ref = 0.0
    for _ in range(probes):
        spectrum = torch.tensor(rng.standard_normal(shape) + 1j * rng.standard_normal(shape))
        total_err += (torch.einsum("oi...,i...->o...", high - low, spectrum).abs() ** 2).sum().item()
        total_ref += (torch.einsum("oi...,i...->o...", low, spectrum).abs() ** 2).sum().item()
    structure = math.sqrt(total_err / total_ref) if total_ref > 0 else 0.0

    full = np.linspace(-0.5, 0.5, 4 * grid + 1)
    reference = _response(kernel, [2 * np.pi * full] * ndim, [1] * ndim, [0.0] * ndim)
    hi_omega = [2 * np.pi * full for _ in scales]  # every high-res frequency
    new_full = _response(new_kernel, hi_omega, dilation, shift)
    above = np.zeros([full.size] * ndim, dtype=bool)
    for axis, s in enumerate(scales):
        index = [None] * ndim
        index[axis] = slice(None)
        above |= (np.abs(full) > 0.5 / s)[tuple(index)]
    power_new = (new_full.abs() ** 2).sum(dim=(0, 1)).numpy()
    power_ref = (reference.abs() ** 2).sum(dim=(0, 1)).numpy()
    alias = math.sqrt(power_new[above].mean() / power_ref.mean()) if above.any() and power_ref.mean() > 0 else 0.0

    dc_old = kernel.sum(dim=tuple(range(2, 2 + ndim)))
    dc_new = new_kernel.sum(dim=tuple(range(2, 2 + ndim)))
    denominator = (dc_old * dc_old).sum().item()
    dc = (dc_new * dc_old).sum().item() / denominator if denominator > 0 else float("nan")
    return LayerCertificate(name, method, tuple(kernel.shape), tuple(new_kernel.shape), structure, alias, dc)


def certify_record(
    name: str,
    original: torch.Tensor,
    converted: torch.Tensor,
    record: Mapping[str, Any],
    **options: Any,
) -> LayerCertificate:
    """Certificate of one changed tensor from its manifest record (DESIGN §5)."""
    if record.get("kind") == "grid":
        return certify_grid(name, original, converted, record, **options)
    dilation = record.get("dilation")
    offsets = record.get("centre_offset") or [0.0] * (original.ndim - 2)
    sign = -1.0 if record.get("pad_extra") == "before" else 1.0
    return certify_conv(
        name, original, converted, record["scale"], dilation=dilation, shift=[sign * o for o in offsets],
        method=record.get("method", ""), **options,
    )


def certify_grid(
    name: str,
    original: torch.Tensor,
    converted: torch.Tensor,
    record: Mapping[str, Any],
    *,
    band: float = 0.25,
    probes: int = 4,
    seed: int = 0,
    **_: Any,
) -> LayerCertificate:
    """Certificate of a Linear over a grid: rel‖W'·U x − W·x‖ for DCT-band-limited probes x,
    U the record's cells upsampler; alias gain is not defined for a grid (reported 0)."""
    from kernelscale.transforms import cells_upsampler

    c, h, w = record["grid"]
    h_new, w_new = record["new_spatial"]
    mode = record.get("mode") or "linear"
    bh, bw = cells_upsampler(h, h_new, mode), cells_upsampler(w, w_new, mode)
    rng = np.random.default_rng(seed)

    def dct(n: int) -> np.ndarray:
        count = max(1, int(round(2 * band * n)))
        i = np.arange(n) + 0.5
        return np.stack([np.cos(np.pi * f * i / n) for f in range(count)], axis=1)

    dh, dw = dct(h), dct(w)
    w_old = original.double().numpy().reshape(-1, c, h, w)
    w_new_ = converted.double().numpy().reshape(-1, c, h_new, w_new)
    err = ref = 0.0
    for _ in range(probes):
        x = np.einsum("hf,cfg,wg->chw", dh, rng.standard_normal((c, dh.shape[1], dw.shape[1])), dw)
        up = np.einsum("Hh,chw,Ww->cHW", bh, x, bw)
        y_old = np.einsum("ochw,chw->o", w_old, x)
        y_new = np.einsum("ochw,chw->o", w_new_, up)
        err += float(((y_new - y_old) ** 2).sum())
        ref += float((y_old**2).sum())
    # A flat input upsamples to a flat input, so the DC gain is each row's sum over all cells.
    dc_old, dc_new = w_old.sum(axis=(1, 2, 3)), w_new_.sum(axis=(1, 2, 3))
    dc = float((dc_new * dc_old).sum() / (dc_old**2).sum())
    return LayerCertificate(name, record.get("method", ""), tuple(original.shape), tuple(converted.shape),
                            math.sqrt(err / ref) if ref > 0 else 0.0, 0.0, dc)


@dataclass(frozen=True)
class VerifyReport:
    """Certificates of every changed layer of a converted checkpoint, and a summary."""

    layers: tuple[LayerCertificate, ...]
    band: float

    @property
    def worst(self) -> Optional[LayerCertificate]:
        return max(self.layers, key=lambda c: c.structure_error, default=None)

    def failures(self, tol: Optional[float]) -> tuple[LayerCertificate, ...]:
        """Layers whose structure error exceeds ``tol`` (none when ``tol`` is None)."""
        return () if tol is None else tuple(c for c in self.layers if c.structure_error > tol)

    def table(self) -> list[str]:
        """One line per layer, then the summary."""
        width = max((len(c.name) for c in self.layers), default=4)
        lines = [f"{'layer':<{width}}  {'method':<8}  {'shape':>21}  structure  alias  dc gain"]
        for c in self.layers:
            shapes = f"{'×'.join(map(str, c.old_shape[2:] or c.old_shape))}→{'×'.join(map(str, c.new_shape[2:] or c.new_shape))}"
            lines.append(f"{c.name:<{width}}  {c.method:<8}  {shapes:>21}  {c.structure_error:9.2e}  {c.alias_gain:5.3f}  {c.dc_gain_ratio:7.4f}")
        worst = self.worst
        if worst is not None:
            mean = sum(c.structure_error for c in self.layers) / len(self.layers)
            lines.append(f"{len(self.layers)} changed layers; structure error (band ν₀ = {self.band}): mean {mean:.2e}, "
                         f"worst {worst.structure_error:.2e} ({worst.name})")
        else:
            lines.append("no changed layer to verify")
        return lines

    def to_json(self) -> dict[str, Any]:
        worst = self.worst
        return {"band": self.band, "layers": [c.to_json() for c in self.layers],
                "worst": worst.to_json() if worst is not None else None}


def verify_checkpoints(
    original: Any,
    converted: Any,
    *,
    band: float = 0.25,
    probes: int = 4,
    seed: int = 0,
    max_channels: int = 64,
) -> VerifyReport:
    """Certify every tensor the converted checkpoint's manifest records against the original.

    Both are a .safetensors file, a shard index or a folder (kernelscale.checkpoint). Geometry-only
    records are certified with their dilation; attention records (no spatial change) are skipped.
    Raises InvalidCheckpointError when the converted checkpoint has no manifest or a recorded
    tensor is missing from the original.
    """
    from kernelscale.checkpoint import checkpoint_files, open_file, read_headers

    manifest, converted_where = read_headers(checkpoint_files(converted))
    if manifest is None:
        raise InvalidOptionError(f"{converted}: no kernelscale manifest; is it a converted checkpoint?")
    _, original_where = read_headers(checkpoint_files(original))
    certificates = []
    for name, record in manifest["tensors"].items():
        if record.get("kind") == "attention":
            continue
        if name not in original_where:
            raise InvalidOptionError(f"{original}: has no tensor {name!r}, which {converted} records as resized")
        with open_file(original_where[name][0]) as reader:
            old = reader.read_tensor(name)
        with open_file(converted_where[name][0]) as reader:
            new = reader.read_tensor(name)
        certificates.append(certify_record(name, old, new, record, band=band, probes=probes, seed=seed, max_channels=max_channels))
    return VerifyReport(tuple(certificates), band)
