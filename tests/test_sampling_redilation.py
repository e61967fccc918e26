"""Re-dilation: integer factors are the dilated conv (DESIGN §4 T1), fractional factors follow
ScaleCrafter's processor and stay within a derived distance of the continuous dilated conv, the
schedules, and the presets resolved against real diffusers UNet layer names."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from kernelscale import resize_kernel
from kernelscale.errors import InvalidOptionError
from kernelscale.sampling import (
    PRESETS,
    dilation_at_step,
    get_preset,
    layer_dilations,
    parse_settings,
    progressive_factor,
    redilated_conv,
    resolve_preset,
    resolve_settings,
)

U64 = 2.0**-53


def scalecrafter_forward(module: nn.Conv2d, x: torch.Tensor, pf_factor: float) -> torch.Tensor:
    """ScaleCrafter's ReDilateConvProcessor.__call__ (model.py L48-73 at 9dc1185), transcribed."""
    dilation = math.ceil(pf_factor)
    factor = float(dilation / pf_factor)
    inflation_kernel_size = (module.weight.shape[-1] - 3) // 2
    ori_dilation, ori_padding = module.dilation, module.padding
    module.dilation, module.padding = dilation, (dilation * (1 + inflation_kernel_size),) * 2
    ori_size = (int(x.shape[-2] / module.stride[0]), int(x.shape[-1] / module.stride[1]))
    new_size = (round(x.shape[-2] * factor), round(x.shape[-1] * factor))
    x = F.interpolate(x, size=new_size, mode="bilinear")
    x = module._conv_forward(x, module.weight, module.bias)
    module.dilation, module.padding = ori_dilation, ori_padding
    return F.interpolate(x, size=ori_size, mode="bilinear")


