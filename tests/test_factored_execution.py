"""Factored execution (DESIGN §9) through the converter, inspect and verify.

Tolerances: the factored and the materialised form of a layer compute the same sums of products
in another order (prefilter, then the dilated conv; against one conv with the k′ kernel), so they
differ by rounding only: at most n·eps relative to the sum of |terms| for n terms per output
(Higham's γ_n). The nets here have at most 8·15² < 2¹¹ terms per output and three resized layers;
``TOL_ULPS`` = 2¹² units of the output's magnitude bounds that for random weights and inputs of
order 1. A wrong prefilter, padding or dilation changes the outputs by order 1, far outside it.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from kernelscale.cli import main
from kernelscale.layers import factor_resize
from kernelscale.manifest import Action, ConvRecord, FactoredRecord, Manifest
from kernelscale.verify import verify_checkpoints

TOL_ULPS = 2 ** 12


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    atol = TOL_ULPS * torch.finfo(a.dtype).eps * max(1.0, b.abs().max().item())
    torch.testing.assert_close(a, b, rtol=0, atol=atol)


def net2d(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.ReLU(),
                         nn.Conv2d(8, 8, 5, padding=2, groups=2), nn.Conv2d(8, 4, 1)).to(dtype)


def net1d(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.Tanh(), nn.Conv1d(4, 4, 3, padding=2, dilation=2),
                         nn.Conv1d(4, 3, 3, padding=1, padding_mode="circular"), nn.Conv1d(3, 3, 2)).to(dtype)  # an even kernel


def net3d(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(nn.Conv3d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv3d(3, 2, 3, padding=1, stride=2)).to(dtype)


INPUTS = {net1d: (2, 2, 24), net2d: (2, 3, 16, 16), net3d: (1, 2, 8, 8, 8)}


def saved(module: nn.Module, path) -> None:
    save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, str(path))


# --- kernelscale convert --execution factored, inspect, load, verify --------------------------------


@pytest.fixture
def converted(tmp_path):
    """net2d saved, and converted at ×2 cubic both ways: (original, factored, materialised) paths."""
    src, fac, mat = tmp_path / "in.safetensors", tmp_path / "factored.safetensors", tmp_path / "materialised.safetensors"
    saved(net2d(), src)
    common = ["--scale", "2", "--mode", "cubic"]
    assert main(["convert", str(src), str(fac), *common, "--execution", "factored"]) == 0
    assert main(["convert", str(src), str(mat), *common]) == 0
    return src, fac, mat


def test_convert_factored_keeps_every_weight_byte_and_records_the_prefilter(converted, capsys):
    src, fac, _ = converted
    original, out = load_file(str(src)), load_file(str(fac))
    assert list(out) == list(original)
    for name, tensor in original.items():  # every tensor, the factored kernels included: identical bytes
        assert out[name].dtype == tensor.dtype and out[name].shape == tensor.shape
        assert out[name].numpy().tobytes() == tensor.numpy().tobytes(), name
    with safe_open(str(fac), framework="pt") as f:
        manifest = Manifest.from_json(json.loads(f.metadata()["kernelscale"]))
    assert manifest.options["execution"] == "factored"
    assert sorted(manifest.tensors) == ["0.weight", "2.weight", "4.weight"]
    for name, record in manifest.tensors.items():
        assert isinstance(record, FactoredRecord)
        rebuilt = factor_resize(**record.prefilter.options())  # enough to rebuild it
        k = original[name].shape[2:]
        assert rebuilt == factor_resize(tuple(k), 2, mode="cubic") and rebuilt.dilations == record.dilation == (2, 2)
        assert record.old_spatial == record.new_spatial == tuple(k)
        assert record.resized_spatial == tuple(2 * (n - 1) + 7 for n in k) and record.prefilter.taps == (7, 7)
    capsys.readouterr()
    assert main(["inspect", str(fac)]) == 0
    shown = capsys.readouterr().out
    assert "0.weight  F32  8×3×3×3  converted: factored interp/cubic/taps ×2,2 3×3 kept: dilation 2×2 after a 7×7 prefilter" in shown


def test_dry_run_and_inspect_plan_lines_say_factored(converted, capsys):
    src, _, _ = converted
    capsys.readouterr()
    assert main(["convert", str(src), str(src.parent / "dry.safetensors"), "--scale", "2", "--execution", "factored",
                 "--dry-run"]) == 0
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert "0.weight  F32  8×3×3×3  factored: dilation 2×2 + 3×3 prefilter = k' 7×7; interp/linear/taps (conv kernel)" in lines
    assert "3 factored (bytes kept)" in out.err and "need a new prefilter" in out.err
    assert not (src.parent / "dry.safetensors").exists()
    assert main(["inspect", str(src), "--scale", "2", "--execution", "factored", "--align", "cells"]) == 0
    shown = capsys.readouterr().out
    assert "resize: interp/linear/cells (conv kernel); materialised: align 'cells' does not factor, FLOPs ×4.00" in shown


def test_verify_certifies_a_factored_checkpoint_as_the_materialised_one(converted):
    src, fac, mat = converted
    f, m = verify_checkpoints(src, fac), verify_checkpoints(src, mat)
    assert len(f.layers) == len(m.layers) == 3
    for a, b in zip(f.layers, m.layers):
        assert (a.name, a.method, a.old_shape, a.new_shape) == (b.name, b.method, b.old_shape, b.new_shape)
        assert (a.structure_error, a.alias_gain, a.dc_gain_ratio) == pytest.approx(
            (b.structure_error, b.alias_gain, b.dc_gain_ratio), rel=1e-12)


def test_plan_entries_of_a_factored_conversion():
    from kernelscale.plan import ResizeOptions, TensorSpec, plan_tensors

    specs = [TensorSpec("a.weight", "F32", (4, 4, 3, 3)), TensorSpec("b.weight", "F32", (4, 4, 3, 3))]
    plan = plan_tensors(specs, ResizeOptions(scale=2, execution="factored", layers=[{"pattern": "b", "method": "pinv"}]))
    a, b = plan["a.weight"], plan["b.weight"]
    assert a.action == Action.FACTORED and a.new_shape == a.shape and a.operator is None and isinstance(a.record, FactoredRecord)
    assert b.action == Action.RESIZE and isinstance(b.record, ConvRecord) and "materialised: method 'pinv'" in b.reason
