"""ScaleCrafter's re-dilation (He et al., ICLR 2024) as pure functions, DESIGN §10.

A conv trained at one resolution runs at d× the resolution with its taps spread d input pixels
apart. Integer d is the exact dilated conv (DESIGN §4 T1). Fractional d (ScaleCrafter's
``ReDilateConvProcessor``, model.py L48-73) uses k = ⌈d⌉: resize the input by k/d (bilinear,
align_corners=False), run the conv with dilation k and the matching same padding, resize the output
back. The taps then sit kH/n ≈ d input pixels apart (n = round(H·k/d), the resized length).

Schedules: a layer is re-dilated for sampler steps i < τ (0-based, sampling order); progressive
mode uses d_i = max(⌈d·(τ−i)/τ⌉, 2) (ScaleCrafter text2image.py L199-206), which is an integer,
so no feature resampling happens in progressive mode.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence, Union

import torch
import torch.nn.functional as F

from kernelscale.errors import InvalidOptionError
from kernelscale.geometry import as_tuple

_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def check_factor(d: float, what: str = "dilation factor") -> float:
    """Validate a re-dilation factor: a finite real ≥ 1. Returns it as float."""
    if isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d) or d < 1:
        raise InvalidOptionError(f"{what} must be a finite number >= 1, got {d!r}")
    return float(d)


def progressive_factor(d: float, step_index: int, tau: int) -> int:
    """ScaleCrafter's progressive rule d_i = max(⌈d·(τ−i)/τ⌉, 2), for 0 ≤ i < τ."""
    d = check_factor(d)
    if not 0 <= step_index < tau:
        raise InvalidOptionError(f"the progressive rule applies to steps 0 <= i < tau = {tau!r}, got i = {step_index!r}")
    return max(math.ceil(d * (tau - step_index) / tau), 2)


def dilation_at_step(d: float, step_index: int, tau: int, *, progressive: bool = False) -> float:
    """The factor a layer with published factor d runs at on sampler step i: 1.0 (plain conv) for
    i ≥ τ; the progressive rule when ``progressive``; d otherwise."""
    d = check_factor(d)
    if step_index < 0 or tau < 0:
        raise InvalidOptionError(f"step_index and tau must be >= 0, got {step_index!r} and {tau!r}")
    if step_index >= tau:
        return 1.0
    return float(progressive_factor(d, step_index, tau)) if progressive else d


def layer_dilations(settings: Mapping[str, float], step_index: int, tau: int, *, progressive: bool = False) -> dict[str, float]:
    """:func:`dilation_at_step` for every layer of a ``name → d`` mapping (same names, same order)."""
    return {name: dilation_at_step(d, step_index, tau, progressive=progressive) for name, d in settings.items()}


def redilated_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, d: float, *,
                   stride: Union[int, Sequence[int]] = 1, groups: int = 1) -> torch.Tensor:
    """A same-padded conv (odd kernel, padding (K−1)/2, zero padding) run at re-dilation factor d.

    x: (B, C_in, *spatial) with 1–3 spatial axes; weight: (C_out, C_in/groups, *K), every K odd;
    bias: (C_out,) or None. Returns the plain layer's output shape, (B, C_out, ⌊(n−1)/stride⌋+1 …).

    - d = 1: the plain conv.
    - integer d: conv with dilation d, padding d·(K−1)/2 (exact: DESIGN §4 T1).
    - fractional d: k = ⌈d⌉; x resized to round(n·k/d) per axis (Python's round, as ScaleCrafter),
      linear/bilinear/trilinear with align_corners=False; conv with dilation k, padding k·(K−1)/2;
      output resized to the plain layer's output size the same way. The map is piecewise constant
      in d (it depends on d only through k and the resized sizes) and stays within
      Σ|K|·(‖∂²x‖/8)·2 + L·(d/(2n)) of the continuous dilated conv at d, L = Σ|K_t|·|t|·‖∂x‖
      (derivation in docs/sampling.md; tests/test_sampling_redilation.py checks it).
    """
    d = check_factor(d)
    nd = weight.ndim - 2
    if nd not in _MODES or x.ndim != nd + 2:
        raise InvalidOptionError(f"redilated_conv needs a (C_out, C_in/groups, *K) weight with 1-3 spatial axes and an input with the same "
                                 f"number of spatial axes, got weight {tuple(weight.shape)} and input {tuple(x.shape)}")
    ks = tuple(weight.shape[2:])
    if any(k % 2 == 0 for k in ks):
        raise InvalidOptionError(f"re-dilation keeps 'same' padding, which needs odd kernel sizes, got {ks}")
    strides = as_tuple(stride, nd, "stride", "redilated_conv")
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    half = tuple((k - 1) // 2 for k in ks)
    if d == 1:
        return conv(x, weight, bias, stride=strides, padding=half, groups=groups)
    k = math.ceil(d)
    padding = tuple(k * h for h in half)
    if k == d:
        return conv(x, weight, bias, stride=strides, padding=padding, dilation=k, groups=groups)
    spatial = tuple(x.shape[2:])
    out_size = tuple((n - 1) // s + 1 for n, s in zip(spatial, strides))
    resized = tuple(round(n * k / d) for n in spatial)
    mode = _MODES[nd]
    h = F.interpolate(x, size=resized, mode=mode, align_corners=False)
    h = conv(h, weight, bias, stride=strides, padding=padding, dilation=k, groups=groups)
    return F.interpolate(h, size=out_size, mode=mode, align_corners=False)
