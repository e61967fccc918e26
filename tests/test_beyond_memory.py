"""Convert and verify a checkpoint whose output is larger than the address space the process may
use (issue 14; DESIGN §6: streams, bounded memory): nothing may map or read a whole file.

The limit is RLIMIT_AS, set in the child only: the VM of ``import torch`` measured here, plus a
headroom smaller than the output file. A run that maps OUT (as ``safetensors.safe_open`` does)
needs the whole file's size on top of torch and fails with ENOMEM."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernelscale.io.safetensors_io import SafetensorsReader, encode_header

ROOT = Path(__file__).resolve().parents[1]

HEADROOM = 640 << 20
"""Address space allowed beyond ``import torch``: the converter's threads, blocks in flight and
libraries (about 0.3–0.45 GB measured), but less than OUT."""
BIG_ROWS, BIG_COLS = 400_000, 1024
"""The copied tensor: 400 000 × 1024 float16 = 819 MB, so OUT exceeds HEADROOM by 0.15 GB."""


def _peak_vm(code: str) -> int:
    out = subprocess.run([sys.executable, "-c", code + "\nprint(open('/proc/self/status').read().split('VmPeak:')[1].split()[0])"],
                         capture_output=True, text=True, check=True, cwd=ROOT, timeout=120)
    return int(out.stdout.split()[-1]) * 1024


def _sparse_checkpoint(path: Path) -> int:
    """A checkpoint with one 819 MB tensor of zeros (a file hole: nothing hits the disk) and two
    small conv kernels; returns its size."""
    g = torch.Generator().manual_seed(0)
    convs = {"conv_in.weight": torch.randn(8, 4, 3, 3, generator=g), "conv_out.weight": torch.randn(4, 8, 3, 3, generator=g)}
    specs = [(name, "F32", tuple(t.shape)) for name, t in convs.items()] + [("embed.weight", "F16", (BIG_ROWS, BIG_COLS))]
    head, infos = encode_header(specs)
    with open(path, "wb") as fh:
        fh.write(head)
        for t in convs.values():
            fh.write(t.numpy().tobytes())
        fh.truncate(infos[-1].end)
    return infos[-1].end


def _limited(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmPeak and RLIMIT_AS as Linux has them")
def test_convert_and_verify_an_output_larger_than_the_address_space_limit(tmp_path: Path) -> None:
    src, out = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    size = _sparse_checkpoint(src)
    assert size > HEADROOM + (128 << 20)
    limit = _peak_vm("import torch") + HEADROOM
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "kernelscale.cli", *args], capture_output=True, text=True, cwd=ROOT,
                              env=env, timeout=300, preexec_fn=_limited(limit))

    # the limit bites: mapping the input whole (as safetensors' loader does) fails under it
    mapped = subprocess.run(
        [sys.executable, "-c", f"import torch, safetensors; safetensors.safe_open({str(src)!r}, 'pt').get_tensor('embed.weight')"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300, preexec_fn=_limited(limit))
    assert mapped.returncode != 0 and "memory" in mapped.stderr.lower(), mapped.stderr

    result = run("convert", str(src), str(out), "--scale", "2")
    assert result.returncode == 0, result.stderr
    with SafetensorsReader(out) as reader:
        assert reader.tensors["conv_in.weight"].shape == (8, 4, 7, 7)
        assert reader.tensors["embed.weight"].shape == (BIG_ROWS, BIG_COLS)
        assert os.path.getsize(out) > size
        tail = reader.tensors["embed.weight"].end
        assert os.pread(reader._file.fileno(), 1 << 20, tail - (1 << 20)) == bytes(1 << 20)
    result = run("verify", str(src), str(out), "--tol", "0.5")
    assert result.returncode == 0, result.stderr
    assert "conv_in.weight" in result.stdout + result.stderr
