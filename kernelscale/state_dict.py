"""The state-dict API: plan a resize of a dict of tensors and execute it in memory."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Union

import torch

from kernelscale.dtypes import dtype_name
from kernelscale.plan import Plan, ResizeOptions, TensorPlan, TensorSpec, plan_tensors
from kernelscale.resize import TensorLike, resize_grid_linear, resize_kernel, scale_tensor


def spec_of(name: str, tensor: TensorLike) -> TensorSpec:
    """The planner's view of an in-memory tensor."""
    return TensorSpec(name, dtype_name(tensor.dtype), tuple(int(d) for d in tensor.shape))


def plan_state_dict(state_dict: Mapping[str, TensorLike], options: Optional[ResizeOptions] = None, **kwargs: Any) -> Plan:
    """Plan a resize of ``state_dict`` (name → torch tensor or numpy array) without running it.

    Give either a :class:`ResizeOptions` or its fields as keyword arguments (``scale=2, …``).
    """
    if options is None:
        options = ResizeOptions(**kwargs)
    elif kwargs:
        raise TypeError("give either options or keyword options, not both")
    return plan_tensors((spec_of(n, t) for n, t in state_dict.items()), options)


def apply_entry(
    entry: TensorPlan,
    tensor: TensorLike,
    out_dtype: Optional[torch.dtype] = None,
    backend: Optional[str] = None,
) -> TensorLike:
    """Execute one plan entry on its tensor; copies and geometry-only entries return ``tensor`` itself."""
    if entry.action != "resize":
        return tensor
    if entry.kind == "attention":
        return scale_tensor(tensor, entry.record["factor"], out_dtype)
    if entry.kind == "grid":
        return resize_grid_linear(tensor, entry.grid, entry.scales, method=entry.method, mode=entry.mode, align=entry.align,
                                  coef=entry.coef, name=entry.name, out_dtype=out_dtype, backend=backend)
    return resize_kernel(tensor, entry.scales, method=entry.method, mode=entry.mode, align=entry.align, coef=entry.coef,
                         name=entry.name, out_dtype=out_dtype, backend=backend, disperse=entry.disperse)


def resize_state_dict(
    state_dict: Mapping[str, TensorLike],
    scale: Union[float, tuple[float, ...], None] = None,
    *,
    plan: Optional[Plan] = None,
    backend: Optional[str] = None,
    **options: Any,
) -> tuple[dict[str, TensorLike], dict[str, Any]]:
    """Resize every planned tensor of ``state_dict``; return ``(new_state_dict, manifest)``.

    ``scale`` and ``options`` are the fields of :class:`ResizeOptions` (method, mode, align, coef,
    include, exclude, absorb, grids, layers, geometry_only); or pass a ready ``plan``. Untouched
    tensors are returned as the same objects, not copies; resized ones keep kind, device and dtype.
    The manifest is DESIGN §5's: options and one record per changed tensor.
    """
    if plan is None:
        if scale is None:
            raise TypeError("resize_state_dict needs a scale (or a plan)")
        plan = plan_state_dict(state_dict, ResizeOptions(scale=scale, **options))
    out = {entry.name: apply_entry(entry, state_dict[entry.name], backend=backend) for entry in plan}
    return out, plan.manifest()
