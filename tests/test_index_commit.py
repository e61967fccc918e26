"""A shard-index OUT is committed as one (issue 14): a run killed with SIGKILL while it moves its
shards beside OUT never leaves an index over a mix of old and new shards, and the next run puts the
previous output back (or, when there was none, removes the dead run's shards) before it starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernelscale.cli import main
from kernelscale.io.safetensors_io import read_header
from checkpoints import leftovers, save_sharded, sha256

ROOT = Path(__file__).resolve().parents[1]

# The child converts, and kills itself with SIGKILL right after the first shard is moved beside
# OUT: the moment at which an index committed shard by shard would name old and new shards at once.
_KILLED_AFTER_FIRST_SHARD = """
import os, signal, sys
from kernelscale.io import output
real = os.replace
def replace(src, dst):
    real(src, dst)
    if ".kernelscale-tmp-" in str(src) and str(dst).endswith(".safetensors") and ".kernelscale-" not in str(dst):
        os.kill(os.getpid(), signal.SIGKILL)
output.os.replace = replace
from kernelscale.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _source(tmp_path: Path) -> Path:
    g = torch.Generator().manual_seed(3)
    sd = {f"layer{i}.weight": torch.randn(4, 4, 3, 3, generator=g) for i in range(6)}
    return save_sharded(sd, tmp_path / "in", shards=3)


def _paths(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The sharded source (:func:`_source`), an empty output folder and the output index path in it."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    return _source(tmp_path), out_dir, out_dir / "model.safetensors.index.json"


def _killed_run(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-c", _KILLED_AFTER_FIRST_SHARD, "convert", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: sha256(p) for p in sorted(folder.iterdir())}


def _kernel_sizes(index: Path) -> set[int]:
    """The spatial sizes of every kernel the index's shards hold (one value for a consistent output)."""
    shards = set(json.loads(index.read_text())["weight_map"].values())
    return {info.shape[-1] for shard in shards for info in read_header(index.parent / shard)[1].values()}


def test_force_run_killed_mid_commit_leaves_no_index_over_a_mix_and_the_next_run_restores_the_old(tmp_path: Path, capsys) -> None:
    src, out_dir, out = _paths(tmp_path)
    assert main(["convert", str(src), str(out), "--scale", "2"]) == 0
    before = _digests(out_dir)
    assert _kernel_sizes(out) == {7}

    _killed_run(str(src), str(out), "--scale", "3", "--force")
    assert not out.exists()  # the old index is aside: nothing names the mix of shards
    assert len(leftovers(out_dir)) == 1

    # the next run puts the previous output back, byte for byte, then (no --force) refuses to replace it
    assert main(["convert", str(src), str(out), "--scale", "3"]) == 2
    assert "exists" in capsys.readouterr().err
    assert _digests(out_dir) == before and leftovers(out_dir) == []

    assert main(["convert", str(src), str(out), "--scale", "3", "--force"]) == 0
    assert _kernel_sizes(out) == {11}
    assert leftovers(out_dir) == []


def test_run_killed_mid_commit_does_not_block_the_next(tmp_path: Path, capsys) -> None:
    src, out_dir, out = _paths(tmp_path)
    _killed_run(str(src), str(out), "--scale", "2")
    assert not out.exists()
    assert main(["convert", str(src), str(out), "--scale", "2"]) == 0, capsys.readouterr().err
    assert _kernel_sizes(out) == {7}
    assert sorted(_digests(out_dir)) == sorted({*json.loads(out.read_text())["weight_map"].values(), out.name})


def test_a_failed_commit_puts_the_previous_output_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kernelscale.io import output

    src, out_dir, out = _paths(tmp_path)
    assert main(["convert", str(src), str(out), "--scale", "2"]) == 0
    before = _digests(out_dir)
    real, moved = os.replace, []

    def failing(a: str, b: str) -> None:
        if ".kernelscale-tmp-" in str(a) and str(b).endswith(".safetensors") and ".kernelscale-" not in str(b):
            moved.append(b)
            if len(moved) == 2:
                raise OSError(28, "No space left on device")
        real(a, b)

    monkeypatch.setattr(output.os, "replace", failing)
    assert main(["convert", str(src), str(out), "--scale", "3", "--force"]) == 2
    monkeypatch.setattr(output.os, "replace", real)
    assert _digests(out_dir) == before and leftovers(out_dir) == []
