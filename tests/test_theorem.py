"""Property tests of the scaling theorem, DESIGN §4 (T1–T6) and the paper's Theorem 1.

Every tolerance is derived next to its assertion. Rounding bounds use the first-order bound
for a floating sum of n terms, |fl(Σ a) − Σ a| ≤ n·ε·Σ|a|, with ε the float64 unit roundoff.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from kernelscale import resize_conv, resize_grid_linear, resize_kernel
from kernelscale.method import MODES
from kernelscale.transforms import (
    build_axis_resize,
    cells_upsampler,
    filter_taps,
    frequency_response,
)
from signals import EPS64, TrigSignal, hires_correlate, hires_positions, periodic_upsample_matrix

THEOREM = settings(max_examples=200, deadline=None)
seeds = st.integers(0, 2**32 - 1)
integer_scales = st.integers(2, 4)


def kernel_1d(values: np.ndarray) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).reshape(1, 1, -1)


def resized_1d(kernel: np.ndarray, s: float, **options) -> np.ndarray:
    return resize_kernel(kernel_1d(kernel), s, **options).reshape(-1).numpy()


def circular_correlate(x: np.ndarray, kernel: np.ndarray, padding: tuple[int, ...]) -> np.ndarray:
    """PyTorch's cross-correlation with circular padding: y[i] = Σ_m K[m]·x[(i + m − p) mod n]."""
    out = np.zeros_like(x)
    for m in np.ndindex(kernel.shape):
        shift = tuple(p - mi for mi, p in zip(m, padding))
        out += kernel[m] * np.roll(x, shift, axis=tuple(range(x.ndim)))
    return out


def upsample(x: np.ndarray, mats: list[np.ndarray]) -> np.ndarray:
    for axis, u in enumerate(mats):
        x = np.moveaxis(np.tensordot(u, x, axes=([1], [axis])), 0, axis)
    return x


# T1 ─ dilation is exact ─────────────────────────────────────────────────────────────────────
@THEOREM
@given(
    d=st.integers(1, 2),
    k=st.integers(1, 5),
    s=integer_scales,
    upsampler=st.sampled_from(["nearest", "linear", "cubic"]),
    n=st.integers(6, 10),
    seed=seeds,
)
def test_t1_dilation_commutes_with_upsampling(d, k, s, upsampler, n, seed):
    rng = np.random.default_rng(seed)
    kernel = rng.standard_normal((1, 1) + (k,) * d)
    x = rng.standard_normal((n,) * d)
    p = k // 2
    resized = resize_conv(torch.tensor(kernel), s, padding=p, method="dilate")
    p_new = resized.geometry.integer_padding()
    assert p_new == (s * p,) * d  # geometry rule with δ = (k−1)/2 − p gives p' = s·p for dilation
    u = [periodic_upsample_matrix(n, s, upsampler)] * d
    lhs = circular_correlate(upsample(x, u), resized.weight.numpy()[0, 0], p_new)
    rhs = upsample(circular_correlate(x, kernel[0, 0], (p,) * d), u)
    # Both sides sum k^d kernel terms of w^d upsampler terms (w ≤ 5 taps per axis for cubic):
    # rounding ≤ 2·(k·5)^d·ε·Σ|K|·(max row Σ|U|)^d·max|x|.
    row = max(np.abs(m).sum(axis=1).max() for m in u)
    tol = 2 * (k * 5) ** d * EPS64 * np.abs(kernel).sum() * row**d * np.abs(x).max()
    assert np.abs(lhs - rhs).max() <= tol


# T2 ─ interpolation = dilation + low-pass ───────────────────────────────────────────────────
@THEOREM
@given(k=st.integers(2, 9), s=st.integers(1, 5), mode=st.sampled_from(MODES), coef=st.sampled_from(["mass", "paper", 0.37]))
def test_t2_interp_is_dilation_then_filter(k, s, mode, coef):
    interp = build_axis_resize(k, s, "interp", mode, "taps", coef).matrix
    dilate = build_axis_resize(k, s, "dilate").matrix
    h = filter_taps(mode, s)
    c = {"mass": 1 / h.sum(), "paper": 1 / s}.get(coef, coef) if s > 1 else 1.0  # T5: s = 1 is the identity
    filt = np.zeros((dilate.shape[0] + h.size - 1, dilate.shape[0]))
    for m in range(dilate.shape[0]):
        filt[m : m + h.size, m] = c * h
    expected = filt @ dilate
    assert interp.shape == expected.shape  # k' = (k−1)s + len(h_s): the DESIGN size rule
    # Each entry is one product c·φ(·) on both sides (the dilation is 0/1); the mass column sum
    # adds ≤ k'·ε relative: tolerance 4·k'·ε·max|R|.
    np.testing.assert_allclose(interp, expected, rtol=0, atol=4 * interp.shape[0] * EPS64 * np.abs(expected).max())


