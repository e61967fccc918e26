"""Upsample guidance, CFG and noise-damped CFG: the identities of DESIGN §10.

Tolerances: u is the dtype's unit roundoff. D is a mean of k terms (≤ k roundings of terms bounded
by the max magnitude M), U copies, and the combination adds ≤ 4 roundings, so an identity that is
exact in real arithmetic holds within c·(k + 4)·u·M with c the number of passes (stated per test).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernelscale.errors import InvalidOptionError
from kernelscale.sampling import (
    alpha_bar_at,
    cfg,
    downsample_mean,
    flow_low_res_step,
    flow_snr,
    from_epsilon,
    guidance_weight,
    low_res_step,
    matched_alpha_bar,
    nd_cfg,
    nd_cfg_active,
    snr,
    to_epsilon,
    upsample_nearest,
)
from kernelscale.sampling.upsample_guidance import combine, guide
from test_sampling_schedules import U, sd_alphas_cumprod

PROPS = settings(max_examples=40, deadline=None)
FACTORS = st.sampled_from([(2, 2), (3, 3), (2, 3), (4,), (2, 2, 2), (1, 2, 2), (3, 1, 1)])
DTYPES = st.sampled_from([torch.float32, torch.float64])


def sample_pair(factors, dtype, seed, batch=2, channels=3, coarse=(2, 3, 2)):
    g = torch.Generator().manual_seed(seed)
    coarse = coarse[: len(factors)]
    fine = tuple(c * f for c, f in zip(coarse, factors))
    high = torch.randn(batch, channels, *fine, generator=g, dtype=torch.float64).to(dtype)
    low = torch.randn(batch, channels, *coarse, generator=g, dtype=torch.float64).to(dtype)
    return high, low


@PROPS
@given(factors=FACTORS, dtype=DTYPES, seed=st.integers(0, 2**31 - 1))
def test_down_up_identities(factors, dtype, seed):
    high, low = sample_pair(factors, dtype, seed)
    k = math.prod(factors)
    assert torch.allclose(downsample_mean(upsample_nearest(low, factors), factors), low, rtol=0, atol=k * U[dtype] * float(low.abs().max()))
    # D by hand: block means
    d = downsample_mean(high, factors)
    ref = high.to(torch.float64)
    for i, f in enumerate(factors):
        axis = ref.ndim - len(factors) + i
        ref = ref.unflatten(axis, (ref.shape[axis] // f, f)).mean(dim=axis + 1)
    assert torch.allclose(d.to(torch.float64), ref, rtol=0, atol=2 * k * U[dtype] * float(high.abs().max()))


@PROPS
@given(factors=FACTORS, dtype=DTYPES, seed=st.integers(0, 2**31 - 1))
def test_ug_with_w_1_replaces_the_coarse_part(factors, dtype, seed):
    """D(ε̃) = ε_low/√k (so U∘D ε̃ = U(ε_low)/√k), and the fine part ε − U∘D ε is untouched."""
    high, low = sample_pair(factors, dtype, seed)
    k = math.prod(factors)
    out = combine(high, low, factors, 1.0)
    m = float(high.abs().max()) + float(low.abs().max())
    tol = 3 * (k + 4) * U[dtype] * m
    assert torch.allclose(upsample_nearest(downsample_mean(out, factors), factors), upsample_nearest(low / math.sqrt(k), factors), rtol=0, atol=tol)
    fine_in = high - upsample_nearest(downsample_mean(high, factors), factors)
    fine_out = out - upsample_nearest(downsample_mean(out, factors), factors)
    assert torch.allclose(fine_out, fine_in, rtol=0, atol=tol)


@PROPS
@given(factors=FACTORS, dtype=DTYPES, seed=st.integers(0, 2**31 - 1), w=st.floats(-2, 3), g=st.floats(0, 12))
def test_ug_commutes_with_cfg(factors, dtype, seed, w, g):
    hu, lu = sample_pair(factors, dtype, seed)
    hc, lc = sample_pair(factors, dtype, seed + 1)
    k = math.prod(factors)
    a = combine(cfg(hu, hc, g), cfg(lu, lc, g), factors, w)
    b = cfg(combine(hu, lu, factors, w), combine(hc, lc, factors, w), g)
    m = max(float(t.abs().max()) for t in (hu, lu, hc, lc))
    # both sides: ≤ (k + 8) roundings on terms ≤ (1 + 2|g|)(1 + 2|w|)·M, two passes
    tol = 2 * (k + 8) * U[dtype] * (1 + 2 * abs(g)) * (1 + 2 * abs(w)) * m
    assert torch.allclose(a, b, rtol=0, atol=tol)


def test_ug_w_0_is_the_identity_and_is_linear_in_w():
    high, low = sample_pair((2, 2), torch.float64, 3)
    assert torch.equal(combine(high, low, (2, 2), 0.0), high)
    w = torch.tensor([0.5, 2.0], dtype=torch.float64).reshape(2, 1, 1, 1)
    per_sample = combine(high, low, (2, 2), w)
    for i, wi in enumerate([0.5, 2.0]):
        assert torch.allclose(per_sample[i], combine(high, low, (2, 2), wi)[i], rtol=0, atol=16 * U[torch.float64] * 8)


def test_snr_matching_clamps_beyond_the_cleanest_step():
    a = sd_alphas_cumprod()
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    low = low_res_step(x, a, 0.0, (2, 2))  # 4·SNR(0) > SNR(0): no step is that clean
    assert float(low.timestep) == 0.0 and abs(float(low.alpha_bar) - float(a[0])) <= 64 * U[torch.float64]


@pytest.mark.parametrize("t", [30.0, 37.5, 500.0, 999.0])
@pytest.mark.parametrize("factors", [(2, 2), (3, 3), (2, 2, 2)])
def test_snr_matching_gives_alpha_bar_over_p(t, factors):
    a = sd_alphas_cumprod()
    k = math.prod(factors)
    x = torch.zeros((1, 1) + tuple(2 * f for f in factors), dtype=torch.float64)
    low = low_res_step(x, a, t, factors)
    ab_t = float(alpha_bar_at(a, t))
    p = ab_t + (1 - ab_t) / k
    want = ab_t / p
    # τ recovered on the log-SNR interpolant to ~32u·max|λ| in λ; |dā/dλ| ≤ ā.
    lam_max = 20.0
    assert abs(float(low.alpha_bar) - want) <= 64 * U[torch.float64] * lam_max * want
    assert abs(float(matched_alpha_bar(ab_t, k)) - want) <= 4 * U[torch.float64]
    assert abs(float(snr(low.alpha_bar)) / (k * float(snr(ab_t))) - 1) <= 64 * U[torch.float64] * lam_max
    assert float(low.timestep) <= t  # more SNR means an earlier (less noisy) step


def test_snr_matching_discrete_takes_the_nearest_step():
    a = sd_alphas_cumprod()
    x = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    t = torch.tensor([200.0, 800.0], dtype=torch.float64)
    low = low_res_step(x, a, t, (2, 2), discrete=True)
    lam = torch.log(a) - torch.log1p(-a)
    target = torch.log(4 * snr(alpha_bar_at(a, t)))
    for i in range(2):
        assert int(low.timestep[i]) == int(torch.argmin((lam - target[i]).abs()))
        assert float(low.alpha_bar[i]) == float(a[low.timestep[i]])


@PROPS
@given(factors=FACTORS, t=st.floats(100, 999), seed=st.integers(0, 2**31 - 1))
def test_low_res_input_is_a_forward_sample_at_tau(factors, t, seed):
    """D(x_t)/√P_t = √ā_τ·D(x₀) + √(1−ā_τ)·(√k·D(ε)): a forward-process sample at τ whose noise
    √k·D(ε) is white with unit variance when ε is."""
    a = sd_alphas_cumprod()
    x0, eps = sample_pair(factors, torch.float64, seed)[0], sample_pair(factors, torch.float64, seed + 7)[0]
    ab_t = float(alpha_bar_at(a, t))
    x_t = math.sqrt(ab_t) * x0 + math.sqrt(1 - ab_t) * eps
    low = low_res_step(x_t, a, t, factors)
    k = math.prod(factors)
    ab_tau = float(low.alpha_bar)
    want = math.sqrt(ab_tau) * downsample_mean(x0, factors) + math.sqrt(1 - ab_tau) * math.sqrt(k) * downsample_mean(eps, factors)
    m = float(x0.abs().max()) + math.sqrt(k) * float(eps.abs().max())
    # ā_τ carries the τ round-trip error (≤ 64u·20·ā_τ, see above); √ halves it.
    assert torch.allclose(low.sample, want, rtol=0, atol=(2 * k + 8) * U[torch.float64] * m + 640 * U[torch.float64] * m)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("t", [100.0, 650.0, 990.0])
def test_ug_w_1_gives_the_low_res_x0_on_coarse_cells(prediction_type, t):
    """With w = 1 and the continuous τ, D(x̂₀ of the guided prediction) equals the low-resolution
    pass's own x̂₀, for every prediction type (the conversions use each step's coefficients)."""
    a = sd_alphas_cumprod()
    g = torch.Generator().manual_seed(int(t))
    factors = (2, 2)
    x_t = torch.randn(2, 4, 8, 6, generator=g, dtype=torch.float64)
    pred_high = torch.randn(2, 4, 8, 6, generator=g, dtype=torch.float64)
    low = low_res_step(x_t, a, t, factors)
    pred_low = torch.randn(2, 4, 4, 3, generator=g, dtype=torch.float64)
    ab_t = alpha_bar_at(a, t)
    out = guide(pred_high, x_t, ab_t, pred_low, low, factors, 1.0, prediction_type)
    x0_guided = from_epsilon(to_epsilon(out, x_t, ab_t, prediction_type), x_t, ab_t, "sample")
    x0_low = from_epsilon(to_epsilon(pred_low, low.sample, low.alpha_bar, prediction_type), low.sample, low.alpha_bar, "sample")
    # conversions divide by a_t ≥ √ā(990) ≈ 0.07 at most twice; magnitudes ≤ 5; ā_τ matched to ~1e-12.
    a_min = math.sqrt(float(ab_t)) * math.sqrt(1 - float(ab_t))
    tol = 64 * 16 * U[torch.float64] * 5 / a_min**2 + 1e-11 / a_min
    assert torch.allclose(downsample_mean(x0_guided, factors), x0_low, rtol=0, atol=tol)


def test_flow_low_res_step_matches_snr_and_forward_sample():
    g = torch.Generator().manual_seed(5)
    x0, eps = torch.randn(1, 2, 6, 6, generator=g, dtype=torch.float64), torch.randn(1, 2, 6, 6, generator=g, dtype=torch.float64)
    for sigma in (0.05, 0.5, 0.95):
        for factors in [(2, 2), (3, 3)]:
            k = math.prod(factors)
            x_t = (1 - sigma) * x0 + sigma * eps
            sample, sigma_low = flow_low_res_step(x_t, sigma, factors)
            assert abs(flow_snr(sigma_low) / (k * flow_snr(sigma)) - 1) <= 32 * U[torch.float64]
            want = (1 - sigma_low) * downsample_mean(x0, factors) + sigma_low * math.sqrt(k) * downsample_mean(eps, factors)
            assert torch.allclose(sample, want, rtol=0, atol=64 * U[torch.float64] * 8)


def test_guidance_weight_schedule():
    assert guidance_weight(999, w=1.2, eta=0.6) == 1.2
    assert guidance_weight(400, w=1.2, eta=0.6) == 1.2
    assert guidance_weight(399, w=1.2, eta=0.6) == 0.0
    assert guidance_weight(0, w=1.2, eta=1.0) == 1.2
    assert guidance_weight(0.5, w=2.0, eta=0.3, t_max=1.0) == 0.0
    assert torch.equal(guidance_weight(torch.tensor([900.0, 100.0]), w=1.0, eta=0.5), torch.tensor([1.0, 0.0], dtype=torch.float64))
    with pytest.raises(InvalidOptionError, match="1.5"):
        guidance_weight(10, w=1.0, eta=1.5)


def test_nd_cfg_reduces_to_cfg_with_the_same_model():
    hu, hc = sample_pair((2, 2), torch.float32, 11)[0], sample_pair((2, 2), torch.float32, 12)[0]
    for w in (0.0, 1.0, 7.5):
        assert torch.equal(nd_cfg(hu, hu, hc, w), cfg(hu, hc, w))


def test_nd_cfg_swaps_only_the_unconditional_term():
    u, c, base = (sample_pair((2, 2), torch.float64, seed)[0] for seed in (12, 13, 14))
    out = nd_cfg(base, u, c, 7.5)
    assert torch.allclose(out - cfg(u, c, 7.5), base - u, rtol=0, atol=32 * U[torch.float64] * 8 * 16)
    assert nd_cfg_active(0, 35) and nd_cfg_active(34, 35) and not nd_cfg_active(35, 35) and not nd_cfg_active(0, 0)


def test_shape_errors_name_the_shapes():
    high, low = sample_pair((2, 2), torch.float64, 0)
    with pytest.raises(InvalidOptionError, match=r"\(2, 3, 3, 3\)"):
        combine(high, torch.zeros(2, 3, 3, 3), (2, 2), 1.0)
    with pytest.raises(InvalidOptionError, match="not divisible"):
        downsample_mean(torch.zeros(1, 1, 5, 4), (2, 2))
    with pytest.raises(InvalidOptionError, match="1.5"):
        downsample_mean(high, (1.5, 2))
    with pytest.raises(InvalidOptionError, match="differ in shape"):
        cfg(high, low, 2.0)


@pytest.mark.parametrize("factors", [(2, 2), (3, 3), (2, 2, 2)])
@pytest.mark.parametrize("t", [150.0, 500.0, 950.0])
def test_ug_with_the_bayes_optimal_low_res_model_gives_the_exact_coarse_posterior(factors, t):
    """Data made of coarse cells, x₀ = U z with z ~ N(0, s²I). At the trained resolution the
    Bayes-optimal ε-predictor for z is ε̂(y, τ) = √(1−ā_τ)·y/(ā_τ s² + 1 − ā_τ). At the fine
    resolution the exact posterior of the coarse noise is E[D ε | x_t] =
    (√(1−ā_t)/k)·D x_t/(ā_t s² + (1−ā_t)/k) (the fine part of x_t is independent of z and D ε).
    UG with w = 1 must give exactly that as D(ε̃), whatever the fine-resolution model says: this
    checks SNR matching, the power adjustment and the 1/√k together."""
    a = sd_alphas_cumprod()
    s2 = 0.7
    k = math.prod(factors)
    g = torch.Generator().manual_seed(int(t) + k)
    x_t = torch.randn((2, 3) + tuple(2 * f for f in factors), generator=g, dtype=torch.float64)
    ab_t = float(alpha_bar_at(a, t))
    low = low_res_step(x_t, a, t, factors)
    ab_tau = float(low.alpha_bar)
    eps_low = math.sqrt(1 - ab_tau) * low.sample / (ab_tau * s2 + 1 - ab_tau)
    wrong_high = 0.3 * x_t  # any fine-resolution prediction
    guided = combine(wrong_high, eps_low, factors, 1.0)
    exact = math.sqrt(1 - ab_t) / k * downsample_mean(x_t, factors) / (ab_t * s2 + (1 - ab_t) / k)
    # ā_τ carries the τ round trip's relative error (≤ 64u·20, test above); the predictor is a
    # smooth rational function of ā_τ with O(1) condition, plus (k + 8) roundings.
    m = float(exact.abs().max()) + float(wrong_high.abs().max())
    assert torch.allclose(downsample_mean(guided, factors), exact, rtol=0, atol=(4 * 64 * 20 + 3 * (k + 8)) * U[torch.float64] * m)
