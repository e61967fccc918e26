"""End to end on trained networks: a CNN and an MLP trained here on scikit-learn's 8×8 digits,
resized to 16×16 and evaluated on upsampled held-out digits (DESIGN §4: T1, T6).

Seeded: split, initialisation and batch order, one CPU thread. Measured at these seeds (450
held-out digits, one digit = 0.22 points; accuracy at 8×8: CNN 98.0 %, MLP 97.1 %):

========================  ===========  =====================  =========================================
network, method           16×16 input  accuracy (Δ vs 8×8)    margin asserted, and why
========================  ===========  =====================  =========================================
CNN dilate + pinv grid    nearest      98.0 % (0), exact      0: T1 per conv, T6 for the Linear
MLP pinv (cubic, linear)  bicubic,     97.1 % (0), exact      0: T6
                          bilinear
CNN dilate                bicubic      97.3 % (−0.7)          2.6 points, the paper's figure
MLP interp cells, paper   bicubic      96.2 % (−0.9) linear,  2.6 points, the paper's figure
coefficient                            97.3 % (+0.2) cubic
CNN interp cubic taps     bicubic      97.3 % (−0.7)          2.6 points; dilate ≥ cubic − 2 digits
CNN interp linear taps    bicubic      93.6 % (−4.4)          ≥ 8 digits below dilate and cubic; the
                                                              paper's 2.6 does not hold here
========================  ===========  =====================  =========================================

Small CNNs learn sharp 3×3 kernels; interpolating them to 7×7 (linear) or 11×11 (cubic) taps
low-passes them (T2: interp = dilate ⊛ c·h_s; linear's triangle, response sinc², attenuates the
passband more than the flatter cubic), which costs accuracy that dilation does not. Accuracy
margins are counted in test digits (1/450 each), so that a change that flips a digit or two
cannot decide a test; the blur itself is also checked on the features, a continuous quantity.
"Exact" is checked on the logits in float64: relative error < 1e-10 (sums of ≤ 2048 products,
float64 rounding ~1e-13).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kernelscale.nn import supersample

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from digits import fit, load_digits_split, seeded_init  # noqa: E402  the example's data and init

pytest.importorskip("sklearn")

SEED = 0
PAPER_DROP = 0.026  # the paper's worst-case accuracy drop for fully-connected interpolation
EXACT = 1e-10


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: 22 ms vs 760 ms per MLP epoch


@pytest.fixture(scope="module")
def digits():
    """(x_train, y_train, x_test, y_test): (N, 1, 8, 8) float32 in [0, 1]; the example's 75/25 split."""
    return load_digits_split(SEED)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int) -> nn.Module:
    return fit(seeded_init(model, SEED), x, y, epochs, SEED)


def cnn() -> nn.Module:
    """Stride-1 convs and a Linear over the (32, 8, 8) feature grid: T1 + T6 make it exact."""
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(32 * 8 * 8, 10))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


@pytest.fixture(scope="module")
def trained(digits):
    x_train, y_train, _, _ = digits
    return {"cnn": train(cnn(), x_train, y_train, epochs=15), "mlp": train(mlp(), x_train, y_train, epochs=30)}


def upsample(x: torch.Tensor, mode: str) -> torch.Tensor:
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(x, size=(16, 16), mode=mode, **kwargs)


@torch.no_grad()
def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x.to(next(model.parameters()).dtype))


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (logits(model, x).argmax(1) == y).double().mean().item()


def resized(model: nn.Module, **options) -> nn.Module:
    out = copy.deepcopy(model)
    supersample(out, 2, **options)
    return out


CNN_GRID = {"5": (32, 8, 8)}
MLP_GRID = {"1": (1, 8, 8)}


def test_cnn_dilated_is_exact_on_nearest_upsampled_digits(trained, digits):
    *_, x_test, y_test = digits
    model = copy.deepcopy(trained["cnn"]).double()
    big = resized(model, method="dilate", grids=CNN_GRID, layers=[{"pattern": "5", "method": "pinv", "mode": "nearest"}])
    low, high = logits(model, x_test), logits(big, upsample(x_test.double(), "nearest"))
    assert ((high - low).norm() / low.norm()).item() < EXACT
    assert accuracy(big, upsample(x_test, "nearest"), y_test) == accuracy(model, x_test, y_test)


