"""kernelscale.layers: factored execution (DESIGN §9) equals the materialised resized conv (T2).

Tolerances are worst-case rounding bounds, not tuned: a length-n sum of products computed in a
dtype of unit roundoff u is off by at most about n·u·Σ|terms| (Higham's γ_n). Both sides compute
the same exact sum y = Σ_t K[t]·Σ_m h[m]·x[·] (+ bias), so they differ by at most

    (n_materialised + n_factored + Σ_axes L + roundings)·eps·mag,   mag = (|R| ⊗ …)|K| ⋆ |x| + |b|

with eps = 2u (covering γ_n's 1/(1 − n·u)), n the products per output on each side, L the
prefilter lengths (one rounded intermediate per axis) and the roundings of K', of the taps and of
the output. Half-precision types are given no credit for a wider accumulator.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from kernelscale.errors import GeometryError, InvalidOptionError, UnsupportedTensorError
from kernelscale.layers import (
    FactoredConv,
    NotFactorableError,
    conv_pads,
    factor_resize,
    factored_conv,
    state_geometry,
)
from kernelscale.geometry import new_padding
from kernelscale.method import MODES, Method
from kernelscale.resize import resize_kernel
from kernelscale.transforms import build_axis_resize, build_kernel_resize

PROPERTY = settings(max_examples=100, deadline=None)
CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def _pad(x: torch.Tensor, pads, mode: str) -> torch.Tensor:
    flat = [p for pair in reversed(pads) for p in pair]
    return F.pad(x, flat) if mode == "zeros" else F.pad(x, flat, mode=mode)


def _apply_axes(weight: torch.Tensor, matrices) -> torch.Tensor:
    """(R_1 ⊗ … ⊗ R_d) applied to the spatial axes of ``weight``, in weight's dtype (float64 here)."""
    out = weight
    for axis, m in enumerate(matrices):
        r = torch.tensor(m, dtype=weight.dtype)
        out = torch.movedim(torch.tensordot(out, r, dims=([axis + 2], [1])), -1, axis + 2)
    return out


def materialised(x, weight, bias, *, scale, mode, coef, method, stride, pads, dilation, groups, padding_mode):
    """The reference: resize_kernel's K' (computed in float32/float64, rounded once to x's dtype),
    padded by the DESIGN §3 rule on each side (new_padding), one conv 'valid'."""
    ndim = weight.ndim - 2
    resized = resize_kernel(weight.detach(), scale, method=method, mode=mode, coef=coef)
    k_new = resized.shape[2:]
    s = scale if isinstance(scale, tuple) else (scale,) * ndim
    new = tuple((round(new_padding(k, kn, si, b, d, d)), round(new_padding(k, kn, si, a, d, d)))
                for k, kn, si, (b, a), d in zip(weight.shape[2:], k_new, s, pads, dilation))
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[ndim]
    return conv(_pad(x, new, padding_mode), resized, bias, stride, 0, dilation, groups), new


def magnitude(x, weight, bias, *, scale, mode, coef, method, stride, new_pads, dilation, groups, padding_mode):
    """mag of the module docstring, in float64: (|R_1| ⊗ …)|K| convolved with |x|, plus |b|."""
    ndim = weight.ndim - 2
    op = build_kernel_resize(tuple(weight.shape[2:]), scale, method, mode, "taps", coef)
    big = _apply_axes(weight.detach().double().abs(), [np.abs(a.matrix) for a in op.axes])
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[ndim]
    b = None if bias is None else bias.detach().double().abs()
    return conv(_pad(x.double().abs(), new_pads, padding_mode), big, b, stride, 0, dilation, groups)


def rounding_budget(weight: torch.Tensor, groups_in: int, resize, ndim: int) -> int:
    """The operation count of the module docstring: products per output on both sides, one rounded
    intermediate per prefilter axis and its taps, and the roundings of K' and of the outputs."""
    n_materialised = groups_in * math.prod(resize.resized_shape)
    n_factored = groups_in * math.prod(resize.kernel_shape)
    return n_materialised + n_factored + sum(h.size for h in resize.prefilters) + 2 * ndim + 4


