"""kernelscale.sampling.schedules: t ↔ SNR, prediction conversions (DESIGN §10).

Tolerances: u is the unit roundoff of the dtype. A conversion and its inverse each do at most four
roundings on terms bounded by |x_t| + |ε| and divide by a = √ā or s = √(1−ā) once, so a round trip
is within 8·u·(|x_t| + |ε|)/min(a, s) elementwise (first order, with a factor 2 to spare).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernelscale.errors import InvalidOptionError
from kernelscale.sampling import (
    alpha_bar_at,
    check_alphas_cumprod,
    flow_from_epsilon,
    flow_sigma_from_snr,
    flow_snr,
    flow_to_epsilon,
    from_epsilon,
    log_snr_table,
    snr,
    timestep_from_snr,
    to_epsilon,
)

PROPS = settings(max_examples=60, deadline=None)
U = {torch.float64: 2.0**-53, torch.float32: 2.0**-24}


def sd_alphas_cumprod(steps: int = 1000) -> torch.Tensor:
    """Stable Diffusion's scaled-linear schedule (β from 0.00085 to 0.012)."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


def cosine_alphas_cumprod(steps: int = 1000) -> torch.Tensor:
    t = torch.arange(steps + 1, dtype=torch.float64) / steps
    f = torch.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, 0)


SCHEDULES = {"sd": sd_alphas_cumprod(), "cosine": cosine_alphas_cumprod(), "short": sd_alphas_cumprod(20)}


def test_alpha_bar_at_integer_steps_is_the_table():
    for a in SCHEDULES.values():
        t = torch.arange(a.numel(), dtype=torch.float64)
        lam = log_snr_table(a).abs().max()
        # sigmoid(log a − log(1−a)): |Δλ| ≤ 4u·|λ| rounding, and |dā/dλ| = ā(1−ā) ≤ ā.
        assert torch.allclose(alpha_bar_at(a, t), a, rtol=8 * U[torch.float64] * float(lam) + 4 * U[torch.float64], atol=0)


def test_alpha_bar_between_steps_is_log_snr_linear():
    a = SCHEDULES["sd"]
    lam = log_snr_table(a)
    got = alpha_bar_at(a, 400.25)
    want = 1 / (1 + math.exp(-(0.75 * float(lam[400]) + 0.25 * float(lam[401]))))
    assert abs(float(got) - want) <= 16 * U[torch.float64] * want
    assert float(a[401]) < float(got) < float(a[400])


@PROPS
@given(name=st.sampled_from(sorted(SCHEDULES)), frac=st.floats(0, 1))
def test_timestep_from_snr_inverts_alpha_bar_at(name, frac):
    a = SCHEDULES[name]
    t = frac * (a.numel() - 1)
    back = timestep_from_snr(a, snr(alpha_bar_at(a, t)))
    lam = log_snr_table(a)
    # λ is recovered to ~8u·max|λ|; dt/dλ ≤ 1/min step of λ.
    step = float((lam[:-1] - lam[1:]).min())
    assert abs(float(back) - t) <= 32 * U[torch.float64] * float(lam.abs().max()) / step + 8 * U[torch.float64] * t


def test_timestep_from_snr_discrete_is_nearest_in_log_snr():
    a = SCHEDULES["sd"]
    lam = np.log(a.numpy()) - np.log1p(-a.numpy())
    targets = torch.tensor([1e-4, 0.01, 0.3, 1.0, 7.0, 300.0, 1e6], dtype=torch.float64)
    got = timestep_from_snr(a, targets, discrete=True)
    want = [int(np.argmin(np.abs(lam - math.log(v)))) for v in targets.tolist()]
    assert got.tolist() == want


def test_timestep_from_snr_refuses_targets_outside_the_schedule():
    a = SCHEDULES["sd"]
    with pytest.raises(InvalidOptionError, match="outside"):
        timestep_from_snr(a, float(snr(a[0])) * 2)
    with pytest.raises(InvalidOptionError, match="positive"):
        timestep_from_snr(a, -1.0)
    with pytest.raises(InvalidOptionError, match=r"\[0, 999\]"):
        alpha_bar_at(a, 999.5)


