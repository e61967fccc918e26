"""FouriScale (Huang et al., ECCV 2024, arXiv 2403.12963): dilation + low-pass, DESIGN §9–§10.

A listed conv runs as conv(lowpass(x), K, dilation ⌈d⌉) with its original weights: the factored
form of DESIGN §9 (a fixed per-channel prefilter, then the dilated conv), with FouriScale's
frequency-domain filter in place of the interpolation kernel. Everything here follows the
official code, github.com/LeonHLJ/FouriScale at 6fb392e, model.py ``FouriConvProcessor``
(L8-137) and text2image.py (annealing L285-294, guidance L310-313).

The filter: per axis of even length n, on the fftshifted spectrum (DC at index n/2), with h = n/2,
s = the axis' scale (max(d/stride, 1)), v = the stop-band value (0 for SD 1.5/2.1, 0.6 for SDXL):

    m[j] = clip((1−v)/R·(h/s + 1 − j) + 1, v, 1),  j = 0 … h−1,   full = [reverse(m), m]

R = max(⌊n/8⌋, 1) for the strong filter, R = ⌊(s−1)·n/(2s)⌋ for the weak one (a ramp reaching
Nyquist; R = 0 means no filtering). The 2-D mask is the outer product of the two axes' masks.
Because ``full`` puts m[0] at both DC and frequency −1, the mask is not even in frequency; the
official code keeps the real part of the inverse FFT, so the filter actually applied is the
circular convolution with Re(ifft2(mask)), whose frequency response is the even part
(M(ν) + M(−ν))/2. :func:`lowpass_prefilter` returns these taps.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from kernelscale.errors import InvalidOptionError
from kernelscale.sampling.cfg import cfg
from kernelscale.sampling.redilation import check_factor

Pair = Union[float, Sequence[float]]


def _pair(value: Pair, what: str) -> tuple[float, float]:
    out = (value, value) if isinstance(value, (int, float)) else tuple(value)
    if len(out) != 2:
        raise InvalidOptionError(f"{what} must be a number or two of them, got {value!r}")
    return tuple(check_factor(v, what) for v in out)  # type: ignore[return-value]


def _check_value(value: float) -> float:
    if not 0 <= value <= 1:
        raise InvalidOptionError(f"the low-pass stop-band value must lie in [0, 1], got {value!r}")
    return float(value)


def lowpass_mask_1d(n: int, scale: float, *, value: float = 0.0, weak: bool = False) -> torch.Tensor:
    """One axis of FouriScale's low-pass mask, float32 shape (n,), in fftshifted order (index n/2
    is DC). n must be even (the official code cannot build a mask of odd length). scale ≥ 1."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2 or n % 2:
        raise InvalidOptionError(f"the low-pass axis length must be an even integer >= 2, got {n!r}")
    scale = check_factor(scale, "low-pass scale")
    value = _check_value(value)
    half = n // 2
    radius = (scale - 1) * n // (scale * 2) if weak else max(n // 8, 1)
    if radius == 0:
        m = torch.ones(half)
    else:
        j = torch.arange(half, dtype=torch.float32)
        m = ((1 - value) / radius * (half / scale + 1 - j) + 1).clamp(min=value, max=1.0)
    return torch.cat([torch.flip(m, [0]), m])


def lowpass_mask(size: Sequence[int], scale: Pair, *, value: float = 0.0, weak: bool = False) -> torch.Tensor:
    """The 2-D mask (H, W), the outer product of the axes' :func:`lowpass_mask_1d`, fftshifted."""
    sh, sw = _pair(scale, "low-pass scale")
    h, w = size
    return torch.outer(lowpass_mask_1d(h, sh, value=value, weak=weak), lowpass_mask_1d(w, sw, value=value, weak=weak))


def lowpass(x: torch.Tensor, scale: Pair, *, value: float = 0.0, weak: bool = False,
            pad_to: Optional[Sequence[int]] = None) -> torch.Tensor:
    """FouriScale's low-pass on the last two axes of x (…, H, W): computed in float32, returned in
    x's dtype. ``pad_to`` = (H′, W′) ≥ (H, W): zero-pad at the bottom/right to that size first and
    crop after (the official padding to a multiple of the base latent size)."""
    h, w = x.shape[-2:]
    if pad_to is not None:
        ph, pw = (int(v) for v in pad_to)
        if ph < h or pw < w:
            raise InvalidOptionError(f"pad_to {tuple(pad_to)} is smaller than the input's {(h, w)}")
        y = F.pad(x.to(torch.float32), (0, pw - w, 0, ph - h))
    else:
        y = x.to(torch.float32)
    mask = lowpass_mask(y.shape[-2:], scale, value=value, weak=weak).to(y.device)
    spectrum = torch.fft.fftshift(torch.fft.fftn(y, dim=(-2, -1)), dim=(-2, -1)) * mask
    out = torch.fft.ifftn(torch.fft.ifftshift(spectrum, dim=(-2, -1)), dim=(-2, -1)).real
    return out[..., :h, :w].to(x.dtype)


