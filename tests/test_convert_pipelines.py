"""Diffusion checkpoints (DESIGN §11) on the tiny pipelines of tests/pipelines.py."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import pipelines as P  # noqa: E402
from kernelscale.cli import main  # noqa: E402
from kernelscale.convert import convert_checkpoint  # noqa: E402
from kernelscale.errors import InvalidCheckpointError  # noqa: E402
from kernelscale.plan import AttentionRule, ResizeOptions  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def sd_folder(tmp_path: Path) -> Path:
    P.sd_pipeline(tmp_path).save_pretrained(tmp_path / "sd")
    return tmp_path / "sd"


# ---------------------------------------------------------------------------------------------
# discovery names the pipeline loader


def test_model_discovery_on_a_pipeline_folder_names_load_pipeline(sd_folder, tmp_path):
    import kernelscale.nn as knn
    from kernelscale.io.discovery import model_files

    with pytest.raises(InvalidCheckpointError, match=r"a diffusers pipeline folder: use "
                                                      r"kernelscale\.integrations\.diffusers\.load_pipeline\(path\)"):
        model_files(sd_folder)
    with pytest.raises(InvalidCheckpointError, match="load_pipeline"):
        knn.load(P.sd_unet(), sd_folder)
    assert model_files(sd_folder / "unet") == [sd_folder / "unet" / "diffusion_pytorch_model.safetensors"]


# ---------------------------------------------------------------------------------------------
# the summary and the loading notes


def call(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


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
