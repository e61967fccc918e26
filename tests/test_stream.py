"""The read → resize → write pipeline (kernelscale.stream): row blocks, casts, verify_output."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import safetensors.torch
import torch

from kernelscale import ResizeOptions, plan_state_dict, resize_state_dict
from kernelscale import stream as stream_module
from kernelscale.io.checkpoint import MANIFEST_KEY
from kernelscale.convert import convert_checkpoint
from kernelscale.io.output import OutputError
from kernelscale.io.safetensors_io import SafetensorsReader
from kernelscale.errors import NonFiniteResultError
from kernelscale.execute import apply, check_result, overflow_check
from kernelscale.state_dict import apply_entry
from kernelscale.stream import verify_output

from checkpoints import OPTIONS, as_bytes, mixed_checkpoint, mixed_state_dict, raw_bytes, sha256


@pytest.fixture()
def checkpoint(tmp_path: Path) -> Path:
    return mixed_checkpoint(tmp_path)


# --- tensors: row blocks, casts and copies -----------------------------------------------------


def test_output_is_deterministic_and_row_blocks_agree_with_whole_tensors(tmp_path: Path, checkpoint: Path, monkeypatch) -> None:
    first = tmp_path / "first.safetensors"
    convert_checkpoint(checkpoint, first, OPTIONS, device="cpu")
    again = tmp_path / "again.safetensors"
    convert_checkpoint(checkpoint, again, OPTIONS, device="cpu")
    assert sha256(first) == sha256(again)
    # one row per resize call and tiny queue items: every tensor goes through the row-block path
    monkeypatch.setattr(stream_module, "COMPUTE_BYTES", {"cpu": 1, "cuda": 1})
    monkeypatch.setattr(stream_module, "BLOCK_BYTES", 100)
    _assert_agrees_with_the_state_dict_api(_converted_twice(checkpoint, tmp_path / "blocks"))


def _converted_twice(checkpoint: Path, stem: Path) -> Path:
    """``checkpoint`` converted twice (to ``stem``.safetensors and a second file): the same bytes."""
    first, again = stem.with_suffix(".safetensors"), stem.with_name(stem.name + "_again.safetensors")
    for path in (first, again):
        convert_checkpoint(checkpoint, path, OPTIONS, device="cpu")
    assert sha256(first) == sha256(again)
    return first


def _assert_agrees_with_the_state_dict_api(path: Path) -> None:
    sd = mixed_state_dict()
    expected, _ = resize_state_dict(sd, plan=plan_state_dict(sd, OPTIONS))
    loaded = safetensors.torch.load_file(str(path))
    for name, tensor in expected.items():
        if tensor.dtype.is_floating_point and tensor.dtype.itemsize > 1:
            # same operator; only BLAS's summation order may differ with the row count
            torch.testing.assert_close(loaded[name], tensor, rtol=1e-6 if tensor.dtype.itemsize >= 4 else 1e-2, atol=1e-7)
        else:
            assert as_bytes(loaded[name]) == as_bytes(tensor), name


def test_dtype_applies_to_every_floating_tensor(tmp_path: Path, checkpoint: Path) -> None:
    sd = mixed_state_dict()
    out = tmp_path / "half.safetensors"
    summary = convert_checkpoint(checkpoint, out, OPTIONS, dtype="float16", device="cpu")
    plan = plan_state_dict(sd, OPTIONS)
    loaded = safetensors.torch.load_file(str(out))
    for entry in plan:
        tensor = sd[entry.name]
        if entry.name in ("quant.weight", "steps", "mask"):
            assert loaded[entry.name].dtype == tensor.dtype
            assert raw_bytes(out, entry.name) == raw_bytes(checkpoint, entry.name)
            continue
        assert loaded[entry.name].dtype == torch.float16, entry.name
        if entry.action == "resize":  # computed in float32 (float64 for F64), rounded once
            assert as_bytes(loaded[entry.name]) == as_bytes(apply_entry(entry, tensor, out_dtype=torch.float16)), entry.name
        else:
            assert torch.equal(loaded[entry.name], tensor.to(torch.float16)), entry.name
    assert summary.tensors_cast == 2 and summary.tensors_copied == 3  # stem.bias, pointwise cast; F16 copies none


def test_geometry_only_keeps_every_weight_byte(tmp_path: Path, checkpoint: Path) -> None:
    out = tmp_path / "dilated.safetensors"
    summary = convert_checkpoint(checkpoint, out, ResizeOptions(scale=2, method="dilate", geometry_only=True), device="cpu")
    with SafetensorsReader(checkpoint) as a, SafetensorsReader(out) as b:
        assert [(t.name, t.dtype, t.shape) for t in a.tensors.values()] == [(t.name, t.dtype, t.shape) for t in b.tensors.values()]
        for name in a.tensors:
            assert a.read_bytes(name) == b.read_bytes(name)
        manifest = json.loads(b.metadata[MANIFEST_KEY])
    assert manifest["tensors"]["stem.weight"]["dilation"] == [2, 2]
    assert manifest["tensors"]["audio.weight"]["dilation"] == [2]
    assert summary.tensors_dilated == 5 and summary.tensors_resized == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_conversion_agrees_with_the_cpu_one(tmp_path: Path, checkpoint: Path) -> None:
    # Both paths accumulate in float32 and round once, in different orders: an output differs by
    # at most one ulp of its dtype plus twice the float32 accumulation bound 2·K·u·(|R|·|x|),
    # K ≤ 64 taps. OPTIONS resizes with linear taps and cells, so R ≥ 0 and |R|·|x| = R·|x|.
    cpu, gpu = tmp_path / "cpu.safetensors", tmp_path / "gpu.safetensors"
    summary = convert_checkpoint(checkpoint, cpu, OPTIONS, device="cpu")
    assert convert_checkpoint(checkpoint, gpu, OPTIONS, device="cuda").device == "cuda"
    source = safetensors.torch.load_file(str(checkpoint))
    want, got = safetensors.torch.load_file(str(cpu)), safetensors.torch.load_file(str(gpu))
    assert list(want) == list(got)
    ulp = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7, torch.float32: 2.0**-23, torch.float64: 2.0**-52}
    for entry, out_dtype in zip(summary.plan.files[0].entries, summary.plan.files[0].out_dtypes):
        a, b = want[entry.name], got[entry.name]
        assert a.dtype == b.dtype and a.shape == b.shape, entry.name
        if entry.action != "resize" or not a.is_floating_point():
            assert as_bytes(a) == as_bytes(b), entry.name
            continue
        magnitude = apply_entry(entry, source[entry.name].double().abs(), out_dtype=torch.float64)
        tol = ulp[a.dtype] * a.double().abs() + 4 * 64 * 2.0**-24 * magnitude + 2.0**-133
        assert bool(((a.double() - b.double()).abs() <= tol).all()), entry.name


def test_an_overflowing_resize_is_refused_and_writes_nothing(tmp_path: Path, checkpoint: Path, monkeypatch) -> None:
    """A coefficient that overflows float32 (1e308) or the float16 output (1e6) stops the conversion
    with the first such tensor's name (in file order), whether it is resized whole or in blocks of rows."""
    cases = ((1e308, "keep", r"^stem\.weight: .* beyond float32's largest finite value 3\.40282e\+38"),  # F64 audio fits
             (1e6, "float16", r"^audio\.weight: .* beyond float16's largest finite value 65504"))  # F64 sorts first in the file
    for coef, dtype, message in cases:
        out = tmp_path / "out.safetensors"
        with pytest.raises(NonFiniteResultError, match=message):
            convert_checkpoint(checkpoint, out, replace(OPTIONS, coef=coef), dtype=dtype, device="cpu")
        assert not out.exists() and os.listdir(tmp_path) == ["in.safetensors"]
    monkeypatch.setattr(stream_module, "COMPUTE_BYTES", {"cpu": 1, "cuda": 1})
    options = replace(OPTIONS, coef=1e6, exclude=("audio",))
    with pytest.raises(NonFiniteResultError, match=r"^[\w.]+\.weight: .*float16's largest finite value 65504"):
        convert_checkpoint(checkpoint, tmp_path / "out.safetensors", options, dtype="float16", device="cpu")
    assert os.listdir(tmp_path) == ["in.safetensors"]


