"""The nn.Module adapter (kernelscale.nn): supersample() and load() (DESIGN §3 geometry rule, §4, §5).

Exactness checks run in float64, where the tolerance is rounding: a conv output is a sum of at
most C_in·k'^d ≤ 16·49 products of O(1) numbers, so a relative error above 1e-12 means a wrong
weight or geometry, never rounding (float64 ε = 2.2e-16).
"""

from __future__ import annotations

import copy
import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from kernelscale import resize_conv
from kernelscale.errors import GeometryError, InvalidCheckpointError, InvalidOptionError
import kernelscale.nn as knn
from kernelscale.nn import LayerChange, SupersampleReport, load, plan_module, read_manifest
from kernelscale.nn import supersample as _supersample
from kernelscale.manifest import FORMAT_VERSION
from kernelscale.options import ResizeOptions
from kernelscale.state_dict import resize_state_dict


def supersample(*args, **kwargs):
    """kernelscale.nn.supersample with the resized kernels materialised unless asked otherwise: these
    tests pin the materialised layers' weights and geometry (the default, factored execution, is
    tested against them in tests/test_factored_execution.py)."""
    kwargs.setdefault("execution", "materialised")
    return _supersample(*args, **kwargs)

EXACT = 1e-12  # float64 rounding bound, see the module docstring

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
TCONV = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


def seeded(module: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) / max(1, p[0].numel()) ** 0.5)
    return module.double()


def nearest(x: torch.Tensor, s: int = 2) -> torch.Tensor:
    """U_s nearest on the cell grid (DESIGN §2): each low-res cell becomes s^d equal cells."""
    return F.interpolate(x, scale_factor=s, mode="nearest")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def state(module: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def geometry(module: nn.Module) -> list:
    return [(n, getattr(m, "kernel_size", None), getattr(m, "padding", None), getattr(m, "stride", None),
             getattr(m, "dilation", None)) for n, m in module.named_modules()]


# --- geometry: the adapter agrees with resize_conv and with the DESIGN §3 rule ------------------


@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("method, extra", [("interp", {}), ("interp", {"mode": "cubic"}), ("dilate", {}), ("disperse", {})])
def test_conv_weights_and_geometry_match_resize_conv(ndim, method, extra):
    if method == "disperse" and ndim == 3:
        pytest.skip("a 3-D disperse calibration solves a 7³-probe least squares (~30 s); 1-D and 2-D cover the adapter")
    conv = seeded(CONV[ndim](3, 4, 3, padding=1, dilation=1))
    original = conv.weight.detach().clone()
    report = supersample(conv, 2, method=method, **extra)
    expected = resize_conv(original, 2, padding=1, method=method, **extra)
    assert torch.equal(conv.weight.detach(), expected.weight), "the adapter must produce the converter's weights bit for bit"
    g = expected.geometry
    assert conv.kernel_size == g.kernel_size
    assert conv.padding == g.integer_padding()
    assert conv.stride == g.stride and conv.dilation == g.dilation
    change = report[""]
    assert change.new_kernel_size == g.kernel_size and change.old_kernel_size == (3,) * ndim


@pytest.mark.parametrize("kernel, padding, dilation", [(3, 0, 1), (5, 2, 1), (3, 2, 2), (4, 1, 1), (4, 2, 1)])
def test_geometry_rule_for_valid_dilated_and_even_convs(kernel, padding, dilation):
    """p' = (k'−1)·d/2 − s·((k−1)·d/2 − p): valid convs keep their crop (scaled), 'same' stays 'same'."""
    conv = seeded(nn.Conv2d(2, 2, kernel, padding=padding, dilation=dilation))
    k_new = supersample(conv, 2)[""].new_kernel_size[0]
    delta = (kernel - 1) * dilation / 2 - padding
    assert conv.padding == ((k_new - 1) * dilation / 2 - 2 * delta,) * 2
    # The output keeps its extent: length s·L for s·L input samples, with L = 12.
    low = F.conv2d(torch.zeros(1, 2, 12, 12, dtype=torch.float64), torch.zeros(2, 2, kernel, kernel, dtype=torch.float64),
                   padding=padding, dilation=dilation).shape[-1]
    assert conv(torch.zeros(1, 2, 24, 24, dtype=torch.float64)).shape[-1] == 2 * low


def test_string_paddings_same_and_valid():
    same = seeded(nn.Conv1d(2, 2, 3, padding="same"))
    valid = seeded(nn.Conv1d(2, 2, 3, padding="valid"))
    supersample(same, 2)
    supersample(valid, 2)
    assert same.padding == (3,) and valid.padding == (1,)  # k' = 7: 'same' → 3; valid δ = 1 → 3 − 2 = 1
    assert same(torch.zeros(1, 2, 20, dtype=torch.float64)).shape[-1] == 20


# --- T1 through a whole module: dilation is exact on nearest-upsampled inputs -----------------------


@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("geometry_only", [False, True])
def test_dilated_stride1_network_is_exact_on_nearest_upsampled_input(ndim, geometry_only):
    """T1 layer by layer: conv(U x, dilate K) = U conv(x, K); ReLU is pointwise and zero padding of
    U x equals U of the zero-padded x for nearest U, so the whole network commutes with U, borders
    included. Transposed convs at stride 1 are convs with flipped kernels (same statement)."""
    torch.manual_seed(0)
    model = seeded(nn.Sequential(
        CONV[ndim](2, 4, 3, padding=1), nn.ReLU(),
        CONV[ndim](4, 4, 3, padding=2, dilation=2), nn.ReLU(),
        TCONV[ndim](4, 3, 3, padding=1), nn.ReLU(),
        CONV[ndim](3, 3, 1),
        CONV[ndim](3, 2, 3, padding=0),
    ))
    x = torch.randn(1, 2, *(6,) * ndim, dtype=torch.float64)
    expected = nearest(model(x))
    report = supersample(model, 2, method="dilate", geometry_only=geometry_only)
    assert len(report) == 4, "the 1×1 conv is left alone (it commutes with any U)"
    assert rel(model(nearest(x)), expected) < EXACT


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_a_model_on_the_gpu_gets_the_cpu_weights_and_geometry(dtype):
    # dilate's R holds only 0 and 1 (coefficient 1): every output tap is one input tap, exact in
    # any accumulation order, so the Triton kernels must give the CPU weights bit for bit.
    model = seeded(nn.ModuleDict({"image": nn.Conv2d(3, 8, 3, padding=1), "audio": nn.Conv1d(8, 4, 5, padding=2)})).to(dtype)
    on_gpu = copy.deepcopy(model).cuda()
    supersample(model, 2, method="dilate")
    supersample(on_gpu, 2, method="dilate")
    assert geometry(on_gpu) == geometry(model)
    for name, tensor in on_gpu.state_dict().items():
        assert tensor.is_cuda and torch.equal(tensor.cpu(), model.state_dict()[name]), name


def test_geometry_only_keeps_the_weight_storage_and_equals_zero_insertion():
    a = seeded(nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 3, padding=2, dilation=2)))
    b = copy.deepcopy(a)
    pointer = a[0].weight.data_ptr()
    report = supersample(a, 2, method="dilate", geometry_only=True)
    supersample(b, 2, method="dilate")
    assert a[0].weight.data_ptr() == pointer and a[0].kernel_size == (3, 3)
    assert a[0].dilation == (2, 2) and a[2].dilation == (4, 4) and a[0].padding == (2, 2) and a[2].padding == (4, 4)
    assert report["0"].action == "geometry" and b[0].kernel_size == (5, 5)
    x = torch.randn(2, 2, 10, 10, dtype=torch.float64)
    assert rel(a(x), b(x)) < EXACT


