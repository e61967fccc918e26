"""The geometry of live layers: read a conv's, transposed conv's or pool's kernel, padding,
stride and dilation from the module (the adapter's asymmetric padding included), set new ones,
and choose the sides of half-pixel paddings from the module's strides (DESIGN §3).

The rule that computes the new geometry is :mod:`kernelscale.geometry`'s (pure); this module only
reads and writes ``nn.Module`` attributes. A padding that differs per side is applied by a forward
pre-hook that ``F.pad``s the input (``layer.kernelscale_pad``, F.pad order) while the conv's own
padding is 0, so that the state-dict keys stay the same.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping, Optional

import torch.nn.functional as F
from torch import nn

from kernelscale.geometry import LayerGeometry
from kernelscale.manifest import ConvRecord, Record
from kernelscale.plan import half_pixel_sides, module_name, natural_key

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
_POOL_NDIM = {1: (nn.MaxPool1d, nn.AvgPool1d), 2: (nn.MaxPool2d, nn.AvgPool2d), 3: (nn.MaxPool3d, nn.AvgPool3d)}
_PAD_MODES = {"zeros": "constant", "circular": "circular", "replicate": "replicate", "reflect": "reflect"}


def int_tuple(value: Any, ndim: int) -> tuple[int, ...]:
    """A layer attribute (an int, or one value per axis) as ``ndim`` ints."""
    if isinstance(value, (int, float)):
        return (int(value),) * ndim
    value = tuple(int(v) for v in value)
    return value * ndim if len(value) == 1 and ndim > 1 else value


def layer_geometry(layer: nn.Module) -> LayerGeometry:
    """The geometry a conv, transposed conv or pool layer has now, pre-hook padding included
    (pads per spatial axis as (before, after))."""
    if isinstance(layer, POOLS):
        ndim = pool_ndim(layer)
        kernel = int_tuple(layer.kernel_size, ndim)
        stride = int_tuple(layer.stride if layer.stride is not None else layer.kernel_size, ndim)
        pad = int_tuple(layer.padding, ndim)
        dilation = int_tuple(getattr(layer, "dilation", 1), ndim)
        return LayerGeometry(kernel, tuple((p, p) for p in pad), stride, dilation)
    ndim = layer.weight.ndim - 2
    kernel = tuple(int(k) for k in layer.weight.shape[2:])
    dilation = int_tuple(layer.dilation, ndim)
    hook_pad = getattr(layer, "kernelscale_pad", None)
    if hook_pad:
        pads = tuple((hook_pad[2 * (ndim - 1 - i)], hook_pad[2 * (ndim - 1 - i) + 1]) for i in range(ndim))
    elif layer.padding == "valid":
        pads = ((0, 0),) * ndim
    elif layer.padding == "same":
        totals = [d * (k - 1) for d, k in zip(dilation, kernel)]
        pads = tuple((t // 2, t - t // 2) for t in totals)
    else:
        pads = tuple((p, p) for p in int_tuple(layer.padding, ndim))
    output_padding = int_tuple(layer.output_padding, ndim) if isinstance(layer, TRANSPOSED) else ()
    return LayerGeometry(kernel, pads, int_tuple(layer.stride, ndim), dilation, output_padding)


def pool_ndim(layer: nn.Module) -> int:
    """The spatial dimensions (1, 2 or 3) of a MaxPool/AvgPool layer."""
    return next(d for d, kinds in _POOL_NDIM.items() if isinstance(layer, kinds))


def _asymmetric_pad_hook(layer: nn.Module, args: tuple) -> Optional[tuple]:
    """Forward pre-hook of a conv with asymmetric padding: F.pad the input by ``layer.kernelscale_pad``
    (F.pad order: last axis first, (before, after) per axis) in the layer's padding mode."""
    pad = getattr(layer, "kernelscale_pad", None)
    if not pad:
        return None
    return (F.pad(args[0], pad, mode=_PAD_MODES[layer.padding_mode]), *args[1:])


def set_conv_geometry(layer: nn.Module, g: LayerGeometry) -> None:
    """Give a conv or transposed conv the geometry ``g``: a padding that differs per side goes to the
    pre-hook (registered once), the conv's own padding then 0."""
    from torch.nn.modules.utils import _reverse_repeat_tuple

    layer.kernel_size = g.kernel
    layer.stride = g.stride
    layer.dilation = g.dilation
    if all(b == a for b, a in g.pads):
        layer.padding = tuple(b for b, _ in g.pads)
        if hasattr(layer, "kernelscale_pad"):
            layer.kernelscale_pad = None
    else:
        layer.padding = (0,) * len(g.pads)
        if not hasattr(layer, "kernelscale_pad"):
            layer.register_forward_pre_hook(_asymmetric_pad_hook)
        layer.kernelscale_pad = tuple(v for b, a in reversed(g.pads) for v in (b, a))
    layer._reversed_padding_repeated_twice = _reverse_repeat_tuple(layer.padding, 2)


def set_pool_geometry(layer: nn.Module, g: LayerGeometry) -> None:
    """Give a pool the kernel, (symmetric) padding and stride of ``g``."""
    layer.kernel_size = g.kernel
    layer.padding = tuple(b for b, _ in g.pads)
    layer.stride = g.stride


def input_jumps(module: nn.Module) -> dict[str, float]:
    """Per conv of ``module``, the input pixels per pixel at its input (the product of the strides
    of the convs and pools registered before it; a transposed conv divides), for choosing the sides
    of half-pixel paddings (:func:`kernelscale.plan.half_pixel_sides`). Registration order stands for
    the forward's order. A strided conv gets 0: its half-pixel side is chosen by alignment
    (:func:`kernelscale.geometry.conv_change`), not to cancel shifts."""
    jumps: dict[str, float] = {}
    jump = 1.0
    for name, layer in module.named_modules():
        if isinstance(layer, CONVS + TRANSPOSED + POOLS):
            stride = layer.stride if layer.stride is not None else layer.kernel_size
            step = float(stride[-1] if isinstance(stride, (tuple, list)) else stride)
            if isinstance(layer, CONVS + TRANSPOSED):
                jumps[name] = jump if step == 1 else 0.0
            jump = jump / step if isinstance(layer, TRANSPOSED) else jump * step
    return jumps


def sides_by_module(records: Mapping[str, Record], module: nn.Module) -> dict[str, Record]:
    """``records`` with each half-pixel conv's ``pad_extra`` re-chosen as :func:`kernelscale.nn.supersample` chooses
    it, on the offset accumulated in input pixels through ``module``'s strides and pools (a file's
    records alternate by name: the converter sees no strides), so that loading a converted file
    and supersampling the module give the same layers."""
    jumps = input_jumps(module)
    half = sorted((n for n, r in records.items() if isinstance(r, ConvRecord) and r.half_pixel), key=natural_key)
    chosen = half_pixel_sides([(n, float(jumps.get(module_name(n), 1.0))) for n in half])
    return {n: replace(r, pad_extra=chosen[n]) if n in chosen else r for n, r in records.items()}


class Sides:
    """Alternates the half-pixel side for records that carry no ``pad_extra``."""

    def __init__(self) -> None:
        self.side = "after"

    def take(self, record: Record) -> str:
        if not record.half_pixel or record.pad_extra:
            return self.side
        side, self.side = self.side, ("before" if self.side == "after" else "after")
        return side
