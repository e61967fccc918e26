"""Per-layer fallback (issue 14): a layer the chosen method cannot handle (disperse on a 2×2 conv)
is resized by ``--fallback`` / ``fallback=``, named in the plan line, the summary and the record;
without a fallback the refusal names --fallback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from kernelscale import ResizeOptions, TensorSpec, plan_tensors, resize_state_dict
from kernelscale.cli import main
from kernelscale.errors import InvalidOptionError
from kernelscale.io.safetensors_io import SafetensorsReader
from kernelscale.plan_file import load_plan_file
from kernelscale.resize import resize_kernel
from checkpoints import save

SPECS = [TensorSpec("conv1.weight", "F32", (4, 3, 3, 3)), TensorSpec("conv2.weight", "F32", (4, 4, 2, 2))]


def test_without_a_fallback_the_refusal_names_it() -> None:
    with pytest.raises(InvalidOptionError, match=r"conv2\.weight: method 'disperse' needs odd kernel sizes.*--fallback METHOD"):
        plan_tensors(SPECS, ResizeOptions(scale=2, method="disperse"))


def test_the_fallback_resizes_the_layer_and_the_plan_says_so() -> None:
    plan = plan_tensors(SPECS, ResizeOptions(scale=2, method="disperse", fallback="interp"))
    kept, fell = plan["conv1.weight"], plan["conv2.weight"]
    assert kept.record.method == "disperse" and kept.record.fallback is None and "fallback" not in kept.record.to_json()
    assert fell.record.method == "interp" and fell.record.fallback == "disperse" and fell.record.align == "taps"
    assert fell.record.to_json()["fallback"] == "disperse"
    assert "interp/linear/taps" in fell.reason and "fallback: disperse cannot resize it" in fell.reason
    weight = torch.randn(4, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    out, manifest = resize_state_dict({"conv2.weight": weight}, 2, method="disperse", fallback="interp")
    assert torch.equal(out["conv2.weight"], resize_kernel(weight, 2))  # what ran is exactly interp
    assert manifest["tensors"]["conv2.weight"]["fallback"] == "disperse"
    assert manifest["options"]["fallback"] == "interp"


def test_a_fallback_that_cannot_either_is_refused_naming_both() -> None:
    with pytest.raises(InvalidOptionError, match="the fallback dilate cannot resize it either"):
        plan_tensors(SPECS, ResizeOptions(scale=1.5, method="disperse", fallback="dilate"))
    with pytest.raises(InvalidOptionError, match="unknown fallback 'bilinear'"):
        ResizeOptions(scale=2, fallback="bilinear")


def test_the_command_line_names_the_fallback_in_plan_summary_and_record(tmp_path: Path, capsys) -> None:
    g = torch.Generator().manual_seed(1)
    src = save({"conv1.weight": torch.randn(4, 3, 3, 3, generator=g), "conv2.weight": torch.randn(4, 4, 2, 2, generator=g)},
               tmp_path / "in.safetensors")
    out = tmp_path / "out.safetensors"
    assert main(["convert", str(src), str(out), "--scale", "2", "--method", "disperse"]) == 2
    assert "--fallback" in capsys.readouterr().err
    assert main(["inspect", str(src), "--scale", "2", "--method", "disperse", "--fallback", "interp"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("conv2.weight"))
    assert "fallback: disperse cannot resize it" in line
    assert main(["convert", str(src), str(out), "--scale", "2", "--method", "disperse", "--fallback", "interp"]) == 0
    assert "1 by the fallback method (conv2.weight: disperse -> interp)" in capsys.readouterr().err
    with SafetensorsReader(out) as reader:
        manifest = json.loads(reader.metadata["kernelscale"])
    assert manifest["tensors"]["conv2.weight"]["fallback"] == "disperse"
    assert manifest["tensors"]["conv2.weight"]["method"] == "interp"
    assert "fallback" not in manifest["tensors"]["conv1.weight"]
    out2 = tmp_path / "out2.safetensors"
    assert main(["convert", str(src), str(out2), "--scale", "2", "--method", "disperse", "--fallback", "interp", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fallbacks"] == ["conv2.weight: disperse -> interp"]


def test_a_plan_file_sets_the_fallback(tmp_path: Path) -> None:
    path = tmp_path / "plan.toml"
    path.write_text('scale = 2\nmethod = "disperse"\nfallback = "pinv"\n')
    assert load_plan_file(path)["fallback"] == "pinv"
    path.write_text('scale = 2\nfallback = "nope"\n')
    with pytest.raises(InvalidOptionError, match="fallback"):
        load_plan_file(path)


def test_supersample_takes_fallback() -> None:
    from kernelscale.nn import supersample

    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 2))
    with pytest.raises(InvalidOptionError, match="--fallback"):
        supersample(net, 2, method="disperse")
    supersample(net, 2, method="disperse", fallback="interp", execution="materialised")
    assert net[0].kernel_size == (5, 5) and net[1].kernel_size == (5, 5)
