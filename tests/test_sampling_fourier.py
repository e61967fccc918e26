"""FouriScale's low-pass, its factored (prefilter + dilated conv) form, annealing and guidance,
against the official code (github.com/LeonHLJ/FouriScale at 6fb392e) transcribed here."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kernelscale.errors import InvalidOptionError
from kernelscale.sampling import (
    annealed_factor,
    cfg,
    fouriscale_conv,
    fouriscale_guidance,
    lowpass,
    lowpass_mask,
    lowpass_mask_1d,
    lowpass_prefilter,
)

U32, U64 = 2.0**-24, 2.0**-53


def fft_filter_error(x: torch.Tensor, n: int) -> float:
    """A float32 FFT → mask (|m| ≤ 1) → inverse FFT of an n-point image errs by at most
    c·u·log₂n·‖x‖₂ per value (the FFT's normwise backward error, Higham §24.1); c = 8 covers both
    transforms and the product, ‖x‖₂ taken per (batch, channel) image."""
    return 8 * U32 * math.log2(n) * float(x.double().pow(2).sum(dim=(-2, -1)).sqrt().max())


def official_mask(H: int, W: int, h_scale: float, w_scale: float, value: float, weak: bool) -> torch.Tensor:
    """create_lowpass_filter / create_weak_lowpass_filter (model.py L21-87), one (H, W) mask."""
    if weak:
        H, R_h = H // 2, (h_scale - 1) * H // (h_scale * 2)
        W, R_w = W // 2, (w_scale - 1) * W // (w_scale * 2)
    else:
        H, R_h = H // 2, max(H // 8, 1)
        W, R_w = W // 2, max(W // 8, 1)
    if R_h == 0:
        mask_h = torch.ones(H)
    else:
        mask_h = torch.min(torch.max((1 - value) / R_h * (H / h_scale + 1 - torch.arange(H).float()) + 1, torch.ones(H) * value), torch.ones(H))
    if R_w == 0:
        mask_w = torch.ones(W)
    else:
        mask_w = torch.min(torch.max((1 - value) / R_w * (W / w_scale + 1 - torch.arange(W).float()) + 1, torch.ones(W) * value), torch.ones(W))
    mask = torch.ger(mask_h, mask_w)
    mask = torch.cat((torch.flip(mask, [1]), mask), 1)
    return torch.cat((torch.flip(mask, [0]), mask), 0)


def official_filter(x: torch.Tensor, mask: torch.Tensor, h_base: int, w_base: int) -> torch.Tensor:
    """The filtering part of FouriConvProcessor.__call__ (L100-126) for one branch."""
    r = int(max(math.ceil(x.shape[-2] / h_base), math.ceil(x.shape[-1] / w_base)))
    ph, pw = int(h_base * r) - x.shape[-2], int(w_base * r) - x.shape[-1]
    y = F.pad(x.float(), (0, pw, 0, ph))
    spec = torch.fft.fftshift(torch.fft.fftn(y, dim=(-2, -1)), dim=(-2, -1)) * mask
    y = torch.fft.ifftn(torch.fft.ifftshift(spec, dim=(-2, -1)), dim=(-2, -1)).real
    return y[..., : y.shape[-2] - ph, : y.shape[-1] - pw]


@pytest.mark.parametrize("size", [(16, 16), (24, 40), (8, 6)])
@pytest.mark.parametrize("scale", [1.0, 2.0, 2.5, (2.0, 3.0)])
@pytest.mark.parametrize("value", [0.0, 0.6])
@pytest.mark.parametrize("weak", [False, True])
def test_mask_is_the_official_one(size, scale, value, weak):
    sh, sw = (scale, scale) if isinstance(scale, float) else scale
    assert torch.equal(lowpass_mask(size, scale, value=value, weak=weak), official_mask(*size, sh, sw, value, weak))


@pytest.mark.parametrize("pad_to", [None, (32, 32)])
def test_lowpass_is_the_official_filter(pad_to):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 24, 20, generator=g)
    size = pad_to or (24, 20)
    mask = official_mask(*size, 2.0, 2.0, 0.0, False)
    want = official_filter(x, mask, *(size if pad_to is None else (16, 16)))
    got = lowpass(x, 2.0, pad_to=pad_to)
    # the same float32 FFTs in the same order; each side within fft_filter_error of the exact filter
    assert torch.allclose(got, want, rtol=0, atol=2 * fft_filter_error(x, size[0] * size[1]))


def test_prefilter_taps_are_the_filter_as_a_circular_convolution():
    """lowpass(x)[p] = Σ_m g[m]·x[(p − m) mod N] with g = lowpass_prefilter, checked by an explicit
    sum of shifted copies in float64 (≤ N·u·Σ|g|·max|x| for the N-term sum) against lowpass's
    float32 FFTs (fft_filter_error)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 2, 12, 10, generator=g, dtype=torch.float64)
    for weak, value in [(False, 0.0), (True, 0.0), (False, 0.6)]:
        taps = lowpass_prefilter((12, 10), 2.0, value=value, weak=weak)
        direct = torch.zeros_like(x)
        for m1 in range(12):
            for m2 in range(10):
                direct += taps[m1, m2] * torch.roll(x, shifts=(m1, m2), dims=(-2, -1))
        got = lowpass(x, 2.0, value=value, weak=weak).to(torch.float64)
        tol = 120 * U64 * float(taps.abs().sum()) * float(x.abs().max()) + fft_filter_error(x, 120) + U32 * float(x.abs().max())
        assert torch.allclose(got, direct, rtol=0, atol=tol)


