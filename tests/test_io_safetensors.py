"""Tests for kernelscale.io.safetensors_io: parity with the reference safetensors library in both
directions, byte-exact determinism, one test per format rule, and a fuzz test that only ever
sees success or InvalidCheckpointError with bounded memory."""

from __future__ import annotations

import io
import json
import pickle
import struct
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open

from checkpoints import raw_safetensors, sha256
from kernelscale.dtypes import dtype_name
from kernelscale.errors import InvalidCheckpointError, InvalidOptionError, UnsupportedTensorError
from kernelscale.io.safetensors_io import (
    DTYPE_ITEMSIZE,
    MAX_HEADER_SIZE,
    SafetensorsReader,
    SafetensorsWriter,
    TensorInfo,
    encode_header,
    read_header,
    torch_dtype,
)

HAS_F8 = hasattr(torch, "float8_e4m3fn")


def _mixed_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    tensors = {
        "conv.weight": torch.randn(4, 3, 3, 3, generator=g),
        "conv.bias": torch.randn(4, generator=g).half(),
        "norm.weight": torch.randn(5, 7, generator=g).to(torch.bfloat16),
        "steps": torch.arange(-3, 6, dtype=torch.int64).reshape(3, 3),
        "mask": torch.tensor([[True, False, True], [False, False, True]]),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "empty": torch.zeros(0, 3, dtype=torch.float32),
    }
    if HAS_F8:
        tensors["fp8.weight"] = torch.randn(2, 3, 3, generator=g).to(torch.float8_e4m3fn)
    return tensors