def test_the_cuda_path_checks_overflow_on_the_host() -> None:
    """_resize_block_cuda applies the operator unchecked and checks on the host with these two."""
    sd = mixed_state_dict()
    plan = plan_state_dict(sd, replace(OPTIONS, coef=1e6))
    for name in ("stem.weight", "head.weight"):
        entry, x = plan[name], sd[name]
        y = apply(entry.operator, x, torch.float16)
        assert not torch.isfinite(y).all()
        magnitude = overflow_check(entry.operator, x, torch.float16)
        assert magnitude == pytest.approx(float(x.abs().max()))
        with pytest.raises(NonFiniteResultError, match=rf"^{name}: the resized values reach"):
            check_result(entry.operator, x, y, torch.float16, magnitude, name)
    entry = plan_state_dict(sd, OPTIONS)["stem.weight"]
    assert overflow_check(entry.operator, sd["stem.weight"], torch.float16) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_conversion_refuses_an_overflow(tmp_path: Path, checkpoint: Path) -> None:
    out = tmp_path / "out.safetensors"
    with pytest.raises(NonFiniteResultError, match=r"^stem\.weight: "):
        convert_checkpoint(checkpoint, out, replace(OPTIONS, coef=1e6), dtype="float16", device="cuda")
    assert os.listdir(tmp_path) == ["in.safetensors"]


