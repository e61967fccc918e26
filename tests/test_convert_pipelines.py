"""``kernelscale convert`` on diffusion checkpoints (kernelscale.pipeline_layout, DESIGN §11):
a diffusers pipeline folder and a single file in the original layout, on the tiny pipelines of
tests/pipelines.py.

What the assertions rest on: the converter and ``supersample_pipeline`` run the same plan on the
same weights, so with the same rules their denoisers are equal bit for bit (and so are the images
they generate); components that are not resized are copied, so their files (folder) or tensors
(single file) are byte-identical to the input's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import pipelines as P  # noqa: E402
from checkpoints import save_sharded  # noqa: E402
from kernelscale.cli import main  # noqa: E402
from kernelscale.convert import convert_checkpoint  # noqa: E402
from kernelscale.errors import InvalidCheckpointError, InvalidOptionError, UnsupportedDenoiserError  # noqa: E402
from kernelscale.integrations.diffusers import (  # noqa: E402
    WEIGHTS_NAME, load_denoiser, load_pipeline, pipeline_options, supersample_pipeline,
)
from kernelscale.io.safetensors_io import read_header  # noqa: E402
from kernelscale.plan import ResizeOptions  # noqa: E402
from kernelscale.options import AttentionRule

pytestmark = pytest.mark.usefixtures("one_thread")


def states(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same_state(module, expected: dict[str, torch.Tensor]) -> bool:
    got = module.state_dict()
    return got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)


def call(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def sd_folder(tmp_path: Path) -> Path:
    P.sd_pipeline(tmp_path).save_pretrained(tmp_path / "sd")
    return tmp_path / "sd"


def supersampled(tmp_path: Path, **options):
    pipe = P.sd_pipeline(tmp_path)
    supersample_pipeline(pipe, 2, **options)
    return pipe


# ---------------------------------------------------------------------------------------------
# 1. the denoiser only; the other components byte for byte


def test_pipeline_folder_resizes_the_denoiser_only_and_copies_every_other_file(sd_folder, tmp_path):
    out = tmp_path / "x2"
    summary = convert_checkpoint(sd_folder, out, ResizeOptions(scale=2), progress=False)
    before, after = files_under(sd_folder), files_under(out)
    for rel, data in before.items():
        if not rel.startswith("unet/"):
            assert after[rel] == data, rel  # vae, text encoder, tokenizer, scheduler, model_index.json
    assert {rel for rel in after if not rel.startswith("unet/")} == {rel for rel in before if not rel.startswith("unet/")}
    assert "vae/diffusion_pytorch_model.safetensors" in summary.copied_files
    note = next(n for n in summary.notes if n.startswith("resizing the denoiser"))
    assert "text_encoder, vae copied byte for byte" in note and "--include GLOB" in note
    assert [f["output"] for f in summary.files] == ["unet/" + WEIGHTS_NAME]


def test_include_overrides_the_default_and_exclude_applies_on_top(sd_folder, tmp_path):
    every = convert_checkpoint(sd_folder, tmp_path / "all", ResizeOptions(scale=2, include=("*",)), progress=False)
    assert "vae/diffusion_pytorch_model.safetensors" in [f["output"] for f in every.files]  # the VAE resized: asked for
    _, vae = read_header(tmp_path / "all" / "vae" / "diffusion_pytorch_model.safetensors")
    assert vae["encoder.conv_in.weight"].shape[2:] == (7, 7)
    assert (tmp_path / "all" / "unet" / WEIGHTS_NAME).is_file()

    convert_checkpoint(sd_folder, tmp_path / "ex", ResizeOptions(scale=2, exclude=("conv_in",)), progress=False)
    _, unet = read_header(tmp_path / "ex" / "unet" / WEIGHTS_NAME)
    assert unet["conv_in.weight"].shape[2:] == (3, 3) and unet["conv_out.weight"].shape[2:] == (7, 7)
    assert files_under(tmp_path / "ex")["vae/diffusion_pytorch_model.safetensors"] == \
        (sd_folder / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()


def test_a_transformer_denoiser_is_refused_by_name_unless_include_says_what_to_resize(tmp_path):
    from safetensors.torch import save_file

    root = tmp_path / "sd3"
    (root / "transformer").mkdir(parents=True)
    save_file({"pos_embed.proj.weight": torch.randn(8, 4, 2, 2)}, str(root / "transformer" / "diffusion_pytorch_model.safetensors"))
    (root / "transformer" / "config.json").write_text(json.dumps({"_class_name": "SD3Transformer2DModel", "sample_size": 8}))
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline",
                                                        "transformer": ["diffusers", "SD3Transformer2DModel"]}))
    with pytest.raises(UnsupportedDenoiserError, match="'transformer' is a SD3Transformer2DModel, a transformer"):
        convert_checkpoint(root, tmp_path / "out", ResizeOptions(scale=2), progress=False)
    assert not (tmp_path / "out").exists()
    summary = convert_checkpoint(root, tmp_path / "out", ResizeOptions(scale=2, include=("pos_embed.*",)), progress=False)
    assert summary.tensors_resized == 1  # what the user asked for, under the stock name (no denoiser surgery record)
    assert (tmp_path / "out" / "transformer" / "diffusion_pytorch_model.safetensors").is_file()


# ---------------------------------------------------------------------------------------------
# 2. kernelscale_model.safetensors, the config record, stock from_pretrained refuses


def test_the_denoiser_is_written_as_kernelscale_model_with_the_save_paths_config(sd_folder, tmp_path):
    out = tmp_path / "x2"
    options = pipeline_options(sd_folder, ResizeOptions(scale=2))
    convert_checkpoint(sd_folder, out, options, progress=False)
    assert sorted(p.name for p in (out / "unet").iterdir()) == ["config.json", WEIGHTS_NAME]
    # one writer: the config convert writes is the one save_pretrained of a supersampled pipeline writes
    pipe = supersampled(tmp_path)
    pipe.save_pretrained(tmp_path / "saved")
    assert (out / "unet" / "config.json").read_bytes() == (tmp_path / "saved" / "unet" / "config.json").read_bytes()
    config = json.loads((out / "unet" / "config.json").read_text())
    assert config["sample_size"] == 2 * P.SAMPLE_SIZE and config["_kernelscale"]["trained_sample_size"] == P.SAMPLE_SIZE
    assert json.loads((out / "vae" / "config.json").read_text()) == json.loads((sd_folder / "vae" / "config.json").read_text())
    loaded = load_pipeline(out)
    assert same_state(loaded.unet, states(pipe.unet))
    assert torch.equal(P.generate(loaded, None), P.generate(pipe, None))


def test_a_sharded_denoiser_gets_kernelscale_shards_and_index(tmp_path):
    pipe = P.sd_pipeline(tmp_path)
    pipe.save_pretrained(tmp_path / "sd")
    unet = tmp_path / "sd" / "unet"
    for stale in unet.glob("diffusion_pytorch_model*"):
        stale.unlink()
    save_sharded({k: v.contiguous() for k, v in pipe.unet.state_dict().items()}, unet, shards=3, stem="diffusion_pytorch_model")
    out = tmp_path / "x2"
    convert_checkpoint(tmp_path / "sd", out, pipeline_options(tmp_path / "sd", ResizeOptions(scale=2)), progress=False)
    names = sorted(p.name for p in (out / "unet").iterdir())
    assert names == ["config.json", "kernelscale_model-00001-of-00003.safetensors", "kernelscale_model-00002-of-00003.safetensors",
                     "kernelscale_model-00003-of-00003.safetensors", "kernelscale_model.safetensors.index.json"]
    index = json.loads((out / "unet" / "kernelscale_model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(names[1:4]) and index["metadata"]["note"] == "kept"
    loaded = load_pipeline(out)
    assert same_state(loaded.unet, states(supersampled(tmp_path).unet))


def test_another_weight_set_of_the_denoiser_is_left_out_with_a_note(tmp_path):
    pipe = P.sd_pipeline(tmp_path)
    pipe.save_pretrained(tmp_path / "sd")
    pipe.save_pretrained(tmp_path / "sd", variant="fp16")  # diffusion_pytorch_model.fp16.safetensors beside each
    out = tmp_path / "x2"
    summary = convert_checkpoint(tmp_path / "sd", out, ResizeOptions(scale=2), progress=False)
    assert sorted(p.name for p in (out / "unet").iterdir()) == ["config.json", WEIGHTS_NAME]
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in summary.skipped_files
    assert any("other weight sets of the denoiser" in n for n in summary.notes)
    assert (out / "vae" / "diffusion_pytorch_model.fp16.safetensors").read_bytes() == \
        (tmp_path / "sd" / "vae" / "diffusion_pytorch_model.fp16.safetensors").read_bytes()


def test_geometry_only_output_fails_under_stock_from_pretrained_and_loads_through_load_pipeline(sd_folder, tmp_path, capsys):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    out = tmp_path / "dilated"
    code, _, stderr = call(capsys, "convert", sd_folder, out, "--scale", "2", "--geometry-only")
    assert code == 0, stderr
    _, weights = read_header(out / "unet" / WEIGHTS_NAME)
    _, original = read_header(sd_folder / "unet" / "diffusion_pytorch_model.safetensors")
    assert {n: t.shape for n, t in weights.items()} == {n: t.shape for n, t in original.items()}  # 3×3 kept: only dilation
    with pytest.raises(OSError, match="diffusion_pytorch_model"):
        StableDiffusionPipeline.from_pretrained(out)
    with pytest.raises(OSError, match="diffusion_pytorch_model"):
        UNet2DConditionModel.from_pretrained(out / "unet")
    loaded = load_pipeline(out)
    assert loaded.unet.down_blocks[0].resnets[0].conv1.dilation == (2, 2)
    direct = supersampled(tmp_path, geometry_only=True, attention=None)
    assert torch.equal(P.generate(loaded, None), P.generate(direct, None))


# ---------------------------------------------------------------------------------------------
# 3. the aligned downsamplers and the attention temperature by default; --attention, --config


def test_cli_default_on_a_pipeline_folder_matches_supersample_pipeline(sd_folder, tmp_path, capsys):
    out = tmp_path / "x2"
    code, _, stderr = call(capsys, "convert", sd_folder, out, "--scale", "2")
    assert code == 0, stderr
    assert "half a high-res pixel off" not in stderr  # the aligned rule was applied
    loaded = load_pipeline(out)
    direct = supersampled(tmp_path)  # its defaults: aligned downsamplers, attention "auto"
    assert loaded.unet.down_blocks[0].downsamplers[0].conv.kernel_size == (6, 6)
    assert same_state(loaded.unet, states(direct.unet))
    assert torch.equal(P.generate(loaded, None), P.generate(direct, None))

    code, _, _ = call(capsys, "convert", sd_folder, tmp_path / "plain", "--scale", "2", "--attention", "none")
    assert code == 0
    assert same_state(load_pipeline(tmp_path / "plain").unet, states(supersampled(tmp_path, attention=None).unet))


def test_sdxl_folder_default_matches_supersample_pipeline(tmp_path, capsys):
    pipe = P.sdxl_pipeline(tmp_path)
    pipe.save_pretrained(tmp_path / "xl")
    code, _, stderr = call(capsys, "convert", tmp_path / "xl", tmp_path / "xl2", "--scale", "2")
    assert code == 0, stderr
    loaded = load_pipeline(tmp_path / "xl2")
    supersample_pipeline(pipe, 2)
    assert same_state(loaded.unet, states(pipe.unet)) and loaded.default_sample_size == 2 * P.SAMPLE_SIZE


def single_file(tmp_path: Path, pipe) -> Path:
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in P.original_file_layout(pipe).items()}, str(path))
    return path


def test_single_file_default_include_and_config_rules(tmp_path, capsys):
    from safetensors import safe_open

    pipe = P.sd_pipeline(tmp_path)
    pipe.save_pretrained(tmp_path / "sd")
    src = single_file(tmp_path, pipe)
    plain = tmp_path / "plain.safetensors"
    code, _, stderr = call(capsys, "convert", src, plain, "--scale", "2")
    assert code == 0, stderr
    assert "resizing the denoiser (model.diffusion_model.*) only" in stderr and "--config FOLDER" in stderr
    with safe_open(str(src), "pt") as before, safe_open(str(plain), "pt") as after:
        others = [k for k in before.keys() if not k.startswith("model.diffusion_model.")]
        assert others and all(torch.equal(before.get_tensor(k), after.get_tensor(k)) for k in others)  # VAE, text encoder
        assert after.get_tensor("model.diffusion_model.input_blocks.0.0.weight").shape[2:] == (7, 7)

    code, _, stderr = call(capsys, "convert", src, tmp_path / "auto.safetensors", "--scale", "2", "--attention", "auto")
    assert code == 2 and "need --config FOLDER" in stderr and not (tmp_path / "auto.safetensors").exists()

    x2 = tmp_path / "x2.safetensors"
    code, _, stderr = call(capsys, "convert", src, x2, "--scale", "2", "--config", tmp_path / "sd")
    assert code == 0, stderr
    assert f"load_pipeline('{x2}', config='FOLDER')" in stderr
    loaded = load_pipeline(x2, config=tmp_path / "sd")
    direct = supersampled(tmp_path)
    assert same_state(loaded.unet, states(direct.unet))
    assert torch.equal(P.generate(loaded, None), P.generate(direct, None))


def test_attention_flag_takes_explicit_rules_and_refuses_nonsense(tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.torch import save_file

    src = tmp_path / "attn.safetensors"
    weight = torch.randn(8, 8)
    save_file({"block.attn1.to_q.weight": weight, "block.attn2.to_q.weight": weight.clone()}, str(src))
    code, stdout, stderr = call(capsys, "convert", src, tmp_path / "o.safetensors", "--scale", "2", "--attention",
                                "*attn1.to_q=64", "--json")
    assert code == 0, stderr
    with safe_open(str(tmp_path / "o.safetensors"), "pt") as f:
        factor = (torch.log(torch.tensor(256.0)) / torch.log(torch.tensor(64.0))).sqrt()
        torch.testing.assert_close(f.get_tensor("block.attn1.to_q.weight"), weight * factor)
        assert torch.equal(f.get_tensor("block.attn2.to_q.weight"), weight)
    summary = json.loads(stdout)
    assert summary["tensors_rescaled"] == 1 and summary["tensors_resized"] == 0
    for flags, needle in ((["--attention", "to_q"], "GLOB=N"), (["--attention", "auto", "--attention", "x=4"], "stands alone"),
                          (["--attention", "auto"], "neither a diffusers pipeline folder")):
        code, _, stderr = call(capsys, "convert", src, tmp_path / "bad.safetensors", "--scale", "2", *flags)
        assert code == 2 and needle in stderr, stderr


def test_pipeline_options_refusals_name_the_fix(sd_folder, tmp_path):
    with pytest.raises(InvalidOptionError, match="--config \\(config=\\) is for single files"):
        pipeline_options(sd_folder, ResizeOptions(scale=2), config=sd_folder)
    pipe = P.sd_pipeline(tmp_path)
    with pytest.raises(InvalidOptionError, match="need --config FOLDER \\(config= in Python\\)"):
        pipeline_options(single_file(tmp_path, pipe), ResizeOptions(scale=2))


# ---------------------------------------------------------------------------------------------
# 4. the summary and the loading notes


def test_attention_rescales_are_counted_apart_from_resized_kernels(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    src = tmp_path / "attn.safetensors"
    weight = torch.randn(8, 8)
    save_file({"block.attn1.to_q.weight": weight, "block.conv.weight": torch.randn(2, 2, 3, 3)}, str(src))
    summary = convert_checkpoint(src, tmp_path / "o.safetensors", ResizeOptions(scale=2, attention=(AttentionRule("*attn1.to_q", 64),)),
                                 progress=False)
    assert (summary.tensors_resized, summary.tensors_rescaled, summary.tensors_copied) == (1, 1, 0)
    assert "1 resized, 1 rescaled (attention temperature)" in summary.describe()
    with safe_open(str(tmp_path / "o.safetensors"), "pt") as f:  # √(log 256 / log 64): the values change, not the shape
        torch.testing.assert_close(f.get_tensor("block.attn1.to_q.weight"), weight * math.sqrt(math.log(256) / math.log(64)))


def test_loading_recipe_names_asymmetric_padding_where_the_kernels_need_it(tmp_path, capsys):
    from safetensors.torch import save_file

    import kernelscale.nn as knn
    from kernelscale.errors import GeometryError

    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.Conv2d(3, 2, 3, padding=1))

    src = tmp_path / "net.safetensors"
    save_file({k: v.contiguous() for k, v in model().state_dict().items()}, str(src))
    for flags, asymmetric in ((["--align", "cells"], True), (["--method", "pinv"], True), ([], False), (["--method", "dilate"], False)):
        out = tmp_path / "out.safetensors"
        code, _, stderr = call(capsys, "convert", src, out, "--scale", "2", "--force", *flags)
        assert code == 0, stderr
        recipe = f"kernelscale.nn.load(model, '{out}'" + (", padding='asymmetric')" if asymmetric else ")")
        assert recipe in stderr, (flags, stderr)
        knn.load(model(), out, **({"padding": "asymmetric"} if asymmetric else {}))  # the recipe works as printed
        if asymmetric:
            with pytest.raises(GeometryError, match="padding='asymmetric'"):
                knn.load(model(), out)  # and is needed
def test_pipeline_folder_note_names_load_pipeline(sd_folder, tmp_path):
    summary = convert_checkpoint(sd_folder, tmp_path / "x2", pipeline_options(sd_folder, ResizeOptions(scale=2)), progress=False)
    assert summary.tensors_rescaled == 4 and summary.tensors_resized == 20  # four self-attentions (to_q has no bias)
    assert "20 resized, 4 rescaled (attention temperature)" in summary.describe()
    load = summary.loading[0]["load"]
    assert load == f"kernelscale.integrations.diffusers.load_pipeline({str(tmp_path / 'x2')!r})"
    assert any(load in n and "stock from_pretrained refuses" in n for n in summary.notes)


# ---------------------------------------------------------------------------------------------
# 5. discovery names the pipeline loader; verify reads the converted folder


def test_model_discovery_on_a_pipeline_folder_names_load_pipeline(sd_folder, tmp_path):
    import kernelscale.nn as knn
    from kernelscale.io.discovery import model_files

    with pytest.raises(InvalidCheckpointError, match=r"a diffusers pipeline folder: use "
                                                      r"kernelscale\.integrations\.diffusers\.load_pipeline\(path\)"):
        model_files(sd_folder)
    with pytest.raises(InvalidCheckpointError, match="load_pipeline"):
        knn.load(P.sd_unet(), sd_folder)
    assert model_files(sd_folder / "unet") == [sd_folder / "unet" / "diffusion_pytorch_model.safetensors"]


def test_verify_pairs_the_renamed_denoiser_and_skips_copied_components(sd_folder, tmp_path, capsys):
    out = tmp_path / "x2"
    code, _, stderr = call(capsys, "convert", sd_folder, out, "--scale", "2", "--verify", "--json")
    assert code == 0, stderr
    code, stdout, stderr = call(capsys, "verify", sd_folder, out, "--json")
    assert code == 0, stderr
    report = json.loads(stdout)
    assert {layer["file"] for layer in report["layers"]} == {"unet/" + WEIGHTS_NAME} and len(report["layers"]) == 20
    assert load_denoiser(out / "unet").config.sample_size == 2 * P.SAMPLE_SIZE


def test_nn_load_of_a_single_file_into_a_diffusers_unet_names_load_denoiser(tmp_path, capsys):
    import kernelscale.nn as knn

    pipe = P.sd_pipeline(tmp_path)
    src = single_file(tmp_path, pipe)
    code, _, stderr = call(capsys, "convert", src, tmp_path / "x2.safetensors", "--scale", "2")
    assert code == 0, stderr
    with pytest.raises(InvalidCheckpointError, match=r"under 'model\.diffusion_model\.' in the original \(LDM\) layout.*"
                                                      r"load_denoiser\(path, config=\.\.\.\)"):
        knn.load(P.sd_unet(), tmp_path / "x2.safetensors")