def _assert_identical(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.contiguous().reshape(-1).view(torch.uint8).tolist() == (
        b.contiguous().reshape(-1).view(torch.uint8).tolist()
    )


def _specs(tensors: dict[str, torch.Tensor]) -> list[tuple[str, str, tuple[int, ...]]]:
    return [(name, dtype_name(t.dtype), tuple(t.shape)) for name, t in tensors.items()]


def _write(path: Path, tensors: dict[str, torch.Tensor], metadata=None) -> None:
    with SafetensorsWriter(path, _specs(tensors), metadata) as writer:
        for name, t in tensors.items():
            writer.write_tensor(name, t)
# --- parity with the reference implementation ------------------------------------------------


def test_reads_what_safetensors_wrote(tmp_path: Path) -> None:
    tensors = _mixed_tensors()
    metadata = {"format": "pt", "author": "kernelscale tests", "ünïcode": "✓"}
    path = tmp_path / "ref.safetensors"
    safetensors.torch.save_file(tensors, path, metadata=metadata)
    blob = path.read_bytes()

    with SafetensorsReader(path) as reader:
        assert reader.metadata == metadata
        assert set(reader.tensors) == set(tensors)
        starts = [info.start for info in reader.tensors.values()]
        assert starts == sorted(starts)
        for name, expected in tensors.items():
            info = reader.tensors[name]
            assert info.dtype == dtype_name(expected.dtype)
            assert info.shape == tuple(expected.shape)
            assert info.nbytes == expected.numel() * expected.element_size()
            _assert_identical(reader.read_tensor(name), expected)
            assert reader.read_bytes(name) == blob[info.start : info.end]
            assert b"".join(reader.iter_chunks(name, chunk_size=5)) == blob[info.start : info.end]
            assert all(len(c) <= 5 for c in reader.iter_chunks(name, chunk_size=5))
    assert read_header(path) == (metadata, reader.tensors)


def test_safetensors_reads_what_we_wrote(tmp_path: Path) -> None:
    tensors = _mixed_tensors()
    path = tmp_path / "ours.safetensors"
    _write(path, tensors, {"kernelscale": '{"version":1}', "source": "unit test"})

    loaded = safetensors.torch.load_file(path)
    assert set(loaded) == set(tensors)
    for name, expected in tensors.items():
        _assert_identical(loaded[name], expected)
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {
            "format": "pt",
            "kernelscale": '{"version":1}',
            "source": "unit test",
        }
        assert list(f.keys()) == sorted(tensors)


def test_writer_layout_matches_reference_conventions(tmp_path: Path) -> None:
    path = tmp_path / "small.safetensors"
    _write(
        path,
        {"b": torch.ones(2, dtype=torch.float16), "a": torch.zeros(1, 3)},
        {"z": "1", "a": "2"},
    )
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    assert n % 8 == 0
    header = blob[8 : 8 + n]
    expected = (
        b'{"__metadata__":{"a":"2","format":"pt","z":"1"},'
        b'"b":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},'
        b'"a":{"dtype":"F32","shape":[1,3],"data_offsets":[4,16]}}'
    )
    assert header == expected + b" " * (n - len(expected))
    assert len(blob) == 8 + n + 16
    head, infos = encode_header([("b", "F16", (2,)), ("a", "F32", [1, 3])], {"z": "1", "a": "2"})
    assert head == blob[: 8 + n]
    assert [(i.name, i.start, i.end) for i in infos] == [
        ("b", 8 + n, 12 + n),
        ("a", 12 + n, 24 + n),
    ]


def test_caller_format_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "np.safetensors"
    _write(path, {"x": torch.ones(1)}, {"format": "np"})
    assert read_header(path)[0] == {"format": "np"}


def test_output_is_deterministic(tmp_path: Path) -> None:
    tensors = _mixed_tensors()
    meta = {"b": "2", "a": "1", "c": "3"}
    _write(tmp_path / "1.safetensors", tensors, meta)
    _write(tmp_path / "2.safetensors", dict(tensors), dict(reversed(list(meta.items()))))
    assert sha256(tmp_path / "1.safetensors") == sha256(tmp_path / "2.safetensors")


def test_raw_copy_preserves_bf16_bytes_exactly(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    bits = torch.randint(-(2**15), 2**15, (37, 11), dtype=torch.int16, generator=g)
    tensors = {"w": bits.view(torch.bfloat16), "b": torch.randn(11, generator=g).to(torch.bfloat16)}
    src = tmp_path / "src.safetensors"
    dst = tmp_path / "dst.safetensors"
    safetensors.torch.save_file(tensors, src, metadata={"k": "v"})
    with SafetensorsReader(src) as reader:
        specs = [(i.name, i.dtype, i.shape) for i in reader.tensors.values()]
        with SafetensorsWriter(dst, specs, reader.metadata) as writer:
            for name in reader.tensors:
                writer.write_raw(name, reader.iter_chunks(name, chunk_size=7))
    loaded = safetensors.torch.load_file(dst)
    for name, expected in tensors.items():
        _assert_identical(loaded[name], expected)

    copy = tmp_path / "copy.safetensors"
    with SafetensorsReader(dst) as reader, SafetensorsWriter(copy, specs, reader.metadata) as w:
        for name in reader.tensors:
            w.write_raw(name, reader.iter_chunks(name, chunk_size=3))
    assert copy.read_bytes() == dst.read_bytes()


def test_writer_on_file_object_leaves_it_open(tmp_path: Path) -> None:
    path = tmp_path / "fo.safetensors"
    with open(path, "wb") as f:
        with SafetensorsWriter(f, [("x", "I32", (3,))]) as writer:
            writer.write_tensor("x", torch.tensor([1, 2, 3], dtype=torch.int32))
            writer.fsync()
        assert not f.closed
        assert f.tell() == writer.file_size
    assert safetensors.torch.load_file(path)["x"].tolist() == [1, 2, 3]


def test_dtype_maps_are_inverse() -> None:
    for name in DTYPE_ITEMSIZE:
        try:
            dtype = torch_dtype(name)
        except InvalidCheckpointError:
            continue
        assert dtype_name(dtype) == name
        assert torch.empty(0, dtype=dtype).element_size() == DTYPE_ITEMSIZE[name]
    with pytest.raises(InvalidCheckpointError, match="unknown"):
        torch_dtype("F4")
    with pytest.raises(UnsupportedTensorError, match="no safetensors name"):
        dtype_name(torch.complex64)


# --- writer misuse -------------------------------------------------------------------------


def test_writer_rejects_misuse(tmp_path: Path) -> None:
    specs = [("a", "F32", (2,)), ("b", "BF16", (3,))]
    path = tmp_path / "w.safetensors"
    with pytest.raises(InvalidOptionError, match="unknown dtype"):
        SafetensorsWriter(path, [("a", "F31", (1,))])
    with pytest.raises(InvalidOptionError, match="twice"):
        SafetensorsWriter(path, [("a", "F32", (1,)), ("a", "F32", (1,))])
    with pytest.raises(InvalidOptionError, match="name"):
        SafetensorsWriter(path, [("__metadata__", "F32", (1,))])
    with pytest.raises(InvalidOptionError, match="strings"):
        SafetensorsWriter(path, specs, {"a": 1})  # type: ignore[dict-item]

    writer = SafetensorsWriter(path, specs)
    with pytest.raises(InvalidOptionError, match="out of order"):
        writer.write_tensor("b", torch.zeros(3, dtype=torch.bfloat16))
    with pytest.raises(InvalidOptionError, match="declared F32 but is F16"):
        writer.write_tensor("a", torch.zeros(2, dtype=torch.float16))
    with pytest.raises(InvalidOptionError, match="bytes"):
        writer.write_tensor("a", torch.zeros(3))
    writer.write_tensor("a", torch.zeros(1, 2))
    with pytest.raises(InvalidOptionError, match="already written"):
        writer.write_tensor("a", torch.zeros(2))
    with pytest.raises(InvalidOptionError, match="exceeds"):
        writer.write_raw("b", [b"\0" * 4, b"\0" * 4])
    with pytest.raises(InvalidOptionError, match="not written"):
        writer.close()

    with SafetensorsWriter(path, [("a", "U8", (4,))]) as short:
        with pytest.raises(InvalidOptionError, match="has 3 bytes, expected 4"):
            short.write_raw("a", [b"abc"])
        short.write_raw("a", [b"ab", bytearray(b"c"), memoryview(b"d")])


# --- every format rule, one bad file each --------------------------------------------------


def _valid_blob() -> bytes:
    return safetensors.torch.save(
        {
            "a": torch.arange(6, dtype=torch.float32).reshape(2, 3),
            "b": torch.ones(4, dtype=torch.int16),
        },
        metadata={"k": "v"},
    )


F32_2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


def _saved(save) -> bytes:
    """The bytes ``save(file)`` writes into a file object."""
    buffer = io.BytesIO()
    save(buffer)
    return buffer.getvalue()


def _zipped(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(name, data)
    return buffer.getvalue()


BAD_FILES: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "empty"),
    "3 bytes": (b"\x01\x00\x00", "too short"),
    "7 bytes": (_valid_blob()[:7], "too short"),
    "length only": (_valid_blob()[:8], "past the end"),
    "half header": (_valid_blob()[:40], "past the end"),
    "header, no data": (_valid_blob()[: 8 + struct.unpack("<Q", _valid_blob()[:8])[0]], "beyond"),
    "one byte short": (_valid_blob()[:-1], "beyond"),
    "header length > file": (raw_safetensors({"a": F32_2}, b"\0" * 8, length=10_000), "past the end"),
    "header length > 100MB": (raw_safetensors(b"{}", length=MAX_HEADER_SIZE + 1), "limit"),
    "header length 2**64-1": (raw_safetensors(b"{}", length=2**64 - 1), "limit"),
    "non-UTF-8 header": (raw_safetensors(b'{"\xff\xfe":1}'), "UTF-8"),
    "JSON array": (raw_safetensors(b"[1, 2]"), "start with '{'"),
    "JSON string after brace": (raw_safetensors(b"{nope}"), "not valid JSON"),
    "JSON number object": (raw_safetensors(b'{"a": NaN}'), "not valid JSON"),
    "deep nesting": (raw_safetensors(b"{" + b'"a":[' * 200_000), "JSON"),
    "entry not object": (raw_safetensors({"a": [1, 2]}), "not an object"),
    "missing offsets": (raw_safetensors({"a": {"dtype": "F32", "shape": [2]}}, b"\0" * 8), "lacks"),
    "unknown dtype": (raw_safetensors({"a": {**F32_2, "dtype": "F4"}}, b"\0" * 8), "unknown dtype"),
    "shape not ints": (raw_safetensors({"a": {**F32_2, "shape": [2.0]}}, b"\0" * 8), "shape"),
    "negative dim": (raw_safetensors({"a": {**F32_2, "shape": [-2]}}, b"\0" * 8), "shape"),
    "offsets reversed": (
        raw_safetensors({"a": {**F32_2, "data_offsets": [8, 0]}}, b"\0" * 8),
        "end before begin",
    ),
    "shape/span mismatch": (raw_safetensors({"a": {**F32_2, "shape": [3]}}, b"\0" * 8), "needs 12 bytes"),
    "overlapping offsets": (
        raw_safetensors({"a": F32_2, "b": {**F32_2, "data_offsets": [4, 12]}}, b"\0" * 12),
        "overlaps",
    ),
    "gap between tensors": (
        raw_safetensors({"a": F32_2, "b": {**F32_2, "data_offsets": [12, 20]}}, b"\0" * 20),
        "gap",
    ),
    "gap at start": (raw_safetensors({"a": {**F32_2, "data_offsets": [4, 12]}}, b"\0" * 12), "gap"),
    "offsets beyond data": (raw_safetensors({"a": F32_2}, b"\0" * 6), "beyond"),
    "trailing bytes": (raw_safetensors({"a": F32_2}, b"\0" * 9), "trailing"),
    "duplicate key": (
        raw_safetensors(
            b'{"a":' + json.dumps(F32_2).encode() + b',"a":' + json.dumps(F32_2).encode() + b"}",
            b"\0" * 8,
        ),
        "twice",
    ),
    "duplicate metadata key": (raw_safetensors(b'{"__metadata__":{"k":"1","k":"2"}}'), "twice"),
    "tensor named __metadata__": (raw_safetensors({"__metadata__": F32_2}, b"\0" * 8), "reserved"),
    "metadata not object": (raw_safetensors({"__metadata__": "hello"}), "__metadata__"),
    "metadata non-string value": (raw_safetensors({"__metadata__": {"epochs": 3}}), "expected a string"),
    "LFS pointer": (
        b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 + b"\nsize 123\n",
        "Git LFS pointer",
    ),
    # weights in other formats, named as such instead of "header length 578712552184433488 …"
    "torch.save zip": (_saved(lambda f: torch.save({"w": torch.ones(2)}, f)), "a PyTorch zip checkpoint"),
    "torch.save legacy pickle": (
        _saved(lambda f: torch.save({"w": torch.ones(2)}, f, _use_new_zipfile_serialization=False)),
        "a Python pickle (protocol 2",
    ),
    "pickle protocol 5": (pickle.dumps({"w": [1.0] * 4}, protocol=5), "a Python pickle (protocol 5"),
    "pickle under 8 bytes": (pickle.dumps(None, protocol=2), "a Python pickle"),
    "numpy npz": (_saved(lambda f: np.savez(f, w=np.ones(2))), "a NumPy .npz archive"),
    "numpy npy": (_saved(lambda f: np.save(f, np.ones((3, 3), dtype=np.float32))), "a NumPy .npy array"),
    "numpy npy small": (_saved(lambda f: np.save(f, np.ones(1, dtype=np.float16))), "a NumPy .npy array"),
    "other zip": (_zipped("notes.txt", b"hello"), "a zip archive"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_raises_clear_error(tmp_path: Path, case: str) -> None:
    blob, keyword = BAD_FILES[case]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(blob)
    with pytest.raises(InvalidCheckpointError) as excinfo:
        SafetensorsReader(path)
    message = str(excinfo.value)
    assert keyword in message
    assert str(path) in message
    with pytest.raises(InvalidCheckpointError):
        read_header(path)


def test_foreign_formats_are_named_only_when_the_header_fails(tmp_path: Path) -> None:
    """A valid safetensors file may begin like a pickle: a 640-byte header is 0x80 0x02 0 … 0."""
    blob = raw_safetensors({"__metadata__": {"pad": ""}, "a": F32_2}, b"\0" * 8)
    header_len = struct.unpack("<Q", blob[:8])[0]
    blob = raw_safetensors({"__metadata__": {"pad": " " * (640 - header_len)}, "a": F32_2}, b"\0" * 8)
    assert blob[:2] == b"\x80\x02" and struct.unpack("<Q", blob[:8])[0] == 640
    path = tmp_path / "pickle_like.safetensors"
    path.write_bytes(blob)
    with SafetensorsReader(path) as reader:
        assert list(reader.tensors) == ["a"]
    # a zip whose first 8 bytes make a plausible header length still gets named
    path.write_bytes(b"PK\x03\x04" + bytes(4) + b"\0" * 64)
    with pytest.raises(InvalidCheckpointError, match="a zip archive, not safetensors"):
        SafetensorsReader(path)


def test_missing_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidCheckpointError, match="cannot read"):
        SafetensorsReader(tmp_path / "nope.safetensors")


def test_huge_declared_header_allocates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "huge.safetensors"
    path.write_bytes(raw_safetensors(b"{}", length=MAX_HEADER_SIZE - 8))
    tracemalloc.start()
    try:
        with pytest.raises(InvalidCheckpointError, match="past the end"):
            SafetensorsReader(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def test_empty_and_scalar_tensors(tmp_path: Path) -> None:
    path = tmp_path / "edge.safetensors"
    _write(path, {"e": torch.zeros(0, 5, dtype=torch.bfloat16), "s": torch.tensor(True)})
    with SafetensorsReader(path) as reader:
        assert reader.read_tensor("e").shape == (0, 5)
        assert reader.read_tensor("e").dtype == torch.bfloat16
        assert list(reader.iter_chunks("e")) == []
        assert reader.read_tensor("s").item() is True
        assert reader.tensors["s"] == TensorInfo(
            "s", "BOOL", (), reader.tensors["e"].end, reader.tensors["e"].end + 1
        )
        with pytest.raises(InvalidOptionError, match="no tensor"):
            reader.read_bytes("missing")
        with pytest.raises(InvalidOptionError, match="chunk_size"):
            list(reader.iter_chunks("s", chunk_size=0))
    with pytest.raises(InvalidOptionError, match="closed"):
        reader.read_bytes("s")


# --- fuzzing -------------------------------------------------------------------------------

BASE = _valid_blob()
BASE_HEADER_END = 8 + struct.unpack("<Q", BASE[:8])[0]

_flips = st.lists(
    st.tuples(st.integers(0, BASE_HEADER_END - 1), st.integers(1, 255)), min_size=1, max_size=8
).map(lambda flips: _apply_flips(BASE, flips))
_truncations = st.integers(0, len(BASE)).map(lambda n: BASE[:n])
_length_fields = st.one_of(st.integers(0, 2**64 - 1), st.integers(0, len(BASE) + 16)).map(
    lambda n: struct.pack("<Q", n) + BASE[8:]
)

_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=8),
)
_json_any = st.recursive(
    _json_leaf,
    lambda kids: st.one_of(
        st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=6), kids, max_size=4)
    ),
    max_leaves=12,
)
_dtypes = st.one_of(
    st.sampled_from(list(DTYPE_ITEMSIZE)), st.sampled_from(["F4", "f32", "", "C64"])
)
_shapes = st.lists(st.integers(0, 4), max_size=3)
_rare = st.sampled_from([False, False, False, False, False, True])


