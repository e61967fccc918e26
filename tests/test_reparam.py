"""kernelscale.reparam: weight norm and spectral norm mapped to a plain weight before planning and
back after, one strategy per form; the module side (which form a live layer uses)."""

import pytest
import torch
from torch import nn

from kernelscale.errors import InvalidOptionError, SpectralNormError, WeightNormError
from kernelscale.manifest import Action, RenormRecord, SpectralNormLink, WeightNormLink
from kernelscale.plan import TensorPlan, TensorSpec, plan_tensors
from kernelscale.options import AttentionRule, ResizeOptions
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


# --- execution: g' from v' block by block, the plain weight for verify, the live layer's weight ----


def _weight_normed(api: str, dim, layer=None):
    import warnings

    torch.manual_seed(3)
    layer = layer if layer is not None else nn.Conv2d(3, 6, (3, 5), padding=(1, 2)).double()
    if api == "hook":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            layer = nn.utils.weight_norm(layer, dim=dim)
    else:
        layer = nn.utils.parametrizations.weight_norm(layer, dim=dim)
    with torch.no_grad():  # g ≠ ‖v‖, as after training
        for name, p in layer.named_parameters():
            if name.endswith(("weight_g", "original0")):
                p.mul_(torch.rand(p.shape, dtype=p.dtype) + 0.5)
        layer(torch.zeros(1, 3, 5, 5, dtype=torch.float64))  # torch's own hook recomputes the hook form's weight
    return layer


def _renorm_entries(state):
    from kernelscale.state_dict import plan_state_dict

    plan = plan_state_dict(state, scale=2)
    g_entry = next(e for e in plan if e.action == Action.RENORM)
    return g_entry, g_entry.partner


EPS64 = 2.0 ** -53


@pytest.mark.parametrize("rows", [1, 2, 4])
@pytest.mark.parametrize("api, dim", [("hook", 0), ("hook", 1), ("hook", None), ("parametrization", 0), ("parametrization", 1)])
def test_rescaled_g_from_blocks_of_rows_is_g_from_the_whole_v(api, dim, rows):
    """g' from v and v' handed over in blocks of ``rows`` rows equals g' from the whole tensors:
    the squared norms are float64 sums of at most numel(v') squares, reordered across blocks, so
    they agree to numel·ε relative (a square root halves it, the product with g adds an ulp)."""
    from kernelscale.reparam import rescaled_g
    from kernelscale.state_dict import apply_entry

    state = {k: t.detach().clone() for k, t in _weight_normed(api, dim).state_dict().items()}
    g_entry, v_entry = _renorm_entries(state)
    v, g = state[v_entry.name], state[g_entry.name]
    v_new = apply_entry(v_entry, v)
    whole = rescaled_g(g_entry, g, [(v, v_new)])
    blocks = rescaled_g(g_entry, g, ((v[i:i + rows], v_new[i:i + rows]) for i in range(0, v.shape[0], rows)))
    assert blocks.shape == whole.shape == g.shape and blocks.dtype == g.dtype
    torch.testing.assert_close(blocks, whole, rtol=(v.numel() + v_new.numel() + 4) * EPS64, atol=0)
    assert not torch.equal(whole, g)  # the resize changed the norms: g' is not g


@pytest.mark.parametrize("api, dim", [("hook", 0), ("hook", 1), ("hook", None), ("parametrization", 0), ("parametrization", 1)])
def test_plain_weight_is_torchs_weight_norm_and_follows_the_resize(api, dim):
    """plain_weight(v, g) is the weight torch's weight norm computes (both forms; float64: equal to
    the rounding of a norm over n squares, (n + 4)·ε relative), and after a resize the plain weight
    of (v', g') is c·R applied to the old plain weight (float64 algebra, 1e-12 of the largest tap as
    in tests/test_weight_norm.py)."""
    from kernelscale.reparam import norm_dim, plain_weight, rescaled_g
    from kernelscale.resize import resize_kernel
    from kernelscale.state_dict import apply_entry

    layer = _weight_normed(api, dim)
    state = {k: t.detach().clone() for k, t in layer.state_dict().items()}
    g_entry, v_entry = _renorm_entries(state)
    v, g = state[v_entry.name], state[g_entry.name]
    link = v_entry.record.weight_norm
    assert link == WeightNormLink(g_entry.name, dim) and norm_dim(link.g, g.shape, v_entry.name, v.shape) == dim
    w = plain_weight(v, g, link)
    n = v.numel() // (v.shape[dim] if dim is not None else 1)
    torch.testing.assert_close(w, layer.weight.detach(), rtol=(n + 4) * EPS64, atol=0)
    v_new = apply_entry(v_entry, v)
    w_new = plain_weight(v_new, rescaled_g(g_entry, g, [(v, v_new)]), link)
    expected = resize_kernel(w, 2)
    torch.testing.assert_close(w_new, expected, rtol=0, atol=1e-12 * expected.abs().max().item())


