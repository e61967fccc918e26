"""The output location (kernelscale.io.output): refusals, atomic replacement, free space, stale temp entries."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch

from kernelscale import ResizeOptions
from kernelscale.io import output as output_module
from kernelscale import stream as stream_module
from kernelscale.checkpoint_plan import plan_checkpoint
from kernelscale.convert import convert_checkpoint
from kernelscale.errors import InvalidOptionError
from kernelscale.execute import execute
from kernelscale.io.output import OutputError, clean_stale

from checkpoints import OPTIONS, leftovers, make_folder, mixed_checkpoint, mixed_state_dict, save_sharded, sha256


@pytest.fixture()
def checkpoint(tmp_path: Path) -> Path:
    return mixed_checkpoint(tmp_path)


# --- single files ------------------------------------------------------------------------------


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
    out = output_module.AtomicOutput(plan, str(tmp_path / "out.safetensors"), force=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.safetensors"]
    # abort on a read-only mount: unlink there reports EROFS even for a missing file
    monkeypatch.setattr(output_module.os, "unlink", lambda path: (_ for _ in ()).throw(OSError(errno.EROFS, "Read-only file system")))
    out.abort()


def test_failure_mid_write_leaves_nothing(tmp_path: Path, checkpoint: Path, monkeypatch) -> None:
    calls = []

    def failing(operator, tensor, **keywords):
        calls.append(keywords["name"])
        if len(calls) == 3:
            raise InvalidOptionError(f"{keywords['name']}: injected failure")
        return execute(operator, tensor, **keywords)

    monkeypatch.setattr(stream_module, "execute", failing)
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


# --- sharded checkpoints and folders -----------------------------------------------------------


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


def test_folder_force_replaces_and_refuses_nesting(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OutputError, match="exists"):
        convert_checkpoint(src, out, ResizeOptions(scale=2))
    convert_checkpoint(src, out, ResizeOptions(scale=2), force=True)  # an empty folder
    (out / "model_b" / "weights-00001-of-00002.safetensors").unlink()  # a previous result, or part of one
    convert_checkpoint(src, out, ResizeOptions(scale=2), force=True)
    assert (out / "README.md").exists() and (out / "model_b" / "weights-00001-of-00002.safetensors").exists()
    assert leftovers(tmp_path) == []
    with pytest.raises(OutputError, match="inside the input folder"):
        convert_checkpoint(src, src / "converted", ResizeOptions(scale=2))
    with pytest.raises(OutputError, match="is inside"):
        convert_checkpoint(src, tmp_path, ResizeOptions(scale=2), force=True)


def test_force_never_deletes_what_the_conversion_would_not_write(tmp_path: Path, monkeypatch) -> None:
    """--force replaces an OUT folder whole: one holding anything but this conversion's files (a file,
    a folder, an empty folder, a link) is refused, naming up to 3 of them and the count, dry run
    included, and left as it was."""
    src = make_folder(tmp_path / "in")
    out = tmp_path / "models"
    convert_checkpoint(src, out, ResizeOptions(scale=2))
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    (out / "other").mkdir()
    (out / "other" / "important.txt").write_text("x")
    for dry_run in (True, False):
        with pytest.raises(OutputError, match=r"^OUT .*models holds 1 file\(s\) or folder\(s\) this conversion would not write "
                                              r"\(other/important\.txt\); --force replaces the whole folder, so move them or "
                                              r"choose another OUT$"):
            convert_checkpoint(src, out, ResizeOptions(scale=2), force=True, dry_run=dry_run)
    assert (out / "other" / "important.txt").read_text() == "x" and leftovers(tmp_path) == []
    (out / "model_a" / "notes").mkdir()
    (out / "model_a" / "pytorch_model.bin").write_bytes(b"left out of the conversion")
    (out / "zz.lnk").symlink_to(out / "README.md")
    with pytest.raises(OutputError, match=r"holds 4 file\(s\) or folder\(s\) .* \(model_a/notes/, model_a/pytorch_model\.bin, "
                                          r"other/important\.txt and 1 more\)"):
        convert_checkpoint(src, out, ResizeOptions(scale=2), force=True)
    for extra in ("other/important.txt", "other", "model_a/notes", "model_a/pytorch_model.bin", "zz.lnk"):
        path = out / extra
        path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    convert_checkpoint(src, out, ResizeOptions(scale=2), force=True)
    # something put there while converting is caught before the old folder goes
    real = output_module.AtomicOutput.commit

    def commit(self, force):
        (out / "late.txt").write_text("written meanwhile")
        real(self, force)

    monkeypatch.setattr(output_module.AtomicOutput, "commit", commit)
    with pytest.raises(OutputError, match=r"\(late\.txt\)"):
        convert_checkpoint(src, out, ResizeOptions(scale=2), force=True)
    assert (out / "late.txt").exists() and (out / "README.md").exists() and leftovers(tmp_path) == []


def test_force_on_a_single_file_out_is_unchanged(tmp_path: Path, checkpoint: Path) -> None:
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"an older file")
    (tmp_path / "beside.txt").write_text("kept")
    convert_checkpoint(checkpoint, out, OPTIONS, force=True)
    assert (tmp_path / "beside.txt").read_text() == "kept" and out.stat().st_size > 100
