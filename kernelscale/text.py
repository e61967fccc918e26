"""How kernelscale writes sizes and lists of names into its messages and summaries."""

from __future__ import annotations

from typing import Sequence


def human_bytes(n: float) -> str:
    """A byte count in decimal units, as every size kernelscale prints: ``512 B``, ``1.5 kB``,
    ``6.5 GB`` (one decimal from kB up; TB is the largest unit)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable: TB is the last unit")  # pragma: no cover


def quoted_names(names: Sequence[str], at_most: int = 5) -> str:
    """``'a', 'b', 'c'`` (with `` …`` past ``at_most`` names)."""
    return ", ".join(map(repr, names[:at_most])) + (" …" if len(names) > at_most else "")
