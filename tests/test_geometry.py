"""kernelscale.geometry: the one geometry engine (DESIGN §3 rule, §4 strided/transposed layers, pools).

Expected values are hand-computed from p' = (k'−1)·d'/2 − s·((k−1)·d/2 − p) and PyTorch's output
length formulas; the output-length function is checked against torch itself.
"""

import itertools
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from kernelscale.errors import GeometryError, InvalidOptionError
from kernelscale.manifest import ConvRecord
from kernelscale.geometry import (
    ConvGeometry,
    LayerGeometry,
    Refit,
    axes_text,
    conv_change,
    conv_padding,
    loader_change,
    new_padding,
    out_len,
    pads_from,
    pool_change,
    record_geometry,
    resized_geometry,
    sizes_consistent,
    window_shift,
)


def _record(old, new, s, **changes) -> ConvRecord:
    base = ConvRecord("interp", "linear", "taps", "mass", (s,) * len(old), tuple(old), tuple(new), (0.0,) * len(old))
    return replace(base, **changes)


@pytest.mark.parametrize("k, k_new, s, p, d, d_new, expected", [
    (3, 7, 2, 1, 1, 1, 3.0),      # "same" stays "same": (7−1)/2
    (3, 7, 2, 0, 1, 1, 1.0),      # valid: δ = 1 input pixel → 2 output pixels of crop: 3 − 2
    (3, 3, 2, 1, 1, 2, 2.0),      # re-dilation: p' = s·p
    (3, 5, 1.5, 1, 1, 1, 2.0),    # fractional s, same conv: (5−1)/2
    (4, 8, 2, 1, 1, 1, 2.5),      # even kernel, δ = ½ → p' = 3.5 − 1
])
def test_new_padding_is_the_rule(k, k_new, s, p, d, d_new, expected):
    assert new_padding(k, k_new, s, p, d, d_new) == expected


def test_conv_padding_forms():
    assert conv_padding("valid", (3, 5), (1, 1), (1, 1), "c") == (0.0, 0.0)
    assert conv_padding("same", (3, 5), (1, 2), (1, 1), "c") == (1.0, 4.0)
    assert conv_padding(2, (3, 3), (1, 1), (1, 1), "c") == (2.0, 2.0)
    assert conv_padding((1, 0.5), (3, 3), (1, 1), (1, 1), "c") == (1.0, 0.5)
    with pytest.raises(GeometryError, match=r"c: padding='same' on a 4-tap axis .* pads 1 before and 2 after"):
        conv_padding("same", (4,), (1,), (1,), "c")
    with pytest.raises(InvalidOptionError, match=r"c: padding='same' needs stride 1.*\(2,\)"):
        conv_padding("same", (3,), (1,), (2,), "c")
    with pytest.raises(InvalidOptionError, match=r"c: padding must be .* got -1"):
        conv_padding(-1, (3,), (1,), (1,), "c")


def test_resized_geometry_kinds():
    # plain: stride and dilation kept, padding by the rule
    assert resized_geometry("c", "conv", (3,), (7,), (2.0,), (1.0,), (1,), (1,)) == ((7,), (3.0,), (1,), (1,))
    # re-dilation: kernel kept, dilation·f, p' = s·p
    assert resized_geometry("c", "conv", (3, 3), (3, 3), (2.0, 3.0), (1.0, 1.0), (1, 1), (1, 1), redilate=(2, 3)) == \
        ((3, 3), (2.0, 3.0), (1, 1), (2, 3))
    # absorb: stride·s, p' = s·p
    assert resized_geometry("c", "conv", (4,), (8,), (2.0,), (1.0,), (4,), (1,), absorb=True) == ((8,), (2.0,), (8,), (1,))
    # transposed, stride σ = 2, output padding 0: (7−1)/2 − 2·((4−1)/2 − 1) = 2, plus (s−1)(σ−1−0)/2 = 0.5
    assert resized_geometry("t", "transposed", (4,), (7,), (2.0,), (1.0,), (2,), (1,), (0,)) == ((7,), (2.5,), (2,), (1,))
    with pytest.raises(GeometryError, match="t: a transposed conv cannot absorb"):
        resized_geometry("t", "transposed", (4,), (8,), (2.0,), (1.0,), (2,), (1,), absorb=True)
    with pytest.raises(GeometryError, match=r"c: an absorbing layer's stride .* \(1\.5,\)"):
        resized_geometry("c", "conv", (4,), (6,), (1.5,), (1.0,), (4,), (1,), absorb=True)