@pytest.mark.parametrize("mode", ["circular", "replicate"])
def test_padding_modes_that_commute_with_nearest_upsampling(mode):
    """Circular and replicate padding of U x equal U of the padded x for nearest U: exact."""
    model = seeded(nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, padding_mode=mode), nn.Tanh(),
                                 nn.Conv2d(3, 2, 5, padding=2, padding_mode=mode)))
    x = torch.randn(1, 2, 7, 7, dtype=torch.float64)
    expected = nearest(model(x))
    supersample(model, 2, method="dilate")
    assert tuple(model[0]._reversed_padding_repeated_twice) == (2, 2, 2, 2)  # what the conv F.pads with
    assert rel(model(nearest(x)), expected) < EXACT


def test_stride1_max_pool_scales_and_stays_exact():
    """MaxPool(3, 1, 1) → (5, 1, 2): on a nearest-upsampled input every hi-res window covers exactly
    the low-res cells of its low-res window, so max pooling commutes with U (T1 for a max)."""
    model = seeded(nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.MaxPool2d(3, stride=1, padding=1), nn.Conv2d(3, 2, 3, padding=1)))
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    expected = nearest(model(x))
    report = supersample(model, 2, method="dilate", pools=True)
    assert (model[1].kernel_size, model[1].padding, model[1].stride) == ((5, 5), (2, 2), (1, 1))
    assert report["1"].action == "pool" and report["1"].offset == (0.0, 0.0)
    assert rel(model(nearest(x)), expected) < EXACT


def test_pool_windows_by_stride():
    """Stride-2 windows: MaxPool2d(2) → (4, 2, pad 1), exactly aligned (p* = 1); MaxPool(3, 2, 1)
    → (5, 2, 2), half a hi-res pixel off (the aligned 2.5 is not an integer); sizes stay s×."""
    model = nn.Sequential(nn.MaxPool2d(2), nn.MaxPool2d(3, 2, 1), nn.AvgPool1d(2))
    before = [model[0](torch.zeros(1, 1, 16, 16)).shape[-1], model[1](torch.zeros(1, 1, 16, 16)).shape[-1]]
    report = supersample(model, 2, pools=True)
    assert (model[0].kernel_size, model[0].stride, model[0].padding) == ((4, 4), (2, 2), (1, 1))
    assert (model[1].kernel_size, model[1].stride, model[1].padding) == ((5, 5), (2, 2), (2, 2))
    assert report["0"].offset == (0.0, 0.0) and report["1"].offset == (0.5, 0.5)
    assert model[0](torch.zeros(1, 1, 32, 32)).shape[-1] == 2 * before[0]
    assert model[1](torch.zeros(1, 1, 32, 32)).shape[-1] == 2 * before[1]
    assert model[2].kernel_size == (4,) and model[2].padding == (1,)


def test_pools_are_left_alone_unless_asked():
    model = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.MaxPool2d(2))
    report = supersample(model, 2)
    assert model[1].kernel_size == 2 and report.names() == ["0"]


# --- refusals: by name, before anything changes ------------------------------------------------------


def assert_refused(model: nn.Module, match: str, **options) -> None:
    before, geo = state(model), geometry(model)
    with pytest.raises(GeometryError, match=match):
        supersample(model, 2, **options)
    after = state(model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before), "module modified"
    assert geometry(model) == geo


def test_half_pixel_padding_is_refused_by_name_unless_asymmetric():
    model = seeded(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1, stride=1)))
    assert_refused(model, r"^0: the new padding would be 2\.5", align="cells")


def test_reflect_padding_is_refused_unless_allowed():
    model = seeded(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")))
    assert_refused(model, r"^1: padding_mode='reflect'")
    supersample(model, 2, allow_reflect=True)
    assert model[1].padding == (3, 3)


def test_strided_conv_that_would_change_the_pyramid_is_refused():
    """k = 2, p = 0, stride 2 at s = 2: the rule gives k' = 5, p' = 1, and 7 outputs for 16 inputs where
    the original gives 4 for 8 (the pyramid needs 8)."""
    model = seeded(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 2, stride=2)))
    assert_refused(model, r"^1: stride 2, kernel 2, padding 0: with the new kernel 5 and padding 1 an input of 16 gives 7 outputs, not 8")


def test_strided_transposed_conv_dilated_by_a_common_factor_is_refused():
    model = seeded(nn.Sequential(nn.ConvTranspose2d(2, 2, 3, stride=2, padding=1, output_padding=1)))
    assert_refused(model, r"^0: a stride-2 transposed conv re-dilated by 2 leaves output phases empty", method="dilate")


