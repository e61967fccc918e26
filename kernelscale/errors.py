"""One error hierarchy: the CLI turns any KernelscaleError into one line on stderr and exit 2."""


class KernelscaleError(Exception):
    """Base class of every error kernelscale raises on bad input."""


class InvalidCheckpointError(KernelscaleError, ValueError):
    """A checkpoint file that breaks the safetensors format's rules."""


class InvalidOptionError(KernelscaleError, ValueError):
    """An option or argument with a bad value."""


class BackendUnavailableError(KernelscaleError, RuntimeError):
    """A backend was forced where it cannot run."""


class UnsupportedTensorError(KernelscaleError, TypeError):
    """A tensor of a kind that cannot be resized (integer, bool, too few dimensions)."""


class GeometryError(KernelscaleError, ValueError):
    """A layer whose new geometry cannot be expressed (e.g. a fractional padding)."""


class WeightNormError(UnsupportedTensorError, GeometryError):
    """A conv whose weight a state dict holds as weight norm's two tensors, g and v (w = g·v/‖v‖),
    that cannot be resized exactly: g varies along a kernel axis the resize changes (one norm per
    tap), v comes without its g, or g's shape fits no norm axis. (A g constant along the resized
    axes is resized exactly: kernelscale.plan.) Also a GeometryError: the nn adapter refuses such a
    layer too."""


class SpectralNormError(UnsupportedTensorError, GeometryError):
    """A conv whose weight a state dict holds under spectral norm (``weight_orig`` with its power
    iteration's ``weight_u``/``weight_v``, or ``parametrizations.weight.original``) that a rule
    would resize: the layer divides whatever weight it holds by that weight's own largest singular
    value, so no stored tensor makes its effective weight the resized one."""


class NonFiniteResultError(KernelscaleError, OverflowError):
    """A finite tensor whose resized values overflow the output dtype (or the float32 computation):
    stored, they would be inf or NaN. Raised by every resize (kernelscale.resize: ``resize_kernel``,
    ``resize_grid_linear``, ``scale_tensor``, ``reparam.rescale_weight_norm_g``) rather than
    returning such a tensor; a tensor that already holds inf or NaN is resized as it is."""


class UnsupportedDenoiserError(KernelscaleError, TypeError):
    """A diffusion pipeline whose denoiser kernelscale cannot supersample (a transformer such as DiT,
    SD3 or Flux, a video UNet): named by its class in the message."""


class UnsupportedPipelineError(KernelscaleError, TypeError):
    """A pipeline whose denoiser call the sampling-time methods cannot wrap (named in the message)."""


class ExecutionUnavailableError(KernelscaleError, NotImplementedError):
    """An execution mode that this version of kernelscale does not provide (none at present: both
    ``materialised`` and ``factored`` run; kept so that code catching it keeps working)."""
