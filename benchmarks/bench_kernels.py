"""Effective bandwidth of applying R to Stable-Diffusion-sized conv weights, per backend.

Each 3×3 slice of a (C, C, 3, 3) weight becomes 7×7 (``interp``, linear taps, s = 2: R is 49×9).
Effective GB/s = (bytes read + bytes written) / time, the same byte count for every provider, so
the columns compare directly. Providers:

- ``torch``:       kernelscale's reference path (``apply_dense_torch``).
- ``triton``:      the fused kernel (CUDA only; the CPU interpreter is for testing, not timing).
- ``interpolate``: what a user would write: ``F.interpolate(w.float(), size=(7, 7),
                   mode="bilinear") * c`` then ``.to(dtype)`` (a different map, same bytes).
- ``copy``:        a device copy moving the same number of bytes: the ceiling.

CUDA times come from ``triton.testing.do_bench`` (median); CPU times from ``time.perf_counter``
(median of ``--reps`` runs after ``--warmup``). Run ``python benchmarks/bench_kernels.py --help``.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from kernelscale.apply_torch import apply_dense_torch  # noqa: E402
from kernelscale.transforms import build_kernel_resize  # noqa: E402

SHAPES = [(1280, 1280), (320, 320)]  # (C_out, C_in) of SD UNet 3×3 convs: deepest and first stage
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
K_IN, K_OUT = 9, 49
# Bilinear cells resize 3→7 spreads each tap over ~(7/3)² outputs: scale back by (3/7)² per slice.
BASELINE_COEF = (3 / 7) ** 2


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {torch.get_num_threads()} torch threads"


def _time_ms(fn: Callable[[], object], device: str, warmup: int, reps: int) -> float:
    if device == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, return_mode="median"))
    for _ in range(warmup):
        fn()
    times: list[float] = []
    # At least `reps` runs and 0.2 s in all, so millisecond-scale runs are not one noisy sample.
    while len(times) < reps or sum(times) < 0.2:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _providers(w: torch.Tensor, r: torch.Tensor, dtype: torch.dtype, device: str, nbytes: int) -> dict:
    slices = w.reshape(-1, K_IN)
    # Same bytes as the op: a copy reads and writes its buffer, so half the total each way.
    # Both buffers written first: untouched pages all map to the kernel's zero page and read from cache.
    src = torch.ones(nbytes // 2, dtype=torch.uint8, device=device)
    dst = torch.zeros_like(src)
    providers = {
        "torch": lambda: apply_dense_torch(slices, r, dtype),
        "interpolate": lambda: (F.interpolate(w.float(), size=(7, 7), mode="bilinear") * BASELINE_COEF).to(dtype),
        "copy": lambda: dst.copy_(src),
    }
    if device == "cuda":
        from kernelscale.triton_ops import apply_dense_triton

        providers = {"triton": lambda: apply_dense_triton(slices, r, dtype), **providers}
        got, want = apply_dense_triton(slices, r, dtype).float(), apply_dense_torch(slices, r, dtype).float()
        ulps = ((got - want).abs() / want.abs().clamp_min(1e-30)).max().item() / (2**-10 if dtype == torch.float16 else 2**-7)
        print(f"  check {tuple(w.shape)} {dtype}: triton vs torch max rel diff = {ulps:.2f} ulp", flush=True)
    return providers


SWEEP_ROWS = (16, 32, 64, 128, 256)
SWEEP_WARPS = (2, 4, 8)


def _sweep(r: torch.Tensor, dtypes: list[str], copy_gbs: dict, device_name: str) -> list[dict]:
    """Time the dense kernel for each (rows per program, warps); print GB/s and % of copy."""
    from kernelscale.triton_ops.dense import _launch_dense, apply_dense_triton, default_block_rows

    rows = []
    r_t = r.T.contiguous()
    gen = torch.Generator(device="cuda").manual_seed(1)
    print("\nsweep of the Triton dense kernel (rows per program × warps); default launch marked *")
    print(f"{'shape':<16}{'dtype':<6}{'rows':>6}{'warps':>6}{'ms':>10}{'GB/s':>9}{'% copy':>8}")
    for c_out, c_in in SHAPES:
        for name in dtypes:
            dtype = DTYPES[name]
            slices = torch.randn(c_out * c_in, K_IN, generator=gen, device="cuda").to(dtype)
            nbytes = slices.numel() * slices.element_size() * (1 + K_OUT / K_IN)
            reference = apply_dense_triton(slices, r, dtype)
            default = default_block_rows(K_OUT, slices.shape[0])
            for block_rows in SWEEP_ROWS:
                for warps in SWEEP_WARPS:
                    y = torch.full((slices.shape[0], K_OUT), float("nan"), dtype=dtype, device="cuda")
                    _launch_dense(slices, r_t, y, block_rows=block_rows, num_warps=warps)
                    if not torch.equal(y, reference):
                        raise SystemExit(f"sweep: rows {block_rows}, warps {warps} differ from the default launch")
                    ms = _time_ms(lambda: _launch_dense(slices, r_t, y, block_rows=block_rows, num_warps=warps), "cuda", 0, 0)
                    gbs = nbytes / ms / 1e6
                    mark = "*" if (block_rows, warps) == (default, 4) else " "
                    shape = f"{c_out}x{c_in}x3x3"
                    print(f"{shape:<16}{name:<6}{block_rows:>6}{warps:>6}{ms:>10.3f}{gbs:>9.1f}"
                          f"{100 * gbs / copy_gbs[(shape, name)]:>7.0f}%{mark}")
                    rows.append({"device": device_name, "shape": shape, "dtype": name,
                                 "provider": f"triton rows={block_rows} warps={warps}", "MB": nbytes / 1e6, "ms": ms, "GB/s": gbs})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where to run (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), action="append",
                        help="weight dtype, repeatable (default: fp16 and bf16)")
    parser.add_argument("--warmup", type=int, default=1, help="CPU warm-up runs per measurement (default 1)")
    parser.add_argument("--reps", type=int, default=3,
                        help="CPU timed runs per measurement (at least, and at least 0.2 s), median kept (default 3)")
    parser.add_argument("--csv", metavar="PATH", help="append one row per measurement, tagged with the device")
    parser.add_argument("--sweep", action="store_true",
                        help="CUDA only: also time the Triton dense kernel over rows per program × warps, each "
                             "checked bit for bit against the default launch, to pick the launch constants")
    args = parser.parse_args(argv)
    if args.sweep and args.device != "cuda":
        parser.error("--sweep times the Triton kernel: it needs --device cuda")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    dtypes = args.dtype or ["fp16", "bf16"]
    device_name = _device_name(args.device)

    r = torch.as_tensor(build_kernel_resize((3, 3), 2.0).dense(), dtype=torch.float32, device=args.device)
    print(f"device: {args.device} ({device_name}); torch {torch.__version__}; R = {K_OUT}x{K_IN} (3x3 -> 7x7)")
    if args.device == "cpu":
        print("triton: not timed on CPU (the interpreter is for parity tests, not speed)")
    rows = []
    gen = torch.Generator(device=args.device).manual_seed(0)
    for c_out, c_in in SHAPES:
        for name in dtypes:
            dtype = DTYPES[name]
            w = torch.randn(c_out, c_in, 3, 3, generator=gen, device=args.device).to(dtype)
            n = c_out * c_in
            nbytes = n * K_IN * w.element_size() + n * K_OUT * w.element_size()
            for provider, fn in _providers(w, r, dtype, args.device, nbytes).items():
                ms = _time_ms(fn, args.device, args.warmup, args.reps)
                rows.append({"device": device_name, "shape": f"{c_out}x{c_in}x3x3", "dtype": name,
                             "provider": provider, "MB": nbytes / 1e6, "ms": ms, "GB/s": nbytes / ms / 1e6})
    copy = {(row["shape"], row["dtype"]): row["GB/s"] for row in rows if row["provider"] == "copy"}
    header = f"{'shape':<16}{'dtype':<6}{'provider':<13}{'MB moved':>9}{'ms':>10}{'GB/s':>9}{'% copy':>8}"
    print(header)
    print("-" * len(header))
    for row in rows:
        pct = 100 * row["GB/s"] / copy[(row["shape"], row["dtype"])]
        print(f"{row['shape']:<16}{row['dtype']:<6}{row['provider']:<13}{row['MB']:>9.1f}{row['ms']:>10.2f}"
              f"{row['GB/s']:>9.1f}{pct:>7.0f}%")
    if args.sweep:
        rows += _sweep(r, dtypes, copy, device_name)
    if args.csv:
        new = not os.path.exists(args.csv)
        with open(args.csv, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            if new:
                writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
