"""Inputs built to break the reader rather than to be converted (issue 14): deeply nested JSON,
manifests of the wrong types, lone surrogates, zero-element tensors with huge dimensions. Each is
an input error, one line and exit 2 (or handled), never an internal error (exit 70)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kernelscale.cli import main
from kernelscale.errors import InvalidCheckpointError, InvalidOptionError
from kernelscale.io.safetensors_io import SafetensorsReader, encode_header
from checkpoints import header_file, save, save_sharded

DEEP = "[" * 100_000 + "]" * 100_000


def call(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_error_line(capsys, *args: object, needle: str = "") -> str:
    code, _, err = call(capsys, *args)
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("kernelscale: error: "), err
    assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture()
def converted(tmp_path: Path, capsys) -> tuple[Path, Path]:
    src = save({"conv.weight": torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(0))}, tmp_path / "in.safetensors")
    out = tmp_path / "out.safetensors"
    assert call(capsys, "convert", src, out, "--scale", "2")[0] == 0
    return src, out


def _with_manifest(src: Path, path: Path, manifest_text: str) -> Path:
    with SafetensorsReader(src) as reader:
        tensors = {name: reader.read_tensor(name) for name in reader.tensors}
    return save(tensors, path, {"kernelscale": manifest_text, "format": "pt"})


def test_a_deeply_nested_shard_index_is_an_input_error(tmp_path: Path, capsys) -> None:
    index = save_sharded({"conv.weight": torch.randn(2, 2, 3, 3)}, tmp_path / "in", shards=1)
    index.write_text('{"weight_map": ' + DEEP + "}")
    one_error_line(capsys, "convert", index, tmp_path / "out", "--scale", "2", needle="nested too deeply")
    one_error_line(capsys, "inspect", tmp_path / "in", needle="nested too deeply")


def test_a_deeply_nested_config_json_of_a_resized_model_is_an_input_error(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    save({"conv_in.weight": torch.randn(2, 2, 3, 3)}, folder / "model.safetensors")
    (folder / "config.json").write_text('{"conv_in_kernel": ' + DEEP + "}")
    one_error_line(capsys, "convert", folder, tmp_path / "out", "--scale", "2", needle="config.json is JSON nested too deeply")
    assert not (tmp_path / "out").exists()  # more cases: tests/test_folder_configs.py


@pytest.mark.parametrize("manifest, needle", [
    (DEEP, "nested too deeply"),
    ('{"format_version": 1, "tensors": {"conv.weight": {"kind": "conv", "scale": "2", "old_spatial": [3, 3], '
     '"new_spatial": [7, 7]}}}', "scale must be a list of positive numbers, got '2'"),
    ('{"format_version": 1, "tensors": {"conv.weight": {"kind": "conv", "scale": [2, 2], "old_spatial": 3, '
     '"new_spatial": [7, 7]}}}', "old_spatial must be a list of positive integers, got 3"),
    ('{"format_version": 1, "tensors": {"conv.weight": {"kind": "grid", "scale": [2, 2], "grid": [1, 2], '
     '"old_spatial": [3, 3], "new_spatial": [7, 7]}}}', "grid must be [C, *spatial] with one size per axis of old_spatial [3, 3], got [1, 2]"),
    ('{"format_version": 1, "tensors": {"fc.weight": {"kind": "grid", "scale": [2, 2], "grid": [1, 2, 2], "layout": "HXC", '
     '"old_spatial": [2, 2], "new_spatial": [4, 4]}}}', "grid layout 'HXC'"),
    ('{"format_version": 1, "tensors": {"conv.weight": {"kind": "attention", "factor": "x"}}}', "factor must be a finite number, got 'x'"),
    ('{"format_version": 1, "tensors": {"conv.weight": {"kind": ["conv"]}}}', "unknown kind"),
    ('{"format_version": 1, "tensors": {"conv.weight": 3}}', "unknown kind"),
    ('{"format_version": 1, "tensors": [], "options": {}}', "no 'tensors' table"),
    ('{"format_version": 1, "tensors": {}, "options": []}', "'options' is a list"),
])
def test_a_malformed_manifest_is_an_input_error(tmp_path: Path, capsys, converted, manifest: str, needle: str) -> None:
    src, out = converted
    bad = _with_manifest(out, tmp_path / "bad.safetensors", manifest)
    one_error_line(capsys, "inspect", bad, needle=needle)
    one_error_line(capsys, "inspect", bad, "--json", needle=needle)
    one_error_line(capsys, "verify", src, bad, needle=needle)


def test_nn_load_refuses_a_deeply_nested_manifest(tmp_path: Path, converted) -> None:
    from kernelscale import nn as ks_nn

    _, out = converted
    bad = _with_manifest(out, tmp_path / "bad.safetensors", DEEP)
    model = torch.nn.Sequential()
    model.add_module("conv", torch.nn.Conv2d(2, 4, 3))
    with pytest.raises(InvalidCheckpointError, match="nested too deeply"):
        ks_nn.load(model, bad)

@pytest.mark.parametrize("header", [
    b'{"t\\ud800":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
    b'{"__metadata__":{"note":"x\\udfff"},"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
    b'{"__metadata__":{"\\ud800":"x"},"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
])
def test_lone_surrogates_are_refused_by_the_reader(tmp_path: Path, capsys, header: bytes) -> None:
    path = header_file(tmp_path / "s.safetensors", header, bytes(4), pad=True)
    for args in (("inspect", path), ("inspect", path, "--json"), ("convert", path, tmp_path / "o.safetensors", "--scale", "2")):
        one_error_line(capsys, *args, needle="lone surrogate")


def test_a_surrogate_pair_is_one_character_and_accepted(tmp_path: Path) -> None:
    path = header_file(tmp_path / "p.safetensors", b'{"t\\ud83d\\ude00":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', bytes(4), pad=True)
    with SafetensorsReader(path) as reader:
        assert list(reader.tensors) == ["t\U0001F600"]


@pytest.mark.parametrize("shape", [[0, 2 ** 62, 3, 3], [0, 2 ** 63, 1], [2 ** 32, 2 ** 32, 0], [0, 2 ** 64], [0, 2 ** 70]])
def test_zero_element_tensors_beyond_int64_strides_are_refused(tmp_path: Path, capsys, shape: list[int]) -> None:
    header = json.dumps({"e.weight": {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}}).encode()
    path = header_file(tmp_path / "z.safetensors", header, pad=True)
    with pytest.raises(InvalidCheckpointError, match="extent"):
        SafetensorsReader(path)
    one_error_line(capsys, "convert", path, tmp_path / "o.safetensors", "--scale", "2", needle="extent")
    with pytest.raises(InvalidOptionError, match="extent"):
        encode_header([("e.weight", "F32", shape)])


def test_zero_element_kernels_with_huge_dimensions_convert_and_verify(tmp_path: Path, capsys) -> None:
    specs = [("big.weight", "F32", (0, 2 ** 40, 3, 3)), ("over.weight", "F32", (0, 2 ** 58, 3, 3))]
    head, _ = encode_header(specs)
    src = tmp_path / "z.safetensors"
    src.write_bytes(head)
    # 2**58·9 fits int64 strides, the resized 2**58·49 would not: refused before anything is written
    one_error_line(capsys, "convert", src, tmp_path / "o.safetensors", "--scale", "2", needle="'over.weight' would have shape")
    head, _ = encode_header(specs[:1])
    src.write_bytes(head)
    out = tmp_path / "o.safetensors"
    assert call(capsys, "convert", src, out, "--scale", "2")[0] == 0
    code, stdout, stderr = call(capsys, "verify", src, out, "--json")
    assert code == 0, stderr
    layer = json.loads(stdout)["layers"][0]
    assert layer["name"] == "big.weight" and layer["structure_error"] == 0.0
