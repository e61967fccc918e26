"""Checkpoint discovery (kernelscale.io.discovery): what a path means as a checkpoint, the same for
convert, inspect, verify and nn.load."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from kernelscale import ResizeOptions
from kernelscale.convert import convert_checkpoint
from kernelscale.errors import InvalidCheckpointError
from kernelscale.io.discovery import FOREIGN_WEIGHTS, model_files, scan_checkpoint
from kernelscale.io.output import TMP_TAG, temp_entry_name
from kernelscale.nn import load, read_manifest

from checkpoints import make_folder, save, save_sharded


def _tensors(sd_seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(sd_seed)
    return {"conv.weight": torch.randn(4, 2, 3, 3, generator=g), "conv.bias": torch.randn(4, generator=g)}


def _symlink_or_skip(target: Path, link: Path) -> None:
    """Make a folder symlink; where the platform refuses, the test is skipped with the reason (reported by -rs)."""
    try:
        os.symlink(target, link, target_is_directory=True)
    except (OSError, NotImplementedError) as exc:
        pytest.skip(f"symlinked subfolder not testable here: folder symlinks refused ({exc})")


def test_single_file(tmp_path: Path) -> None:
    path = save(_tensors(), tmp_path / "m.safetensors", {"format": "pt"})
    scan = scan_checkpoint(path)
    assert (scan.src, scan.layout, scan.others, scan.skipped) == (str(path), "file", (), ())
    [unit] = scan.units
    [source] = unit.files
    assert (source.path, source.rel, unit.index, unit.dir_rel) == (str(path), "", None, "")
    assert [t.name for t in source.tensors] == ["conv.bias", "conv.weight"]  # file order: safetensors sorts names
    assert [t.shape for t in source.tensors] == [(4,), (4, 2, 3, 3)] and source.metadata == {"format": "pt"}
    assert model_files(path) == [path]


def test_shard_index(tmp_path: Path) -> None:
    sd = {f"layer{i}.weight": torch.zeros(2, 2, 3, 3) for i in range(4)}
    index = save_sharded(sd, tmp_path / "m", shards=2)
    scan = scan_checkpoint(index)
    assert scan.layout == "sharded" and scan.src == str(index)
    [unit] = scan.units
    assert unit.index.path == str(index) and unit.index.rel == "model.safetensors.index.json"
    assert [f.rel for f in unit.files] == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert sorted(t.name for f in unit.files for t in f.tensors) == sorted(sd)
    assert model_files(index) == [tmp_path / "m" / f.rel for f in unit.files]
    # a folder holding just that index and its shards is the same one model
    assert model_files(tmp_path / "m") == model_files(index)


def test_folder_with_subfolders(tmp_path: Path) -> None:
    """A model folder: every safetensors file below it, grouped by index; other files to copy;
    foreign weights skipped; .git and kernelscale's temp entries ignored."""
    root = make_folder(tmp_path / "ckpt")
    deep = root / "model_c" / "inner"
    deep.mkdir(parents=True)
    save(_tensors(1), deep / "w.safetensors")
    (root / temp_entry_name("out", TMP_TAG, 4242)).mkdir()  # a dead run's temp folder beside an OUT inside
    (root / temp_entry_name("out", TMP_TAG, 4242) / "x.safetensors").write_bytes(b"not even a header")
    scan = scan_checkpoint(root)
    assert scan.layout == "folder" and scan.src == str(root)
    assert [u.label for u in scan.units] == ["model_a/model.safetensors", "model_b/weights.safetensors.index.json",
                                              "model_c/inner/w.safetensors"]
    assert [u.dir_rel for u in scan.units] == ["model_a", "model_b", "model_c/inner"]
    assert [f.rel for f in scan.units[1].files] == ["model_b/weights-00001-of-00002.safetensors",
                                                   "model_b/weights-00002-of-00002.safetensors"]
    assert sorted(rel for _, rel in scan.others) == ["README.md", "model_a/config.json"]
    assert scan.skipped == ("model_a/pytorch_model.bin",) and "model_a/pytorch_model.bin".endswith(FOREIGN_WEIGHTS)
    # a loader needs one model: a component folder is one, the whole folder is refused with the models named
    assert model_files(root / "model_a") == [root / "model_a" / "model.safetensors"]
    assert model_files(root / "model_c") == [deep / "w.safetensors"]  # found in its subfolder, as convert finds it
    with pytest.raises(InvalidCheckpointError, match=r"holds 3 models \('model_a/model\.safetensors', "
                                                     r"'model_b/weights\.safetensors\.index\.json', 'model_c/inner/w\.safetensors'\)"):
        model_files(root)


