"""The state-dict API: plan a resize of a dict of tensors and execute it in memory.

A plan entry is executed on its own tensor by :func:`apply_entry`, except weight norm's g
(action ``"renorm"``), whose new values depend on v: :func:`apply_renorm` takes both.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping, Optional, Union

import numpy as np
import torch

from kernelscale.dtypes import dtype_name
from kernelscale.errors import InvalidOptionError, UnsupportedTensorError
from kernelscale.plan import Plan, TensorPlan, TensorSpec, plan_tensors
from kernelscale.options import ResizeOptions, resize_options
from kernelscale.execute import TensorLike, execute
from kernelscale.manifest import Action
from kernelscale.reparam import rescaled_g


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


def _nested_state_dicts(value: Any, path: str, depth: int = 3) -> list[str]:
    """Python expressions (``sd['model']['state_dict']``) of the dicts within ``value`` that hold
    tensors directly, up to ``depth`` levels down."""
    if not isinstance(value, Mapping) or depth == 0:
        return []
    if any(is_tensor(v) for v in value.values()):
        return [path]
    return [found for key, v in value.items() for found in _nested_state_dicts(v, f"{path}[{key!r}]", depth - 1)]


def _check_layout(state_dict: Mapping[Any, Any]) -> None:
    """InvalidOptionError for a mapping that is not a flat state dict: tensor names that are not
    strings (which the planner cannot match or record), or tensors only inside nested dicts (a
    training checkpoint, ``{'epoch': 3, 'state_dict': {…}}``, of which nothing would be resized)."""
    if not isinstance(state_dict, Mapping):
        raise InvalidOptionError(f"expected a state dict (a mapping of name → tensor), got {type(state_dict).__name__}")
    for key, value in state_dict.items():
        if not isinstance(key, str) and is_tensor(value):
            raise InvalidOptionError(f"state dict key {key!r} is of type {type(key).__name__}, not str: tensor names must be "
                                     "strings (as in module.state_dict())")
    if any(is_tensor(v) for v in state_dict.values()):
        return
    nested = [found for key, value in state_dict.items() for found in _nested_state_dicts(value, f"sd[{key!r}]")]
    if len(nested) == 1:
        raise InvalidOptionError(f"the state dict holds no tensors at its top level, only inside a nested dict: pass {nested[0]}")
    if nested:
        shown = ", ".join(nested[:3]) + (f" and {len(nested) - 3} more" if len(nested) > 3 else "")
        raise InvalidOptionError(f"the state dict holds no tensors at its top level, only inside nested dicts ({shown}): "
                                 f"pass one of them, e.g. {nested[0]}")


def plan_state_dict(state_dict: Mapping[str, Any], options: Optional[ResizeOptions] = None, **kwargs: Any) -> Plan:
    """Plan a resize of ``state_dict`` (name → torch tensor or numpy array) without running it.

    Give either a :class:`ResizeOptions` or its fields as keyword arguments (``scale=2, …``).
    Entries that are not tensors are left out of the plan (and passed through by
    :func:`resize_state_dict`). Raises UnsupportedTensorError naming the tensor when one the plan
    would resize has a dtype kernelscale cannot compute with (a complex conv weight), and
    InvalidOptionError for a tensor under a key that is not a string, or a training checkpoint whose
    tensors all sit in nested dicts (``{'epoch': 3, 'state_dict': {…}}``: pass ``sd['state_dict']``).
    """
    if options is None:
        options = resize_options(**kwargs)
    elif kwargs:
        raise TypeError("give either options or keyword options, not both")
    _check_layout(state_dict)
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
    """Execute one plan entry on its tensor with the entry's built operator
    (:func:`kernelscale.execute.execute`); copies and geometry-only entries return ``tensor`` itself.

    A ``"renorm"`` entry (weight norm's g) needs v as well: InvalidOptionError pointing to
    :func:`apply_renorm`; so does a tensor whose shape is not the one planned. A finite tensor
    whose result would overflow ``out_dtype`` raises
    :class:`~kernelscale.errors.NonFiniteResultError` naming the entry.
    """
    if entry.action == Action.RENORM:
        raise InvalidOptionError(f"{entry.name}: weight norm's g is rescaled from its v's norms; use apply_renorm(entry, g, v)")
    if entry.action != Action.RESIZE:
        return tensor
    if tuple(tensor.shape) != tuple(entry.shape):
        raise InvalidOptionError(f"{entry.name}: the plan was made for shape {tuple(entry.shape)}, but the tensor has shape "
                                 f"{tuple(tensor.shape)}")
    return execute(entry.operator, tensor, name=entry.name, out_dtype=out_dtype, backend=backend)


def apply_renorm(
    entry: TensorPlan,
    g: TensorLike,
    v: TensorLike,
    v_resized: Optional[TensorLike] = None,
    out_dtype: Optional[torch.dtype] = None,
    backend: Optional[str] = None,
) -> TensorLike:
    """Execute a ``"renorm"`` entry (weight norm's g) in memory: :func:`kernelscale.reparam.rescaled_g`
    on the whole ``v`` (the original v) and ``v_resized``, the v' stored beside g' (default: v
    resized by ``entry.partner``, in v's dtype). Rounded once to ``out_dtype`` (default g's dtype);
    same kind as ``g``.
    """
    if entry.action != Action.RENORM or entry.partner is None:
        raise InvalidOptionError(f"{entry.name}: apply_renorm executes weight norm's renorm entries, not {entry.action!r} ones")
    if v_resized is None:
        v_resized = apply_entry(entry.partner, v, backend=backend)
    return rescaled_g(entry, g, [(v, v_resized)], out_dtype)


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
    changed tensor. A weight-normed conv (v and g) is resized exactly: v as the conv weight, g
    rescaled for it (:func:`apply_renorm`).
    """
    if plan is None:
        if scale is None:
            raise TypeError("resize_state_dict needs a scale (or a plan)")
        plan = plan_state_dict(state_dict, resize_options(scale=scale, **options))
    entries = {entry.name: entry for entry in plan}
    missing = [name for name in entries if name not in state_dict]
    if missing:
        raise InvalidOptionError(f"the plan names {missing[0]!r}, which the state dict does not hold")
    out = {name: value if name not in entries or entries[name].action == Action.RENORM else apply_entry(entries[name], value, backend=backend)
           for name, value in state_dict.items()}
    for entry in plan:  # renorm entries (weight norm's g), from their v and the v' just computed
        if entry.action == Action.RENORM:
            v = entry.partner.name
            v_resized = out[v] if v in entries and entries[v].action == Action.RESIZE else None
            out[entry.name] = apply_renorm(entry, state_dict[entry.name], state_dict[v], v_resized, backend=backend)
    return out, plan.manifest()