@pytest.mark.parametrize("bad, match", [
    (torch.tensor([0.9, 0.95]), "strictly decreasing"),
    (torch.tensor([1.0, 0.5]), r"alphas_cumprod\[0\] = 1.0"),
    (torch.tensor([[0.9, 0.5]]), "1-D"),
])
def test_check_alphas_cumprod_names_the_bad_value(bad, match):
    with pytest.raises(InvalidOptionError, match=match):
        check_alphas_cumprod(bad)


@PROPS
@given(alpha_bar=st.floats(1e-4, 1 - 1e-4), dtype=st.sampled_from([torch.float32, torch.float64]),
       kind=st.sampled_from(["v_prediction", "sample"]), seed=st.integers(0, 2**31 - 1))
def test_epsilon_round_trips(alpha_bar, dtype, kind, seed):
    g = torch.Generator().manual_seed(seed)
    x_t = torch.randn(2, 3, 5, 4, generator=g, dtype=dtype)
    eps = torch.randn(2, 3, 5, 4, generator=g, dtype=dtype)
    a, s = math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar)
    tol = 8 * U[dtype] * (x_t.abs() + eps.abs()) / min(a, s)
    back = to_epsilon(from_epsilon(eps, x_t, alpha_bar, kind), x_t, alpha_bar, kind)
    assert bool(((back - eps).abs() <= tol).all())
    # and the other way round, from the prediction type to ε and back
    pred = from_epsilon(eps, x_t, alpha_bar, kind)
    again = from_epsilon(to_epsilon(pred, x_t, alpha_bar, kind), x_t, alpha_bar, kind)
    assert bool(((again - pred).abs() <= tol / min(a, s) + 8 * U[dtype] * pred.abs()).all())


def test_conversions_match_the_forward_process():
    """On an exact forward-process sample the conversions give the true ε, v and x₀."""
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 8, generator=g, dtype=torch.float64), torch.randn(4, 8, generator=g, dtype=torch.float64)
    ab = torch.tensor([0.9, 0.5, 0.1, 0.01], dtype=torch.float64).reshape(4, 1)
    a, s = ab.sqrt(), (1 - ab).sqrt()
    x_t = a * x0 + s * eps
    v = a * eps - s * x0
    tol = 16 * U[torch.float64] * 10 / 0.1
    assert torch.allclose(to_epsilon(v, x_t, ab, "v_prediction"), eps, atol=tol, rtol=0)
    assert torch.allclose(to_epsilon(x0, x_t, ab, "sample"), eps, atol=tol, rtol=0)
    assert torch.allclose(from_epsilon(eps, x_t, ab, "v_prediction"), v, atol=tol, rtol=0)
    assert torch.allclose(from_epsilon(eps, x_t, ab, "sample"), x0, atol=tol, rtol=0)
    assert to_epsilon(eps, x_t, ab, "epsilon") is eps


def test_flow_conversions_match_the_forward_process():
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(3, 8, generator=g, dtype=torch.float64), torch.randn(3, 8, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64).reshape(3, 1)
    x_t = (1 - sigma) * x0 + sigma * eps
    u = eps - x0
    tol = 16 * U[torch.float64] * 10 / 0.1
    assert torch.allclose(flow_to_epsilon(u, x_t, sigma, "flow"), eps, atol=tol, rtol=0)
    assert torch.allclose(flow_to_epsilon(x0, x_t, sigma, "sample"), eps, atol=tol, rtol=0)
    assert torch.allclose(flow_from_epsilon(eps, x_t, sigma, "flow"), u, atol=tol, rtol=0)
    assert torch.allclose(flow_from_epsilon(eps, x_t, sigma, "sample"), x0, atol=tol, rtol=0)


@PROPS
@given(sigma=st.floats(1e-3, 1 - 1e-3))
def test_flow_sigma_from_snr_inverts_flow_snr(sigma):
    assert abs(flow_sigma_from_snr(flow_snr(sigma)) - sigma) <= 16 * U[torch.float64]


def test_unknown_prediction_type_is_refused():
    x = torch.zeros(2)
    with pytest.raises(InvalidOptionError, match="'velocity'"):
        to_epsilon(x, x, 0.5, "velocity")
    with pytest.raises(InvalidOptionError, match="'v_prediction'"):
        flow_to_epsilon(x, x, 0.5, "v_prediction")