def test_transposed_conv_with_half_pixel_padding_is_refused():
    model = seeded(nn.Sequential(nn.ConvTranspose1d(2, 2, 3, padding=1)))
    assert_refused(model, r"^0: the new padding of this transposed conv would be 2\.5", align="cells", padding="asymmetric")


def test_learned_2x_upsampler_keeps_its_output_size_and_lines_up():
    """ConvTranspose(k=4, stride 2, padding 1), the usual learned 2× upsampler: its output size
    fixes the new padding, p' = rule + (s−1)(σ−1−a)/2 (docs/format.md), here 3 for the 8-cell
    kernel, which also puts every window on the supersampled output grid (offset 0). Taps give a
    9-tap kernel whose padding would be 3.5: refused, naming cells. On a smooth signal the resized
    layer tracks the upsampled original output better than with one fine sample of misalignment
    either way (what an off-by-one in the rule would give)."""
    layer = nn.ConvTranspose1d(1, 1, 4, stride=2, padding=1, bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([0.25, 0.75, 0.75, 0.25], dtype=torch.float64).view(1, 1, 4))
    assert_refused(nn.Sequential(copy.deepcopy(layer)), r"^0: the new padding of this transposed conv would be 3\.5.*align='cells'")
    n = 64
    t = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    x = (torch.cos(2 * math.pi * 2 * t) + 0.5 * torch.sin(2 * math.pi * 3 * t + 1)).view(1, 1, n)
    expected = F.interpolate(layer(x), scale_factor=2, mode="linear", align_corners=False)
    fine = copy.deepcopy(layer)
    (change,) = supersample(fine, 2, align="cells")
    assert (fine.kernel_size, fine.padding, fine.stride, change.offset) == ((8,), (3,), (2,), (0.0,))
    got = fine(F.interpolate(x, scale_factor=2, mode="linear", align_corners=False))
    assert got.shape == expected.shape == (1, 1, 4 * n)
    inner = slice(16, -16)  # away from the borders, where zero padding and linear upsampling differ
    aligned = rel(got[..., inner], expected[..., inner])
    for shift in (1, -1):
        shifted = rel(got[..., 16 + shift:-16 + shift], expected[..., inner])
        assert aligned < shifted, (aligned, shift, shifted)


class Vocoder(nn.Module):
    """HiFi-GAN's upsampling path in small: weight-normed transposed convs (k = 2σ, padding σ/2:
    16/8/4, then 4/2/1) between stride-1 convs."""

    def __init__(self):
        super().__init__()
        wn = nn.utils.parametrizations.weight_norm
        self.conv_pre = wn(nn.Conv1d(2, 4, 7, padding=3))
        self.ups = nn.ModuleList([wn(nn.ConvTranspose1d(4, 4, 16, stride=8, padding=4)),
                                  wn(nn.ConvTranspose1d(4, 2, 4, stride=2, padding=1))])
        self.conv_post = nn.Conv1d(2, 1, 7, padding=3)

    def forward(self, x):
        x = self.conv_pre(x)
        for up in self.ups:
            x = up(torch.nn.functional.leaky_relu(x, 0.1))
        return self.conv_post(x)


def assert_vocoder_resized(model: nn.Module, report: SupersampleReport) -> None:
    """Both transposed convs resized by cells: k 16 → 32, padding 4 → 12 and k 4 → 8, padding 1 → 3,
    on the ideal grid, and the whole path 2× longer on a 2× longer input."""
    assert [(report[n].new_kernel_size, report[n].new_padding, report[n].offset) for n in ("ups.0", "ups.1")] == [
        ((32,), (12,), (0.0,)), ((8,), (3,), (0.0,))]
    assert (model.ups[0].kernel_size, model.ups[0].padding, model.ups[1].kernel_size, model.ups[1].padding) == ((32,), (12,), (8,), (3,))
    assert model(torch.randn(1, 2, 20, dtype=torch.float64)).shape == (1, 1, 20 * 16)


def test_vocoder_transposed_convs_are_refused_with_the_layer_rules_that_fit():
    """The default taps resize gives both upsamplers a half-pixel padding; the one error names both
    and the LayerRule list that fits, which then works as printed."""
    from kernelscale.options import LayerRule

    model = seeded(Vocoder())
    assert model(torch.randn(1, 2, 10, dtype=torch.float64)).shape == (1, 1, 160)
    with pytest.raises(GeometryError) as info:
        supersample(model, 2)
    message = str(info.value)
    assert message.startswith("ups.0: the new padding of this transposed conv would be 12.5")
    assert "ups.1: the new padding of this transposed conv would be 3.5" in message
    rules = message.split("layers=", 1)[1].split(" to supersample", 1)[0]
    assert rules == "[LayerRule('ups.0', align='cells'), LayerRule('ups.1', align='cells')]"
    assert_vocoder_resized(model, supersample(model, 2, layers=eval(rules, {"LayerRule": LayerRule})))


def test_dilate_on_a_strided_transposed_conv_names_the_resize_that_fits():
    """align does not apply to dilate: the error says what does (interp, and the align that fits)."""
    from kernelscale.options import LayerRule

    model = seeded(nn.Sequential(nn.Conv1d(1, 2, 3, padding=1), nn.ConvTranspose1d(2, 2, 4, stride=2, padding=1)))
    with pytest.raises(GeometryError, match=r"^1: a stride-2 transposed conv re-dilated by 2 leaves output phases empty") as info:
        supersample(model, 2, method="dilate")
    message = str(info.value)
    assert "method='interp', align='cells' fits: pass layers=[LayerRule('1', method='interp', align='cells')]" in message
    report = supersample(model, 2, method="dilate", layers=[LayerRule("1", method="interp", align="cells")])
    assert (report["1"].new_kernel_size, report["1"].new_padding, report["1"].offset) == ((8,), (3,), (0.0,))
    assert model(torch.randn(1, 1, 24, dtype=torch.float64)).shape == (1, 2, 48)  # 24 outputs for 12 before


