"""The JSON files of a folder IN that kernelscale reads (issue 14): a model's ``config.json``, a
pipeline's ``model_index.json`` and its denoiser's ``config.json``. One that is there but cannot
be parsed (nested 100,000 deep, not JSON, not UTF-8, not an object) is refused in one line with
exit 2 wherever kernelscale needs it — to find the pipeline's denoiser, to convert the denoiser,
to say how to load a resized model and update the kernel sizes its config gives — and is copied
byte for byte where it does not: a model the plan leaves unchanged, a pipeline component other
than the denoiser, a config beside a lone file IN. ``verify`` reads no config at all."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import pipelines as P
from kernelscale.cli import main
from checkpoints import save

DEEP = "[" * 100_000 + "]" * 100_000
UNPARSEABLE = [(DEEP, "config.json is JSON nested too deeply to parse"), ('{"conv_in_kernel": 3', "config.json is not valid JSON"),
               (b"\xff\xfe{}", "config.json is not valid JSON"), ("[3]", "config.json holds a JSON list, not an object")]


def call(capsys, *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_error_line(capsys, *args: object, needle: str) -> str:
    code, _, err = call(capsys, *args)
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("kernelscale: error: "), err
    assert needle in lines[0], lines[0]
    return lines[0]


def _write(path: Path, text) -> None:
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))


def _two_models(root: Path, broken) -> Path:
    """``root/a`` (a fine config) and ``root/b`` (the ``broken`` one), a conv each."""
    g = torch.Generator().manual_seed(0)
    for name, config in (("a", '{"_class_name": "A"}'), ("b", broken)):
        (root / name).mkdir(parents=True)
        save({f"{name}.conv.weight": torch.randn(2, 2, 3, 3, generator=g)}, root / name / "model.safetensors")
        _write(root / name / "config.json", config)
    return root


@pytest.mark.parametrize("broken, needle", UNPARSEABLE)
def test_the_config_of_a_model_that_is_resized_must_parse(tmp_path: Path, capsys, broken, needle: str) -> None:
    src = _two_models(tmp_path / "in", broken)
    line = one_error_line(capsys, "convert", src, tmp_path / "out", "--scale", "2", needle=needle)
    assert str(src / "b" / "config.json") in line and "kernelscale reads the config.json of a model it resizes" in line
    assert not (tmp_path / "out").exists()
    one_error_line(capsys, "convert", src, tmp_path / "out", "--scale", "2", "--dry-run", needle=needle)
    one_error_line(capsys, "inspect", src, "--scale", "2", needle=needle)
    one_error_line(capsys, "inspect", src, "--scale", "2", "--json", needle=needle)
    assert call(capsys, "inspect", src)[0] == 0  # listing tensors reads no config


def test_the_config_of_a_model_left_unchanged_is_copied_byte_for_byte(tmp_path: Path, capsys) -> None:
    src = _two_models(tmp_path / "in", DEEP)
    out = tmp_path / "out"
    assert call(capsys, "convert", src, out, "--scale", "2", "--exclude", "b.*")[0] == 0
    assert (out / "b" / "config.json").read_bytes() == (src / "b" / "config.json").read_bytes()
    # verify reads the weights' manifests, never a config: the broken one changes nothing
    assert call(capsys, "verify", src, out)[0] == 0


def test_a_config_beside_a_lone_file_is_not_part_of_the_input(tmp_path: Path, capsys) -> None:
    src = save({"conv.weight": torch.randn(2, 2, 3, 3)}, tmp_path / "model.safetensors")
    _write(tmp_path / "config.json", DEEP)
    assert call(capsys, "convert", src, tmp_path / "out.safetensors", "--scale", "2")[0] == 0


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sd")
    P.sd_pipeline(root / "build").save_pretrained(root / "sd")
    return root / "sd"


def _broken_copy(sd_folder: Path, tmp_path: Path, rel: str) -> Path:
    src = tmp_path / "sd"
    shutil.copytree(sd_folder, src)
    _write(src / rel, DEEP)
    return src


@pytest.mark.parametrize("rel, needle", [
    ("model_index.json", "model_index.json is JSON nested too deeply to parse; kernelscale reads it to find a diffusers "
                         "pipeline's denoiser"),
    ("unet/config.json", "config.json is JSON nested too deeply to parse; kernelscale reads it for the denoiser's"),
])
def test_a_pipeline_file_that_decides_the_conversion_must_parse(sd_folder: Path, tmp_path: Path, capsys, rel: str,
                                                               needle: str) -> None:
    src = _broken_copy(sd_folder, tmp_path, rel)
    line = one_error_line(capsys, "convert", src, tmp_path / "out", "--scale", "2", needle=needle)
    assert str(src / rel) in line and not (tmp_path / "out").exists()
    one_error_line(capsys, "inspect", src, "--scale", "2", needle=needle)


def test_another_component_s_config_is_copied_byte_for_byte(sd_folder: Path, tmp_path: Path, capsys) -> None:
    """Only the denoiser is resized in a pipeline folder: the VAE's config is not read."""
    src = _broken_copy(sd_folder, tmp_path, "vae/config.json")
    out = tmp_path / "out"
    assert call(capsys, "convert", src, out, "--scale", "2")[0] == 0
    assert (out / "vae" / "config.json").read_bytes() == (src / "vae" / "config.json").read_bytes()
    assert call(capsys, "verify", src, out)[0] == 0


def test_verify_reads_no_config(sd_folder: Path, tmp_path: Path, capsys) -> None:
    """verify certifies weights from their manifests: configs it cannot parse, on either side, change nothing."""
    out = tmp_path / "out"
    assert call(capsys, "convert", sd_folder, out, "--scale", "2")[0] == 0
    src = tmp_path / "sd"
    shutil.copytree(sd_folder, src)
    for root in (src, out):
        for rel in ("model_index.json", "unet/config.json", "vae/config.json"):
            _write(root / rel, DEEP)
    code, stdout, _ = call(capsys, "verify", src, out)
    assert code == 0 and "unet/kernelscale_model.safetensors" in stdout


@pytest.mark.parametrize("rel, needle", [("model_index.json", "not a diffusers pipeline folder"),
                                         ("unet/config.json", "no readable config.json")])
def test_the_loaders_refuse_a_json_file_they_cannot_parse(sd_folder: Path, tmp_path: Path, capsys, rel: str, needle: str) -> None:
    """load_pipeline and load_denoiser read the same files: an InvalidCheckpointError naming the
    folder and the cause, never a RecursionError."""
    from kernelscale.errors import InvalidCheckpointError
    from kernelscale.integrations.diffusers import load_denoiser, load_pipeline

    out = tmp_path / "out"
    assert call(capsys, "convert", sd_folder, out, "--scale", "2")[0] == 0
    _write(out / rel, DEEP)
    with pytest.raises(InvalidCheckpointError, match=f"{needle} .*nested too deeply to parse"):
        load_pipeline(out) if rel == "model_index.json" else load_denoiser(out / "unet")
