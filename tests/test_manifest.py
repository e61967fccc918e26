"""kernelscale.manifest: typed records <-> JSON, the version check, one action vocabulary, and
docs/format.md checked against the record classes."""

import json
import re
from pathlib import Path

import pytest
import torch

from kernelscale import resize_state_dict
from kernelscale.errors import InvalidCheckpointError
from kernelscale.manifest import (
    FORMAT_VERSION,
    Action,
    AttentionRecord,
    ConvRecord,
    DisperseFit,
    FactoredRecord,
    GridRecord,
    Manifest,
    Prefilter,
    RenormRecord,
    SpectralNormLink,
    WeightNormLink,
    as_record,
    check_manifest,
    record_from_json,
)

FORMAT_MD = Path(__file__).resolve().parents[1] / "docs" / "format.md"

CONV = ConvRecord("interp", "linear", "cells", "mass", (2.0, 2.0), (3, 3), (6, 6), (0.5, 0.5), pad_extra="before",
                  weight_norm=WeightNormLink("c.weight_g", 0))
RECORDS = [
    CONV,
    ConvRecord("dilate", None, "taps", None, (2.0,), (3,), (3,), (0.0,), dilation=(2,),
               spectral_norm=SpectralNormLink("c.weight_u", None)),
    ConvRecord("disperse", None, "taps", None, (2.0, 2.0), (3, 3), (5, 5), (0.0, 0.0), disperse=DisperseFit(5, 7, 0.05, 0.01)),
    GridRecord("pinv", "cubic", "cells", "paper", (2.0, 2.0), (8, 4, 4), (4, 4), (8, 8)),
    AttentionRecord(1.0973, 64, None, (2.0, 2.0)),
    RenormRecord("c.weight_v", None),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: r.kind)
def test_json_round_trip(record):
    data = record.to_json()
    assert data["kind"] == record.kind
    assert json.loads(json.dumps(data)) == data  # plain JSON values
    assert record_from_json(data) == record
    assert set(data) <= set(type(record).keys())


def test_conv_record_json_is_the_documented_object():
    assert CONV.to_json() == {
        "kind": "conv", "method": "interp", "mode": "linear", "align": "cells", "coef": "mass", "scale": [2.0, 2.0],
        "old_spatial": [3, 3], "new_spatial": [6, 6], "centre_offset": [0.5, 0.5], "absorb": False, "dilation": None,
        "pad_extra": "before", "weight_norm": {"g": "c.weight_g", "dim": 0}}
    assert CONV["new_spatial"] == [6, 6] and CONV.get("disperse") is None and CONV.half_pixel
    with pytest.raises(KeyError):
        CONV["spectral_norm"]  # optional keys are written only when set


def test_old_minimal_records_and_unknown_keys_are_read():
    # a record holding only the keys a format-1 reader requires, plus a key from a later writer
    record = record_from_json({"kind": "conv", "scale": [2, 2], "old_spatial": [3, 3], "new_spatial": [7, 7], "future": 1})
    assert record == ConvRecord(None, None, None, None, (2.0, 2.0), (3, 3), (7, 7), (0.0, 0.0))
    assert as_record(record) is record
    assert as_record({"kind": "weight_norm", "v": "a.weight_v", "dim": 1}) == RenormRecord("a.weight_v", 1)


def test_factored_record_round_trips_and_is_read_from_files():
    prefilter = Prefilter("interp", "cubic", "taps", "mass", (2.0, 2.0), (3, 3), (7, 7))
    record = FactoredRecord((2.0, 2.0), (3, 3), (3, 3), (11, 11), (2, 2), prefilter)
    data = record.to_json()
    assert data == {"kind": "factored", "scale": [2.0, 2.0], "old_spatial": [3, 3], "new_spatial": [3, 3],
                    "resized_spatial": [11, 11], "dilation": [2, 2],
                    "prefilter": {"method": "interp", "mode": "cubic", "align": "taps", "coef": "mass", "scale": [2.0, 2.0],
                                  "kernel_shape": [3, 3], "taps": [7, 7]}}
    assert FactoredRecord.from_json(data) == record
    manifest = {"format_version": FORMAT_VERSION, "tensors": {"c.weight": data}}
    assert Manifest.from_json(manifest).tensors["c.weight"] == record
    # the equal materialised resize, and what generic readers of kernel records ask
    assert record.materialised() == ConvRecord("interp", "cubic", "taps", "mass", (2.0, 2.0), (3, 3), (11, 11), (0.0, 0.0))
    assert not record.absorb and record.pad_extra is None and not record.half_pixel


