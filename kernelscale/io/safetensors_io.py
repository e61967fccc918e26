"""Streaming, validating reader and writer for the safetensors format.

File layout (https://github.com/huggingface/safetensors): an 8-byte little-endian u64 N, then N
bytes of UTF-8 JSON mapping each tensor name to {"dtype", "shape", "data_offsets": [begin, end]}
plus an optional "__metadata__" object of string → string, then the data section. Offsets are
relative to the data section; sorted by offset, the tensors tile it exactly from 0 to its end.

The reader checks every one of those rules before it trusts a number from the file, reads tensor
bytes with positioned reads (POSIX ``os.pread``/``os.preadv``; no mmap, so resident memory stays
bounded by what the caller holds) and raises :class:`InvalidCheckpointError` naming the file for
any violation. The writer lays out the whole header from a list of specs before the first data
byte, then takes the tensors one at a time, so peak memory is one tensor plus a constant. Both
assume a little-endian host, as safetensors itself does.

This module is pure I/O: it imports nothing from kernelscale but the error hierarchy, the dtype tables
and :mod:`kernelscale.io.files`.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass
from typing import IO, Any, BinaryIO, Iterable, Iterator, Sequence, Union

import torch

from kernelscale.dtypes import DTYPE_ITEMSIZE, TORCH_ATTR, TORCH_DTYPES, dtype_name
from kernelscale.errors import InvalidCheckpointError, InvalidOptionError
from kernelscale.io.files import open_regular

PathLike = Union[str, "os.PathLike[str]"]

MAX_HEADER_SIZE = 100_000_000
"""Largest header length accepted, in bytes (the reference implementation's limit)."""

DEFAULT_CHUNK_SIZE = 64 << 20

LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/"

ZIP_MAGIC = b"PK\x03\x04"
"""A zip archive's first local file header: torch.save's default format, NumPy's .npz."""

NPY_MAGIC = b"\x93NUMPY"
"""The first bytes of a NumPy .npy file (numpy.save): one array, not a dict of named tensors."""

_SNIFF_BYTES = 512
"""Bytes read from the start of a file to recognise a format that is not safetensors."""

_FROM_TORCH_SAVE = (
    "convert it first, e.g. safetensors.torch.save_file(torch.load(path, weights_only=True), "
    "'model.safetensors') (a dict of tensors; unwrap a nested 'state_dict')"
)


_TENSOR_KEYS = ("dtype", "shape", "data_offsets")


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a safetensors dtype name ("F16" → torch.float16, "F8_E4M3" →
    torch.float8_e4m3fn). Raises InvalidCheckpointError for a name not in DTYPE_ITEMSIZE or one
    this torch build has no dtype for."""
    if name not in DTYPE_ITEMSIZE:
        raise InvalidCheckpointError(f"unknown safetensors dtype {name!r}")
    if name not in TORCH_DTYPES:
        raise InvalidCheckpointError(
            f"dtype {name} needs torch.{TORCH_ATTR[name]}, which torch {torch.__version__} lacks"
        )
    return TORCH_DTYPES[name]


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's header entry. ``start``/``end`` are absolute byte offsets in the file,
    ``nbytes == end - start == prod(shape) * DTYPE_ITEMSIZE[dtype]``."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def _pairs_without_duplicates(path: str):
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise InvalidCheckpointError(f"{path}: header has the key {key!r} twice")
            out[key] = value
        return out

    return hook


def _reject_constant(token: str) -> None:
    raise ValueError(f"{token} is not valid JSON")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


MAX_EXTENT = (1 << 63) - 1
"""Largest product of a shape's non-zero dimensions: the strides of a contiguous tensor must fit
torch's int64 (a zero-element ``[0, 2**62, 3, 3]`` would need a stride of 9·2**62)."""


def _addressable(shape: Sequence[int]) -> bool:
    extent = 1
    for d in shape:
        extent *= max(d, 1)
        if extent > MAX_EXTENT:
            return False
    return True


def _parse_tensor_entry(path: str, name: str, entry: object, data_start: int) -> TensorInfo:
    if not isinstance(entry, dict):
        raise InvalidCheckpointError(
            f"{path}: header entry {name!r} is a {type(entry).__name__}, not an object"
        )
    missing = [key for key in _TENSOR_KEYS if key not in entry]
    if missing:
        raise InvalidCheckpointError(f"{path}: tensor {name!r} lacks {', '.join(missing)}")
    dtype = entry["dtype"]
    if not isinstance(dtype, str) or dtype not in DTYPE_ITEMSIZE:
        raise InvalidCheckpointError(
            f"{path}: tensor {name!r} has unknown dtype {dtype!r} "
            f"(known: {' '.join(DTYPE_ITEMSIZE)})"
        )
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise InvalidCheckpointError(
            f"{path}: tensor {name!r} has shape {shape!r}; expected a list of non-negative integers"
        )
    if not _addressable(shape):
        raise InvalidCheckpointError(
            f"{path}: tensor {name!r} has shape {shape!r}, whose extent (the product of its non-zero "
            f"dimensions) exceeds {MAX_EXTENT}: no tensor library can index it, even with no element"
        )
    offsets = entry["data_offsets"]
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_int(o) and o >= 0 for o in offsets)
    ):
        raise InvalidCheckpointError(
            f"{path}: tensor {name!r} has data_offsets {offsets!r}; "
            "expected [begin, end] as non-negative integers"
        )
    begin, end = offsets
    if end < begin:
        raise InvalidCheckpointError(
            f"{path}: tensor {name!r} has data_offsets [{begin}, {end}] with end before begin"
        )
    expected = DTYPE_ITEMSIZE[dtype]
    for d in shape:
        expected *= d
    if end - begin != expected:
        raise InvalidCheckpointError(
            f"{path}: tensor {name!r} of dtype {dtype} and shape {tuple(shape)} needs "
            f"{expected} bytes but data_offsets [{begin}, {end}] span {end - begin}"
        )
    return TensorInfo(name, dtype, tuple(shape), data_start + begin, data_start + end)