def test_rescaled_g_refuses_other_entries_and_keeps_g_of_an_empty_v():
    from kernelscale.reparam import rescaled_g

    state = {k: t.detach().clone() for k, t in _weight_normed("hook", 0).state_dict().items()}
    g_entry, v_entry = _renorm_entries(state)
    with pytest.raises(InvalidOptionError, match=r"^weight_v: rescaled_g executes weight norm's renorm entries, not 'resize' ones"):
        rescaled_g(v_entry, state["weight_v"], [])
    kept = rescaled_g(g_entry, state["weight_g"], [], out_dtype=torch.float16)  # no rows of v: nothing to follow
    assert kept.dtype == torch.float16 and torch.equal(kept, state["weight_g"].half())


def test_g_found_by_name_and_its_dim_by_shape():
    from kernelscale.reparam import g_fits, norm_dim, weight_norm_g_name

    assert weight_norm_g_name("a.weight_v") == "a.weight_g"
    assert weight_norm_g_name("a.parametrizations.weight.original1") == "a.parametrizations.weight.original0"
    assert weight_norm_g_name("a.weight_g") is None and weight_norm_g_name("a.weight") is None
    assert g_fits((4, 1, 1), (4, 2, 3), 0) and g_fits((1, 2, 1), (4, 2, 3), 1) and g_fits((), (4, 2, 3), None)
    assert not g_fits((4, 1, 1), (4, 2, 3), 1) and not g_fits((4,), (4, 2, 3), 0)
    assert norm_dim("g", (1, 1, 1), "v", (1, 2, 3)) is None  # size 1 on the axis: dim 0 and None are the same norm
    with pytest.raises(WeightNormError, match=r"^g is 4×2×1, which is neither a scalar nor v's size on one axis .*v v is 4×2×3"):
        norm_dim("g", (4, 2, 1), "v", (4, 2, 3))


@pytest.mark.filterwarnings("ignore:.*torch.nn.utils.weight_norm.* is deprecated:FutureWarning")
def test_which_live_layer_a_planned_weight_patches():
    from kernelscale.errors import GeometryError
    from kernelscale.reparam import planned_weight, reparametrized_by, weight_layer

    hook, param = nn.utils.weight_norm(nn.Conv2d(2, 4, 3)), nn.utils.parametrizations.weight_norm(nn.Conv2d(2, 4, 3))
    spectral, plain = nn.utils.spectral_norm(nn.Conv2d(2, 4, 3)), nn.Conv2d(2, 4, 3)
    assert [reparametrized_by(m) for m in (hook, param, spectral, plain)] == ["weight norm", "weight norm", "spectral norm", None]
    assert [weight_layer(n) for n in ("c.weight_v", "c.parametrizations.weight.original1", "c.weight_orig", "c.weight_g",
                                      "c.weight_u", "c.weight")] == ["c", "c", "c", None, None, None]
    assert planned_weight("c", hook, "c.weight_v") == planned_weight("c", param, "c.parametrizations.weight.original1") == "weight"
    assert planned_weight("c", spectral, "c.weight_orig") == "weight" and planned_weight("c", plain, "c.weight") is None
    with pytest.raises(GeometryError, match=r"^c\.weight_v: named as weight norm's v, but 'c' has no weight norm"):
        planned_weight("c", plain, "c.weight_v")
    with pytest.raises(GeometryError, match=r"^c\.weight_orig: named as spectral norm's raw weight, but 'c' has no spectral norm"):
        planned_weight("c", hook, "c.weight_orig")
