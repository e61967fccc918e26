"""Factored execution (DESIGN §9) through the nn adapter, the converter, inspect, load and verify.

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
from kernelscale.errors import GeometryError
from kernelscale.layers import FactoredConv, factor_resize
from kernelscale.manifest import Action, ConvRecord, FactoredRecord, Manifest
from kernelscale.nn import load, supersample
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


# --- kernelscale.nn.supersample --------------------------------------------------------------------


@pytest.mark.parametrize("build", [net1d, net2d, net3d])
@pytest.mark.parametrize("mode", ["linear", "cubic", "lanczos3"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_factored_supersample_equals_materialised_and_keeps_the_parameters(build, mode, dtype):
    model = build(dtype)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    params = {k: v for k, v in model.named_parameters()}
    factored, materialised = model, copy.deepcopy(model)
    report = supersample(factored, 2, mode=mode)  # the default
    reference = supersample(materialised, 2, mode=mode, execution="materialised")
    resized = [c.name for c in reference]
    assert [c.name for c in report] == resized and resized
    assert all(c.execution == "factored" and isinstance(factored.get_submodule(c.name), FactoredConv) for c in report)
    assert all(c.execution == "materialised" for c in reference)
    # the same Parameter objects, the same bytes, the same state-dict keys
    after = factored.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert all(p is params[k] for k, p in factored.named_parameters())
    # the report describes the equal materialised conv, plus how it runs
    for f, m in zip(report, reference):
        assert (f.new_kernel_size, f.new_padding, f.new_stride) == (m.new_kernel_size, m.new_padding, m.new_stride)
        assert "kernel kept, at dilation ×2 after a" in f.describe()
    x = torch.randn(*[2 * n if i >= 2 else n for i, n in enumerate(INPUTS[build])], dtype=dtype)
    with torch.no_grad():
        close(factored(x), materialised(x))
    records = report.manifest["tensors"]
    assert report.manifest["options"]["execution"] == "factored"
    assert {r["kind"] for r in records.values()} == {"factored"}


def test_factored_training_reaches_the_original_taps():
    model = net2d()
    supersample(model, 2, mode="cubic")
    weight = model[0].weight
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(2, 3, 32, 32)).square().mean().backward()
    assert weight.grad is not None and weight.grad.shape == (8, 3, 3, 3)
    before = weight.detach().clone()
    optimiser.step()
    assert not torch.equal(weight.detach(), before)


@pytest.mark.parametrize("options, layer, why", [
    (dict(method="pinv", padding="asymmetric"), "0", "method 'pinv' does not factor"),
    (dict(method="disperse"), "0", "method 'disperse' does not factor"),
    (dict(align="cells", padding="asymmetric"), "0", "align 'cells' does not factor"),
    (dict(scale=1.5), "0", "scale 1.5 on axis 0"),
    (dict(scale=0.5), "0", "scale 0.5 on axis 0"),
    (dict(method="dilate"), "0", "method 'dilate' asks for zero insertion"),
])
def test_what_does_not_factor_is_materialised_and_the_report_says_why(options, layer, why):
    model = nn.Sequential(nn.Conv1d(2, 2, 3, padding=1), nn.Conv1d(2, 2, 1))
    scale = options.pop("scale", 2)
    report = supersample(model, scale, **options)
    change = report[layer]
    assert change.execution == "materialised" and why in change.execution_note, change.describe()
    assert f"materialised ({change.execution_note})" in change.describe()
    assert isinstance(model[0], nn.Conv1d) and model[0].weight.shape[-1] == change.new_kernel_size[0]


def test_transposed_convs_and_a_root_conv_are_materialised():
    model = nn.Sequential(nn.ConvTranspose2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1))
    report = supersample(model, 2)
    assert report["0"].execution_note == "a transposed conv does not factor" and model[0].kernel_size == (7, 7)
    assert report["1"].execution == "factored" and isinstance(model[1], FactoredConv)
    root = nn.Conv2d(2, 2, 3, padding=1)
    report = supersample(root, 2)
    assert "cannot be replaced in place" in report[""].execution_note and root.kernel_size == (7, 7)


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


def test_load_of_a_factored_checkpoint_reproduces_the_materialised_model(converted):
    _, fac, mat = converted
    factored, materialised, direct = net2d(), net2d(), net2d()
    report = load(factored, fac)
    load(materialised, mat)
    supersample(direct, 2, mode="cubic")
    assert [c.execution for c in report] == ["factored"] * 3
    assert all(isinstance(factored[i], FactoredConv) for i in (0, 2, 4)) and isinstance(factored[5], nn.Conv2d)
    assert [c.describe() for c in report] == [c.describe() for c in supersample(net2d(), 2, mode="cubic")]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        close(factored(x), materialised(x))
        assert torch.equal(factored(x), direct(x))  # the same module, the same arithmetic


def test_verify_certifies_a_factored_checkpoint_as_the_materialised_one(converted):
    src, fac, mat = converted
    f, m = verify_checkpoints(src, fac), verify_checkpoints(src, mat)
    assert len(f.layers) == len(m.layers) == 3
    for a, b in zip(f.layers, m.layers):
        assert (a.name, a.method, a.old_shape, a.new_shape) == (b.name, b.method, b.old_shape, b.new_shape)
        assert (a.structure_error, a.alias_gain, a.dc_gain_ratio) == pytest.approx(
            (b.structure_error, b.alias_gain, b.dc_gain_ratio), rel=1e-12)


def test_a_factored_record_on_a_transposed_conv_is_refused_with_the_fix(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.ConvTranspose2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1))
    saved(model, tmp_path / "in.safetensors")
    assert main(["convert", str(tmp_path / "in.safetensors"), str(tmp_path / "out.safetensors"), "--scale", "2",
                 "--execution", "factored"]) == 0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(GeometryError, match=r"'0\.weight' is recorded as factored, but layer '0' cannot run it: a transposed "
                                            r"conv does not factor; convert the checkpoint with --execution materialised"):
        load(model, tmp_path / "out.safetensors")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched


def test_plan_entries_of_a_factored_conversion():
    from kernelscale.plan import TensorSpec, plan_tensors
    from kernelscale.options import ResizeOptions

    specs = [TensorSpec("a.weight", "F32", (4, 4, 3, 3)), TensorSpec("b.weight", "F32", (4, 4, 3, 3))]
    plan = plan_tensors(specs, ResizeOptions(scale=2, execution="factored", layers=[{"pattern": "b", "method": "pinv"}]))
    a, b = plan["a.weight"], plan["b.weight"]
    assert a.action == Action.FACTORED and a.new_shape == a.shape and a.operator is None and isinstance(a.record, FactoredRecord)
    assert b.action == Action.RESIZE and isinstance(b.record, ConvRecord) and "materialised: method 'pinv'" in b.reason
