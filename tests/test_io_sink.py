"""The file the streaming writer writes into (kernelscale.io.sink): aligned blocks, the tail, O_DIRECT where allowed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from kernelscale.io import sink as sink_module


def _scribble(out, rng: torch.Generator, sizes: list[int]) -> bytes:
    written = b""
    for n in sizes:
        chunk = torch.randint(0, 256, (n,), generator=rng, dtype=torch.uint8).numpy().tobytes()
        out.write(memoryview(chunk))
        written += chunk
    return written


@pytest.mark.parametrize("refuse_direct", [False, True])
def test_output_file_blocks_tail_and_fallback(tmp_path: Path, monkeypatch, refuse_direct: bool) -> None:
    monkeypatch.setattr(sink_module.DirectFileSink, "BUFFER", 8192)
    path = tmp_path / "blocks.bin"
    out = sink_module.DirectFileSink(str(path))
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

        monkeypatch.setattr(sink_module.os, "pwrite", pwrite)
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
