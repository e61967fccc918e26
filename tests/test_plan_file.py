"""Plan files: TOML, JSON and ScaleCrafter's name:factor text → ResizeOptions fields."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kernelscale import LayerRule, ResizeOptions, plan_state_dict
from kernelscale.errors import InvalidOptionError
from kernelscale.grid import GridLayout
from kernelscale.plan_file import PLAN_KEYS, load_plan_file

TOML_PLAN = """
scale = [2, 1.5]
method = "interp"
mode = "cubic"
align = "cells"
coef = 0.25
include = ["down.*", "mid.*"]
exclude = "down.skip"
absorb = ["stem"]
geometry_only = false

[grids]
fc = [32, 4, 4]

[disperse]
probe = 9

[[layers]]
pattern = "mid.conv"
scale = 4
method = "dilate"

[[layers]]
pattern = "down.0"
coef = "paper"
"""


def test_toml_plan_gives_every_field(tmp_path: Path) -> None:
    path = tmp_path / "plan.toml"
    path.write_text(TOML_PLAN)
    fields = load_plan_file(path)
    assert fields["scale"] == (2, 1.5)
    assert fields["mode"] == "cubic" and fields["align"] == "cells" and fields["coef"] == 0.25
    assert fields["include"] == ("down.*", "mid.*") and fields["exclude"] == ("down.skip",) and fields["absorb"] == ("stem",)
    assert fields["grids"] == {"fc": GridLayout("CHW", (32, 4, 4))}
    assert fields["layers"] == (LayerRule("mid.conv", scale=4, method="dilate"), LayerRule("down.0", coef="paper"))
    options = ResizeOptions(**fields)
    assert options.disperse.probe == 9 and options.scale == (2.0, 1.5)


def test_json_plan_with_layer_table_and_string_grid(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"scale": 2, "layers": {"a.conv": 1, "b.conv": {"scale": 3, "mode": "nearest"}},
                                "grids": {"head": "8,2,2"}, "attention": [{"pattern": "*to_q", "tokens": 64}]}))
    fields = load_plan_file(path)
    assert fields["layers"] == (LayerRule("a.conv", scale=1), LayerRule("b.conv", scale=3, mode="nearest"))
    assert fields["grids"] == {"head": GridLayout("CHW", (8, 2, 2))}
    assert ResizeOptions(**fields).attention[0].tokens == 64


def test_geometry_only_may_leave_method_to_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "plan.toml"
    path.write_text("geometry_only = true\n")
    assert load_plan_file(path) == {"geometry_only": True}


def test_scalecrafter_text_lists_layers_and_keeps_others(tmp_path: Path) -> None:
    path = tmp_path / "sd1.5_1024x1024.txt"
    path.write_text("# ScaleCrafter re-dilation\n\ndown.1.conv:2\nmid.conv:1.5  # fractional\n")
    fields = load_plan_file(path)
    assert fields == {"scale": 1.0, "layers": (LayerRule("down.1.conv", scale=2), LayerRule("mid.conv", scale=1.5))}
    sd = {"down.1.conv.weight": torch.randn(4, 4, 3, 3), "mid.conv.weight": torch.randn(4, 4, 3, 3),
          "up.conv.weight": torch.randn(4, 4, 3, 3)}
    plan = plan_state_dict(sd, ResizeOptions(**fields))
    assert plan["down.1.conv.weight"].new_shape == (4, 4, 7, 7)
    assert plan["mid.conv.weight"].action == "resize"
    assert plan["up.conv.weight"].action == "copy" and plan["up.conv.weight"].reason.startswith("scale 1")


@pytest.mark.parametrize("name, text, needle", [
    ("p.toml", "scale = 2\nmethd = 'interp'\n", "unknown key(s) 'methd'"),
    ("p.toml", "scale = [2\n", "invalid TOML"),
    ("p.json", "{\"scale\": 2,}", "invalid JSON"),
    ("p.json", "[2]", "expected a table"),
    ("p.toml", "scale = 2\nmethod = 'bicubic'\n", "unknown method 'bicubic'"),
    ("p.toml", "scale = 0\n", "scale must be finite and > 0"),
    ("p.toml", "scale = 2\ncoef = 0\n", "coef must be a finite number > 0, got 0"),
    ("p.json", "{\"scale\": 2, \"coef\": -1}", "coef must be a finite number > 0, got -1"),
    ("p.toml", "scale = 2\n[[layers]]\npattern = 'a'\ncoef = -0.5\n", "coef must be a finite number > 0, got -0.5"),
    ("p.toml", "scale = 2\ncoef = nan\n", "coef must be a finite number > 0, got nan"),
    ("p.toml", "scale = 2\ngrids = {fc = [32, 4]}\n", "grid 'fc' must be [C, H, W]"),
    ("p.toml", "scale = 2\n[[layers]]\nscale = 2\n", "needs a pattern"),
    ("p.toml", "scale = 2\n[[layers]]\npattern = 'a'\nfactor = 2\n", "unknown key(s) 'factor'"),
    ("p.toml", "scale = 2\ninclude = [1]\n", "include must be a glob"),
    ("p.toml", "scale = 2\ngeometry_only = 'yes'\n", "geometry_only must be true or false"),
    ("p.toml", "scale = 2\n[disperse]\nwidth = 3\n", "width"),
    ("p.txt", "down.conv:2\nup.conv\n", "line 2: expected 'name:factor'"),
    ("p.txt", "down.conv:two\n", "line 1: factor 'two' is not a number"),
    ("p.txt", "down.conv:2\ndown.conv:3\n", "already listed on line 1"),
    ("p.txt", "down.conv:-1\n", "line 1:"),
    ("p.txt", "# nothing\n\n", "no 'name:factor' lines"),
])
def test_bad_plan_files_name_the_file(tmp_path: Path, name: str, text: str, needle: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InvalidOptionError) as info:
        load_plan_file(path)
    assert str(path) in str(info.value) and needle in str(info.value)


def test_missing_and_binary_plan_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidOptionError, match="cannot read"):
        load_plan_file(tmp_path / "absent.toml")
    path = tmp_path / "blob.txt"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(InvalidOptionError, match="not UTF-8"):
        load_plan_file(path)


def test_plan_keys_are_resize_option_fields() -> None:
    assert set(PLAN_KEYS) <= set(ResizeOptions.__dataclass_fields__)


@pytest.mark.parametrize("args, needle", [
    (["convert", "--scale", "2", "--coef", "0"], "coef must be a finite number > 0, got 0"),
    (["convert", "--scale", "2", "--coef", "-1"], "coef must be a finite number > 0, got -1"),
    (["convert", "--plan", "{plan}"], "coef must be a finite number > 0, got 0"),
    (["convert", "--scale", "1e9", "--dry-run"], "--scale: scale must be between 1/65536 and 65536 (limit 65536 taps per axis), got 1000000000"),
    (["convert", "--scale", "40000", "--dry-run"], "c.weight: scale 40000 would make a 3-tap axis 159999 taps long (limit 65536)"),
    (["inspect", "--scale", "1e9"], "limit 65536"),
])
def test_the_command_line_refuses_bad_coefficients_and_scales_in_one_line(tmp_path: Path, capsys, args, needle) -> None:
    from safetensors.torch import save_file

    from kernelscale.cli import main

    src, out = tmp_path / "d.safetensors", tmp_path / "o.safetensors"
    save_file({"c.weight": torch.randn(4, 2, 3, 3), "c.bias": torch.zeros(4)}, str(src))
    (tmp_path / "p.toml").write_text("scale = 2\ncoef = 0\n")
    files = [str(src)] + ([str(out)] if args[0] == "convert" else [])
    code = main([args[0], *files, *(a.replace("{plan}", str(tmp_path / "p.toml")) for a in args[1:])])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and needle in err, err
    assert not out.exists()