@pytest.mark.parametrize("d", [2, 3, 4])
@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_integer_factor_is_the_zero_inserted_kernel(d, k, nd):
    """T1's kernel: re-dilation by an integer d equals the conv with the kernel dilated by
    zero-insertion (kernelscale's ``dilate`` method) and its same padding."""
    g = torch.Generator().manual_seed(d * 100 + k * 10 + nd)
    x = torch.randn((2, 3) + (9,) * nd, generator=g, dtype=torch.float64)
    w = torch.randn((4, 3) + (k,) * nd, generator=g, dtype=torch.float64)
    b = torch.randn(4, generator=g, dtype=torch.float64)
    dilated = resize_kernel(w, d, method="dilate")
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    want = conv(x, dilated, b, padding=(dilated.shape[-1] - 1) // 2)
    got = redilated_conv(x, w, b, float(d))
    # same products, summed in another order: ≤ n·u·Σ|terms| with n = C_in·k^nd.
    n = 3 * k**nd
    scale = float(x.abs().max()) * float(w.abs().sum(dim=tuple(range(1, w.ndim))).max()) + float(b.abs().max())
    assert got.shape == want.shape
    assert torch.allclose(got, want, rtol=0, atol=2 * n * U64 * scale)


def test_factor_1_is_the_plain_conv():
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(1, 2, 7, 6, generator=g), torch.randn(3, 2, 3, 3, generator=g)
    assert torch.equal(redilated_conv(x, w, None, 1.0), F.conv2d(x, w, padding=1))
    assert torch.equal(redilated_conv(x, w, None, 1.0, stride=2), F.conv2d(x, w, padding=1, stride=2))


@pytest.mark.parametrize("d", [1.5, 2.5, 2.0, 3.2])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("k", [3, 1])
def test_matches_scalecrafters_processor(d, stride, k):
    g = torch.Generator().manual_seed(int(d * 10) + stride)
    conv = nn.Conv2d(3, 5, k, stride=stride, padding=(k - 1) // 2).double()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g, dtype=torch.float64))
    x = torch.randn(2, 3, 16, 12, generator=g, dtype=torch.float64)
    with torch.no_grad():
        want = scalecrafter_forward(conv, x, d)
        got = redilated_conv(x, conv.weight, conv.bias, d, stride=stride)
    assert got.shape == want.shape
    # identical operations where d is fractional; the integer path skips a same-size bilinear
    # resize, which is exact (weights 1 and 0).
    assert torch.allclose(got, want, rtol=0, atol=64 * U64 * float(want.abs().max()))


# The fractional path against the continuous dilated conv ──────────────────────────────────────
#
# Input channels c: x_c(p) = Σ_j a_j cos(2π f_j·p + φ_j), p in low-res pixel units (cell i's centre
# at i + ½), |f_j| ≤ 0.05 cycles per pixel. Continuous re-dilation by d:
#     y_d[o](p) = b_o + Σ_{c,t} K[o,c,t]·x_c(p + d·t),  t ∈ {−1, 0, 1}².
# redilated_conv(x, K, b, d), k = ⌈d⌉, n = round(H·k/d): the fine cells sit at (j + ½)·H/n, the
# dilated taps k fine cells apart, i.e. at d_eff = k·H/n, |d_eff − d| ≤ d/(2n) per axis.
#  (1) bilinear upsampling of samples 1 apart: error ≤ B := (‖∂₁₁x‖ + ‖∂₂₂x‖)/8 per channel;
#  (2) the fine conv then gives y_{d_eff} within Σ|K|·B;
#  (3) bilinear downsampling of fine samples h = H/n < 1 apart adds ≤ h²·Σ|K|·B ≤ Σ|K|·B
#      (y's second derivatives are bounded by Σ|K|·‖∂ᵢᵢx‖) and does not amplify (2);
#  (4) y_{d_eff} − y_d ≤ Σ|K_t|·(|t₁|·‖∂₁x‖·|Δd₁| + |t₂|·‖∂₂x‖·|Δd₂|).
# So, away from the borders (zero padding and edge clamping), |redilated − y_d| ≤ E(d) := (1)+(3)+(4),
# and for two factors |y(d₁) − y(d₂)| ≤ E(d₁) + E(d₂) + L·|d₁ − d₂|, L = Σ|K_t|·|t|·‖∂x‖: the
# map is piecewise constant in d (it sees d only through k and n) but never jumps by more than that,
# including across integers, where k changes.
H = 48
MARGIN = 8  # ≥ ⌈d_max⌉·1 tap reach + 2 cells of interpolation reach + 1, for d ≤ 3.75


def _signal(seed: int, channels: int = 2, terms: int = 3):
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.3, 1.0, (channels, terms))
    f = rng.uniform(-0.05, 0.05, (channels, terms, 2))
    phi = rng.uniform(0, 2 * np.pi, (channels, terms))
    return a, f, phi


def _evaluate(sig, p1: np.ndarray, p2: np.ndarray) -> np.ndarray:
    a, f, phi = sig
    arg = 2 * np.pi * (f[:, :, 0, None, None] * p1 + f[:, :, 1, None, None] * p2) + phi[:, :, None, None]
    return (a[:, :, None, None] * np.cos(arg)).sum(axis=1)


def _continuous(sig, w: np.ndarray, b: np.ndarray, d: float) -> np.ndarray:
    centres = np.arange(H) + 0.5
    p1, p2 = np.meshgrid(centres, centres, indexing="ij")
    out = np.zeros((w.shape[0], H, H)) + b[:, None, None]
    for t1 in (-1, 0, 1):
        for t2 in (-1, 0, 1):
            xs = _evaluate(sig, p1 + d * t1, p2 + d * t2)
            out += np.einsum("oc,chw->ohw", w[:, :, t1 + 1, t2 + 1], xs)
    return out


def _bound(sig, w: np.ndarray, d: float) -> np.ndarray:
    a, f, _ = sig
    grad = [(a * 2 * np.pi * np.abs(f[:, :, i])).sum(axis=1) for i in range(2)]
    curv = [(a * (2 * np.pi * f[:, :, i]) ** 2).sum(axis=1) for i in range(2)]
    b_interp = (curv[0] + curv[1]) / 8
    k = math.ceil(d)
    n = round(H * k / d)
    delta = 0.0 if k == d else abs(k * H / n - d)
    absw = np.abs(w)
    interp = 2 * np.einsum("octu,c->o", absw, b_interp)
    taps = np.abs(np.arange(3) - 1.0)
    shift = delta * (np.einsum("octu,t,c->o", absw, taps, grad[0]) + np.einsum("octu,u,c->o", absw, taps, grad[1]))
    return interp + shift


def _lipschitz(sig, w: np.ndarray) -> np.ndarray:
    a, f, _ = sig
    grad = [(a * 2 * np.pi * np.abs(f[:, :, i])).sum(axis=1) for i in range(2)]
    taps = np.abs(np.arange(3) - 1.0)
    absw = np.abs(w)
    return np.einsum("octu,t,c->o", absw, taps, grad[0]) + np.einsum("octu,u,c->o", absw, taps, grad[1])


FACTORS = [1.25, 1.5, 1.75, 1.999, 2.0, 2.001, 2.25, 2.5, 2.75, 3.0, 3.001, 3.4, 3.75]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fractional_path_is_close_to_the_continuous_dilated_conv_and_continuous_in_d(seed):
    sig = _signal(seed)
    rng = np.random.default_rng(100 + seed)
    w = rng.normal(size=(2, 2, 3, 3))
    b = rng.normal(size=2)
    centres = np.arange(H) + 0.5
    p1, p2 = np.meshgrid(centres, centres, indexing="ij")
    x = torch.from_numpy(_evaluate(sig, p1, p2))[None]
    inner = (slice(None), slice(MARGIN, H - MARGIN), slice(MARGIN, H - MARGIN))
    outputs, bounds = {}, {}
    for d in FACTORS:
        y = redilated_conv(x, torch.from_numpy(w), torch.from_numpy(b), d)[0].numpy()
        err = np.abs(y - _continuous(sig, w, b, d))[inner].reshape(2, -1).max(axis=1)
        bound = _bound(sig, w, d) + 1e-12
        assert (err <= bound).all(), (d, err, bound)
        outputs[d], bounds[d] = y[inner], bound
    lip = _lipschitz(sig, w)
    for d1, d2 in zip(FACTORS, FACTORS[1:]):
        jump = np.abs(outputs[d1] - outputs[d2]).reshape(2, -1).max(axis=1)
        assert (jump <= bounds[d1] + bounds[d2] + lip * (d2 - d1)).all(), (d1, d2, jump)
    # The bound is tight enough to matter: running the conv at ⌈d⌉ without resampling (the
    # wrong factor) breaks it for d = 2.5.
    wrong = redilated_conv(x, torch.from_numpy(w), torch.from_numpy(b), 3.0)[0].numpy()
    err = np.abs(wrong - _continuous(sig, w, b, 2.5))[inner].reshape(2, -1).max(axis=1)
    assert (err > _bound(sig, w, 2.5)).any()


# Schedules ─────────────────────────────────────────────────────────────────────────────────────
@pytest.mark.parametrize("d, tau, segments", [
    (4, 35, [(0, 8, 4), (9, 17, 3), (18, 34, 2)]),
    (3, 35, [(0, 11, 3), (12, 34, 2)]),
    (4, 37, [(0, 9, 4), (10, 18, 3), (19, 36, 2)]),
    (3, 37, [(0, 12, 3), (13, 36, 2)]),
    (2, 35, [(0, 34, 2)]),
])
def test_progressive_segments(d, tau, segments):
    """The segments of ScaleCrafter's progressive rule for its published (d, τ) pairs."""
    for first, last, value in segments:
        for i in range(first, last + 1):
            assert progressive_factor(d, i, tau) == value
            assert dilation_at_step(d, i, tau, progressive=True) == value
    assert dilation_at_step(d, tau, tau, progressive=True) == 1.0


def test_constant_schedule_and_layers():
    assert dilation_at_step(2.5, 0, 30) == 2.5
    assert dilation_at_step(2.5, 29, 30) == 2.5
    assert dilation_at_step(2.5, 30, 30) == 1.0
    assert layer_dilations({"a": 2.0, "b": 4.0}, 10, 35, progressive=True) == {"a": 2.0, "b": 3.0}
    with pytest.raises(InvalidOptionError, match="0.5"):
        dilation_at_step(0.5, 0, 30)
    with pytest.raises(InvalidOptionError, match="odd kernel"):
        redilated_conv(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 2, 2), None, 2.0)


