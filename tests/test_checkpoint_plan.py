"""Planning a checkpoint from its headers (kernelscale.checkpoint_plan): shard indexes, folders, rules, notes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kernelscale import ResizeOptions
from kernelscale.checkpoint_plan import plan_checkpoint
from kernelscale.convert import convert_checkpoint
from kernelscale.errors import InvalidCheckpointError, InvalidOptionError

from checkpoints import OPTIONS, make_folder, mixed_state_dict, save, save_sharded


# --- sharded checkpoints -----------------------------------------------------------------------


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


# --- notes: how to load the result, and options that did nothing -------------------------------


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
    from kernelscale.geometry import loader_change
    from kernelscale.manifest import ConvRecord

    def change(**record) -> str:
        base = {"dilation": None, "absorb": False, "centre_offset": [0.0, 0.0]}
        typed = ConvRecord.from_json({"scale": [2, 2], "old_spatial": [4, 4], "new_spatial": [4, 4], **base, **record})
        return loader_change(typed, (2, 2, 4, 4), (2, 2, 4, 4))

    assert change() == "none"
    assert change(dilation=[2, 2]) == "dilation"
    assert change(absorb=True) == "stride"
    assert change(centre_offset=[0.5, 0.0]) == "padding"


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


def test_folder_rules_are_checked_across_models(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "in")
    plan = plan_checkpoint(src, ResizeOptions(scale=2, include=["only_b"]))
    decisions = {(fp.rel, e.name): (e.action, e.reason) for fp in plan.files for e in fp.entries}
    assert decisions[("model_a/model.safetensors", "conv.weight")] == ("copy", "not matched by --include")
    assert decisions[("model_b/weights-00002-of-00002.safetensors", "only_b.weight")][0] == "resize"
    with pytest.raises(InvalidOptionError, match="matches no tensor in"):
        plan_checkpoint(src, ResizeOptions(scale=2, include=["only_c"]))
