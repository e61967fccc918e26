"""Plan files: the fields of :class:`~kernelscale.plan.ResizeOptions` read from a file (DESIGN §5).

Three formats, chosen by the file name:

- ``*.toml`` (TOML) and ``*.json`` (JSON): a table with any of the keys ``scale``, ``method``,
  ``mode``, ``align``, ``coef``, ``include``, ``exclude``, ``absorb``, ``grids``
  (``{name = [C, H, W]}``, or ``{name = "H,W,C:4,4,32"}`` / ``{name = {layout = "HWC", shape = [4, 4, 32]}}``
  giving the axis order of the flattened features), ``layers`` (a list of ``{pattern, scale, method, mode, align, coef}``
  tables, or a ``{pattern = scale}`` table), ``geometry_only``, ``disperse`` (``{size, probe,
  eta}``), ``attention`` (a list of ``{pattern, tokens, new_tokens}`` tables) and ``fallback`` (the
  method for layers the chosen one cannot handle).
- anything else: ScaleCrafter's settings text, one ``name:factor`` per line (``#`` starts a
  comment; blank lines are ignored). Each line becomes a layer rule; the global scale is 1, so
  layers not listed keep their weights, as in ScaleCrafter.

The result is a dict of ResizeOptions fields; the CLI lets its flags override them.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Mapping

from kernelscale.errors import InvalidOptionError, KernelscaleError
from kernelscale.grid import grid_layout
from kernelscale.io.files import read_small_file
from kernelscale.options import LayerRule, ResizeOptions

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

MAX_PLAN_BYTES = 16_000_000
"""Largest plan file read, in bytes: a larger one (or a FIFO, /dev/zero) is refused before reading."""

PLAN_KEYS = ("scale", "method", "mode", "align", "coef", "include", "exclude", "absorb", "grids", "layers",
             "geometry_only", "disperse", "attention", "fallback")
"""The keys a TOML or JSON plan file may hold: the fields of ResizeOptions."""

LAYER_KEYS = ("pattern", "scale", "method", "mode", "align", "coef")
ATTENTION_KEYS = ("pattern", "tokens", "new_tokens")


def load_plan_file(path: "str | os.PathLike[str]") -> dict[str, Any]:
    """Read a plan file and return the ResizeOptions fields it sets.

    Raises :class:`InvalidOptionError` naming the file (and the line, for text files) for a file
    that cannot be read or parsed, an unknown key, or a value ResizeOptions rejects.
    ``layers`` comes back as a tuple of :class:`LayerRule`, ``grids`` as ``{name: (C, H, W)}``,
    ``include``/``exclude``/``absorb`` as tuples of globs.
    """
    path = os.fspath(path)
    raw = read_small_file(path, MAX_PLAN_BYTES, InvalidOptionError, "the plan file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidOptionError(f"plan file {path}: not UTF-8 text (byte {exc.start})") from None
    lower = path.lower()
    if lower.endswith(".toml"):
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise InvalidOptionError(f"plan file {path}: invalid TOML: {exc}") from None
        except RecursionError:
            raise InvalidOptionError(f"plan file {path}: nested too deeply to read (a plan file is a flat table)") from None
        return _from_mapping(data, path)
    if lower.endswith(".json"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InvalidOptionError(f"plan file {path}: invalid JSON: {exc}") from None
        except RecursionError:
            raise InvalidOptionError(f"plan file {path}: nested too deeply to read (a plan file is a flat table)") from None
        return _from_mapping(data, path)
    return _from_scalecrafter(text, path)


def _from_mapping(data: Any, path: str) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise InvalidOptionError(f"plan file {path}: expected a table of options, got a {type(data).__name__}")
    unknown = sorted(set(data) - set(PLAN_KEYS))
    if unknown:
        raise InvalidOptionError(f"plan file {path}: unknown key(s) {', '.join(map(repr, unknown))}; "
                                 f"expected some of {', '.join(PLAN_KEYS)}")
    fields: dict[str, Any] = {}
    for key in ("scale", "method", "mode", "align", "coef", "geometry_only", "disperse", "fallback"):
        if key in data:
            fields[key] = _plain(data[key], key, path)
    for key in ("include", "exclude", "absorb"):
        if key in data:
            fields[key] = _globs(data[key], key, path)
    if "grids" in data:
        fields["grids"] = _grids(data["grids"], path)
    if "layers" in data:
        fields["layers"] = _layers(data["layers"], path)
    if "attention" in data:
        fields["attention"] = _attention(data["attention"], path)
    _validate(fields, path)
    return fields


def _plain(value: Any, key: str, path: str) -> Any:
    if key == "scale" and isinstance(value, list):
        return tuple(value)
    if key == "geometry_only" and not isinstance(value, bool):
        raise InvalidOptionError(f"plan file {path}: geometry_only must be true or false, got {value!r}")
    if key == "disperse" and not isinstance(value, Mapping):
        raise InvalidOptionError(f"plan file {path}: disperse must be a table of size, probe, eta; got {value!r}")
    return dict(value) if isinstance(value, Mapping) else value


def _globs(value: Any, key: str, path: str) -> tuple[str, ...]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
        raise InvalidOptionError(f"plan file {path}: {key} must be a glob or a list of globs, got {value!r}")
    return tuple(values)


def _grids(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidOptionError(f"plan file {path}: grids must be a table of name = [C, H, W] (or \"H,W,C:4,4,32\"), got {value!r}")
    grids = {}
    for name, shape in value.items():
        if isinstance(shape, str) and ":" not in shape:
            shape = shape.split(",")
        if isinstance(shape, (list, tuple)):
            if len(shape) != 3:
                raise InvalidOptionError(f"plan file {path}: grid {name!r} must be [C, H, W], got {shape!r}")
            try:
                shape = tuple(_positive_int(v) for v in shape)
            except ValueError:
                raise InvalidOptionError(f"plan file {path}: grid {name!r} must be three positive integers, got {shape!r}") from None
        try:
            grids[name] = grid_layout(shape, f"grid {name!r}")
        except KernelscaleError as exc:
            raise InvalidOptionError(f"plan file {path}: {exc}") from None
    return grids


def _positive_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, str):
        value = int(value.strip())
    if not isinstance(value, int) or value < 1:
        raise ValueError(value)
    return value


def _layers(value: Any, path: str) -> tuple[LayerRule, ...]:
    rules: list[LayerRule] = []
    if isinstance(value, Mapping):  # {pattern = scale} or {pattern = {scale = …, method = …}}
        items = [({"pattern": p, **v} if isinstance(v, Mapping) else {"pattern": p, "scale": v}) for p, v in value.items()]
    elif isinstance(value, list):
        items = value
    else:
        raise InvalidOptionError(f"plan file {path}: layers must be a list of tables or a table of pattern = scale, got {value!r}")
    for i, item in enumerate(items):
        if not isinstance(item, Mapping) or not isinstance(item.get("pattern"), str) or not item["pattern"]:
            raise InvalidOptionError(f"plan file {path}: layer rule {i + 1} needs a pattern, got {item!r}")
        unknown = sorted(set(item) - set(LAYER_KEYS))
        if unknown:
            raise InvalidOptionError(f"plan file {path}: layer rule {item['pattern']!r} has unknown key(s) "
                                     f"{', '.join(map(repr, unknown))}; expected some of {', '.join(LAYER_KEYS)}")
        fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in item.items()}
        try:
            rules.append(LayerRule(**fields))
        except (KernelscaleError, TypeError) as exc:
            raise InvalidOptionError(f"plan file {path}: {exc}") from None
    return tuple(rules)


def _attention(value: Any, path: str) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, list) or not all(isinstance(item, Mapping) for item in value):
        raise InvalidOptionError(f"plan file {path}: attention must be a list of {{pattern, tokens, new_tokens}} tables, got {value!r}")
    for item in value:
        unknown = sorted(set(item) - set(ATTENTION_KEYS))
        if unknown or not isinstance(item.get("pattern"), str) or "tokens" not in item:
            raise InvalidOptionError(f"plan file {path}: attention rule {item!r} needs pattern and tokens "
                                     f"(keys: {', '.join(ATTENTION_KEYS)})")
    return tuple(dict(item) for item in value)


def _from_scalecrafter(text: str, path: str) -> dict[str, Any]:
    rules: list[LayerRule] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        body = line.split("#", 1)[0].strip()
        if not body:
            continue
        name, sep, factor = body.rpartition(":")
        name = name.strip()
        if not sep or not name or any(c.isspace() for c in name):
            raise InvalidOptionError(f"plan file {path}, line {lineno}: expected 'name:factor' (ScaleCrafter format), got {line.strip()!r}")
        if name in seen:
            raise InvalidOptionError(f"plan file {path}, line {lineno}: {name!r} is already listed on line {seen[name]}")
        seen[name] = lineno
        try:
            scale = float(factor.strip())
        except ValueError:
            raise InvalidOptionError(f"plan file {path}, line {lineno}: factor {factor.strip()!r} is not a number") from None
        try:
            rules.append(LayerRule(name, scale=scale))
        except KernelscaleError as exc:
            raise InvalidOptionError(f"plan file {path}, line {lineno}: {exc}") from None
    if not rules:
        raise InvalidOptionError(f"plan file {path}: no 'name:factor' lines (expected TOML in *.toml, JSON in *.json, "
                                 "or ScaleCrafter's settings text)")
    return {"scale": 1.0, "layers": tuple(rules)}


def _validate(fields: dict[str, Any], path: str) -> None:
    """Check the file's values as ResizeOptions would, so that errors name the file."""
    probe = {"scale": 1.0, **fields}
    if probe.get("geometry_only") and "method" not in fields:
        probe["method"] = "dilate"  # the command line may supply --method dilate
    try:
        ResizeOptions(**probe)
    except KernelscaleError as exc:
        raise InvalidOptionError(f"plan file {path}: {exc}") from None
    except TypeError as exc:  # e.g. an unknown key inside ``disperse``
        raise InvalidOptionError(f"plan file {path}: {exc}") from None