# T3 ─ the bound ─────────────────────────────────────────────────────────────────────────────
def t3_error_and_bound_1d(kernel, s, mode, coef, n, f_max, seed):
    signal = TrigSignal(n, f_max, np.random.default_rng(seed))
    new = resized_1d(kernel, s, mode=mode, coef=coef)
    got = hires_correlate(signal, new, n, s)
    want = signal.filtered(kernel, hires_positions(n, s))
    omegas = 2 * np.pi * np.arange(f_max + 1) / (n * s)
    bound = np.abs(1 - frequency_response(mode, s, omegas, coef)).max()
    return np.linalg.norm(got - want) / np.linalg.norm(want), bound, want


@THEOREM
@given(
    k=st.sampled_from([3, 5, 7]),
    s=integer_scales,
    mode=st.sampled_from(MODES),
    coef=st.sampled_from(["mass", "paper"]),
    n=st.integers(12, 24),
    band=st.floats(0.05, 0.45),
    seed=seeds,
)
def test_t3_relative_error_within_frequency_bound(k, s, mode, coef, n, band, seed):
    kernel = np.random.default_rng(seed + 1).standard_normal(k)
    f_max = max(1, int(band * n))
    rel, bound, want = t3_error_and_bound_1d(kernel, s, mode, coef, n, f_max, seed)
    # Exact (Parseval on the n·s-periodic grid): ‖(c·h_s − δ) ⊛ z‖ ≤ max_f |1 − c·ĥ_s(ω_f)|·‖z‖.
    # Rounding: each sample sums k'·(2f_max+2) float64 terms; relative slack 1e3·ε·k'·f_max covers it.
    slack = 1e3 * EPS64 * (k + 2) * s * 2 * (f_max + 1) * np.abs(kernel).sum() * np.sqrt(want.size) / max(np.linalg.norm(want), 1e-300)
    assert rel <= bound + slack


