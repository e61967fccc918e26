"""The plan and the state-dict API (DESIGN §5)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from kernelscale import LayerRule, ResizeOptions, TensorSpec, plan_state_dict, plan_tensors, resize_state_dict
from kernelscale.errors import SpectralNormError, UnsupportedTensorError, WeightNormError


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


def weight_normed_state_dict(dim: int = 0) -> dict:
    """Weight norm both ways (old ``weight_g``/``weight_v``, the parametrization's ``original0/1``) and a plain conv.

    ``dim=2``: one norm per kernel tap, which a resize cannot keep (the refused case; dims 0, 1 and
    None are resized exactly, tests/test_weight_norm.py)."""
    torch.manual_seed(0)
    with pytest.warns(FutureWarning):  # torch.nn.utils.weight_norm is deprecated, but checkpoints hold it
        old = torch.nn.utils.weight_norm(torch.nn.Conv1d(4, 8, 7, padding=3), dim=dim)
    model = torch.nn.Sequential(old, torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv1d(8, 8, 7, padding=3), dim=dim),
                                torch.nn.Conv1d(8, 1, 7, padding=3))
    return {k: v.detach() for k, v in model.state_dict().items()}


def test_weight_norm_along_a_kernel_axis_is_refused_rather_than_left_unresized():
    sd = weight_normed_state_dict(dim=2)
    with pytest.raises(WeightNormError, match=r"^0: its weight is held by weight norm as 0\.weight_g \(g, 1×1×7\) and "
                                              r"0\.weight_v \(v, 8×4×7\) with one norm per index of axis 2, which the resize "
                                              r"changes.*remove_weight_norm") as info:
        resize_state_dict(sd, 2)
    assert isinstance(info.value, UnsupportedTensorError)
    with pytest.raises(WeightNormError, match=r"^1: .*1\.parametrizations\.weight\.original0 \(g, 1×1×7\) and "
                                              r"1\.parametrizations\.weight\.original1 \(v, 8×8×7\).*remove_parametrizations"):
        resize_state_dict(sd, 2, exclude=["0"])
    # The converter plans from header data alone: the same refusal, before anything is written.
    specs = [TensorSpec(n, "F32", tuple(t.shape)) for n, t in sd.items()]
    with pytest.raises(WeightNormError, match="^0: "):
        plan_tensors(specs, ResizeOptions(scale=2))


def test_excluded_weight_normed_convs_are_copied_with_the_reason():
    sd = weight_normed_state_dict(dim=2)
    for exclude in (["0", "1"], ["0.*", "*.original1"], ["*weight_v", "1.parametrizations.*"]):
        plan = plan_state_dict(sd, scale=2, exclude=exclude)
        assert plan["0.weight_v"].reason == plan["0.weight_g"].reason == f"weight norm of 0: excluded by {exclude[0]!r}"
        assert plan["1.parametrizations.weight.original0"].reason.startswith("weight norm of 1: excluded by")
        assert [e.name for e in plan.changed] == ["2.weight"]
    assert plan_state_dict(sd, scale=2, include=["2"]).changed[0].name == "2.weight"
    assert not plan_state_dict(sd, scale=2, layers=[{"pattern": "*", "scale": 1}]).changed
    with pytest.raises(WeightNormError, match="^1: "):
        plan_state_dict(sd, scale=2, include=["1", "2"])


def test_weight_norm_on_layers_that_are_never_resized_is_left_alone():
    linear = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(4, 4))
    pointwise = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv2d(4, 4, 1))
    spectral = torch.nn.utils.spectral_norm(torch.nn.Linear(4, 4))  # its weight_v is a 1-D power-iteration vector
    sd = {f"{i}.{k}": v.detach() for i, m in enumerate((linear, pointwise, spectral)) for k, v in m.state_dict().items()}
    out, manifest = resize_state_dict(sd, 2)
    assert all(out[k] is sd[k] for k in sd) and not manifest["tensors"]
    assert plan_state_dict(sd, scale=2)["1.parametrizations.weight.original1"].reason == \
        "weight norm of 1: 1×1 kernel: commutes with any upsampler"


def test_inspect_and_convert_refuse_a_weight_normed_checkpoint_in_one_line(tmp_path, capsys):
    from safetensors.torch import save_file

    from kernelscale.cli import main

    src, out = tmp_path / "wn.safetensors", tmp_path / "out.safetensors"
    save_file({k: v.contiguous() for k, v in weight_normed_state_dict(dim=2).items()}, str(src))
    for argv in (["inspect", str(src)], ["convert", str(src), str(out)]):
        assert main([*argv, "--scale", "2"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("kernelscale: error: 0: its weight is held by weight norm") and err.count("\n") == 1
    assert not out.exists()
    assert main(["convert", str(src), str(out), "--scale", "2", "--exclude", "0", "--exclude", "1"]) == 0


@pytest.mark.parametrize("form", ["hook", "parametrization"])
def test_spectral_normed_conv_may_be_re_dilated_geometry_only(form):
    """Geometry-only re-dilation keeps the raw weight byte for byte, so the layer's normalised weight
    is unchanged and the dilated conv exact: the raw weight gets the layer's record (with the names of
    the power iteration's u and v, which are copied), like a plain conv's weight."""
    apply = torch.nn.utils.spectral_norm if form == "hook" else torch.nn.utils.parametrizations.spectral_norm
    model = torch.nn.Sequential(apply(torch.nn.Conv2d(3, 8, 3, padding=1)), torch.nn.Conv2d(8, 8, 3, padding=1))
    state = model.state_dict()
    raw, u, v = (("0.weight_orig", "0.weight_u", "0.weight_v") if form == "hook" else
                 ("0.parametrizations.weight.original", "0.parametrizations.weight.0._u", "0.parametrizations.weight.0._v"))
    out, manifest = resize_state_dict(state, 2, method="dilate", geometry_only=True)
    assert all(out[k] is state[k] for k in state)
    assert set(manifest["tensors"]) == {raw, "1.weight"}
    record = manifest["tensors"][raw]
    assert record == {**manifest["tensors"]["1.weight"], "spectral_norm": {"u": u, "v": v}}
    assert record["dilation"] == [2, 2] and record["kind"] == "conv"
    plan = plan_state_dict(state, scale=2, method="dilate", geometry_only=True)
    assert plan[raw].action == "geometry" and plan[raw].reason.startswith("spectral norm of 0: re-dilation")
    assert plan[u].action == plan[v].action == "copy"
    # a glob naming the raw weight, or the layer, reaches it as for a plain conv
    assert plan_state_dict(state, scale=2, method="dilate", geometry_only=True, include=[raw]).changed == (plan[raw],)
    # still refused when the values would change
    with pytest.raises(SpectralNormError):
        plan_state_dict(state, scale=2, method="dilate")


def test_spectral_norm_errors_name_the_first_layer_in_file_order():
    """Which layer the error names does not depend on PYTHONHASHSEED (a set's order)."""
    from kernelscale.reparam import spectral_layers

    names = [f"net.{i}.weight_orig" for i in range(40, 0, -1)]
    assert spectral_layers(names) == [f"net.{i}" for i in range(40, 0, -1)]
    specs = [TensorSpec(n, "F32", (2, 2, 3, 3)) for n in names]
    with pytest.raises(SpectralNormError, match=r"^net\.40: "):
        plan_tensors(specs, ResizeOptions(scale=2))


@pytest.mark.parametrize("form", ["hook", "parametrization"])
def test_spectral_normed_conv_is_refused_not_half_converted(form):
    # Spectral norm divides the held weight by its own largest singular value, so resizing the raw
    # tensor cannot give the resized weight; copying it while the other convs grow would leave a
    # half-converted network. Excluded, every tensor of the layer is copied with the reason.
    apply = torch.nn.utils.spectral_norm if form == "hook" else torch.nn.utils.parametrizations.spectral_norm
    model = torch.nn.Sequential(apply(torch.nn.Conv2d(3, 8, 3, padding=1)), torch.nn.Conv2d(8, 8, 3, padding=1),
                                apply(torch.nn.Linear(8, 4)))
    state = model.state_dict()
    raw = "0.weight_orig" if form == "hook" else "0.parametrizations.weight.original"
    with pytest.raises(SpectralNormError, match=rf"^0: its weight is held by spectral norm \({re.escape(raw)}\).*exclude '0'$"):
        plan_state_dict(state, scale=2)
    plan = {e.name: e for e in plan_state_dict(state, scale=2, exclude=["0"])}
    spectral = [n for n in state if n.startswith("0.") and n != "0.bias"]
    assert len(spectral) == 3 and all(plan[n].action == "copy" and plan[n].reason == "spectral norm of 0: excluded by '0'" for n in spectral)
    assert plan["1.weight"].action == "resize"
    linear = [n for n in state if n.startswith("2.") and n != "2.bias"]
    assert all(plan[n].action == "copy" and plan[n].reason.startswith("spectral norm of 2: 2-D") for n in linear)


def test_geometry_only_implies_dilate_and_refuses_another_method():
    import torch

    import kernelscale.nn as knn
    from kernelscale import resize_conv
    from kernelscale.errors import InvalidOptionError
    from kernelscale.method import Method
    from kernelscale.options import ResizeOptions

    assert ResizeOptions(scale=2, geometry_only=True).method == "dilate"
    assert ResizeOptions(scale=2).method == "interp"
    for method in ("interp", "pinv", Method("interp")):
        with pytest.raises(InvalidOptionError, match="geometry_only=True is re-dilation, which implies method 'dilate'; got method='(interp|pinv)'"):
            ResizeOptions(scale=2, geometry_only=True, method=method)
    conv = torch.nn.Conv2d(2, 3, 3, padding=1)
    weight = conv.weight.detach().clone()
    knn.supersample(conv, 2, geometry_only=True)  # as the CLI's --geometry-only: no method needed
    assert conv.dilation == (2, 2) and conv.padding == (2, 2) and torch.equal(conv.weight, weight)
    assert resize_conv(weight, 2, padding=1, geometry_only=True).geometry.dilation == (2, 2)
    with pytest.raises(InvalidOptionError, match="implies method 'dilate'; got 'interp'"):
        resize_conv(weight, 2, padding=1, geometry_only=True, method="interp")
