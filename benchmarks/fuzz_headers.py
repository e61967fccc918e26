"""Fuzz the safetensors reader with mutated headers (issue 14, DESIGN §6: bad input gives one clear
error, never a crash).

Each case starts from a valid file (a few tensors of several dtypes and shapes, metadata, a
kernelscale-like manifest) and applies one or more mutations, at the byte level (flip, insert,
delete, truncate, change the length prefix) or at the JSON level (a value of another type, huge or
negative numbers, offsets swapped or shifted, deep nesting, long lists, lone surrogates, duplicate
keys, zero-element shapes with huge dimensions). The mutated file is opened with
:class:`kernelscale.io.safetensors_io.SafetensorsReader` and, when accepted, every tensor is read
back. Outcomes: ``accepted``, ``refused`` (an InvalidCheckpointError; the reasons are tallied) or
``crash:<type>`` for any other exception, which makes the script exit with status 1.

    python benchmarks/fuzz_headers.py                 # 10,000 cases, seed 0
    python benchmarks/fuzz_headers.py --cases 50000 --seed 7
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import struct
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernelscale.errors import KernelscaleError  # noqa: E402
from kernelscale.io.safetensors_io import SafetensorsReader, encode_header  # noqa: E402

DTYPES = ("F32", "F16", "BF16", "F64", "I64", "I32", "I8", "U8", "BOOL", "F8_E4M3")
ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1}


def base_file(rng: random.Random) -> tuple[dict, bytes]:
    """A valid header (as a dict) and its data section."""
    specs = []
    for i in range(rng.randint(1, 5)):
        dims = rng.randint(0, 4)
        shape = tuple(rng.randint(0 if rng.random() < 0.1 else 1, 4) for _ in range(dims))
        specs.append((f"layer{i}.{rng.choice(['weight', 'bias', 'conv.weight'])}", rng.choice(DTYPES), shape))
    metadata = {"format": "pt"}
    if rng.random() < 0.5:
        metadata["kernelscale"] = json.dumps({"format_version": 1, "tensors": {specs[0][0]: {"kind": "conv", "scale": [2.0, 2.0],
                                                                                            "old_spatial": [3, 3], "new_spatial": [7, 7]}}})
    head, infos = encode_header(specs, metadata)
    header = json.loads(head[8:].decode("utf-8"))
    data = bytes(rng.getrandbits(8) for _ in range(infos[-1].end - len(head))) if infos else b""
    return header, data


def pack(header_bytes: bytes, data: bytes) -> bytes:
    return struct.pack("<Q", len(header_bytes)) + header_bytes + data


def _some_tensor(header: dict, rng: random.Random) -> str | None:
    names = [k for k in header if k != "__metadata__"]
    return rng.choice(names) if names else None


def _odd_value(rng: random.Random):
    return rng.choice([None, True, -1, 0, 2 ** 63, 2 ** 64 + 1, 10 ** 400, 1.5, -0.0, "x", "", [], {}, [[]], [-1], [2 ** 62] * 3,
                       {"a": 1}, "\ud800", [0, 2 ** 62, 3, 3], list(range(100))])


def _json_mutations() -> list[Callable[[dict, random.Random], None]]:
    def set_field(h: dict, rng: random.Random) -> None:
        name = _some_tensor(h, rng)
        if name:
            h[name][rng.choice(["dtype", "shape", "data_offsets", "extra"])] = _odd_value(rng)

    def drop_field(h: dict, rng: random.Random) -> None:
        name = _some_tensor(h, rng)
        if name:
            h[name].pop(rng.choice(["dtype", "shape", "data_offsets"]), None)

    def shift_offsets(h: dict, rng: random.Random) -> None:
        name = _some_tensor(h, rng)
        if name:
            begin, end = h[name]["data_offsets"]
            delta = rng.choice([-1, 1, -8, 8, 2 ** 32, -(2 ** 32)])
            h[name]["data_offsets"] = [begin + delta, end + delta] if rng.random() < 0.5 else [begin, end + delta]

    def swap_offsets(h: dict, rng: random.Random) -> None:
        names = [k for k in h if k != "__metadata__"]
        if len(names) >= 2:
            a, b = rng.sample(names, 2)
            h[a]["data_offsets"], h[b]["data_offsets"] = h[b]["data_offsets"], h[a]["data_offsets"]

    def change_shape(h: dict, rng: random.Random) -> None:
        name = _some_tensor(h, rng)
        if name:
            shape = list(h[name]["shape"])
            choice = rng.random()
            if choice < 0.3 and shape:
                shape[rng.randrange(len(shape))] = rng.choice([0, 2 ** 62, 2 ** 63, 2 ** 64, 10 ** 30])
            elif choice < 0.6:
                shape = [0] + [rng.choice([2 ** 20, 2 ** 40, 2 ** 62]) for _ in range(rng.randint(1, 3))]
            else:
                shape.append(rng.randint(0, 3))
            h[name]["shape"] = shape

    def change_dtype(h: dict, rng: random.Random) -> None:
        name = _some_tensor(h, rng)
        if name:
            h[name]["dtype"] = rng.choice([*DTYPES, "F4", "f32", "", "C64", "STR"])

    def metadata(h: dict, rng: random.Random) -> None:
        meta = h.setdefault("__metadata__", {})
        meta[rng.choice(["format", "kernelscale", "x", "\ud800"])] = _odd_value(rng)

    def rename(h: dict, rng: random.Random) -> None:
        name = _some_tensor(h, rng)
        if name:
            h[rng.choice(["__metadata__", "", "\ud800x", "a" * 1000, name + "\u0000"])] = h.pop(name)

    def nest(h: dict, rng: random.Random) -> None:
        name = _some_tensor(h, rng)
        depth = rng.choice([2, 10, 1000, 100_000])
        value: object = []
        for _ in range(min(depth, 50)):
            value = [value]
        if name:
            h[name]["extra"] = value if depth <= 50 else "NEST"
        h["__nest__"] = depth

    def many(h: dict, rng: random.Random) -> None:
        name = _some_tensor(h, rng)
        if name:
            h[name]["extra"] = [[] for _ in range(rng.choice([10, 1000, 100_000]))]

    def top_level(h: dict, rng: random.Random) -> None:
        h["__replace__"] = rng.choice(["[]", "null", "1", '"x"', "{}", "{} {}", "{"])

    return [set_field, drop_field, shift_offsets, swap_offsets, change_shape, change_dtype, metadata, rename, nest, many, top_level]


JSON_MUTATIONS = _json_mutations()


def encode(h: dict) -> bytes:
    """The header's bytes, with the special markers of :func:`_json_mutations` applied."""
    replace = h.pop("__replace__", None)
    depth = h.pop("__nest__", None)
    if replace is not None:
        return replace.encode()
    text = json.dumps(h, separators=(",", ":"), ensure_ascii=True)
    if depth is not None and depth > 50:
        text = text.replace('"NEST"', "[" * depth + "]" * depth)
    return text.encode()