@pytest.mark.parametrize("mode, torch_mode", [("cubic", "bicubic"), ("linear", "bilinear")])
def test_mlp_pinv_is_exact_on_digits_upsampled_by_its_upsampler(trained, digits, mode, torch_mode):
    *_, x_test, y_test = digits
    model = copy.deepcopy(trained["mlp"]).double()
    big = resized(model, grids=MLP_GRID, method="pinv", mode=mode)
    low, high = logits(model, x_test), logits(big, upsample(x_test.double(), torch_mode))
    assert ((high - low).norm() / low.norm()).item() < EXACT
    assert accuracy(big, upsample(x_test, torch_mode), y_test) == accuracy(model, x_test, y_test)


def test_paper_margin_holds_for_fc_interpolation_and_cnn_dilation(trained, digits):
    *_, x_test, y_test = digits
    bicubic = upsample(x_test, "bicubic")
    mlp_base = accuracy(trained["mlp"], x_test, y_test)
    cnn_base = accuracy(trained["cnn"], x_test, y_test)
    for mode in ("linear", "cubic"):
        big = resized(trained["mlp"], grids=MLP_GRID, mode=mode, coef="paper")
        assert accuracy(big, bicubic, y_test) >= mlp_base - PAPER_DROP, f"MLP interp cells {mode}"
    big = resized(trained["cnn"], method="dilate", grids=CNN_GRID)
    assert accuracy(big, bicubic, y_test) >= cnn_base - PAPER_DROP, "CNN dilate"


def test_interpolation_blurs_small_cnn_kernels_and_dilation_holds_best(trained, digits):
    """T2: interp = dilate ⊛ c·h_s, dilation followed by a low-pass; linear's h (a triangle,
    response sinc²) attenuates the passband more than cubic's. On this CNN's sharp learned 3×3
    kernels the blur is what costs accuracy: linear loses clearly more than cubic and dilate.
    (The Linear's grid is interpolated with the run's mode too, and adds its own blur: measured
    at this seed, of linear's 17 digits lost against cubic, 11 go with the conv kernels and 6
    with the grid. The feature check below sees the conv kernels alone.)"""
    *_, x_test, y_test = digits
    bicubic = upsample(x_test, "bicubic")
    model = trained["cnn"]
    dilate, cubic, linear = (resized(model, grids=CNN_GRID, **options)
                             for options in (dict(method="dilate"), dict(mode="cubic"), dict()))

    # The mechanism, on a continuous quantity (no digit to flip): the features the Linear reads,
    # after both convs and ReLUs, stray from the dilated network's (which keeps each conv's
    # function, T1) further under linear's blur than under cubic's. Measured: 0.265 vs 0.163
    # (ratio 1.63); 1.3 leaves room for retraining drift, and still fails if the two filters
    # blurred alike.
    with torch.no_grad():
        reference = dilate[:4](bicubic)
        stray = {name: ((net[:4](bicubic) - reference).norm() / reference.norm()).item()
                 for name, net in (("cubic", cubic), ("linear", linear))}
    assert stray["linear"] > 1.3 * stray["cubic"] > 0, stray

    # The consequence, in whole test digits (one is 1/450 = 0.22 points). Measured: dilate 438,
    # interp cubic 438, interp linear 421 of 450 digits, 8×8 base 441 (module docstring).
    digit = 1 / len(y_test)
    base = accuracy(model, x_test, y_test)
    acc = {name: accuracy(net, bicubic, y_test) for name, net in (("dilate", dilate), ("cubic", cubic), ("linear", linear))}
    # Dilation holds at least as well as cubic: dilate and cubic tie at this seed, so a strict
    # order would be decided by one digit; 2 digits of slack absorb that and still catch a
    # dilation that fell behind.
    assert acc["dilate"] >= acc["cubic"] - 2 * digit, acc
    # Cubic's milder blur keeps the paper's worst case (dilate's is checked above).
    assert acc["cubic"] >= base - PAPER_DROP, acc
    # Linear's blur costs a clear margin: measured 17 digits below both; 8 (1.8 points, about
    # half, and less than the conv kernels' 11 alone) is far beyond a flipped digit or two and
    # fails if linear did as well as the others.
    assert min(acc["dilate"], acc["cubic"]) - acc["linear"] >= 8 * digit - 1e-12, acc
    # ...but only the blur: a broken resize lands near chance (10 %). Linear loses 4.4 points
    # here; 10 points (45 digits) would be something other than the blur.
    assert acc["linear"] >= base - 0.10, acc
