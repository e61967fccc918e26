"""kernelscale for diffusers pipelines."""

from kernelscale.integrations.diffusers.denoiser import (
    CONFIG_KEY, DENOISERS, WEIGHTS_NAME, DenoiserReport, ExecutionUnavailableError, UnsupportedDenoiserError,
    attention_rules, convert_rules, load_denoiser, save_denoiser, supersample_denoiser,
)
from kernelscale.integrations.diffusers.converter import pipeline_options
from kernelscale.integrations.diffusers.pipeline import load_pipeline, supersample_pipeline
from kernelscale.integrations.diffusers.sampling_methods import (
    FouriScale, NoiseDampedCFG, Redilation, UnsupportedPipelineError, UpsampleGuidance, sampling,
)

__all__ = [
    "CONFIG_KEY", "DENOISERS", "WEIGHTS_NAME", "DenoiserReport", "ExecutionUnavailableError", "UnsupportedDenoiserError",
    "attention_rules", "convert_rules", "load_denoiser", "load_pipeline", "pipeline_options", "save_denoiser", "supersample_denoiser", "supersample_pipeline",
    "FouriScale", "NoiseDampedCFG", "Redilation", "UnsupportedPipelineError", "UpsampleGuidance", "sampling",
]
