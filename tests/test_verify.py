"""verify's measures against the closed forms of DESIGN §4."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from kernelscale import plan_state_dict, resize_kernel, resize_state_dict
from kernelscale.method import MODES
from kernelscale.transforms import frequency_response
from kernelscale.verify import certify_conv, certify_record


def kernels(shape=(6, 5, 3, 3), seed=0):
    return torch.tensor(np.random.default_rng(seed).standard_normal(shape))


def test_dilation_structure_error_is_rounding():
    k = kernels()
    cert = certify_conv("c", k, resize_kernel(k, 2, method="dilate"), [2, 2])
    # T1: H'(ω) = H(sω) exactly; complex128 sums of ≤ 25 terms: ≪ 1e-12 relative.
    assert cert.structure_error < 1e-12
    assert cert.dc_gain_ratio == pytest.approx(1.0, abs=1e-12)


def test_geometry_only_dilation_measures_like_the_zero_inserted_kernel():
    k = kernels()
    geo = certify_conv("c", k, k, [2, 2], dilation=[2, 2])
    full = certify_conv("c", k, resize_kernel(k, 2, method="dilate"), [2, 2])
    assert geo.structure_error < 1e-12
    assert geo.alias_gain == pytest.approx(full.alias_gain, rel=1e-12)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("band", [0.1, 0.25, 0.4])
def test_interp_taps_structure_error_within_t3_bound(mode, band):
    k = kernels()
    s = 2
    cert = certify_conv("c", k, resize_kernel(k, s, mode=mode), [s, s], band=band)
    nu = np.linspace(0, band, 200)
    response = frequency_response(mode, s, 2 * np.pi * nu / s)
    bound = np.abs(1 - np.outer(response, response)).max()  # separable product over the band
    assert cert.structure_error <= bound + 1e-12
    assert cert.dc_gain_ratio == pytest.approx(1.0, abs=1e-12)  # T4, coef = mass


def test_missing_coefficient_shows_in_dc_gain():
    k = kernels()
    cert = certify_conv("c", k, resize_kernel(k, 2, coef=1.0), [2, 2])
    # Linear at s = 2 samples the triangle to taps summing to s per axis: DC gain × s² = 4.
    assert cert.dc_gain_ratio == pytest.approx(4.0, rel=1e-12)
    assert cert.structure_error > 2.5


def test_dilation_lets_aliased_detail_through_interpolation_does_not():
    k = kernels()
    dilated = certify_conv("c", k, resize_kernel(k, 2, method="dilate"), [2, 2])
    linear = certify_conv("c", k, resize_kernel(k, 2), [2, 2])
    assert linear.alias_gain < 0.5 * dilated.alias_gain


def test_cells_half_pixel_shows_as_structure_error():
    sd = {"c.weight": kernels()}
    taps_sd, taps_manifest = resize_state_dict(sd, 2)
    cells_sd, cells_manifest = resize_state_dict(sd, 2, align="cells")
    taps = certify_record("c.weight", sd["c.weight"], taps_sd["c.weight"], taps_manifest["tensors"]["c.weight"])
    cells = certify_record("c.weight", sd["c.weight"], cells_sd["c.weight"], cells_manifest["tensors"]["c.weight"])
    assert cells.structure_error > taps.structure_error


def test_grid_record_is_certified():
    sd = {"fc.weight": torch.tensor(np.random.default_rng(1).standard_normal((4, 2 * 6 * 6)))}
    plan = plan_state_dict(sd, scale=2, grids={"fc": (2, 6, 6)}, method="pinv")
    new, manifest = resize_state_dict(sd, plan=plan)
    cert = certify_record("fc.weight", sd["fc.weight"], new["fc.weight"], manifest["tensors"]["fc.weight"])
    assert cert.structure_error < 1e-10  # T6: pinv is exact on inputs upsampled by its upsampler


def test_grid_dc_gain_is_kept_by_the_hw_coefficient():
    sd = {"fc.weight": torch.tensor(np.random.default_rng(2).standard_normal((4, 2 * 6 * 6)))}
    new, manifest = resize_state_dict(sd, 2, grids={"fc": (2, 6, 6)})
    cert = certify_record("fc.weight", sd["fc.weight"], new["fc.weight"], manifest["tensors"]["fc.weight"])
    # Linear cells at integer s: every column of R sums to s·(1/s) = 1, so each row keeps its sum.
    assert cert.dc_gain_ratio == pytest.approx(1.0, abs=1e-12)


def test_verify_checkpoints_reads_the_manifest(tmp_path):
    from safetensors.torch import save_file

    from kernelscale.verify import verify_checkpoints

    sd = {"a.weight": kernels(), "b.weight": kernels(seed=1), "a.bias": torch.zeros(6, dtype=torch.float64)}
    new, manifest = resize_state_dict(sd, 2, method="dilate", layers=[{"pattern": "b", "method": "interp"}])
    save_file(sd, str(tmp_path / "orig.safetensors"))
    save_file(new, str(tmp_path / "new.safetensors"), metadata={"kernelscale": json.dumps(manifest)})
    report = verify_checkpoints(tmp_path / "orig.safetensors", tmp_path / "new.safetensors")
    by_name = {c.name: c for c in report.layers}
    assert set(by_name) == {"a.weight", "b.weight"}
    assert by_name["a.weight"].structure_error < 1e-12 < by_name["b.weight"].structure_error
    assert [c.name for c in report.failures(1e-6)] == ["b.weight"]
    assert report.failures(None) == ()
    assert "worst" in report.table()[-1]


# --- the layouts convert reads and writes, and the checks before any tensor is read ---------------


def _save(sd, path, metadata=None):
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata=metadata)
    return path


def _pipeline(root):
    """A diffusers-like folder: a sharded unet with its index, and a vae with an fp16 variant."""
    from checkpoints import save_sharded

    g = torch.Generator().manual_seed(3)
    save_sharded({"conv_in.weight": torch.randn(4, 2, 3, 3, generator=g), "conv_in.bias": torch.randn(4, generator=g),
                  "down.conv.weight": torch.randn(4, 4, 5, 5, generator=g)}, root / "unet", shards=2, stem="diffusion_pytorch_model")
    vae = {"conv1.weight": torch.randn(3, 3, 3, 3, generator=g), "conv1.bias": torch.zeros(3)}
    _save(vae, root / "vae" / "diffusion_pytorch_model.safetensors")
    _save({k: v.half() for k, v in vae.items()}, root / "vae" / "diffusion_pytorch_model.fp16.safetensors")
    (root / "model_index.json").write_text("{}")
    return root


UNET_SHARDS = ["unet/diffusion_pytorch_model-00001-of-00002.safetensors", "unet/diffusion_pytorch_model-00002-of-00002.safetensors"]
VAE_FILES = ["vae/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.safetensors"]


def test_verify_walks_every_model_and_variant_of_a_folder(tmp_path):
    from kernelscale import ResizeOptions
    from kernelscale.convert import convert_checkpoint
    from kernelscale.verify import verify_checkpoints

    src, out = _pipeline(tmp_path / "pipe"), tmp_path / "pipe_x2"
    convert_checkpoint(src, out, ResizeOptions(scale=2))
    report = verify_checkpoints(src, out)
    assert [(c.file, c.name) for c in report.layers] == [
        (UNET_SHARDS[0], "conv_in.weight"), (UNET_SHARDS[1], "down.conv.weight"),
        (VAE_FILES[0], "conv1.weight"), (VAE_FILES[1], "conv1.weight")]
    assert [(f.rel, f.original, f.converted, f.layers) for f in report.files] == [
        (rel, str(src / rel), str(out / rel), 1) for rel in UNET_SHARDS + VAE_FILES]
    fp16, fp32 = report.layers[2:]
    assert fp16.structure_error != fp32.structure_error  # each variant against its own original
    table = report.table()
    assert f"== {VAE_FILES[0]} ==" in table and table[-1].startswith("4 changed layers in 4 files")
    # one model folder (the variants apart), and a shard index against the folder it was converted to
    sub = verify_checkpoints(src / "vae", out / "vae")
    assert [(c.file, c.structure_error) for c in sub.layers] == [(c.file[4:], c.structure_error) for c in report.layers[2:]]
    index = verify_checkpoints(src / "unet" / "diffusion_pytorch_model.safetensors.index.json", out / "unet")
    assert [c.structure_error for c in index.layers] == [c.structure_error for c in report.layers[:2]]


@pytest.mark.parametrize("orig, conv", [("vae", ""), ("", "vae")])  # one model against a whole pipeline, both ways
def test_files_without_a_counterpart_are_refused(tmp_path, orig, conv):
    from kernelscale import ResizeOptions
    from kernelscale.convert import convert_checkpoint
    from kernelscale.errors import KernelscaleError
    from kernelscale.verify import verify_checkpoints

    src, out = _pipeline(tmp_path / "pipe"), tmp_path / "pipe_x2"
    convert_checkpoint(src, out, ResizeOptions(scale=2))
    with pytest.raises(KernelscaleError, match="have no counterpart in"):
        verify_checkpoints(src / orig, out / conv)


def _converted_digits(tmp_path):
    from pathlib import Path

    from kernelscale import ResizeOptions
    from kernelscale.convert import convert_checkpoint

    example = Path(__file__).resolve().parents[1] / "examples" / "digits_cnn.safetensors"
    out = tmp_path / "x2.safetensors"
    convert_checkpoint(example, out, ResizeOptions(scale=2, grids={"fc": (32, 4, 4)}))
    return example, out


def _rewrite(src, dst, *, tensors=None, manifest=None):
    from safetensors import safe_open

    with safe_open(str(src), "pt") as f:
        metadata = f.metadata() or {}
        sd = {k: f.get_tensor(k) for k in f.keys()}
    sd.update(tensors or {})
    if manifest is not None:
        data = json.loads(metadata["kernelscale"])
        for name, changes in manifest.items():
            data["tensors"][name].update(changes)
        metadata["kernelscale"] = json.dumps(data)
    return _save(sd, dst, metadata)


@pytest.mark.parametrize("side, change, needle", [
    ("orig", {"conv1.weight": lambda t: t[:, :, :2, :2]},
     "ORIG conv1.weight is 2×2 but the manifest of {conv} records 3×3 (is ORIG the checkpoint that was converted?)"),
    ("orig", {"conv1.weight": lambda t: t[:, :, 0]}, "ORIG conv1.weight is 16×1×3, not a 2-D kernel, but the manifest"),
    ("orig", {"conv2.weight": lambda t: t[:16]}, "CONVERTED conv2.weight is 32×16×7×7 but ORIG's is 16×16×3×3: the channel axes"),
    ("orig", {"fc.weight": lambda t: t[:, :256]},
     "ORIG fc.weight is 10×256 but the manifest of {conv} records a Linear over a 32×4×4 grid"),
    ("conv", {"conv1.weight": {"new_spatial": [9, 9]}}, "CONVERTED conv1.weight is 7×7 but its manifest records 9×9"),
    ("conv", {"fc.weight": {"new_spatial": [9, 9]}}, "CONVERTED fc.weight is 10×2048 but its manifest records 10×2592"),
    ("conv", {"conv1.weight": {"old_spatial": "3x3"}}, "old_spatial must be a list of positive integers"),
])
def test_shapes_are_checked_against_the_record(tmp_path, side, change, needle):
    from safetensors.torch import load_file

    from kernelscale.errors import KernelscaleError
    from kernelscale.verify import verify_checkpoints

    orig, conv = _converted_digits(tmp_path)
    if side == "orig":
        sd = load_file(str(orig))
        orig = _rewrite(orig, tmp_path / "orig.safetensors", tensors={k: f(sd[k]).contiguous() for k, f in change.items()})
    else:
        conv = _rewrite(conv, tmp_path / "edited.safetensors", manifest=change)
    with pytest.raises(KernelscaleError) as info:
        verify_checkpoints(orig, conv)
    assert needle.format(conv=conv) in str(info.value)


@pytest.mark.parametrize("option, value, needle", [
    ("band", 0.9, "band must be in (0, 0.5]"), ("band", 0.0, "band must be"), ("probes", 0, "probes must be an integer >= 1"),
    ("seed", -1, "seed must be an integer >= 0"), ("max_channels", 0, "max_channels"),
    ("probes", 10**8, "probes must be at most 1000, got 100000000"),
])
def test_bad_options_are_refused_before_anything_is_read(tmp_path, option, value, needle):
    from kernelscale.errors import InvalidOptionError
    from kernelscale.verify import verify_checkpoints

    with pytest.raises(InvalidOptionError, match=re.escape(needle)):
        verify_checkpoints(tmp_path / "absent", tmp_path / "absent_x2", **{option: value})


# --- weight norm: the effective weight g·v/‖v‖ is what is certified ---------------------------------

WN_LAYERS = [("0.weight_v", "0.weight_g", 4, 8, 7), ("1.weight_v", "1.weight_g", 8, 8, 3),
             ("2.parametrizations.weight.original1", "2.parametrizations.weight.original0", 8, 4, 5)]


def _weight_normed_stack(root, seed=4):
    """A HiFi-GAN-like stack of weight-normed Conv1d (both of torch's forms, dim 0), g ≠ ‖v‖ as after training."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for i, (v, g, c_in, c_out, k) in enumerate(WN_LAYERS):
        sd[v] = torch.randn(c_out, c_in, k, generator=gen)
        sd[g] = torch.rand(c_out, 1, 1, generator=gen) + 0.5
        sd[f"{i}.bias"] = torch.randn(c_out, generator=gen)
    return _save(sd, root / "x.safetensors")


def _scaled_g(src, dst, factor):
    from safetensors.torch import load_file

    sd = load_file(str(src))
    return _rewrite(src, dst, tensors={g: sd[g] * factor for _, g, *_ in WN_LAYERS})


def test_weight_normed_layers_are_certified_on_their_effective_weight(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from kernelscale import ResizeOptions
    from kernelscale.convert import convert_checkpoint
    from kernelscale.reparam import effective_weight
    from kernelscale.verify import verify_checkpoints

    src, out = _weight_normed_stack(tmp_path), tmp_path / "x2.safetensors"
    convert_checkpoint(src, out, ResizeOptions(scale=2))
    report = verify_checkpoints(src, out)
    assert [(c.name, c.weight_norm_g) for c in report.layers] == [(v, g) for v, g, *_ in WN_LAYERS]
    assert all(c.shown.endswith(" (weight norm)") for c in report.layers)
    # the same measures as for plain convs holding the effective weights (float64 on both sides)
    old, new = load_file(str(src)), load_file(str(out))
    with safe_open(str(out), "pt") as f:
        manifest = json.loads(f.metadata()["kernelscale"])
    for cert, (v, g, *_) in zip(report.layers, WN_LAYERS):
        plain = certify_record(v, effective_weight(old[v], old[g], 0), effective_weight(new[v], new[g], 0),
                               manifest["tensors"][v])
        assert cert.structure_error == pytest.approx(plain.structure_error, rel=1e-12)
        assert cert.dc_gain_ratio == pytest.approx(1.0, abs=1e-6)  # T4 through g' = g·‖v′‖/‖v‖
        # measured on v alone, the per-channel g weighs differently: the measure is not the same
        v_only = certify_record(v, old[v], new[v], manifest["tensors"][v])
        assert v_only.structure_error != pytest.approx(cert.structure_error, rel=1e-4)
    # the reviewer's repro: every g × 10 after conversion
    broken = verify_checkpoints(src, _scaled_g(out, tmp_path / "x2_g10.safetensors", 10))
    assert [c.dc_gain_ratio for c in broken.layers] == pytest.approx([10.0] * 3, rel=1e-6)
    assert all(c.structure_error > 8 for c in broken.layers)
    assert [c.name for c in broken.failures(0.3)] == [v for v, *_ in WN_LAYERS]


def test_geometry_only_weight_norm_pairs_are_found_by_name(tmp_path):
    from kernelscale import ResizeOptions
    from kernelscale.convert import convert_checkpoint
    from kernelscale.verify import verify_checkpoints

    src, out = _weight_normed_stack(tmp_path), tmp_path / "geo.safetensors"
    convert_checkpoint(src, out, ResizeOptions(scale=2, method="dilate", geometry_only=True))
    report = verify_checkpoints(src, out)  # v and g kept, no g in the records: found by name
    assert [(c.weight_norm_g, c.structure_error < 1e-12) for c in report.layers] == [(g, True) for _, g, *_ in WN_LAYERS]
    broken = verify_checkpoints(src, _scaled_g(out, tmp_path / "geo_g10.safetensors", 10))
    assert all(c.structure_error == pytest.approx(9.0, rel=1e-6) for c in broken.layers)  # ‖10·H − H‖/‖H‖


def test_weight_norm_g_in_another_shard_than_v(tmp_path):
    from checkpoints import save_sharded
    from safetensors.torch import load_file

    from kernelscale import ResizeOptions
    from kernelscale.convert import convert_checkpoint
    from kernelscale.verify import verify_checkpoints

    sd = load_file(str(_weight_normed_stack(tmp_path)))
    index = save_sharded(sd, tmp_path / "sharded", shards=2)
    weight_map = json.loads(index.read_text())["weight_map"]
    assert weight_map["1.weight_v"] != weight_map["1.weight_g"]
    out = tmp_path / "sharded_x2"
    convert_checkpoint(index, out, ResizeOptions(scale=2))
    shard = out / weight_map["1.weight_g"]
    edited = load_file(str(shard))
    _rewrite(shard, shard, tensors={"1.weight_g": edited["1.weight_g"] * 10})
    report = verify_checkpoints(index, out)
    assert {c.name: c.weight_norm_g for c in report.layers} == {v: g for v, g, *_ in WN_LAYERS}
    assert [c.name for c in report.failures(0.3)] == ["1.weight_v"]


@pytest.mark.parametrize("edit, needle", [
    ("conv_g", "CONVERTED 0.weight_g is 4×1×1 but ORIG's is 8×1×1: weight norm's g keeps its shape"),
    ("orig_g", "ORIG 0.weight_g is 4×1×1, but the manifest of {conv} records it as weight norm's g of 0.weight_v (8×4×7) "
               "with one norm per index of axis 0 (is ORIG the checkpoint that was converted?)"),
    ("drop_g", "the manifest records '0.weight_g' as weight norm's g of 0.weight_v, but the converted checkpoint does not"),
    ("bad_dim", "manifest record of '0.weight_v': weight_norm must be"),
    ("bad_link", "manifest record of '0.weight_v': weight_norm must be an object"),
])
def test_weight_norm_g_is_checked_against_orig(tmp_path, edit, needle):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from kernelscale import ResizeOptions
    from kernelscale.convert import convert_checkpoint
    from kernelscale.errors import KernelscaleError
    from kernelscale.verify import verify_checkpoints

    src, conv = _weight_normed_stack(tmp_path), tmp_path / "x2.safetensors"
    convert_checkpoint(src, conv, ResizeOptions(scale=2))
    if edit == "conv_g":
        conv = _rewrite(conv, tmp_path / "cut.safetensors", tensors={"0.weight_g": load_file(str(conv))["0.weight_g"][:4]})
    elif edit == "orig_g":
        src = _rewrite(src, tmp_path / "orig_cut.safetensors", tensors={"0.weight_g": load_file(str(src))["0.weight_g"][:4]})
    elif edit == "drop_g":
        with safe_open(str(conv), "pt") as f:
            metadata, sd = f.metadata(), {k: f.get_tensor(k) for k in f.keys() if k != "0.weight_g"}
        conv = _save(sd, tmp_path / "no_g.safetensors", metadata)
    elif edit == "bad_dim":
        conv = _rewrite(conv, tmp_path / "dim.safetensors", manifest={"0.weight_v": {"weight_norm": {"g": "0.weight_g", "dim": 5}}})
    else:  # refused where the manifest enters (kernelscale.manifest.check_record), before any record is read
        conv = _rewrite(conv, tmp_path / "link.safetensors", manifest={"0.weight_v": {"weight_norm": "0.weight_g"}})
    with pytest.raises(KernelscaleError) as info:
        verify_checkpoints(src, conv)
    assert needle.format(conv=conv) in str(info.value)


# --- measures that are not numbers: counted, shown, failing, never NaN in JSON ----------------------


def test_non_finite_converted_values_fail_whatever_the_tolerance():
    from kernelscale.verify import VerifyReport

    k = kernels()
    bad = resize_kernel(k, 2).clone()
    bad[0, 0, 0, 0] = float("inf")
    cert = certify_conv("c", k, bad, [2, 2])
    assert cert.nonfinite == 1 and cert.nonfinite_original == 0 and cert.broken
    assert math.isnan(cert.structure_error)
    assert cert.fails(None) and cert.fails(10.0)
    data = cert.to_json()
    assert data["structure_error"] is None and data["nonfinite"] == 1
    good = certify_conv("d", k, resize_kernel(k, 2), [2, 2])
    report = VerifyReport((good, cert), 0.25)
    assert report.failures(None) == (cert,) and report.worst is cert
    json.dumps(report.to_json(), allow_nan=False)  # strict JSON: would raise on NaN
    row = next(line for line in report.table() if line.startswith("c "))
    assert "NaN" in row and "CONVERTED holds 1 non-finite value" in row
    assert report.table()[-1].endswith("worst NaN (c); 1 with non-finite values in CONVERTED")


def test_nan_measures_fail_a_tolerance_even_when_orig_is_not_finite():
    k = kernels()
    k[0, 0, 1, 1] = float("nan")
    cert = certify_conv("c", k, resize_kernel(k, 2), [2, 2])
    assert cert.nonfinite_original > 0 and not cert.broken  # nothing the conversion broke
    assert not cert.fails(None) and cert.fails(0.05) and cert.fails(1e300)  # NaN > tol is false: must not pass


def test_zero_sum_kernel_has_an_undefined_dc_gain_not_nan():
    from kernelscale.verify import VerifyReport

    sobel = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=torch.float64)
    k = torch.stack([sobel, sobel.T]).unsqueeze(1)
    cert = certify_conv("edge", k, resize_kernel(k, 2), [2, 2])
    assert cert.dc_gain_ratio is None and cert.finite and not cert.fails(0.5)
    assert 0 < cert.structure_error < 0.5
    assert cert.to_json()["dc_gain_ratio"] is None
    assert VerifyReport((cert,), 0.25).table()[1].endswith("undef")
    # a grid whose rows sum to zero, likewise
    w = torch.tensor(np.random.default_rng(5).integers(-9, 10, (4, 2 * 6 * 6)), dtype=torch.float64)
    w[:, -1] -= w.sum(dim=1)  # integers: each row sums to exactly 0
    new, manifest = resize_state_dict({"fc.weight": w}, 2, grids={"fc": (2, 6, 6)})
    assert certify_record("fc.weight", w, new["fc.weight"], manifest["tensors"]["fc.weight"]).dc_gain_ratio is None


def test_a_zero_kernel_that_is_not_zero_any_more_is_an_infinite_error():
    zero = torch.zeros(2, 2, 3, 3, dtype=torch.float64)
    assert certify_conv("z", zero, torch.zeros(2, 2, 7, 7, dtype=torch.float64), [2, 2]).structure_error == 0.0
    grown = certify_conv("z", zero, torch.ones(2, 2, 7, 7, dtype=torch.float64), [2, 2])
    assert grown.structure_error == math.inf and grown.fails(1e9)


def test_probes_have_an_upper_bound():
    from kernelscale.errors import InvalidOptionError
    from kernelscale.verify import MAX_PROBES, check_probes

    assert check_probes(MAX_PROBES) == MAX_PROBES
    with pytest.raises(InvalidOptionError, match=re.escape(f"probes must be at most {MAX_PROBES}, got 100000000")):
        check_probes(100_000_000)


def _direct_measures(kernel, new_kernel, scales, dilation, shift, band=0.25, probes=4, grid=16, seed=0):
    """Structure error and alias gain straight from their definitions: every channel pair's
    response on the whole grid, each probe contracted on its own (what verify computed before it
    used the autocorrelation, the conjugate symmetry and the blocked product)."""
    ndim = kernel.ndim - 2
    rng = np.random.default_rng(seed)
    kernel, new_kernel = kernel.double(), new_kernel.double()

    def response(k, omegas, dil, sh):
        out = k.to(torch.complex128)
        for axis, (omega, d, s) in enumerate(zip(omegas, dil, sh)):
            t = (np.arange(k.shape[2 + axis]) - (k.shape[2 + axis] - 1) / 2) * d + s
            phase = torch.tensor(np.exp(-1j * np.outer(t, omega)))
            out = torch.movedim(torch.tensordot(out, phase, dims=([2 + axis], [0])), -1, 2 + axis)
        return out

    nu = np.linspace(-band, band, 2 * grid + 1)
    low = response(kernel, [2 * np.pi * nu] * ndim, [1] * ndim, [0.0] * ndim)
    high = response(new_kernel, [2 * np.pi * nu / s for s in scales], dilation, shift)
    err = ref = 0.0
    for _ in range(probes):
        shape = (kernel.shape[1],) + low.shape[2:]
        x = torch.tensor(rng.standard_normal(shape) + 1j * rng.standard_normal(shape))
        err += (torch.einsum("oi...,i...->o...", high - low, x).abs() ** 2).sum().item()
        ref += (torch.einsum("oi...,i...->o...", low, x).abs() ** 2).sum().item()
    full = np.linspace(-0.5, 0.5, 4 * grid + 1)
    power_ref = (response(kernel, [2 * np.pi * full] * ndim, [1] * ndim, [0.0] * ndim).abs() ** 2).sum(dim=(0, 1)).numpy()
    power_new = (response(new_kernel, [2 * np.pi * full] * ndim, dilation, shift).abs() ** 2).sum(dim=(0, 1)).numpy()
    above = np.zeros([full.size] * ndim, dtype=bool)
    for axis, s in enumerate(scales):
        index = [None] * ndim
        index[axis] = slice(None)
        above |= (np.abs(full) > 0.5 / s)[tuple(index)]
    return math.sqrt(err / ref), math.sqrt(power_new[above].mean() / power_ref.mean())


@pytest.mark.parametrize("shape, scale, options, dilation, shift", [
    ((5, 7, 3, 3), 2, {}, None, None),
    ((4, 3, 5), 3, {}, None, None),  # 1-D
    ((3, 2, 3, 3, 3), 2, {}, None, None),  # 3-D
    ((6, 5, 3, 3), 2, {"align": "cells"}, None, [0.5, -0.5]),  # an even kernel padded off centre
    ((6, 5, 3, 3), 2, {"method": "pinv"}, None, [0.5, 0.5]),
    ((4, 4, 5, 5), 1.5, {}, None, None),  # a fractional scale
    ((4, 4, 3, 3), 2, None, [2, 2], None),  # geometry-only: the same weights, dilated
])
def test_measures_equal_their_direct_definition(monkeypatch, shape, scale, options, dilation, shift):
    import kernelscale.verify as verify

    monkeypatch.setattr(verify, "_CHANNEL_BLOCK", 2)  # several input-channel blocks, as a wide layer has
    torch.manual_seed(3)
    kernel = torch.randn(*shape)
    ndim = kernel.ndim - 2
    new = kernel if options is None else resize_kernel(kernel, scale, **options)
    dilation = dilation or [1] * ndim
    shift = shift or [0.0] * ndim
    cert = certify_conv("c", kernel, new, [scale] * ndim, dilation=dilation, shift=shift, probes=3, seed=7)
    structure, alias = _direct_measures(kernel, new, [scale] * ndim, dilation, shift, probes=3, seed=7)
    # the same sums in another order: float64 rounding, a few ulps per term
    assert cert.structure_error == pytest.approx(structure, rel=1e-12)
    assert cert.alias_gain == pytest.approx(alias, rel=1e-12)
