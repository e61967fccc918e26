"""Grid layouts (issue 14): a Linear over features flattened in any axis order (channels-last
after a permute, 1-D and 3-D grids) is declared with its layout, resized in it, and recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kernelscale.cli import main
from kernelscale.errors import InvalidOptionError
from kernelscale.grid import GridLayout, grid_layout
from kernelscale.io.safetensors_io import SafetensorsReader
from kernelscale.nn import load, supersample
from kernelscale.plan_file import load_plan_file
from kernelscale.resize import resize_grid_linear
from checkpoints import save

C, H, W, OUT = 4, 6, 6, 5


class Head(nn.Module):
    """conv → ReLU → flatten (``channels_last``: permute to N,H,W,C first, as a ported Keras model) → Linear."""

    def __init__(self, channels_last: bool) -> None:
        super().__init__()
        self.channels_last = channels_last
        self.conv = nn.Conv2d(3, C, 3, padding=1)
        self.fc = nn.Linear(C * H * W, OUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        if self.channels_last:
            y = y.permute(0, 2, 3, 1)
        return self.fc(y.flatten(1))


def _pair() -> tuple[Head, Head]:
    """The same network twice: flattened C,H,W and, with the Linear's columns permuted, H,W,C."""
    torch.manual_seed(0)
    chw = Head(channels_last=False).double()
    hwc = Head(channels_last=True).double()
    hwc.load_state_dict(chw.state_dict())
    with torch.no_grad():
        hwc.fc.weight.copy_(chw.fc.weight.reshape(OUT, C, H, W).permute(0, 2, 3, 1).reshape(OUT, -1))
    return chw, hwc


def _smooth(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.randn(2, 3, 3, 3, generator=g, dtype=torch.float64), size=(H, W), mode="bilinear", align_corners=False)


def _relative_error(net: nn.Module, original: torch.Tensor, x_up: torch.Tensor) -> float:
    return float((net(x_up) - original).norm() / original.norm())


@pytest.mark.parametrize("method", ["interp", "pinv"])
def test_a_channels_last_network_resizes_as_well_as_the_chw_one(method: str) -> None:
    # Measured (seeded): relative error on the upsampled input 0.308 (interp) / 0.113 (pinv) for
    # both correct declarations, 0.936 / 1.303 for the C,H,W declaration on the channels-last net.
    chw, hwc = _pair()
    rule = [{"pattern": "fc", "method": method}]
    x = _smooth(1)
    x_up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    with torch.no_grad():
        original = chw(x)
        assert torch.allclose(hwc(x), original, rtol=1e-12, atol=1e-12)
        wrong = _pair()[1]
        supersample(chw, 2, grids={"fc": (C, H, W)}, layers=rule)
        supersample(hwc, 2, grids={"fc": f"H,W,C:{H},{W},{C}"}, layers=rule)
        supersample(wrong, 2, grids={"fc": (C, H, W)}, layers=rule)  # the obvious, wrong declaration
        right_error = _relative_error(chw, original, x_up)
        # the same weights permuted: equal up to float64 summation order
        assert torch.allclose(hwc(x_up), chw(x_up), rtol=1e-10, atol=1e-12)
        assert _relative_error(hwc, original, x_up) == pytest.approx(right_error, rel=1e-9)
        assert _relative_error(wrong, original, x_up) > 2 * right_error


def test_the_command_line_declares_the_layout_and_the_record_carries_it(tmp_path: Path, capsys) -> None:
    _, hwc = _pair()
    src = save({k: v.float() for k, v in hwc.state_dict().items()}, tmp_path / "in.safetensors")
    out = tmp_path / "out.safetensors"
    assert main(["convert", str(src), str(out), "--scale", "2", "--grid", f"fc=H,W,C:{H},{W},{C}"]) == 0
    capsys.readouterr()
    with SafetensorsReader(out) as reader:
        record = json.loads(reader.metadata["kernelscale"])["tensors"]["fc.weight"]
    assert record["layout"] == "HWC" and record["grid"] == [C, H, W] and record["new_spatial"] == [2 * H, 2 * W]
    model = Head(channels_last=True)
    load(model, str(out))
    reference = _pair()[1].float()
    supersample(reference, 2, grids={"fc": GridLayout("HWC", (H, W, C))})
    assert torch.equal(model.fc.weight, reference.fc.weight)
    assert main(["inspect", str(src), "--scale", "2", "--grid", f"fc=H,W,C:{H},{W},{C}"]) == 0
    assert "layout H,W,C" in capsys.readouterr().out
    assert main(["verify", str(src), str(out)]) == 0


