"""End to end on diffusers' UNet2DModel: supersample() and convert + load() on a real architecture.

The model: UNet2DModel, block_out_channels (16, 32), one resnet per block, GroupNorm(8), SiLU,
the default mid block (two resnets around a self-attention layer), sample_size 32, float64. Every
3×3 kernel is smooth, a sampled Gaussian (σ = 1 px) plus its two first derivatives, each times
a random channel mixing; 1×1 kernels are random mixings. The derivative part gives the kernels a
first moment, as trained edge detectors have, so running the unmodified model on U x (the
do-nothing baseline) is wrong to first order. The input is smooth: a sum of separable cosines of
at most 1 cycle across the 32-pixel image, timestep 10.

What the theory says, and what is measured (s = 2):

1. Nearest U, ``method="dilate"``. Stride-1 dilated convs commute with nearest U exactly (T1);
   SiLU, GroupNorm (identical statistics on a nearest-upsampled map), attention (each token is
   repeated s² times: same softmax weights), the time-embedding add, skip concatenations and the
   UNet's own nearest ×2 upsampler commute with nearest U exactly. The one exception is the
   strided downsampler: at high resolution it samples *every* low-res position. So the
   supersampled model on U x equals **exactly** U applied to the low-res model evaluated "à trous"
   (shift and stitch): downsampler at stride 1, every level-1 conv dilated by 2 (padding 2), and
   the upsampler's ×2 dropped. :func:`atrous` builds that model by hand, without kernelscale, and
   the error against U model(x) is then the closed form ``e_off = ‖atrous(x) − model(x)‖/‖model(x)‖``
   (nearest U repeats every value s² times, so relative norms are unchanged).
   - ``ResnetDownsampleBlock2D`` / ``ResnetUpsampleBlock2D`` (the downsampler is AvgPool2d(2);
     with ``pools=True`` it becomes AvgPool2d(4, stride 2, padding 1), exactly on the ideal grid):
     measured e_off = 0.025 against a baseline error of 0.22 (8.7×). Asserted: equality with the
     closed form, and ≥ 5× better than the baseline, through supersample() and convert + load().
   - ``DownBlock2D`` (a stride-2 3×3 conv; the DESIGN rule keeps it at k' = 5, p' = 2, half a
     high-res pixel = (s−1)/(2s) input pixels off the ideal grid, DESIGN §4): measured
     e_off = 0.11 against 0.27, only 2.4× better. Asserted: equality with the closed form and the
     reported offset; the ratio is stated, not asserted.
2. Bilinear U with periodic borders (circular padding in the model, a periodic U), the default
   ``interp`` (linear taps) and the downsamplers resized with ``align="cells"`` so that
   ``padding="asymmetric"`` puts them exactly on the ideal grid (pads (3, 2), see
   tests/test_nn.py). Here no exact closed form exists (bilinear U does not commute with SiLU,
   GroupNorm or the UNet's nearest upsampler); measured error 0.019 against a baseline of 0.21
   (11×), 0.054 with the default (half-pixel-offset) downsampler. Asserted: the issue's ≥ 5×
   margin, that alignment lowers the error, and that convert + load() gives the same model.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from kernelscale.nn import load, supersample
from kernelscale.options import ResizeOptions

diffusers = pytest.importorskip("diffusers")

SIZE = 32
TIMESTEP = 10
# float64 throughout: the closed form is an identity, so its tolerance is rounding. Outputs are
# sums of a few thousand products through ~20 layers; 1e-12 relative is ~5000 ε.
EXACT = 1e-12
MARGIN = 5.0  # the requirement: at least 5× lower relative error than the do-nothing baseline



pytestmark = pytest.mark.usefixtures("one_thread")  # small float64 convs


PLAIN = (("DownBlock2D", "DownBlock2D"), ("UpBlock2D", "UpBlock2D"))
RESNET = (("ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D"), ("ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"))


def build_unet(blocks, circular: bool = False, seed: int = 0) -> nn.Module:
    """The small UNet2DModel of the module docstring, with smooth kernels, in float64, eval mode."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    model = UNet2DModel(sample_size=SIZE, in_channels=3, out_channels=3, block_out_channels=(16, 32),
                        down_block_types=blocks[0], up_block_types=blocks[1], layers_per_block=1,
                        norm_num_groups=8, attention_head_dim=8).double()
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(3, dtype=torch.float64) - 1
    gauss = torch.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / 2)
    gauss /= gauss.sum()
    shapes = (gauss, gauss * t[None, :], gauss * t[:, None])  # G, ∂x G, ∂y G (σ = 1 px)
    with torch.no_grad():
        for layer in model.modules():
            if not isinstance(layer, nn.Conv2d):
                continue
            c_out, c_in, k, _ = layer.weight.shape
            mix = lambda: torch.randn(c_out, c_in, 1, 1, generator=g, dtype=torch.float64) / math.sqrt(c_in)  # noqa: E731
            layer.weight.copy_(sum(mix() * shape for shape in shapes) if k == 3 else mix())
            layer.bias.copy_(0.1 * torch.randn(c_out, generator=g, dtype=torch.float64))
            if circular and layer.padding != (0, 0):
                layer.padding_mode = "circular"
                layer._reversed_padding_repeated_twice = [p for p in reversed(layer.padding) for _ in range(2)]
    return model.eval()


