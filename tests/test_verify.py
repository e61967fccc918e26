"""verify's measures against the closed forms of DESIGN §4."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from kernelscale import plan_state_dict, resize_kernel, resize_state_dict
from kernelscale.transforms import MODES, frequency_response
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
])
def test_bad_options_are_refused_before_anything_is_read(tmp_path, option, value, needle):
    from kernelscale.errors import InvalidOptionError
    from kernelscale.verify import verify_checkpoints

    with pytest.raises(InvalidOptionError, match=re.escape(needle)):
        verify_checkpoints(tmp_path / "absent", tmp_path / "absent_x2", **{option: value})