def test_prefilter_response_is_the_even_part_of_the_mask():
    """The official code keeps the real part, so the response is (M(ν) + M(−ν))/2."""
    mask = torch.fft.ifftshift(lowpass_mask((16, 16), 2.0), dim=(-2, -1)).to(torch.float64)
    response = torch.fft.fftn(lowpass_prefilter((16, 16), 2.0), dim=(-2, -1))
    flipped = torch.roll(torch.flip(mask, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))  # M(−ν)
    assert torch.allclose(response.real, (mask + flipped) / 2, rtol=0, atol=64 * U64 * 256)
    assert torch.allclose(response.imag, torch.zeros_like(mask), rtol=0, atol=64 * U64 * 256)
    # DC passes, Nyquist is stopped for the strong filter at scale 2 with v = 0.
    assert abs(float(response.real[0, 0]) - 1) <= 64 * U64 and abs(float(response.real[8, 8])) <= 64 * U64


@pytest.mark.parametrize("d", [2.0, 2.5, 3.0])
@pytest.mark.parametrize("stride", [1, 2])
def test_fouriscale_conv_is_prefilter_then_dilated_conv(d, stride):
    """The factored form of DESIGN §9: the circular prefilter taps applied by hand, then the
    original weight at dilation ⌈d⌉ with its same padding (the official processor's conv)."""
    g = torch.Generator().manual_seed(int(10 * d) + stride)
    x = torch.randn(1, 3, 16, 16, generator=g)
    w, b = torch.randn(4, 3, 3, 3, generator=g), torch.randn(4, generator=g)
    taps = lowpass_prefilter((16, 16), max(d / stride, 1.0))
    xd = x.to(torch.float64)
    filtered = sum(taps[m1, m2] * torch.roll(xd, (m1, m2), (-2, -1)) for m1 in range(16) for m2 in range(16))
    k = math.ceil(d)
    want = F.conv2d(filtered, w.double(), b.double(), stride=stride, padding=k, dilation=k)
    got = fouriscale_conv(x, w, b, d, stride=stride)
    # the float32 filter's error passes through Σ|w| per output; the float32 conv of 27 products
    # adds ≤ 27·u·Σ|w|·max|filtered| (+ the bias and the final rounding).
    sum_w = float(w.abs().sum(dim=(1, 2, 3)).max())
    tol = sum_w * (fft_filter_error(x, 256) + U32 * float(filtered.abs().max())) + 28 * U32 * (sum_w * float(filtered.abs().max()) + float(b.abs().max()))
    assert torch.allclose(got.double(), want, rtol=0, atol=tol)


def test_fouriscale_conv_at_1_is_the_plain_conv():
    x, w = torch.randn(1, 2, 8, 8), torch.randn(3, 2, 3, 3)
    assert torch.equal(fouriscale_conv(x, w, None, 1.0), F.conv2d(x, w, padding=1))


def test_annealing():
    # SD 1024²: d = 2, start 10, stop 30
    assert [annealed_factor(2, i, 10, 30) for i in (0, 9, 10, 20, 29, 30, 49)] == [2, 2, 2.0, 1.5, 1.05, 1.0, 1.0]
    assert annealed_factor(4, 20, 20, 35) == 4.0 and annealed_factor(4, 34, 20, 35) == pytest.approx(1.2)
    with pytest.raises(InvalidOptionError, match="start=5, stop=5"):
        annealed_factor(2, 0, 5, 5)


def test_guidance_is_cfg_between_strong_uncond_and_weak_cond():
    u, c = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    assert torch.equal(fouriscale_guidance(u, c, 7.5), cfg(u, c, 7.5))


def test_bad_inputs_are_named():
    with pytest.raises(InvalidOptionError, match="even integer >= 2, got 7"):
        lowpass_mask_1d(7, 2.0)
    with pytest.raises(InvalidOptionError, match="1.5"):
        lowpass_mask_1d(8, 2.0, value=1.5)
    with pytest.raises(InvalidOptionError, match=r"pad_to \(8, 8\)"):
        lowpass(torch.zeros(1, 1, 10, 10), 2.0, pad_to=(8, 8))