# ---------------------------------------------------------------- factor_resize: hand-computed cases


def test_linear_prefilter_by_hand():
    """Linear taps at s = 2: h_2 = φ(u/2) at u = −1, 0, 1 = [½, 1, ½]; mass c = 1/2."""
    r = factor_resize((3,), 2, mode="linear")
    assert r.dilations == (2,)
    np.testing.assert_array_equal(r.prefilters[0], [0.25, 0.5, 0.25])
    assert r.resized_shape == (7,) and r.half_widths == (1,)


def test_cubic_prefilter_by_hand():
    """Keys cubic (a = −0.75) at s = 2, u = −3…3: φ(±1.5) = −0.09375, φ(±1) = 0, φ(±½) = 0.59375,
    φ(0) = 1; Σ = 2, so mass = paper = 1/2. A 3×3 becomes 11×11 = (3−1)·2 + 7."""
    r = factor_resize((3, 3), 2, mode="cubic")
    expected = np.array([-0.09375, 0.0, 0.59375, 1.0, 0.59375, 0.0, -0.09375]) / 2
    for h in r.prefilters:
        np.testing.assert_allclose(h, expected, rtol=0, atol=1e-16)
    assert r.resized_shape == (11, 11)
    assert factor_resize((3, 3), 2, mode="cubic", coef="paper").prefilters[0].tolist() == r.prefilters[0].tolist()


def test_untouched_axes_and_dilate():
    r = factor_resize((1, 3, 5), (3, 1, 2), mode="cubic")
    assert r.dilations == (1, 1, 2)
    assert [h.tolist() for h in r.prefilters[:2]] == [[1.0], [1.0]]
    d = factor_resize((3, 3), 3, method="dilate")
    assert d.dilations == (3, 3) and [h.tolist() for h in d.prefilters] == [[1.0], [1.0]]


def test_float_coef_goes_to_the_first_resized_axis():
    """A user float is the constant of the whole kernel, folded into the first resized axis (as R)."""
    r = factor_resize((1, 3), 2, mode="linear", coef=0.3)
    np.testing.assert_allclose(r.prefilters[1], 0.3 * np.array([0.5, 1.0, 0.5]), rtol=1e-15)


@pytest.mark.parametrize("kwargs, text", [
    (dict(align="cells"), "align 'cells'"),
    (dict(method="pinv"), "method 'pinv'"),
    (dict(method="disperse"), "method 'disperse'"),
    (dict(scale=1.5), "scale 1.5"),
    (dict(scale=0.5), "scale 0.5"),
    (dict(scale=(2, 2.5)), "scale 2.5 on axis 1"),
])
def test_not_factorable(kwargs, text):
    scale = kwargs.pop("scale", 2)
    with pytest.raises(NotFactorableError, match=text):
        factor_resize((3, 3), scale, **kwargs)


def test_fractional_scales_truly_do_not_factor():
    """The refusal is not over-cautious: at a fractional s the taps s·t fall at different places
    between the new taps, so the columns of R are not shifts of one filter (a dilated conv's are)."""
    for mode in MODES:
        for k, s in ((3, 1.5), (4, 2.5), (2, 1.5), (5, 3.5), (3, 2.5)):
            m = build_axis_resize(k, s, "interp", mode, "taps", "mass").matrix
            columns = {tuple(np.round(np.trim_zeros(m[:, t]), 12)) for t in range(k)}
            assert len(columns) > 1, (mode, k, s)


def test_fractional_scale_on_a_size_one_axis_is_fine():
    r = factor_resize((1, 3), (1.5, 2))
    assert r.dilations == (1, 2)


def test_bad_options_raise_invalid_option():
    with pytest.raises(InvalidOptionError, match="mode"):
        factor_resize((3,), 2, mode="bogus")
    with pytest.raises(InvalidOptionError, match="coef"):
        factor_resize((3,), 2, coef=-1.0)
    with pytest.raises(InvalidOptionError, match="kernel_shape"):
        factor_resize((3, 3, 3, 3), 2)


