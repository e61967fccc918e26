"""kernelscale: training-free resolution scaling of trained networks by weight surgery.

The state-dict API::

    from kernelscale import resize_state_dict
    new_sd, manifest = resize_state_dict(model.state_dict(), scale=2)

See DESIGN §3 for the methods and §4 for what they guarantee.

The names below are imported on first use (PEP 562), so that ``import kernelscale.cli`` — the
command line's ``--help`` and ``--version`` — does not import torch (1.9 s).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from kernelscale.version import __version__  # noqa: F401  (kernelscale.__version__)
from kernelscale.errors import KernelscaleError  # noqa: F401

_EXPORTS = {
    "AttentionRule": "options", "LayerRule": "options", "Plan": "plan", "ResizeOptions": "options", "TensorPlan": "plan",
    "TensorSpec": "plan", "plan_tensors": "plan",
    "ConvGeometry": "geometry", "new_padding": "geometry", "Method": "method", "ResizedConv": "resize", "resize_conv": "resize",
    "resize_grid_linear": "resize", "resize_kernel": "resize",
    "plan_state_dict": "state_dict", "resize_state_dict": "state_dict",
    "build_axis_resize": "transforms", "build_kernel_resize": "transforms",
}

__all__ = sorted(["KernelscaleError", *_EXPORTS])

if TYPE_CHECKING:
    from kernelscale.plan import Plan, TensorPlan, TensorSpec, plan_tensors  # noqa: F401
    from kernelscale.options import AttentionRule, LayerRule, ResizeOptions  # noqa: F401
    from kernelscale.geometry import ConvGeometry, new_padding  # noqa: F401
    from kernelscale.method import Method  # noqa: F401
    from kernelscale.resize import ResizedConv, resize_conv, resize_grid_linear, resize_kernel  # noqa: F401
    from kernelscale.state_dict import plan_state_dict, resize_state_dict  # noqa: F401
    from kernelscale.transforms import build_axis_resize, build_kernel_resize  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"kernelscale.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kernelscale' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
