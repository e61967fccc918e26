"""Upsample guidance (Hwang, Park, Jo 2024, arXiv 2404.01709), DESIGN §10.

A model trained at one resolution guides its own prediction at a finer one. The supersampled axes
are the last ``len(factors)`` axes of a sample (e.g. (2, 2) for images (B, C, H, W); (2, 2, 2) or
(1, 2, 2) for videos (B, C, T, H, W)); k = ∏ factors is the number of fine cells averaged into one
coarse cell. D = mean over each block of cells, U = nearest (repeat), so D∘U = id and U∘D
projects onto signals constant on blocks.

SNR matching: D(ε) for white ε has variance 1/k, so D(x_t) = √ā_t·D(x₀) + √((1−ā_t)/k)·ε′ with
ε′ white: it has k times the SNR of x_t. The low-resolution pass therefore queries the model at τ
with SNR(τ) = k·SNR(t), i.e. ā_τ = ā_t/P_t with P_t = ā_t + (1−ā_t)/k, on D(x_t)/√P_t (power
adjustment: unit variance again), and its ε estimate is √k·D(ε). The guided prediction is

    ε̃ = ε_θ(x_t, t) + w_t · U[ ε_θ(D(x_t)/√P_t, τ)/√k − D(ε_θ(x_t, t)) ].

With w_t = 1 the coarse part U∘D of ε̃ is the low-resolution estimate and the fine part
ε − U∘D ε is untouched. The combination is linear in (ε_high, ε_low), so it commutes with CFG.
Sources and the open points: docs/sampling.md.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch

from kernelscale.errors import InvalidOptionError
from kernelscale.sampling.schedules import (
    Scalar,
    Schedule,
    alpha_bar_at,
    from_epsilon,
    snr,
    timestep_from_snr,
    to_epsilon,
    vp_schedule,
)


def check_factors(factors: Sequence[int]) -> tuple[int, ...]:
    """Validate per-axis integer factors (each ≥ 1, at least one axis, at most 3) and return them
    as a tuple. Raises InvalidOptionError naming the bad value."""
    try:
        out = tuple(factors)
    except TypeError:
        raise InvalidOptionError(f"factors must be a sequence of integers, one per supersampled axis, got {factors!r}") from None
    if not 1 <= len(out) <= 3:
        raise InvalidOptionError(f"factors must name 1 to 3 axes, got {factors!r}")
    for f in out:
        if isinstance(f, bool) or not isinstance(f, int) or f < 1:
            raise InvalidOptionError(f"every factor must be an integer >= 1, got {f!r} in {factors!r}")
    return out


def cells_averaged(factors: Sequence[int]) -> int:
    """k = ∏ factors, the number of fine cells D averages into one coarse cell."""
    return math.prod(check_factors(factors))


def _check_sample(x: torch.Tensor, factors: tuple[int, ...], what: str) -> None:
    if x.ndim < len(factors) + 1:
        raise InvalidOptionError(f"{what} of shape {tuple(x.shape)} has too few axes for factors {factors}")
    for n, f in zip(x.shape[-len(factors):], factors):
        if n % f:
            raise InvalidOptionError(f"{what}'s supersampled axes {tuple(x.shape[-len(factors):])} are not divisible by factors {factors}")


def downsample_mean(x: torch.Tensor, factors: Sequence[int]) -> torch.Tensor:
    """D: the mean over each block of ∏ factors cells of the last len(factors) axes.
    (…, n₁, …, n_d) → (…, n₁/f₁, …, n_d/f_d); each nᵢ must be divisible by fᵢ."""
    fs = check_factors(factors)
    _check_sample(x, fs, "the input")
    lead = x.shape[: x.ndim - len(fs)]
    shape = list(lead)
    for n, f in zip(x.shape[-len(fs):], fs):
        shape += [n // f, f]
    y = x.reshape(shape)
    block_axes = tuple(len(lead) + 2 * i + 1 for i in range(len(fs)))
    return y.mean(dim=block_axes)


def upsample_nearest(x: torch.Tensor, factors: Sequence[int]) -> torch.Tensor:
    """U: repeat every cell of the last len(factors) axes fᵢ times. D(U(x)) = x exactly."""
    fs = check_factors(factors)
    if x.ndim < len(fs) + 1:
        raise InvalidOptionError(f"the input of shape {tuple(x.shape)} has too few axes for factors {fs}")
    for i, f in enumerate(fs):
        x = torch.repeat_interleave(x, f, dim=x.ndim - len(fs) + i)
    return x


def power(alpha_bar_t: Scalar, k: int) -> Scalar:
    """P_t = ā_t + (1−ā_t)/k: the variance of D(x_t) for unit-variance x₀ cells and white ε."""
    return alpha_bar_t + (1 - alpha_bar_t) / k


def matched_alpha_bar(alpha_bar_t: Scalar, k: int) -> Scalar:
    """ā_τ = ā_t/P_t, the ā whose SNR is k·SNR(t) (SNR matching)."""
    return alpha_bar_t / power(alpha_bar_t, k)


class LowResStep(NamedTuple):
    """The low-resolution model call of one upsample-guidance step."""

    #: D(x_t)/√P_t, the model input at the trained resolution.
    sample: torch.Tensor
    #: τ: float64 step (continuous) or int64 (discrete), shape of t.
    timestep: torch.Tensor
    #: ā at τ as the schedule has it (equals ā_t/P_t for the continuous τ, to rounding).
    alpha_bar: torch.Tensor


def low_res_step(x_t: torch.Tensor, alphas_cumprod: Schedule, t: Scalar, factors: Sequence[int], *,
                 discrete: bool = False) -> LowResStep:
    """The input and step of the low-resolution pass for a VP model at step t (float or 0-d
    tensor; a tensor of shape (B,) gives one τ per sample).

    τ solves SNR(τ) = k·SNR(t) on the schedule's log-SNR interpolant (``discrete=False``; for
    models that accept a float timestep) or is the nearest integer step in log-SNR
    (``discrete=True``). Where k·SNR(t) exceeds SNR(0) (the last steps: the schedule has no step
    that clean) τ is clamped to step 0 and ``alpha_bar`` is ā₀, not ā_t/P_t. The input is
    D(x_t)/√P_t with P_t from ā_t itself (the power adjustment does not depend on which τ is
    chosen). x_t: (B, C, *fine axes). ``alphas_cumprod``: the schedule's tensor or a
    :class:`~kernelscale.sampling.schedules.VPSchedule` (validated, its log-SNR table built once)."""
    fs = check_factors(factors)
    k = math.prod(fs)
    schedule = vp_schedule(alphas_cumprod)
    ab_t = alpha_bar_at(schedule, t)
    tau = timestep_from_snr(schedule, k * snr(ab_t), discrete=discrete, clamp=True)
    ab_tau = schedule.alphas_cumprod[tau] if discrete else alpha_bar_at(schedule, tau)
    p = power(ab_t, k)
    p = p.reshape(p.shape + (1,) * (x_t.ndim - p.ndim)) if p.ndim else p
    sample = downsample_mean(x_t, fs) / torch.sqrt(p).to(device=x_t.device, dtype=x_t.dtype)
    return LowResStep(sample=sample, timestep=tau, alpha_bar=ab_tau)


def flow_low_res_step(x_t: torch.Tensor, sigma: Scalar, factors: Sequence[int]) -> tuple[torch.Tensor, Scalar]:
    """Flow matching (x_σ = (1−σ)x₀ + σε): the low-resolution input c·D(x_σ) and its σ′ with
    SNR(σ′) = k·SNR(σ). With r = √k: σ′ = σ/(r(1−σ)+σ), c = 1/((1−σ)+σ/r) (so c·D(x_σ) =
    (1−σ′)D(x₀) + σ′ε′ with ε′ white). Returns (sample, σ′); σ a float or a tensor broadcasting
    against x_σ. Derived here from the VP rule; not in the paper's text we could read."""
    fs = check_factors(factors)
    r = math.sqrt(math.prod(fs))
    sigma_low = sigma / (r * (1 - sigma) + sigma)
    c = 1 / ((1 - sigma) + sigma / r)
    return downsample_mean(x_t, fs) * c, sigma_low