def test_options_rebuild_the_same_resize():
    r = factor_resize((3, 5), (2, 3), mode="lanczos3", coef="paper")
    again = factor_resize(**r.options())
    assert again == r and all(np.array_equal(a, b) for a, b in zip(again.prefilters, r.prefilters))


# ---------------------------------------------------------------- the identity (T2), property tests


@st.composite
def conv_cases(draw, dtypes=(torch.float64,)):
    ndim = draw(st.sampled_from((1, 2, 3)))
    small = ndim == 3
    kernel = tuple(draw(st.sampled_from((1, 2, 3) if small else (1, 2, 3, 4, 5))) for _ in range(ndim))
    scale = tuple(draw(st.sampled_from((1, 2, 3) if not small else (1, 2))) for _ in range(ndim))
    method = draw(st.sampled_from(("interp", "interp", "interp", "dilate")))
    mode = draw(st.sampled_from(MODES))
    coef = draw(st.sampled_from(("mass", "paper", 0.37)))
    groups = draw(st.sampled_from((1, 2, 4)))
    per_group_in = draw(st.sampled_from((1, 2))) if groups < 4 else 1  # groups 4, 1 in each: depthwise
    per_group_out = draw(st.sampled_from((1, 2)))
    stride = tuple(draw(st.sampled_from((1, 2))) for _ in range(ndim))
    dilation = tuple(draw(st.sampled_from((1, 1, 2))) for _ in range(ndim))
    padding_kind = draw(st.sampled_from(("int", "valid", "same"))) if all(s == 1 for s in stride) else "int"
    padding = (tuple(draw(st.integers(0, (k - 1) * d // 2 + 1)) for k, d in zip(kernel, dilation))
               if padding_kind == "int" else padding_kind)
    padding_mode = draw(st.sampled_from(("zeros", "zeros", "reflect", "replicate", "circular")))
    dtype = draw(st.sampled_from(dtypes))
    sizes = tuple(draw(st.integers(3, 6 if small else 9)) for _ in range(ndim))
    seed = draw(st.integers(0, 2**31 - 1))
    return dict(ndim=ndim, kernel=kernel, scale=scale, method=method, mode=mode, coef=coef, groups=groups,
                c_in=groups * per_group_in, c_out=groups * per_group_out, stride=stride, dilation=dilation,
                padding=padding, padding_mode=padding_mode, dtype=dtype, sizes=sizes, seed=seed)


def _build(case):
    gen = torch.Generator().manual_seed(case["seed"])
    conv = CONVS[case["ndim"]](case["c_in"], case["c_out"], case["kernel"], stride=case["stride"],
                               padding=case["padding"], dilation=case["dilation"], groups=case["groups"],
                               padding_mode=case["padding_mode"])
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen))
        conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen))
    conv = conv.to(case["dtype"])
    # the supersampled input: large enough for the big kernel's reflect padding and at least one output
    resize = factor_resize(case["kernel"], case["scale"], method=case["method"], mode=case["mode"], coef=case["coef"])
    pads = conv_pads(case["padding"], case["kernel"], case["dilation"], case["stride"])
    big_pads, _ = state_geometry(resize, pads, case["dilation"], "interpolated")
    extent = [d * (k - 1) + 1 for k, d in zip(resize.resized_shape, case["dilation"])]
    sizes = [max(n * s, e, max(b, a) + 1) for n, s, e, (b, a) in zip(case["sizes"], case["scale"], extent, big_pads)]
    x = torch.randn(2, case["c_in"], *sizes, generator=gen).to(case["dtype"])
    return conv, resize, pads, x