def test_verify_catches_a_file_that_differs_from_its_plan(tmp_path: Path, checkpoint: Path) -> None:
    out = tmp_path / "out.safetensors"
    summary = convert_checkpoint(checkpoint, out, OPTIONS)
    fp = summary.plan.files[0]
    verify_output(out, fp)
    with pytest.raises(OutputError, match="planned"):
        verify_output(out, replace(fp, bytes_out=fp.bytes_out + 8))
    bad_entries = tuple(replace(e, new_shape=(1,)) if e.name == "steps" else e for e in fp.entries)
    with pytest.raises(OutputError, match="does not match its plan"):
        verify_output(out, replace(fp, entries=bad_entries))


# --- results computed straight into the output's blocks ------------------------------------------


@pytest.mark.parametrize("splits", [(0,), (1, 5, 6), (37,), (7, 7, 10, 3)])
def test_fill_rows_splits_rows_across_views_as_one_result(splits) -> None:
    """Rows computed into consecutive views (the ranges of a reservation that crosses blocks, cut
    anywhere, misaligned too) hold the bytes of the whole result computed at once."""
    import numpy as np

    x = torch.randn(6, 2, 3, generator=torch.Generator().manual_seed(1))
    whole = (x * 3).half().reshape(-1).view(torch.uint8).numpy().tobytes()
    backing = np.zeros(len(whole) + 1, dtype=np.uint8)
    memory = backing[1:]  # an odd address: float16 views cannot sit on it directly
    cuts = [0]
    for s in splits:
        cuts.append(min(len(whole), cuts[-1] + s))
    cuts.append(len(whole))
    views = [memory[a:b] for a, b in zip(cuts, cuts[1:])]
    calls = []

    def into(r0: int, r1: int, out: torch.Tensor) -> None:
        calls.append((r0, r1))
        out.copy_(x[r0:r1] * 3)

    stream_module._fill_rows(views, 6, (2, 3), torch.float16, into)
    assert memory.tobytes() == whole
    assert sorted(r for c in calls for r in range(*c)) == list(range(6))  # each row computed once