def guidance_weight(t: Scalar, *, w: float, eta: float, t_max: float = 1000.0) -> Scalar:
    """w_t = w while t ≥ (1−η)·t_max, else 0 (a Heaviside cut; η = 1 keeps UG on for every step,
    latent models want it early only). t_max: the number of training steps for VP (t ∈ [0, T)),
    1 for flow σ. Raises InvalidOptionError for η outside [0, 1]."""
    if not 0 <= eta <= 1:
        raise InvalidOptionError(f"eta must lie in [0, 1], got {eta!r}")
    if isinstance(t, torch.Tensor):
        return torch.where(t >= (1 - eta) * t_max, torch.as_tensor(float(w), dtype=torch.float64), torch.zeros((), dtype=torch.float64))
    return float(w) if t >= (1 - eta) * t_max else 0.0


def combine(eps_high: torch.Tensor, eps_low: torch.Tensor, factors: Sequence[int], w: Scalar) -> torch.Tensor:
    """ε̃ = ε_high + w·U(ε_low/√k − D(ε_high)).

    eps_high: (B, C, *fine), the model's ε at (x_t, t); eps_low: (B, C, *coarse), its ε at the
    low-resolution step; w: float or tensor broadcasting against eps_high (per-sample weights)."""
    fs = check_factors(factors)
    k = math.prod(fs)
    _check_sample(eps_high, fs, "eps_high")
    coarse = tuple(n // f for n, f in zip(eps_high.shape[-len(fs):], fs))
    if tuple(eps_low.shape) != tuple(eps_high.shape[: eps_high.ndim - len(fs)]) + coarse:
        raise InvalidOptionError(f"eps_low has shape {tuple(eps_low.shape)}, expected {tuple(eps_high.shape[:eps_high.ndim - len(fs)]) + coarse} "
                                 f"for eps_high {tuple(eps_high.shape)} and factors {fs}")
    correction = upsample_nearest(eps_low / math.sqrt(k) - downsample_mean(eps_high, fs), fs)
    return eps_high + w * correction


def guide(pred_high: torch.Tensor, x_t: torch.Tensor, alpha_bar_t: Scalar, pred_low: torch.Tensor, low: LowResStep,
          factors: Sequence[int], w: Scalar, prediction_type: str = "epsilon") -> torch.Tensor:
    """Upsample guidance on a VP model's native output (ε, v or x₀): both predictions converted to
    ε with their own step's coefficients (ā_t with x_t; ā_τ with the low-resolution input),
    combined by :func:`combine`, and converted back with ā_t. Returns the prediction type given.
    alpha_bar_t and ``low.alpha_bar`` broadcast against the high- and low-resolution samples."""
    eps_high = to_epsilon(pred_high, x_t, alpha_bar_t, prediction_type)
    ab_low = low.alpha_bar
    if isinstance(ab_low, torch.Tensor) and ab_low.ndim:
        ab_low = ab_low.reshape(ab_low.shape + (1,) * (low.sample.ndim - ab_low.ndim))
    eps_low = to_epsilon(pred_low, low.sample, ab_low, prediction_type)
    return from_epsilon(combine(eps_high, eps_low, factors, w), x_t, alpha_bar_t, prediction_type)


