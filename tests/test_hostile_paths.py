"""Paths that name something other than a checkpoint or a plan file (issue 14): FIFOs, devices,
empty names and oversized files are refused by name and size, one line and exit 2, without being
opened for reading, so nothing hangs and nothing reads until memory runs out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
import torch

from kernelscale.errors import InvalidCheckpointError
from kernelscale.io.files import read_small_file
from kernelscale.io.safetensors_io import SafetensorsReader
from checkpoints import header_file, save

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: object, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    # a subprocess with a timeout: a FIFO opened for reading blocks forever, which must fail the test, not hang it
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "kernelscale.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=60, cwd=cwd, env=env)


def one_error_line(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kernelscale: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    return save({"conv.weight": torch.randn(2, 2, 3, 3)}, tmp_path / "model.safetensors")


def test_a_fifo_as_input_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "f.safetensors"
    os.mkfifo(fifo)
    one_error_line(run_cli("convert", fifo, tmp_path / "o.safetensors", "--scale", "2"), str(fifo), "FIFO")
    one_error_line(run_cli("inspect", fifo), "FIFO")


@pytest.mark.parametrize("name", ["unet/weights.safetensors", "unet/config.json", "notes.txt"])
def test_a_fifo_inside_a_folder_is_refused_by_name(tmp_path: Path, model: Path, name: str) -> None:
    folder = tmp_path / "pipe"
    (folder / "unet").mkdir(parents=True)
    os.replace(model, folder / "unet" / "model.safetensors")
    os.mkfifo(folder / name)
    one_error_line(run_cli("convert", folder, tmp_path / "out", "--scale", "2"), str(folder / name), "FIFO")
    assert not (tmp_path / "out").exists()


def test_plan_files_that_are_not_small_regular_files_are_refused(tmp_path: Path, model: Path) -> None:
    fifo = tmp_path / "plan.toml"
    os.mkfifo(fifo)
    out = tmp_path / "o.safetensors"
    one_error_line(run_cli("convert", model, out, "--plan", fifo), "FIFO")
    one_error_line(run_cli("convert", model, out, "--plan", "/dev/zero"), "/dev/zero", "character device")
    big = tmp_path / "big.toml"
    with open(big, "wb") as fh:
        fh.truncate(64_000_000)  # a hole: refused by its size, never read
    one_error_line(run_cli("convert", model, out, "--plan", big), "64000000 bytes", "limit")
    assert not out.exists()


def test_an_empty_path_is_refused_not_taken_for_the_current_folder(tmp_path: Path, model: Path) -> None:
    one_error_line(run_cli("convert", "", tmp_path / "out", "--scale", "2", cwd=tmp_path), "path is empty")
    one_error_line(run_cli("convert", model, "", "--scale", "2", cwd=tmp_path), "OUT is empty")
    one_error_line(run_cli("inspect", "", cwd=tmp_path), "path is empty")
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]


def test_read_small_file_reads_at_most_its_limit(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_bytes(b"12345")
    assert read_small_file(str(path), 5, InvalidCheckpointError, "x") == b"12345"
    with pytest.raises(InvalidCheckpointError, match="5 bytes, above the 4-byte limit"):
        read_small_file(str(path), 4, InvalidCheckpointError, "x")
    with pytest.raises(InvalidCheckpointError, match="a folder"):
        read_small_file(str(tmp_path), 4, InvalidCheckpointError, "x")

def test_a_header_of_millions_of_empty_lists_is_refused_at_the_cost_of_its_bytes(tmp_path: Path) -> None:
    # accepted before (an unknown key of a tensor entry), at 64 bytes of memory per 3-byte list:
    # 4 M lists would cost 0.27 GB; the structure check refuses it holding two copies of the bytes
    lists = 4_000_000
    header = b'{"t":{"dtype":"F32","shape":[],"data_offsets":[0,4],"x":[' + b"[]," * (lists - 1) + b"[]]}}"
    path = header_file(tmp_path / "lists.safetensors", header, bytes(4), pad=True)
    tracemalloc.start()
    try:
        with pytest.raises(InvalidCheckpointError, match="a list holding a list"):
            SafetensorsReader(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * len(header) + (1 << 20)


@pytest.mark.parametrize("extra, needle", [
    (b'"x":{"y":{}}', "nested deeper"),
    (b'"x":[' + b"0," * 64 + b"0]", "more than 64 items"),
    (b'"x":[{}]', "a list holding"),
    (b",".join(b'"k%d":0' % i for i in range(4096)), "an object of more than 4096 keys"),
])
def test_header_structure_beyond_a_safetensors_header_is_refused(tmp_path: Path, extra: bytes, needle: str) -> None:
    header = b'{"t":{"dtype":"F32","shape":[],"data_offsets":[0,4],' + extra + b"}}"
    with pytest.raises(InvalidCheckpointError, match=needle):
        SafetensorsReader(header_file(tmp_path / "h.safetensors", header, bytes(4), pad=True))


def test_brackets_inside_strings_are_not_structure(tmp_path: Path) -> None:
    meta = {"note": "[[{{\"]]}}" * 100, "k" * 3: "]"}
    header = json.dumps({"__metadata__": meta, "t[0]{": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}}).encode()
    with SafetensorsReader(header_file(tmp_path / "s.safetensors", header, bytes(4), pad=True)) as reader:
        assert reader.metadata == meta and list(reader.tensors) == ["t[0]{"]


@pytest.mark.parametrize("entry, needle", [(b'"k%d":0', "not an object"), (b'"k%d":{}', "too few keys")])
def test_a_large_header_of_tiny_entries_is_refused_before_parsing(tmp_path: Path, entry: bytes, needle: str) -> None:
    # 1.5 M top-level pairs: parsed, each costs ~120–200 bytes (0.2–0.3 GB here, 2.8 GB at the 100 MB limit)
    header = b"{" + b",".join(entry % i for i in range(1_500_000)) + b"}"
    path = header_file(tmp_path / "tiny.safetensors", header, bytes(4), pad=True)
    tracemalloc.start()
    try:
        with pytest.raises(InvalidCheckpointError, match=needle):
            SafetensorsReader(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * len(header) + (1 << 20)
