"""The streaming converter: files, shards and folders, checked against the reference library."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import safetensors.torch
import torch
from safetensors import safe_open

from kernelscale import ResizeOptions, plan_state_dict, resize_state_dict
from kernelscale import convert as convert_module
from kernelscale import output as output_module
from kernelscale import stream as stream_module
from kernelscale.convert import (
    MANIFEST_KEY,
    OutputError,
    clean_stale,
    convert_checkpoint,
    plan_checkpoint,
    verify_output,
)
from kernelscale.errors import BackendUnavailableError, InvalidCheckpointError, InvalidOptionError
from kernelscale.safetensors_io import DTYPE_ITEMSIZE, SafetensorsReader
from kernelscale.state_dict import apply_entry

# --- tiny checkpoints --------------------------------------------------------------------------


def mixed_state_dict() -> dict[str, torch.Tensor]:
    """Every kind of tensor convert meets: convs in four float dtypes (1-D, 2-D, depthwise), a
    1×1 conv, a Linear over a grid, a float8 conv-shaped tensor, ints, bools, an empty kernel."""
    g = torch.Generator().manual_seed(0)
    return {
        "stem.weight": torch.randn(8, 3, 3, 3, generator=g),
        "stem.bias": torch.randn(8, generator=g),
        "block.conv.weight": torch.randn(8, 8, 3, 3, generator=g).half(),
        "block.dw.weight": torch.randn(8, 1, 5, 5, generator=g).bfloat16(),
        "block.pointwise.weight": torch.randn(8, 8, 1, 1, generator=g),
        "audio.weight": torch.randn(4, 1, 9, generator=g).double(),
        "head.weight": torch.randn(10, 8 * 2 * 2, generator=g).bfloat16(),
        "quant.weight": torch.randn(4, 4, 3, 3, generator=g).to(torch.float8_e4m3fn),
        "steps": torch.tensor([3, 1 << 40]),
        "mask": torch.tensor([True, False, True]),
        "empty.weight": torch.zeros(0, 4, 3, 3),
    }


def save(sd: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> Path:
    safetensors.torch.save_file(sd, str(path), metadata=metadata)
    return path


def save_sharded(sd: dict[str, torch.Tensor], folder: Path, shards: int = 2, stem: str = "model") -> Path:
    """Split ``sd`` (in order) into ``shards`` files plus a Hugging Face style index."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(sd)
    per = -(-len(names) // shards)
    weight_map = {}
    for i in range(shards):
        shard = f"{stem}-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: sd[n] for n in names[i * per:(i + 1) * per]}
        save(part, folder / shard, {"format": "pt"})
        weight_map.update({n: shard for n in part})
    total = sum(t.numel() * t.element_size() for t in sd.values())
    index = folder / f"{stem}.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": total, "note": "kept"}, "weight_map": weight_map}, indent=2))
    return index


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def raw_bytes(path: Path, name: str) -> bytes:
    with SafetensorsReader(path) as reader:
        return reader.read_bytes(name)


def as_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if "kernelscale-" in p.name)


OPTIONS = ResizeOptions(scale=2, grids={"head": (8, 2, 2)})


@pytest.fixture()
def checkpoint(tmp_path: Path) -> Path:
    return save(mixed_state_dict(), tmp_path / "in.safetensors", {"author": "tests", "format": "pt"})


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


def test_output_is_deterministic_and_row_blocks_agree_with_whole_tensors(tmp_path: Path, checkpoint: Path, monkeypatch) -> None:
    first = tmp_path / "first.safetensors"
    convert_checkpoint(checkpoint, first, OPTIONS, device="cpu")
    again = tmp_path / "again.safetensors"
    convert_checkpoint(checkpoint, again, OPTIONS, device="cpu")
    assert sha256(first) == sha256(again)
    # one row per resize call and tiny queue items: every tensor goes through the row-block path
    monkeypatch.setattr(stream_module, "COMPUTE_BYTES", {"cpu": 1, "cuda": 1})
    monkeypatch.setattr(stream_module, "BLOCK_BYTES", 100)
    blocks = tmp_path / "blocks.safetensors"
    convert_checkpoint(checkpoint, blocks, OPTIONS, device="cpu")
    again = tmp_path / "blocks_again.safetensors"
    convert_checkpoint(checkpoint, again, OPTIONS, device="cpu")
    assert sha256(blocks) == sha256(again)
    sd = mixed_state_dict()
    expected, _ = resize_state_dict(sd, plan=plan_state_dict(sd, OPTIONS))
    loaded = safetensors.torch.load_file(str(blocks))
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


