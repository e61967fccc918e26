"""Weight-normed convs (w = g·v/‖v‖): v resized as the conv weight, g rescaled, exactly (kernelscale.plan).

Both of torch's forms are covered: ``torch.nn.utils.weight_norm`` (``weight_v``/``weight_g``) and
``torch.nn.utils.parametrizations.weight_norm`` (``parametrizations.weight.original1``/``original0``).

Tolerances. In float64 both sides are exact algebra: the reference c·R·(g·v/‖v‖) and the
resized pair's g'·v'/‖v'‖ with g' = g·‖v'‖/‖v‖ each take a few roundings per element (a sum of at
most k products for R, a norm over at most C·k' ≤ 120 squares, a division and a product), so they
agree to that count of ulps: 1e-12 relative to the largest tap is 30× above (C·k' + 10)·ε ≈ 3e-14
and still 1e8 below any wrong coefficient or norm. In float32/float16 files the effective weight
has only the rounding of the stored v' and g' (the norm is taken of v' as stored), each ≤ one
rounding of the output dtype, on top of the float32 arithmetic of the resize itself: within
F32_RTOL / F16_RTOL (below) of the float64 resize of the stored inputs' effective weight.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from kernelscale import plan_state_dict, resize_state_dict
from kernelscale.cli import main
from kernelscale.checkpoint_plan import plan_checkpoint
from kernelscale.errors import GeometryError, InvalidOptionError, WeightNormError
from kernelscale.nn import load, supersample
from kernelscale.options import ResizeOptions
from kernelscale.resize import resize_grid_linear, resize_kernel
from kernelscale.io.safetensors_io import SafetensorsWriter, read_header
from kernelscale.state_dict import apply_entry, apply_renorm

EXACT = 1e-12  # float64: see the module docstring
APIS = ("hook", "parametrization")
CONVS = {"Conv1d": lambda: nn.Conv1d(3, 4, 5, padding=2), "Conv2d": lambda: nn.Conv2d(3, 4, (3, 5), padding=(1, 2)),
         "ConvTranspose1d": lambda: nn.ConvTranspose1d(3, 4, 5, padding=2)}


def weight_normed(layer: nn.Module, api: str, dim=0) -> nn.Module:
    if api == "hook":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecated in favour of the parametrization; checkpoints hold it
            return nn.utils.weight_norm(layer, dim=dim)
    return nn.utils.parametrizations.weight_norm(layer, dim=dim)


def pair_names(api: str, layer: str = "") -> tuple[str, str]:
    """(v, g) tensor names of a weight-normed layer."""
    v, g = ("weight_v", "weight_g") if api == "hook" else ("parametrizations.weight.original1", "parametrizations.weight.original0")
    return (f"{layer}.{v}", f"{layer}.{g}") if layer else (v, g)


def effective(v: torch.Tensor, g: torch.Tensor, dim) -> torch.Tensor:
    """g·v/‖v‖ by hand, in float64: the norm over every axis but ``dim`` (all of v for None)."""
    v, g = v.double(), g.double()
    if dim is None:
        return g * v / v.norm()
    axes = [a for a in range(v.ndim) if a != dim]
    return g * v / v.pow(2).sum(dim=axes, keepdim=True).sqrt()


def rel_max(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def seeded(module: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) / max(1, p[0].numel() if p.ndim else 1) ** 0.5)
    return module


def detached(module: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# --- the state-dict API: the effective weight is the resized one, to float64 rounding ----------------


@pytest.mark.parametrize("conv", sorted(CONVS))
@pytest.mark.parametrize("dim", [0, 1, None])
@pytest.mark.parametrize("api", APIS)
def test_resized_pair_gives_the_resized_effective_weight(api, dim, conv):
    torch.manual_seed(0)
    layer = weight_normed(CONVS[conv]().double(), api, dim)
    v_name, g_name = pair_names(api)
    sd = detached(layer)
    w = effective(sd[v_name], sd[g_name], dim)
    torch.testing.assert_close(w, layer.weight.detach(), rtol=EXACT, atol=0)  # the hand-made w is torch's
    out, manifest = resize_state_dict(sd, 2)
    expected = resize_kernel(w, 2)
    assert out[v_name].shape == expected.shape and out[g_name].shape == sd[g_name].shape
    assert rel_max(effective(out[v_name], out[g_name], dim), expected) < EXACT
    assert out["bias"] is sd["bias"]
    v_record, g_record = manifest["tensors"][v_name], manifest["tensors"][g_name]
    assert v_record["kind"] == "conv" and v_record["new_spatial"] == list(expected.shape[2:])
    assert v_record["weight_norm"] == {"g": g_name, "dim": dim}
    assert g_record == {"kind": "weight_norm", "v": v_name, "dim": dim}
    json.dumps(manifest)


@pytest.mark.parametrize("options", [
    dict(mode="cubic"), dict(align="cells"), dict(method="dilate"), dict(method="pinv", mode="linear"),
    dict(absorb=["weight"]), dict(scale=(2, 3)), dict(scale=0.5, mode="cubic"),
], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_every_method_carries_over_to_the_pair(options):
    """The pair follows whatever the conv weight gets: methods, modes, alignments, absorb, per-axis
    and sub-unit scales (R is linear in every case, which is all the g rescale needs)."""
    options = dict(options)
    scale = options.pop("scale", 2)
    torch.manual_seed(1)
    layer = weight_normed(nn.Conv2d(2, 3, 3, padding=1).double(), "parametrization", 1)
    v_name, g_name = pair_names("parametrization")
    sd = detached(layer)
    out, _ = resize_state_dict(sd, scale, **options)
    reference, _ = resize_state_dict({"weight": layer.weight.detach()}, scale, **options)
    assert rel_max(effective(out[v_name], out[g_name], 1), reference["weight"]) < EXACT


def test_numpy_pair_and_apply_renorm_on_its_own():
    """numpy in, numpy out; apply_renorm computes v' itself when not given it, and apply_entry
    refuses a renorm entry (it needs v) rather than return g unchanged."""
    torch.manual_seed(2)
    layer = weight_normed(nn.Conv1d(2, 3, 5).double(), "hook", 0)
    sd = {k: v.numpy() for k, v in detached(layer).items()}
    out, _ = resize_state_dict(sd, 3)
    assert isinstance(out["weight_v"], np.ndarray) and isinstance(out["weight_g"], np.ndarray)
    expected = resize_kernel(layer.weight.detach(), 3)
    assert rel_max(effective(torch.from_numpy(out["weight_v"]), torch.from_numpy(out["weight_g"]), 0), expected) < EXACT
    plan = plan_state_dict(sd, scale=3)
    g_entry = plan["weight_g"]
    assert g_entry.action == "renorm" and g_entry.partner == plan["weight_v"]
    np.testing.assert_array_equal(apply_renorm(g_entry, sd["weight_g"], sd["weight_v"]), out["weight_g"])
    with pytest.raises(InvalidOptionError, match="^weight_g: .*apply_renorm"):
        apply_entry(g_entry, sd["weight_g"])


def test_geometry_only_keeps_both_tensors_whatever_the_dim():
    """Re-dilation keeps the weight, hence v and g, even with one norm per tap (nothing is resized)."""
    layer = weight_normed(nn.Conv1d(2, 3, 5, padding=2), "hook", 2)
    sd = detached(layer)
    out, manifest = resize_state_dict(sd, 2, method="dilate", geometry_only=True)
    assert all(out[k] is sd[k] for k in sd)
    assert list(manifest["tensors"]) == ["weight_v"] and manifest["tensors"]["weight_v"]["dilation"] == [2]
    assert plan_state_dict(sd, scale=2, method="dilate", geometry_only=True)["weight_g"].reason == \
        "weight norm of the root module: re-dilation keeps v, so g is kept"


def test_globs_name_a_weight_normed_layer_any_way():
    """Include, exclude and layer rules match the layer, its hidden weight or the real names."""
    model = nn.Sequential(weight_normed(nn.Conv1d(2, 2, 3), "hook"), weight_normed(nn.Conv1d(2, 2, 3), "parametrization"))
    sd = detached(model)
    for pattern in ("0", "0.weight", "0.weight_v", "0.*"):
        plan = plan_state_dict(sd, scale=2, include=[pattern])
        assert [e.name for e in plan.changed] == ["0.weight_g", "0.weight_v"], pattern
    plan = plan_state_dict(sd, scale=2, layers=[{"pattern": "1", "scale": 3}], exclude=["0.weight"])
    assert plan["1.parametrizations.weight.original1"].new_shape == (2, 2, 11) and not plan["0.weight_v"].changed


# --- what stays refused -----------------------------------------------------------------------------


@pytest.mark.parametrize("api", APIS)
def test_a_norm_per_kernel_tap_is_refused_by_name(api):
    """dim on a kernel axis: g has one value per tap, and the taps change, so no g' of g's shape
    keeps the weight; refused (also through the nn adapter), never left unresized."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), weight_normed(nn.Conv2d(2, 2, 3, padding=1), api, dim=3))
    v_name, g_name = pair_names(api, "1")
    sd = detached(model)
    with pytest.raises(WeightNormError, match=rf"^1: its weight is held by weight norm as {g_name} \(g, 1×1×1×3\) and "
                                              rf"{v_name} \(v, 2×2×3×3\) with one norm per index of axis 3, which the resize"):
        resize_state_dict(sd, 2)
    with pytest.raises(GeometryError, match="^1: its weight is held by weight norm"):
        supersample(model, 2)
    assert model[1].kernel_size == (3, 3) and model[0].kernel_size == (3, 3)