@THEOREM
@given(k=st.sampled_from([3, 5]), s=st.integers(2, 3), mode=st.sampled_from(MODES), n=st.integers(8, 12), seed=seeds)
def test_t3_separable_bound_in_two_dimensions(k, s, mode, n, seed):
    rng = np.random.default_rng(seed)
    kernel = rng.standard_normal((k, k))
    f_max = max(1, n // 4)
    parts = [(TrigSignal(n, f_max, rng), TrigSignal(n, f_max, rng)) for _ in range(2)]
    new = resize_kernel(torch.tensor(kernel)[None, None], s, mode=mode).numpy()[0, 0]
    p = hires_positions(n, s)

    def correlate_2d(kern, step):
        offsets = [np.arange(size) - (size - 1) / 2 for size in kern.shape]
        total = np.zeros((p.size, p.size))
        for (a, b) in parts:
            for i, ui in enumerate(offsets[0]):
                col = np.outer(a(p + ui / step), np.ones(p.size))
                for j, uj in enumerate(offsets[1]):
                    total += kern[i, j] * col * b(p + uj / step)[None, :]
        return total

    got = correlate_2d(new, s)
    want = correlate_2d(kernel, 1)
    response = frequency_response(mode, s, 2 * np.pi * np.arange(f_max + 1) / (n * s))
    bound = np.abs(1 - np.outer(response, response)).max()  # the separable product c·ĥ(ω₁)·c·ĥ(ω₂)
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert rel <= bound + 1e-9  # rounding of ≤ 10⁴ float64 terms per sample: ≪ 1e-9 relative


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("s", [2, 3])
def test_t3_catches_a_wrong_coefficient(mode, s):
    """The check is strong enough to reject c = s (the 's^d' mistake) instead of 1/s."""
    kernel = np.array([0.2, 0.5, 0.3])
    rel_ok, bound, _ = t3_error_and_bound_1d(kernel, s, mode, "mass", 16, 3, 0)
    rel_bad, _, _ = t3_error_and_bound_1d(kernel, s, mode, float(s), 16, 3, 0)
    assert rel_ok <= bound + 1e-12
    assert rel_bad > 10 * max(bound, 0.1)


# The paper's Theorem 1 ─ a cosine's amplitude ratio ────────────────────────────────────────
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("s", [2, 3, 4])
def test_theorem1_cosine_amplitude_ratio(mode, s):
    n = 64
    kernel = np.array([0.25, 0.5, 0.25])
    errors = []
    for f in (8, 4, 2, 1):
        signal = TrigSignal(n, f, np.random.default_rng(0))
        signal.a[:] = 0.0
        signal.b[:] = 0.0
        signal.a[f] = 1.0  # x(p) = cos(2π·ν·p), ν = f/n cycles per low-res cell
        new = resized_1d(kernel, s, mode=mode)
        got = hires_correlate(signal, new, n, s)
        want = signal.filtered(kernel, hires_positions(n, s))
        ratio = frequency_response(mode, s, np.array([2 * np.pi * f / (n * s)]))[0]  # c·ĥ_s(ν/s)
        # A cosine through the symmetric filter c·h_s is scaled by exactly c·ĥ_s (T2 + T1).
        np.testing.assert_allclose(got, ratio * want, rtol=0, atol=1e-12)
        errors.append(abs(1 - ratio))
    assert errors == sorted(errors, reverse=True)  # ratio → 1 as ν → 0 …
    assert errors[-1] < 2e-3  # … and at ν = 1/64 it is within 0.2% (linear: (s²−1)ω²/12 ≈ 1e-3)


# Half-pixel phase: cells shifts, taps does not ─────────────────────────────────────────────
@pytest.mark.parametrize("s", [2, 4])
def test_cells_carries_a_half_pixel_phase_error_taps_does_not(s):
    n, f = 32, 2
    kernel = np.array([0.25, 0.5, 0.25])
    signal = TrigSignal(n, f, np.random.default_rng(0))
    signal.a[:] = 0.0
    signal.b[:] = 0.0
    signal.a[f] = 1.0
    p = hires_positions(n, s)
    want = signal.filtered(kernel, p)
    x_hi = signal(p)
    omega = 2 * np.pi * f / (n * s)  # radians per high-res pixel

    def phase(y):
        return np.angle(np.sum(y * np.exp(-1j * omega * np.arange(y.size))))

    for align, expected in (("taps", 0.0), ("cells", omega / 2)):
        new = resized_1d(kernel, s, align=align)
        pad = (new.size - 1) // 2  # PyTorch puts the odd extra pixel of an even kernel after
        got = circular_correlate(x_hi, new, (pad,))
        # Pure sinusoid with an integer number of periods on the grid: phases exact to rounding.
        assert abs((phase(got) - phase(want)) - expected) < 1e-9, align


# T4 ─ mass ──────────────────────────────────────────────────────────────────────────────────
@THEOREM
@given(
    shape=st.lists(st.integers(1, 6), min_size=1, max_size=3),
    scales=st.lists(st.floats(0.3, 4.0), min_size=3, max_size=3),
    mode=st.sampled_from(MODES),
    align=st.sampled_from(["taps", "cells"]),
    method=st.sampled_from(["interp", "interp", "dilate"]),
    seed=seeds,
)
def test_t4_mass_coefficient_preserves_dc_gain(shape, scales, mode, align, method, seed):
    d = len(shape)
    scale = tuple(scales[:d])
    if method == "dilate":
        scale = tuple(float(max(1, round(s))) for s in scale)
    if align == "cells" and any(round(k * s) < 1 for k, s in zip(shape, scale)):
        return  # a kernel emptied by the scale is an error, tested elsewhere
    kernel = torch.tensor(np.random.default_rng(seed).standard_normal((2, 1, *shape)))
    new = resize_kernel(kernel, scale, method=method, mode=mode, align=align, coef="mass")
    dims = tuple(range(2, 2 + d))
    # Column sums are 1 to k'·ε; the total sums k'^d·k^d terms: tolerance 4·(k'k)^d·ε·Σ|K|·max‖R col‖₁^d.
    col_l1 = max(np.abs(build_axis_resize(k, s, method, mode, align).matrix).sum(axis=0).max() for k, s in zip(shape, scale))
    terms = np.prod(new.shape[2:]) * np.prod(shape)
    tol = 4 * terms * EPS64 * kernel.abs().sum(dims).max().item() * col_l1**d
    assert torch.allclose(new.sum(dims), kernel.sum(dims), rtol=0, atol=tol)


# T5 ─ algebra ───────────────────────────────────────────────────────────────────────────────
@THEOREM
@given(
    method=st.sampled_from(["interp", "dilate", "pinv"]),
    mode=st.sampled_from(MODES),
    align=st.sampled_from(["taps", "cells"]),
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]),
)
def test_t5_scale_one_is_identity_bit_for_bit(method, mode, align, shape, dtype):
    kernel = torch.randn(3, 2, *shape).to(dtype)
    assert resize_kernel(kernel, 1, method=method, mode=mode, align=align) is kernel
    array = kernel.float().numpy()
    assert resize_kernel(array, 1.0, method=method, mode=mode, align=align) is array