# Presets ───────────────────────────────────────────────────────────────────────────────────────
@pytest.fixture(scope="module")
def unet_layers():
    """Conv names of tiny diffusers UNets with SD 1.5/2.1's and SDXL's block structure."""
    diffusers = pytest.importorskip("diffusers")
    common = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=8,
                  attention_head_dim=2, norm_num_groups=2)
    sd = diffusers.UNet2DConditionModel(block_out_channels=(4, 8, 8, 8), down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, **common)
    xl = diffusers.UNet2DConditionModel(block_out_channels=(4, 8, 8), down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 2,
                                        up_block_types=("CrossAttnUpBlock2D",) * 2 + ("UpBlock2D",), **common)

    def names(model):
        return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    return {"sd1.5": names(sd), "sd2.1": names(sd), "sdxl": names(xl)}


def test_every_preset_resolves_on_its_model(unet_layers):
    for name, preset in PRESETS.items():
        resolved = resolve_preset(name, unet_layers[preset.model])
        assert set(resolved.dropped) == set(preset.absent_in_model)
        assert set(resolved.dilation) == set(preset.dilation) - set(preset.absent_in_model)
        assert preset.source.startswith("https://github.com/YingqingHe/ScaleCrafter")


def test_sdxl_presets_declare_the_layers_sdxl_lacks(unet_layers):
    p = get_preset("sdxl-4096x4096")
    assert set(p.absent_in_model) == {"down_blocks.2.downsamplers.0.conv", "up_blocks.2.upsamplers.0.conv"} | {
        f"down_blocks.3.resnets.{i}.conv{j}" for i in (0, 1) for j in (1, 2)}
    assert not set(p.absent_in_model) & set(unet_layers["sdxl"])
    # on an SD-structured UNet the SDXL preset is refused: it has down_blocks.3
    with pytest.raises(InvalidOptionError, match="declared absent"):
        resolve_preset(p, unet_layers["sd1.5"])