def test_a_pair_that_cannot_be_read_is_refused():
    layer = weight_normed(nn.Conv1d(2, 3, 5), "hook", 0)
    sd = detached(layer)
    with pytest.raises(WeightNormError, match=r"^weight_v: weight_v is weight norm's v, but there is no weight_g"):
        resize_state_dict({"weight_v": sd["weight_v"]}, 2)
    with pytest.raises(WeightNormError, match=r"g weight_g has shape 3, which is neither a scalar nor v's size on one axis"):
        resize_state_dict({"weight_v": sd["weight_v"], "weight_g": sd["weight_g"].reshape(3)}, 2)
    assert not resize_state_dict({"weight_v": sd["weight_v"]}, 2, exclude=["*"])[1]["tensors"]


# --- Linear layers: a grid and an attention rule ---------------------------------------------------------


def test_a_weight_normed_linear_over_a_grid():
    """A grid resizes each row's (H, W) planes: one norm per row (dim 0) or one over all follows
    exactly; one norm per input cell (dim 1) does not, and is refused."""
    torch.manual_seed(3)
    for dim in (0, None):
        model = nn.ModuleDict({"fc": weight_normed(nn.Linear(2 * 3 * 3, 4).double(), "hook", dim)})
        sd = detached(model)
        out, manifest = resize_state_dict(sd, 2, grids={"fc": (2, 3, 3)})
        expected = resize_grid_linear(model["fc"].weight.detach(), (2, 3, 3), 2)
        assert rel_max(effective(out["fc.weight_v"], out["fc.weight_g"], dim), expected) < EXACT
        assert manifest["tensors"]["fc.weight_v"]["kind"] == "grid"
    model = nn.ModuleDict({"fc": weight_normed(nn.Linear(2 * 3 * 3, 4), "hook", 1)})
    with pytest.raises(WeightNormError, match="^fc: .*one norm per index of axis 1"):
        resize_state_dict(detached(model), 2, grids={"fc": (2, 3, 3)})


