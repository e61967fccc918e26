"""End to end in 1-D: a network with an absorbing front end (DESIGN §5, ``absorb=["front"]``).

The model: ``front`` = Conv1d(1, 8, kernel 4, stride 4) — non-overlapping patches, like an
STFT-style or patch-embedding front end — then Conv1d(8, 8, 3, padding 1), ReLU,
Conv1d(8, 4, 3, padding 1). The signal is resampled 2× (think 16 kHz → 32 kHz). Absorbing the
scale in ``front`` (stride 4 → 8, kernel 4 → 8, method pinv) puts its output on the same grid as
before, so every layer after it is untouched.

Why pinv is exact (T6 per patch): with B the 8×4 cells upsampler of the resampling mode,
R = pinv(Bᵀ) gives ⟨R w, B p⟩ = ⟨w, p⟩ for every 4-sample patch p. Nearest resampling maps each
patch to exactly B p, so the whole network's output is unchanged. Linear resampling also blends
each hi-res patch's first and last sample with the neighbouring patch: hi-res sample 8o sits at
low-res position 4o − ¼, so it is ¾·x[4o] + ¼·x[4o−1] where B p has x[4o] (clamped), and likewise
at the patch's end. The front end's output is therefore exactly

    front'(U x)[c, o] = front(x)[c, o] + (R w)[c, 0]·¼·(x[4o−1] − x[4o]) + (R w)[c, 7]·¼·(x[4o+4] − x[4o+3])

(the terms vanish at the signal's two ends, where U clamps as B does) — a closed form checked
below to float64 rounding, which bounds the error by ¼·(|R w_0| + |R w_7|)·max|x[i+1] − x[i]|.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from kernelscale.nn import load, supersample
from kernelscale.options import ResizeOptions

EXACT = 1e-12  # float64; outputs are sums of ≤ 24 products of O(1) numbers


class AudioNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.front = nn.Conv1d(1, 8, kernel_size=4, stride=4)
        self.body1 = nn.Conv1d(8, 8, 3, padding=1)
        self.body2 = nn.Conv1d(8, 4, 3, padding=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.front(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body2(torch.relu(self.body1(self.front(x))))


def model() -> AudioNet:
    torch.manual_seed(0)
    return AudioNet().double().eval()


def signal(n: int = 256) -> torch.Tensor:
    """(2, 1, n): two tones plus a little noise, float64, seeded."""
    g = torch.Generator().manual_seed(1)
    t = torch.arange(n, dtype=torch.float64)
    tones = torch.stack([torch.sin(2 * torch.pi * 5 * t / n), torch.cos(2 * torch.pi * 11 * t / n + 0.3)])
    return (tones + 0.05 * torch.randn(2, n, generator=g, dtype=torch.float64)).unsqueeze(1)


def resample(x: torch.Tensor, mode: str) -> torch.Tensor:
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(x, scale_factor=2, mode=mode, **kwargs)


def absorbed(net: nn.Module, mode: str) -> nn.Module:
    out = copy.deepcopy(net)
    # include: only the front end changes; absorb alone would let the plan resize the body too.
    report = supersample(out, 2, absorb=["front"], include=["front"], method="pinv", mode=mode)
    assert report.names() == ["front"] and report["front"].action == "absorb"
    return out


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_front_end_absorbs_the_scale_and_the_rest_is_untouched():
    net = model()
    big = absorbed(net, "nearest")
    assert (big.front.kernel_size, big.front.stride, big.front.padding) == ((8,), (8,), (0,))
    for name in ("body1", "body2"):
        a, b = getattr(net, name), getattr(big, name)
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
        assert (a.kernel_size, a.padding, a.stride, a.dilation) == (b.kernel_size, b.padding, b.stride, b.dilation)
    x = signal()
    assert big.features(resample(x, "nearest")).shape == net.features(x).shape == (2, 8, 64)


def test_pinv_absorb_is_exact_on_nearest_resampled_signal():
    net = model()
    x = signal()
    assert rel(absorbed(net, "nearest")(resample(x, "nearest")), net(x)) < EXACT


def test_pinv_absorb_on_linear_resampled_signal_follows_its_closed_form():
    net = model()
    big = absorbed(net, "linear")
    x = signal()
    w = big.front.weight[:, 0]  # (8, 8): R w per output channel
    xs = x[:, 0]
    before = torch.zeros_like(xs[:, ::4])  # ¼(x[4o−1] − x[4o]); 0 for o = 0 (U clamps like B)
    before[:, 1:] = 0.25 * (xs[:, 3:-1:4] - xs[:, 4::4])
    after = torch.zeros_like(before)  # ¼(x[4o+4] − x[4o+3]); 0 for the last patch
    after[:, :-1] = 0.25 * (xs[:, 4::4] - xs[:, 3:-1:4])
    predicted = net.features(x) + w[None, :, 0, None] * before[:, None] + w[None, :, -1, None] * after[:, None]
    features = big.features(resample(x, "linear"))
    assert rel(features, predicted) < EXACT
    bound = 0.25 * (w[:, 0].abs() + w[:, -1].abs())[None, :, None] * (xs[:, 1:] - xs[:, :-1]).abs().max()
    assert ((features - net.features(x)).abs() <= bound + EXACT).all()


def test_convert_and_load_give_the_same_absorbing_model(tmp_path):
    from kernelscale.convert import convert_checkpoint

    net = model()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "audio.safetensors"))
    options = ResizeOptions(scale=2, absorb=("front",), include=("front",), method="pinv", mode="nearest")
    convert_checkpoint(tmp_path / "audio.safetensors", tmp_path / "audio_x2.safetensors", options, progress=False)
    loaded = copy.deepcopy(net)
    report = load(loaded, tmp_path / "audio_x2.safetensors")
    assert report.names() == ["front"] and loaded.front.stride == (8,)
    x = signal()
    assert torch.equal(loaded(resample(x, "nearest")), absorbed(net, "nearest")(resample(x, "nearest")))
    assert rel(loaded(resample(x, "nearest")), net(x)) < EXACT


def test_absorbing_a_strided_layer_needs_an_integer_scale():
    from kernelscale.errors import InvalidOptionError

    with pytest.raises(InvalidOptionError, match="front"):
        supersample(model(), 1.5, absorb=["front"], include=["front"], method="pinv")