def test_symlinked_subfolder_is_walked(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere" / "unet"
    elsewhere.mkdir(parents=True)
    save(_tensors(2), elsewhere / "diffusion_pytorch_model.safetensors")
    (elsewhere / "config.json").write_text("{}\n")
    root = tmp_path / "pipe"
    root.mkdir()
    save(_tensors(3), root / "vae.safetensors")
    _symlink_or_skip(elsewhere, root / "unet")
    scan = scan_checkpoint(root)
    assert [u.label for u in scan.units] == ["unet/diffusion_pytorch_model.safetensors", "vae.safetensors"]
    assert scan.units[0].files[0].path == str(root / "unet" / "diffusion_pytorch_model.safetensors")
    assert [rel for _, rel in scan.others] == ["unet/config.json"]
    assert model_files(root / "unet") == [root / "unet" / "diffusion_pytorch_model.safetensors"]
    # convert writes the linked component as real files of OUT (a lone link was left out before)
    convert_checkpoint(root, tmp_path / "out", ResizeOptions(scale=2), progress=False)
    out = tmp_path / "out" / "unet"
    assert not out.is_symlink() and sorted(p.name for p in out.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert read_manifest(out)["tensors"].keys() == {"conv.weight"}


def test_symlink_loop_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    (root / "sub").mkdir(parents=True)
    save(_tensors(), root / "sub" / "m.safetensors")
    _symlink_or_skip(root, root / "sub" / "back")
    with pytest.raises(InvalidCheckpointError, match=r"sub/back: a link back to .*ckpt, a folder it lies in"):
        scan_checkpoint(root)


def test_nothing_found(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("no weights\n")
    (empty / "model.bin").write_bytes(b"pickled")
    for find in (scan_checkpoint, model_files):
        with pytest.raises(InvalidCheckpointError, match=rf"{empty}: no \.safetensors files in this folder or its subfolders"):
            find(empty)
        with pytest.raises(InvalidCheckpointError, match=r"absent\.safetensors: no such file or folder"):
            find(tmp_path / "absent.safetensors")


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)


def test_nn_load_finds_a_component_folder_as_convert_does(tmp_path: Path) -> None:
    """A diffusers-style pipeline folder converted as a whole; nn.load then reads a component folder
    (its weights one level down, where top-level globbing would not look) the way convert found it."""
    torch.manual_seed(0)
    model = _Tiny()
    src = tmp_path / "pipe"
    (src / "unet" / "weights").mkdir(parents=True)
    save({k: v.detach().contiguous() for k, v in model.state_dict().items()}, src / "unet" / "weights" / "m.safetensors")
    save(_tensors(4), src / "other.safetensors")
    convert_checkpoint(src, tmp_path / "out", ResizeOptions(scale=2), progress=False)
    loaded = copy.deepcopy(model)
    report = load(loaded, tmp_path / "out" / "unet")
    assert report.names() == ["conv"] and loaded.conv.weight.shape == (4, 2, 7, 7)  # 3×3 at s = 2, linear taps
    assert read_manifest(tmp_path / "out" / "unet")["tensors"].keys() == {"conv.weight"}
    with pytest.raises(InvalidCheckpointError, match="holds 2 models"):
        load(copy.deepcopy(model), tmp_path / "out")
