"""Recipes in error messages: what a user runs so that refused layers fit (DESIGN §3, §4).

The geometry engine (:mod:`kernelscale.geometry`) finds, for a transposed conv the recorded resize
cannot fit, the layer-rule fields of one that does (:class:`~kernelscale.geometry.Refit`); this
module writes them as the user will use them: ``layers=[LayerRule(...)]`` for
``kernelscale.nn.supersample``, or a plan file with ``[[layers]]`` rules and the ``kernelscale
convert`` command for ``kernelscale.nn.load`` (docs/cli.md, "Plan files").
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Optional, Sequence

from kernelscale.errors import GeometryError
from kernelscale.geometry import Refit, rule_fields


def refit_error(refits: Sequence[Refit], recipe: str) -> GeometryError:
    """One GeometryError for every transposed conv that needs another resize: what is wrong with
    each, then ``recipe``."""
    problems = "; ".join(f"{r.name}: {r.problem}" for r in refits)
    return GeometryError(f"{problems}. {recipe}")


def supersample_recipe(refits: Sequence[Refit]) -> str:
    """How to call supersample so that these layers fit: a LayerRule each, or exclude."""
    fixed = [r for r in refits if r.fix]
    text = []
    if fixed:
        fixes = {rule_fields(r.fix) for r in fixed}
        lead = f"{fixes.pop()} fits" if len(fixes) == 1 else "another resize fits each"
        rules = ", ".join(f"LayerRule({r.name!r}, {rule_fields(r.fix)})" for r in fixed)
        text.append(f"{lead}: pass layers=[{rules}] to supersample (from kernelscale import LayerRule; ahead of any "
                    "layer rules of your own, as the first matching rule wins)")
    unfixed = [r.name for r in refits if not r.fix]
    if unfixed:
        text.append(f"no resize by interp fits {listing(unfixed)}: exclude=[{', '.join(repr(n) for n in unfixed)}]")
    return "; ".join(text)


def load_recipe(refits: Sequence[Refit], manifest: Optional[Mapping[str, Any]]) -> str:
    """How to convert the checkpoint again so that load fits these layers: a plan file with a
    ``[[layers]]`` rule each (docs/cli.md, "Plan files"), and the convert command."""
    fixed = [r for r in refits if r.fix]
    unfixed = [r.name for r in refits if not r.fix]
    fixes = {rule_fields(r.fix) for r in fixed}
    lead = (f"{fixes.pop()} fits" if len(fixes) == 1 else "another resize fits each") if fixed else "no resize by interp fits"
    lines = []
    if unfixed:
        lines.append("exclude = [" + ", ".join(json.dumps(n) for n in unfixed) + "]")
    for r in fixed:
        lines += ["", "[[layers]]", f"pattern = {json.dumps(r.name)}", *(f"{k} = {json.dumps(v)}" for k, v in r.fix.items())]
    scale = (manifest or {}).get("options", {}).get("scale")
    if scale is not None:
        scale = ",".join(f"{float(v):g}" for v in (scale if isinstance(scale, (list, tuple)) else [scale]))
    command = "kernelscale convert ORIGINAL.safetensors OUT.safetensors " + (f"--scale {scale} " if scale else "") + "--plan fix.toml"
    body = "\n".join("    " + line if line else "" for line in lines)
    return (f"{lead}: convert the original checkpoint again with this plan file, fix.toml (its rules ahead of any "
            f"[[layers]] of your own, as the first matching rule wins):\n{body}\n\n    {command}\n\n"
            "with the other options of the first conversion, then load the new file")


def listing(names: Sequence[str], limit: int = 8) -> str:
    """Sorted, quoted names, the first ``limit`` of them and how many more."""
    names = sorted(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(repr(n) for n in names[:limit]) + more