def _check_identity(case):
    conv, resize, pads, x = _build(case)
    layer = FactoredConv(conv, resize)
    y = layer(x)
    ref, new_pads = materialised(x, conv.weight, conv.bias, scale=case["scale"], mode=case["mode"], coef=case["coef"],
                                 method=case["method"], stride=case["stride"], pads=pads, dilation=case["dilation"],
                                 groups=case["groups"], padding_mode=case["padding_mode"])
    assert new_pads == layer.padding_for("interpolated")  # p' of the big kernel, applied once
    assert y.shape == ref.shape and y.dtype == x.dtype
    mag = magnitude(x, conv.weight, conv.bias, scale=case["scale"], mode=case["mode"], coef=case["coef"],
                    method=case["method"], stride=case["stride"], new_pads=new_pads, dilation=case["dilation"],
                    groups=case["groups"], padding_mode=case["padding_mode"])
    eps = torch.finfo(case["dtype"]).eps
    budget = rounding_budget(conv.weight, case["c_in"] // case["groups"], resize, case["ndim"])
    err = (y.double() - ref.double()).abs()
    bound = budget * eps * mag
    worst = int(torch.argmax(err - bound))
    assert bool((err <= bound).all()), (f"{case}: |factored − materialised| = {err.flatten()[worst].item():.3g} at flat "
                                        f"index {worst}, bound {bound.flatten()[worst].item():.3g}")


@PROPERTY
@given(conv_cases())
def test_factored_equals_materialised_float64(case):
    _check_identity(case)


@settings(max_examples=40, deadline=None)
@given(conv_cases(dtypes=(torch.float32, torch.bfloat16, torch.float16)))
def test_factored_equals_materialised_low_precision(case):
    _check_identity(case)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("coef", ("mass", "paper", 0.37))
def test_identity_every_mode_and_coef_2d(mode, coef):
    """The DESIGN §9 check at a small size: 'same' 3×3, stride 1, s = 2, zero padding, float32."""
    case = dict(ndim=2, kernel=(3, 3), scale=(2, 2), method="interp", mode=mode, coef=coef, groups=1, c_in=5,
                c_out=3, stride=(1, 1), dilation=(1, 1), padding=(1, 1), padding_mode="zeros", dtype=torch.float32,
                sizes=(7, 6), seed=1)
    _check_identity(case)


def test_a_wrong_prefilter_is_caught():
    """The bound is tight enough to see a prefilter 0.1 % off (float32)."""
    case = dict(ndim=2, kernel=(3, 3), scale=(2, 2), method="interp", mode="cubic", coef="mass", groups=1, c_in=4,
                c_out=2, stride=(1, 1), dilation=(1, 1), padding=(1, 1), padding_mode="zeros", dtype=torch.float32,
                sizes=(6, 6), seed=2)
    conv, resize, pads, x = _build(case)
    wrong = [torch.tensor(h * (1 + 1e-3), dtype=x.dtype) for h in resize.prefilters]
    y = factored_conv(x, conv.weight, conv.bias, resize, padding=1, filters=wrong)
    ref, new_pads = materialised(x, conv.weight, conv.bias, scale=(2, 2), mode="cubic", coef="mass", method="interp",
                                 stride=(1, 1), pads=pads, dilation=(1, 1), groups=1, padding_mode="zeros")
    mag = magnitude(x, conv.weight, conv.bias, scale=(2, 2), mode="cubic", coef="mass", method="interp", stride=(1, 1),
                    new_pads=new_pads, dilation=(1, 1), groups=1, padding_mode="zeros")
    bound = rounding_budget(conv.weight, 4, resize, 2) * torch.finfo(torch.float32).eps * mag
    assert bool(((y.double() - ref.double()).abs() > bound).any())


# ---------------------------------------------------------------- the module: states, parameters, state dict


def _conv2d(**kwargs) -> nn.Conv2d:
    torch.manual_seed(0)
    return nn.Conv2d(4, 6, 3, padding=1, **kwargs).double()


def test_wraps_the_same_parameters():
    conv = _conv2d()
    layer = FactoredConv.from_conv(conv, 2, mode="cubic")
    assert layer.weight is conv.weight and layer.bias is conv.bias
    assert list(layer.state_dict()) == list(conv.state_dict()) == ["weight", "bias"]
    assert [n for n, _ in layer.named_buffers()] == ["prefilter0", "prefilter1"]


def test_states_switch_without_touching_weights():
    conv = _conv2d()
    x = torch.randn(1, 4, 10, 12, dtype=torch.float64)
    layer = FactoredConv.from_conv(conv, 2, mode="cubic", state="original")
    before = conv.weight.detach().clone()
    ptr = conv.weight.data_ptr()
    assert torch.equal(layer(x), conv(x))  # original: the conv as it was, bit for bit
    layer.state = "dilated"  # geometry-only re-dilation: dilation 2, padding 2
    assert torch.equal(layer(x), F.conv2d(x, conv.weight, conv.bias, padding=2, dilation=2))
    layer.state = "interpolated"
    ref = F.conv2d(x, resize_kernel(conv.weight.detach(), 2, mode="cubic"), conv.bias, padding=5)
    torch.testing.assert_close(layer(x), ref, rtol=0, atol=1e-12)
    layer.state = "original"
    assert torch.equal(layer(x), conv(x))
    assert conv.weight.data_ptr() == ptr and torch.equal(conv.weight.detach(), before)
    with pytest.raises(InvalidOptionError, match="'both'"):
        layer.state = "both"


def test_configure_swaps_the_prefilter_only():
    conv = _conv2d()
    layer = FactoredConv.from_conv(conv, 2, mode="linear")
    layer.configure(factor_resize((3, 3), 3, mode="lanczos3"))
    x = torch.randn(1, 4, 9, 9, dtype=torch.float64)
    ref = F.conv2d(x, resize_kernel(conv.weight.detach(), 3, mode="lanczos3"), conv.bias,
                   padding=(resize_kernel(conv.weight.detach(), 3, mode="lanczos3").shape[-1] - 1) // 2)
    torch.testing.assert_close(layer(x), ref, rtol=0, atol=1e-12)
    with pytest.raises(InvalidOptionError, match=r"\(5,\)"):
        layer.configure(factor_resize((5,), 2))


def test_load_original_weights_reproduces_the_materialised_model():
    """A factored checkpoint is the original state dict: load it into a fresh layer built from the
    record (resize.options()) and get the materialised outputs."""
    conv = _conv2d()
    record = FactoredConv.from_conv(conv, 2, mode="cubic").resize.options()
    fresh = nn.Conv2d(4, 6, 3, padding=1).double()
    layer = FactoredConv(fresh, factor_resize(**record))
    layer.load_state_dict(conv.state_dict())  # strict: the same keys
    x = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    ref = F.conv2d(x, resize_kernel(conv.weight.detach(), 2, mode="cubic"), conv.bias, padding=5)
    torch.testing.assert_close(layer(x), ref, rtol=0, atol=1e-12)


def test_module_dtype_moves_the_prefilter():
    layer = FactoredConv.from_conv(nn.Conv2d(2, 2, 3, padding=1), 2, mode="cubic").to(torch.bfloat16)
    assert layer.prefilter0.dtype == torch.bfloat16 and layer.weight.dtype == torch.bfloat16
    assert layer(torch.randn(1, 2, 6, 6, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_refusals():
    with pytest.raises(UnsupportedTensorError, match="ConvTranspose2d"):
        FactoredConv.from_conv(nn.ConvTranspose2d(2, 2, 3), 2)
    with pytest.raises(UnsupportedTensorError, match="Linear"):
        FactoredConv.from_conv(nn.Linear(2, 2), 2)
    normed = nn.utils.parametrizations.spectral_norm(nn.Conv2d(2, 2, 3))
    with pytest.raises(UnsupportedTensorError, match="computed"):
        FactoredConv.from_conv(normed, 2)
    with pytest.raises(NotFactorableError, match="cells"):
        FactoredConv.from_conv(nn.Conv2d(2, 2, 3), 2, align="cells")
    with pytest.raises(InvalidOptionError, match=r"\(3, 3\)"):
        FactoredConv(nn.Conv2d(2, 2, 3), factor_resize((5, 5), 2))


@pytest.mark.parametrize("bad", [{"stride": 0}, {"stride": (1, 0)}, {"dilation": 0}, {"dilation": (2, -1)},
                                 {"padding": -1}, {"padding": (1, 2.5)}])
def test_factored_conv_refuses_impossible_geometry(bad):
    weight = torch.randn(3, 2, 3, 3)
    args = {"stride": 1, "padding": 1, "dilation": 1, **bad}
    with pytest.raises(InvalidOptionError, match=next(iter(bad))):
        factored_conv(torch.randn(1, 2, 12, 12), weight, None, factor_resize((3, 3), 2), **args)


def test_even_kernel_same_padding_keeps_its_half_pixel_offset():
    """PyTorch pads an even 'same' kernel ⌊d(k−1)/2⌋ before: the offset scales (s·before, s·after)
    and the prefilter adds its half-width on both sides — the DESIGN §3 rule per side."""
    conv = nn.Conv1d(2, 3, 4, padding="same").double()
    layer = FactoredConv.from_conv(conv, 2, mode="linear")
    k_new = layer.resize.resized_shape[0]
    assert layer.padding_for("original") == ((1, 2),)
    assert layer.padding_for("dilated") == ((2, 4),)
    assert layer.padding_for("interpolated") == ((2 + 1, 4 + 1),)
    assert 2 + 1 + 4 + 1 == k_new - 1  # 'same' again: total padding k' − 1


# ---------------------------------------------------------------- training


def test_gradients_are_the_materialised_ones_pulled_back_through_R():
    """∂L/∂K (factored) = Rᵀ ∂L/∂K' (materialised, K' = R K): the original taps train."""
    torch.manual_seed(3)
    conv = nn.Conv2d(3, 4, 3, padding=1, stride=2, groups=1).double()
    layer = FactoredConv.from_conv(conv, (2, 3), mode="cubic", coef="paper")
    x = torch.randn(2, 3, 12, 15, dtype=torch.float64)
    target = torch.randn_like(layer(x))
    (layer(x) - target).pow(2).sum().backward()
    grad_factored = conv.weight.grad.clone()

    op = build_kernel_resize((3, 3), (2, 3), "interp", "cubic", "taps", "paper")
    big = resize_kernel(conv.weight.detach(), (2, 3), mode="cubic", coef="paper").requires_grad_(True)
    padded = _pad(x, layer.padding_for("interpolated"), "zeros")
    y = F.conv2d(padded, big, conv.bias.detach(), 2)
    (y - target).pow(2).sum().backward()
    pulled = _apply_axes(big.grad, [a.matrix.T for a in op.axes])
    # each gradient entry sums N·∏out products residual·x (then ∏k' more through Rᵀ, or ∏k and the
    # prefilter's ΣL through the factored graph); mag: the same sums of absolute values
    residual = 2 * (y - target).detach().abs()
    mag_big = torch.nn.grad.conv2d_weight(padded.abs(), big.shape, residual, stride=2)
    mag = _apply_axes(mag_big, [np.abs(a.matrix.T) for a in op.axes])
    n_out = y.shape[0] * math.prod(y.shape[2:])
    terms = n_out + math.prod(op.out_shape) + 9 + 10 + 10
    err = (grad_factored - pulled).abs()
    assert bool((err <= terms * torch.finfo(torch.float64).eps * mag).all()), float(err.max())


def test_sgd_on_supersampled_digits_reduces_the_loss():
    """The example digits CNN at ×2 with both convs factored (cubic, the pool window scaled to 4 so
    the Linear's 4×4 grid is unchanged): five SGD steps on 16×16 digits lower the loss."""
    pytest.importorskip("sklearn")
    from safetensors.torch import load_file

    examples = Path(__file__).resolve().parents[1] / "examples"
    sys.path.insert(0, str(examples))
    try:
        from digits import DigitsCNN, load_digits_split, upsample
    finally:
        sys.path.remove(str(examples))
    torch.manual_seed(0)
    model = DigitsCNN()
    model.load_state_dict(load_file(examples / "digits_cnn.safetensors"))
    model.conv1 = FactoredConv.from_conv(model.conv1, 2, mode="cubic")
    model.conv2 = FactoredConv.from_conv(model.conv2, 2, mode="cubic")
    model.pool = nn.MaxPool2d(4)
    x_train, y_train, _, _ = load_digits_split()
    x, y = upsample(x_train[:256], 16), y_train[:256]
    original = model.conv1.weight.detach().clone()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for _ in range(6):
        optimiser.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimiser.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0], losses
    assert model.conv1.weight.shape == original.shape and not torch.equal(model.conv1.weight.detach(), original)


def test_conv3d_without_bias_per_axis_scales():
    torch.manual_seed(4)
    conv = nn.Conv3d(2, 3, (3, 1, 2), padding=(1, 0, 0), bias=False).double()
    layer = FactoredConv.from_conv(conv, (2, 1.5, 3), mode="lanczos3", coef="paper")
    assert layer.bias is None and layer.resize.dilations == (2, 1, 3)
    x = torch.randn(1, 2, 6, 5, 19, dtype=torch.float64)
    ref, new_pads = materialised(x, conv.weight, None, scale=(2, 1.5, 3), mode="lanczos3", coef="paper", method="interp",
                                 stride=(1, 1, 1), pads=((1, 1), (0, 0), (0, 0)), dilation=(1, 1, 1), groups=1,
                                 padding_mode="zeros")
    assert new_pads == layer.padding_for("interpolated") and new_pads[2] == (8, 8)  # the even kernel's δ = ½, scaled
    torch.testing.assert_close(layer(x), ref, rtol=0, atol=1e-12)
    with pytest.raises(GeometryError, match="1.5"):  # a size-1 axis' padding scales too: 1 · 1.5 is no padding
        FactoredConv.from_conv(nn.Conv3d(2, 3, (3, 1, 2), padding=(1, 1, 0)), (2, 1.5, 3))


@pytest.mark.parametrize("padding_mode", ("zeros", "reflect", "replicate", "circular"))
def test_original_and_dilated_states_every_padding_mode(padding_mode):
    """original = the conv itself, bit for bit; dilated = resize_conv's geometry-only re-dilation
    (T1: dilation d·s, padding s·p, applied in the layer's padding mode)."""
    torch.manual_seed(5)
    conv = nn.Conv2d(3, 4, (3, 5), padding=(1, 2), stride=(1, 2), dilation=(2, 1), padding_mode=padding_mode).double()
    layer = FactoredConv.from_conv(conv, (2, 3), mode="cubic", state="original")
    x = torch.randn(2, 3, 16, 21, dtype=torch.float64)
    assert torch.equal(layer(x), conv(x))
    layer.state = "dilated"
    assert layer.padding_for() == ((2, 2), (6, 6))
    ref = F.conv2d(_pad(x, ((2, 2), (6, 6)), padding_mode), conv.weight, conv.bias, (1, 2), 0, (4, 3))
    assert torch.equal(layer(x), ref)


def test_a_factored_resize_carries_its_method():
    by_fields = factor_resize((3, 3), 2, mode="cubic", coef="paper")
    by_method = factor_resize((3, 3), 2, method=Method("interp", "cubic", coef="paper"))
    assert by_fields == by_method and by_fields.resize == Method("interp", "cubic", "taps", "paper")
    assert (by_fields.method, by_fields.mode, by_fields.align, by_fields.coef) == ("interp", "cubic", "taps", "paper")
    assert all(np.array_equal(a, b) for a, b in zip(by_fields.prefilters, by_method.prefilters))
    with pytest.raises(InvalidOptionError, match="not both"):
        factor_resize((3, 3), 2, method=Method("interp"), mode="cubic")