def test_load_of_a_default_vocoder_conversion_gives_the_plan_file_that_fits(tmp_path):
    """convert cannot tell a transposed conv's weight from a conv's, so the default conversion of
    the vocoder records half-pixel paddings; load refuses, printing a plan file and the convert
    command, which, run as printed, give a file that loads."""
    import shlex
    from kernelscale.cli import main

    save(seeded(Vocoder()), tmp_path / "in.safetensors")
    assert main(["convert", str(tmp_path / "in.safetensors"), str(tmp_path / "out.safetensors"), "--scale", "2"]) == 0
    with pytest.raises(GeometryError, match=r"^ups\.0: the new padding of this transposed conv would be 12\.5") as info:
        load(seeded(Vocoder()), tmp_path / "out.safetensors")
    message = str(info.value)
    assert "ups.1: the new padding of this transposed conv would be 3.5" in message
    plan, command = message.split("fix.toml", 1)[1].split("\n", 1)[1].split("    kernelscale convert ")
    plan_text = "\n".join(line.removeprefix("    ") for line in plan.splitlines())
    assert plan_text.split() == ['[[layers]]', 'pattern', '=', '"ups.0"', 'align', '=', '"cells"',
                                 '[[layers]]', 'pattern', '=', '"ups.1"', 'align', '=', '"cells"']
    (tmp_path / "fix.toml").write_text(plan_text)
    argv = shlex.split(command.split("\n", 1)[0])
    assert argv == ["ORIGINAL.safetensors", "OUT.safetensors", "--scale", "2", "--plan", "fix.toml"]
    paths = {"ORIGINAL.safetensors": tmp_path / "in.safetensors", "OUT.safetensors": tmp_path / "fixed.safetensors",
             "fix.toml": tmp_path / "fix.toml"}
    assert main(["convert", *(str(paths.get(a, a)) for a in argv)]) == 0
    model = seeded(Vocoder())
    assert_vocoder_resized(model, load(model, tmp_path / "fixed.safetensors"))


@pytest.mark.parametrize("kernel, stride, padding", [(16, 8, 4), (4, 2, 1)])
def test_vocoder_upsampler_resized_by_cells_lines_up(kernel, stride, padding):
    """ConvTranspose(k = 2σ, stride σ, padding σ/2), here with the linear-interpolation kernel (a
    triangle 2σ wide): by cells, k' = 2k and p' = rule + (s−1)(σ−1)/2 = 2p + σ/2 (12 for 16/8/4,
    3 for 4/2/1), output 2× and no offset; on a smooth signal the layer tracks the upsampled
    original output better than one fine sample off either way."""
    layer = nn.ConvTranspose1d(1, 1, kernel, stride=stride, padding=padding, bias=False).double()
    taps = torch.arange(kernel, dtype=torch.float64) - (kernel - 1) / 2
    with torch.no_grad():
        layer.weight.copy_((1 - taps.abs() / stride).clamp(min=0).view(1, 1, kernel))
    n = 32
    t = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    x = (torch.cos(2 * math.pi * 2 * t) + 0.5 * torch.sin(2 * math.pi * 3 * t + 1)).view(1, 1, n)
    expected = F.interpolate(layer(x), scale_factor=2, mode="linear", align_corners=False)
    (change,) = supersample(layer, 2, align="cells")
    assert (layer.kernel_size, layer.padding, change.offset) == ((2 * kernel,), (2 * padding + stride // 2,), (0.0,))
    got = layer(F.interpolate(x, scale_factor=2, mode="linear", align_corners=False))
    assert got.shape == expected.shape == (1, 1, 2 * n * stride)
    margin = 4 * stride  # away from the borders, where zero padding and linear upsampling differ
    aligned = rel(got[..., margin:-margin], expected[..., margin:-margin])
    for shift in (1, -1):
        assert aligned < rel(got[..., margin + shift:-margin + shift], expected[..., margin:-margin]), shift


def test_conv_like_weight_of_a_custom_module_is_refused():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(2, 2, 3, 3))

    model = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), Custom())
    assert_refused(model, r"^1\.weight: the plan resizes it, but it belongs to a Custom")
    supersample(model, 2, exclude=["1"])
    assert model[1].weight.shape == (2, 2, 3, 3) and model[0].kernel_size == (7, 7)


def test_bad_options_are_refused_before_anything_changes():
    model = seeded(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1)))
    with pytest.raises(InvalidOptionError, match="--include 'nope' matches no tensor"):
        supersample(model, 2, include=["nope"])
    with pytest.raises(InvalidOptionError, match="unknown padding"):
        supersample(model, 2, padding="round")
    with pytest.raises(InvalidOptionError):
        supersample(model, 1.5, method="dilate")
    assert model[0].kernel_size == (3, 3)


# --- asymmetric padding: a pre-hook, sides from the record ------------------------------------------


def test_asymmetric_padding_alternates_sides_and_keeps_state_dict_keys():
    model = seeded(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 1, 3, padding=1)))
    keys = list(model.state_dict())
    report = supersample(model, 2, align="cells", padding="asymmetric")
    plan = plan_module(model, ResizeOptions(scale=2))  # the module is resized now; re-plan only for the names
    assert list(model.state_dict()) == keys and [n for n in (e.name for e in plan)] == keys
    sides = [report[n].new_padding for n in ("0", "1", "2")]
    # k' = 6, p' = 2.5: the plan's pad_extra alternates after, before, after (DESIGN §3).
    assert sides == [((2, 3), (2, 3)), ((3, 2), (3, 2)), ((2, 3), (2, 3))]
    assert model[0].padding == (0, 0) and model[0].kernelscale_pad == (2, 3, 2, 3)
    x = torch.randn(1, 1, 10, 10, dtype=torch.float64)
    manual = F.conv2d(F.pad(x, (2, 3, 2, 3)), model[0].weight, model[0].bias)
    manual = F.conv2d(F.pad(manual, (3, 2, 3, 2)), model[1].weight, model[1].bias)
    manual = F.conv2d(F.pad(manual, (2, 3, 2, 3)), model[2].weight, model[2].bias)
    assert torch.equal(model(x), manual) and manual.shape[-1] == 10


