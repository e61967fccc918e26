"""kernelscale verify and convert --verify, through the command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import safetensors.torch

from kernelscale.cli import main
from checkpoints import leftovers, sha256

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


# --- the layouts convert writes; every verify option checked before anything is written ------------


def call(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_convert_verify_and_verify_read_a_pipeline_folder(tmp_path, capsys):
    from test_verify import UNET_SHARDS, VAE_FILES, _pipeline

    src, out = _pipeline(tmp_path / "pipe"), tmp_path / "p3"
    code, stdout, _ = call(capsys, "convert", src, out, "--scale", "2", "--verify", "--json")
    assert code == 0
    summary = json.loads(stdout)  # one JSON document: the summary, with the report in it
    assert summary["tensors_resized"] == 4
    assert [(f["rel"], f["layers"]) for f in summary["verify"]["files"]] == [(rel, 1) for rel in UNET_SHARDS + VAE_FILES]
    code, stdout, stderr = call(capsys, "verify", src, out, "--tol", "1e-6")
    assert code == 1 and f"== {VAE_FILES[0]} ==" in stdout
    assert f"kernelscale: {VAE_FILES[0]}: conv1.weight: structure error" in stderr
    code, stdout, _ = call(capsys, "verify", src / "vae", out / "vae", "--json")
    assert code == 0 and [layer["file"] for layer in json.loads(stdout)["layers"]] == [f[4:] for f in VAE_FILES]


def _digits(tmp_path):
    src = tmp_path / "d.safetensors"
    shutil.copyfile(EXAMPLE, src)
    return src


def _one_error_line(stderr):
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kernelscale: error: ") and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.mark.parametrize("flags, needle", [
    (["--tol", "0.001"], "exceeds --tol 0.001"),
    (["--band", "0.1"], "band ν₀ = 0.1"),
    (["--probes", "2"], "changed layers"),
    (["--seed", "3"], "changed layers"),
])
def test_any_verify_option_implies_verify(tmp_path, capsys, flags, needle):
    out = tmp_path / "t1.safetensors"
    code, stdout, stderr = call(capsys, "convert", _digits(tmp_path), out, "--scale", "2", *flags)
    assert code == (1 if "--tol" in flags else 0) and out.exists()
    assert needle in stdout + stderr and "conv1.weight" in stdout


BAD_OPTIONS = [
    (["--verify", "--band", "0.9"], "argument --band: band must be in (0, 0.5]"),
    (["--band", "0.9"], "argument --band: band must be in (0, 0.5]"),
    (["--band", "0"], "argument --band: band must be"),
    (["--band", "wide"], "argument --band: expected a number in (0, 0.5], got 'wide'"),
    (["--seed", "-1"], "argument --seed: seed must be an integer >= 0, got -1"),
    (["--seed", "1.5"], "argument --seed: expected an integer >= 0, got '1.5'"),
    (["--probes", "0"], "argument --probes: probes must be an integer >= 1, got 0"),
    (["--probes", "100000000"], "argument --probes: probes must be at most 1000, got 100000000"),
    (["--tol", "-1"], "argument --tol: tol must be a number >= 0, got -1.0"),
    (["--tol", "nan"], "argument --tol: tol must be a number >= 0, got nan"),
]


@pytest.mark.parametrize("flags, needle", BAD_OPTIONS)
def test_bad_verify_option_on_convert_writes_nothing(tmp_path, capsys, flags, needle):
    src = _digits(tmp_path)
    before = sha256(src)
    out = tmp_path / "out.safetensors"
    code, stdout, stderr = call(capsys, "convert", src, out, "--scale", "2", *flags)
    assert code == 2 and stdout == ""
    assert needle in _one_error_line(stderr)
    assert not out.exists() and sha256(src) == before and leftovers(tmp_path) == []


@pytest.mark.parametrize("flags, needle", BAD_OPTIONS[1:])
def test_bad_verify_option_on_verify_is_a_usage_error(dilated, capsys, flags, needle):
    code, stdout, stderr = call(capsys, "verify", EXAMPLE, dilated, *flags)
    assert code == 2 and stdout == "" and needle in _one_error_line(stderr)


def test_orig_and_converted_are_checked_against_the_manifest(tmp_path, capsys):
    from test_verify import _rewrite

    src = _digits(tmp_path)
    out = tmp_path / "x2.safetensors"
    assert main(["convert", str(src), str(out), "--scale", "2"]) == 0
    orig_2x2 = _rewrite(src, tmp_path / "orig_2x2.safetensors",
                        tensors={"conv1.weight": safetensors.torch.load_file(str(src))["conv1.weight"][:, :, :2, :2].contiguous()})
    capsys.readouterr()
    code, stdout, stderr = call(capsys, "verify", orig_2x2, out)
    assert code == 2 and stdout == ""
    assert f"ORIG conv1.weight is 2×2 but the manifest of {out} records 3×3 (is ORIG the checkpoint that was converted?)" \
        in _one_error_line(stderr)
    claims_9x9 = _rewrite(out, tmp_path / "claims_9x9.safetensors", manifest={"conv1.weight": {"new_spatial": [9, 9]}})
    code, stdout, stderr = call(capsys, "verify", src, claims_9x9)
    assert code == 2 and stdout == "" and "CONVERTED conv1.weight is 7×7 but its manifest records 9×9" in _one_error_line(stderr)


# --- weight norm's g, non-finite values, strict JSON ------------------------------------------------


def test_verify_sees_weight_norm_g(tmp_path, capsys):
    from safetensors.torch import load_file
    from test_verify import WN_LAYERS, _rewrite, _scaled_g, _weight_normed_stack

    src, out = _weight_normed_stack(tmp_path), tmp_path / "x2.safetensors"
    assert main(["convert", str(src), str(out), "--scale", "2"]) == 0
    code, stdout, _ = call(capsys, "verify", src, out, "--tol", "0.3")
    assert code == 0 and "0.weight_v (weight norm)" in stdout
    # the reviewer's repro: every g × 10, metadata kept
    code, stdout, stderr = call(capsys, "verify", src, _scaled_g(out, tmp_path / "x2_g10.safetensors", 10), "--tol", "0.3")
    assert code == 1
    for v, *_ in WN_LAYERS:
        assert f"kernelscale: {v} (weight norm): structure error" in stderr
    # a g of the wrong shape: one line, exit 2
    cut = _rewrite(out, tmp_path / "cut.safetensors", tensors={"0.weight_g": load_file(str(out))["0.weight_g"][:4]})
    code, stdout, stderr = call(capsys, "verify", src, cut)
    assert code == 2 and stdout == ""
    assert f"{cut}: CONVERTED 0.weight_g is 4×1×1 but ORIG's is 8×1×1" in _one_error_line(stderr)


def _with_non_finite(src, dst):
    from test_verify import _rewrite

    sd = safetensors.torch.load_file(str(src))
    conv2 = sd["conv2.weight"].clone()
    conv2[0, 0, 0, 0] = float("nan")
    return _rewrite(src, dst, tensors={"conv1.weight": sd["conv1.weight"] * 1e308, "conv2.weight": conv2})  # float32: inf


def _strict_json(text):
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_converted_values_fail_with_or_without_tol(tmp_path, capsys):
    out = tmp_path / "x2.safetensors"
    assert main(["convert", str(EXAMPLE), str(out), "--scale", "2"]) == 0
    bad = _with_non_finite(out, tmp_path / "bad.safetensors")
    capsys.readouterr()
    for flags in ([], ["--tol", "0.5"]):
        code, stdout, stderr = call(capsys, "verify", EXAMPLE, bad, *flags)
        assert code == 1, flags
        row = next(line for line in stdout.splitlines() if line.startswith("conv1.weight"))
        assert "NaN" in row and "CONVERTED holds 784 non-finite values" in row
        assert "kernelscale: conv1.weight: CONVERTED holds 784 non-finite values (inf or NaN) where ORIG's are all finite" in stderr
        assert "kernelscale: conv2.weight: CONVERTED holds 1 non-finite value" in stderr
    code, stdout, _ = call(capsys, "verify", EXAMPLE, bad, "--json")
    data = _strict_json(stdout)
    assert code == 1 and data["failures"] == ["conv1.weight", "conv2.weight"]
    assert data["layers"][0]["structure_error"] is None and data["layers"][0]["nonfinite"] == 784
    # convert --json puts the same report into its summary: strict JSON too
    code, stdout, _ = call(capsys, "convert", EXAMPLE, tmp_path / "again.safetensors", "--scale", "2", "--verify", "--json")
    assert code == 0 and _strict_json(stdout)["verify"]["failures"] == []


def test_zero_sum_kernel_dc_gain_is_null_not_nan(tmp_path, capsys):
    import torch

    sobel = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]])
    src = tmp_path / "sobel.safetensors"
    safetensors.torch.save_file({"edge.weight": torch.stack([sobel, sobel.T]).unsqueeze(1).contiguous()}, str(src))
    out = tmp_path / "sobel_x2.safetensors"
    assert main(["convert", str(src), str(out), "--scale", "2"]) == 0
    capsys.readouterr()
    code, stdout, _ = call(capsys, "verify", src, out, "--json", "--tol", "0.5")
    data = _strict_json(stdout)
    assert code == 0 and data["layers"][0]["dc_gain_ratio"] is None and data["failures"] == []
    code, stdout, _ = call(capsys, "verify", src, out, "--tol", "0.5")
    assert code == 0 and stdout.splitlines()[1].endswith("undef")


def test_json_output_refuses_nan():
    from kernelscale.cli_verify import dumps

    with pytest.raises(ValueError):
        dumps({"structure_error": float("nan")})