@pytest.mark.parametrize("change, message", [
    ({"prefilter": {"mode": "cubic"}}, r"prefilter must be an object"),
    ({"prefilter": {"method": "interp", "mode": "cubic", "align": "taps", "coef": -1, "scale": [2, 2], "kernel_shape": [3, 3]}},
     r"prefilter must be an object"),
    ({"resized_spatial": [0, 11]}, r"resized_spatial must be a list of positive integers"),
])
def test_factored_record_fields_are_checked(change, message):
    data = {"kind": "factored", "scale": [2, 2], "old_spatial": [3, 3], "new_spatial": [3, 3], "resized_spatial": [11, 11],
            "dilation": [2, 2], "prefilter": {"method": "interp", "mode": "cubic", "align": "taps", "coef": "mass",
                                              "scale": [2, 2], "kernel_shape": [3, 3], "taps": [7, 7]}}
    check_manifest({"format_version": FORMAT_VERSION, "tensors": {"c.weight": data}}, "x.safetensors")
    with pytest.raises(InvalidCheckpointError, match=r"x\.safetensors: manifest record of 'c\.weight': " + message):
        check_manifest({"format_version": FORMAT_VERSION, "tensors": {"c.weight": {**data, **change}}}, "x.safetensors")


@pytest.mark.parametrize("change, message", [
    ({"format_version": 2}, r"f: manifest format version 2 is not one this kernelscale reads \(1\)"),
    ({"tensors": []}, r"f: the 'kernelscale' metadata is not a kernelscale manifest"),
    ({"tensors": {"c.weight": {"kind": "conv", "scale": [2]}}}, r"f: manifest record of 'c\.weight' lacks old_spatial, new_spatial"),
    ({"tensors": {"c.weight": {"kind": "blur"}}}, r"unknown kind 'blur' \(this kernelscale reads conv, grid, attention, weight_norm, factored\)"),
])
def test_manifest_checks(change, message):
    data = {"format_version": FORMAT_VERSION, "tool": "kernelscale", "tool_version": "0", "options": {}, "tensors": {}, **change}
    with pytest.raises(InvalidCheckpointError, match=message):
        Manifest.from_json(data, "f")


def test_plan_manifest_round_trips_through_the_classes():
    sd = {"c.weight": torch.randn(2, 2, 3, 3), "fc.weight": torch.randn(3, 2 * 2 * 2), "c.bias": torch.zeros(2)}
    _, manifest = resize_state_dict(sd, 2, grids={"fc": (2, 2, 2)})
    typed = Manifest.from_json(manifest)
    assert isinstance(typed.tensors["c.weight"], ConvRecord) and isinstance(typed.tensors["fc.weight"], GridRecord)
    assert typed.to_json() == manifest
    assert set(manifest) == set(Manifest.TOP_KEYS)


def test_one_action_vocabulary():
    assert [a.value for a in Action] == ["copy", "cast", "resize", "geometry", "renorm", "absorb", "grid", "attention", "pool",
                                     "factored"]
    assert Action.RESIZE == "resize" and f"{Action.GEOMETRY}" == "geometry" and json.dumps([Action.COPY]) == '["copy"]'


# --- docs/format.md against the classes ------------------------------------------------------------


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start:end if end != -1 else None]


def _table_keys(section: str) -> set[str]:
    """The keys a section's table documents: every `name` in a row's first cell (`"cells"`, a value, is not a name)."""
    keys = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            keys |= set(re.findall(r"`([a-z_]+)`", line.split("|")[1]))
    return keys


def _inline_keys(section: str, key: str) -> set[str]:
    """The keys of the first object documented after ``key``: ``{"g": …, "dim": …}`` or ``{size, probe}``."""
    match = re.search(re.escape(key) + r"[^{\n]*\{([^}]*)\}", section)
    assert match, f"docs/format.md documents no object for {key}"
    body = match.group(1)
    if '"' in body:
        return set(re.findall(r'"([a-z_]+)"\s*:', body))
    return {part.strip() for part in body.split(",")}


def test_format_md_documents_exactly_the_record_keys():
    text = FORMAT_MD.read_text(encoding="utf-8")
    weight_norm = _section(text, "## Weight-normed layers")
    spectral = _section(text, "## Spectral-normed layers")
    documented = {
        ConvRecord: _table_keys(_section(text, '## The record of a changed conv kernel')) | {"weight_norm", "spectral_norm"},
        GridRecord: _table_keys(_section(text, '## The record of a Linear over a grid')) | {"weight_norm"},
        AttentionRecord: _table_keys(_section(text, '## The record of a baked attention temperature')),
        RenormRecord: set(re.findall(r'"([a-z_]+)":', weight_norm[weight_norm.index('{"kind": "weight_norm"'):].split("}")[0])),
        FactoredRecord: _table_keys(_section(text, '## The record of a factored conv')),
    }
    assert "weight_norm" in weight_norm and "spectral_norm" in spectral
    for cls, keys in documented.items():
        assert keys == set(cls.keys()), (cls.__name__, keys ^ set(cls.keys()))
    assert _table_keys(_section(text, "## Top level")) == set(Manifest.TOP_KEYS)
    # objects nested in records
    conv = _section(text, '## The record of a changed conv kernel')
    assert _inline_keys(conv, "| `disperse` |") == set(DisperseFit.__dataclass_fields__)
    assert _inline_keys(weight_norm, "weight_norm:") == set(WeightNormLink.__dataclass_fields__)
    assert _inline_keys(spectral, "spectral_norm:") == set(SpectralNormLink.__dataclass_fields__)
    factored = _section(text, '## The record of a factored conv')
    assert _inline_keys(factored, "prefilter") == set(Prefilter.__dataclass_fields__)