@st.composite
def _json_headers(draw: st.DrawFn) -> bytes:
    """Valid, nearly valid or arbitrary JSON headers, with data of fitting or random length."""
    names = draw(st.lists(st.text(max_size=6), max_size=4, unique=True))
    header: object = {}
    offset = 0
    for name in names:
        dtype = draw(st.sampled_from(list(DTYPE_ITEMSIZE))) if not draw(_rare) else draw(_dtypes)
        shape = draw(_shapes)
        size = DTYPE_ITEMSIZE.get(dtype, 1)
        for d in shape:
            size *= d
        entry = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        if draw(_rare):
            entry[draw(st.sampled_from(["dtype", "shape", "data_offsets"]))] = draw(_json_any)
        if draw(_rare):
            entry["data_offsets"] = [
                offset + draw(st.integers(-3, 3)),
                offset + size + draw(st.integers(-3, 3)),
            ]
        header[name] = entry  # type: ignore[index]
        offset += size
    if draw(st.booleans()):
        header["__metadata__"] = draw(  # type: ignore[index]
            st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=3)
            if not draw(_rare)
            else _json_any
        )
    if draw(_rare):
        header = draw(_json_any)
    raw = json.dumps(header).encode()
    raw += b" " * draw(st.integers(0, 7))
    data_len = offset if not draw(_rare) else draw(st.integers(0, 64))
    return (
        struct.pack("<Q", len(raw))
        + raw
        + bytes(range(256)) * (data_len // 256)
        + bytes(data_len % 256)
    )


def _apply_flips(blob: bytes, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(blob)
    for index, mask in flips:
        out[index] ^= mask
    return bytes(out)


_mutants = st.one_of(_flips, _truncations, _length_fields, _json_headers(), st.binary(max_size=64))


def _exercise(path: Path) -> None:
    """Open and fully read ``path``; only InvalidCheckpointError may escape."""
    try:
        with SafetensorsReader(path) as reader:
            for name, info in reader.tensors.items():
                tensor = reader.read_tensor(name)
                assert tuple(tensor.shape) == info.shape
                assert tensor.numel() * tensor.element_size() == info.nbytes
                assert reader.read_bytes(name) == b"".join(reader.iter_chunks(name, chunk_size=3))
            assert all(
                isinstance(k, str) and isinstance(v, str) for k, v in reader.metadata.items()
            )
            ends = [info.end for info in reader.tensors.values()]
            assert max(ends, default=path.stat().st_size) == path.stat().st_size
    except InvalidCheckpointError as exc:
        assert str(path) in str(exc)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(blob=_mutants)
def test_fuzzed_files_fail_only_cleanly_and_in_bounded_memory(tmp_path: Path, blob: bytes) -> None:
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(blob)
    tracemalloc.start()
    try:
        _exercise(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10_000_000


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(blob=_json_headers())
def test_fuzzed_headers_agree_with_safetensors(tmp_path: Path, blob: bytes) -> None:
    """Where we accept a file, the reference library must load the same bytes."""
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(blob)
    try:
        reader = SafetensorsReader(path)
    except InvalidCheckpointError:
        return
    with reader:
        with safe_open(str(path), framework="np") as f:
            assert set(f.keys()) == set(reader.tensors)
            assert (f.metadata() or {}) == reader.metadata


def test_read_range_reads_part_of_a_tensor_and_refuses_a_range_outside_it(tmp_path: Path) -> None:
    from kernelscale.errors import InvalidOptionError
    from kernelscale.io.safetensors_io import SafetensorsReader

    t = torch.arange(10, dtype=torch.int32)
    path = tmp_path / "r.safetensors"
    safetensors.torch.save_file({"t": t}, str(path))
    with SafetensorsReader(path) as reader:
        assert reader.read_range("t", 8, 16) == t[2:4].numpy().tobytes()
        assert reader.read_range("t", 40, 40) == b""
        with pytest.raises(InvalidOptionError, match=r"range \[36, 44\) lies outside tensor 't' of 40 bytes"):
            reader.read_range("t", 36, 44)
