"""Noise schedules and prediction parametrisations (DESIGN §10), as pure tensor functions.

VP (variance-preserving, DDPM/DDIM/SD): x_t = √ā_t·x₀ + √(1−ā_t)·ε, with ā_t = ``alphas_cumprod[t]``
for the integer training steps t = 0 … T−1; SNR(t) = ā_t/(1−ā_t). A continuous t ∈ [0, T−1] is
interpolated linearly in log-SNR between the neighbouring integer steps, so the inverse map
SNR → t is exact on the same interpolant.

Flow matching (rectified flow, SD3/Flux): x_σ = (1−σ)·x₀ + σ·ε, σ ∈ (0, 1); SNR(σ) = ((1−σ)/σ)².
The network predicts the velocity u = ε − x₀ (``prediction_type="flow"``).

Every ``alpha_bar`` / ``sigma`` argument is a Python float or a tensor that broadcasts against the
sample (e.g. shape (B, 1, 1, 1) for one value per sample).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Union

import torch

from kernelscale.errors import InvalidOptionError

Scalar = Union[float, torch.Tensor]

#: The prediction types of VP models (diffusers' ``scheduler.config.prediction_type``).
VP_PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
#: The prediction types of flow-matching models.
FLOW_PREDICTION_TYPES = ("flow", "epsilon", "sample")


def _as_tensor(value: Scalar, like: torch.Tensor) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(device=like.device, dtype=like.dtype)
    return torch.tensor(float(value), device=like.device, dtype=like.dtype)


def check_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Validate a VP schedule: a 1-D floating tensor of T ≥ 2 values in (0, 1), strictly
    decreasing (so log-SNR is strictly decreasing and t ↔ SNR is a bijection). Returns it in
    float64. Raises InvalidOptionError naming the first bad value."""
    if not isinstance(alphas_cumprod, torch.Tensor) or alphas_cumprod.ndim != 1 or alphas_cumprod.numel() < 2:
        shape = tuple(alphas_cumprod.shape) if isinstance(alphas_cumprod, torch.Tensor) else type(alphas_cumprod).__name__
        raise InvalidOptionError(f"alphas_cumprod must be a 1-D tensor of at least 2 values, got {shape}")
    a = alphas_cumprod.detach().to(torch.float64)
    bad = torch.nonzero(~((a > 0) & (a < 1)))
    if bad.numel():
        i = int(bad[0])
        raise InvalidOptionError(f"alphas_cumprod must lie in (0, 1), got alphas_cumprod[{i}] = {float(a[i])!r}")
    rising = torch.nonzero(a[1:] >= a[:-1])
    if rising.numel():
        i = int(rising[0])
        raise InvalidOptionError(
            f"alphas_cumprod must be strictly decreasing, got alphas_cumprod[{i}] = {float(a[i])!r} "
            f"<= alphas_cumprod[{i + 1}] = {float(a[i + 1])!r}")
    return a


def snr(alpha_bar: Scalar) -> Scalar:
    """VP signal-to-noise ratio ā/(1−ā) (a float for a float, else a tensor of the same shape)."""
    return alpha_bar / (1 - alpha_bar)


