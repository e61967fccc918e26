"""verify's measures against the closed forms of DESIGN §4."""

from __future__ import annotations

import json

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