@pytest.mark.parametrize("api", APIS)
def test_a_grid_may_name_the_weight_normed_linear_by_v_or_g(api, tmp_path, capsys):
    """A grid keyed by v's or g's real name applies to the pair exactly as one keyed by the layer:
    the state-dict API, a plan, and the convert command all resize it (none silently copies it)."""
    torch.manual_seed(4)
    model = nn.ModuleDict({"fc": weight_normed(nn.Linear(2 * 4 * 4, 3).double(), api, 0)})
    sd = detached(model)
    v, g = pair_names(api, "fc")
    want, want_manifest = resize_state_dict(sd, 2, grids={"fc": (2, 4, 4)})
    for name in (v, g, "fc.weight"):
        out, manifest = resize_state_dict(sd, 2, grids={name: (2, 4, 4)})
        assert manifest["tensors"] == want_manifest["tensors"] and set(manifest["tensors"]) == {v, g}, name
        assert all(torch.equal(out[k], want[k]) for k in sd), name
    with pytest.raises(InvalidOptionError, match=rf"^grids 'fc' \(2,4,4\) and {re.escape(repr(v))} \(1,4,8\) name the same weight fc\.weight"):
        plan_state_dict(sd, scale=2, grids={"fc": (2, 4, 4), v: (1, 4, 8)})
    assert plan_state_dict(sd, scale=2, grids={"fc": (2, 4, 4), g: (2, 4, 4)})[v].kind == "grid"
    src, out_path = tmp_path / "fcwn.safetensors", tmp_path / "out.safetensors"
    save_file({k: t.contiguous() for k, t in sd.items()}, str(src))
    assert main(["convert", str(src), str(out_path), "--scale", "2", "--grid", f"{v}=2,4,4"]) == 0
    assert "2 resized" in capsys.readouterr().err
    assert load_file(str(out_path))[v].shape == (3, 2 * 8 * 8)