def test_asymmetric_strided_conv_takes_the_aligned_side():
    """A stride-2 conv resized 3 → 6 (cells) at s = 2: window centres sit at 2o' − b + 2.5; the ideal
    grid wants 2o' − 0.5, so b = 3 whatever the record's alternation says, and the offset is 0."""
    model = seeded(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 3, stride=2, padding=1)))
    report = supersample(model, 2, align="cells", padding="asymmetric")
    assert report["1"].new_padding == ((3, 2), (3, 2)) and report["1"].offset == (0.0, 0.0)
    assert report["0"].offset == (0.5, 0.5)
    assert model(torch.zeros(1, 1, 32, 32, dtype=torch.float64)).shape[-1] == 16


def test_strided_taps_conv_reports_its_sub_pixel_offset():
    """DESIGN §4: a kept stride σ carries (s−1)(σ−1)/2 hi-res pixels = (s−1)/(2s) input pixels at σ = 2."""
    model = seeded(nn.Sequential(nn.Conv2d(1, 2, 3, stride=2, padding=1)))
    change = supersample(model, 2)["0"]
    assert change.offset == (0.5, 0.5) and change.new_stride == (2, 2) and change.new_padding == (3, 3)


def test_resizing_twice_reads_the_hook_padding():
    conv = seeded(nn.Conv1d(1, 1, 3, padding=1))
    supersample(conv, 2, align="cells", padding="asymmetric")  # k 6, pads (2, 3)
    once = copy.deepcopy(conv)
    with pytest.raises(GeometryError, match="4 before and 6 after"):
        supersample(copy.deepcopy(conv), 2, method="dilate", geometry_only=True)
    supersample(conv, 2, method="dilate", geometry_only=True, padding="asymmetric")  # each side ×2: (4, 6)
    assert conv.padding == (0,) and conv.kernelscale_pad == (4, 6) and conv.dilation == (2,)
    x = torch.randn(1, 1, 20, dtype=torch.float64)
    assert rel(conv(nearest(x)), nearest(once(x))) < EXACT  # T1, borders included: U pads (2, 3) to (4, 6)


def test_pytorch_same_padding_of_an_even_kernel_keeps_its_offset():
    """padding="same" with k = 4 pads (1, 2): windows half a pixel after centre. Scaled, that is one
    fine pixel: (3, 5) around the 9-tap linear kernel, not the centred (4, 4); (2, 4) around the
    7-tap dilated one, where T1 makes it exact: U pads (1, 2) to (2, 4)."""
    conv = seeded(nn.Conv1d(1, 2, 4, padding="same"))
    with pytest.raises(GeometryError, match="3 before and 5 after.*padding='asymmetric'"):
        supersample(copy.deepcopy(conv), 2)
    original = copy.deepcopy(conv)
    supersample(conv, 2, method="dilate", padding="asymmetric")
    assert conv.kernelscale_pad == (2, 4) and conv.kernel_size == (7,)
    x = torch.randn(1, 1, 24, dtype=torch.float64)
    with warnings.catch_warnings():  # PyTorch notes that it copies the input to pad an even "same" kernel
        warnings.simplefilter("ignore", UserWarning)
        expected = nearest(original(x))
    assert rel(conv(nearest(x)), expected) < EXACT


# --- absorb, grids, plan identity -------------------------------------------------------------------


def test_absorbing_front_end_leaves_the_rest_untouched():
    model = seeded(nn.Sequential(nn.Conv1d(1, 4, 4, stride=4), nn.ReLU(), nn.Conv1d(4, 4, 3, padding=1)))
    tail = model[2].weight.detach().clone()
    # include: the plan resizes every conv unless told otherwise; the absorber alone should change.
    report = supersample(model, 2, absorb=["0"], include=["0"], method="pinv", mode="nearest")
    assert report.names() == ["0"] and report["0"].action == "absorb"
    assert (model[0].kernel_size, model[0].stride, model[0].padding) == ((8,), (8,), (0,))
    assert torch.equal(model[2].weight.detach(), tail) and model[2].kernel_size == (3,)
    x = torch.randn(1, 1, 32, dtype=torch.float64)
    # pinv over non-overlapping patches of a nearest-upsampled signal is exact (T6 per patch).
    assert rel(model(nearest(x)), seeded(nn.Sequential(nn.Conv1d(1, 4, 4, stride=4), nn.ReLU(), nn.Conv1d(4, 4, 3, padding=1)))(x)) < EXACT


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_linear_over_a_grid_with_pinv_is_exact(mode):
    """T6: W'·flatten(U x) = W·flatten(x) for U the cells upsampler of ``mode`` (F.interpolate)."""
    model = seeded(nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 5, 3)))
    x = torch.randn(3, 2, 4, 5, dtype=torch.float64)
    expected = model(x)
    report = supersample(model, 2, grids={"1": (2, 4, 5)}, method="pinv", mode=mode)
    assert model[1].in_features == 2 * 8 * 10 and report["1"].new_kernel_size == (2, 8, 10)
    torch_mode = {"nearest": "nearest-exact", "linear": "bilinear", "cubic": "bicubic"}[mode]
    up = F.interpolate(x, size=(8, 10), mode=torch_mode, **({} if mode == "nearest" else {"align_corners": False}))
    assert rel(model(up), expected) < EXACT


def test_same_decisions_and_weights_as_the_state_dict_api():
    model = seeded(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 5, padding=2),
                                 nn.Flatten(), nn.Linear(4 * 6 * 6, 2)))
    options = dict(grids={"4": (4, 6, 6)}, layers=[{"pattern": "2", "mode": "cubic"}], exclude=["0"])
    new_sd, manifest = resize_state_dict(state(model), 2, **options)
    report = supersample(model, 2, **options)
    assert report.manifest == manifest
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, new_sd[name]), name
    assert report.names() == ["2", "4"]
    assert dict(report.skipped)["0"] == "excluded by '0'" and dict(report.skipped)["1"].startswith("1×1")