@THEOREM
@given(k=st.integers(1, 6), s=st.sampled_from([0.5, 1.5, 2, 3, 2.5]), mode=st.sampled_from(MODES),
       align=st.sampled_from(["taps", "cells"]), seed=seeds, a=st.floats(-3, 3), b=st.floats(-3, 3))
def test_t5_linear_and_flip_commutes(k, s, mode, align, seed, a, b):
    if align == "cells" and round(k * s) < 1:
        return
    exact_ties = not (align == "cells" and mode == "nearest" and not float(s).is_integer())
    rng = np.random.default_rng(seed)
    K, L = (torch.tensor(rng.standard_normal((2, 2, k))) for _ in range(2))
    resize = lambda w: resize_kernel(w, s, mode=mode, align=align)  # noqa: E731
    scale = (abs(a) + abs(b) + 1) * max(K.abs().max(), L.abs().max()).item() * k
    # Linearity: each output is a k-term dot product on both sides; 8·k·ε relative to the inputs.
    assert torch.allclose(resize(a * K + b * L), a * resize(K) + b * resize(L), rtol=0, atol=8 * k * EPS64 * scale * 4)
    # R is centro-symmetric (φ even, taps centred), so flipping commutes up to summation order.
    # (torch's nearest-exact, which cells/nearest reproduces, breaks ties to the right, which
    # fractional scales hit: there flipping does not commute.)
    if exact_ties:
        assert torch.allclose(resize(K.flip(-1)), resize(K).flip(-1), rtol=0, atol=8 * k * EPS64 * scale)


@THEOREM
@given(k=st.integers(2, 5), s=st.sampled_from([1.5, 2, 3]), mode=st.sampled_from(MODES), seed=seeds)
def test_t5_transpose_commutes(k, s, mode, seed):
    K = torch.tensor(np.random.default_rng(seed).standard_normal((2, 3, k, k)))
    got = resize_kernel(K.transpose(-1, -2), s, mode=mode)
    want = resize_kernel(K, s, mode=mode).transpose(-1, -2)
    assert torch.allclose(got, want, rtol=0, atol=16 * k * k * EPS64 * K.abs().max().item() * 4)


@THEOREM
@given(k=st.integers(1, 7), a=st.integers(1, 4), b=st.integers(1, 4))
def test_t5_dilations_compose(k, a, b):
    ra = build_axis_resize((k - 1) * b + 1, a, "dilate").matrix
    rb = build_axis_resize(k, b, "dilate").matrix
    np.testing.assert_array_equal(build_axis_resize(k, a * b, "dilate").matrix, ra @ rb)


# T6 ─ grids ─────────────────────────────────────────────────────────────────────────────────
@THEOREM
@given(
    c=st.integers(1, 3),
    h=st.integers(2, 6),
    w=st.integers(2, 6),
    s=st.sampled_from([1.5, 2.0, 2.5, 3.0]),
    mode=st.sampled_from(["nearest", "linear", "cubic"]),
    seed=seeds,
)
def test_t6_pinv_grid_is_exact_on_upsampled_inputs(c, h, w, s, mode, seed):
    rng = np.random.default_rng(seed)
    weight = torch.tensor(rng.standard_normal((4, c * h * w)))
    x = torch.tensor(rng.standard_normal((1, c, h, w)))
    new = resize_grid_linear(weight, (c, h, w), s, method="pinv", mode=mode)
    size = (math.floor(h * s + 0.5), math.floor(w * s + 0.5))  # round half up, as the cells rule
    torch_mode = {"nearest": "nearest-exact", "linear": "bilinear", "cubic": "bicubic"}[mode]
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    up = F.interpolate(x, size=size, mode=torch_mode, **kwargs)
    got = new @ up.reshape(-1)
    want = weight @ x.reshape(-1)
    # pinv(B)·B = I up to the conditioning of B: rounding ≤ cond(B)·n·ε·‖W‖‖x‖ per output.
    cond = max(np.linalg.cond(cells_upsampler(n, m, mode)) for n, m in ((h, size[0]), (w, size[1])))
    tol = 64 * cond**2 * weight.shape[1] * EPS64 * weight.abs().max().item() * x.abs().max().item() * size[0] * size[1]
    assert torch.allclose(got, want, rtol=0, atol=tol)


