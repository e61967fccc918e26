"""The plan and the state-dict API (DESIGN §5)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kernelscale import LayerRule, ResizeOptions, TensorSpec, plan_state_dict, plan_tensors, resize_state_dict


def small_state_dict() -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "stem.weight": torch.randn(8, 3, 3, 3, generator=g),
        "stem.bias": torch.randn(8, generator=g),
        "block.conv.weight": torch.randn(8, 8, 3, 3, generator=g).half(),
        "block.pointwise.weight": torch.randn(8, 8, 1, 1, generator=g),
        "block.norm.weight": torch.ones(8),
        "audio.weight": torch.randn(4, 1, 9, generator=g),
        "head.weight": torch.randn(10, 8 * 4 * 4, generator=g),
        "steps": torch.tensor([3]),
        "mask.weight": torch.ones(2, 2, 3, 3, dtype=torch.bool),
    }


def test_default_rule():
    plan = plan_state_dict(small_state_dict(), scale=2)
    actions = {e.name: e.action for e in plan}
    assert actions == {
        "stem.weight": "resize", "stem.bias": "copy", "block.conv.weight": "resize",
        "block.pointwise.weight": "copy", "block.norm.weight": "copy", "audio.weight": "resize",
        "head.weight": "copy", "steps": "copy", "mask.weight": "copy",
    }
    assert plan["block.pointwise.weight"].reason.startswith("1×1")
    assert "grid" in plan["head.weight"].reason
    assert plan["audio.weight"].new_shape == (4, 1, 19)


def test_untouched_tensors_are_the_same_objects_and_dtypes_kept():
    sd = small_state_dict()
    out, manifest = resize_state_dict(sd, 2)
    for name in ("stem.bias", "block.pointwise.weight", "head.weight", "steps", "mask.weight"):
        assert out[name] is sd[name]
    assert out["block.conv.weight"].dtype == torch.float16 and out["block.conv.weight"].shape == (8, 8, 7, 7)
    assert set(manifest["tensors"]) == {"stem.weight", "block.conv.weight", "audio.weight"}
    record = manifest["tensors"]["stem.weight"]
    assert record["old_spatial"] == [3, 3] and record["new_spatial"] == [7, 7] and record["scale"] == [2.0, 2.0]
    json.dumps(manifest)  # the manifest is JSON as it stands


def test_include_exclude_globs_and_module_names():
    sd = small_state_dict()
    plan = plan_state_dict(sd, scale=2, include=["block.*", "stem"], exclude=["block.conv"])
    assert plan["stem.weight"].action == "resize"
    assert plan["block.conv.weight"].reason == "excluded by 'block.conv'"
    assert plan["audio.weight"].reason == "not matched by --include"


def test_grids_and_layer_rules():
    sd = small_state_dict()
    plan = plan_state_dict(sd, scale=2, grids={"head": (8, 4, 4)},
                           layers=[LayerRule("audio", scale=4), {"pattern": "stem", "scale": 1}])
    assert plan["head.weight"].new_shape == (10, 8 * 8 * 8) and plan["head.weight"].record["grid"] == [8, 4, 4]
    assert plan["audio.weight"].new_shape == (4, 1, 39)
    assert plan["stem.weight"].action == "copy"


def test_absorb_and_geometry_only():
    sd = {"front.weight": torch.randn(16, 1, 4), "body.weight": torch.randn(16, 16, 3)}
    plan = plan_state_dict(sd, scale=2, absorb=["front"])
    assert plan["front.weight"].record["absorb"] and plan["front.weight"].new_shape == (16, 1, 8)
    geo = plan_state_dict(sd, scale=2, method="dilate", geometry_only=True)
    assert geo["body.weight"].action == "geometry" and geo["body.weight"].record["dilation"] == [2]
    out, manifest = resize_state_dict(sd, 2, method="dilate", geometry_only=True)
    assert out["body.weight"] is sd["body.weight"] and manifest["tensors"]["body.weight"]["dilation"] == [2]


def test_cells_even_kernels_alternate_their_extra_pad_side():
    sd = {f"c{i}.weight": torch.randn(2, 2, 3, 3) for i in range(3)}
    plan = plan_state_dict(sd, scale=2, align="cells")
    assert [plan[f"c{i}.weight"].record["pad_extra"] for i in range(3)] == ["after", "before", "after"]
    assert plan["c0.weight"].record["centre_offset"] == [0.5, 0.5]


def test_numpy_state_dicts():
    sd = {"conv.weight": np.ones((2, 2, 3, 3), dtype=np.float32), "conv.bias": np.zeros(2, dtype=np.float32)}
    out, _ = resize_state_dict(sd, 2)
    assert isinstance(out["conv.weight"], np.ndarray) and out["conv.weight"].shape == (2, 2, 7, 7)
    assert out["conv.bias"] is sd["conv.bias"]


def test_plan_from_header_data_only():
    specs = [TensorSpec("a.weight", "BF16", (4, 4, 3, 3)), TensorSpec("a.bias", "BF16", (4,))]
    plan = plan_tensors(specs, ResizeOptions(scale=3, mode="cubic"))
    # cubic taps: k' = (k+3)s − 1 = 17
    assert plan["a.weight"].new_shape == (4, 4, 17, 17) and plan["a.weight"].flop_growth == pytest.approx(289 / 9)
    assert any("FLOPs ×32.11" in line for line in plan.describe())


def test_scale_tuple_applies_to_the_last_axes():
    sd = {"c2.weight": torch.randn(2, 2, 3, 3), "c1.weight": torch.randn(2, 2, 3)}
    plan = plan_state_dict(sd, scale=(1, 2))
    assert plan["c2.weight"].new_shape == (2, 2, 3, 7)
    assert plan["c1.weight"].new_shape == (2, 2, 7)


def test_absorb_leaves_downstream_layers_alone_unless_included():
    sd = {"front.weight": torch.randn(16, 1, 4), "body.weight": torch.randn(16, 16, 3)}
    plan = plan_state_dict(sd, scale=2, absorb=["front"])
    assert plan["body.weight"].action == "copy" and "absorbing" in plan["body.weight"].reason
    assert plan_state_dict(sd, scale=2, absorb=["front"], include=["front", "body"])["body.weight"].action == "resize"


def test_pad_extra_alternates_in_natural_name_order_whatever_the_input_order():
    names = ["conv10.weight", "conv2.weight", "conv1.weight"]
    sd = {n: torch.randn(2, 2, 3, 3) for n in names}
    plan = plan_state_dict(sd, scale=2, align="cells")
    assert [plan[f"conv{i}.weight"].record["pad_extra"] for i in (1, 2, 10)] == ["after", "before", "after"]


def test_grid_coefficient_defaults_to_hw_ratio_and_honours_an_explicit_choice():
    sd = {"fc.weight": torch.randn(3, 2 * 4 * 4)}
    assert plan_state_dict(sd, scale=2, grids={"fc": (2, 4, 4)})["fc.weight"].coef == "paper"
    assert plan_state_dict(sd, scale=2, grids={"fc": (2, 4, 4)}, coef="mass")["fc.weight"].coef == "mass"