def test_results_written_into_tiny_blocks_agree_with_the_state_dict_api(tmp_path: Path, checkpoint: Path, monkeypatch) -> None:
    """With 4 KiB output blocks every tensor's rows cross block boundaries: the file still holds the
    resize_state_dict result (same operator; BLAS may sum in another order with the row count), and
    two runs give the same bytes."""
    from kernelscale.io import sink as sink_module

    monkeypatch.setattr(sink_module.DirectFileSink, "BUFFER", 4096)
    monkeypatch.setattr(sink_module.DirectFileSink, "SLOTS", 4)
    monkeypatch.setattr(stream_module, "COMPUTE_BYTES", {"cpu": 3000, "cuda": 3000})
    _assert_agrees_with_the_state_dict_api(_converted_twice(checkpoint, tmp_path / "small"))


def test_a_row_larger_than_the_sink_can_reserve_is_computed_then_written(tmp_path: Path, monkeypatch) -> None:
    """One leading-axis row beyond the sink's largest reservation (here 8 KiB) goes the long way:
    computed whole, then copied into the blocks; the file is the same as with large blocks."""
    from kernelscale.io import sink as sink_module

    sd = {"wide.weight": torch.randn(3, 64, 3, 3, generator=torch.Generator().manual_seed(4)),  # 12.5 kB per output row
          "narrow.weight": torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(5))}
    src = tmp_path / "in.safetensors"
    safetensors.torch.save_file(sd, str(src))
    reference = tmp_path / "reference.safetensors"
    convert_checkpoint(src, reference, ResizeOptions(scale=2), device="cpu")
    monkeypatch.setattr(sink_module.DirectFileSink, "BUFFER", 4096)
    monkeypatch.setattr(sink_module.DirectFileSink, "SLOTS", 3)
    monkeypatch.setattr(stream_module, "COMPUTE_BYTES", {"cpu": 1, "cuda": 1})
    whole_rows: list[str] = []
    resize_rows = stream_module._resize_rows
    monkeypatch.setattr(stream_module, "_resize_rows", lambda entry, *a: whole_rows.append(entry.name) or resize_rows(entry, *a))
    small = tmp_path / "small.safetensors"
    convert_checkpoint(src, small, ResizeOptions(scale=2), device="cpu")
    assert whole_rows == ["wide.weight"] * 3  # each of its rows the long way; the narrow ones into the blocks
    got, expected = safetensors.torch.load_file(str(small)), safetensors.torch.load_file(str(reference))
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-6, atol=1e-7)  # BLAS's order may change with the rows


@pytest.mark.parametrize("wide", [False, True])
def test_progress_ticks_add_up_to_the_file(tmp_path: Path, checkpoint: Path, monkeypatch, wide: bool) -> None:
    """Every byte written is ticked once (the progress bar ends at the file's size), rows the sink
    cannot reserve, written the long way, included."""
    from kernelscale.checkpoint_plan import plan_checkpoint
    from kernelscale.io import sink as sink_module

    src, options = checkpoint, OPTIONS
    if wide:
        sd = {"wide.weight": torch.randn(3, 64, 3, 3, generator=torch.Generator().manual_seed(4)),  # 12.5 kB per output row
              "narrow.weight": torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(5))}
        src, options = tmp_path / "wide.safetensors", ResizeOptions(scale=2)
        safetensors.torch.save_file(sd, str(src))
    monkeypatch.setattr(sink_module.DirectFileSink, "BUFFER", 4096)
    monkeypatch.setattr(sink_module.DirectFileSink, "SLOTS", 3)
    monkeypatch.setattr(stream_module, "COMPUTE_BYTES", {"cpu": 1, "cuda": 1})
    fp = plan_checkpoint(src, options).files[0]
    ticks: list[int] = []
    out = tmp_path / "out.safetensors"
    stream_module.write_safetensors(fp, str(out), torch.device("cpu"), ticks.append)
    assert sum(ticks) == fp.bytes_out == out.stat().st_size
