"""The public front (kernelscale.convert): end-to-end conversions, the device choice, dry runs, the progress bar."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import safetensors.torch
import torch
from safetensors import safe_open

from kernelscale import ResizeOptions, plan_state_dict, resize_state_dict
from kernelscale import convert as convert_module
from kernelscale.convert import convert_checkpoint
from kernelscale.io.checkpoint import MANIFEST_KEY
from kernelscale.errors import BackendUnavailableError, InvalidOptionError
from kernelscale.io.safetensors_io import DTYPE_ITEMSIZE

from checkpoints import (
    OPTIONS,
    as_bytes,
    leftovers,
    make_folder,
    mixed_checkpoint,
    mixed_state_dict,
    raw_bytes,
    save,
    save_sharded,
    sha256,
)


@pytest.fixture()
def checkpoint(tmp_path: Path) -> Path:
    return mixed_checkpoint(tmp_path)


# --- single files ------------------------------------------------------------------------------


def test_round_trip_matches_the_state_dict_api(tmp_path: Path, checkpoint: Path) -> None:
    before = sha256(checkpoint)
    sd = mixed_state_dict()
    out = tmp_path / "out.safetensors"
    summary = convert_checkpoint(checkpoint, out, OPTIONS, device="cpu")

    assert sha256(checkpoint) == before
    expected, manifest = resize_state_dict(sd, plan=plan_state_dict(sd, OPTIONS))
    loaded = safetensors.torch.load_file(str(out))
    assert set(loaded) == set(sd)
    for name, tensor in expected.items():
        assert loaded[name].dtype == tensor.dtype and loaded[name].shape == tensor.shape, name
        assert as_bytes(loaded[name]) == as_bytes(tensor), name
    for name in ("stem.bias", "block.pointwise.weight", "quant.weight", "steps", "mask"):
        assert raw_bytes(out, name) == raw_bytes(checkpoint, name)

    with safe_open(str(out), framework="pt") as f:
        metadata = f.metadata()
    assert metadata["author"] == "tests" and metadata["format"] == "pt"
    assert metadata[MANIFEST_KEY] == json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    assert set(json.loads(metadata[MANIFEST_KEY])["tensors"]) == {
        "stem.weight", "block.conv.weight", "block.dw.weight", "audio.weight", "head.weight", "empty.weight"}

    assert (summary.tensors_resized, summary.tensors_copied, summary.tensors_cast, summary.tensors_dilated) == (6, 5, 0, 0)
    assert summary.bytes_out == out.stat().st_size and summary.bytes_in == checkpoint.stat().st_size
    assert summary.layout == "file" and not summary.dry_run and leftovers(tmp_path) == []
    assert any("kernelscale.nn.load" in note for note in summary.notes)
    json.dumps(summary.to_json())


def test_dry_run_plans_and_writes_nothing(tmp_path: Path, checkpoint: Path) -> None:
    out = tmp_path / "out.safetensors"
    summary = convert_checkpoint(checkpoint, out, OPTIONS, dry_run=True)
    assert summary.dry_run and not out.exists() and leftovers(tmp_path) == []
    assert summary.bytes_out == summary.plan.bytes_out > summary.bytes_in
    lines = summary.plan.describe()
    assert any(line.startswith("stem.weight  F32  8×3×3×3 -> 8×3×7×7  resize:") for line in lines)
    assert any(line.startswith("steps  I64  2  copy: not a floating tensor") for line in lines)
    # the planned size is the written size, header included
    real = convert_checkpoint(checkpoint, out, OPTIONS)
    assert out.stat().st_size == summary.bytes_out == real.bytes_out


# --- devices and progress ----------------------------------------------------------------------


def test_converted_input_and_missing_cuda_are_refused(tmp_path: Path, checkpoint: Path) -> None:
    out = tmp_path / "out.safetensors"
    convert_checkpoint(checkpoint, out, OPTIONS)
    with pytest.raises(InvalidOptionError, match="already converted"):
        convert_checkpoint(out, tmp_path / "twice.safetensors", OPTIONS)
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailableError, match="no CUDA device"):
            convert_checkpoint(checkpoint, tmp_path / "gpu.safetensors", OPTIONS, device="cuda")


def test_auto_device_keeps_small_work_on_the_cpu(monkeypatch, tmp_path: Path, checkpoint: Path) -> None:
    # With a GPU present, auto takes it only for at least AUTO_CUDA_MIN_BYTES of resized output:
    # below that the CUDA context and the first kernel compilation cost more than the work.
    monkeypatch.setattr(convert_module.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(convert_module.torch.cuda, "current_device", lambda: 3)  # the caller's set_device
    limit = convert_module.AUTO_CUDA_MIN_BYTES
    assert convert_module.resolve_device("auto", limit - 1).type == "cpu"
    assert convert_module.resolve_device("auto", limit).type == "cuda"
    assert convert_module.resolve_device("auto").type == "cuda"
    assert convert_module.resolve_device("cpu", limit).type == "cpu"
    assert convert_module.resolve_device("cuda", 0) == convert_module.torch.device("cuda", 3)
    summary = convert_checkpoint(checkpoint, tmp_path / "out.safetensors", OPTIONS)  # a few KB resized
    assert 0 < summary.plan.bytes_resized < limit and summary.device == "cpu"
    expected = sum(math.prod(e.new_shape) * DTYPE_ITEMSIZE[d]
                   for e, d in zip(summary.plan.files[0].entries, summary.plan.files[0].out_dtypes) if e.action == "resize")
    assert summary.plan.bytes_resized == expected


def test_progress_bar_only_when_asked_or_on_a_terminal(tmp_path: Path, checkpoint: Path, capsys) -> None:
    convert_checkpoint(checkpoint, tmp_path / "quiet.safetensors", OPTIONS)
    assert capsys.readouterr().err == ""  # stderr is not a terminal under pytest
    convert_checkpoint(checkpoint, tmp_path / "bar.safetensors", OPTIONS, progress=True)
    assert "kernelscale" in capsys.readouterr().err


# --- sharded checkpoints and folders -----------------------------------------------------------


def test_sharded_checkpoint_to_a_folder(tmp_path: Path) -> None:
    sd = mixed_state_dict()
    index = save_sharded(sd, tmp_path / "in", shards=3)
    out = tmp_path / "out"
    summary = convert_checkpoint(index, out, OPTIONS)
    single = tmp_path / "single.safetensors"
    convert_checkpoint(save(sd, tmp_path / "whole.safetensors"), single, OPTIONS)
    expected = safetensors.torch.load_file(str(single))

    new_index = json.loads((out / index.name).read_text())
    old_index = json.loads(index.read_text())
    assert new_index["weight_map"] == old_index["weight_map"] and new_index["metadata"]["note"] == "kept"
    loaded = {}
    for shard in sorted(set(new_index["weight_map"].values())):
        part = safetensors.torch.load_file(str(out / shard))
        with safe_open(str(out / shard), framework="pt") as f:
            records = json.loads(f.metadata()[MANIFEST_KEY])["tensors"]
        assert set(records) <= set(part)  # each shard describes its own tensors
        loaded.update(part)
    assert new_index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in loaded.values())
    assert set(loaded) == set(expected)
    for name, tensor in expected.items():
        assert as_bytes(loaded[name]) == as_bytes(tensor), name
    assert summary.layout == "sharded" and len(summary.files) == 3 and summary.rewritten_files == (index.name,)


def test_folder_converts_every_model_and_copies_the_rest(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "in")
    out = tmp_path / "out"
    summary = convert_checkpoint(src, out, ResizeOptions(scale=2))
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["README.md", "model_a/config.json", "model_a/model.safetensors", "model_b/weights-00001-of-00002.safetensors",
                     "model_b/weights-00002-of-00002.safetensors", "model_b/weights.safetensors.index.json"]
    assert (out / "README.md").read_bytes() == (src / "README.md").read_bytes()
    assert (out / "model_a/config.json").read_bytes() == (src / "model_a/config.json").read_bytes()
    assert safetensors.torch.load_file(str(out / "model_a/model.safetensors"))["conv.weight"].shape == (4, 2, 7, 7)
    assert summary.skipped_files == ("model_a/pytorch_model.bin",)
    (note,) = [note for note in summary.notes if "pytorch_model.bin" in note]
    assert "not copied" in note and "copied as they are" not in note and "holds no safetensors" not in note
    assert leftovers(tmp_path) == []
    assert (out / "model_b").stat().st_mode & 0o777 == 0o777 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
