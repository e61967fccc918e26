"""kernelscale.reparam: weight norm and spectral norm mapped to a plain weight before planning and
back after, one strategy per form; the module side (which form a live layer uses)."""

import pytest
import torch
from torch import nn

from kernelscale.errors import SpectralNormError, WeightNormError
from kernelscale.manifest import Action, RenormRecord, SpectralNormLink, WeightNormLink
from kernelscale.plan import AttentionRule, ResizeOptions, TensorPlan, TensorSpec, plan_tensors
from kernelscale.reparam import (
    SpectralNorm,
    WeightNorm,
    find_reparametrized,
    glob_names,
    refresh_weight_norm,
    reparametrized_layer,
    spectral_norm_layer,
    spectral_norm_of,
    stand_in_name,
    weight_norm_dim,
    weight_norm_of,
    weight_norm_parts,
)


def copy(spec: TensorSpec, reason: str) -> TensorPlan:
    return TensorPlan(spec.name, spec.dtype, spec.shape, Action.COPY, reason, spec.shape)


def decide(layer, **options) -> TensorPlan:
    """The planner's decision on the layer's plain weight."""
    return plan_tensors([layer.stand_in], ResizeOptions(**{"scale": 2, **options}))[layer.stand_in.name]


def test_names_of_both_forms():
    assert weight_norm_parts("a.conv.weight_v") == ("a.conv", "a.conv.weight_v", "a.conv.weight_g")
    assert weight_norm_parts("a.parametrizations.weight.original0") == (
        "a", "a.parametrizations.weight.original1", "a.parametrizations.weight.original0")
    assert weight_norm_parts("a.conv.weight") is None
    assert spectral_norm_layer("d.weight_orig") == "d" and spectral_norm_layer("d.parametrizations.weight.original") == "d"
    assert spectral_norm_layer("d.weight") is None
    assert stand_in_name("a.conv") == "a.conv.weight" and stand_in_name("") == "weight"
    assert [reparametrized_layer(n) for n in ("a.weight_g", "a.parametrizations.weight.original1", "d.weight_orig", "d.weight")] == [
        "a", "a", "d", None]
    # a glob may name the plain weight of a weight-normed layer; spectral norm's weight_v is no weight norm
    assert glob_names(["a.weight_v", "a.weight_g", "d.weight_orig", "d.weight_u", "d.weight_v"]) == {
        "a.weight_v", "a.weight_g", "a.weight", "d.weight_orig", "d.weight_u", "d.weight_v", "d.weight"}


def test_find_one_strategy_per_layer():
    specs = [TensorSpec("d.weight_orig", "F32", (4, 4, 3, 3)), TensorSpec("d.weight_u", "F32", (4,)),
             TensorSpec("d.weight_v", "F32", (36,)), TensorSpec("a.weight_g", "F32", (4, 1, 1, 1)),
             TensorSpec("a.weight_v", "F32", (4, 2, 3, 3))]
    found = find_reparametrized(specs)
    assert [type(f) for f in found] == [WeightNorm, SpectralNorm]
    wn, sn = found
    assert (wn.layer, wn.v.name, wn.g.name, wn.aliases) == ("a", "a.weight_v", "a.weight_g", ("a.weight_v", "a.weight_g"))
    assert wn.stand_in == TensorSpec("a.weight", "F32", (4, 2, 3, 3))
    assert (sn.raw.name, [t.name for t in sn.tensors], sn.stand_in.name) == ("d.weight_orig", ["d.weight_orig", "d.weight_u", "d.weight_v"], "d.weight")


def test_weight_norm_dim_from_shapes():
    v = TensorSpec("a.weight_v", "F32", (4, 2, 3, 3))
    assert weight_norm_dim("a", v, TensorSpec("a.weight_g", "F32", (4, 1, 1, 1))) == 0
    assert weight_norm_dim("a", v, TensorSpec("a.weight_g", "F32", (1, 2, 1, 1))) == 1
    assert weight_norm_dim("a", v, TensorSpec("a.weight_g", "F32", ())) is None
    with pytest.raises(WeightNormError, match=r"a: weight norm's g a\.weight_g has shape 4×2×1×1"):
        weight_norm_dim("a", v, TensorSpec("a.weight_g", "F32", (4, 2, 1, 1)))


def _pair(g_shape=(4, 1, 1, 1), g_dtype="F32"):
    return WeightNorm("a", TensorSpec("a.weight_v", "F32", (4, 2, 3, 3)), TensorSpec("a.weight_g", g_dtype, g_shape))


def test_weight_norm_resized_maps_back_to_v_and_renorm_of_g():
    pair = _pair()
    decision = decide(pair)
    out = pair.restore(decision, copy)
    v, g = out["a.weight_v"], out["a.weight_g"]
    assert v.action == Action.RESIZE and v.new_shape == (4, 2, 7, 7) and v.record.weight_norm == WeightNormLink("a.weight_g", 0)
    assert v.operator is decision.operator and v.method == decision.method
    assert g.action == Action.RENORM and g.shape == g.new_shape == (4, 1, 1, 1) and g.record == RenormRecord("a.weight_v", 0)
    assert g.partner is v and g.operator is None
    assert "weight norm of a" in v.reason and "g·‖v′‖/‖v‖ (one norm per index of axis 0)" in g.reason


