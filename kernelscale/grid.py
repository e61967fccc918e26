"""A declared grid: the axis order of a Linear's flattened input features (DESIGN §5).

A Linear over a flattened feature map sees its input's axes in the order the model flattened
them: ``x.flatten(1)`` of an ``(N, C, H, W)`` map gives columns ordered C, H, W; a model that
permutes first (``x.permute(0, 2, 3, 1).flatten(1)``, channels-last, as ported TF/Keras models
do) gives H, W, C. A :class:`GridLayout` names that order (``layout``, one letter per axis: ``C``
the channels, ``D``/``H``/``W`` the spatial axes, or ``L`` alone for a 1-D grid) and the sizes in
the same order. Spatial axes are resized in their canonical order D, H, W (the order a scale
tuple's entries apply in); channels are never resized.

Pure: no torch, numpy or I/O (the command line's help imports it).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Mapping

from kernelscale.errors import InvalidOptionError

SPATIAL_SETS = ("L", "W", "HW", "DHW")
"""The spatial axes a grid may have (canonical order): 1-D (L or W), 2-D (H, W), 3-D (D, H, W)."""


@dataclass(frozen=True)
class GridLayout:
    """``layout``: the axis letters in flattened order (e.g. ``"HWC"``); ``sizes``: the size of each,
    in the same order. Validated on construction (InvalidOptionError)."""

    layout: str
    sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        layout = self.layout
        if not isinstance(layout, str) or layout.count("C") != 1 or len(set(layout)) != len(layout):
            raise InvalidOptionError(f"grid layout {layout!r}: one letter per axis, exactly one C (channels)")
        spatial = "".join(sorted(layout.replace("C", ""), key="DHWL".index)) if set(layout) <= set("CDHWL") else None
        if spatial not in SPATIAL_SETS:
            raise InvalidOptionError(f"grid layout {layout!r}: the spatial axes must be L or W (1-D), H,W (2-D) or D,H,W (3-D), "
                                     "in any order with C")
        sizes = self.sizes
        if (not isinstance(sizes, (tuple, list)) or len(sizes) != len(layout)
                or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in sizes)):
            raise InvalidOptionError(f"grid {','.join(layout)}: expected {len(layout)} positive integer sizes, got {sizes!r}")
        object.__setattr__(self, "sizes", tuple(int(v) for v in sizes))

    @property
    def channels(self) -> int:
        return self.sizes[self.layout.index("C")]

    @property
    def spatial_axes(self) -> str:
        """The spatial letters in canonical order (``"HW"``, ``"DHW"``, ``"L"``)."""
        return "".join(sorted(self.layout.replace("C", ""), key="DHWL".index))

    @property
    def spatial(self) -> tuple[int, ...]:
        """The spatial sizes in canonical order."""
        return tuple(self.sizes[self.layout.index(a)] for a in self.spatial_axes)

    @property
    def canonical(self) -> tuple[int, ...]:
        """``(C, *spatial)``: the sizes in the order a ``flatten`` of an NC… map gives."""
        return (self.channels, *self.spatial)

    @property
    def is_canonical(self) -> bool:
        """Whether the layout is C then the spatial axes in canonical order (a plain flatten)."""
        return self.layout == "C" + self.spatial_axes

    @property
    def to_canonical(self) -> tuple[int, ...]:
        """The permutation taking the layout's axes to ``(C, *spatial)``: canonical axis i is layout axis ``perm[i]``."""
        return tuple(self.layout.index(a) for a in "C" + self.spatial_axes)

    @property
    def cells(self) -> int:
        return math.prod(self.sizes)

    def with_spatial(self, spatial: tuple[int, ...]) -> "GridLayout":
        """The same layout with new spatial sizes (canonical order)."""
        new = dict(zip(self.spatial_axes, spatial))
        return GridLayout(self.layout, tuple(self.channels if a == "C" else new[a] for a in self.layout))

    @property
    def text(self) -> str:
        """``32,4,4`` (C,H,W) or ``H,W,C:4,4,32``, as ``--grid`` takes it."""
        sizes = ",".join(map(str, self.sizes))
        return sizes if self.layout == "CHW" else f"{','.join(self.layout)}:{sizes}"

    def to_json(self) -> Any:
        """``[C, H, W]`` for the canonical 2-D layout (as format 1 always wrote), else the text form."""
        return list(self.sizes) if self.layout == "CHW" else self.text


def grid_layout(value: Any, name: str = "grid") -> GridLayout:
    """A declared grid as it enters: a GridLayout; three sizes ``(C, H, W)`` (a plain flatten);
    text ``"32,4,4"`` (C,H,W) or ``"H,W,C:4,4,32"`` (layout, then sizes); or a mapping
    ``{layout: "HWC", shape: [4, 4, 32]}``. InvalidOptionError naming ``name`` otherwise."""
    try:
        if isinstance(value, GridLayout):
            return value
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - {"layout", "shape"})
            if unknown or "shape" not in value:
                raise InvalidOptionError(f"expected {{layout, shape}}, got {dict(value)!r}")
            layout = value.get("layout", "CHW")
            return GridLayout(layout.replace(",", "").replace(" ", "") if isinstance(layout, str) else layout, tuple(value["shape"]))
        if isinstance(value, str):
            letters, sep, numbers = value.rpartition(":")
            try:
                sizes = tuple(int(v) for v in numbers.split(","))
            except ValueError:
                raise InvalidOptionError(f"sizes {numbers!r} are not integers") from None
            layout = letters.replace(",", "").replace(" ", "").upper() if sep else "CHW"
            return GridLayout(layout, sizes)
        if isinstance(value, (tuple, list)) and len(value) == 3:
            return GridLayout("CHW", tuple(value))
        raise InvalidOptionError(f"expected C,H,W sizes or LAYOUT:SIZES (e.g. H,W,C:4,4,32), got {value!r}")
    except InvalidOptionError as exc:
        raise InvalidOptionError(f"{name}: {exc}") from None
