"""Values are checked where they enter (issue 14): a hostile scale, coefficient, disperse setting,
attention rule or plan file is one line and exit 2 on the command line (never 70, never a spin or
an allocation of terabytes), and a kernelscale error naming the argument in the Python API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import kernelscale
from kernelscale.cli import main
from kernelscale.errors import InvalidOptionError, KernelscaleError, UnsupportedTensorError
from kernelscale.method import MAX_SCALE, DisperseParams, Method, whole_number
from kernelscale.options import AttentionRule, LayerRule, ResizeOptions
from kernelscale.plan_file import load_plan_file
from kernelscale.resize import resize_conv, resize_grid_linear, resize_kernel
from kernelscale.transforms import MAX_DISPERSE_ELEMENTS, build_axis_resize, build_kernel_resize
from checkpoints import save

HUGE = "1" + "0" * 400  # a 400-digit integer: beyond float's range


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    tensors = {"conv1.weight": torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(0)),
               "to_q.weight": torch.randn(4, 4, generator=torch.Generator().manual_seed(1))}
    return save(tensors, tmp_path / "m.safetensors")


def one_error_line(capsys, *args: object, needle: str = "") -> str:
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("kernelscale: error: "), err
    assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("scale", ["1e308", "1e25", "1e17", HUGE, "1e-300"])
def test_a_scale_past_the_tap_limit_is_refused_where_it_enters(model: Path, capsys, scale: str) -> None:
    one_error_line(capsys, "inspect", model, "--scale", scale, needle="--scale")


def test_disperse_at_scale_100_is_refused_before_allocating(model: Path, capsys) -> None:
    one_error_line(capsys, "inspect", model, "--scale", "100", "--method", "disperse", needle="calibration system")
    with pytest.raises(InvalidOptionError, match="calibration system"):
        build_kernel_resize((3, 3), 30, method="disperse")


def test_the_disperse_bound_leaves_the_usual_scales() -> None:
    operator = build_kernel_resize((3, 3), 4, method="disperse")
    assert operator.out_shape == (9, 9)
    assert 49 * (25**2 + 49) * (81 + 9) <= MAX_DISPERSE_ELEMENTS


@pytest.mark.parametrize("text,needle", [
    ("conv1:1e308\n", "line 1"),
    (f"conv1:{HUGE}\n", "line 1"),
])
def test_a_settings_line_with_a_huge_factor_is_an_input_error(model: Path, tmp_path: Path, capsys, text: str, needle: str) -> None:
    plan = tmp_path / "settings.txt"
    plan.write_text(text)
    one_error_line(capsys, "inspect", model, "--plan", plan, needle=needle)


@pytest.mark.parametrize("body", [
    f'{{"scale": {HUGE}}}',
    f'{{"scale": 2, "coef": {HUGE}}}',
    '{"scale": 2, "attention": [{"pattern": "to_q", "tokens": "abc"}]}',
    '{"scale": 2, "attention": [{"pattern": "to_q", "tokens": NaN}]}',
    '{"scale": 2, "attention": [{"pattern": "to_q", "tokens": Infinity}]}',
    '{"scale": 2, "attention": [{"pattern": "to_q", "tokens": 1e400}]}',
    '{"scale": 2, "method": "disperse", "disperse": {"size": "abc"}}',
    '{"scale": 2, "method": "disperse", "disperse": {"size": NaN}}',
    '{"scale": 2, "method": "disperse", "disperse": {"size": Infinity}}',
    '{"scale": 2, "method": "disperse", "disperse": {"probe": "abc"}}',
    '{"scale": 2, "method": "disperse", "disperse": {"probe": NaN}}',
    '{"scale": 2, "method": "disperse", "disperse": {"probe": Infinity}}',
    '{"scale": 2, "method": "disperse", "disperse": {"probe": 100000}}',
    '{"scale": 2, "method": "disperse", "disperse": {"eta": 1e308}}',
    '{"scale": 2, "method": "disperse", "disperse": {"bogus": 1}}',
    '{"scale": 2, "layers": [{"pattern": "conv1", "bogus": 1}]}',
])
def test_hostile_plan_file_values_are_input_errors(model: Path, tmp_path: Path, capsys, body: str) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(body)
    one_error_line(capsys, "inspect", model, "--plan", plan, needle="plan file")
    one_error_line(capsys, "inspect", model, "--plan", plan, "--json", needle="plan file")


def test_a_huge_toml_number_is_an_input_error(tmp_path: Path) -> None:
    plan = tmp_path / "plan.toml"
    plan.write_text(f"scale = 2\ncoef = {HUGE}\n")
    with pytest.raises(InvalidOptionError, match="coef"):
        load_plan_file(plan)


@pytest.mark.parametrize("name,text", [
    ("deep.json", '{"a":' * 100_000 + "1" + "}" * 100_000),
    ("deep.toml", "scale = " + "[" * 100_000 + "]" * 100_000),
])
def test_a_deeply_nested_plan_file_is_an_input_error(model: Path, tmp_path: Path, capsys, name: str, text: str) -> None:
    plan = tmp_path / name
    plan.write_text(text)
    one_error_line(capsys, "inspect", model, "--plan", plan, needle="plan file")


def test_build_axis_resize_refuses_a_huge_scale_at_once() -> None:
    with pytest.raises(InvalidOptionError, match="1e\\+30"):
        build_axis_resize(3, 1e30)
    assert build_axis_resize(1, MAX_SCALE).matrix.shape == (1, 1)


W = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("out_dtype", [torch.int8, "float16", torch.bool])
def test_out_dtype_must_be_a_floating_torch_dtype(out_dtype) -> None:
    with pytest.raises(InvalidOptionError, match="out_dtype"):
        resize_kernel(W, 2, out_dtype=out_dtype)


def test_meta_and_sparse_tensors_are_refused_by_name() -> None:
    with pytest.raises(UnsupportedTensorError, match="meta"):
        resize_kernel(torch.empty(4, 3, 3, 3, device="meta"), 2, name="conv.weight")
    with pytest.raises(UnsupportedTensorError, match="sparse"):
        resize_kernel(W.to_sparse(), 2)


@pytest.mark.parametrize("keyword,value", [
    ("stride", 1.7), ("stride", 0), ("stride", -1), ("stride", (1, 0)), ("stride", True),
    ("dilation", 0), ("dilation", (2.5, 1)), ("dilation", -2),
])
def test_resize_conv_refuses_a_bad_stride_or_dilation(keyword: str, value: object) -> None:
    with pytest.raises(InvalidOptionError, match=keyword):
        resize_conv(W, 2, **{keyword: value})


def test_resize_grid_linear_refuses_a_fractional_grid() -> None:
    weight = torch.randn(5, 2 * 3 * 3)
    with pytest.raises(InvalidOptionError, match="grid"):
        resize_grid_linear(weight, (2.9, 3.2, 3.1), 2)
    assert resize_grid_linear(weight, (2, 3, 3), 2).shape == (5, 2 * 6 * 6)
    assert resize_grid_linear(weight, np.array([2, 3, 3]).tolist(), 2).shape == (5, 72)


@pytest.mark.parametrize("build", [
    lambda: ResizeOptions(scale=10**400),
    lambda: ResizeOptions(scale=2, coef=10**400),
    lambda: ResizeOptions(scale=2, disperse={"probe": "abc"}),
    lambda: ResizeOptions(scale=2, disperse={"eta": float("inf")}),
    lambda: ResizeOptions(scale=2, disperse={"eta": 1e308}),
    lambda: ResizeOptions(scale=2, disperse={"bogus": 1}),
    lambda: ResizeOptions(scale=2, attention=[{"pattern": "q", "tokens": float("nan")}]),
    lambda: ResizeOptions(scale=2, attention=[{"pattern": "q", "tokens": "77"}]),
    lambda: ResizeOptions(scale=2, attention=[{"pattern": "q", "tokens": 77, "extra": 1}]),
    lambda: ResizeOptions(scale=2, layers=[{"pattern": "q", "bogus": 1}]),
    lambda: ResizeOptions(scale=2, layers=[{"scale": 2}]),
    lambda: AttentionRule("q", tokens=2.5),
    lambda: DisperseParams(size=float("nan")),
    lambda: Method("disperse", disperse=DisperseParams(probe=10**400)),
    lambda: kernelscale.resize_state_dict({"c.weight": W}, 2, bogus=1),
    lambda: kernelscale.plan_state_dict({"c.weight": W}, scale=2, modee="cubic"),
])
def test_bad_api_values_raise_kernelscale_errors(build) -> None:
    with pytest.raises(KernelscaleError):
        build()


def test_good_values_still_pass() -> None:
    options = ResizeOptions(scale=2, layers=[{"pattern": "q", "scale": 3}], attention=[{"pattern": "q", "tokens": 64.0}],
                            disperse={"probe": 9.0, "eta": 1e6})
    assert options.layers == (LayerRule("q", scale=3),)
    assert options.attention[0].tokens == 64 and isinstance(options.attention[0].tokens, int)
    assert options.disperse.probe == 9 and options.disperse.eta == 1e6
    assert whole_number(np.int64(5), "x", 1) == 5


def test_a_disperse_system_without_finite_solution_is_an_input_error(monkeypatch) -> None:
    from kernelscale import disperse

    monkeypatch.setattr(disperse, "_solve_on_one_thread", lambda a, b: (np.full((a.shape[1], b.shape[1]), np.nan), float("nan")))
    disperse.disperse_matrix.cache_clear()
    try:
        with pytest.raises(InvalidOptionError, match="no finite solution"):
            disperse.disperse_matrix(3, 5, 2.0, 7, 0.05, 2)
    finally:
        disperse.disperse_matrix.cache_clear()