def test_weight_norm_other_decisions():
    pair = _pair()
    copies = pair.restore(decide(pair, exclude=("a",)), copy)
    assert [e.action for e in copies.values()] == [Action.COPY, Action.COPY] and "excluded by 'a'" in copies["a.weight_g"].reason
    geometry = pair.restore(decide(pair, method="dilate", geometry_only=True), copy)
    assert (geometry["a.weight_v"].action, geometry["a.weight_g"].action) == (Action.GEOMETRY, Action.COPY)
    attention = pair.restore(decide(pair, attention=(AttentionRule("a", tokens=64),)), copy)
    assert attention["a.weight_v"].action == Action.COPY and attention["a.weight_g"].record.kind == "attention"


@pytest.mark.parametrize("pair, message", [
    (WeightNorm("a", TensorSpec("a.weight_v", "F32", (4, 2, 3, 3)), None), r"a: a\.weight_v is weight norm's v, but there is no a\.weight_g"),
    (_pair(g_dtype="I64"), r"a: weight norm's g a\.weight_g is a I64 tensor"),
    (WeightNorm("a", TensorSpec("a.weight_v", "F32", (4, 2, 3, 3)), TensorSpec("a.weight_g", "F32", (1, 1, 3, 1))),
     r"one norm per index of axis 2, which the resize changes"),
])
def test_weight_norm_refusals(pair, message):
    with pytest.raises(WeightNormError, match=message):
        pair.restore(decide(pair), copy)


def test_spectral_norm_only_re_dilates():
    layer = SpectralNorm("d", TensorSpec("d.weight_orig", "F32", (4, 4, 3, 3)),
                         (TensorSpec("d.weight_orig", "F32", (4, 4, 3, 3)), TensorSpec("d.weight_u", "F32", (4,))))
    geometry = layer.restore(decide(layer, method="dilate", geometry_only=True), copy)
    assert geometry["d.weight_orig"].action == Action.GEOMETRY
    assert geometry["d.weight_orig"].record.spectral_norm == SpectralNormLink("d.weight_u", None)
    assert geometry["d.weight_u"].action == Action.COPY
    with pytest.raises(SpectralNormError, match=r"^d: its weight is held by spectral norm \(d\.weight_orig\)"):
        layer.restore(decide(layer), copy)
    assert {e.action for e in layer.restore(decide(layer, exclude=("d",)), copy).values()} == {Action.COPY}


@pytest.mark.filterwarnings("ignore:.*torch.nn.utils.weight_norm.* is deprecated:FutureWarning")
def test_module_side_forms():
    plain, hook, param = nn.Conv2d(2, 4, 3), nn.utils.weight_norm(nn.Conv2d(2, 4, 3)), nn.utils.parametrizations.weight_norm(nn.Conv2d(2, 4, 3))
    assert (weight_norm_of(plain), weight_norm_of(hook), weight_norm_of(param)) == (None, "hook", "parametrization")
    assert spectral_norm_of(nn.utils.spectral_norm(nn.Conv2d(2, 4, 3))) == "hook" and spectral_norm_of(hook) is None
    with torch.no_grad():
        hook.weight_g.mul_(2)
    refresh_weight_norm([hook])  # the hook form's weight is a plain attribute, recomputed here
    v = hook.weight_v
    expected = hook.weight_g * v / v.pow(2).sum(dim=(1, 2, 3), keepdim=True).sqrt()
    assert torch.allclose(hook.weight, expected)


@pytest.mark.parametrize("dim, g_shape", [(0, (4, 1, 1, 1)), (1, (1, 2, 1, 1)), (None, ())])
def test_v_and_g_to_the_plain_weight_and_back(dim, g_shape):
    """g'·v'/‖v'‖ = c·R·(g·v/‖v‖) with v' = c·R·v and g' = g·‖v'‖/‖v‖ (float64: exact to rounding)."""
    from kernelscale.reparam import effective_weight, rescale_weight_norm_g, weight_norm_squares
    from kernelscale.resize import resize_kernel

    torch.manual_seed(0)
    v, g = torch.randn(4, 2, 3, 3, dtype=torch.float64), torch.rand(g_shape, dtype=torch.float64) + 0.5
    w = effective_weight(v, g, dim)
    v_new = resize_kernel(v, 2, mode="cubic")
    g_new = rescale_weight_norm_g(g, weight_norm_squares(v, dim), weight_norm_squares(v_new, dim))
    assert g_new.shape == g.shape
    assert torch.allclose(effective_weight(v_new, g_new, dim), resize_kernel(w, 2, mode="cubic"), rtol=0, atol=1e-12)
