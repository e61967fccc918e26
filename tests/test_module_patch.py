"""kernelscale.module_patch (changes to a live module's layers: located, checked, computed, then
applied keeping every Parameter object) and kernelscale.module_report (the report of them)."""

import warnings

import pytest
import torch
from torch import nn

from kernelscale.errors import GeometryError, InvalidOptionError
from kernelscale.geometry import LayerGeometry
from kernelscale.manifest import Action, ConvRecord
from kernelscale.module_patch import (Pending, apply_pending, change_entry, check_layer, is_lazy, locate, ordered_changes, owner,
                                      pool_changes, replace_data, require_module)
from kernelscale.module_report import LayerChange, SupersampleReport
from kernelscale.options import ResizeOptions


def test_owner_and_locate_give_the_layer_a_tensor_belongs_to():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        hook = nn.utils.weight_norm(nn.Conv1d(2, 3, 5))
    net = nn.Sequential(hook, nn.utils.parametrizations.weight_norm(nn.Conv1d(3, 3, 5)), nn.Conv1d(3, 3, 1))
    layers = dict(net.named_modules())
    assert owner("a.b.weight") == ("a.b", "weight") and owner("weight") == ("", "weight")
    assert locate("0.weight_v", layers) == ("0", net[0], "weight_v")
    # the parametrization form: the layer it parametrizes, the tensor held by its parametrization list
    assert locate("1.parametrizations.weight.original0", layers) == ("1", net[1].parametrizations.weight, "original0")
    assert locate("2.bias", layers) == ("2", net[2], "bias")


