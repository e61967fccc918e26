"""The resize engine: tensor kinds, dtypes, conv families and the geometry rule (DESIGN §2–§3, §7)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kernelscale import new_padding, resize_conv, resize_grid_linear, resize_kernel
from kernelscale.errors import GeometryError, InvalidOptionError, KernelscaleError
from kernelscale.errors import NonFiniteResultError
from kernelscale.execute import kernel_gains, overflow_check_needed
from kernelscale.reparam import rescale_weight_norm_g
from kernelscale.resize import scale_tensor
from kernelscale.transforms import build_kernel_resize


def reference(weight: torch.Tensor, scale, **options) -> torch.Tensor:
    """float64 R_1⊗…⊗R_d applied slice by slice."""
    op = build_kernel_resize(weight.shape[2:], scale, **options)
    flat = weight.double().reshape(-1, int(np.prod(weight.shape[2:])))
    return (flat @ torch.tensor(op.dense()).T).reshape(*weight.shape[:2], *op.out_shape)


@pytest.mark.parametrize("shape", [(4, 3, 5), (4, 3, 3, 3), (2, 2, 3, 3, 3), (6, 1, 3, 3)])
def test_every_dimensionality_matches_the_float64_reference(shape):
    weight = torch.randn(*shape, dtype=torch.float64)
    for mode in ("linear", "cubic"):
        torch.testing.assert_close(resize_kernel(weight, 2, mode=mode), reference(weight, 2, mode=mode), rtol=0, atol=1e-13)


def test_large_3d_kernels_take_the_separable_path():
    weight = torch.randn(2, 2, 3, 3, 3, dtype=torch.float64)  # cubic: 11³ = 1331 taps > the dense limit
    torch.testing.assert_close(resize_kernel(weight, 2, mode="cubic"), reference(weight, 2, mode="cubic"), rtol=0, atol=1e-13)


def test_long_1d_kernel_takes_the_separable_path():
    weight = torch.randn(3, 1, 256, dtype=torch.float64)
    torch.testing.assert_close(resize_kernel(weight, 2), reference(weight, 2), rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32_and_rounded_once(dtype):
    weight = torch.randn(8, 4, 3, 3).to(dtype)
    out = resize_kernel(weight, 2, mode="cubic")
    assert out.dtype == dtype
    expected = reference(weight.float(), 2, mode="cubic").float().to(dtype)  # one rounding from ≈ exact
    # float32 accumulation of 9 terms may flip the final rounding only at ties: at most one ulp.
    ulp = {torch.float16: 2**-10, torch.bfloat16: 2**-7}[dtype]
    torch.testing.assert_close(out.float(), expected.float(), rtol=ulp, atol=ulp * 2**-14)


def test_float64_stays_float64_and_numpy_returns_numpy():
    array = np.random.default_rng(0).standard_normal((2, 3, 3, 3))
    out = resize_kernel(array, 2)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64 and out.shape == (2, 3, 7, 7)
    np.testing.assert_allclose(out, reference(torch.tensor(array), 2).numpy(), atol=1e-14)
    out32 = resize_kernel(array.astype(np.float32), 2)
    assert out32.dtype == np.float32


def test_out_dtype_rounds_once():
    weight = torch.randn(3, 3, 3, 3)
    out = resize_kernel(weight, 2, out_dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, reference(weight, 2).float().to(torch.bfloat16), rtol=2**-7, atol=0)


def test_per_axis_and_fractional_scales():
    weight = torch.randn(2, 2, 3, 5, dtype=torch.float64)
    out = resize_kernel(weight, (1.0, 2.0))
    assert out.shape == (2, 2, 3, 11)
    torch.testing.assert_close(out, reference(weight, (1.0, 2.0)), rtol=0, atol=1e-14)
    assert resize_kernel(weight, 1.5).shape == (2, 2, 5, 9)  # |u| ≤ 1.5·((k−1)/2 + 1)


def test_grouped_and_transposed_weights_resize_their_spatial_axes_only():
    depthwise = torch.randn(16, 1, 3, 3, dtype=torch.float64)
    transposed = torch.randn(4, 8, 4, 4, dtype=torch.float64)  # (C_in, C_out/groups, k, k)
    assert resize_kernel(depthwise, 2).shape == (16, 1, 7, 7)
    torch.testing.assert_close(resize_kernel(transposed, 2), reference(transposed, 2))


@pytest.mark.parametrize("k, p, s, expected", [
    (3, 1, 2, 3.0),   # same conv 3×3 → 7×7: p' = 3
    (3, 0, 2, 1.0),   # valid conv keeps its crop, scaled: δ = 1 → p' = 3 − 2
    (5, 2, 2, 5.0),
    (1, 0, 2, 0.0),
])
def test_geometry_rule(k, p, s, expected):
    new_k = resize_conv(torch.randn(2, 2, k, k), s, padding=p).weight.shape[-1]
    assert new_padding(k, new_k, s, p) == expected


def test_same_conv_stays_same_on_a_real_layer():
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    out = resize_conv(conv.weight.detach(), 2, padding=1)
    x = torch.randn(1, 3, 10, 12)
    y = F.conv2d(x, out.weight, padding=out.geometry.integer_padding())
    assert y.shape[-2:] == x.shape[-2:]


def test_cells_padding_is_fractional_and_refused_by_integer_padding():
    out = resize_conv(torch.randn(2, 2, 3, 3), 2, padding=1, align="cells")
    assert out.geometry.padding == (2.5, 2.5)
    with pytest.raises(ValueError, match="conv1"):
        out.geometry.integer_padding("conv1")


def test_geometry_only_dilation_equals_the_zero_inserted_kernel():
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    x = torch.randn(1, 3, 20, 20, dtype=torch.float64)
    geo = resize_conv(weight, 2, padding=1, method="dilate", geometry_only=True)
    full = resize_conv(weight, 2, padding=1, method="dilate")
    assert geo.weight is weight and geo.geometry.dilation == (2, 2) and full.geometry.kernel_size == (5, 5)
    a = F.conv2d(x, weight, padding=geo.geometry.integer_padding(), dilation=geo.geometry.dilation)
    b = F.conv2d(x, full.weight, padding=full.geometry.integer_padding())
    torch.testing.assert_close(a, b, rtol=0, atol=1e-13)


def test_absorb_scales_stride_and_keeps_patches_aligned():
    weight = torch.randn(8, 3, 4, 4, dtype=torch.float64)
    out = resize_conv(weight, 2, stride=4, absorb=True, align="cells", method="pinv")
    assert out.geometry.stride == (8, 8) and out.geometry.kernel_size == (8, 8) and out.geometry.padding == (0.0, 0.0)
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    # pinv absorbs exactly when each patch is upsampled on its own: compare patch by patch.
    patches = x.unfold(2, 4, 4).unfold(3, 4, 4)  # (1, 3, 4, 4, 4, 4)
    up_patches = F.interpolate(patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, 4, 4), scale_factor=2, mode="bilinear", align_corners=False)
    low = torch.einsum("ocij,pcij->po", weight, patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, 4, 4))
    high = torch.einsum("ocij,pcij->po", out.weight, up_patches)
    torch.testing.assert_close(high, low, rtol=0, atol=1e-12)
    assert F.conv2d(up, out.weight, stride=8).shape == F.conv2d(x, weight, stride=4).shape


def test_grid_linear_shapes_and_coefficient():
    weight = torch.ones(5, 2 * 4 * 4, dtype=torch.float64)
    out = resize_grid_linear(weight, (2, 4, 4), 2)
    assert out.shape == (5, 2 * 8 * 8)
    # coefficient HW/(H'W'): a constant input keeps its response, W'·1 = W·1.
    torch.testing.assert_close(out.sum(1), weight.sum(1))


def test_cuda_tensors_stay_on_their_device():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    weight = torch.randn(4, 4, 3, 3, device="cuda")
    assert resize_kernel(weight, 2).device == weight.device


def test_a_huge_scale_is_refused_by_name_before_anything_is_allocated():
    # Without the limit: torch's allocator fails on R (4·10⁷ × 3 taps), or MemoryError.
    with pytest.raises(InvalidOptionError, match=r"enc\.conv.*scale 40000 would make a 3-tap axis 159999 taps long \(limit 65536\)"):
        resize_kernel(torch.randn(2, 2, 3, 3), 4e4, name="enc.conv")
    with pytest.raises(InvalidOptionError, match=r"enc\.conv.*scale must be between 1/65536 and 65536"):
        resize_kernel(torch.randn(2, 2, 3, 3), 1e7, name="enc.conv")
    with pytest.raises(InvalidOptionError, match="limit 65536"):
        resize_conv(torch.randn(2, 2, 3, 3), 1e9, name="enc.conv")
    assert resize_kernel(torch.randn(1, 1, 256), 16, align="cells").shape == (1, 1, 4096)


@pytest.mark.parametrize("padding, dilation, same_as", [("same", 1, 1), ("same", 2, 2), ("valid", 1, 0), ("valid", 2, 0)])
def test_string_paddings_are_pytorchs(padding, dilation, same_as):
    weight = torch.randn(4, 2, 3, 3)
    got = resize_conv(weight, 2, padding=padding, dilation=dilation, name="enc.conv")
    assert got.geometry == resize_conv(weight, 2, padding=same_as, dilation=dilation).geometry
    conv = torch.nn.Conv2d(2, 4, 3, padding=padding, dilation=dilation, bias=False)  # the layer it describes
    x = torch.randn(1, 2, 12, 12)
    y = F.conv2d(F.interpolate(x, scale_factor=2), got.weight, padding=got.geometry.integer_padding(), dilation=dilation)
    assert y.shape[-1] == 2 * conv(x).shape[-1]


def test_same_padding_of_an_even_kernel_is_refused_by_name():
    # PyTorch pads a 4-tap 'same' conv 1 before, 2 after: a half-pixel offset no symmetric padding scales.
    with pytest.raises(GeometryError, match=r"enc\.conv: padding='same' on a 4-tap axis \(dilation 1\) pads 1 before and 2 after"):
        resize_conv(torch.randn(2, 2, 4, 4), 2, padding="same", name="enc.conv")
    assert resize_conv(torch.randn(2, 2, 4, 4), 2, padding="same", dilation=2).geometry.padding == (8.0, 8.0)  # (9−1)·2/2


@pytest.mark.parametrize("padding, stride", [("full", 1), ("same", 2), (-1, 1), ((1,), 1), (None, 1), (float("nan"), 1)])
def test_bad_paddings_are_refused_by_name(padding, stride):
    with pytest.raises(InvalidOptionError, match=r"^enc\.conv: padding"):
        resize_conv(torch.randn(2, 2, 3, 3), 2, padding=padding, stride=stride, name="enc.conv")


def test_parameters_come_back_as_plain_detached_tensors():
    weight = torch.nn.Conv2d(2, 4, 3).weight
    for out in (resize_kernel(weight, 2), resize_conv(weight, 2, padding=1).weight):
        assert type(out) is torch.Tensor and not out.requires_grad and out.grad_fn is None
        torch.testing.assert_close(out, resize_kernel(weight.detach(), 2), rtol=0, atol=0)


def test_read_only_arrays_and_memmaps_are_read_without_a_warning(tmp_path):
    array = np.random.default_rng(0).standard_normal((4, 2, 3, 3)).astype(np.float32)
    expected = resize_kernel(array, 2)
    np.save(tmp_path / "w.npy", array)
    read_only = array.copy()
    read_only.flags.writeable = False
    for weight in (read_only, np.load(tmp_path / "w.npy", mmap_mode="r")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            np.testing.assert_array_equal(resize_kernel(weight, 2), expected)
        assert not weight.flags.writeable


def test_big_endian_arrays_are_resized_in_native_order():
    array = np.random.default_rng(0).standard_normal((4, 2, 3, 3))
    for dtype in (">f4", ">f8", ">f2"):
        got = resize_kernel(array.astype(dtype), 2)
        assert isinstance(got, np.ndarray) and got.dtype == np.dtype(dtype).newbyteorder("=")
        np.testing.assert_array_equal(got, resize_kernel(array.astype(np.dtype(dtype).newbyteorder("=")), 2))


# --- overflow: a finite weight never comes back as inf/NaN ---------------------------------------


def test_a_result_that_overflows_its_dtype_is_refused_by_name():
    with pytest.raises(NonFiniteResultError, match=r"^enc\.conv: the resized values reach \|w\| = 1e\+06, beyond float16's "
                                                   r"largest finite value 65504") as info:
        resize_kernel(torch.ones(1, 1, 3, 3, dtype=torch.float16), 2, coef=1e6, name="enc.conv")
    assert isinstance(info.value, KernelscaleError)
    with pytest.raises(NonFiniteResultError, match="float16"):  # numpy input, float16 output of a float32 weight
        resize_kernel(np.full((2, 1, 3, 3), 1e6, dtype=np.float32), 2, out_dtype=torch.float16)
    # a coefficient beyond float32: R itself overflows there, even times an all-zero weight (0·inf = NaN)
    for weight in (torch.ones(2, 1, 3, 3), torch.zeros(2, 1, 3, 3)):
        with pytest.raises(NonFiniteResultError, match="float32"):
            resize_kernel(weight, 2, coef=1e308)
    with pytest.raises(NonFiniteResultError, match=r"^fc\.weight: .*float16"):
        resize_grid_linear(torch.ones(3, 2 * 4 * 4, dtype=torch.float16), (2, 4, 4), 2, coef=1e6, name="fc.weight")
    with pytest.raises(NonFiniteResultError, match=r"^q\.weight: .*65504"):
        scale_tensor(torch.full((2, 2), 6e4, dtype=torch.float16), 1.2, name="q.weight")
    g, squares = torch.full((4, 1, 1, 1), 6e4, dtype=torch.float16), torch.ones(4, dtype=torch.float64)
    with pytest.raises(NonFiniteResultError, match=r"^c\.weight_g: .*65504"):
        rescale_weight_norm_g(g, squares, squares * 4, name="c.weight_g")
    # the exact result's largest magnitude is named even where float32 gives NaN (inf − inf)
    with pytest.raises(NonFiniteResultError, match=r"reach \|w\| = 1e\+308, beyond float32"):
        resize_kernel(torch.tensor([[[1.0, -1.0, 1.0]]]), 2, coef=1e308)


def test_in_range_results_and_non_finite_inputs_pass():
    # close to float16's limit but within it: no error, the values are finite
    out = resize_kernel(torch.full((1, 1, 3, 3), 6e4, dtype=torch.float16), 2)
    assert torch.isfinite(out).all() and out.max() <= 6e4
    # garbage in, garbage out: a weight already holding inf or NaN is resized as it is
    for bad in (float("inf"), float("nan")):
        weight = torch.ones(1, 1, 3, 3, dtype=torch.float16)
        weight[0, 0, 1, 1] = bad
        assert not torch.isfinite(resize_kernel(weight, 2, coef=1e6)).all()


def test_the_overflow_check_costs_one_pass_over_the_input(monkeypatch):
    """The exact check of the output runs only when the a-priori bound max|x|·gain allows an overflow."""
    import kernelscale.execute as execute_module

    checked = []
    monkeypatch.setattr(execute_module, "require_finite", lambda *args, **kw: checked.append(args[1]))
    resize_kernel(torch.randn(8, 4, 3, 3, dtype=torch.float16), 2, name="small")
    resize_kernel(torch.randn(8, 4, 3, 3), 2, coef=1e3, name="float32 output")
    assert checked == []
    resize_kernel(torch.randn(8, 4, 3, 3, dtype=torch.float16), 2, coef=1e5, name="near the limit")
    assert checked == ["near the limit"]
    x = torch.randn(100, 9)
    gain, peak = kernel_gains(build_kernel_resize((3, 3), 2, coef=7.0))
    assert abs(x @ torch.tensor(build_kernel_resize((3, 3), 2, coef=7.0).dense()).T.float()).max() <= gain * x.abs().max() + 1e-4
    assert overflow_check_needed(x, (gain, peak), torch.float16) is None
    assert overflow_check_needed(x * 1e4, (gain, peak), torch.float16) == pytest.approx(float(x.abs().max()) * 1e4)