def smooth_input(seed: int = 1) -> torch.Tensor:
    """(1, 3, 32, 32): Σ a·cos(2π f_y i/32 + φ)·cos(2π f_x j/32 + ψ) over f_y, f_x ∈ {0, 1}."""
    g = torch.Generator().manual_seed(seed)
    i = torch.arange(SIZE, dtype=torch.float64) + 0.5
    x = torch.zeros(1, 3, SIZE, SIZE, dtype=torch.float64)
    for c in range(3):
        for fy in range(2):
            for fx in range(2):
                a, phi, psi = torch.randn(3, generator=g, dtype=torch.float64)
                x[0, c] += a * torch.cos(2 * math.pi * fy * i[:, None] / SIZE + phi) * torch.cos(2 * math.pi * fx * i[None, :] / SIZE + psi)
    return x


def nearest(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


def periodic_bilinear(x: torch.Tensor) -> torch.Tensor:
    """Bilinear U_2 (align_corners=False) of a periodic image: pad 2 cells circularly, upsample, crop."""
    return F.interpolate(F.pad(x, (2, 2, 2, 2), mode="circular"), scale_factor=2, mode="bilinear", align_corners=False)[..., 4:-4, 4:-4]


def run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x, TIMESTEP).sample


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


class Binomial(nn.Module):
    """Depthwise [1,2,1]⊗[1,2,1]/16 at stride 1, zero padding 1: what AvgPool2d(4, 2, 1) computes on
    a nearest-upsampled map, written at the low resolution (count_include_pad divides by 16)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype)
        k = (k[:, None] * k[None, :] / 16).expand(x.shape[1], 1, 3, 3)
        return F.conv2d(x, k, padding=1, groups=x.shape[1])


def atrous(model: nn.Module, blocks) -> nn.Module:
    """The low-res model evaluated densely at level 1 (shift and stitch), built by hand.

    Level-1 layers run on the level-0 grid: the downsampler at stride 1, every level-1 3×3 conv
    dilated by 2 with padding 2, the ×2 nearest upsampler dropped. For nearest U and integer
    dilation this is exactly what the supersampled model computes at high resolution, divided
    out by U (module docstring, point 1).
    """
    dense = copy.deepcopy(model)
    if blocks == PLAIN:
        dense.down_blocks[0].downsamplers[0].conv.stride = (1, 1)
        level1 = ["down_blocks.1.", "mid_block.", "up_blocks.0.resnets."]
        dense.up_blocks[0].upsamplers[0].interpolate = False
    else:
        dense.down_blocks[0].downsamplers[0].downsample.conv = Binomial()
        level1 = ["down_blocks.0.downsamplers.0.conv1", "down_blocks.0.downsamplers.0.conv2", "down_blocks.1.", "mid_block.",
                  "up_blocks.0.resnets."]
        dense.up_blocks[0].upsamplers[0].upsample.interpolate = False
    for name, layer in dense.named_modules():
        if isinstance(layer, nn.Conv2d) and layer.kernel_size == (3, 3) and any(name.startswith(p) for p in level1):
            layer.dilation, layer.padding = (2, 2), (2, 2)
    return dense


def converted(model: nn.Module, tmp_path, **options) -> nn.Module:
    """A copy of ``model`` loaded from ``kernelscale convert``'s output (the module's own checkpoint)."""
    from kernelscale.convert import convert_checkpoint

    src, dst = tmp_path / "unet.safetensors", tmp_path / "unet_x2.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(src))
    convert_checkpoint(src, dst, ResizeOptions(scale=2, **options), progress=False)
    out = copy.deepcopy(model)
    load(out, dst, pools=True)
    return out


def test_resnet_unet_dilated_equals_its_closed_form_and_beats_the_baseline(tmp_path):
    model = build_unet(RESNET)
    x = smooth_input()
    y = run(model, x)
    e_off = rel(run(atrous(model, RESNET), x), y)  # the closed form of the whole error (docstring, 1)
    reference = nearest(y)
    baseline = rel(run(model, nearest(x)), reference)

    direct = copy.deepcopy(model)
    report = supersample(direct, 2, method="dilate", geometry_only=True, pools=True)
    pool = report["down_blocks.0.downsamplers.0.downsample.conv"]
    assert (pool.new_kernel_size, pool.new_stride, pool.new_padding, pool.offset) == ((4, 4), (2, 2), (1, 1), (0.0, 0.0))
    loaded = converted(model, tmp_path, method="dilate")  # zero insertion written to the file: 3×3 → 5×5

    expected = nearest(run(atrous(model, RESNET), x))
    for supersampled in (direct, loaded):
        out = run(supersampled, nearest(x))
        assert rel(out, expected) < EXACT  # T1 + exact commutation: an identity, tolerance = rounding
        error = rel(out, reference)
        assert abs(error - e_off) < EXACT  # the derived bound is attained: error == e_off
        assert error * MARGIN <= baseline, f"error {error:.4f} vs do-nothing {baseline:.4f}"


def test_plain_unet_strided_conv_offset_is_measured_in_closed_form():
    model = build_unet(PLAIN)
    x = smooth_input()
    y = run(model, x)
    e_off = rel(run(atrous(model, PLAIN), x), y)
    direct = copy.deepcopy(model)
    report = supersample(direct, 2, method="dilate", geometry_only=True)
    down = report["down_blocks.0.downsamplers.0.conv"]
    # DESIGN §4: (s−1)(σ−1)/2 = ½ high-res pixel = (s−1)/(2s) = ¼ input pixel.
    assert (down.new_dilation, down.new_padding, down.new_stride, down.offset) == ((2, 2), (2, 2), (2, 2), (0.5, 0.5))
    out = run(direct, nearest(x))
    assert rel(out, nearest(run(atrous(model, PLAIN), x))) < EXACT
    error = rel(out, nearest(y))
    assert abs(error - e_off) < EXACT
    baseline = rel(run(model, nearest(x)), nearest(y))
    # Stated, not a requirement: the offset costs most of the gain here (measured 0.11 vs 0.27, 2.4×).
    assert error < baseline


def test_default_interp_with_aligned_downsamplers_beats_the_baseline(tmp_path):
    model = build_unet(PLAIN, circular=True)
    x = smooth_input()
    reference = periodic_bilinear(run(model, x))
    baseline = rel(run(model, periodic_bilinear(x)), reference)
    aligned = dict(layers=[{"pattern": "*downsamplers*", "align": "cells"}])

    direct = copy.deepcopy(model)
    report = supersample(direct, 2, padding="asymmetric", execution="materialised", **aligned)  # compared bit for bit below
    down = report["down_blocks.0.downsamplers.0.conv"]
    assert (down.new_kernel_size, down.new_padding, down.offset) == ((6, 6), ((3, 2), (3, 2)), (0.0, 0.0))
    error = rel(run(direct, periodic_bilinear(x)), reference)
    assert error * MARGIN <= baseline, f"error {error:.4f} vs do-nothing {baseline:.4f}"

    offset = copy.deepcopy(model)
    supersample(offset, 2)  # the downsampler half a high-res pixel off the ideal grid
    assert error < rel(run(offset, periodic_bilinear(x)), reference)

    from kernelscale.convert import convert_checkpoint

    src, dst = tmp_path / "unet.safetensors", tmp_path / "unet_x2.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(src))
    convert_checkpoint(src, dst, ResizeOptions(scale=2, **aligned), progress=False)
    loaded = copy.deepcopy(model)
    load(loaded, dst, padding="asymmetric")
    assert torch.equal(run(loaded, periodic_bilinear(x)), run(direct, periodic_bilinear(x)))
