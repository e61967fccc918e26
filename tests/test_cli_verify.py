"""kernelscale verify and convert --verify, through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kernelscale.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits_cnn.safetensors"


@pytest.fixture()
def dilated(tmp_path):
    out = tmp_path / "x2.safetensors"
    assert main(["convert", str(EXAMPLE), str(out), "--scale", "2", "--method", "dilate"]) == 0
    return out


def test_verify_reports_every_recorded_layer(dilated, capsys):
    assert main(["verify", str(EXAMPLE), str(dilated), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [layer["name"] for layer in data["layers"]] == ["conv1.weight", "conv2.weight"]
    assert all(layer["structure_error"] < 1e-12 for layer in data["layers"])  # T1


def test_tol_sets_the_exit_status(tmp_path, capsys):
    out = tmp_path / "x2.safetensors"
    assert main(["convert", str(EXAMPLE), str(out), "--scale", "2", "--verify", "--tol", "0.5"]) == 0
    assert main(["verify", str(EXAMPLE), str(out), "--tol", "1e-6"]) == 1
    err = capsys.readouterr().err
    assert "conv1.weight: structure error" in err and "exceeds --tol 1e-06" in err


def test_a_file_without_manifest_is_one_line_and_exit_2(capsys):
    assert main(["verify", str(EXAMPLE), str(EXAMPLE)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kernelscale: error:") and "manifest" in err[0]


def test_bad_band_is_refused(dilated, capsys):
    assert main(["verify", str(EXAMPLE), str(dilated), "--band", "0.7"]) == 2
    assert "band" in capsys.readouterr().err