MAX_LIST_ITEMS = 64
"""Most items a list in a header may hold: lists are shapes (torch has at most 64 dimensions) and
data_offsets (two)."""
MAX_OBJECT_KEYS = 4096
"""Most keys an object inside the header (a tensor entry, ``__metadata__``) may hold; the header
object itself may hold any number of tensors."""

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NESTED_LIST = re.compile(rb"\[[^\]]*[\[{]")  # a list that opens a list or an object before it closes
_LONG_LIST = re.compile(rb"\[(?:[^\[\],]*,){%d}" % MAX_LIST_ITEMS)
_NESTED_OBJECT = re.compile(rb"\{[^}]*\{")  # an object that opens another before it closes
_MANY_KEYS = re.compile(rb"\{(?:[^{}:]*:){%d}" % (MAX_OBJECT_KEYS + 1))
_TOP_LEVEL_SCALAR = re.compile(rb"(?:\A|\})[^{}]*:[^{]")
_DENSITY_CHECK_BYTES = 1 << 20

# (pattern, what the header JSON then is), searched in order by _check_structure: lists in the blanked
# header, objects inside the top-level one, and (large headers only) the top-level values.
_LIST_RULES = (
    (_NESTED_LIST, "has a list holding a list or an object; a safetensors header's lists hold integers only"),
    (_LONG_LIST, f"has a list of more than {MAX_LIST_ITEMS} items; a safetensors header's lists are shapes and data_offsets"),
)
_OBJECT_RULES = (
    (_NESTED_OBJECT, "is nested deeper than a safetensors header (objects of tensor entries and __metadata__ inside one object)"),
    (_MANY_KEYS, f"has an object of more than {MAX_OBJECT_KEYS} keys inside the top-level one"),
)
_TOP_LEVEL_RULES = (
    (_TOP_LEVEL_SCALAR, "has a top-level value that is not an object; each key must name a tensor entry or __metadata__"),
)


def _refuse_matches(path: str, text: Union[bytes, memoryview], rules: tuple[tuple[re.Pattern[bytes], str], ...]) -> None:
    """InvalidCheckpointError ``"{path}: header JSON {what}"`` for the first rule whose pattern is found in ``text``."""
    for pattern, what in rules:
        if pattern.search(text):
            raise InvalidCheckpointError(f"{path}: header JSON {what}")