def test_unknown_layer_names_are_errors(unet_layers):
    with pytest.raises(InvalidOptionError, match="'down_blocks.2.downsamplers.0.conv' matches no layer"):
        resolve_preset("sd1.5-1024x1024", unet_layers["sdxl"])
    with pytest.raises(InvalidOptionError, match="'mid_block.resnets.7.conv1' matches no layer"):
        resolve_settings({"mid_block.resnets.7.conv1": 2.0}, unet_layers["sd1.5"])
    with pytest.raises(InvalidOptionError, match="unknown re-dilation preset 'sd3-1024x1024'"):
        get_preset("sd3-1024x1024")


def test_published_values():
    p = get_preset("sd1.5-2048x2048")
    assert (p.dilate_tau, p.ndcfg_tau, p.progressive, p.latent_height) == (35, 35, True, 256)
    assert p.dilation["down_blocks.2.downsamplers.0.conv"] == 3.0 and p.dilation["mid_block.resnets.1.conv2"] == 4.0
    assert p.ndcfg_dilation["up_blocks.1.upsamplers.0.conv"] == 3.0 and "up_blocks.2.resnets.0.conv1" not in p.ndcfg_dilation
    q = get_preset("sd1.5-1280x1280")
    assert set(q.dilation.values()) == {2.5} and q.dilate_tau == 35 and not q.progressive and q.ndcfg_dilation is None
    r = get_preset("sd2.1-1024x1024")
    assert r.dilate_tau == 20 and "down_blocks.0.resnets.0.conv1" not in r.dilation
    resolved = resolve_preset("sd1.5-2048x2048", [n for n in p.dilation])
    assert resolved.dilations_at(8)["down_blocks.3.resnets.0.conv1"] == 4.0  # ⌈4·27/35⌉ = ⌈3.09⌉
    assert resolved.dilations_at(9)["down_blocks.3.resnets.0.conv1"] == 3.0  # ⌈4·26/35⌉ = ⌈2.97⌉
    assert resolved.dilations_at(35)["down_blocks.3.resnets.0.conv1"] == 1.0
    assert resolved.ndcfg_dilations_at(0)["mid_block.resnets.0.conv1"] == 4.0


def test_parse_settings_reads_scalecrafters_format_and_names_bad_lines():
    assert parse_settings("a.conv1:2\n\nb.conv2:2.5\n") == {"a.conv1": 2.0, "b.conv2": 2.5}
    with pytest.raises(InvalidOptionError, match="line 2: expected 'layer.name:factor'"):
        parse_settings("a:2\nb 2\n")
    with pytest.raises(InvalidOptionError, match="line 1: factor 'two' is not a number"):
        parse_settings("a:two")
    with pytest.raises(InvalidOptionError, match="line 1: factor must be a finite number >= 1, got 0.5"):
        parse_settings("a:0.5")
    with pytest.raises(InvalidOptionError, match="line 2: layer 'a' given twice"):
        parse_settings("a:2\na:3")


@pytest.mark.parametrize("stride", [0, (2, 0), (2.5, 1), (1, 1, 1), True])
def test_a_bad_stride_is_refused_naming_the_function(stride):
    """The stride is checked by the converter's own :func:`kernelscale.geometry.as_tuple`."""
    x, w = torch.randn(1, 2, 7, 6), torch.randn(3, 2, 3, 3)
    with pytest.raises(InvalidOptionError, match=r"^redilated_conv: stride"):
        redilated_conv(x, w, None, 2.0, stride=stride)