def test_a_plan_file_takes_the_layout(tmp_path: Path) -> None:
    path = tmp_path / "plan.toml"
    path.write_text('scale = 2\n[grids]\nfc = "H,W,C:6,6,4"\nhead = { layout = "WHC", shape = [6, 5, 4] }\nold = [4, 6, 6]\n')
    grids = load_plan_file(path)["grids"]
    assert grids == {"fc": GridLayout("HWC", (6, 6, 4)), "head": GridLayout("WHC", (6, 5, 4)), "old": GridLayout("CHW", (4, 6, 6))}


def test_any_axis_order_matches_the_canonical_resize() -> None:
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(OUT, C * H * 5, generator=g, dtype=torch.float64)
    canonical = resize_grid_linear(weight, (C, H, 5), (2, 3))  # (C, H, W) = (4, 6, 5) → (4, 12, 15)
    maps = weight.reshape(OUT, C, H, 5)
    for layout in ("HWC", "WHC", "CWH", "HCW"):
        order = ["CHW".index(a) + 1 for a in layout]
        laid_out = maps.permute(0, *order).reshape(OUT, -1)
        grid = GridLayout(layout, tuple(maps.shape[i] for i in order))
        result = resize_grid_linear(laid_out, grid, (2, 3))
        expected = canonical.reshape(OUT, C, 2 * H, 15).permute(0, *order).reshape(OUT, -1)
        assert torch.equal(result, expected), layout


def test_one_and_three_dimensional_grids() -> None:
    g = torch.Generator().manual_seed(4)
    weight = torch.randn(3, 8 * 10, generator=g, dtype=torch.float64)
    assert resize_grid_linear(weight, "C,L:8,10", 2).shape == (3, 160)
    # 1-D channels-last equals channels-first with the columns permuted
    last = weight.reshape(3, 8, 10).transpose(1, 2).reshape(3, -1)
    expected = resize_grid_linear(weight, "C,L:8,10", 2).reshape(3, 8, 20).transpose(1, 2).reshape(3, -1)
    assert torch.equal(resize_grid_linear(last, "L,C:10,8", 2), expected)
    volume = torch.randn(3, 2 * 2 * 3 * 4, generator=g, dtype=torch.float64)
    assert resize_grid_linear(volume, "D,H,W,C:2,3,4,2", (1, 2, 3)).shape == (3, 2 * 2 * 6 * 12)


@pytest.mark.parametrize("text", ["H,W:3,3", "C,C,H:1,2,3", "C,H,X:1,2,3", "H,W,C:3,3", "C,D,W:1,2,3", "H,W,C:3,3,a"])
def test_bad_layouts_are_refused(text: str) -> None:
    with pytest.raises(InvalidOptionError):
        grid_layout(text)


def test_verify_cannot_tell_a_wrong_layout(tmp_path: Path, capsys) -> None:
    # docs/cli.md says so: the weights are certified against the declared layout, which a wrong
    # declaration satisfies as well as the right one; only the model's forward tells them apart.
    _, hwc = _pair()
    src = save({k: v.float() for k, v in hwc.state_dict().items()}, tmp_path / "in.safetensors")
    wrong = tmp_path / "wrong.safetensors"
    assert main(["convert", str(src), str(wrong), "--scale", "2", "--grid", f"fc={C},{H},{W}"]) == 0
    assert main(["verify", str(src), str(wrong)]) == 0