def byte_mutation(raw: bytes, rng: random.Random) -> bytes:
    data = bytearray(raw)
    kind = rng.randrange(6)
    if kind == 0 and data:  # flip bytes
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.getrandbits(8)
    elif kind == 1:  # insert
        at = rng.randrange(len(data) + 1)
        data[at:at] = bytes(rng.choice([b"{", b"}", b"[", b"]", b'"', b"\\", b",", b":", b"\xff", b"\x00", b"1e999"]))
    elif kind == 2 and data:  # delete
        at = rng.randrange(len(data))
        del data[at:at + rng.randint(1, 8)]
    elif kind == 3:  # truncate
        del data[rng.randrange(len(data) + 1):]
    elif kind == 4 and len(data) >= 8:  # the length prefix
        (n,) = struct.unpack("<Q", bytes(data[:8]))
        data[:8] = struct.pack("<Q", rng.choice([0, 1, n - 1, n + 1, n + 8, 2 ** 63, 2 ** 64 - 1, 99_999_999, 100_000_001]) % 2 ** 64)
    else:  # trailing bytes
        data += bytes(rng.randint(1, 16))
    return bytes(data)


_NUMBERS = re.compile(r"\d+")


def reason(exc: BaseException) -> str:
    """The refusal's rule: its message after the path, numbers and quoted values blanked, 60 chars."""
    text = str(exc).split(": ", 1)[-1]
    text = re.sub(r"'[^']*'|\"[^\"]*\"|\[[^\]]*\]|\([^)]*\)", "…", text)
    return _NUMBERS.sub("N", text)[:60]


def check(path: str) -> str:
    """Open ``path`` with the reader and read every tensor back: 'accepted', or raise."""
    with SafetensorsReader(path) as reader:
        for name, info in reader.tensors.items():
            tensor = reader.read_tensor(name)
            itemsize = tensor.element_size()
            if tensor.numel() * itemsize != info.nbytes or tuple(tensor.shape) != info.shape:
                raise AssertionError(f"{name}: read back as {tuple(tensor.shape)}, header says {info.shape}")
    return "accepted"


def fuzz(cases: int, seed: int, folder: str, on_crash: Callable[[int, bytes, BaseException], None] | None = None) -> tuple[collections.Counter, collections.Counter]:
    """Run ``cases`` mutated headers from ``seed``; (outcome counts, refusal reasons)."""
    rng = random.Random(seed)
    outcomes: collections.Counter = collections.Counter()
    reasons: collections.Counter = collections.Counter()
    path = os.path.join(folder, "fuzz.safetensors")
    for case in range(cases):
        header, data = base_file(rng)
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            if rng.random() < 0.6:
                mutate = rng.choice(JSON_MUTATIONS)
                try:
                    mutate(header, rng)
                except (TypeError, KeyError, ValueError, AttributeError):  # an earlier mutation changed the structure
                    pass
        raw = pack(encode(header), data)
        if rng.random() < 0.4:
            raw = byte_mutation(raw, rng)
        with open(path, "wb") as fh:
            fh.write(raw)
        try:
            outcomes[check(path)] += 1
        except KernelscaleError as exc:
            outcomes["refused"] += 1
            reasons[f"{type(exc).__name__}: {reason(exc)}"] += 1
        except Exception as exc:  # a crash: the reader let something through
            outcomes[f"crash:{type(exc).__name__}"] += 1
            if on_crash is not None:
                on_crash(case, raw, exc)
    return outcomes, reasons


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reasons", type=int, default=25, help="refusal reasons to list (most frequent first)")
    args = parser.parse_args(argv)

    crashes = []

    def on_crash(case: int, raw: bytes, exc: BaseException) -> None:
        crashes.append(case)
        if len(crashes) <= 5:
            print(f"crash in case {case}: {type(exc).__name__}: {exc}\n  header: {raw[8:208]!r}", file=sys.stderr)
            traceback.print_exception(exc, file=sys.stderr)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        outcomes, reasons = fuzz(args.cases, args.seed, folder, on_crash)
    seconds = time.perf_counter() - started
    print(f"{args.cases} mutated headers, seed {args.seed}, {seconds:.1f} s")
    for outcome, count in sorted(outcomes.items()):
        print(f"  {outcome:28s} {count:6d}")
    print("refusals by rule:")
    for text, count in reasons.most_common(args.reasons):
        print(f"  {count:6d}  {text}")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
