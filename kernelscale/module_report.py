"""The adapter's report: what :func:`kernelscale.nn.supersample` or :func:`kernelscale.nn.load`
did to each layer of a live module (:class:`LayerChange`), and the whole of it
(:class:`SupersampleReport`, with the layers left unchanged and the DESIGN §5 manifest)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Optional, Union

from kernelscale.geometry import Padding, axes_text
from kernelscale.manifest import Action


@dataclass(frozen=True)
class LayerChange:
    """What happened to one layer; ``action`` one of :class:`~kernelscale.manifest.Action` (resize, absorb,
    geometry, grid, attention, pool).

    ``kernel_size``/``stride``/``dilation`` are per spatial axis. ``padding`` is per axis too: an
    int, or a ``(before, after)`` pair when the layer pads asymmetrically. For a Linear over a grid
    the kernel fields hold the grid ``(C, H, W)`` and the others are empty. ``offset`` is, per
    axis, how far the layer's window centres sit from the ideal high-res grid, in pixels of the
    grid its padding is counted on (positive: further along the axis): 0 when exact, ±½ for a
    stride-1 layer padded half a pixel asymmetrically, ``(s−1)(σ−1)/2`` for a kept stride σ whose
    alignment no integer padding reaches (DESIGN §4).

    ``execution`` (resized convs): ``"factored"`` — the layer was replaced by a
    :class:`~kernelscale.layers.FactoredConv` holding the same weight and bias Parameters, run as
    the original kernel at dilation ``d·s`` after a separable prefilter; the kernel, padding and
    dilation fields then describe the equal materialised conv (T2), ``execution_note`` the
    factored form — or ``"materialised"``, with ``execution_note`` saying why it did not factor
    when factored execution was asked for. Empty for other changes.
    """

    name: str
    layer: str
    action: Action
    method: str
    old_kernel_size: tuple[int, ...]
    new_kernel_size: tuple[int, ...]
    old_padding: tuple[Padding, ...] = ()
    new_padding: tuple[Padding, ...] = ()
    old_stride: tuple[int, ...] = ()
    new_stride: tuple[int, ...] = ()
    old_dilation: tuple[int, ...] = ()
    new_dilation: tuple[int, ...] = ()
    old_weight_shape: Optional[tuple[int, ...]] = None
    new_weight_shape: Optional[tuple[int, ...]] = None
    offset: tuple[float, ...] = ()
    execution: str = ""
    execution_note: str = ""

    def describe(self) -> str:
        """One line: ``name (Layer) action method: k a→b, p a→b, stride a→b, dilation a→b``."""
        def arrow(old, new, what):
            return f"{what} {axes_text(old)}" if old == new else f"{what} {axes_text(old)}→{axes_text(new)}"

        if self.action == Action.ATTENTION:
            return f"{self.name} ({self.layer}) attention {self.method}"
        parts = [arrow(self.old_kernel_size, self.new_kernel_size, "grid" if self.action == Action.GRID else "k")]
        if self.action != Action.GRID:
            parts += [arrow(self.old_padding, self.new_padding, "p"), arrow(self.old_stride, self.new_stride, "stride"),
                      arrow(self.old_dilation, self.new_dilation, "dilation")]
        if any(self.offset):
            parts.append(f"offset {axes_text(tuple(round(o, 3) for o in self.offset))} px")
        if self.execution:
            parts.append(self.execution + (f" ({self.execution_note})" if self.execution_note else ""))
        return f"{self.name} ({self.layer}) {self.action} {self.method}: " + ", ".join(parts)


@dataclass(frozen=True)
class SupersampleReport:
    """The layers :func:`kernelscale.nn.supersample` or :func:`kernelscale.nn.load` changed, in module
    order, and the ones it left.

    Iterates, indexes (by position or layer name) and prints as one line per changed layer.
    ``skipped`` holds ``(layer name, reason)`` for every conv, Linear (and, with ``pools=True``,
    pool) layer left as it was. ``manifest`` is the DESIGN §5 manifest of the change.
    """

    layers: tuple[LayerChange, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    manifest: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __iter__(self) -> Iterator[LayerChange]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, key: Union[int, str]) -> LayerChange:
        if isinstance(key, str):
            for change in self.layers:
                if change.name == key:
                    return change
            raise KeyError(key)
        return self.layers[key]

    def names(self) -> list[str]:
        return [c.name for c in self.layers]

    def __str__(self) -> str:
        lines = [c.describe() for c in self.layers]
        lines.append(f"{len(self.layers)} layers changed, {len(self.skipped)} left unchanged")
        return "\n".join(lines)