@THEOREM
@given(h=st.integers(3, 8), w=st.integers(3, 8), s=st.integers(2, 3), mode=st.sampled_from(["nearest", "linear"]),
       band=st.floats(0.0, 1.0), seed=seeds)
def test_t6_interp_cells_grid_bounded_like_t3(h, w, s, mode, band, seed):
    """W'·U x = W·(M x) with M = Rᵀ B. For nearest and linear, M is a symmetric filter g whose
    eigenvectors are the DCT-II basis (clamped edges = half-sample symmetric extension), so for x
    in the DCT band f < band·n: |W'·U x − W·x| ≤ ‖W‖·‖x‖·max |1 − ĝ(ω₁)ĝ(ω₂)|."""
    rng = np.random.default_rng(seed)
    fh, fw = max(1, int(band * h)), max(1, int(band * w))

    def dct_basis(n, f_count):
        i = np.arange(n) + 0.5
        return np.stack([np.cos(np.pi * f * i / n) for f in range(f_count)], axis=1)

    bh, bw = dct_basis(h, fh), dct_basis(w, fw)
    x = bh @ rng.standard_normal((fh, fw)) @ bw.T
    weight = torch.tensor(rng.standard_normal((3, h * w)))
    new = resize_grid_linear(weight, (1, h, w), s, mode=mode)
    up = F.interpolate(torch.tensor(x)[None, None], scale_factor=s,
                       mode={"nearest": "nearest-exact", "linear": "bilinear"}[mode], **({} if mode == "nearest" else {"align_corners": False}))
    got = (new @ up.reshape(-1)).numpy()
    want = weight.numpy() @ x.reshape(-1)

    def eig(n, f_count):
        m = build_axis_resize(n, s, "interp", mode, "cells", "paper").matrix.T @ cells_upsampler(n, n * s, mode)
        i = np.arange(n) + 0.5
        return np.array([np.cos(np.pi * f * i / n) @ m @ np.cos(np.pi * f * i / n) / (np.cos(np.pi * f * i / n) ** 2).sum()
                         for f in range(f_count)])

    bound = np.abs(1 - np.outer(eig(h, fh), eig(w, fw))).max()
    rows = np.linalg.norm(weight.numpy(), axis=1)
    assert np.all(np.abs(got - want) <= rows * np.linalg.norm(x) * bound + 1e-9 * rows * np.linalg.norm(x))


# Strided convs: approximate only — measured, not pretended ─────────────────────────────────
def test_strided_conv_carries_the_documented_subpixel_offset():
    """A stride-2 conv resized for the supersampled grid (stride kept, the pyramid s× larger)
    samples its output (s−1)/(2s) input pixels away from the cell centres of the supersampled
    output grid. On a ramp x(p) = p the symmetric kernel returns the position it sampled."""
    s, stride, n = 2, 2, 32
    kernel = torch.tensor([[[0.25, 0.5, 0.25]]], dtype=torch.float64)
    resized = resize_conv(kernel, s, padding=1, stride=stride)
    x_hi = torch.tensor(hires_positions(n, s))[None, None]  # U x is exact for a ramp
    high = F.conv1d(x_hi, resized.weight, stride=stride, padding=resized.geometry.integer_padding()[0])[0, 0].numpy()
    j = np.arange(high.size)
    cell_centres = (j + 0.5) * stride / s - stride / 2  # output cells of the low-res layer, split in s
    interior = slice(2, high.size - 2)  # away from the zero padding
    np.testing.assert_allclose(high[interior] - cell_centres[interior], (s - 1) / (2 * s), atol=1e-12)
