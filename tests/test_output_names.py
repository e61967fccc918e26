"""OUT names at the edges (issue 14): a shard named ``./s1.safetensors`` by its index, an OUT name
of NAME_MAX bytes, names that are not UTF-8 or cannot be file names at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernelscale.cli import main
from kernelscale.convert import convert_checkpoint
from kernelscale.io.output import NAME_MAX, OutputError, clean_stale, entry_base, parse_temp_entry, temp_entry_name
from kernelscale.io.safetensors_io import read_header
from checkpoints import OPTIONS, leftovers, mixed_checkpoint, save

ROOT = Path(__file__).resolve().parents[1]


def test_an_index_naming_its_shard_with_dot_slash_converts_inside_a_folder(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    save({"conv.weight": torch.randn(2, 2, 3, 3)}, folder / "s1.safetensors")
    index = {"metadata": {}, "weight_map": {"conv.weight": "./s1.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    assert main(["convert", str(folder), str(tmp_path / "out"), "--scale", "2"]) == 0, capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / "out")) == ["model.safetensors.index.json", "s1.safetensors"]
    assert read_header(tmp_path / "out" / "s1.safetensors")[1]["conv.weight"].shape == (2, 2, 7, 7)


def test_an_out_name_of_name_max_bytes_gets_a_temp_entry_that_fits(tmp_path: Path) -> None:
    src = mixed_checkpoint(tmp_path)
    name = "a" * (NAME_MAX - len(".safetensors")) + ".safetensors"
    out = tmp_path / name
    convert_checkpoint(src, out, OPTIONS)
    assert out.exists() and leftovers(tmp_path) == []
    entry = temp_entry_name(name, "kernelscale-tmp", 4_194_304)
    assert len(entry.encode()) <= NAME_MAX and parse_temp_entry(entry).name == entry_base(name) != name
    assert entry_base("short.safetensors") == "short.safetensors"


def test_a_dead_runs_temp_entry_of_a_long_name_is_cleaned(tmp_path: Path) -> None:
    name = "é" * 120 + ".safetensors"  # 252 bytes
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stray = tmp_path / temp_entry_name(name, "kernelscale-tmp", dead.pid)
    stray.write_bytes(b"partial")
    assert clean_stale(tmp_path / name) == [str(stray)] and not stray.exists()


def test_an_out_name_no_file_can_have_is_refused_before_any_work(tmp_path: Path) -> None:
    src = mixed_checkpoint(tmp_path)
    with pytest.raises(OutputError, match="cannot be a file name"):
        convert_checkpoint(src, tmp_path / "\ud800.safetensors", OPTIONS)
    assert sorted(os.listdir(tmp_path)) == ["in.safetensors"]


def test_a_non_utf8_out_name_is_written_as_given(tmp_path: Path) -> None:
    src = mixed_checkpoint(tmp_path)
    out = os.path.join(os.fsencode(tmp_path), b"\xff.safetensors")
    result = subprocess.run([sys.executable, "-m", "kernelscale.cli", "convert", os.fsencode(src), out, "--scale", "2",
                             "--grid", "head=8,2,2"], capture_output=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert os.path.exists(out) and b"\xff.safetensors" in os.listdir(os.fsencode(tmp_path))


@pytest.mark.parametrize("form", ["slash", "folder"])
def test_a_folder_out_for_a_file_in_means_into_that_folder(tmp_path: Path, capsys, form: str) -> None:
    src = save({"conv.weight": torch.randn(2, 2, 3, 3)}, tmp_path / "model.safetensors")
    (tmp_path / "out").mkdir()
    out = str(tmp_path / "out") + ("/" if form == "slash" else "")
    assert main(["convert", str(src), out, "--scale", "2", "--verify"]) == 0, capsys.readouterr().err
    assert os.listdir(tmp_path / "out") == ["model.safetensors"]
    assert read_header(tmp_path / "out" / "model.safetensors")[1]["conv.weight"].shape == (2, 2, 7, 7)
    # into the input's own folder: that is the input itself
    assert main(["convert", str(src), str(tmp_path) + "/", "--scale", "2", "--force"]) == 2
    assert "is the input itself" in capsys.readouterr().err


def test_a_folder_in_refuses_an_out_named_like_a_file(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    save({"conv.weight": torch.randn(2, 2, 3, 3)}, folder / "model.safetensors")
    assert main(["convert", str(folder), str(tmp_path / "out.safetensors"), "--scale", "2"]) == 2
    err = capsys.readouterr().err
    assert "looks like a file name" in err and "is a folder" in err
    assert sorted(os.listdir(tmp_path)) == ["in"]
