"""Diffusion checkpoints (DESIGN §11) on the tiny pipelines of tests/pipelines.py."""

from __future__ import annotations

from pathlib import Path

import pytest

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import pipelines as P  # noqa: E402
from kernelscale.errors import InvalidCheckpointError  # noqa: E402

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
