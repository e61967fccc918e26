"""kernelscale: training-free resolution scaling of trained networks by weight surgery.

The state-dict API::

    from kernelscale import resize_state_dict
    new_sd, manifest = resize_state_dict(model.state_dict(), scale=2)

See DESIGN §3 for the methods and §4 for what they guarantee.
"""

from kernelscale.version import __version__  # noqa: F401  (kernelscale.__version__)

from kernelscale.errors import KernelscaleError  # noqa: E402
from kernelscale.plan import AttentionRule, LayerRule, Plan, ResizeOptions, TensorPlan, TensorSpec, plan_tensors  # noqa: E402
from kernelscale.geometry import ConvGeometry, new_padding  # noqa: E402
from kernelscale.method import Method  # noqa: E402
from kernelscale.resize import ResizedConv, resize_conv, resize_grid_linear, resize_kernel  # noqa: E402
from kernelscale.state_dict import plan_state_dict, resize_state_dict  # noqa: E402
from kernelscale.transforms import build_axis_resize, build_kernel_resize  # noqa: E402

__all__ = [
    "AttentionRule", "ConvGeometry", "KernelscaleError", "LayerRule", "Method", "Plan", "ResizeOptions", "ResizedConv", "TensorPlan", "TensorSpec",
    "build_axis_resize", "build_kernel_resize", "new_padding", "plan_state_dict", "plan_tensors", "resize_conv",
    "resize_grid_linear", "resize_kernel", "resize_state_dict",
]