def log_snr_table(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """log SNR(t) = log ā_t − log(1−ā_t) at every integer step, float64, shape (T,), strictly
    decreasing."""
    a = check_alphas_cumprod(alphas_cumprod)
    return torch.log(a) - torch.log1p(-a)


class VPSchedule(NamedTuple):
    """A VP schedule validated once with its log-SNR table (:func:`vp_schedule`). Pass it wherever
    a function takes ``alphas_cumprod`` (:func:`alpha_bar_at`, :func:`timestep_from_snr`,
    :func:`~kernelscale.sampling.low_res_step`): a sampler calling them at every step then neither
    re-validates the schedule nor rebuilds the table."""

    #: ā_t at the integer steps, float64, shape (T,), strictly decreasing in (0, 1).
    alphas_cumprod: torch.Tensor
    #: log SNR(t) at the integer steps, float64, shape (T,) (:func:`log_snr_table`).
    log_snr: torch.Tensor


#: What the schedule functions take: ``alphas_cumprod`` as a tensor, or a :class:`VPSchedule`.
Schedule = Union[torch.Tensor, VPSchedule]


def vp_schedule(alphas_cumprod: Schedule) -> VPSchedule:
    """``alphas_cumprod`` validated (:func:`check_alphas_cumprod`) with its log-SNR table, built once;
    a VPSchedule is returned as it is."""
    if isinstance(alphas_cumprod, VPSchedule):
        return alphas_cumprod
    return VPSchedule(check_alphas_cumprod(alphas_cumprod), log_snr_table(alphas_cumprod))


def _log_snr(schedule: Schedule) -> torch.Tensor:
    return schedule.log_snr if isinstance(schedule, VPSchedule) else log_snr_table(schedule)


def alpha_bar_at(alphas_cumprod: Schedule, t: Scalar) -> torch.Tensor:
    """ā at a continuous step t ∈ [0, T−1] (float or tensor of any shape): linear interpolation of
    log-SNR between the integer steps ⌊t⌋ and ⌈t⌉, then ā = sigmoid(log SNR). Exact (to rounding)
    at integer t. Returns float64 of t's shape. Raises InvalidOptionError for t outside [0, T−1].
    ``alphas_cumprod``: the schedule's tensor or a :class:`VPSchedule`."""
    table = _log_snr(alphas_cumprod)
    tt = torch.as_tensor(t, dtype=torch.float64, device=table.device)
    last = table.numel() - 1
    if bool(((tt < 0) | (tt > last) | ~torch.isfinite(tt)).any()):
        raise InvalidOptionError(f"t must lie in [0, {last}] for a schedule of {last + 1} steps, got {t!r}")
    lo = torch.clamp(torch.floor(tt), max=last - 1).long()
    frac = tt - lo
    lam = table[lo] * (1 - frac) + table[lo + 1] * frac
    return torch.sigmoid(lam)


def timestep_from_snr(alphas_cumprod: Schedule, target_snr: Scalar, *, discrete: bool = False,
                      clamp: bool = False) -> torch.Tensor:
    """The step t with SNR(t) = target_snr (inverse of :func:`alpha_bar_at`'s interpolant).

    Continuous (default): t ∈ [0, T−1] in float64, exact on the log-SNR interpolant; a target above
    SNR(0) or below SNR(T−1) raises InvalidOptionError (the model was never trained there), or,
    with ``clamp=True``, gives the end step 0 or T−1.
    ``discrete=True``: the integer step minimising |log SNR(k) − log target| (the choice of the
    unofficial upsample-guidance code for models that only take integer steps), int64; any
    positive target is accepted and clamps to the ends. ``alphas_cumprod``: the schedule's tensor or
    a :class:`VPSchedule`."""
    table = _log_snr(alphas_cumprod)
    target = torch.as_tensor(target_snr, dtype=torch.float64, device=table.device)
    if bool((~(target > 0) | ~torch.isfinite(target)).any()):
        raise InvalidOptionError(f"target SNR must be positive and finite, got {target_snr!r}")
    lam = torch.log(target)
    if discrete:
        return torch.argmin((table - lam.unsqueeze(-1)).abs(), dim=-1)
    if clamp:
        lam = lam.clamp(min=float(table[-1]), max=float(table[0]))
    elif bool(((lam > table[0]) | (lam < table[-1])).any()):
        raise InvalidOptionError(
            f"target SNR {target_snr!r} lies outside the schedule's range "
            f"[{math.exp(float(table[-1])):.6g}, {math.exp(float(table[0])):.6g}]")
    # table decreases: search in the negated (increasing) table.
    neg = -table
    hi = torch.searchsorted(neg, -lam.reshape(-1)).reshape(lam.shape).clamp(1, table.numel() - 1)
    lo = hi - 1
    frac = (table[lo] - lam) / (table[lo] - table[hi])
    return lo.to(torch.float64) + frac


def flow_snr(sigma: Scalar) -> Scalar:
    """Flow-matching SNR ((1−σ)/σ)² for σ ∈ (0, 1)."""
    return ((1 - sigma) / sigma) ** 2


def flow_sigma_from_snr(target_snr: Scalar) -> Scalar:
    """The σ with flow_snr(σ) = target_snr: σ = 1/(1+√SNR)."""
    if isinstance(target_snr, torch.Tensor):
        return 1 / (1 + torch.sqrt(target_snr))
    return 1 / (1 + math.sqrt(target_snr))


def _check_type(prediction_type: str, allowed: tuple[str, ...]) -> None:
    if prediction_type not in allowed:
        raise InvalidOptionError(f"prediction_type must be one of {', '.join(allowed)}, got {prediction_type!r}")


def to_epsilon(prediction: torch.Tensor, x_t: torch.Tensor, alpha_bar: Scalar, prediction_type: str) -> torch.Tensor:
    """A VP model's output at (x_t, ā) as an ε estimate. With a = √ā, s = √(1−ā):
    ε from x₀: (x_t − a·x₀)/s; from v = a·ε − s·x₀: s·x_t + a·v; ε itself unchanged.
    Shapes: prediction and x_t equal; alpha_bar broadcasts."""
    _check_type(prediction_type, VP_PREDICTION_TYPES)
    if prediction_type == "epsilon":
        return prediction
    ab = _as_tensor(alpha_bar, x_t)
    a, s = torch.sqrt(ab), torch.sqrt(1 - ab)
    if prediction_type == "v_prediction":
        return s * x_t + a * prediction
    return (x_t - a * prediction) / s


def from_epsilon(eps: torch.Tensor, x_t: torch.Tensor, alpha_bar: Scalar, prediction_type: str) -> torch.Tensor:
    """Inverse of :func:`to_epsilon` at the same (x_t, ā): x₀ = (x_t − s·ε)/a, v = (ε − s·x_t)/a."""
    _check_type(prediction_type, VP_PREDICTION_TYPES)
    if prediction_type == "epsilon":
        return eps
    ab = _as_tensor(alpha_bar, x_t)
    a, s = torch.sqrt(ab), torch.sqrt(1 - ab)
    if prediction_type == "v_prediction":
        return (eps - s * x_t) / a
    return (x_t - s * eps) / a


def flow_to_epsilon(prediction: torch.Tensor, x_t: torch.Tensor, sigma: Scalar, prediction_type: str = "flow") -> torch.Tensor:
    """A flow-matching model's output at (x_σ, σ) as an ε estimate: from the velocity u = ε − x₀,
    ε = x_σ + (1−σ)·u; from x₀, ε = (x_σ − (1−σ)·x₀)/σ."""
    _check_type(prediction_type, FLOW_PREDICTION_TYPES)
    if prediction_type == "epsilon":
        return prediction
    sg = _as_tensor(sigma, x_t)
    if prediction_type == "flow":
        return x_t + (1 - sg) * prediction
    return (x_t - (1 - sg) * prediction) / sg


def flow_from_epsilon(eps: torch.Tensor, x_t: torch.Tensor, sigma: Scalar, prediction_type: str = "flow") -> torch.Tensor:
    """Inverse of :func:`flow_to_epsilon` at the same (x_σ, σ): u = (ε − x_σ)/(1−σ),
    x₀ = (x_σ − σ·ε)/(1−σ)."""
    _check_type(prediction_type, FLOW_PREDICTION_TYPES)
    if prediction_type == "epsilon":
        return eps
    sg = _as_tensor(sigma, x_t)
    if prediction_type == "flow":
        return (eps - x_t) / (1 - sg)
    return (x_t - sg * eps) / (1 - sg)