def test_report_prints_one_line_per_layer():
    model = seeded(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.MaxPool2d(2)))
    report = supersample(model, 2, pools=True)
    assert isinstance(report, SupersampleReport) and all(isinstance(c, LayerChange) for c in report)
    text = str(report).splitlines()
    assert text[0] == "0 (Conv2d) resize interp/linear/taps: k 3→7, p 1→3, stride 1, dilation 1, materialised"
    assert text[1] == "1 (MaxPool2d) pool window: k 2→4, p 0→1, stride 2, dilation 1"
    assert text[-1] == "2 layers changed, 0 left unchanged"
    assert (report["0"].old_padding, report["0"].new_padding) == ((1, 1), (3, 3))
    with pytest.raises(KeyError):
        report["nope"]


# --- load: converted files, folders, shards; strictness ---------------------------------------------


class Net(nn.Module):
    """Names sort in module order, so the converter's file order is the module's (pad_extra alike)."""

    def __init__(self):
        super().__init__()
        self.a_conv = nn.Conv2d(1, 4, 3, padding=1)
        self.b_down = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.c_conv = nn.Conv2d(4, 4, 3, padding=1)
        self.d_pool = nn.MaxPool2d(2)
        self.e_fc = nn.Linear(4 * 2 * 2, 3)

    def forward(self, x):
        x = torch.relu(self.a_conv(x))
        x = self.d_pool(torch.relu(self.c_conv(torch.relu(self.b_down(x)))))
        return self.e_fc(x.flatten(1))


def save(model: nn.Module, path, metadata=None) -> None:
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path), metadata=metadata)


def converted(tmp_path, options: ResizeOptions, model: nn.Module = None):
    from kernelscale.convert import convert_checkpoint

    model = model if model is not None else seeded(Net())
    save(model, tmp_path / "in.safetensors")
    convert_checkpoint(tmp_path / "in.safetensors", tmp_path / "out.safetensors", options, progress=False)
    return model, tmp_path / "out.safetensors"


@pytest.mark.parametrize("options", [
    dict(grids={"e_fc": (4, 2, 2)}),
    dict(grids={"e_fc": (4, 2, 2)}, method="dilate", geometry_only=True),
    dict(grids={"e_fc": (4, 2, 2)}, align="cells"),
    dict(grids={"e_fc": (4, 2, 2)}, mode="cubic", coef="paper", exclude=["c_conv"]),
])
def test_load_equals_supersample(tmp_path, options):
    original, path = converted(tmp_path, ResizeOptions(scale=2, **options))
    direct = copy.deepcopy(original)
    loaded = copy.deepcopy(original)
    padding = "asymmetric" if options.get("align") == "cells" else "exact"
    r1 = supersample(direct, 2, pools=True, padding=padding, **options)
    r2 = load(loaded, path, pools=True, padding=padding)
    assert [c.describe() for c in r1] == [c.describe() for c in r2]
    for name, tensor in direct.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    assert geometry(direct) == geometry(loaded)
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    assert torch.equal(direct(x), loaded(x))


def test_load_folder_and_shard_index(tmp_path):
    original, path = converted(tmp_path, ResizeOptions(scale=2, grids={"e_fc": (4, 2, 2)}))
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    folder = tmp_path / "shards"
    folder.mkdir()
    names = sorted(tensors)
    parts = {"model-00001-of-00002.safetensors": names[:4], "model-00002-of-00002.safetensors": names[4:]}
    for file, keys in parts.items():
        save_file({k: tensors[k] for k in keys}, str(folder / file), metadata=metadata)
    index = {"metadata": {}, "weight_map": {k: file for file, keys in parts.items() for k in keys}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    reference = copy.deepcopy(original)
    load(reference, path)
    for source in (folder, folder / "model.safetensors.index.json"):
        model = copy.deepcopy(original)
        load(model, source)
        assert all(torch.equal(v, reference.state_dict()[k]) for k, v in model.state_dict().items())
        assert geometry(model) == geometry(reference)
    assert read_manifest(folder)["tensors"].keys() == read_manifest(path)["tensors"].keys()


def test_plain_checkpoint_loads_as_is(tmp_path):
    model = seeded(Net())
    save(model, tmp_path / "plain.safetensors")
    fresh = Net().double()
    assert read_manifest(tmp_path / "plain.safetensors") is None
    assert len(load(fresh, tmp_path / "plain.safetensors")) == 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in fresh.state_dict().items())


def assert_load_refused(model: nn.Module, path, error, match: str) -> None:
    before, geo = state(model), geometry(model)
    with pytest.raises(error, match=match):
        load(model, path)
    after = state(model)
    assert all(torch.equal(before[k], after[k]) for k in before) and geometry(model) == geo


def rewrite(path, out, *, drop=None, add=None, manifest_edit=None):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        metadata = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if drop:
        del tensors[drop]
    if add:
        tensors[add] = torch.zeros(2)
    if manifest_edit:
        manifest = json.loads(metadata["kernelscale"])
        manifest_edit(manifest)
        metadata["kernelscale"] = json.dumps(manifest)
    save_file(tensors, str(out), metadata=metadata)
    return out


def test_load_is_strict_and_names_what_is_wrong(tmp_path):
    original, path = converted(tmp_path, ResizeOptions(scale=2, grids={"e_fc": (4, 2, 2)}))
    model = copy.deepcopy(original)
    assert_load_refused(model, rewrite(path, tmp_path / "m.safetensors", drop="c_conv.bias"), InvalidCheckpointError,
                        r"missing tensors the module needs: 'c_conv\.bias'")
    assert_load_refused(model, rewrite(path, tmp_path / "u.safetensors", add="extra.weight"), InvalidCheckpointError,
                        r"unexpected tensors the module does not have: 'extra\.weight'")
    bump = lambda m: m.update(format_version=FORMAT_VERSION + 1)  # noqa: E731
    assert_load_refused(model, rewrite(path, tmp_path / "v.safetensors", manifest_edit=bump), InvalidCheckpointError,
                        rf"manifest format version {FORMAT_VERSION + 1} is not one this kernelscale reads")
    kind = lambda m: m["tensors"]["a_conv.weight"].update(kind="warp")  # noqa: E731
    assert_load_refused(model, rewrite(path, tmp_path / "k.safetensors", manifest_edit=kind), InvalidCheckpointError,
                        r"record of 'a_conv\.weight' has unknown kind 'warp'")
    lie = lambda m: m["tensors"]["a_conv.weight"].update(new_spatial=[5, 5])  # noqa: E731
    assert_load_refused(model, rewrite(path, tmp_path / "s.safetensors", manifest_edit=lie), InvalidCheckpointError,
                        r"'a_conv\.weight' has shape \(4, 1, 7, 7\) but its record says \(4, 1, 5, 5\)")
    load(model, path)
    assert_load_refused(model, path, GeometryError, r"a_conv\.weight: the module's kernel is \(7, 7\) but the record was made for \(3, 3\)")
    with pytest.raises(InvalidCheckpointError, match="no such file or folder"):
        load(copy.deepcopy(original), tmp_path / "absent.safetensors")


