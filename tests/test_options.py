"""What a resize job asks for (kernelscale.options): validated once where it enters, into typed values."""

from __future__ import annotations

import pytest

from kernelscale.errors import InvalidOptionError
from kernelscale.grid import GridLayout
from kernelscale.method import Method
from kernelscale.options import AttentionRule, LayerRule, ResizeOptions, resize_options


def test_one_method_built_from_the_fields_or_given_whole() -> None:
    options = ResizeOptions(scale=2, mode="cubic", align="cells")
    assert options.resize_method == Method("interp", "cubic", "cells", None)
    given = ResizeOptions(scale=(2, 3), method=Method("pinv", align="cells", coef=0.5))
    assert (given.method, given.align, given.coef, given.scale) == ("pinv", "cells", 0.5, (2.0, 3.0))
    assert ResizeOptions(scale=2, geometry_only=True).resize_method.method == "dilate"


@pytest.mark.parametrize("bad, match", [
    (dict(scale=0), "scale"),
    (dict(scale=2, method="bicubic"), "bicubic"),
    (dict(scale=2, mode="bilinear"), "bilinear"),
    (dict(scale=2, execution="lazy"), "lazy"),
    (dict(scale=2, fallback="magic"), "magic"),
    (dict(scale=2, geometry_only=True, method="interp"), "geometry_only"),
    (dict(scale=2, grids={"fc": (0, 4, 4)}), "fc"),
    (dict(scale=2, layers=[{"pattern": "c*", "colour": 1}]), "colour"),
])
def test_bad_values_are_refused_where_they_enter(bad: dict, match: str) -> None:
    with pytest.raises(InvalidOptionError, match=match):
        ResizeOptions(**bad)


def test_rules_grids_and_globs_are_normalised() -> None:
    options = ResizeOptions(scale=2, include="conv*", grids={"fc": (8, 2, 2)}, layers=[{"pattern": "a*", "scale": 3}],
                            attention=[{"pattern": "*to_q", "tokens": 4096}], absorb=("stem",))
    assert options.include == ("conv*",) and options.absorb_only is True
    assert options.grids == (("fc", GridLayout("CHW", (8, 2, 2))),)
    assert isinstance(options.layers[0], LayerRule) and isinstance(options.attention[0], AttentionRule)
    data = options.to_json()
    assert data["grids"] == {"fc": [8, 2, 2]} and data["layers"] == [{"pattern": "a*", "scale": 3}]


def test_keyword_options_name_an_unknown_key() -> None:
    assert resize_options(scale=2, mode="cubic").mode == "cubic"
    with pytest.raises(InvalidOptionError, match="'modes'"):
        resize_options(scale=2, modes="cubic")
