"""kernelscale for diffusers pipelines."""

from kernelscale.integrations.diffusers.sampling_methods import (
    FouriScale,
    NoiseDampedCFG,
    Redilation,
    UnsupportedPipelineError,
    UpsampleGuidance,
    sampling,
)

__all__ = ["FouriScale", "NoiseDampedCFG", "Redilation", "UnsupportedPipelineError", "UpsampleGuidance", "sampling"]