def test_output_permissions_follow_the_umask(tmp_path: Path, checkpoint: Path) -> None:
    old = os.umask(0o027)
    try:
        out = tmp_path / "out.safetensors"
        convert_checkpoint(checkpoint, out, OPTIONS)
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o640


# --- safety ------------------------------------------------------------------------------------


def test_existing_output_needs_force(tmp_path: Path, checkpoint: Path) -> None:
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"precious")
    with pytest.raises(OutputError, match="exists; add --force"):
        convert_checkpoint(checkpoint, out, OPTIONS)
    assert out.read_bytes() == b"precious"
    convert_checkpoint(checkpoint, out, OPTIONS, force=True)
    assert safetensors.torch.load_file(str(out))["stem.weight"].shape == (8, 3, 7, 7)


@pytest.mark.parametrize("how", ["same path", "other spelling", "hard link", "symlink"])
def test_output_that_is_the_input_is_refused_even_with_force(tmp_path: Path, checkpoint: Path, how: str) -> None:
    before = sha256(checkpoint)
    if how == "same path":
        out = checkpoint
    elif how == "other spelling":
        (tmp_path / "sub").mkdir()
        out = tmp_path / "sub" / ".." / checkpoint.name
    elif how == "hard link":
        out = tmp_path / "link.safetensors"
        os.link(checkpoint, out)
    else:
        out = tmp_path / "sym.safetensors"
        out.symlink_to(checkpoint)
    with pytest.raises(OutputError, match="is the input itself"):
        convert_checkpoint(checkpoint, out, OPTIONS, force=True)
    assert sha256(checkpoint) == before and leftovers(tmp_path) == []


def test_not_enough_space_is_refused_before_writing(tmp_path: Path, checkpoint: Path, monkeypatch) -> None:
    usage = output_module.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(output_module.shutil, "disk_usage", lambda path: usage._replace(free=1000))
    out = tmp_path / "out.safetensors"
    # the margin in the units of the rest of the message and of docs/cli.md ("plus 64 MB")
    with pytest.raises(OutputError, match=r"not enough free space .* \(\+ 64\.0 MB margin\)"):
        convert_checkpoint(checkpoint, out, OPTIONS)
    assert not out.exists() and leftovers(tmp_path) == []


def _read_only(monkeypatch, folder: Path) -> None:
    """Make ``folder`` act as a read-only mount for os.open (root ignores permission bits)."""
    real_open = os.open

    def fake_open(path, flags, *args, **kwargs):
        target = os.fspath(path)
        if target == str(folder) or os.path.dirname(target) == str(folder):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), target)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(output_module.os, "open", fake_open)


@pytest.mark.parametrize("dry_run", [True, False])
def test_unwritable_output_folder_is_refused_naming_out(tmp_path: Path, checkpoint: Path, monkeypatch, dry_run: bool) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    out = folder / "out.safetensors"
    _read_only(monkeypatch, folder)
    with pytest.raises(OutputError) as excinfo:
        convert_checkpoint(checkpoint, out, OPTIONS, dry_run=dry_run)
    assert str(excinfo.value) == f"cannot write {out}: Read-only file system"
    assert list(folder.iterdir()) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes through permission bits")
def test_output_folder_without_write_permission_is_refused(tmp_path: Path, checkpoint: Path) -> None:
    folder = tmp_path / "locked"
    folder.mkdir(mode=0o555)
    try:
        with pytest.raises(OutputError, match=f"cannot write {folder / 'out.safetensors'}: Permission denied"):
            convert_checkpoint(checkpoint, folder / "out.safetensors", OPTIONS, dry_run=True)
    finally:
        folder.chmod(0o755)