@pytest.mark.parametrize("api", APIS)
def test_an_attention_rule_on_a_weight_normed_query_scales_g(api):
    """w = g·v/‖v‖ is linear in g and does not depend on v's scale: the factor goes on g."""
    torch.manual_seed(4)
    model = nn.ModuleDict({"to_q": weight_normed(nn.Linear(4, 4).double(), api)})
    sd = detached(model)
    v_name, g_name = pair_names(api, "to_q")
    out, manifest = resize_state_dict(sd, 2, attention=[{"pattern": "to_q", "tokens": 64}])
    factor = math.sqrt(math.log(256) / math.log(64))
    assert out[v_name] is sd[v_name] and manifest["tensors"][g_name]["kind"] == "attention"
    torch.testing.assert_close(effective(out[v_name], out[g_name], 0), model["to_q"].weight.detach() * factor, rtol=EXACT, atol=0)
    torch.testing.assert_close(out["to_q.bias"], sd["to_q.bias"] * factor, rtol=EXACT, atol=0)
    report = supersample(model, 2, attention=[{"pattern": "to_q", "tokens": 64}])
    assert report.names() == ["to_q"]
    torch.testing.assert_close(model["to_q"].weight.detach(), effective(out[v_name], out[g_name], 0), rtol=EXACT, atol=0)


# --- the converter: streamed, in either file order, in another shard ---------------------------------------


def vocoder_layer_state(api: str, dtype: torch.dtype) -> dict:
    """Two weight-normed 1-D convs (dims 0 and 1), a weight-normed ConvTranspose1d (one norm) and a bias."""
    torch.manual_seed(5)
    model = nn.Sequential(weight_normed(nn.Conv1d(3, 8, 7, padding=3), api, 0), weight_normed(nn.Conv1d(8, 8, 3, padding=1), api, 1),
                          weight_normed(nn.ConvTranspose1d(8, 4, 5, padding=2), api, None))
    return {k: v.to(dtype).contiguous() for k, v in detached(model).items()}


DIMS = {"0": 0, "1": 1, "2": None}


def save_in_order(sd: dict, path: Path, order: list[str]) -> None:
    """A safetensors file holding ``sd``'s tensors in ``order`` (the reference library sorts them)."""
    from kernelscale.dtypes import dtype_name

    specs = [(n, dtype_name(sd[n].dtype), tuple(sd[n].shape)) for n in order]
    with SafetensorsWriter(path, specs, {"format": "pt"}) as writer:
        for n in order:
            writer.write_tensor(n, sd[n])


def check_converted(sd: dict, out: dict, api: str, rtol: float, scale: int = 2) -> None:
    """Every layer's effective weight from the converted tensors against c·R·w of the input's
    stored values in float64, within ``rtol`` per tap (plus the output dtype's subnormal step)."""
    for layer, dim in DIMS.items():
        v_name, g_name = pair_names(api, layer)
        assert out[g_name].dtype == out[v_name].dtype == sd[v_name].dtype and out[g_name].shape == sd[g_name].shape
        expected = resize_kernel(effective(sd[v_name], sd[g_name], dim), scale)
        got = effective(out[v_name], out[g_name], dim)
        torch.testing.assert_close(got, expected, rtol=rtol, atol=subnormal_step(out[v_name], expected))


def subnormal_step(v: torch.Tensor, w: torch.Tensor) -> float:
    """The dtype's spacing below its smallest normal (twice the rounding of a subnormal v' entry),
    in units of the effective weight w' (≈ v'·max|w'|/max|v'|)."""
    info = torch.finfo(v.dtype)
    return (info.smallest_normal * info.eps * w.abs().max() / v.double().abs().max()).item()


