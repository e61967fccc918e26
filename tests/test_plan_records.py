"""A plan's records and lines say what is done (issue 14): every record's method, mode, align,
coef and kind rebuild exactly the operator that ran, for every method, fallback and record kind;
a field that does not enter the operator is null (dilate's zero insertion has no interpolation
kernel and no coefficient); a grid under dilate or disperse falls back to ``--fallback`` (interp
without one) and says so like any fallback layer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

from kernelscale import ResizeOptions, TensorSpec, plan_tensors, resize_state_dict
from kernelscale.cli import main
from kernelscale.errors import InvalidOptionError
from kernelscale.execute import execute
from kernelscale.manifest import AttentionRecord, ConvRecord, FactoredRecord, GridRecord
from kernelscale.method import METHODS, MODES, DisperseParams, Method
from kernelscale.transforms import GridResize, ScaleFactor, build_kernel_resize, grid_resize, kernel_resize
from checkpoints import save

SPECS = [TensorSpec("conv3.weight", "F32", (4, 3, 3, 3)), TensorSpec("conv2.weight", "F32", (4, 4, 2, 2)),
         TensorSpec("audio.weight", "F32", (4, 2, 5)), TensorSpec("fc.weight", "F32", (5, 4 * 3 * 3)),
         TensorSpec("attn.to_q.weight", "F32", (6, 6))]
GRIDS = {"fc": (4, 3, 3)}
ATTENTION = ({"pattern": "attn.to_q", "tokens": 64},)
VARIANTS: tuple[dict[str, Any], ...] = ({}, {"mode": "cubic"}, {"align": "cells"}, {"coef": 0.5}, {"coef": "paper"},
                                        {"absorb": ("conv3",)}, {"execution": "factored"})


def _rebuilt(record: Any, mode: Optional[str] = None, coef: Any = None) -> Any:
    """The operator a record describes, from the record alone (``mode``/``coef`` override its own:
    the honesty checks below)."""
    if isinstance(record, AttentionRecord):
        return ScaleFactor(record.factor)
    if isinstance(record, FactoredRecord):
        record = record.materialised()
    fit = record.disperse if isinstance(record, ConvRecord) else None
    method = Method(record.method, mode or record.mode or "linear", record.align, record.coef if coef is None else coef,
                    DisperseParams(fit.size, fit.probe, fit.eta) if fit is not None else DisperseParams())
    if isinstance(record, GridRecord):
        return GridResize(record.grid_layout, grid_resize(record.old_spatial, record.scale, method))
    return kernel_resize(record.old_spatial, record.scale, method)


def _matrix(operator: Any) -> np.ndarray:
    if isinstance(operator, ScaleFactor):
        return np.array([[operator.factor]])
    return (operator.planes if isinstance(operator, GridResize) else operator).dense()


def _same(a: Any, b: Any) -> bool:
    x, y = _matrix(a), _matrix(b)
    return x.shape == y.shape and np.array_equal(x, y)


def _plan(method: str, fallback: Optional[str], scale: float, variant: dict[str, Any]):
    return plan_tensors(SPECS, ResizeOptions(scale=scale, method=method, fallback=fallback, grids=GRIDS, attention=ATTENTION,
                                             **variant))


@pytest.mark.parametrize("scale", [2, 1.5])
@pytest.mark.parametrize("fallback", [None, *METHODS])
@pytest.mark.parametrize("method", METHODS)
def test_every_record_rebuilds_the_operator_that_ran(method: str, fallback: Optional[str], scale: float) -> None:
    g = torch.Generator().manual_seed(0)
    state = {s.name: torch.randn(s.shape, generator=g, dtype=torch.float64) for s in SPECS}
    planned = 0
    for variant in VARIANTS:
        try:
            plan = _plan(method, fallback, scale, variant)
        except InvalidOptionError:
            continue  # a layer neither the method nor the fallback can resize is refused (test_fallback.py)
        planned += "absorb" not in variant  # absorbing: only conv3 and the grid change
        materialised = _plan(method, fallback, scale, {**variant, "execution": "materialised"})
        out, manifest = resize_state_dict(state, plan=plan)
        for entry in plan.changed:
            record = entry.record
            assert manifest["tensors"][entry.name] == record.to_json()
            applied = entry.operator if entry.operator is not None else materialised[entry.name].operator
            operator = _rebuilt(record)
            assert _same(operator, applied), (entry.name, variant, record)
            if entry.operator is None:  # factored: the bytes are kept, the record's prefilter says what they equal
                assert isinstance(record, FactoredRecord) and torch.equal(out[entry.name], state[entry.name])
            else:
                assert torch.equal(out[entry.name], execute(operator, state[entry.name], name=entry.name))
            if isinstance(record, AttentionRecord):
                continue
            kind = record.materialised() if isinstance(record, FactoredRecord) else record
            # mode and coef: null exactly where they do not enter the operator
            same = [_same(_rebuilt(record, mode=other), applied) for other in MODES]
            assert all(same) if kind.mode is None else not all(same), (entry.name, same, record)
            for other in ("mass", "paper"):
                if kind.coef is None:
                    assert _same(_rebuilt(record, coef=other), applied), (entry.name, other, record)
            if kind.coef is not None:
                assert not _same(_rebuilt(record, coef=0.37), applied), (entry.name, record)
            # align: taps for centred taps (interp taps, dilate's zero insertion, disperse), cells for F.interpolate's cells
            asked_cells = variant.get("align") == "cells" or (record.absorb and kind.method == "interp")
            cells = isinstance(record, GridRecord) or kind.method == "pinv" or (kind.method == "interp" and asked_cells)
            assert kind.align == ("cells" if cells else "taps"), (entry.name, variant, record)
            # method: the one asked for, or the fallback that ran, named as such
            assert kind.method in (method, fallback or "interp")
            if not isinstance(record, FactoredRecord):
                assert record.fallback == (method if record.method != method else None), (entry.name, record)
    # refused only where some layer is beyond both: the grid (interp or pinv only), the 2×2 conv
    # (disperse: odd sizes), every conv at 1.5 (dilate, disperse: integer scales)
    can = ("interp", "pinv")
    grid_ok = method in can or fallback in (None, *can)
    convs_ok = method in can or fallback in can or (scale == 2 and "dilate" in (method, fallback))
    assert (planned > 0) == (grid_ok and convs_ok)


def test_dilate_records_zero_insertion_without_mode_or_coefficient() -> None:
    plan = plan_tensors(SPECS[:2], ResizeOptions(scale=2, method="dilate", mode="cubic", align="cells", coef="paper"))
    record = plan["conv3.weight"].record
    assert (record.method, record.mode, record.align, record.coef) == ("dilate", None, "taps", None)
    assert plan["conv3.weight"].reason.startswith("dilate/taps (")
    assert np.array_equal(_matrix(plan["conv3.weight"].operator), build_kernel_resize((3, 3), 2, "dilate").dense())
    # a number is folded into the zero-inserted kernel, and recorded
    scaled = plan_tensors(SPECS[:1], ResizeOptions(scale=2, method="dilate", coef=0.5))["conv3.weight"]
    assert scaled.record.coef == 0.5
    assert np.array_equal(_matrix(scaled.operator), 0.5 * build_kernel_resize((3, 3), 2, "dilate").dense())


def test_a_grid_under_dilate_is_recorded_and_described_as_what_ran() -> None:
    specs = [TensorSpec("conv.weight", "F32", (4, 3, 3, 3)), TensorSpec("fc.weight", "F32", (5, 36))]
    plan = plan_tensors(specs, ResizeOptions(scale=2, method="dilate", grids={"fc": (4, 3, 3)}))
    grid = plan["fc.weight"]
    assert grid.record.method == "interp" and grid.record.align == "cells" and grid.method.method == "interp"
    assert grid.record.fallback == "dilate" and grid.record.to_json()["fallback"] == "dilate"
    assert "interp/linear/cells" in grid.reason and "not dilate (no --fallback given: interp)" in grid.reason
    assert plan["conv.weight"].record.method == "dilate" and plan["conv.weight"].record.fallback is None


@pytest.mark.parametrize("method", ["dilate", "disperse"])
def test_a_grid_takes_the_fallback_given(method: str) -> None:
    specs = [TensorSpec("conv.weight", "F32", (4, 3, 3, 3)), TensorSpec("fc.weight", "F32", (5, 36))]
    plan = plan_tensors(specs, ResizeOptions(scale=2, method=method, fallback="pinv", grids={"fc": (4, 3, 3)}))
    grid = plan["fc.weight"]
    assert (grid.record.method, grid.record.fallback, grid.record.coef) == ("pinv", method, None)
    assert "grid 4×3×3 pinv/linear/cells" in grid.reason and f"not {method}" in grid.reason
    assert _same(grid.operator, GridResize(grid.record.grid_layout, grid_resize((3, 3), (2.0, 2.0), Method("pinv"))))
    other = "disperse" if method == "dilate" else "dilate"
    with pytest.raises(InvalidOptionError, match=rf"fc\.weight: a grid is resized by interp or pinv, not {method}; "
                                                 f"the fallback {other} cannot resize it either"):
        plan_tensors(specs, ResizeOptions(scale=2, method=method, fallback=other, grids={"fc": (4, 3, 3)}))


def test_a_layer_rule_naming_dilate_for_a_grid_is_refused_without_a_fallback() -> None:
    specs = [TensorSpec("fc.weight", "F32", (5, 36))]
    rule = ({"pattern": "fc", "method": "dilate"},)
    with pytest.raises(InvalidOptionError, match=r"fc\.weight: a grid is resized by interp or pinv, not dilate; --fallback"):
        plan_tensors(specs, ResizeOptions(scale=2, grids={"fc": (4, 3, 3)}, layers=rule))
    plan = plan_tensors(specs, ResizeOptions(scale=2, grids={"fc": (4, 3, 3)}, layers=rule, fallback="interp"))
    assert (plan["fc.weight"].record.method, plan["fc.weight"].record.fallback) == ("interp", "dilate")


def test_an_absorbing_dilate_layer_records_taps_for_its_zero_inserted_kernel() -> None:
    weight = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    plan = plan_tensors([TensorSpec("conv.weight", "F32", (4, 3, 3, 3))],
                        ResizeOptions(scale=2, method="dilate", absorb=("conv",)))
    entry = plan["conv.weight"]
    assert entry.record.absorb and entry.record.method == "dilate"
    assert entry.record.align == "taps" and entry.reason.startswith("dilate/taps (")
    out, manifest = resize_state_dict({"conv.weight": weight}, plan=plan)
    recorded = manifest["tensors"]["conv.weight"]
    assert (recorded["align"], recorded["mode"], recorded["coef"]) == ("taps", None, None)
    # what ran is zero insertion: the taps at even positions are the original ones, the rest zero
    zero_inserted = torch.zeros(4, 3, 5, 5)
    zero_inserted[:, :, ::2, ::2] = weight
    assert torch.equal(out["conv.weight"], zero_inserted)
    assert np.array_equal(build_kernel_resize((3, 3), 2, "dilate", align="taps").dense(),
                          build_kernel_resize((3, 3), 2, "dilate", align="cells").dense())


def _manifest(path: Path) -> dict[str, Any]:
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["kernelscale"])


def test_the_command_line_records_and_shows_dilate_and_grid_fallbacks(tmp_path: Path, capsys) -> None:
    g = torch.Generator().manual_seed(2)
    src = save({"conv.weight": torch.randn(4, 3, 3, 3, generator=g), "fc.weight": torch.randn(5, 36, generator=g)},
               tmp_path / "in.safetensors")
    out = tmp_path / "out.safetensors"
    assert main(["convert", str(src), str(out), "--scale", "2", "--method", "dilate", "--grid", "fc=4,3,3", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["fallbacks"] == ["fc.weight: dilate -> interp"]
    records = _manifest(out)["tensors"]
    assert {k: records["conv.weight"][k] for k in ("method", "mode", "align", "coef")} == \
        {"method": "dilate", "mode": None, "align": "taps", "coef": None}
    assert (records["fc.weight"]["method"], records["fc.weight"]["fallback"]) == ("interp", "dilate")
    assert main(["inspect", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "conv.weight  F32  4×3×5×5  converted: dilate/taps ×2,2 3×3 -> 5×5" in shown and "(fallback: dilate was asked for)" in shown
    plan_file = tmp_path / "plan.toml"
    plan_file.write_text('scale = 2\nmethod = "dilate"\nfallback = "pinv"\n[grids]\nfc = [4, 3, 3]\n')
    out2 = tmp_path / "out2.safetensors"
    assert main(["convert", str(src), str(out2), "--plan", str(plan_file)]) == 0
    assert "1 by the fallback method (fc.weight: dilate -> pinv)" in capsys.readouterr().err
    assert _manifest(out2)["tensors"]["fc.weight"]["method"] == "pinv"


def test_files_with_the_old_dilate_records_still_load_and_verify(tmp_path: Path) -> None:
    """Before these records said what ran, dilate wrote ``mode: "linear"``, ``coef: "mass"``;
    neither enters zero insertion, so such files load and verify as before (format version 1)."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
    src = save({k: v.contiguous() for k, v in net.state_dict().items()}, tmp_path / "in.safetensors")
    new = tmp_path / "new.safetensors"
    assert main(["convert", str(src), str(new), "--scale", "2", "--method", "dilate"]) == 0
    manifest = _manifest(new)
    for record in manifest["tensors"].values():
        assert record["mode"] is None and record["coef"] is None
        record.update(mode="linear", coef="mass")
    with safe_open(str(new), framework="pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
    old = save(tensors, tmp_path / "old.safetensors", {**metadata, "kernelscale": json.dumps(manifest, sort_keys=True)})
    from kernelscale.nn import load

    x = torch.randn(1, 3, 16, 16)
    outputs = []
    for path in (new, old):
        model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
        load(model, path)
        assert model[0].kernel_size == (5, 5) and model[0].padding == (2, 2)
        outputs.append(model(x))
        assert main(["verify", str(src), str(path), "--tol", "1e-5"]) == 0
    assert torch.equal(outputs[0], outputs[1])
