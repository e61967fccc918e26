"""Re-dilation presets: ScaleCrafter's published settings (data in scalecrafter_presets.py) as
typed values, ScaleCrafter's ``layer:factor`` text format, and resolution against a model's layers.

Resolving is strict: a name that matches no layer is an error, except the names the data itself
declares absent from the model the settings were published for (the SDXL files name layers SDXL
does not have; see scalecrafter_presets.py). Those are reported in ``ResolvedPreset.dropped``.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Iterable, Mapping, Optional

from kernelscale.errors import InvalidOptionError
from kernelscale.sampling.redilation import check_factor, layer_dilations
from kernelscale.sampling.scalecrafter_presets import SCALECRAFTER_PRESETS, SOURCE


def parse_settings(text: str, where: str = "settings") -> dict[str, float]:
    """Parse ScaleCrafter's settings format: one ``layer.name:factor`` per line, blank lines
    ignored. Returns name → factor in file order. Raises InvalidOptionError naming the line for a
    malformed line, a factor that is not a number ≥ 1, or a repeated name."""
    out: dict[str, float] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        name, sep, value = line.rpartition(":")
        if not sep or not name.strip():
            raise InvalidOptionError(f"{where} line {number}: expected 'layer.name:factor', got {raw!r}")
        try:
            factor = float(value)
        except ValueError:
            raise InvalidOptionError(f"{where} line {number}: factor {value!r} is not a number") from None
        check_factor(factor, f"{where} line {number}: factor")
        name = name.strip()
        if name in out:
            raise InvalidOptionError(f"{where} line {number}: layer {name!r} given twice")
        out[name] = factor
    return out


@dataclass(frozen=True)
class RedilationPreset:
    """One published ScaleCrafter setting. Steps count the preset's own sampler
    (``num_inference_steps`` DDIM steps, 0-based, sampling order)."""

    name: str
    model: str
    height: int
    width: int
    latent_height: int
    latent_width: int
    num_inference_steps: int
    dilate_tau: int
    ndcfg_tau: int
    progressive: bool
    dilation: Mapping[str, float]
    ndcfg_dilation: Optional[Mapping[str, float]]
    absent_in_model: tuple[str, ...]
    source: str


def _build(name: str, raw: Mapping) -> RedilationPreset:
    where = f"preset {name!r}"
    nd = raw["ndcfg_dilate_settings"]
    return RedilationPreset(
        name=name, model=raw["model"], height=raw["height"], width=raw["width"],
        latent_height=raw["latent_height"], latent_width=raw["latent_width"],
        num_inference_steps=raw["num_inference_steps"], dilate_tau=raw["dilate_tau"], ndcfg_tau=raw["ndcfg_tau"],
        progressive=raw["progressive"],
        dilation=MappingProxyType(parse_settings(raw["dilate_settings"], where)),
        ndcfg_dilation=None if nd is None else MappingProxyType(parse_settings(nd, where + " (ndcfg)")),
        absent_in_model=tuple(raw["absent_in_model"]),
        source=f"{SOURCE}: {raw['source']}",
    )


#: Every published preset by name, e.g. ``"sd1.5-1024x1024"``, ``"sdxl-4096x4096"`` (width x height).
PRESETS: Mapping[str, RedilationPreset] = MappingProxyType({n: _build(n, r) for n, r in SCALECRAFTER_PRESETS.items()})


def get_preset(name: str) -> RedilationPreset:
    """The preset of that name; InvalidOptionError listing the known names otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise InvalidOptionError(f"unknown re-dilation preset {name!r}; known: {', '.join(PRESETS)}") from None


@dataclass(frozen=True)
class ResolvedPreset:
    """A preset checked against one model's layer names: every name in ``dilation`` and
    ``ndcfg_dilation`` is a layer of the model."""

    preset: RedilationPreset
    dilation: Mapping[str, float]
    ndcfg_dilation: Optional[Mapping[str, float]]
    #: Names the published files give that the data declares absent from the model (not applied).
    dropped: tuple[str, ...]

    def dilations_at(self, step_index: int) -> dict[str, float]:
        """Every re-dilated layer's factor at sampler step i (1.0 once i ≥ dilate_tau)."""
        p = self.preset
        return layer_dilations(self.dilation, step_index, p.dilate_tau, progressive=p.progressive)

    def ndcfg_dilations_at(self, step_index: int) -> dict[str, float]:
        """The base model's factors for noise-damped CFG at step i ({} when the preset has none)."""
        p = self.preset
        if self.ndcfg_dilation is None:
            return {}
        return layer_dilations(self.ndcfg_dilation, step_index, p.ndcfg_tau, progressive=p.progressive)


def _check_names(settings: Mapping[str, float], layers: frozenset, absent: frozenset, label: str) -> dict[str, float]:
    out = {}
    for name, d in settings.items():
        if name in layers:
            if name in absent:
                raise InvalidOptionError(f"{label}: layer {name!r} is declared absent from the model the preset was published for, "
                                         "but this model has it: the preset does not fit this model")
            out[name] = d
        elif name not in absent:
            raise InvalidOptionError(f"{label}: layer {name!r} matches no layer of the model")
    return out


def resolve_preset(preset: "RedilationPreset | str", layer_names: Iterable[str]) -> ResolvedPreset:
    """Check a preset (or its name) against a model's layer names (e.g. the names of
    ``unet.named_modules()`` that are convs) and return the layers to re-dilate.

    Raises InvalidOptionError for a name that matches no layer, unless the preset's data declares
    it absent from its model (then it goes to ``dropped``); and for a declared-absent name that the
    model does have (the preset was published for another architecture)."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    layers = frozenset(layer_names)
    absent = frozenset(p.absent_in_model)
    label = f"preset {p.name!r}"
    dilation = _check_names(p.dilation, layers, absent, label)
    nd = None if p.ndcfg_dilation is None else _check_names(p.ndcfg_dilation, layers, absent, label + " (ndcfg)")
    listed = list(p.dilation) + list(p.ndcfg_dilation or ())
    dropped = tuple(dict.fromkeys(n for n in listed if n in absent))
    return ResolvedPreset(preset=p, dilation=MappingProxyType(dilation),
                          ndcfg_dilation=None if nd is None else MappingProxyType(nd), dropped=dropped)


def resolve_settings(settings: Mapping[str, float], layer_names: Iterable[str]) -> dict[str, float]:
    """A user's own ``name → factor`` settings checked against a model's layer names: every
    factor ≥ 1 and every name a layer, else InvalidOptionError."""
    layers = frozenset(layer_names)
    for name, d in settings.items():
        check_factor(d, f"factor of {name!r}")
        if name not in layers:
            raise InvalidOptionError(f"re-dilation settings: layer {name!r} matches no layer of the model")
    return dict(settings)