def lowpass_prefilter(size: Sequence[int], scale: Pair, *, value: float = 0.0, weak: bool = False) -> torch.Tensor:
    """The spatial taps of :func:`lowpass` without padding: a real float64 (H, W) tensor g with
    lowpass(x)[p] = Σ_m g[m]·x[(p − m) mod (H, W)] (circular convolution), g = Re(ifft2(mask)).
    Re(ifft2(a⊗b)) = Re(â)⊗Re(b̂) − Im(â)⊗Im(b̂): a sum of two separable per-channel filters."""
    mask = lowpass_mask(size, scale, value=value, weak=weak).to(torch.float64)
    return torch.fft.ifftn(torch.fft.ifftshift(mask, dim=(-2, -1)), dim=(-2, -1)).real


def fouriscale_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], d: float, *,
                    stride: int = 1, groups: int = 1, value: float = 0.0, weak: bool = False,
                    pad_to: Optional[Sequence[int]] = None) -> torch.Tensor:
    """A same-padded 2-D conv (odd K) at FouriScale's factor d ≥ 1: for d = 1 the plain conv;
    otherwise conv(lowpass(x, max(d/stride, 1)), K, dilation ⌈d⌉, padding ⌈d⌉·(K−1)/2), the
    filter built from the float d (annealed factors are fractional), the dilation from ⌈d⌉.
    x: (B, C_in, H, W) with H, W (or pad_to) even; weight: (C_out, C_in/groups, K_h, K_w)."""
    d = check_factor(d)
    if weight.ndim != 4 or x.ndim != 4:
        raise InvalidOptionError(f"fouriscale_conv needs a 2-D conv: weight {tuple(weight.shape)}, input {tuple(x.shape)}")
    ks = tuple(weight.shape[2:])
    if any(k % 2 == 0 for k in ks):
        raise InvalidOptionError(f"FouriScale keeps 'same' padding, which needs odd kernel sizes, got {ks}")
    if d == 1:
        return F.conv2d(x, weight, bias, stride=stride, padding=tuple((k - 1) // 2 for k in ks), groups=groups)
    k = math.ceil(d)
    filtered = lowpass(x, max(d / stride, 1.0), value=value, weak=weak, pad_to=pad_to)
    return F.conv2d(filtered, weight, bias, stride=stride, padding=tuple(k * (kk - 1) // 2 for kk in ks), dilation=k, groups=groups)


def annealed_factor(d: float, step_index: int, start: int, stop: int) -> float:
    """FouriScale's per-step factor: d for i < start; max((d−1)(stop−i)/(stop−start) + 1, 1) for
    start ≤ i < stop; 1.0 (plain conv) for i ≥ stop. Published: start 10, stop 30 for SD at
    1024²/1280²; start 20, stop 35 for 2048² and every SDXL setting (50 DDIM steps)."""
    d = check_factor(d)
    if not 0 <= start < stop:
        raise InvalidOptionError(f"need 0 <= start < stop, got start={start!r}, stop={stop!r}")
    if step_index < 0:
        raise InvalidOptionError(f"step_index must be >= 0, got {step_index!r}")
    if step_index >= stop:
        return 1.0
    if step_index < start:
        return d
    return max((d - 1) * (stop - step_index) / (stop - start) + 1, 1.0)


def fouriscale_guidance(eps_uncond_strong: torch.Tensor, eps_cond_weak: torch.Tensor, w: Union[float, torch.Tensor]) -> torch.Tensor:
    """FouriScale's guidance: CFG between the unconditional branch run with the strong low-pass and
    the conditional branch run with the weak one (whose self-attention maps the official code copies
    from the strong conditional branch, a model-level step outside this function):
    ε_∅^strong + w·(ε_y^weak − ε_∅^strong)."""
    return cfg(eps_uncond_strong, eps_cond_weak, w)
