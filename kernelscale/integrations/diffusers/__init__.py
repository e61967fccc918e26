"""kernelscale for diffusers pipelines.

    from kernelscale.integrations.diffusers import load_pipeline, supersample_pipeline

    report = supersample_pipeline(pipe, 2)     # patch the denoiser of a loaded pipeline in place
    pipe.save_pretrained("x2")                 # the denoiser with its manifest
    pipe = load_pipeline("x2")                 # a saved or converted folder, or a single file

diffusers is an optional dependency: ``pip install 'kernelscale[diffusers]'``. docs/diffusion.md.
"""

from kernelscale.integrations.diffusers.denoiser import (
    CONFIG_KEY, DENOISERS, WEIGHTS_NAME, DenoiserReport, ExecutionUnavailableError, UnsupportedDenoiserError,
    attention_rules, convert_rules, load_denoiser, save_denoiser, supersample_denoiser,
)
from kernelscale.integrations.diffusers.pipeline import load_pipeline, supersample_pipeline

__all__ = [
    "CONFIG_KEY", "DENOISERS", "WEIGHTS_NAME", "DenoiserReport", "ExecutionUnavailableError", "UnsupportedDenoiserError",
    "attention_rules", "convert_rules", "load_denoiser", "load_pipeline", "save_denoiser", "supersample_denoiser", "supersample_pipeline",
]