def test_check_layer_says_what_the_adapter_can_patch():
    assert check_layer("c", nn.Conv2d(1, 1, 3), "c.weight", False) == "conv"
    assert check_layer("c", nn.ConvTranspose2d(1, 1, 3), "c.weight", False) == "transposed"
    assert check_layer("l", nn.Linear(4, 2), "l.weight", False) == "linear"
    assert check_layer("q", nn.Linear(4, 2), "q.bias", False, "attention") == "attention"
    with pytest.raises(GeometryError, match=r"^n\.weight: the plan resizes it, but it belongs to a LayerNorm"):
        check_layer("n", nn.LayerNorm(4), "n.weight", False)
    with pytest.raises(GeometryError, match=r"^c: padding_mode='reflect' mirrors about the edge sample"):
        check_layer("c", nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect"), "c.weight", False)
    assert check_layer("c", nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect"), "c.weight", True) == "conv"
    with pytest.raises(GeometryError, match=r"^c\.weight_v: named as weight norm's v, but 'c' has no weight norm"):
        check_layer("c", nn.Conv2d(1, 1, 3), "c.weight_v", False)


def test_change_entry_gives_the_new_geometry_by_the_rule():
    """A 3×3 conv, padding 1, resized to 7×7 (linear taps, s = 2): p' = (k'−1)/2 = 3 (DESIGN §3)."""
    record = ConvRecord("interp", "linear", "taps", "unit", (2.0, 2.0), (3, 3), (7, 7), (0.0, 0.0))
    change, geometry, in_features = change_entry("c", nn.Conv2d(2, 4, 3, padding=1), record, "exact", "after", (4, 2, 3, 3),
                                                 (4, 2, 7, 7))
    assert geometry == LayerGeometry((7, 7), ((3, 3), (3, 3)), (1, 1), (1, 1)) and in_features is None
    assert (change.action, change.method, change.old_padding, change.new_padding) == (Action.RESIZE, "interp/linear/taps", (1, 1), (3, 3))
    assert change.describe() == "c (Conv2d) resize interp/linear/taps: k 3→7, p 1→3, stride 1, dilation 1"


def test_replace_data_keeps_the_parameter_and_trains_on_the_new_shape():
    conv = nn.Conv2d(1, 1, 3)
    weight = conv.weight
    conv(torch.zeros(1, 1, 5, 5)).sum().backward()
    replace_data(weight, torch.ones(1, 1, 7, 7))
    assert conv.weight is weight and weight.shape == (1, 1, 7, 7) and weight.grad is None  # the old-shape grad is dropped
    conv.kernel_size = (7, 7)
    conv(torch.zeros(1, 1, 9, 9)).sum().backward()
    assert weight.grad.shape == (1, 1, 7, 7)


def test_apply_pending_sets_data_geometry_and_in_features_at_once():
    conv, linear = nn.Conv2d(1, 2, 3, padding=1), nn.Linear(12, 3)
    geometry = LayerGeometry((7, 7), ((3, 3), (3, 3)), (1, 1), (1, 1))
    apply_pending([Pending(conv, None, geometry, {"weight": torch.zeros(2, 1, 7, 7)}),
                   Pending(linear, None, None, {"weight": torch.zeros(3, 48)}, in_features=48)])
    assert conv.kernel_size == (7, 7) and conv.padding == (3, 3) and conv(torch.zeros(1, 1, 6, 6)).shape == (1, 2, 6, 6)
    assert linear.in_features == 48 and linear(torch.zeros(1, 48)).shape == (1, 3)


def test_pool_changes_follow_the_options():
    net = nn.Sequential(nn.MaxPool2d(2), nn.AvgPool2d(2), nn.MaxPool1d(3, stride=1, padding=1))
    pending, skipped = pool_changes(net, ResizeOptions(scale=2, exclude=("1",)))
    assert [p.change.name for p in pending] == ["0", "2"] and skipped == [("1", "excluded by '1'")]
    # MaxPool2d(2) at s = 2: the window keeps its extent in the scene (4 fine pixels), padding 1 centres it
    assert pending[0].change.describe() == "0 (MaxPool2d) pool window: k 2→4, p 0→1, stride 2, dilation 1"
    before = net[0](torch.zeros(1, 1, 16, 16)).shape[-2:]
    apply_pending(pending)
    assert net[0](torch.zeros(1, 1, 32, 32)).shape[-2:] == tuple(2 * n for n in before)  # an s× input gives an s× output


def test_ordered_changes_one_line_per_layer_in_module_order():
    a, b = nn.Conv2d(1, 1, 1), nn.Linear(2, 2)
    layers = {"": None, "a": a, "b": b}
    ca, cb = (LayerChange(n, "X", Action.ATTENTION, "temperature ×1.1000", (), ()) for n in "ab")
    pending = [Pending(b, cb), Pending(a, ca), Pending(b, LayerChange("b", "X", Action.ATTENTION, "again", (), ()))]
    assert ordered_changes(pending, layers) == (ca, cb)


def test_report_indexes_and_prints():
    change = LayerChange("c", "Conv2d", Action.GEOMETRY, "dilate (geometry only)", (3, 3), (3, 3), (1, 1), (2, 2), (1, 1), (1, 1),
                         (1, 1), (2, 2))
    report = SupersampleReport((change,), (("d", "excluded by 'd'"),))
    assert report["c"] is change and report[0] is change and list(report) == [change] and report.names() == ["c"] and len(report) == 1
    assert str(report) == "c (Conv2d) geometry dilate (geometry only): k 3, p 1→2, stride 1, dilation 1→2\n1 layers changed, 1 left unchanged"
    with pytest.raises(KeyError):
        report["d"]


def test_require_module_and_lazy_tensors():
    conv = nn.Conv2d(1, 1, 1)
    assert require_module(conv, "supersample") is conv
    with pytest.raises(InvalidOptionError, match=r"^kernelscale\.nn\.load takes a torch nn\.Module, got a builtins\.dict$"):
        require_module({}, "load")
    assert is_lazy(nn.LazyConv2d(1, 3).weight) and not is_lazy(conv.weight)


def test_the_report_names_what_each_layer_got_and_a_fallback():
    """Each line says the method as applied (dilate has no mode) and, where a layer took the
    fallback, the method the plan asked for."""
    from kernelscale.nn import supersample

    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.Conv2d(4, 4, 2))
    report = supersample(model, 2, method="disperse", fallback="interp", execution="materialised")
    lines = {change.name: change.method for change in report}
    assert lines == {"0": "disperse/taps", "1": "interp/linear/taps (fallback for disperse)"}, lines
    assert "(fallback for disperse)" in str(report)
    dilated = supersample(torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1)), 2, method="dilate")
    assert dilated["0"].method == "dilate/taps"