# The resize itself runs in float32: at s = 2 with linear taps each new tap sums at most 2 products
# (≤ 3 roundings of 2⁻²⁴); then v' and g' are rounded once each to the output dtype.
F32_RTOL = 8 * 2.0 ** -24
F16_RTOL = 2 * 2.0 ** -11 + 8 * 2.0 ** -24


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, F32_RTOL), (torch.float16, F16_RTOL)], ids=["F32", "F16"])
@pytest.mark.parametrize("order", ["g first", "v first"])
@pytest.mark.parametrize("api", APIS)
def test_convert_streams_the_pair_exactly(tmp_path, capsys, api, order, dtype, rtol):
    sd = vocoder_layer_state(api, dtype)
    names = sorted(sd)  # the reference library's order: g (weight_g, original0) before v
    if order == "v first":
        names = sorted(names, key=lambda n: (n.split(".")[0], "original0" in n or "weight_g" in n))
    v_first = names.index(pair_names(api, "0")[0]) < names.index(pair_names(api, "0")[1])
    assert v_first == (order == "v first")
    src, dst = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    save_in_order(sd, src, names)
    assert main(["convert", str(src), str(dst), "--scale", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tensors_resized"] == 6 and summary["tensors_copied"] == 3  # v and g of 3 layers; the biases
    out = load_file(str(dst))
    check_converted(sd, out, api, rtol)
    reference, _ = resize_state_dict(sd, 2)  # the state-dict API: the same operator, to one rounding
    for name in out:
        torch.testing.assert_close(out[name], reference[name], rtol=rtol, atol=0)
    assert list(read_header(dst)[1]) == names  # file order kept


def test_convert_renorms_from_v_in_blocks_of_rows(tmp_path, monkeypatch):
    """With one row of v per block (as a large v would be read), the squared norms add up across
    blocks (dim 1, one norm) or line up per row (dim 0): the same g' as from the whole v."""
    import kernelscale.stream

    sd = vocoder_layer_state("hook", torch.float32)
    src = tmp_path / "in.safetensors"
    save_file(sd, str(src))
    assert main(["convert", str(src), str(tmp_path / "whole.safetensors"), "--scale", "2"]) == 0
    monkeypatch.setattr(kernelscale.stream, "COMPUTE_BYTES", {"cpu": 4, "cuda": 4})
    assert main(["convert", str(src), str(tmp_path / "rows.safetensors"), "--scale", "2"]) == 0
    whole, rows = load_file(str(tmp_path / "whole.safetensors")), load_file(str(tmp_path / "rows.safetensors"))
    for name in whole:
        torch.testing.assert_close(rows[name], whole[name], rtol=F32_RTOL, atol=0)
    check_converted(sd, rows, "hook", F32_RTOL)


def test_convert_with_an_output_dtype_and_v_in_another_shard(tmp_path, capsys):
    """--dtype: g' is rounded once to it, from the v' stored in that dtype; a g whose v sits in
    another shard reads it there."""
    sd = vocoder_layer_state("hook", torch.float32)
    folder = tmp_path / "in"
    folder.mkdir()
    v_names = [n for n in sd if n.endswith("weight_v")]
    shards = {"model-00001-of-00002.safetensors": [n for n in sd if n not in v_names], "model-00002-of-00002.safetensors": v_names}
    for shard, names in shards.items():
        save_file({n: sd[n] for n in names}, str(folder / shard))
    weight_map = {n: shard for shard, names in shards.items() for n in names}
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    plan = plan_checkpoint(index, ResizeOptions(scale=2), dtype="float16")
    v_bytes = sum(math.prod(e.new_shape) * 2 for fp in plan.files for e in fp.entries if e.name in v_names)
    assert plan.bytes_resized == 2 * v_bytes  # each v' is computed twice: written, and for its g's norms
    assert plan.counts() == {"resize": 6, "rescale": 0, "dilate": 0, "factored": 0, "cast": 3, "copy": 0}  # g counts as resized; the biases are cast
    assert main(["convert", str(index), str(tmp_path / "out"), "--scale", "2", "--dtype", "float16"]) == 0
    capsys.readouterr()
    out = {}
    for shard in shards:
        out.update(load_file(str(tmp_path / "out" / shard)))
    for layer, dim in DIMS.items():  # resized from the F32 values, rounded once to F16
        v_name, g_name = pair_names("hook", layer)
        expected = resize_kernel(effective(sd[v_name], sd[g_name], dim), 2)
        got = effective(out[v_name], out[g_name], dim)
        assert out[g_name].dtype == out[v_name].dtype == torch.float16
        torch.testing.assert_close(got, expected, rtol=F16_RTOL, atol=subnormal_step(out[v_name], expected))


def test_inspect_says_what_happens_to_g(tmp_path, capsys):
    sd = vocoder_layer_state("parametrization", torch.float32)
    src, dst = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    save_file(sd, str(src))
    assert main(["inspect", str(src), "--scale", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    g_line = next(line for line in lines if line.startswith("0.parametrizations.weight.original0 "))
    assert g_line == ("0.parametrizations.weight.original0  F32  8×1×1  renorm: weight norm of 0: rescaled for the resized "
                      "0.parametrizations.weight.original1, g·‖v′‖/‖v‖ (one norm per index of axis 0)")
    v_line = next(line for line in lines if line.startswith("0.parametrizations.weight.original1 "))
    assert "3×7 -> 8×3×15  resize: weight norm of 0: interp/linear/taps (conv kernel)" in v_line
    assert "(one norm over all of v)" in next(line for line in lines if line.startswith("2.parametrizations.weight.original0 "))
    assert main(["inspect", str(src), "--scale", "2", "--json"]) == 0
    tensors = {t["name"]: t for t in json.loads(capsys.readouterr().out)["files"][0]["tensors"]}
    assert tensors["1.parametrizations.weight.original0"]["action"] == "renorm"
    assert main(["convert", str(src), str(dst), "--scale", "2"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(dst)]) == 0
    text = capsys.readouterr().out
    assert ("1.parametrizations.weight.original0  F32  1×8×1  converted: weight norm's g, rescaled for the resized "
            "1.parametrizations.weight.original1 (one norm per index of axis 1)") in text
    assert main(["verify", str(src), str(dst)]) == 0  # one row per layer: its effective weight g·v/‖v‖, named by v
    table = capsys.readouterr().out
    assert "original1 (weight norm)" in table and "original0" not in table


# --- the nn adapter: supersample() and load() set v and g, and the layer's weight follows ----------------


def vocoder_stack(api: str) -> nn.Module:
    """A tiny HiFi-GAN-like stride-1 stack: a weight-normed conv per norm axis and a transposed conv."""
    torch.manual_seed(6)
    return seeded(nn.Sequential(
        weight_normed(nn.Conv1d(1, 8, 7, padding=3), api, 0), nn.LeakyReLU(0.1),
        weight_normed(nn.Conv1d(8, 8, 3, padding=3, dilation=3), api, 1), nn.LeakyReLU(0.1),
        weight_normed(nn.ConvTranspose1d(8, 4, 5, padding=2), api, None), nn.LeakyReLU(0.1),
        weight_normed(nn.Conv1d(4, 1, 7, padding=3), api, 0), nn.Tanh(),
    ).double())


@pytest.mark.parametrize("geometry_only", [False, True])
@pytest.mark.parametrize("api", APIS)
def test_supersampled_weight_normed_stack_is_exact_on_nearest_upsampled_audio(tmp_path, api, geometry_only):
    """T1 through weight norm: re-dilated, the stack on the nearest-upsampled signal is the
    nearest-upsampled output (16 kHz → 32 kHz), borders included; load() of the converted file
    gives the same module bit for bit."""
    t = torch.arange(64, dtype=torch.float64) / 16
    x = (torch.sin(2 * math.pi * 0.7 * t) + 0.5 * torch.cos(2 * math.pi * 1.9 * t)).reshape(1, 1, -1)
    up = lambda y: F.interpolate(y, scale_factor=2, mode="nearest")  # noqa: E731
    original = vocoder_stack(api)
    expected = up(original(x))
    model = vocoder_stack(api)
    report = supersample(model, 2, method="dilate", geometry_only=geometry_only)
    assert report.names() == ["0", "2", "4", "6"]
    y = model(up(x))
    assert ((y - expected).norm() / expected.norm()).item() < EXACT

    save_file(detached(original), str(tmp_path / "in.safetensors"))
    assert main(["convert", str(tmp_path / "in.safetensors"), str(tmp_path / "out.safetensors"), "--scale", "2", "--method", "dilate",
                 *(["--geometry-only"] if geometry_only else [])]) == 0
    loaded = vocoder_stack(api)
    assert [c.describe() for c in load(loaded, tmp_path / "out.safetensors")] == [c.describe() for c in report]
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    assert torch.equal(loaded(up(x)), y)


@pytest.mark.parametrize("api", APIS)
def test_supersample_interp_sets_v_g_and_the_layers_weight_at_once(api):
    model = vocoder_stack(api)
    v_name, g_name = pair_names(api)
    w = effective(model[2].state_dict()[v_name], model[2].state_dict()[g_name], 1)  # the hook's weight is set at each forward
    v_param = model[2].state_dict(keep_vars=True)[v_name]
    supersample(model, 2, mode="cubic")
    assert model[2].state_dict(keep_vars=True)[v_name] is v_param  # the same Parameter, new data
    assert model[2].kernel_size == (11,) and model[2].padding == (15,) and model[2].weight.shape == (8, 8, 11)
    assert rel_max(model[2].weight.detach(), resize_kernel(w, 2, mode="cubic")) < EXACT


def test_a_conv_named_like_weight_norm_without_it_is_refused():
    """A module tensor named weight_v that is no weight norm's (a custom layer) is not patched blindly."""
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(2, 2, 3)
            self.conv.weight_v = nn.Parameter(torch.randn(2, 2, 3))
            self.conv.weight_g = nn.Parameter(torch.ones(2, 1, 1))

    with pytest.raises(GeometryError, match=r"^conv\.weight_v: named as weight norm's v, but 'conv' has no weight norm"):
        supersample(Odd(), 2)


# --- training after a resize: forward, backward, optimiser step ------------------------------------------


def trainable(kind: str, api) -> nn.Module:
    layer = nn.Conv1d(2, 3, 3, padding=1) if kind == "Conv1d" else nn.ConvTranspose1d(2, 3, 3, padding=1)
    torch.manual_seed(4)
    return nn.Sequential(weight_normed(layer, api) if api else layer, nn.Tanh())


def one_step(model: nn.Module, n: int) -> None:
    """Forward, backward and an Adam step on an n-sample input: every parameter gets a gradient of
    its own shape and moves."""
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    optimiser.zero_grad()
    model(torch.randn(2, 2, n)).square().mean().backward()
    optimiser.step()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.shape == param.shape, name
        assert not torch.equal(param.detach(), before[name]), name


@pytest.mark.parametrize("kind", ["Conv1d", "ConvTranspose1d"])
@pytest.mark.parametrize("api", [None, *APIS])
@pytest.mark.parametrize("via", ["supersample", "load"])
def test_a_resized_layer_trains(tmp_path, kind, api, via):
    """Fine-tuning after supersample or load: a plain conv, both weight-norm forms, a transposed conv,
    with a graph of an earlier forward still alive (``loss`` in scope; the old weight_norm keeps one
    anyway, its ``weight`` computed at registration) and a gradient of the old shape; backward through
    that earlier graph is refused afterwards, not computed with the new weights."""
    model = trainable(kind, api)
    model(torch.randn(2, 2, 20)).sum().backward()  # a .grad of the old shape
    loss = model(torch.randn(2, 2, 20)).sum()  # an earlier graph, still alive
    if via == "supersample":
        report = supersample(model, 2, execution="materialised")  # FactoredConv training: tests/test_factored_execution.py
    else:
        save_file(detached(trainable(kind, api)), str(tmp_path / "in.safetensors"))
        assert main(["convert", str(tmp_path / "in.safetensors"), str(tmp_path / "out.safetensors"), "--scale", "2"]) == 0
        report = load(model, tmp_path / "out.safetensors")
    assert report.names() == ["0"] and model[0].kernel_size == (7,)
    one_step(model, 40)
    one_step(model, 40)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("via", ["supersample", "load"])
def test_the_old_weight_norm_trains_right_after_a_resize(tmp_path, via):
    """torch.nn.utils.weight_norm computes ``weight`` with a graph at registration, which kept v's
    old-shape gradient accumulator alive: backward after the resize failed on the shape."""
    model = nn.Sequential(weight_normed(nn.Conv1d(2, 2, 3, padding=1), "hook"))
    if via == "supersample":
        supersample(model, 2)
    else:
        save_file(detached(model), str(tmp_path / "in.safetensors"))
        assert main(["convert", str(tmp_path / "in.safetensors"), str(tmp_path / "out.safetensors"), "--scale", "2"]) == 0
        load(model, tmp_path / "out.safetensors")
    model(torch.randn(1, 2, 40)).sum().backward()
    assert model[0].weight_v.grad.shape == (2, 2, 7)
