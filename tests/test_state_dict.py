"""The state-dict API on what real state dicts hold: non-tensors, odd dtypes, Parameters (DESIGN §5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernelscale import plan_state_dict, resize_kernel, resize_state_dict
from kernelscale.errors import InvalidOptionError, UnsupportedTensorError


def test_entries_that_are_not_tensors_pass_through():
    weight = torch.randn(4, 2, 3, 3)
    sd = {"c.weight": weight, "x": 1.0, "config": {"k": 3}, "name": "unet", "none": None}
    out, manifest = resize_state_dict(sd, 2)
    assert list(out) == list(sd)
    assert all(out[k] is sd[k] for k in ("x", "config", "name", "none"))
    torch.testing.assert_close(out["c.weight"], resize_kernel(weight, 2), rtol=0, atol=0)
    assert [e.name for e in plan_state_dict(sd, scale=2)] == ["c.weight"] and list(manifest["tensors"]) == ["c.weight"]


def test_dtypes_that_are_never_resized_pass_through_untouched():
    sd = {
        "spectrum": torch.randn(8, dtype=torch.complex64),
        "filters.weight": np.ones((2, 2, 3), dtype=np.complex128),  # conv-shaped, but excluded below
        "labels": np.array(["cat", "dog"]),
        "meta": np.array([{"a": 1}], dtype=object),
        "steps": np.arange(3).astype(">i4"),
        "mask.weight": torch.ones(2, 2, 3, 3, dtype=torch.bool),
        "c.weight": torch.randn(2, 2, 3, 3),
    }
    out, _ = resize_state_dict(sd, 2, exclude=["filters"])
    assert all(out[k] is sd[k] for k in sd if k != "c.weight")
    plan = plan_state_dict(sd, scale=2, exclude=["filters"])
    assert plan["spectrum"].dtype == "complex64" and plan["labels"].dtype == "<U3" and plan["meta"].dtype == "object"
    assert plan["steps"].dtype == "I32" and plan["filters.weight"].reason == "excluded by 'filters'"


@pytest.mark.parametrize("weight", [torch.randn(4, 2, 3, 3, dtype=torch.complex64), np.ones((4, 2, 3), dtype=np.complex128)],
                         ids=["torch", "numpy"])
def test_a_complex_conv_weight_that_would_be_resized_is_refused_by_name(weight):
    with pytest.raises(UnsupportedTensorError, match=r"^enc\.conv\.weight: the plan would resize this complex(64|128) tensor"):
        resize_state_dict({"enc.conv.weight": weight, "enc.conv.bias": torch.zeros(4)}, 2)
    out, _ = resize_state_dict({"enc.conv.weight": weight}, 2, layers=[{"pattern": "enc.*", "scale": 1}])
    assert out["enc.conv.weight"] is weight


def test_big_endian_arrays_are_planned_and_resized_as_native_ones():
    weight = np.random.default_rng(0).standard_normal((4, 2, 3, 3)).astype(">f4")
    bias = np.zeros(4, dtype=">f4")
    plan = plan_state_dict({"c.weight": weight, "c.bias": bias}, scale=2)
    assert plan["c.weight"].dtype == "F32" and plan["c.weight"].action == "resize"
    out, _ = resize_state_dict({"c.weight": weight, "c.bias": bias}, 2)
    assert isinstance(out["c.weight"], np.ndarray) and out["c.weight"].dtype == np.float32
    np.testing.assert_array_equal(out["c.weight"], resize_kernel(weight.astype(np.float32), 2))
    assert out["c.bias"] is bias


def test_parameters_come_back_as_plain_tensors_and_untouched_ones_as_themselves():
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.Linear(4, 4))
    sd = model.state_dict(keep_vars=True)
    out, _ = resize_state_dict(sd, 2)
    resized = out["0.weight"]
    assert type(resized) is torch.Tensor and not resized.requires_grad and resized.grad_fn is None
    torch.testing.assert_close(resized, resize_kernel(model[0].weight.detach(), 2), rtol=0, atol=0)
    assert all(out[k] is sd[k] for k in ("0.bias", "1.weight", "1.bias"))


def test_a_training_checkpoint_is_refused_with_the_state_dict_to_pass():
    """{'epoch': 3, 'state_dict': {...}} would otherwise come back unchanged, with an empty manifest."""
    weight = torch.ones(2, 2, 3, 3)
    with pytest.raises(InvalidOptionError, match=r"^the state dict holds no tensors at its top level, only inside a nested "
                                                 r"dict: pass sd\['state_dict'\]$"):
        resize_state_dict({"epoch": 3, "state_dict": {"conv.weight": weight}}, 2)
    with pytest.raises(InvalidOptionError, match=r"\(sd\['model'\]\['net'\], sd\['ema'\]\): pass one of them, e.g. "
                                                 r"sd\['model'\]\['net'\]$"):
        plan_state_dict({"epoch": 3, "model": {"net": {"c.weight": weight}}, "ema": {"c.weight": weight}}, scale=2)
    # a state dict with a nested dict beside its tensors, or no tensors at all, is planned as before
    out, manifest = resize_state_dict({"conv.weight": weight, "extra": {"w": weight}}, 2)
    assert list(manifest["tensors"]) == ["conv.weight"]
    assert resize_state_dict({"epoch": 3, "config": {"lr": 0.1}}, 2)[1]["tensors"] == {}


def test_a_tensor_under_a_key_that_is_not_a_string_is_refused_by_name():
    with pytest.raises(InvalidOptionError, match=r"^state dict key 0 is of type int, not str"):
        resize_state_dict({0: torch.ones(2, 2, 3, 3)}, 2)
    with pytest.raises(InvalidOptionError, match=r"^state dict key \('a', 1\) is of type tuple"):
        plan_state_dict({"conv.weight": torch.ones(2, 2, 3, 3), ("a", 1): np.ones(3)}, scale=2)
    assert resize_state_dict({"conv.weight": torch.ones(2, 2, 3, 3), 7: "not a tensor"}, 2)[0][7] == "not a tensor"
