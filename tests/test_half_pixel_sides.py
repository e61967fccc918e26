"""Half-pixel padding sides chosen on the accumulated offset in input pixels (issue 14): through
stride-2 pools a half-pixel shift at depth ℓ is worth 2^ℓ input pixels, so alternating by layer
(+½, −1, +2: net +1.5 input pixels) does not cancel; choosing on the accumulated offset does."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kernelscale.nn import load, supersample
from kernelscale.plan import half_pixel_sides

CONVS = ("0", "2", "4")


def _chain() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.AvgPool2d(2), nn.Conv2d(2, 2, 3, padding=1), nn.AvgPool2d(2),
                         nn.Conv2d(2, 1, 3, padding=1)).double()


def _net_shift(report, jumps: dict[str, float]) -> float:
    """Σ ±J/2 over the half-pixel convs: +½ of the layer's pixel where the extra pixel is after."""
    total = 0.0
    for change in report:
        if change.name in jumps:
            before, after = change.new_padding[-1]
            assert abs(after - before) == 1, change
            total += jumps[change.name] / 2 * (1 if after > before else -1)
    return total


def test_half_pixel_sides_cancel_in_input_pixels() -> None:
    assert half_pixel_sides([("a", 1), ("b", 2), ("c", 4)]) == {"c": "after", "b": "before", "a": "before"}  # +2 −1 −½
    assert half_pixel_sides([("a", 1), ("b", 1), ("c", 1)]) == {"a": "after", "b": "before", "c": "after"}  # alternation
    for jumps in ([1, 2, 4, 8], [1, 1, 2, 2, 4], [4, 2, 1], [1, 2, 2, 2], [2, 4]):
        sides = half_pixel_sides([(str(i), j) for i, j in enumerate(jumps)])
        net = sum(j / 2 * (1 if sides[str(i)] == "after" else -1) for i, j in enumerate(jumps))
        assert abs(net) <= min(jumps) / 2, (jumps, sides)


def test_a_stride_2_pool_chain_nets_at_most_half_a_fine_pixel() -> None:
    net = _chain()
    report = supersample(net, 2, align="cells", padding="asymmetric", pools=True)  # 3×3 → 6×6: half-pixel pads
    jumps = {"0": 1.0, "2": 2.0, "4": 4.0}
    shift = _net_shift(report, jumps)
    assert abs(shift) <= 0.5
    # alternation by layer, as before: +½ −1 +2
    assert 0.5 * 1 - 0.5 * 2 + 0.5 * 4 == 1.5


def test_the_chosen_sides_follow_the_original_better_than_alternation() -> None:
    net = _chain()
    x = F.interpolate(torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64),
                      size=(32, 32), mode="bicubic", align_corners=False)
    x_up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    with torch.no_grad():
        target = F.interpolate(net(x), scale_factor=2, mode="bilinear", align_corners=False)
        chosen = copy.deepcopy(net)
        supersample(chosen, 2, align="cells", padding="asymmetric", pools=True)
        alternating = copy.deepcopy(net)
        supersample(alternating, 2, align="cells", padding="asymmetric", pools=True)
        _force_sides(alternating, {"0": "after", "2": "before", "4": "after"})
        inner = (slice(None), slice(None), slice(4, -4), slice(4, -4))  # away from the borders
        err_chosen = float((chosen(x_up) - target)[inner].norm() / target[inner].norm())
        err_alternating = float((alternating(x_up) - target)[inner].norm() / target[inner].norm())
    assert err_chosen < err_alternating


def _force_sides(net: nn.Module, sides: dict[str, str]) -> None:
    """Put each half-pixel conv's extra padding pixel on the given side (its F.pad pairs swapped)."""
    for name, side in sides.items():
        layer = net.get_submodule(name)
        pads = layer.kernelscale_pad  # F.pad's (before, after) per axis, last axis first
        pairs = [pads[i:i + 2] for i in range(0, len(pads), 2)]
        if ("after" if pairs[0][1] > pairs[0][0] else "before") != side:
            layer.kernelscale_pad = tuple(v for b, a in pairs for v in (a, b))


def test_loading_a_converted_file_chooses_the_same_sides(tmp_path) -> None:
    from safetensors.torch import save_file

    from kernelscale.convert import convert_checkpoint
    from kernelscale.options import ResizeOptions

    net = _chain()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "in.safetensors"))
    convert_checkpoint(tmp_path / "in.safetensors", tmp_path / "out.safetensors", ResizeOptions(scale=2, align="cells"), progress=False)
    direct, loaded = copy.deepcopy(net), copy.deepcopy(net)
    r1 = supersample(direct, 2, align="cells", padding="asymmetric", pools=True)
    r2 = load(loaded, tmp_path / "out.safetensors", padding="asymmetric", pools=True)
    assert [c.describe() for c in r1] == [c.describe() for c in r2]
    assert abs(_net_shift(r2, {"0": 1.0, "2": 2.0, "4": 4.0})) <= 0.5
