"""Reading a command's input ahead while the process starts (kernelscale.io.prefetch): which files,
a bounded hint, never a hang on a FIFO or a device, never an error."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kernelscale.io import prefetch as prefetch_module
from kernelscale.io.prefetch import input_files, prefetch

ROOT = Path(__file__).resolve().parent.parent


def test_the_files_a_conversion_reads(tmp_path: Path) -> None:
    single = tmp_path / "model.safetensors"
    single.write_bytes(b"x" * 10)
    assert list(input_files(str(single))) == [str(single)]
    folder = tmp_path / "pipe"
    (folder / "unet").mkdir(parents=True)
    (folder / "vae").mkdir()
    for rel in ("unet/b.safetensors", "unet/a.safetensors", "vae/v.safetensors", "top.safetensors", "unet/config.json"):
        (folder / rel).write_bytes(b"x")
    assert list(input_files(str(folder))) == [str(folder / r) for r in
                                              ("top.safetensors", "unet/a.safetensors", "unet/b.safetensors", "vae/v.safetensors")]
    index = folder / "unet" / "model.safetensors.index.json"
    index.write_text('{"weight_map": {"x": "b.safetensors", "y": "b.safetensors", "z": "missing.safetensors"}}')
    assert list(input_files(str(index))) == [str(folder / "unet" / "b.safetensors")]  # the shards it names, once
    index.write_text("[" * 100_000)
    assert list(input_files(str(index))) == []
    assert list(input_files(str(folder / "unet" / "config.json"))) == []  # not an index: nothing to guess
    assert list(input_files(str(tmp_path / "missing.safetensors"))) == []
    assert list(input_files("")) == [] and prefetch("") is None


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_folder_is_looked_at_a_bounded_number_of_entries(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(prefetch_module, "MAX_FILES", 5)
    for i in range(20):
        (tmp_path / f"m{i:02d}.safetensors").write_bytes(b"x")
    assert len(list(input_files(str(tmp_path)))) == 5


def test_a_fifo_is_never_opened(tmp_path: Path) -> None:
    """Opening a FIFO for reading blocks until a writer comes: a FIFO given as IN, or named
    *.safetensors in a folder, is skipped without being opened."""
    fifo = tmp_path / "f.safetensors"
    os.mkfifo(fifo)
    assert list(input_files(str(fifo))) == [] and list(input_files(str(tmp_path))) == []
    for path in (fifo, tmp_path):
        thread = prefetch(str(path))
        thread.join(10)
        assert not thread.is_alive()


def test_the_hint_is_bounded_and_read_ahead(tmp_path: Path, monkeypatch) -> None:
    """The advice covers the files in order up to the budget (and a quarter of the memory available)."""
    files = []
    for i, size in enumerate((3000, 5000, 4000)):
        path = tmp_path / f"m{i}.safetensors"
        path.write_bytes(b"x" * size)
        files.append(str(path))
    advised: list[tuple[int, int]] = []
    monkeypatch.setattr(prefetch_module.os, "posix_fadvise", lambda fd, offset, length, advice: advised.append((offset, length)))
    monkeypatch.setattr(prefetch_module, "_available_memory", lambda: 4 * 7000)
    thread = prefetch(str(tmp_path), budget=10_000)
    assert thread is not None and thread.daemon
    thread.join(10)
    assert advised == [(0, 3000), (0, 4000)]  # 7000 bytes: a quarter of the memory available


def test_convert_prefetches_its_input_before_importing_torch(tmp_path: Path) -> None:
    """`kernelscale convert IN OUT …` asks for IN before the command's modules (torch) are imported."""
    code = ("import sys, kernelscale.io.prefetch as p\n"
            "seen = []\n"
            "real = p.prefetch\n"
            "p.prefetch = lambda path, *a: seen.append((path, 'torch' in sys.modules)) or real(path, *a)\n"
            "from kernelscale.cli import main\n"
            "main(sys.argv[1:])\n"
            "print(seen)\n")
    src = tmp_path / "in.safetensors"
    src.write_bytes(b"not a checkpoint")
    run = subprocess.run([sys.executable, "-c", code, "convert", str(src), str(tmp_path / "o.safetensors"), "--scale", "2"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert f"[({str(src)!r}, False)]" in run.stdout, run.stdout + run.stderr
    dry = subprocess.run([sys.executable, "-c", code, "convert", str(src), str(tmp_path / "o.safetensors"), "--scale", "2", "--dry-run"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert "[]" in dry.stdout  # nothing is written: nothing to hurry


def test_advice_covers_the_whole_range_a_chunk_at_a_time(monkeypatch) -> None:
    """Linux reads at most its readahead size per WILLNEED call and drops the rest of the range:
    the advice is given ADVISE_CHUNK at a time, over every byte asked for."""
    advised: list[tuple[int, int]] = []
    monkeypatch.setattr(prefetch_module.os, "posix_fadvise", lambda fd, offset, length, advice: advised.append((offset, length)))
    chunk = prefetch_module.ADVISE_CHUNK
    prefetch_module.advise_willneed(3, 100, 2 * chunk + 5)
    assert advised == [(100, chunk), (100 + chunk, chunk), (100 + 2 * chunk, 5)]


def test_readahead_keeps_a_window_advised_past_the_reader(tmp_path: Path, monkeypatch) -> None:
    """The converter's reader reports where it is; the window past it is advised on the readahead's
    own thread, from where the reader is (never behind it), and the advice is not repeated."""
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"x" * 100)
    advised: list[tuple[int, int]] = []
    monkeypatch.setattr(prefetch_module.os, "posix_fadvise", lambda fd, offset, length, advice: advised.append((offset, length)))
    monkeypatch.setattr(prefetch_module, "ADVISE_CHUNK", 1000)
    monkeypatch.setattr(prefetch_module.Readahead, "READAHEAD", 4000)
    readahead = prefetch_module.Readahead(str(path))

    def advised_bytes(expected: int) -> int:
        deadline = time.monotonic() + 10
        while sum(n for _, n in advised) < expected and time.monotonic() < deadline:
            time.sleep(0.01)
        return sum(n for _, n in advised)

    readahead.before(0, 10)
    assert advised_bytes(4010) == 4010 and advised[0] == (0, 1000)  # [0, 4010), a chunk at a time
    readahead.before(500, 600)  # within a quarter window of what was asked: nothing new
    readahead.before(9000, 9500)  # jumped ahead: [9000, 13500), not the bytes behind the reader
    assert advised_bytes(8510) == 8510
    readahead.close()
    assert [o for o, _ in advised if o >= 4010] == [9000, 10000, 11000, 12000, 13000] and sum(n for _, n in advised) == 8510
