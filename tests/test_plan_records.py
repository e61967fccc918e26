"""A plan's records and lines say what is done (issue 14): a grid under ``--method dilate`` is
resized by interp cells and says so; an absorbing dilate layer's zero-inserted kernel is aligned
by taps, not cells."""

from __future__ import annotations

import numpy as np
import torch

from kernelscale import ResizeOptions, TensorSpec, plan_tensors, resize_state_dict
from kernelscale.transforms import build_kernel_resize


def test_a_grid_under_dilate_is_recorded_and_described_as_what_ran() -> None:
    specs = [TensorSpec("conv.weight", "F32", (4, 3, 3, 3)), TensorSpec("fc.weight", "F32", (5, 36))]
    plan = plan_tensors(specs, ResizeOptions(scale=2, method="dilate", grids={"fc": (4, 3, 3)}))
    grid = plan["fc.weight"]
    assert grid.record.method == "interp" and grid.record.align == "cells" and grid.method.method == "interp"
    assert "interp/linear/cells" in grid.reason and "dilate does not apply to a grid: resized by interp" in grid.reason
    assert plan["conv.weight"].record.method == "dilate"


def test_an_absorbing_dilate_layer_records_taps_for_its_zero_inserted_kernel() -> None:
    weight = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    plan = plan_tensors([TensorSpec("conv.weight", "F32", (4, 3, 3, 3))],
                        ResizeOptions(scale=2, method="dilate", absorb=("conv",)))
    entry = plan["conv.weight"]
    assert entry.record.absorb and entry.record.method == "dilate"
    assert entry.record.align == "taps" and "dilate/linear/taps" in entry.reason
    out, manifest = resize_state_dict({"conv.weight": weight}, plan=plan)
    assert manifest["tensors"]["conv.weight"]["align"] == "taps"
    # what ran is zero insertion: the taps at even positions are the original ones, the rest zero
    zero_inserted = torch.zeros(4, 3, 5, 5)
    zero_inserted[:, :, ::2, ::2] = weight
    assert torch.equal(out["conv.weight"], zero_inserted)
    assert np.array_equal(build_kernel_resize((3, 3), 2, "dilate", align="taps").dense(),
                          build_kernel_resize((3, 3), 2, "dilate", align="cells").dense())