def test_example_checkpoint_converted_with_its_grid(tmp_path):
    """The README's example: DigitsCNN (conv, conv, maxpool 2, Linear over (32, 4, 4)) at s = 2."""
    import sys
    from pathlib import Path

    examples = Path(__file__).resolve().parent.parent / "examples"
    sys.path.insert(0, str(examples))
    try:
        from digits import DigitsCNN
    finally:
        sys.path.remove(str(examples))
    from kernelscale.convert import convert_checkpoint

    out = tmp_path / "x2.safetensors"
    convert_checkpoint(examples / "digits_cnn.safetensors", out, ResizeOptions(scale=2, grids={"fc": (32, 4, 4)}), progress=False)
    model = DigitsCNN()
    report = load(model, out)
    assert report.names() == ["conv1", "conv2", "fc"] and model.fc.in_features == 32 * 8 * 8
    assert model(torch.zeros(1, 1, 16, 16)).shape == (1, 10)


def test_attention_rule_scales_the_query_projection(tmp_path):
    """Plan kind "attention" (a baked temperature): weight and bias of to_q × √(log n′/log n), no
    geometry; one report line for the layer, and load() takes the scaled tensors as they are."""
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 4, 3, padding=1)
            self.to_q = nn.Linear(4, 4)

    model = seeded(Block())
    options = dict(attention=[{"pattern": "to_q", "tokens": 64}])
    direct = copy.deepcopy(model)
    report = supersample(direct, 2, **options)
    factor = math.sqrt(math.log(64 * 2 * 2) / math.log(64))  # n' = n·s_H·s_W
    assert report.names() == ["conv", "to_q"] and report["to_q"].action == "attention"
    torch.testing.assert_close(direct.to_q.weight, model.to_q.weight * factor, rtol=1e-15, atol=0)
    torch.testing.assert_close(direct.to_q.bias, model.to_q.bias * factor, rtol=1e-15, atol=0)
    from kernelscale.convert import convert_checkpoint

    save(model, tmp_path / "in.safetensors")
    convert_checkpoint(tmp_path / "in.safetensors", tmp_path / "out.safetensors", ResizeOptions(scale=2, **options), progress=False)
    loaded = copy.deepcopy(model)
    assert [c.describe() for c in load(loaded, tmp_path / "out.safetensors")] == [c.describe() for c in report]
    assert all(torch.equal(v, direct.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_a_lazy_layer_is_refused_until_its_shape_is_known():
    model = nn.Sequential(nn.LazyConv2d(4, 3, padding=1))
    with pytest.raises(GeometryError, match=r"^0\.weight: the layer is lazy.*forward pass"):
        supersample(model, 2)
    model(torch.zeros(1, 2, 8, 8))
    supersample(model, 2)
    assert model[0].kernel_size == (7, 7)


def test_a_lazy_layer_the_plan_leaves_alone_is_listed_as_unchanged():
    """Only a lazy layer the plan would change is refused: an excluded LazyConv2d, a LazyConv2d with
    a 1×1 kernel, a LazyLinear not named in grids stay lazy and are listed; a LazyLinear named in
    grids is refused like a lazy conv, before anything changes."""
    model = nn.Sequential(nn.LazyConv2d(4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.LazyConv2d(4, 1),
                          nn.Flatten(), nn.LazyLinear(3))
    report = supersample(model, 2, exclude=("0",))
    assert report.names() == ["1"] and model[1].kernel_size == (7, 7)
    assert dict(report.skipped) == {"0": "lazy, shape not known yet: excluded by '0'",
                                    "2": "lazy, shape not known yet: 1×1 kernel: commutes with any upsampler",
                                    "4": "lazy, shape not known yet: 2-D: not a conv kernel (declare a grid to resize a Linear)"}
    assert str(report).endswith("1 layers changed, 3 left unchanged")
    assert model(torch.zeros(1, 2, 8, 8)).shape == (1, 3) and model[0].weight.shape == (4, 2, 3, 3)  # still usable

    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Flatten(), nn.LazyLinear(3))
    with pytest.raises(GeometryError, match=r"^2\.weight: the layer is lazy"):
        supersample(model, 2, grids={"2": (4, 8, 8)})
    assert model[0].kernel_size == (3, 3)
    assert supersample(model, 2).skipped[-1][0] == "2"


def test_load_fills_a_lazy_layer_the_manifest_does_not_resize(tmp_path):
    original = seeded(nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)))
    _, path = converted(tmp_path, ResizeOptions(scale=2, exclude=["0"]), original)
    model = nn.Sequential(nn.LazyConv2d(4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)).double()
    assert load(model, path).names() == ["1"]
    x = torch.randn(1, 2, 16, 16, dtype=torch.float64)
    direct = copy.deepcopy(original)
    supersample(direct, 2, exclude=["0"])
    assert torch.equal(model(x), direct(x))
    with pytest.raises(GeometryError, match=r"^1\.weight: the layer is lazy.*then load"):
        load(nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.LazyConv2d(4, 3, padding=1)).double(), path)