@pytest.mark.parametrize("tmpfile", [True, False])
def test_writability_probe_leaves_nothing_behind(tmp_path: Path, checkpoint: Path, monkeypatch, tmpfile: bool) -> None:
    if not tmpfile:  # a filesystem (or OS) without O_TMPFILE: the probe names a file and removes it
        monkeypatch.delattr(output_module.os, "O_TMPFILE", raising=False)
    plan = plan_checkpoint(checkpoint, OPTIONS)
    out = output_module._Output(plan, str(tmp_path / "out.safetensors"), force=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.safetensors"]
    # abort on a read-only mount: unlink there reports EROFS even for a missing file
    monkeypatch.setattr(output_module.os, "unlink", lambda path: (_ for _ in ()).throw(OSError(errno.EROFS, "Read-only file system")))
    out.abort()


def test_failure_mid_write_leaves_nothing(tmp_path: Path, checkpoint: Path, monkeypatch) -> None:
    calls = []

    def failing(entry, tensor, out_dtype=None, backend=None):
        calls.append(entry.name)
        if len(calls) == 3:
            raise InvalidOptionError(f"{entry.name}: injected failure")
        return apply_entry(entry, tensor, out_dtype=out_dtype, backend=backend)

    monkeypatch.setattr(stream_module, "apply_entry", failing)
    out = tmp_path / "out.safetensors"
    with pytest.raises(InvalidOptionError, match="injected failure"):
        convert_checkpoint(checkpoint, out, OPTIONS)
    assert not out.exists() and leftovers(tmp_path) == []


def test_stale_temp_entries_of_dead_runs_are_removed(tmp_path: Path, checkpoint: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out.safetensors"
    stale_file = tmp_path / f".out.safetensors.kernelscale-tmp-{dead.pid}"
    stale_file.write_bytes(b"half a file")
    live = tmp_path / f".out.safetensors.kernelscale-tmp-{os.getppid()}"
    live.write_bytes(b"another run, still going")
    other = tmp_path / f".other.safetensors.kernelscale-tmp-{dead.pid}"
    other.write_bytes(b"not ours to judge")
    summary = convert_checkpoint(checkpoint, out, OPTIONS)
    assert summary.cleaned == (str(stale_file),)
    assert not stale_file.exists() and live.exists() and other.exists()


def test_previous_output_moved_aside_by_a_dead_run_is_put_back(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    aside = tmp_path / f".out.kernelscale-old-{dead.pid}"
    aside.mkdir()
    (aside / "model.safetensors").write_bytes(b"previous result")
    assert clean_stale(out) == [str(aside)]
    assert (out / "model.safetensors").read_bytes() == b"previous result" and not aside.exists()


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
    limit = convert_module.AUTO_CUDA_MIN_BYTES
    assert convert_module.resolve_device("auto", limit - 1).type == "cpu"
    assert convert_module.resolve_device("auto", limit).type == "cuda"
    assert convert_module.resolve_device("auto").type == "cuda"
    assert convert_module.resolve_device("cpu", limit).type == "cpu"
    assert convert_module.resolve_device("cuda", 0).type == "cuda"
    summary = convert_checkpoint(checkpoint, tmp_path / "out.safetensors", OPTIONS)  # a few KB resized
    assert 0 < summary.plan.bytes_resized < limit and summary.device == "cpu"
    expected = sum(math.prod(e.new_shape) * DTYPE_ITEMSIZE[d]
                   for e, d in zip(summary.plan.files[0].entries, summary.plan.files[0].out_dtypes) if e.action == "resize")
    assert summary.plan.bytes_resized == expected


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


def test_progress_bar_only_when_asked_or_on_a_terminal(tmp_path: Path, checkpoint: Path, capsys) -> None:
    convert_checkpoint(checkpoint, tmp_path / "quiet.safetensors", OPTIONS)
    assert capsys.readouterr().err == ""  # stderr is not a terminal under pytest
    convert_checkpoint(checkpoint, tmp_path / "bar.safetensors", OPTIONS, progress=True)
    assert "kernelscale" in capsys.readouterr().err


# --- sharded checkpoints -----------------------------------------------------------------------


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


def test_sharded_checkpoint_to_an_index_path(tmp_path: Path) -> None:
    index = save_sharded(mixed_state_dict(), tmp_path / "in", shards=2)
    (tmp_path / "out").mkdir()
    out_index = tmp_path / "out" / "renamed.safetensors.index.json"
    convert_checkpoint(index, out_index, OPTIONS)
    data = json.loads(out_index.read_text())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted({*data["weight_map"].values(), out_index.name})
    with pytest.raises(OutputError, match="exists"):
        convert_checkpoint(index, out_index, OPTIONS)
    with pytest.raises(OutputError, match="overwrite an input shard"):
        convert_checkpoint(index, tmp_path / "in" / "copy.safetensors.index.json", OPTIONS, force=True)


def test_rules_must_match_somewhere_in_the_whole_checkpoint(tmp_path: Path) -> None:
    index = save_sharded(mixed_state_dict(), tmp_path / "in", shards=3)
    # audio and head live in the last shard only: planned together, they are found
    plan = plan_checkpoint(index, ResizeOptions(scale=2, include=["audio", "head"], grids={"head": (8, 2, 2)}))
    changed = {e.name for fp in plan.files for e in fp.entries if e.changed}
    assert changed == {"audio.weight", "head.weight"}
    with pytest.raises(InvalidOptionError, match="--include 'nowhere' matches no tensor"):
        plan_checkpoint(index, ResizeOptions(scale=2, include=["nowhere"]))
    with pytest.raises(InvalidOptionError, match="grid 'tail'"):
        plan_checkpoint(index, ResizeOptions(scale=2, grids={"tail": (1, 2, 2)}))


@pytest.mark.parametrize("damage, needle", [
    (lambda d: d["weight_map"].update({"ghost.weight": "model-00001-of-00002.safetensors"}), "has no such tensor"),
    (lambda d: d["weight_map"].update({"stem.weight": "../escape.safetensors"}), "inside the index's folder"),
    (lambda d: d["weight_map"].update({"stem.weight": "model-00009-of-00009.safetensors"}), "is missing"),
    (lambda d: d.pop("weight_map"), "weight_map"),
])
def test_broken_shard_indexes(tmp_path: Path, damage, needle: str) -> None:
    index = save_sharded(mixed_state_dict(), tmp_path / "in", shards=2)
    data = json.loads(index.read_text())
    damage(data)
    index.write_text(json.dumps(data))
    with pytest.raises(InvalidCheckpointError, match=needle):
        plan_checkpoint(index, OPTIONS)


def test_shard_index_must_list_every_tensor_of_its_shards(tmp_path: Path) -> None:
    """An index that lists fewer tensors than its shards hold is refused: the output index would not
    reach them, while its total_size counted them."""
    index = save_sharded(mixed_state_dict(), tmp_path / "in", shards=2)
    data = json.loads(index.read_text())
    first = "model-00001-of-00002.safetensors"
    kept = "stem.weight"
    data["weight_map"] = {n: s for n, s in data["weight_map"].items() if s != first or n == kept}
    index.write_text(json.dumps(data))
    with pytest.raises(InvalidCheckpointError) as excinfo:
        plan_checkpoint(index, OPTIONS)
    message = str(excinfo.value)
    assert message.startswith(f"{index}: shard {first} holds 5 tensor(s) the weight_map does not put there")
    assert "'stem.bias'" in message and repr(kept) not in message
    # a tensor mapped to the wrong shard is named from the shard that holds it
    data = json.loads(index.read_text())
    data["weight_map"] = {**data["weight_map"], **{n: first for n in mixed_state_dict() if n not in data["weight_map"]}}
    data["weight_map"]["head.weight"] = first
    index.write_text(json.dumps(data))
    with pytest.raises(InvalidCheckpointError, match="model-00002-of-00002.safetensors holds 1 tensor.*'head.weight'"):
        plan_checkpoint(index, OPTIONS)


# --- notes: how to load the result, and options that did nothing ---------------------------------


def _small_cnn(path: Path) -> Path:
    g = torch.Generator().manual_seed(2)
    return save({"conv1.weight": torch.randn(4, 1, 3, 3, generator=g), "conv1.bias": torch.zeros(4),
                 "conv2.weight": torch.randn(4, 4, 3, 3, generator=g), "fc.weight": torch.randn(3, 4 * 2 * 2, generator=g)}, path)


def test_loading_note_follows_the_records_geometry(tmp_path: Path) -> None:
    src = _small_cnn(tmp_path / "cnn.safetensors")
    # resized in place: 3×3 stays 3×3 at 0.3, the weights change, no dilation is recorded
    plan = plan_checkpoint(src, ResizeOptions(scale=0.3))
    entries = {e.name: e for fp in plan.files for e in fp.entries}
    assert entries["conv1.weight"].new_shape == (4, 1, 3, 3) and entries["conv1.weight"].record["dilation"] is None
    (note,) = plan.notes
    assert "2 tensor(s) resized in place (e.g. conv1.weight, 3×3 kept)" in note and "dilation" not in note
    assert "a stock loader loads them" in note and "(k−1)·d/2" in note and "kernelscale.nn.load" in note
    assert plan.loading[0]["stock_loadable"] is True
    # geometry-only: same shape, a recorded dilation
    plan = plan_checkpoint(src, ResizeOptions(scale=2, method="dilate", geometry_only=True))
    (note,) = plan.notes
    assert "2 conv(s) keep their shape but need a new dilation (e.g. conv1.weight)" in note and "ignore the new dilation" in note
    assert plan.loading[0]["stock_loadable"] is False
    # shape changes
    plan = plan_checkpoint(src, ResizeOptions(scale=2))
    (note,) = plan.notes
    assert "2 tensor(s) changed shape (e.g. conv1.weight 3×3 → 7×7)" in note and plan.loading[0]["stock_loadable"] is False


def test_in_place_resize_of_a_diffusers_model_leaves_its_config_alone(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(3)
    (tmp_path / "in" / "unet").mkdir(parents=True)
    config = '{"_class_name": "UNet2DModel", "conv_in_kernel": 3, "conv_out_kernel": 3}\n'
    (tmp_path / "in" / "unet" / "config.json").write_text(config)
    save({"conv_in.weight": torch.randn(4, 3, 3, 3, generator=g), "conv_out.weight": torch.randn(3, 4, 3, 3, generator=g)},
         tmp_path / "in" / "unet" / "diffusion_pytorch_model.safetensors")
    plan = plan_checkpoint(tmp_path / "in", ResizeOptions(scale=0.3), dst=tmp_path / "out")
    assert not any(x.data is not None for x in plan.extras)  # config.json copied, not rewritten
    (note,) = plan.notes
    assert note.startswith("unet: 2 tensor(s) resized in place") and "config.json" not in note
    assert plan.loading[0]["stock_loadable"] is True
    assert plan.loading[0]["load"] == f"UNet2DModel.from_pretrained({str(tmp_path / 'out' / 'unet')!r})"


def test_geometry_change_of_a_kernel_that_keeps_its_shape() -> None:
    from kernelscale.checkpoint_plan import _geometry_change
    from kernelscale.plan import TensorPlan

    def entry(**record) -> TensorPlan:
        base = {"dilation": None, "absorb": False, "centre_offset": [0.0, 0.0]}
        return TensorPlan("c.weight", "F32", (2, 2, 4, 4), "resize", "", (2, 2, 4, 4), "conv", record={**base, **record})

    assert _geometry_change(entry()) == "none"
    assert _geometry_change(entry(dilation=[2, 2])) == "dilation"
    assert _geometry_change(entry(absorb=True)) == "stride"
    assert _geometry_change(entry(centre_offset=[0.5, 0.0])) == "padding"


@pytest.mark.parametrize("include, needle", [
    ("fc", "fc.weight: 2-D: not a conv kernel (declare a grid to resize a Linear)"),
    ("conv1.bias", "conv1.bias: not a weight"),
    ("conv1*", "conv1.bias: not a weight; conv1.weight: excluded by 'conv1'"),
])
def test_include_that_resizes_nothing_gets_a_note(tmp_path: Path, include: str, needle: str) -> None:
    src = _small_cnn(tmp_path / "cnn.safetensors")
    plan = plan_checkpoint(src, ResizeOptions(scale=2, include=[include], exclude=["conv1"]))
    assert plan.counts()["resize"] == 0
    assert plan.notes == (f"--include {include!r} matched only tensors that are not resized ({needle})",)
    # one that resizes something is not noted, nor is an include that does its job beside it
    plan = plan_checkpoint(src, ResizeOptions(scale=2, include=["conv2", "fc"], grids={"fc": (4, 2, 2)}))
    assert not any(n.startswith("--include") for n in plan.notes)


def test_pytorch_checkpoint_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"conv.weight": torch.ones(2, 2, 3, 3)}, path)
    with pytest.raises(InvalidCheckpointError, match="PyTorch zip checkpoint .* kernelscale reads safetensors only"):
        convert_checkpoint(path, tmp_path / "out.safetensors", OPTIONS, dry_run=True)


# --- folders -----------------------------------------------------------------------------------


def make_folder(root: Path) -> Path:
    g = torch.Generator().manual_seed(1)
    (root / "model_a").mkdir(parents=True)
    (root / "model_b").mkdir()
    (root / ".git").mkdir()
    save({"conv.weight": torch.randn(4, 2, 3, 3, generator=g), "conv.bias": torch.zeros(4)}, root / "model_a" / "model.safetensors")
    save_sharded({"conv.weight": torch.randn(2, 2, 5, 5, generator=g), "only_b.weight": torch.randn(2, 2, 3, 3, generator=g)},
                 root / "model_b", shards=2, stem="weights")
    (root / "model_a" / "config.json").write_text('{"architectures": ["Tiny"]}\n')
    (root / "README.md").write_text("# tiny\n")
    (root / "model_a" / "pytorch_model.bin").write_bytes(b"pickled weights")
    (root / ".git" / "HEAD").write_text("ref: main\n")
    return root


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


def test_folder_whose_only_weights_are_left_out_is_noted(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "in")
    (src / "vae").mkdir()
    (src / "vae" / "config.json").write_text("{}\n")
    (src / "vae" / "diffusion_pytorch_model.bin").write_bytes(b"pickled weights")
    out = tmp_path / "out"
    summary = convert_checkpoint(src, out, ResizeOptions(scale=2))
    assert not (out / "vae" / "diffusion_pytorch_model.bin").exists() and (out / "vae" / "config.json").exists()
    notes = [note for note in summary.notes if note.startswith("left out")]
    assert len(notes) == 2
    assert ("left out 1 file(s) of weights in a format convert does not rewrite ('vae/diffusion_pytorch_model.bin'): "
            "they are not copied, and vae/ holds no safetensors weights, so that model has no weights in OUT") in notes[0]
    assert "'model_a/pytorch_model.bin'" in notes[1] and "not copied" in notes[1]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_folder_rules_are_checked_across_models(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "in")
    plan = plan_checkpoint(src, ResizeOptions(scale=2, include=["only_b"]))
    decisions = {(fp.rel, e.name): (e.action, e.reason) for fp in plan.files for e in fp.entries}
    assert decisions[("model_a/model.safetensors", "conv.weight")] == ("copy", "not matched by --include")
    assert decisions[("model_b/weights-00002-of-00002.safetensors", "only_b.weight")][0] == "resize"
    with pytest.raises(InvalidOptionError, match="matches no tensor in"):
        plan_checkpoint(src, ResizeOptions(scale=2, include=["only_c"]))


def test_folder_force_replaces_and_refuses_nesting(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("from an older run")
    with pytest.raises(OutputError, match="exists"):
        convert_checkpoint(src, out, ResizeOptions(scale=2))
    convert_checkpoint(src, out, ResizeOptions(scale=2), force=True)
    assert not (out / "stale.txt").exists() and (out / "README.md").exists() and leftovers(tmp_path) == []
    with pytest.raises(OutputError, match="inside the input folder"):
        convert_checkpoint(src, src / "converted", ResizeOptions(scale=2))
    with pytest.raises(OutputError, match="is inside"):
        convert_checkpoint(src, tmp_path, ResizeOptions(scale=2), force=True)


# --- the output file: aligned blocks, O_DIRECT where allowed -----------------------------------


def _scribble(out, rng: torch.Generator, sizes: list[int]) -> bytes:
    written = b""
    for n in sizes:
        chunk = torch.randint(0, 256, (n,), generator=rng, dtype=torch.uint8).numpy().tobytes()
        out.write(memoryview(chunk))
        written += chunk
    return written


@pytest.mark.parametrize("refuse_direct", [False, True])
def test_output_file_blocks_tail_and_fallback(tmp_path: Path, monkeypatch, refuse_direct: bool) -> None:
    monkeypatch.setattr(stream_module._OutputFile, "BUFFER", 8192)
    path = tmp_path / "blocks.bin"
    out = stream_module._OutputFile(str(path))
    if refuse_direct:  # the first block refused as a filesystem without O_DIRECT would: buffered from then on
        if not out.direct:
            out.close()
            pytest.skip("this filesystem takes no O_DIRECT at all")
        real = os.pwrite
        refused = []

        def pwrite(fd, data, offset):
            if not refused:
                refused.append(offset)
                raise OSError(22, "Invalid argument")
            return real(fd, data, offset)

        monkeypatch.setattr(stream_module.os, "pwrite", pwrite)
    rng = torch.Generator().manual_seed(3)
    expected = _scribble(out, rng, [1, 4095, 3000, 20000, 7])
    out.flush()  # a padded tail, then truncated back
    assert path.stat().st_size == len(expected) and path.read_bytes() == expected
    expected += _scribble(out, rng, [5000, 100])  # the tail grows after a flush
    out.close()
    out.close()
    assert path.read_bytes() == expected
    if refuse_direct:
        assert refused and not out.direct
