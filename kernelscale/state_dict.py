"""The state-dict API: plan a resize of a dict of tensors and execute it in memory."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping, Optional, Union

import numpy as np
import torch

from kernelscale.dtypes import dtype_name
from kernelscale.errors import InvalidOptionError, UnsupportedTensorError
from kernelscale.plan import Plan, ResizeOptions, TensorPlan, TensorSpec, plan_tensors
from kernelscale.resize import TensorLike, resize_grid_linear, resize_kernel, scale_tensor


def is_tensor(value: Any) -> bool:
    """Whether a state-dict entry is a tensor the planner sees (torch tensor or numpy array);
    anything else (a step count, a config string) is passed through untouched."""
    return isinstance(value, (torch.Tensor, np.ndarray))


def spec_of(name: str, tensor: TensorLike) -> TensorSpec:
    """The planner's view of an in-memory tensor.

    The dtype is named as safetensors spells it; a big-endian numpy array by its native name (it
    is resized like one); a dtype safetensors lacks (complex64, float128, object, <U3) by its own
    name, which the planner never resizes.
    """
    dtype = tensor.dtype
    if isinstance(dtype, np.dtype) and not dtype.isnative:
        dtype = dtype.newbyteorder("=")
    try:
        name_of_dtype = dtype_name(dtype)
    except UnsupportedTensorError:
        name_of_dtype = str(dtype).replace("torch.", "")
    return TensorSpec(name, name_of_dtype, tuple(int(d) for d in tensor.shape))


def _float_stand_in(tensor: TensorLike) -> Optional[str]:
    """For a tensor of numbers kernelscale cannot compute with (complex, numpy float128): the
    float dtype name it is planned as, so that a rule or the default rule that would resize it
    is noticed and refused by name instead of leaving it silently unresized. None otherwise."""
    dtype = tensor.dtype
    if isinstance(tensor, torch.Tensor):
        return ("F64" if dtype == torch.complex128 else "F32") if dtype.is_complex else None
    if dtype.kind == "c" or (dtype.kind == "f" and dtype.itemsize not in (2, 4, 8)):
        return "F64"
    return None


def plan_state_dict(state_dict: Mapping[str, Any], options: Optional[ResizeOptions] = None, **kwargs: Any) -> Plan:
    """Plan a resize of ``state_dict`` (name → torch tensor or numpy array) without running it.

    Give either a :class:`ResizeOptions` or its fields as keyword arguments (``scale=2, …``).
    Entries that are not tensors are left out of the plan (and passed through by
    :func:`resize_state_dict`). Raises UnsupportedTensorError naming the tensor when one the plan
    would resize has a dtype kernelscale cannot compute with (a complex conv weight).
    """
    if options is None:
        options = ResizeOptions(**kwargs)
    elif kwargs:
        raise TypeError("give either options or keyword options, not both")
    specs, stand_ins = [], {}
    for name, value in state_dict.items():
        if not is_tensor(value):
            continue
        spec = spec_of(name, value)
        stand_in = _float_stand_in(value)
        if stand_in is not None:
            stand_ins[name] = spec.dtype
            spec = replace(spec, dtype=stand_in)
        specs.append(spec)
    plan = plan_tensors(specs, options)
    if not stand_ins:
        return plan
    entries = []
    for entry in plan:
        if entry.name in stand_ins:
            dtype = stand_ins[entry.name]
            if entry.changed:
                raise UnsupportedTensorError(
                    f"{entry.name}: the plan would resize this {dtype} tensor of shape {entry.shape} ({entry.reason}), "
                    "but kernelscale resizes float16/bfloat16/float32/float64 tensors only; exclude it, or resize its "
                    "real and imaginary parts as float tensors")
            entry = replace(entry, dtype=dtype)
        entries.append(entry)
    return Plan(tuple(entries), plan.options)


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
        return scale_tensor(tensor, entry.record["factor"], out_dtype, name=entry.name)
    if entry.kind == "grid":
        return resize_grid_linear(tensor, entry.grid, entry.scales, method=entry.method, mode=entry.mode, align=entry.align,
                                  coef=entry.coef, name=entry.name, out_dtype=out_dtype, backend=backend)
    return resize_kernel(tensor, entry.scales, method=entry.method, mode=entry.mode, align=entry.align, coef=entry.coef,
                         name=entry.name, out_dtype=out_dtype, backend=backend, disperse=entry.disperse)


def resize_state_dict(
    state_dict: Mapping[str, Any],
    scale: Union[float, tuple[float, ...], None] = None,
    *,
    plan: Optional[Plan] = None,
    backend: Optional[str] = None,
    **options: Any,
) -> tuple[dict[str, TensorLike], dict[str, Any]]:
    """Resize every planned tensor of ``state_dict``; return ``(new_state_dict, manifest)``.

    ``scale`` and ``options`` are the fields of :class:`ResizeOptions` (method, mode, align, coef,
    include, exclude, absorb, grids, layers, geometry_only); or pass a ready ``plan``. Untouched
    entries — tensors the plan copies and anything that is not a tensor — are returned as the
    same objects, not copies; resized tensors keep kind, device and dtype (a big-endian numpy
    array comes back in native byte order) and are plain tensors without autograd history, also
    for an ``nn.Parameter`` input. The manifest is DESIGN §5's: options and one record per
    changed tensor.
    """
    if plan is None:
        if scale is None:
            raise TypeError("resize_state_dict needs a scale (or a plan)")
        plan = plan_state_dict(state_dict, ResizeOptions(scale=scale, **options))
    entries = {entry.name: entry for entry in plan}
    missing = [name for name in entries if name not in state_dict]
    if missing:
        raise InvalidOptionError(f"the plan names {missing[0]!r}, which the state dict does not hold")
    out = {name: value if name not in entries else apply_entry(entries[name], value, backend=backend)
           for name, value in state_dict.items()}
    return out, plan.manifest()
