"""Hand-computed resize matrices, parity with F.interpolate, sizes and caching (DESIGN §3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kernelscale import transforms
from kernelscale.errors import InvalidOptionError
from kernelscale.method import MODES, number_text, validate_coef
from kernelscale.transforms import build_axis_resize, build_kernel_resize, filter_taps, interpolation_kernel


def test_linear_taps_k3_s2_by_hand():
    # New taps u = −3…3 (output pixels); R[u, t] = φ(u/2 − t)/2 with φ the triangle:
    # column t = 0 is the triangle sampled at step ½, [.5, 1, .5], divided by its sum 2.
    expected = np.array([
        [0.25, 0.00, 0.00],
        [0.50, 0.00, 0.00],
        [0.25, 0.25, 0.00],
        [0.00, 0.50, 0.00],
        [0.00, 0.25, 0.25],
        [0.00, 0.00, 0.50],
        [0.00, 0.00, 0.25],
    ])
    np.testing.assert_array_equal(build_axis_resize(3, 2).matrix, expected)


def test_dilate_k3_s2_by_hand():
    expected = np.zeros((5, 3))
    expected[[0, 2, 4], [0, 1, 2]] = 1.0
    np.testing.assert_array_equal(build_axis_resize(3, 2, "dilate").matrix, expected)


def test_subsampling_splats_with_coarse_width():
    # s = ½, k = 5: old taps at −1, −½, 0, ½, 1 output pixels; triangle of width 1 output pixel.
    expected = np.array([
        [1.0, 0.5, 0.0, 0.0, 0.0],
        [0.0, 0.5, 1.0, 0.5, 0.0],
        [0.0, 0.0, 0.0, 0.5, 1.0],
    ])
    np.testing.assert_array_equal(build_axis_resize(5, 0.5).matrix, expected)


@pytest.mark.parametrize("mode, k, s, k_new", [
    ("linear", 3, 2, 7), ("linear", 3, 3, 11), ("linear", 5, 2, 11),  # (k+1)s − 1
    ("cubic", 3, 2, 11), ("nearest", 3, 2, 7), ("nearest", 3, 3, 9), ("lanczos3", 3, 2, 15),
    ("linear", 2, 2, 5), ("linear", 2, 3, 8), ("linear", 3, 1.5, 5), ("linear", 4, 1.5, 8),
])
def test_taps_sizes(mode, k, s, k_new):
    axis = build_axis_resize(k, s, "interp", mode)
    assert axis.k_out == k_new
    assert axis.k_out % 2 == k % 2 or (float(s).is_integer() and int(s) % 2 == 0)


@pytest.mark.parametrize("k, s", [(3, 2), (3, 3), (5, 2), (2, 2), (4, 3)])
def test_cost_table_sizes(k, s):
    assert build_axis_resize(k, s, "dilate").k_out == (k - 1) * s + 1
    assert build_axis_resize(k, s, "interp", "linear", "cells").k_out == k * s


@pytest.mark.parametrize("mode, torch_mode", [("linear", "bilinear"), ("cubic", "bicubic"), ("nearest", "nearest-exact")])
@pytest.mark.parametrize("size", [(3, 3), (3, 5), (4, 2)])
@pytest.mark.parametrize("scale", [2, 3, 1.5])
def test_cells_is_exactly_f_interpolate(mode, torch_mode, size, scale):
    kernel = torch.randn(2, 3, *size, dtype=torch.float64)
    new_size = tuple(int(np.floor(k * scale + 0.5)) for k in size)
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    expected = F.interpolate(kernel, size=new_size, mode=torch_mode, **kwargs)
    operator = build_kernel_resize(size, scale, "interp", mode, "cells", coef=1.0)
    got = (kernel.reshape(6, -1) @ torch.tensor(operator.dense()).T).reshape(2, 3, *new_size)
    # Both sum ≤ 4 float64 products per axis, in different orders: ≤ 16·ε·max|K| apart.
    torch.testing.assert_close(got, expected, rtol=0, atol=16 * 2.2e-16 * kernel.abs().max().item())


def test_paper_and_mass_coincide_for_linear_and_nearest_at_integer_scales():
    for mode in ("linear", "nearest"):
        for s in (2, 3, 4):
            np.testing.assert_allclose(
                build_axis_resize(5, s, "interp", mode, "taps", "paper").matrix,
                build_axis_resize(5, s, "interp", mode, "taps", "mass").matrix, rtol=0, atol=1e-15)


def test_paper_and_mass_differ_for_lanczos():
    paper = build_axis_resize(3, 2, "interp", "lanczos3", "taps", "paper").matrix
    mass = build_axis_resize(3, 2, "interp", "lanczos3", "taps", "mass").matrix
    assert abs(paper.sum(axis=0)[1] - 1) > 1e-3  # lanczos3 sampled at step ½ sums to ≈ 1.994, not 2
    np.testing.assert_allclose(mass.sum(axis=0), 1.0, atol=1e-15)


def test_filter_taps_sum_to_s():
    for mode in ("nearest", "linear", "cubic"):
        for s in (2, 3, 4, 5):
            assert filter_taps(mode, s).sum() == pytest.approx(s, abs=1e-12)  # partition of unity


def test_cubic_is_keys_with_a_minus_three_quarters():
    phi = interpolation_kernel("cubic")
    # Keys' kernel at a = −¾: φ(½) = (a+2)/8 − (a+3)/4 + 1 = 0.59375 and
    # φ(1.5) = a·(27/8 − 45/4 + 12 − 4) = −0.09375: torch's bicubic weights at the half-pixel.
    assert phi(np.array(0.5)) == 0.59375
    assert phi(np.array(1.5)) == -0.09375
    assert phi(np.array([1.0, 2.0, 2.5])).tolist() == [0.0, 0.0, 0.0]


def test_lanczos_vanishes_at_nonzero_integers():
    phi = interpolation_kernel("lanczos3")
    assert phi(np.array([1.0, -2.0, 3.0, 4.0])).tolist() == [0.0, 0.0, 0.0, 0.0]
    assert phi(np.array(0.0)) == 1.0


def test_operators_are_cached_and_read_only():
    transforms.build_axis_resize.cache_clear()
    a = build_axis_resize(3, 2.0, "interp", "cubic")
    b = build_axis_resize(3, 2.0, "interp", "cubic")
    assert a is b
    assert transforms.build_axis_resize.cache_info().hits == 1
    with pytest.raises(ValueError):
        a.matrix[0, 0] = 1.0


def test_size_one_axes_are_never_resized():
    operator = build_kernel_resize((1, 3), 2)
    assert operator.out_shape == (1, 7)
    np.testing.assert_array_equal(operator.axes[0].matrix, np.eye(1))


def test_user_float_coef_applies_once_to_the_whole_kernel():
    raw = build_kernel_resize((3, 3), 2, coef=1.0).dense()
    scaled = build_kernel_resize((3, 3), 2, coef=0.25).dense()
    np.testing.assert_allclose(scaled, 0.25 * raw, rtol=1e-15)


@pytest.mark.parametrize("mode", MODES)
def test_pinv_adjoint_identity(mode):
    # ⟨R w, B x⟩ = ⟨w, x⟩ for all w, x  ⇔  Rᵀ B = I (B has full column rank when upsampling).
    r = build_axis_resize(4, 2.5, "pinv", mode).matrix
    b = transforms.cells_upsampler(4, 10, mode)
    np.testing.assert_allclose(r.T @ b, np.eye(4), atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_centre_offset(mode):
    assert build_axis_resize(3, 2, "interp", mode, "taps").centre_offset == 0.0
    assert build_axis_resize(3, 2, "interp", mode, "cells").centre_offset == 0.5


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("k", [3, 5, 7])
def test_down_then_up_keeps_dc_gain_but_is_not_the_identity(mode, k):
    down = build_axis_resize(k, 0.5, "interp", mode)
    up = build_axis_resize(down.k_out, 2, "interp", mode)
    composite = up.matrix @ down.matrix
    # T4 holds for each step, so every column of the composite sums to 1 (mass kept) …
    np.testing.assert_allclose(composite.sum(axis=0), 1.0, atol=1e-14)
    # … but it spreads each tap over its neighbours: not the identity (nor of the same size).
    assert composite.shape[0] != k or not np.allclose(composite, np.eye(k))


@pytest.mark.parametrize("coef", [0, 0.0, -1, -0.25, float("nan"), float("inf")])
def test_coef_must_be_a_finite_number_above_zero(coef):
    # 0 would zero every kernel, a negative coefficient flip its sign.
    expected = number_text(coef)
    with pytest.raises(InvalidOptionError, match=f"coef must be a finite number > 0, got {expected}$"):
        validate_coef(coef)
    with pytest.raises(InvalidOptionError, match="coef must be a finite number > 0"):
        build_kernel_resize((3, 3), 2, coef=coef)
    with pytest.raises(InvalidOptionError, match="coef must be a finite number > 0"):
        build_axis_resize(3, 2, coef=coef)


@pytest.mark.parametrize("method, mode, align", [("interp", "linear", "taps"), ("interp", "lanczos3", "taps"),
                                                 ("interp", "cubic", "cells"), ("pinv", "linear", "cells"),
                                                 ("dilate", "linear", "taps")])
def test_a_huge_scale_is_refused_before_anything_is_allocated(method, mode, align):
    # 1e9 taps of float64 would be 8 GB for R's offsets alone: a scale past 65536 is refused as it
    # enters; below it, the size is known from k and s.
    with pytest.raises(InvalidOptionError, match=r"scale must be between 1/65536 and 65536 \(limit 65536 taps per axis\), got 1000000000"):
        build_axis_resize(3, 1e9, method, mode, align)
    with pytest.raises(InvalidOptionError, match=r"scale 40000 would make a 3-tap axis \d+ taps long \(limit 65536\)"):
        build_axis_resize(3, 40000, method, mode, align)
    with pytest.raises(InvalidOptionError, match="limit 65536"):
        build_kernel_resize((3, 3), (1, 40000), method, mode, align)


def test_the_tap_limit_is_exact_and_long_kernels_stay_within_it():
    assert build_axis_resize(3, 16384).k_out == 65535  # linear taps: (k+1)s − 1
    with pytest.raises(InvalidOptionError, match="3-tap axis 65539 taps long"):
        build_axis_resize(3, 16385)
    assert build_axis_resize(256, 2).k_out == 513  # an STFT front end
    assert build_axis_resize(256, 16, align="cells").k_out == 4096
    assert build_axis_resize(256, 16, "dilate").k_out == 4081
    with pytest.raises(InvalidOptionError, match="limit 65536"):
        build_kernel_resize((3, 3), 1e6, "disperse")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("k", [1, 2, 3, 4, 7, 16])
@pytest.mark.parametrize("s", [0.3, 0.5, 0.75, 1.5, 2, 2.5, 3, 4, 7.3])
def test_axis_size_is_the_built_size(mode, k, s):
    for align in ("taps", "cells"):
        assert transforms.axis_size(k, s, "interp", mode, align) == build_axis_resize(k, s, "interp", mode, align).k_out