"""Above this header size the entries' density is checked before parsing too: every top-level
value an object, three keys per tensor entry. A top-level ``"k":0`` costs 4 bytes of header and
~120 bytes of parsed pairs, so 25 M of them would take 2.8 GB; a parsed valid entry costs about
10× its bytes, which bounds a 100 MB header at about 1 GB."""


_PLAIN_STRING = re.compile(rb'"[^"]*"')
_WHITESPACE = re.compile(rb"[ \t\r\n]+")
_BLANK_WINDOW = 1 << 20


def _blank_strings(path: str, raw: bytes) -> bytearray:
    """``raw`` with every JSON string replaced by ``""`` and the whitespace between tokens removed. Escapes go first (a backslash is only
    valid inside a string), so a quote opens or closes a string and the parity of the quotes before
    a position tells whether it lies inside one; the strings are then blanked a window of
    _BLANK_WINDOW bytes at a time, each window ending outside a string, so the substitution's pieces
    stay bounded by the window whatever the number of strings (on a whole header of 25 M strings
    they took 2 GB)."""
    plain = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    out = bytearray()
    pos, size = 0, len(plain)
    while pos < size:
        end = min(size, pos + _BLANK_WINDOW)
        if plain.count(b'"', pos, end) % 2:  # the window ends inside a string: take the rest of it
            close = plain.find(b'"', end)
            if close < 0:
                raise InvalidCheckpointError(f"{path}: header is not valid JSON: a string never ends")
            end = close + 1
        out += _WHITESPACE.sub(b"", _PLAIN_STRING.sub(b'""', plain[pos:end]))
        pos = end
    return out


def _check_structure(path: str, raw: bytes) -> None:
    """InvalidCheckpointError for a header whose JSON has more structure than a safetensors header
    can: a list inside a list or holding an object, a list of more than MAX_LIST_ITEMS items,
    objects nested deeper than the tensor entries, an inner object of more than MAX_OBJECT_KEYS keys;
    above _DENSITY_CHECK_BYTES also a top-level value that is not an object, or objects with fewer
    keys than their tensor entries need.

    Why before parsing: the JSON parser builds every value it reads; 33 M empty lists (a 99 MB
    header) cost 2.8 GB. The checks run on the header with its strings blanked (a string may hold
    any bracket and spaces), by regular expressions, holding one copy of the header beside it:
    2.2 s for that header, 1.2 s for a valid 25 MB header of 200 000 tensors (shared 2-core VM)."""
    skeleton = _blank_strings(path, raw)
    _refuse_matches(path, skeleton, _LIST_RULES)
    # skeleton has no whitespace: the header object's braces are its first and last bytes
    inside = memoryview(skeleton)[1:-1] if skeleton[:1] == b"{" and skeleton[-1:] == b"}" else memoryview(skeleton)
    _refuse_matches(path, inside, _OBJECT_RULES)
    if len(raw) <= _DENSITY_CHECK_BYTES:  # small enough to parse: the parser's own errors are more precise
        return
    # From here lists hold no braces and objects nest two deep, so the bytes between a '}' (or the
    # start) and the next '{' are at the top level, and every '{' but the first opens an entry.
    _refuse_matches(path, inside, _TOP_LEVEL_RULES)
    objects = skeleton.count(b"{") - 1
    if skeleton.count(b":") - objects < 3 * (objects - 1):
        raise InvalidCheckpointError(f"{path}: header JSON has {objects} objects but too few keys for their tensor "
                                     "entries (each needs dtype, shape and data_offsets)")


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _refuse_lone_surrogates(path: str, obj: dict[str, Any]) -> None:
    """InvalidCheckpointError for a string of the header that holds a lone UTF-16 surrogate
    (``"\\ud800"``, valid JSON but not a Unicode character: it cannot be printed, written or
    encoded as UTF-8). Run only when the header has such an escape (a pair decodes to one character)."""
    def check(text: str, what: str) -> None:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidCheckpointError(
                f"{path}: header {what} '{text.encode('utf-8', 'backslashreplace').decode('utf-8')}' holds a lone "
                f"surrogate (U+{ord(text[exc.start]):04X}), which is not a Unicode character"
            ) from None

    for name, entry in obj.items():
        check(name, "key")
        if isinstance(entry, dict):
            for key, value in entry.items():
                check(key, "key")
                if isinstance(value, str):
                    check(value, "value")


