"""kernelscale.loading: a checkpoint written by ``kernelscale convert`` loaded into the original
architecture (public as kernelscale.nn.load): layers reshaped as the records say, the tensors as
stored, names matched (a prefix, a renaming that records follow), everything checked first."""

import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import kernelscale.nn
from kernelscale.convert import convert_checkpoint
from kernelscale.errors import GeometryError, InvalidCheckpointError
from kernelscale.loading import ORIGINAL_DENOISER_PREFIX, load
from kernelscale.options import ResizeOptions


def _net(weight_norm: bool = False) -> nn.Module:
    torch.manual_seed(0)
    first, second = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 2, 3, padding=1)
    if weight_norm:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            first = nn.utils.weight_norm(first)
    return nn.Sequential(first, nn.ReLU(), second)


def _converted(tmp_path, state, name="out.safetensors", **options):
    save_file(state, str(tmp_path / "in.safetensors"))
    convert_checkpoint(tmp_path / "in.safetensors", tmp_path / name, ResizeOptions(scale=2, **options), progress=False, force=True)
    return tmp_path / name


def test_nn_load_is_this_load():
    assert kernelscale.nn.load is load


# The converter resizes in float32 blocks of rows on single-threaded workers, supersample the whole
# tensor: the same operator, summed in another order, so each tap agrees to its three float32
# roundings at s = 2 (tests/test_weight_norm.py, F32_RTOL) of terms no larger than the largest tap
# (linear taps: non-negative weights); g' follows v' through its norm, plus one rounding of its own.
F32_RTOL = 8 * 2.0 ** -24
G_RTOL = F32_RTOL + 2.0 ** -24


@pytest.mark.parametrize("weight_norm", [False, True], ids=["plain", "weight norm"])
def test_load_reshapes_the_layers_as_supersample_does(tmp_path, weight_norm):
    """The layers take the records' geometry (3×3 → 7×7, padding 1 → 3) and the stored tensors, byte
    for byte, weight norm's v and g included: the geometry supersample gives, and its weights to
    float32 rounding."""
    path = _converted(tmp_path, {k: v.detach().clone() for k, v in _net(weight_norm).state_dict().items()})
    net, reference = _net(weight_norm), _net(weight_norm)
    report = load(net, path)
    kernelscale.nn.supersample(reference, 2, execution="materialised")
    assert [c.name for c in report] == ["0", "2"] and net[0].kernel_size == net[2].kernel_size == (7, 7) and net[2].padding == (3, 3)
    for ours, theirs in zip(net, reference):
        if isinstance(ours, nn.Conv2d):
            assert (ours.kernel_size, ours.padding, ours.stride, ours.dilation) == (theirs.kernel_size, theirs.padding, theirs.stride,
                                                                                     theirs.dilation)
    stored, expected = load_file(str(path)), reference.state_dict()
    for name, tensor in net.state_dict().items():
        assert torch.equal(tensor, stored[name])
        rtol = G_RTOL if name.endswith("weight_g") else F32_RTOL
        torch.testing.assert_close(tensor, expected[name], rtol=rtol, atol=rtol * expected[name].abs().max().item())
    assert net(torch.randn(1, 2, 12, 12)).shape == (1, 2, 12, 12)


def test_a_mismatch_is_refused_before_the_module_is_touched(tmp_path):
    path = _converted(tmp_path, {k: v.detach().clone() for k, v in _net().state_dict().items()})
    other = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 5, padding=2))  # a 5×5 second conv
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(GeometryError, match=r"^2\.weight: the module's kernel is \(5, 5\) but the record was made for \(3, 3\)"):
        load(other, path)
    assert other[0].kernel_size == (3, 3) and all(torch.equal(v, before[k]) for k, v in other.state_dict().items())
    with pytest.raises(InvalidCheckpointError, match=r"out\.safetensors: missing tensors the module needs: '3\.bias', '3\.weight'"):
        load(nn.Sequential(*_net(), nn.Conv2d(2, 2, 1)), path)


def test_the_single_file_denoiser_prefix_is_found(tmp_path):
    state = {ORIGINAL_DENOISER_PREFIX + k: v.detach().clone() for k, v in _net().state_dict().items()}
    state["first_stage_model.w"] = torch.zeros(3)
    path = _converted(tmp_path, state, include=(ORIGINAL_DENOISER_PREFIX + "*",))
    net = _net()
    report = load(net, path)
    assert net[0].kernel_size == (7, 7) and sorted(report.manifest["tensors"]) == ["0.weight", "2.weight"]


def test_a_renaming_carries_weight_norms_record_along(tmp_path):
    """``names=``: the file's names → the module's; g's record names its v, which is renamed too
    (else g's v would have no record, and the load would be refused)."""
    state = {"enc." + k: v.detach().clone() for k, v in _net(weight_norm=True).state_dict().items()}
    path = _converted(tmp_path, state)
    net = _net(weight_norm=True)
    report = load(net, path, names={n: n[len("enc."):] for n in state})
    assert sorted(report.manifest["tensors"]) == ["0.weight_g", "0.weight_v", "2.weight"]
    assert net[0].weight_v.shape[-2:] == (7, 7) and net[0].weight.shape[-2:] == (7, 7) and net[0].padding == (3, 3)
    stored = load_file(str(path))
    assert torch.equal(net[0].weight_g, stored["enc.0.weight_g"])