def test_record_geometry_reads_the_record():
    rec = _record((3, 3), (3, 3), 2.0, method="dilate", dilation=(2, 2))
    assert record_geometry("c", "conv", rec, (3, 3), (1.0, 1.0), (1, 1), (1, 1)) == ((3, 3), (2.0, 2.0), (1, 1), (2, 2))
    rec = _record((3,), (7,), 2.0, scale=(4.0, 2.0))  # a job's 2-D scale on a 1-D kernel: the last axis
    assert record_geometry("c", "conv", rec, (3,), (1.0,), (1,), (1,)) == ((7,), (3.0,), (1,), (1,))
    assert ConvGeometry(*record_geometry("c", "conv", rec, (3,), (0.0,), (1,), (1,))).integer_padding() == (1,)


def test_layer_geometry_padding_views():
    g = LayerGeometry((4, 3), ((1, 2), (1, 1)), (1, 1), (1, 1))
    assert g.padding == (1.5, 1.0)
    assert g.padding_report() == ((1, 2), 1)
    assert axes_text(g.padding_report()) == "(1+2,1)" and axes_text((3, 3)) == "3" and axes_text(()) == "-"


@pytest.mark.parametrize("kind", ["conv", "transposed", "pool"])
def test_out_len_matches_torch(kind):
    for n, k, b, st, d in itertools.product((5, 8), (1, 3, 4), (0, 1, 2), (1, 2, 3), (1, 2)):
        if (kind == "pool" and (d > 1 or b > k // 2)) or (kind != "transposed" and n + 2 * b < d * (k - 1) + 1):
            continue  # torch refuses these layers (pool padding over half the window; a window longer than the input)
        g = LayerGeometry((k,), ((b, b),), (st,), (d,), (0,) if kind == "transposed" else ())
        x = torch.zeros(1, 1, n)
        if kind == "conv":
            got = F.conv1d(x, torch.zeros(1, 1, k), stride=st, padding=b, dilation=d).shape[-1]
        elif kind == "transposed":
            if b > d * (k - 1):
                continue
            got = F.conv_transpose1d(x, torch.zeros(1, 1, k), stride=st, padding=b, dilation=d).shape[-1]
        else:
            got = F.max_pool1d(x, k, st, b).shape[-1]
        assert out_len(kind, n, g, 0) == got, (n, k, b, st, d)


def test_sizes_consistent_finds_the_counter_example():
    old = LayerGeometry((3,), ((1, 1),), (2,), (1,))
    assert sizes_consistent("conv", old, LayerGeometry((7,), ((3, 3),), (2,), (1,)), 0, 2.0, 2.0) is None
    bad = sizes_consistent("conv", old, LayerGeometry((7,), ((1, 1),), (2,), (1,)), 0, 2.0, 2.0)
    assert bad == (8, 8, 6)  # L = 8 → out 4, s·out = 8, but the new layer gives (16 + 2 − 7)//2 + 1 = 6


def test_pads_from():
    assert pads_from("c", (3.0,), (6.0,), ("after",), allow_half=False) == ((3, 3),)
    assert pads_from("c", (2.5,), (5.0,), ("after",), allow_half=True) == ((2, 3),)
    assert pads_from("c", (2.5,), (5.0,), ("before",), allow_half=True) == ((3, 2),)
    with pytest.raises(GeometryError, match=r"c: the new padding would be 2\.5, half a pixel off the grid; pass padding='asymmetric'"):
        pads_from("c", (2.5,), (5.0,), ("after",), allow_half=False)
    with pytest.raises(GeometryError, match="c: the geometry rule gives a negative padding"):
        pads_from("c", (-1.0,), (-2.0,), ("after",), allow_half=True)


def test_conv_change_strided_cells_is_aligned():
    # DESIGN §4: at s = 2 a stride-2 conv resized 3 → 6 by cells, the extra pixel on the aligned side, has no offset
    old = LayerGeometry((3,), ((1, 1),), (2,), (1,))
    rec = _record((3,), (6,), 2.0, align="cells", centre_offset=(0.5,), pad_extra="after")
    _, new, offset = conv_change("down", "conv", old, rec, "asymmetric", "after")
    assert new == LayerGeometry((6,), ((3, 2),), (2,), (1,)) and offset == (0.0,)
    with pytest.raises(GeometryError, match="down: the new padding would be 2.5, half a pixel off the grid"):
        conv_change("down", "conv", old, rec, "exact", "after")
    with pytest.raises(GeometryError, match=r"down: the layer's kernel is 5 but the record was made for 3"):
        conv_change("down", "conv", LayerGeometry((5,), ((1, 1),), (1,), (1,)), rec, "exact", "after")


def test_conv_change_stride_one_same_conv_is_exact():
    old = LayerGeometry((3, 3), ((1, 1), (1, 1)), (1, 1), (1, 1))
    _, new, offset = conv_change("c", "conv", old, _record((3, 3), (7, 7), 2.0), "exact", "after")
    assert new == LayerGeometry((7, 7), ((3, 3), (3, 3)), (1, 1), (1, 1)) and offset == (0.0, 0.0)


def test_transposed_conv_refit_names_the_resize_that_fits():
    # a vocoder's ConvTranspose1d(k=16, stride 8, padding 4) at s = 2: taps (k' = 33) → p' = 9 + 3.5 = 12.5, half a pixel;
    # cells (k' = 32) → p' = 8.5 + 3.5 = 12
    old = LayerGeometry((16,), ((4, 4),), (8,), (1,), (0,))
    with pytest.raises(Refit) as info:
        conv_change("up", "transposed", old, _record((16,), (33,), 2.0), "exact", "after")
    assert info.value.fix == {"align": "cells"}
    assert "up: the new padding of this transposed conv would be 12.5" in str(info.value)
    _, new, offset = conv_change("up", "transposed", old, _record((16,), (32,), 2.0, align="cells"), "exact", "after")
    assert new == LayerGeometry((32,), ((12, 12),), (8,), (1,), (0,)) and offset == (0.0,)


def test_pool_change():
    # MaxPool2d(2) at s = 2 → window 4, stride 2, padding 1, exactly aligned
    old = LayerGeometry((2, 2), ((0, 0), (0, 0)), (2, 2), (1, 1))
    _, new, offset = pool_change("pool", "MaxPool2d", old, (2.0, 2.0))
    assert new == LayerGeometry((4, 4), ((1, 1), (1, 1)), (2, 2), (1, 1)) and offset == (0.0, 0.0)
    # stride 1: the rule exactly, (k−1)s+1 and p' = s·p
    _, new, _ = pool_change("pool", "MaxPool1d", LayerGeometry((3,), ((1, 1),), (1,), (1,)), (2.0,))
    assert new == LayerGeometry((5,), ((2, 2),), (1,), (1,))
    assert pool_change("pool", "MaxPool1d", LayerGeometry((3,), ((1, 1),), (1,), (1,)), (1.0,)) is None
    with pytest.raises(GeometryError, match=r"pool: a dilated pool \(2\) is not supported"):
        pool_change("pool", "MaxPool1d", LayerGeometry((3,), ((1, 1),), (1,), (2,)), (2.0,))
    with pytest.raises(GeometryError, match="pool: divisor_override=4"):
        pool_change("pool", "AvgPool2d", old, (2.0, 2.0), divisor_override=4)


def test_loader_change_and_window_shift():
    rec = _record((3,), (7,), 2.0)
    assert loader_change(rec, (2, 2, 3), (2, 2, 7)) == "shape"
    assert loader_change(replace(rec, dilation=(2,)), (2, 2, 3), (2, 2, 3)) == "dilation"
    assert loader_change(replace(rec, absorb=True), (2, 2, 3), (2, 2, 3)) == "stride"
    assert loader_change(replace(rec, centre_offset=(0.5,)), (2, 2, 3), (2, 2, 3)) == "padding"
    assert loader_change(rec, (2, 2, 3), (2, 2, 3)) == "none"
    assert loader_change(None, (3,), (3,)) == "none"
    two = _record((4, 3), (8, 7), 2.0)
    assert window_shift(replace(two, centre_offset=(0.5, 0.0), pad_extra="before"), 2) == (-0.5, 0.0)
    assert window_shift(replace(rec, centre_offset=(0.5,), pad_extra="after"), 1) == (0.5,)
    assert window_shift(two, 2) == (0.0, 0.0)
