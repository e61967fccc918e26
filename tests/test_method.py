"""kernelscale.method: the one place a resize's method, choices and scale are validated."""

import math

import pytest
import torch

from kernelscale import ResizeOptions, plan_state_dict, resize_conv, resize_grid_linear, resize_kernel
from kernelscale.errors import InvalidOptionError
from kernelscale.method import (
    DisperseParams,
    Method,
    axis_scales,
    check_choice,
    method_of,
    scale_value,
    validate_coef,
)


def test_defaults_are_design_defaults():
    m = Method()
    assert (m.method, m.mode, m.align, m.coef, m.disperse) == ("interp", "linear", None, None, DisperseParams())
    assert (m.for_kernel().align, m.for_kernel().coef) == ("taps", "mass")
    assert (m.for_grid().align, m.for_grid().coef) == ("cells", "paper")
    explicit = Method(align="taps", coef=0.5)
    assert explicit.for_grid() == explicit  # given values are never replaced by a default


@pytest.mark.parametrize("fields, message", [
    ({"method": "bilinear"}, r"unknown method 'bilinear'; expected one of interp, dilate, pinv, disperse"),
    ({"mode": "bicubic"}, r"unknown mode 'bicubic'"),
    ({"align": "centre"}, r"unknown align 'centre'"),
    ({"coef": "unit"}, r"unknown coef 'unit'"),
    ({"coef": 0}, r"coef must be a finite number > 0, got 0"),
    ({"coef": -1.5}, r"got -1.5"),
    ({"coef": math.nan}, r"got nan"),
    ({"coef": True}, r"coef must be 'mass', 'paper' or a number, got True"),
    ({"disperse": {"probe": 1}}, r"disperse probe must be an integer >= 2, got 1"),
    ({"disperse": 3}, r"disperse must be DisperseParams"),
])
def test_invalid_fields_refused_with_the_value(fields, message):
    with pytest.raises(InvalidOptionError, match=message):
        Method(**fields)


def test_frozen_hashable_and_normalised():
    m = Method("pinv", "cubic", "cells", 2, {"probe": 9})
    assert m.coef == 2.0 and isinstance(m.coef, float)
    assert m.disperse == DisperseParams(probe=9)
    assert hash(m) == hash(Method("pinv", "cubic", "cells", 2.0, DisperseParams(probe=9)))
    with pytest.raises(AttributeError):
        m.mode = "linear"  # type: ignore[misc]


def test_overridden_replaces_only_given_fields():
    base = Method("interp", "cubic", "taps", "paper")
    assert base.overridden(method=None, mode=None) is base
    assert base.overridden(mode="nearest", coef=None) == Method("interp", "nearest", "taps", "paper")
    with pytest.raises(InvalidOptionError, match="unknown mode 'x'"):
        base.overridden(mode="x")


def test_method_of_builds_or_passes_through():
    m = Method("dilate")
    assert method_of(m) is m
    assert method_of("dilate") == m
    assert method_of(None, mode="cubic") == Method(mode="cubic")
    with pytest.raises(InvalidOptionError, match="not both"):
        method_of(m, mode="cubic")


def test_check_choice():
    check_choice("mode", "linear", ("linear",))
    with pytest.raises(InvalidOptionError, match=r"unknown mode 'x'; expected one of a, b"):
        check_choice("mode", "x", ("a", "b"))


def test_validate_coef_keeps_names_and_floats():
    assert validate_coef("mass") == "mass"
    assert validate_coef(3) == 3.0


@pytest.mark.parametrize("given, expected", [
    (2, 2.0), ("2", 2.0), ("2,1.5", (2.0, 1.5)), (" 2 , 3 ", (2.0, 3.0)), ([2, 3, 4], (2.0, 3.0, 4.0)), ((0.5,), (0.5,)),
])
def test_scale_value_accepts(given, expected):
    assert scale_value(given) == expected


@pytest.mark.parametrize("given, message", [
    ("2x", r"--scale '2x': expected a number or comma-separated numbers"),
    (0, r"--scale: scale must be finite and > 0, got 0"),
    ("-2", r"scale must be finite and > 0, got -2.0"),
    ([], r"give 1 to 3 scales, got \(\)"),
    ([1, 2, 3, 4], r"give 1 to 3 scales"),
    (math.inf, r"finite and > 0"),
    (True, r"scale must be a number, got True"),
])
def test_scale_value_refuses(given, message):
    with pytest.raises(InvalidOptionError, match=message):
        scale_value(given, "--scale")


def test_axis_scales():
    assert axis_scales(2, 3) == (2.0, 2.0, 2.0)
    assert axis_scales((2,), 2) == (2.0, 2.0)
    assert axis_scales((2, 3), 2) == (2.0, 3.0)
    assert axis_scales((4, 2, 3), 2, trailing=True) == (2.0, 3.0)  # a job's 3-D scale on a 2-D kernel: the last axes
    with pytest.raises(InvalidOptionError, match=r"conv: 3 scales given for 2 spatial axes"):
        axis_scales((4, 2, 3), 2, name="conv")
    with pytest.raises(InvalidOptionError, match=r"conv: 2 scales given for a kernel with 3 spatial axes"):
        axis_scales((2, 3), 3, name="conv", trailing=True)


def test_public_functions_take_a_method_or_its_keywords():
    torch.manual_seed(0)
    w = torch.randn(3, 2, 3, 3)
    by_method = resize_kernel(w, 2, method=Method(mode="cubic", coef="paper"))
    by_keywords = resize_kernel(w, 2, mode="cubic", coef="paper")
    assert torch.equal(by_method, by_keywords)
    assert by_method.shape == (3, 2, 11, 11)
    with pytest.raises(InvalidOptionError, match=r"up\.conv: give either method=Method\(\.\.\.\) or the keywords mode"):
        resize_kernel(w, 2, method=Method(), mode="cubic", name="up.conv")
    with pytest.raises(InvalidOptionError, match=r"up\.conv: unknown mode 'bicubic'"):
        resize_kernel(w, 2, mode="bicubic", name="up.conv")
    conv = resize_conv(w, 2, padding=1, method=Method("dilate"))
    assert conv.weight.shape == (3, 2, 5, 5) and conv.geometry.padding == (2.0, 2.0)


def test_grid_defaults_apply_to_a_default_method():
    w = torch.randn(4, 2 * 3 * 3, dtype=torch.float64)
    assert torch.equal(resize_grid_linear(w, (2, 3, 3), 2, method=Method()), resize_grid_linear(w, (2, 3, 3), 2))


def test_options_hold_one_validated_method():
    options = ResizeOptions(scale="2,1", method=Method("pinv", "cubic", "cells"))
    assert (options.method, options.mode, options.align, options.coef) == ("pinv", "cubic", "cells", None)
    assert options.resize_method == Method("pinv", "cubic", "cells")
    assert options.scale == (2.0, 1.0)
    with pytest.raises(InvalidOptionError, match="unknown align 'edge'"):
        ResizeOptions(scale=2, align="edge")
    entry = plan_state_dict({"c.weight": torch.zeros(2, 2, 3, 3)}, scale=2, mode="cubic")["c.weight"]
    assert entry.method == Method("interp", "cubic", "taps", "mass")
    assert entry.record.scale == (2.0, 2.0)
