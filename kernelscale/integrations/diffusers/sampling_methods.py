"""Sampling-time methods for a diffusers pipeline call (DESIGN §10–§11): thin wiring around the
pure functions of :mod:`kernelscale.sampling`, adding no maths of its own.

    from kernelscale.integrations.diffusers import NoiseDampedCFG, Redilation, UpsampleGuidance, sampling

    with sampling(pipe, upsample_guidance=UpsampleGuidance(w=1.2, eta=0.6),
                  redilation=Redilation(preset="sd1.5-2048x2048"), nd_cfg=NoiseDampedCFG()):
        image = pipe(prompt, height=2048, width=2048).images[0]

The context manager wraps the denoiser's ``forward`` (the pipeline's own loop runs unchanged) and
restores it on exit. Per denoiser call, with t the timestep the pipeline passes:

1. re-dilation: the listed convs run :func:`kernelscale.sampling.redilated_conv` at the step's
   factor; FouriScale: its listed convs run :func:`kernelscale.sampling.fouriscale_conv` at the
   step's annealed factor;
2. upsample guidance: a second pass at the trained resolution on D(x)/√P_t at τ, combined with
   :func:`kernelscale.sampling.upsample_guidance.guide` in the scheduler's ``prediction_type``.
   The denoiser's input is the VP x_t for every scheduler accepted here (DDIM, DDPM, PNDM and
   DPM-Solver pass the latents as they are; Euler-type schedulers' ``scale_model_input`` divides
   by √(σ²+1), which is the VP sample); ā_t comes from ``scheduler.alphas_cumprod`` at t
   (log-SNR interpolation for fractional t);
3. noise-damped CFG (when the pipeline does CFG: batch = [unconditional, conditional]): the base
   model's unconditional prediction b is computed and both halves are shifted by b − u, so the
   pipeline's own u′ + w·(c′ − u′) is b + w·(c − u) for every guidance scale w.

Steps: ScaleCrafter's presets count the steps i of a 50-step sampler. Here a step index is
derived from the timestep, i = ⌊(T − 1 − t)·N/T⌋ with T the training steps and N the schedule's
reference step count (50 by default), so the same τ means the same noise levels for any
scheduler and any number of inference steps (DDIM-50 with leading spacing gets i exactly).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn

from kernelscale.errors import InvalidOptionError, UnsupportedPipelineError
from kernelscale.sampling import (
    alpha_bar_at,
    annealed_factor,
    fouriscale_conv,
    get_preset,
    guidance_weight,
    layer_dilations,
    low_res_step,
    resolve_preset,
    resolve_settings,
)
from kernelscale.sampling.redilation import redilated_conv
from kernelscale.sampling.schedules import VP_PREDICTION_TYPES, vp_schedule
from kernelscale.sampling.upsample_guidance import check_factors, guide

#: Schedulers whose denoiser input is the VP sample x_t (see the module docstring).
VP_SCHEDULERS = (
    "DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
    "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "LMSDiscreteScheduler",
    "KDPM2DiscreteScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler",
)


@dataclass(frozen=True)
class UpsampleGuidance:
    """Upsample guidance: ``factors`` per supersampled latent axis (the generated latent is
    ``factors`` times the trained one), w_t = w while t ≥ (1 − η)·T. ``model``: the denoiser for
    the trained-resolution pass (default: the pipeline's own, as it is outside re-dilation; pass
    the original UNet when the pipeline's was resized by weight surgery). ``discrete``: τ rounded
    to an integer step. The defaults (w = 1.2, η = 0.6) are the latent-model ones of the public
    implementations; for a pixel-space model docs/generation.md measured w = 1, η = 1."""

    factors: Sequence[int] = (2, 2)
    w: float = 1.2
    eta: float = 0.6
    model: Optional[nn.Module] = None
    discrete: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "factors", check_factors(self.factors))
        guidance_weight(0, w=self.w, eta=self.eta)  # validates η


@dataclass(frozen=True)
class Redilation:
    """ScaleCrafter's re-dilation: a published ``preset`` (its factors, τ, progressive flag and
    ND-CFG base settings) or ``settings`` (layer name → factor) with ``tau`` and ``progressive``.
    ``reference_steps``: the step count τ refers to (the preset's, 50, by default)."""

    preset: Optional[str] = None
    settings: Optional[Mapping[str, float]] = None
    tau: Optional[int] = None
    progressive: bool = False
    reference_steps: Optional[int] = None

    def __post_init__(self) -> None:
        if (self.preset is None) == (self.settings is None):
            raise InvalidOptionError(f"Redilation needs exactly one of preset and settings, got preset={self.preset!r}, settings={self.settings!r}")
        if self.preset is not None:
            get_preset(self.preset)
        elif self.tau is None or self.tau < 0:
            raise InvalidOptionError(f"Redilation(settings=...) needs tau >= 0 (steps of reference_steps), got {self.tau!r}")


@dataclass(frozen=True)
class NoiseDampedCFG:
    """Noise-damped CFG for steps i < ``tau`` (default: the re-dilation preset's ndcfg τ).
    ``base``: the base model (default: the pipeline's own denoiser, run with ``base_settings``,
    default: the preset's ND-CFG settings, or none: the original convs)."""

    tau: Optional[int] = None
    base: Optional[nn.Module] = None
    base_settings: Optional[Mapping[str, float]] = None
    reference_steps: Optional[int] = None


@dataclass(frozen=True)
class FouriScale:
    """FouriScale's convs (dilation ⌈d_i⌉ + its strong low-pass, annealed from d to 1 between
    steps ``start`` and ``stop``, plain from ``stop`` on) on the named ``layers``; ``value``: the
    stop-band level (0 for SD 1.5/2.1, 0.6 for SDXL). As the official code, layers named
    ``*upsamplers*`` are dilated without the filter. Its three-branch guidance (weak filter,
    attention maps copied) is not wired. Feature sizes must be even (the official code pads to a
    multiple of the trained size first; the two agree at integer multiples of it)."""

    layers: Sequence[str]
    d: float
    start: int = 20
    stop: int = 35
    value: float = 0.0
    reference_steps: int = 50

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        annealed_factor(self.d, 0, self.start, self.stop)  # validates d, start, stop
        if not 0 <= self.value <= 1:
            raise InvalidOptionError(f"FouriScale value must lie in [0, 1], got {self.value!r}")


@dataclass(frozen=True)
class _Schedule:
    factors: Mapping[str, float] = field(default_factory=dict)
    tau: int = 0
    progressive: bool = False
    steps: int = 50

    def at(self, step: int) -> dict[str, float]:
        return layer_dilations(self.factors, step, self.tau, progressive=self.progressive)


def _denoiser(pipe: Any) -> nn.Module:
    name = type(pipe).__name__
    unet = getattr(pipe, "unet", None)
    if not isinstance(unet, nn.Module):
        what = "a transformer denoiser" if isinstance(getattr(pipe, "transformer", None), nn.Module) else "no unet"
        raise UnsupportedPipelineError(f"{name} has {what}: kernelscale's sampling-time methods wrap pipelines whose denoiser is pipe.unet")
    scheduler = getattr(pipe, "scheduler", None)
    sname = type(scheduler).__name__
    if sname not in VP_SCHEDULERS:
        raise UnsupportedPipelineError(f"{name}: scheduler {sname} is not one whose denoiser input is the VP sample x_t "
                                       f"(supported: {', '.join(VP_SCHEDULERS)})")
    return unet


def _conv_names(unet: nn.Module) -> list[str]:
    return [n for n, m in unet.named_modules() if isinstance(m, nn.Conv2d)]


def _check_convs(unet: nn.Module, factors: Mapping[str, float]) -> None:
    modules = dict(unet.named_modules())
    for name in factors:
        m = modules[name]
        same = tuple((k - 1) // 2 for k in m.kernel_size)
        if m.padding_mode != "zeros" or tuple(m.padding) != same or tuple(m.dilation) != (1, 1) or any(k % 2 == 0 for k in m.kernel_size):
            raise InvalidOptionError(f"{name}: re-dilation needs a same-padded, undilated conv with odd kernel and zero padding, got kernel "
                                     f"{tuple(m.kernel_size)}, padding {m.padding}, dilation {m.dilation}, padding_mode {m.padding_mode!r}")


def _schedules(unet: nn.Module, redilation: Optional[Redilation], nd: Optional[NoiseDampedCFG]) -> tuple[_Schedule, Optional[_Schedule]]:
    names = _conv_names(unet)
    main, base = _Schedule(), None
    preset = None
    if redilation is not None:
        if redilation.preset is not None:
            resolved = resolve_preset(redilation.preset, names)
            preset = resolved.preset
            main = _Schedule(dict(resolved.dilation), preset.dilate_tau, preset.progressive,
                             redilation.reference_steps or preset.num_inference_steps)
            preset_base = dict(resolved.ndcfg_dilation or {})
        else:
            main = _Schedule(resolve_settings(redilation.settings, names), redilation.tau, redilation.progressive,
                             redilation.reference_steps or 50)
        _check_convs(unet, main.factors)
    if nd is not None:
        tau = nd.tau if nd.tau is not None else (preset.ndcfg_tau if preset is not None else None)
        if tau is None or tau < 0:
            raise InvalidOptionError(f"NoiseDampedCFG needs tau >= 0 (or a re-dilation preset that has one), got {nd.tau!r}")
        if nd.base_settings is not None and nd.base is not None:
            raise InvalidOptionError("NoiseDampedCFG: base_settings re-dilate the pipeline's own UNet; with base= given, "
                                     "pass that module already in the state it should run in")
        if nd.base_settings is not None:
            settings = resolve_settings(nd.base_settings, names)
        else:
            settings = preset_base if (preset is not None and nd.base is None) else {}
        steps = nd.reference_steps or (preset.num_inference_steps if preset is not None else 50)
        base = _Schedule(settings, tau, main.progressive, steps)
        if nd.base is None:
            _check_convs(unet, settings)
    return main, base


def _compute_dtype(device: torch.device) -> torch.dtype:
    """float64 for the guidance arithmetic, except where the device has none (Apple's MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _step_index(t: float, train_steps: int, reference_steps: int) -> int:
    return max(0, math.floor((train_steps - 1 - t) * reference_steps / train_steps))


@contextlib.contextmanager
def _patched_forwards(patches: Iterable[tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]]) -> Iterator[None]:
    """Set each ``(module, forward)``'s forward as an instance attribute for the block; on exit (or
    an error while patching) restore what each module had, in reverse order."""
    saved = []
    try:
        for module, forward in patches:
            saved.append((module, module.__dict__.get("forward")))
            module.forward = forward
        yield
    finally:
        for module, previous in reversed(saved):
            if previous is None:
                del module.forward
            else:
                module.forward = previous


def _redilated_forward(conv: nn.Conv2d, d: float) -> Callable[[torch.Tensor], torch.Tensor]:
    stride, groups = tuple(conv.stride), conv.groups
    return lambda x: redilated_conv(x, conv.weight, conv.bias, d, stride=stride, groups=groups)


@contextlib.contextmanager
def _redilated(unet: nn.Module, factors: Mapping[str, float]) -> Iterator[None]:
    modules = dict(unet.named_modules())
    with _patched_forwards((modules[name], _redilated_forward(modules[name], d)) for name, d in factors.items() if d != 1.0):
        yield


def _fouriscale_forward(name: str, conv: nn.Conv2d, d: float, value: float) -> Callable[[torch.Tensor], torch.Tensor]:
    stride, groups = tuple(conv.stride), conv.groups
    if "upsamplers" in name:
        return _redilated_forward(conv, float(math.ceil(d)))

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % 2 or x.shape[-1] % 2:
            raise InvalidOptionError(f"{name}: FouriScale's low-pass needs even feature sizes, got {tuple(x.shape[-2:])}")
        return fouriscale_conv(x, conv.weight, conv.bias, d, stride=stride[0], groups=groups, value=value)
    return forward


@contextlib.contextmanager
def _fouriscaled(unet: nn.Module, fs: Optional[FouriScale], step: int) -> Iterator[None]:
    d = 1.0 if fs is None else annealed_factor(fs.d, step, fs.start, fs.stop)
    if d == 1.0:
        yield
        return
    modules = dict(unet.named_modules())
    with _patched_forwards((modules[name], _fouriscale_forward(name, modules[name], d, fs.value)) for name in fs.layers):
        yield


def _half(value: Any, n: int) -> Any:
    """The first (unconditional) half of a CFG batch: tensors whose first axis is 2n, recursively."""
    if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == 2 * n:
        return value[:n]
    if isinstance(value, dict):
        return {k: _half(v, n) for k, v in value.items()}
    return value


def _prediction(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out.sample


def _repack(out: Any, pred: torch.Tensor) -> Any:
    if isinstance(out, tuple):
        return (pred,) + tuple(out[1:])
    return type(out)(sample=pred)


def _as_config(value: Any, kind: type) -> Any:
    if value is None or isinstance(value, kind):
        return value
    if isinstance(value, Mapping):
        return kind(**value)
    raise InvalidOptionError(f"expected a {kind.__name__} or a mapping of its fields, got {value!r}")


@contextlib.contextmanager
def sampling(pipe: Any, *, upsample_guidance: Union[UpsampleGuidance, Mapping, None] = None,
             nd_cfg: Union[NoiseDampedCFG, Mapping, None] = None,
             redilation: Union[Redilation, Mapping, None] = None,
             fouriscale: Union[FouriScale, Mapping, None] = None) -> Iterator[Any]:
    """Enable any combination of upsample guidance, noise-damped CFG, re-dilation and FouriScale's
    convs for the pipeline calls inside the ``with`` block (module docstring). Yields the pipeline.

    Raises UnsupportedPipelineError naming a pipeline without a ``unet`` (transformer denoisers)
    or with a scheduler not listed in :data:`VP_SCHEDULERS` (flow matching among them), and
    InvalidOptionError for a layer name that matches no conv, a conv that cannot be re-dilated,
    an unknown preset or prediction type. Everything is checked before the denoiser is touched."""
    ug = _as_config(upsample_guidance, UpsampleGuidance)
    nd = _as_config(nd_cfg, NoiseDampedCFG)
    rd = _as_config(redilation, Redilation)
    fs = _as_config(fouriscale, FouriScale)
    unet = _denoiser(pipe)
    scheduler = pipe.scheduler
    prediction_type = scheduler.config.get("prediction_type", "epsilon")
    if prediction_type not in VP_PREDICTION_TYPES:
        raise InvalidOptionError(f"{type(pipe).__name__}: prediction_type {prediction_type!r} is not epsilon, v_prediction or sample")
    schedule = vp_schedule(scheduler.alphas_cumprod)  # validated, its log-SNR table built once per with block
    train_steps = schedule.alphas_cumprod.numel()
    main, base = _schedules(unet, rd, nd)
    if fs is not None:
        resolve_settings(dict.fromkeys(fs.layers, 1.0), _conv_names(unet))
        _check_convs(unet, dict.fromkeys(fs.layers, 1.0))
        both = sorted(set(fs.layers) & set(main.factors))
        if both:
            raise InvalidOptionError(f"layers given to both re-dilation and FouriScale: {', '.join(both)}")
    if nd is not None and not hasattr(type(pipe), "do_classifier_free_guidance"):
        raise UnsupportedPipelineError(f"{type(pipe).__name__} does not say whether it runs classifier-free guidance; noise-damped CFG needs it")
    had_forward = "forward" in unet.__dict__
    inner = unet.forward

    def forward(sample: torch.Tensor, timestep: Any, *args: Any, **kwargs: Any) -> Any:
        ts = torch.as_tensor(timestep).flatten()
        if ts.numel() > 1 and not bool((ts == ts[0]).all()):
            raise InvalidOptionError(f"one timestep per denoiser call expected, got {ts.tolist()}")
        t = float(ts[0])
        fs_step = 0 if fs is None else _step_index(t, train_steps, fs.reference_steps)
        with _redilated(unet, main.at(_step_index(t, train_steps, main.steps))), _fouriscaled(unet, fs, fs_step):
            out = inner(sample, timestep, *args, **kwargs)
        pred = _prediction(out)
        if ug is not None:
            w = guidance_weight(t, w=ug.w, eta=ug.eta, t_max=train_steps)
            if w != 0.0:
                dtype = _compute_dtype(sample.device)
                low = low_res_step(sample.to(dtype), schedule, t, ug.factors, discrete=ug.discrete)
                low_model = ug.model if ug.model is not None else inner
                tau = low.timestep.to(torch.float32) if not ug.discrete else low.timestep
                low_pred = _prediction(low_model(low.sample.to(sample.dtype), tau, *args, **kwargs))
                ab_t = alpha_bar_at(schedule, t)
                pred = guide(pred.to(dtype), sample.to(dtype), ab_t, low_pred.to(dtype), low, ug.factors, w, prediction_type).to(pred.dtype)
        if base is not None and pipe.do_classifier_free_guidance:
            step = _step_index(t, train_steps, base.steps)
            if step < base.tau:
                n = sample.shape[0] // 2
                half_args = tuple(_half(a, n) for a in args)
                half_kwargs = {k: _half(v, n) for k, v in kwargs.items()}
                if nd.base is not None:
                    base_out = nd.base(sample[:n], _half(timestep, n), *half_args, **half_kwargs)
                else:
                    with _redilated(unet, base.at(step)):
                        base_out = inner(sample[:n], _half(timestep, n), *half_args, **half_kwargs)
                shift = _prediction(base_out) - pred[:n]
                pred = pred + torch.cat([shift, shift])
        return _repack(out, pred)

    unet.forward = forward
    try:
        yield pipe
    finally:
        if had_forward:
            unet.forward = inner
        else:
            del unet.forward