def test_excluded_spectral_normed_layers_are_listed_as_unchanged():
    """Both forms of spectral norm, excluded, are in the report's unchanged layers (the
    parametrization's raw weight is parametrizations.weight.original)."""
    from torch.nn.utils import spectral_norm as old_spectral_norm
    from torch.nn.utils.parametrizations import spectral_norm

    model = nn.Sequential(spectral_norm(nn.Conv2d(1, 2, 3, padding=1)), old_spectral_norm(nn.Conv2d(2, 2, 3, padding=1)),
                          nn.Conv2d(2, 2, 3, padding=1))
    report = supersample(model, 2, exclude=["0", "1"])
    assert report.names() == ["2"]
    assert dict(report.skipped) == {"0": "spectral norm of 0: excluded by '0'", "1": "spectral norm of 1: excluded by '1'"}
    assert str(report).endswith("1 layers changed, 2 left unchanged")


@pytest.mark.parametrize("form", ["hook", "parametrization"])
@pytest.mark.parametrize("via", ["supersample", "load"])
def test_geometry_only_redilation_of_a_spectral_normed_conv_is_exact(tmp_path, form, via):
    """Re-dilation keeps the raw weight, hence its largest singular value: in eval mode (stored power
    iteration vectors, no update) the layer is T1-exact on nearest-upsampled input. Anything that
    changes the weight stays refused (tests/test_plan.py)."""
    apply = nn.utils.spectral_norm if form == "hook" else nn.utils.parametrizations.spectral_norm
    torch.manual_seed(0)
    original = nn.Sequential(apply(nn.Conv1d(2, 4, 3, padding=1)), nn.ReLU(), nn.Conv1d(4, 2, 3, padding=1)).double().eval()
    model = copy.deepcopy(original)
    if via == "supersample":
        report = supersample(model, 2, method="dilate", geometry_only=True)
    else:
        _, path = converted(tmp_path, ResizeOptions(scale=2, method="dilate", geometry_only=True), original)
        report = load(model, path)
    assert {c.name for c in report} == {"0", "2"} and model[0].dilation == (2,) and model[0].padding == (2,)
    x = torch.randn(1, 2, 16, dtype=torch.float64)
    with torch.no_grad():
        assert rel(model(nearest(x)), nearest(original(x))) < EXACT


def test_a_conv_whose_weight_the_state_dict_hides_is_refused():
    """spectral_norm holds a conv's weight as other tensors and renormalises whatever it holds: the
    plan refuses rather than leave that conv silently unscaled (weight norm, whose v and g the
    plan resizes, is tested in tests/test_weight_norm.py)."""
    from torch.nn.utils.parametrizations import spectral_norm

    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), spectral_norm(nn.Conv2d(2, 2, 3, padding=1)))
    assert_refused(model, r"^1: its weight is held by spectral norm")
    supersample(model, 2, exclude=["1"])
    assert model[0].kernel_size == (7, 7) and model[1].kernel_size == (3, 3)


def _prefixed_checkpoint(tmp_path, prefix, extra=None):
    """A two-conv net converted at ×2 (taps: 3×3 → 7×7), its tensors under ``prefix`` beside ``extra``."""
    from safetensors.torch import save_file

    from kernelscale.convert import convert_checkpoint
    from kernelscale.options import ResizeOptions

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.Conv2d(3, 2, 3, padding=1))
    state = {prefix + k: v.detach().clone() for k, v in net.state_dict().items()}
    state.update(extra or {})
    save_file(state, str(tmp_path / "in.safetensors"))
    convert_checkpoint(tmp_path / "in.safetensors", tmp_path / "out.safetensors",
                       ResizeOptions(scale=2, include=(prefix + "*",)), progress=False, force=True)
    return net, tmp_path / "out.safetensors"


def test_load_strips_a_prefix_and_finds_the_single_file_one(tmp_path):
    from kernelscale.errors import InvalidCheckpointError

    def fresh():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.Conv2d(3, 2, 3, padding=1))

    reference, _ = _prefixed_checkpoint(tmp_path, "")
    knn.supersample(reference, 2, execution="materialised")
    # a Stable Diffusion single file's denoiser prefix, beside a VAE's tensors: found and stripped
    _, path = _prefixed_checkpoint(tmp_path, "model.diffusion_model.", {"first_stage_model.w": torch.zeros(3)})
    net = fresh()
    report = knn.load(net, path)
    assert net[0].kernel_size == (7, 7) and net[0].padding == (3, 3)
    from safetensors.torch import load_file

    stored = load_file(str(path))
    assert all(torch.equal(t, stored["model.diffusion_model." + n]) for n, t in net.state_dict().items())  # as stored
    assert all(a.shape == b.shape for a, b in zip(net.state_dict().values(), reference.state_dict().values()))
    assert sorted(report.manifest["tensors"]) == ["0.weight", "1.weight"]  # the records' names without the prefix
    # another prefix: named in the error, then given
    _, path = _prefixed_checkpoint(tmp_path, "net.")
    with pytest.raises(InvalidCheckpointError, match=r"under the prefix 'net\.'.*prefix='net\.'"):
        knn.load(fresh(), path)
    net = fresh()
    knn.load(net, path, prefix="net.")
    stored = load_file(str(path))
    assert all(torch.equal(t, stored["net." + n]) for n, t in net.state_dict().items()) and net[1].padding == (3, 3)
    with pytest.raises(InvalidCheckpointError, match="no tensor named 'other.'"):
        knn.load(fresh(), path, prefix="other.")


@pytest.mark.parametrize("call", ["supersample", "load", "plan_module"])
def test_not_a_module_is_refused_naming_its_type_and_for_a_pipeline_the_integration(call, tmp_path):
    from kernelscale.errors import InvalidOptionError
    from kernelscale.options import ResizeOptions

    class FakePipeline:  # what diffusers pipelines have and modules do not
        components = {"unet": None}

    args = {"supersample": (2,), "load": (tmp_path / "x.safetensors",), "plan_module": (ResizeOptions(scale=2),)}[call]
    with pytest.raises(InvalidOptionError, match=f"kernelscale.nn.{call} takes a torch nn.Module, got a builtins.dict$"):
        getattr(knn, call)({"weight": torch.zeros(1)}, *args)
    instead = "load_pipeline" if call == "load" else "supersample_pipeline"
    with pytest.raises(InvalidOptionError, match=f"FakePipeline, a pipeline: use kernelscale.integrations.diffusers.{instead}"):
        getattr(knn, call)(FakePipeline(), *args)
