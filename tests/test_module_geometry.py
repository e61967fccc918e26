"""kernelscale.module_geometry: the geometry of live layers, read from and written to the module
(the asymmetric padding's pre-hook included), and the half-pixel sides chosen from its strides."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kernelscale.geometry import LayerGeometry
from kernelscale.manifest import ConvRecord
from kernelscale.module_geometry import (Sides, input_jumps, int_tuple, layer_geometry, pool_ndim, set_conv_geometry,
                                         set_pool_geometry, sides_by_module)
from kernelscale.plan import half_pixel_sides


def test_int_tuple_spreads_a_layer_attribute_over_the_axes():
    assert int_tuple(3, 2) == (3, 3) and int_tuple((3,), 2) == (3, 3) and int_tuple((3, 5), 2) == (3, 5) and int_tuple(2.0, 1) == (2,)


@pytest.mark.parametrize("layer, expected", [
    (nn.Conv2d(2, 3, (3, 5), padding=(1, 2), stride=(1, 2), dilation=(2, 1)), LayerGeometry((3, 5), ((1, 1), (2, 2)), (1, 2), (2, 1))),
    (nn.Conv2d(2, 3, 4, padding="same"), LayerGeometry((4, 4), ((1, 2), (1, 2)), (1, 1), (1, 1))),  # torch pads (1, 2)
    (nn.Conv1d(2, 3, 4, padding="valid"), LayerGeometry((4,), ((0, 0),), (1,), (1,))),
    (nn.ConvTranspose1d(2, 3, 4, stride=2, padding=1, output_padding=1), LayerGeometry((4,), ((1, 1),), (2,), (1,), (1,))),
    (nn.MaxPool2d(2), LayerGeometry((2, 2), ((0, 0), (0, 0)), (2, 2), (1, 1))),
    (nn.AvgPool1d(3, stride=1, padding=1), LayerGeometry((3,), ((1, 1),), (1,), (1,))),
])
def test_layer_geometry_reads_the_layer(layer, expected):
    assert layer_geometry(layer) == expected


def test_pool_ndim():
    assert [pool_ndim(p) for p in (nn.MaxPool1d(2), nn.AvgPool2d(2), nn.MaxPool3d(2))] == [1, 2, 3]


@pytest.mark.parametrize("padding_mode", ["zeros", "replicate", "circular"])
def test_an_asymmetric_padding_goes_to_the_pre_hook_and_reads_back(padding_mode):
    """Pads that differ per side: the conv's own padding becomes 0 and the input is F.pad-ded by the
    hook in the layer's padding mode, exactly as a padded conv would; the state-dict keys are kept,
    layer_geometry reads the pads back, and equal pads afterwards switch the hook off."""
    torch.manual_seed(0)
    layer = nn.Conv2d(2, 3, 3, padding=1, padding_mode=padding_mode)
    keys = list(layer.state_dict())
    with torch.no_grad():
        layer.weight.data = torch.randn(3, 2, 4, 4)
    new = LayerGeometry((4, 4), ((1, 2), (2, 1)), (1, 1), (1, 1))
    set_conv_geometry(layer, new)
    assert layer_geometry(layer) == new and layer.padding == (0, 0) and list(layer.state_dict()) == keys
    x = torch.randn(1, 2, 9, 8)
    mode = {"zeros": "constant"}.get(padding_mode, padding_mode)
    expected = F.conv2d(F.pad(x, (2, 1, 1, 2), mode=mode), layer.weight, layer.bias)  # F.pad: last axis first
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
    assert layer(x).shape[-2:] == x.shape[-2:]  # 4-tap kernel, 3 pixels of padding: same size
    symmetric = LayerGeometry((4, 4), ((2, 2), (1, 1)), (1, 1), (1, 1))
    set_conv_geometry(layer, symmetric)
    assert layer.kernelscale_pad is None and layer.padding == (2, 1) and layer_geometry(layer) == symmetric
    expected = F.conv2d(F.pad(x, (1, 1, 2, 2), mode=mode), layer.weight, layer.bias)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)


def test_set_pool_geometry():
    pool = nn.MaxPool2d(2)
    set_pool_geometry(pool, LayerGeometry((4, 4), ((1, 1), (1, 1)), (2, 2), (1, 1)))
    assert layer_geometry(pool) == LayerGeometry((4, 4), ((1, 1), (1, 1)), (2, 2), (1, 1))
    assert pool(torch.zeros(1, 1, 8, 8)).shape[-2:] == (4, 4)


def test_input_jumps_follow_the_strides_in_registration_order():
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.MaxPool2d(2), nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 3, stride=2),
                        nn.ConvTranspose2d(2, 2, 4, stride=2), nn.Conv2d(2, 2, 3))
    # a stride-1 conv: the product of the strides before it (a transposed conv divides); a strided one: 0
    assert input_jumps(net) == {"0": 1.0, "2": 2.0, "3": 0.0, "4": 0.0, "5": 2.0}


def _half(pad_extra=None):
    return ConvRecord("interp", "linear", "cells", "unit", (2.0, 2.0), (3, 3), (6, 6), (0.5, 0.5), pad_extra=pad_extra)


def test_sides_alternate_only_where_a_record_names_none():
    sides = Sides()
    whole = ConvRecord("interp", "linear", "taps", "unit", (2.0, 2.0), (3, 3), (7, 7), (0.0, 0.0))
    assert [sides.take(r) for r in (_half(), whole, _half("before"), _half(), _half())] == ["after", "before", "before", "before", "after"]


def test_sides_by_module_rechoose_the_files_sides_from_the_strides():
    """The sides :func:`kernelscale.plan.half_pixel_sides` chooses on each conv's input jump, in
    place of the file's alternation; other records are kept as they are."""
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.Conv2d(2, 2, 3), nn.Conv2d(2, 2, 3))
    whole = ConvRecord("interp", "linear", "taps", "unit", (2.0, 2.0), (3, 3), (7, 7), (0.0, 0.0))
    records = {"0.weight": _half("after"), "2.weight": _half("before"), "3.weight": whole}
    chosen = sides_by_module(records, net)
    expected = half_pixel_sides([("0.weight", 1.0), ("2.weight", 2.0)])
    assert {n: r.pad_extra for n, r in chosen.items() if r.half_pixel} == expected
    assert chosen["3.weight"] is whole
    assert expected["0.weight"] != expected["2.weight"]  # the shifts cancel across the pool
