"""Classifier-free guidance and ScaleCrafter's noise-damped CFG (He et al., ICLR 2024), DESIGN §10.

Both are affine combinations whose weights sum to 1, so they commute with any linear map of the
predictions (upsample guidance's combination included).
"""

from __future__ import annotations

from typing import Union

import torch

from kernelscale.errors import InvalidOptionError

Weight = Union[float, torch.Tensor]


def cfg(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, w: Weight) -> torch.Tensor:
    """Plain classifier-free guidance ε_∅ + w·(ε_y − ε_∅). Works on any prediction type (the map
    is affine with weights summing to 1). Shapes equal; w broadcasts."""
    if eps_uncond.shape != eps_cond.shape:
        raise InvalidOptionError(f"eps_uncond {tuple(eps_uncond.shape)} and eps_cond {tuple(eps_cond.shape)} differ in shape")
    return eps_uncond + w * (eps_cond - eps_uncond)


def nd_cfg(eps_base_uncond: torch.Tensor, eps_uncond: torch.Tensor, eps_cond: torch.Tensor, w: Weight) -> torch.Tensor:
    """Noise-damped CFG: ε_base(x_t, ∅) + w·(ε̃(x_t, y) − ε̃(x_t, ∅)).

    The unconditional term comes from the base model (the original network, or the mildly
    re-dilated one of ScaleCrafter's ``ndcfg_dilate_settings``), the guidance direction from the
    re-dilated / resized model (ScaleCrafter text2image.py: ``noise_pred_vanilla + guidance_scale
    * (noise_pred_text - noise_pred_uncond)``). Equals :func:`cfg` when eps_base_uncond is
    eps_uncond. Use it for steps i < τ_ndcfg (:func:`nd_cfg_active`), plain CFG afterwards."""
    if not (eps_base_uncond.shape == eps_uncond.shape == eps_cond.shape):
        raise InvalidOptionError(f"eps_base_uncond {tuple(eps_base_uncond.shape)}, eps_uncond {tuple(eps_uncond.shape)} and "
                                 f"eps_cond {tuple(eps_cond.shape)} differ in shape")
    return eps_base_uncond + w * (eps_cond - eps_uncond)


def nd_cfg_active(step_index: int, tau: int) -> bool:
    """Whether noise-damped CFG applies at sampler step i (0-based, in sampling order): i < τ."""
    if step_index < 0 or tau < 0:
        raise InvalidOptionError(f"step_index and tau must be >= 0, got {step_index!r} and {tau!r}")
    return step_index < tau
