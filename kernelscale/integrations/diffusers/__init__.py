"""kernelscale for diffusers pipelines."""
