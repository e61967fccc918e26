"""Sampling-time methods for diffusion models (DESIGN §10), as framework-agnostic tensor functions.

- :mod:`~kernelscale.sampling.schedules`: VP ā and flow σ schedules, SNR, t ↔ SNR, ε/v/x₀/flow
  conversions.
- :mod:`~kernelscale.sampling.upsample_guidance`: upsample guidance (Hwang, Park, Jo 2024).
- :mod:`~kernelscale.sampling.cfg`: classifier-free guidance and ScaleCrafter's noise-damped CFG.
- :mod:`~kernelscale.sampling.redilation` and :mod:`~kernelscale.sampling.presets`: ScaleCrafter's
  re-dilation (integer and fractional), its schedules and published presets.
- :mod:`~kernelscale.sampling.fourier`: FouriScale's dilation + low-pass, annealing and guidance.

Documentation with formulas, sources and examples: docs/sampling.md.
"""

from kernelscale.sampling import upsample_guidance
from kernelscale.sampling.cfg import cfg, nd_cfg, nd_cfg_active
from kernelscale.sampling.fourier import (
    annealed_factor,
    fouriscale_conv,
    fouriscale_guidance,
    lowpass,
    lowpass_mask,
    lowpass_mask_1d,
    lowpass_prefilter,
)
from kernelscale.sampling.presets import (
    PRESETS,
    RedilationPreset,
    ResolvedPreset,
    get_preset,
    parse_settings,
    resolve_preset,
    resolve_settings,
)
from kernelscale.sampling.redilation import dilation_at_step, layer_dilations, progressive_factor, redilated_conv
from kernelscale.sampling.schedules import (
    VPSchedule,
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
    vp_schedule,
)
from kernelscale.sampling.upsample_guidance import (
    LowResStep,
    cells_averaged,
    downsample_mean,
    flow_low_res_step,
    guidance_weight,
    low_res_step,
    matched_alpha_bar,
    power,
    upsample_nearest,
)

__all__ = [
    "LowResStep", "PRESETS", "RedilationPreset", "ResolvedPreset", "VPSchedule", "alpha_bar_at", "annealed_factor", "cells_averaged", "cfg",
    "check_alphas_cumprod", "dilation_at_step", "downsample_mean", "flow_from_epsilon", "flow_low_res_step", "flow_sigma_from_snr",
    "flow_snr", "flow_to_epsilon", "fouriscale_conv", "fouriscale_guidance", "from_epsilon", "get_preset", "guidance_weight",
    "layer_dilations", "log_snr_table", "low_res_step", "lowpass", "lowpass_mask", "lowpass_mask_1d", "lowpass_prefilter",
    "matched_alpha_bar", "nd_cfg", "nd_cfg_active", "parse_settings", "power", "progressive_factor", "redilated_conv",
    "resolve_preset", "resolve_settings", "snr", "timestep_from_snr", "to_epsilon", "upsample_guidance", "upsample_nearest",
    "vp_schedule",
]
