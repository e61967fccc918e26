"""Bad arguments raise ValueError/TypeError naming the tensor and the value."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kernelscale import resize_conv, resize_grid_linear, resize_kernel, resize_state_dict
from kernelscale.errors import KernelscaleError


@pytest.mark.parametrize("scale", [0, -2, math.nan, math.inf, -math.inf, "2", True])
def test_bad_scale(scale):
    with pytest.raises((ValueError, TypeError)) as info:
        resize_kernel(torch.randn(2, 2, 3, 3), scale, name="encoder.conv")
    assert "encoder.conv" in str(info.value) and repr(scale) in str(info.value)
    assert isinstance(info.value, KernelscaleError)


def test_bad_scale_in_state_dict_api():
    with pytest.raises(ValueError, match="nan"):
        resize_state_dict({"c.weight": torch.randn(2, 2, 3, 3)}, math.nan)


def test_scale_that_empties_a_kernel():
    with pytest.raises(ValueError, match=r"down\.conv.*0\.1.*empties"):
        resize_kernel(torch.randn(2, 2, 3, 3), 0.1, align="cells", name="down.conv")


@pytest.mark.parametrize("option, value", [("method", "bilinear"), ("mode", "bicubic"), ("align", "corners"), ("coef", "unit")])
def test_unknown_choices(option, value):
    with pytest.raises(ValueError, match=f"{option} '{value}'") as info:
        resize_kernel(torch.randn(2, 2, 3, 3), 2, name="mid.conv", **{option: value})
    assert "mid.conv" in str(info.value)


def test_unknown_choice_in_state_dict_api():
    with pytest.raises(ValueError, match="mode 'bicubic'"):
        resize_state_dict({"c.weight": torch.randn(2, 2, 3, 3)}, 2, mode="bicubic")


def test_grid_that_does_not_match():
    with pytest.raises(ValueError, match=r"head.*\(3, 4, 4\).*48.*\(10, 50\)"):
        resize_grid_linear(torch.randn(10, 50), (3, 4, 4), 2, name="head")
    with pytest.raises(ValueError, match="fc.weight"):
        resize_state_dict({"fc.weight": torch.randn(10, 50)}, 2, grids={"fc": (3, 4, 4)})


def test_grid_for_a_missing_tensor():
    with pytest.raises(ValueError, match="'classifier'"):
        resize_state_dict({"fc.weight": torch.randn(10, 48)}, 2, grids={"classifier": (3, 4, 4)})


@pytest.mark.parametrize("tensor", [torch.ones(2, 2, 3, 3, dtype=torch.int64), torch.ones(2, 2, 3, 3, dtype=torch.bool),
                                    np.ones((2, 2, 3, 3), dtype=np.int32)])
def test_non_floating_tensor(tensor):
    with pytest.raises(TypeError, match=r"steps.*(int|bool)"):
        resize_kernel(tensor, 2, name="steps")


def test_non_floating_grid_in_plan():
    with pytest.raises(ValueError, match="I64"):
        resize_state_dict({"fc.weight": torch.ones(10, 48, dtype=torch.int64)}, 2, grids={"fc": (3, 4, 4)})


def test_dilate_needs_integer_scale():
    with pytest.raises(ValueError, match=r"up\.conv.*1\.5"):
        resize_kernel(torch.randn(2, 2, 3, 3), 1.5, method="dilate", name="up.conv")


def test_wrong_number_of_scales():
    with pytest.raises(ValueError, match=r"conv3d.*3 spatial axes"):
        resize_kernel(torch.randn(2, 2, 3, 3, 3), (2, 2), name="conv3d")


def test_wrong_rank():
    with pytest.raises(TypeError, match=r"fc.*\(4, 4\)"):
        resize_kernel(torch.randn(4, 4), 2, name="fc")


def test_geometry_only_needs_dilate():
    with pytest.raises(ValueError, match="implies method 'dilate'; got 'interp'"):
        resize_conv(torch.randn(2, 2, 3, 3), 2, geometry_only=True, method="interp")
    assert resize_conv(torch.randn(2, 2, 3, 3), 2, geometry_only=True).geometry.dilation == (2, 2)  # implied


def test_globs_that_match_nothing():
    with pytest.raises(ValueError, match="'decoder.*'"):
        resize_state_dict({"c.weight": torch.randn(2, 2, 3, 3)}, 2, include=["decoder.*"])
    with pytest.raises(ValueError, match="--absorb 'patch'"):
        resize_state_dict({"c.weight": torch.randn(2, 2, 3, 3)}, 2, absorb=["patch"])


def test_diffusion_errors_live_in_the_hierarchy_and_the_integration_raises_the_same_classes():
    from kernelscale import errors

    diffusers_api = pytest.importorskip("kernelscale.integrations.diffusers")
    for name, base in (("UnsupportedDenoiserError", TypeError), ("UnsupportedPipelineError", TypeError),
                       ("ExecutionUnavailableError", NotImplementedError)):
        cls = getattr(errors, name)
        assert issubclass(cls, KernelscaleError) and issubclass(cls, base)
        assert getattr(diffusers_api, name) is cls