def _parse_header(
    path: str, raw: bytes, data_start: int, data_size: int
) -> tuple[dict[str, str], dict[str, TensorInfo]]:
    _check_structure(path, raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidCheckpointError(
            f"{path}: header is not valid UTF-8 (byte {exc.start} of the header)"
        ) from None
    if not text.startswith("{"):
        raise InvalidCheckpointError(
            f"{path}: header does not start with '{{'; not a safetensors file or a corrupt header"
        )
    try:
        obj = json.loads(
            text,
            object_pairs_hook=_pairs_without_duplicates(path),
            parse_constant=_reject_constant,
        )
    except InvalidCheckpointError:
        raise
    except RecursionError:
        raise InvalidCheckpointError(f"{path}: header JSON is nested too deeply") from None
    except ValueError as exc:
        raise InvalidCheckpointError(f"{path}: header is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidCheckpointError(
            f"{path}: header JSON is a {type(obj).__name__}, not an object"
        )
    if _SURROGATE_ESCAPE.search(raw):
        _refuse_lone_surrogates(path, obj)

    metadata: dict[str, str] = {}
    entries: list[TensorInfo] = []
    for name, entry in obj.items():
        if name == "__metadata__":
            if isinstance(entry, dict) and any(key in entry for key in _TENSOR_KEYS):
                raise InvalidCheckpointError(
                    f"{path}: a tensor may not be named '__metadata__' (the name is reserved)"
                )
            if not isinstance(entry, dict):
                raise InvalidCheckpointError(
                    f"{path}: __metadata__ is a {type(entry).__name__}, "
                    "expected an object of string to string"
                )
            for key, value in entry.items():
                if not isinstance(value, str):
                    raise InvalidCheckpointError(
                        f"{path}: __metadata__ value of {key!r} is a {type(value).__name__}, "
                        "expected a string"
                    )
            metadata = entry
        else:
            entries.append(_parse_tensor_entry(path, name, entry, data_start))

    ordered = sorted(entries, key=lambda t: (t.start, t.end))
    cursor = data_start
    for info in ordered:
        if info.start != cursor:
            what = "overlaps the previous tensor" if info.start < cursor else "leaves a gap"
            raise InvalidCheckpointError(
                f"{path}: tensor {info.name!r} at data_offsets "
                f"[{info.start - data_start}, {info.end - data_start}] {what} "
                f"(expected it to begin at {cursor - data_start}); "
                "tensors must tile the data section contiguously"
            )
        cursor = info.end
    if cursor - data_start > data_size:
        raise InvalidCheckpointError(
            f"{path}: tensors end at data offset {cursor - data_start}, beyond the data section "
            f"of {data_size} bytes (file truncated?)"
        )
    if cursor - data_start != data_size:
        raise InvalidCheckpointError(
            f"{path}: tensors end at data offset {cursor - data_start} but the data section "
            f"has {data_size} bytes; trailing bytes are not allowed"
        )
    return metadata, {info.name: info for info in ordered}


def _pread_exact(fd: int, size: int, offset: int, path: str) -> bytes:
    parts: list[bytes] = []
    remaining = size
    while remaining:
        part = os.pread(fd, remaining, offset)
        if not part:
            raise InvalidCheckpointError(
                f"{path}: file ended at byte {offset} while reading {size} bytes "
                "(truncated or changed while open)"
            )
        parts.append(part)
        remaining -= len(part)
        offset += len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


READ_BLOCK = 16 << 20
"""Most bytes one positioned read asks for: a tensor is filled in blocks of this size, so no
single call depends on a tensor's (or a file's) whole length."""


def _read_into(fd: int, view: memoryview, offset: int, path: str) -> None:
    filled = 0
    while filled < len(view):
        got = os.preadv(fd, [view[filled:filled + READ_BLOCK]], offset + filled)
        if not got:
            raise InvalidCheckpointError(
                f"{path}: file ended at byte {offset + filled} while reading "
                f"{len(view)} bytes (truncated or changed while open)"
            )
        filled += got


def _foreign_format(path: str, head: bytes) -> str | None:
    """What a file that failed as safetensors is instead, judged from its first bytes: a PyTorch
    zip (torch.save) or pickle checkpoint, a NumPy .npz or .npy, another zip archive; None when unknown.

    Consulted only once the bytes have failed as safetensors, never before: the first 8 bytes of
    a valid safetensors file are its header length, which may well begin 0x80 0x02 (640 bytes)."""
    only = "kernelscale reads safetensors only"
    if head.startswith(ZIP_MAGIC):
        # local file header: name length (u16) at byte 26, the first member's name from byte 30
        name = b""
        if len(head) >= 30:
            (name_len,) = struct.unpack("<H", head[26:28])
            name = head[30:30 + name_len]
        if name.endswith(b".pkl") or b"/data/" in name or b".data/" in name:
            return (
                f"{path}: this is a PyTorch zip checkpoint (torch.save), not safetensors; "
                f"{only}: {_FROM_TORCH_SAVE}"
            )
        if name.endswith(b".npy"):
            return (
                f"{path}: this is a NumPy .npz archive, not safetensors; {only}: convert it first, "
                "e.g. safetensors.numpy.save_file(dict(numpy.load(path)), 'model.safetensors')"
            )
        return f"{path}: this is a zip archive, not safetensors; {only}"
    if head.startswith(NPY_MAGIC):
        return (
            f"{path}: this is a NumPy .npy array (numpy.save), not safetensors; {only}: convert it first, "
            "e.g. safetensors.numpy.save_file({'conv.weight': numpy.load(path)}, 'model.safetensors') with the tensor's real name"
        )
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # PROTO opcode, protocols 2–5
        return (
            f"{path}: this is a Python pickle (protocol {head[1]}, e.g. an old-style torch.save "
            f"checkpoint), not safetensors; {only}: {_FROM_TORCH_SAVE}"
        )
    return None


class SafetensorsReader:
    """A validated, open safetensors file.

    ``SafetensorsReader(path)`` reads and checks the header at once and raises
    InvalidCheckpointError (message names the file and the broken rule) for: a file shorter than
    8 bytes, a Git LFS pointer, a PyTorch or NumPy zip or pickle file or a NumPy .npy (named as such), a header
    length beyond the file or above MAX_HEADER_SIZE, a header that is not UTF-8 or not a JSON
    object or repeats a key, an unknown dtype, a shape whose byte size differs from its offsets,
    tensors that overlap, leave gaps or do not end exactly at the end of the file, and
    ``__metadata__`` that is not string → string. A file that cannot be opened raises
    InvalidCheckpointError too, and so does a path that is not a regular file (a FIFO, a device:
refused by name, never opened for reading). No allocation depends on an unchecked length.

    ``metadata`` is the ``__metadata__`` dict ({} when absent); ``tensors`` maps name →
    TensorInfo in file order (ascending data offset). Use as a context manager or call close().
    """

    def __init__(self, path: PathLike) -> None:
        self.path = os.fspath(path)
        self._file: BinaryIO | None = os.fdopen(
            open_regular(self.path, InvalidCheckpointError, "a safetensors file"), "rb", buffering=0
        )
        try:
            self.metadata, self.tensors = self._read_header()
        except BaseException:
            self.close()
            raise

    def _read_header(self) -> tuple[dict[str, str], dict[str, TensorInfo]]:
        path = self.path
        fd = self._fd
        size = os.fstat(fd).st_size
        if size == 0:
            raise InvalidCheckpointError(f"{path}: file is empty, not a safetensors file")
        head = _pread_exact(fd, min(size, _SNIFF_BYTES), 0, path)
        if head.startswith(LFS_POINTER_PREFIX):
            raise InvalidCheckpointError(
                f"{path}: this is a Git LFS pointer, not the weights; "
                "fetch the real file with `git lfs pull`"
            )

        def refuse(message: str) -> InvalidCheckpointError:
            return InvalidCheckpointError(_foreign_format(path, head) or message)

        if size < 8:
            raise refuse(
                f"{path}: file has {size} bytes, too short for the 8-byte header length"
            )
        (header_len,) = struct.unpack("<Q", head[:8])
        if header_len > MAX_HEADER_SIZE:
            raise refuse(
                f"{path}: header length {header_len} exceeds the {MAX_HEADER_SIZE}-byte limit "
                "(corrupt file or not safetensors)"
            )
        if 8 + header_len > size:
            raise refuse(
                f"{path}: header length {header_len} runs past the end of the {size}-byte file "
                "(truncated or not safetensors)"
            )
        if head[8:9] != b"{" and _foreign_format(path, head):  # the header cannot parse anyway
            raise refuse("")
        raw = _pread_exact(fd, header_len, 8, path)
        data_start = 8 + header_len
        return _parse_header(path, raw, data_start, size - data_start)

    @property
    def file_size(self) -> int:
        """The file's size in bytes now (fstat; a file that grew or shrank since the header was read shows it)."""
        return os.fstat(self._fd).st_size

    @property
    def _fd(self) -> int:
        if self._file is None:
            raise InvalidOptionError(f"{self.path}: reader is closed")
        return self._file.fileno()

    def _info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise InvalidOptionError(f"{self.path}: no tensor named {name!r}") from None

    def read_bytes(self, name: str) -> bytes:
        """The raw little-endian bytes of tensor ``name`` (len == its nbytes)."""
        info = self._info(name)
        return _pread_exact(self._fd, info.nbytes, info.start, self.path)

    def read_range(self, name: str, begin: int, end: int) -> bytes:
        """Bytes ``[begin, end)`` of tensor ``name``'s raw data (offsets relative to the tensor);
        InvalidOptionError for a range outside it."""
        info = self._info(name)
        if not (_is_int(begin) and _is_int(end) and 0 <= begin <= end <= info.nbytes):
            raise InvalidOptionError(f"{self.path}: range [{begin!r}, {end!r}) lies outside tensor {name!r} of {info.nbytes} bytes")
        return _pread_exact(self._fd, end - begin, info.start + begin, self.path) if end > begin else b""

    def read_into(self, name: str, begin: int, targets: Sequence[Any]) -> int:
        """Fill the writable buffers ``targets`` (in order) with tensor ``name``'s raw bytes from
        offset ``begin`` (relative to the tensor) on, reading straight into them; returns the bytes
        read. InvalidOptionError when they reach past the tensor's end."""
        info = self._info(name)
        views = [memoryview(t).cast("B") for t in targets]
        total = sum(len(v) for v in views)
        if not (_is_int(begin) and 0 <= begin and begin + total <= info.nbytes):
            raise InvalidOptionError(f"{self.path}: range [{begin!r}, {begin!r} + {total}) lies outside tensor {name!r} of {info.nbytes} bytes")
        offset = info.start + begin
        for view in views:
            _read_into(self._fd, view, offset, self.path)
            offset += len(view)
        return total

    def iter_chunks(self, name: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
        """The raw bytes of tensor ``name`` as consecutive chunks of at most ``chunk_size``
        bytes; nothing for an empty tensor. Memory held: one chunk."""
        if not _is_int(chunk_size) or chunk_size <= 0:
            raise InvalidOptionError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        info = self._info(name)
        fd = self._fd
        offset = info.start
        while offset < info.end:
            size = min(chunk_size, info.end - offset)
            yield _pread_exact(fd, size, offset, self.path)
            offset += size

    def read_tensor(self, name: str) -> torch.Tensor:
        """Tensor ``name`` as a new CPU torch tensor of its dtype and shape (BF16 →
        torch.bfloat16, F8_E4M3 → torch.float8_e4m3fn, BOOL → torch.bool, …)."""
        info = self._info(name)
        dtype = torch_dtype(info.dtype)
        if info.nbytes == 0:
            return torch.empty(info.shape, dtype=dtype)
        buffer = bytearray(info.nbytes)
        _read_into(self._fd, memoryview(buffer), info.start, self.path)
        return torch.frombuffer(buffer, dtype=dtype).reshape(info.shape)

    def close(self) -> None:
        """Close the file; idempotent."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "SafetensorsReader":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_header(path: PathLike) -> tuple[dict[str, str], dict[str, TensorInfo]]:
    """``(metadata, tensors)`` of a safetensors file, validated exactly as SafetensorsReader
    does, without reading any tensor data. For planners and ``inspect``."""
    with SafetensorsReader(path) as reader:
        return reader.metadata, reader.tensors


TensorSpec = tuple[str, str, Sequence[int]]


def encode_header(
    specs: Sequence[TensorSpec], metadata: dict[str, str] | None = None
) -> tuple[bytes, list[TensorInfo]]:
    """The exact bytes a SafetensorsWriter puts before the data (8-byte length + JSON header),
    and each tensor's TensorInfo with absolute offsets in the output file.

    ``specs`` is an ordered list of (name, dtype name, shape); data is laid out contiguously in
    that order. The JSON is compact, ``__metadata__`` comes first with its keys sorted and gets
    ``"format": "pt"`` unless the caller gave a format, and the header is padded with spaces to
    a multiple of 8 bytes, as the reference writer does. Same inputs → same bytes. Raises
    InvalidOptionError for a duplicate or reserved name, an unknown dtype, a bad shape,
    non-string metadata or a header above MAX_HEADER_SIZE."""
    meta = dict(metadata or {})
    for key, value in meta.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidOptionError(
                f"metadata must map strings to strings; {key!r} → {type(value).__name__}"
            )
    meta.setdefault("format", "pt")

    header: dict[str, Any] = {"__metadata__": {key: meta[key] for key in sorted(meta)}}
    layout: list[tuple[str, str, tuple[int, ...], int, int]] = []
    offset = 0
    for spec in specs:
        name, dtype, shape = spec
        if not isinstance(name, str) or name == "__metadata__":
            raise InvalidOptionError(f"invalid tensor name {name!r}")
        if name in header:
            raise InvalidOptionError(f"tensor {name!r} appears twice in the specs")
        if dtype not in DTYPE_ITEMSIZE:
            raise InvalidOptionError(f"tensor {name!r} has unknown dtype {dtype!r}")
        shape = tuple(shape)
        if not all(_is_int(d) and d >= 0 for d in shape):
            raise InvalidOptionError(
                f"tensor {name!r} has shape {shape!r}; expected non-negative integers"
            )
        if not _addressable(shape):
            raise InvalidOptionError(
                f"tensor {name!r} would have shape {shape!r}, whose extent (the product of its non-zero "
                f"dimensions) exceeds {MAX_EXTENT}: no tensor library could index it"
            )
        nbytes = DTYPE_ITEMSIZE[dtype]
        for d in shape:
            nbytes *= d
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        layout.append((name, dtype, shape, offset, offset + nbytes))
        offset += nbytes

    try:
        raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidOptionError(f"header has a string that is not valid Unicode: {exc}") from None
    raw += b" " * (-len(raw) % 8)
    if len(raw) > MAX_HEADER_SIZE:
        raise InvalidOptionError(
            f"header would be {len(raw)} bytes, above the {MAX_HEADER_SIZE}-byte limit"
        )
    data_start = 8 + len(raw)
    infos = [
        TensorInfo(name, dtype, shape, data_start + begin, data_start + end)
        for name, dtype, shape, begin, end in layout
    ]
    return struct.pack("<Q", len(raw)) + raw, infos


class SafetensorsWriter:
    """Streams one safetensors file whose header is fixed up front.

    ``SafetensorsWriter(target, specs, metadata)`` computes the header with encode_header and
    writes it at once; then each tensor is given exactly once, in the order of ``specs``, by
    ``write_tensor`` or ``write_raw``. ``target`` is a path (opened "wb", closed by close()) or a
    writable binary file object (written from its current position, flushed but left open).
    close() / leaving the ``with`` block raises InvalidOptionError if any tensor was not written.
    Misuse (wrong order, wrong dtype, wrong byte count) raises InvalidOptionError. Atomic
    replacement is the caller's job; fsync() makes the bytes durable first.

    ``tensors`` holds each TensorInfo with absolute offsets; ``file_size`` is the final size.
    """

    def __init__(
        self,
        target: Union[PathLike, IO[bytes]],
        specs: Sequence[TensorSpec],
        metadata: dict[str, str] | None = None,
    ) -> None:
        head, infos = encode_header(specs, metadata)
        self.tensors: dict[str, TensorInfo] = {info.name: info for info in infos}
        self._order = infos
        self._next = 0
        self.file_size = len(head) + sum(info.nbytes for info in infos)
        if hasattr(target, "write"):
            self._file = target
            self._owns_file = False
            self.path = getattr(target, "name", "<file object>")
        else:
            self.path = os.fspath(target)  # type: ignore[arg-type]
            self._file = open(self.path, "wb")
            self._owns_file = True
        self._closed = False
        self._file.write(head)

    def _expect(self, name: str) -> TensorInfo:
        if self._closed:
            raise InvalidOptionError(f"{self.path}: writer is closed")
        if name not in self.tensors:
            raise InvalidOptionError(f"{self.path}: tensor {name!r} is not in the header")
        if self._next >= len(self._order) or self._order[self._next].name != name:
            if self._order.index(self.tensors[name]) < self._next:
                raise InvalidOptionError(f"{self.path}: tensor {name!r} was already written")
            raise InvalidOptionError(
                f"{self.path}: tensor {name!r} written out of order; "
                f"expected {self._order[self._next].name!r} next"
            )
        return self._order[self._next]

    def write_tensor(self, name: str, data: torch.Tensor) -> None:
        """Write tensor ``name`` as the contiguous raw bytes of ``data`` (any device). Its
        dtype must be the spec's and its nbytes the spec's byte count; the shape may differ."""
        info = self._expect(name)
        if not isinstance(data, torch.Tensor):
            raise InvalidOptionError(
                f"{self.path}: tensor {name!r}: expected a torch.Tensor, got {type(data).__name__}"
            )
        got = dtype_name(data.dtype)
        if got != info.dtype:
            raise InvalidOptionError(
                f"{self.path}: tensor {name!r} was declared {info.dtype} but is {got}"
            )
        nbytes = data.numel() * data.element_size()
        if nbytes != info.nbytes:
            raise InvalidOptionError(
                f"{self.path}: tensor {name!r} was declared {info.shape} ({info.nbytes} bytes) "
                f"but has shape {tuple(data.shape)} ({nbytes} bytes)"
            )
        if nbytes:
            flat = data.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
            self._file.write(memoryview(flat.numpy()))
        self._next += 1

    def write_raw(self, name: str, chunks: Iterable[bytes]) -> None:
        """Write tensor ``name`` from raw little-endian byte chunks (bytes-like objects), each
        written as it arrives; their total length must equal the spec's byte count."""
        info = self._expect(name)
        written = 0
        for chunk in chunks:
            view = memoryview(chunk).cast("B")
            if written + view.nbytes > info.nbytes:
                raise InvalidOptionError(
                    f"{self.path}: raw data for tensor {name!r} exceeds its {info.nbytes} bytes"
                )
            self._file.write(view)
            written += view.nbytes
        if written != info.nbytes:
            raise InvalidOptionError(
                f"{self.path}: raw data for tensor {name!r} has {written} bytes, "
                f"expected {info.nbytes}"
            )
        self._next += 1

    def fsync(self) -> None:
        """Flush Python's buffer and ask the OS to commit the file to disk."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def _finish(self, check: bool) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._file.flush()
        finally:
            if self._owns_file:
                self._file.close()
        if check and self._next < len(self._order):
            missing = [info.name for info in self._order[self._next :]]
            raise InvalidOptionError(
                f"{self.path}: closed with {len(missing)} tensor(s) not written: "
                f"{', '.join(map(repr, missing[:5]))}{' …' if len(missing) > 5 else ''}"
            )

    def close(self) -> None:
        """Flush (and close, if the writer opened it) the file, then raise InvalidOptionError if
        any tensor of the header was not written. Idempotent."""
        self._finish(check=True)

    def __enter__(self) -> "SafetensorsWriter":
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._finish(check=exc_type is None)
